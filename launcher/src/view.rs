//! Viewing: `irohsrc` receives the share; a loopback-only HTTP server hands it to any number of
//! local players (mpv, VLC, ffplay, …), each starting at a keyframe.

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

use crate::cli::{Player, ViewArgs};
use crate::events::{Event, Events};
use crate::pipeline;
use crate::player;

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

/// Feeds what irohsrc outputs into the local fanout (and its MPEG-TS table cache).
fn feed(appsink: &gst_app::AppSink, fanout: Arc<GopCache>) {
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

/// Serves one local player: a plain HTTP/1.1 response streaming MPEG-TS from a keyframe on.
async fn serve_player(
    mut tcp: TcpStream,
    fanout: Arc<GopCache>,
    src: gst::Element,
    cancel: CancellationToken,
    players: Arc<AtomicU32>,
) {
    let _ = tcp.set_nodelay(true);
    // Read the request head (bounded); any path is the stream.
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
        return;
    }
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nCache-Control: no-cache, no-store\r\nConnection: close\r\n\r\n";
    if tcp.write_all(resp).await.is_err() || head.starts_with(b"HEAD ") {
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

/// The built-in GStreamer player: a window and the speakers, fed from the local URL.
fn gst_player(url: &str) -> Result<gst::Element> {
    let p = gst::ElementFactory::make("playbin")
        .property("uri", url)
        .build()
        .map_err(|_| anyhow!("the built-in player needs playbin (gstreamer1.0-plugins-base)"))?;
    p.set_state(gst::State::Playing)
        .map_err(|_| anyhow!("the built-in player cannot start"))?;
    Ok(p)
}

/// Runs a viewer until ctrl-c (`cancel`), the host ends the share, the player exits, or an
/// error.
pub async fn run(args: ViewArgs, events: Arc<Events>, cancel: CancellationToken) -> Result<()> {
    let (ticket, listen) = (&args.ticket, args.listen);
    let src_props = pipeline::endpoint_props(&args.common);
    let pipeline = pipeline::launch(&pipeline::viewer_local(&ticket.to_string(), &src_props)?, "viewer")?;
    let appsink: gst_app::AppSink = pipeline::child(&pipeline, "out", "viewer")?;
    let src: gst::Element = pipeline::child(&pipeline, "src", "viewer")?;
    let fanout = Arc::new(GopCache::new(GopCacheConfig {
        burst_max_age: Duration::from_millis(300),
        keep: Duration::from_secs(4),
        ..Default::default()
    }));
    feed(&appsink, fanout.clone());

    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow!("cannot listen on {listen}: {e}"))?;
    let url = format!("http://{}/", listener.local_addr()?);
    pipeline::play(&pipeline, "receiving")?;
    let mut bus = pipeline.bus().expect("pipeline has a bus").stream();
    events.emit(Event::Url { url: url.clone() });

    let mut gst_window = None;
    let mut running = None;
    let mut player = args.player;
    if let Some(problem) = player::check(player) {
        events.emit(Event::Warning {
            message: format!("{problem}; open the URL in another player"),
        });
        player = Player::None;
    }
    match player {
        Player::None => {
            if !events.is_json() {
                eprintln!("pixelpass: play it with: mpv --profile=low-latency --cache=no {url}");
            }
        }
        Player::Gst => gst_window = Some(gst_player(&url)?),
        p => match player::spawn(p, &url) {
            Ok(r) => {
                events.emit(Event::PlayerStarted {
                    player: r.name.into(),
                    pid: r.pid,
                });
                running = Some(r);
            }
            Err(e) => events.emit(Event::Warning {
                message: format!("{e}; open {url} in a player"),
            }),
        },
    }

    let clients = cancel.child_token();
    let players = Arc::new(AtomicU32::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = (0u64, Instant::now());
    let result = loop {
        let player_exit = async {
            match running.as_mut() {
                Some(r) => (&mut r.exited).await.ok().flatten(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            code = player_exit => {
                let name = running.take().map_or("player", |r| r.name);
                events.emit(Event::PlayerExited { player: name.into(), code });
                events.emit(Event::Ended { reason: format!("{name} was closed: the viewer ends") });
                break Ok(());
            }
            conn = listener.accept() => {
                if let Ok((tcp, _)) = conn {
                    tokio::spawn(serve_player(tcp, fanout.clone(), src.clone(), clients.clone(), players.clone()));
                }
            }
            msg = bus.next() => {
                let Some(msg) = msg else { break Err(anyhow!("the viewer pipeline stopped")) };
                match msg.view() {
                    gst::MessageView::Error(e) => break Err(ViewError::from_message(e).into()),
                    gst::MessageView::Eos(_) => {
                        events.emit(Event::Ended { reason: "the host ended the share".into() });
                        break Ok(());
                    }
                    gst::MessageView::Element(el) => {
                        let Some(s) = el.structure() else { continue };
                        match s.name().as_str() {
                            "iroh-connected" => events.emit(Event::Connected {
                                id: s.get("viewer-id").unwrap_or_default(),
                                path: s.get("path").unwrap_or_default(),
                                rtt_ms: s.get("rtt-ms").unwrap_or(-1.0),
                            }),
                            "iroh-path-changed" => events.emit(Event::Path { path: s.get("path").unwrap_or_default() }),
                            "iroh-reconnecting" => events.emit(Event::Warning {
                                message: format!(
                                    "{}; reconnecting (attempt {})",
                                    s.get::<String>("reason").unwrap_or_default(),
                                    s.get::<u32>("attempt").unwrap_or(0)
                                ),
                            }),
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                if let Some(st) = src.property::<Option<gst::Structure>>("stats") {
                    let bytes = st.get::<u64>("bytes-received").unwrap_or(0);
                    let kbps = bytes.saturating_sub(last.0) as f64 * 8.0 / last.1.elapsed().as_secs_f64().max(0.001) / 1000.0;
                    last = (bytes, Instant::now());
                    events.emit(Event::ViewerStats {
                        path: st.get("path").unwrap_or_default(),
                        bitrate_kbps: kbps,
                        latency_ms: st.get("latency-p50-ms").unwrap_or(-1.0),
                        gops_skipped: st.get("gops-skipped").unwrap_or(0),
                        reconnects: st.get("reconnects").unwrap_or(0),
                        players: players.load(Ordering::Relaxed),
                    });
                }
            }
        }
    };
    clients.cancel();
    fanout.end();
    if let Some(w) = gst_window {
        let _ = w.set_state(gst::State::Null);
    }
    // Closing irohsrc closes the connection, so the host sees this viewer leave at once.
    let p = pipeline.clone();
    let _ = tokio::task::spawn_blocking(move || p.set_state(gst::State::Null)).await;
    result
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
