//! Viewing: `irohsrc` receives the share; a loopback-only HTTP server hands it to any number of
//! local players (mpv, VLC, ffplay, …), each starting at a keyframe.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use bytes::Bytes;
use futures_util::StreamExt as _;
use gst::glib;
use gst::prelude::*;
use gstiroh::gop_cache::{Chunk, GopCache, GopCacheConfig, Step};
use gstiroh::protocol::{FrameMeta, flags};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::builtin::Builtin;
use crate::cli::{Player, ViewArgs};
use crate::events::{Event, Events};
use crate::pipeline;
use crate::player;
use crate::record::Recorder;

/// The next message of a bus, or never without one.
async fn next_message(bus: &mut Option<gst::bus::BusStream>) -> Option<gst::Message> {
    match bus {
        Some(b) => b.next().await,
        None => std::future::pending().await,
    }
}

/// A local player further behind than this skips to the newest GOP.
const PLAYER_MAX_LAG: Duration = Duration::from_secs(2);

/// Why viewing failed, read from irohsrc's error domain and code, never from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The host already has its maximum number of viewers.
    HostFull,
    /// The host refuses the ticket's secret (wrong, or revoked).
    NotAuthorized,
    /// The host cannot be reached.
    Unreachable,
    /// The host speaks another protocol version.
    Version,
}

impl Failure {
    fn of(err: &glib::Error) -> Option<Failure> {
        match (err.kind::<gst::ResourceError>(), err.kind::<gst::StreamError>()) {
            (Some(gst::ResourceError::Busy), _) => Some(Failure::HostFull),
            (Some(gst::ResourceError::NotAuthorized), _) => Some(Failure::NotAuthorized),
            (Some(gst::ResourceError::OpenRead), _) => Some(Failure::Unreachable),
            (_, Some(gst::StreamError::WrongType)) => Some(Failure::Version),
            _ => None,
        }
    }

    /// The `kind` of the `error` event.
    pub fn name(self) -> &'static str {
        match self {
            Failure::HostFull => "host-full",
            Failure::NotAuthorized => "not-authorized",
            Failure::Unreachable => "unreachable",
            Failure::Version => "version",
        }
    }
}

/// An element error that ended viewing.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ViewError {
    pub error: glib::Error,
    /// What it means, when irohsrc posted it.
    pub failure: Option<Failure>,
}

impl ViewError {
    fn from_message(msg: &gst::message::Error) -> ViewError {
        let error = msg.error();
        let from_src = msg.src().is_some_and(|s| s.name() == "src");
        let failure = if from_src { Failure::of(&error) } else { None };
        ViewError { error, failure }
    }
}

/// Counts a local player while it is attached to the HTTP server.
struct Attached(Arc<AtomicU32>);

