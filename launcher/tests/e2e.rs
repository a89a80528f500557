//! `pixelpass` end to end, as a user runs it: real Xvfb screen, real PipeWire audio, real iroh
//! on loopback (relay off), real mpv. Processes are started and stopped by PID.

use pixelpass_test_support as support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_pixelpass");

/// A running `pixelpass` with its stdout and stderr collected.
struct Pixelpass {
    proc: Proc,
    /// Its own (empty) XDG config home, removed with it.
    _config: TempDir,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Pixelpass {
    fn start(args: &[&str], env: &[(String, String)]) -> Pixelpass {
        let config = TempDir::new("e2e-config");
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .args(["--relay", "disabled", "--bind", "127.0.0.1:0"])
            .env("XDG_CONFIG_HOME", config.path())
            .env_remove("PIXELPASS_RELAY")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn("pixelpass", &mut cmd);
        let child = proc.child.as_mut().unwrap();
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        Pixelpass {
            proc,
            _config: config,
            out,
            err,
        }
    }

    /// Waits for it to exit and for everything it wrote to be read: its exit code.
    fn exit(&mut self, timeout: Duration) -> Result<Option<i32>, TimedOut> {
        let code = self.proc.wait_timeout(timeout)?;
        for stream in [&self.out, &self.err] {
            assert!(
                wait_closed(stream, Duration::from_secs(5)),
                "its output closes after exit"
            );
        }
        Ok(code)
    }

    fn host(extra: &[&str], env: &[(String, String)]) -> (Pixelpass, String) {
        let mut args = vec!["host"];
        args.extend_from_slice(extra);
        let p = Pixelpass::start(&args, env);
        let out = wait_text(&p.out, "\n", Duration::from_secs(30))
            .unwrap_or_else(|| panic!("host printed no ticket; stderr:\n{}", p.err.lock().unwrap()));
        let ticket = out.lines().next().unwrap().trim().to_string();
        assert!(ticket.starts_with("pp1"), "stdout holds the ticket alone: {out:?}");
        (p, ticket)
    }

    /// A viewer with `--player none --events json`; returns it and its local URL.
    fn viewer(ticket: &str, env: &[(String, String)]) -> (Pixelpass, String) {
        let p = Pixelpass::start(&["view", ticket, "--player", "none", "--events", "json"], env);
        let out = wait_text(&p.out, "\"event\":\"url\"", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("viewer printed no URL; stderr:\n{}", p.err.lock().unwrap()));
        let url = event_field(&out, "url", "url").unwrap();
        (p, url)
    }
}

fn display_env(x: &Xvfb) -> Vec<(String, String)> {
    vec![
        ("DISPLAY".into(), x.display.clone()),
        ("WAYLAND_DISPLAY".into(), String::new()),
    ]
}

fn mpv(url: &str, dir: &Path, frames: u32) -> (Proc, std::path::PathBuf) {
    mpv_headless(url, dir, Some(frames))
}

/// The decoded video size, once mpv has one.
fn mpv_size(sock: &Path) -> Option<(u64, u64)> {
    let mut size = None;
    wait_for(Duration::from_secs(20), || {
        size = mpv_get(sock, "width")
            .and_then(|w| w.as_u64())
            .zip(mpv_get(sock, "height").and_then(|h| h.as_u64()));
        size.is_some()
    });
    size
}

#[test]
fn x11_screen_share_plays_in_mpv() {
    require!("Xvfb", "mpv", "xwininfo");
    let x = Xvfb::start(1280, 720);
    let env = display_env(&x);
    let (host, ticket) = Pixelpass::host(&["--no-audio"], &env);
    let (_viewer, url) = Pixelpass::viewer(&ticket, &[]);
    let dir = TempDir::new("mpv");
    let t = Instant::now();
    let (mut player, sock) = mpv(&url, dir.path(), 60);
    assert_eq!(mpv_size(&sock), Some((1280, 720)));
    let code = player.wait_timeout(Duration::from_secs(30));
    assert_eq!(
        code,
        Ok(Some(0)),
        "mpv played 60 frames and exited; host:\n{}",
        host.err.lock().unwrap()
    );
    assert!(
        t.elapsed() > Duration::from_millis(1500),
        "60 live frames at 30 fps take about 2 s"
    );
    let err = host.err.lock().unwrap().clone();
    assert!(
        err.contains("encoder x264enc"),
        "the host says which encoder and why: {err}"
    );
    assert!(err.contains("capturing the whole screen (1280x720)"), "{err}");
}

#[test]
fn quality_low_on_a_1080p_screen_is_854x480() {
    require!("Xvfb", "mpv", "xwininfo");
    let x = Xvfb::start(1920, 1080);
    let env = display_env(&x);
    let (_host, ticket) = Pixelpass::host(&["--no-audio", "--quality", "low"], &env);
    let (_viewer, url) = Pixelpass::viewer(&ticket, &[]);
    let dir = TempDir::new("mpv");
    let (_mpv, sock) = mpv(&url, dir.path(), 1000);
    assert_eq!(mpv_size(&sock), Some((854, 480)));
}

/// Mean volume (dB) of the audio in the first seconds of `url`, from ffmpeg's volumedetect.
fn mean_volume(url: &str, secs: u32) -> Option<f64> {
    let out = Command::new("timeout")
        .args(["30", "ffmpeg", "-nostdin", "-i", url, "-t", &secs.to_string()])
        .args(["-vn", "-af", "volumedetect", "-f", "null", "-"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| l.split("mean_volume:").nth(1))
        .and_then(|v| v.trim().trim_end_matches(" dB").parse().ok())
}

#[test]
fn a_tone_in_the_default_sink_reaches_the_viewer_as_aac() {
    require!(
        "Xvfb",
        "pipewire",
        "wireplumber",
        "pipewire-pulse",
        "pactl",
        "dbus-daemon",
        "ffmpeg",
        "ffprobe"
    );
    let x = Xvfb::start(640, 480);
    let mut audio = Audio::start();
    audio.tone("tone-app", 440);
    let mut env = display_env(&x);
    env.extend(audio.env.clone());
    let (host, ticket) = Pixelpass::host(&[], &env);
    let (_viewer, url) = Pixelpass::viewer(&ticket, &[]);
    let probe = Command::new("timeout")
        .args([
            "20",
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,sample_rate,channels",
        ])
        .args(["-of", "compact", &url])
        .output()
        .unwrap();
    let streams = String::from_utf8_lossy(&probe.stdout).to_string();
    assert!(streams.contains("codec_name=aac"), "an AAC track: {streams}");
    let vol = mean_volume(&url, 3).expect("volumedetect output");
    assert!(
        vol > -40.0,
        "the tone is audible: mean {vol} dB; host:\n{}",
        host.err.lock().unwrap()
    );
    assert!(host.err.lock().unwrap().contains("with sound"));
}

#[test]
fn max_viewers_2_refuses_the_third_with_host_is_full() {
    require!("Xvfb", "xwininfo");
    let x = Xvfb::start(640, 480);
    let env = display_env(&x);
    let (host, ticket) = Pixelpass::host(&["--no-audio", "--max-viewers", "2"], &env);
    let (_a, _) = Pixelpass::viewer(&ticket, &[]);
    let (_b, _) = Pixelpass::viewer(&ticket, &[]);
    assert!(wait_for(Duration::from_secs(20), || host
        .err
        .lock()
        .unwrap()
        .matches("joined")
        .count()
        == 2));
    let mut c = Pixelpass::start(&["view", &ticket, "--player", "none", "--events", "json"], &[]);
    let code = c
        .proc
        .wait_timeout(Duration::from_secs(30))
        .expect("third viewer exits");
    assert_eq!(code, Some(1), "runtime failure exit code");
    // The process is gone; its last output may still be on its way through the pipes.
    let err =
        wait_text(&c.err, "host is full", Duration::from_secs(5)).unwrap_or_else(|| c.err.lock().unwrap().clone());
    assert!(err.contains("host is full"), "{err}");
    let out = wait_text(&c.out, "\"event\":\"error\"", Duration::from_secs(5)).expect("an error event");
    let errors = events_of(&out, "error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["kind"], "host-full", "{errors:?}");
}

#[test]
fn bad_tickets_the_host_refuses_exit_2_with_kind_not_authorized() {
    require!("Xvfb", "xwininfo");
    let x = Xvfb::start(640, 480);
    let (_host, ticket) = Pixelpass::host(&["--no-audio"], &display_env(&x));
    let mut t: gstiroh::ticket::Ticket = ticket.parse().unwrap();
    t.secret[0] ^= 1;
    let mut v = Pixelpass::start(&["view", &t.to_string(), "--player", "none", "--events", "json"], &[]);
    assert_eq!(
        v.proc.wait_timeout(Duration::from_secs(30)),
        Ok(Some(2)),
        "a bad ticket"
    );
    let out = wait_text(&v.out, "\"event\":\"error\"", Duration::from_secs(5)).expect("an error event");
    let errors = events_of(&out, "error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["kind"], "not-authorized", "{errors:?}");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains("ticket is not valid"), "{message}");
}

#[test]
fn a_share_uri_opens_like_its_ticket_also_through_the_desktop_handler() {
    require!("Xvfb", "xwininfo", "xdg-mime");
    let x = Xvfb::start(640, 480);
    let (host, ticket) = Pixelpass::host(&["--no-audio"], &display_env(&x));
    let (_viewer, _url) = Pixelpass::viewer(&format!("pixelpass://{ticket}"), &[]);
    assert!(
        wait_text(&host.err, "joined", Duration::from_secs(20)).is_some(),
        "the viewer of pixelpass://… joined: {}",
        host.err.lock().unwrap()
    );
    // The desktop file registers the scheme: xdg-mime picks it for pixelpass:// links.
    let data = TempDir::new("xdg-data");
    let apps = data.path().join("applications");
    std::fs::create_dir_all(&apps).unwrap();
    let desktop = Path::new(env!("CARGO_MANIFEST_DIR")).join("share/pixelpass-view.desktop");
    std::fs::copy(&desktop, apps.join("pixelpass-view.desktop")).unwrap();
    let xdg = |args: &[&str]| {
        let out = Command::new("xdg-mime")
            .args(args)
            .env("XDG_DATA_HOME", data.path())
            .env("XDG_CONFIG_HOME", data.path())
            .env("XDG_DATA_DIRS", data.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    xdg(&["default", "pixelpass-view.desktop", "x-scheme-handler/pixelpass"]);
    assert_eq!(
        xdg(&["query", "default", "x-scheme-handler/pixelpass"]),
        "pixelpass-view.desktop"
    );
    let entry = std::fs::read_to_string(&desktop).unwrap();
    assert!(entry.contains("\nExec=pixelpass view %u\n"), "{entry}");
}

/// ffprobe's view of a file: its codecs (in stream order) and duration in seconds.
fn probe_file(file: &Path) -> (Vec<String>, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=codec_name",
            "-of",
            "json",
        ])
        .arg(file)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let codecs = v["streams"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s["codec_name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (codecs, duration)
}

/// What ffmpeg complains about while decoding all of `file` (empty: it decodes cleanly).
fn decode_errors(file: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

#[test]
fn viewers_record_what_they_receive_and_a_full_disk_does_not_stop_the_share() {
    require!("ffmpeg", "ffprobe");
    let dir = TempDir::new("record");
    let (_host, ticket) = Pixelpass::host(&["--source", "test", "--max-viewers", "8"], &[]);
    let record = |name: &str| {
        let file = dir.path().join(name);
        let args = ["view", &ticket, "--player", "none", "--events", "json", "--record"];
        (
            Pixelpass::start(&[&args[..], &[file.to_str().unwrap()]].concat(), &[]),
            file,
        )
    };
    let mut viewers: Vec<_> = ["got.ts", "got.mkv", "got.mp4", "killed.mp4"].map(record).into();
    // A full disk: /dev/full fails every write with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", dir.path().join("full.ts")).unwrap();
    let (mut full, _) = record("full.ts");
    let connected_at: Vec<Instant> = viewers
        .iter()
        .map(|(v, _)| {
            wait_text(&v.out, "\"event\":\"connected\"", Duration::from_secs(30)).expect("connected");
            Instant::now()
        })
        .collect();
    let warned = wait_text(&full.out, "recording to", Duration::from_secs(20)).unwrap_or_default();
    assert!(
        events_of(&warned, "warning")
            .iter()
            .any(|w| w["message"].as_str().unwrap().contains("No space left")),
        "a full disk is one warning with the reason: {warned}"
    );
    // Five more seconds of stats: the share goes on for everyone, the full-disk viewer too.
    let stats = |p: &Pixelpass| events_of(&p.out.lock().unwrap(), "viewer-stats").len();
    let (seen_full, seen) = (stats(&full), stats(&viewers[0].0));
    assert!(wait_for(Duration::from_secs(15), || stats(&viewers[0].0) >= seen + 5));
    assert!(
        stats(&full) >= seen_full + 4,
        "the viewer whose recording failed keeps receiving"
    );
    viewers[3].0.proc.signal(libc::SIGKILL);
    let mut recorded_for = Vec::new();
    for (i, (v, _)) in viewers.iter_mut().enumerate().take(3) {
        v.proc.signal(libc::SIGINT);
        recorded_for.push(connected_at[i].elapsed().as_secs_f64());
        assert_eq!(v.exit(Duration::from_secs(20)), Ok(Some(0)));
        let out = v.out.lock().unwrap().clone();
        assert_eq!(events_of(&out, "recorded").len(), 1, "{out}");
        assert_eq!(events_of(&out, "warning").len(), 0, "the file was completed: {out}");
    }
    full.proc.signal(libc::SIGINT);
    assert_eq!(full.exit(Duration::from_secs(10)), Ok(Some(0)));
    for (i, (_, file)) in viewers.iter().enumerate() {
        let (codecs, duration) = probe_file(file);
        assert_eq!(codecs.len(), 2, "{}: {codecs:?}", file.display());
        assert!(
            codecs.contains(&"h264".into()) && codecs.contains(&"aac".into()),
            "{codecs:?}"
        );
        if i == 3 {
            // killed: the fragments written before the kill play
            assert!(duration > 3.0, "{}: {duration} s", file.display());
            continue;
        }
        let wall = recorded_for[i];
        assert!(
            (duration - wall).abs() <= 1.5,
            "{}: {duration:.2} s recorded over {wall:.2} s of viewing",
            file.display()
        );
        assert_eq!(decode_errors(file), "", "{} decodes cleanly", file.display());
    }
}

#[test]
fn viewer_stats_count_the_players_attached() {
    require!("Xvfb", "xwininfo", "curl");
    let x = Xvfb::start(640, 480);
    let (_host, ticket) = Pixelpass::host(&["--no-audio"], &display_env(&x));
    let (viewer, url) = Pixelpass::viewer(&ticket, &[]);
    let players_now = || {
        events_of(&viewer.out.lock().unwrap(), "viewer-stats")
            .last()
            .and_then(|v| v["players"].as_u64())
    };
    assert!(wait_for(Duration::from_secs(20), || players_now() == Some(0)));
    let stats = events_of(&viewer.out.lock().unwrap(), "viewer-stats");
    let last = stats.last().unwrap();
    for key in ["gops_skipped", "gops_cut"] {
        assert_eq!(last[key].as_u64(), Some(0), "nothing left out on loopback: {last}");
    }
    let curls: Vec<Proc> = (0..2)
        .map(|_| {
            Proc::spawn(
                "curl",
                Command::new("curl")
                    .args(["-s", "-o", "/dev/null", &url])
                    .stdout(Stdio::null()),
            )
        })
        .collect();
    assert!(
        wait_for(Duration::from_secs(10), || players_now() == Some(2)),
        "two players attached: {:?}",
        players_now()
    );
    drop(curls);
    assert!(
        wait_for(Duration::from_secs(10), || players_now() == Some(0)),
        "the players left: {:?}",
        players_now()
    );
}

#[test]
fn one_sigint_ends_a_viewer_mid_stream_within_a_second_and_the_host_sees_it() {
    require!("Xvfb", "xwininfo", "curl");
    let x = Xvfb::start(640, 480);
    let env = display_env(&x);
    let (host, ticket) = Pixelpass::host(&["--no-audio"], &env);
    let (mut viewer, url) = Pixelpass::viewer(&ticket, &[]);
    // A player mid-stream.
    let _curl = Proc::spawn(
        "curl",
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", &url])
            .stdout(Stdio::null()),
    );
    assert!(wait_text(&viewer.out, "viewer-stats", Duration::from_secs(20)).is_some());
    assert!(wait_text(&host.err, "capturing", Duration::from_secs(20)).is_some());
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    viewer.proc.signal(libc::SIGINT);
    let code = viewer.proc.wait_timeout(Duration::from_secs(5)).expect("viewer exits");
    let took = t.elapsed();
    assert_eq!(code, Some(0));
    assert!(
        took <= Duration::from_secs(1),
        "one SIGINT ended the viewer in {took:?}"
    );
    assert!(
        wait_text(&host.err, "left: closed", Duration::from_secs(2)).is_some(),
        "host logs the departure at once:\n{}",
        host.err.lock().unwrap()
    );
    assert!(
        wait_text(&host.err, "capture stopped: no viewers", Duration::from_secs(2)).is_some(),
        "the last viewer leaving stops capture"
    );
}

#[test]
fn host_ctrl_c_ends_the_share_and_viewers_exit_cleanly() {
    require!("Xvfb", "xwininfo");
    let x = Xvfb::start(640, 480);
    let env = display_env(&x);
    let (mut host, ticket) = Pixelpass::host(&["--no-audio"], &env);
    let (mut viewer, _) = Pixelpass::viewer(&ticket, &[]);
    assert!(wait_text(&host.err, "capturing", Duration::from_secs(20)).is_some());
    let t = Instant::now();
    host.proc.signal(libc::SIGINT);
    assert_eq!(host.proc.wait_timeout(Duration::from_secs(5)), Ok(Some(0)));
    assert!(t.elapsed() <= Duration::from_secs(1), "host ended in {:?}", t.elapsed());
    assert_eq!(viewer.exit(Duration::from_secs(10)), Ok(Some(0)));
    assert!(viewer.out.lock().unwrap().contains("the host ended the share"));
}

/// A host whose stderr lines arrive one by one as they are written, so a test can act on one
/// at once (a signal the moment a stage starts).
struct HostLines {
    proc: Proc,
    _config: TempDir,
    lines: std::sync::mpsc::Receiver<String>,
    /// everything read so far
    seen: String,
}

impl HostLines {
    fn start(args: &[&str], env: &[(String, String)]) -> HostLines {
        let config = TempDir::new("e2e-config");
        let mut cmd = Command::new(BIN);
        cmd.arg("host")
            .args(args)
            .args(["--relay", "disabled", "--bind", "127.0.0.1:0"])
            .env("XDG_CONFIG_HOME", config.path())
            .env_remove("PIXELPASS_RELAY")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn("pixelpass", &mut cmd);
        let err = proc.child.as_mut().unwrap().stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        HostLines {
            proc,
            _config: config,
            lines,
            seen: String::new(),
        }
    }

    /// Waits for a line containing `needle` (false if the host ended or `timeout` passed).
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push_str(&line);
            self.seen.push('\n');
            if line.contains(needle) {
                return true;
            }
        }
        false
    }

    /// Presses ctrl-c (SIGINT by PID) and checks what one press must do: exit 0 within 2 s,
    /// every process the host had started gone with it. Returns all the host printed.
    fn ctrl_c_ends_it(&mut self) -> String {
        let children = descendants(self.proc.pid());
        let t = Instant::now();
        self.proc.signal(libc::SIGINT);
        let code = self.proc.wait_timeout(Duration::from_secs(5));
        let took = t.elapsed();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        assert_eq!(code, Ok(Some(0)), "the ctrl-c exit code; host:\n{}", self.seen);
        assert!(took < Duration::from_secs(2), "one ctrl-c ended the host in {took:?}");
        assert!(
            wait_for(Duration::from_secs(2), || children.iter().all(|&c| !running(c))),
            "processes the host started outlive it: {:?}",
            children.iter().filter(|&&c| running(c)).collect::<Vec<_>>()
        );
        self.seen.clone()
    }
}

#[test]
fn one_sigint_during_the_encoder_test_encode_ends_the_host_at_once() {
    // The signal goes the moment the host says the test encode starts; it lasts ~150 ms (five
    // frames at 30 fps into a syncing sink). Should the signal still come after it, the run
    // proves nothing about the probe and is repeated.
    for attempt in 1..=5 {
        let mut host = HostLines::start(&["--source", "test", "--no-audio"], &[]);
        assert!(
            host.wait_line("trying encoder x264enc", Duration::from_secs(30)),
            "the host announces its test encode:\n{}",
            host.seen
        );
        let out = host.ctrl_c_ends_it();
        if !out.contains("pixelpass: encoder x264enc:") {
            assert!(out.contains("cancelled before the share started"), "{out}");
            eprintln!("the signal arrived during the test encode (attempt {attempt})");
            return;
        }
    }
    panic!("five times the test encode ended before the signal arrived");
}

#[test]
fn one_sigint_while_picking_a_window_ends_the_host_and_its_picker() {
    require!("Xvfb", "xwininfo");
    let x = Xvfb::start(640, 480);
    let mut host = HostLines::start(&["--window", "--no-audio"], &display_env(&x));
    assert!(host.wait_line("click the window you want to share", Duration::from_secs(30)));
    // xwininfo waits for the click; give it the moment to start
    assert!(
        wait_for(Duration::from_secs(5), || !descendants(host.proc.pid()).is_empty()),
        "the picker runs"
    );
    let out = host.ctrl_c_ends_it();
    assert!(out.contains("cancelled before the share started"), "{out}");
}

#[test]
fn one_sigint_while_the_portal_does_not_answer_ends_the_host() {
    // A session bus that accepts the connection and never answers: the portal probe waits.
    let dir = TempDir::new("silent-bus");
    let sock = dir.path().join("bus");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let env = vec![
        (
            "DBUS_SESSION_BUS_ADDRESS".to_string(),
            format!("unix:path={}", sock.display()),
        ),
        ("WAYLAND_DISPLAY".to_string(), "wayland-pixelpass-test".to_string()),
    ];
    let (tx, dialed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(listener.accept().map(|(conn, _)| conn));
        // (holds the connection open, unanswered, until the test ends)
        std::thread::park();
    });
    let mut host = HostLines::start(&["--no-audio", "--display-server", "wayland"], &env);
    let dialed = dialed.recv_timeout(Duration::from_secs(30));
    assert!(
        matches!(dialed, Ok(Ok(_))),
        "the host dials the session bus:\n{}",
        host.seen
    );
    let out = host.ctrl_c_ends_it();
    assert!(out.contains("cancelled before the share started"), "{out}");
}

#[test]
fn no_zombie_when_the_player_exits_under_a_running_viewer() {
    require!("Xvfb", "xwininfo", "mpv");
    let x = Xvfb::start(640, 480);
    let env = display_env(&x);
    let (_host, ticket) = Pixelpass::host(&["--no-audio"], &env);
    let dir = TempDir::new("zombie");
    let mut venv = display_env(&x);
    venv.push(("XDG_RUNTIME_DIR".into(), dir.path().to_string_lossy().into()));
    let mut viewer = Pixelpass::start(&["view", &ticket, "--player", "mpv", "--events", "json"], &venv);
    let out = wait_text(&viewer.out, "player-started", Duration::from_secs(20)).expect("mpv started");
    let pid = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "player-started")
        .and_then(|v| v["pid"].as_u64())
        .unwrap() as i32;
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: kill(2) on the player the viewer started (a grandchild of this test).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    assert!(wait_text(&viewer.out, "player-exited", Duration::from_secs(5)).is_some());
    let vpid = viewer.proc.pid();
    assert!(
        zombies_of(vpid).is_empty(),
        "zombie children of the viewer: {:?}",
        zombies_of(vpid)
    );
    assert_eq!(
        viewer.proc.wait_timeout(Duration::from_secs(5)),
        Ok(Some(0)),
        "closing the player ends the viewer"
    );
}

#[test]
fn bad_tickets_exit_2_with_a_message() {
    for (t, needle) in [
        ("hello", "does not start with \"pp1\""),
        ("pp1aaaa", "cut short"),
        ("pp1abc!d", "characters a ticket never has"),
    ] {
        let mut v = Pixelpass::start(&["view", t, "--player", "none"], &[]);
        assert_eq!(v.exit(Duration::from_secs(10)), Ok(Some(2)), "{t}");
        let err = v.err.lock().unwrap().clone();
        assert!(
            err.contains("ticket is not valid") && err.contains(needle),
            "{t}: {err}"
        );
    }
    // the seed's shortcut too
    let mut v = Pixelpass::start(&["nonsense-ticket"], &[]);
    assert_eq!(v.proc.wait_timeout(Duration::from_secs(10)), Ok(Some(2)));
}

/// A ticket that parses (nobody answers it).
fn some_ticket() -> String {
    gstiroh::ticket::Ticket {
        addr: iroh::EndpointAddr::new(iroh::SecretKey::from_bytes(&[1; 32]).public()),
        secret: [0; 16],
    }
    .to_string()
}

/// Runs `pixelpass args` (with `env`) to its end: exit code, stderr, and how long it took.
fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, Duration) {
    let config = TempDir::new("e2e-config");
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(args)
        .env("XDG_CONFIG_HOME", config.path())
        .env_remove("PIXELPASS_RELAY")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed(),
    )
}

#[test]
fn a_bad_relay_exits_2_at_once_naming_relay() {
    let ticket = some_ticket();
    let flag = ["--relay", "not-a-url"];
    for (args, env) in [
        (vec!["host", flag[0], flag[1]], vec![]),
        (vec!["view", &ticket, flag[0], flag[1]], vec![]),
        (vec!["host"], vec![("PIXELPASS_RELAY", "not-a-url")]),
        (vec!["view", &ticket], vec![("PIXELPASS_RELAY", "not-a-url")]),
    ] {
        let (code, err, took) = run_to_end(&args, &env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {err}");
        assert!(
            err.contains("--relay") && err.contains("not-a-url"),
            "{args:?} {env:?}: {err}"
        );
        assert!(err.contains("use \"default\", \"disabled\""), "says what works: {err}");
        assert!(took < Duration::from_secs(2), "{args:?} {env:?} took {took:?}");
    }
}

#[test]
fn a_bind_address_the_endpoint_cannot_use_says_why() {
    // A valid address that is not this machine's, and one another socket holds: irohsink
    // refuses them, and its words show with the operating system's reason.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    for (addr, reason) in [
        ("192.0.2.1:0", "Cannot assign requested address"),
        (in_use.as_str(), "Address already in use"),
    ] {
        let args = [
            "host",
            "--source",
            "test",
            "--no-audio",
            "--relay",
            "disabled",
            "--bind",
            addr,
        ];
        let (code, err, _) = run_to_end(&args, &[]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("cannot start the iroh endpoint: "), "{err}");
        assert!(
            err.contains(reason),
            "the element's reason is forwarded, with the OS's: {err}"
        );
    }
}

#[test]
fn a_missing_window_id_is_a_usage_error() {
    require!("Xvfb", "xwininfo");
    let x = Xvfb::start(640, 480);
    let mut h = Pixelpass::start(&["host", "--no-audio", "--window-id", "0x7fffff0"], &display_env(&x));
    assert_eq!(h.exit(Duration::from_secs(10)), Ok(Some(2)));
    assert!(h.err.lock().unwrap().contains("there is no X11 window 0x7fffff0"));
}

#[test]
fn a_shared_window_that_closes_ends_the_share_cleanly() {
    require!("Xvfb", "xwininfo", "xclock");
    let mut x = Xvfb::start(640, 480);
    let clock = x.client(
        "xclock",
        Command::new("xclock").args(["-geometry", "201x151+10+10", "-update", "1"]),
    );
    let id = x.window_id("xclock").expect("xclock window");
    let (mut host, ticket) = Pixelpass::host(&["--no-audio", "--window-id", &id], &display_env(&x));
    let (_viewer, url) = Pixelpass::viewer(&ticket, &[]);
    let _curl = Proc::spawn("curl", Command::new("curl").args(["-s", "-o", "/dev/null", &url]));
    assert!(wait_text(&host.err, "capturing window", Duration::from_secs(20)).is_some());
    assert!(
        host.err.lock().unwrap().contains("as 200x150"),
        "odd size scaled to even: {}",
        host.err.lock().unwrap()
    );
    std::thread::sleep(Duration::from_secs(1));
    x.kill_client(clock);
    let code = host.exit(Duration::from_secs(10));
    let err = host.err.lock().unwrap().clone();
    assert_eq!(code, Ok(Some(0)), "{err}");
    assert!(err.contains("the shared window was closed"), "{err}");
    assert!(!err.contains("X Error"), "{err}");
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let out = Command::new(BIN).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--max-viewers"));
    let out = Command::new(BIN).arg("man").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH pixelpass"));
}

#[test]
fn repair_unloads_what_a_crashed_host_left_and_only_that() {
    require!("pipewire", "wireplumber", "pipewire-pulse", "pactl", "dbus-daemon");
    let audio = Audio::start();
    // A host that crashed: its PID is gone, its sink and loopback are still loaded.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let alive = std::process::id();
    let sink = |pid: u32| format!("sink_name=pixelpass_capture_{pid}");
    audio.pactl(&["load-module", "module-null-sink", &sink(dead)]).unwrap();
    audio
        .pactl(&[
            "load-module",
            "module-loopback",
            &format!("source=pixelpass_capture_{dead}.monitor"),
            "sink=desktop",
        ])
        .unwrap();
    audio.pactl(&["load-module", "module-null-sink", &sink(alive)]).unwrap();
    let run = || {
        let out = audio.command(BIN).arg("--repair").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first = run();
    assert_eq!(first.lines().count(), 2, "sink and loopback removed: {first}");
    assert!(first.contains(&format!("pixelpass_capture_{dead}")));
    let modules = audio.pactl(&["list", "short", "modules"]).unwrap();
    assert!(!modules.contains(&format!("pixelpass_capture_{dead}")), "{modules}");
    assert!(
        modules.contains(&format!("pixelpass_capture_{alive}")),
        "a live host's sink stays"
    );
    assert!(run().contains("nothing to repair"));
}

#[test]
fn repair_without_an_audio_server_has_nothing_to_repair() {
    let dir = TempDir::new("no-audio-server");
    let nothing = dir.path().join("nothing");
    for pulse_server in [Some(format!("unix:{}", nothing.display())), None] {
        let mut cmd = Command::new(BIN);
        cmd.arg("--repair").env("XDG_RUNTIME_DIR", dir.path());
        match &pulse_server {
            Some(s) => cmd.env("PULSE_SERVER", s),
            None => cmd.env_remove("PULSE_SERVER"),
        };
        let out = cmd.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "{pulse_server:?}: exit 0, not a failure: {stdout}{stderr}"
        );
        assert!(
            stdout.contains("nothing to repair: no audio server is running"),
            "{pulse_server:?} says why: {stdout}{stderr}"
        );
        assert!(
            stdout.contains(&dir.path().display().to_string()),
            "and where it looked: {stdout}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Wayland: a real headless sway + xdg-desktop-portal(-wlr) + PipeWire session.

/// Skips the test unless the Wayland session can be built here.
macro_rules! require_wayland {
    () => {
        if let Some(why) = wayland_missing() {
            skip(&format!("{why} (bash scripts/install-deps.sh)"));
            return;
        }
    };
}

/// A host with `--events json`: its ticket, and a way to read its events.
fn host_json(extra: &[&str], env: &[(String, String)]) -> (Pixelpass, String) {
    let mut args = vec!["host", "--events", "json"];
    args.extend_from_slice(extra);
    let p = Pixelpass::start(&args, env);
    let out = wait_text(&p.out, "\"event\":\"ticket\"", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("host printed no ticket; stderr:\n{}", p.err.lock().unwrap()));
    let ticket = events_of(&out, "ticket")[0]["ticket"].as_str().unwrap().to_string();
    (p, ticket)
}

fn events_of(out: &str, kind: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == kind)
        .collect()
}

fn wayland_env(w: &Wayland) -> Vec<(String, String)> {
    let mut env = w.env.clone();
    env.push(("DISPLAY".into(), String::new()));
    env
}

#[test]
fn wayland_portal_share_plays_in_mpv() {
    require_wayland!();
    require!("mpv");
    let w = Wayland::start(1280, 720);
    let (host, ticket) = Pixelpass::host(&["--no-audio"], &wayland_env(&w));
    assert!(
        !host.err.lock().unwrap().contains("capturing"),
        "no capture (and no portal dialog) before a viewer"
    );
    let (_viewer, url) = Pixelpass::viewer(&ticket, &[]);
    let dir = TempDir::new("mpv");
    let (mut player, sock) = mpv(&url, dir.path(), 60);
    assert_eq!(
        mpv_size(&sock),
        Some((1280, 720)),
        "host:\n{}",
        host.err.lock().unwrap()
    );
    assert_eq!(
        player.wait_timeout(Duration::from_secs(30)),
        Ok(Some(0)),
        "mpv played 60 frames of the headless output; host:\n{}",
        host.err.lock().unwrap()
    );
    let err = host.err.lock().unwrap().clone();
    assert!(
        err.contains("capturing the screen (picked in the portal dialog)"),
        "{err}"
    );
}

#[test]
fn wayland_frames_show_the_desktop_not_black() {
    require_wayland!();
    require!("ffmpeg");
    let w = Wayland::start(640, 480);
    let (host, ticket) = Pixelpass::host(&["--no-audio"], &wayland_env(&w));
    let (_viewer, url) = Pixelpass::viewer(&ticket, &[]);
    // brightest pixel over 2 s of decoded video: the ball pattern is white on black
    let out = Command::new("timeout")
        .args(["30", "ffmpeg", "-nostdin", "-i", &url, "-t", "2", "-an"])
        .args([
            "-vf",
            "signalstats,metadata=print:key=lavfi.signalstats.YMAX",
            "-f",
            "null",
            "-",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let ymax = text
        .lines()
        .filter_map(|l| l.split("YMAX=").nth(1)?.trim().parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!(
        ymax > 100.0,
        "decoded frames show content (YMAX {ymax}); host:\n{}",
        host.err.lock().unwrap()
    );
}

#[test]
fn wayland_stop_sharing_from_the_desktop_ends_the_host_cleanly() {
    require_wayland!();
    let w = Wayland::start(640, 480);
    let (mut host, ticket) = host_json(&["--no-audio"], &wayland_env(&w));
    let (mut viewer, _url) = Pixelpass::viewer(&ticket, &[]);
    let out = wait_text(&host.out, "\"portal_session\"", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("capture started; stderr:\n{}", host.err.lock().unwrap()));
    let session = events_of(&out, "capture-started")[0]["portal_session"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        session.starts_with("/org/freedesktop/portal/desktop/session/"),
        "{session}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    assert!(w.stop_cast(&session), "the portal backend closed the session");
    let code = host.proc.wait_timeout(Duration::from_secs(10));
    assert_eq!(
        code,
        Ok(Some(0)),
        "the host ends by itself, cleanly; stderr:\n{}",
        host.err.lock().unwrap()
    );
    eprintln!(
        "host ended {} ms after the desktop stopped the cast",
        t.elapsed().as_millis()
    );
    let out = host.out.lock().unwrap().clone();
    let ended = events_of(&out, "ended");
    assert!(
        ended[0]["reason"].as_str().unwrap().contains("the share ends"),
        "says why: {ended:?}"
    );
    assert_eq!(
        viewer.proc.wait_timeout(Duration::from_secs(5)),
        Ok(Some(0)),
        "the viewer ends too"
    );
}

#[test]
fn wayland_restore_token_skips_the_dialog_next_time_and_forget_source_drops_it() {
    require_wayland!();
    let w = Wayland::start(640, 480);
    let config = TempDir::new("wl-config");
    let mut env = wayland_env(&w);
    env.push(("XDG_CONFIG_HOME".into(), config.path().to_string_lossy().into_owned()));
    let token_file = config.path().join("pixelpass/screencast-monitor.token");
    let restores = || w.xdpw_log().matches("restore data available").count();
    let share = |extra: &[&str]| {
        let mut args = vec!["--no-audio"];
        args.extend_from_slice(extra);
        let (mut host, ticket) = host_json(&args, &env);
        let (_viewer, _url) = Pixelpass::viewer(&ticket, &[]);
        wait_text(&host.out, "capture-started", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("capture started; stderr:\n{}", host.err.lock().unwrap()));
        host.proc.signal(libc::SIGINT);
        assert_eq!(host.exit(Duration::from_secs(5)), Ok(Some(0)));
        let err = host.err.lock().unwrap().clone();
        (std::fs::read_to_string(&token_file).unwrap_or_default(), err)
    };
    let (first, _) = share(&[]);
    assert!(!first.trim().is_empty(), "the portal's restore token is kept");
    assert_eq!(restores(), 0);
    let (second, _) = share(&[]);
    assert_eq!(restores(), 1, "the second share hands the token back to the portal");
    assert!(
        !second.trim().is_empty(),
        "and keeps the one the portal returned (it may reuse it)"
    );
    let (_, err) = share(&["--forget-source"]);
    assert!(err.contains("forgot the remembered screen-cast source"), "{err}");
    assert_eq!(restores(), 1, "after --forget-source the portal is asked afresh");
}

// ---------------------------------------------------------------------------------------------
// Per-app audio on a real PipeWire session: tones from apps with their own application.name,
// told apart by frequency (a narrow band-pass per tone, then ffmpeg's volumedetect).

const TONE_A: u32 = 440;
const TONE_B: u32 = 3000;

/// Mean level (dB) of `input`'s sound in a narrow band around `freq`.
fn band_level(input: &str, secs: u32, freq: u32) -> f64 {
    let out = Command::new("timeout")
        .args(["30", "ffmpeg", "-nostdin", "-i", input, "-t", &secs.to_string(), "-vn"])
        // four band-passes in a row: the other tone leaks ~35 dB less through each
        .args([
            "-af",
            &format!(
                "{}volumedetect",
                format!("bandpass=f={freq}:width_type=q:w=8,").repeat(4)
            ),
        ])
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| l.split("mean_volume:").nth(1))
        .and_then(|v| v.trim().trim_end_matches(" dB").parse().ok())
        .unwrap_or_else(|| panic!("no level from ffmpeg: {text}"))
}

/// What the host's own speakers get: 2 s of the default sink's monitor, recorded to a file.
fn desktop_levels(audio: &Audio, dir: &Path) -> (f64, f64) {
    let wav = dir.join("desktop.wav");
    let st = audio
        .command("gst-launch-1.0")
        .args([
            "-q",
            "pulsesrc",
            "device=desktop.monitor",
            "num-buffers=100",
            "!",
            "audioconvert",
        ])
        .args(["!", "wavenc", "!", "filesink", &format!("location={}", wav.display())])
        .status()
        .unwrap();
    assert!(st.success());
    let w = wav.to_string_lossy();
    (band_level(&w, 2, TONE_A), band_level(&w, 2, TONE_B))
}

fn capture_sinks(audio: &Audio) -> String {
    audio
        .pactl(&["list", "short", "sinks"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("pixelpass_capture_"))
        .collect::<Vec<_>>()
        .join("\n")
}

macro_rules! require_audio {
    () => {
        require!(
            "Xvfb",
            "pipewire",
            "wireplumber",
            "pipewire-pulse",
            "pactl",
            "dbus-daemon",
            "ffmpeg"
        );
    };
}

/// An Xvfb screen, an audio session with `tones` (app, Hz) playing, a host with `flags` and a
/// viewer, once capture (with sound) has started.
fn per_app_share(tones: &[(&str, u32)], flags: &[&str]) -> (Xvfb, Audio, Pixelpass, Pixelpass, String) {
    let x = Xvfb::start(320, 240);
    let mut audio = Audio::start();
    for (app, freq) in tones {
        audio.tone(app, *freq);
    }
    assert!(
        wait_for(Duration::from_secs(10), || audio
            .pactl(&["list", "short", "sink-inputs"])
            .is_some_and(|s| s.lines().count() >= tones.len())),
        "the tones are playing"
    );
    let mut env = display_env(&x);
    env.extend(audio.env.clone());
    let (host, ticket) = Pixelpass::host(flags, &env);
    let (viewer, url) = Pixelpass::viewer(&ticket, &[]);
    wait_text(&host.err, "with sound", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("capture started; stderr:\n{}", host.err.lock().unwrap()));
    (x, audio, host, viewer, url)
}

const AUDIBLE: f64 = -35.0;
const ABSENT: f64 = -55.0;

#[test]
fn app_shares_only_that_apps_sound_also_when_it_starts_later() {
    require_audio!();
    let (_x, mut audio, mut host, _viewer, url) = per_app_share(&[("tone-b", TONE_B)], &["--app", "tone-a"]);
    assert!(
        host.err
            .lock()
            .unwrap()
            .contains("no app named tone-a is playing sound now"),
        "warns that the app is not playing yet"
    );
    audio.tone("tone-a", TONE_A); // starts after the share did
    std::thread::sleep(Duration::from_millis(800));
    let (a, b) = (band_level(&url, 3, TONE_A), band_level(&url, 3, TONE_B));
    eprintln!("--app tone-a: stream band levels {TONE_A} Hz {a:.1} dB, {TONE_B} Hz {b:.1} dB");
    assert!(a > AUDIBLE, "tone-a is in the stream: {a} dB");
    assert!(b < ABSENT, "tone-b is not: {b} dB");
    let sinks = capture_sinks(&audio);
    assert!(
        sinks.contains(&format!("pixelpass_capture_{}", host.proc.pid())),
        "{sinks}"
    );
    let dir = TempDir::new("levels");
    let (da, db) = desktop_levels(&audio, dir.path());
    eprintln!("host speakers meanwhile: {da:.1} dB / {db:.1} dB");
    assert!(da > AUDIBLE && db > AUDIBLE, "the host still hears both apps");
    host.proc.signal(libc::SIGINT);
    assert_eq!(host.proc.wait_timeout(Duration::from_secs(5)), Ok(Some(0)));
    assert_eq!(capture_sinks(&audio), "", "the capture sink is gone after the share");
    let (da, _) = desktop_levels(&audio, dir.path());
    assert!(da > AUDIBLE, "tone-a still plays where it played");
}

#[test]
fn exclude_app_shares_everything_but_that_app() {
    require_audio!();
    let (_x, _audio, host, _viewer, url) = per_app_share(
        &[("tone-a", TONE_A), ("voice-chat", TONE_B)],
        &["--exclude-app", "Voice-Chat"],
    );
    assert!(
        host.err
            .lock()
            .unwrap()
            .contains("sharing all sound except Voice-Chat (playing now: tone-a)")
    );
    std::thread::sleep(Duration::from_millis(500));
    let (a, b) = (band_level(&url, 3, TONE_A), band_level(&url, 3, TONE_B));
    eprintln!("--exclude-app voice-chat: stream band levels {TONE_A} Hz {a:.1} dB, {TONE_B} Hz {b:.1} dB");
    assert!(a > AUDIBLE, "other apps are in the stream: {a} dB");
    assert!(b < ABSENT, "the excluded app is not (no echo of the call): {b} dB");
}

#[test]
fn a_killed_per_app_host_leaves_nothing_in_pipewire() {
    require_audio!();
    let (_x, audio, mut host, _viewer, _url) = per_app_share(&[("tone-a", TONE_A)], &["--app", "tone-a"]);
    let name = format!("pixelpass_capture_{}", host.proc.pid());
    assert!(capture_sinks(&audio).contains(&name));
    host.proc.signal(libc::SIGKILL);
    let _ = host.proc.wait_timeout(Duration::from_secs(5));
    assert!(
        wait_for(Duration::from_secs(5), || capture_sinks(&audio).is_empty()),
        "PipeWire removed the dead host's sink itself: {}",
        capture_sinks(&audio)
    );
    let out = audio.command(BIN).arg("--repair").output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to repair"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[path = "e2e/outputs.rs"]
mod outputs;

#[path = "e2e/meter.rs"]
mod meter;
