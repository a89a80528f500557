//! `pixelpass://TICKET[?property=value&…]`: irohsrc as the URI handler of a share, so
//! `playbin`, `gst-play-1.0` and GStreamer-based players open a ticket like any URL.
//!
//! The query sets irohsrc properties by name (`relay`, `bind-address`, `viewer-name`,
//! `latency`, `reconnect`, …), as srtsrc and ristsrc take theirs: a player that only takes a
//! URI can still reach a host on a LAN without a relay (`?relay=disabled`).

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::imp::IrohSrc;
use crate::ticket::{self, Ticket};

/// A share URI taken apart: the ticket and the properties its query sets.
#[derive(Debug, PartialEq)]
pub(super) struct ShareUri {
    pub(super) ticket: Ticket,
    pub(super) params: Vec<(String, String)>,
}

impl ShareUri {
    pub(super) fn parse(uri: &str) -> Result<ShareUri, String> {
        let rest =
            ticket::strip_scheme(uri.trim()).ok_or_else(|| format!("not a {}:// URI: {uri}", ticket::URI_SCHEME))?;
        let (ticket, query) = rest.split_once('?').unwrap_or((rest, ""));
        let ticket = ticket
            .parse::<Ticket>()
            .map_err(|e| format!("the ticket in the URI is not valid: {e}"))?;
        let params = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Ok((percent_decode(k)?, percent_decode(v)?))
            })
            .collect::<Result<_, String>>()?;
        Ok(ShareUri { ticket, params })
    }
}

/// `%XX` escapes decoded (a relay URL in the query may carry them).
fn percent_decode(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = [bytes.next(), bytes.next()];
        let digit = |d: Option<u8>| d.and_then(|d| (d as char).to_digit(16));
        match (digit(hex[0]), digit(hex[1])) {
            (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
            _ => return Err(format!("a broken %-escape in \"{s}\"")),
        }
    }
    String::from_utf8(out).map_err(|_| format!("\"{s}\" is not UTF-8 once decoded"))
}

impl URIHandlerImpl for IrohSrc {
    const URI_TYPE: gst::URIType = gst::URIType::Src;

    fn protocols() -> &'static [&'static str] {
        &[ticket::URI_SCHEME]
    }

    fn uri(&self) -> Option<String> {
        let ticket = self.obj().property::<Option<String>>("ticket")?;
        Some(ticket.parse::<Ticket>().map_or_else(|_| ticket, |t| t.to_uri()))
    }

    fn set_uri(&self, uri: &str) -> Result<(), glib::Error> {
        let obj = self.obj();
        if obj.current_state() != gst::State::Null {
            return Err(glib::Error::new(
                gst::URIError::BadState,
                "the URI can only change in the NULL state",
            ));
        }
        let share = ShareUri::parse(uri).map_err(|e| glib::Error::new(gst::URIError::BadUri, &e))?;
        // Every value is checked before any is set: a bad URI changes nothing.
        let mut values = Vec::with_capacity(share.params.len());
        for (name, text) in &share.params {
            let pspec = obj
                .find_property(name)
                .filter(|p| p.flags().contains(glib::ParamFlags::WRITABLE) && name != "ticket")
                .ok_or_else(|| {
                    glib::Error::new(
                        gst::URIError::BadUri,
                        &format!("unknown parameter \"{name}\": the query sets irohsrc properties (see gst-inspect-1.0 irohsrc)"),
                    )
                })?;
            let value = glib::Value::deserialize_with_pspec(text, &pspec).map_err(|_| {
                glib::Error::new(
                    gst::URIError::BadUri,
                    &format!("\"{text}\" is not a valid {name} ({})", pspec.value_type()),
                )
            })?;
            values.push((pspec.name(), value));
        }
        for (name, value) in values {
            obj.set_property_from_value(name, &value);
        }
        obj.set_property("ticket", share.ticket.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket {
            addr: iroh::EndpointAddr::new(iroh::SecretKey::from_bytes(&[7; 32]).public()),
            secret: [3; 16],
        }
    }

    #[test]
    fn a_uri_is_a_ticket_and_properties() {
        let t = ticket();
        let uri = format!("pixelpass://{t}?relay=http%3A%2F%2F127.0.0.1%3A3340&viewer-name=Ann%20B&reconnect=false");
        let share = ShareUri::parse(&uri).unwrap();
        assert_eq!(share.ticket, t);
        assert_eq!(
            share.params,
            [
                ("relay".into(), "http://127.0.0.1:3340".into()),
                ("viewer-name".into(), "Ann B".into()),
                ("reconnect".into(), "false".into())
            ]
        );
        assert_eq!(ShareUri::parse(&t.to_uri()).unwrap().params, []);
    }

    #[test]
    fn a_bad_uri_says_what_is_wrong() {
        let e = ShareUri::parse("http://example.com").unwrap_err();
        assert!(e.contains("not a pixelpass:// URI"), "{e}");
        let e = ShareUri::parse("pixelpass://pp1aaaa").unwrap_err();
        assert!(
            e.contains("ticket in the URI is not valid") && e.contains("cut short"),
            "{e}"
        );
        let e = ShareUri::parse(&format!("{}?relay=%zz", ticket().to_uri())).unwrap_err();
        assert!(e.contains("broken %-escape"), "{e}");
    }
}
