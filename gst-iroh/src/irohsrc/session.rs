//! The viewer's connection to its host, on the gst-iroh runtime: dial and handshake (`dial`,
//! `handshake`), the GOP stream acceptor (`spawn_acceptor`, `read_gop`), the play loop that
//! hands frames in order to the streaming thread through a bounded channel (`play`), progress
//! and path reports (`report`), reconnecting (`run`), and the counters behind the `stats`
//! property (`Stats`).

use std::collections::VecDeque;
use std::str::FromStr as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gst::glib;
use gst::prelude::*;
use iroh::endpoint::{Connection, ConnectionError, RecvStream, SendStream};
use iroh::{Endpoint, EndpointId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::{Failure, Kind};
use super::imp::{CAT, ResolvedSettings};
use crate::net::{self, RUNTIME, read_control, write_control};
use crate::protocol::{self, CloseCode, Control, FrameMeta, GopHeader, flags};
use crate::ticket::Ticket;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes received but not yet handed downstream before we call the host broken.
const MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;
/// How often the viewer tells the host how far it got.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes GOP streams other than the one being played may hold before their readers pause
/// (the one being played never pauses, so there is no flow-control deadlock).
const AHEAD_BYTES: usize = 8 * 1024 * 1024;
/// Latency samples kept for the percentiles in `stats`.
const LATENCY_WINDOW: usize = 2048;

/// What the network task hands the streaming thread.
#[derive(Debug)]
pub(super) enum Item {
    /// A new connection: re-anchor timestamps, mark the next buffer DISCONT.
    Session,
    Caps(gst::Caps),
    Frame {
        meta: FrameMeta,
        data: Bytes,
        discont: bool,
    },
    Eos,
    Error(Failure),
}

/// What the element and its session share, one concern per field; none of it sits behind
/// the element's state lock.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) stats: Stats,
    pub(super) flow: Flow,
    /// Downstream asked for a keyframe (a force-key-unit event): tell the host.
    pub(super) keyframe_wanted: AtomicBool,
    /// The `max-bitrate` property now (kbit/s, 0: none): sent to the host when it changes.
    pub(super) ceiling_kbps: AtomicU32,
}

/// Counters for the `stats` property, written by the session.
#[derive(Debug)]
pub(super) struct Stats {
    connected: AtomicBool,
    path: Mutex<&'static str>,
    rtt_us: AtomicU64,
    bytes: AtomicU64,
    gops: AtomicU64,
    skipped_gops: AtomicU64,
    /// GOPs the host cut short: the next one came flagged DISCONT, with no gap or reset.
    cut_gops: AtomicU64,
    reconnects: AtomicU64,
    latencies_us: Mutex<VecDeque<u64>>,
    /// What the host calls this viewer (its `viewer-joined` id); empty until admitted.
    viewer_id: Mutex<String>,
    /// The host's renditions (top first) and the one being played.
    renditions: Mutex<Vec<String>>,
    rendition: Mutex<String>,
    rendition_switches: AtomicU64,
    /// Probe padding received (cumulative over the connection).
    probe_bytes: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            connected: AtomicBool::new(false),
            path: Mutex::new("none"),
            rtt_us: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            gops: AtomicU64::new(0),
            skipped_gops: AtomicU64::new(0),
            cut_gops: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            latencies_us: Mutex::new(VecDeque::new()),
            viewer_id: Mutex::new(String::new()),
            renditions: Mutex::new(Vec::new()),
            rendition: Mutex::new(String::new()),
            rendition_switches: AtomicU64::new(0),
            probe_bytes: AtomicU64::new(0),
        }
    }
}

/// Flow control: bytes received but not yet handed downstream, and which GOP stream plays.
#[derive(Debug, Default)]
pub(super) struct Flow {
    buffered: AtomicUsize,
    /// Index (in accept order) of the GOP stream being played.
    playing: AtomicU64,
    /// Wakes GOP readers paused until their turn or until the streaming thread drained.
    drained: tokio::sync::Notify,
}

impl Flow {
    /// `n` buffered bytes went downstream (saturating: a new session resets the count while
    /// the old one's last buffers may still be queued).
    pub(super) fn release(&self, n: usize) {
        let _ = self
            .buffered
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(n)));
        self.drained.notify_waiters();
    }
}

