//! Hosting: the iroh endpoint (and so the ticket) lives for the whole share, but the screen is
//! captured and encoded only while at least one viewer watches.
//!
//! Two pipelines: *serve* (`appsrc ! irohsink`, always playing, idle without viewers) and
//! *capture* (screen/audio → H.264/AAC → MPEG-TS → appsink), started by the first viewer and
//! stopped by the last. Capture output is re-timed onto the serve pipeline's clock and pushed
//! into the appsrc; keyframe requests from irohsink travel back to the capture encoder.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures_util::StreamExt as _;
use gst::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::capture;
use crate::cli::{HostArgs, Source};
use crate::config::Config;
use crate::encoder;
use crate::events::{Event, Events};
use crate::pipeline::{self, CaptureParts, quote};
use crate::quality::{self, Overrides};

/// A running capture session.
struct Capture {
    pipeline: gst::Pipeline,
    appsink: gst_app::AppSink,
    bus: tokio::task::JoinHandle<()>,
}

impl Capture {
    /// Wall-clock time of this pipeline's running time 0.
    fn epoch_unix_ns(&self) -> u64 {
        let now = gstiroh::net::unix_now_ns();
        match (self.pipeline.clock(), self.pipeline.base_time()) {
            (Some(c), Some(b)) => now.saturating_sub(c.time().saturating_sub(b).nseconds()),
            _ => now,
        }
    }

    fn stop(self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        self.bus.abort();
    }
}

/// Why the capture pipeline asks the host loop to act.
enum CaptureNote {
    Error(String),
}

/// Everything decided before the share starts.
struct Plan {
    capture_desc: String,
    started: Event,
    window: Option<u64>,
}

fn plan(args: &HostArgs, events: &Events) -> Result<(Plan, u32)> {
    let config = Config::load()?;
    let max_viewers = args.max_viewers.unwrap_or_else(|| config.default_max_viewers());
    let q = quality::resolve(
        args.quality,
        Overrides {
            max_height: args.max_height,
            bitrate_kbps: args.bitrate,
            framerate: args.framerate,
        },
        config.upstream_mbps(),
        args.max_viewers.unwrap_or(1),
    );
    let cap = capture::plan(args)?;
    let (width, height) = quality::output_size(cap.width, cap.height, q.max_height);
    let enc = encoder::choose(args.no_hwencode, args.encoder.as_deref())?;
    eprintln!("pixelpass: encoder {}: {}", enc.name, enc.reason);
    let audio_source = if args.no_audio {
        None
    } else if args.source == Source::Test {
        Some("audiotestsrc is-live=true wave=sine freq=440 volume=0.3".to_string())
    } else {
        match crate::audio::monitor::default_monitor() {
            Ok(dev) => Some(format!("pulsesrc device={} client-name=pixelpass", quote(&dev))),
            Err(e) => {
                events.emit(Event::Warning {
                    message: format!("sharing video without sound: {e} (use --no-audio to silence this)"),
                });
                None
            }
        }
    };
    let encoder_desc = enc.description(q.bitrate_kbps, q.framerate);
    let capture_desc = pipeline::host_capture(&CaptureParts {
        video_source: &cap.source,
        format: enc.format,
        width,
        height,
        fps: q.framerate,
        encoder: &encoder_desc,
        audio_source: audio_source.as_deref(),
    })?;
    // Fail now, not when the first viewer arrives, if an element is missing.
    pipeline::launch(&capture_desc, "capture").with_context(|| capture_desc.clone())?;
    let started = Event::CaptureStarted {
        what: cap.what.clone(),
        encoder: enc.name.clone(),
        width,
        height,
        fps: q.framerate,
        bitrate_kbps: q.bitrate_kbps,
        audio: audio_source.is_some(),
        epoch_unix_ns: 0,
    };
    Ok((
        Plan {
            capture_desc,
            started,
            window: cap.window,
        },
        max_viewers,
    ))
}

