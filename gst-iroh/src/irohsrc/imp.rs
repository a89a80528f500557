use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;
use iroh::Endpoint;
use iroh::endpoint::{Connection, ConnectionError, RecvStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::net::{self, RUNTIME, Relay, read_control, write_control};
use crate::protocol::{self, CloseCode, Control, FrameMeta, GopHeader, flags};
use crate::ticket::Ticket;

static CAT: LazyLock<gst::DebugCategory> =
    LazyLock::new(|| gst::DebugCategory::new("irohsrc", gst::DebugColorFlags::empty(), Some("iroh viewer source")));

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

#[derive(Debug, Clone)]
struct Settings {
    ticket: Option<String>,
    relay: String,
    bind_address: String,
    name: String,
    reconnect: bool,
    reconnect_timeout_ms: u32,
    latency_ms: u32,
    max_buffers: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ticket: None,
            relay: "default".into(),
            bind_address: String::new(),
            name: String::new(),
            reconnect: true,
            reconnect_timeout_ms: 30_000,
            latency_ms: 100,
            max_buffers: 512,
        }
    }
}

/// What the network task hands the streaming thread.
#[derive(Debug)]
enum Item {
    /// A new connection: re-anchor timestamps, mark the next buffer DISCONT.
    Session,
    Caps(gst::Caps),
    Frame {
        meta: FrameMeta,
        data: Bytes,
        discont: bool,
    },
    Eos,
    Error(String),
}

/// Counters shared with the network task.
#[derive(Debug, Default)]
struct Stats {
    connected: AtomicBool,
    path: Mutex<&'static str>,
    rtt_us: AtomicU64,
    bytes: AtomicU64,
    gops: AtomicU64,
    skipped_gops: AtomicU64,
    reconnects: AtomicU64,
    latencies_us: Mutex<VecDeque<u64>>,
    buffered: AtomicUsize,
    /// Index (in accept order) of the GOP stream being played, and a wake-up for paused readers.
    playing: AtomicU64,
    drained: tokio::sync::Notify,
    /// Downstream asked for a keyframe (a force-key-unit event): tell the host.
    keyframe_wanted: AtomicBool,
}

impl Stats {
    /// `n` buffered bytes went downstream (saturating: a new session resets the count while
    /// the old one's last buffers may still be queued).
    fn release(&self, n: usize) {
        let _ = self
            .buffered
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(n)));
        self.drained.notify_waiters();
    }

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

    fn structure(&self) -> gst::Structure {
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
            .field("path", *self.path.lock().unwrap())
            .field("rtt-ms", self.rtt_us.load(Ordering::Relaxed) as f64 / 1000.0)
            .field("bytes-received", self.bytes.load(Ordering::Relaxed))
            .field("gops-received", self.gops.load(Ordering::Relaxed))
            .field("gops-skipped", self.skipped_gops.load(Ordering::Relaxed))
            .field("reconnects", self.reconnects.load(Ordering::Relaxed))
            .field("latency-ms", l.back().map_or(-1.0, |v| *v as f64 / 1000.0))
            .field("latency-p50-ms", pct(0.5))
            .field("latency-p99-ms", pct(0.99))
            .build()
    }
}

struct Started {
    rx: mpsc::Receiver<Item>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<Stats>,
    /// Timestamp mapping: local running time = host running time + offset (ns).
    offset: Option<i128>,
    discont: bool,
    caps: Option<gst::Caps>,
}

#[derive(Default)]
pub struct IrohSrc {
    settings: Mutex<Settings>,
    state: Mutex<Option<Started>>,
    stats: Mutex<Option<Arc<Stats>>>,
    unlock: Mutex<CancellationToken>,
}

#[glib::object_subclass]
impl ObjectSubclass for IrohSrc {
    const NAME: &'static str = "GstIrohSrc";
    type Type = super::IrohSrc;
    type ParentType = gst_base::PushSrc;
}

