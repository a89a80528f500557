//! A viewer's life on the host: the state the element shares with its network tasks, the
//! accept loop, the handshake and admission, and what happens when a viewer leaves. What is
//! sent to an admitted viewer is in `sender.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gst::glib;
use gst::prelude::*;
use iroh::Endpoint;
use iroh::endpoint::{Connection, Incoming, RecvStream, SendStream, VarInt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::delivery::Delivery;
use super::imp::CAT;
use super::rendition::Rendition;
use super::sender;
use crate::gop_cache::{GopCache, GopCacheConfig};
use crate::net::{self, Identity, RUNTIME, read_control, write_control};
use crate::protocol::{self, CloseCode, Control};
use crate::ticket::Ticket;

/// How long a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// An aligned keyframe request aims this far past the newest running time received: later
/// than any encoder has got to, so all of them cut on the same frame.
const ALIGN_AHEAD: gst::ClockTime = gst::ClockTime::from_mseconds(300);

/// How viewers are served: the element's settings as typed values.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// A viewer further behind live than this has its backlog dropped.
    pub max_lag: Duration,
    /// A viewer hopeless (or silent) for this long is removed.
    pub slow_timeout: Duration,
    /// Minimum time between two force-key-unit requests upstream.
    pub keyframe_interval: Duration,
}

/// One admitted viewer.
#[derive(Debug)]
pub(super) struct Viewer {
    /// `protocol::viewer_label`: the viewer's short endpoint id and `number`.
    pub id: String,
    /// The host's number for the viewer (from 1), sent in Welcome.
    pub number: u64,
    pub name: String,
    pub endpoint_id: iroh::EndpointId,
    pub conn: Connection,
    pub cancel: CancellationToken,
    /// Why the host ends this viewer (kick, revoke, stop), if it does.
    pub close_as: Mutex<Option<CloseCode>>,
    pub joined: Instant,
    pub bytes_sent: AtomicU64,
    pub dropped_gops: AtomicU64,
    pub cut_gops: AtomicU64,
    pub lag_ms: AtomicU64,
    /// What was written for the viewer and what it reported received.
    pub delivery: Mutex<Delivery>,
    /// Protocol version of its connection (1: the top rendition only).
    pub version: u32,
    /// The most it wants (or the host allows it), kbit/s (0: no ceiling).
    pub max_kbps: AtomicU32,
    /// The rendition it is on, and how often it moved.
    pub rendition: Mutex<String>,
    pub switches: AtomicU64,
    /// Probe bytes it reported received (cumulative).
    pub probe_bytes: AtomicU64,
}

impl Viewer {
    pub fn stats(&self) -> gst::Structure {
        let (path, rtt) = net::path_info(&self.conn);
        gst::Structure::builder("viewer")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("endpoint-id", self.endpoint_id.to_string())
            .field("path", path)
            .field("rtt-ms", rtt.map_or(-1.0, |d| d.as_secs_f64() * 1000.0))
            .field("bytes-sent", self.bytes_sent.load(Ordering::Relaxed))
            .field("dropped-gops", self.dropped_gops.load(Ordering::Relaxed))
            .field("cut-gops", self.cut_gops.load(Ordering::Relaxed))
            .field("lag-ms", self.lag_ms.load(Ordering::Relaxed))
            .field("rendition", self.rendition.lock().unwrap().as_str())
            .field("rendition-switches", self.switches.load(Ordering::Relaxed))
            .field("protocol", self.version)
            .field("max-bitrate", self.max_kbps.load(Ordering::Relaxed))
            .field("connected-s", self.joined.elapsed().as_secs_f64())
            .build()
    }

    /// Ends the viewer with `code` (the first reason given wins).
    pub fn end(&self, code: CloseCode) {
        self.close_as.lock().unwrap().get_or_insert(code);
        self.cancel.cancel();
    }
}

/// Totals over the element's life (viewers that left included).
#[derive(Debug, Default)]
pub(super) struct Totals {
    pub viewers: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub dropped_gops: AtomicU64,
    pub cut_gops: AtomicU64,
    pub keyframe_requests: AtomicU64,
}

