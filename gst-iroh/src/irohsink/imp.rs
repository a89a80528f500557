//! The irohsink GObject shell: properties, signals, state changes and render. A viewer's life
//! on the host is in `session.rs` (admission) and `sender.rs` (what it is sent).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
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
use iroh::{Endpoint, Watcher as _};
use n0_future::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::rendition::{IrohSinkPad, Rendition};
use super::session::{self, Limits, Shared, Totals};
use crate::gop_cache::{Chunk, GopCacheConfig};
use crate::net::{self, Identity, RUNTIME, Relay};
use crate::protocol::{self, CloseCode, FrameMeta};
use crate::psi_cache::PsiCache;

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "irohsink",
        gst::DebugColorFlags::empty(),
        Some("iroh multi-viewer sink"),
    )
});

/// The properties as set (strings and integers).
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

/// The settings as typed values, resolved once at NULL→READY.
#[derive(Debug, Clone)]
struct Resolved {
    relay: Relay,
    bind_addr: Option<SocketAddr>,
    key_file: Option<PathBuf>,
    limits: Limits,
    burst_max_age: Duration,
}

impl TryFrom<&Settings> for Resolved {
    type Error = gst::ErrorMessage;

    fn try_from(s: &Settings) -> Result<Self, Self::Error> {
        let relay = s
            .relay
            .parse()
            .map_err(|e: String| gst::error_msg!(gst::ResourceError::Settings, ("property relay: {e}")))?;
        let bind_addr = net::parse_bind_addr(&s.bind_address)
            .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("property bind-address: {e}")))?;
        let ms = |v: u32| Duration::from_millis(v.into());
        Ok(Self {
            relay,
            bind_addr,
            key_file: s.key_file.as_ref().map(PathBuf::from),
            limits: Limits {
                max_lag: ms(s.max_lag_ms),
                slow_timeout: ms(s.slow_timeout_ms),
                keyframe_interval: ms(s.keyframe_interval_ms),
            },
            burst_max_age: ms(s.burst_max_age_ms),
        })
    }
}

enum State {
    Stopped,
    Started { shared: Arc<Shared> },
}

#[derive(Default)]
pub struct IrohSink {
    settings: Mutex<Settings>,
    resolved: Mutex<Option<Resolved>>,
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

    /// The rendition fed by `pad`.
    fn rendition(&self, pad: &gst::Pad) -> Option<Arc<Rendition>> {
        self.shared()?.rendition_of(pad)
    }

