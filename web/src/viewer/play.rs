//! An admitted connection, as the native viewer plays it: GOP streams accepted in order and
//! read eagerly (`spawn_acceptor`, `read_gop`), the host's probe padding counted
//! (`spawn_probe_sink`), the GOP being played demuxed and handed to the page (`Play`), and
//! progress, keyframe requests and stats reported ten times a second (`report`).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use iroh::endpoint::{Connection, RecvStream};
use n0_future::time::{Instant, interval};
use pixelpass_protocol::{self as protocol, CloseCode, Control, FrameMeta, GopHeader, flags};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use wasm_bindgen_futures::spawn_local;

use super::session::{ControlStream, End, explain_conn_error};
use super::{Field, Shared, unix_now_ns};
use crate::demux::{Demuxer, Unit};
use crate::messages::Ending;

const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes GOP streams other than the one being played may hold before their readers pause
/// (the one being played never pauses, so there is no flow-control deadlock).
const AHEAD_BYTES: usize = 8 * 1024 * 1024;
/// Bytes received but not yet played before we call the host broken.
const MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;

/// Flow control and counters the GOP readers and the play loop share.
#[derive(Default)]
struct Flow {
    buffered: Cell<usize>,
    /// Index (in accept order) of the GOP stream being played.
    playing: Cell<u64>,
    drained: Notify,
    bytes: Cell<u64>,
    probe_bytes: Cell<u64>,
}

impl Flow {
    fn release(&self, n: usize) {
        self.buffered.set(self.buffered.get().saturating_sub(n));
        self.drained.notify_waiters();
    }
}

/// One item of one GOP stream.
enum StreamItem {
    Header(GopHeader),
    Frame(FrameMeta, Bytes),
    /// The host reset this GOP (the viewer fell behind) or the stream broke.
    Reset,
    Finished,
}

type GopItems = mpsc::UnboundedReceiver<StreamItem>;

/// Plays GOP streams in order and reports progress until the connection or the share ends.
pub(super) async fn play(
    conn: &Connection,
    control: &mut ControlStream,
    renditions: Vec<String>,
    shared: &Rc<Shared>,
    cancel: &CancellationToken,
) -> End {
    let flow = Rc::new(Flow::default());
    let stop = cancel.child_token();
    let _stop_readers = stop.clone().drop_guard();
    spawn_probe_sink(conn, &flow, stop.clone());
    let mut gops = spawn_acceptor(conn, &flow, stop);
    let mut p = Play::new(renditions, shared.clone(), flow.clone());
    let mut tick = interval(PROGRESS_INTERVAL);
    let mut current: Option<GopItems> = None;
    loop {
        if current.is_none() {
            match next_gop(conn, control, &mut gops, &mut p, &mut tick).await {
                Ok(gop) => current = gop,
                Err(end) => return end,
            }
        }
        if let Some(rx) = current.as_mut() {
            tokio::select! {
                biased;
                e = conn.closed() => return explain_conn_error(&e),
                item = rx.recv() => match p.play_item(item) {
                    Ok(true) => {}
                    Ok(false) => current = None,
                    Err(end) => return end,
                },
                _ = tick.tick() => {}
            }
        }
        if Instant::now() >= p.next_report {
            p.report(conn, control).await;
        }
    }
}

/// Waits for the next GOP stream while watching the control stream for the host's End.
/// `Ok(None)`: nothing to play yet.
async fn next_gop(
    conn: &Connection,
    control: &mut ControlStream,
    gops: &mut mpsc::UnboundedReceiver<GopItems>,
    p: &mut Play,
    tick: &mut n0_future::time::Interval,
) -> Result<Option<GopItems>, End> {
    // After the host's End the last GOP streams may still be arriving: wait a moment.
    let ending = p.end_at.is_some();
    let end_at = p.end_at.unwrap_or_else(Instant::now);
    let drain = Duration::from_millis(300);
    tokio::select! {
        biased;
        e = conn.closed() => Err(explain_conn_error(&e)),
        s = gops.recv() => match s {
            Some(s) => {
                if p.played > 0 {
                    p.flow.playing.set(p.flow.playing.get() + 1);
                    p.flow.drained.notify_waiters();
                }
                p.played += 1;
                Ok(Some(s))
            }
            None => Err(match conn.close_reason() {
                Some(e) => explain_conn_error(&e),
                None => End::Failed(Ending::new("lost", "connection closed", true)),
            }),
        },
        m = control.read(), if !ending => match m {
            Ok(Control::End) => {
                p.end_at = Some(Instant::now() + drain);
                Ok(None)
            }
            Ok(_) => Ok(None),
            Err(_) => match conn.close_reason() {
                Some(e) => Err(explain_conn_error(&e)),
                None => {
                    p.end_at = Some(Instant::now() + drain);
                    Ok(None)
                }
            },
        },
        _ = n0_future::time::sleep_until(end_at), if ending => Err(End::Eos),
        _ = tick.tick() => Ok(None),
    }
}