/// State shared between the element and its network tasks.
pub(super) struct Shared {
    pub element: glib::WeakRef<super::IrohSink>,
    /// How each rendition's GOP cache is set up.
    pub gop_config: GopCacheConfig,
    /// In pad order (the always pad first).
    pub renditions: Mutex<Vec<Arc<Rendition>>>,
    /// Newest running time (ns) received on any pad: aligned keyframe requests aim past it.
    pub newest_pts: AtomicU64,
    pub identity: Mutex<Identity>,
    pub key_file: Option<PathBuf>,
    pub endpoint: Endpoint,
    pub ticket: Mutex<String>,
    pub viewers: Mutex<BTreeMap<String, Arc<Viewer>>>,
    pub next_viewer: AtomicU64,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
    pub max_viewers: AtomicU32,
    pub limits: Limits,
    /// Last keyframe request, and whether one is deferred to the end of the interval.
    pub fku: Mutex<(Option<Instant>, bool)>,
    pub totals: Totals,
}

impl Shared {
    pub fn post(&self, s: gst::Structure) {
        if let Some(el) = self.element.upgrade() {
            let _ = el.post_message(gst::message::Element::builder(s).src(&el).build());
        }
    }

    /// Asks upstream for a keyframe with all headers, at most once per `keyframe_interval`
    /// (the encoder base class does not throttle these); a request inside the interval is
    /// deferred to its end, not lost.
    pub fn request_keyframe(self: &Arc<Self>) {
        let mut fku = self.fku.lock().unwrap();
        let now = Instant::now();
        let interval = self.limits.keyframe_interval;
        match fku.0 {
            Some(last) if now.duration_since(last) < interval => {
                if fku.1 {
                    return;
                }
                fku.1 = true;
                let this = self.clone();
                RUNTIME.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep_until((last + interval).into()) => {}
                        _ = this.cancel.cancelled() => return,
                    }
                    *this.fku.lock().unwrap() = (Some(Instant::now()), false);
                    this.send_keyframe_event();
                });
            }
            _ => {
                fku.0 = Some(now);
                drop(fku);
                self.send_keyframe_event();
            }
        }
    }

    /// One rendition: a keyframe as soon as possible. Several: a keyframe at the same running
    /// time on every pad, far enough ahead that no encoder has passed it, so every rendition
    /// starts a GOP on the same frame (a viewer can switch there).
    fn send_keyframe_event(&self) {
        let Some(el) = self.element.upgrade() else { return };
        self.totals.keyframe_requests.fetch_add(1, Ordering::Relaxed);
        let pads: Vec<gst::Pad> = self.renditions().iter().filter_map(|r| r.pad.upgrade()).collect();
        let newest = self.newest_pts.load(Ordering::Relaxed);
        let mut b = gst_video::UpstreamForceKeyUnitEvent::builder().all_headers(true);
        if pads.len() > 1 && newest > 0 {
            b = b.running_time(gst::ClockTime::from_nseconds(newest) + ALIGN_AHEAD);
        }
        let ev = b.build();
        gst::debug!(
            CAT,
            obj = el,
            "requesting a keyframe upstream on {} pads: {ev:?}",
            pads.len()
        );
        for p in pads {
            if !p.push_event(ev.clone()) {
                gst::debug!(
                    CAT,
                    obj = el,
                    "upstream of {} did not handle the force-key-unit event",
                    p.name()
                );
            }
        }
    }

    /// The renditions in pad order.
    pub fn renditions(&self) -> Vec<Arc<Rendition>> {
        self.renditions.lock().unwrap().clone()
    }

    /// The renditions top first: highest `bitrate` first, pad order among equals.
    pub fn ladder(&self) -> Vec<Arc<Rendition>> {
        let mut l = self.renditions();
        l.sort_by_key(|r| std::cmp::Reverse(r.kbps()));
        l
    }

    /// The top rendition (what version 1 viewers get).
    pub fn top(&self) -> Option<Arc<Rendition>> {
        self.ladder().into_iter().next()
    }

    pub fn rendition_of(&self, pad: &gst::Pad) -> Option<Arc<Rendition>> {
        self.renditions
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.pad.upgrade().as_ref() == Some(pad))
            .cloned()
    }

    pub fn add_rendition(&self, pad: &gst::Pad) {
        let r = Rendition::new(pad, GopCache::new(self.gop_config));
        self.renditions.lock().unwrap().push(r);
    }

    pub fn remove_rendition(&self, pad: &gst::Pad) {
        self.renditions
            .lock()
            .unwrap()
            .retain(|r| r.pad.upgrade().is_some_and(|p| &p != pad));
    }

    /// Re-encodes the ticket from the endpoint's current address; Some when it changed.
    pub fn update_ticket(&self) -> Option<String> {
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

    pub fn announce_ticket(&self, ticket: &str) {
        self.post(gst::Structure::builder("iroh-ticket").field("ticket", ticket).build());
        if let Some(el) = self.element.upgrade() {
            el.notify("ticket");
        }
    }

    pub fn stats(&self) -> gst::Structure {
        let viewers = self.viewers.lock().unwrap();
        let list: Vec<gst::Structure> = viewers.values().map(|v| v.stats()).collect();
        let sum = |done: &AtomicU64, live: fn(&Viewer) -> &AtomicU64| {
            done.load(Ordering::Relaxed) + viewers.values().map(|v| live(v).load(Ordering::Relaxed)).sum::<u64>()
        };
        let t = &self.totals;
        let ladder = self.ladder();
        let f = ladder.first().map(|r| r.gops.stats()).unwrap_or_default();
        let renditions: Vec<gst::Structure> = ladder
            .iter()
            .map(|r| {
                gst::Structure::builder("rendition")
                    .field("name", r.name())
                    .field("bitrate", r.kbps())
                    .field("measured-kbps", (r.rate() * 8.0 / 1000.0) as u32)
                    .field("gops", r.gops.stats().gops)
                    .build()
            })
            .collect();
        gst::Structure::builder("application/x-irohsink-stats")
            .field("viewers", viewers.len() as u32)
            .field("viewers-total", t.viewers.load(Ordering::Relaxed))
            .field("bytes-sent", sum(&t.bytes_sent, |v| &v.bytes_sent))
            .field("dropped-gops", sum(&t.dropped_gops, |v| &v.dropped_gops))
            .field("cut-gops", sum(&t.cut_gops, |v| &v.cut_gops))
            .field("gops", f.gops)
            .field("cached-bytes", f.cached_bytes as u64)
            .field("waiting-keyframe", f.waiting_keyframe as u32)
            .field("keyframe-requests", t.keyframe_requests.load(Ordering::Relaxed))
            .field("viewer-stats", gst::Array::new(list))
            .field("renditions", gst::Array::new(renditions))
            .build()
    }

    /// Ends every viewer with `code`.
    pub fn end_all(&self, code: CloseCode) {
        let viewers: Vec<Arc<Viewer>> = self.viewers.lock().unwrap().values().cloned().collect();
        for v in viewers {
            v.end(code);
        }
    }
}

