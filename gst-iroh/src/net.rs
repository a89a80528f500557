//! iroh endpoint construction (relay modes, key file, bind address) and the process-wide
//! tokio runtime both elements hand their network work to.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use iroh::endpoint::{Connection, PortmapperConfig, presets};
use iroh::{Endpoint, RelayConfig, RelayMode, RelayUrl, SecretKey};
use thiserror::Error;

use crate::protocol::SECRET_LEN;

/// One runtime for every element in the process. Two workers: media fanout is light work.
pub static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gst-iroh")
        .enable_all()
        .build()
        .expect("cannot start the gst-iroh tokio runtime")
});

/// Runs `fut` on [`RUNTIME`] and waits for it from a plain (GStreamer or application) thread.
/// Works whether or not the caller is inside some other tokio runtime.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    RUNTIME.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().expect("gst-iroh runtime task panicked")
}

/// Errors while reading a control message.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("{0}")]
    Read(#[from] iroh::endpoint::ReadError),
    #[error("{0}")]
    Write(#[from] iroh::endpoint::WriteError),
    #[error("{0}")]
    Protocol(#[from] crate::protocol::ProtocolError),
    #[error("the stream ended")]
    Ended,
}

/// Reads one control message, keeping leftover bytes in `buf`.
pub async fn read_control(
    recv: &mut iroh::endpoint::RecvStream,
    buf: &mut bytes::BytesMut,
) -> Result<crate::protocol::Control, ControlError> {
    loop {
        if let Some((msg, used)) = crate::protocol::Control::decode(buf)? {
            let _ = buf.split_to(used);
            return Ok(msg);
        }
        match recv.read_chunk(crate::protocol::MAX_CONTROL_LEN).await? {
            Some(chunk) => buf.extend_from_slice(&chunk),
            None => return Err(ControlError::Ended),
        }
    }
}

/// Writes one control message.
pub async fn write_control(
    send: &mut iroh::endpoint::SendStream,
    msg: &crate::protocol::Control,
) -> Result<(), ControlError> {
    send.write_all(&msg.encode()).await?;
    Ok(())
}

/// Which relay an endpoint uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// n0's public relays and DNS address lookup.
    Default,
    /// No relay, no address lookup: direct addresses from the ticket only (LAN, tests).
    Disabled,
    /// A relay of your own (`http://` for a local dev relay, `https://` otherwise).
    Custom(RelayUrl),
}

impl FromStr for Relay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" | "default" => Ok(Relay::Default),
            "disabled" | "none" | "off" => Ok(Relay::Disabled),
            url if url.starts_with("http://") || url.starts_with("https://") => url
                .parse()
                .map(Relay::Custom)
                .map_err(|e| format!("relay URL \"{url}\" is not valid: {e}")),
            other => Err(format!(
                "relay \"{other}\" is not understood: use \"default\", \"disabled\" or an http(s):// URL"
            )),
        }
    }
}

impl fmt::Display for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Relay::Default => f.write_str("default"),
            Relay::Disabled => f.write_str("disabled"),
            Relay::Custom(u) => write!(f, "{u}"),
        }
    }
}

/// Errors from endpoint setup; each says what to do.
#[derive(Debug, Error)]
pub enum NetError {
    #[error("cannot read key file {path}: {source}")]
    KeyRead { path: PathBuf, source: std::io::Error },
    #[error("cannot write key file {path}: {source} (check the directory exists and is writable)")]
    KeyWrite { path: PathBuf, source: std::io::Error },
    #[error("key file {path} is not a gst-iroh key file (line {line}): delete it to make a new identity")]
    KeyFormat { path: PathBuf, line: usize },
    #[error("bind address \"{0}\" is not a socket address like 0.0.0.0:0 or 127.0.0.1:4433")]
    BindAddr(String),
    #[error("cannot bind the iroh endpoint: {0}")]
    Bind(String),
}

/// A host identity: the endpoint key and the ticket secrets (current and revoked).
#[derive(Debug, Clone)]
pub struct Identity {
    /// The iroh endpoint key: the endpoint id (and so the ticket) derives from it.
    pub key: SecretKey,
    /// The access secret in the ticket.
    pub secret: [u8; SECRET_LEN],
    /// Secrets that were revoked: a viewer presenting one is told so.
    pub revoked: Vec<[u8; SECRET_LEN]>,
    /// UDP port the host last bound: reused so the ticket (which holds the addresses) stays
    /// the same across restarts.
    pub port: Option<u16>,
}

