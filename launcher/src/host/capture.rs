//! The capture session: started by the first viewer, stopped by the last. It runs the portal
//! handshake on Wayland, sets up per-app audio, and runs the capture pipeline, whose output is
//! re-timed onto the serve pipeline's clock and pushed into its `appsrc`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt as _;
use gst::prelude::*;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::task::AbortOnDropHandle;

use super::outputs::Outputs;
use super::plan::{CapturePlan, VideoInput};
use crate::audio::apps::AppAudio;
use crate::capture::wayland;
use crate::events::Event;
use crate::pipeline;

/// What the host says when the desktop ends the screen cast, whichever way it learns it.
const CAST_ENDED: &str = "screen sharing was stopped from the desktop: the share ends";

/// Why the capture asks the host loop to act.
pub(super) enum CaptureNote {
    /// The pipeline failed.
    Error(String),
    /// The desktop ended the screen cast (portal session closed, or its stream went away).
    Ended(String),
}

/// A running capture session. Field order is teardown order after the pipeline stops: the
/// watchers, the per-app sink, then the portal cast (its fd and session).
pub(super) struct Capture {
    pipeline: gst::Pipeline,
    /// Where irohsink's keyframe requests go (upstream, to the encoders): one per rendition,
    /// top first.
    pub appsinks: Vec<gst_app::AppSink>,
    bus: AbortOnDropHandle<()>,
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

/// A started portal cast with its watch, and the capture pipeline for it.
struct PortalCapture {
    desc: String,
    size: (u32, u32),
    cast: wayland::Cast,
    watch: CastWatch,
}

impl Capture {
    /// How far (ns) the serve pipeline's running time is ahead of this one's.
    pub fn shift_ns(&self, serve: &gst::Pipeline) -> i128 {
        self.pipeline.base_time().map_or(0, |b| b.nseconds() as i128)
            - serve.base_time().map_or(0, |b| b.nseconds() as i128)
    }

    /// Wall-clock time of this pipeline's running time 0.
    fn epoch_unix_ns(&self) -> u64 {
        let now = gstiroh::net::unix_now_ns();
        match (self.pipeline.clock(), self.pipeline.base_time()) {
            (Some(c), Some(b)) => now.saturating_sub(c.time().saturating_sub(b).nseconds()),
            _ => now,
        }
    }

