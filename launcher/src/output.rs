//! Where a share's MPEG-TS goes besides its viewers: a file (`record.rs`) or a broadcast
//! server (`publish.rs`). One pipeline shape for both, separate from the share's own: a leaky
//! `appsrc` (a slow disk or server loses its own data, never blocks the share), not live (the
//! timing is the stream's own, see [`push`]), then either
//! the MPEG-TS as it is or remuxed (tsdemux → h264parse / aacparse → a muxer), then the sink.

use anyhow::Result;
use gst::prelude::*;

use crate::pipeline;

/// An output pipeline and the appsrc that feeds it.
pub struct OutputPipeline {
    pub pipeline: gst::Pipeline,
    pub src: gst_app::AppSrc,
}

/// Builds `appsrc ! [remux into `mux`] ! sink` (descriptions in `gst-launch` syntax; the
/// muxer, when there is one, must be named `mux`).
pub fn build(mux: Option<&str>, sink: &str, what: &str) -> Result<OutputPipeline> {
    let src = "appsrc name=src is-live=false format=bytes max-bytes=33554432 leaky-type=downstream";
    let desc = match mux {
        None => format!("{src} ! {sink}"),
        Some(mux) => format!("{src} ! tsdemux name=demux {mux} ! {sink}"),
    };
    let pipeline = pipeline::launch(&desc, what)?;
    let src = pipeline::child(&pipeline, "src", what)?;
    if mux.is_some() {
        remux_each_stream(&pipeline, what)?;
    }
    Ok(OutputPipeline { pipeline, src })
}

/// Links each elementary stream tsdemux finds (H.264, AAC) through its parser into the muxer.
fn remux_each_stream(pipeline: &gst::Pipeline, what: &str) -> Result<()> {
    let demux: gst::Element = pipeline::child(pipeline, "demux", what)?;
    let mux: gst::Element = pipeline::child(pipeline, "mux", what)?;
    let bin = pipeline.downgrade();
    demux.connect_pad_added(move |_, pad| {
        let Some(bin) = bin.upgrade() else { return };
        let caps = pad.current_caps().or_else(|| pad.allowed_caps());
        let kind = caps
            .as_ref()
            .and_then(|c| c.structure(0))
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        let parser = match kind.as_str() {
            "video/x-h264" => "h264parse",
            "audio/mpeg" => "aacparse",
            _ => return, // a stream the containers here do not carry: left out
        };
        let Ok(chain) = gst::parse::bin_from_description(&format!("queue ! {parser}"), true) else {
            return;
        };
        let _ = bin.add(&chain);
        let _ = chain.sync_state_with_parent();
        let linked = pad.link(&chain.static_pad("sink").expect("ghost sink")).is_ok() && chain.link(&mux).is_ok();
        if !linked {
            gst::element_error!(bin, gst::StreamError::Mux, ("cannot pass on the {} stream", kind));
        }
    });
    Ok(())
}

/// Feeds one buffer of MPEG-TS to an output's `appsrc`, without its timestamps: they are
/// arrival times (capture or receive), and tsdemux would take them for a live source's clock
/// and bend the stream's own PTS/DTS by their jitter (non-monotonic DTS in the remuxed file).
/// The stream's timing is in the MPEG-TS itself. Flags (DISCONT) stay.
pub fn push(src: &gst_app::AppSrc, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
    let mut b = buffer.copy();
    {
        let b = b.make_mut();
        b.set_pts(gst::ClockTime::NONE);
        b.set_dts(gst::ClockTime::NONE);
        b.set_duration(gst::ClockTime::NONE);
    }
    src.push_buffer(b)
}