impl ObjectImpl for IrohSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let d = Settings::default();
            vec![
                glib::ParamSpecString::builder("ticket")
                    .nick("Ticket")
                    .blurb("Share ticket printed by the host (pp1…)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("relay")
                    .nick("Relay")
                    .blurb("\"default\" (n0 relays), \"disabled\" (direct only) or a relay URL")
                    .default_value(Some(d.relay.as_str()))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("bind-address")
                    .nick("Bind address")
                    .blurb("Single UDP socket address to bind (e.g. 127.0.0.1:0); empty = all interfaces, random port")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("viewer-name")
                    .nick("Viewer name")
                    .blurb("Name the host sees for this viewer")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("reconnect")
                    .nick("Reconnect")
                    .blurb("Reconnect with backoff when the host goes away or the path breaks")
                    .default_value(d.reconnect)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("reconnect-timeout")
                    .nick("Reconnect timeout")
                    .blurb("Give up reconnecting after this long without a connection (ms)")
                    .default_value(d.reconnect_timeout_ms)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("latency")
                    .nick("Latency")
                    .blurb("Latency reported downstream (ms): room for network jitter before buffers are late")
                    .default_value(d.latency_ms)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-buffers")
                    .nick("Max buffers")
                    .blurb("Received chunks queued for the streaming thread before the network read waits")
                    .minimum(8)
                    .default_value(d.max_buffers)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Connection, path and capture→receive latency statistics")
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        match pspec.name() {
            "ticket" => s.ticket = value.get().unwrap(),
            "relay" => {
                s.relay = value
                    .get::<Option<String>>()
                    .unwrap()
                    .unwrap_or_else(|| "default".into())
            }
            "bind-address" => s.bind_address = value.get::<Option<String>>().unwrap().unwrap_or_default(),
            "viewer-name" => s.name = value.get::<Option<String>>().unwrap().unwrap_or_default(),
            "reconnect" => s.reconnect = value.get().unwrap(),
            "reconnect-timeout" => s.reconnect_timeout_ms = value.get().unwrap(),
            "latency" => s.latency_ms = value.get().unwrap(),
            "max-buffers" => s.max_buffers = value.get().unwrap(),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "ticket" => s.ticket.to_value(),
            "relay" => s.relay.to_value(),
            "bind-address" => s.bind_address.to_value(),
            "viewer-name" => s.name.to_value(),
            "reconnect" => s.reconnect.to_value(),
            "reconnect-timeout" => s.reconnect_timeout_ms.to_value(),
            "latency" => s.latency_ms.to_value(),
            "max-buffers" => s.max_buffers.to_value(),
            "stats" => self.stats.lock().unwrap().as_ref().map(|st| st.structure()).to_value(),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_live(true);
        obj.set_format(gst::Format::Time);
        obj.set_do_timestamp(false);
    }
}

impl GstObjectImpl for IrohSrc {}

impl ElementImpl for IrohSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "iroh source",
                "Source/Network",
                "Receives a stream from an irohsink host, dialled by ticket",
                "pixelpass developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &gst::Caps::new_any(),
                )
                .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(&self, transition: gst::StateChange) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::NullToReady
            && let Err(msg) = self.validate()
        {
            gst::element_imp_error!(self, gst::ResourceError::Settings, ("{msg}"));
            return Err(gst::StateChangeError);
        }
        self.parent_change_state(transition)
    }
}

impl IrohSrc {
    fn validate(&self) -> Result<(Ticket, Relay, Option<std::net::SocketAddr>), String> {
        let s = self.settings.lock().unwrap();
        let ticket = match s.ticket.as_deref() {
            None | Some("") => return Err("ticket is not set: set the ticket property to the host's ticket".into()),
            Some(t) => t.parse::<Ticket>().map_err(|e| format!("ticket is not valid: {e}"))?,
        };
        let relay = s.relay.parse::<Relay>().map_err(|e| format!("property relay: {e}"))?;
        let bind = net::parse_bind_addr(&s.bind_address).map_err(|e| format!("property bind-address: {e}"))?;
        Ok((ticket, relay, bind))
    }

