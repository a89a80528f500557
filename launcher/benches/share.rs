//! `cargo bench -p pixelpass`: a real share on this machine (Xvfb 1920x1080 screen, x264,
//! iroh on loopback, mpv with its low-latency profile), printing `METRIC <name> <value> <unit>`;
//! then the same through the Wayland ScreenCast portal (headless sway 1920x1080, the figures
//! prefixed `wayland_`) when that session can be built here.
//!
//! - host_idle_cpu_pct: the host with its ticket out and no viewer (capture is off).
//! - host_sharing_cpu_pct: the host capturing and encoding 1080p30 for one viewer.
//! - capture_to_mpv_p50_ms / _p99_ms: from the moment a frame was captured on the host to the
//!   moment mpv presents it (mpv's time-pos against the host's capture epoch).
//! - viewer_capture_to_receive_p50_ms: the same up to the viewer's irohsrc.

use pixelpass_test_support as support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_pixelpass");

fn metric(name: &str, value: f64, unit: &str) {
    println!("METRIC {name} {value:.2} {unit}");
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    if f.len() < 13 {
        return 0.0;
    }
    (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / 100.0
}

fn cpu_pct(pid: u32, over: Duration) -> f64 {
    let c0 = cpu_seconds(pid);
    std::thread::sleep(over);
    (cpu_seconds(pid) - c0) / over.as_secs_f64() * 100.0
}

fn json_lines(buf: &std::sync::Mutex<String>) -> Vec<serde_json::Value> {
    buf.lock()
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The string `field` of the first `event` in a JSON-lines output.
fn event_text(buf: &std::sync::Mutex<String>, event: &str, field: &str) -> String {
    json_lines(buf)
        .into_iter()
        .find(|v| v["event"] == event)
        .and_then(|v| v[field].as_str().map(String::from))
        .unwrap_or_else(|| panic!("no {event} event with {field}"))
}

fn spawn(
    args: &[&str],
    env: &[(String, String)],
    config: &TempDir,
) -> (Proc, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut p = Proc::spawn(
        "pixelpass",
        Command::new(BIN)
            .args(args)
            .args(["--relay", "disabled", "--bind", "127.0.0.1:0", "--events", "json"])
            .env("XDG_CONFIG_HOME", config.path())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let out = collect(p.child.as_mut().unwrap().stdout.take().unwrap());
    (p, out)
}

fn main() {
    if !have("Xvfb") || !have("mpv") {
        eprintln!("SKIP: the share bench needs Xvfb and mpv (bash scripts/install-deps.sh)");
        return;
    }
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    {
        let x = Xvfb::start(1920, 1080);
        let env = vec![
            ("DISPLAY".to_string(), x.display.clone()),
            ("WAYLAND_DISPLAY".into(), String::new()),
        ];
        measure("", &env, quick);
    }
    match wayland_missing() {
        Some(why) => eprintln!("SKIP wayland figures: {why}"),
        None => {
            let w = Wayland::start(1920, 1080);
            let mut env = w.env.clone();
            env.push(("DISPLAY".into(), String::new()));
            measure("wayland_", &env, quick);
        }
    }
}

/// One share in `env`: idle and sharing CPU, capture → mpv and capture → viewer latency.
fn measure(prefix: &str, env: &[(String, String)], quick: bool) {
    let metric = |name: &str, value: f64, unit: &str| metric(&format!("{prefix}{name}"), value, unit);
    let config = TempDir::new("bench-config");
    let (host, host_out) = spawn(&["host", "--no-audio", "--quality", "high"], env, &config);
    assert!(
        wait_text(&host_out, "\"ticket\"", Duration::from_secs(30)).is_some(),
        "host ticket"
    );
    let ticket = event_text(&host_out, "ticket", "ticket");
    std::thread::sleep(Duration::from_secs(1));
    metric(
        "host_idle_cpu_pct",
        cpu_pct(host.pid(), Duration::from_secs(5)),
        "% of a core",
    );

    let (_viewer, view_out) = spawn(&["view", &ticket, "--player", "none"], &[], &config);
    assert!(
        wait_text(&view_out, "\"url\"", Duration::from_secs(20)).is_some(),
        "viewer URL"
    );
    let url = event_text(&view_out, "url", "url");
    let dir = TempDir::new("bench-mpv");
    let (_mpv, sock) = mpv_headless(&url, dir.path(), None);
    assert!(wait_text(&host_out, "capture-started", Duration::from_secs(20)).is_some());
    let epoch = json_lines(&host_out)
        .into_iter()
        .find(|v| v["event"] == "capture-started")
        .and_then(|v| v["epoch_unix_ns"].as_u64())
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let sharing_cpu = cpu_pct(host.pid(), Duration::from_secs(if quick { 2 } else { 5 }));
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs(if quick { 4 } else { 10 });
    while Instant::now() < end {
        if let Some(pos) = mpv_get(&sock, "time-pos").and_then(|v| v.as_f64()) {
            let now = gstiroh::net::unix_now_ns();
            // mpegtsmux PTS start at one hour
            let captured = epoch as f64 + (pos - 3600.0) * 1e9;
            lat.push((now as f64 - captured) / 1e6);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    metric("host_sharing_cpu_pct", sharing_cpu, "% of a core");
    metric("capture_to_mpv_p50_ms", pct(0.5), "ms");
    metric("capture_to_mpv_p99_ms", pct(0.99), "ms");
    let recv = json_lines(&view_out)
        .into_iter()
        .rev()
        .find(|v| v["event"] == "viewer-stats")
        .and_then(|v| v["latency_ms"].as_f64())
        .unwrap_or(f64::NAN);
    metric("viewer_capture_to_receive_p50_ms", recv, "ms");
}
