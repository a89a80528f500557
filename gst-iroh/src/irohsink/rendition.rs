//! One rendition on the host: a sink pad (`IrohSinkPad`, with its `rendition-name` and
//! `bitrate` properties), the GOP cache it fills, and what its ingest remembers (MPEG-TS
//! tables, caps stream headers, the segment).

use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::gop_cache::GopCache;
use crate::psi_cache::PsiCache;

/// What a rendition's ingest keeps between buffers.
#[derive(Default)]
pub(super) struct Ingest {
    pub psi: Option<PsiCache>,
    /// The caps `streamheader` buffers: the same bytes arriving as HEADER data are dropped
    /// (new viewers get them from the caps), as multisocketsink does.
    pub caps_headers: Vec<Bytes>,
    /// The segment of a request pad (the always pad's is BaseSink's).
    pub segment: Option<gst::FormattedSegment<gst::ClockTime>>,
}

/// One encoding of the shared content, as the host serves it.
pub(super) struct Rendition {
    pub pad: glib::WeakRef<gst::Pad>,
    pub gops: GopCache,
    pub ingest: Mutex<Ingest>,
}

impl Rendition {
    pub fn new(pad: &gst::Pad, gops: GopCache) -> Arc<Self> {
        Arc::new(Rendition {
            pad: pad.downgrade(),
            gops,
            ingest: Mutex::new(Ingest::default()),
        })
    }

    fn settings(&self) -> PadSettings {
        self.pad
            .upgrade()
            .and_then(|p| p.downcast::<IrohSinkPad>().ok())
            .map(|p| p.imp().settings.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// The name people see: the pad's `rendition-name`, else the pad name.
    pub fn name(&self) -> String {
        let s = self.settings();
        if !s.name.is_empty() {
            return s.name;
        }
        self.pad.upgrade().map(|p| p.name().to_string()).unwrap_or_default()
    }

    /// The pad's `bitrate` (kbit/s, 0 = not given).
    pub fn kbps(&self) -> u32 {
        self.settings().kbps
    }

    /// Bytes/s this rendition carries: measured, else its nominal bitrate.
    pub fn rate(&self) -> f64 {
        self.gops
            .rate()
            .unwrap_or_else(|| f64::from(self.kbps()) * 1000.0 / 8.0)
    }
}

#[derive(Debug, Clone, Default)]
struct PadSettings {
    name: String,
    kbps: u32,
}

/// The implementation of [`IrohSinkPad`].
#[derive(Default)]
pub struct SinkPadImp {
    settings: Mutex<PadSettings>,
}

#[glib::object_subclass]
impl ObjectSubclass for SinkPadImp {
    const NAME: &'static str = "GstIrohSinkPad";
    type Type = IrohSinkPad;
    type ParentType = gst::Pad;
}

impl ObjectImpl for SinkPadImp {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("rendition-name")
                    .nick("Rendition name")
                    .blurb("Name of this rendition in stats and events (e.g. \"720p\"); empty = the pad name")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("bitrate")
                    .nick("Bitrate")
                    .blurb(
                        "Nominal bitrate of this rendition (kbit/s): orders the ladder (highest = top) until measured",
                    )
                    .mutable_ready()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        match pspec.name() {
            "rendition-name" => s.name = value.get::<Option<String>>().unwrap().unwrap_or_default(),
            "bitrate" => s.kbps = value.get().unwrap(),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "rendition-name" => s.name.to_value(),
            "bitrate" => s.kbps.to_value(),
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for SinkPadImp {}
impl PadImpl for SinkPadImp {}

glib::wrapper! {
    /// A sink pad of `irohsink`: one rendition, with its name and nominal bitrate.
    pub struct IrohSinkPad(ObjectSubclass<SinkPadImp>) @extends gst::Pad, gst::Object;
}