/// Accepts connections until the element stops; each viewer gets its own task.
pub(super) async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            i = shared.endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let sh = shared.clone();
        shared.tasks.spawn(async move {
            if let Some(conn) = establish(incoming).await {
                handle_viewer(sh, conn).await;
            }
        });
    }
}

/// Completes the QUIC handshake; answers a version probe and returns None for it.
async fn establish(incoming: Incoming) -> Option<Connection> {
    let conn = match tokio::time::timeout(HELLO_TIMEOUT, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            gst::debug!(CAT, "incoming connection failed: {e}");
            return None;
        }
        Err(_) => return None,
    };
    if conn.alpn() == protocol::ALPN_VERSION_PROBE {
        conn.close(protocol::VERSION.into(), protocol::ALPN);
        return None;
    }
    Some(conn)
}

fn close(conn: &Connection, code: CloseCode, reason: &str) {
    conn.close(VarInt::from_u32(code as u32), reason.as_bytes());
}

async fn refuse(mut send: SendStream, conn: &Connection, code: CloseCode) {
    let reason = code.reason();
    let refusal = Control::Refuse {
        code: code as u32,
        reason: reason.into(),
    };
    let _ = write_control(&mut send, &refusal).await;
    let _ = send.finish();
    // Give the refusal a moment to arrive before the close frame.
    let _ = tokio::time::timeout(Duration::from_millis(300), send.stopped()).await;
    close(conn, code, reason);
}

