//! The upstream bandwidth test (`--reconfigure`, and the menu's first run): POST a few bodies to
//! an upload endpoint and time each to its response, as speed-test clients do. The largest
//! completed upload after the first (which also opens the connection) decides; the config
//! keeps 80 % of it as the safe upstream.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Bandwidth, BandwidthStatus, Config};

/// Cloudflare's open speed-test upload endpoint (HTTPS only).
pub const DEFAULT_ENDPOINT: &str = "https://speed.cloudflare.com/__up";
/// The environment variable that names the endpoint (wins over the config).
pub const ENDPOINT_ENV: &str = "PIXELPASS_SPEEDTEST_URL";
/// The share of the raw figure the config keeps: headroom for other traffic.
pub const SAFE_SHARE: f64 = 0.8;
/// Most bytes one test uploads.
const MAX_TOTAL: u64 = 5_000_000;
/// No new upload starts after this.
const SOFT_BUDGET: Duration = Duration::from_secs(5);
/// A test never takes longer than this: a stalled endpoint fails here.
pub const HARD_BOUND: Duration = Duration::from_secs(10);
/// The first upload: it opens the connection (DNS, TCP, TLS) and grows TCP's window, so its
/// time says little; its rate sizes the second.
const FIRST_SIZE: u64 = 100_000;
/// The second upload takes about this long at the first's rate, up to [`SECOND_MAX`] bytes;
/// later ones fill the rest of the budget, so on a slow link the last, largest one decides.
const SECOND_SECS: f64 = 1.0;
const SECOND_MAX: u64 = 1_000_000;

/// One completed upload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub bytes: u64,
    pub secs: f64,
}

impl Sample {
    fn mbps(&self) -> f64 {
        self.bytes_per_sec() * 8.0 / 1e6
    }

    fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-6)
    }
}

/// What a test found.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Raw upstream in Mbit/s, and the bytes and seconds of the upload that decided it.
    Measured { raw_mbps: f64, decided_by: Sample },
    /// What went wrong, for people.
    Failed(String),
}

/// The endpoint: the environment variable, else the config's, else Cloudflare's; an
/// http(s) URL, else an error that says where the bad one came from.
pub fn endpoint(config: &Config, env: Option<String>) -> Result<String, String> {
    let (url, from) = match env.filter(|v| !v.trim().is_empty()) {
        Some(v) => (v, format!("the environment variable {ENDPOINT_ENV}")),
        None => match &config.bandwidth.endpoint {
            Some(v) => (v.clone(), "`endpoint` in the config's [bandwidth] section".to_string()),
            None => return Ok(DEFAULT_ENDPOINT.to_string()),
        },
    };
    let url = url.trim().to_string();
    match reqwest::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(url),
        Ok(_) => Err(format!("{from} is {url:?}: not an http:// or https:// URL")),
        Err(e) => Err(format!("{from} is {url:?}: not a URL ({e})")),
    }
}

/// The next upload's size, or None when the test is done: a small first one, a second sized
/// from the first's rate, then what the last rate fits in the rest of the budget (only if
/// larger than every upload before it: a smaller one would not decide), within the byte total.
pub fn next_size(done: &[Sample], elapsed: Duration) -> Option<u64> {
    let sent: u64 = done.iter().map(|s| s.bytes).sum();
    let left_bytes = MAX_TOTAL.saturating_sub(sent);
    let left_time = SOFT_BUDGET.saturating_sub(elapsed).as_secs_f64();
    if left_bytes == 0 || left_time <= 0.0 {
        return None;
    }
    let last = match done {
        [] => return Some(FIRST_SIZE.min(left_bytes)),
        [first] => {
            let size = (first.bytes_per_sec() * SECOND_SECS) as u64;
            return Some(size.clamp(FIRST_SIZE, SECOND_MAX).min(left_bytes));
        }
        [.., last] => last,
    };
    // 95 % of what fits, so the last upload ends before the budget does.
    let fits = (last.bytes_per_sec() * left_time * 0.95) as u64;
    let size = fits.min(left_bytes);
    let largest = done.iter().map(|s| s.bytes).max().unwrap_or(0);
    (size > largest).then_some(size)
}

