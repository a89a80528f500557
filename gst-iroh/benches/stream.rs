//! gst-iroh benchmarks: `cargo bench -p gst-iroh --bench stream` prints one
//! `METRIC <name> <value> <unit>` line per figure. Absolute times differ 2–3× between machines,
//! so every latency and CPU figure comes with a baseline measured in the same run:
//! `METRIC <name>_baseline …` and `METRIC <name>_ratio …`. `BENCH_QUICK=1` shortens every
//! phase; a name argument runs one part: join, latency, goodput, capacity.
//!
//! - join_to_first_frame_ms: a viewer joining a live 720p30 H.264/MPEG-TS share at a random
//!   point of a 2 s GOP, from starting its pipeline to the first decoded frame (p50, p90), and
//!   the number of parser/decoder complaints over all joins (corrupt frames).
//! - capture_to_receive_p50_ms / _p99_ms: 1080p30 x264 ultrafast zerolatency on loopback, from
//!   the capture time of a frame to its arrival at irohsrc's output; baseline capture_to_mux
//!   (the same frames at an appsink right after mpegtsmux, same pipeline); transport_share_*
//!   is the difference.
//! - fanout_goodput_ratio: irohsink's aggregate goodput to N viewers ÷ raw iroh uni streams to
//!   N connections, same run, same process.
//! - viewers_at_4mbps: counting viewers (real iroh endpoints speaking the gst-iroh protocol,
//!   in this process, no decoding) added to one irohsink fed 4 Mbit/s until one gets less than
//!   95 % of it or GOPs are skipped (cap 150); host_cpu_per_viewer_pct (the host's threads
//!   only), baseline: raw iroh sending the same paced stream to as many connections.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use common::*;
use gst::prelude::*;
use gstiroh::net::{self, RUNTIME, Relay};
use gstiroh::protocol::{self, Control, FrameMeta, GopHeader};
use gstiroh::ticket::Ticket;
use tokio_util::sync::CancellationToken;

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

/// One 1080p30 x264 MPEG-TS pipeline into irohsink → an in-process irohsrc (capture → receive),
/// and the same frames as they leave mpegtsmux (the baseline: capture → mux, what an appsink
/// right after the mux would see), so the difference is the transport's own share.
fn latency_bench() {
    let host = ts_host_pipeline(1920, 1080, "");
    let mux_lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = host.by_name("sink").unwrap();
    {
        let lat = mux_lat.clone();
        let el = sink.downgrade();
        let last_pts = AtomicU64::new(u64::MAX);
        sink.static_pad("sink").unwrap().add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |pad, info| {
                let pts = match &info.data {
                    Some(gst::PadProbeData::Buffer(b)) => b.pts(),
                    Some(gst::PadProbeData::BufferList(l)) => l.get(0).and_then(|b| b.pts()),
                    _ => None,
                };
                let seg = pad
                    .sticky_event::<gst::event::Segment>(0)
                    .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned());
                let el = el.upgrade();
                let (Some(pts), Some(seg), Some(clock), Some(base)) = (
                    pts,
                    seg,
                    el.as_ref().and_then(|e| e.clock()),
                    el.as_ref().and_then(|e| e.base_time()),
                ) else {
                    return gst::PadProbeReturn::Ok;
                };
                // the first time a frame's packets leave the mux, as irohsink dates them
                if last_pts.swap(pts.nseconds(), Ordering::Relaxed) != pts.nseconds()
                    && let Some(running) = seg.to_running_time(pts)
                {
                    let age = clock.time().saturating_sub(base + running);
                    lat.lock().unwrap().push(age.nseconds() as f64 / 1e6);
                }
                gst::PadProbeReturn::Ok
            },
        );
    }
    host.set_state(gst::State::Playing).unwrap();
    let t = pipeline_ticket(&host);
    let secs = if quick() { 4 } else { 12 };
    let recv = Viewer::new(&t, "queue");
    let warmup = Instant::now() + Duration::from_secs(1);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut r = Vec::new();
    let mut last_capture = None;
    while Instant::now() < end {
        if let Some(s) = recv.pull(Duration::from_secs(1))
            && Instant::now() > warmup
            && let Some(c) = capture_ns(&s)
            && last_capture != Some(c)
        {
            if last_capture.is_none() {
                // both figures over the same stretch of frames
                mux_lat.lock().unwrap().clear();
            }
            last_capture = Some(c);
            r.push(net::unix_now_ns().saturating_sub(c) as f64 / 1e6);
        }
    }
    host.set_state(gst::State::Null).unwrap();
    let mut m = std::mem::take(&mut *mux_lat.lock().unwrap());
    m.sort_by(f64::total_cmp);
    r.sort_by(f64::total_cmp);
    eprintln!("latency: {} frames received, {} frames muxed", r.len(), m.len());
    for (p, tag) in [(0.5, "p50"), (0.99, "p99")] {
        let name = format!("capture_to_receive_{tag}_ms");
        metric(&format!("capture_to_mux_{tag}_ms"), pct(&m, p), "ms");
        compare(&name, pct(&r, p), pct(&m, p), "ms");
        metric(&format!("transport_share_{tag}_ms"), pct(&r, p) - pct(&m, p), "ms");
    }
}