impl Stats {
    fn record_latency(&self, capture_unix_ns: u64) {
        let now = net::unix_now_ns();
        if capture_unix_ns == 0 || capture_unix_ns > now + 5_000_000_000 {
            return; // no capture time, or clocks too far apart to mean anything
        }
        let mut l = self.latencies_us.lock().unwrap();
        if l.len() == LATENCY_WINDOW {
            l.pop_front();
        }
        l.push_back(now.saturating_sub(capture_unix_ns) / 1000);
    }

    pub(super) fn structure(&self) -> gst::Structure {
        let l = self.latencies_us.lock().unwrap();
        let mut sorted: Vec<u64> = l.iter().copied().collect();
        sorted.sort_unstable();
        let pct = |p: f64| -> f64 {
            if sorted.is_empty() {
                return -1.0;
            }
            let i = ((sorted.len() - 1) as f64 * p).round() as usize;
            sorted[i] as f64 / 1000.0
        };
        gst::Structure::builder("application/x-irohsrc-stats")
            .field("connected", self.connected.load(Ordering::Relaxed))
            .field("viewer-id", self.viewer_id.lock().unwrap().as_str())
            .field("path", *self.path.lock().unwrap())
            .field("rtt-ms", self.rtt_us.load(Ordering::Relaxed) as f64 / 1000.0)
            .field("bytes-received", self.bytes.load(Ordering::Relaxed))
            .field("gops-received", self.gops.load(Ordering::Relaxed))
            .field("gops-skipped", self.skipped_gops.load(Ordering::Relaxed))
            .field("gops-cut", self.cut_gops.load(Ordering::Relaxed))
            .field("reconnects", self.reconnects.load(Ordering::Relaxed))
            .field("latency-ms", l.back().map_or(-1.0, |v| *v as f64 / 1000.0))
            .field("latency-p50-ms", pct(0.5))
            .field("latency-p99-ms", pct(0.99))
            .field("rendition", self.rendition.lock().unwrap().as_str())
            .field("rendition-switches", self.rendition_switches.load(Ordering::Relaxed))
            .field(
                "renditions",
                gst::Array::new(self.renditions.lock().unwrap().iter().map(|s| s.to_send_value())),
            )
            .build()
    }
}

/// What the session needs from the element.
pub(super) struct Ctx {
    pub(super) element: glib::WeakRef<super::IrohSrc>,
    pub(super) settings: Arc<ResolvedSettings>,
    /// Items for the streaming thread (bounded: `max-buffers`).
    pub(super) tx: mpsc::Sender<Item>,
    pub(super) cancel: CancellationToken,
    pub(super) shared: Arc<Shared>,
}

impl Ctx {
    fn post(&self, s: gst::Structure) {
        if let Some(el) = self.element.upgrade() {
            let _ = el.post_message(gst::message::Element::builder(s).src(&el).build());
        }
    }

    async fn send(&self, item: Item) -> Result<(), End> {
        tokio::select! {
            r = self.tx.send(item) => r.map_err(|_| End::Cancelled),
            _ = self.cancel.cancelled() => Err(End::Cancelled),
        }
    }
}

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The host sent end-of-stream.
    Eos,
    /// Stop trying.
    Fatal(Failure),
    /// Try again (host gone, path broken, removed as slow).
    Retry(Failure),
    /// The element is stopping.
    Cancelled,
}

