//! Hosting: the iroh endpoint (and so the ticket) lives for the whole share, but the screen is
//! captured and encoded only while at least one viewer watches.
//!
//! Two pipelines: *serve* (`appsrc ! irohsink`, always playing, idle without viewers) and
//! *capture* (screen/audio → H.264/AAC → MPEG-TS → appsink), started by the first viewer and
//! stopped by the last. Capture output is re-timed onto the serve pipeline's clock and pushed
//! into the appsrc; keyframe requests from irohsink travel back to the capture encoder.
//! On Wayland the first viewer also triggers the portal dialog; per-app audio sets up its
//! capture sink for as long as the capture runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures_util::StreamExt as _;
use gst::prelude::*;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::audio::apps::{AppAudio, Rule};
use crate::capture::{self, wayland};
use crate::cli::{HostArgs, Source};
use crate::config::Config;
use crate::encoder;
use crate::events::{Event, Events};
use crate::pipeline::{self, CaptureParts, quote};
use crate::quality::{self, Overrides};
use crate::text::list_or_none;

/// A running capture session. Field order is teardown order after the pipeline stops: the
/// watchers, the per-app sink, then the portal cast (its fd and session).
struct Capture {
    pipeline: gst::Pipeline,
    appsink: gst_app::AppSink,
    bus: tokio::task::JoinHandle<()>,
    watch: Option<CastWatch>,
    apps: Option<AppAudio>,
    cast: Option<wayland::Cast>,
}

/// What watches a portal cast from outside the pipeline; dropping it stops watching.
struct CastWatch {
    /// waits for the session's Closed signal (a task that ends with its handle, and with it
    /// what it holds: a portal session, a bus connection)
    _closed: AbortOnDropHandle<()>,
    /// a PipeWire client that sees the stream node go away
    _node: crate::pw::Client,
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

    async fn stop(self) {
        let Capture {
            pipeline,
            appsink,
            bus,
            watch,
            apps,
            cast,
        } = self;
        let _ = tokio::task::spawn_blocking(move || pipeline.set_state(gst::State::Null)).await;
        drop(appsink);
        bus.abort();
        // (stopping a PipeWire client joins its thread: not on the async workers)
        let _ = tokio::task::spawn_blocking(move || drop((watch, apps))).await;
        if let Some(c) = cast {
            let _ = tokio::time::timeout(Duration::from_secs(1), c.close()).await;
        }
    }
}

/// What the host says when the desktop ends the screen cast, whichever way it learns it.
const CAST_ENDED: &str = "screen sharing was stopped from the desktop: the share ends";

/// Why the capture asks the host loop to act.
enum CaptureNote {
    /// The pipeline failed.
    Error(String),
    /// The desktop ended the screen cast (portal session closed, or its stream went away).
    Ended(String),
}

/// Everything decided before the share starts.
struct Plan {
    /// The capture pipeline for a known source; None for the portal (built once it answers).
    capture_desc: Option<String>,
    /// The encode/mux parts, for building the portal's pipeline later.
    video: VideoParts,
    audio_source: Option<String>,
    started: Event,
    window: Option<u64>,
    /// Native size of a known source (the portal reports its own).
    source_size: (u32, u32),
    portal: Option<wayland::Portal>,
    apps: Option<Rule>,
}

struct VideoParts {
    format: &'static str,
    encoder: String,
    fps: u32,
    max_height: Option<u32>,
}

impl Plan {
    fn output_size(&self, size: (u32, u32)) -> (u32, u32) {
        quality::output_size(size.0, size.1, self.video.max_height)
    }

    fn capture_desc(&self, video_source: &str, size: (u32, u32)) -> Result<String> {
        let (width, height) = self.output_size(size);
        pipeline::host_capture(&CaptureParts {
            video_source,
            format: self.video.format,
            width,
            height,
            fps: self.video.fps,
            encoder: &self.video.encoder,
            audio_source: self.audio_source.as_deref(),
        })
    }
}

/// A `pulsesrc` recording `device` (a monitor source).
fn pulse_source(device: &str) -> String {
    format!("pulsesrc device={} client-name=pixelpass", quote(device))
}

