//! Shared helpers for the element tests: real elements, real iroh endpoints on loopback,
//! relays off, ephemeral ports.
#![allow(dead_code)]

use std::sync::Once;
use std::time::{Duration, Instant};

use gst::prelude::*;

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstiroh::plugin_register_static().expect("register gst-iroh");
    });
}

/// A host: `irohsink` in a harness we push buffers into, bound to loopback, relay off.
pub fn host(props: &[(&str, &dyn ToValue)]) -> gst_check::Harness {
    init();
    let el = gst::ElementFactory::make("irohsink")
        .property("relay", "disabled")
        .property("bind-address", "127.0.0.1:0")
        .build()
        .unwrap();
    for (k, v) in props {
        el.set_property_from_value(k, &v.to_value());
    }
    let mut h = gst_check::Harness::with_element(&el, Some("sink"), None);
    h.play();
    h
}

pub fn ticket(h: &gst_check::Harness) -> String {
    h.element()
        .unwrap()
        .property::<Option<String>>("ticket")
        .expect("ticket set once started")
}

/// A viewer pipeline: `irohsrc ! <tail>` with the appsink named `sink`.
pub struct Viewer {
    pub pipeline: gst::Pipeline,
    pub sink: gst_app::AppSink,
    pub src: gst::Element,
}

impl Viewer {
    pub fn new(ticket: &str, tail: &str) -> Self {
        Self::with_src_props(ticket, "", tail)
    }

    pub fn with_src_props(ticket: &str, src_props: &str, tail: &str) -> Self {
        init();
        let desc = format!(
            "irohsrc name=src ticket={ticket} relay=disabled bind-address=127.0.0.1:0 {src_props} ! {tail} ! appsink name=sink sync=false"
        );
        let pipeline = gst::parse::launch(&desc).unwrap().downcast::<gst::Pipeline>().unwrap();
        let sink = pipeline
            .by_name("sink")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        let src = pipeline.by_name("src").unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        Viewer { pipeline, sink, src }
    }

    pub fn pull(&self, timeout: Duration) -> Option<gst::Sample> {
        self.sink
            .try_pull_sample(gst::ClockTime::from_nseconds(timeout.as_nanos() as u64))
    }

    /// First error or warning on the bus within `timeout`.
    pub fn problem(&self, timeout: Duration) -> Option<String> {
        let bus = self.pipeline.bus().unwrap();
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) else {
                break;
            };
            match msg.view() {
                gst::MessageView::Error(e) => return Some(format!("error: {}", e.error())),
                gst::MessageView::Warning(w) => return Some(format!("warning: {}", w.error())),
                _ => {}
            }
        }
        None
    }

    /// First error on the bus within `timeout`, with the `reason` field of its details.
    pub fn error(&self, timeout: Duration) -> Option<(gst::glib::Error, String)> {
        let bus = self.pipeline.bus().unwrap();
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
            &[gst::MessageType::Error],
        )?;
        let gst::MessageView::Error(e) = msg.view() else {
            unreachable!("filtered for errors")
        };
        let reason = e
            .details()
            .and_then(|d| d.get::<String>("reason").ok())
            .unwrap_or_default();
        Some((e.error(), reason))
    }

    pub fn stats(&self) -> gst::Structure {
        self.src.property::<gst::Structure>("stats")
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// A synthetic buffer: `tag` repeated `len` times; keyframe unless `delta`.
pub fn buf(tag: u8, len: usize, delta: bool, pts_ms: u64) -> gst::Buffer {
    let mut b = gst::Buffer::from_mut_slice(vec![tag; len]);
    {
        let b = b.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(pts_ms));
        if delta {
            b.set_flags(gst::BufferFlags::DELTA_UNIT);
        }
    }
    b
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

pub fn num_viewers(h: &gst_check::Harness) -> u32 {
    h.element().unwrap().property::<u32>("num-viewers")
}

/// A live H.264/MPEG-TS host pipeline ending in `irohsink name=sink`.
pub fn ts_host_pipeline(width: u32, height: u32, extra_sink: &str) -> gst::Pipeline {
    init();
    let desc = format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={width},height={height},framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=60 bitrate=2000 ! h264parse config-interval=-1 \
         ! mpegtsmux ! irohsink name=sink relay=disabled bind-address=127.0.0.1:0 {extra_sink}"
    );
    gst::parse::launch(&desc).unwrap().downcast::<gst::Pipeline>().unwrap()
}

/// Counts the buffers leaving the first element made by `factory` in `pipeline`.
pub fn count_buffers(pipeline: &gst::Pipeline, factory: &str) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    let el = pipeline
        .iterate_recurse()
        .into_iter()
        .flatten()
        .find(|e| e.factory().is_some_and(|f| f.name() == factory))
        .unwrap_or_else(|| panic!("no {factory} in the pipeline"));
    let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = n.clone();
    el.static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    n
}

pub fn pipeline_ticket(p: &gst::Pipeline) -> String {
    p.by_name("sink").unwrap().property::<Option<String>>("ticket").unwrap()
}

/// Collects parser and decoder warnings (h264parse "broken/invalid nal" for slices without
/// their SPS/PPS, libav "reference picture missing", …): corrupt input is reported there, not
/// always on the bus. Process-wide; clear it before the part you measure.
pub fn decode_problems() -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static PROBLEMS: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();
    PROBLEMS
        .get_or_init(|| {
            let problems = Arc::new(Mutex::new(Vec::new()));
            let p = problems.clone();
            for cat in ["libav", "h264parse"] {
                gst::log::set_threshold_for_name(cat, gst::DebugLevel::Warning);
            }
            gst::log::add_log_function(move |cat, level, _file, _func, _line, _obj, msg| {
                if matches!(cat.name(), "libav" | "h264parse") && level <= gst::DebugLevel::Warning {
                    p.lock().unwrap().push(format!(
                        "{level:?}: {}",
                        msg.get().map(|m| m.to_string()).unwrap_or_default()
                    ));
                }
            });
            problems
        })
        .clone()
}

/// A temporary directory removed on drop, so a failing test leaves nothing behind.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("gst-iroh-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