/// Dials the host until the share ends, the host refuses this viewer, or reconnecting gives
/// up; tells the streaming thread how it ended.
pub(super) async fn run(ctx: Ctx) {
    let Some(endpoint) = open_endpoint(&ctx).await else {
        return;
    };
    let mut ever_connected = false;
    // Start of the current outage, and reconnect attempts in it.
    let mut lost_at: Option<Instant> = None;
    let mut attempt = 0u32;
    loop {
        let mut admitted = false;
        let end = session(&ctx, &endpoint, &mut admitted).await;
        ctx.shared.stats.connected.store(false, Ordering::Relaxed);
        if admitted {
            ever_connected = true;
            lost_at = None;
            attempt = 0;
        }
        let failure = match end {
            End::Eos => {
                let _ = ctx.send(Item::Eos).await;
                break;
            }
            End::Cancelled => break,
            End::Fatal(failure) => {
                let _ = ctx.send(Item::Error(failure)).await;
                break;
            }
            End::Retry(failure) => failure,
        };
        if !ctx.settings.reconnect || !ever_connected {
            let _ = ctx.send(Item::Error(failure)).await;
            break;
        }
        let since = *lost_at.get_or_insert_with(Instant::now);
        if since.elapsed() > ctx.settings.reconnect_timeout {
            let suffix = format!(
                "; gave up after {} s of reconnecting",
                ctx.settings.reconnect_timeout.as_secs()
            );
            let _ = ctx.send(Item::Error(failure.with_suffix(&suffix))).await;
            break;
        }
        attempt += 1;
        if !back_off(&ctx, &failure.text, attempt).await {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.close()).await;
}

/// This viewer's own iroh endpoint (a fresh key each time: viewers have no identity).
async fn open_endpoint(ctx: &Ctx) -> Option<Endpoint> {
    let bind: Vec<_> = ctx.settings.bind.into_iter().collect();
    let endpoint = tokio::select! {
        e = net::bind(iroh::SecretKey::generate(), &ctx.settings.relay, &bind, vec![]) => e,
        _ = ctx.cancel.cancelled() => return None,
    };
    match endpoint {
        Ok(e) => Some(e),
        Err(e) => {
            let _ = ctx.send(Item::Error(Failure::new(Kind::Endpoint, e.to_string()))).await;
            None
        }
    }
}

/// Counts and announces reconnect attempt `attempt`, then waits out its backoff; false when
/// the element stops meanwhile.
async fn back_off(ctx: &Ctx, reason: &str, attempt: u32) -> bool {
    ctx.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
    gst::info!(CAT, "connection lost ({reason}); reconnect attempt {attempt}");
    ctx.post(
        gst::Structure::builder("iroh-reconnecting")
            .field("reason", reason)
            .field("attempt", attempt)
            .build(),
    );
    let backoff = Duration::from_millis(200u64 << attempt.min(5)).min(Duration::from_secs(5));
    tokio::select! {
        _ = tokio::time::sleep(backoff) => true,
        _ = ctx.cancel.cancelled() => false,
    }
}

/// Text for a person, and whether to reconnect, for a close code from the host.
fn explain(code: CloseCode, reason: &str) -> End {
    let kind = match code {
        CloseCode::HostFull => Kind::HostFull,
        CloseCode::BadSecret => Kind::BadSecret,
        CloseCode::Revoked => Kind::Revoked,
        CloseCode::Kicked => Kind::Kicked,
        CloseCode::Protocol => Kind::Protocol,
        CloseCode::Slow | CloseCode::Normal | CloseCode::HostStopped => Kind::Lost,
    };
    let (text, retry) = code.viewer_text(reason);
    let failure = Failure::new(kind, text);
    if retry {
        End::Retry(failure)
    } else {
        End::Fatal(failure)
    }
}

fn explain_conn_error(e: &ConnectionError) -> End {
    match e {
        ConnectionError::ApplicationClosed(c) => explain(
            CloseCode::from_u64(c.error_code.into_inner()),
            &String::from_utf8_lossy(&c.reason),
        ),
        ConnectionError::LocallyClosed => End::Cancelled,
        other => End::Retry(Failure::new(
            Kind::Lost,
            format!("connection to the host lost: {other}"),
        )),
    }
}

/// Asks a host that refused our ALPN which protocol version it speaks.
async fn probe_version(endpoint: &Endpoint, ticket: &Ticket) -> Option<u64> {
    let conn = tokio::time::timeout(
        Duration::from_secs(3),
        endpoint.connect(ticket.addr.clone(), protocol::ALPN_VERSION_PROBE),
    )
    .await
    .ok()?
    .ok()?;
    match tokio::time::timeout(Duration::from_secs(3), conn.closed()).await.ok()? {
        ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

/// One connection: dial, play until it ends, close it with a code the host understands.
/// `admitted`: the host let this viewer in.
async fn session(ctx: &Ctx, endpoint: &Endpoint, admitted: &mut bool) -> End {
    let conn = tokio::select! {
        c = dial(ctx, endpoint) => match c { Ok(c) => c, Err(e) => return e },
        _ = ctx.cancel.cancelled() => return End::Cancelled,
    };
    let end = tokio::select! {
        e = connected(ctx, &conn, endpoint.id(), admitted) => e,
        _ = ctx.cancel.cancelled() => End::Cancelled,
    };
    let code = match &end {
        End::Fatal(_) => CloseCode::Protocol,
        _ => CloseCode::Normal,
    };
    conn.close((code as u32).into(), b"viewer left");
    end
}

/// Opens the QUIC connection to the host; on a failed handshake, asks which protocol version
/// the host speaks: a version 1 host is dialled again in version 1 (it serves one
/// rendition), a newer one gets an error that says which side to update.
async fn dial(ctx: &Ctx, endpoint: &Endpoint) -> Result<Connection, End> {
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        endpoint.connect(ctx.settings.ticket.addr.clone(), protocol::ALPN),
    )
    .await
    {
        Err(_) => Err(End::Retry(Failure::new(
            Kind::Unreachable,
            format!(
                "cannot reach the host within {} s (is it still sharing? are both sides online?)",
                CONNECT_TIMEOUT.as_secs()
            ),
        ))),
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => match probe_version(endpoint, &ctx.settings.ticket).await {
            Some(1) => tokio::time::timeout(
                CONNECT_TIMEOUT,
                endpoint.connect(ctx.settings.ticket.addr.clone(), protocol::ALPN_V1),
            )
            .await
            .map_err(|_| End::Retry(Failure::new(Kind::Unreachable, "the host did not answer in time")))?
            .map_err(|e| {
                End::Retry(Failure::new(
                    Kind::Unreachable,
                    format!("cannot connect to the host: {e}"),
                ))
            }),
            Some(v) if v != u64::from(protocol::VERSION) => Err(End::Fatal(version_mismatch(v))),
            _ => Err(End::Retry(Failure::new(
                Kind::Unreachable,
                format!("cannot connect to the host: {e}"),
            ))),
        },
    }
}

/// The host answered the version probe with another version: say which side to update.
fn version_mismatch(host: u64) -> Failure {
    let ours = protocol::VERSION;
    let update = if host > u64::from(ours) {
        "update this viewer"
    } else {
        "the host must update"
    };
    Failure::new(
        Kind::Version,
        format!("host speaks protocol v{host}, this viewer v{ours}: {update}"),
    )
}

/// An admitted connection: announce it, accept GOP streams, play them.
async fn connected(ctx: &Ctx, conn: &Connection, me: EndpointId, admitted: &mut bool) -> End {
    let (mut control, viewer_id) = match handshake(ctx, conn).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    *admitted = true;
    let label = match viewer_id {
        0 => String::new(),
        n => protocol::viewer_label(me.as_bytes(), n),
    };
    report_connected(ctx, conn, label);
    if ctx.send(Item::Session).await.is_err() {
        return End::Cancelled;
    }
    let accept_cancel = ctx.cancel.child_token();
    let _guard = accept_cancel.clone().drop_guard();
    spawn_probe_sink(ctx, conn, accept_cancel.clone());
    let gops = spawn_acceptor(ctx, conn, accept_cancel);
    play(ctx, conn, &mut control, gops).await
}

/// The control bi-stream, with bytes read but not yet decoded.
struct ControlStream {
    send: SendStream,
    recv: RecvStream,
    buf: BytesMut,
    /// The ceiling the host was last told (kbit/s): in the hello, then by `Ceiling`.
    ceiling: u32,
}

/// Hello / Welcome on the control stream: the control stream and the host's number for this
/// viewer; a Refuse becomes the host's reason.
async fn handshake(ctx: &Ctx, conn: &Connection) -> Result<(ControlStream, u64), End> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| explain_conn_error(&e))?;
        let name: String = ctx.settings.name.chars().take(protocol::MAX_NAME_LEN / 4).collect();
        let secret = ctx.settings.ticket.secret;
        // the ceiling now, not at READY: `max-bitrate` may have changed since (a reconnect)
        let ceiling = ctx.shared.ceiling_kbps.load(Ordering::Relaxed);
        let hello = match conn.alpn() == protocol::ALPN_V1 {
            true => Control::Hello { secret, name },
            false => Control::Hello2 {
                secret,
                name,
                max_kbps: ceiling,
            },
        };
        write_control(&mut send, &hello)
            .await
            .map_err(|e| End::Retry(Failure::new(Kind::Unreachable, format!("cannot talk to the host: {e}"))))?;
        let mut buf = BytesMut::new();
        let answer = read_control(&mut recv, &mut buf).await;
        let control = ControlStream {
            send,
            recv,
            buf,
            ceiling,
        };
        match answer {
            Ok(Control::Welcome { viewer_id }) => Ok((control, viewer_id)),
            Ok(Control::Welcome2 { viewer_id, renditions }) => {
                *ctx.shared.stats.renditions.lock().unwrap() = renditions.into_iter().map(|r| r.name).collect();
                Ok((control, viewer_id))
            }
            Ok(Control::Refuse { code, reason }) => Err(explain(CloseCode::from_u64(code.into()), &reason)),
            Ok(other) => Err(End::Fatal(Failure::new(
                Kind::Protocol,
                format!("protocol error: expected a welcome, got {other:?}"),
            ))),
            Err(e) => Err(match conn.close_reason() {
                Some(ce) => explain_conn_error(&ce),
                None => End::Retry(Failure::new(Kind::Unreachable, format!("the host did not answer: {e}"))),
            }),
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(End::Retry(Failure::new(
            Kind::Unreachable,
            "the host did not answer in time",
        ))),
    }
}