impl Attached {
    fn new(players: &Arc<AtomicU32>) -> Attached {
        players.fetch_add(1, Ordering::Relaxed);
        Attached(players.clone())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Feeds what irohsrc outputs into the local fanout (and its MPEG-TS table cache), and into
/// the recording and the built-in player when there are.
fn feed(
    appsink: &gst_app::AppSink,
    fanout: Arc<GopCache>,
    recorder: Option<Arc<Recorder>>,
    builtin: Option<Arc<Builtin>>,
) {
    let mut psi = gstiroh::psi_cache::PsiCache::default();
    let mut caps_seen: Option<gst::Caps> = None;
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(caps) = sample.caps()
                    && caps_seen.as_ref().is_none_or(|c| c.as_ref() != caps)
                {
                    fanout.set_caps(&caps.to_string());
                    caps_seen = Some(caps.to_owned());
                }
                let Some(buffer) = sample.buffer_owned() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                if let Some(r) = &recorder {
                    r.push(&buffer); // with its DISCONT: where the host left media out
                }
                if let Some(b) = &builtin {
                    b.push(&buffer);
                }
                // DISCONT is the viewer's own business: players resync on the MPEG-TS itself.
                let f = gstiroh::wire_flags(buffer.flags()) & !flags::DISCONT;
                let data = Bytes::from_owner(
                    buffer
                        .into_mapped_buffer_readable()
                        .map_err(|_| gst::FlowError::Error)?,
                );
                if psi.scan(&data)
                    && let Some(t) = psi.tables()
                {
                    fanout.set_headers(vec![Chunk::header(t)]);
                }
                fanout.push(Chunk {
                    meta: FrameMeta {
                        flags: f,
                        ..Default::default()
                    },
                    data,
                    arrived: Instant::now(),
                });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

/// Reads a player's request head (bounded; any path is the stream) and answers it: true when
/// the stream should follow (a GET), false after a HEAD or a bad request.
async fn answer_request(tcp: &mut TcpStream) -> bool {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) || !(head.starts_with(b"GET ") || head.starts_with(b"HEAD ")) {
        let _ = tcp
            .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            .await;
        return false;
    }
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nCache-Control: no-cache, no-store\r\nConnection: close\r\n\r\n";
    tcp.write_all(resp).await.is_ok() && !head.starts_with(b"HEAD ")
}

/// Serves one local player: a plain HTTP/1.1 response streaming MPEG-TS from a keyframe on.
async fn serve_player(
    mut tcp: TcpStream,
    fanout: Arc<GopCache>,
    src: gst::Element,
    cancel: CancellationToken,
    players: Arc<AtomicU32>,
) {
    let _ = tcp.set_nodelay(true);
    if !answer_request(&mut tcp).await {
        return;
    }
    let _attached = Attached::new(&players);
    let (mut cursor, want_keyframe) = fanout.join(Instant::now());
    if want_keyframe {
        // Ask the host for a keyframe so this player starts now, not at the next GOP.
        src.send_event(
            gst_video::UpstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build(),
        );
    }
    let mut changed = fanout.subscribe();
    loop {
        let step = fanout.next(&mut cursor, 64);
        let parts: Vec<Bytes> = match step {
            Step::Open { headers, .. } => headers.into_iter().map(|h| h.data).collect(),
            Step::Data(chunks) => chunks.into_iter().map(|c| c.data).collect(),
            Step::Close => continue,
            Step::End => break,
            Step::Wait => {
                tokio::select! {
                    r = changed.changed() => if r.is_err() { break },
                    _ = cancel.cancelled() => break,
                }
                continue;
            }
        };
        for p in parts {
            let w = tokio::select! {
                w = tcp.write_all(&p) => w,
                _ = cancel.cancelled() => return,
            };
            if w.is_err() {
                fanout.leave(&cursor);
                return; // the player went away
            }
        }
        if fanout.backlog_age(&cursor, Instant::now()) > PLAYER_MAX_LAG {
            fanout.skip_to_newest(&mut cursor);
        }
    }
    fanout.leave(&cursor);
    let _ = tcp.shutdown().await;
}

/// Runs a viewer until ctrl-c (`cancel`), the host ends the share, the player exits, or an
/// error.
pub async fn run(args: ViewArgs, events: Arc<Events>, cancel: CancellationToken) -> Result<()> {
    let receiver = Receiver::build(&args, &events)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow!("cannot listen on {}: {e}", args.listen))?;
    let url = format!("http://{}/", listener.local_addr()?);
    pipeline::play(&receiver.pipeline, "receiving")?;
    let mut bus = receiver.pipeline.bus().expect("pipeline has a bus").stream();
    events.emit(Event::Url { url: url.clone() });
    let players = Players::start(args.player, &url, &events)?;
    let mut viewing = Viewing {
        receiver: &receiver,
        events: &events,
        players,
        clients: cancel.child_token(),
        attached: Arc::new(AtomicU32::new(0)),
        last_bytes: (0, Instant::now()),
    };
    let result = viewing.run(&listener, &mut bus, &cancel).await;
    viewing.clients.cancel();
    receiver.fanout.end();
    if let Some(b) = &receiver.builtin {
        b.stop();
    }
    // Closing irohsrc closes the connection, so the host sees this viewer leave at once.
    let p = receiver.pipeline.clone();
    let _ = tokio::task::spawn_blocking(move || p.set_state(gst::State::Null)).await;
    if let Some(r) = receiver.recorder {
        // after the receiver stopped: nothing is pushed while the file is completed
        let _ = tokio::task::spawn_blocking(move || r.finish(Duration::from_secs(10))).await;
    }
    result
}

/// `irohsrc` and the local fanout it feeds (and the recording, and the built-in player).
struct Receiver {
    pipeline: gst::Pipeline,
    src: gst::Element,
    fanout: Arc<GopCache>,
    recorder: Option<Arc<Recorder>>,
    builtin: Option<Arc<Builtin>>,
}

impl Receiver {
    fn build(args: &ViewArgs, events: &Arc<Events>) -> Result<Receiver> {
        let mut src_props = pipeline::endpoint_props(&args.common);
        src_props += &format!(" max-bitrate={}", crate::quality::viewer_ceiling_kbps(args.quality));
        let desc = pipeline::viewer_local(&args.ticket.to_string(), &src_props)?;
        let pipeline = pipeline::launch(&desc, "viewer")?;
        let appsink: gst_app::AppSink = pipeline::child(&pipeline, "out", "viewer")?;
        let src: gst::Element = pipeline::child(&pipeline, "src", "viewer")?;
        let fanout = Arc::new(GopCache::new(GopCacheConfig {
            burst_max_age: Duration::from_millis(300),
            keep: Duration::from_secs(4),
            ..Default::default()
        }));
        let recorder = match &args.record {
            Some(path) => Some(Arc::new(Recorder::start(path, events.clone())?)),
            None => None,
        };
        let builtin = match args.player {
            Player::Gst => Some(Arc::new(Builtin::start(&src)?)),
            _ => None,
        };
        feed(&appsink, fanout.clone(), recorder.clone(), builtin.clone());
        Ok(Receiver {
            pipeline,
            src,
            fanout,
            recorder,
            builtin,
        })
    }
}

/// The external player pixelpass started, if any (reaped). The built-in one is the
/// receiver's.
struct Players {
    running: Option<player::Running>,
}

impl Players {
    /// Starts `player` on `url`. A missing player is a warning: the URL works in any other.
    fn start(player: Player, url: &str, events: &Events) -> Result<Players> {
        let mut players = Players { running: None };
        let player = match player::check(player) {
            Some(problem) => {
                events.emit(Event::Warning {
                    message: format!("{problem}; open the URL in another player"),
                });
                Player::None
            }
            None => player,
        };
        match player {
            Player::None if !events.is_json() => {
                eprintln!("pixelpass: play it with: mpv --profile=low-latency --cache=no {url}");
            }
            Player::None | Player::Gst => {}
            p => match player::spawn(p, url) {
                Ok(r) => {
                    events.emit(Event::PlayerStarted {
                        player: r.name.into(),
                        pid: r.pid,
                    });
                    players.running = Some(r);
                }
                Err(e) => events.emit(Event::Warning {
                    message: format!("{e}; open {url} in a player"),
                }),
            },
        }
        Ok(players)
    }