fn random_secret() -> [u8; SECRET_LEN] {
    rand::random()
}

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Self {
        Identity {
            key: SecretKey::generate(),
            secret: random_secret(),
            revoked: Vec::new(),
            port: None,
        }
    }

    /// Loads the identity from `path`, creating it (mode 0600) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, NetError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|line| NetError::KeyFormat {
                path: path.into(),
                line,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Self::generate();
                id.save(path)?;
                Ok(id)
            }
            Err(source) => Err(NetError::KeyRead {
                path: path.into(),
                source,
            }),
        }
    }

    /// Replaces the ticket secret with a new one, remembering the old one as revoked.
    pub fn revoke(&mut self) {
        self.revoked.push(self.secret);
        if self.revoked.len() > 64 {
            self.revoked.remove(0);
        }
        self.secret = random_secret();
    }

    fn parse(text: &str) -> Result<Self, usize> {
        let mut key = None;
        let mut secret = None;
        let mut revoked = Vec::new();
        let mut port = None;
        let hex32 = |v: &str| -> Option<[u8; SECRET_LEN]> {
            data_encoding::HEXLOWER_PERMISSIVE
                .decode(v.as_bytes())
                .ok()?
                .try_into()
                .ok()
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or(i + 1)?;
            let v = v.trim();
            match k.trim() {
                "secret-key" => {
                    let b: [u8; 32] = data_encoding::HEXLOWER_PERMISSIVE
                        .decode(v.as_bytes())
                        .ok()
                        .and_then(|b| b.try_into().ok())
                        .ok_or(i + 1)?;
                    key = Some(SecretKey::from_bytes(&b));
                }
                "ticket-secret" => secret = Some(hex32(v).ok_or(i + 1)?),
                "revoked" => revoked.push(hex32(v).ok_or(i + 1)?),
                "port" => port = Some(v.parse().map_err(|_| i + 1)?),
                _ => return Err(i + 1),
            }
        }
        let n = text.lines().count().max(1);
        Ok(Identity {
            key: key.ok_or(n)?,
            secret: secret.ok_or(n)?,
            revoked,
            port,
        })
    }

    /// Writes the identity to `path` with mode 0600 (atomically, see [`write_private`]).
    pub fn save(&self, path: &Path) -> Result<(), NetError> {
        let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
        let mut text = String::from("# gst-iroh host identity: keep it private; delete it for a new ticket\n");
        text += &format!("secret-key = {}\n", hex(&self.key.to_bytes()));
        text += &format!("ticket-secret = {}\n", hex(&self.secret));
        for r in &self.revoked {
            text += &format!("revoked = {}\n", hex(r));
        }
        if let Some(p) = self.port {
            text += &format!("port = {p}\n");
        }
        write_private(path, text.as_bytes()).map_err(|source| NetError::KeyWrite {
            path: path.into(),
            source,
        })
    }
}

/// Writes a private file (mode 0600) atomically: a temp file beside it, synced, renamed over
/// `path`. A reader sees the old contents or the new, never a half-written file; on failure
/// the temp file is removed.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Parses a bind address property ("" = iroh's defaults).
pub fn parse_bind_addr(s: &str) -> Result<Option<SocketAddr>, NetError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| NetError::BindAddr(s.into()))
}

/// Binds an endpoint with the given relay mode, key and bind addresses (empty = iroh's
/// defaults: all interfaces, random ports).
pub async fn bind(
    key: SecretKey,
    relay: &Relay,
    bind_addrs: &[SocketAddr],
    alpns: Vec<Vec<u8>>,
) -> Result<Endpoint, NetError> {
    let mut b = match relay {
        Relay::Default => Endpoint::builder(presets::N0),
        Relay::Disabled => Endpoint::builder(presets::Minimal).portmapper_config(PortmapperConfig::Disabled),
        Relay::Custom(url) => {
            // A plain-http relay is a dev relay: it serves no QUIC address discovery port.
            let cfg = if url.scheme() == "http" {
                RelayConfig::new(url.clone(), None)
            } else {
                RelayConfig::from(url.clone())
            };
            Endpoint::builder(presets::Minimal).relay_mode(RelayMode::Custom(cfg.into()))
        }
    };
    b = b.secret_key(key).alpns(alpns).transport_config(transport_config());
    if !bind_addrs.is_empty() {
        b = b.clear_ip_transports();
        for addr in bind_addrs {
            b = b.bind_addr(*addr).map_err(|e| NetError::Bind(with_causes(&e)))?;
        }
    }
    b.bind().await.map_err(|e| NetError::Bind(with_causes(&e)))
}

/// An error with its causes ("Failed to bind sockets: Address already in use (os error 98)"):
/// iroh's own message alone does not say why.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text
}

/// QUIC settings for media, the same on every end: [`crate::protocol::quic`].
fn transport_config() -> iroh::endpoint::QuicTransportConfig {
    use crate::protocol::quic;
    iroh::endpoint::QuicTransportConfig::builder()
        .max_concurrent_uni_streams(quic::MAX_UNI_STREAMS.into())
        .keep_alive_interval(quic::KEEP_ALIVE)
        .max_idle_timeout(Some(quic::IDLE_TIMEOUT.try_into().expect("10 s fits")))
        .build()
}

/// The selected path of a connection: ("direct" | "relay" | "unknown", RTT).
pub fn path_info(conn: &Connection) -> (&'static str, Option<Duration>) {
    let paths = conn.paths();
    let selected = paths.iter().find(|p| p.is_selected());
    match selected {
        Some(p) if p.is_relay() => ("relay", Some(p.rtt())),
        Some(p) => ("direct", Some(p.rtt())),
        None => ("unknown", None),
    }
}

/// Wall-clock now in ns since the Unix epoch.
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_parsing() {
        assert_eq!("default".parse::<Relay>(), Ok(Relay::Default));
        assert_eq!("disabled".parse::<Relay>(), Ok(Relay::Disabled));
        assert!(matches!("http://127.0.0.1:3340".parse::<Relay>(), Ok(Relay::Custom(_))));
        assert!("ftp://x".parse::<Relay>().unwrap_err().contains("use \"default\""));
    }

    #[test]
    fn key_file_roundtrip_and_errors() {
        let dir = std::env::temp_dir().join(format!("gst-iroh-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("host.key");
        let a = Identity::load_or_create(&path).unwrap();
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.key.public(), b.key.public());
        assert_eq!(a.secret, b.secret);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let mut c = b.clone();
        c.revoke();
        c.save(&path).unwrap();
        let d = Identity::load_or_create(&path).unwrap();
        assert_eq!(d.revoked, vec![a.secret]);
        let mut e = d.clone();
        e.port = Some(4242);
        e.save(&path).unwrap();
        assert_eq!(Identity::load_or_create(&path).unwrap().port, Some(4242));
        assert_ne!(d.secret, a.secret);
        std::fs::write(&path, "secret-key = zz\n").unwrap();
        let e = Identity::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
