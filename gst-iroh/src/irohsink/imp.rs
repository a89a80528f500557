use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use iroh::endpoint::{Connection, RecvStream, SendStream, VarInt};
use iroh::{Endpoint, Watcher as _};
use n0_future::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fanout::{Chunk, Cursor, Fanout, FanoutConfig, Step};
use crate::net::{self, Identity, RUNTIME, Relay, read_control, write_control};
use crate::protocol::{self, CloseCode, Control, FrameMeta, GopHeader, flags};
use crate::ticket::Ticket;
use crate::ts::PsiCache;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "irohsink",
        gst::DebugColorFlags::empty(),
        Some("iroh multi-viewer sink"),
    )
});

/// Stream reset code for a GOP dropped because the viewer fell behind.
const RESET_STALE: u32 = 1;
/// How long a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Settings {
    relay: String,
    bind_address: String,
    key_file: Option<String>,
    max_viewers: u32,
    max_lag_ms: u32,
    slow_timeout_ms: u32,
    burst_max_age_ms: u32,
    keyframe_interval_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            relay: "default".into(),
            bind_address: String::new(),
            key_file: None,
            max_viewers: 0,
            max_lag_ms: 500,
            slow_timeout_ms: 10_000,
            burst_max_age_ms: 500,
            keyframe_interval_ms: 500,
        }
    }
}

/// One admitted viewer.
#[derive(Debug)]
struct Viewer {
    id: String,
    name: String,
    endpoint_id: iroh::EndpointId,
    conn: Connection,
    cancel: CancellationToken,
    close_as: Mutex<Option<CloseCode>>,
    joined: Instant,
    bytes_sent: AtomicU64,
    dropped_gops: AtomicU64,
    lag_ms: AtomicU64,
    /// Capture time of the newest chunk written to QUIC for this viewer.
    written_capture: AtomicU64,
    /// Capture time of the first chunk written: stands for "acknowledged" until the viewer
    /// sends its first progress report, so a viewer that never reports still counts as behind.
    first_capture: AtomicU64,
    /// (GOP seq, capture time) of the viewer's newest progress report.
    progress: Mutex<(u64, u64)>,
    progress_at: Mutex<Instant>,
}

impl Viewer {
    fn stats(&self) -> gst::Structure {
        let (path, rtt) = net::path_info(&self.conn);
        gst::Structure::builder("viewer")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("endpoint-id", self.endpoint_id.to_string())
            .field("path", path)
            .field("rtt-ms", rtt.map_or(-1.0, |d| d.as_secs_f64() * 1000.0))
            .field("bytes-sent", self.bytes_sent.load(Ordering::Relaxed))
            .field("dropped-gops", self.dropped_gops.load(Ordering::Relaxed))
            .field("lag-ms", self.lag_ms.load(Ordering::Relaxed))
            .field("connected-s", self.joined.elapsed().as_secs_f64())
            .build()
    }
}

/// State shared between the element and its network tasks.
struct Shared {
    element: glib::WeakRef<super::IrohSink>,
    fanout: Fanout,
    identity: Mutex<Identity>,
    key_file: Option<PathBuf>,
    endpoint: Endpoint,
    ticket: Mutex<String>,
    viewers: Mutex<BTreeMap<String, Arc<Viewer>>>,
    next_viewer: AtomicU64,
    cancel: CancellationToken,
    tasks: TaskTracker,
    max_viewers: AtomicU32,
    max_lag: Duration,
    slow_timeout: Duration,
    keyframe_interval: Duration,
    fku: Mutex<(Option<Instant>, bool)>,
    // totals over the element's life
    viewers_total: AtomicU64,
    bytes_sent_done: AtomicU64,
    dropped_gops_done: AtomicU64,
    keyframe_requests: AtomicU64,
}

impl Shared {
    fn post(&self, s: gst::Structure) {
        if let Some(el) = self.element.upgrade() {
            let _ = el.post_message(gst::message::Element::builder(s).src(&el).build());
        }
    }

