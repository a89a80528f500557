//! netbed: the processes the network tests run inside their namespaces.
//!
//! - `netbed relay ADDR`: a local iroh relay (plain HTTP), prints `READY`.
//! - `netbed host [--relay URL] [--key-file P] [--bitrate KBPS] [--max-lag MS] [--bind ADDR]
//!   [--renditions]`: a live 640x360 H.264/MPEG-TS share into irohsink (with `--renditions`
//!   also 426x240 at 1/3 and 320x180 at 1/8 of the bitrate, on request pads); prints
//!   `TICKET <t>` (again whenever it changes) and `STATS <json>` every second (irohsink stats
//!   + RSS).
//! - `netbed view TICKET [--relay URL] [--max-bitrate KBPS] [--window S]`: irohsrc → tsdemux →
//!   h264parse → avdec_h264 (latency p99 also over the last S seconds); prints
//!   `STATS <json>` every second: decoded frames, path, capture→receive latency percentiles
//!   over the whole run, GOPs skipped, reconnects, parser/decoder complaints, stalls.
//!
//! All exit on SIGTERM/SIGINT or when stdin closes.

use std::io::{BufRead as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use gst::prelude::*;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn out(line: String) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// Returns when stdin closes (the test dropped us) or a signal arrives.
fn wait_for_end() {
    std::thread::spawn(|| {
        let stdin = std::io::stdin();
        for _ in stdin.lock().lines() {}
        std::process::exit(0);
    });
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn relay(addr: &str) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut cfg = iroh_relay::server::ServerConfig::default();
        let bind: std::net::SocketAddr = addr.parse().context("relay address")?;
        cfg.relay = Some(iroh_relay::server::RelayConfig::new(bind));
        let server = iroh_relay::server::Server::spawn(cfg).await?;
        out(format!(
            "READY {}",
            server.http_addr().map(|a| a.to_string()).unwrap_or_default()
        ));
        tokio::signal::ctrl_c().await?;
        server.shutdown().await?;
        Ok(())
    })
}