/// What the play loop keeps between GOPs.
struct Play {
    shared: Rc<Shared>,
    flow: Rc<Flow>,
    demux: Demuxer,
    renditions: Vec<String>,
    rendition: Option<u32>,
    last_seq: Option<u64>,
    /// The next unit handed to the page follows a gap (new connection, skipped or reset GOP,
    /// another rendition): its decoder must restart at a keyframe.
    discont_next: bool,
    /// The next frame is a GOP's first and no skip explains a DISCONT on it.
    first_frame: bool,
    /// Newest GOP seq and capture time of the newest frame handed to the page: `Progress`.
    progress: (u64, u64),
    sent_progress: (u64, u64),
    sent_probe: u64,
    played: u64,
    end_at: Option<Instant>,
    /// When progress is next reported (now at the start: the host hears at once). Not
    /// "last report = now - interval": the page's clock starts at its load, and a reloaded
    /// page can connect within the interval (that subtraction panicked).
    next_report: Instant,
    stats: Counters,
}

/// What the status line shows, counted since the last stats event.
struct Counters {
    at: Instant,
    bytes_at: u64,
    latency_ms: f64,
    skipped: u64,
    cut: u64,
}

impl Play {
    fn new(renditions: Vec<String>, shared: Rc<Shared>, flow: Rc<Flow>) -> Play {
        Play {
            shared,
            flow,
            demux: Demuxer::default(),
            renditions,
            rendition: None,
            last_seq: None,
            discont_next: true,
            first_frame: false,
            progress: (0, 0),
            sent_progress: (0, 0),
            sent_probe: 0,
            played: 0,
            end_at: None,
            next_report: Instant::now(),
            stats: Counters {
                at: Instant::now(),
                bytes_at: 0,
                latency_ms: -1.0,
                skipped: 0,
                cut: 0,
            },
        }
    }

    /// Hands one item of the GOP being played to the page; false once that GOP is done.
    fn play_item(&mut self, item: Option<StreamItem>) -> Result<bool, End> {
        match item {
            Some(StreamItem::Header(h)) => self.start_gop(h)?,
            Some(StreamItem::Frame(meta, data)) => self.frame(meta, &data),
            Some(StreamItem::Reset) => {
                self.stats.skipped += 1;
                self.gap();
                return Ok(false);
            }
            Some(StreamItem::Finished) | None => return Ok(false),
        }
        Ok(true)
    }

    /// Whatever was half read is gone: the decoders restart at the next keyframe.
    fn gap(&mut self) {
        self.discont_next = true;
        self.demux.discard();
    }

    /// A GOP header: count skipped GOPs, follow rendition switches; MPEG-TS only.
    fn start_gop(&mut self, h: GopHeader) -> Result<(), End> {
        if !h.caps.starts_with("video/mpegts") {
            return Err(End::Failed(Ending::new(
                "protocol",
                format!("this page plays MPEG-TS shares only; the host sends {}", h.caps),
                false,
            )));
        }
        if let Some(l) = self.last_seq
            && h.seq != l + 1
        {
            self.stats.skipped += h.seq.saturating_sub(l + 1);
            self.gap();
        }
        if let Some(r) = h.rendition
            && self.rendition.replace(r).is_some_and(|prev| prev != r)
        {
            self.gap();
            let name = self.rendition_name();
            self.shared.emit(
                "rendition",
                &[("name", Field::Str(&name)), ("index", Field::Num(f64::from(r)))],
            );
        }
        self.first_frame = !self.discont_next;
        self.last_seq = Some(h.seq);
        self.progress.0 = h.seq;
        Ok(())
    }

    fn rendition_name(&self) -> String {
        match self.rendition {
            None => String::new(),
            Some(r) => self
                .renditions
                .get(r as usize)
                .cloned()
                .unwrap_or_else(|| format!("#{r}")),
        }
    }