    /// Hands chunks to the rendition's GOP cache, caching MPEG-TS tables on the way.
    fn push_chunks(&self, r: &Rendition, chunks: Vec<Chunk>) -> Result<gst::FlowSuccess, gst::FlowError> {
        let shared = self.shared().ok_or(gst::FlowError::Flushing)?;
        {
            let mut ingest = r.ingest.lock().unwrap();
            if let Some(psi) = &mut ingest.psi {
                let mut changed = false;
                for c in &chunks {
                    changed |= psi.scan(&c.data);
                }
                if changed && let Some(t) = psi.tables() {
                    r.gops.set_headers(vec![Chunk::header(t)]);
                }
            }
        }
        gst::trace!(CAT, imp = self, "pushing {} chunks", chunks.len());
        for c in chunks {
            if let Some(pts) = c.meta.pts {
                shared.newest_pts.fetch_max(pts, Ordering::Relaxed);
            }
            r.gops.push(c);
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn skip_in_caps_header(&self, r: &Rendition, buffer: &gst::BufferRef) -> bool {
        if !buffer.flags().contains(gst::BufferFlags::HEADER) {
            return false;
        }
        let ingest = r.ingest.lock().unwrap();
        !ingest.caps_headers.is_empty()
            && buffer
                .map_readable()
                .is_ok_and(|m| ingest.caps_headers.iter().any(|h| h[..] == m[..]))
    }

    /// New caps on a rendition's pad: its stream headers, and whether it is MPEG-TS.
    fn apply_caps(&self, r: &Rendition, caps: &gst::CapsRef) -> Result<(), gst::LoggableError> {
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
                    headers.push(Chunk::header(Bytes::copy_from_slice(&map)));
                }
            }
        }
        gst::debug!(CAT, imp = self, "caps {caps}, {} stream headers", headers.len());
        let mut ingest = r.ingest.lock().unwrap();
        ingest.caps_headers = headers.iter().map(|h| h.data.clone()).collect();
        ingest.psi = (s.name() == "video/mpegts").then(PsiCache::default);
        r.gops.set_caps(&caps.to_string());
        r.gops.set_headers(headers);
        Ok(())
    }

    /// One buffer as one chunk.
    fn render_on(
        &self,
        r: &Rendition,
        buffer: &gst::Buffer,
        segment: Option<&gst::FormattedSegment<gst::ClockTime>>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.skip_in_caps_header(r, buffer) {
            return Ok(gst::FlowSuccess::Ok);
        }
        let meta = self.meta_of(buffer, segment);
        let data = match buffer.clone().into_mapped_buffer_readable() {
            Ok(m) => Bytes::from_owner(m),
            Err(_) => {
                gst::element_imp_error!(self, gst::ResourceError::Read, ("cannot map buffer"));
                return Err(gst::FlowError::Error);
            }
        };
        self.push_chunks(
            r,
            vec![Chunk {
                meta,
                data,
                arrived: Instant::now(),
            }],
        )
    }

    /// mpegtsmux pushes lists of single 188-byte packets: coalesce them into chunks, cutting
    /// only where a keyframe run starts (mpegtsmux marks the PAT it sends before a keyframe as
    /// the one non-DELTA packet) or at a discontinuity, so GOP boundaries stay exact and a chunk
    /// never ends inside a frame (mpegtsmux flags every packet of a keyframe PES as HEADER, so
    /// HEADER is no boundary), and a GOP stream reset or cut leaves whole frames only.
    fn render_list_on(
        &self,
        r: &Rendition,
        list: &gst::BufferList,
        segment: Option<&gst::FormattedSegment<gst::ClockTime>>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let now = Instant::now();
        let mut chunks = Vec::new();
        let mut cur: Option<(FrameMeta, BytesMut)> = None;
        let mut prev_key = false;
        // bytes of the list from the current buffer on: a chunk never needs more room
        let mut left = list.calculate_size();
        for buffer in list.iter() {
            let here = left;
            left -= buffer.size();
            if self.skip_in_caps_header(r, buffer) {
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
                    let m = self.meta_of(buffer, segment);
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
            cur = Some((self.meta_of(buffer, segment), data));
        }
        if let Some((meta, data)) = cur {
            chunks.push(Chunk {
                meta,
                data: data.freeze(),
                arrived: now,
            });
        }
        self.push_chunks(r, chunks)
    }

    /// End of stream and flushes on a rendition's pad.
    fn rendition_event(&self, r: &Rendition, event: &gst::Event) {
        match event.view() {
            gst::EventView::Eos(_) => r.gops.end(),
            gst::EventView::FlushStop(_) => r.gops.flush(),
            gst::EventView::Segment(s) => {
                r.ingest.lock().unwrap().segment = s.segment().clone().downcast::<gst::ClockTime>().ok();
            }
            _ => {}
        }
    }

    /// A request pad's buffer, list or event.
    fn chain(&self, pad: &gst::Pad, data: PadData) -> Result<gst::FlowSuccess, gst::FlowError> {
        let r = self.rendition(pad).ok_or(gst::FlowError::Flushing)?;
        let segment = r.ingest.lock().unwrap().segment.clone();
        match data {
            PadData::Buffer(b) => self.render_on(&r, &b, segment.as_ref()),
            PadData::List(l) => self.render_list_on(&r, &l, segment.as_ref()),
        }
    }

    fn request_pad_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        let Some(r) = self.rendition(pad) else {
            return gst::Pad::event_default(pad, Some(&*self.obj()), event);
        };
        if let gst::EventView::Caps(c) = event.view() {
            return self.apply_caps(&r, c.caps()).is_ok();
        }
        self.rendition_event(&r, &event);
        match event.type_() {
            gst::EventType::Eos | gst::EventType::Segment | gst::EventType::FlushStop => true,
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    /// Creates request pad `name` (`sink_%u`), with its rendition if the element runs.
    fn new_request_pad(&self, templ: &gst::PadTemplate, name: Option<&str>) -> Option<gst::Pad> {
        let obj = self.obj();
        let name = name.map(String::from).unwrap_or_else(|| {
            let n = (1..)
                .find(|i| obj.static_pad(&format!("sink_{i}")).is_none())
                .unwrap_or(1);
            format!("sink_{n}")
        });
        let pad = gst::PadBuilder::<IrohSinkPad>::from_template(templ)
            .name(name.as_str())
            .chain_function(|pad, parent, buffer| {
                IrohSink::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.chain(pad.upcast_ref(), PadData::Buffer(buffer)),
                )
            })
            .chain_list_function(|pad, parent, list| {
                IrohSink::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.chain(pad.upcast_ref(), PadData::List(list)),
                )
            })
            .event_function(|pad, parent, event| {
                IrohSink::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.request_pad_event(pad.upcast_ref(), event),
                )
            })
            .build();
        obj.add_pad(&pad).ok()?;
        if let Some(sh) = self.shared() {
            sh.add_rendition(pad.upcast_ref());
        }
        obj.child_added(&pad, &pad.name());
        Some(pad.upcast())
    }
}