    /// Resolves when the external player exits (its exit code); never without one.
    async fn exited(&mut self) -> Option<i32> {
        match self.running.as_mut() {
            Some(r) => (&mut r.exited).await.ok().flatten(),
            None => std::future::pending().await,
        }
    }
}

/// A viewer in progress: serves local players, follows the receiver's bus and reports stats
/// every second.
struct Viewing<'a> {
    receiver: &'a Receiver,
    events: &'a Events,
    players: Players,
    /// Cancels the local players' connections.
    clients: CancellationToken,
    /// How many local players are attached to the loopback server now.
    attached: Arc<AtomicU32>,
    /// bytes received at the last stats tick, and when
    last_bytes: (u64, Instant),
}

/// What the viewer loop does next: go on, or end with this result.
type Next = ControlFlow<Result<()>>;

impl Viewing<'_> {
    async fn run(
        &mut self,
        listener: &TcpListener,
        bus: &mut gst::bus::BusStream,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut window_bus = self.receiver.builtin.as_ref().map(|b| b.bus());
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => Next::Break(Ok(())),
                code = self.players.exited() => self.on_player_exit(code),
                Some(msg) = next_message(&mut window_bus) => self.on_window_message(&msg),
                conn = listener.accept() => {
                    if let Ok((tcp, _)) = conn {
                        let r = self.receiver;
                        let (cache, src) = (r.fanout.clone(), r.src.clone());
                        tokio::spawn(serve_player(tcp, cache, src, self.clients.clone(), self.attached.clone()));
                    }
                    Next::Continue(())
                }
                msg = bus.next() => match msg {
                    Some(msg) => self.on_message(&msg),
                    None => Next::Break(Err(anyhow!("the viewer pipeline stopped"))),
                },
                _ = tick.tick() => {
                    self.emit_stats();
                    Next::Continue(())
                }
            };
            if let Next::Break(result) = next {
                return result;
            }
        }
    }

    /// Closing the player ends the viewer.
    fn on_player_exit(&mut self, code: Option<i32>) -> Next {
        let name = self.players.running.take().map_or("player", |r| r.name);
        self.events.emit(Event::PlayerExited {
            player: name.into(),
            code,
        });
        self.events.emit(Event::Ended {
            reason: format!("{name} was closed: the viewer ends"),
        });
        Next::Break(Ok(()))
    }

    /// The built-in player's window closing (or the player failing) ends the viewer.
    fn on_window_message(&mut self, msg: &gst::Message) -> Next {
        let gst::MessageView::Error(e) = msg.view() else {
            return Next::Continue(());
        };
        let reason = if e.error().matches(gst::ResourceError::NotFound) {
            "the player window was closed: the viewer ends".to_string()
        } else {
            format!("the built-in player stopped: {}", e.error())
        };
        self.events.emit(Event::Ended { reason });
        Next::Break(Ok(()))
    }

    fn on_message(&mut self, msg: &gst::Message) -> Next {
        match msg.view() {
            gst::MessageView::Error(e) => return Next::Break(Err(receiver_error(e))),
            gst::MessageView::Eos(_) => {
                self.events.emit(Event::Ended {
                    reason: "the host ended the share".into(),
                });
                return Next::Break(Ok(()));
            }
            gst::MessageView::Element(el) => {
                if let Some(ev) = el.structure().and_then(receiver_event) {
                    self.events.emit(ev);
                }
            }
            _ => {}
        }
        Next::Continue(())
    }

    fn emit_stats(&mut self) {
        let Some(st) = self.receiver.src.property::<Option<gst::Structure>>("stats") else {
            return;
        };
        let bytes = st.get::<u64>("bytes-received").unwrap_or(0);
        let dt = self.last_bytes.1.elapsed().as_secs_f64().max(0.001);
        let kbps = bytes.saturating_sub(self.last_bytes.0) as f64 * 8.0 / dt / 1000.0;
        self.last_bytes = (bytes, Instant::now());
        let path: String = st.get("path").unwrap_or_default();
        let rtt_ms = st.get::<f64>("rtt-ms").unwrap_or(-1.0);
        let display_latency_ms = self.receiver.builtin.as_ref().and_then(|b| {
            let ceiling = self.receiver.src.property::<u32>("max-bitrate");
            let rendition = match st.get::<String>("rendition").unwrap_or_default() {
                r if r.is_empty() => String::new(),
                r => format!("{r} ({}) · ", crate::quality::ceiling_name(ceiling)),
            };
            b.tick(&format!(
                "{rendition}{path} · RTT {rtt_ms:.0} ms · {:.1} Mbit/s",
                kbps / 1000.0
            ))
        });
        self.events.emit(Event::ViewerStats {
            path,
            rendition: st.get("rendition").unwrap_or_default(),
            bitrate_kbps: kbps,
            rtt_ms,
            display_latency_ms,
            latency_ms: st.get("latency-p50-ms").unwrap_or(-1.0),
            gops_skipped: st.get("gops-skipped").unwrap_or(0),
            gops_cut: st.get("gops-cut").unwrap_or(0),
            reconnects: st.get("reconnects").unwrap_or(0),
            players: self.attached.load(Ordering::Relaxed),
        });
    }
}

