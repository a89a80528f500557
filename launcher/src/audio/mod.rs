//! Audio sources. Swappable: the default sink's monitor today; per-app routing next, and
//! `--repair` for what a crashed per-app host leaves behind.

pub mod monitor;
pub mod repair;