    pub async fn stop(self) {
        let Capture {
            pipeline,
            appsinks,
            bus,
            watch,
            apps,
            cast,
        } = self;
        let _ = tokio::task::spawn_blocking(move || pipeline.set_state(gst::State::Null)).await;
        drop(appsinks);
        drop(bus);
        // (stopping a PipeWire client joins its thread: not on the async workers)
        let _ = tokio::task::spawn_blocking(move || drop((watch, apps))).await;
        if let Some(c) = cast {
            let _ = tokio::time::timeout(Duration::from_secs(1), c.close()).await;
        }
    }
}

/// Starts capturing into `appsrc` (of the `serve` pipeline); returns the session and its
/// capture-started event; the top rendition also goes to `outputs` (recording, publishing).
/// Everything acquired is released on every error path (the fd, the portal session, the
/// sink), because each lives in an owner that cleans up.
pub(super) async fn start_capture(
    plan: &CapturePlan,
    appsrcs: &[gst_app::AppSrc],
    serve: &gst::Pipeline,
    outputs: Option<&Arc<Outputs>>,
    notes: UnboundedSender<CaptureNote>,
) -> Result<(Capture, Event)> {
    let (desc, size, portal) = match &plan.input {
        VideoInput::Direct { desc, size, .. } => (desc.clone(), *size, None),
        VideoInput::Portal(portal) => {
            let p = start_cast(plan, portal, &notes).await?;
            (p.desc.clone(), p.size, Some(p))
        }
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
    let mut appsinks = Vec::new();
    for (i, appsrc) in appsrcs.iter().enumerate() {
        let name = if i == 0 { "out".to_string() } else { format!("out_{i}") };
        let appsink: gst_app::AppSink = pipeline::child(&pipeline, &name, "capture")?;
        let outputs = if i == 0 { outputs.cloned() } else { None };
        forward_to_serve(&appsink, &pipeline, appsrc, serve, outputs);
        appsinks.push(appsink);
    }
    let played = pipeline::play(&pipeline, "the capture pipeline");
    let bus = watch_bus(&pipeline, notes);
    let session = portal.as_ref().map(|p| p.cast.session_path());
    let (watch, cast) = portal.map(|p| (p.watch, p.cast)).unzip();
    let capture = Capture {
        pipeline,
        appsinks,
        bus,
        watch,
        apps,
        cast,
    };
    if let Err(e) = played {
        capture.stop().await;
        return Err(e);
    }
    let started = Event::CaptureStarted {
        what: plan.what.clone(),
        encoder: plan.video.encoder_name.clone(),
        width: plan.output_size(size).0,
        height: plan.output_size(size).1,
        fps: plan.video.fps,
        bitrate_kbps: plan.video.bitrate_kbps,
        audio: plan.audio_source.is_some(),
        epoch_unix_ns: capture.epoch_unix_ns(),
        portal_session: session,
    };
    Ok((capture, started))
}

/// Runs the portal handshake (the dialog, unless a restore token skips it) and starts
/// watching for the desktop ending the cast.
async fn start_cast(
    plan: &CapturePlan,
    portal: &wayland::Portal,
    notes: &UnboundedSender<CaptureNote>,
) -> Result<PortalCapture> {
    let mut cast = portal.start().await?;
    // every portal reports the size; 1080p is a guess for one that does not
    let size = cast.size.unwrap_or((1920, 1080));
    let desc = plan.capture_desc(&cast.source(), size)?;
    // The desktop can end the cast: watch the session's Closed signal, and the stream node
    // itself (some portals just remove it; pipewiresrc then stalls silently).
    let n = notes.clone();
    let closed = cast.closed_signal();
    let closed = AbortOnDropHandle::new(tokio::spawn(async move {
        closed.await;
        let _ = n.send(CaptureNote::Ended(CAST_ENDED.into()));
    }));
    let (node, n) = (cast.node, notes.clone());
    let client = crate::pw::Client::spawn("cast", cast.watch_fd.take(), move |c| {
        Ok(c.registry
            .add_listener_local()
            .global_remove(move |id| {
                if id == node {
                    let _ = n.send(CaptureNote::Ended(CAST_ENDED.into()));
                }
            })
            .register())
    })?;
    Ok(PortalCapture {
        desc,
        size,
        cast,
        watch: CastWatch {
            _closed: closed,
            _node: client,
        },
    })
}

/// Pushes what the capture's `appsink` outputs into the serve pipeline's `appsrc`, re-timed
/// from the capture's running time to the serve pipeline's (both run on the system clock),
/// and to `outputs`.
fn forward_to_serve(
    appsink: &gst_app::AppSink,
    capture: &gst::Pipeline,
    appsrc: &gst_app::AppSrc,
    serve: &gst::Pipeline,
    outputs: Option<Arc<Outputs>>,
) {
    let src = appsrc.clone();
    let serve_weak = serve.downgrade();
    let cap_weak = capture.downgrade();
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
                let shift = cap.base_time().map_or(0, |b| b.nseconds() as i128)
                    - serve.base_time().map_or(0, |b| b.nseconds() as i128);
                // Owned, not borrowed from the sample: sole owners retime in place, no copies.
                if let Some(mut list) = sample.buffer_list_owned() {
                    drop(sample);
                    list.make_mut().foreach_mut(|mut b, _| {
                        retime(b.make_mut(), shift);
                        std::ops::ControlFlow::Continue(Some(b))
                    });
                    if let Some(o) = &outputs {
                        list.iter().for_each(|b| o.push(&b.to_owned()));
                    }
                    src.push_buffer_list(list)?;
                } else if let Some(mut b) = sample.buffer_owned() {
                    drop(sample);
                    retime(b.make_mut(), shift);
                    if let Some(o) = &outputs {
                        o.push(&b);
                    }
                    src.push_buffer(b)?;
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

/// Shifts a buffer's timestamps by `shift` ns (never below zero).
fn retime(b: &mut gst::BufferRef, shift: i128) {
    let map = |t: Option<gst::ClockTime>| {
        t.map(|t| gst::ClockTime::from_nseconds((t.nseconds() as i128 + shift).max(0) as u64))
    };
    let (pts, dts) = (map(b.pts()), map(b.dts()));
    b.set_pts(pts);
    b.set_dts(dts);
}

/// Forwards the capture pipeline's errors to the host loop.
fn watch_bus(pipeline: &gst::Pipeline, notes: UnboundedSender<CaptureNote>) -> AbortOnDropHandle<()> {
    let bus = pipeline.bus().expect("pipeline has a bus");
    AbortOnDropHandle::new(tokio::spawn(async move {
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
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::host::plan::VideoParts;
    use pixelpass_test_support as support;

    /// A plan for a known capture pipeline or for the portal.
    pub(super) fn test_plan(input: VideoInput, encoder: &str) -> CapturePlan {
        CapturePlan {
            input,
            video: VideoParts {
                format: "I420",
                encoder_name: encoder.into(),
                encoder: encoder.into(),
                fps: 30,
                bitrate_kbps: 1000,
                max_height: None,
                rung_enc: crate::encoder::Encoder {
                    name: "x264enc".into(),
                    format: "I420",
                    reason: String::new(),
                },
                renditions: crate::quality::Renditions::Off,
            },
            audio_source: None,
            apps: None,
            what: "a test".into(),
        }
    }

    /// Failed capture setups leak nothing: 20 bad window ids and 20 capture pipelines started
    /// and torn down on a window that does not exist leave the fd count where it was.
    #[test]
    fn no_fd_growth_across_failed_capture_setups() {
        if !support::have("Xvfb") || !support::have("xwininfo") {
            support::skip("Xvfb/xwininfo not installed");
            return;
        }
        let _serial = support::FD_COUNTING.lock().unwrap_or_else(|e| e.into_inner());
        gst::init().unwrap();
        crate::pipeline::register_elements().unwrap();
        let x = support::Xvfb::start(320, 240);
        // SAFETY: only this test reads DISPLAY in this process.
        unsafe { std::env::set_var("DISPLAY", &x.display) };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let serve = gst::parse::launch("appsrc name=src ! fakesink").unwrap();
        let serve = serve.downcast::<gst::Pipeline>().unwrap();
        serve.set_state(gst::State::Playing).unwrap();
        let appsrc = serve.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
        use clap::Parser as _;
        let cli = crate::cli::Cli::parse_from(
            "pixelpass host --window-id 0x7ffff01 --display-server x11 --no-hwencode --no-audio --quality low --renditions off"
                .split(' '),
        );
        let Some(crate::cli::Command::Host(args)) = cli.command else {
            unreachable!()
        };
        let desc = format!(
            "ximagesrc display-name={} xid=0x7ffff01 ! videoconvert ! x264enc ! h264parse ! mpegtsmux ! appsink name=out",
            x.display
        );
        let attempt = || {
            let e = rt.block_on(crate::capture::resolve_target(&args)).unwrap_err();
            assert!(e.to_string().contains("there is no X11 window"), "{e}");
            rt.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let plan = test_plan(
                    VideoInput::Direct {
                        desc: desc.clone(),
                        size: (320, 240),
                        window: None,
                    },
                    "x264enc",
                );
                if let Ok((c, _)) = start_capture(&plan, std::slice::from_ref(&appsrc), &serve, None, tx).await {
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
            support::skip(&format!("{why} (bash scripts/install-deps.sh)"));
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
        let plan = super::tests::test_plan(VideoInput::Portal(portal), "no-such-encoder");
        let attempt = || {
            rt.block_on(async {
                let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
                let r = start_capture(&plan, std::slice::from_ref(&appsrc), &serve, None, tx).await;
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
