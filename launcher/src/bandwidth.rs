//! The upstream bandwidth test (`--reconfigure`, and the menu's first run): POST a few bodies to
//! an upload endpoint and time each to its response, as speed-test clients do. The largest
//! completed upload decides; the config keeps 80 % of it as the safe upstream.

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
/// The first two uploads (the first opens the connection and grows TCP's window); later ones
/// are sized to fill the rest of the budget, so on a slow link the last, largest one decides.
const FIRST_SIZES: [u64; 2] = [100_000, 1_000_000];
/// Smallest upload worth timing after the first ones (slow start would dominate below it).
const MIN_LATER: u64 = 500_000;

/// One completed upload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub bytes: u64,
    pub secs: f64,
}

impl Sample {
    fn mbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs.max(1e-6) / 1e6
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

/// The endpoint: the environment variable, else the config's, else Cloudflare's.
pub fn endpoint(config: &Config, env: Option<String>) -> String {
    env.filter(|v| !v.trim().is_empty())
        .or_else(|| config.bandwidth.endpoint.clone())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// The next upload's size, or None when the test is done: the first sizes, then what the rate
/// so far fits in the rest of the budget, within the byte total.
pub fn next_size(done: &[Sample], elapsed: Duration) -> Option<u64> {
    let sent: u64 = done.iter().map(|s| s.bytes).sum();
    let left_bytes = MAX_TOTAL.saturating_sub(sent);
    let left_time = SOFT_BUDGET.saturating_sub(elapsed).as_secs_f64();
    if left_bytes == 0 || left_time <= 0.0 {
        return None;
    }
    if let Some(&first) = FIRST_SIZES.get(done.len()) {
        return Some(first.min(left_bytes));
    }
    let last = done.last()?;
    // 95 % of what fits, so the last upload ends before the budget does.
    let fits = (last.bytes as f64 / last.secs.max(1e-6) * left_time * 0.95) as u64;
    let size = fits.min(left_bytes);
    (size >= MIN_LATER).then_some(size)
}

/// Raw Mbit/s from the largest completed upload.
pub fn decide(done: &[Sample]) -> Option<Sample> {
    done.iter().copied().max_by_key(|s| s.bytes)
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
        Outcome::Failed(why) => format!("the bandwidth test failed: {why}; hosting uses the defaults"),
    }
}

/// RFC 3339 in UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
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
/// reading the whole body).
async fn upload(client: &reqwest::Client, url: &str, size: u64, limit: Duration) -> Result<f64, Stop> {
    let body = vec![b'0'; size as usize];
    let t = Instant::now();
    let req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "text/plain")
        .body(body)
        .send();
    let resp = match tokio::time::timeout(limit, req).await {
        Err(_) => return Err(Stop::Timeout),
        Ok(Err(e)) if e.is_timeout() => return Err(Stop::Timeout),
        Ok(Err(e)) => return Err(Stop::Failed(format!("cannot upload to {url}: {}", chain(&e)))),
        Ok(Ok(r)) => r,
    };
    let secs = t.elapsed().as_secs_f64();
    if !resp.status().is_success() {
        return Err(Stop::Failed(format!("{url} answered HTTP {}", resp.status())));
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
        assert_eq!(
            next_size(&[s(100_000, 0.2)], Duration::from_millis(200)),
            Some(1_000_000)
        );
        // 4 Mbit/s: 2.2 s used, 2.8 s left at 0.5 MB/s → 95 % of 1.4 MB, more than the 1 MB
        // before it.
        let done = [s(100_000, 0.2), s(1_000_000, 2.0)];
        assert_eq!(next_size(&done, Duration::from_millis(2200)), Some(1_330_000));
        // Fast: the byte total caps it.
        let done = [s(100_000, 0.02), s(1_000_000, 0.08)];
        assert_eq!(next_size(&done, Duration::from_millis(100)), Some(3_900_000));
        // Out of time, or too little left to be worth timing.
        assert_eq!(next_size(&done, Duration::from_secs(6)), None);
        let done = [s(100_000, 2.0), s(1_000_000, 2.9)];
        assert_eq!(next_size(&done, Duration::from_millis(4900)), None);
        let done = [s(100_000, 0.01), s(1_000_000, 0.01), s(3_900_000, 0.1)];
        assert_eq!(next_size(&done, Duration::from_millis(200)), None, "5 MB sent");
    }

    #[test]
    fn the_largest_upload_decides() {
        let d = decide(&[s(250_000, 0.1), s(1_000_000, 2.0), s(500_000, 0.2)]).unwrap();
        assert_eq!(d, s(1_000_000, 2.0));
        assert!((d.mbps() - 4.0).abs() < 1e-9);
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
        assert_eq!(endpoint(&c, None), DEFAULT_ENDPOINT);
        c.bandwidth.endpoint = Some("http://a/".into());
        assert_eq!(endpoint(&c, None), "http://a/");
        assert_eq!(endpoint(&c, Some("http://b/".into())), "http://b/");
        assert_eq!(endpoint(&c, Some(" ".into())), "http://a/", "empty means unset");
    }

    /// The HTTPS path is set up (the crypto provider, the platform's roots) without the
    /// internet: a refused connection is a failure that says so, not a panic.
    #[test]
    fn https_is_set_up_and_a_refused_endpoint_fails_with_the_reason() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(measure(&format!("https://127.0.0.1:{port}/__up"), false));
        let Outcome::Failed(why) = out else { panic!("{out:?}") };
        assert!(
            why.contains("cannot upload to https://127.0.0.1") && why.contains("refused"),
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
