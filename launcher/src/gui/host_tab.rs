//! The Host tab: what to share, sound, quality, viewer cap and options, then Start hosting; while
//! hosting the ticket (Copy, QR code), the state, the viewers with Kick, New ticket and Stop.
//! The choices become `pixelpass host` arguments through the menu's own functions.

use std::time::{Duration, Instant};

use super::app::GuiApp;
use super::session::{Phase, viewers};
use super::theme::Role;
use crate::cli::Quality;
use crate::config::Config;
use crate::menu::answers::{self, HostAnswers, ShareWhat, Sound};
use crate::quality::Overrides;

/// What to share, as the window offers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Screen,
    Window,
    Monitor(String),
    /// The test pattern and tone (`--source test`).
    Test,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoundKind {
    System,
    Only,
    Except,
    None,
}

/// The host form's choices.
pub struct HostForm {
    pub what: What,
    monitors: Vec<String>,
    x11: bool,
    pub sound: SoundKind,
    pub app: String,
    /// The apps playing sound, once asked (or why not).
    apps: Option<Result<Vec<String>, String>>,
    pub quality: Quality,
    pub max_viewers: u32,
    pub software: bool,
    pub relay: String,
    copied_at: Option<Instant>,
    /// Start hosting has the keyboard focus at first: Enter shares, as in the menu.
    focus_start: bool,
    error: Option<String>,
}

impl HostForm {
    pub fn new(config: &Config, typed: &[String]) -> HostForm {
        let env = |k: &str| std::env::var(k).ok();
        let x11 = crate::capture::detect(None, &env) == Some(crate::capture::Backend::X11);
        let quality = config
            .gui
            .quality
            .as_deref()
            .and_then(|q| <Quality as clap::ValueEnum>::from_str(q, true).ok())
            .unwrap_or(Quality::Auto);
        let test = typed.windows(2).any(|w| w[0] == "--source" && w[1] == "test")
            || typed.iter().any(|a| a == "--source=test");
        HostForm {
            what: if test { What::Test } else { What::Screen },
            monitors: if x11 {
                crate::menu::monitors().into_iter().map(|(n, _)| n).collect()
            } else {
                Vec::new()
            },
            x11,
            sound: SoundKind::System,
            app: String::new(),
            apps: None,
            quality,
            max_viewers: config.gui.max_viewers.unwrap_or_else(|| config.default_max_viewers()),
            software: config.gui.software_encoder,
            relay: String::new(),
            copied_at: None,
            focus_start: true,
            error: None,
        }
    }

    /// The `pixelpass host` arguments (after `host`) for these choices, after the typed ones.
    pub fn args(&self, typed: &[String]) -> Vec<String> {
        // The form says what to share: a typed --source gives way to it.
        let mut typed = without_source(typed);
        typed.extend(["--max-viewers".into(), self.max_viewers.to_string()]);
        if self.software {
            typed.push("--no-hwencode".into());
        }
        if !self.relay.trim().is_empty() {
            typed.extend(["--relay".into(), self.relay.trim().into()]);
        }
        let what = match &self.what {
            What::Screen => ShareWhat::Screen,
            What::Window => ShareWhat::Window,
            What::Monitor(m) => ShareWhat::Monitor(m.clone()),
            What::Test => {
                typed.extend(["--source".into(), "test".into()]);
                ShareWhat::Screen
            }
        };
        let app = self.app.trim().to_string();
        let sound = match self.sound {
            SoundKind::System => Sound::System,
            SoundKind::Only => Sound::Only(app),
            SoundKind::Except => Sound::Except(app),
            SoundKind::None => Sound::None,
        };
        let a = HostAnswers {
            what: Some(what),
            sound: Some(sound),
            quality: Some(self.quality),
        };
        let mut argv = answers::host_argv(&typed, &a);
        argv.remove(0); // "pixelpass"
        argv.extend(["--events", "json", "--control", "stdin"].map(String::from));
        argv
    }

