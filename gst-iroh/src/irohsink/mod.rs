//! # irohsink
//!
//! Serves one encoded stream to many viewers over iroh QUIC. The endpoint is bound when the
//! element goes READY→PAUSED, without waiting for anyone; the share ticket is then in the
//! read-only `ticket` property and in an `iroh-ticket` element message on the bus (so
//! `gst-launch-1.0 -m` prints it).
//!
//! Every viewer's first byte is the start of a GOP: a new viewer gets the current GOP if it
//! started less than `burst-max-age` ago, otherwise the element sends one rate-limited
//! force-key-unit event (all-headers) upstream and gates the viewer until the keyframe. For
//! MPEG-TS the latest PAT/PMT go first; for other containers the caps `streamheader` does.
//! Each GOP travels on its own QUIC uni stream, older GOPs first (viewers play them in order).
//! The element measures each viewer's path: a viewer slower than the stream gets every GOP as
//! far as its path delivers it before the next GOP is due (or within `max-lag`), so it stays
//! near live and the next keyframe finds its path idle (`cut-gops` in the stats). A viewer
//! that still falls more than `max-lag` behind has its undelivered GOP streams reset (its
//! backlog is discarded inside QUIC) and resumes at the newest GOP (`dropped-gops`). A viewer
//! hopeless for `slow-timeout` is removed with reason "slow". The streaming thread never waits
//! for the network.
//!
//! Signals (emitted from network threads): `viewer-joined (id, name)`,
//! `viewer-left (id, reason)`. Actions: `kick (id) -> bool`, `revoke () -> new ticket`,
//! `get-viewer-stats (id) -> GstStructure`. The same events are posted as `iroh-viewer-joined`
//! / `iroh-viewer-left` element messages.
//!
//! ## Example
//!
//! Host (prints the ticket as an element message):
//! ```text
//! gst-launch-1.0 -m videotestsrc is-live=true ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1 \
//!     ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=60 ! h264parse config-interval=-1 \
//!     ! mpegtsmux ! irohsink
//! ```
//! Viewer:
//! ```text
//! gst-launch-1.0 irohsrc ticket=pp1… ! tsdemux ! h264parse ! avdec_h264 ! videoconvert ! autovideosink
//! ```

use gst::glib;
use gst::prelude::*;

mod delivery;
mod imp;
mod ladder;
mod rendition;
mod sender;
mod session;

pub use rendition::IrohSinkPad;

glib::wrapper! {
    /// The `irohsink` element.
    pub struct IrohSink(ObjectSubclass<imp::IrohSink>) @extends gst_base::BaseSink, gst::Element, gst::Object, @implements gst::ChildProxy;
}

/// Registers `irohsink` with `plugin`.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "irohsink", gst::Rank::NONE, IrohSink::static_type())
}
