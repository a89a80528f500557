//! `pixelpass` with no arguments, as a person uses it: in a real terminal (tmux on a socket of
//! this test's own), keys sent, the screen read. Real Xvfb (and xclip) or headless sway (and
//! wl-paste) for the clipboard, real iroh on loopback, real mpv, a real HTTP sink for the
//! bandwidth test.

use pixelpass_test_support as support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

mod sink;

const BIN: &str = env!("CARGO_BIN_EXE_pixelpass");

/// A tmux server of this test's own (its socket in a temporary folder); killed, with
/// everything in it, on drop.
struct Tmux {
    socket: String,
    _dir: TempDir,
}

impl Tmux {
    /// Runs `pixelpass` (no arguments) in a 100x60 terminal with `env`; when it exits, the pane
    /// shows `EXIT=<code>` and the terminal's mode (`stty -a`), and stays.
    fn start(env: &[(String, String)]) -> Tmux {
        Tmux::start_with(env, "")
    }

    /// [`Tmux::start`] with arguments for pixelpass. The terminal takes OSC 52 clipboard
    /// requests into its paste buffer.
    fn start_with(env: &[(String, String)], args: &str) -> Tmux {
        Tmux::start_sized(env, args, 100)
    }

    /// [`Tmux::start_with`] in a terminal `cols` wide.
    fn start_sized(env: &[(String, String)], args: &str, cols: u32) -> Tmux {
        let dir = TempDir::new("tmux");
        let socket = dir.path().join("socket").display().to_string();
        let conf = dir.path().join("tmux.conf");
        std::fs::write(&conf, "set -g set-clipboard on\n").unwrap();
        let conf = conf.display().to_string();
        let t = Tmux { socket, _dir: dir };
        let vars: String = env.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
        let cmd = format!(
            "env {vars} {BIN} {args}; echo EXIT=$?; stty -a | tr -s ' ;' '\\n\\n' | grep -x -- '-*\\(icanon\\|echo\\)' | tr '\\n' ' '; echo STTY; sleep 3600"
        );
        let cols = cols.to_string();
        t.tmux(&["-f", &conf, "new-session", "-d", "-x", &cols, "-y", "60", &cmd]);
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-u", "-S", &self.socket])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Pastes `text` as a terminal paste (bracketed when the program asked for it).
    fn paste(&self, text: &str) {
        self.tmux(&["set-buffer", text]);
        self.tmux(&["paste-buffer", "-p"]);
    }

    /// The screen and its scrollback.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-300"])
    }

    /// The screen and its scrollback as drawn: a wrapped line is two rows.
    fn rows(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-S", "-300"])
    }

    /// Waits for `needle` on screen; panics with the screen if it never comes.
    fn wait(&self, needle: &str, secs: u64) -> String {
        let mut screen = String::new();
        let found = wait_for(Duration::from_secs(secs), || {
            screen = self.screen();
            screen.contains(needle)
        });
        assert!(found, "{needle:?} never showed; screen:\n{screen}");
        screen
    }

    /// The exit code and the terminal's mode after pixelpass exited.
    fn exit(&self, secs: u64) -> (i32, String) {
        let s = self.wait("STTY", secs);
        let code = s
            .lines()
            .find_map(|l| l.strip_prefix("EXIT="))
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or_else(|| panic!("no exit code on screen:\n{s}"));
        let stty = s.lines().find(|l| l.ends_with("STTY")).unwrap_or("").to_string();
        (code, stty)
    }

    fn cursor_visible(&self) -> bool {
        self.tmux(&["display-message", "-p", "#{cursor_flag}"]).trim() == "1"
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

/// The environment of a menu run: its own config, relay off, loopback only, this display.
fn env_for(config: &Path, display: &[(String, String)], speedtest: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("XDG_CONFIG_HOME".to_string(), config.display().to_string()),
        ("PIXELPASS_RELAY".into(), "disabled".into()),
        ("PIXELPASS_BIND".into(), "127.0.0.1:0".into()),
        ("PIXELPASS_SPEEDTEST_URL".into(), speedtest.into()),
    ];
    env.extend_from_slice(display);
    env
}

fn x11(x: &Xvfb) -> Vec<(String, String)> {
    vec![
        ("DISPLAY".into(), x.display.clone()),
        ("WAYLAND_DISPLAY".into(), String::new()),
    ]
}

/// A config whose bandwidth question was answered (skipped), so hosting asks three questions.
fn answered_config() -> TempDir {
    let dir = TempDir::new("menu-config");
    std::fs::create_dir_all(dir.path().join("pixelpass")).unwrap();
    std::fs::write(
        dir.path().join("pixelpass/config.toml"),
        "[bandwidth]\nstatus = \"skipped\"\n",
    )
    .unwrap();
    dir
}

/// The tickets printed on screen, in order.
fn tickets(screen: &str) -> Vec<String> {
    screen
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("pp1") && !l.contains(' '))
        .map(String::from)
        .collect()
}

