//! Every file in `pipelines/` runs. The launcher's own four (`host-capture`, `host-audio`,
//! `host-serve`, `viewer-local`) are filled and run by every share in `e2e.rs` (and parsed in
//! `pipeline.rs`'s unit test); the ones people run by hand are run here the way
//! `pipelines/README.md` shows, placeholders filled, the rest emptied: each host pipeline
//! serves a ticket and each viewer pipeline decodes video and audio from it, on a real Xvfb
//! screen and a private PipeWire session.
//!
//! One test in this binary: it sets DISPLAY and the audio session's variables for the
//! elements that read them (ximagesrc, pulsesrc, autovideosink, autoaudiosink).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gst::prelude::*;
use pixelpass_test_support::*;

/// The files run by hand, and the launcher's (run by the e2e shares).
const BY_HAND: [&str; 5] = [
    "host-testsrc",
    "host-x11",
    "host-renditions",
    "viewer-check",
    "viewer-window",
];
const LAUNCHER: [&str; 6] = [
    "host-capture",
    "host-audio",
    "host-rung",
    "host-serve",
    "viewer-local",
    "viewer-builtin",
];

/// Endpoint properties for both sides: loopback, no relay.
const LOCAL: &str = "relay=disabled bind-address=127.0.0.1:0";

fn pipelines_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines")
}

/// A pipeline file with `vars` filled in and any other placeholder emptied.
fn filled(name: &str, vars: &[(&str, &str)]) -> String {
    let mut s = std::fs::read_to_string(pipelines_dir().join(format!("{name}.pipeline"))).unwrap();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    while let Some(i) = s.find('{') {
        let end = i + s[i..].find('}').expect("placeholders close");
        s.replace_range(i..=end, "");
    }
    s
}

/// A playing pipeline, set to NULL when dropped.
struct Running(gst::Pipeline);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

fn parse(desc: &str) -> Running {
    let p = gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap();
    Running(p)
}

impl Running {
    fn play(self) -> Running {
        self.0.set_state(gst::State::Playing).expect("the pipeline starts");
        self
    }
}

/// Runs host pipeline `name`; returns it with the ticket it posted.
fn host(name: &str) -> (Running, String) {
    let host = parse(&filled(name, &[("sink_props", LOCAL)])).play();
    let bus = host.0.bus().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_nseconds(left.as_nanos() as u64),
                &[gst::MessageType::Element, gst::MessageType::Error],
            )
            .unwrap_or_else(|| panic!("{name} posted no ticket"));
        match msg.view() {
            gst::MessageView::Error(e) => panic!("{name}: {} ({:?})", e.error(), e.debug()),
            gst::MessageView::Element(el) => {
                if let Some(s) = el.structure().filter(|s| s.name() == "iroh-ticket") {
                    return (host, s.get::<String>("ticket").unwrap());
                }
            }
            _ => {}
        }
    }
}

enum Note {
    Decoded(&'static str),
    Error(String),
}

/// Runs viewer pipeline `name` on `ticket` until its decoders have each output `frames`
/// buffers (video and audio); panics on an error or after 30 s.
fn view(name: &str, ticket: &str, frames: u32) {
    let viewer = parse(&filled(name, &[("ticket", ticket), ("src_props", LOCAL)]));
    let (tx, notes) = mpsc::channel();
    let errors = tx.clone();
    viewer.0.bus().unwrap().set_sync_handler(move |_, msg| {
        if let gst::MessageView::Error(e) = msg.view() {
            let _ = errors.send(Note::Error(format!("{} ({:?})", e.error(), e.debug())));
        }
        gst::BusSyncReply::Drop
    });
    let mut decoders = 0;
    for el in viewer.0.iterate_recurse().into_iter().flatten() {
        let kind = match el.factory().map(|f| f.name()) {
            Some(n) if n == "avdec_h264" => "video",
            Some(n) if n == "avdec_aac" => "audio",
            _ => continue,
        };
        decoders += 1;
        let (count, tx) = (Arc::new(AtomicU32::new(0)), tx.clone());
        el.static_pad("src")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                if count.fetch_add(1, Ordering::Relaxed) + 1 == frames {
                    let _ = tx.send(Note::Decoded(kind));
                }
                gst::PadProbeReturn::Ok
            });
    }
    assert_eq!(decoders, 2, "{name} decodes video and audio");
    let _viewer = viewer.play();
    let mut decoded = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while decoded.len() < 2 {
        match notes.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Note::Decoded(kind)) => decoded.push(kind),
            Ok(Note::Error(e)) => panic!("{name}: {e}"),
            Err(_) => panic!("{name}: decoded only {decoded:?} within 30 s"),
        }
    }
}

#[test]
fn every_pipeline_file_runs() {
    let mut files: Vec<String> = std::fs::read_dir(pipelines_dir())
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .into_string()
                .ok()?
                .strip_suffix(".pipeline")
                .map(String::from)
        })
        .collect();
    files.sort();
    let mut known: Vec<String> = BY_HAND.iter().chain(&LAUNCHER).map(|s| s.to_string()).collect();
    known.sort();
    assert_eq!(
        files, known,
        "a pipeline file this test does not run (or one it misses)"
    );

    require!(
        "Xvfb",
        "pipewire",
        "wireplumber",
        "pipewire-pulse",
        "pactl",
        "dbus-daemon"
    );
    let x = Xvfb::start(640, 480);
    let mut audio = Audio::start();
    audio.tone("pipelines-tone", 440);
    // SAFETY: the only test in this binary, before GStreamer starts a thread.
    unsafe {
        std::env::set_var("DISPLAY", &x.display);
        for (k, v) in &audio.env {
            std::env::set_var(k, v);
        }
    }
    gst::init().unwrap();
    gstiroh::plugin_register_static().unwrap();
    for host_file in ["host-testsrc", "host-x11", "host-renditions"] {
        let (_host, ticket) = host(host_file);
        for viewer_file in ["viewer-check", "viewer-window"] {
            view(viewer_file, &ticket, 10);
        }
    }
}