    /// Asks upstream for a keyframe with all headers, at most once per `keyframe_interval`
    /// (the encoder base class does not throttle these); a request inside the interval is
    /// deferred to its end, not lost.
    fn request_keyframe(self: &Arc<Self>) {
        let mut fku = self.fku.lock().unwrap();
        let now = Instant::now();
        match fku.0 {
            Some(last) if now.duration_since(last) < self.keyframe_interval => {
                if !fku.1 {
                    fku.1 = true;
                    let this = self.clone();
                    let at = last + self.keyframe_interval;
                    RUNTIME.spawn(async move {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at.into()) => {}
                            _ = this.cancel.cancelled() => return,
                        }
                        let mut fku = this.fku.lock().unwrap();
                        fku.1 = false;
                        fku.0 = Some(Instant::now());
                        drop(fku);
                        this.send_keyframe_event();
                    });
                }
            }
            _ => {
                fku.0 = Some(now);
                drop(fku);
                self.send_keyframe_event();
            }
        }
    }

    fn send_keyframe_event(&self) {
        let Some(el) = self.element.upgrade() else { return };
        self.keyframe_requests.fetch_add(1, Ordering::Relaxed);
        let ev = gst_video::UpstreamForceKeyUnitEvent::builder()
            .all_headers(true)
            .build();
        gst::debug!(CAT, obj = el, "requesting a keyframe upstream");
        if !el.static_pad("sink").is_some_and(|p| p.push_event(ev)) {
            gst::debug!(CAT, obj = el, "upstream did not handle the force-key-unit event");
        }
    }

    fn update_ticket(&self) -> Option<String> {
        let id = self.identity.lock().unwrap();
        let t = Ticket {
            addr: self.endpoint.addr(),
            secret: id.secret,
        }
        .to_string();
        let mut cur = self.ticket.lock().unwrap();
        if *cur == t {
            return None;
        }
        *cur = t.clone();
        Some(t)
    }

    fn announce_ticket(&self, ticket: &str) {
        self.post(gst::Structure::builder("iroh-ticket").field("ticket", ticket).build());
        if let Some(el) = self.element.upgrade() {
            el.notify("ticket");
        }
    }

    fn stats(&self) -> gst::Structure {
        let viewers = self.viewers.lock().unwrap();
        let list: Vec<gst::Structure> = viewers.values().map(|v| v.stats()).collect();
        let bytes: u64 = self.bytes_sent_done.load(Ordering::Relaxed)
            + viewers
                .values()
                .map(|v| v.bytes_sent.load(Ordering::Relaxed))
                .sum::<u64>();
        let dropped: u64 = self.dropped_gops_done.load(Ordering::Relaxed)
            + viewers
                .values()
                .map(|v| v.dropped_gops.load(Ordering::Relaxed))
                .sum::<u64>();
        let f = self.fanout.stats();
        gst::Structure::builder("application/x-irohsink-stats")
            .field("viewers", viewers.len() as u32)
            .field("viewers-total", self.viewers_total.load(Ordering::Relaxed))
            .field("bytes-sent", bytes)
            .field("dropped-gops", dropped)
            .field("gops", f.gops)
            .field("cached-bytes", f.cached_bytes as u64)
            .field("waiting-keyframe", f.waiting_keyframe as u32)
            .field("keyframe-requests", self.keyframe_requests.load(Ordering::Relaxed))
            .field("viewer-stats", gst::Array::new(list))
            .build()
    }
}

enum State {
    Stopped,
    Started {
        shared: Arc<Shared>,
        psi: Option<PsiCache>,
        /// The caps `streamheader` buffers: the same bytes arriving as HEADER data are dropped
        /// (new viewers get them from the caps), as multisocketsink does.
        caps_headers: Vec<Bytes>,
    },
}

#[derive(Default)]
pub struct IrohSink {
    settings: Mutex<Settings>,
    state: Mutex<StateBox>,
}

struct StateBox(State);
impl Default for StateBox {
    fn default() -> Self {
        StateBox(State::Stopped)
    }
}

impl IrohSink {
    fn shared(&self) -> Option<Arc<Shared>> {
        match &self.state.lock().unwrap().0 {
            State::Started { shared, .. } => Some(shared.clone()),
            State::Stopped => None,
        }
    }

    /// Capture wall-clock time of a buffer at running time `running`: "now" minus how long
    /// ago that running time was on the pipeline clock. Falls back to now.
    fn capture_time(&self, buffer: &gst::BufferRef, running: Option<gst::ClockTime>) -> u64 {
        let unix_caps = gst::Caps::builder("timestamp/x-unix").build();
        if let Some(m) = buffer
            .iter_meta::<gst::ReferenceTimestampMeta>()
            .find(|m| m.reference().is_subset(&unix_caps))
        {
            return m.timestamp().nseconds();
        }
        let now = net::unix_now_ns();
        let obj = self.obj();
        let (Some(running), Some(clock), Some(base)) = (running, obj.clock(), obj.base_time()) else {
            return now;
        };
        let age = clock.time().saturating_sub(base + running);
        now.saturating_sub(age.nseconds())
    }

    fn meta_of(&self, buffer: &gst::BufferRef, segment: Option<&gst::FormattedSegment<gst::ClockTime>>) -> FrameMeta {
        let f = crate::wire_flags(buffer.flags());
        let running = |t: Option<gst::ClockTime>| match segment {
            Some(s) => t.and_then(|t| s.to_running_time(t)),
            None => t,
        };
        let pts = running(buffer.pts());
        FrameMeta {
            flags: f,
            pts: pts.map(|t| t.nseconds()),
            dts: running(buffer.dts()).map(|t| t.nseconds()),
            duration: buffer.duration().map(|d| d.nseconds()),
            capture_unix_ns: Some(self.capture_time(buffer, pts)),
        }
    }

    fn time_segment(&self) -> Option<gst::FormattedSegment<gst::ClockTime>> {
        self.obj().segment().downcast::<gst::ClockTime>().ok()
    }