/// The last QR code on screen (the last run of lines drawn only in half blocks), decoded as a
/// camera would: modules scaled to pixels, read by rqrr.
fn qr_on_screen(screen: &str) -> Option<String> {
    let is_qr = |l: &str| !l.is_empty() && l.chars().all(|c| matches!(c, '█' | '▀' | '▄' | ' '));
    let lines: Vec<&str> = screen.lines().collect();
    let end = lines.iter().rposition(|l| is_qr(l))? + 1;
    let start = lines[..end].iter().rposition(|l| !is_qr(l)).map_or(0, |i| i + 1);
    let rows: Vec<Vec<char>> = lines[start..end].iter().map(|l| l.chars().collect()).collect();
    let size = rows[0].len();
    let dark = |x: usize, y: usize| {
        let c = rows.get(y / 2).and_then(|r| r.get(x)).copied().unwrap_or(' ');
        !matches!((c, y % 2), ('█', _) | ('▀', 0) | ('▄', 1))
    };
    const PX: usize = 4;
    let mut img =
        rqrr::PreparedImage::prepare_from_greyscale(
            size * PX,
            size * PX,
            |x, y| {
                if dark(x / PX, y / PX) { 0 } else { 255 }
            },
        );
    let grids = img.detect_grids();
    grids.first()?.decode().ok().map(|(_, s)| s)
}

/// `pixelpass view TICKET --player none --events json`.
fn headless_viewer(ticket: &str) -> Proc {
    Proc::spawn(
        "viewer",
        Command::new(BIN)
            .args(["view", ticket, "--player", "none", "--events", "json"])
            .env("PIXELPASS_RELAY", "disabled")
            .env("PIXELPASS_BIND", "127.0.0.1:0")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    )
}

fn xclip(x: &Xvfb) -> Option<String> {
    output_in(&x11(x), "xclip", &["-o", "-selection", "clipboard"])
}

#[test]
fn enter_at_every_question_shares_the_screen_with_the_ticket_on_the_clipboard() {
    require!("tmux", "Xvfb", "xclip");
    let x = Xvfb::start(1280, 720);
    let config = TempDir::new("menu-first-run");
    let sink = sink::sink(std::net::Ipv4Addr::LOCALHOST, sink::Answer::Ok);
    let env = env_for(config.path(), &x11(&x), &format!("http://{sink}/__up"));
    let t = Tmux::start(&env);
    t.wait("What do you want to do?", 10);
    t.keys(&["Enter"]);
    t.wait("Test your upload speed first?", 10);
    t.keys(&["Enter"]);
    t.wait("What to share?", 15);
    t.keys(&["Enter"]);
    t.wait("Sound?", 10);
    t.keys(&["Enter"]);
    t.wait("Quality", 10);
    t.keys(&["Enter"]);
    let screen = t.wait("copied to your clipboard", 30);
    let ticket = tickets(&screen).pop().expect("a ticket on screen");
    assert_eq!(
        xclip(&x).as_deref(),
        Some(ticket.as_str()),
        "the clipboard holds the ticket"
    );
    assert_eq!(
        qr_on_screen(&screen).map(|s| s.to_ascii_lowercase()),
        Some(ticket.clone()),
        "the QR code on screen reads as the ticket:\n{screen}"
    );
    let cfg = std::fs::read_to_string(config.path().join("pixelpass/config.toml")).unwrap();
    assert!(cfg.contains("status = \"measured\""), "{cfg}");
    // A working share: a viewer gets the whole screen.
    let mut viewer = headless_viewer(&ticket);
    let events = collect(viewer.child.as_mut().unwrap().stdout.take().unwrap());
    assert!(wait_text(&events, "\"event\":\"connected\"", Duration::from_secs(20)).is_some());
    t.wait("capturing the whole screen (1280x720)", 20);
    t.wait("1 viewer: ", 10);
    drop(viewer);
    t.keys(&["q"]);
    let (code, stty) = t.exit(10);
    assert_eq!(code, 0, "q stops the share");
    assert!(
        !stty.contains("-icanon") && !stty.contains("-echo"),
        "terminal restored: {stty}"
    );
    assert_eq!(xclip(&x), None, "the clipboard is served only while the host runs");
}

