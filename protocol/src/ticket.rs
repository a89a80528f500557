//! The share ticket: the host's iroh endpoint address plus the access secret.
//!
//! Text form: `pp1` followed by lowercase unpadded base32 of
//! `version(1) | endpoint id(32) | secret(16) | varint n | n × address`, where an address is
//! `0 | varint len | relay URL` or `4 | ipv4(4) | port(2)` or `6 | ipv6(16) | port(2)`.
//! Pure data: no network, no GStreamer.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use iroh_base::{EndpointAddr, EndpointId, RelayUrl, TransportAddr};
use thiserror::Error;

use crate::{Reader, SECRET_LEN, put_varint};

/// Text prefix of every ticket.
pub const PREFIX: &str = "pp1";
const TICKET_VERSION: u8 = 1;
const MAX_ADDRS: u64 = 64;
const MAX_RELAY_URL_LEN: usize = 2048;

/// A share ticket: where the host is and the secret that admits a viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The host's endpoint id and the addresses it can be reached at.
    pub addr: EndpointAddr,
    /// The access secret the viewer presents in its hello.
    pub secret: [u8; SECRET_LEN],
}

/// Why a ticket string could not be read. The text says what to do.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("the ticket is empty: paste the whole ticket the host printed")]
    Empty,
    #[error("it does not start with \"{PREFIX}\": paste the whole ticket the host printed")]
    WrongPrefix,
    #[error("it contains characters a ticket never has (at position {0}): check the copy and paste")]
    BadCharacters(usize),
    #[error("it is cut short: paste the whole ticket the host printed")]
    Truncated,
    #[error("it was made by a newer pixelpass (ticket format {0}): update this viewer")]
    UnsupportedVersion(u8),
    #[error("the host key in it is not valid: check the copy and paste")]
    BadKey,
    #[error("it has a malformed address: check the copy and paste")]
    BadAddress,
    #[error("it has {0} extra bytes at the end: check the copy and paste")]
    Trailing(usize),
}

const B32: data_encoding::Encoding = data_encoding::BASE32_NOPAD;

/// The URI scheme of a share: `pixelpass://pp1…` names a ticket wherever a URI goes (GStreamer
/// players through irohsrc's URI handler, a desktop's scheme handler, a link).
pub const URI_SCHEME: &str = "pixelpass";

/// What follows `pixelpass:` and an optional `//`, when `s` is a share URI (any case).
pub fn strip_scheme(s: &str) -> Option<&str> {
    let n = URI_SCHEME.len();
    // byte-wise: the scheme is ASCII, so a match ends on a char boundary (pasted text may not)
    let b = s.as_bytes();
    if b.len() <= n || !b[..n].eq_ignore_ascii_case(URI_SCHEME.as_bytes()) || b[n] != b':' {
        return None;
    }
    let rest = &s[n + 1..];
    Some(rest.strip_prefix("//").unwrap_or(rest))
}

impl Ticket {
    /// The share URI: `pixelpass://` and the ticket.
    pub fn to_uri(&self) -> String {
        format!("{URI_SCHEME}://{self}")
    }