/// The viewer's control stream and its hello.
struct Hello {
    send: SendStream,
    recv: RecvStream,
    buf: BytesMut,
    secret: [u8; protocol::SECRET_LEN],
    name: String,
    max_kbps: u32,
}

/// Waits for the viewer's hello; closes the connection with a protocol error without one.
async fn read_hello(conn: &Connection) -> Option<Hello> {
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::new();
        let msg = read_control(&mut recv, &mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((send, recv, buf, msg))
    })
    .await;
    let why = match hello {
        Ok(Ok((send, recv, buf, msg))) => {
            // a version 1 hello carries no ceiling
            let (secret, name, max_kbps) = match msg {
                Control::Hello { secret, name } => (secret, name, 0),
                Control::Hello2 { secret, name, max_kbps } => (secret, name, max_kbps),
                _ => return reject(conn, "expected a hello".into()),
            };
            return Some(Hello {
                send,
                recv,
                buf,
                secret,
                name,
                max_kbps,
            });
        }
        Ok(Err(e)) => e,
        Err(_) => "no hello in time".into(),
    };
    reject(conn, why)
}

/// Closes a connection whose viewer sent no valid hello.
fn reject(conn: &Connection, why: String) -> Option<Hello> {
    gst::debug!(
        CAT,
        "viewer {} sent no valid hello: {why}",
        conn.remote_id().fmt_short()
    );
    close(conn, CloseCode::Protocol, "expected a hello");
    None
}

/// Why a viewer with this secret may not watch, if it may not.
fn check_secret(shared: &Shared, secret: &[u8; protocol::SECRET_LEN]) -> Option<CloseCode> {
    let id = shared.identity.lock().unwrap();
    if *secret == id.secret {
        None
    } else if id.revoked.contains(secret) {
        Some(CloseCode::Revoked)
    } else {
        Some(CloseCode::BadSecret)
    }
}

/// Registers the viewer if a seat is free, with where it starts. Admission and registration
/// happen under one lock, so two viewers cannot both take the last seat.
fn admit(shared: &Shared, conn: &Connection, hello: &mut Hello) -> Option<(Arc<Viewer>, sender::Start)> {
    let mut viewers = shared.viewers.lock().unwrap();
    let max = shared.max_viewers.load(Ordering::Relaxed);
    if max > 0 && viewers.len() >= max as usize {
        return None;
    }
    let version = if conn.alpn() == protocol::ALPN_V1 { 1 } else { 2 };
    let start = sender::start(shared, version, hello.max_kbps)?;
    let n = shared.next_viewer.fetch_add(1, Ordering::Relaxed);
    let remote = conn.remote_id();
    let v = Arc::new(Viewer {
        id: protocol::viewer_label(remote.as_bytes(), n),
        number: n,
        name: std::mem::take(&mut hello.name),
        endpoint_id: remote,
        conn: conn.clone(),
        cancel: shared.cancel.child_token(),
        close_as: Mutex::new(None),
        joined: Instant::now(),
        bytes_sent: AtomicU64::new(0),
        dropped_gops: AtomicU64::new(0),
        cut_gops: AtomicU64::new(0),
        lag_ms: AtomicU64::new(0),
        delivery: Mutex::new(Delivery::default()),
        version,
        max_kbps: AtomicU32::new(hello.max_kbps),
        rendition: Mutex::new(String::new()),
        switches: AtomicU64::new(0),
        probe_bytes: AtomicU64::new(0),
    });
    viewers.insert(v.id.clone(), v.clone());
    Some((v, start))
}