    fn running_time_now(&self) -> Option<gst::ClockTime> {
        let obj = self.obj();
        let clock = obj.clock()?;
        let base = obj.base_time()?;
        Some(clock.time().saturating_sub(base))
    }

    /// Maps host running time onto ours; re-anchors on a new session or a > 2 s drift.
    fn map_ts(&self, st: &mut Started, pts: Option<u64>) -> (Option<gst::ClockTime>, i128) {
        let now = self.running_time_now().map_or(0, |t| t.nseconds() as i128);
        let Some(pts) = pts else {
            return (None, st.offset.unwrap_or(0));
        };
        let mut offset = *st.offset.get_or_insert(now - pts as i128);
        let out = pts as i128 + offset;
        if (out - now).abs() > 2_000_000_000 {
            offset = now - pts as i128;
            st.offset = Some(offset);
            st.discont = true;
        }
        let out = (pts as i128 + offset).max(0) as u64;
        (Some(gst::ClockTime::from_nseconds(out)), offset)
    }
}

impl BaseSrcImpl for IrohSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let (ticket, relay, bind) = self
            .validate()
            .map_err(|m| gst::error_msg!(gst::ResourceError::Settings, ("{m}")))?;
        let s = self.settings.lock().unwrap().clone();
        let (tx, rx) = mpsc::channel(s.max_buffers as usize);
        let cancel = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        *stats.path.lock().unwrap() = "none";
        let ctx = Ctx {
            element: self.obj().downgrade(),
            ticket,
            relay,
            bind,
            name: if s.name.is_empty() {
                std::env::var("HOSTNAME").unwrap_or_else(|_| "viewer".into())
            } else {
                s.name.clone()
            },
            reconnect: s.reconnect,
            reconnect_timeout: Duration::from_millis(s.reconnect_timeout_ms.into()),
            tx,
            cancel: cancel.clone(),
            stats: stats.clone(),
        };
        let task = RUNTIME.spawn(run(ctx));
        *self.stats.lock().unwrap() = Some(stats.clone());
        *self.state.lock().unwrap() = Some(Started {
            rx,
            cancel,
            task,
            stats,
            offset: None,
            discont: true,
            caps: None,
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(st) = self.state.lock().unwrap().take() {
            st.cancel.cancel();
            // Let the network task close the connection, so the host sees this viewer leave at
            // once rather than after its idle timeout. Bounded.
            let task = st.task;
            net::block_on(async move {
                let _ = tokio::time::timeout(Duration::from_millis(700), task).await;
            });
        }
        Ok(())
    }

    fn event(&self, event: &gst::Event) -> bool {
        if let gst::EventView::CustomUpstream(ev) = event.view()
            && ev.structure().is_some_and(|s| s.name() == "GstForceKeyUnit")
        {
            if let Some(st) = self.stats.lock().unwrap().as_ref() {
                st.keyframe_wanted.store(true, Ordering::Relaxed);
            }
            return true;
        }
        BaseSrcImplExt::parent_event(self, event)
    }

    fn is_seekable(&self) -> bool {
        false
    }

    fn negotiate(&self) -> Result<(), gst::LoggableError> {
        // Caps come from the host with the first GOP; they are set in `create`.
        Ok(())
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let latency = gst::ClockTime::from_mseconds(self.settings.lock().unwrap().latency_ms.into());
            q.set(true, latency, gst::ClockTime::NONE);
            return true;
        }
        BaseSrcImplExt::parent_query(self, query)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        self.unlock.lock().unwrap().cancel();
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.unlock.lock().unwrap() = CancellationToken::new();
        Ok(())
    }
}