    /// Hands chunks to the fanout, caching MPEG-TS tables on the way.
    fn push_chunks(&self, chunks: Vec<Chunk>) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut state = self.state.lock().unwrap();
        let State::Started { shared, psi, .. } = &mut state.0 else {
            return Err(gst::FlowError::Flushing);
        };
        let shared = shared.clone();
        if let Some(psi) = psi {
            let mut changed = false;
            for c in &chunks {
                changed |= psi.scan(&c.data);
            }
            if changed && let Some(t) = psi.tables() {
                shared.fanout.set_headers(vec![Chunk {
                    meta: FrameMeta {
                        flags: flags::HEADER | flags::DELTA,
                        ..Default::default()
                    },
                    data: t,
                    arrived: Instant::now(),
                }]);
            }
        }
        drop(state);
        gst::trace!(CAT, imp = self, "pushing {} chunks", chunks.len());
        for c in chunks {
            shared.fanout.push(c);
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn skip_in_caps_header(&self, buffer: &gst::BufferRef) -> bool {
        if !buffer.flags().contains(gst::BufferFlags::HEADER) {
            return false;
        }
        let state = self.state.lock().unwrap();
        let State::Started { caps_headers, .. } = &state.0 else {
            return false;
        };
        !caps_headers.is_empty()
            && buffer
                .map_readable()
                .is_ok_and(|m| caps_headers.iter().any(|h| h[..] == m[..]))
    }
}

#[glib::object_subclass]
impl ObjectSubclass for IrohSink {
    const NAME: &'static str = "GstIrohSink";
    type Type = super::IrohSink;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for IrohSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let d = Settings::default();
            vec![
                glib::ParamSpecString::builder("ticket")
                    .nick("Ticket")
                    .blurb("Share ticket viewers dial (endpoint address + secret); set once the element is PAUSED")
                    .read_only()
                    .build(),
                glib::ParamSpecString::builder("endpoint-id")
                    .nick("Endpoint id")
                    .blurb("This host's iroh endpoint id")
                    .read_only()
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
                glib::ParamSpecString::builder("key-file")
                    .nick("Key file")
                    .blurb("Host identity file (created if missing): the same ticket survives restarts")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-viewers")
                    .nick("Max viewers")
                    .blurb("Viewers beyond this are refused with \"host is full\" (0 = unlimited)")
                    .default_value(d.max_viewers)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-lag")
                    .nick("Max lag")
                    .blurb("A viewer further behind live than this (ms) skips to the newest GOP")
                    .minimum(50)
                    .default_value(d.max_lag_ms)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("slow-timeout")
                    .nick("Slow timeout")
                    .blurb("A viewer behind by more than max-lag for this long (ms) is removed as \"slow\"")
                    .minimum(500)
                    .default_value(d.slow_timeout_ms)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("burst-max-age")
                    .nick("Burst max age")
                    .blurb("A new viewer gets the current GOP if it started less than this ago (ms); else it waits for a requested keyframe")
                    .default_value(d.burst_max_age_ms)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("keyframe-interval")
                    .nick("Keyframe request interval")
                    .blurb("Minimum time between two force-key-unit requests sent upstream (ms)")
                    .default_value(d.keyframe_interval_ms)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("num-viewers")
                    .nick("Viewers")
                    .blurb("Viewers connected now")
                    .read_only()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Aggregate and per-viewer statistics")
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            vec![
                glib::subclass::Signal::builder("viewer-joined")
                    .param_types([String::static_type(), String::static_type()])
                    .build(),
                glib::subclass::Signal::builder("viewer-left")
                    .param_types([String::static_type(), String::static_type()])
                    .build(),
                glib::subclass::Signal::builder("kick")
                    .param_types([String::static_type()])
                    .return_type::<bool>()
                    .action()
                    .class_handler(|args| {
                        let el = args[0].get::<super::IrohSink>().expect("signal arg");
                        let id = args[1].get::<String>().expect("signal arg");
                        Some(el.imp().kick(&id, CloseCode::Kicked).to_value())
                    })
                    .build(),
                glib::subclass::Signal::builder("revoke")
                    .return_type::<Option<String>>()
                    .action()
                    .class_handler(|args| {
                        let el = args[0].get::<super::IrohSink>().expect("signal arg");
                        Some(el.imp().revoke().to_value())
                    })
                    .build(),
                glib::subclass::Signal::builder("get-viewer-stats")
                    .param_types([String::static_type()])
                    .return_type::<Option<gst::Structure>>()
                    .action()
                    .class_handler(|args| {
                        let el = args[0].get::<super::IrohSink>().expect("signal arg");
                        let id = args[1].get::<String>().expect("signal arg");
                        let s = el
                            .imp()
                            .shared()
                            .and_then(|sh| sh.viewers.lock().unwrap().get(&id).map(|v| v.stats()));
                        Some(s.to_value())
                    })
                    .build(),
            ]
        });
        SIGNALS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        match pspec.name() {
            "relay" => {
                s.relay = value
                    .get::<Option<String>>()
                    .unwrap()
                    .unwrap_or_else(|| "default".into())
            }
            "bind-address" => s.bind_address = value.get::<Option<String>>().unwrap().unwrap_or_default(),
            "key-file" => s.key_file = value.get::<Option<String>>().unwrap().filter(|p| !p.is_empty()),
            "max-viewers" => {
                s.max_viewers = value.get().unwrap();
                if let Some(sh) = self.shared() {
                    sh.max_viewers.store(s.max_viewers, Ordering::Relaxed);
                }
            }
            "max-lag" => s.max_lag_ms = value.get().unwrap(),
            "slow-timeout" => s.slow_timeout_ms = value.get().unwrap(),
            "burst-max-age" => s.burst_max_age_ms = value.get().unwrap(),
            "keyframe-interval" => s.keyframe_interval_ms = value.get().unwrap(),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "ticket" => self.shared().map(|sh| sh.ticket.lock().unwrap().clone()).to_value(),
            "endpoint-id" => self.shared().map(|sh| sh.endpoint.id().to_string()).to_value(),
            "relay" => s.relay.to_value(),
            "bind-address" => s.bind_address.to_value(),
            "key-file" => s.key_file.to_value(),
            "max-viewers" => s.max_viewers.to_value(),
            "max-lag" => s.max_lag_ms.to_value(),
            "slow-timeout" => s.slow_timeout_ms.to_value(),
            "burst-max-age" => s.burst_max_age_ms.to_value(),
            "keyframe-interval" => s.keyframe_interval_ms.to_value(),
            "num-viewers" => self
                .shared()
                .map_or(0, |sh| sh.viewers.lock().unwrap().len() as u32)
                .to_value(),
            "stats" => self.shared().map(|sh| sh.stats()).to_value(),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        // A network sink sends as soon as data is there; pacing is upstream's business.
        self.obj().set_sync(false);
    }
}

impl GstObjectImpl for IrohSink {}

