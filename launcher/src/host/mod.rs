//! Hosting: the iroh endpoint (and so the ticket) lives for the whole share, but the screen is
//! captured and encoded only while at least one viewer watches.
//!
//! Two pipelines: *serve* (`appsrc ! irohsink`, always playing, idle without viewers) and
//! *capture* (screen/audio → H.264/AAC → MPEG-TS → appsink, [`capture`]), started by the first
//! viewer and stopped by the last. Keyframe requests from irohsink travel back to the capture
//! encoder. What to capture and how is decided first ([`plan`]), raced against ctrl-c.

mod capture;
pub mod control;
mod outputs;
mod plan;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use futures_util::StreamExt as _;
use gst::prelude::*;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use self::capture::{Capture, CaptureNote, start_capture};
use self::control::{Commands, HostCommand};
use self::outputs::Outputs;
use self::plan::{CapturePlan, plan_capture};
use crate::cli::HostArgs;
use crate::config::Config;
use crate::events::{Event, Events, ViewerFigures};
use crate::pipeline::{self, quote};

/// Runs a share until ctrl-c (`cancel`), a fatal error, the shared window closing, or a stop
/// command; obeys `commands` (kick, revoke, stop) from a front end, if one drives it.
pub async fn run(
    args: HostArgs,
    events: Arc<Events>,
    cancel: CancellationToken,
    commands: Option<Commands>,
) -> Result<()> {
    let config = Config::load()?;
    let plan = tokio::select! {
        plan = plan_capture(&args, &config, &events) => plan?,
        _ = cancel.cancelled() => {
            events.emit(Event::Ended { reason: "cancelled before the share started".into() });
            return Ok(());
        }
    };
    let max_viewers = args.max_viewers.unwrap_or_else(|| config.default_max_viewers());
    let serve = Serve::start(&args, max_viewers, &plan.rendition_names())?;
    let mut bus = serve.pipeline.bus().expect("pipeline has a bus").stream();
    let outputs = Outputs::start(&args, &events)?;
    let mut share = Share::new(plan, &serve, &events);
    share.commands = commands;
    share.outputs = outputs.clone();
    share.web_page = crate::web_page::configured(args.web_page.as_ref(), &config, &events);
    let result = share.run(&mut bus, &cancel).await;
    serve.end(&mut bus).await;
    if let Some(o) = outputs {
        let _ = tokio::task::spawn_blocking(move || o.finish()).await;
    }
    result
}

/// The serve pipeline: `appsrc ! irohsink` (one appsrc per rendition), playing for the whole
/// share.
struct Serve {
    pipeline: gst::Pipeline,
    /// Top rendition first.
    appsrcs: Vec<gst_app::AppSrc>,
    sink: gst::Element,
    /// Where irohsink's keyframe requests go while capture runs.
    live: Arc<Mutex<Option<LiveSinks>>>,
}

/// The running capture's appsinks (top first) and how far (ns) the serve running time is
/// ahead of the capture's.
type LiveSinks = (Vec<gst_app::AppSink>, i128);

impl Serve {
    /// Builds and starts the serve pipeline: the endpoint binds and the ticket comes.
    fn start(args: &HostArgs, max_viewers: u32, renditions: &[(String, u32)]) -> Result<Serve> {
        let mut sink_props = format!("max-viewers={max_viewers}");
        sink_props += &pipeline::endpoint_props(&args.common);
        if let Some(k) = &args.key_file {
            sink_props += &format!(" key-file={}", quote(&k.to_string_lossy()));
        }
        let pipeline = pipeline::launch(&pipeline::host_serve(&sink_props, renditions)?, "serve")?;
        pipeline.use_clock(Some(&gst::SystemClock::obtain()));
        let mut appsrcs = vec![pipeline::child(&pipeline, "src", "serve")?];
        for i in 1..renditions.len() {
            appsrcs.push(pipeline::child(&pipeline, &format!("src_{i}"), "serve")?);
        }
        let serve = Serve {
            appsrcs,
            sink: pipeline::child(&pipeline, "sink", "serve")?,
            pipeline,
            live: Arc::new(Mutex::new(None)),
        };
        serve.forward_keyframe_requests();
        pipeline::play(&serve.pipeline, "the iroh endpoint")?;
        Ok(serve)
    }

