//! Real networks: host behind a NAT router, viewers and a local iroh relay on the "internet",
//! each in its own network namespace. Rate limits (tbf), loss (iptables statistic) and link
//! outages (iptables drop) on the viewer links. `tc netem` is not in this kernel, so added delay
//! is left out.
//!
//! Needs root (CI runs as root); skips with a message otherwise. Short CI mode by default;
//! `NETBED_LONG=1` runs the long durations the figures in the README come from. Every test
//! prints `FIGURE <name> <value>` lines (see them with `--nocapture`).

use pixelpass_test_support as support;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use support::*;

const NETBED: &str = env!("CARGO_BIN_EXE_netbed");
const RELAY_URL: &str = "http://198.51.100.2:3340";

fn long() -> bool {
    std::env::var_os("NETBED_LONG").is_some()
}

/// One test at a time: they share two cores and measure latency.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn figure(name: &str, value: impl std::fmt::Display) {
    eprintln!("FIGURE {name} {value}");
}

/// A netbed process inside a namespace; stdin held open (closing it ends the process).
struct Node {
    proc: Proc,
    out: Arc<Mutex<String>>,
}

impl Node {
    fn stats(&self) -> Option<serde_json::Value> {
        self.out
            .lock()
            .unwrap()
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("STATS ").and_then(|j| serde_json::from_str(j).ok()))
    }

    fn stat_u64(&self, key: &str) -> u64 {
        self.stats().and_then(|s| s[key].as_u64()).unwrap_or(0)
    }

    fn stat_f64(&self, key: &str) -> f64 {
        self.stats().and_then(|s| s[key].as_f64()).unwrap_or(-1.0)
    }

    fn stat_str(&self, key: &str) -> String {
        self.stats()
            .and_then(|s| s[key].as_str().map(String::from))
            .unwrap_or_default()
    }

    fn path(&self) -> String {
        self.stats()
            .and_then(|s| s["path"].as_str().map(String::from))
            .unwrap_or_default()
    }

    fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }
}

/// The topology:
/// host 10.10.1.2 — [router: MASQUERADE NAT, stateful] — viewer i 203.0.(112+i).2, relay 198.51.100.2
struct Net {
    prefix: String,
    names: Vec<String>,
    viewers: usize,
    nodes: Vec<Node>,
}

impl Net {
    fn up(viewers: usize) -> Option<Net> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !have("ip") || !have("iptables") || !have("tc") {
            support::skip("network namespaces need root, iproute2 and iptables (CI runs as root)");
            return None;
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let prefix = format!(
            "ppnb{}x{}-",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut names = vec!["host".to_string(), "router".into(), "relay".into()];
        names.extend((1..=viewers).map(|i| format!("v{i}")));
        let net = Net {
            prefix,
            names,
            viewers,
            nodes: Vec::new(),
        };
        for n in net.names.clone() {
            run("ip", &["netns", "add", &net.ns(&n)]);
            net.sh(&n, "ip link set lo up");
        }
        let (h, r, y) = (net.ns("host"), net.ns("router"), net.ns("relay"));
        run(
            "ip",
            &[
                "link", "add", "h0", "netns", &h, "type", "veth", "peer", "name", "rl", "netns", &r,
            ],
        );
        run(
            "ip",
            &[
                "link", "add", "y0", "netns", &y, "type", "veth", "peer", "name", "ry", "netns", &r,
            ],
        );
        net.sh(
            "host",
            "ip addr add 10.10.1.2/24 dev h0 && ip link set h0 up && ip route add default via 10.10.1.1",
        );
        net.sh(
            "relay",
            "ip addr add 198.51.100.2/24 dev y0 && ip link set y0 up && ip route add default via 198.51.100.1",
        );
        net.sh(
            "router",
            "ip addr add 10.10.1.1/24 dev rl && ip link set rl up && \
             ip addr add 198.51.100.1/24 dev ry && ip link set ry up && sysctl -qw net.ipv4.ip_forward=1 && \
             iptables -t nat -A POSTROUTING -s 10.10.1.0/24 ! -o rl -j MASQUERADE && \
             iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT && \
             iptables -A FORWARD -i rl -j ACCEPT && iptables -A FORWARD -o rl -j DROP",
        );
        for i in 1..=viewers {
            let v = net.ns(&format!("v{i}"));
            run(
                "ip",
                &[
                    "link",
                    "add",
                    "v0",
                    "netns",
                    &v,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("rw{i}"),
                    "netns",
                    &r,
                ],
            );
            net.sh(
                &format!("v{i}"),
                &format!(
                    "ip addr add 203.0.{}.2/24 dev v0 && ip link set v0 up && ip route add default via 203.0.{}.1",
                    112 + i,
                    112 + i
                ),
            );
            net.sh(
                "router",
                &format!("ip addr add 203.0.{}.1/24 dev rw{i} && ip link set rw{i} up", 112 + i),
            );
        }
        Some(net)
    }

    fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }

    fn sh(&self, n: &str, cmd: &str) {
        let st = Command::new("ip")
            .args(["netns", "exec", &self.ns(n), "sh", "-c", cmd])
            .status()
            .unwrap();
        assert!(st.success(), "in {n}: {cmd}");
    }

    /// Starts `netbed ARGS` in namespace `n`.
    fn start(&mut self, n: &str, args: &[&str]) -> usize {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(n), NETBED])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // NETBED_LOGS=DIR keeps each process's stderr (with GST_DEBUG, its element logs)
        if let Some(dir) = std::env::var_os("NETBED_LOGS") {
            let path = std::path::Path::new(&dir).join(format!("{}-{n}-{}.log", self.prefix, self.nodes.len()));
            cmd.stderr(std::fs::File::create(path).expect("NETBED_LOGS is a writable directory"));
        }
        let mut proc = Proc::spawn(n, &mut cmd);
        let out = collect(proc.child.as_mut().unwrap().stdout.take().unwrap());
        self.nodes.push(Node { proc, out });
        self.nodes.len() - 1
    }

    fn stop(&mut self, idx: usize) {
        if let Some(c) = self.nodes[idx].proc.child.as_mut()
            && let Some(mut stdin) = c.stdin.take()
        {
            let _ = stdin.flush();
        }
        self.nodes[idx].proc.signal(libc::SIGTERM);
        let _ = self.nodes[idx].proc.wait_timeout(Duration::from_secs(5));
    }

    fn relay(&mut self) -> usize {
        let i = self.start("relay", &["relay", "198.51.100.2:3340"]);
        assert!(
            wait_text(&self.nodes[i].out, "READY", Duration::from_secs(10)).is_some(),
            "relay up"
        );
        i
    }

    /// Starts the host; returns it and its ticket once the ticket names the relay.
    fn host(&mut self, extra: &[&str]) -> (usize, String) {
        let mut args = vec!["host", "--relay", RELAY_URL];
        args.extend_from_slice(extra);
        let i = self.start("host", &args);
        let mut ticket = String::new();
        let ok = wait_for(Duration::from_secs(20), || {
            let text = self.nodes[i].text();
            ticket = text
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("TICKET ").map(String::from))
                .unwrap_or_default();
            ticket
                .parse::<gstiroh::ticket::Ticket>()
                .is_ok_and(|t| t.addr.relay_urls().next().is_some())
        });
        assert!(
            ok,
            "host ticket with the relay in it; host said:\n{}",
            self.nodes[i].text()
        );
        (i, ticket)
    }

    fn viewer(&mut self, n: usize, ticket: &str) -> usize {
        self.start(&format!("v{n}"), &["view", ticket, "--relay", RELAY_URL])
    }

    fn viewer_with(&mut self, n: usize, ticket: &str, extra: &[&str]) -> usize {
        let mut args = vec!["view", ticket, "--relay", RELAY_URL];
        args.extend_from_slice(extra);
        self.start(&format!("v{n}"), &args)
    }

    fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    fn wait_frames(&self, i: usize, n: u64, timeout: Duration) -> bool {
        wait_for(timeout, || self.node(i).stat_u64("frames") >= n)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        while let Some(n) = self.nodes.pop() {
            drop(n);
        }
        for n in &self.names {
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("{}{n}", self.prefix)])
                .status();
        }
        let _ = self.viewers;
    }
}

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().unwrap();
    assert!(st.success(), "{cmd} {args:?}");
}

const BLOCK_DIRECT: &str = "iptables -I FORWARD -p udp -s 10.10.1.0/24 -d 203.0.0.0/16 -j DROP && \
                            iptables -I FORWARD -p udp -s 203.0.0.0/16 -d 10.10.1.0/24 -j DROP";
const UNBLOCK_DIRECT: &str = "iptables -D FORWARD -p udp -s 10.10.1.0/24 -d 203.0.0.0/16 -j DROP && \
                              iptables -D FORWARD -p udp -s 203.0.0.0/16 -d 10.10.1.0/24 -j DROP";

#[test]
fn direct_through_the_nat() {
    let _g = serial();
    let Some(mut net) = Net::up(1) else { return };
    net.relay();
    let (_h, ticket) = net.host(&[]);
    let t0 = Instant::now();
    let v = net.viewer(1, &ticket);
    assert!(
        net.wait_frames(v, 60, Duration::from_secs(30)),
        "viewer decodes: {}",
        net.node(v).text()
    );
    figure("nat_first_60_frames_s", format!("{:.2}", t0.elapsed().as_secs_f64()));
    let direct = wait_for(Duration::from_secs(20), || net.node(v).path() == "direct");
    figure("nat_path", net.node(v).path());
    assert!(direct, "hole-punched through the NAT: path {}", net.node(v).path());
    std::thread::sleep(Duration::from_secs(if long() { 30 } else { 5 }));
    let n = net.node(v);
    figure("nat_direct_latency_p50_ms", format!("{:.1}", n.stat_f64("lat_p50")));
    figure("nat_direct_latency_p99_ms", format!("{:.1}", n.stat_f64("lat_p99")));
    assert_eq!(n.stat_u64("problems"), 0, "no decoder complaints");
}