fn host(args: &[String]) -> Result<()> {
    let mut props = String::from("relay=disabled");
    if let Some(r) = arg(args, "--relay") {
        props = format!("relay={r}");
    }
    if let Some(k) = arg(args, "--key-file") {
        props += &format!(" key-file={k}");
    }
    if let Some(b) = arg(args, "--bind") {
        props += &format!(" bind-address={b}");
    }
    if let Some(l) = arg(args, "--max-lag") {
        // "naive" comparison mode: a lag budget so large nothing is ever skipped
        props += &format!(" max-lag={l} slow-timeout={}", l.parse::<u64>().unwrap_or(1000) * 10);
    }
    let kbps = arg(args, "--bitrate").unwrap_or_else(|| "2000".into());
    // "snow" is noise: the encoder really spends the bitrate (the ball pattern needs ~0.4 Mbit/s)
    let pattern = arg(args, "--pattern").unwrap_or_else(|| "ball".into());
    let src = format!(
        "videotestsrc is-live=true pattern={pattern} ! video/x-raw,format=I420,width=640,height=360,framerate=30/1"
    );
    let enc = |kbps: u64| {
        format!(
            "x264enc tune=zerolatency speed-preset=ultrafast bitrate={kbps} key-int-max=30 vbv-buf-capacity=300 \
             option-string=scenecut=0 ! h264parse config-interval=-1 ! mpegtsmux"
        )
    };
    let desc = if args.iter().any(|a| a == "--renditions") {
        // the ladder: 640x360 at the bitrate, ~1/3 at 426x240, ~1/8 at 320x180, one source
        let k: u64 = kbps.parse().unwrap_or(2000);
        format!(
            "{src} ! tee name=t irohsink name=sink {props} sink::rendition-name=360p sink::bitrate={k} \
             sink_1::rendition-name=240p sink_1::bitrate={} sink_2::rendition-name=180p sink_2::bitrate={} \
             t. ! queue ! {} ! sink.sink \
             t. ! queue ! videoscale ! video/x-raw,width=426,height=240 ! {} ! sink.sink_1 \
             t. ! queue ! videoscale ! video/x-raw,width=320,height=180 ! {} ! sink.sink_2",
            k / 3,
            k / 8,
            enc(k),
            enc(k / 3),
            enc(k / 8)
        )
    } else {
        format!(
            "{src} ! {} ! irohsink name=sink {props}",
            enc(kbps.parse().unwrap_or(2000))
        )
    };
    let pipeline = gst::parse::launch(&desc)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("pipeline"))?;
    let sink = pipeline.by_name("sink").unwrap();
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing)?;
    wait_for_end();
    let mut last_tick = Instant::now();
    loop {
        if let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) {
            match msg.view() {
                gst::MessageView::Element(e) => {
                    if let Some(s) = e.structure()
                        && s.name() == "iroh-ticket"
                    {
                        out(format!("TICKET {}", s.get::<String>("ticket").unwrap_or_default()));
                    }
                }
                gst::MessageView::Error(e) => return Err(anyhow!("host: {}", e.error())),
                _ => {}
            }
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            let st = sink.property::<gst::Structure>("stats");
            let viewers: Vec<serde_json::Value> = st
                .get::<gst::Array>("viewer-stats")
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.get::<gst::Structure>().ok())
                        .map(|v| {
                            serde_json::json!({
                                "id": v.get::<String>("id").unwrap_or_default(),
                                "path": v.get::<String>("path").unwrap_or_default(),
                                "dropped_gops": v.get::<u64>("dropped-gops").unwrap_or(0),
                                "cut_gops": v.get::<u64>("cut-gops").unwrap_or(0),
                                "lag_ms": v.get::<u64>("lag-ms").unwrap_or(0),
                                "bytes": v.get::<u64>("bytes-sent").unwrap_or(0),
                                "rendition": v.get::<String>("rendition").unwrap_or_default(),
                                "switches": v.get::<u64>("rendition-switches").unwrap_or(0),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            out(format!(
                "STATS {}",
                serde_json::json!({
                    "viewers": st.get::<u32>("viewers").unwrap_or(0),
                    "viewers_total": st.get::<u64>("viewers-total").unwrap_or(0),
                    "dropped_gops": st.get::<u64>("dropped-gops").unwrap_or(0),
                    "cut_gops": st.get::<u64>("cut-gops").unwrap_or(0),
                    "cached_bytes": st.get::<u64>("cached-bytes").unwrap_or(0),
                    "rss_kb": rss_kb(),
                    "per_viewer": viewers,
                })
            ));
        }
    }
}

fn view(args: &[String]) -> Result<()> {
    let ticket = args.get(2).context("ticket")?;
    let relay = arg(args, "--relay").unwrap_or_else(|| "disabled".into());
    let max_bitrate = arg(args, "--max-bitrate").unwrap_or_else(|| "0".into());
    // latency percentiles also over the last WINDOW seconds (the test's measuring window)
    let window = Duration::from_secs(arg(args, "--window").and_then(|w| w.parse().ok()).unwrap_or(10));
    let desc = format!(
        "irohsrc name=src ticket={ticket} relay={relay} reconnect-timeout=60000 max-bitrate={max_bitrate} \
         ! tsdemux ! h264parse ! avdec_h264 ! appsink name=out sync=false"
    );
    let problems = Arc::new(AtomicU64::new(0));
    // The last buffers irohsrc pushed, described, for the first decoder complaint.
    let recent: Arc<Mutex<std::collections::VecDeque<String>>> = Arc::default();
    {
        let p = problems.clone();
        let recent = recent.clone();
        for cat in ["libav", "h264parse"] {
            gst::log::set_threshold_for_name(cat, gst::DebugLevel::Warning);
        }
        gst::log::add_log_function(move |cat, level, _f, _fn, _l, _o, m| {
            if matches!(cat.name(), "libav" | "h264parse") && level <= gst::DebugLevel::Warning {
                if p.fetch_add(1, Ordering::Relaxed) == 0 {
                    for l in recent.lock().unwrap().iter() {
                        out(format!("RECENT {l}"));
                    }
                }
                // what the decoder said, for the test's failure message
                out(format!(
                    "PROBLEM {}: {}",
                    cat.name(),
                    m.get().map(|s| s.to_string()).unwrap_or_default()
                ));
            }
        });
    }
    let pipeline = gst::parse::launch(&desc)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("pipeline"))?;
    let src = pipeline.by_name("src").unwrap();
    let appsink = pipeline.by_name("out").unwrap().downcast::<gst_app::AppSink>().unwrap();
    // capture→receive latency of every buffer irohsrc outputs, for the whole run
    let lat: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let recent_lat: Arc<Mutex<std::collections::VecDeque<(Instant, f64)>>> = Arc::default();
    let newest_capture = Arc::new(AtomicU64::new(0));
    {
        let lat = lat.clone();
        let recent_lat = recent_lat.clone();
        let newest = newest_capture.clone();
        let unix = gst::Caps::builder("timestamp/x-unix").build();
        let recent = recent.clone();
        src.static_pad("src")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
                    let mut r = recent.lock().unwrap();
                    r.push_back(describe_ts(b));
                    if r.len() > 24 {
                        r.pop_front();
                    }
                }
                if let Some(gst::PadProbeData::Buffer(b)) = &info.data
                    && let Some(m) = b
                        .iter_meta::<gst::ReferenceTimestampMeta>()
                        .find(|m| m.reference().is_subset(&unix))
                {
                    let now = gstiroh::net::unix_now_ns();
                    let l = now.saturating_sub(m.timestamp().nseconds()) as f64 / 1e6;
                    lat.lock().unwrap().push(l);
                    let mut r = recent_lat.lock().unwrap();
                    r.push_back((Instant::now(), l));
                    while r.front().is_some_and(|(t, _)| t.elapsed() > window) {
                        r.pop_front();
                    }
                    newest.fetch_max(m.timestamp().nseconds(), Ordering::Relaxed);
                }
                gst::PadProbeReturn::Ok
            });
    }
    let frames = Arc::new(AtomicU64::new(0));
    let last_frame = Arc::new(Mutex::new(Instant::now()));
    let max_gap_ms = Arc::new(AtomicU64::new(0));
    {
        let (frames, last_frame, max_gap) = (frames.clone(), last_frame.clone(), max_gap_ms.clone());
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let _ = s.pull_sample();
                    let n = frames.fetch_add(1, Ordering::Relaxed);
                    let mut lf = last_frame.lock().unwrap();
                    if n > 0 {
                        max_gap.fetch_max(lf.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                    *lf = Instant::now();
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing)?;
    wait_for_end();
    let mut last_tick = Instant::now();
    // How far behind live the newest received frame is, sampled ten times a second: a stalled
    // viewer keeps growing here even though it receives nothing to time.
    let mut behind: Vec<f64> = Vec::new();
    loop {
        let n = newest_capture.load(Ordering::Relaxed);
        if n > 0 {
            behind.push(gstiroh::net::unix_now_ns().saturating_sub(n) as f64 / 1e6);
        }
        if let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) {
            match msg.view() {
                gst::MessageView::Error(e) => {
                    out(format!("ERROR {}", e.error()));
                    return Err(anyhow!("view: {}", e.error()));
                }
                gst::MessageView::Eos(_) => {
                    out("EOS".into());
                    return Ok(());
                }
                gst::MessageView::Element(e) => {
                    if let Some(s) = e.structure() {
                        out(format!("MSG {}", s));
                    }
                }
                _ => {}
            }
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            let st = src.property::<gst::Structure>("stats");
            let mut l = lat.lock().unwrap().clone();
            l.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                l.get(((l.len().max(1) - 1) as f64 * p).round() as usize)
                    .copied()
                    .unwrap_or(-1.0)
            };
            let mut w: Vec<f64> = recent_lat.lock().unwrap().iter().map(|(_, l)| *l).collect();
            w.sort_by(f64::total_cmp);
            let wp99 = w
                .get(((w.len().max(1) - 1) as f64 * 0.99).round() as usize)
                .copied()
                .unwrap_or(-1.0);
            // the same over the last WINDOW seconds (ten samples a second)
            let mut wb = behind[behind.len().saturating_sub(window.as_secs() as usize * 10)..].to_vec();
            wb.sort_by(f64::total_cmp);
            let wbp99 = wb
                .get(((wb.len().max(1) - 1) as f64 * 0.99).round() as usize)
                .copied()
                .unwrap_or(-1.0);
            let mut b = behind.clone();
            b.sort_by(f64::total_cmp);
            let bpct = |p: f64| {
                b.get(((b.len().max(1) - 1) as f64 * p).round() as usize)
                    .copied()
                    .unwrap_or(-1.0)
            };
            out(format!(
                "STATS {}",
                serde_json::json!({
                    "frames": frames.load(Ordering::Relaxed),
                    "path": st.get::<String>("path").unwrap_or_default(),
                    "connected": st.get::<bool>("connected").unwrap_or(false),
                    "lat_p50": pct(0.5),
                    "lat_p99": pct(0.99),
                    "lat_max": l.last().copied().unwrap_or(-1.0),
                    "window_lat_p99": wp99,
                    "rendition": st.get::<String>("rendition").unwrap_or_default(),
                    "rendition_switches": st.get::<u64>("rendition-switches").unwrap_or(0),
                    "behind_p50": bpct(0.5),
                    "behind_p99": bpct(0.99),
                    "window_behind_p99": wbp99,
                    "samples": l.len(),
                    "gops_skipped": st.get::<u64>("gops-skipped").unwrap_or(0),
                    "gops_cut": st.get::<u64>("gops-cut").unwrap_or(0),
                    "reconnects": st.get::<u64>("reconnects").unwrap_or(0),
                    "bytes": st.get::<u64>("bytes-received").unwrap_or(0),
                    "problems": problems.load(Ordering::Relaxed),
                    "max_gap_ms": max_gap_ms.load(Ordering::Relaxed),
                    "since_last_frame_ms": last_frame.lock().unwrap().elapsed().as_millis() as u64,
                })
            ));
        }
    }
}

