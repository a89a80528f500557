//! gst-iroh benchmarks: `cargo bench -p gst-iroh` prints one `METRIC <name> <value> <unit>`
//! line per figure. `BENCH_QUICK=1` shortens every phase (for CI smoke runs).
//!
//! - join_to_first_frame_ms: a viewer joining a live 720p30 H.264/MPEG-TS share at a random
//!   point of a 2 s GOP, from starting its pipeline to the first decoded frame (p50, p90), and
//!   the number of parser/decoder complaints over all joins (corrupt frames).
//! - capture_to_receive_ms: 1080p30 x264 ultrafast zerolatency on loopback, from the capture
//!   time of a buffer to its arrival at irohsrc's output (p50, p99).
//! - fanout_goodput_ratio: irohsink's aggregate goodput to N viewers ÷ raw iroh uni streams to
//!   N connections, same run, same process.
//! - viewers_at_4mbps: viewer processes (gst-launch-1.0 irohsrc ! fakesink) added until one
//!   gets less than 95 % of a 4 Mbit/s stream; host_cpu_per_viewer_pct from this (host-only)
//!   process's CPU time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use gst::prelude::*;
use gstiroh::net::{self, RUNTIME, Relay};

fn metric(name: &str, value: f64, unit: &str) {
    println!("METRIC {name} {value:.3} {unit}");
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some()
}

fn capture_ns(s: &gst::Sample) -> Option<u64> {
    let unix = gst::Caps::builder("timestamp/x-unix").build();
    s.buffer()?
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .find(|m| m.reference().is_subset(&unix))
        .map(|m| m.timestamp().nseconds())
}

fn join_bench() {
    let problems = decode_problems();
    let host = ts_host_pipeline(1280, 720, "");
    host.set_state(gst::State::Playing).unwrap();
    let t = pipeline_ticket(&host);
    std::thread::sleep(Duration::from_millis(1000));
    let joins = if quick() { 4 } else { 12 };
    let mut times = Vec::new();
    problems.lock().unwrap().clear();
    let mut seed = 12345u64;
    for _ in 0..joins {
        // pseudo-random join point inside the 2 s GOP
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(300 + (seed >> 33) % 1700));
        let t0 = Instant::now();
        let v = Viewer::new(&t, "tsdemux ! h264parse ! avdec_h264");
        if v.pull(Duration::from_secs(10)).is_none() {
            eprintln!("join: no frame within 10 s");
            continue;
        }
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        for _ in 0..10 {
            v.pull(Duration::from_secs(2));
        }
    }
    host.set_state(gst::State::Null).unwrap();
    times.sort_by(f64::total_cmp);
    metric("join_to_first_frame_ms", pct(&times, 0.5), "ms");
    metric("join_to_first_frame_p90_ms", pct(&times, 0.9), "ms");
    metric("join_corrupt_frames", problems.lock().unwrap().len() as f64, "count");
}

fn latency_bench() {
    let host = ts_host_pipeline(1920, 1080, "");
    host.set_state(gst::State::Playing).unwrap();
    let t = pipeline_ticket(&host);
    let secs = if quick() { 4 } else { 12 };
    let recv = Viewer::new(&t, "queue");
    let warmup = Instant::now() + Duration::from_secs(1);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut r = Vec::new();
    while Instant::now() < end {
        if let Some(s) = recv.pull(Duration::from_secs(1))
            && Instant::now() > warmup
            && let Some(c) = capture_ns(&s)
        {
            r.push(net::unix_now_ns().saturating_sub(c) as f64 / 1e6);
        }
    }
    host.set_state(gst::State::Null).unwrap();
    r.sort_by(f64::total_cmp);
    metric("capture_to_receive_p50_ms", pct(&r, 0.5), "ms");
    metric("capture_to_receive_p99_ms", pct(&r, 0.99), "ms");
}