/// The upload that decides: the largest after the first (whose time includes opening the
/// connection); the first only when it is the only one.
pub fn decide(done: &[Sample]) -> Option<Sample> {
    let warm = done.get(1..).filter(|w| !w.is_empty()).unwrap_or(done);
    warm.iter().copied().max_by_key(|s| s.bytes)
}

/// The `[bandwidth]` section for an outcome at `now` (the endpoint setting is kept).
pub fn record(old: &Bandwidth, outcome: &Outcome, now: SystemTime) -> Bandwidth {
    let at = Some(rfc3339(now));
    match outcome {
        Outcome::Measured { raw_mbps, .. } => Bandwidth {
            status: BandwidthStatus::Measured,
            upstream_mbps: Some((raw_mbps * SAFE_SHARE * 100.0).round() / 100.0),
            measured_at: at,
            error: None,
            endpoint: old.endpoint.clone(),
        },
        Outcome::Failed(why) => Bandwidth {
            status: BandwidthStatus::Failed,
            upstream_mbps: None,
            measured_at: at,
            error: Some(why.clone()),
            endpoint: old.endpoint.clone(),
        },
    }
}

/// What the user declined: remembered, so the question is not asked again.
pub fn skipped(old: &Bandwidth) -> Bandwidth {
    Bandwidth {
        status: BandwidthStatus::Skipped,
        endpoint: old.endpoint.clone(),
        ..Default::default()
    }
}

/// One line for people about an outcome.
pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Measured { raw_mbps, decided_by } => format!(
            "upstream {raw_mbps:.2} Mbit/s ({:.2} MB in {:.2} s); pixelpass plans with {:.2} Mbit/s (80 %)",
            decided_by.bytes as f64 / 1e6,
            decided_by.secs,
            raw_mbps * SAFE_SHARE
        ),
        Outcome::Failed(why) => format!(
            "the bandwidth test failed: {why}; hosting uses the defaults (`pixelpass --reconfigure` tries again; {ENDPOINT_ENV} names another upload endpoint)"
        ),
    }
}

/// RFC 3339 in UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Runs the test against `url`; with `progress`, draws a progress bar on stderr.
pub async fn measure(url: &str, progress: bool) -> Outcome {
    let client = match client() {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e),
    };
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let bar = progress.then(|| tokio::spawn(draw_progress(sent.clone(), start)));
    let outcome = uploads(&client, url, &sent, start).await;
    if let Some(b) = bar {
        b.abort();
        eprint!("\r\x1b[K");
    }
    outcome
}

fn client() -> Result<reqwest::Client, String> {
    // reqwest is built without a default crypto provider; ring is the one already in the tree.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("pixelpass/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(HARD_BOUND)
        // A redirect would turn the POST into a GET: timed, that is no upload at all.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot set up HTTP: {}", chain(&e)))
}

/// The uploads, one after another, until [`next_size`] says done or something fails.
async fn uploads(client: &reqwest::Client, url: &str, sent: &AtomicU64, start: Instant) -> Outcome {
    let mut done: Vec<Sample> = Vec::new();
    while let Some(size) = next_size(&done, start.elapsed()) {
        let left = HARD_BOUND.saturating_sub(start.elapsed());
        match upload(client, url, size, left).await {
            Ok(secs) => {
                sent.fetch_add(size, Ordering::Relaxed);
                done.push(Sample { bytes: size, secs });
            }
            // A slow link: the uploads that did complete still tell the rate.
            Err(Stop::Timeout) if !done.is_empty() => break,
            Err(Stop::Timeout) => {
                return Outcome::Failed(format!("{url} did not answer within {} s", HARD_BOUND.as_secs()));
            }
            Err(Stop::Failed(why)) => return Outcome::Failed(why),
        }
    }
    match decide(&done) {
        Some(s) => Outcome::Measured {
            raw_mbps: s.mbps(),
            decided_by: s,
        },
        None => Outcome::Failed("no upload completed".into()),
    }
}

