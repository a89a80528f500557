//! The `irohsrc` GObject shell: properties, state changes, `create` and unlocking. The
//! connection to the host lives in `session.rs`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::{Failure, Kind};
use super::session::{Ctx, Item, Shared, run};
use crate::net::{self, RUNTIME, Relay};
use crate::protocol::{FrameMeta, flags};
use crate::ticket::Ticket;

pub(super) static CAT: LazyLock<gst::DebugCategory> =
    LazyLock::new(|| gst::DebugCategory::new("irohsrc", gst::DebugColorFlags::empty(), Some("iroh viewer source")));

/// Property values as set. Read once, at NULL→READY, into [`ResolvedSettings`].
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
    max_bitrate: u32,
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
            max_bitrate: 0,
        }
    }
}

/// The settings checked and typed: what the element and its session work with.
#[derive(Debug)]
pub(super) struct ResolvedSettings {
    pub(super) ticket: Ticket,
    pub(super) relay: Relay,
    pub(super) bind: Option<SocketAddr>,
    pub(super) name: String,
    pub(super) reconnect: bool,
    pub(super) reconnect_timeout: Duration,
    latency: gst::ClockTime,
    max_buffers: usize,
}

impl TryFrom<&Settings> for ResolvedSettings {
    type Error = Failure;

    fn try_from(s: &Settings) -> Result<Self, Failure> {
        let bad = |property, text: String| Failure::new(Kind::Settings(property), text);
        let ticket = match s.ticket.as_deref() {
            None | Some("") => {
                return Err(bad(
                    "ticket",
                    "ticket is not set: set the ticket property to the host's ticket".into(),
                ));
            }
            Some(t) => t
                .parse::<Ticket>()
                .map_err(|e| bad("ticket", format!("ticket is not valid: {e}")))?,
        };
        let relay = s
            .relay
            .parse::<Relay>()
            .map_err(|e| bad("relay", format!("property relay: {e}")))?;
        let bind = net::parse_bind_addr(&s.bind_address)
            .map_err(|e| bad("bind-address", format!("property bind-address: {e}")))?;
        let name = if s.name.is_empty() {
            std::env::var("HOSTNAME").unwrap_or_else(|_| "viewer".into())
        } else {
            s.name.clone()
        };
        Ok(ResolvedSettings {
            ticket,
            relay,
            bind,
            name,
            reconnect: s.reconnect,
            reconnect_timeout: Duration::from_millis(s.reconnect_timeout_ms.into()),
            latency: gst::ClockTime::from_mseconds(s.latency_ms.into()),
            max_buffers: s.max_buffers as usize,
        })
    }
}

/// Where the element is in its life.
#[derive(Default)]
enum State {
    /// NULL: only the raw settings exist; properties may change.
    #[default]
    Null,
    /// READY: settings resolved; `last` holds the previous session's counters for `stats`.
    Ready {
        settings: Arc<ResolvedSettings>,
        last: Option<Arc<Shared>>,
    },
    /// PAUSED or PLAYING: the session runs on the gst-iroh runtime.
    Started(Started),
}

struct Started {
    settings: Arc<ResolvedSettings>,
    /// Taken out by `create` while it waits, so no lock is held across the wait.
    items: Option<mpsc::Receiver<Item>>,
    /// Tripped by `unlock` (create returns Flushing), replaced by `unlock_stop`.
    unlock: CancellationToken,
    /// Stops the session.
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
    timing: Timing,
    caps: Option<gst::Caps>,
}

/// Maps the host's running time onto ours and marks DISCONT where the timeline breaks.
struct Timing {
    /// local running time = host running time + offset (ns)
    offset: Option<i128>,
    discont: bool,
}

impl Timing {
    fn new() -> Self {
        Timing {
            offset: None,
            discont: true,
        }
    }