    /// Keyframe requests from irohsink (a viewer joined, renditions to align) go back to the
    /// live encoder of the same rendition, a requested running time moved onto the capture's.
    fn forward_keyframe_requests(&self) {
        for (i, appsrc) in self.appsrcs.iter().enumerate() {
            let live = self.live.clone();
            let pad = appsrc.static_pad("src").expect("appsrc has a src pad");
            pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
                if let Some(gst::PadProbeData::Event(ev)) = &info.data
                    && gst_video::ForceKeyUnitEvent::is(ev)
                    && let Some((sinks, shift)) = live.lock().unwrap().as_ref()
                    && let Some(s) = sinks.get(i)
                {
                    s.send_event(on_capture_time(ev, *shift));
                }
                gst::PadProbeReturn::Ok
            });
        }
    }

    /// Ends the stream so viewers hear "the host ended the share", then closes the endpoint.
    /// Bounded: one ctrl-c is always enough.
    async fn end(self, bus: &mut gst::bus::BusStream) {
        self.live.lock().unwrap().take();
        for a in &self.appsrcs {
            let _ = a.end_of_stream();
        }
        let _ = tokio::time::timeout(Duration::from_millis(150), async {
            while let Some(msg) = bus.next().await {
                if matches!(msg.view(), gst::MessageView::Eos(_)) {
                    break;
                }
            }
        })
        .await;
        let p = self.pipeline;
        let _ = tokio::task::spawn_blocking(move || p.set_state(gst::State::Null)).await;
    }
}

/// A force-key-unit event with its running time (serve pipeline) moved onto the capture
/// pipeline's, `shift` ns behind.
fn on_capture_time(ev: &gst::Event, shift: i128) -> gst::Event {
    match gst_video::UpstreamForceKeyUnitEvent::parse(ev) {
        Ok(f) if f.running_time.is_some() => {
            let t = f.running_time.map(|t| t.nseconds() as i128 - shift).unwrap_or(0).max(0);
            gst_video::UpstreamForceKeyUnitEvent::builder()
                .running_time(gst::ClockTime::from_nseconds(t as u64))
                .all_headers(f.all_headers)
                .count(f.count)
                .build()
        }
        _ => ev.clone(),
    }
}

/// A share in progress: reacts to viewers coming and going (capture on demand), to the
/// capture's notes, and reports stats every second.
struct Share<'a> {
    plan: CapturePlan,
    serve: &'a Serve,
    events: &'a Events,
    capture: Option<Capture>,
    notes_tx: UnboundedSender<CaptureNote>,
    notes: UnboundedReceiver<CaptureNote>,
    /// bytes sent at the last stats tick, and when
    last_bytes: (u64, Instant),
    /// bytes sent to each viewer at the last stats tick
    viewer_bytes: HashMap<String, u64>,
    /// A front end's commands, if one drives this share.
    commands: Option<Commands>,
    /// Recording / publishing: with them, capture runs for the whole share.
    outputs: Option<Arc<Outputs>>,
    /// The browser viewer page the ticket's link points to.
    web_page: Option<crate::web_page::WebPage>,
}

