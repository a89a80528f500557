//! The viewer's connection to its host, as the native viewer (`irohsrc`) runs it: an endpoint
//! on the ticket's relay (`bind`), dial with the version probe (`dial`), hello and welcome
//! (`handshake`), reconnecting with backoff after the host went away (`run`).

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use iroh::endpoint::{Connection, ConnectionError, RecvStream, SendStream};
use iroh::{Endpoint, RelayConfig, RelayMode, endpoint::presets};
use n0_future::time::{Instant, sleep, timeout};
use pixelpass_protocol::ticket::Ticket;
use pixelpass_protocol::{self as protocol, CloseCode, Control, RenditionInfo};
use tokio_util::sync::CancellationToken;

use super::{Field, Shared};
use crate::messages::{self, Ending};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the viewer keeps dialling a host that went away (irohsrc's default).
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How a connection ended.
pub(super) enum End {
    /// The host sent end-of-stream.
    Eos,
    /// Refused, removed or broken; `retry` in the ending says whether to dial again.
    Failed(Ending),
    /// The page stopped the viewer.
    Cancelled,
}

impl End {
    fn retry(kind: &'static str, text: impl Into<String>) -> End {
        End::Failed(Ending::new(kind, text, true))
    }
}

/// Dials the host until the share ends, the host refuses this viewer, or reconnecting gives
/// up; tells the page how it ended.
pub(super) async fn run(ticket: Ticket, name: String, shared: Rc<Shared>, cancel: CancellationToken) {
    shared.status("connecting to the host through its relay…");
    let endpoint = match bind(&ticket).await {
        Ok(e) => e,
        Err(text) => return shared.ended(&Ending::new("endpoint", text, false)),
    };
    let mut ever_connected = false;
    let mut lost_at: Option<Instant> = None;
    let mut attempt = 0u32;
    loop {
        let mut admitted = false;
        let end = session(&endpoint, &ticket, &name, &shared, &cancel, &mut admitted).await;
        if admitted {
            ever_connected = true;
            lost_at = None;
            attempt = 0;
        }
        let ending = match end {
            End::Eos => break shared.ended(&Ending::new("eos", "the host ended the share", false)),
            End::Cancelled => break,
            End::Failed(e) if !e.retry || !ever_connected => break shared.ended(&e),
            End::Failed(e) => e,
        };
        if lost_at.get_or_insert_with(Instant::now).elapsed() > RECONNECT_TIMEOUT {
            let text = format!(
                "{}; gave up after {} s of reconnecting",
                ending.text,
                RECONNECT_TIMEOUT.as_secs()
            );
            break shared.ended(&Ending::new(ending.kind, text, false));
        }
        attempt += 1;
        shared.reconnects.set(shared.reconnects.get() + 1);
        shared.status(&format!("{}; reconnecting (attempt {attempt})…", ending.text));
        let backoff = Duration::from_millis(200u64 << attempt.min(5)).min(Duration::from_secs(5));
        tokio::select! {
            _ = sleep(backoff) => {}
            _ = cancel.cancelled() => break,
        }
    }
    // An explicit close tells the relay and the host at once (a dropped endpoint does not).
    let _ = timeout(Duration::from_millis(500), endpoint.close()).await;
}

/// This viewer's endpoint: a fresh key, the ticket's relay and nothing else (a browser has no
/// direct paths).
async fn bind(ticket: &Ticket) -> Result<Endpoint, String> {
    let url = ticket.addr.relay_urls().next().cloned().ok_or(messages::NO_RELAY)?;
    Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Custom(RelayConfig::new(url, None).into()))
        .transport_config(transport_config())
        .bind()
        .await
        .map_err(|e| format!("cannot start this viewer's iroh endpoint: {e}"))
}

/// QUIC settings for media, the same on every end: [`pixelpass_protocol::quic`].
fn transport_config() -> iroh::endpoint::QuicTransportConfig {
    use pixelpass_protocol::quic;
    iroh::endpoint::QuicTransportConfig::builder()
        .max_concurrent_uni_streams(quic::MAX_UNI_STREAMS.into())
        .keep_alive_interval(quic::KEEP_ALIVE)
        .max_idle_timeout(Some(quic::IDLE_TIMEOUT.try_into().expect("10 s fits")))
        .build()
}

/// One connection: dial, play until it ends, close it with a code the host understands.
async fn session(
    endpoint: &Endpoint,
    ticket: &Ticket,
    name: &str,
    shared: &Rc<Shared>,
    cancel: &CancellationToken,
    admitted: &mut bool,
) -> End {
    let conn = tokio::select! {
        c = dial(endpoint, ticket) => match c { Ok(c) => c, Err(e) => return e },
        _ = cancel.cancelled() => return End::Cancelled,
    };
    let end = tokio::select! {
        e = connected(&conn, ticket, name, shared, cancel, admitted) => e,
        _ = cancel.cancelled() => End::Cancelled,
    };
    let code = match &end {
        End::Failed(e) if e.kind == "protocol" => CloseCode::Protocol,
        _ => CloseCode::Normal,
    };
    conn.close((code as u32).into(), b"viewer left");
    end
}

