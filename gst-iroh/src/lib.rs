//! gst-iroh: GStreamer elements that carry media over iroh QUIC.
//!
//! - `irohsink` serves one encoded stream to many viewers; every viewer starts at a keyframe
//!   and one that falls behind skips whole GOPs without slowing the others.
//! - `irohsrc` dials a host by ticket and outputs exactly the caps the host received.
//!
//! The wire format is in `PROTOCOL.md` and [`protocol`]; the ticket in [`ticket`].

use gst::glib;

pub mod gop_cache;
mod irohsink;
mod irohsrc;
pub mod net;
/// The wire format, the ticket and the PSI cache live in the `pixelpass-protocol` crate
/// (shared with the launcher and the browser viewer); these paths stay for the elements' users.
pub use pixelpass_protocol as protocol;
pub use pixelpass_protocol::{psi_cache, ticket};

pub use irohsink::{IrohSink, IrohSinkPad};
pub use irohsrc::IrohSrc;

/// The wire-format flag bits (DELTA, HEADER, DISCONT) of a GStreamer buffer.
pub fn wire_flags(flags: gst::BufferFlags) -> u8 {
    let mut f = 0;
    if flags.contains(gst::BufferFlags::DELTA_UNIT) {
        f |= protocol::flags::DELTA;
    }
    if flags.contains(gst::BufferFlags::HEADER) {
        f |= protocol::flags::HEADER;
    }
    if flags.contains(gst::BufferFlags::DISCONT) {
        f |= protocol::flags::DISCONT;
    }
    f
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    irohsink::register(plugin)?;
    irohsrc::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    iroh,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    // "MIT/X11" rather than "Apache 2.0": GStreamer before 1.22 rejects the latter.
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