/// Connection stats and the `iroh-connected` message.
fn report_connected(ctx: &Ctx, conn: &Connection, viewer_id: String) {
    let (path, rtt) = net::path_info(conn);
    ctx.shared.stats.connected.store(true, Ordering::Relaxed);
    *ctx.shared.stats.viewer_id.lock().unwrap() = viewer_id.clone();
    *ctx.shared.stats.path.lock().unwrap() = path;
    ctx.shared
        .stats
        .rtt_us
        .store(rtt.map_or(0, |d| d.as_micros() as u64), Ordering::Relaxed);
    gst::info!(CAT, "connected to {} over {path}", conn.remote_id().fmt_short());
    ctx.post(
        gst::Structure::builder("iroh-connected")
            .field("endpoint-id", conn.remote_id().to_string())
            .field("viewer-id", viewer_id)
            .field("path", path)
            .field("rtt-ms", rtt.map_or(-1.0, |d| d.as_secs_f64() * 1000.0))
            .build(),
    );
}

/// One item of one GOP stream.
enum StreamItem {
    Header(GopHeader),
    Frame(FrameMeta, Bytes),
    /// The host cut this GOP short (the viewer fell behind) or the stream broke.
    Reset,
    Finished,
}

/// The items of one GOP stream, in order.
type GopItems = mpsc::UnboundedReceiver<StreamItem>;