    /// One frame: demux it, hand its units to the page.
    fn frame(&mut self, meta: FrameMeta, data: &[u8]) {
        self.flow.release(data.len());
        if std::mem::take(&mut self.first_frame) && meta.flags & flags::DISCONT != 0 {
            self.stats.cut += 1;
        }
        let mut units = Vec::new();
        self.demux.push(data, &mut units);
        self.demux.flush(&mut units);
        let capture_ms = meta.capture_unix_ns.map(|c| c as f64 / 1e6);
        for unit in units {
            self.emit_unit(unit, capture_ms);
        }
        if let Some(c) = meta.capture_unix_ns {
            self.progress.1 = c;
            let now = unix_now_ns();
            if c <= now + 5_000_000_000 {
                self.stats.latency_ms = now.saturating_sub(c) as f64 / 1e6;
            }
        }
    }

    fn emit_unit(&mut self, unit: Unit, capture_ms: Option<f64>) {
        // whole µs: WebCodecs timestamps are integers, and frames come back with them
        let us = |pts: Option<u64>| pts.map_or(Field::None, |p| Field::Num((p * 100 / 9) as f64));
        let discont = Field::Bool(std::mem::take(&mut self.discont_next));
        match unit {
            Unit::Video { pts, key, codec, data } => self.shared.emit(
                "video",
                &[
                    ("data", Field::Bytes(&data)),
                    ("pts", us(pts)),
                    ("key", Field::Bool(key)),
                    ("codec", codec.as_deref().map_or(Field::None, Field::Str)),
                    ("capture", capture_ms.map_or(Field::None, Field::Num)),
                    ("discont", discont),
                ],
            ),
            Unit::Audio { pts, config, data } => self.shared.emit(
                "audio",
                &[
                    ("data", Field::Bytes(&data)),
                    ("pts", us(pts)),
                    ("codec", Field::Str(&config.codec())),
                    ("sampleRate", Field::Num(f64::from(config.sample_rate))),
                    ("channels", Field::Num(f64::from(config.channels))),
                    ("discont", discont),
                ],
            ),
        }
    }

    /// Tells the host how far this viewer got and whether the page wants a keyframe; once a
    /// second, tells the page what the status line shows.
    async fn report(&mut self, conn: &Connection, control: &mut ControlStream) {
        self.next_report = Instant::now() + PROGRESS_INTERVAL;
        if self.end_at.is_some() {
            return;
        }
        if self.shared.keyframe_wanted.replace(false) {
            control.write(&Control::KeyframeRequest).await;
        }
        if self.progress != self.sent_progress {
            self.sent_progress = self.progress;
            let (seq, capture_unix_ns) = self.progress;
            control.write(&Control::Progress { seq, capture_unix_ns }).await;
        }
        let probe = self.flow.probe_bytes.get();
        if probe != self.sent_probe {
            self.sent_probe = probe;
            control.write(&Control::ProbeReport { bytes: probe }).await;
        }
        let ceiling = self.shared.ceiling_kbps.get();
        if ceiling != control.ceiling && conn.alpn() != protocol::ALPN_V1 {
            control.ceiling = ceiling;
            control.write(&Control::Ceiling { max_kbps: ceiling }).await;
        }
        if self.stats.at.elapsed() >= STATS_INTERVAL {
            self.emit_stats(conn);
        }
    }

    fn emit_stats(&mut self, conn: &Connection) {
        let secs = self.stats.at.elapsed().as_secs_f64();
        let bytes = self.flow.bytes.get();
        let kbps = (bytes - self.stats.bytes_at) as f64 * 8.0 / 1000.0 / secs;
        self.stats.at = Instant::now();
        self.stats.bytes_at = bytes;
        let paths = conn.paths();
        let selected = paths.iter().find(|p| p.is_selected());
        let path = match &selected {
            Some(p) if p.is_relay() => "relay",
            Some(_) => "direct",
            None => "unknown",
        };
        let rtt_ms = selected.map_or(-1.0, |p| p.rtt().as_secs_f64() * 1000.0);
        let rendition = self.rendition_name();
        self.shared.emit(
            "stats",
            &[
                ("path", Field::Str(path)),
                ("rttMs", Field::Num(rtt_ms)),
                ("kbps", Field::Num(kbps)),
                ("latencyMs", Field::Num(self.stats.latency_ms)),
                ("rendition", Field::Str(&rendition)),
                ("gopsSkipped", Field::Num(self.stats.skipped as f64)),
                ("gopsCut", Field::Num(self.stats.cut as f64)),
                ("reconnects", Field::Num(self.shared.reconnects.get() as f64)),
            ],
        );
    }
}