enum Stop {
    Timeout,
    Failed(String),
}

/// One POST of `size` bytes: seconds from sending to the response (the endpoint answers after
/// reading the whole body). The response's body is read too, within the same limit: only then
/// can the next upload reuse the connection (no new handshakes, no new slow start).
async fn upload(client: &reqwest::Client, url: &str, size: u64, limit: Duration) -> Result<f64, Stop> {
    let body = vec![b'0'; size as usize];
    let t = Instant::now();
    let exchange = async {
        let resp = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .body(body)
            .send()
            .await?;
        let secs = t.elapsed().as_secs_f64();
        let status = resp.status();
        resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, secs))
    };
    let (status, secs) = match tokio::time::timeout(limit, exchange).await {
        Err(_) => return Err(Stop::Timeout),
        Ok(Err(e)) if e.is_timeout() => return Err(Stop::Timeout),
        Ok(Err(e)) => return Err(Stop::Failed(format!("cannot upload to {url}: {}", chain(&e)))),
        Ok(Ok(r)) => r,
    };
    if status.is_redirection() {
        return Err(Stop::Failed(format!(
            "{url} answered HTTP {status}: redirects are not followed, give the URL it points to"
        )));
    }
    if !status.is_success() {
        return Err(Stop::Failed(format!("{url} answered HTTP {status}")));
    }
    Ok(secs)
}

/// What actually went wrong: the innermost cause ("Connection refused (os error 111)", "failed
/// to lookup address information: …", "invalid peer certificate: …"), not reqwest's wrapping.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(c) = inner.source() {
        inner = c;
    }
    inner.to_string()
}