/// Accepts GOP streams in order (stream ids are ordered) and reads each one eagerly into
/// memory, so a stream waiting its turn never stalls the connection's flow control.
fn spawn_acceptor(ctx: &Ctx, conn: &Connection, cancel: CancellationToken) -> mpsc::UnboundedReceiver<GopItems> {
    let (streams_tx, streams_rx) = mpsc::unbounded_channel::<GopItems>();
    let conn = conn.clone();
    let shared = ctx.shared.clone();
    ctx.shared.flow.playing.store(0, Ordering::Relaxed);
    ctx.shared.flow.buffered.store(0, Ordering::Relaxed);
    RUNTIME.spawn(async move {
        let mut index = 0u64;
        loop {
            let s = tokio::select! {
                s = conn.accept_uni() => s,
                _ = cancel.cancelled() => break,
            };
            let Ok(s) = s else { break };
            let (tx, rx) = mpsc::unbounded_channel();
            if streams_tx.send(rx).is_err() {
                break;
            }
            RUNTIME.spawn(read_gop(index, s, tx, conn.clone(), shared.clone()));
            index += 1;
        }
    });
    streams_rx
}

/// Reads the host's probe streams (bi-streams of padding at the lowest priority), counting
/// what arrives for `ProbeReport`.
fn spawn_probe_sink(ctx: &Ctx, conn: &Connection, cancel: CancellationToken) {
    let conn = conn.clone();
    let shared = ctx.shared.clone();
    RUNTIME.spawn(async move {
        loop {
            let s = tokio::select! {
                s = conn.accept_bi() => s,
                _ = cancel.cancelled() => break,
            };
            let Ok((_send, mut recv)) = s else { break };
            let shared = shared.clone();
            RUNTIME.spawn(async move {
                while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024).await {
                    shared
                        .stats
                        .probe_bytes
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
}

/// What the play loop keeps between GOPs.
struct Play {
    last_seq: Option<u64>,
    /// The rendition of the GOP being played (version 2 hosts).
    rendition: Option<u32>,
    sent_probe: u64,
    /// Newest GOP seq and capture time of the newest frame: what `Progress` reports.
    progress: (u64, u64),
    sent_progress: (u64, u64),
    caps: Option<String>,
    discont_next: bool,
    /// The next frame is a GOP's first and no skip explains a DISCONT on it.
    first_frame: bool,
    /// GOP streams started so far.
    played: u64,
    /// After the host's End: when to stop waiting for the last GOP streams.
    end_at: Option<tokio::time::Instant>,
    /// When progress is next reported (now at the start: the host hears at once).
    next_report: Instant,
}

/// Plays GOP streams in order, handing their frames to the streaming thread, and reports
/// progress; returns when the connection or the share ends.
async fn play(
    ctx: &Ctx,
    conn: &Connection,
    control: &mut ControlStream,
    mut gops: mpsc::UnboundedReceiver<GopItems>,
) -> End {
    let mut p = Play {
        last_seq: None,
        rendition: None,
        sent_probe: 0,
        progress: (0, 0),
        sent_progress: (0, 0),
        caps: None,
        discont_next: false,
        first_frame: false,
        played: 0,
        end_at: None,
        next_report: Instant::now(),
    };
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    let mut current: Option<GopItems> = None;
    loop {
        if current.is_none() {
            match next_gop(ctx, conn, control, &mut gops, &mut p, &mut tick).await {
                Ok(gop) => current = gop,
                Err(end) => return end,
            }
        }
        if let Some(rx) = current.as_mut() {
            tokio::select! {
                item = rx.recv() => match p.play_item(ctx, item).await {
                    Ok(true) => {}
                    Ok(false) => current = None,
                    Err(end) => return end,
                },
                _ = tick.tick() => {}
                e = conn.closed() => return explain_conn_error(&e),
            }
        }
        if Instant::now() >= p.next_report {
            p.next_report = Instant::now() + PROGRESS_INTERVAL;
            report(ctx, conn, control, &mut p).await;
        }
    }
}

/// Waits for the next GOP stream while watching the control stream for the host's End.
/// `Ok(None)`: nothing to play yet.
async fn next_gop(
    ctx: &Ctx,
    conn: &Connection,
    control: &mut ControlStream,
    gops: &mut mpsc::UnboundedReceiver<GopItems>,
    p: &mut Play,
    tick: &mut tokio::time::Interval,
) -> Result<Option<GopItems>, End> {
    // After the host's End, the last GOP streams may still be arriving: wait a moment for
    // them, then end.
    let ending = p.end_at.is_some();
    let end_at = p.end_at.unwrap_or_else(tokio::time::Instant::now);
    let drain = Duration::from_millis(300);
    tokio::select! {
        s = gops.recv() => match s {
            Some(s) => {
                if p.played > 0 {
                    ctx.shared.flow.playing.fetch_add(1, Ordering::Relaxed);
                    ctx.shared.flow.drained.notify_waiters();
                }
                p.played += 1;
                Ok(Some(s))
            }
            None => Err(match conn.close_reason() {
                Some(e) => explain_conn_error(&e),
                None => End::Retry(Failure::new(Kind::Lost, "connection closed")),
            }),
        },
        m = read_control(&mut control.recv, &mut control.buf), if !ending => match m {
            Ok(Control::End) => {
                p.end_at = Some(tokio::time::Instant::now() + drain);
                Ok(None)
            }
            Ok(_) => Ok(None),
            Err(_) => match conn.close_reason() {
                Some(e) => Err(explain_conn_error(&e)),
                // control stream finished: treat as end once drained
                None => {
                    p.end_at = Some(tokio::time::Instant::now() + drain);
                    Ok(None)
                }
            },
        },
        _ = tokio::time::sleep_until(end_at), if ending => Err(End::Eos),
        _ = tick.tick() => Ok(None),
        e = conn.closed() => Err(explain_conn_error(&e)),
    }
}

impl Play {
    /// Hands one item of the GOP being played downstream; false once that GOP is done.
    async fn play_item(&mut self, ctx: &Ctx, item: Option<StreamItem>) -> Result<bool, End> {
        match item {
            Some(StreamItem::Header(h)) => self.start_gop(ctx, h).await?,
            Some(StreamItem::Frame(meta, data)) => {
                if let Some(c) = meta.capture_unix_ns {
                    ctx.shared.stats.record_latency(c);
                    self.progress.1 = c;
                }
                if std::mem::take(&mut self.first_frame) && meta.flags & flags::DISCONT != 0 {
                    ctx.shared.stats.cut_gops.fetch_add(1, Ordering::Relaxed);
                }
                let discont = std::mem::take(&mut self.discont_next);
                ctx.send(Item::Frame { meta, data, discont }).await?;
            }
            Some(StreamItem::Reset) => {
                ctx.shared.stats.skipped_gops.fetch_add(1, Ordering::Relaxed);
                self.discont_next = true;
                return Ok(false);
            }
            Some(StreamItem::Finished) | None => return Ok(false),
        }
        Ok(true)
    }

    /// A GOP header: count skipped GOPs, pass new caps downstream.
    async fn start_gop(&mut self, ctx: &Ctx, h: GopHeader) -> Result<(), End> {
        ctx.shared.stats.gops.fetch_add(1, Ordering::Relaxed);
        if let Some(l) = self.last_seq
            && h.seq != l + 1
        {
            ctx.shared
                .stats
                .skipped_gops
                .fetch_add(h.seq.saturating_sub(l + 1), Ordering::Relaxed);
            self.discont_next = true;
        }
        if let Some(r) = h.rendition {
            self.switch_rendition(ctx, r);
        }
        self.first_frame = !self.discont_next;
        self.last_seq = Some(h.seq);
        self.progress.0 = h.seq;
        if self.caps.as_deref() != Some(h.caps.as_str()) {
            let Ok(c) = gst::Caps::from_str(&h.caps) else {
                return Err(End::Fatal(Failure::new(
                    Kind::Protocol,
                    format!("the host sent caps this viewer cannot parse: {}", h.caps),
                )));
            };
            ctx.send(Item::Caps(c)).await?;
            self.caps = Some(h.caps);
        }
        Ok(())
    }
}

impl Play {
    /// A GOP of rendition `r`: a change is another encoding from its keyframe on (another
    /// resolution, other MPEG-TS continuity counters), so the next buffer is marked DISCONT.
    fn switch_rendition(&mut self, ctx: &Ctx, r: u32) {
        let name = ctx
            .shared
            .stats
            .renditions
            .lock()
            .unwrap()
            .get(r as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{r}"));
        let prev = self.rendition.replace(r);
        if prev == Some(r) {
            return;
        }
        *ctx.shared.stats.rendition.lock().unwrap() = name.clone();
        let Some(prev) = prev else { return };
        ctx.shared.stats.rendition_switches.fetch_add(1, Ordering::Relaxed);
        self.discont_next = true;
        gst::info!(CAT, "host moved this viewer from rendition {prev} to {r} ({name})");
        ctx.post(
            gst::Structure::builder("iroh-rendition-changed")
                .field("rendition", name)
                .field("index", r)
                .build(),
        );
    }
}

/// Tells the host how far this viewer got and whether something downstream wants a
/// keyframe; watches the path.
async fn report(ctx: &Ctx, conn: &Connection, control: &mut ControlStream, p: &mut Play) {
    let ending = p.end_at.is_some();
    if ctx.shared.keyframe_wanted.swap(false, Ordering::Relaxed) && !ending {
        let _ = write_control(&mut control.send, &Control::KeyframeRequest).await;
    }
    if p.progress != p.sent_progress && !ending {
        p.sent_progress = p.progress;
        let _ = write_control(
            &mut control.send,
            &Control::Progress {
                seq: p.progress.0,
                capture_unix_ns: p.progress.1,
            },
        )
        .await;
    }
    let probe = ctx.shared.stats.probe_bytes.load(Ordering::Relaxed);
    if probe != p.sent_probe && !ending {
        p.sent_probe = probe;
        let _ = write_control(&mut control.send, &Control::ProbeReport { bytes: probe }).await;
    }
    let ceiling = ctx.shared.ceiling_kbps.load(Ordering::Relaxed);
    if ceiling != control.ceiling && !ending && conn.alpn() != protocol::ALPN_V1 {
        control.ceiling = ceiling;
        gst::info!(CAT, "asking the host for at most {ceiling} kbit/s (0: no ceiling)");
        let _ = write_control(&mut control.send, &Control::Ceiling { max_kbps: ceiling }).await;
    }
    watch_path(ctx, conn);
}

/// Updates the path and RTT stats; posts `iroh-path-changed` when the path changed.
fn watch_path(ctx: &Ctx, conn: &Connection) {
    let (path, rtt) = net::path_info(conn);
    ctx.shared
        .stats
        .rtt_us
        .store(rtt.map_or(0, |d| d.as_micros() as u64), Ordering::Relaxed);
    let prev = std::mem::replace(&mut *ctx.shared.stats.path.lock().unwrap(), path);
    if prev != path {
        gst::info!(CAT, "path changed: {prev} -> {path}");
        ctx.post(gst::Structure::builder("iroh-path-changed").field("path", path).build());
    }
}

/// Reads one GOP stream into `tx`: header, then frames, then Finished or Reset.
async fn read_gop(
    index: u64,
    mut s: RecvStream,
    tx: mpsc::UnboundedSender<StreamItem>,
    conn: Connection,
    shared: Arc<Shared>,
) {
    let mut gop = GopReader {
        index,
        buf: BytesMut::new(),
        header_done: false,
        tx,
        shared,
    };
    loop {
        if let Err(why) = gop.drain().await {
            conn.close((CloseCode::Protocol as u32).into(), why.as_bytes());
            let _ = gop.tx.send(StreamItem::Reset);
            return;
        }
        match s.read_chunk(1024 * 1024).await {
            Ok(Some(chunk)) => {
                gop.shared.stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                gop.buf.extend_from_slice(&chunk);
            }
            Ok(None) => {
                let _ = gop.tx.send(if gop.buf.is_empty() && gop.header_done {
                    StreamItem::Finished
                } else {
                    StreamItem::Reset
                });
                return;
            }
            Err(_) => {
                let _ = gop.tx.send(StreamItem::Reset);
                return;
            }
        }
    }
}

/// One GOP stream being read: the bytes not decoded yet.
struct GopReader {
    /// Accept order of this stream: the play loop plays them in this order.
    index: u64,
    buf: BytesMut,
    header_done: bool,
    tx: mpsc::UnboundedSender<StreamItem>,
    shared: Arc<Shared>,
}

impl GopReader {
    /// Passes on every complete item in the buffer; `Err` says what the host got wrong.
    async fn drain(&mut self) -> Result<(), &'static str> {
        if !self.header_done {
            match GopHeader::decode(&self.buf) {
                Ok(Some((h, used))) => {
                    let _ = self.buf.split_to(used);
                    self.header_done = true;
                    let _ = self.tx.send(StreamItem::Header(h));
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    gst::warning!(CAT, "bad GOP header from host: {e}");
                    return Err("bad GOP header");
                }
            }
        }
        loop {
            match FrameMeta::decode_frame(&self.buf) {
                Ok(Some(((meta, range), used))) => {
                    let data = self.buf.split_to(used).freeze().slice(range);
                    let total = self.shared.flow.buffered.fetch_add(data.len(), Ordering::Relaxed) + data.len();
                    if total > MAX_BUFFERED_BYTES {
                        gst::warning!(CAT, "host sent more than {MAX_BUFFERED_BYTES} bytes ahead: closing");
                        return Err("too much data buffered");
                    }
                    let _ = self.tx.send(StreamItem::Frame(meta, data));
                    self.wait_turn().await;
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    gst::warning!(CAT, "bad frame from host: {e}");
                    return Err("bad frame");
                }
            }
        }
    }

    /// A stream waiting its turn stops reading once enough is buffered: QUIC flow control
    /// then tells the host, which skips this viewer ahead.
    async fn wait_turn(&self) {
        while self.index != self.shared.flow.playing.load(Ordering::Relaxed)
            && self.shared.flow.buffered.load(Ordering::Relaxed) > AHEAD_BYTES
            && !self.tx.is_closed()
        {
            let notified = self.shared.flow.drained.notified();
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}
