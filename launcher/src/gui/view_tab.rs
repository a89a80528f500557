//! The View tab: paste a code (checked as you type), pick a player and the most quality to
//! receive, Connect / Disconnect, the connection's state. Disconnect ends the viewer child at
//! once (SIGTERM, its stdin closed).

use super::app::GuiApp;
use super::session::Phase;
use super::theme::Role;
use crate::cli::{Player, Quality};
use crate::config::Config;
use crate::menu::answers;

pub struct ViewForm {
    pub code: String,
    pub player: Player,
    players: Vec<Player>,
    /// The viewer's ceiling (`pixelpass view --quality`): auto, or at most a preset's bitrate.
    pub quality: Quality,
}

/// The ceilings offered.
const QUALITIES: [Quality; 4] = [Quality::Auto, Quality::High, Quality::Medium, Quality::Low];

/// What a ceiling means, with the preset's bitrate.
fn quality_label(q: Quality) -> String {
    match crate::quality::viewer_ceiling_kbps(q) {
        0 => "Auto: whatever the connection carries".into(),
        kbps => format!(
            "At most {} ({} Mbit/s){}",
            answers::value_name(q),
            f64::from(kbps) / 1000.0,
            if q == Quality::Low {
                ": a metered connection"
            } else {
                ""
            }
        ),
    }
}

impl ViewForm {
    pub fn new(config: &Config) -> ViewForm {
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let mut players = answers::player_choices(
            &|p| crate::player::installed(p),
            config.viewer.player.as_deref(),
            as_root,
        );
        // No player: the local URL only, for a player of one's own.
        players.push(Player::None);
        let quality = config
            .viewer
            .quality
            .as_deref()
            .and_then(|q| <Quality as clap::ValueEnum>::from_str(q, true).ok())
            .filter(|q| QUALITIES.contains(q))
            .unwrap_or(Quality::Auto);
        ViewForm {
            code: String::new(),
            player: players[0],
            players,
            quality,
        }
    }

    /// The pasted code checked: Ok, or the reason it is not a ticket.
    pub fn check(&self) -> Option<Result<(), String>> {
        let code = self.code.trim();
        if code.is_empty() {
            return None;
        }
        Some(
            code.parse::<gstiroh::ticket::Ticket>()
                .map(|_| ())
                .map_err(|e| format!("✖ not a valid code: {e}")),
        )
    }
}

pub fn show(app: &mut GuiApp, ui: &mut egui::Ui) {
    let v = super::lock(&app.shared.view).clone();
    let active = !matches!(v.phase, Phase::Ended { .. });
    ui.label("Paste the code the host sent you:");
    let code = ui.add_enabled(
        !active,
        egui::TextEdit::multiline(&mut app.view.code)
            .hint_text("pp1…")
            .desired_rows(3)
            .desired_width(f32::INFINITY)
            .font(egui::TextStyle::Monospace),
    );
    code.widget_info(|| egui::WidgetInfo::labeled(egui::Role::TextInput, true, "Share code"));
    let check = app.view.check();
    match &check {
        Some(Ok(())) => {
            ui.colored_label(app.look.color(Role::Success), "✔ valid code");
        }
        Some(Err(why)) => {
            ui.colored_label(app.look.color(Role::Error), why);
        }
        None => {}
    }
    let form = &mut app.view;
    ui.add_enabled_ui(!active, |ui| {
        egui::ComboBox::from_label("Player")
            .selected_text(crate::menu::player_label(form.player))
            .show_ui(ui, |ui| {
                for p in form.players.clone() {
                    ui.selectable_value(&mut form.player, p, crate::menu::player_label(p));
                }
            });
        egui::ComboBox::from_label("Quality")
            .selected_text(quality_label(form.quality))
            .width(300.0)
            .show_ui(ui, |ui| {
                for q in QUALITIES {
                    ui.selectable_value(&mut form.quality, q, quality_label(q));
                }
            });
    });
    ui.add_space(8.0);
    ui.horizontal(|ui| {
        let valid = matches!(check, Some(Ok(())));
        if ui.add_enabled(valid && !active, egui::Button::new("Connect")).clicked() {
            connect(app);
        }
        if ui
            .add_enabled(active && v.phase != Phase::Stopping, egui::Button::new("Disconnect"))
            .clicked()
        {
            app.shared.stop_view();
        }
    });
    status(app, ui, &v);
}

fn connect(app: &mut GuiApp) {
    let mut args = answers::view_argv(&app.view.code, app.view.player);
    args.remove(0); // "pixelpass"
    args.extend(["--quality".into(), answers::value_name(app.view.quality)]);
    args.extend(app.shared.launch.view_args.iter().cloned());
    args.extend(["--events".into(), "json".into()]);
    if let Err(e) = app.shared.start_view(args) {
        app.messages.push(format!("{e:#}"));
    }
    if app.view.player != Player::None {
        app.config.viewer.player = Some(answers::value_name(app.view.player));
    }
    app.config.viewer.quality = Some(answers::value_name(app.view.quality));
    app.save_config();
}

fn status(app: &GuiApp, ui: &mut egui::Ui, v: &super::session::ViewSession) {
    if v.phase
        == (Phase::Ended {
            reason: "not connected".into(),
            failed: false,
        })
    {
        return;
    }
    let role = match &v.phase {
        Phase::Running => Role::Streaming,
        Phase::Ended { failed: true, .. } => Role::Error,
        _ => Role::WeakText,
    };
    super::app::state_line(ui, app.look.color(role), &v.state_line());
    if let Some(url) = &v.url {
        ui.label(format!("Local stream: {url}"));
    }
    if let Some(p) = &v.player {
        ui.label(format!("Playing in {p}"));
    }
    for w in &v.warnings {
        ui.colored_label(app.look.color(Role::Warning), format!("⚠ {w}"));
    }
}
