//! What the page tells a person: a ticket it cannot use, and why a host refused or removed
//! this viewer. The refusal texts come from the protocol crate, as the native viewer's do, so
//! a person reads the same thing in a browser as in a terminal. Pure.

use pixelpass_protocol::CloseCode;
use pixelpass_protocol::ticket::Ticket;

/// Why the page will not dial a ticket.
pub const NO_RELAY: &str = "this share is not reachable from a browser: the host shares with the relay disabled, \
     and a browser can only reach a host through a relay (ask the host to share with a relay, e.g. the default one, \
     or watch with pixelpass)";

/// The ticket in `text` (a bare ticket, a `pixelpass://` URI, or a page link's fragment
/// `#pp1…`), if a browser can dial it: it must name a relay.
pub fn browser_ticket(text: &str) -> Result<Ticket, String> {
    let text = text.trim();
    let text = text.rsplit_once('#').map_or(text, |(_, fragment)| fragment);
    let ticket: Ticket = text.parse().map_err(|e| format!("ticket is not valid: {e}"))?;
    if ticket.addr.relay_urls().next().is_none() {
        return Err(NO_RELAY.into());
    }
    Ok(ticket)
}

/// How a connection ended, as the page acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// A short machine-readable kind (`host-full`, `revoked`, ...), the native viewer's
    /// error reasons.
    pub kind: &'static str,
    /// What a person reads.
    pub text: String,
    /// Whether dialling again may help (the host stopped or dropped this viewer as slow).
    pub retry: bool,
}

impl Ending {
    /// An ending of `kind` with `text`; `retry`: dial again.
    pub fn new(kind: &'static str, text: impl Into<String>, retry: bool) -> Self {
        Ending {
            kind,
            text: text.into(),
            retry,
        }
    }
}

/// The text for a close code (or refusal) from the host, and whether to reconnect: the
/// native viewer's words (from the protocol crate), with the native viewer's error kind.
pub fn explain(code: CloseCode, reason: &str) -> Ending {
    let kind = match code {
        CloseCode::HostFull => "host-full",
        CloseCode::BadSecret => "bad-secret",
        CloseCode::Revoked => "revoked",
        CloseCode::Kicked => "kicked",
        CloseCode::Protocol => "protocol",
        CloseCode::Slow | CloseCode::Normal | CloseCode::HostStopped => "lost",
    };
    let (text, retry) = code.viewer_text(reason);
    Ending::new(kind, text, retry)
}

/// The host answered the version probe with another version: say which side to update.
pub fn version_mismatch(host: u64) -> Ending {
    let ours = pixelpass_protocol::VERSION;
    let update = if host > u64::from(ours) {
        "reload this page (it may be out of date)"
    } else {
        "the host must update"
    };
    Ending::new(
        "version",
        format!("host speaks protocol v{host}, this viewer v{ours}: {update}"),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use iroh_base::{EndpointAddr, RelayUrl, SecretKey, TransportAddr};

    fn ticket(relay: Option<&str>) -> String {
        let mut addr = EndpointAddr::new(SecretKey::from_bytes(&[3; 32]).public());
        addr.addrs.insert(TransportAddr::Ip("192.0.2.1:4433".parse().unwrap()));
        if let Some(r) = relay {
            addr.addrs.insert(TransportAddr::Relay(r.parse::<RelayUrl>().unwrap()));
        }
        Ticket { addr, secret: [1; 16] }.to_string()
    }

    #[test]
    fn a_ticket_needs_a_relay() {
        let t = ticket(Some("http://127.0.0.1:3340"));
        assert!(browser_ticket(&t).is_ok());
        assert!(browser_ticket(&format!("  pixelpass://{t} ")).is_ok());
        assert!(browser_ticket(&format!("https://example.org/pixelpass/#{t}")).is_ok());
        assert_eq!(browser_ticket(&ticket(None)), Err(NO_RELAY.to_string()));
        let e = browser_ticket("pp1abc").unwrap_err();
        assert!(e.starts_with("ticket is not valid: "), "{e}");
    }

    #[test]
    fn refusals_say_what_the_native_viewer_says() {
        assert_eq!(
            explain(CloseCode::HostFull, "").text,
            "host is full: it already has its maximum number of viewers"
        );
        assert!(!explain(CloseCode::Revoked, "").retry);
        assert!(explain(CloseCode::HostStopped, "").retry);
        assert!(version_mismatch(3).text.contains("v3, this viewer v2"));
    }
}