/// Hosts through the menu with Enter everywhere (bandwidth already answered); the ticket.
fn menu_host(t: &Tmux) -> String {
    t.wait("What do you want to do?", 10);
    for q in ["What to share?", "Sound?", "Quality"] {
        t.keys(&["Enter"]);
        t.wait(q, 15);
    }
    t.keys(&["Enter"]);
    let screen = t.wait("send it to your viewers", 30);
    tickets(&screen).pop().expect("a ticket on screen")
}

#[test]
fn a_menu_viewer_plays_in_mpv_then_k_kicks_it_and_r_revokes_the_ticket() {
    require!("tmux", "Xvfb", "xclip", "mpv", "xwininfo");
    let x = Xvfb::start(640, 360);
    let host_cfg = answered_config();
    let host = Tmux::start(&env_for(host_cfg.path(), &x11(&x), "http://127.0.0.1:9/"));
    let ticket = menu_host(&host);

    let view_cfg = TempDir::new("menu-viewer");
    let viewer = Tmux::start(&env_for(view_cfg.path(), &x11(&x), "http://127.0.0.1:9/"));
    viewer.wait("What do you want to do?", 10);
    viewer.keys(&["Down", "Enter"]);
    viewer.wait("Paste the ticket:", 10);
    viewer.paste(&ticket);
    viewer.keys(&["Enter"]);
    let s = viewer.wait("Play it in", 10);
    assert!(
        s.contains("mpv (low latency)"),
        "mpv is installed and offered first:\n{s}"
    );
    viewer.keys(&["Enter"]);
    viewer.wait("started mpv", 20);
    let s = host.wait("1 viewer: ", 30);
    assert!(s.contains("joined over"), "the host shows the join:\n{s}");
    viewer.wait("ms behind capture", 20);
    assert!(
        x.window_id("pixelpass").is_some(),
        "mpv opened its window on the display"
    );
    let cfg = std::fs::read_to_string(view_cfg.path().join("pixelpass/config.toml")).unwrap();
    assert!(cfg.contains("player = \"mpv\""), "the player is remembered: {cfg}");

    host.keys(&["k"]);
    host.wait("kick which viewer? 1) ", 5);
    host.keys(&["1", "Enter"]);
    let s = viewer.wait("EXIT=", 15);
    assert!(
        s.contains("the host removed this viewer from the share"),
        "the viewer says why it ended:\n{s}"
    );
    host.wait("left: kicked", 10);

    host.keys(&["r"]);
    let mut screen = String::new();
    assert!(
        wait_for(Duration::from_secs(15), || {
            screen = host.screen();
            tickets(&screen).len() >= 2
        }),
        "r printed a new ticket:\n{screen}"
    );
    let new = tickets(&screen).pop().unwrap();
    assert_ne!(new, ticket);
    assert!(
        wait_for(Duration::from_secs(5), || xclip(&x).as_deref() == Some(new.as_str())),
        "the new ticket is copied again"
    );
    let mut old = headless_viewer(&ticket);
    assert_eq!(
        old.wait_timeout(Duration::from_secs(20)),
        Ok(Some(2)),
        "the old ticket is refused (exit 2, not authorized)"
    );
    host.keys(&["q"]);
    assert_eq!(host.exit(10).0, 0);
}

