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
//! **Renditions.** Each sink pad carries one encoding of the same content: the always pad
//! `sink`, and request pads `sink_%u` for more, each with the pad properties `rendition-name`
//! and `bitrate` (kbit/s; the ladder is ordered by it, highest first). They must share the
//! source frames, the MPEG-TS layout and the GOP cadence (equal `key-int-max`, no scene-cut
//! keyframes): every keyframe request goes to all pads with the same running time, and a
//! viewer is switched only where the target rendition has a GOP starting at the same running
//! time. A version 2 viewer starts on the highest rendition under its ceiling, moves down at
//! a GOP boundary when its path does not carry its rendition and up after a probe showed it
//! carries more (`PROTOCOL.md` has the rules); version 1 viewers get the top rendition. GOP
//! cutting and skipping stay the last resort on the lowest one.
//!
//! Signals (emitted from network threads): `viewer-joined (id, name)`,
//! `viewer-left (id, reason)`. Actions: `kick (id) -> bool`, `revoke () -> new ticket`,
//! `get-viewer-stats (id) -> GstStructure`, `set-max-bitrate (id, kbps) -> bool`. The same
//! events are posted as `iroh-viewer-joined` / `iroh-viewer-left` element messages, a switch
//! as `iroh-rendition-changed (id, from, to, reason)`.
//!
//! ## Example
//!
//! Host (prints the ticket as an element message):
//! ```text
//! gst-launch-1.0 -m videotestsrc is-live=true ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1 \
//!     ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=60 ! h264parse config-interval=-1 \
//!     ! mpegtsmux ! irohsink
//! ```
//! Host with two renditions (`pipelines/host-renditions.pipeline` has audio too):
//! ```text
//! gst-launch-1.0 -m videotestsrc is-live=true ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1 ! tee name=t \
//!     irohsink name=s sink::bitrate=2500 sink::rendition-name=720p sink_1::bitrate=600 sink_1::rendition-name=360p \
//!     t. ! queue ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=60 bitrate=2500 \
//!        ! h264parse config-interval=-1 ! mpegtsmux ! s.sink \
//!     t. ! queue ! videoscale ! video/x-raw,width=640,height=360 \
//!        ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=60 bitrate=600 \
//!        ! h264parse config-interval=-1 ! mpegtsmux ! s.sink_1
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