impl ElementImpl for IrohSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "iroh sink",
                "Sink/Network",
                "Serves a stream to many viewers over iroh QUIC; every viewer starts at a keyframe",
                "pixelpass developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &gst::Caps::new_any(),
                )
                .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(&self, transition: gst::StateChange) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::NullToReady {
            let s = self.settings.lock().unwrap().clone();
            if let Err(e) = s.relay.parse::<Relay>() {
                gst::element_imp_error!(self, gst::ResourceError::Settings, ("property relay: {e}"));
                return Err(gst::StateChangeError);
            }
            if let Err(e) = net::parse_bind_addr(&s.bind_address) {
                gst::element_imp_error!(self, gst::ResourceError::Settings, ("property bind-address: {e}"));
                return Err(gst::StateChangeError);
            }
        }
        self.parent_change_state(transition)
    }
}

impl BaseSinkImpl for IrohSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let s = self.settings.lock().unwrap().clone();
        let relay: Relay = s
            .relay
            .parse()
            .map_err(|e: String| gst::error_msg!(gst::ResourceError::Settings, ("property relay: {e}")))?;
        let bind_addr = net::parse_bind_addr(&s.bind_address)
            .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("property bind-address: {e}")))?;
        let key_file = s.key_file.as_ref().map(PathBuf::from);
        let identity = match &key_file {
            Some(p) => Identity::load_or_create(p)
                .map_err(|e| gst::error_msg!(gst::ResourceError::OpenReadWrite, ("property key-file: {e}")))?,
            None => Identity::generate(),
        };
        // With a key file, rebind the port of last time so the ticket stays the same.
        let saved: Vec<std::net::SocketAddr> = match (identity.port, bind_addr) {
            (Some(p), None) if key_file.is_some() => vec![
                (std::net::Ipv4Addr::UNSPECIFIED, p).into(),
                (std::net::Ipv6Addr::UNSPECIFIED, p).into(),
            ],
            (Some(p), Some(a)) if key_file.is_some() && a.port() == 0 => vec![std::net::SocketAddr::new(a.ip(), p)],
            _ => Vec::new(),
        };
        let fresh: Vec<std::net::SocketAddr> = bind_addr.into_iter().collect();
        let key = identity.key.clone();
        let alpns = vec![protocol::ALPN.to_vec(), protocol::ALPN_VERSION_PROBE.to_vec()];
        let endpoint = net::block_on(async move {
            // The previous run (a restart) may still be releasing the port: retry for a second.
            if !saved.is_empty() {
                for _ in 0..10 {
                    if let Ok(ep) = net::bind(key.clone(), &relay, &saved, alpns.clone()).await {
                        return Ok(ep);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            net::bind(key, &relay, &fresh, alpns).await
        })
        .map_err(|e| gst::error_msg!(gst::ResourceError::OpenWrite, ("{e}")))?;
        let mut identity = identity;
        let port = endpoint.bound_sockets().iter().find(|a| a.is_ipv4()).map(|a| a.port());
        if let Some(p) = &key_file
            && port != identity.port
        {
            identity.port = port;
            if let Err(e) = identity.save(p) {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    ("the ticket will change on restart: {e}")
                );
            }
        }

        let shared = Arc::new(Shared {
            element: self.obj().downgrade(),
            fanout: Fanout::new(FanoutConfig {
                burst_max_age: Duration::from_millis(s.burst_max_age_ms.into()),
                keep: Duration::from_millis(u64::from(s.max_lag_ms) * 2).max(Duration::from_secs(2)),
                ..Default::default()
            }),
            identity: Mutex::new(identity),
            key_file,
            endpoint: endpoint.clone(),
            ticket: Mutex::new(String::new()),
            viewers: Mutex::new(BTreeMap::new()),
            next_viewer: AtomicU64::new(1),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            max_viewers: AtomicU32::new(s.max_viewers),
            max_lag: Duration::from_millis(s.max_lag_ms.into()),
            slow_timeout: Duration::from_millis(s.slow_timeout_ms.into()),
            keyframe_interval: Duration::from_millis(s.keyframe_interval_ms.into()),
            fku: Mutex::new((None, false)),
            viewers_total: AtomicU64::new(0),
            bytes_sent_done: AtomicU64::new(0),
            dropped_gops_done: AtomicU64::new(0),
            keyframe_requests: AtomicU64::new(0),
        });
        let ticket = shared.update_ticket().unwrap_or_default();
        gst::info!(CAT, imp = self, "serving as {} with ticket {ticket}", endpoint.id());
        *self.state.lock().unwrap() = StateBox(State::Started {
            shared: shared.clone(),
            psi: None,
            caps_headers: Vec::new(),
        });
        shared.announce_ticket(&ticket);

        // Accept loop and ticket watcher; both end with the element's cancel token.
        let sh = shared.clone();
        shared.tasks.spawn_on(accept_loop(sh), RUNTIME.handle());
        let sh = shared.clone();
        shared.tasks.spawn_on(
            async move {
                let mut addrs = sh.endpoint.watch_addr().stream();
                loop {
                    tokio::select! {
                        _ = sh.cancel.cancelled() => break,
                        a = addrs.next() => if a.is_none() { break },
                    }
                    if let Some(t) = sh.update_ticket() {
                        sh.announce_ticket(&t);
                    }
                }
            },
            RUNTIME.handle(),
        );
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let state = std::mem::replace(&mut *self.state.lock().unwrap(), StateBox(State::Stopped));
        if let State::Started { shared, .. } = state.0 {
            // Bounded (≤ 0.8 s) so a ctrl-c'd host ends within a second.
            net::block_on(async move {
                shared.tasks.close();
                // After EOS, let viewers drain what they have; otherwise close now.
                if shared.fanout.is_eos() {
                    let _ = tokio::time::timeout(Duration::from_millis(400), async {
                        while shared
                            .viewers
                            .lock()
                            .unwrap()
                            .values()
                            .any(|v| !v.cancel.is_cancelled())
                        {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    })
                    .await;
                }
                for v in shared.viewers.lock().unwrap().values() {
                    v.close_as.lock().unwrap().get_or_insert(CloseCode::HostStopped);
                }
                shared.cancel.cancel();
                let _ = tokio::time::timeout(Duration::from_millis(200), shared.tasks.wait()).await;
                let _ = tokio::time::timeout(Duration::from_millis(200), shared.endpoint.close()).await;
            });
        }
        gst::info!(CAT, imp = self, "stopped");
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let Some(s) = caps.structure(0) else {
            return Err(gst::loggable_error!(CAT, "empty caps"));
        };
        let mut headers = Vec::new();
        if let Ok(arr) = s.get::<gst::ArrayRef>("streamheader") {
            for v in arr.iter() {
                if let Ok(b) = v.get::<gst::Buffer>() {
                    let map = b
                        .map_readable()
                        .map_err(|_| gst::loggable_error!(CAT, "unreadable streamheader"))?;
                    headers.push(Chunk {
                        meta: FrameMeta {
                            flags: flags::HEADER | flags::DELTA,
                            ..Default::default()
                        },
                        data: Bytes::copy_from_slice(&map),
                        arrived: Instant::now(),
                    });
                }
            }
        }
        let is_ts = s.name() == "video/mpegts";
        let mut state = self.state.lock().unwrap();
        let State::Started {
            shared,
            psi,
            caps_headers,
        } = &mut state.0
        else {
            return Err(gst::loggable_error!(CAT, "caps before start"));
        };
        gst::debug!(CAT, imp = self, "caps {caps}, {} stream headers", headers.len());
        *caps_headers = headers.iter().map(|h| h.data.clone()).collect();
        *psi = is_ts.then(PsiCache::default);
        shared.fanout.set_caps(&caps.to_string());
        shared.fanout.set_headers(headers);
        Ok(())
    }

    fn event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Eos(_) => {
                if let Some(sh) = self.shared() {
                    sh.fanout.end();
                }
            }
            gst::EventView::FlushStop(_) => {
                if let Some(sh) = self.shared() {
                    sh.fanout.flush();
                }
            }
            _ => {}
        }
        self.parent_event(event)
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.skip_in_caps_header(buffer) {
            return Ok(gst::FlowSuccess::Ok);
        }
        let segment = self.time_segment();
        let meta = self.meta_of(buffer, segment.as_ref());
        let data = match buffer.clone().into_mapped_buffer_readable() {
            Ok(m) => Bytes::from_owner(m),
            Err(_) => {
                gst::element_imp_error!(self, gst::ResourceError::Read, ("cannot map buffer"));
                return Err(gst::FlowError::Error);
            }
        };
        self.push_chunks(vec![Chunk {
            meta,
            data,
            arrived: Instant::now(),
        }])
    }

    /// mpegtsmux pushes lists of single 188-byte packets: coalesce them into chunks, cutting
    /// only where a keyframe run starts (mpegtsmux marks the PAT it sends before a keyframe as
    /// the one non-DELTA packet) or at a discontinuity, so GOP boundaries stay exact and a chunk
    /// never ends inside a frame. (Chunks used to be cut at every HEADER packet too — mpegtsmux
    /// flags every packet of a keyframe PES as HEADER — and at 64 KiB: a keyframe went out as
    /// single packets, and a GOP reset between two of them left a truncated keyframe that
    /// tsdemux, told DISCONT, pushed to the decoder: "error while decoding MB" after an outage.)
    fn render_list(&self, list: &gst::BufferList) -> Result<gst::FlowSuccess, gst::FlowError> {
        let segment = self.time_segment();
        let now = Instant::now();
        let mut chunks = Vec::new();
        let mut cur: Option<(FrameMeta, BytesMut)> = None;
        let mut prev_key = false;
        // bytes of the list from the current buffer on: a chunk never needs more room
        let mut left = list.calculate_size();
        for buffer in list.iter() {
            let here = left;
            left -= buffer.size();
            if self.skip_in_caps_header(buffer) {
                continue;
            }
            let bf = buffer.flags();
            let key = !bf.contains(gst::BufferFlags::DELTA_UNIT);
            let boundary = (key && !prev_key) || bf.contains(gst::BufferFlags::DISCONT);
            prev_key = key;
            let map = buffer.map_readable().map_err(|_| {
                gst::element_imp_error!(self, gst::ResourceError::Read, ("cannot map buffer"));
                gst::FlowError::Error
            })?;
            if let Some((meta, data)) = &mut cur
                && !boundary
            {
                if meta.pts.is_none() && buffer.pts().is_some() {
                    let m = self.meta_of(buffer, segment.as_ref());
                    meta.pts = m.pts;
                    meta.dts = m.dts;
                    meta.capture_unix_ns = m.capture_unix_ns;
                }
                data.extend_from_slice(&map);
                continue;
            }
            if let Some((meta, data)) = cur.take() {
                chunks.push(Chunk {
                    meta,
                    data: data.freeze(),
                    arrived: now,
                });
            }
            // (sized to what is left of the list, not the whole list: a frozen chunk keeps its
            // allocation in the GOP cache)
            let mut data = BytesMut::with_capacity(here);
            data.extend_from_slice(&map);
            cur = Some((self.meta_of(buffer, segment.as_ref()), data));
        }
        if let Some((meta, data)) = cur {
            chunks.push(Chunk {
                meta,
                data: data.freeze(),
                arrived: now,
            });
        }
        self.push_chunks(chunks)
    }
}