    /// What is wrong with the choices, if anything (Start hosting waits for a fix).
    fn problem(&self) -> Option<String> {
        if matches!(self.sound, SoundKind::Only | SoundKind::Except) && self.app.trim().is_empty() {
            return Some("name the app (or pick one that is playing)".into());
        }
        let relay = self.relay.trim();
        if !relay.is_empty()
            && let Err(e) = relay.parse::<gstiroh::net::Relay>()
        {
            return Some(format!("relay: {e}"));
        }
        None
    }
}

/// `typed` without `--source X` / `--source=X`.
fn without_source(typed: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = typed.iter();
    while let Some(a) = it.next() {
        if a == "--source" {
            it.next();
        } else if !a.starts_with("--source=") {
            out.push(a.clone());
        }
    }
    out
}

/// The tab.
pub fn show(app: &mut GuiApp, ui: &mut egui::Ui) {
    let phase = super::lock(&app.shared.host).phase.clone();
    match phase {
        Phase::Ended { reason, failed } => {
            if reason != super::session::NOT_STARTED {
                let role = if failed { Role::Error } else { Role::WeakText };
                super::app::state_line(ui, app.look.color(role), &format!("Stopped: {reason}"));
                ui.separator();
            }
            form(app, ui);
        }
        _ => hosting(app, ui),
    }
}

fn form(app: &mut GuiApp, ui: &mut egui::Ui) {
    what(&mut app.host, ui);
    sound(&mut app.host, ui);
    quality(app, ui);
    let f = &mut app.host;
    ui.horizontal(|ui| {
        let l = ui.label("Max viewers");
        ui.add(egui::DragValue::new(&mut f.max_viewers).range(1..=1000))
            .labelled_by(l.id);
    });
    ui.checkbox(&mut f.software, "Software encoder (x264) even if a hardware one works");
    ui.horizontal(|ui| {
        let l = ui.label("Relay");
        ui.add(egui::TextEdit::singleline(&mut f.relay).hint_text("default (n0's public relays)"))
            .labelled_by(l.id);
    });
    ui.add_space(8.0);
    let problem = app.host.problem();
    if let Some(p) = &problem {
        ui.colored_label(app.look.color(Role::Warning), p);
    }
    let start = ui.add_enabled(problem.is_none(), egui::Button::new("Start hosting"));
    if std::mem::take(&mut app.host.focus_start) {
        start.request_focus();
    }
    if start.clicked() {
        start_hosting(app);
    }
    if let Some(e) = &app.host.error {
        ui.colored_label(app.look.color(Role::Error), e);
    }
}

fn start_hosting(app: &mut GuiApp) {
    let args = app.host.args(&app.shared.launch.host_args);
    app.host.error = app.shared.start_host(args).err().map(|e| format!("{e:#}"));
    app.config.gui.quality = Some(answers::value_name(app.host.quality));
    app.config.gui.max_viewers = Some(app.host.max_viewers);
    app.config.gui.software_encoder = app.host.software;
    app.save_config();
}

fn what(f: &mut HostForm, ui: &mut egui::Ui) {
    let window = if f.x11 {
        "One window (click it)"
    } else {
        "One window (pick it in the desktop's dialog)"
    };
    let label = |w: &What| match w {
        What::Screen => "The whole screen".to_string(),
        What::Window => window.to_string(),
        What::Monitor(m) => format!("One monitor: {m}"),
        What::Test => "A test pattern (share nothing real)".to_string(),
    };
    let mut options = vec![What::Screen, What::Window];
    options.extend(f.monitors.iter().cloned().map(What::Monitor));
    options.push(What::Test);
    egui::ComboBox::from_label("What to share")
        .selected_text(label(&f.what))
        .show_ui(ui, |ui| {
            for o in options {
                let text = label(&o);
                ui.selectable_value(&mut f.what, o, text);
            }
        });
}

