//! The page's side of the viewer: `new Viewer(ticket, name, ceilingKbps, emit)` starts watching, and the
//! module calls `emit(type, detail)` for everything the page shows or decodes.
//!
//! Events (`detail` fields):
//! - `status` {text}: connecting, connected, reconnecting …
//! - `connected` {viewerId, renditions, renditionKbps}: the host's renditions, top first,
//!   and each one's video bitrate (what `setCeiling` takes)
//! - `video` {data, pts, key, codec, capture, discont}: one H.264 access unit in Annex B;
//!   `pts` in µs, `codec` (`avc1.…`) when it carries an SPS, `capture` the host's capture
//!   time in ms since the Unix epoch, `discont` after a skipped GOP, a rendition switch or a
//!   reconnect (the decoder must wait for a keyframe).
//! - `audio` {data, pts, codec, sampleRate, channels, discont}: one AAC frame in ADTS.
//! - `rendition` {name, index}: the host moved this viewer to another rendition.
//! - `stats` {path, rttMs, kbps, latencyMs, rendition, gopsSkipped, gopsCut, reconnects},
//!   once a second.
//! - `ended` {kind, text}: the viewer stopped for good (`eos`, `host-full`, `revoked`, …;
//!   `crash` when the module itself failed: the page says so instead of freezing).

mod play;
mod session;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tokio_util::sync::CancellationToken;
use wasm_bindgen::prelude::*;

use crate::messages::{self, Ending};

/// Reads a ticket the way the viewer will: the host's short id, or the message to show
/// (not a ticket, or one without a relay).
#[wasm_bindgen(js_name = checkTicket)]
pub fn check_ticket(text: &str) -> Result<String, JsError> {
    messages::browser_ticket(text)
        .map(|t| t.addr.id.fmt_short().to_string())
        .map_err(|e| JsError::new(&e))
}

/// A running viewer. Dropping it (or `stop()`) leaves the share.
#[wasm_bindgen]
pub struct Viewer {
    shared: Rc<Shared>,
    cancel: CancellationToken,
}

#[wasm_bindgen]
impl Viewer {
    /// Starts watching `ticket` as `name`, asking for at most `ceiling_kbps` of video (0: no
    /// ceiling; see `setCeiling`); `emit(type, detail)` gets the events.
    #[wasm_bindgen(constructor)]
    pub fn new(ticket: &str, name: &str, ceiling_kbps: u32, emit: js_sys::Function) -> Result<Viewer, JsError> {
        let ticket = messages::browser_ticket(ticket).map_err(|e| JsError::new(&e))?;
        report_panics_to(&emit);
        let shared = Rc::new(Shared {
            emit,
            keyframe_wanted: Cell::new(false),
            ceiling_kbps: Cell::new(ceiling_kbps),
            reconnects: Cell::new(0),
        });
        let cancel = CancellationToken::new();
        wasm_bindgen_futures::spawn_local(session::run(ticket, name.to_string(), shared.clone(), cancel.clone()));
        Ok(Viewer { shared, cancel })
    }

    /// The decoder failed: ask the host for a keyframe (rate-limited on its side).
    #[wasm_bindgen(js_name = requestKeyframe)]
    pub fn request_keyframe(&self) {
        self.shared.keyframe_wanted.set(true);
    }

    /// Asks the host for at most `kbps` kbit/s of video (0: no ceiling), for a metered
    /// connection: the host moves this viewer down to the highest rendition within it at its
    /// next GOP boundary (a higher ceiling lets it probe up). A reconnect's hello carries it.
    #[wasm_bindgen(js_name = setCeiling)]
    pub fn set_ceiling(&self, kbps: u32) {
        self.shared.ceiling_kbps.set(kbps);
    }

    /// Leaves the share.
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

thread_local! {
    /// The page's `emit` of the newest viewer, for the panic hook.
    static PANIC_EMIT: RefCell<Option<js_sys::Function>> = const { RefCell::new(None) };
}

/// A panic stops the module for good (wasm aborts): the hook tells the page, as an `ended`
/// event of kind `crash`, so the viewer sees why the picture stopped and what to do instead
/// of a frozen page (and a test sees the panic's message).
fn report_panics_to(emit: &js_sys::Function) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    PANIC_EMIT.with(|e| *e.borrow_mut() = Some(emit.clone()));
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let text = format!("The viewer stopped on an internal error ({info}); reload the page to watch again.");
            let Some(emit) = PANIC_EMIT.with(|e| e.try_borrow().ok().and_then(|e| e.clone())) else {
                return;
            };
            emit_to(
                &emit,
                "ended",
                &[("kind", Field::Str("crash")), ("text", Field::Str(&text))],
            );
        }));
    });
}

/// What the session and the page share (one thread: cells, no locks).
pub(crate) struct Shared {
    emit: js_sys::Function,
    /// The page asked for a keyframe; the next progress report sends the request.
    pub(crate) keyframe_wanted: Cell<bool>,
    /// The ceiling the page asked for (kbit/s, 0: none); the next report sends a change.
    pub(crate) ceiling_kbps: Cell<u32>,
    pub(crate) reconnects: Cell<u64>,
}

/// One event field's value.
pub(crate) enum Field<'a> {
    Str(&'a str),
    Num(f64),
    Bool(bool),
    Bytes(&'a [u8]),
    Strs(&'a [String]),
    Nums(&'a [f64]),
    /// Leaves the field undefined.
    None,
}

/// Calls the page's `emit(kind, {fields})`.
fn emit_to(emit: &js_sys::Function, kind: &str, fields: &[(&str, Field<'_>)]) {
    let detail = js_sys::Object::new();
    for (name, value) in fields {
        let v = match value {
            Field::Str(s) => JsValue::from_str(s),
            Field::Num(n) => JsValue::from_f64(*n),
            Field::Bool(b) => JsValue::from_bool(*b),
            Field::Bytes(b) => js_sys::Uint8Array::from(*b).into(),
            Field::Strs(l) => l.iter().map(|s| JsValue::from_str(s)).collect::<js_sys::Array>().into(),
            Field::Nums(l) => l
                .iter()
                .map(|n| JsValue::from_f64(*n))
                .collect::<js_sys::Array>()
                .into(),
            Field::None => continue,
        };
        let _ = js_sys::Reflect::set(&detail, &JsValue::from_str(name), &v);
    }
    let _ = emit.call2(&JsValue::NULL, &JsValue::from_str(kind), &detail);
}

impl Shared {
    /// Calls the page's `emit(kind, {fields})`.
    pub(crate) fn emit(&self, kind: &str, fields: &[(&str, Field<'_>)]) {
        emit_to(&self.emit, kind, fields);
    }

    pub(crate) fn status(&self, text: &str) {
        self.emit("status", &[("text", Field::Str(text))]);
    }

    pub(crate) fn ended(&self, e: &Ending) {
        self.emit("ended", &[("kind", Field::Str(e.kind)), ("text", Field::Str(&e.text))]);
    }
}

/// Wall-clock time now, ns since the Unix epoch (the host stamps capture times in it).
pub(crate) fn unix_now_ns() -> u64 {
    (js_sys::Date::now() * 1e6) as u64
}
