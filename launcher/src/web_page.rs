//! The browser viewer's page (web/, published on any static host): where it lives, and the
//! link that opens a ticket in it (`<page>#<ticket>`; the fragment never leaves the browser).

use std::fmt;
use std::str::FromStr;

use gstiroh::ticket::Ticket;

use crate::config::Config;
use crate::events::{Event, Events};

/// The address of a published copy of the browser viewer page (`--web-page`, config
/// `[web] page`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebPage(String);

impl FromStr for WebPage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let page = s.split_once('#').map_or(s, |(page, _)| page);
        let rest = page
            .strip_prefix("https://")
            .or_else(|| page.strip_prefix("http://"))
            .ok_or_else(|| format!("{s:?} is not an http(s) address of the browser viewer page"))?;
        if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
            return Err(format!("{s:?} is not an http(s) address of the browser viewer page"));
        }
        Ok(WebPage(page.to_string()))
    }
}

impl fmt::Display for WebPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The page from `--web-page`, else from the config's `[web] page` (a bad value there is
/// warned about and left out: the share goes on without links).
pub fn configured(flag: Option<&WebPage>, config: &Config, events: &Events) -> Option<WebPage> {
    if let Some(p) = flag {
        return Some(p.clone());
    }
    let configured = config.web.page.as_deref()?;
    match configured.parse() {
        Ok(p) => Some(p),
        Err(e) => {
            events.emit(Event::Warning {
                message: format!("config [web] page: {e}; no browser links"),
            });
            None
        }
    }
}

impl WebPage {
    /// The link that watches `ticket` in this page; None when a browser cannot reach the host
    /// (its ticket names no relay: browsers reach iroh endpoints only through one).
    pub fn link(&self, ticket: &str) -> Option<String> {
        let t: Ticket = ticket.parse().ok()?;
        t.addr.relay_urls().next()?;
        Some(format!("{}#{ticket}", self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(relay: bool) -> String {
        let mut addr = iroh::EndpointAddr::new(iroh::SecretKey::from_bytes(&[2; 32]).public());
        if relay {
            addr.addrs
                .insert(iroh::TransportAddr::Relay("https://relay.example/".parse().unwrap()));
        }
        Ticket { addr, secret: [4; 16] }.to_string()
    }

    #[test]
    fn links_put_the_ticket_in_the_fragment() {
        let page: WebPage = "https://example.org/pixelpass/".parse().unwrap();
        let t = ticket(true);
        assert_eq!(page.link(&t), Some(format!("https://example.org/pixelpass/#{t}")));
        let local: WebPage = "http://127.0.0.1:8000#old".parse().unwrap();
        assert_eq!(local.to_string(), "http://127.0.0.1:8000");
        assert_eq!(page.link(&ticket(false)), None, "no relay, no browser");
        for bad in ["example.org", "ftp://x/", "https://", "https:// x"] {
            assert!(bad.parse::<WebPage>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_flag_wins_over_the_config_and_a_bad_config_value_is_left_out() {
        let events = Events::new(true);
        let mut config = Config::default();
        assert_eq!(configured(None, &config, &events), None);
        config.web.page = Some("https://example.org/pp/".into());
        let from_config = configured(None, &config, &events);
        assert_eq!(
            from_config.map(|p| p.to_string()).as_deref(),
            Some("https://example.org/pp/")
        );
        let flag: WebPage = "http://127.0.0.1:8000/".parse().unwrap();
        assert_eq!(configured(Some(&flag), &config, &events), Some(flag));
        config.web.page = Some("example.org".into());
        assert_eq!(configured(None, &config, &events), None, "warned about, no links");
    }
}