/// What a request pad's chain function got.
enum PadData {
    Buffer(gst::Buffer),
    List(gst::BufferList),
}

#[glib::object_subclass]
impl ObjectSubclass for IrohSink {
    const NAME: &'static str = "GstIrohSink";
    type Type = super::IrohSink;
    type ParentType = gst_base::BaseSink;
    type Interfaces = (gst::ChildProxy,);
}

/// The renditions' pads are the children, so `gst-launch-1.0` can set
/// `sink_1::bitrate=600`.
impl ChildProxyImpl for IrohSink {
    fn child_by_index(&self, index: u32) -> Option<glib::Object> {
        self.obj().sink_pads().get(index as usize).map(|p| p.clone().upcast())
    }

    fn children_count(&self) -> u32 {
        self.obj().num_sink_pads() as u32
    }

    fn child_by_name(&self, name: &str) -> Option<glib::Object> {
        self.obj().static_pad(name).map(|p| p.upcast())
    }
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
                glib::subclass::Signal::builder("set-max-bitrate")
                    .param_types([String::static_type(), u32::static_type()])
                    .return_type::<bool>()
                    .action()
                    .class_handler(|args| {
                        let el = args[0].get::<super::IrohSink>().expect("signal arg");
                        let id = args[1].get::<String>().expect("signal arg");
                        let kbps = args[2].get::<u32>().expect("signal arg");
                        Some(el.imp().set_max_bitrate(&id, kbps).to_value())
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
            let any = gst::Caps::new_any();
            vec![
                gst::PadTemplate::with_gtype(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &any,
                    IrohSinkPad::static_type(),
                )
                .unwrap(),
                gst::PadTemplate::with_gtype(
                    "sink_%u",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &any,
                    IrohSinkPad::static_type(),
                )
                .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn request_new_pad(
        &self,
        templ: &gst::PadTemplate,
        name: Option<&str>,
        _caps: Option<&gst::Caps>,
    ) -> Option<gst::Pad> {
        self.new_request_pad(templ, name)
    }

    fn release_pad(&self, pad: &gst::Pad) {
        if let Some(sh) = self.shared() {
            sh.remove_rendition(pad);
        }
        self.obj().child_removed(pad, &pad.name());
        let _ = self.obj().remove_pad(pad);
    }

    fn change_state(&self, transition: gst::StateChange) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::NullToReady {
            let resolved = Resolved::try_from(&*self.settings.lock().unwrap());
            match resolved {
                Ok(r) => *self.resolved.lock().unwrap() = Some(r),
                Err(e) => {
                    self.post_error_message(e);
                    return Err(gst::StateChangeError);
                }
            }
        }
        self.parent_change_state(transition)
    }
}

impl BaseSinkImpl for IrohSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let r = match self.resolved.lock().unwrap().clone() {
            Some(r) => r,
            None => Resolved::try_from(&*self.settings.lock().unwrap())?,
        };
        let mut identity = match &r.key_file {
            Some(p) => Identity::load_or_create(p)
                .map_err(|e| gst::error_msg!(gst::ResourceError::OpenReadWrite, ("property key-file: {e}")))?,
            None => Identity::generate(),
        };
        let endpoint = bind_endpoint(&r, &identity)?;
        self.remember_port(&endpoint, &r, &mut identity);
        let shared = Arc::new(Shared {
            element: self.obj().downgrade(),
            gop_config: GopCacheConfig {
                burst_max_age: r.burst_max_age,
                keep: (r.limits.max_lag * 2).max(Duration::from_secs(2)),
                ..Default::default()
            },
            renditions: Mutex::new(Vec::new()),
            newest_pts: AtomicU64::new(0),
            identity: Mutex::new(identity),
            key_file: r.key_file,
            endpoint: endpoint.clone(),
            ticket: Mutex::new(String::new()),
            viewers: Mutex::new(BTreeMap::new()),
            next_viewer: AtomicU64::new(1),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            max_viewers: AtomicU32::new(self.settings.lock().unwrap().max_viewers),
            limits: r.limits,
            fku: Mutex::new((None, false)),
            totals: Totals::default(),
        });
        let ticket = shared.update_ticket().unwrap_or_default();
        gst::info!(CAT, imp = self, "serving as {} with ticket {ticket}", endpoint.id());
        for pad in self.obj().sink_pads() {
            shared.add_rendition(&pad);
        }
        *self.state.lock().unwrap() = StateBox(State::Started { shared: shared.clone() });
        shared.announce_ticket(&ticket);
        // Both end with the element's cancel token.
        shared
            .tasks
            .spawn_on(session::accept_loop(shared.clone()), RUNTIME.handle());
        shared.tasks.spawn_on(watch_ticket(shared.clone()), RUNTIME.handle());
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let state = std::mem::replace(&mut *self.state.lock().unwrap(), StateBox(State::Stopped));
        if let State::Started { shared, .. } = state.0 {
            // Bounded (≤ 0.8 s) so a ctrl-c'd host ends within a second.
            net::block_on(shut_down(shared));
        }
        gst::info!(CAT, imp = self, "stopped");
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let pad = self.obj().static_pad("sink").expect("always pad");
        let r = self
            .rendition(&pad)
            .ok_or_else(|| gst::loggable_error!(CAT, "caps before start"))?;
        self.apply_caps(&r, caps)
    }