/// `netbed churn TICKET N`: N viewers join (first buffer received) and leave, one after another.
fn churn(args: &[String]) -> Result<()> {
    let ticket = args.get(2).context("ticket")?;
    let n: u32 = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(20);
    let relay = arg(args, "--relay").unwrap_or_else(|| "disabled".into());
    let mut ok = 0;
    for i in 0..n {
        let p = gst::parse::launch(&format!(
            "irohsrc ticket={ticket} relay={relay} reconnect=false ! appsink name=out sync=false"
        ))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("pipeline"))?;
        let sink = p.by_name("out").unwrap().downcast::<gst_app::AppSink>().unwrap();
        p.set_state(gst::State::Playing)?;
        if sink.try_pull_sample(gst::ClockTime::from_seconds(10)).is_some() {
            ok += 1;
        }
        p.set_state(gst::State::Null)?;
        if i % 10 == 9 {
            out(format!("CHURN {} {ok}", i + 1));
        }
    }
    out(format!("CHURN-DONE {n} {ok}"));
    Ok(())
}

/// `netbed attack TICKET KIND`: a misbehaving peer. KIND: garbage (random bytes as the
/// hello), streams (opens 1000 streams), mute (valid hello, then never reads), version (dials
/// an unknown protocol version), secret (wrong secret). Prints `ATTACK <kind> <outcome>`.
fn attack(args: &[String]) -> Result<()> {
    use gstiroh::protocol::{ALPN, Control};
    let mut t: gstiroh::ticket::Ticket = args.get(2).context("ticket")?.parse()?;
    let kind = args.get(3).cloned().unwrap_or_default();
    let rt = tokio::runtime::Runtime::new()?;
    let outcome: String = rt.block_on(async {
        let relay: gstiroh::net::Relay = arg(args, "--relay")
            .unwrap_or_else(|| "disabled".into())
            .parse()
            .map_err(|e: String| anyhow!(e))?;
        let ep = gstiroh::net::bind(iroh::SecretKey::generate(), &relay, &[], vec![]).await?;
        let alpn: &[u8] = if kind == "version" { b"gst-iroh/9" } else { ALPN };
        let conn = match tokio::time::timeout(Duration::from_secs(10), ep.connect(t.addr.clone(), alpn)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Ok::<_, anyhow::Error>(format!("refused: {e}")),
            Err(_) => return Ok("connect timed out".into()),
        };
        let closed = |conn: iroh::endpoint::Connection| async move {
            match tokio::time::timeout(Duration::from_secs(15), conn.closed()).await {
                Ok(e) => format!("closed by host: {e}"),
                Err(_) => "still open after 15 s".into(),
            }
        };
        match kind.as_str() {
            "garbage" => {
                let (mut send, _recv) = conn.open_bi().await?;
                let junk: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
                let _ = send.write_all(&junk).await;
                Ok(closed(conn).await)
            }
            "streams" => {
                let mut opened = 0;
                for _ in 0..1000 {
                    match tokio::time::timeout(Duration::from_millis(200), conn.open_bi()).await {
                        Ok(Ok((mut s, _r))) => {
                            let _ = s.write_all(&[0]).await;
                            opened += 1;
                        }
                        _ => break,
                    }
                }
                Ok(format!("opened {opened} streams; {}", closed(conn).await))
            }
            "secret" | "mute" => {
                if kind == "secret" {
                    t.secret[0] ^= 0xff;
                }
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_all(
                    &Control::Hello {
                        secret: t.secret,
                        name: kind.clone(),
                    }
                    .encode(),
                )
                .await?;
                if kind == "mute" {
                    // never read anything: the host must not queue for us forever
                    let _keep = recv;
                    return Ok(closed(conn).await);
                }
                let mut buf = [0u8; 256];
                let _ = recv.read(&mut buf).await;
                Ok(closed(conn).await)
            }
            "version" => Ok(closed(conn).await),
            other => Err(anyhow!("unknown attack {other}")),
        }
    })?;
    out(format!("ATTACK {kind} {outcome}"));
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    gst::init().expect("gstreamer");
    gstiroh::plugin_register_static().expect("gst-iroh");
    let r = match args.get(1).map(String::as_str) {
        Some("relay") => relay(args.get(2).map_or("0.0.0.0:3340", String::as_str)),
        Some("host") => host(&args),
        Some("view") => view(&args),
        Some("churn") => churn(&args),
        Some("attack") => attack(&args),
        _ => Err(anyhow!("usage: netbed relay ADDR | host [...] | view TICKET [...]")),
    };
    if let Err(e) = r {
        eprintln!("netbed: {e:#}");
        std::process::exit(1);
    }
}