/// Accepts GOP streams in order (stream ids are ordered) and reads each one eagerly, so a
/// stream waiting its turn never stalls the connection's flow control.
fn spawn_acceptor(conn: &Connection, flow: &Rc<Flow>, stop: CancellationToken) -> mpsc::UnboundedReceiver<GopItems> {
    let (streams_tx, streams_rx) = mpsc::unbounded_channel::<GopItems>();
    let conn = conn.clone();
    let flow = flow.clone();
    spawn_local(async move {
        let mut index = 0u64;
        loop {
            let s = tokio::select! {
                s = conn.accept_uni() => s,
                _ = stop.cancelled() => break,
            };
            let Ok(s) = s else { break };
            let (tx, rx) = mpsc::unbounded_channel();
            if streams_tx.send(rx).is_err() {
                break;
            }
            let reader = GopReader {
                index,
                buf: BytesMut::new(),
                header_done: false,
                tx,
                flow: flow.clone(),
            };
            spawn_local(reader.run(s, conn.clone(), stop.clone()));
            index += 1;
        }
    });
    streams_rx
}

/// Reads the host's probe streams (bi-streams of padding at the lowest priority), counting
/// what arrives for `ProbeReport`.
fn spawn_probe_sink(conn: &Connection, flow: &Rc<Flow>, stop: CancellationToken) {
    let conn = conn.clone();
    let flow = flow.clone();
    spawn_local(async move {
        loop {
            let s = tokio::select! {
                s = conn.accept_bi() => s,
                _ = stop.cancelled() => break,
            };
            let Ok((_send, mut recv)) = s else { break };
            let flow = flow.clone();
            let stop = stop.clone();
            spawn_local(async move {
                loop {
                    let chunk = tokio::select! {
                        c = recv.read_chunk(64 * 1024) => c,
                        _ = stop.cancelled() => break,
                    };
                    let Ok(Some(chunk)) = chunk else { break };
                    flow.probe_bytes.set(flow.probe_bytes.get() + chunk.len() as u64);
                }
            });
        }
    });
}

/// One GOP stream being read: the bytes not decoded yet.
struct GopReader {
    /// Accept order of this stream: the play loop plays them in this order.
    index: u64,
    buf: BytesMut,
    header_done: bool,
    tx: mpsc::UnboundedSender<StreamItem>,
    flow: Rc<Flow>,
}

impl GopReader {
    /// Reads the stream into the play loop's channel: header, frames, then Finished or Reset.
    async fn run(mut self, mut s: RecvStream, conn: Connection, stop: CancellationToken) {
        loop {
            if let Err(why) = self.drain().await {
                conn.close((CloseCode::Protocol as u32).into(), why.as_bytes());
                let _ = self.tx.send(StreamItem::Reset);
                return;
            }
            let chunk = tokio::select! {
                c = s.read_chunk(1024 * 1024) => c,
                _ = stop.cancelled() => return,
            };
            match chunk {
                Ok(Some(chunk)) => {
                    self.flow.bytes.set(self.flow.bytes.get() + chunk.len() as u64);
                    self.buf.extend_from_slice(&chunk);
                }
                Ok(None) => {
                    let _ = self.tx.send(match self.buf.is_empty() && self.header_done {
                        true => StreamItem::Finished,
                        false => StreamItem::Reset,
                    });
                    return;
                }
                Err(_) => {
                    let _ = self.tx.send(StreamItem::Reset);
                    return;
                }
            }
        }
    }

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
                Err(_) => return Err("bad GOP header"),
            }
        }
        loop {
            match FrameMeta::decode_frame(&self.buf) {
                Ok(Some(((meta, range), used))) => {
                    let data = self.buf.split_to(used).freeze().slice(range);
                    let total = self.flow.buffered.get() + data.len();
                    self.flow.buffered.set(total);
                    if total > MAX_BUFFERED_BYTES {
                        return Err("too much data buffered");
                    }
                    let _ = self.tx.send(StreamItem::Frame(meta, data));
                    self.wait_turn().await;
                }
                Ok(None) => return Ok(()),
                Err(_) => return Err("bad frame"),
            }
        }
    }

    /// A stream waiting its turn stops reading once enough is buffered: QUIC flow control
    /// then tells the host, which skips this viewer ahead.
    async fn wait_turn(&self) {
        while self.index != self.flow.playing.get() && self.flow.buffered.get() > AHEAD_BYTES && !self.tx.is_closed() {
            let notified = self.flow.drained.notified();
            let _ = n0_future::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}