impl PushSrcImpl for IrohSrc {
    fn create(&self, _buffer: Option<&mut gst::BufferRef>) -> Result<CreateSuccess, gst::FlowError> {
        let unlock = self.unlock.lock().unwrap().clone();
        loop {
            // The state lock is held while waiting: `stop` only runs after `unlock` woke us.
            let mut guard = self.state.lock().unwrap();
            let Some(st) = guard.as_mut() else {
                return Err(gst::FlowError::Flushing);
            };
            let item = RUNTIME.block_on(async {
                tokio::select! {
                    biased;
                    _ = unlock.cancelled() => None,
                    i = st.rx.recv() => Some(i),
                }
            });
            let item = match item {
                None => return Err(gst::FlowError::Flushing),
                Some(None) => return Err(gst::FlowError::Eos),
                Some(Some(i)) => i,
            };
            match item {
                Item::Session => {
                    st.offset = None;
                    st.discont = true;
                }
                Item::Caps(caps) => {
                    if st.caps.as_ref() != Some(&caps) {
                        gst::info!(CAT, imp = self, "caps from host: {caps}");
                        st.caps = Some(caps.clone());
                        drop(guard);
                        if self.obj().set_caps(&caps).is_err() {
                            gst::element_imp_error!(
                                self,
                                gst::StreamError::Format,
                                ("downstream cannot handle the host's stream ({caps})")
                            );
                            return Err(gst::FlowError::NotNegotiated);
                        }
                    }
                }
                Item::Frame { meta, data, discont } => {
                    st.stats.release(data.len());
                    return Ok(CreateSuccess::NewBuffer(self.make_buffer(st, meta, data, discont)));
                }
                Item::Eos => return Err(gst::FlowError::Eos),
                Item::Error(msg) => {
                    gst::element_imp_error!(self, gst::ResourceError::Read, ("{msg}"));
                    return Err(gst::FlowError::Error);
                }
            }
        }
    }
}

impl IrohSrc {
    fn make_buffer(&self, st: &mut Started, meta: FrameMeta, data: Bytes, discont: bool) -> gst::Buffer {
        let mut buffer = gst::Buffer::from_slice(data);
        {
            let b = buffer.get_mut().expect("new buffer is writable");
            let (pts, offset) = self.map_ts(st, meta.pts);
            b.set_pts(pts);
            if let Some(dts) = meta.dts {
                b.set_dts(gst::ClockTime::from_nseconds((dts as i128 + offset).max(0) as u64));
            }
            if let Some(d) = meta.duration {
                b.set_duration(gst::ClockTime::from_nseconds(d));
            }
            let mut f = gst::BufferFlags::empty();
            if meta.flags & flags::DELTA != 0 {
                f |= gst::BufferFlags::DELTA_UNIT;
            }
            if meta.flags & flags::HEADER != 0 {
                f |= gst::BufferFlags::HEADER;
            }
            if discont || st.discont || meta.flags & flags::DISCONT != 0 {
                f |= gst::BufferFlags::DISCONT;
                st.discont = false;
            }
            b.set_flags(f);
            if let Some(c) = meta.capture_unix_ns {
                gst::ReferenceTimestampMeta::add(b, &UNIX_CAPS, gst::ClockTime::from_nseconds(c), gst::ClockTime::NONE);
            }
        }
        buffer
    }
}

static UNIX_CAPS: LazyLock<gst::Caps> = LazyLock::new(|| gst::Caps::builder("timestamp/x-unix").build());

// ---------------------------------------------------------------------------------------------
// network side

struct Ctx {
    element: glib::WeakRef<super::IrohSrc>,
    ticket: Ticket,
    relay: Relay,
    bind: Option<std::net::SocketAddr>,
    name: String,
    reconnect: bool,
    reconnect_timeout: Duration,
    tx: mpsc::Sender<Item>,
    cancel: CancellationToken,
    stats: Arc<Stats>,
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
    /// Stop trying: the message says why, for a person.
    Fatal(String),
    /// Try again (host gone, path broken, removed as slow).
    Retry(String),
    /// The element is stopping.
    Cancelled,
}

