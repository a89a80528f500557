//! `pixelpass --reconfigure`, the upstream bandwidth test, against a real HTTP upload sink
//! written here: behind a `tbf`-limited veth in a network namespace of this test's own (its
//! name carries the PID; deleted on every exit path) for the rates, on loopback for the
//! failures.

use pixelpass_test_support as support;

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::TempDir;

mod sink;
use sink::{Answer, sink, sink_counting};

const BIN: &str = env!("CARGO_BIN_EXE_pixelpass");

/// The test's time budget (no upload starts after it) and its hard bound (a stalled endpoint
/// fails there), as the README and `--help` state them.
const BUDGET: Duration = Duration::from_secs(5);
const BOUND: Duration = Duration::from_secs(10);
/// Slack for a loaded 2-core machine on top of any time limit.
const SLACK: Duration = Duration::from_secs(5);

/// `pixelpass --reconfigure` (prefixed by `wrap`, e.g. `ip netns exec NS`), with its own
/// config: exit code, stdout+stderr, and how long it took.
fn reconfigure(wrap: &[&str], config: &Path, url: &str) -> (Option<i32>, String, Duration) {
    let mut argv: Vec<&str> = wrap.to_vec();
    argv.extend([BIN, "--reconfigure"]);
    let t = Instant::now();
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .env("XDG_CONFIG_HOME", config)
        .env("PIXELPASS_SPEEDTEST_URL", url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text, t.elapsed())
}

/// The `[bandwidth]` section written.
fn bandwidth_of(config: &Path) -> toml::Value {
    let text = std::fs::read_to_string(config.join("pixelpass/config.toml")).expect("a config was written");
    let v: toml::Value = toml::from_str(&text).unwrap();
    v["bandwidth"].clone()
}