fn sound(f: &mut HostForm, ui: &mut egui::Ui) {
    let label = |k: SoundKind| match k {
        SoundKind::System => "System sound: everything you hear",
        SoundKind::Only => "Only one app's sound",
        SoundKind::Except => "Everything except one app",
        SoundKind::None => "No sound",
    };
    egui::ComboBox::from_label("Sound")
        .selected_text(label(f.sound))
        .show_ui(ui, |ui| {
            for k in [SoundKind::System, SoundKind::Only, SoundKind::Except, SoundKind::None] {
                ui.selectable_value(&mut f.sound, k, label(k));
            }
        });
    if !matches!(f.sound, SoundKind::Only | SoundKind::Except) {
        return;
    }
    ui.horizontal(|ui| {
        let l = ui.label("App");
        ui.add(egui::TextEdit::singleline(&mut f.app).hint_text("name or binary, e.g. firefox"))
            .labelled_by(l.id);
        if ui.button("What is playing?").clicked() {
            f.apps = Some(
                crate::audio::apps::playing()
                    .map(|a| a.iter().map(|a| a.label().to_string()).collect())
                    .map_err(|e| format!("cannot list the apps playing sound: {e:#}")),
            );
        }
    });
    match &f.apps {
        Some(Ok(apps)) if apps.is_empty() => {
            ui.label("No app is playing sound now: start it, then ask again.");
        }
        Some(Ok(apps)) => {
            ui.horizontal_wrapped(|ui| {
                for a in apps {
                    if ui.selectable_label(f.app == *a, a).clicked() {
                        f.app.clone_from(a);
                    }
                }
            });
        }
        Some(Err(e)) => {
            ui.label(e);
        }
        None => {}
    }
}

fn quality(app: &mut GuiApp, ui: &mut egui::Ui) {
    let choices = answers::quality_choices(&app.config, Some(app.host.max_viewers), Overrides::default());
    let current = choices
        .iter()
        .find(|(q, _)| *q == app.host.quality)
        .map(|(_, l)| l.clone())
        .unwrap_or_default();
    egui::ComboBox::from_label("Quality")
        .selected_text(current)
        .width(360.0)
        .show_ui(ui, |ui| {
            for (q, l) in choices {
                ui.selectable_value(&mut app.host.quality, q, l);
            }
        });
}

fn hosting(app: &mut GuiApp, ui: &mut egui::Ui) {
    let h = super::lock(&app.shared.host).clone();
    let role = match (&h.phase, h.viewers.is_empty()) {
        (Phase::Running, true) => Role::Waiting,
        (Phase::Running, false) => Role::Streaming,
        _ => Role::WeakText,
    };
    super::app::state_line(ui, app.look.color(role), &h.state_line());
    if let Some(c) = &h.capture {
        ui.label(format!("Capturing {c} · {:.1} Mbit/s", h.bitrate_kbps / 1000.0));
    }
    if let Some(ticket) = &h.ticket {
        ticket_box(app, ui, ticket);
    }
    ui.add_space(8.0);
    viewer_list(app, ui, &h.viewers);
    ui.add_space(8.0);
    // Fixed ids: lines above come and go ("✔ Copied", the capture), a click must still land.
    fixed(ui, "host-actions", |ui| host_actions(app, ui, &h.phase));
    for w in &h.warnings {
        ui.colored_label(app.look.color(Role::Warning), format!("⚠ {w}"));
    }
}

/// `add` with ids of its own: widgets' ids otherwise count the widgets before them, and lines
/// above come and go ("✔ Copied", the capture) between a click and the frame that takes it.
fn fixed<R>(ui: &mut egui::Ui, id: impl std::hash::Hash + std::fmt::Debug, add: impl FnOnce(&mut egui::Ui) -> R) -> R {
    ui.scope_builder(egui::UiBuilder::new().scope_id(egui::Id::unique(id)), add)
        .inner
}

