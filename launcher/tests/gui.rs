//! `pixelpass --gui` as a person's desktop runs it: a real window on Xvfb with Mesa's software
//! GL, in a private D-Bus session with a StatusNotifierWatcher (the tray) and dunst (the
//! notifications). Enter starts hosting (Start hosting has the focus), a real viewer joins;
//! SIGKILL of the window takes its host child with it.
#![cfg(feature = "gui")]

use pixelpass_test_support as support;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_pixelpass");

/// A private session bus with a tray watcher (and a fake tray host registered, as a panel
/// would) and dunst showing notifications on the display.
struct Desktop {
    bus: String,
    /// Notify calls seen on the bus.
    notify_calls: Arc<Mutex<String>>,
    procs: Vec<Proc>,
}

impl Desktop {
    fn start(display: &str) -> Desktop {
        let mut daemon = Proc::spawn(
            "dbus-daemon",
            Command::new("dbus-daemon")
                .args(["--session", "--nofork", "--print-address=1"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let out = collect(daemon.child.as_mut().unwrap().stdout.take().unwrap());
        let text = wait_text(&out, "\n", Duration::from_secs(10)).expect("the bus address");
        let bus = text.lines().next().unwrap().trim().to_string();
        let mut d = Desktop {
            bus,
            notify_calls: Arc::default(),
            procs: vec![daemon],
        };
        d.spawn("status-notifier-watcher", &mut Command::new("status-notifier-watcher"));
        assert!(d.wait_name("org.kde.StatusNotifierWatcher"), "the tray watcher is up");
        let host = d.gdbus(&[
            "call",
            "--dest",
            "org.kde.StatusNotifierWatcher",
            "--object-path",
            "/StatusNotifierWatcher",
            "--method",
            "org.kde.StatusNotifierWatcher.RegisterStatusNotifierHost",
            "org.kde.StatusNotifierHost-test",
        ]);
        assert!(host.is_some(), "a tray host registers");
        d.spawn("dunst", Command::new("dunst").env("DISPLAY", display));
        assert!(d.wait_name("org.freedesktop.Notifications"), "dunst is up");
        let mut monitor = Proc::spawn(
            "dbus-monitor",
            Command::new("dbus-monitor")
                .args(["--address", &d.bus])
                .arg("type='method_call',interface='org.freedesktop.Notifications',member='Notify'")
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        d.notify_calls = collect(monitor.child.as_mut().unwrap().stdout.take().unwrap());
        d.procs.push(monitor);
        d
    }

    fn spawn(&mut self, name: &str, cmd: &mut Command) {
        let p = Proc::spawn(
            name,
            cmd.env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        self.procs.push(p);
    }

    fn gdbus(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("gdbus")
            .args(args)
            .arg("--address")
            .arg(&self.bus)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn wait_name(&self, name: &str) -> bool {
        wait_for(Duration::from_secs(15), || {
            self.gdbus(&[
                "call",
                "--dest",
                "org.freedesktop.DBus",
                "--object-path",
                "/org/freedesktop/DBus",
                "--method",
                "org.freedesktop.DBus.NameHasOwner",
                name,
            ])
            .is_some_and(|o| o.contains("true"))
        })
    }

    /// The registered tray items as (bus name, object path).
    fn tray_items(&self) -> Vec<(String, String)> {
        let watcher = [
            "--dest",
            "org.kde.StatusNotifierWatcher",
            "--object-path",
            "/StatusNotifierWatcher",
        ];
        let get = [
            "--method",
            "org.freedesktop.DBus.Properties.Get",
            "org.kde.StatusNotifierWatcher",
            "RegisteredStatusNotifierItems",
        ];
        let items = self
            .gdbus(&[&["call"], &watcher[..], &get[..]].concat())
            .unwrap_or_default();
        // (<['org.kde.StatusNotifierItem-123-1/StatusNotifierItem']>,) or bare bus names.
        items
            .split('\'')
            .skip(1)
            .step_by(2)
            .map(|item| match item.split_once('/') {
                Some((d, p)) => (d.to_string(), format!("/{p}")),
                None => (item.to_string(), "/StatusNotifierItem".to_string()),
            })
            .collect()
    }

    /// The tray items' titles, read from each registered item as a tray host would.
    fn tray_titles(&self) -> Vec<String> {
        self.tray_items()
            .into_iter()
            .filter_map(|(dest, path)| {
                let get = "org.freedesktop.DBus.Properties.Get";
                let item = "org.kde.StatusNotifierItem";
                self.gdbus(&[
                    "call",
                    "--dest",
                    &dest,
                    "--object-path",
                    &path,
                    "--method",
                    get,
                    item,
                    "Title",
                ])
            })
            .collect()
    }

    /// Clicks the tray menu item labelled `label`, as a tray host does (dbusmenu Event).
    fn click_menu(&self, label: &str) {
        let (dest, _) = self.tray_items().into_iter().next().expect("a tray item");
        let menu = |args: &[&str]| {
            let mut a = vec!["call", "--dest", &dest, "--object-path", "/MenuBar", "--method"];
            a.extend_from_slice(args);
            self.gdbus(&a)
        };
        let layout = menu(&["com.canonical.dbusmenu.GetLayout", "0", "10", "@as []"]).expect("the tray menu");
        // … <(3, {'label': <'Stop'>, …}, [])> …: the id comes before the label.
        let at = layout
            .find(&format!("'label': <'{label}'>"))
            .unwrap_or_else(|| panic!("no {label} in {layout}"));
        let id = layout[..at]
            .rsplit("<(")
            .next()
            .and_then(|r| r.split(',').next())
            .unwrap()
            .trim()
            .to_string();
        let clicked = menu(&["com.canonical.dbusmenu.Event", &id, "clicked", "<0>", "0"]);
        assert!(clicked.is_some(), "menu item {label} ({id}) clicked");
    }
}

/// `pixelpass --gui` on `display`, sharing the test pattern on loopback.
struct Window {
    proc: Proc,
    id: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    _config: TempDir,
}

impl Window {
    /// Opens the window with `config_toml` as its config.toml.
    fn open(x: &Xvfb, bus: &str, config_toml: &str) -> Window {
        let config = TempDir::new("gui-window");
        std::fs::create_dir_all(config.path().join("pixelpass")).unwrap();
        std::fs::write(config.path().join("pixelpass/config.toml"), config_toml).unwrap();
        let mut proc = Proc::spawn(
            "pixelpass --gui",
            Command::new(BIN)
                .args([
                    "--gui",
                    "--source",
                    "test",
                    "--no-audio",
                    "--relay",
                    "disabled",
                    "--bind",
                    "127.0.0.1:0",
                ])
                .env("DISPLAY", &x.display)
                .env("WAYLAND_DISPLAY", "")
                .env("LIBGL_ALWAYS_SOFTWARE", "1")
                .env("XDG_CONFIG_HOME", config.path())
                .env("DBUS_SESSION_BUS_ADDRESS", bus)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let stdout = collect(proc.child.as_mut().unwrap().stdout.take().unwrap());
        let stderr = collect(proc.child.as_mut().unwrap().stderr.take().unwrap());
        let id = x.window_id("pixelpass").expect("the window maps");
        Window {
            proc,
            id,
            stdout,
            stderr,
            _config: config,
        }
    }

    /// Enter on the window: Start hosting has the focus. Returns the ticket it prints.
    fn host(&mut self, x: &Xvfb) -> String {
        let xdo = |args: &[&str]| {
            let ok = Command::new("xdotool").args(args).env("DISPLAY", &x.display).status();
            ok.is_ok_and(|s| s.success())
        };
        // Until the window is mapped it cannot take the focus: try again until it does.
        let ticket = wait_for(Duration::from_secs(30), || {
            if !xdo(&["windowfocus", "--sync", &self.id]) {
                return false;
            }
            assert!(xdo(&["key", "Return"]), "xdotool key Return");
            wait_text(&self.stdout, "pp1", Duration::from_secs(3)).is_some()
        });
        assert!(ticket, "Enter starts hosting and the ticket comes");
        let out = self.stdout.lock().unwrap().clone();
        out.lines().find(|l| l.starts_with("pp1")).unwrap().trim().to_string()
    }
}

/// The window's pixels (8-bit gray), through ffmpeg's X11 grabber.
fn screenshot(x: &Xvfb, id: &str, png: Option<&std::path::Path>) -> Vec<u8> {
    let info = Command::new("xwininfo")
        .args(["-id", id])
        .env("DISPLAY", &x.display)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    let field = |k: &str| -> u32 {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {info}"))
    };
    let (left, top, w, h) = (
        field("Absolute upper-left X:"),
        field("Absolute upper-left Y:"),
        field("Width:"),
        field("Height:"),
    );
    let grab = |out: &[&str]| {
        Command::new("ffmpeg")
            .args([
                "-loglevel",
                "error",
                "-f",
                "x11grab",
                "-video_size",
                &format!("{w}x{h}"),
            ])
            .args(["-i", &format!("{}+{left},{top}", x.display), "-frames:v", "1"])
            .args(out)
            .output()
            .unwrap()
    };
    if let Some(p) = png {
        grab(&["-y", p.to_str().unwrap()]);
    }
    grab(&["-f", "rawvideo", "-pix_fmt", "gray", "-"]).stdout
}

#[test]
fn the_window_shows_hosts_on_enter_has_a_tray_and_notifies_a_join() {
    require!(
        "Xvfb",
        "xdotool",
        "xwininfo",
        "ffmpeg",
        "dbus-daemon",
        "dbus-monitor",
        "gdbus"
    );
    require!("status-notifier-watcher", "dunst");
    let x = Xvfb::start(800, 800);
    let desktop = Desktop::start(&x.display);
    let mut window = Window::open(&x, &desktop.bus, "");

    let mut pixels = Vec::new();
    let painted = wait_for(Duration::from_secs(20), || {
        pixels = screenshot(&x, &window.id, None);
        let mut seen = [false; 256];
        pixels.iter().for_each(|p| seen[*p as usize] = true);
        seen.iter().filter(|s| **s).count() > 8
    });
    assert!(painted, "the window is drawn (not blank): {} pixels", pixels.len());

    let ticket = window.host(&x);
    let titles = |d: &Desktop| d.tray_titles().join(" | ");
    assert!(
        wait_for(Duration::from_secs(10), || titles(&desktop)
            .contains("pixelpass: hosting, 0 viewers")),
        "the tray item registers and says it hosts: {}",
        titles(&desktop)
    );

    let mut viewer = Proc::spawn(
        "pixelpass view",
        Command::new(BIN)
            .args([
                "view",
                &ticket,
                "--player",
                "none",
                "--relay",
                "disabled",
                "--bind",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let calls = wait_text(&desktop.notify_calls, "Viewer joined", Duration::from_secs(30));
    assert!(calls.is_some(), "a join is a desktop notification");
    assert!(
        wait_for(Duration::from_secs(10), || titles(&desktop)
            .contains("hosting, 1 viewer")),
        "the tray counts the viewer: {}",
        titles(&desktop)
    );
    // The README's screenshot, when asked for (PIXELPASS_GUI_SCREENSHOT=path.png).
    if let Ok(p) = std::env::var("PIXELPASS_GUI_SCREENSHOT") {
        std::thread::sleep(Duration::from_millis(500));
        screenshot(&x, &window.id, Some(std::path::Path::new(&p)));
    }
    viewer.signal(libc::SIGTERM);
    assert!(viewer.wait_timeout(Duration::from_secs(10)).is_ok());
    assert!(
        wait_text(&desktop.notify_calls, "Viewer left", Duration::from_secs(15)).is_some(),
        "a leave is a desktop notification"
    );
    assert!(window.proc.alive(), "the window is still up");
}

#[test]
fn without_tray_or_notifications_the_window_warns_and_its_sigkill_ends_the_host() {
    require!("Xvfb", "xdotool", "xwininfo", "dbus-daemon");
    let x = Xvfb::start(800, 800);
    // A bus of its own without a tray or notifications (D-Bus may start dunst, but without a
    // display it dies): the window must cope.
    let mut daemon = Proc::spawn(
        "dbus-daemon",
        Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let out = collect(daemon.child.as_mut().unwrap().stdout.take().unwrap());
    let bus = wait_text(&out, "\n", Duration::from_secs(10))
        .unwrap()
        .trim()
        .to_string();
    let mut window = Window::open(&x, &bus, "");
    let ticket = window.host(&x);
    let viewer = Proc::spawn(
        "pixelpass view",
        Command::new(BIN)
            .args([
                "view",
                &ticket,
                "--player",
                "none",
                "--relay",
                "disabled",
                "--bind",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let warned = wait_text(
        &window.stderr,
        "desktop notifications do not show",
        Duration::from_secs(30),
    );
    assert!(warned.is_some(), "no notification daemon: a warning");
    assert!(window.proc.alive(), "…and no crash");
    viewer.signal(libc::SIGTERM);
    let children = descendants(window.proc.pid());
    assert!(!children.is_empty(), "the window runs a host child");
    window.proc.signal(libc::SIGKILL);
    assert!(window.proc.wait_timeout(Duration::from_secs(5)).is_ok());
    let gone = wait_for(Duration::from_secs(10), || children.iter().all(|p| !running(*p)));
    assert!(gone, "no pixelpass child outlives the window: {children:?}");
}

#[test]
fn closed_to_the_tray_the_share_goes_on_and_the_tray_reopens_and_quits() {
    require!("Xvfb", "xdotool", "xwininfo", "dbus-daemon", "dbus-monitor", "gdbus");
    require!("status-notifier-watcher", "dunst");
    let x = Xvfb::start(800, 800);
    let desktop = Desktop::start(&x.display);
    let mut window = Window::open(&x, &desktop.bus, "[gui]\nkeep_in_tray = true\n");
    window.host(&x);
    assert!(
        wait_for(Duration::from_secs(10), || desktop
            .tray_titles()
            .join(" ")
            .contains("hosting")),
        "the tray is up"
    );
    let children = descendants(window.proc.pid());
    assert!(!children.is_empty(), "a host child");

    let ok = Command::new("xdotool")
        .args(["key", "ctrl+w"])
        .env("DISPLAY", &x.display)
        .status();
    assert!(ok.is_ok_and(|s| s.success()));
    let closed = wait_for(Duration::from_secs(10), || {
        !Command::new("xwininfo")
            .args(["-id", &window.id])
            .env("DISPLAY", &x.display)
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(closed, "Ctrl+W drops the window");
    assert!(window.proc.alive(), "the process stays in the tray");
    assert!(children.iter().all(|p| running(*p)), "the share goes on");

    desktop.click_menu("Show window");
    assert!(x.window_id("pixelpass").is_some(), "Show window opens it again");
    desktop.click_menu("Quit");
    assert_eq!(
        window.proc.wait_timeout(Duration::from_secs(10)),
        Ok(Some(0)),
        "Quit ends it"
    );
    let gone = wait_for(Duration::from_secs(10), || children.iter().all(|p| !running(*p)));
    assert!(gone, "and its share");
}