/// Starts a menu run and answers until `at` shows (bandwidth: first run).
fn at_question(config: &Path, x: &Xvfb, at: &str) -> Tmux {
    let t = Tmux::start(&env_for(config, &x11(x), "http://127.0.0.1:9/"));
    let path: &[(&str, &[&str])] = &[
        ("What do you want to do?", &["Enter"]),
        ("Test your upload speed first?", &["Down", "Enter"]),
        ("What to share?", &["Enter"]),
        ("Sound?", &["Enter"]),
        ("Quality", &["Enter"]),
    ];
    let viewer_path: &[(&str, &[&str])] = &[
        ("What do you want to do?", &["Down", "Enter"]),
        ("Paste the ticket:", &[]),
    ];
    let path = if at == "Paste the ticket:" { viewer_path } else { path };
    for (question, keys) in path {
        t.wait(question, 15);
        if *question == at {
            return t;
        }
        t.keys(keys);
    }
    panic!("{at} is not on the way");
}

#[test]
fn ctrl_c_at_each_question_exits_130_with_the_terminal_restored() {
    require!("tmux", "Xvfb");
    let x = Xvfb::start(320, 240);
    for q in [
        "What do you want to do?",
        "Test your upload speed first?",
        "What to share?",
        "Sound?",
        "Quality",
        "Paste the ticket:",
    ] {
        let config = TempDir::new("menu-ctrl-c");
        let t = at_question(config.path(), &x, q);
        t.keys(&["C-c"]);
        let (code, stty) = t.exit(5);
        assert_eq!(code, 130, "ctrl-c at {q:?}");
        assert!(
            stty.contains("icanon") && !stty.contains("-icanon"),
            "{q}: cooked mode again: {stty}"
        );
        assert!(
            stty.contains("echo") && !stty.contains("-echo"),
            "{q}: echo again: {stty}"
        );
        assert!(t.cursor_visible(), "{q}: the cursor is visible");
    }
}

#[test]
fn a_bad_ticket_is_asked_again_and_esc_goes_back() {
    require!("tmux", "Xvfb");
    let x = Xvfb::start(320, 240);
    let config = TempDir::new("menu-esc");
    let t = at_question(config.path(), &x, "Paste the ticket:");
    t.paste("pp1hello");
    t.keys(&["Enter"]);
    let s = t.wait("not a ticket", 5);
    assert!(
        s.contains("Paste the ticket:") && !s.contains("EXIT="),
        "asked again:\n{s}"
    );
    t.keys(&["Escape"]);
    t.wait("What do you want to do?", 5);
    let s = t.screen();
    assert!(!s.contains("EXIT="), "Esc goes back, it does not exit:\n{s}");
    // Esc in the host questions: one back.
    t.keys(&["Enter"]);
    t.wait("Test your upload speed first?", 5);
    t.keys(&["Down", "Enter"]);
    t.wait("What to share?", 5);
    t.keys(&["Enter"]);
    t.wait("Sound?", 5);
    t.keys(&["Escape"]);
    let mut s = String::new();
    let again = wait_for(Duration::from_secs(5), || {
        s = t.screen();
        s.matches("What to share?").count() == 2
    });
    assert!(again && s.contains("Sound? <canceled>"), "asked again after Esc:\n{s}");
    t.keys(&["C-c"]);
    assert_eq!(t.exit(5).0, 130);
}

#[test]
fn skipping_the_bandwidth_test_is_remembered() {
    require!("tmux", "Xvfb");
    let x = Xvfb::start(320, 240);
    let config = TempDir::new("menu-skip");
    let t = at_question(config.path(), &x, "What to share?");
    t.keys(&["C-c"]);
    assert_eq!(t.exit(5).0, 130);
    let cfg = std::fs::read_to_string(config.path().join("pixelpass/config.toml")).unwrap();
    assert!(cfg.contains("status = \"skipped\""), "{cfg}");
    let t = Tmux::start(&env_for(config.path(), &x11(&x), "http://127.0.0.1:9/"));
    t.wait("What do you want to do?", 10);
    t.keys(&["Enter"]);
    let s = t.wait("What to share?", 10);
    assert!(!s.contains("Test your upload speed"), "not asked again:\n{s}");
}

#[test]
fn wayland_the_ticket_is_on_the_clipboard_while_the_host_runs() {
    if let Some(why) = wayland_missing() {
        skip(&format!("{why} (bash scripts/install-deps.sh)"));
        return;
    }
    require!("tmux", "wl-paste");
    let w = Wayland::start(640, 480);
    let mut display = w.env.clone();
    display.push(("DISPLAY".into(), String::new()));
    let config = answered_config();
    let t = Tmux::start(&env_for(config.path(), &display, "http://127.0.0.1:9/"));
    let ticket = menu_host(&t);
    let s = t.screen();
    assert!(s.contains("copied to your clipboard"), "{s}");
    let mut got = None;
    wait_for(Duration::from_secs(5), || {
        got = output_in(&display, "wl-paste", &["-n"]);
        got.as_deref() == Some(ticket.as_str())
    });
    assert_eq!(got.as_deref(), Some(ticket.as_str()), "wl-paste reads the ticket");
    t.keys(&["q"]);
    assert_eq!(t.exit(10).0, 0);
}