/// The per-app rule the flags ask for, if any.
fn app_rule(args: &HostArgs) -> Option<Rule> {
    if !args.app.is_empty() {
        Some(Rule::Only(args.app.clone()))
    } else if !args.exclude_app.is_empty() {
        Some(Rule::Except(args.exclude_app.clone()))
    } else {
        None
    }
}

async fn plan(args: &HostArgs, events: &Arc<Events>) -> Result<(Plan, u32)> {
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
    if args.forget_source {
        for p in wayland::forget_sources() {
            eprintln!("pixelpass: forgot the remembered screen-cast source ({})", p.display());
        }
    }
    let cap = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || capture::plan(&args)).await??
    };
    let portal = if cap.portal {
        Some(wayland::Portal::probe(args.window, None).await?)
    } else {
        None
    };
    let enc = {
        let (no_hw, name) = (args.no_hwencode, args.encoder.clone());
        tokio::task::spawn_blocking(move || encoder::choose(no_hw, name.as_deref())).await??
    };
    eprintln!("pixelpass: encoder {}: {}", enc.name, enc.reason);
    let apps = if args.no_audio { None } else { app_rule(args) };
    let audio_source = if args.no_audio {
        None
    } else if let Some(rule) = &apps {
        let rule = rule.clone();
        let ev = events.clone();
        tokio::task::spawn_blocking(move || app_audio_check(&rule, &ev)).await??;
        Some(pulse_source(&format!("{}.monitor", crate::audio::apps::sink_name())))
    } else if args.source == Source::Test {
        Some("audiotestsrc is-live=true wave=sine freq=440 volume=0.3".to_string())
    } else {
        match tokio::task::spawn_blocking(crate::audio::monitor::default_monitor).await? {
            Ok(dev) => Some(pulse_source(&dev)),
            Err(e) => {
                events.emit(Event::Warning {
                    message: format!("sharing video without sound: {e} (use --no-audio to silence this)"),
                });
                None
            }
        }
    };
    let plan = Plan {
        capture_desc: None,
        video: VideoParts {
            format: enc.format,
            encoder: enc.description(q.bitrate_kbps, q.framerate),
            fps: q.framerate,
            max_height: q.max_height,
        },
        audio_source,
        started: Event::CaptureStarted {
            what: cap.what.clone(),
            encoder: enc.name.clone(),
            width: 0,
            height: 0,
            fps: q.framerate,
            bitrate_kbps: q.bitrate_kbps,
            audio: false,
            epoch_unix_ns: 0,
            portal_session: None,
        },
        window: cap.window,
        source_size: (cap.width, cap.height),
        portal,
        apps,
    };
    // Fail now, not when the first viewer arrives, if an element is missing.
    let (source, size) = if cap.portal {
        ("pipewiresrc".to_string(), (1280, 720))
    } else {
        (cap.source.clone(), (cap.width, cap.height))
    };
    let desc = plan.capture_desc(&source, size)?;
    pipeline::launch(&desc, "capture").with_context(|| desc.clone())?;
    let plan = Plan {
        capture_desc: (!cap.portal).then_some(desc),
        ..plan
    };
    Ok((plan, max_viewers))
}

/// Per-app audio needs PipeWire; says which apps play now, so a typo is seen at once.
fn app_audio_check(rule: &Rule, events: &Events) -> Result<()> {
    let playing = crate::audio::apps::playing().context("per-app audio (--app/--exclude-app) needs PipeWire")?;
    let shared: Vec<&str> = playing.iter().filter(|a| rule.shares(a)).map(|a| a.label()).collect();
    let all: Vec<&str> = playing.iter().map(|a| a.label()).collect();
    match rule {
        Rule::Only(names) if shared.is_empty() => events.emit(Event::Warning {
            message: format!(
                "no app named {} is playing sound now; it is shared as soon as it does (playing now: {})",
                names.join(", "),
                list_or_none(&all)
            ),
        }),
        _ => eprintln!(
            "pixelpass: sharing {} (playing now: {})",
            rule.describe(),
            list_or_none(&shared)
        ),
    }
    Ok(())
}