    /// Maps host running time onto ours (`now`: our running time); re-anchors on the first
    /// buffer of a session or a > 2 s drift.
    fn map(&mut self, pts: Option<u64>, now: i128) -> (Option<gst::ClockTime>, i128) {
        let Some(pts) = pts else {
            return (None, self.offset.unwrap_or(0));
        };
        let mut offset = *self.offset.get_or_insert(now - pts as i128);
        if (pts as i128 + offset - now).abs() > 2_000_000_000 {
            offset = now - pts as i128;
            self.offset = Some(offset);
            self.discont = true;
        }
        let out = (pts as i128 + offset).max(0) as u64;
        (Some(gst::ClockTime::from_nseconds(out)), offset)
    }

    /// A buffer for one frame: timestamps on our clock, flags, the capture time meta.
    fn buffer(&mut self, meta: FrameMeta, data: Bytes, discont: bool, now: i128) -> gst::Buffer {
        let mut buffer = gst::Buffer::from_slice(data);
        let b = buffer.get_mut().expect("new buffer is writable");
        let (pts, offset) = self.map(meta.pts, now);
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
        if discont || self.discont || meta.flags & flags::DISCONT != 0 {
            f |= gst::BufferFlags::DISCONT;
            self.discont = false;
        }
        b.set_flags(f);
        if let Some(c) = meta.capture_unix_ns {
            gst::ReferenceTimestampMeta::add(b, &UNIX_CAPS, gst::ClockTime::from_nseconds(c), gst::ClockTime::NONE);
        }
        buffer
    }
}

static UNIX_CAPS: LazyLock<gst::Caps> = LazyLock::new(|| gst::Caps::builder("timestamp/x-unix").build());

#[derive(Default)]
pub struct IrohSrc {
    settings: Mutex<Settings>,
    state: Mutex<State>,
}

#[glib::object_subclass]
impl ObjectSubclass for IrohSrc {
    const NAME: &'static str = "GstIrohSrc";
    type Type = super::IrohSrc;
    type ParentType = gst_base::PushSrc;
    type Interfaces = (gst::URIHandler,);
}

impl ObjectImpl for IrohSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let d = Settings::default();
            vec![
                glib::ParamSpecString::builder("ticket")
                    .nick("Ticket")
                    .blurb("Share ticket printed by the host (pp1…)")
                    .build(),
                glib::ParamSpecString::builder("relay")
                    .nick("Relay")
                    .blurb("\"default\" (n0 relays), \"disabled\" (direct only) or a relay URL")
                    .default_value(Some(d.relay.as_str()))
                    .build(),
                glib::ParamSpecString::builder("bind-address")
                    .nick("Bind address")
                    .blurb("Single UDP socket address to bind (e.g. 127.0.0.1:0); empty = all interfaces, random port")
                    .build(),
                glib::ParamSpecString::builder("viewer-name")
                    .nick("Viewer name")
                    .blurb("Name the host sees for this viewer")
                    .build(),
                glib::ParamSpecBoolean::builder("reconnect")
                    .nick("Reconnect")
                    .blurb("Reconnect with backoff when the host goes away or the path breaks")
                    .default_value(d.reconnect)
                    .build(),
                glib::ParamSpecUInt::builder("reconnect-timeout")
                    .nick("Reconnect timeout")
                    .blurb("Give up reconnecting after this long without a connection (ms)")
                    .default_value(d.reconnect_timeout_ms)
                    .build(),
                glib::ParamSpecUInt::builder("latency")
                    .nick("Latency")
                    .blurb("Latency reported downstream (ms): room for network jitter before buffers are late")
                    .default_value(d.latency_ms)
                    .build(),
                glib::ParamSpecUInt::builder("max-buffers")
                    .nick("Max buffers")
                    .blurb("Received chunks queued for the streaming thread before the network read waits")
                    .minimum(8)
                    .default_value(d.max_buffers)
                    .build(),
                glib::ParamSpecUInt::builder("max-bitrate")
                    .nick("Max bitrate")
                    .blurb("Ceiling for a host with several renditions (kbit/s): it serves none above this (0 = no ceiling); may change while playing (applied at the next GOP)")
                    .default_value(d.max_bitrate)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Connection, path, rendition and capture→receive latency statistics")
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        if pspec.name() == "max-bitrate" {
            // the one setting that may change while playing: the session tells the host
            let kbps: u32 = value.get().unwrap();
            self.settings.lock().unwrap().max_bitrate = kbps;
            if let State::Started(st) = &*self.state.lock().unwrap() {
                st.shared.ceiling_kbps.store(kbps, Ordering::Relaxed);
            }
            return;
        }
        if !matches!(*self.state.lock().unwrap(), State::Null) {
            gst::warning!(
                CAT,
                imp = self,
                "property {} can only change in the NULL state: ignored",
                pspec.name()
            );
            return;
        }
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
        if pspec.name() == "stats" {
            return self.stats().to_value();
        }
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
            "max-bitrate" => s.max_bitrate.to_value(),
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
        if transition == gst::StateChange::NullToReady {
            let resolved = ResolvedSettings::try_from(&*self.settings.lock().unwrap());
            match resolved {
                Ok(settings) => {
                    *self.state.lock().unwrap() = State::Ready {
                        settings: Arc::new(settings),
                        last: None,
                    }
                }
                Err(failure) => {
                    failure.post(self);
                    return Err(gst::StateChangeError);
                }
            }
        }
        let result = self.parent_change_state(transition);
        if transition == gst::StateChange::ReadyToNull
            || (transition == gst::StateChange::NullToReady && result.is_err())
        {
            *self.state.lock().unwrap() = State::Null;
        }
        result
    }
}

