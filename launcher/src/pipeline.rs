//! Fills the pipeline templates in `pipelines/` (compiled in) with the host's choices.

use anyhow::{Result, anyhow};
use gst::prelude::*;

use crate::cli::Common;

const HOST_CAPTURE: &str = include_str!("../../pipelines/host-capture.pipeline");
const HOST_AUDIO: &str = include_str!("../../pipelines/host-audio.pipeline");
const HOST_SERVE: &str = include_str!("../../pipelines/host-serve.pipeline");
const HOST_RUNG: &str = include_str!("../../pipelines/host-rung.pipeline");
const VIEWER_LOCAL: &str = include_str!("../../pipelines/viewer-local.pipeline");

/// Registers the elements the launcher's pipelines use besides GStreamer's own: `irohsink` and
/// `irohsrc`, and `halfscale` for the rendition ladder.
pub fn register_elements() -> Result<(), gst::glib::BoolError> {
    gstiroh::plugin_register_static()?;
    gsthalfscale::register_static()
}

/// Replaces every `{key}`; fails if a placeholder is left (a template/launcher mismatch).
pub fn fill(template: &str, vars: &[(&str, &str)]) -> Result<String> {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    if let Some(i) = s.find('{') {
        let end = s[i..].find('}').map_or(s.len(), |e| i + e + 1);
        return Err(anyhow!("pipeline template placeholder {} was not filled", &s[i..end]));
    }
    Ok(s.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Parses a pipeline description; `what` names it in errors. FATAL_ERRORS: without it a
/// missing element still yields a partial pipeline next to the error, which the bindings never
/// free.
pub fn launch(desc: &str, what: &str) -> Result<gst::Pipeline> {
    gst::parse::launch_full(desc, None, gst::ParseFlags::FATAL_ERRORS)
        .map_err(|e| anyhow!("cannot build the {what} pipeline: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("the {what} description is not a pipeline"))
}

/// Sets `pipeline` playing. When an element refuses, the error says what it posted (its own
/// words and error domain, kept as the source), not just that the state change failed. Call it
/// before taking the bus as a stream: the stream would take the message first.
pub fn play(pipeline: &gst::Pipeline, what: &str) -> Result<()> {
    if pipeline.set_state(gst::State::Playing).is_ok() {
        return Ok(());
    }
    let posted = pipeline
        .bus()
        .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]))
        .and_then(|msg| match msg.view() {
            gst::MessageView::Error(e) => Some(e.error()),
            _ => None,
        });
    let _ = pipeline.set_state(gst::State::Null);
    Err(match posted {
        Some(e) => anyhow::Error::new(e).context(format!("cannot start {what}")),
        None => anyhow!("cannot start {what} (no element said why)"),
    })
}

/// A pipeline set to NULL when dropped, on every path (done, failed, or its owner's future
/// dropped by ctrl-c).
pub struct StopOnDrop(pub gst::Pipeline);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// The element `name` of `pipeline`, as type `T`.
pub fn child<T: IsA<gst::Element>>(pipeline: &gst::Pipeline, name: &str, what: &str) -> Result<T> {
    pipeline
        .by_name(name)
        .and_then(|e| e.downcast::<T>().ok())
        .ok_or_else(|| anyhow!("the {what} pipeline has no {} named {name}", T::static_type().name()))
}

/// A property value quoted for a pipeline description.
pub fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The endpoint properties both sides take from the command line (`relay`, `bind-address`),
/// as ` name=value` pairs for `irohsink`'s or `irohsrc`'s description.
pub fn endpoint_props(common: &Common) -> String {
    let mut props = String::new();
    if let Some(r) = &common.relay {
        props += &format!(" relay={}", quote(&r.to_string()));
    }
    if let Some(b) = &common.bind {
        props += &format!(" bind-address={}", quote(&b.to_string()));
    }
    props
}

/// What the capture pipeline is made of.
pub struct CaptureParts<'a> {
    pub video_source: &'a str,
    pub format: &'a str,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub encoder: &'a str,
    /// The source delivers frames at the rate its caps ask for (ximagesrc, videotestsrc), so
    /// no videorate: it would hold every frame until the next one arrives (+1 frame of
    /// latency). A source that sends frames only when the desktop draws (the portal) gets one,
    /// to keep the rate with duplicates.
    pub paced_source: bool,
    /// `gst-launch` description of the audio source, if audio is shared.
    pub audio_source: Option<&'a str>,
    /// Lower renditions, top first, each scaled from the frames of the one above (a small
    /// picture is far cheaper to scale from a medium one than from the full one) and encoded
    /// into its own MPEG-TS (with the same audio), to appsink `out_N`.
    pub rungs: &'a [RungParts],
}

/// One lower rendition of the capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RungParts {
    pub width: u32,
    pub height: u32,
    /// Encoder element description with its settings.
    pub encoder: String,
}