/// One line about a TS buffer: size, flags, and per PID the packets, PES starts and the
/// continuity counters at both ends (to see a cut frame).
fn describe_ts(b: &gst::BufferRef) -> String {
    let Ok(m) = b.map_readable() else {
        return "unmappable".into();
    };
    let mut pids: std::collections::BTreeMap<u16, (u32, u32, u8, u8)> = Default::default();
    for p in m.chunks(188) {
        if p.len() < 4 || p[0] != 0x47 {
            continue;
        }
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        let cc = p[3] & 0x0f;
        let e = pids.entry(pid).or_insert((0, 0, cc, cc));
        e.0 += 1;
        if p[1] & 0x40 != 0 {
            e.1 += 1;
        }
        e.3 = cc;
    }
    format!(
        "{} B{}{} pts {:?} {}",
        m.len(),
        if b.flags().contains(gst::BufferFlags::DISCONT) {
            " DISCONT"
        } else {
            ""
        },
        if b.flags().contains(gst::BufferFlags::DELTA_UNIT) {
            ""
        } else {
            " KEY"
        },
        b.pts().map(|t| t.mseconds()),
        pids.iter()
            .map(|(pid, (n, s, c0, c1))| format!("pid{pid}:{n}p/{s}s cc{c0}-{c1}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}
