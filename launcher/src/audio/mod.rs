//! Audio sources: the default sink's monitor (system sound), per-app capture (`--app`,
//! `--exclude-app`), and `--repair` for what older hosts left in the audio server.

pub mod apps;
pub mod monitor;
pub mod repair;
