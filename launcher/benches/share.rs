//! `cargo bench -p pixelpass --bench share`: a real share on this machine (Xvfb 1920x1080
//! screen, x264, iroh on loopback, one viewer), printing `METRIC <name> <value> <unit>`; then
//! the same through the Wayland ScreenCast portal (headless sway 1920x1080, the figures
//! prefixed `wayland_`) when that session can be built here. `BENCH_QUICK=1` shortens it; a
//! name argument (`x11`, `wayland`) runs one part.
//!
//! Absolute figures differ 2–3× between machines, so each latency and CPU figure is printed
//! beside a baseline measured in the same run (`<name>_baseline`, `<name>_ratio`):
//!
//! - host_idle_cpu_pct: the host with its ticket out and no viewer (capture is off).
//! - host_sharing_cpu_pct: the host capturing and encoding 1080p30 for one viewer; baseline:
//!   a bare `gst-launch-1.0` pipeline doing the same capture + convert + encode into fakesink
//!   (same screen, size, rate and x264 settings), running beside the share over the same
//!   window, so both see the same load.
//! - capture_to_receive_p50_ms: from the moment a frame was captured on the host to its
//!   arrival at the viewer's irohsrc (the viewer's own figure); baseline: capture_to_mux of
//!   the bare pipeline ending in `h264parse ! mpegtsmux ! appsink`.
//! - launcher_capture_to_mux_p50_ms: the launcher's own capture pipeline (its template, filled
//!   as the launcher fills it) up to the mux, beside the same baseline: tells whether a
//!   difference lives in the capture elements or after the mux (the appsink → appsrc hop and
//!   the transport; the stream bench measures the transport's own share).
//! - capture_to_mpv_p50_ms: captured → presented by mpv (its time-pos against the host's
//!   capture epoch); baseline: capture_to_receive of the same run (the player's share).
//! - capture_to_gst_p50_ms: the same for the built-in player (`pixelpass view --player gst`
//!   in the bench's Xvfb, its own latency meter: `display_latency_ms`).
//! - host_ladder_cpu_pct (X11): the host encoding its rendition ladder (`--renditions auto`:
//!   1080p + 540p at ⅓ + 360p at ⅛ of the bitrate) for one viewer; baseline: a host with
//!   `--renditions off` sharing the same screen beside it, over the same window. The figures
//!   above are all measured with `--renditions off`.
//!
//! On Wayland the bare pipeline captures through a screen cast the bench opens itself.

use pixelpass_test_support as support;

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_pixelpass");

/// The x264 settings pixelpass uses for `--quality high` (encoder.rs): 4 Mbit/s, a keyframe
/// every 2 s at 30 fps.
const X264: &str = "x264enc tune=zerolatency speed-preset=ultrafast bitrate=4000 key-int-max=60 vbv-buf-capacity=500";

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
    cpu_pcts(&[pid], over)[0]
}

/// CPU of each process over the same window, % of a core.
fn cpu_pcts(pids: &[u32], over: Duration) -> Vec<f64> {
    let (c0, t0): (Vec<f64>, _) = (pids.iter().map(|p| cpu_seconds(*p)).collect(), Instant::now());
    std::thread::sleep(over);
    let dt = t0.elapsed().as_secs_f64();
    pids.iter()
        .zip(c0)
        .map(|(p, c)| (cpu_seconds(*p) - c) / dt * 100.0)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(f64::NAN)
}