    fn event(&self, event: gst::Event) -> bool {
        if let Some(r) = self.rendition(&self.obj().static_pad("sink").expect("always pad")) {
            self.rendition_event(&r, &event);
        }
        self.parent_event(event)
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let r = self
            .rendition(&self.obj().static_pad("sink").expect("always pad"))
            .ok_or(gst::FlowError::Flushing)?;
        self.render_on(&r, buffer, self.time_segment().as_ref())
    }

    fn render_list(&self, list: &gst::BufferList) -> Result<gst::FlowSuccess, gst::FlowError> {
        let r = self
            .rendition(&self.obj().static_pad("sink").expect("always pad"))
            .ok_or(gst::FlowError::Flushing)?;
        self.render_list_on(&r, list, self.time_segment().as_ref())
    }
}

impl IrohSink {
    /// Caps viewer `id` at `kbps` (0: no cap): from its next GOP it gets no rendition above.
    fn set_max_bitrate(&self, id: &str, kbps: u32) -> bool {
        let Some(sh) = self.shared() else { return false };
        let v = sh.viewers.lock().unwrap().get(id).cloned();
        v.map(|v| v.max_kbps.store(kbps, Ordering::Relaxed)).is_some()
    }

    fn kick(&self, id: &str, code: CloseCode) -> bool {
        let Some(sh) = self.shared() else { return false };
        let v = sh.viewers.lock().unwrap().get(id).cloned();
        v.map(|v| v.end(code)).is_some()
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
        sh.end_all(CloseCode::Revoked);
        let t = sh.update_ticket()?;
        sh.announce_ticket(&t);
        Some(t)
    }

    /// With a key file, keeps the bound port in it so the next start rebinds it (same ticket).
    fn remember_port(&self, endpoint: &Endpoint, r: &Resolved, identity: &mut Identity) {
        let port = endpoint.bound_sockets().iter().find(|a| a.is_ipv4()).map(|a| a.port());
        let Some(p) = &r.key_file else { return };
        if port == identity.port {
            return;
        }
        identity.port = port;
        if let Err(e) = identity.save(p) {
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Write,
                ("the ticket will change on restart: {e}")
            );
        }
    }
}

/// Binds the host's endpoint. With a key file it first tries the port of last time, so the
/// ticket stays the same across a restart.
fn bind_endpoint(r: &Resolved, identity: &Identity) -> Result<Endpoint, gst::ErrorMessage> {
    let saved: Vec<SocketAddr> = match (identity.port, r.bind_addr) {
        (Some(p), None) if r.key_file.is_some() => {
            vec![(Ipv4Addr::UNSPECIFIED, p).into(), (Ipv6Addr::UNSPECIFIED, p).into()]
        }
        (Some(p), Some(a)) if r.key_file.is_some() && a.port() == 0 => vec![SocketAddr::new(a.ip(), p)],
        _ => Vec::new(),
    };
    let fresh: Vec<SocketAddr> = r.bind_addr.into_iter().collect();
    let key = identity.key.clone();
    let relay = r.relay.clone();
    let alpns = vec![
        protocol::ALPN.to_vec(),
        protocol::ALPN_V1.to_vec(),
        protocol::ALPN_VERSION_PROBE.to_vec(),
    ];
    net::block_on(async move {
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
    .map_err(|e| gst::error_msg!(gst::ResourceError::OpenWrite, ("{e}")))
}

/// Re-announces the ticket whenever the endpoint's address changes.
async fn watch_ticket(shared: Arc<Shared>) {
    let mut addrs = shared.endpoint.watch_addr().stream();
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            a = addrs.next() => if a.is_none() { break },
        }
        if let Some(t) = shared.update_ticket() {
            shared.announce_ticket(&t);
        }
    }
}

/// Stops serving within about 0.8 s: after EOS viewers get a moment to drain what they have,
/// otherwise they are closed at once.
async fn shut_down(shared: Arc<Shared>) {
    shared.tasks.close();
    if shared.top().is_some_and(|r| r.gops.is_eos()) {
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
}