impl IrohSink {
    fn kick(&self, id: &str, code: CloseCode) -> bool {
        let Some(sh) = self.shared() else { return false };
        let v = sh.viewers.lock().unwrap().get(id).cloned();
        match v {
            Some(v) => {
                v.close_as.lock().unwrap().get_or_insert(code);
                v.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Replaces the ticket's secret (persisted in the key file if there is one), removes every
    /// viewer with reason "revoked" and returns the new ticket.
    fn revoke(&self) -> Option<String> {
        let sh = self.shared()?;
        {
            let mut id = sh.identity.lock().unwrap();
            id.revoke();
            if let Some(p) = &sh.key_file
                && let Err(e) = id.save(p)
            {
                gst::element_imp_warning!(self, gst::ResourceError::Write, ("revoked in memory only: {e}"));
            }
        }
        let ids: Vec<String> = sh.viewers.lock().unwrap().keys().cloned().collect();
        for id in ids {
            self.kick(&id, CloseCode::Revoked);
        }
        let t = sh.update_ticket()?;
        sh.announce_ticket(&t);
        Some(t)
    }
}

// ---------------------------------------------------------------------------------------------
// network side

async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            i = shared.endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let sh = shared.clone();
        shared.tasks.spawn(async move {
            let conn = match tokio::time::timeout(HELLO_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    gst::debug!(CAT, "incoming connection failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            if conn.alpn() == protocol::ALPN_VERSION_PROBE {
                conn.close(protocol::VERSION.into(), protocol::ALPN);
                return;
            }
            handle_viewer(sh, conn).await;
        });
    }
}

fn close(conn: &Connection, code: CloseCode, reason: &str) {
    conn.close(VarInt::from_u32(code as u32), reason.as_bytes());
}

async fn refuse(mut send: SendStream, conn: &Connection, code: CloseCode) {
    let reason = code.reason();
    let _ = write_control(
        &mut send,
        &Control::Refuse {
            code: code as u32,
            reason: reason.into(),
        },
    )
    .await;
    let _ = send.finish();
    // Give the refusal a moment to arrive before the close frame.
    let _ = tokio::time::timeout(Duration::from_millis(300), send.stopped()).await;
    close(conn, code, reason);
}

async fn handle_viewer(shared: Arc<Shared>, conn: Connection) {
    let remote = conn.remote_id();
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::new();
        let msg = read_control(&mut recv, &mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((send, recv, buf, msg))
    })
    .await;
    let (mut send, recv, buf, msg) = match hello {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            gst::debug!(CAT, "viewer {} sent no valid hello: {e}", remote.fmt_short());
            close(&conn, CloseCode::Protocol, "expected a hello");
            return;
        }
        Err(_) => {
            close(&conn, CloseCode::Protocol, "no hello in time");
            return;
        }
    };
    let Control::Hello { secret, name } = msg else {
        close(&conn, CloseCode::Protocol, "expected a hello");
        return;
    };
    let refusal = {
        let id = shared.identity.lock().unwrap();
        if secret == id.secret {
            None
        } else if id.revoked.contains(&secret) {
            Some(CloseCode::Revoked)
        } else {
            Some(CloseCode::BadSecret)
        }
    };
    if let Some(code) = refusal {
        gst::info!(CAT, "refused {}: {}", remote.fmt_short(), code.reason());
        refuse(send, &conn, code).await;
        return;
    }
    // Admission and registration under one lock, so two viewers cannot both take the last seat.
    let viewer = {
        let mut viewers = shared.viewers.lock().unwrap();
        let max = shared.max_viewers.load(Ordering::Relaxed);
        if max > 0 && viewers.len() >= max as usize {
            None
        } else {
            let n = shared.next_viewer.fetch_add(1, Ordering::Relaxed);
            let v = Arc::new(Viewer {
                id: format!("{}-{n}", remote.fmt_short()),
                name,
                endpoint_id: remote,
                conn: conn.clone(),
                cancel: shared.cancel.child_token(),
                close_as: Mutex::new(None),
                joined: Instant::now(),
                bytes_sent: AtomicU64::new(0),
                dropped_gops: AtomicU64::new(0),
                lag_ms: AtomicU64::new(0),
                written_capture: AtomicU64::new(0),
                first_capture: AtomicU64::new(0),
                progress: Mutex::new((0, 0)),
                progress_at: Mutex::new(Instant::now()),
            });
            viewers.insert(v.id.clone(), v.clone());
            Some(v)
        }
    };
    let Some(viewer) = viewer else {
        gst::info!(CAT, "refused {}: host is full", remote.fmt_short());
        refuse(send, &conn, CloseCode::HostFull).await;
        return;
    };
    shared.viewers_total.fetch_add(1, Ordering::Relaxed);
    let welcomed = write_control(&mut send, &Control::Welcome { viewer_id: 0 })
        .await
        .is_ok();
    let (path, _) = net::path_info(&conn);
    gst::info!(CAT, "viewer {} ({}) joined over {path}", viewer.id, viewer.name);
    if let Some(el) = shared.element.upgrade() {
        el.emit_by_name::<()>("viewer-joined", &[&viewer.id, &viewer.name]);
    }
    shared.post(
        gst::Structure::builder("iroh-viewer-joined")
            .field("id", &viewer.id)
            .field("name", &viewer.name)
            .field("endpoint-id", remote.to_string())
            .field("path", path)
            .build(),
    );