    /// Binary form (before base32).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.push(TICKET_VERSION);
        out.extend_from_slice(self.addr.id.as_bytes());
        out.extend_from_slice(&self.secret);
        let addrs: Vec<_> = self
            .addr
            .addrs
            .iter()
            .filter(|a| matches!(a, TransportAddr::Relay(_) | TransportAddr::Ip(_)))
            .collect();
        put_varint(&mut out, addrs.len() as u64);
        for a in addrs {
            match a {
                TransportAddr::Relay(url) => {
                    out.push(0);
                    let s = url.to_string();
                    put_varint(&mut out, s.len() as u64);
                    out.extend_from_slice(s.as_bytes());
                }
                TransportAddr::Ip(SocketAddr::V4(v4)) => {
                    out.push(4);
                    out.extend_from_slice(&v4.ip().octets());
                    out.extend_from_slice(&v4.port().to_be_bytes());
                }
                TransportAddr::Ip(SocketAddr::V6(v6)) => {
                    out.push(6);
                    out.extend_from_slice(&v6.ip().octets());
                    out.extend_from_slice(&v6.port().to_be_bytes());
                }
                _ => unreachable!("filtered above"),
            }
        }
        out
    }

    /// Parses the binary form.
    pub fn from_bytes(b: &[u8]) -> Result<Self, TicketError> {
        // version + id + secret + address count: anything shorter was cut in the copy
        if b.len() < 2 + 32 + SECRET_LEN {
            return Err(TicketError::Truncated);
        }
        let mut r = Reader::new(b);
        let version = r.u8().ok_or(TicketError::Truncated)?;
        if version != TICKET_VERSION {
            return Err(TicketError::UnsupportedVersion(version));
        }
        let id_bytes: [u8; 32] = take(&mut r, 32)?.try_into().unwrap();
        let id = EndpointId::from_bytes(&id_bytes).map_err(|_| TicketError::BadKey)?;
        let secret: [u8; SECRET_LEN] = take(&mut r, SECRET_LEN)?.try_into().unwrap();
        let n = r
            .varint()
            .map_err(|_| TicketError::BadAddress)?
            .ok_or(TicketError::Truncated)?;
        if n > MAX_ADDRS {
            return Err(TicketError::BadAddress);
        }
        let mut addr = EndpointAddr::new(id);
        for _ in 0..n {
            addr.addrs.insert(read_addr(&mut r)?);
        }
        if r.remaining() != 0 {
            return Err(TicketError::Trailing(r.remaining()));
        }
        Ok(Ticket { addr, secret })
    }
}

/// `n` bytes, or the ticket was cut short.
fn take<'a>(r: &mut Reader<'a>, n: usize) -> Result<&'a [u8], TicketError> {
    r.bytes(n).ok_or(TicketError::Truncated)
}