impl IrohSrc {
    /// The current session's counters, else the last one's, else zeros.
    fn stats(&self) -> gst::Structure {
        let shared = match &*self.state.lock().unwrap() {
            State::Started(st) => Some(st.shared.clone()),
            State::Ready { last, .. } => last.clone(),
            State::Null => None,
        };
        shared.unwrap_or_default().stats.structure()
    }

    fn running_time_now(&self) -> i128 {
        let obj = self.obj();
        match (obj.clock(), obj.base_time()) {
            (Some(clock), Some(base)) => clock.time().saturating_sub(base).nseconds() as i128,
            _ => 0,
        }
    }

    /// Waits for the session's next item. The receiver is taken out of the state for the
    /// wait, so `stop`, `unlock` and the `stats` property never wait for the network.
    fn next_item(&self) -> Result<Item, gst::FlowError> {
        let (mut items, unlock) = {
            let mut state = self.state.lock().unwrap();
            let State::Started(st) = &mut *state else {
                return Err(gst::FlowError::Flushing);
            };
            (st.items.take().ok_or(gst::FlowError::Flushing)?, st.unlock.clone())
        };
        let item = RUNTIME.block_on(async {
            tokio::select! {
                biased;
                _ = unlock.cancelled() => None,
                i = items.recv() => Some(i),
            }
        });
        if let State::Started(st) = &mut *self.state.lock().unwrap()
            && st.items.is_none()
        {
            st.items = Some(items);
        }
        match item {
            None => Err(gst::FlowError::Flushing),
            Some(None) => Err(gst::FlowError::Eos),
            Some(Some(i)) => Ok(i),
        }
    }

    /// Applies one item; a frame becomes the buffer `create` returns.
    fn apply(&self, item: Item) -> Result<Option<gst::Buffer>, gst::FlowError> {
        match item {
            Item::Session => {
                if let State::Started(st) = &mut *self.state.lock().unwrap() {
                    st.timing = Timing::new();
                }
                Ok(None)
            }
            Item::Caps(caps) => self.set_host_caps(caps).map(|()| None),
            Item::Frame { meta, data, discont } => {
                let now = self.running_time_now();
                let mut state = self.state.lock().unwrap();
                let State::Started(st) = &mut *state else {
                    return Err(gst::FlowError::Flushing);
                };
                st.shared.flow.release(data.len());
                Ok(Some(st.timing.buffer(meta, data, discont, now)))
            }
            Item::Eos => Err(gst::FlowError::Eos),
            Item::Error(failure) => {
                failure.post(self);
                Err(gst::FlowError::Error)
            }
        }
    }

