//! Audio sources. Swappable: the default sink's monitor today; per-app routing next.

pub mod monitor;