#[test]
fn typed_host_flags_skip_their_questions() {
    require!("tmux", "Xvfb");
    let x = Xvfb::start(320, 240);
    let config = answered_config();
    let t = Tmux::start_with(
        &env_for(config.path(), &x11(&x), "http://127.0.0.1:9/"),
        "--no-audio --quality low",
    );
    t.wait("What do you want to do?", 10);
    t.keys(&["Enter"]);
    t.wait("What to share?", 10);
    t.keys(&["Enter"]);
    let s = t.wait("send it to your viewers", 30);
    assert!(!s.contains("Sound?") && !s.contains("Quality"), "not asked:\n{s}");
    t.keys(&["q"]);
    assert_eq!(t.exit(10).0, 0);
}

#[test]
fn over_ssh_the_ticket_also_goes_to_the_terminal_clipboard_with_osc52() {
    require!("tmux", "Xvfb");
    let x = Xvfb::start(320, 240);
    let config = answered_config();
    let mut env = env_for(config.path(), &x11(&x), "http://127.0.0.1:9/");
    env.push(("SSH_TTY".into(), "/dev/pts/99".into()));
    let t = Tmux::start(&env);
    let ticket = menu_host(&t);
    let mut buffer = String::new();
    let got = wait_for(Duration::from_secs(5), || {
        buffer = t.tmux(&["show-buffer"]);
        buffer == ticket
    });
    assert!(got, "the terminal's clipboard holds the ticket: {buffer:?}");
    t.keys(&["q"]);
    assert_eq!(t.exit(10).0, 0);
}

/// With two viewers on an 80-column terminal the status line stays one row: redrawn in place
/// every second, never wrapping onto rows it cannot clear.
#[test]
fn the_status_line_fits_an_80_column_terminal_with_two_viewers() {
    require!("tmux", "Xvfb");
    let x = Xvfb::start(320, 240);
    let config = answered_config();
    let t = Tmux::start_sized(&env_for(config.path(), &x11(&x), "http://127.0.0.1:9/"), "", 80);
    let ticket = menu_host(&t);
    let viewers = [headless_viewer(&ticket), headless_viewer(&ticket)];
    t.wait("2 viewers", 30);
    // A few redraws after both joined.
    std::thread::sleep(Duration::from_secs(3));
    let rows = t.rows();
    let status: Vec<&str> = rows.lines().filter(|l| l.contains('●')).collect();
    assert_eq!(status.len(), 1, "one status row, redrawn in place:\n{rows}");
    assert!(status[0].starts_with("● 2 viewers"), "{rows}");
    assert!(status[0].chars().count() < 80, "fits the width: {:?}", status[0]);
    let last = rows.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(last.starts_with('●'), "the status line is the last row:\n{rows}");
    drop(viewers);
    t.keys(&["q"]);
    assert_eq!(t.exit(10).0, 0);
}

/// Ctrl-C on the host screen (not only `q`) ends the share with the terminal restored.
#[test]
fn ctrl_c_on_the_host_screen_restores_the_terminal() {
    require!("tmux", "Xvfb");
    let x = Xvfb::start(320, 240);
    let config = answered_config();
    let t = Tmux::start(&env_for(config.path(), &x11(&x), "http://127.0.0.1:9/"));
    menu_host(&t);
    // with the status line on screen: the exit must not leave the shell's next line after it
    t.wait("no viewers yet", 10);
    t.keys(&["C-c"]);
    let (code, stty) = t.exit(10);
    assert_eq!(code, 0, "ctrl-c stops the share cleanly");
    assert!(
        stty.contains("icanon") && !stty.contains("-icanon"),
        "cooked mode again: {stty}"
    );
    assert!(stty.contains("echo") && !stty.contains("-echo"), "echo again: {stty}");
    assert!(t.cursor_visible(), "the cursor is visible");
}