/// Starts capturing: runs the portal handshake on Wayland, sets up per-app audio, and starts
/// the capture pipeline feeding `appsrc`. Everything acquired is released on every error path
/// (the fd, the portal session, the sink), because each lives in an owner that cleans up.
async fn start_capture(
    plan: &Plan,
    appsrc: &gst_app::AppSrc,
    serve: &gst::Pipeline,
    notes: tokio::sync::mpsc::UnboundedSender<CaptureNote>,
) -> Result<(Capture, Event)> {
    let mut started = plan.started.clone();
    let mut watch = None;
    let mut out_size = plan.output_size(plan.source_size);
    let (desc, cast) = match &plan.portal {
        Some(portal) => {
            let cast = portal.start().await?;
            // every portal reports the size; 1080p is a guess for one that does not
            let size = cast.size.unwrap_or((1920, 1080));
            out_size = plan.output_size(size);
            let desc = plan.capture_desc(&cast.source(), size)?;
            if let Event::CaptureStarted { portal_session, .. } = &mut started {
                *portal_session = Some(cast.session_path());
            }
            // The desktop can end the cast: watch the session's Closed signal, and the stream
            // node itself (some portals just remove it; pipewiresrc then stalls silently).
            let n = notes.clone();
            let closed = cast.closed_signal();
            let closed = AbortOnDropHandle::new(tokio::spawn(async move {
                closed.await;
                let _ = n.send(CaptureNote::Ended(CAST_ENDED.into()));
            }));
            let mut cast = cast;
            let fd = cast.watch_fd.take();
            let (node, n) = (cast.node, notes.clone());
            let client = crate::pw::Client::spawn("cast", fd, move |c| {
                Ok(c.registry
                    .add_listener_local()
                    .global_remove(move |id| {
                        if id == node {
                            let _ = n.send(CaptureNote::Ended(CAST_ENDED.into()));
                        }
                    })
                    .register())
            })?;
            watch = Some(CastWatch {
                _closed: closed,
                _node: client,
            });
            (desc, Some(cast))
        }
        None => (plan.capture_desc.clone().expect("known source has a pipeline"), None),
    };
    let apps = match &plan.apps {
        Some(rule) => {
            let rule = rule.clone();
            Some(tokio::task::spawn_blocking(move || AppAudio::start(rule)).await??)
        }
        None => None,
    };
    let pipeline = pipeline::launch(&desc, "capture")?;
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
    let played = pipeline::play(&pipeline, "the capture pipeline");
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
    let capture = Capture {
        pipeline,
        appsink,
        bus: bus_task,
        watch,
        apps,
        cast,
    };
    if let Err(e) = played {
        capture.stop().await;
        return Err(e);
    }
    if let Event::CaptureStarted {
        epoch_unix_ns,
        width,
        height,
        audio,
        ..
    } = &mut started
    {
        *epoch_unix_ns = capture.epoch_unix_ns();
        *audio = plan.audio_source.is_some();
        (*width, *height) = out_size;
    }
    Ok((capture, started))
}

