//! The window driven without a display (egui_kittest, through its accessibility tree), with
//! real children: the built `pixelpass` host and viewer processes on loopback iroh. Run by
//! `cargo test -p pixelpass --features gui`, which builds that binary first (the package's
//! integration tests need it).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use pixelpass_test_support::{Proc, TempDir, collect, event_field, running, wait_text};

use super::app::{GuiApp, Tab};
use super::{Launch, Shared, lock};

/// Options that keep every share on this machine: no relay, loopback only.
const LOCAL: [&str; 4] = ["--relay", "disabled", "--bind", "127.0.0.1:0"];

/// The built binary next to this test's (target/<profile>/pixelpass).
fn pixelpass() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let bin = me.parent().and_then(|d| d.parent()).unwrap().join("pixelpass");
    assert!(
        bin.exists(),
        "{} is not built: run `cargo test -p pixelpass --features gui`",
        bin.display()
    );
    bin
}

fn harness(config: &TempDir) -> Harness<'static, GuiApp> {
    let launch = Launch {
        exe: pixelpass(),
        host_args: ["--source", "test", "--no-audio"]
            .into_iter()
            .chain(LOCAL)
            .map(String::from)
            .collect(),
        view_args: LOCAL.map(String::from).to_vec(),
        config_home: Some(config.path().to_path_buf()),
    };
    let shared = Shared::new(launch).unwrap();
    Harness::builder()
        .with_size([640.0, 1400.0])
        .build_eframe(move |cc| GuiApp::new(cc, shared))
}