fn host_actions(app: &mut GuiApp, ui: &mut egui::Ui, phase: &Phase) {
    ui.horizontal(|ui| {
        let running = *phase == Phase::Running;
        if ui
            .add_enabled(running, egui::Button::new("New ticket"))
            .on_hover_text("The old ticket stops working; everyone watching is disconnected")
            .clicked()
        {
            app.shared.host_command(serde_json::json!({"cmd": "revoke"}));
        }
        if ui
            .add_enabled(*phase != Phase::Stopping, egui::Button::new("Stop"))
            .clicked()
        {
            app.shared.stop_host();
        }
    });
}

fn ticket_box(app: &mut GuiApp, ui: &mut egui::Ui, ticket: &str) {
    ui.add_space(6.0);
    ui.label("Share code: send it to your viewers");
    egui::Frame::new()
        .fill(app.look.color(Role::InputBg))
        .inner_margin(6.0)
        .show(ui, |ui| {
            ui.add(egui::Label::new(egui::RichText::new(ticket).monospace()).wrap());
        });
    fixed(ui, "ticket-copy", |ui| {
        ui.horizontal(|ui| {
            if ui.button("Copy").clicked() {
                ui.ctx().copy_text(ticket.to_string());
                app.host.copied_at = Some(Instant::now());
            }
            if app.host.copied_at.is_some_and(|t| t.elapsed() < Duration::from_secs(3)) {
                ui.colored_label(app.look.color(Role::Success), "✔ Copied");
            }
        })
    });
    qr_code(ui, ticket);
}

/// The ticket's QR code, black on white whatever the theme (scanners want that).
fn qr_code(ui: &mut egui::Ui, ticket: &str) {
    let Ok((w, dark)) = crate::qr::modules(ticket) else {
        ui.label("(the ticket does not fit in a QR code)");
        return;
    };
    let quiet = crate::qr::QUIET;
    let size = w + 2 * quiet;
    let module = 3.0_f32;
    let side = size as f32 * module;
    let (rect, response) = ui.allocate_exact_size(egui::vec2(side, side), egui::Sense::hover());
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, "QR code of the ticket"));
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 0.0, egui::Color32::WHITE);
    for (i, _) in dark.iter().enumerate().filter(|(_, d)| **d) {
        let (x, y) = ((i % w + quiet) as f32, (i / w + quiet) as f32);
        let min = rect.min + egui::vec2(x * module, y * module);
        painter.rect_filled(
            egui::Rect::from_min_size(min, egui::vec2(module, module)),
            0.0,
            egui::Color32::BLACK,
        );
    }
}

fn viewer_list(app: &mut GuiApp, ui: &mut egui::Ui, list: &[super::session::ViewerRow]) {
    ui.label(egui::RichText::new(format!("Viewers ({})", viewers(list.len()))).strong());
    if list.is_empty() {
        ui.label("Nobody is watching yet.");
        return;
    }
    egui::Grid::new("viewers").striped(true).num_columns(7).show(ui, |ui| {
        for head in ["Name", "Path", "Rendition", "RTT", "Bitrate", "Lag"] {
            ui.strong(head);
        }
        ui.label("");
        ui.end_row();
        for v in list {
            ui.label(&v.name);
            ui.label(&v.path);
            ui.label(if v.rendition.is_empty() { "—" } else { &v.rendition });
            match v.figures {
                Some((rtt, kbps, lag)) => {
                    ui.label(if rtt < 0.0 {
                        "—".into()
                    } else {
                        format!("{rtt:.0} ms")
                    });
                    ui.label(format!("{:.1} Mbit/s", kbps / 1000.0));
                    ui.label(format!("{lag} ms"));
                }
                None => {
                    for _ in 0..3 {
                        ui.label("—");
                    }
                }
            }
            let kick = fixed(ui, ("kick", &v.id), |ui| ui.button("Kick"));
            if kick.on_hover_text(format!("Disconnect {}", v.name)).clicked() {
                app.shared.host_command(serde_json::json!({"cmd": "kick", "id": v.id}));
            }
            ui.end_row();
        }
    });
}