/// Runs a share until ctrl-c (`cancel`), a fatal error, or the shared window closing.
pub async fn run(args: HostArgs, events: Arc<Events>, cancel: CancellationToken) -> Result<()> {
    let (plan, max_viewers) = {
        let args = args.clone();
        plan(&args, &events).await?
    };
    let mut sink_props = format!("max-viewers={max_viewers}");
    sink_props += &pipeline::endpoint_props(&args.common);
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
                    && gst_video::ForceKeyUnitEvent::is(ev)
                    && let Some(s) = live_sink.lock().unwrap().as_ref()
                {
                    s.send_event(ev.clone());
                }
                gst::PadProbeReturn::Ok
            });
    }

    pipeline::play(&serve, "the iroh endpoint")?;
    let mut bus = serve.bus().expect("pipeline has a bus").stream();
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
                                    // (on Wayland this waits for the portal dialog; ctrl-c still ends it)
                                    let start = start_capture(&plan, appsrc, serve, notes_tx.clone());
                                    let started = tokio::select! {
                                        r = start => r,
                                        _ = cancel.cancelled() => break Ok(()),
                                    };
                                    match started {
                                        Ok((c, started)) => {
                                            *live_sink.lock().unwrap() = Some(c.appsink.clone());
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
                                    c.stop().await;
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
                let e = match note {
                    Some(CaptureNote::Error(e)) => e,
                    Some(CaptureNote::Ended(reason)) => {
                        events.emit(Event::Ended { reason });
                        break Ok(());
                    }
                    None => continue,
                };
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
        c.stop().await;
        events.emit(Event::CaptureStopped {
            reason: "the share ended".into(),
        });
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    use pixelpass_test_support as support;

    /// A plan for a known capture pipeline (`desc`) or for the portal.
    pub(super) fn test_plan(desc: Option<String>, encoder: &str, portal: Option<wayland::Portal>) -> Plan {
        Plan {
            capture_desc: desc,
            video: VideoParts {
                format: "I420",
                encoder: encoder.into(),
                fps: 30,
                max_height: None,
            },
            audio_source: None,
            started: Event::Ended { reason: String::new() },
            window: None,
            source_size: (320, 240),
            portal,
            apps: None,
        }
    }

    /// Failed capture setups leak nothing: 20 bad window ids and 20 capture pipelines started
    /// and torn down on a window that does not exist leave the fd count where it was.
    #[test]
    fn no_fd_growth_across_failed_capture_setups() {
        if !support::have("Xvfb") || !support::have("xwininfo") {
            eprintln!("SKIP: Xvfb/xwininfo not installed");
            return;
        }
        let _serial = support::FD_COUNTING.lock().unwrap_or_else(|e| e.into_inner());
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
            window_id: Some(0x7ffff01),
            monitor: None,
            display_server: Some(crate::cli::DisplayServer::X11),
            source: Source::Screen,
            no_hwencode: true,
            encoder: None,
            no_audio: true,
            app: vec![],
            exclude_app: vec![],
            forget_source: false,
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
                let plan = test_plan(Some(desc.clone()), "x264enc", None);
                if let Ok((c, _)) = start_capture(&plan, &appsrc, &serve, tx).await {
                    let _ = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
                    c.stop().await;
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

#[cfg(test)]
mod portal_tests {
    use super::*;

    use pixelpass_test_support as support;

    /// 20 portal setups that fail after the portal answered (the capture pipeline cannot be
    /// built) leave no fd behind, and every portal session they opened is closed.
    #[test]
    fn no_fd_or_session_left_after_failed_portal_setups() {
        if let Some(why) = support::wayland_missing() {
            eprintln!("SKIP: {why} (bash scripts/install-deps.sh)");
            return;
        }
        let _serial = support::FD_COUNTING.lock().unwrap_or_else(|e| e.into_inner());
        gst::init().unwrap();
        let w = support::Wayland::start(320, 240);
        let bus = w
            .env
            .iter()
            .find(|(k, _)| k == "DBUS_SESSION_BUS_ADDRESS")
            .unwrap()
            .1
            .clone();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let serve = gst::parse::launch("appsrc name=src ! fakesink").unwrap();
        let serve = serve.downcast::<gst::Pipeline>().unwrap();
        let appsrc = serve.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
        let portal = rt.block_on(wayland::Portal::probe(false, Some(bus))).unwrap();
        let plan = super::tests::test_plan(None, "no-such-encoder", Some(portal));
        let attempt = || {
            rt.block_on(async {
                let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
                let r = start_capture(&plan, &appsrc, &serve, tx).await;
                assert!(r.is_err(), "the pipeline cannot be built");
                tokio::time::sleep(Duration::from_millis(50)).await;
            })
        };
        let sessions = || w.xdpw_log().matches("dbus: destroying session").count();
        attempt();
        let before = support::fd_count();
        for _ in 0..20 {
            attempt();
        }
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
        let after = support::fd_count();
        assert!(
            after <= before,
            "fds before {before}, after 20 failed portal setups {after}"
        );
        assert!(
            support::wait_for(Duration::from_secs(5), || sessions() == 21),
            "all 21 portal sessions closed, saw {}",
            sessions()
        );
    }
}