/// What ends the viewer when irohsrc (or another element) posts an error: the error with
/// its kind, for the exit code and the error event.
fn receiver_error(e: &gst::message::Error) -> anyhow::Error {
    ViewError::from_message(e).into()
}

/// The event for an element message from irohsrc, if it is one people see.
fn receiver_event(s: &gst::StructureRef) -> Option<Event> {
    match s.name().as_str() {
        "iroh-connected" => Some(Event::Connected {
            id: s.get("viewer-id").unwrap_or_default(),
            path: s.get("path").unwrap_or_default(),
            rtt_ms: s.get("rtt-ms").unwrap_or(-1.0),
        }),
        "iroh-path-changed" => Some(Event::Path {
            path: s.get("path").unwrap_or_default(),
        }),
        "iroh-reconnecting" => Some(Event::Warning {
            message: format!(
                "{}; reconnecting (attempt {})",
                s.get::<String>("reason").unwrap_or_default(),
                s.get::<u32>("attempt").unwrap_or(0)
            ),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_read_from_the_error_code_not_the_text() {
        let of = |e: glib::Error| Failure::of(&e);
        assert_eq!(
            of(glib::Error::new(gst::ResourceError::Busy, "anything")),
            Some(Failure::HostFull)
        );
        assert_eq!(
            of(glib::Error::new(gst::ResourceError::NotAuthorized, "")),
            Some(Failure::NotAuthorized)
        );
        assert_eq!(
            of(glib::Error::new(gst::ResourceError::OpenRead, "")),
            Some(Failure::Unreachable)
        );
        assert_eq!(
            of(glib::Error::new(gst::StreamError::WrongType, "")),
            Some(Failure::Version)
        );
        assert_eq!(of(glib::Error::new(gst::ResourceError::Read, "host is full")), None);
    }
}