fn json_lines(buf: &Mutex<String>) -> Vec<serde_json::Value> {
    buf.lock()
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The string `field` of the first `event` in a JSON-lines output.
fn event_text(buf: &Mutex<String>, event: &str, field: &str) -> String {
    json_lines(buf)
        .into_iter()
        .find(|v| v["event"] == event)
        .and_then(|v| v[field].as_str().map(String::from))
        .unwrap_or_else(|| panic!("no {event} event with {field}"))
}

/// The viewer's own capture → receive p50 from the `viewer-stats` events after line `from`.
fn stats_p50_since(buf: &Mutex<String>, from: usize, key: &str) -> f64 {
    median(
        json_lines(buf)
            .into_iter()
            .skip(from)
            .filter(|v| v["event"] == "viewer-stats")
            .filter_map(|v| v[key].as_f64())
            .filter(|l| *l >= 0.0)
            .collect(),
    )
}

fn spawn(args: &[&str], env: &[(String, String)], config: &TempDir) -> (Proc, Arc<Mutex<String>>) {
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

/// How long each figure is measured for.
fn window(quick: bool) -> Duration {
    Duration::from_secs(if quick { 3 } else { 6 })
}

fn main() {
    if !have("Xvfb") || !have("mpv") || !have("gst-launch-1.0") {
        eprintln!("SKIP: the share bench needs Xvfb, mpv and gst-launch-1.0 (bash scripts/install-deps.sh)");
        return;
    }
    gst::init().unwrap();
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    if run("x11") {
        let x = Xvfb::start(1920, 1080);
        let env = vec![
            ("DISPLAY".to_string(), x.display.clone()),
            ("WAYLAND_DISPLAY".into(), String::new()),
        ];
        let source = format!(
            "ximagesrc display-name={} use-damage=false show-pointer=true",
            x.display
        );
        // what a GStreamer user would write for the same capture + convert + encode
        let bare = format!(
            "{source} ! video/x-raw,framerate=30/1 ! videoconvert ! video/x-raw,format=I420,width=1920,height=1080 \
             ! {X264}"
        );
        let launcher = launcher_capture(&source, true);
        measure("", &env, quick, Some(Baseline { bare, launcher }));
        ladder_cpu(&env, quick);
    }
    match wayland_missing() {
        _ if !run("wayland") => {}
        Some(why) => eprintln!("SKIP wayland figures: {why}"),
        None => {
            let w = Wayland::start(1920, 1080);
            let mut env = w.env.clone();
            env.push(("DISPLAY".into(), String::new()));
            let bus = env
                .iter()
                .find(|(k, _)| k == "DBUS_SESSION_BUS_ADDRESS")
                .map(|(_, v)| v.clone());
            let cast = bus.and_then(|b| {
                BareCast::open(&b)
                    .map_err(|e| eprintln!("SKIP wayland baselines: the bench's own screen cast failed: {e}"))
                    .ok()
            });
            // 30 fps however often the desktop draws, as the launcher does
            let baseline = cast.as_ref().map(|c| Baseline {
                bare: format!(
                    "{} ! videoconvert ! videorate ! video/x-raw,format=I420,width=1920,height=1080,framerate=30/1 \
                     ! {X264}",
                    c.source()
                ),
                launcher: launcher_capture(&c.source(), false),
            });
            measure("wayland_", &env, quick, baseline);
        }
    }
}

/// The launcher's own capture pipeline (`pipelines/host-capture.pipeline`, no audio) as it
/// would build it for this screen at `--quality high` with x264.
fn launcher_capture(source: &str, paced_source: bool) -> String {
    let mut d = include_str!("../../pipelines/host-capture.pipeline").to_string();
    let rate = if paced_source { "" } else { "! videorate" };
    for (k, v) in [
        ("video_source", source),
        ("format", "I420"),
        ("width", "1920"),
        ("height", "1080"),
        ("fps", "30"),
        ("encoder", X264),
        ("audio", ""),
        ("rate", rate),
        ("video_tee", ""),
        ("rungs", ""),
    ] {
        d = d.replace(&format!("{{{k}}}"), v);
    }
    assert!(
        !d.contains('{'),
        "a placeholder of host-capture.pipeline is not filled here: {d}"
    );
    d
}

/// What the share is compared with, on the same screen.
struct Baseline {
    /// Capture + convert + encode as a GStreamer user would write it (no sink).
    bare: String,
    /// The launcher's capture pipeline, ending in `appsink name=out` after the mux.
    launcher: String,
}

/// What one share run measured.
#[derive(Default)]
struct Figures {
    idle_cpu: f64,
    sharing_cpu: f64,
    /// The bare pipeline's CPU, measured over the same window as `sharing_cpu`.
    bare_cpu: Option<f64>,
    bare_to_mux: Option<f64>,
    launcher_to_mux: Option<f64>,
    receive: f64,
    mpv: f64,
    receive_gst: f64,
    gst: f64,
}

/// One share in `env`: idle and sharing CPU, capture → receive, → mpv and → the gst player,
/// each beside its baseline.
fn measure(prefix: &str, env: &[(String, String)], quick: bool, baseline: Option<Baseline>) {
    let mut f = Figures::default();
    let config = TempDir::new("bench-config");
    let (host, host_out) = spawn(
        &[
            "host",
            "--no-audio",
            "--no-hwencode",
            "--quality",
            "high",
            "--renditions",
            "off",
        ],
        env,
        &config,
    );
    assert!(
        wait_text(&host_out, "\"ticket\"", Duration::from_secs(30)).is_some(),
        "host ticket"
    );
    let ticket = event_text(&host_out, "ticket", "ticket");
    std::thread::sleep(Duration::from_secs(1));
    f.idle_cpu = cpu_pct(host.pid(), window(quick));
    if let Some(b) = &baseline {
        let mux = "h264parse config-interval=-1 ! mpegtsmux ! appsink name=out sync=false buffer-list=true";
        f.bare_to_mux = Some(capture_to_mux(&format!("{} ! {mux}", b.bare), quick));
        f.launcher_to_mux = Some(capture_to_mux(&b.launcher, quick));
    }
    {
        let (_viewer, view_out) = spawn(&["view", &ticket, "--player", "none"], &[], &config);
        let url = wait_url(&view_out);
        let dir = TempDir::new("bench-mpv");
        let (_mpv, sock) = mpv_headless(&url, dir.path(), None);
        assert!(wait_text(&host_out, "capture-started", Duration::from_secs(20)).is_some());
        let epoch = capture_epoch(&host_out, 0);
        std::thread::sleep(Duration::from_secs(2));
        let from = json_lines(&view_out).len();
        f.mpv = player_p50(epoch, window(quick), || {
            mpv_get(&sock, "time-pos").and_then(|v| v.as_f64())
        });
        f.receive = stats_p50_since(&view_out, from, "latency_ms");
        // Then the bare pipeline runs beside the share, so both see the same load on this
        // machine (after the latency figures: it loads the machine too).
        let bare = baseline.as_ref().map(|b| bare_pipeline(&b.bare, env));
        let pids: Vec<u32> = [Some(host.pid()), bare.as_ref().map(Proc::pid)]
            .into_iter()
            .flatten()
            .collect();
        let cpu = cpu_pcts(&pids, window(quick));
        (f.sharing_cpu, f.bare_cpu) = (cpu[0], cpu.get(1).copied());
    }
    let count = |event: &str| json_lines(&host_out).iter().filter(|v| v["event"] == event).count();
    assert!(
        wait_for(Duration::from_secs(10), || count("capture-stopped") >= 1),
        "capture stops"
    );
    {
        let starts = count("capture-started");
        // the built-in player reports its own capture → display (`display_latency_ms`)
        let (_viewer, view_out) = spawn(&["view", &ticket, "--player", "gst"], env, &config);
        assert!(wait_for(Duration::from_secs(20), || count("capture-started") > starts));
        std::thread::sleep(Duration::from_secs(2));
        let from = json_lines(&view_out).len();
        std::thread::sleep(window(quick));
        f.gst = stats_p50_since(&view_out, from, "display_latency_ms");
        f.receive_gst = stats_p50_since(&view_out, from, "latency_ms");
    }
    f.print(prefix);
}

impl Figures {
    fn print(&self, prefix: &str) {
        let metric = |name: &str, value: f64, unit: &str| metric(&format!("{prefix}{name}"), value, unit);
        let compare = |name: &str, value: f64, baseline: Option<f64>, unit: &str| {
            metric(name, value, unit);
            if let Some(b) = baseline {
                metric(&format!("{name}_baseline"), b, unit);
                metric(&format!("{name}_ratio"), value / b, "ratio");
            }
        };
        metric("host_idle_cpu_pct", self.idle_cpu, "% of a core");
        compare("host_sharing_cpu_pct", self.sharing_cpu, self.bare_cpu, "% of a core");
        compare("capture_to_receive_p50_ms", self.receive, self.bare_to_mux, "ms");
        if let Some(l) = self.launcher_to_mux {
            // where a difference lives: in the capture pipeline's elements, or after the mux
            compare("launcher_capture_to_mux_p50_ms", l, self.bare_to_mux, "ms");
        }
        compare("capture_to_mpv_p50_ms", self.mpv, Some(self.receive), "ms");
        compare("capture_to_gst_p50_ms", self.gst, Some(self.receive_gst), "ms");
    }
}

/// Host CPU with the rendition ladder against one encode: two hosts sharing the same screen
/// side by side (each with a viewer), measured over the same window.
fn ladder_cpu(env: &[(String, String)], quick: bool) {
    let config = TempDir::new("bench-ladder");
    let mut hosts = Vec::new();
    for renditions in ["auto", "off"] {
        let (host, out) = spawn(
            &[
                "host",
                "--no-audio",
                "--no-hwencode",
                "--quality",
                "high",
                "--renditions",
                renditions,
            ],
            env,
            &config,
        );
        assert!(
            wait_text(&out, "\"ticket\"", Duration::from_secs(30)).is_some(),
            "host ticket"
        );
        let ticket = event_text(&out, "ticket", "ticket");
        let viewer = spawn(&["view", &ticket, "--player", "none"], &[], &config);
        assert!(wait_text(&out, "capture-started", Duration::from_secs(20)).is_some());
        hosts.push((host, out, viewer));
    }
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_pcts(&[hosts[0].0.pid(), hosts[1].0.pid()], window(quick) * 2);
    metric("host_ladder_cpu_pct", cpu[0], "% of a core");
    metric("host_ladder_cpu_pct_baseline", cpu[1], "% of a core");
    metric("host_ladder_cpu_pct_ratio", cpu[0] / cpu[1], "ratio");
}

fn wait_url(view_out: &Mutex<String>) -> String {
    assert!(
        wait_text(view_out, "\"url\"", Duration::from_secs(20)).is_some(),
        "viewer URL"
    );
    event_text(view_out, "url", "url")
}

/// Wall-clock time of the capture pipeline's running time 0, from the `n`th capture-started.
fn capture_epoch(host_out: &Mutex<String>, n: usize) -> u64 {
    json_lines(host_out)
        .into_iter()
        .filter(|v| v["event"] == "capture-started")
        .nth(n)
        .and_then(|v| v["epoch_unix_ns"].as_u64())
        .expect("capture-started carries the capture epoch")
}

/// Capture → presentation p50 over `over`, polling a player's position (seconds of MPEG-TS
/// time: mpegtsmux starts its timestamps at one hour of capture running time).
fn player_p50(epoch: u64, over: Duration, position: impl Fn() -> Option<f64>) -> f64 {
    let mut lat = Vec::new();
    let end = Instant::now() + over;
    while Instant::now() < end {
        if let Some(pos) = position() {
            let now = gstiroh::net::unix_now_ns();
            let captured = epoch as f64 + (pos - 3600.0) * 1e9;
            lat.push((now as f64 - captured) / 1e6);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    median(lat)
}

/// The bare pipeline into fakesink, run by `gst-launch-1.0` (warmed up).
fn bare_pipeline(bare: &str, env: &[(String, String)]) -> Proc {
    let mut cmd = Command::new("gst-launch-1.0");
    // SAFETY: only fcntl (async-signal-safe) between fork and exec: the portal's PipeWire fd
    // that a Wayland description names (`fd=N`) must survive exec.
    unsafe {
        cmd.pre_exec(|| {
            if let Some(fd) = CAST_FD.get() {
                libc::fcntl(*fd, libc::F_SETFD, 0);
            }
            Ok(())
        });
    }
    let p = Proc::spawn(
        "gst-launch-1.0",
        cmd.arg("-q")
            .args(format!("{bare} ! fakesink").split_whitespace())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    std::thread::sleep(Duration::from_secs(2));
    p
}

/// Capture → mux p50 of `desc` (a capture pipeline ending in `mpegtsmux ! appsink name=out`),
/// in this process: the age of each frame (by its running time) when its first packet leaves
/// the mux, as irohsink would date it.
fn capture_to_mux(desc: &str, quick: bool) -> f64 {
    let pipeline = gst::parse::launch(desc).unwrap().downcast::<gst::Pipeline>().unwrap();
    let sink = pipeline.by_name("out").unwrap().downcast::<gst_app::AppSink>().unwrap();
    let lat = Arc::new(Mutex::new(Vec::new()));
    let l = lat.clone();
    let mut last_pts = None;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let pts = sample
                    .buffer_list()
                    .and_then(|l| l.get(0)?.pts())
                    .or_else(|| sample.buffer()?.pts());
                let seg = sample
                    .segment()
                    .and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned());
                if let (Some(pts), Some(seg), Some(clock), Some(base)) = (pts, seg, sink.clock(), sink.base_time())
                    && last_pts != Some(pts)
                    && let Some(running) = seg.to_running_time(pts)
                {
                    last_pts = Some(pts);
                    let age = clock.time().saturating_sub(base + running);
                    l.lock().unwrap().push(age.nseconds() as f64 / 1e6);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    lat.lock().unwrap().clear();
    std::thread::sleep(window(quick));
    pipeline.set_state(gst::State::Null).unwrap();
    let v = std::mem::take(&mut *lat.lock().unwrap());
    median(v)
}

/// The fd of the bench's own screen cast, for children (set once, before any child runs).
static CAST_FD: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// A screen cast the bench opens itself through the portal (the test desktop answers without
/// a dialog), so the bare pipeline captures the same screen as pixelpass.
struct BareCast {
    fd: std::os::fd::OwnedFd,
    node: u32,
    session: ashpd::desktop::Session<ashpd::desktop::screencast::Screencast>,
    rt: tokio::runtime::Runtime,
}

impl BareCast {
    fn open(bus: &str) -> Result<BareCast, String> {
        use ashpd::desktop::screencast::*;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = |e: ashpd::Error| e.to_string();
        let (session, fd, node) = rt.block_on(async {
            let conn = ashpd::zbus::connection::Builder::address(bus)
                .map_err(|e| e.to_string())?
                .build()
                .await
                .map_err(|e| e.to_string())?;
            let sc = Screencast::with_connection(conn).await.map_err(e)?;
            let session = sc.create_session(Default::default()).await.map_err(e)?;
            let select = SelectSourcesOptions::default()
                .set_sources(ashpd::enumflags2::BitFlags::from(SourceType::Monitor))
                .set_cursor_mode(CursorMode::Embedded);
            sc.select_sources(&session, select)
                .await
                .and_then(|r| r.response())
                .map_err(e)?;
            let streams = sc
                .start(&session, None, StartCastOptions::default())
                .await
                .and_then(|r| r.response())
                .map_err(e)?;
            let node = streams.streams().first().ok_or("no stream")?.pipe_wire_node_id();
            let fd = sc
                .open_pipe_wire_remote(&session, OpenPipeWireRemoteOptions::default())
                .await
                .map_err(e)?;
            Ok::<_, String>((session, fd, node))
        })?;
        let _ = CAST_FD.set(std::os::fd::AsRawFd::as_raw_fd(&fd));
        Ok(BareCast { fd, node, session, rt })
    }

    /// The same `pipewiresrc` settings as the launcher's.
    fn source(&self) -> String {
        format!(
            "pipewiresrc fd={} path={} do-timestamp=true keepalive-time=250 always-copy=true",
            std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            self.node
        )
    }
}

impl Drop for BareCast {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.session.close());
    }
}