/// Starts the capture pipeline feeding `appsrc`.
fn start_capture(
    desc: &str,
    appsrc: &gst_app::AppSrc,
    serve: &gst::Pipeline,
    notes: tokio::sync::mpsc::UnboundedSender<CaptureNote>,
) -> Result<Capture> {
    let pipeline = pipeline::launch(desc, "capture")?;
    // Same clock as the serve pipeline, so timestamps map across by base time alone.
    pipeline.use_clock(Some(&gst::SystemClock::obtain()));
    let appsink: gst_app::AppSink = pipeline::child(&pipeline, "out", "capture")?;
    let src = appsrc.clone();
    let serve_weak = serve.downgrade();
    let cap_weak = pipeline.downgrade();
    let mut caps_set = false;
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let (Some(serve), Some(cap)) = (serve_weak.upgrade(), cap_weak.upgrade()) else {
                    return Err(gst::FlowError::Flushing);
                };
                if !caps_set && let Some(caps) = sample.caps() {
                    src.set_caps(Some(&caps.to_owned()));
                    caps_set = true;
                }
                // capture running time → serve running time (both on the system clock)
                let shift = cap.base_time().map_or(0, |b| b.nseconds() as i128)
                    - serve.base_time().map_or(0, |b| b.nseconds() as i128);
                let retime = |b: &mut gst::BufferRef| {
                    let map = |t: Option<gst::ClockTime>| {
                        t.map(|t| gst::ClockTime::from_nseconds((t.nseconds() as i128 + shift).max(0) as u64))
                    };
                    let (pts, dts) = (map(b.pts()), map(b.dts()));
                    b.set_pts(pts);
                    b.set_dts(dts);
                };
                if let Some(list) = sample.buffer_list() {
                    let mut list = list.to_owned();
                    list.make_mut().foreach_mut(|mut b, _| {
                        retime(b.make_mut());
                        std::ops::ControlFlow::Continue(Some(b))
                    });
                    src.push_buffer_list(list)?;
                } else if let Some(buf) = sample.buffer() {
                    let mut b = buf.to_owned();
                    retime(b.make_mut());
                    src.push_buffer(b)?;
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    let bus = pipeline.bus().expect("pipeline has a bus");
    let bus_task = tokio::spawn(async move {
        let mut stream = bus.stream();
        while let Some(msg) = stream.next().await {
            if let gst::MessageView::Error(e) = msg.view() {
                let _ = notes.send(CaptureNote::Error(format!(
                    "{}{}",
                    e.error(),
                    e.debug().map(|d| format!(" ({d})")).unwrap_or_default()
                )));
            }
        }
    });
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| anyhow!("cannot start capturing"))?;
    Ok(Capture {
        pipeline,
        appsink,
        bus: bus_task,
    })
}

