//! gst-halfscale: the `halfscale` element, which halves a raw video's width and height by
//! averaging each 2×2 block of every plane.
//!
//! A rendition ladder scales the capture down once per rung, at the capture's frame rate:
//! `videoscale` takes 2.5–4 ms for one 1080p I420 frame to 540p on a machine of this kind
//! (more than the rung's own encode), this element a fraction of a millisecond. Exact halving
//! needs no filter design: the box average is what every mipmap does, and keeps text edges as
//! sharp as the smaller picture allows.
//!
//! Output size: half the input's, rounded down to even (H.264 4:2:0 needs even sizes), at
//! least 2×2; a last odd row or column of the input is dropped.

use gst::glib;

mod element;
pub mod halve;

pub use element::HalfScale;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    element::register(Some(plugin))
}

/// Registers `halfscale` for this process, without a plugin file.
pub fn register_static() -> Result<(), glib::BoolError> {
    element::register(None)
}

gst::plugin_define!(
    halfscale,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