/// Steps the window until `cond` holds (events arrive from the children's threads).
fn wait(
    h: &mut Harness<'static, GuiApp>,
    secs: u64,
    what: &str,
    mut cond: impl FnMut(&mut Harness<'static, GuiApp>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        h.step();
        if cond(h) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {secs} s; host: {:?}",
            lock(&h.state().shared.host)
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn shows(h: &Harness<'static, GuiApp>, text: &str) -> bool {
    h.query_by_label_contains(text).is_some()
}

/// A headless viewer of `ticket` with its events collected.
fn viewer(ticket: &str, config: &TempDir) -> (Proc, Arc<std::sync::Mutex<String>>) {
    let mut p = Proc::spawn(
        "pixelpass view",
        Command::new(pixelpass())
            .args(["view", ticket, "--player", "none", "--events", "json"])
            .args(LOCAL)
            .env("XDG_CONFIG_HOME", config.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let out = collect(p.child.as_mut().unwrap().stdout.take().unwrap());
    (p, out)
}

fn ticket_of(h: &Harness<'static, GuiApp>) -> Option<String> {
    lock(&h.state().shared.host).ticket.clone()
}

#[test]
fn host_tab_shares_copies_lists_kicks_and_renews_the_ticket() {
    let config = TempDir::new("gui-host");
    let mut h = harness(&config);
    h.get_by_label("Start hosting").click();
    wait(&mut h, 30, "ticket", |h| ticket_of(h).is_some());
    let ticket = ticket_of(&h).unwrap();
    wait(&mut h, 5, "waiting state", |h| shows(h, "Waiting for viewers…"));
    assert!(shows(&h, &ticket), "the ticket is shown");
    assert!(h.query_by_label("QR code of the ticket").is_some());

    h.get_by_label("Copy").click();
    h.step();
    let copied = h
        .output()
        .platform_output
        .commands
        .iter()
        .any(|c| matches!(c, egui::OutputCommand::CopyText(t) if *t == ticket));
    assert!(copied, "Copy puts the ticket on the clipboard");
    h.step();
    assert!(shows(&h, "✔ Copied"));

    let (mut kicked, out) = viewer(&ticket, &config);
    wait(&mut h, 30, "the viewer in the list", |h| {
        shows(h, "Streaming to 1 viewer")
    });
    h.get_by_label("Kick").click_accesskit();
    h.run_steps(2);
    assert!(
        kicked.wait_timeout(Duration::from_secs(10)).is_ok(),
        "the kicked viewer ends"
    );
    let said = wait_text(&out, "\"error\"", Duration::from_secs(2)).unwrap_or_default();
    let message = event_field(&said, "error", "message").unwrap_or_default();
    assert!(message.contains("the host removed this viewer"), "{said}");
    wait(&mut h, 10, "the list emptied", |h| shows(h, "Waiting for viewers…"));

    h.get_by_label("New ticket").click_accesskit();
    wait(&mut h, 10, "a new ticket", |h| {
        ticket_of(h).is_some_and(|t| t != ticket)
    });
    let (mut refused, _) = viewer(&ticket, &config);
    assert_eq!(
        refused.wait_timeout(Duration::from_secs(20)),
        Ok(Some(2)),
        "the old ticket is refused"
    );

    let (pid, _) = h.state().shared.pids();
    h.get_by_label("Stop").click_accesskit();
    wait(&mut h, 5, "the host stopped", |h| shows(h, "Stopped"));
    assert!(!running(pid.unwrap()), "the host process is gone");
    assert!(h.query_by_label("Start hosting").is_some(), "the form is back");
}

#[test]
fn view_tab_checks_the_code_connects_and_disconnects_at_once() {
    let config = TempDir::new("gui-view");
    let mut host = Proc::spawn(
        "pixelpass host",
        Command::new(pixelpass())
            .args(["host", "--source", "test", "--no-audio", "--events", "json"])
            .args(LOCAL)
            .env("XDG_CONFIG_HOME", config.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let host_out = collect(host.child.as_mut().unwrap().stdout.take().unwrap());
    let text = wait_text(&host_out, "\"ticket\"", Duration::from_secs(30)).expect("a ticket");
    let ticket = event_field(&text, "ticket", "ticket").unwrap();

    let mut h = harness(&config);
    h.state_mut().tab = Tab::View;
    h.run_steps(2);
    h.get_by_label("Share code").focus();
    h.get_by_label("Share code").type_text("pp1nonsense");
    h.run_steps(2);
    assert!(shows(&h, "✖ not a valid code"), "a bad code says why");
    h.state_mut().view.code.clear();
    h.run_steps(2);
    h.get_by_label("Share code").focus();
    h.get_by_label("Share code").type_text(&ticket);
    h.run_steps(2);
    assert!(shows(&h, "✔ valid code"));

    h.state_mut().view.player = crate::cli::Player::None;
    // a metered connection: at most low (1 Mbit/s) of the host's 720p 2.5 Mbit/s ladder
    h.get_by_label("Quality").click();
    h.run_steps(2);
    h.get_by_label("At most low (1 Mbit/s): a metered connection").click();
    h.run_steps(2);
    assert_eq!(h.state().view.quality, crate::cli::Quality::Low);
    h.get_by_label("Connect").click();
    wait(&mut h, 30, "connected", |h| shows(h, "Connected"));
    wait_text(&host_out, "viewer-joined", Duration::from_secs(10)).expect("the host sees the viewer");
    wait(&mut h, 15, "on the rendition within the ceiling", |h| {
        shows(h, "· 360p")
    });
    let saved = std::fs::read_to_string(config.path().join("pixelpass/config.toml")).unwrap();
    assert!(saved.contains("quality = \"low\""), "remembered: {saved}");

    let (_, pid) = h.state().shared.pids();
    let pid = pid.expect("a viewer child");
    h.get_by_label("Disconnect").click();
    h.step();
    let t0 = Instant::now();
    while running(pid) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "Disconnect took {took:?}");
    wait_text(&host_out, "viewer-left", Duration::from_secs(10)).expect("the host sees the viewer leave");
    wait(&mut h, 5, "disconnected", |h| shows(h, "Disconnected"));
}

#[test]
fn the_theme_editor_saves_what_it_previews_and_the_choice_is_remembered() {
    let config = TempDir::new("gui-theme");
    let mut h = harness(&config);
    h.state_mut().tab = Tab::Settings;
    h.run_steps(2);
    h.get_by_label("Edit / create a theme").click();
    h.run_steps(2);
    assert!(h.get_all_by_label("Color").count() >= super::theme::FIELDS.len() || shows(&h, "window_bg"));
    let red = egui::Color32::from_rgb(200, 10, 10);
    {
        let draft = h.state_mut().look.draft.as_mut().unwrap();
        draft.name = "Test Theme".into();
        draft.colors[super::theme::Role::WindowBg as usize] = red;
    }
    h.run_steps(2);
    assert_eq!(
        h.ctx.style_of(h.ctx.theme()).visuals.window_fill,
        red,
        "the draft is previewed live"
    );
    h.get_by_label("Save").click();
    h.run_steps(2);
    let file = config.path().join("pixelpass/themes/test-theme.toml");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(text.contains("window_bg = \"#c80a0a\""), "{text}");
    assert_eq!(h.state().look.shown().name, "Test Theme", "the saved theme is picked");
    let saved = std::fs::read_to_string(config.path().join("pixelpass/config.toml")).unwrap();
    assert!(
        saved.contains("[gui]") && saved.contains("theme = \"Test Theme\""),
        "{saved}"
    );

    // A new window starts with it.
    drop(h);
    let h = harness(&config);
    assert_eq!(h.state().look.shown().name, "Test Theme");
}

#[test]
fn keep_in_tray_is_off_with_the_reason_without_a_tray_and_remembered_with_one() {
    use egui_kittest::kittest::NodeT as _;
    const KEEP: &str = "Keep running in the tray when I close the window";
    let config = TempDir::new("gui-tray");
    let mut h = harness(&config);
    *lock(&h.state().shared.tray) = super::TrayStatus::Unavailable("no system tray on this desktop".into());
    h.state_mut().tab = Tab::Settings;
    h.run_steps(2);
    assert!(h.get_by_label(KEEP).accesskit_node().is_disabled());
    assert!(shows(&h, "Not available: no system tray on this desktop"));
    assert!(!h.state().shared.stays_in_tray(), "closing quits");

    *lock(&h.state().shared.tray) = super::TrayStatus::Shown;
    h.run_steps(2);
    h.get_by_label(KEEP).click();
    h.run_steps(2);
    assert!(h.state().shared.stays_in_tray());
    let saved = std::fs::read_to_string(config.path().join("pixelpass/config.toml")).unwrap();
    assert!(saved.contains("keep_in_tray = true"), "{saved}");
}