/// One address: `0 | varint len | relay URL`, `4 | IPv4 | port` or `6 | IPv6 | port`.
fn read_addr(r: &mut Reader<'_>) -> Result<TransportAddr, TicketError> {
    let ip_port = |r: &mut Reader<'_>, ip: IpAddr| -> Result<TransportAddr, TicketError> {
        let port = u16::from_be_bytes(take(r, 2)?.try_into().unwrap());
        Ok(TransportAddr::Ip(SocketAddr::new(ip, port)))
    };
    match r.u8().ok_or(TicketError::Truncated)? {
        0 => {
            let url = r
                .string("relay URL", MAX_RELAY_URL_LEN)
                .map_err(|_| TicketError::BadAddress)?
                .ok_or(TicketError::Truncated)?;
            Ok(TransportAddr::Relay(
                RelayUrl::from_str(&url).map_err(|_| TicketError::BadAddress)?,
            ))
        }
        4 => {
            let ip: [u8; 4] = take(r, 4)?.try_into().unwrap();
            ip_port(r, IpAddr::V4(Ipv4Addr::from(ip)))
        }
        6 => {
            let ip: [u8; 16] = take(r, 16)?.try_into().unwrap();
            ip_port(r, IpAddr::V6(Ipv6Addr::from(ip)))
        }
        _ => Err(TicketError::BadAddress),
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", B32.encode(&self.to_bytes()).to_ascii_lowercase())
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    /// Takes the ticket alone or as a share URI (`pixelpass://pp1…`).
    fn from_str(s: &str) -> Result<Self, TicketError> {
        let s = s.trim();
        let (s, skipped) = match strip_scheme(s) {
            Some(rest) => (rest.trim_end_matches('/'), s.len() - rest.len()),
            None => (s, 0),
        };
        if s.is_empty() {
            return Err(TicketError::Empty);
        }
        let body = s
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .map(|_| &s[PREFIX.len()..])
            .ok_or(TicketError::WrongPrefix)?;
        if let Some(i) = body.find(|c: char| !c.is_ascii_alphanumeric() || matches!(c, '0' | '1' | '8' | '9')) {
            return Err(TicketError::BadCharacters(skipped + PREFIX.len() + i));
        }
        let bytes = B32
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| TicketError::Truncated)?;
        Self::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ticket {
        let id = iroh_base::SecretKey::from_bytes(&[3; 32]).public();
        let addr = EndpointAddr::new(id)
            .with_ip_addr("127.0.0.1:4242".parse().unwrap())
            .with_ip_addr("[::1]:4243".parse().unwrap())
            .with_relay_url("http://127.0.0.1:3340".parse().unwrap());
        Ticket {
            addr,
            secret: [9; SECRET_LEN],
        }
    }

    #[test]
    fn roundtrip() {
        let t = sample();
        let s = t.to_string();
        assert!(s.starts_with("pp1"));
        assert_eq!(s.parse::<Ticket>(), Ok(t.clone()));
        // whitespace around a pasted ticket and upper case are fine
        assert_eq!(format!("  {}\n", s.to_uppercase()).parse::<Ticket>(), Ok(t));
    }

    #[test]
    fn the_share_uri_names_the_same_ticket() {
        let t = sample();
        let uri = t.to_uri();
        assert_eq!(uri, format!("pixelpass://{t}"));
        for form in [
            uri.clone(),
            format!("PixelPass://{t}/"),
            format!("pixelpass:{t}"),
            format!(" {uri}\n"),
        ] {
            assert_eq!(form.parse::<Ticket>(), Ok(t.clone()), "{form}");
        }
        assert_eq!("pixelpass://".parse::<Ticket>(), Err(TicketError::Empty));
        assert_eq!("pixelpass://hello".parse::<Ticket>(), Err(TicketError::WrongPrefix));
        // the position counts from the start of what was pasted
        assert_eq!(
            "pixelpass://pp1abc!def".parse::<Ticket>(),
            Err(TicketError::BadCharacters(18))
        );
        assert_eq!(strip_scheme("pixelpassx://pp1"), None);
        // found by the fuzzer: a multi-byte character where the ':' would be
        assert_eq!(strip_scheme("pixelpas\u{85}x"), None);
        assert_eq!("pixelpas\u{85}x".parse::<Ticket>(), Err(TicketError::WrongPrefix));
        assert_eq!(strip_scheme("http://pp1"), None);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let s = sample().to_string();
        assert_eq!("".parse::<Ticket>(), Err(TicketError::Empty));
        assert_eq!("hello".parse::<Ticket>(), Err(TicketError::WrongPrefix));
        assert_eq!("pp1abc!def".parse::<Ticket>(), Err(TicketError::BadCharacters(6)));
        assert_eq!(s[..40].parse::<Ticket>(), Err(TicketError::Truncated));
        let mut bytes = sample().to_bytes();
        bytes[0] = 9;
        assert_eq!(Ticket::from_bytes(&bytes), Err(TicketError::UnsupportedVersion(9)));
        let mut bytes = sample().to_bytes();
        bytes.push(0);
        assert_eq!(Ticket::from_bytes(&bytes), Err(TicketError::Trailing(1)));
        let mut bytes = sample().to_bytes();
        bytes[1 + 32 + SECRET_LEN] = 0x7f; // address count far beyond what follows
        assert!(Ticket::from_bytes(&bytes).is_err());
        let mut bytes = sample().to_bytes();
        bytes[1 + 32 + SECRET_LEN + 1] = 9; // unknown address kind
        assert_eq!(Ticket::from_bytes(&bytes), Err(TicketError::BadAddress));
        assert!(TicketError::Truncated.to_string().contains("paste the whole ticket"));
    }

    #[test]
    fn never_panics_on_prefixes_of_valid_bytes() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            assert!(Ticket::from_bytes(&bytes[..cut]).is_err());
        }
    }
}