/// A bar over the time budget and the megabytes sent so far, redrawn ten times a second.
async fn draw_progress(sent: Arc<AtomicU64>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let frac = (start.elapsed().as_secs_f64() / SOFT_BUDGET.as_secs_f64()).min(1.0);
        let filled = (frac * 30.0) as usize;
        eprint!(
            "\r\x1b[Ktesting upstream [{}{}] {:.1} MB sent",
            "█".repeat(filled),
            "░".repeat(30 - filled),
            sent.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(bytes: u64, secs: f64) -> Sample {
        Sample { bytes, secs }
    }

    #[test]
    fn sizes_start_small_then_fill_the_budget() {
        assert_eq!(next_size(&[], Duration::ZERO), Some(100_000));
        // The second takes about a second at the first's rate, 100 kB to 1 MB.
        assert_eq!(next_size(&[s(100_000, 0.2)], Duration::from_millis(200)), Some(500_000));
        assert_eq!(
            next_size(&[s(100_000, 0.02)], Duration::from_millis(20)),
            Some(1_000_000)
        );
        // 0.5 Mbit/s: 100 kB took 1.6 s; the second is not smaller than the first.
        assert_eq!(
            next_size(&[s(100_000, 1.6)], Duration::from_millis(1600)),
            Some(100_000)
        );
        // 4 Mbit/s: 1.2 s used, 3.8 s left at 0.5 MB/s → 95 % of 1.9 MB.
        let done = [s(100_000, 0.2), s(500_000, 1.0)];
        assert_eq!(next_size(&done, Duration::from_millis(1200)), Some(1_805_000));
        // Fast: the byte total caps it.
        let done = [s(100_000, 0.02), s(1_000_000, 0.08)];
        assert_eq!(next_size(&done, Duration::from_millis(100)), Some(3_900_000));
        // Out of time, or no larger upload fits (it would not decide).
        assert_eq!(next_size(&done, Duration::from_secs(6)), None);
        let done = [s(100_000, 2.0), s(100_000, 2.0)];
        assert_eq!(next_size(&done, Duration::from_millis(4000)), None);
        let done = [s(100_000, 0.01), s(1_000_000, 0.01), s(3_900_000, 0.1)];
        assert_eq!(next_size(&done, Duration::from_millis(200)), None, "5 MB sent");
    }

    #[test]
    fn the_largest_upload_after_the_first_decides() {
        let d = decide(&[s(100_000, 0.1), s(1_000_000, 2.0), s(500_000, 0.2)]).unwrap();
        assert_eq!(d, s(1_000_000, 2.0));
        assert!((d.mbps() - 4.0).abs() < 1e-9);
        // The first (with the connection's opening in its time) only when it is the only one.
        assert_eq!(decide(&[s(100_000, 0.5), s(100_000, 0.2)]), Some(s(100_000, 0.2)));
        assert_eq!(decide(&[s(100_000, 0.5)]), Some(s(100_000, 0.5)));
        assert_eq!(decide(&[]), None);
    }

    #[test]
    fn record_keeps_80_percent_and_the_endpoint() {
        let old = Bandwidth {
            endpoint: Some("http://sink/".into()),
            ..Default::default()
        };
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_779_396_076);
        let b = record(
            &old,
            &Outcome::Measured {
                raw_mbps: 10.98,
                decided_by: s(1, 1.0),
            },
            t,
        );
        assert_eq!(b.status, BandwidthStatus::Measured);
        assert_eq!(b.upstream_mbps, Some(8.78));
        assert_eq!(b.measured_at.as_deref(), Some("2026-05-21T20:41:16Z"));
        assert_eq!(b.endpoint, old.endpoint);
        let f = record(&old, &Outcome::Failed("HTTP 500".into()), t);
        assert_eq!((f.status, f.upstream_mbps), (BandwidthStatus::Failed, None));
        assert_eq!(f.error.as_deref(), Some("HTTP 500"));
        assert_eq!(skipped(&old).status, BandwidthStatus::Skipped);
    }

    #[test]
    fn the_environment_wins_over_the_config() {
        let mut c = Config::default();
        assert_eq!(endpoint(&c, None).unwrap(), DEFAULT_ENDPOINT);
        c.bandwidth.endpoint = Some("http://a/".into());
        assert_eq!(endpoint(&c, None).unwrap(), "http://a/");
        assert_eq!(endpoint(&c, Some("http://b/".into())).unwrap(), "http://b/");
        assert_eq!(
            endpoint(&c, Some(" ".into())).unwrap(),
            "http://a/",
            "empty means unset"
        );
    }

    #[test]
    fn a_bad_endpoint_says_where_it_came_from() {
        let mut c = Config::default();
        let e = endpoint(&c, Some("ftp://sink/up".into())).unwrap_err();
        assert!(
            e.contains(ENDPOINT_ENV) && e.contains("not an http:// or https:// URL"),
            "{e}"
        );
        c.bandwidth.endpoint = Some("sink:8080/up".into());
        let e = endpoint(&c, None).unwrap_err();
        assert!(e.contains("`endpoint` in the config's [bandwidth]"), "{e}");
        let e = endpoint(&c, Some("not a url".into())).unwrap_err();
        assert!(e.contains("not a URL"), "{e}");
    }

    /// A TLS server on loopback with a self-signed certificate: accepts one connection and
    /// runs the handshake (the client gives up on the certificate).
    fn self_signed_tls_server() -> u16 {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let cert = CertificateDer::from(key.cert.der().to_vec());
        let pkcs8 = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], pkcs8)
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((tcp, _)) = listener.accept() {
                let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let _ = std::io::Read::read(&mut tls, &mut [0u8; 1]);
            }
        });
        port
    }

    /// The HTTPS path is set up (the crypto provider, the platform's roots) without the
    /// internet: a certificate nobody vouches for is a failure that says so, not a panic.
    #[test]
    fn https_checks_the_certificate_and_says_why_it_fails() {
        let port = self_signed_tls_server();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(measure(&format!("https://127.0.0.1:{port}/__up"), false));
        let Outcome::Failed(why) = out else { panic!("{out:?}") };
        assert!(
            why.contains("cannot upload to https://127.0.0.1") && why.contains("certificate"),
            "{why}"
        );
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