/// Runs a share until ctrl-c (`cancel`), a fatal error, or the shared window closing.
pub async fn run(args: HostArgs, events: Arc<Events>, cancel: CancellationToken) -> Result<()> {
    let (plan, max_viewers) = {
        let args = args.clone();
        let ev = events.clone();
        tokio::task::spawn_blocking(move || plan(&args, &ev)).await??
    };
    let mut sink_props = format!("max-viewers={max_viewers}");
    if let Some(r) = &args.common.relay {
        sink_props += &format!(" relay={}", quote(r));
    }
    if let Some(b) = &args.common.bind {
        sink_props += &format!(" bind-address={}", quote(b));
    }
    if let Some(k) = &args.key_file {
        sink_props += &format!(" key-file={}", quote(&k.to_string_lossy()));
    }
    let serve = pipeline::launch(&pipeline::host_serve(&sink_props)?, "serve")?;
    serve.use_clock(Some(&gst::SystemClock::obtain()));
    let appsrc: gst_app::AppSrc = pipeline::child(&serve, "src", "serve")?;
    let sink: gst::Element = pipeline::child(&serve, "sink", "serve")?;

    // Keyframe requests from irohsink (a viewer joined) go back to the live encoder.
    let live_sink: Arc<Mutex<Option<gst_app::AppSink>>> = Arc::new(Mutex::new(None));
    {
        let live_sink = live_sink.clone();
        appsrc
            .static_pad("src")
            .unwrap()
            .add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
                if let Some(gst::PadProbeData::Event(ev)) = &info.data
                    && ev.structure().is_some_and(|s| s.name() == "GstForceKeyUnit")
                    && let Some(s) = live_sink.lock().unwrap().as_ref()
                {
                    s.send_event(ev.clone());
                }
                gst::PadProbeReturn::Ok
            });
    }

    let mut bus = serve.bus().expect("pipeline has a bus").stream();
    serve
        .set_state(gst::State::Playing)
        .map_err(|_| anyhow!("cannot start the iroh endpoint"))?;
    let result = share(
        &args, plan, &serve, &appsrc, &sink, &live_sink, &mut bus, &events, &cancel,
    )
    .await;

    // Shutdown: stop capturing, end the stream so viewers hear "the host ended the share",
    // then close the endpoint. Bounded: one ctrl-c is always enough.
    if let Some(c) = live_sink.lock().unwrap().take() {
        drop(c);
    }
    let _ = appsrc.end_of_stream();
    let _ = tokio::time::timeout(Duration::from_millis(150), async {
        while let Some(msg) = bus.next().await {
            if matches!(msg.view(), gst::MessageView::Eos(_)) {
                break;
            }
        }
    })
    .await;
    let s = serve.clone();
    let _ = tokio::task::spawn_blocking(move || s.set_state(gst::State::Null)).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn share(
    args: &HostArgs,
    plan: Plan,
    serve: &gst::Pipeline,
    appsrc: &gst_app::AppSrc,
    sink: &gst::Element,
    live_sink: &Arc<Mutex<Option<gst_app::AppSink>>>,
    bus: &mut gst::bus::BusStream,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<()> {
    let _ = args;
    let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    let mut capture: Option<Capture> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_bytes = (0u64, Instant::now());
    let result = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            msg = bus.next() => {
                let Some(msg) = msg else { break Err(anyhow!("the serve pipeline stopped")) };
                match msg.view() {
                    gst::MessageView::Error(e) => {
                        break Err(anyhow!("{}{}", e.error(), e.debug().map(|d| format!(" ({d})")).unwrap_or_default()));
                    }
                    gst::MessageView::Element(el) => {
                        let Some(s) = el.structure() else { continue };
                        match s.name().as_str() {
                            "iroh-ticket" => {
                                if let Ok(t) = s.get::<String>("ticket") {
                                    events.emit(Event::Ticket { ticket: t });
                                }
                            }
                            "iroh-viewer-joined" => {
                                events.emit(Event::ViewerJoined {
                                    id: s.get("id").unwrap_or_default(),
                                    name: s.get("name").unwrap_or_default(),
                                    path: s.get("path").unwrap_or_default(),
                                });
                                if capture.is_none() {
                                    match start_capture(&plan.capture_desc, appsrc, serve, notes_tx.clone()) {
                                        Ok(c) => {
                                            *live_sink.lock().unwrap() = Some(c.appsink.clone());
                                            let mut started = plan.started.clone();
                                            if let Event::CaptureStarted { epoch_unix_ns, .. } = &mut started {
                                                *epoch_unix_ns = c.epoch_unix_ns();
                                            }
                                            capture = Some(c);
                                            events.emit(started);
                                        }
                                        Err(e) => break Err(e.context("cannot start capturing")),
                                    }
                                }
                            }
                            "iroh-viewer-left" => {
                                events.emit(Event::ViewerLeft {
                                    id: s.get("id").unwrap_or_default(),
                                    reason: s.get("reason").unwrap_or_default(),
                                });
                                if sink.property::<u32>("num-viewers") == 0
                                    && let Some(c) = capture.take()
                                {
                                    *live_sink.lock().unwrap() = None;
                                    c.stop();
                                    events.emit(Event::CaptureStopped { reason: "no viewers".into() });
                                }
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            note = notes.recv() => {
                let Some(CaptureNote::Error(e)) = note else { continue };
                if let Some(id) = plan.window
                    && tokio::task::spawn_blocking(move || capture::x11::window_gone(id)).await.unwrap_or(true)
                {
                    events.emit(Event::Ended { reason: "the shared window was closed: the share ends".into() });
                    break Ok(());
                }
                break Err(anyhow!("capture failed: {e}"));
            }
            _ = tick.tick() => {
                if let Some(id) = plan.window
                    && capture.is_some()
                    && tokio::task::spawn_blocking(move || capture::x11::window_gone(id)).await.unwrap_or(false)
                {
                    events.emit(Event::Ended { reason: "the shared window was closed: the share ends".into() });
                    break Ok(());
                }
                let stats = sink.property::<Option<gst::Structure>>("stats");
                if let Some(st) = stats {
                    let bytes = st.get::<u64>("bytes-sent").unwrap_or(0);
                    let dt = last_bytes.1.elapsed().as_secs_f64().max(0.001);
                    let kbps = bytes.saturating_sub(last_bytes.0) as f64 * 8.0 / dt / 1000.0;
                    last_bytes = (bytes, Instant::now());
                    let paths = st
                        .get::<gst::Array>("viewer-stats")
                        .map(|a| a.iter().filter_map(|v| v.get::<gst::Structure>().ok()?.get::<String>("path").ok()).collect())
                        .unwrap_or_default();
                    events.emit(Event::HostStats {
                        viewers: st.get("viewers").unwrap_or(0),
                        bitrate_kbps: kbps,
                        dropped_gops: st.get("dropped-gops").unwrap_or(0),
                        paths,
                    });
                }
            }
        }
    };
    if let Some(c) = capture.take() {
        *live_sink.lock().unwrap() = None;
        c.stop();
        events.emit(Event::CaptureStopped {
            reason: "the share ended".into(),
        });
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support as support;

    /// Failed capture setups leak nothing: 20 bad window ids and 20 capture pipelines started
    /// and torn down on a window that does not exist leave the fd count where it was.
    #[test]
    fn no_fd_growth_across_failed_capture_setups() {
        if !support::have("Xvfb") || !support::have("xwininfo") {
            eprintln!("SKIP: Xvfb/xwininfo not installed");
            return;
        }
        gst::init().unwrap();
        gstiroh::plugin_register_static().unwrap();
        let x = support::Xvfb::start(320, 240);
        // SAFETY: only this test reads DISPLAY in this process.
        unsafe { std::env::set_var("DISPLAY", &x.display) };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let serve = gst::parse::launch("appsrc name=src ! fakesink").unwrap();
        let serve = serve.downcast::<gst::Pipeline>().unwrap();
        serve.set_state(gst::State::Playing).unwrap();
        let appsrc = serve.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
        let args = crate::cli::HostArgs {
            window: false,
            window_id: Some("0x7ffff01".into()),
            monitor: None,
            display_server: Some(crate::cli::DisplayServer::X11),
            source: Source::Screen,
            no_hwencode: true,
            encoder: None,
            no_audio: true,
            max_viewers: None,
            quality: crate::cli::Quality::Low,
            max_height: None,
            bitrate: None,
            framerate: None,
            key_file: None,
            common: crate::cli::Common {
                relay: None,
                events: None,
                bind: None,
            },
        };
        let desc = format!(
            "ximagesrc display-name={} xid=0x7ffff01 ! videoconvert ! x264enc ! h264parse ! mpegtsmux ! appsink name=out",
            x.display
        );
        let attempt = || {
            let e = capture::plan(&args).unwrap_err();
            assert!(e.to_string().contains("there is no X11 window"), "{e}");
            rt.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                if let Ok(c) = start_capture(&desc, &appsrc, &serve, tx) {
                    let _ = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
                    c.stop();
                }
            });
        };
        attempt();
        let before = support::fd_count();
        for _ in 0..20 {
            attempt();
        }
        std::thread::sleep(Duration::from_millis(200));
        let after = support::fd_count();
        assert!(after <= before, "fds before {before}, after 20 failed setups {after}");
        serve.set_state(gst::State::Null).unwrap();
    }
}