async fn run(ctx: Ctx) {
    let bind: Vec<_> = ctx.bind.into_iter().collect();
    let endpoint = tokio::select! {
        e = net::bind(iroh::SecretKey::generate(), &ctx.relay, &bind, vec![]) => e,
        _ = ctx.cancel.cancelled() => return,
    };
    let endpoint = match endpoint {
        Ok(e) => e,
        Err(e) => {
            let _ = ctx.send(Item::Error(e.to_string())).await;
            return;
        }
    };
    let mut ever_connected = false;
    let mut lost_at: Option<Instant> = None;
    let mut attempt = 0u32;
    loop {
        let end = session(&ctx, &endpoint, &mut ever_connected).await;
        ctx.stats.connected.store(false, Ordering::Relaxed);
        match end {
            End::Eos => {
                let _ = ctx.send(Item::Eos).await;
                break;
            }
            End::Cancelled => break,
            End::Fatal(msg) => {
                let _ = ctx.send(Item::Error(msg)).await;
                break;
            }
            End::Retry(msg) => {
                if !ctx.reconnect || !ever_connected {
                    let _ = ctx.send(Item::Error(msg)).await;
                    break;
                }
                let since = *lost_at.get_or_insert_with(Instant::now);
                if since.elapsed() > ctx.reconnect_timeout {
                    let _ = ctx
                        .send(Item::Error(format!(
                            "{msg}; gave up after {} s of reconnecting",
                            ctx.reconnect_timeout.as_secs()
                        )))
                        .await;
                    break;
                }
                attempt += 1;
                ctx.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                gst::info!(CAT, "connection lost ({msg}); reconnect attempt {attempt}");
                ctx.post(
                    gst::Structure::builder("iroh-reconnecting")
                        .field("reason", &msg)
                        .field("attempt", attempt)
                        .build(),
                );
                let backoff = Duration::from_millis(200u64 << attempt.min(5)).min(Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = ctx.cancel.cancelled() => break,
                }
                continue;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.close()).await;
}

/// Text for a person, and whether to reconnect, for a close code from the host.
fn explain(code: CloseCode, reason: &str) -> End {
    match code {
        CloseCode::HostFull => End::Fatal("host is full: it already has its maximum number of viewers".into()),
        CloseCode::BadSecret => End::Fatal(
            "ticket is not valid: the host does not accept its secret (ask the host for the current ticket)".into(),
        ),
        CloseCode::Revoked => End::Fatal("this ticket was revoked: ask the host for a new one".into()),
        CloseCode::Kicked => End::Fatal("the host removed this viewer from the share".into()),
        CloseCode::Slow => End::Retry("the host dropped this viewer as too slow".into()),
        CloseCode::Protocol => End::Fatal(format!("protocol error reported by the host: {reason}")),
        CloseCode::Normal | CloseCode::HostStopped => End::Retry("the host stopped sharing".into()),
    }
}

fn explain_conn_error(e: &ConnectionError) -> End {
    match e {
        ConnectionError::ApplicationClosed(c) => explain(
            CloseCode::from_u64(c.error_code.into_inner()),
            &String::from_utf8_lossy(&c.reason),
        ),
        ConnectionError::LocallyClosed => End::Cancelled,
        other => End::Retry(format!("connection to the host lost: {other}")),
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

async fn session(ctx: &Ctx, endpoint: &Endpoint, ever_connected: &mut bool) -> End {
    let connect = async {
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            endpoint.connect(ctx.ticket.addr.clone(), protocol::ALPN),
        )
        .await
        {
            Err(_) => Err(End::Retry(format!(
                "cannot reach the host within {} s (is it still sharing? are both sides online?)",
                CONNECT_TIMEOUT.as_secs()
            ))),
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                if let Some(v) = probe_version(endpoint, &ctx.ticket).await
                    && v != u64::from(protocol::VERSION)
                {
                    return Err(End::Fatal(format!(
                        "host speaks protocol v{v}, this viewer v{}: update the older side",
                        protocol::VERSION
                    )));
                }
                Err(End::Retry(format!("cannot connect to the host: {e}")))
            }
        }
    };
    let conn = tokio::select! {
        c = connect => match c { Ok(c) => c, Err(e) => return e },
        _ = ctx.cancel.cancelled() => return End::Cancelled,
    };
    let end = tokio::select! {
        e = connected(ctx, &conn, ever_connected) => e,
        _ = ctx.cancel.cancelled() => End::Cancelled,
    };
    let code = match &end {
        End::Fatal(_) => CloseCode::Protocol,
        _ => CloseCode::Normal,
    };
    conn.close((code as u32).into(), b"viewer left");
    end
}

/// One item of one GOP stream.
enum StreamItem {
    Header(GopHeader),
    Frame(FrameMeta, Bytes),
    /// The host cut this GOP short (the viewer fell behind) or the stream broke.
    Reset,
    Finished,
}

async fn connected(ctx: &Ctx, conn: &Connection, ever_connected: &mut bool) -> End {
    // Hello / welcome on the control stream.
    let handshake = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| explain_conn_error(&e))?;
        write_control(
            &mut send,
            &Control::Hello {
                secret: ctx.ticket.secret,
                name: ctx.name.chars().take(protocol::MAX_NAME_LEN / 4).collect(),
            },
        )
        .await
        .map_err(|e| End::Retry(format!("cannot talk to the host: {e}")))?;
        let mut buf = BytesMut::new();
        match read_control(&mut recv, &mut buf).await {
            Ok(Control::Welcome { .. }) => Ok((send, recv, buf)),
            Ok(Control::Refuse { code, reason }) => Err(explain(CloseCode::from_u64(code.into()), &reason)),
            Ok(other) => Err(End::Fatal(format!("protocol error: expected a welcome, got {other:?}"))),
            Err(e) => Err(match conn.close_reason() {
                Some(ce) => explain_conn_error(&ce),
                None => End::Retry(format!("the host did not answer: {e}")),
            }),
        }
    };
    let (mut control_send, mut control_recv, mut control_buf) =
        match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return e,
            Err(_) => return End::Retry("the host did not answer in time".into()),
        };
    *ever_connected = true;
    let (path, rtt) = net::path_info(conn);
    ctx.stats.connected.store(true, Ordering::Relaxed);
    *ctx.stats.path.lock().unwrap() = path;
    ctx.stats
        .rtt_us
        .store(rtt.map_or(0, |d| d.as_micros() as u64), Ordering::Relaxed);
    gst::info!(CAT, "connected to {} over {path}", conn.remote_id().fmt_short());
    ctx.post(
        gst::Structure::builder("iroh-connected")
            .field("endpoint-id", conn.remote_id().to_string())
            .field("path", path)
            .field("rtt-ms", rtt.map_or(-1.0, |d| d.as_secs_f64() * 1000.0))
            .build(),
    );
    if ctx.send(Item::Session).await.is_err() {
        return End::Cancelled;
    }

    // Accept GOP streams in order (stream ids are ordered) and read each one eagerly into
    // memory, so a stream waiting its turn never stalls the connection's flow control.
    let (streams_tx, mut streams_rx) = mpsc::unbounded_channel::<mpsc::UnboundedReceiver<StreamItem>>();
    let accept_cancel = ctx.cancel.child_token();
    let _guard = accept_cancel.clone().drop_guard();
    {
        let conn = conn.clone();
        let stats = ctx.stats.clone();
        ctx.stats.playing.store(0, Ordering::Relaxed);
        ctx.stats.buffered.store(0, Ordering::Relaxed);
        RUNTIME.spawn(async move {
            let mut index = 0u64;
            loop {
                let s = tokio::select! {
                    s = conn.accept_uni() => s,
                    _ = accept_cancel.cancelled() => break,
                };
                let Ok(s) = s else { break };
                let (tx, rx) = mpsc::unbounded_channel();
                if streams_tx.send(rx).is_err() {
                    break;
                }
                let conn = conn.clone();
                let stats = stats.clone();
                RUNTIME.spawn(read_gop(index, s, tx, conn, stats));
                index += 1;
            }
        });
    }

    let mut last_seq: Option<u64> = None;
    let mut progress = (0u64, 0u64);
    let mut sent_progress = progress;
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    let mut ending = false;
    let mut end_at = tokio::time::Instant::now();
    let mut caps_cur: Option<String> = None;
    let mut current: Option<mpsc::UnboundedReceiver<StreamItem>> = None;
    let mut discont_next = false;
    let mut played = 0u64;
    let mut last_report = Instant::now() - PROGRESS_INTERVAL;
    loop {
        if current.is_none() {
            tokio::select! {
                s = streams_rx.recv() => match s {
                    Some(s) => {
                        current = Some(s);
                        if played > 0 {
                            ctx.stats.playing.fetch_add(1, Ordering::Relaxed);
                            ctx.stats.drained.notify_waiters();
                        }
                        played += 1;
                    }
                    None => return conn.close_reason().map_or(End::Retry("connection closed".into()), |e| explain_conn_error(&e)),
                },
                m = read_control(&mut control_recv, &mut control_buf), if !ending => match m {
                    Ok(Control::End) => {
                        ending = true;
                        end_at = tokio::time::Instant::now() + Duration::from_millis(300);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if let Some(e) = conn.close_reason() {
                            return explain_conn_error(&e);
                        }
                        // control stream finished: treat as end once drained
                        ending = true;
                        end_at = tokio::time::Instant::now() + Duration::from_millis(300);
                    }
                },
                // After the host's End, the last GOP streams may still be arriving: wait a moment
                // for them, then end.
                _ = tokio::time::sleep_until(end_at), if ending => return End::Eos,
                _ = tick.tick() => {}
                e = conn.closed() => return explain_conn_error(&e),
            }
        }
        if let Some(rx) = current.as_mut() {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(StreamItem::Header(h)) => {
                        ctx.stats.gops.fetch_add(1, Ordering::Relaxed);
                        if let Some(l) = last_seq
                            && h.seq != l + 1
                        {
                            ctx.stats.skipped_gops.fetch_add(h.seq.saturating_sub(l + 1), Ordering::Relaxed);
                            discont_next = true;
                        }
                        last_seq = Some(h.seq);
                        progress.0 = h.seq;
                        if caps_cur.as_deref() != Some(h.caps.as_str()) {
                            match gst::Caps::from_str(&h.caps) {
                                Ok(c) => {
                                    if ctx.send(Item::Caps(c)).await.is_err() {
                                        return End::Cancelled;
                                    }
                                    caps_cur = Some(h.caps);
                                }
                                Err(_) => return End::Fatal(format!("the host sent caps this viewer cannot parse: {}", h.caps)),
                            }
                        }
                    }
                    Some(StreamItem::Frame(meta, data)) => {
                        if let Some(c) = meta.capture_unix_ns {
                            ctx.stats.record_latency(c);
                            progress.1 = c;
                        }
                        let discont = std::mem::take(&mut discont_next);
                        if ctx.send(Item::Frame { meta, data, discont }).await.is_err() {
                            return End::Cancelled;
                        }
                    }
                    Some(StreamItem::Reset) => {
                        ctx.stats.skipped_gops.fetch_add(1, Ordering::Relaxed);
                        discont_next = true;
                        current = None;
                    }
                    Some(StreamItem::Finished) | None => current = None,
                },
                _ = tick.tick() => {}
                e = conn.closed() => return explain_conn_error(&e),
            }
        }
        // Progress reports and path watching, at most every PROGRESS_INTERVAL.
        if last_report.elapsed() < PROGRESS_INTERVAL {
            continue;
        }
        last_report = Instant::now();
        if ctx.stats.keyframe_wanted.swap(false, Ordering::Relaxed) && !ending {
            let _ = write_control(&mut control_send, &Control::KeyframeRequest).await;
        }
        if progress != sent_progress && !ending {
            sent_progress = progress;
            let _ = write_control(
                &mut control_send,
                &Control::Progress {
                    seq: progress.0,
                    capture_unix_ns: progress.1,
                },
            )
            .await;
        }
        let (path, rtt) = net::path_info(conn);
        ctx.stats
            .rtt_us
            .store(rtt.map_or(0, |d| d.as_micros() as u64), Ordering::Relaxed);
        let prev = std::mem::replace(&mut *ctx.stats.path.lock().unwrap(), path);
        if prev != path {
            gst::info!(CAT, "path changed: {prev} -> {path}");
            ctx.post(gst::Structure::builder("iroh-path-changed").field("path", path).build());
        }
    }
}