/// Direct UDP between the host's LAN and the viewers blocked: the stream flows over the relay.
/// Returns the viewer.
fn relayed(net: &mut Net) -> usize {
    net.sh("router", BLOCK_DIRECT);
    net.relay();
    let (_h, ticket) = net.host(&[]);
    let v = net.viewer(1, &ticket);
    assert!(
        net.wait_frames(v, 60, Duration::from_secs(30)),
        "decodes over the relay: {}",
        net.node(v).text()
    );
    assert_eq!(net.node(v).path(), "relay");
    std::thread::sleep(Duration::from_secs(if long() { 30 } else { 5 }));
    figure(
        "relay_latency_p50_ms",
        format!("{:.1}", net.node(v).stat_f64("lat_p50")),
    );
    figure(
        "relay_latency_p99_ms",
        format!("{:.1}", net.node(v).stat_f64("lat_p99")),
    );
    assert_eq!(net.node(v).stat_u64("problems"), 0);
    v
}

/// Direct UDP becomes possible mid-stream: the connection moves off the relay with no visible
/// break. iroh re-checks a relayed connection for a better path once a minute
/// (UPGRADE_INTERVAL), so this takes up to about 65 s.
#[test]
fn relay_only_then_upgrade_to_direct_without_a_break() {
    let _g = serial();
    let Some(mut net) = Net::up(1) else { return };
    let v = relayed(&mut net);
    let gap_before = net.node(v).stat_u64("max_gap_ms");
    net.sh("router", UNBLOCK_DIRECT);
    let t = Instant::now();
    let upgraded = wait_for(Duration::from_secs(90), || net.node(v).path() == "direct");
    figure("relay_to_direct_upgrade_s", format!("{:.1}", t.elapsed().as_secs_f64()));
    assert!(
        upgraded,
        "the connection moved to the direct path: {}",
        net.node(v).path()
    );
    std::thread::sleep(Duration::from_secs(3));
    let n = net.node(v);
    figure("upgrade_max_frame_gap_ms", n.stat_u64("max_gap_ms"));
    assert!(
        n.stat_u64("max_gap_ms") < 500,
        "no visible break (gap before {gap_before} ms)"
    );
    assert_eq!(n.stat_u64("reconnects"), 0);
    assert_eq!(n.stat_u64("problems"), 0);
}

/// What one slow-viewer run measured.
struct SlowRun {
    /// How far behind live the slow viewer's newest frame was, p99 (ms), in the steady state:
    /// from 3 s after its first frame (the join, on a path nothing is known of, comes first).
    slow_p99: f64,
    /// The same over its whole life, the join included.
    slow_p99_with_join: f64,
    slow_fps: f64,
    /// GOPs skipped whole plus GOPs cut short, as the slow viewer saw them.
    slow_dropped: u64,
    /// GOPs the host cut short for the slow viewer, as the host counted them.
    host_cut: u64,
    /// The free viewer with the slow one there (over the measured window).
    fast: Free,
    /// The free viewer alone, before the slow one joined: the same run's baseline.
    fast_alone: Free,
}

/// What a viewer on a free link measured over a window.
#[derive(Debug, Clone, Copy)]
struct Free {
    /// Capture → receive over the window, p99 (ms).
    p99: f64,
    fps: f64,
}

impl Free {
    /// Within what the same viewer did alone: frame rate ±10 %, p99 at most 1.3× (+50 ms, so a
    /// few ms of noise on a small figure does not count).
    fn unaffected_by(&self, alone: &Free) -> bool {
        (self.fps - alone.fps).abs() <= 0.1 * alone.fps && self.p99 <= 1.3 * alone.p99 + 50.0
    }
}