/// A figure beside its baseline from the same run: `<name>`, `<name>_baseline`, `<name>_ratio`.
fn compare(name: &str, value: f64, baseline: f64, unit: &str) {
    metric(name, value, unit);
    metric(&format!("{name}_baseline"), baseline, unit);
    metric(&format!("{name}_ratio"), value / baseline, "ratio");
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

// ---------------------------------------------------------------------------------------------
// viewers_at_4mbps: one irohsink, lightweight protocol viewers added until one falls behind

/// The stream the capacity bench serves: 4 Mbit/s in 30 buffers a second, a keyframe a second.
const RATE_BPS: u64 = 4_000_000;
const FPS: u64 = 30;

/// A runtime of its own (named, so its threads' CPU can be told apart from the host's).
fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        // threads that exited would take their CPU time out of the per-thread sums
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .unwrap()
}

/// CPU seconds of this process (all threads, `None`) or of its threads named `name`.
fn cpu_seconds(name: Option<&str>) -> f64 {
    let ticks = |stat: &str| -> f64 {
        // after "(comm)": state is field 0; utime and stime are fields 11 and 12
        let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
    };
    let Some(name) = name else {
        return ticks(&std::fs::read_to_string("/proc/self/stat").unwrap()) / 100.0;
    };
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let comm = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map(|(c, _)| c);
        if comm == Some(name) {
            total += ticks(&stat);
        }
    }
    total / 100.0
}

const VIEWER_THREADS: &str = "bench-viewers";
const RAW_HOST_THREADS: &str = "bench-rawhost";

/// The host's CPU seconds: the whole process but the counting viewers.
fn host_cpu_seconds() -> f64 {
    cpu_seconds(None) - cpu_seconds(Some(VIEWER_THREADS))
}

/// What one counting viewer saw.
#[derive(Default)]
struct Tally {
    bytes: AtomicU64,
    /// GOPs the host skipped for this viewer (a gap in GOP numbers, or a stream reset).
    skipped: AtomicU64,
    /// Newest GOP number + 1 (0: none yet).
    seq: AtomicU64,
    /// Capture time of the newest frame read.
    capture: AtomicU64,
}

impl Tally {
    fn saw_gop(&self, seq: u64) {
        let prev = self.seq.fetch_max(seq + 1, Ordering::Relaxed);
        if prev > 0 && seq > prev {
            self.skipped.fetch_add(seq - prev, Ordering::Relaxed);
        }
    }
}

/// Walks a GOP stream frame by frame without copying payloads (only a header cut across two
/// reads is joined).
#[derive(Default)]
struct GopWalker {
    partial: BytesMut,
    header_done: bool,
    skip: usize,
}