async fn handle_viewer(shared: Arc<Shared>, conn: Connection) {
    let Some(mut hello) = read_hello(&conn).await else {
        return;
    };
    let remote = conn.remote_id().fmt_short();
    if let Some(code) = check_secret(&shared, &hello.secret) {
        gst::info!(CAT, "refused {remote}: {}", code.reason());
        refuse(hello.send, &conn, code).await;
        return;
    }
    let Some((viewer, start)) = admit(&shared, &conn, &mut hello) else {
        gst::info!(CAT, "refused {remote}: host is full");
        refuse(hello.send, &conn, CloseCode::HostFull).await;
        return;
    };
    shared.totals.viewers.fetch_add(1, Ordering::Relaxed);
    let welcome = match viewer.version {
        1 => Control::Welcome {
            viewer_id: viewer.number,
        },
        _ => Control::Welcome2 {
            viewer_id: viewer.number,
            renditions: shared
                .ladder()
                .iter()
                .take(protocol::MAX_RENDITIONS)
                .map(|r| protocol::RenditionInfo {
                    name: r.name(),
                    kbps: r.kbps(),
                })
                .collect(),
        },
    };
    let welcomed = write_control(&mut hello.send, &welcome).await.is_ok();
    announce_joined(&shared, &viewer);
    let code = if welcomed {
        RUNTIME.spawn(read_control_stream(
            shared.clone(),
            viewer.clone(),
            hello.recv,
            hello.buf,
        ));
        sender::serve(&shared, &viewer, hello.send, start).await
    } else {
        start.abandon();
        CloseCode::Normal
    };
    let code = viewer.close_as.lock().unwrap().unwrap_or(code);
    close(&conn, code, code.reason());
    viewer_left(&shared, &viewer, code);
}

fn announce_joined(shared: &Shared, viewer: &Viewer) {
    let (path, _) = net::path_info(&viewer.conn);
    gst::info!(CAT, "viewer {} ({}) joined over {path}", viewer.id, viewer.name);
    if let Some(el) = shared.element.upgrade() {
        el.emit_by_name::<()>("viewer-joined", &[&viewer.id, &viewer.name]);
    }
    shared.post(
        gst::Structure::builder("iroh-viewer-joined")
            .field("id", &viewer.id)
            .field("name", &viewer.name)
            .field("endpoint-id", viewer.endpoint_id.to_string())
            .field("path", path)
            .build(),
    );
}

/// Unregisters the viewer, adds its counters to the totals and tells the application.
fn viewer_left(shared: &Shared, viewer: &Viewer, code: CloseCode) {
    shared.viewers.lock().unwrap().remove(&viewer.id);
    viewer.cancel.cancel();
    let t = &shared.totals;
    t.bytes_sent
        .fetch_add(viewer.bytes_sent.load(Ordering::Relaxed), Ordering::Relaxed);
    t.dropped_gops
        .fetch_add(viewer.dropped_gops.load(Ordering::Relaxed), Ordering::Relaxed);
    t.cut_gops
        .fetch_add(viewer.cut_gops.load(Ordering::Relaxed), Ordering::Relaxed);
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
                let now = Instant::now();
                let mut d = viewer.delivery.lock().unwrap();
                d.on_progress(now, seq, capture_unix_ns);
                gst::log!(
                    CAT,
                    "viewer {}: progress GOP {seq}, {} bytes in flight, {:.0} kB/s",
                    viewer.id,
                    d.in_flight(now),
                    d.rate().unwrap_or(0.0) / 1000.0
                );
            }
            Control::KeyframeRequest => shared.request_keyframe(),
            Control::ProbeReport { bytes } => {
                viewer.probe_bytes.store(bytes, Ordering::Relaxed);
                viewer.delivery.lock().unwrap().on_probe_report(Instant::now(), bytes);
            }
            Control::Ceiling { max_kbps } => viewer.max_kbps.store(max_kbps, Ordering::Relaxed),
            _ => {}
        }
    }
}