/// Raw iroh: one uni stream per connection, 1 MiB writes, for `dur`. Returns bit/s.
fn raw_iroh_goodput(n: usize, dur: Duration) -> f64 {
    RUNTIME.block_on(async move {
        let alpn = b"bench/raw".to_vec();
        let local = ["127.0.0.1:0".parse().unwrap()];
        let server = net::bind(
            iroh::SecretKey::generate(),
            &Relay::Disabled,
            &local,
            vec![alpn.clone()],
        )
        .await
        .unwrap();
        let addr = server.addr();
        let deadline = tokio::time::Instant::now() + dur + Duration::from_millis(500);
        let srv = server.clone();
        let accept = tokio::spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..n {
                let conn = srv.accept().await.unwrap().await.unwrap();
                tasks.push(tokio::spawn(async move {
                    let mut s = conn.open_uni().await.unwrap();
                    let chunk = Bytes::from(vec![7u8; 1 << 20]);
                    while tokio::time::Instant::now() < deadline {
                        if s.write_chunk(chunk.clone()).await.is_err() {
                            break;
                        }
                    }
                    let _ = s.finish();
                    conn.closed().await;
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
        let mut readers = Vec::new();
        for _ in 0..n {
            let client = net::bind(iroh::SecretKey::generate(), &Relay::Disabled, &local, vec![])
                .await
                .unwrap();
            let conn = client.connect(addr.clone(), &alpn).await.unwrap();
            readers.push(tokio::spawn(async move {
                let mut s = conn.accept_uni().await.unwrap();
                // measure after a short warm-up
                let start = tokio::time::Instant::now() + Duration::from_millis(300);
                let stop = start + dur;
                let mut bytes = 0u64;
                while let Ok(Some(c)) = s.read_chunk(1 << 20).await {
                    let now = tokio::time::Instant::now();
                    if now > stop {
                        break;
                    }
                    if now > start {
                        bytes += c.len() as u64;
                    }
                }
                conn.close(0u32.into(), b"done");
                client.close().await;
                bytes
            }));
        }
        let mut total = 0;
        for r in readers {
            total += r.await.unwrap();
        }
        let _ = accept.await;
        server.close().await;
        total as f64 * 8.0 / dur.as_secs_f64()
    })
}

/// irohsink to `n` in-process viewers (irohsrc ! fakesink), offered `per_viewer` bit/s (256 KiB
/// buffers, a keyframe every 16). Returns delivered bit/s (all viewers together).
fn irohsink_goodput(n: usize, per_viewer: f64, dur: Duration) -> f64 {
    const SIZE: usize = 256 * 1024;
    let mut h = host(&[("max-lag", &1000u32)]);
    h.set_src_caps_str("video/x-h264,stream-format=byte-stream,alignment=au");
    let t = ticket(&h);
    let viewers: Vec<Viewer> = (0..n).map(|_| Viewer::new(&t, "queue")).collect();
    assert!(wait_until(Duration::from_secs(10), || num_viewers(&h) == n as u32));
    let mut key = gst::Buffer::from_mut_slice(vec![1u8; SIZE]);
    key.get_mut().unwrap().set_flags(gst::BufferFlags::empty());
    let mut delta = gst::Buffer::from_mut_slice(vec![2u8; SIZE]);
    delta.get_mut().unwrap().set_flags(gst::BufferFlags::DELTA_UNIT);
    let received = |vs: &[Viewer]| -> u64 { vs.iter().map(|v| v.stats().get::<u64>("bytes-received").unwrap()).sum() };
    let per_sec = per_viewer / 8.0 / SIZE as f64;
    let start = Instant::now();
    let warm = start + Duration::from_millis(500);
    let end = warm + dur;
    let mut i = 0u64;
    let mut start_bytes = None;
    while Instant::now() < end {
        if start_bytes.is_none() && Instant::now() > warm {
            start_bytes = Some(received(&viewers));
        }
        let due = (start.elapsed().as_secs_f64() * per_sec) as u64;
        if i >= due {
            std::thread::sleep(Duration::from_micros(200));
        } else {
            h.push(if i.is_multiple_of(16) {
                key.clone()
            } else {
                delta.clone()
            })
            .unwrap();
            i += 1;
        }
        for v in &viewers {
            while v.sink.try_pull_sample(gst::ClockTime::ZERO).is_some() {}
        }
    }
    let bytes = received(&viewers) - start_bytes.unwrap_or(0);
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    eprintln!(
        "irohsink goodput: offered {:.2} Gbit/s per viewer, {} GOPs dropped",
        per_viewer / 1e9,
        stats.get::<u64>("dropped-gops").unwrap()
    );
    drop(viewers);
    bytes as f64 * 8.0 / dur.as_secs_f64()
}

fn goodput_bench() {
    let n = 4;
    let dur = Duration::from_secs(if quick() { 2 } else { 5 });
    let raw = raw_iroh_goodput(n, dur);
    // Offer irohsink the same aggregate raw iroh achieved, spread over the viewers.
    let sink = irohsink_goodput(n, raw / n as f64, dur);
    metric("raw_iroh_goodput_gbps", raw / 1e9, "Gbit/s");
    metric("irohsink_goodput_gbps", sink / 1e9, "Gbit/s");
    metric("fanout_goodput_ratio", sink / raw, "ratio");
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    // after the command name: state is field 0; utime and stime are fields 11 and 12
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

struct Children(Vec<Child>);
impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn capacity_bench() {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.to_path_buf()));
    // The viewer processes load the plugin from disk: build it (release) if it is not there.
    if let Some(d) = &dir
        && !d.join("libgstiroh.so").exists()
    {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let _ = Command::new(cargo)
            .args(["build", "--release", "-p", "gst-iroh", "--lib"])
            .status();
    }
    let plugin_dir = dir.filter(|d| d.join("libgstiroh.so").exists());
    let Some(plugin_dir) = plugin_dir else {
        eprintln!("viewers_at_4mbps: libgstiroh.so not built next to the bench; skipped");
        return;
    };
    let mut h = host(&[]);
    h.set_src_caps_str("video/mpegts,systemstream=true,packetsize=188");
    let t = ticket(&h);
    let el = h.element().unwrap();
    // A paced 4 Mbit/s stream: 30 buffers/s, keyframe every 30, from a pusher thread.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let pusher = std::thread::spawn(move || {
        let per = 4_000_000 / 8 / 30;
        let mut key = gst::Buffer::from_mut_slice(vec![0x47u8; per]);
        key.get_mut().unwrap().set_flags(gst::BufferFlags::empty());
        let mut delta = gst::Buffer::from_mut_slice(vec![0x47u8; per]);
        delta.get_mut().unwrap().set_flags(gst::BufferFlags::DELTA_UNIT);
        let start = Instant::now();
        let mut i = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = h.push(if i.is_multiple_of(30) {
                key.clone()
            } else {
                delta.clone()
            });
            i += 1;
            let next = start + Duration::from_nanos(i * 1_000_000_000 / 30);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
    });
    let per_viewer_bytes = |el: &gst::Element| -> Vec<u64> {
        let stats = el.property::<gst::Structure>("stats");
        let arr: gst::Array = stats.get("viewer-stats").unwrap();
        arr.iter()
            .map(|v| v.get::<gst::Structure>().unwrap().get::<u64>("bytes-sent").unwrap())
            .collect()
    };
    let window = Duration::from_secs(if quick() { 2 } else { 4 });
    let c0 = cpu_seconds();
    std::thread::sleep(window);
    let idle_cpu = (cpu_seconds() - c0) / window.as_secs_f64();
    let mut children = Children(Vec::new());
    let step = 4;
    let max = if quick() { 8 } else { 40 };
    let mut sustained = 0;
    let mut cpu_at = (0usize, 0.0f64);
    while children.0.len() < max {
        for _ in 0..step {
            children.0.push(
                Command::new("gst-launch-1.0")
                    .args([
                        "-q",
                        "irohsrc",
                        &format!("ticket={t}"),
                        "relay=disabled",
                        "bind-address=127.0.0.1:0",
                    ])
                    .args(["!", "fakesink", "sync=false"])
                    .env("GST_PLUGIN_PATH", &plugin_dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("gst-launch-1.0"),
            );
        }
        let n = children.0.len();
        if !wait_until(Duration::from_secs(20), || {
            el.property::<u32>("num-viewers") as usize == n
        }) {
            eprintln!(
                "viewers_at_4mbps: only {} of {n} viewers connected",
                el.property::<u32>("num-viewers")
            );
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        let b0 = per_viewer_bytes(&el);
        let c0 = cpu_seconds();
        std::thread::sleep(window);
        let cpu = (cpu_seconds() - c0) / window.as_secs_f64();
        let b1 = per_viewer_bytes(&el);
        let want = 4_000_000.0 / 8.0 * window.as_secs_f64() * 0.95;
        let worst = b0
            .iter()
            .zip(&b1)
            .map(|(a, b)| b.saturating_sub(*a) as f64)
            .fold(f64::INFINITY, f64::min);
        eprintln!(
            "viewers {n}: worst viewer {:.2} Mbit/s, host CPU {:.1} %",
            worst * 8.0 / window.as_secs_f64() / 1e6,
            cpu * 100.0
        );
        if worst < want || b1.len() != n {
            break;
        }
        sustained = n;
        cpu_at = (n, cpu);
    }
    drop(children);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pusher.join().unwrap();
    metric("viewers_at_4mbps", sustained as f64, "viewers");
    metric("host_idle_cpu_pct", idle_cpu * 100.0, "%");
    if cpu_at.0 > 0 {
        metric(
            "host_cpu_per_viewer_pct",
            (cpu_at.1 - idle_cpu) * 100.0 / cpu_at.0 as f64,
            "% of a core",
        );
    }
}

fn main() {
    init();
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    if run("join") {
        join_bench();
    }
    if run("latency") {
        latency_bench();
    }
    if run("goodput") {
        goodput_bench();
    }
    if run("capacity") {
        capacity_bench();
    }
}
