//! # irohsrc
//!
//! Dials an `irohsink` host by its ticket and outputs the host's stream with exactly the caps
//! the host received. A live source: buffers carry the host's timing mapped onto the local
//! pipeline clock, a `timestamp/x-unix` reference timestamp meta with the capture wall-clock
//! time, and DISCONT after any skipped GOP so demuxers resync.
//!
//! Refusals and bad tickets become bus errors a person can read ("host is full", "ticket is
//! not valid: …", "this ticket was revoked", "host speaks protocol v2, this viewer v1"). When
//! the host goes away or the path breaks, the element reconnects with backoff for up to
//! `reconnect-timeout` (set `reconnect=false` to fail at once). Buffering is bounded
//! (`max-buffers`); a viewer that cannot keep up is skipped ahead by the host.
//!
//! Messages: `iroh-connected` (path, rtt-ms), `iroh-path-changed` (path), `iroh-reconnecting`
//! (reason, attempt). Statistics: the `stats` property.
//!
//! ## Example
//! ```text
//! gst-launch-1.0 irohsrc ticket=pp1… ! tsdemux ! h264parse ! avdec_h264 ! videoconvert ! autovideosink
//! ```

use gst::glib;
use gst::prelude::*;

mod imp;
mod session;

glib::wrapper! {
    /// The `irohsrc` element.
    pub struct IrohSrc(ObjectSubclass<imp::IrohSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

/// Registers `irohsrc` with `plugin`.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "irohsrc", gst::Rank::NONE, IrohSrc::static_type())
}