/// A network namespace with a veth to this one; the namespace side's egress (the upload) is
/// rate-limited with tbf. Deleted on drop (the veth goes with it).
struct Netns {
    name: String,
    inner_dev: String,
    host_ip: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Netns {
        let pid = std::process::id();
        let (a, b) = (((pid / 64) % 256) as u8, ((pid % 64) * 4) as u8);
        let ns = Netns {
            name: format!("ppbw{pid}"),
            inner_dev: format!("ppbw{pid}n"),
            host_ip: Ipv4Addr::new(10, 213, a, b + 1),
        };
        let outer = format!("ppbw{pid}h");
        ip(&["netns", "add", &ns.name]);
        // From here on, Drop deletes the namespace whatever fails.
        ip(&["link", "add", &outer, "type", "veth", "peer", "name", &ns.inner_dev]);
        ip(&["link", "set", &ns.inner_dev, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        let inner_ip = format!("10.213.{a}.{}/30", b + 2);
        ns.exec(&["ip", "addr", "add", &inner_ip, "dev", &ns.inner_dev]);
        ns.exec(&["ip", "link", "set", &ns.inner_dev, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, cmd: &[&str]) {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        ip(&args);
    }

    fn limit(&self, mbit: u32) {
        let rate = format!("{mbit}mbit");
        // 25 ms of data: a smaller bucket than the kernel's timer granularity lets tbf fall
        // short of its rate on a busy machine.
        let burst = format!("{}kbit", mbit * 25);
        let dev = &self.inner_dev;
        self.exec(&[
            "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst, "latency", "400ms",
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Root and `ip`/`tc`, or why not.
fn netns_missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    ["ip", "tc"]
        .iter()
        .find(|c| !support::have(c))
        .map(|c| format!("{c} is not installed (iproute2)"))
}

#[test]
fn raw_upstream_is_within_0_85_to_1_05_of_the_link_rate() {
    if let Some(why) = netns_missing() {
        support::skip(&why);
        return;
    }
    let ns = Netns::new();
    let url = format!("http://{}/__up", sink(ns.host_ip, Answer::Ok));
    // 1 Mbit/s: below it, a second upload of a fixed 1 MB would not fit the budget.
    for rate in [1u32, 4, 16] {
        ns.limit(rate);
        let config = TempDir::new("bw-rate");
        let (code, out, took) = reconfigure(&["ip", "netns", "exec", &ns.name], config.path(), &url);
        assert_eq!(code, Some(0), "{out}");
        let b = bandwidth_of(config.path());
        assert_eq!(b["status"].as_str(), Some("measured"), "{b}");
        let safe = b["upstream_mbps"].as_float().unwrap();
        let raw = safe / 0.8;
        let ratio = raw / f64::from(rate);
        eprintln!(
            "tbf {rate} Mbit/s: raw {raw:.2} Mbit/s ({:.0} % of the rate), stored {safe:.2}, took {:.1} s; pixelpass said: {}",
            ratio * 100.0,
            took.as_secs_f64(),
            out.lines().next().unwrap_or("")
        );
        assert!((0.85..=1.05).contains(&ratio), "raw {raw:.2} at {rate} Mbit/s: {out}");
        assert!(took < BUDGET + SLACK, "about 5 s, took {took:?}");
        // 5 MB does not fit 5 s at 1 or 4 Mbit/s (the budget ends it) and takes 2.5 s at 16.
        let at_least = Duration::from_secs_f64((5e6 * 8.0 / (f64::from(rate) * 1e6)).min(4.0) * 0.8);
        assert!(took > at_least, "it uploaded for real: took {took:?} at {rate} Mbit/s");
        assert!(b["measured_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{b}");
    }
}

/// Fails within the bound, stores `failed` with a message that says what happened.
/// `within` is the bound the test promises (the slack is added here).
fn assert_fails(url: &str, within: Duration, says: &str) -> Duration {
    let config = TempDir::new("bw-fail");
    let (code, out, took) = reconfigure(&[], config.path(), url);
    assert_eq!(code, Some(1), "a failed test exits 1: {out}");
    assert!(took < within + SLACK, "failed within {within:?}, took {took:?}: {out}");
    assert!(
        out.contains("pixelpass --reconfigure") && out.contains("PIXELPASS_SPEEDTEST_URL"),
        "says what to do: {out}"
    );
    assert!(out.contains(says), "says {says:?}: {out}");
    let b = bandwidth_of(config.path());
    assert_eq!(b["status"].as_str(), Some("failed"), "{b}");
    assert!(b["error"].as_str().is_some_and(|e| e.contains(says)), "{b}");
    assert!(b.get("upstream_mbps").is_none(), "{b}");
    took
}

#[test]
fn an_endpoint_that_is_down_fails_at_once() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    assert_fails(
        &format!("http://127.0.0.1:{port}/__up"),
        Duration::ZERO,
        "cannot upload to",
    );
}

#[test]
fn an_http_error_fails_at_once() {
    let addr = sink(Ipv4Addr::LOCALHOST, Answer::Http500);
    assert_fails(&format!("http://{addr}/__up"), Duration::ZERO, "HTTP 500");
}

/// A redirect is not followed (it would turn the POST into a GET and time nothing).
#[test]
fn a_redirect_fails_at_once() {
    let addr = sink(Ipv4Addr::LOCALHOST, Answer::Redirect);
    assert_fails(&format!("http://{addr}/__up"), Duration::ZERO, "HTTP 301");
}

/// An endpoint that is not an http(s) URL fails before anything is sent, saying where it
/// came from.
#[test]
fn a_bad_endpoint_url_is_refused_naming_its_source() {
    assert_fails("ftp://127.0.0.1/__up", Duration::ZERO, "PIXELPASS_SPEEDTEST_URL");
}

/// An endpoint that answers with a body (as Cloudflare's does): the body is read, so every
/// upload goes over one connection (no new handshake or slow start per upload).
#[test]
fn answers_with_a_body_are_read_and_the_connection_is_reused() {
    let (addr, connections) = sink_counting(Ipv4Addr::LOCALHOST, Answer::OkWithBody);
    let config = TempDir::new("bw-body");
    let (code, out, _) = reconfigure(&[], config.path(), &format!("http://{addr}/__up"));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(bandwidth_of(config.path())["status"].as_str(), Some("measured"));
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one connection for all uploads: {out}"
    );
}

#[test]
fn an_endpoint_that_never_answers_fails_within_the_bound() {
    let addr = sink(Ipv4Addr::LOCALHOST, Answer::Never);
    let took = assert_fails(&format!("http://{addr}/__up"), BOUND, "did not answer within 10 s");
    assert!(took >= BOUND, "it waited the bound: {took:?}");
}

#[test]
fn reconfigure_replaces_an_old_result() {
    let config = TempDir::new("bw-replace");
    let file = config.path().join("pixelpass/config.toml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        "[bandwidth]\nstatus = \"skipped\"\nupstream_mbps = 99.0\nmeasured_at = \"2020-01-01T00:00:00Z\"\n\n[viewer]\nplayer = \"vlc\"\n",
    )
    .unwrap();
    let addr = sink(Ipv4Addr::LOCALHOST, Answer::Ok);
    let (code, out, _) = reconfigure(&[], config.path(), &format!("http://{addr}/__up"));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("upstream") && out.contains("Mbit/s"),
        "prints the result: {out}"
    );
    let b = bandwidth_of(config.path());
    assert_eq!(b["status"].as_str(), Some("measured"), "{b}");
    assert_ne!(b["upstream_mbps"].as_float(), Some(99.0), "{b}");
    assert_ne!(b["measured_at"].as_str(), Some("2020-01-01T00:00:00Z"), "{b}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("player = \"vlc\""),
        "the rest of the config stays: {text}"
    );
}