use std::str::FromStr as _;

/// Reads one GOP stream into `tx`: header, then frames, then Finished or Reset.
async fn read_gop(
    index: u64,
    mut s: RecvStream,
    tx: mpsc::UnboundedSender<StreamItem>,
    conn: Connection,
    stats: Arc<Stats>,
) {
    let mut buf = BytesMut::new();
    let mut header_done = false;
    loop {
        loop {
            if !header_done {
                match GopHeader::decode(&buf) {
                    Ok(Some((h, used))) => {
                        let _ = buf.split_to(used);
                        header_done = true;
                        let _ = tx.send(StreamItem::Header(h));
                        continue;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        gst::warning!(CAT, "bad GOP header from host: {e}");
                        conn.close((CloseCode::Protocol as u32).into(), b"bad GOP header");
                        let _ = tx.send(StreamItem::Reset);
                        return;
                    }
                }
            }
            match FrameMeta::decode_frame(&buf) {
                Ok(Some(((meta, range), used))) => {
                    let frame = buf.split_to(used).freeze();
                    let data = frame.slice(range);
                    let total = stats.buffered.fetch_add(data.len(), Ordering::Relaxed) + data.len();
                    if total > MAX_BUFFERED_BYTES {
                        gst::warning!(CAT, "host sent more than {MAX_BUFFERED_BYTES} bytes ahead: closing");
                        conn.close((CloseCode::Protocol as u32).into(), b"too much data buffered");
                        let _ = tx.send(StreamItem::Reset);
                        return;
                    }
                    let _ = tx.send(StreamItem::Frame(meta, data));
                    // A stream waiting its turn stops reading once enough is buffered: QUIC
                    // flow control then tells the host, which skips this viewer ahead.
                    while index != stats.playing.load(Ordering::Relaxed)
                        && stats.buffered.load(Ordering::Relaxed) > AHEAD_BYTES
                        && !tx.is_closed()
                    {
                        let notified = stats.drained.notified();
                        let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    gst::warning!(CAT, "bad frame from host: {e}");
                    conn.close((CloseCode::Protocol as u32).into(), b"bad frame");
                    let _ = tx.send(StreamItem::Reset);
                    return;
                }
            }
        }
        match s.read_chunk(1024 * 1024).await {
            Ok(Some(chunk)) => {
                stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => {
                let _ = tx.send(if buf.is_empty() && header_done {
                    StreamItem::Finished
                } else {
                    StreamItem::Reset
                });
                return;
            }
            Err(_) => {
                let _ = tx.send(StreamItem::Reset);
                return;
            }
        }
    }
}
