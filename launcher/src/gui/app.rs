//! The window: tabs Host, View and Settings over the [`Shared`] children; the theme applied
//! every frame (the editor previews live); a close that leaves the share in the tray when
//! that is set and a tray shows.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::host_tab::HostForm;
use super::settings::Appearance;
use super::view_tab::ViewForm;
use super::{Request, Shared};
use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Host,
    View,
    Settings,
}

/// The window's state; what outlives it is in [`Shared`].
pub struct GuiApp {
    pub shared: Arc<Shared>,
    pub tab: Tab,
    pub config: Config,
    config_path: Option<PathBuf>,
    pub host: HostForm,
    pub view: ViewForm,
    pub look: Appearance,
    /// Messages for people that do not belong to one tab (config and theme problems).
    pub messages: Vec<String>,
}

/// The window's size and title.
pub fn native_options() -> eframe::NativeOptions {
    eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("pixelpass")
            .with_app_id("pixelpass")
            .with_inner_size([600.0, 700.0])
            .with_min_inner_size([420.0, 360.0]),
        ..Default::default()
    }
}

impl GuiApp {
    pub fn new(cc: &eframe::CreationContext<'_>, shared: Arc<Shared>) -> GuiApp {
        shared.set_window(Some(cc.egui_ctx.clone()));
        let config_path = match &shared.launch.config_home {
            Some(home) => Some(home.join("pixelpass").join("config.toml")),
            None => crate::config::path(),
        };
        let mut messages = Vec::new();
        let config = match config_path.as_deref().map(Config::load_from) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                messages.push(format!("{e:#} (settings are not remembered)"));
                Config::default()
            }
            None => Config::default(),
        };
        shared.keep_in_tray.store(config.gui.keep_in_tray, Ordering::Relaxed);
        let themes_dir = config_path
            .as_deref()
            .and_then(|p| p.parent())
            .map(|d| d.join("themes"));
        let look = Appearance::load(themes_dir, config.gui.theme.as_deref());
        messages.extend(look.problems.iter().cloned());
        GuiApp {
            host: HostForm::new(&config, &shared.launch.host_args),
            view: ViewForm::new(&config),
            shared,
            tab: Tab::Host,
            config,
            config_path,
            look,
            messages,
        }
    }

    /// Writes the config; a failure is a message in the window.
    pub fn save_config(&mut self) {
        let Some(p) = &self.config_path else { return };
        if let Err(e) = self.config.save_to(p) {
            let m = format!("settings are not remembered: {e:#}");
            if !self.messages.contains(&m) {
                self.messages.push(m);
            }
        }
    }

    /// Tray requests while the window is open.
    fn handle_requests(&mut self, ctx: &egui::Context) {
        while let Some(r) = self.shared.next_request(false) {
            match r {
                Request::Show => ctx.send_viewport_cmd(egui::ViewportCommand::Focus),
                Request::Quit => {
                    self.shared.quitting.store(true, Ordering::Relaxed);
                    ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                }
            }
        }
    }

    /// Ctrl+W closes the window (to the tray when that is set), Ctrl+Q quits.
    fn keys(&mut self, ctx: &egui::Context) {
        use egui::{Key, Modifiers};
        if ctx.input_mut(|i| i.consume_key(Modifiers::COMMAND, Key::Q)) {
            self.shared.quitting.store(true, Ordering::Relaxed);
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        if ctx.input_mut(|i| i.consume_key(Modifiers::COMMAND, Key::W)) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }

    fn tabs(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            for (tab, name) in [(Tab::Host, "Host"), (Tab::View, "View"), (Tab::Settings, "Settings")] {
                ui.selectable_value(&mut self.tab, tab, egui::RichText::new(name).heading());
            }
        });
    }

    fn footer(&mut self, ui: &mut egui::Ui) {
        let warn = self.look.color(super::theme::Role::Warning);
        let notify = self.shared.notifier.problem();
        for m in self.messages.iter().chain(notify.iter()) {
            ui.colored_label(warn, format!("⚠ {m}"));
        }
    }
}

impl eframe::App for GuiApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.handle_requests(&ctx);
        self.keys(&ctx);
        self.look.apply(&ctx);
        egui::Frame::central_panel(ui.style()).show(ui, |ui| {
            self.tabs(ui);
            ui.separator();
            egui::ScrollArea::vertical().auto_shrink([false, false]).show(ui, |ui| {
                match self.tab {
                    Tab::Host => super::host_tab::show(self, ui),
                    Tab::View => super::view_tab::show(self, ui),
                    Tab::Settings => super::settings::show(self, ui),
                }
                ui.add_space(8.0);
                self.footer(ui);
            });
        });
        // Time-based text ("✔ Copied") and the children's stats need a frame now and then
        // even without input; events repaint at once.
        ctx.request_repaint_after(std::time::Duration::from_millis(500));
    }
}

/// A state line: a dot in the state's colour, then the words ("Waiting for viewers…"). The
/// dot is drawn: egui's fonts have no "●".
pub fn state_line(ui: &mut egui::Ui, color: egui::Color32, text: &str) {
    ui.horizontal(|ui| {
        let size = ui.text_style_height(&egui::TextStyle::Body);
        let (rect, _) = ui.allocate_exact_size(egui::vec2(size, size), egui::Sense::hover());
        ui.painter().circle_filled(rect.center(), size * 0.3, color);
        ui.colored_label(color, text);
    });
}