impl GopWalker {
    fn feed(&mut self, mut chunk: Bytes, tally: &Tally) -> Result<(), protocol::ProtocolError> {
        loop {
            let n = self.skip.min(chunk.len());
            chunk.advance(n);
            self.skip -= n;
            if chunk.is_empty() {
                return Ok(());
            }
            if !self.partial.is_empty() {
                self.partial.extend_from_slice(&chunk);
                chunk = self.partial.split().freeze();
            }
            let used = if self.header_done {
                FrameMeta::decode_header(&chunk)?.map(|((meta, len), used)| {
                    if let Some(c) = meta.capture_unix_ns {
                        tally.capture.fetch_max(c, Ordering::Relaxed);
                    }
                    self.skip = len;
                    used
                })
            } else {
                GopHeader::decode(&chunk)?.map(|(h, used)| {
                    tally.saw_gop(h.seq);
                    self.header_done = true;
                    used
                })
            };
            match used {
                Some(used) => chunk.advance(used),
                None => {
                    self.partial.extend_from_slice(&chunk);
                    return Ok(());
                }
            }
        }
    }
}

async fn read_gop(mut s: iroh::endpoint::RecvStream, tally: Arc<Tally>) {
    let mut walker = GopWalker::default();
    loop {
        match s.read_chunk(1 << 20).await {
            Ok(Some(chunk)) => {
                tally.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if walker.feed(chunk, &tally).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(_) => {
                // the host reset it: this viewer fell behind
                tally.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

async fn loopback_endpoint(alpns: Vec<Vec<u8>>) -> iroh::Endpoint {
    let local = ["127.0.0.1:0".parse().unwrap()];
    net::bind(iroh::SecretKey::generate(), &Relay::Disabled, &local, alpns)
        .await
        .unwrap()
}

/// A viewer that speaks gst-iroh's protocol and only counts: hello, every GOP stream read and
/// walked, progress reported ten times a second (as irohsrc does), no decoding.
async fn counting_viewer(ticket: Ticket, tally: Arc<Tally>, stop: CancellationToken) -> Result<(), String> {
    let ep = loopback_endpoint(vec![]).await;
    let conn = ep
        .connect(ticket.addr.clone(), protocol::ALPN)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let hello = Control::Hello {
        secret: ticket.secret,
        name: "counter".into(),
    };
    net::write_control(&mut send, &hello).await.map_err(|e| e.to_string())?;
    match net::read_control(&mut recv, &mut BytesMut::new()).await {
        Ok(Control::Welcome { .. }) => {}
        other => return Err(format!("no welcome: {other:?}")),
    }
    let acceptor = {
        let (conn, tally) = (conn.clone(), tally.clone());
        tokio::spawn(async move {
            while let Ok(s) = conn.accept_uni().await {
                tokio::spawn(read_gop(s, tally.clone()));
            }
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut sent = (0, 0);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = conn.closed() => break,
            _ = tick.tick() => {}
        }
        let now = (tally.seq.load(Ordering::Relaxed), tally.capture.load(Ordering::Relaxed));
        if now != sent && now.0 > 0 {
            sent = now;
            let progress = Control::Progress {
                seq: now.0 - 1,
                capture_unix_ns: now.1,
            };
            if net::write_control(&mut send, &progress).await.is_err() {
                break;
            }
        }
    }
    acceptor.abort();
    conn.close(0u32.into(), b"done");
    ep.close().await;
    Ok(())
}

/// Pushes the paced 4 Mbit/s MPEG-TS-like stream into the host until dropped.
struct Pusher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pusher {
    fn start(mut h: gst_check::Harness) -> Pusher {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let per = (RATE_BPS / 8 / FPS) as usize;
            let mut key = gst::Buffer::from_mut_slice(vec![0x47u8; per]);
            key.get_mut().unwrap().set_flags(gst::BufferFlags::empty());
            let mut delta = gst::Buffer::from_mut_slice(vec![0x47u8; per]);
            delta.get_mut().unwrap().set_flags(gst::BufferFlags::DELTA_UNIT);
            let start = Instant::now();
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let _ = h.push(if i.is_multiple_of(FPS) {
                    key.clone()
                } else {
                    delta.clone()
                });
                i += 1;
                let next = start + Duration::from_nanos(i * 1_000_000_000 / FPS);
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        });
        Pusher {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One measuring window over the viewers: (worst viewer's bit/s, GOPs skipped, host CPU share).
fn measure_window(tallies: &[Arc<Tally>], window: Duration) -> (f64, u64, f64) {
    let snap = || -> Vec<(u64, u64)> {
        tallies
            .iter()
            .map(|t| (t.bytes.load(Ordering::Relaxed), t.skipped.load(Ordering::Relaxed)))
            .collect()
    };
    let (b0, c0, t0) = (snap(), host_cpu_seconds(), Instant::now());
    std::thread::sleep(window);
    let (b1, c1, dt) = (snap(), host_cpu_seconds(), t0.elapsed().as_secs_f64());
    let worst = b0
        .iter()
        .zip(&b1)
        .map(|(a, b)| b.0.saturating_sub(a.0) as f64 * 8.0 / dt)
        .fold(f64::INFINITY, f64::min);
    let skipped = b0.iter().zip(&b1).map(|(a, b)| b.1 - a.1).sum();
    (worst, skipped, (c1 - c0) / dt)
}

/// Adds counting viewers to one irohsink fed 4 Mbit/s until one gets less than 95 % of it
/// (or GOPs are skipped), up to a cap; then the same number of raw iroh connections as the
/// CPU baseline.
fn capacity_bench() {
    let mut h = host(&[]);
    h.set_src_caps_str("video/mpegts,systemstream=true,packetsize=188");
    let ticket: Ticket = ticket(&h).parse().unwrap();
    let el = h.element().unwrap();
    let pusher = Pusher::start(h);
    let viewers_rt = runtime(VIEWER_THREADS);
    let window = Duration::from_secs(if quick() { 2 } else { 3 });
    std::thread::sleep(Duration::from_secs(1));
    let (_, _, idle_cpu) = measure_window(&[], window);
    let stop = CancellationToken::new();
    let mut tallies: Vec<Arc<Tally>> = Vec::new();
    let (step, cap) = if quick() { (10, 20) } else { (10, 150) };
    let mut sustained = (0usize, 0.0f64);
    while tallies.len() < cap {
        for _ in 0..step {
            let tally = Arc::new(Tally::default());
            let (t, s) = (ticket.clone(), stop.clone());
            let tl = tally.clone();
            viewers_rt.spawn(async move {
                if let Err(e) = counting_viewer(t, tl, s).await {
                    eprintln!("counting viewer: {e}");
                }
            });
            tallies.push(tally);
        }
        let n = tallies.len();
        if !wait_until(Duration::from_secs(30), || {
            el.property::<u32>("num-viewers") as usize == n
        }) {
            eprintln!(
                "viewers_at_4mbps: only {} of {n} viewers connected",
                el.property::<u32>("num-viewers")
            );
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        let (worst, skipped, cpu) = measure_window(&tallies, window);
        eprintln!(
            "viewers {n}: worst viewer {:.2} Mbit/s, {skipped} GOPs skipped, host CPU {:.1} % of a core",
            worst / 1e6,
            cpu * 100.0
        );
        if worst < RATE_BPS as f64 * 0.95 || skipped > 0 {
            break;
        }
        sustained = (n, cpu);
    }
    stop.cancel();
    drop(pusher);
    drop(el);
    metric("viewers_at_4mbps", sustained.0 as f64, "viewers");
    metric("host_idle_cpu_pct", idle_cpu * 100.0, "% of a core");
    if sustained.0 > 0 {
        let per_viewer = (sustained.1 - idle_cpu) * 100.0 / sustained.0 as f64;
        let raw = raw_cpu_per_connection(sustained.0, window, &viewers_rt);
        compare("host_cpu_per_viewer_pct", per_viewer, raw, "% of a core");
    }
    viewers_rt.shutdown_timeout(Duration::from_secs(2));
}

/// The CPU baseline: raw iroh sending the same paced stream (a new uni stream each second, 30
/// writes a second) to `n` connections. Returns % of a core per connection.
fn raw_cpu_per_connection(n: usize, window: Duration, viewers_rt: &tokio::runtime::Runtime) -> f64 {
    let host_rt = runtime(RAW_HOST_THREADS);
    let alpn = b"bench/raw-4mbps".to_vec();
    let server = host_rt.block_on(loopback_endpoint(vec![alpn.clone()]));
    let stop = CancellationToken::new();
    let connected = Arc::new(AtomicU64::new(0));
    {
        let (server, stop, connected) = (server.clone(), stop.clone(), connected.clone());
        host_rt.spawn(async move {
            while let Some(incoming) = server.accept().await {
                let Ok(conn) = incoming.await else { continue };
                connected.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(paced_sender(conn, stop.clone()));
            }
        });
    }
    let tallies: Vec<Arc<Tally>> = (0..n).map(|_| Arc::new(Tally::default())).collect();
    for tally in &tallies {
        let (addr, alpn, tally, stop) = (server.addr(), alpn.clone(), tally.clone(), stop.clone());
        viewers_rt.spawn(async move {
            let ep = loopback_endpoint(vec![]).await;
            let Ok(conn) = ep.connect(addr, &alpn).await else {
                return;
            };
            loop {
                let s = tokio::select! {
                    s = conn.accept_uni() => s,
                    _ = stop.cancelled() => break,
                };
                let Ok(mut s) = s else { break };
                let tally = tally.clone();
                tokio::spawn(async move {
                    while let Ok(Some(c)) = s.read_chunk(1 << 20).await {
                        tally.bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
                    }
                });
            }
            conn.close(0u32.into(), b"done");
            ep.close().await;
        });
    }
    wait_until(Duration::from_secs(30), || {
        connected.load(Ordering::Relaxed) as usize == n
    });
    std::thread::sleep(Duration::from_secs(1));
    let (b0, c0, t0) = (
        total_bytes(&tallies),
        cpu_seconds(Some(RAW_HOST_THREADS)),
        Instant::now(),
    );
    std::thread::sleep(window);
    let dt = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(Some(RAW_HOST_THREADS)) - c0) / dt;
    let per = (total_bytes(&tallies) - b0) as f64 * 8.0 / dt / n as f64;
    eprintln!(
        "raw iroh, {n} connections: {:.2} Mbit/s each, sender CPU {:.1} % of a core",
        per / 1e6,
        cpu * 100.0
    );
    stop.cancel();
    host_rt.block_on(server.close());
    host_rt.shutdown_timeout(Duration::from_secs(2));
    cpu * 100.0 / n as f64
}

fn total_bytes(tallies: &[Arc<Tally>]) -> u64 {
    tallies.iter().map(|t| t.bytes.load(Ordering::Relaxed)).sum()
}

/// Writes the capacity bench's stream to one connection: a uni stream per second.
async fn paced_sender(conn: iroh::endpoint::Connection, stop: CancellationToken) {
    let chunk = Bytes::from(vec![0x47u8; (RATE_BPS / 8 / FPS) as usize]);
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / FPS));
    let mut stream: Option<iroh::endpoint::SendStream> = None;
    for i in 0u64.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if i.is_multiple_of(FPS) {
            if let Some(mut old) = stream.take() {
                let _ = old.finish();
            }
            stream = conn.open_uni().await.ok();
        }
        if let Some(s) = stream.as_mut()
            && s.write_chunk(chunk.clone()).await.is_err()
        {
            break;
        }
    }
    conn.close(0u32.into(), b"done");
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