/// Opens the QUIC connection; on a failed handshake asks which version the host speaks (a
/// version 1 host is dialled again in version 1).
async fn dial(endpoint: &Endpoint, ticket: &Ticket) -> Result<Connection, End> {
    let unreachable = |e: String| End::retry("unreachable", e);
    match timeout(CONNECT_TIMEOUT, endpoint.connect(ticket.addr.clone(), protocol::ALPN)).await {
        Err(_) => Err(unreachable(format!(
            "cannot reach the host within {} s (is it still sharing? are both sides online?)",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => match probe_version(endpoint, ticket).await {
            Some(1) => timeout(
                CONNECT_TIMEOUT,
                endpoint.connect(ticket.addr.clone(), protocol::ALPN_V1),
            )
            .await
            .map_err(|_| unreachable("the host did not answer in time".into()))?
            .map_err(|e| unreachable(format!("cannot connect to the host: {e}"))),
            Some(v) if v != u64::from(protocol::VERSION) => Err(End::Failed(messages::version_mismatch(v))),
            _ => Err(unreachable(format!("cannot connect to the host: {e}"))),
        },
    }
}

/// Asks a host that refused our ALPN which protocol version it speaks.
async fn probe_version(endpoint: &Endpoint, ticket: &Ticket) -> Option<u64> {
    let probe = endpoint.connect(ticket.addr.clone(), protocol::ALPN_VERSION_PROBE);
    let conn = timeout(Duration::from_secs(3), probe).await.ok()?.ok()?;
    match timeout(Duration::from_secs(3), conn.closed()).await.ok()? {
        ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

/// The reason a closed connection gives, as the page acts on it.
pub(super) fn explain_conn_error(e: &ConnectionError) -> End {
    match e {
        ConnectionError::ApplicationClosed(c) => End::Failed(messages::explain(
            CloseCode::from_u64(c.error_code.into_inner()),
            &String::from_utf8_lossy(&c.reason),
        )),
        ConnectionError::LocallyClosed => End::Cancelled,
        other => End::retry("lost", format!("connection to the host lost: {other}")),
    }
}

/// The control bi-stream, with bytes read but not yet decoded.
pub(super) struct ControlStream {
    pub(super) send: SendStream,
    pub(super) recv: RecvStream,
    pub(super) buf: BytesMut,
    /// The ceiling the host was last told (kbit/s).
    pub(super) ceiling: u32,
}

impl ControlStream {
    /// The next control message; Err when the stream ended or broke.
    pub(super) async fn read(&mut self) -> Result<Control, String> {
        loop {
            match Control::decode(&self.buf) {
                Ok(Some((msg, used))) => {
                    let _ = self.buf.split_to(used);
                    return Ok(msg);
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            match self.recv.read_chunk(protocol::MAX_CONTROL_LEN).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return Err("control stream ended".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    pub(super) async fn write(&mut self, msg: &Control) {
        let _ = self.send.write_all(&msg.encode()).await;
    }
}

/// Hello and welcome, then play.
async fn connected(
    conn: &Connection,
    ticket: &Ticket,
    name: &str,
    shared: &Rc<Shared>,
    cancel: &CancellationToken,
    admitted: &mut bool,
) -> End {
    let (mut control, viewer_id, renditions) =
        match timeout(CONNECT_TIMEOUT, handshake(conn, ticket, name, shared)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return e,
            Err(_) => return End::retry("unreachable", "the host did not answer in time"),
        };
    *admitted = true;
    let names: Vec<String> = renditions.iter().map(|r| r.name.clone()).collect();
    let kbps: Vec<f64> = renditions.iter().map(|r| f64::from(r.kbps)).collect();
    let label = match viewer_id {
        0 => String::new(),
        n => protocol::viewer_label(conn.remote_id().as_bytes(), n),
    };
    shared.status("connected through the relay");
    shared.emit(
        "connected",
        &[
            ("viewerId", Field::Str(&label)),
            ("renditions", Field::Strs(&names)),
            ("renditionKbps", Field::Nums(&kbps)),
        ],
    );
    super::play::play(conn, &mut control, names, shared, cancel).await
}

/// Hello / Welcome on the control stream: the stream, the host's number for this viewer and
/// its renditions; a Refuse becomes the host's reason.
async fn handshake(
    conn: &Connection,
    ticket: &Ticket,
    name: &str,
    shared: &Shared,
) -> Result<(ControlStream, u64, Vec<RenditionInfo>), End> {
    let (send, recv) = conn.open_bi().await.map_err(|e| explain_conn_error(&e))?;
    let mut control = ControlStream {
        send,
        recv,
        buf: BytesMut::new(),
        // (the ceiling now: the page may have changed it since the last connection)
        ceiling: shared.ceiling_kbps.get(),
    };
    let name: String = name.chars().take(protocol::MAX_NAME_LEN / 4).collect();
    let secret = ticket.secret;
    control
        .write(&match conn.alpn() == protocol::ALPN_V1 {
            true => Control::Hello { secret, name },
            false => Control::Hello2 {
                secret,
                name,
                max_kbps: control.ceiling,
            },
        })
        .await;
    match control.read().await {
        Ok(Control::Welcome { viewer_id }) => Ok((control, viewer_id, Vec::new())),
        Ok(Control::Welcome2 { viewer_id, renditions }) => Ok((control, viewer_id, renditions)),
        Ok(Control::Refuse { code, reason }) => Err(End::Failed(messages::explain(
            CloseCode::from_u64(code.into()),
            &reason,
        ))),
        Ok(other) => Err(End::Failed(Ending::new(
            "protocol",
            format!("protocol error: expected a welcome, got {other:?}"),
            false,
        ))),
        Err(e) => Err(match conn.close_reason() {
            Some(ce) => explain_conn_error(&ce),
            None => End::retry("unreachable", format!("the host did not answer: {e}")),
        }),
    }
}
