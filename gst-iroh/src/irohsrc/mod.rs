//! # irohsrc
//!
//! Dials an `irohsink` host by its ticket and outputs the host's stream with exactly the caps
//! the host received. A live source: buffers carry the host's timing mapped onto the local
//! pipeline clock, a `timestamp/x-unix` reference timestamp meta with the capture wall-clock
//! time, and DISCONT after any skipped GOP so demuxers resync.
//!
//! Refusals and bad tickets become bus errors with a domain and code an application acts on
//! and a text a person reads: host full → `RESOURCE_ERROR_BUSY` ("host is full"), a wrong or
//! revoked secret → `RESOURCE_ERROR_NOT_AUTHORIZED` ("ticket is not valid: …", "this ticket
//! was revoked"), host unreachable → `RESOURCE_ERROR_OPEN_READ`, another protocol version →
//! `STREAM_ERROR_WRONG_TYPE` ("host speaks protocol v3, this viewer v2: update this viewer"),
//! a bad property → `RESOURCE_ERROR_SETTINGS` at NULL→READY. The error's details structure
//! (`iroh-error`) has a finer `reason` (`host-full`, `bad-secret`, `revoked`, `kicked`, …;
//! the README has the table). When the host goes away or the path breaks, the element
//! reconnects with backoff for up to `reconnect-timeout` (set `reconnect=false` to fail at
//! once). Buffering is bounded (`max-buffers`); a viewer that cannot keep up is skipped ahead
//! by the host. Properties are read at NULL→READY and change in the NULL state only.
//!
//! From a host with several renditions the viewer gets the one its path carries (at most
//! `max-bitrate`); a switch is a new encoder's stream from a keyframe on: the first buffer is
//! DISCONT and a new resolution arrives in-band, so `tsdemux ! h264parse ! decoder`
//! renegotiates there.
//!
//! Messages: `iroh-connected` (path, rtt-ms), `iroh-path-changed` (path), `iroh-reconnecting`
//! (reason, attempt), `iroh-rendition-changed` (rendition, index). Statistics: the `stats`
//! property.
//!
//! It is the URI handler of `pixelpass://TICKET[?property=value&…]` (the query sets its
//! properties by name), so `playbin` and `gst-play-1.0` open a share like any URL.
//!
//! ## Example
//! ```text
//! gst-launch-1.0 irohsrc ticket=pp1… ! tsdemux ! h264parse ! avdec_h264 ! videoconvert ! autovideosink
//! gst-play-1.0 'pixelpass://pp1…?relay=disabled'
//! ```

use gst::glib;
use gst::prelude::*;

mod error;
mod imp;
mod session;
mod uri;

glib::wrapper! {
    /// The `irohsrc` element.
    pub struct IrohSrc(ObjectSubclass<imp::IrohSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object, @implements gst::URIHandler;
}

/// Registers `irohsrc` with `plugin`. Rank primary: the `pixelpass://` URI handler that
/// playbin picks (no other element handles the scheme; a source is never autoplugged as a
/// decoder).
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "irohsrc", gst::Rank::PRIMARY, IrohSrc::static_type())
}