/// The next command, or never when no front end sends any (or it went away).
async fn next_command(commands: &mut Option<Commands>) -> Option<HostCommand> {
    match commands {
        Some(c) => match c.recv().await {
            Some(cmd) => Some(cmd),
            None => {
                *commands = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// What the share loop does next: go on, or end with this result.
type Next = ControlFlow<Result<()>>;

const WINDOW_CLOSED: &str = "the shared window was closed: the share ends";

impl<'a> Share<'a> {
    fn new(plan: CapturePlan, serve: &'a Serve, events: &'a Events) -> Self {
        let (notes_tx, notes) = tokio::sync::mpsc::unbounded_channel();
        Share {
            plan,
            serve,
            events,
            capture: None,
            notes_tx,
            notes,
            last_bytes: (0, Instant::now()),
            viewer_bytes: HashMap::new(),
            commands: None,
            outputs: None,
            web_page: None,
        }
    }

    /// Runs until ctrl-c (`cancel`), an error, or the end of what is shared.
    async fn run(mut self, bus: &mut gst::bus::BusStream, cancel: &CancellationToken) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        if self.outputs.is_some()
            && let Next::Break(result) = self.start_capture(cancel).await
        {
            return result;
        }
        let result = loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => Next::Break(Ok(())),
                msg = bus.next() => match msg {
                    Some(msg) => self.on_message(&msg, cancel).await,
                    None => Next::Break(Err(anyhow!("the serve pipeline stopped"))),
                },
                Some(note) = self.notes.recv() => self.on_note(note).await,
                _ = tick.tick() => self.on_tick().await,
                Some(cmd) = next_command(&mut self.commands) => self.on_command(cmd),
            };
            if let Next::Break(result) = next {
                break result;
            }
        };
        self.stop_capture("the share ended").await;
        result
    }

    async fn on_message(&mut self, msg: &gst::Message, cancel: &CancellationToken) -> Next {
        match msg.view() {
            gst::MessageView::Error(e) => Next::Break(Err(anyhow!(
                "{}{}",
                e.error(),
                e.debug().map(|d| format!(" ({d})")).unwrap_or_default()
            ))),
            gst::MessageView::Element(el) => match el.structure() {
                Some(s) if s.name() == "iroh-ticket" => {
                    if let Ok(ticket) = s.get::<String>("ticket") {
                        let browser_link = self.web_page.as_ref().and_then(|p| p.link(&ticket));
                        self.events.emit(Event::Ticket { ticket, browser_link });
                    }
                    Next::Continue(())
                }
                Some(s) if s.name() == "iroh-viewer-joined" => self.on_viewer_joined(s, cancel).await,
                Some(s) if s.name() == "iroh-rendition-changed" => {
                    self.events.emit(Event::RenditionChanged {
                        id: s.get("id").unwrap_or_default(),
                        from: s.get("from").unwrap_or_default(),
                        to: s.get("to").unwrap_or_default(),
                        reason: s.get("reason").unwrap_or_default(),
                    });
                    Next::Continue(())
                }
                Some(s) if s.name() == "iroh-viewer-left" => {
                    self.on_viewer_left(s).await;
                    Next::Continue(())
                }
                _ => Next::Continue(()),
            },
            _ => Next::Continue(()),
        }
    }

    /// The first viewer starts capturing.
    async fn on_viewer_joined(&mut self, s: &gst::StructureRef, cancel: &CancellationToken) -> Next {
        self.events.emit(Event::ViewerJoined {
            id: s.get("id").unwrap_or_default(),
            name: s.get("name").unwrap_or_default(),
            path: s.get("path").unwrap_or_default(),
        });
        self.start_capture(cancel).await
    }

    /// Starts capturing unless it runs already (on Wayland after the portal dialog; ctrl-c
    /// still ends it).
    async fn start_capture(&mut self, cancel: &CancellationToken) -> Next {
        if self.capture.is_some() {
            return Next::Continue(());
        }
        let start = start_capture(
            &self.plan,
            &self.serve.appsrcs,
            &self.serve.pipeline,
            self.outputs.as_ref(),
            self.notes_tx.clone(),
        );
        let started = tokio::select! {
            r = start => r,
            _ = cancel.cancelled() => return Next::Break(Ok(())),
        };
        match started {
            Ok((c, started)) => {
                *self.serve.live.lock().unwrap() = Some((c.appsinks.clone(), c.shift_ns(&self.serve.pipeline)));
                self.capture = Some(c);
                self.events.emit(started);
                Next::Continue(())
            }
            Err(e) => Next::Break(Err(e.context("cannot start capturing"))),
        }
    }

    /// The last viewer leaving stops capturing, unless it is recorded or published.
    async fn on_viewer_left(&mut self, s: &gst::StructureRef) {
        self.events.emit(Event::ViewerLeft {
            id: s.get("id").unwrap_or_default(),
            reason: s.get("reason").unwrap_or_default(),
        });
        if self.outputs.is_none() && self.serve.sink.property::<u32>("num-viewers") == 0 {
            self.stop_capture("no viewers").await;
        }
    }

    /// A capture error ends the share; so does the desktop ending the cast or the shared
    /// window closing (those end it cleanly).
    async fn on_note(&mut self, note: CaptureNote) -> Next {
        match note {
            CaptureNote::Ended(reason) => {
                self.events.emit(Event::Ended { reason });
                Next::Break(Ok(()))
            }
            CaptureNote::Error(e) => match self.plan.window() {
                Some(id) if crate::capture::x11::window_gone(id).await => {
                    self.events.emit(Event::Ended {
                        reason: WINDOW_CLOSED.into(),
                    });
                    Next::Break(Ok(()))
                }
                _ => Next::Break(Err(anyhow!("capture failed: {e}"))),
            },
        }
    }

    fn on_command(&mut self, cmd: HostCommand) -> Next {
        if let Err(message) = control::apply(&self.serve.sink, &cmd) {
            self.events.emit(Event::Warning { message });
        }
        if cmd == HostCommand::Stop {
            self.events.emit(Event::Ended {
                reason: "the host stopped the share".into(),
            });
            return Next::Break(Ok(()));
        }
        Next::Continue(())
    }

    /// Every second: has the shared window closed? Then the host's stats.
    async fn on_tick(&mut self) -> Next {
        if let Some(id) = self.plan.window()
            && self.capture.is_some()
            && crate::capture::x11::window_gone(id).await
        {
            self.events.emit(Event::Ended {
                reason: WINDOW_CLOSED.into(),
            });
            return Next::Break(Ok(()));
        }
        self.emit_stats();
        Next::Continue(())
    }

    fn emit_stats(&mut self) {
        let Some(st) = self.serve.sink.property::<Option<gst::Structure>>("stats") else {
            return;
        };
        let bytes = st.get::<u64>("bytes-sent").unwrap_or(0);
        let dt = self.last_bytes.1.elapsed().as_secs_f64().max(0.001);
        let kbps = |now: u64, before: u64| now.saturating_sub(before) as f64 * 8.0 / dt / 1000.0;
        let bitrate_kbps = kbps(bytes, self.last_bytes.0);
        let mut sent = HashMap::new();
        let per_viewer: Vec<ViewerFigures> = st
            .get::<gst::Array>("viewer-stats")
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.get::<gst::Structure>().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .iter()
            .map(|v| {
                let id: String = v.get("id").unwrap_or_default();
                let bytes = v.get::<u64>("bytes-sent").unwrap_or(0);
                let before = self.viewer_bytes.get(&id).copied().unwrap_or(bytes);
                sent.insert(id.clone(), bytes);
                ViewerFigures {
                    path: v.get("path").unwrap_or_default(),
                    rendition: v.get("rendition").unwrap_or_default(),
                    rtt_ms: v.get("rtt-ms").unwrap_or(-1.0),
                    bitrate_kbps: kbps(bytes, before),
                    lag_ms: v.get("lag-ms").unwrap_or(0),
                    id,
                }
            })
            .collect();
        self.last_bytes = (bytes, Instant::now());
        self.viewer_bytes = sent;
        self.events.emit(Event::HostStats {
            viewers: st.get("viewers").unwrap_or(0),
            bitrate_kbps,
            dropped_gops: st.get("dropped-gops").unwrap_or(0),
            paths: per_viewer.iter().map(|v| v.path.clone()).collect(),
            ids: per_viewer.iter().map(|v| v.id.clone()).collect(),
            renditions: per_viewer.iter().map(|v| v.rendition.clone()).collect(),
            per_viewer,
        });
    }

    async fn stop_capture(&mut self, reason: &str) {
        if let Some(c) = self.capture.take() {
            *self.serve.live.lock().unwrap() = None;
            c.stop().await;
            self.events.emit(Event::CaptureStopped { reason: reason.into() });
        }
    }
}