/// The capture pipeline; with rungs a tee after each rendition's scale (`vt`, `vt_N`) feeds
/// its encoder and the next rung's scale, and one audio encode feeds every mux (`at`).
pub fn host_capture(p: &CaptureParts) -> Result<String> {
    let ladder = !p.rungs.is_empty();
    let audio = match p.audio_source {
        Some(src) => fill(
            HOST_AUDIO,
            &[
                ("audio_source", src),
                ("audio_tee", if ladder { "! tee name=at at." } else { "" }),
            ],
        )?,
        None => String::new(),
    };
    let mut rungs = String::new();
    let mut above = (p.width, p.height);
    for (i, r) in p.rungs.iter().enumerate() {
        let n = (i + 1).to_string();
        let audio_branch = match p.audio_source {
            Some(_) => format!("at. ! queue max-size-time=300000000 ! mux_{n}."),
            None => String::new(),
        };
        let from = if i == 0 { "vt".to_string() } else { format!("vt_{i}") };
        let tee = if i + 1 < p.rungs.len() {
            format!("! tee name=vt_{n} vt_{n}. ! queue max-size-buffers=2")
        } else {
            String::new()
        };
        rungs += &fill(
            HOST_RUNG,
            &[
                ("from", &from),
                ("scale", rung_scale(above, (r.width, r.height))),
                ("tee", &tee),
                ("width", &r.width.to_string()),
                ("height", &r.height.to_string()),
                ("encoder", &r.encoder),
                ("audio_branch", &audio_branch),
                ("n", &n),
            ],
        )?;
        rungs.push(' ');
        above = (r.width, r.height);
    }
    fill(
        HOST_CAPTURE,
        &[
            ("video_source", p.video_source),
            ("format", p.format),
            ("width", &p.width.to_string()),
            ("height", &p.height.to_string()),
            ("fps", &p.fps.to_string()),
            ("encoder", p.encoder),
            ("rate", if p.paced_source { "" } else { "! videorate" }),
            (
                "video_tee",
                if ladder {
                    "! tee name=vt vt. ! queue max-size-buffers=2"
                } else {
                    ""
                },
            ),
            ("audio", &audio),
            ("rungs", &rungs),
        ],
    )
}

/// How a rung is scaled from the picture above it: at half the size or less, `halfscale`
/// first (a 2×2 mean, several times cheaper than `videoscale` on the large picture), then
/// `videoscale` for the rest (passthrough when halving was all).
fn rung_scale(above: (u32, u32), rung: (u32, u32)) -> &'static str {
    let half = (
        gsthalfscale::halve::half_even(above.0),
        gsthalfscale::halve::half_even(above.1),
    );
    if rung.0 <= half.0 && rung.1 <= half.1 {
        "halfscale ! videoscale"
    } else {
        "videoscale"
    }
}

/// The serve pipeline: `appsrc name=src` into irohsink's always pad, and one more appsrc
/// (`src_N` into request pad `sink_N`) per lower rendition. `renditions`: (name, kbit/s) of
/// every rendition, top first.
pub fn host_serve(sink_props: &str, renditions: &[(String, u32)]) -> Result<String> {
    let mut props = sink_props.to_string();
    let mut rungs = String::new();
    for (i, (name, kbps)) in renditions.iter().enumerate() {
        let pad = if i == 0 {
            "sink".to_string()
        } else {
            format!("sink_{i}")
        };
        props += &format!(" {pad}::rendition-name={} {pad}::bitrate={kbps}", quote(name));
        if i > 0 {
            rungs +=
                &format!("appsrc name=src_{i} is-live=true format=time do-timestamp=false max-bytes=0 ! sink.{pad} ");
        }
    }
    fill(HOST_SERVE, &[("sink_props", &props), ("rungs", &rungs)])
}

pub fn viewer_local(ticket: &str, src_props: &str) -> Result<String> {
    fill(VIEWER_LOCAL, &[("ticket", ticket), ("src_props", src_props)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_and_parse() {
        gst::init().unwrap();
        register_elements().unwrap();
        let capture = |rungs: &[RungParts]| {
            host_capture(&CaptureParts {
                video_source: "videotestsrc is-live=true",
                format: "I420",
                width: 854,
                height: 480,
                fps: 30,
                encoder: "x264enc tune=zerolatency",
                paced_source: true,
                audio_source: Some("audiotestsrc is-live=true"),
                rungs,
            })
            .unwrap()
        };
        let d = capture(&[]);
        assert!(d.contains("width=854,height=480,framerate=30/1"), "{d}");
        assert!(!d.contains("tee"), "one encode: no tee: {d}");
        gst::parse::launch(&d).expect("capture pipeline parses");
        let rung = |width, height| RungParts {
            width,
            height,
            encoder: "x264enc tune=zerolatency".into(),
        };
        let d = capture(&[rung(426, 240), rung(284, 160)]);
        assert!(
            d.contains("vt. ! queue max-size-buffers=2 ! halfscale ! videoscale ! video/x-raw,width=426"),
            "half the size: halved first: {d}"
        );
        let p = gst::parse::launch(&d).expect("ladder capture pipeline parses");
        let p = p.downcast::<gst::Pipeline>().unwrap();
        assert!(["out", "out_1", "out_2"].iter().all(|n| p.by_name(n).is_some()), "{d}");
        assert!(
            d.contains("vt_1. ! queue max-size-buffers=2 ! videoscale ! video/x-raw,width=284"),
            "the lowest rung is scaled from the one above: {d}"
        );
        gst::parse::launch(&host_serve("relay=disabled", &[]).unwrap()).expect("serve pipeline parses");
        let ladder = [("480p".to_string(), 1000), ("240p".to_string(), 333)];
        let serve = gst::parse::launch(&host_serve("relay=disabled", &ladder).unwrap()).expect("ladder serve parses");
        let serve = serve.downcast::<gst::Pipeline>().unwrap();
        let pad = serve
            .by_name("sink")
            .unwrap()
            .static_pad("sink_1")
            .expect("rung pad linked");
        assert_eq!(pad.property::<u32>("bitrate"), 333);
        gst::parse::launch(&viewer_local("pp1abc", "").unwrap()).expect("viewer pipeline parses");
        assert!(fill("a {b} c", &[]).unwrap_err().to_string().contains("{b}"));
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
        let common = Common {
            relay: Some(gstiroh::net::Relay::Disabled),
            events: None,
            bind: Some("127.0.0.1:0".parse().unwrap()),
        };
        assert_eq!(
            endpoint_props(&common),
            " relay=\"disabled\" bind-address=\"127.0.0.1:0\""
        );
    }
}