    let code = if welcomed {
        serve(&shared, &viewer, send, recv, buf).await
    } else {
        CloseCode::Normal
    };
    let code = viewer.close_as.lock().unwrap().unwrap_or(code);
    close(&conn, code, code.reason());
    shared.viewers.lock().unwrap().remove(&viewer.id);
    viewer.cancel.cancel();
    shared
        .bytes_sent_done
        .fetch_add(viewer.bytes_sent.load(Ordering::Relaxed), Ordering::Relaxed);
    shared
        .dropped_gops_done
        .fetch_add(viewer.dropped_gops.load(Ordering::Relaxed), Ordering::Relaxed);
    let reason = code.reason();
    gst::info!(CAT, "viewer {} left: {reason}", viewer.id);
    if let Some(el) = shared.element.upgrade() {
        el.emit_by_name::<()>("viewer-left", &[&viewer.id, &reason]);
    }
    shared.post(
        gst::Structure::builder("iroh-viewer-left")
            .field("id", &viewer.id)
            .field("reason", reason)
            .build(),
    );
}

/// Reads the viewer's control messages (progress reports, keyframe requests) until the
/// control stream ends.
async fn read_control_stream(shared: Arc<Shared>, viewer: Arc<Viewer>, mut recv: RecvStream, mut buf: BytesMut) {
    while let Ok(msg) = read_control(&mut recv, &mut buf).await {
        match msg {
            Control::Progress { seq, capture_unix_ns } => {
                *viewer.progress.lock().unwrap() = (seq, capture_unix_ns);
                *viewer.progress_at.lock().unwrap() = Instant::now();
            }
            Control::KeyframeRequest => shared.request_keyframe(),
            _ => {}
        }
    }
}

