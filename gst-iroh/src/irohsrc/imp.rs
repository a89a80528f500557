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

use super::session::{Ctx, Item, Stats, run};
use crate::net::{self, RUNTIME, Relay};
use crate::protocol::{FrameMeta, flags};
use crate::ticket::Ticket;

pub(super) static CAT: LazyLock<gst::DebugCategory> =
    LazyLock::new(|| gst::DebugCategory::new("irohsrc", gst::DebugColorFlags::empty(), Some("iroh viewer source")));

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