    /// Sets the host's caps on the source pad when they changed.
    fn set_host_caps(&self, caps: gst::Caps) -> Result<(), gst::FlowError> {
        {
            let mut state = self.state.lock().unwrap();
            let State::Started(st) = &mut *state else {
                return Err(gst::FlowError::Flushing);
            };
            if st.caps.as_ref() == Some(&caps) {
                return Ok(());
            }
            st.caps = Some(caps.clone());
        }
        gst::info!(CAT, imp = self, "caps from host: {caps}");
        if self.obj().set_caps(&caps).is_err() {
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                ("downstream cannot handle the host's stream ({caps})")
            );
            return Err(gst::FlowError::NotNegotiated);
        }
        Ok(())
    }
}

impl BaseSrcImpl for IrohSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let mut state = self.state.lock().unwrap();
        let State::Ready { settings, .. } = &*state else {
            return Err(gst::error_msg!(
                gst::CoreError::StateChange,
                ("irohsrc started before READY")
            ));
        };
        let settings = settings.clone();
        let (tx, rx) = mpsc::channel(settings.max_buffers);
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared::default());
        let ceiling = self.settings.lock().unwrap().max_bitrate;
        shared.ceiling_kbps.store(ceiling, Ordering::Relaxed);
        let ctx = Ctx {
            element: self.obj().downgrade(),
            settings: settings.clone(),
            tx,
            cancel: cancel.clone(),
            shared: shared.clone(),
        };
        let task = RUNTIME.spawn(run(ctx));
        *state = State::Started(Started {
            settings,
            items: Some(rx),
            unlock: CancellationToken::new(),
            cancel,
            task,
            shared,
            timing: Timing::new(),
            caps: None,
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let st = {
            let mut state = self.state.lock().unwrap();
            match std::mem::take(&mut *state) {
                State::Started(st) => {
                    *state = State::Ready {
                        settings: st.settings.clone(),
                        last: Some(st.shared.clone()),
                    };
                    st
                }
                other => {
                    *state = other;
                    return Ok(());
                }
            }
        };
        st.cancel.cancel();
        // Let the network task close the connection, so the host sees this viewer leave at
        // once rather than after its idle timeout. Bounded.
        let task = st.task;
        net::block_on(async move {
            let _ = tokio::time::timeout(Duration::from_millis(700), task).await;
        });
        Ok(())
    }

    fn event(&self, event: &gst::Event) -> bool {
        if let gst::EventView::CustomUpstream(ev) = event.view()
            && ev.structure().is_some_and(|s| s.name() == "GstForceKeyUnit")
        {
            if let State::Started(st) = &*self.state.lock().unwrap() {
                st.shared.keyframe_wanted.store(true, Ordering::Relaxed);
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
            let resolved = match &*self.state.lock().unwrap() {
                State::Started(st) => Some(st.settings.latency),
                State::Ready { settings, .. } => Some(settings.latency),
                State::Null => None,
            };
            let latency = resolved
                .unwrap_or_else(|| gst::ClockTime::from_mseconds(self.settings.lock().unwrap().latency_ms.into()));
            q.set(true, latency, gst::ClockTime::NONE);
            return true;
        }
        BaseSrcImplExt::parent_query(self, query)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        if let State::Started(st) = &*self.state.lock().unwrap() {
            st.unlock.cancel();
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        if let State::Started(st) = &mut *self.state.lock().unwrap() {
            st.unlock = CancellationToken::new();
        }
        Ok(())
    }
}

impl PushSrcImpl for IrohSrc {
    fn create(&self, _buffer: Option<&mut gst::BufferRef>) -> Result<CreateSuccess, gst::FlowError> {
        loop {
            let item = self.next_item()?;
            if let Some(buffer) = self.apply(item)? {
                return Ok(CreateSuccess::NewBuffer(buffer));
            }
        }
    }
}
