//! Real test environment for end-to-end tests: Xvfb, a private PipeWire session (PipeWire,
//! WirePlumber, pipewire-pulse, its own D-Bus and XDG_RUNTIME_DIR), processes owned by PID
//! and killed on drop, mpv's JSON IPC. Every fixture cleans up on every exit path.
//!
//! A dev-only crate (`publish = false`): the launcher's unit and end-to-end tests, its share
//! bench and the network test bed use it.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL after SIGTERM) and reaped on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child: Some(child),
            name: name.into(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal by PID.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits up to `timeout` for exit; returns the exit code (None = signal) or Err on timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<i32>, TimedOut> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Ok(st.code());
            }
            if Instant::now() > deadline {
                return Err(TimedOut);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }
}

/// A process did not exit in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                // SAFETY: kill(2) on our own child's pid.
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGTERM);
                }
                let deadline = Instant::now() + Duration::from_secs(2);
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("pixelpass-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Held by tests that count this process's fds, so they do not count each other's.
pub static FD_COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// Whether every test must really run: in CI (`CI` set) or with `PIXELPASS_REQUIRE_ALL`
/// (scripts/test.sh sets it). A missing tool or privilege then fails the test: a skip would
/// pass without testing anything.
pub fn require_all() -> bool {
    ["CI", "PIXELPASS_REQUIRE_ALL"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false")))
}

/// A test cannot run here because of `why`: says so (the caller then returns), or, when
/// [`require_all`], fails.
pub fn skip(why: &str) {
    assert!(
        !require_all(),
        "{why}: this test must run here (CI or PIXELPASS_REQUIRE_ALL is set)"
    );
    eprintln!("SKIP: {why}");
}

/// Skips the calling test (returns from it) when a tool is missing, with a clear message;
/// fails it instead when [`require_all`].
#[macro_export]
macro_rules! require {
    ($($cmd:expr),+) => {
        for c in [$($cmd),+] {
            if !$crate::have(c) {
                $crate::skip(&format!("{c} is not installed (bash scripts/install-deps.sh)"));
                return;
            }
        }
    };
}

/// An Xvfb server on a free display, with something moving on it.
pub struct Xvfb {
    pub display: String,
    procs: Vec<Proc>,
}

impl Xvfb {
    pub fn start(width: u32, height: u32) -> Xvfb {
        let (mut r, w) = std::io::pipe().unwrap();
        let wfd = std::os::fd::AsRawFd::as_raw_fd(&w);
        // The write end must survive exec into Xvfb.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            libc::fcntl(wfd, libc::F_SETFD, 0);
        }
        let server = Proc::spawn(
            "Xvfb",
            Command::new("Xvfb")
                .args([
                    "-displayfd",
                    &wfd.to_string(),
                    "-screen",
                    "0",
                    &format!("{width}x{height}x24"),
                ])
                // -noreset: by default the server resets when its last client leaves, and a
                // client connecting meanwhile is refused; a short-lived client (the first
                // xwininfo polling for a window) could be the last one while the others were
                // still starting: "xclock: Can't open display" in 1 run in 5 of a test.
                .args(["-nolisten", "tcp", "-noreset"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        drop(w);
        let mut buf = String::new();
        let mut byte = [0u8; 1];
        while r.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            buf.push(byte[0] as char);
        }
        let display = format!(":{}", buf.trim());
        assert!(display.len() > 1, "Xvfb did not report a display");
        let mut x = Xvfb {
            display,
            procs: vec![server],
        };
        // Something that moves, so every frame differs.
        let ball = Proc::spawn(
            "ball",
            Command::new("gst-launch-1.0")
                .args(["-q", "videotestsrc", "pattern=ball", "is-live=true", "!"])
                .args(["video/x-raw,width=320,height=240", "!", "ximagesink", "sync=false"])
                .env("DISPLAY", &x.display)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        x.procs.push(ball);
        x
    }

    /// Starts an X client (kept until the fixture drops).
    pub fn client(&mut self, name: &str, cmd: &mut Command) -> u32 {
        let p = Proc::spawn(
            name,
            cmd.env("DISPLAY", &self.display)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let pid = p.pid();
        self.procs.push(p);
        pid
    }

    /// Kills the client started with `pid`.
    pub fn kill_client(&mut self, pid: u32) {
        self.procs.retain(|p| p.child.as_ref().is_some_and(|c| c.id() != pid));
    }

    /// The id of the first window named `name`, waiting for it to map.
    pub fn window_id(&self, name: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let out = Command::new("xwininfo")
                .args(["-name", name])
                .env("DISPLAY", &self.display)
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(id) = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("xwininfo: Window id:"))
                .and_then(|r| r.split_whitespace().next())
            {
                return Some(id.to_string());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // clients first, the server last
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
    }
}

/// A private audio session: D-Bus, PipeWire, WirePlumber, pipewire-pulse, and a pinned default
/// sink named `desktop`.
pub struct Audio {
    pub env: Vec<(String, String)>,
    procs: Vec<Proc>,
    dir: TempDir,
}

impl Audio {
    /// Starts the session. The daemons normally answer within 10–110 ms; one CI run saw a
    /// session that never did (no logs were kept then). A session that does not answer within
    /// 10 s is stopped, its daemons' logs printed, and a fresh one started (three tries).
    pub fn start() -> Audio {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(a) => {
                    for f in &failures {
                        eprintln!("audio session: an earlier try did not come up: {f}");
                    }
                    return a;
                }
                Err(why) => failures.push(why),
            }
        }
        panic!(
            "the audio session did not come up in three tries:\n{}",
            failures.join("\n")
        );
    }

    fn try_start() -> Result<Audio, String> {
        let dir = TempDir::new("audio");
        let runtime = dir.path().to_string_lossy().into_owned();
        let bus_path = dir.path().join("bus");
        let mut procs = Vec::new();
        let mut dbus = Proc::spawn(
            "dbus-daemon",
            Command::new("dbus-daemon")
                .args(["--session", "--nofork", "--print-address=1"])
                .arg(format!("--address=unix:path={}", bus_path.display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let mut line = String::new();
        BufReader::new(dbus.child.as_mut().unwrap().stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        procs.push(dbus);
        let env = vec![
            ("XDG_RUNTIME_DIR".to_string(), runtime.clone()),
            ("DBUS_SESSION_BUS_ADDRESS".to_string(), line.trim().to_string()),
        ];
        let spawn = |name: &str, env: &[(String, String)]| {
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
            Proc::spawn(
                name,
                Command::new(name)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdout(Stdio::null())
                    .stderr(log),
            )
        };
        procs.push(spawn("pipewire", &env));
        let sock = dir.path().join("pipewire-0");
        let pipewire_up = wait_for(Duration::from_secs(10), || sock.exists());
        if pipewire_up {
            procs.push(spawn("wireplumber", &env));
            procs.push(spawn("pipewire-pulse", &env));
        }
        let a = Audio { env, procs, dir };
        if !pipewire_up {
            return Err(format!("pipewire made no socket in 10 s:\n{}", a.logs()));
        }
        if !wait_for(Duration::from_secs(10), || {
            a.pactl(&["get-default-sink"]).is_some_and(|s| !s.is_empty())
        }) {
            return Err(format!(
                "no answer in 10 s; pactl says {:?}; the daemons' logs:\n{}",
                a.pactl_err(&["get-default-sink"]),
                a.logs()
            ));
        }
        if a.pactl(&["load-module", "module-null-sink", "sink_name=desktop"])
            .is_none()
        {
            return Err(format!("cannot load the desktop sink:\n{}", a.logs()));
        }
        // (the new sink can take a moment to be known; pin it as the default once it is)
        if !wait_for(Duration::from_secs(10), || {
            a.pactl(&["set-default-sink", "desktop"]).is_some()
                && a.pactl(&["get-default-sink"]).as_deref() == Some("desktop")
        }) {
            return Err(format!("the desktop sink did not become the default:\n{}", a.logs()));
        }
        Ok(a)
    }

    /// What pactl printed, errors included (for a failure's message).
    fn pactl_err(&self, args: &[&str]) -> String {
        self.command("pactl")
            .args(args)
            .output()
            .map(|o| {
                format!(
                    "{} {}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_else(|e| e.to_string())
    }

    /// The daemons' stderr so far.
    fn logs(&self) -> String {
        ["pipewire", "wireplumber", "pipewire-pulse"]
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("{n}.log"))).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!("--- {n}:\n{}", lines[lines.len().saturating_sub(15)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn pactl(&self, args: &[&str]) -> Option<String> {
        output_in(&self.env, "pactl", args).map(|o| o.trim().to_string())
    }

    /// Plays a tone into the default sink as application `app`.
    pub fn tone(&mut self, app: &str, freq: u32) {
        let p = Proc::spawn(
            "tone",
            Command::new("gst-launch-1.0")
                .args([
                    "-q",
                    "audiotestsrc",
                    "wave=sine",
                    &format!("freq={freq}"),
                    "volume=0.5",
                    "is-live=true",
                ])
                .args(["!", "audioconvert", "!", "pulsesink", &format!("client-name={app}")])
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        self.procs.push(p);
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }
}

impl Drop for Audio {
    fn drop(&mut self) {
        // clients, pipewire-pulse, wireplumber, pipewire, dbus: reverse start order
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
        let _ = &self.dir;
    }
}

/// The xdg-desktop-portal-wlr the Wayland tests run (`scripts/build-xdpw.sh` builds it; on a
/// GPU-less machine the stock one cannot start a screen cast). `PIXELPASS_XDPW` overrides.
pub fn xdpw() -> Option<PathBuf> {
    let p = std::env::var_os("PIXELPASS_XDPW")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/xdpw/xdg-desktop-portal-wlr"));
    p.is_file().then_some(p)
}

/// A headless Wayland desktop with a real ScreenCast portal, on top of a private audio session:
/// sway (headless, pixman renderer, in a user namespace because sway refuses to run as root),
/// a moving test pattern in a window, xdg-desktop-portal-wlr and xdg-desktop-portal.
pub struct Wayland {
    /// Everything a client needs: the audio session's variables plus WAYLAND_DISPLAY.
    pub env: Vec<(String, String)>,
    procs: Vec<Proc>,
    dir: TempDir,
    pub audio: Audio,
}

impl Wayland {
    pub fn start(width: u32, height: u32) -> Wayland {
        let xdpw = xdpw().expect("xdpw built (bash scripts/build-xdpw.sh)");
        let audio = Audio::start();
        let dir = TempDir::new("wayland");
        let runtime = PathBuf::from(&audio.env.iter().find(|(k, _)| k == "XDG_RUNTIME_DIR").unwrap().1);
        std::fs::write(
            dir.path().join("sway.conf"),
            format!("xwayland disable\noutput HEADLESS-1 mode {width}x{height}@30Hz\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("xdpw.conf"),
            "[screencast]\noutput_name=HEADLESS-1\nmax_fps=30\nchooser_type=none\n",
        )
        .unwrap();
        let mut env = audio.env.clone();
        env.push(("XDG_CURRENT_DESKTOP".into(), "sway".into()));
        let mut w = Wayland {
            env,
            procs: Vec::new(),
            dir,
            audio,
        };
        let conf = w.dir.path().join("sway.conf");
        w.spawn(
            "sway",
            Command::new("unshare")
                .args(["--user", "--map-user=1000", "--map-group=1000", "sway", "-c"])
                .arg(conf)
                .env("WLR_BACKENDS", "headless")
                .env("WLR_LIBINPUT_NO_DEVICES", "1")
                .env("WLR_RENDERER", "pixman"),
        );
        let mut display = None;
        wait_for(Duration::from_secs(15), || {
            display = std::fs::read_dir(&runtime).ok().and_then(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .find(|n| n.starts_with("wayland-") && !n.ends_with(".lock"))
            });
            display.is_some()
        });
        let display = display.expect("sway came up (see its log)");
        w.env.push(("WAYLAND_DISPLAY".into(), display));
        w.spawn(
            "content",
            Command::new("gst-launch-1.0").args([
                "-q",
                "videotestsrc",
                "pattern=ball",
                "is-live=true",
                "!",
                "video/x-raw,width=640,height=480",
                "!",
                "waylandsink",
            ]),
        );
        // The backend first, so the frontend does not D-Bus-activate the stock one.
        let conf = w.dir.path().join("xdpw.conf");
        w.spawn("xdpw", Command::new(&xdpw).args(["-l", "DEBUG", "-c"]).arg(conf));
        assert!(
            wait_for(Duration::from_secs(10), || w
                .bus_has("org.freedesktop.impl.portal.desktop.wlr")),
            "xdg-desktop-portal-wlr is on the bus"
        );
        w.spawn("xdp", &mut Command::new("/usr/libexec/xdg-desktop-portal"));
        assert!(
            wait_for(Duration::from_secs(10), || w.bus_has("org.freedesktop.portal.Desktop")),
            "xdg-desktop-portal is on the bus"
        );
        w
    }

    fn spawn(&mut self, name: &str, cmd: &mut Command) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let p = Proc::spawn(
            name,
            cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(log),
        );
        self.procs.push(p);
    }

    /// Whether a name is owned on the session bus (without activating it).
    pub fn bus_has(&self, name: &str) -> bool {
        self.gdbus(&[
            "--dest",
            "org.freedesktop.DBus",
            "--object-path",
            "/org/freedesktop/DBus",
            "--method",
            "org.freedesktop.DBus.NameHasOwner",
            name,
        ])
        .is_some_and(|o| o.contains("true"))
    }

    /// `gdbus call --session ARGS`; the output when it succeeded.
    pub fn gdbus(&self, args: &[&str]) -> Option<String> {
        let mut all = vec!["call", "--session"];
        all.extend_from_slice(args);
        output_in(&self.env, "gdbus", &all)
    }

    /// Ends a screen cast from the desktop side, as the compositor's "stop sharing" does: the
    /// portal backend drops the session and its stream. (xdg-desktop-portal refuses Close from
    /// anyone but the session's owner, so this goes to the backend.)
    pub fn stop_cast(&self, session: &str) -> bool {
        self.gdbus(&[
            "--dest",
            "org.freedesktop.impl.portal.desktop.wlr",
            "--object-path",
            session,
            "--method",
            "org.freedesktop.impl.portal.Session.Close",
        ])
        .is_some()
    }

    /// The portal backend's log so far.
    pub fn xdpw_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("xdpw.log")).unwrap_or_default()
    }
}

impl Drop for Wayland {
    fn drop(&mut self) {
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
    }
}

/// Runs `program args` with `env` added; its stdout when it succeeded.
pub fn output_in(env: &[(String, String)], program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why the headless Wayland session cannot be built here, if it cannot.
pub fn wayland_missing() -> Option<String> {
    let tools = [
        "sway",
        "unshare",
        "gdbus",
        "pipewire",
        "wireplumber",
        "pipewire-pulse",
        "pactl",
        "dbus-daemon",
    ];
    if let Some(t) = tools.iter().find(|t| !have(t)) {
        return Some(format!("{t} is not installed"));
    }
    if !Path::new("/usr/libexec/xdg-desktop-portal").exists() {
        return Some("xdg-desktop-portal is not installed".into());
    }
    xdpw()
        .is_none()
        .then(|| "the test portal backend is not built (scripts/build-xdpw.sh)".into())
}

pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// Reads lines from a child's stream into a shared buffer (so a test can wait for text).
/// The reader drops its handle at end of stream: [`wait_closed`] waits for that.
pub fn collect(stream: impl std::io::Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<String>> {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut s = b.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    buf
}

/// Waits until the reader of a [`collect`]ed stream saw its end (the writer closed it, e.g.
/// exited): then the buffer holds everything the child wrote.
pub fn wait_closed(buf: &std::sync::Arc<std::sync::Mutex<String>>, timeout: Duration) -> bool {
    wait_for(timeout, || std::sync::Arc::strong_count(buf) == 1)
}

/// The string `field` of the first `--events json` line of kind `event` in `text`.
pub fn event_field(text: &str, event: &str, field: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == event)
        .and_then(|v| v[field].as_str().map(String::from))
}

/// Waits until `buf` contains `needle`; returns the whole text.
pub fn wait_text(buf: &std::sync::Mutex<String>, needle: &str, timeout: Duration) -> Option<String> {
    let mut found = None;
    wait_for(timeout, || {
        let s = buf.lock().unwrap();
        if s.contains(needle) {
            found = Some(s.clone());
            true
        } else {
            false
        }
    });
    found
}

/// mpv as a viewer's player, headless: the low-latency profile pixelpass uses, a JSON IPC
/// socket in `dir`, and optionally `--frames=N` (mpv exits 0 after N video frames; that
/// profile skips stream probing, so mpv's own frame estimate is unavailable).
pub fn mpv_headless(url: &str, dir: &Path, frames: Option<u32>) -> (Proc, PathBuf) {
    let sock = dir.join("mpv.sock");
    let mut cmd = Command::new("mpv");
    cmd.args([
        "--no-config",
        "--vo=null",
        "--ao=null",
        "--profile=low-latency",
        "--cache=no",
    ]);
    if let Some(n) = frames {
        cmd.arg(format!("--frames={n}"));
    }
    cmd.arg(format!("--input-ipc-server={}", sock.display()))
        .arg(url)
        .env("XDG_RUNTIME_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    (Proc::spawn("mpv", &mut cmd), sock)
}

/// mpv's JSON IPC: one property.
pub fn mpv_get(socket: &Path, prop: &str) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    writeln!(
        s,
        "{}",
        serde_json::json!({"command": ["get_property", prop], "request_id": 1})
    )
    .ok()?;
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        if v.get("request_id").and_then(|i| i.as_u64()) == Some(1) {
            return v.get("data").cloned();
        }
    }
}

/// Number of open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// The processes below `pid` (children, their children, ...), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        if let Some(ppid) = f.get(1).and_then(|v| v.parse::<u32>().ok()) {
            parent_of.push((p, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

/// Whether process `pid` still runs (a zombie does not count).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
}

/// Child processes of `pid` in state Z (zombies).
pub fn zombies_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let rest = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[0] == "Z" && f[1] == pid.to_string() {
            out.push(p);
        }
    }
    out
}