/// Why a write was interrupted.
enum Interrupt {
    Stale,
    Gone(CloseCode),
}

/// Per-viewer sender: walks the GOP cache with the viewer's cursor, one uni stream per GOP.
/// Returns the close code.
async fn serve(
    shared: &Arc<Shared>,
    viewer: &Arc<Viewer>,
    mut control: SendStream,
    recv: RecvStream,
    buf: BytesMut,
) -> CloseCode {
    let fanout = &shared.fanout;
    let (mut cursor, need_keyframe) = fanout.join(Instant::now());
    gst::debug!(
        CAT,
        "viewer {} starts {}",
        viewer.id,
        if need_keyframe {
            "at the next keyframe"
        } else {
            "with the cached GOP"
        }
    );
    if need_keyframe {
        shared.request_keyframe();
    }
    RUNTIME.spawn(read_control_stream(shared.clone(), viewer.clone(), recv, buf));
    let mut changed = fanout.subscribe();
    let mut stream: Option<(u64, SendStream)> = None;
    let mut progressing = Instant::now();
    let mut finished: std::collections::VecDeque<(u64, SendStream)> = std::collections::VecDeque::new();
    let mut skip_floor = 0u64;
    let code = loop {
        let step = fanout.next(&mut cursor, 64);
        gst::trace!(CAT, "viewer {}: {step:?}", viewer.id);
        let gop_done = matches!(step, Step::Close);
        let res: Result<(), Interrupt> = match step {
            Step::Open { seq, caps, headers, .. } => {
                if let Some((_, mut s)) = stream.take() {
                    let _ = s.finish();
                }
                let opened = tokio::select! {
                    s = viewer.conn.open_uni() => s.map_err(|_| Interrupt::Gone(CloseCode::Normal)),
                    _ = viewer.cancel.cancelled() => Err(Interrupt::Gone(CloseCode::HostStopped)),
                };
                match opened {
                    Ok(s) => {
                        if skip_floor == u64::MAX {
                            skip_floor = seq;
                        }
                        // Older GOPs first: the viewer plays GOPs in order, so a newer GOP that
                        // took the bandwidth would starve the tail of the one being played
                        // (measured: a half-rate viewer stalled after 8 frames). Falling behind is
                        // handled by resetting stale streams instead.
                        let _ = s.set_priority(-((seq & 0x7fff_ffff) as i32));
                        let mut parts = vec![Bytes::from(
                            GopHeader {
                                seq,
                                caps: caps.to_string(),
                            }
                            .encode(),
                        )];
                        for h in &headers {
                            let mut hdr = Vec::new();
                            h.meta.encode_header(h.data.len(), &mut hdr);
                            parts.push(hdr.into());
                            parts.push(h.data.clone());
                        }
                        stream = Some((seq, s));
                        write_parts(
                            shared,
                            viewer,
                            fanout,
                            &mut cursor,
                            stream.as_mut().unwrap(),
                            parts,
                            0,
                            skip_floor,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                }
            }
            Step::Data(chunks) => {
                let capture = chunks.iter().rev().find_map(|c| c.meta.capture_unix_ns).unwrap_or(0);
                let mut parts = Vec::with_capacity(chunks.len() * 2);
                for c in &chunks {
                    let mut hdr = Vec::with_capacity(24);
                    c.meta.encode_header(c.data.len(), &mut hdr);
                    parts.push(Bytes::from(hdr));
                    parts.push(c.data.clone());
                }
                match stream.as_mut() {
                    Some(s) => write_parts(shared, viewer, fanout, &mut cursor, s, parts, capture, skip_floor).await,
                    None => Ok(()),
                }
            }
            Step::Close => {
                if let Some((seq, mut s)) = stream.take() {
                    let _ = s.finish();
                    // Finished is not delivered: keep it resettable while it may still queue.
                    finished.push_back((seq, s));
                    if finished.len() > 16 {
                        finished.pop_front();
                    }
                }
                Ok(())
            }
            Step::Wait => {
                tokio::select! {
                    r = changed.changed() => if r.is_err() { Err(Interrupt::Gone(CloseCode::HostStopped)) } else { Ok(()) },
                    _ = tokio::time::sleep(Duration::from_millis(100)) => Ok(()),
                    _ = viewer.cancel.cancelled() => Err(Interrupt::Gone(CloseCode::HostStopped)),
                    _ = viewer.conn.closed() => Err(Interrupt::Gone(CloseCode::Normal)),
                }
            }
            Step::End => {
                if let Some((_, mut s)) = stream.take() {
                    let _ = s.finish();
                }
                let _ = write_control(&mut control, &Control::End).await;
                let _ = control.finish();
                // The viewer closes once it has read everything; bounded wait.
                tokio::select! {
                    _ = viewer.conn.closed() => {},
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {},
                    _ = viewer.cancel.cancelled() => {},
                }
                viewer.cancel.cancel();
                break CloseCode::Normal;
            }
        };
        let stale = match res {
            Ok(()) => false,
            Err(Interrupt::Gone(code)) => break code,
            Err(Interrupt::Stale) => true,
        };
        // Lag bookkeeping after every step.
        let lag = viewer_lag(fanout, &cursor, viewer, skip_floor);
        viewer.lag_ms.store(lag.as_millis() as u64, Ordering::Relaxed);
        // A viewer that has data outstanding but has not reported progress for slow-timeout
        // (it stopped reading, or never started) is removed whatever the lag estimate says.
        let acked = viewer.progress.lock().unwrap().1;
        if viewer.written_capture.load(Ordering::Relaxed) > acked
            && viewer.progress_at.lock().unwrap().elapsed() > shared.slow_timeout
        {
            break CloseCode::Slow;
        }
        // Hopeless: neither within max-lag nor finishing a single GOP for slow-timeout. A
        // viewer at half the stream rate still finishes GOPs between skips and stays.
        if lag <= shared.max_lag || gop_done {
            progressing = Instant::now();
        } else if progressing.elapsed() > shared.slow_timeout {
            break CloseCode::Slow;
        }
        // Behind by more than max-lag with older GOPs still queued for it (or a newer GOP to
        // jump to): drop everything not yet delivered and resume at a GOP start. An interrupted
        // write left a partial frame: that GOP stream must go, whatever else.
        let acked_seq = viewer.progress.lock().unwrap().0;
        let behind = lag > shared.max_lag
            && (fanout.newer_gop_exists(&cursor) || finished.iter().any(|(seq, _)| *seq >= acked_seq));
        if stale || behind {
            if !fanout.skip_to_newest(&mut cursor) {
                fanout.abandon(&mut cursor);
            }
            for (seq, mut s) in finished.drain(..).chain(stream.take()) {
                gst::debug!(CAT, "viewer {} is {lag:?} behind: dropping GOP {seq}", viewer.id);
                let _ = s.reset(VarInt::from_u32(RESET_STALE));
            }
            viewer.dropped_gops.store(cursor.dropped_gops, Ordering::Relaxed);
            // Progress reports from before the GOP we jump to say nothing about the new lag.
            skip_floor = cursor.seq().unwrap_or(u64::MAX);
        }
    };
    fanout.leave(&cursor);
    if let Some((_, mut s)) = stream.take() {
        let _ = s.reset(VarInt::from_u32(RESET_STALE));
    }
    code
}

/// How far behind live a viewer is: the age of what it has not been handed yet, plus what
/// is handed to QUIC but not yet reported received.
fn viewer_lag(fanout: &Fanout, cursor: &Cursor, viewer: &Viewer, skip_floor: u64) -> Duration {
    let backlog = fanout.backlog_age(cursor, Instant::now());
    let (seq, acked) = *viewer.progress.lock().unwrap();
    let written = viewer.written_capture.load(Ordering::Relaxed);
    let acked = if acked == 0 {
        viewer.first_capture.load(Ordering::Relaxed)
    } else {
        acked
    };
    let in_flight = if seq >= skip_floor && acked > 0 {
        Duration::from_nanos(written.saturating_sub(acked))
    } else {
        Duration::ZERO
    };
    backlog + in_flight
}

/// Writes `parts` to the GOP stream, interrupted when the viewer falls too far behind and a
/// newer GOP exists (then the caller resets the stream), when it is kicked or when it goes.
#[allow(clippy::too_many_arguments)]
async fn write_parts(
    shared: &Arc<Shared>,
    viewer: &Arc<Viewer>,
    fanout: &Fanout,
    cursor: &mut Cursor,
    stream: &mut (u64, SendStream),
    mut parts: Vec<Bytes>,
    capture: u64,
    skip_floor: u64,
) -> Result<(), Interrupt> {
    let n: usize = parts.iter().map(Bytes::len).sum();
    let write = stream.1.write_all_chunks(&mut parts);
    tokio::pin!(write);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            r = &mut write => {
                return match r {
                    Ok(()) => {
                        viewer.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                        if capture > 0 {
                            viewer.written_capture.store(capture, Ordering::Relaxed);
                            let _ = viewer.first_capture.compare_exchange(0, capture, Ordering::Relaxed, Ordering::Relaxed);
                        }
                        Ok(())
                    }
                    Err(_) => Err(Interrupt::Gone(CloseCode::Normal)),
                };
            }
            _ = tick.tick() => {
                let lag = viewer_lag(fanout, cursor, viewer, skip_floor);
                if lag > shared.max_lag && fanout.newer_gop_exists(cursor) {
                    return Err(Interrupt::Stale);
                }
            }
            _ = viewer.cancel.cancelled() => return Err(Interrupt::Gone(CloseCode::HostStopped)),
        }
    }
}