/// Starts viewer 2 (free link, `--window secs`) and measures it alone for `secs`.
fn free_viewer_alone(net: &mut Net, ticket: &str, secs: u64) -> (usize, Free) {
    let window = secs.to_string();
    let fast = net.viewer_with(2, ticket, &["--window", &window]);
    assert!(net.wait_frames(fast, 30, Duration::from_secs(30)));
    let (f0, t0) = (net.node(fast).stat_u64("frames"), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let fps = (net.node(fast).stat_u64("frames") - f0) as f64 / t0.elapsed().as_secs_f64();
    let p99 = net.node(fast).stat_f64("window_lat_p99");
    (fast, Free { p99, fps })
}

/// Viewer 2 on a free link measured alone first, then viewer 1 joins on a link slower than
/// the stream and both are measured over the next `secs`.
fn slow_viewer_run(net: &mut Net, host_args: &[&str], secs: u64) -> SlowRun {
    let (h, ticket) = net.host(host_args);
    let (fast, fast_alone) = free_viewer_alone(net, &ticket, secs);
    let steady = (secs - 3).to_string();
    let slow = net.viewer_with(1, &ticket, &["--window", &steady]);
    assert!(net.wait_frames(slow, 1, Duration::from_secs(30)));
    let frames = |net: &Net| (net.node(slow).stat_u64("frames"), net.node(fast).stat_u64("frames"));
    let (f0, t0) = (frames(net), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (f1, dt) = (frames(net), t0.elapsed().as_secs_f64());
    for l in net
        .node(slow)
        .text()
        .lines()
        .filter(|l| l.starts_with("MSG") || l.starts_with("ERROR"))
    {
        eprintln!("slow viewer: {l}");
    }
    eprintln!(
        "slow viewer: {} bytes, {} frames, behind live p50 {} ms; fast viewer: {} bytes, {} frames",
        net.node(slow).stat_u64("bytes"),
        net.node(slow).stat_u64("frames"),
        net.node(slow).stat_f64("behind_p50"),
        net.node(fast).stat_u64("bytes"),
        net.node(fast).stat_u64("frames")
    );
    let host = net.node(h).stats().unwrap_or_default();
    eprintln!("host: {host}");
    assert_eq!(
        net.node(fast).stat_u64("problems"),
        0,
        "the fast viewer decodes cleanly"
    );
    SlowRun {
        slow_p99: net.node(slow).stat_f64("window_behind_p99"),
        slow_p99_with_join: net.node(slow).stat_f64("behind_p99"),
        slow_fps: (f1.0 - f0.0) as f64 / dt,
        slow_dropped: net.node(slow).stat_u64("gops_skipped") + net.node(slow).stat_u64("gops_cut"),
        // the fast viewer is never cut: the host's total is the slow viewer's
        host_cut: host["cut_gops"].as_u64().unwrap_or(0),
        fast: Free {
            p99: net.node(fast).stat_f64("window_lat_p99"),
            fps: (f1.1 - f0.1) as f64 / dt,
        },
        fast_alone,
    }
}

#[test]
fn a_slow_viewer_skips_gops_and_never_slows_the_others() {
    let _g = serial();
    let secs = if long() { 60 } else { 15 };
    // Stream ~2 Mbit/s; viewer 1's link 1 Mbit/s.
    let limit = "tc qdisc add dev rw1 root tbf rate 1mbit burst 32kbit latency 400ms";
    let (ours, naive) = {
        let Some(mut net) = Net::up(2) else { return };
        net.sh("router", limit);
        net.relay();
        let ours = slow_viewer_run(&mut net, &["--pattern", "snow"], secs);
        drop(net);
        let mut net = Net::up(2).unwrap();
        net.sh("router", limit);
        net.relay();
        // naive reliable fanout: a lag budget so large nothing is ever skipped
        let naive = slow_viewer_run(&mut net, &["--pattern", "snow", "--max-lag", "600000"], secs);
        (ours, naive)
    };
    figure("slow_viewer_p99_ms", format!("{:.0}", ours.slow_p99));
    figure(
        "slow_viewer_p99_ms_with_join",
        format!("{:.0}", ours.slow_p99_with_join),
    );
    figure("slow_viewer_fps", format!("{:.1}", ours.slow_fps));
    figure("slow_viewer_gops_dropped_or_cut", ours.slow_dropped);
    figure("host_gops_cut", ours.host_cut);
    figure("fast_viewer_p99_ms", format!("{:.0}", ours.fast.p99));
    figure("fast_viewer_alone_p99_ms", format!("{:.0}", ours.fast_alone.p99));
    figure(
        "fast_viewer_p99_ratio",
        format!("{:.2}", ours.fast.p99 / ours.fast_alone.p99),
    );
    figure("fast_viewer_fps", format!("{:.1}", ours.fast.fps));
    figure("fast_viewer_alone_fps", format!("{:.1}", ours.fast_alone.fps));
    figure("naive_slow_viewer_p99_ms", format!("{:.0}", naive.slow_p99));
    figure("naive_fast_viewer_p99_ms", format!("{:.0}", naive.fast.p99));
    figure("naive_fast_viewer_fps", format!("{:.1}", naive.fast.fps));
    assert!(
        ours.slow_p99 <= 1500.0,
        "slow viewer stays within 1.5 s of live: p99 {} ms",
        ours.slow_p99
    );
    assert!(
        ours.slow_dropped > 0,
        "it got there by leaving out media (GOP tails or whole GOPs)"
    );
    assert!(
        ours.fast.unaffected_by(&ours.fast_alone),
        "the fast viewer is not slowed: {:?} with the slow viewer, {:?} alone",
        ours.fast,
        ours.fast_alone
    );
    assert!(
        naive.slow_p99 > 2.0 * ours.slow_p99,
        "the naive fanout falls behind: {} vs {} ms",
        naive.slow_p99,
        ours.slow_p99
    );
}

/// The host encodes a ladder (640x360 at 2 Mbit/s, 1/3 and 1/8 of it at lower resolutions).
/// Viewer 1's link carries 40 % of the top rung, viewer 2's is free: viewer 1 moves down
/// within 3 s and then plays every frame near live; viewer 2 stays on the top rung untouched;
/// when viewer 1's link is restored it is back on the top rung within 15 s.
#[test]
fn a_slow_viewer_gets_a_lower_rendition_and_plays_every_frame_near_live() {
    let _g = serial();
    let secs = if long() { 30 } else { 12 };
    let Some(mut net) = Net::up(2) else { return };
    net.sh(
        "router",
        "tc qdisc add dev rw1 root tbf rate 800kbit burst 32kbit latency 400ms",
    );
    net.relay();
    let (h, ticket) = net.host(&["--pattern", "snow", "--renditions"]);
    let window = secs.to_string();
    let (fast, fast_alone) = free_viewer_alone(&mut net, &ticket, secs);
    let slow = net.viewer_with(1, &ticket, &["--window", &window]);
    let t_join = Instant::now();
    let switched = wait_for(Duration::from_secs(10), || {
        net.node(slow).stat_u64("rendition_switches") >= 1
    });
    figure(
        "renditions_first_switch_down_s",
        format!("{:.2}", t_join.elapsed().as_secs_f64()),
    );
    assert!(switched, "the slow viewer moved down: {}", net.node(slow).text());
    // at most 3 s after joining, the measured window starts
    std::thread::sleep(Duration::from_secs(3).saturating_sub(t_join.elapsed()));
    let snap = |net: &Net| {
        (
            net.node(slow).stat_u64("frames"),
            net.node(slow).stat_u64("gops_skipped") + net.node(slow).stat_u64("gops_cut"),
            net.node(fast).stat_u64("frames"),
        )
    };
    let (s0, t0) = (snap(&net), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (s1, dt) = (snap(&net), t0.elapsed().as_secs_f64());
    let (n_slow, n_fast) = (net.node(slow), net.node(fast));
    let slow_fps = (s1.0 - s0.0) as f64 / dt;
    let fast_fps = (s1.2 - s0.2) as f64 / dt;
    eprintln!("host: {}", net.node(h).stats().unwrap_or_default());
    figure("renditions_slow_viewer_fps", format!("{slow_fps:.1}"));
    figure("renditions_slow_viewer_gops_skipped_or_cut", s1.1 - s0.1);
    figure(
        "renditions_slow_viewer_p99_ms",
        format!("{:.0}", n_slow.stat_f64("window_lat_p99")),
    );
    figure("renditions_slow_viewer_rendition", n_slow.stat_str("rendition"));
    figure("renditions_fast_viewer_fps", format!("{fast_fps:.1}"));
    figure(
        "renditions_fast_viewer_p99_ms",
        format!("{:.0}", n_fast.stat_f64("window_lat_p99")),
    );
    assert_eq!(
        n_slow.stat_u64("problems") + n_fast.stat_u64("problems"),
        0,
        "no decoder complaints"
    );
    assert!(slow_fps >= 28.0, "the slow viewer plays every frame: {slow_fps:.1} fps");
    assert_eq!(s1.1 - s0.1, 0, "no GOP skipped or cut for the slow viewer");
    assert!(
        n_slow.stat_f64("window_lat_p99") <= 400.0,
        "the slow viewer stays near live: p99 {} ms",
        n_slow.stat_f64("window_lat_p99")
    );
    assert_ne!(n_slow.stat_str("rendition"), "360p");
    assert_eq!(n_fast.stat_str("rendition"), "360p", "the free viewer stays on top");
    assert_eq!(n_fast.stat_u64("rendition_switches"), 0);
    let fast_now = Free {
        p99: n_fast.stat_f64("window_lat_p99"),
        fps: fast_fps,
    };
    figure("renditions_fast_viewer_alone_p99_ms", format!("{:.0}", fast_alone.p99));
    assert!(
        fast_now.unaffected_by(&fast_alone),
        "the free viewer is untouched: {fast_now:?} with the slow viewer, {fast_alone:?} alone"
    );
    // the link comes back
    net.sh("router", "tc qdisc del dev rw1 root");
    let t = Instant::now();
    // Worst case: a probe failed just before the restore, so the next waits the longest hold
    // (6 s), runs (2 s) and the switch waits for a GOP boundary (1 s).
    let back = wait_for(Duration::from_secs(15), || {
        net.node(slow).stat_str("rendition") == "360p"
    });
    figure(
        "renditions_restored_to_top_s",
        format!("{:.1}", t.elapsed().as_secs_f64()),
    );
    assert!(
        back,
        "back on the top rung within 15 s: {}",
        net.node(slow).stat_str("rendition")
    );
    assert_eq!(
        net.node(slow).stat_u64("problems"),
        0,
        "no decoder complaint across the switches"
    );
}

/// Benchmark: the slow viewer (link at 40 % of the top rung) with renditions and with one
/// encode (GOP skipping), in the same run, as `METRIC` lines with the ratio; and how long after
/// a free link drops to 40 % the viewer gets its first lower-rung frame.
#[test]
fn renditions_bench_against_skipping() {
    let _g = serial();
    let secs = if long() { 30 } else { 12 };
    let metric = |name: &str, v: f64, unit: &str| eprintln!("METRIC {name} {v:.2} {unit}");
    let mut runs = Vec::new();
    for renditions in [true, false] {
        let Some(mut net) = Net::up(1) else { return };
        net.relay();
        let mut args = vec!["--pattern", "snow"];
        if renditions {
            args.push("--renditions");
        }
        let (_h, ticket) = net.host(&args);
        let window = secs.to_string();
        let v = net.viewer_with(1, &ticket, &["--window", &window]);
        assert!(net.wait_frames(v, 60, Duration::from_secs(30)));
        std::thread::sleep(Duration::from_secs(2));
        let drop_at = Instant::now();
        net.sh(
            "router",
            "tc qdisc add dev rw1 root tbf rate 800kbit burst 32kbit latency 400ms",
        );
        if renditions {
            let t = wait_text(&net.node(v).out, "iroh-rendition-changed", Duration::from_secs(10));
            assert!(t.is_some(), "moved down after the drop");
            metric("link_drop_to_lower_rung_s", drop_at.elapsed().as_secs_f64(), "s");
        }
        std::thread::sleep(Duration::from_secs(3));
        let (f0, t0) = (net.node(v).stat_u64("frames"), Instant::now());
        std::thread::sleep(Duration::from_secs(secs));
        let fps = (net.node(v).stat_u64("frames") - f0) as f64 / t0.elapsed().as_secs_f64();
        runs.push((fps, net.node(v).stat_f64("window_lat_p99")));
    }
    let ((fps, p99), (fps0, p990)) = (runs[0], runs[1]);
    metric("slow_viewer_fps", fps, "fps");
    metric("slow_viewer_fps_baseline", fps0, "fps");
    metric("slow_viewer_fps_ratio", fps / fps0, "ratio");
    metric("slow_viewer_p99_ms", p99, "ms");
    metric("slow_viewer_p99_ms_baseline", p990, "ms");
    metric("slow_viewer_p99_ms_ratio", p99 / p990, "ratio");
    assert!(
        fps > fps0 * 1.5,
        "renditions play more frames than skipping: {fps:.1} vs {fps0:.1}"
    );
    assert!(p99 < p990, "and nearer live: {p99:.0} vs {p990:.0} ms");
}

/// The slow viewer's link alternates every 5 s between 40 % and 150 % of the top rung: it
/// switches at most once per hold period (4 s) and its decoder never complains.
#[test]
fn an_alternating_link_switches_at_most_once_per_hold_period() {
    let _g = serial();
    let secs: u64 = if long() { 60 } else { 20 };
    let Some(mut net) = Net::up(1) else { return };
    let tbf = |kbit: u32| format!("tc qdisc replace dev rw1 root tbf rate {kbit}kbit burst 32kbit latency 400ms");
    // starts at 150 %: the viewer is on the top rung when the alternation begins
    net.sh("router", &tbf(3000));
    net.relay();
    let (_h, ticket) = net.host(&["--pattern", "snow", "--renditions"]);
    let v = net.viewer(1, &ticket);
    assert!(net.wait_frames(v, 30, Duration::from_secs(30)));
    let s0 = net.node(v).stat_u64("rendition_switches");
    let t0 = Instant::now();
    for i in 0..secs / 5 {
        net.sh("router", &tbf(if i % 2 == 0 { 800 } else { 3000 }));
        std::thread::sleep(Duration::from_secs(5));
    }
    let switches = net.node(v).stat_u64("rendition_switches") - s0;
    let holds = t0.elapsed().as_secs() / 4;
    figure(
        "alternating_link_switches",
        format!("{switches} in {} s", t0.elapsed().as_secs()),
    );
    figure("alternating_link_gops_skipped", net.node(v).stat_u64("gops_skipped"));
    assert!(switches >= 1, "the first drop to 40 % moves the viewer down");
    assert!(switches <= holds + 1, "{switches} switches in {holds} hold periods");
    assert_eq!(net.node(v).stat_u64("problems"), 0, "no decoder complaint");
}

/// A link below even the lowest rung: the viewer is on the lowest rung and GOP skipping still
/// keeps it near live (the old guarantee).
#[test]
fn below_the_lowest_rung_skipping_still_bounds_the_lag() {
    let _g = serial();
    let secs = if long() { 30 } else { 12 };
    let Some(mut net) = Net::up(1) else { return };
    // the lowest rung is 250 kbit/s of video (plus MPEG-TS): 150 kbit/s does not carry it
    net.sh(
        "router",
        "tc qdisc add dev rw1 root tbf rate 150kbit burst 16kbit latency 400ms",
    );
    net.relay();
    let (_h, ticket) = net.host(&["--pattern", "snow", "--renditions"]);
    let window = secs.to_string();
    let v = net.viewer_with(1, &ticket, &["--window", &window]);
    assert!(
        net.wait_frames(v, 10, Duration::from_secs(30)),
        "{}",
        net.node(v).text()
    );
    // It joins on the top rung (nothing is known of its path yet) and moves down; the bound
    // is for the steady state after that, measured over the window.
    assert!(
        wait_for(Duration::from_secs(15), || net.node(v).stat_str("rendition") == "180p"),
        "on the lowest rung: {}",
        net.node(v).stat_str("rendition")
    );
    std::thread::sleep(Duration::from_secs(secs));
    let n = net.node(v);
    let dropped = n.stat_u64("gops_skipped") + n.stat_u64("gops_cut");
    figure(
        "below_lowest_rung_p99_behind_ms",
        format!("{:.0}", n.stat_f64("window_behind_p99")),
    );
    figure(
        "below_lowest_rung_p99_behind_ms_with_join",
        format!("{:.0}", n.stat_f64("behind_p99")),
    );
    figure("below_lowest_rung_gops_dropped_or_cut", dropped);
    assert_eq!(n.stat_str("rendition"), "180p", "on the lowest rung");
    assert!(dropped > 0, "it left media out to keep up");
    assert!(
        n.stat_f64("window_behind_p99") <= 1500.0,
        "within 1.5 s of live: p99 {} ms",
        n.stat_f64("window_behind_p99")
    );
}

#[test]
fn five_percent_loss_and_a_three_second_outage() {
    let _g = serial();
    let Some(mut net) = Net::up(1) else { return };
    net.relay();
    let (_h, ticket) = net.host(&[]);
    let v = net.viewer(1, &ticket);
    assert!(net.wait_frames(v, 30, Duration::from_secs(30)));
    net.sh(
        "router",
        "iptables -I FORWARD -i rw1 -m statistic --mode random --probability 0.05 -j DROP && \
         iptables -I FORWARD -o rw1 -m statistic --mode random --probability 0.05 -j DROP",
    );
    let f0 = (net.node(v).stat_u64("frames"), Instant::now());
    std::thread::sleep(Duration::from_secs(if long() { 60 } else { 10 }));
    let fps = (net.node(v).stat_u64("frames") - f0.0) as f64 / f0.1.elapsed().as_secs_f64();
    figure("loss5_fps", format!("{fps:.1}"));
    figure(
        "loss5_latency_p50_ms",
        format!("{:.0}", net.node(v).stat_f64("lat_p50")),
    );
    figure(
        "loss5_latency_p99_ms",
        format!("{:.0}", net.node(v).stat_f64("lat_p99")),
    );
    figure("loss5_gops_skipped", net.node(v).stat_u64("gops_skipped"));
    assert!(fps > 20.0, "the stream continues under 5 % loss: {fps:.1} fps");
    net.sh(
        "router",
        "iptables -D FORWARD -i rw1 -m statistic --mode random --probability 0.05 -j DROP && \
         iptables -D FORWARD -o rw1 -m statistic --mode random --probability 0.05 -j DROP",
    );
    // Link down for 3 s (every packet to and from the viewer dropped), then up.
    std::thread::sleep(Duration::from_secs(2));
    net.sh(
        "router",
        "iptables -I FORWARD -i rw1 -j DROP && iptables -I FORWARD -o rw1 -j DROP",
    );
    std::thread::sleep(Duration::from_secs(3));
    let frames_at_up = net.node(v).stat_u64("frames");
    net.sh(
        "router",
        "iptables -D FORWARD -i rw1 -j DROP && iptables -D FORWARD -o rw1 -j DROP",
    );
    let up = Instant::now();
    let back = wait_for(Duration::from_secs(30), || {
        net.node(v).stat_u64("frames") > frames_at_up + 30
    });
    figure("outage3s_recovery_s", format!("{:.2}", up.elapsed().as_secs_f64()));
    assert!(
        back,
        "the viewer resumed by itself: {}",
        net.node(v).text().lines().last().unwrap_or("")
    );
    // (When this failed — about one run in 14 — the buffers before the complaint showed a
    // keyframe cut after 9 of its packets: irohsink sent keyframes packet by packet and a GOP
    // reset landed between two. The decoder's words and the recent buffers are printed.)
    let problems = net.node(v).stat_u64("problems");
    figure("outage3s_decoder_complaints", problems);
    assert!(
        problems == 0,
        "first frames after recovery are clean: {}",
        net.node(v)
            .text()
            .lines()
            .filter(|l| l.starts_with("PROBLEM") || l.starts_with("RECENT") || l.contains("reconnect"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn host_restart_with_key_file_and_relay_loss() {
    let _g = serial();
    let Some(mut net) = Net::up(1) else { return };
    let dir = TempDir::new("netbed-key");
    let key = dir.path().join("host.key");
    let relay = net.relay();
    let (h, ticket) = net.host(&["--key-file", key.to_str().unwrap()]);
    let v = net.viewer(1, &ticket);
    assert!(net.wait_frames(v, 30, Duration::from_secs(30)));
    // The relay dies while the direct path works: the stream goes on.
    assert!(wait_for(Duration::from_secs(20), || net.node(v).path() == "direct"));
    let f = net.node(v).stat_u64("frames");
    net.stop(relay);
    std::thread::sleep(Duration::from_secs(5));
    figure("relay_killed_frames_in_5s", net.node(v).stat_u64("frames") - f);
    assert!(
        net.node(v).stat_u64("frames") > f + 100,
        "the stream continued without the relay"
    );
    // Host restarts with the same key file: same ticket, the viewer comes back by itself.
    net.relay();
    net.stop(h);
    let down = Instant::now();
    let frames_down = net.node(v).stat_u64("frames");
    let (_h2, ticket2) = net.host(&["--key-file", key.to_str().unwrap()]);
    let same =
        ticket2.parse::<gstiroh::ticket::Ticket>().unwrap() == ticket.parse::<gstiroh::ticket::Ticket>().unwrap();
    assert!(same, "same ticket after a restart");
    let back = wait_for(Duration::from_secs(40), || {
        net.node(v).stat_u64("frames") > frames_down + 30
    });
    figure(
        "host_restart_recovery_s",
        format!("{:.1}", down.elapsed().as_secs_f64()),
    );
    assert!(
        back,
        "the viewer reconnected: {}",
        net.node(v).text().lines().last().unwrap_or("")
    );
    assert!(net.node(v).stat_u64("reconnects") >= 1);
    assert_eq!(net.node(v).stat_u64("problems"), 0);
}

#[test]
fn churn_and_bad_peers_leave_the_watcher_alone_and_memory_flat() {
    let _g = serial();
    let Some(mut net) = Net::up(2) else { return };
    net.relay();
    let (h, ticket) = net.host(&[]);
    let w = net.viewer(1, &ticket);
    assert!(net.wait_frames(w, 60, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_secs(2));
    let rss0 = net.node(h).stat_u64("rss_kb");
    let cycles = if long() { "200" } else { "40" };
    let c = net.start("v2", &["churn", &ticket, cycles, "--relay", RELAY_URL]);
    assert!(
        wait_text(&net.node(c).out, "CHURN-DONE", Duration::from_secs(600)).is_some(),
        "churn finished: {}",
        net.node(c).text()
    );
    let done = net.node(c).text();
    let ok_joins = done
        .lines()
        .find_map(|l| l.strip_prefix("CHURN-DONE "))
        .unwrap_or("")
        .to_string();
    figure("churn_cycles_and_successful_joins", &ok_joins);
    let mut outcomes = Vec::new();
    for kind in ["garbage", "streams", "mute", "version", "secret"] {
        let a = net.start("v2", &["attack", &ticket, kind, "--relay", RELAY_URL]);
        let line = wait_text(&net.node(a).out, "ATTACK", Duration::from_secs(60))
            .and_then(|t| t.lines().find(|l| l.starts_with("ATTACK")).map(String::from))
            .unwrap_or_else(|| format!("ATTACK {kind} no answer"));
        eprintln!("{line}");
        outcomes.push(line);
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss1 = net.node(h).stat_u64("rss_kb");
    figure("churn_host_rss_kb_before_after", format!("{rss0} {rss1}"));
    let n = net.node(w);
    figure("churn_watcher_max_frame_gap_ms", n.stat_u64("max_gap_ms"));
    assert!(
        outcomes
            .iter()
            .all(|o| o.contains("closed by host") || o.contains("refused")),
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|o| o.contains("mute") && o.contains("slow")),
        "a mute peer is removed as slow"
    );
    assert_eq!(n.stat_u64("problems"), 0, "the watcher decodes cleanly throughout");
    assert_eq!(n.stat_u64("reconnects"), 0, "the watcher never lost its connection");
    assert!(
        n.stat_u64("max_gap_ms") < 1000,
        "no visible discontinuity: {} ms",
        n.stat_u64("max_gap_ms")
    );
    assert!(
        (rss1 as f64) < rss0 as f64 * 1.1 + 4096.0,
        "host RSS flat: {rss0} → {rss1} kB"
    );
    assert!(ok_joins.ends_with(&format!(" {cycles}")) || ok_joins.split(' ').nth(1) == Some(cycles));
}

#[test]
fn nothing_on_the_wire_looks_like_mpeg_ts() {
    let _g = serial();
    if !have("tcpdump") {
        support::skip("tcpdump not installed");
        return;
    }
    let Some(mut net) = Net::up(1) else { return };
    net.relay();
    let (_h, ticket) = net.host(&[]);
    let v = net.viewer(1, &ticket);
    assert!(net.wait_frames(v, 30, Duration::from_secs(30)));
    let dir = TempDir::new("pcap");
    let pcap = dir.path().join("wire.pcap");
    let mut dump = Proc::spawn(
        "tcpdump",
        Command::new("ip")
            .args(["netns", "exec", &net.ns("router"), "tcpdump", "-i", "rw1", "-U", "-w"])
            .arg(&pcap)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    std::thread::sleep(Duration::from_secs(4));
    dump.signal(libc::SIGINT);
    let _ = dump.wait_timeout(Duration::from_secs(5));
    let bytes = std::fs::read(&pcap).unwrap_or_default();
    assert!(bytes.len() > 100_000, "captured the stream: {} bytes", bytes.len());
    // Plaintext MPEG-TS shows as sync bytes 0x47 every 188 bytes.
    let runs = bytes
        .windows(188 * 3 + 1)
        .filter(|w| w[0] == 0x47 && w[188] == 0x47 && w[376] == 0x47 && w[564] == 0x47)
        .count();
    figure("wire_ts_sync_patterns", runs);
    assert_eq!(runs, 0, "the wire carries no plaintext TS");
}
