//! Settings: Appearance (pick a theme, remembered; Edit / create a theme with a colour picker
//! per field and a live preview; Save writes the TOML) and "keep running in the tray".

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::app::GuiApp;
use super::theme::{self, FIELDS, Role, Theme};
use super::{TrayStatus, lock};

/// The themes on offer, the one in use, and the editor's draft while it is open.
pub struct Appearance {
    pub themes: Vec<Theme>,
    pub current: usize,
    /// Files skipped, each naming the file and the field.
    pub problems: Vec<String>,
    dir: Option<PathBuf>,
    /// The theme being edited: it is what the window shows (the live preview).
    pub draft: Option<Theme>,
    pub saved: Option<Result<PathBuf, String>>,
}

impl Appearance {
    pub fn load(dir: Option<PathBuf>, picked: Option<&str>) -> Appearance {
        let (themes, problems) = theme::load_all(dir.as_deref());
        let current = picked
            .and_then(|p| themes.iter().position(|t| t.name == p))
            .unwrap_or(0);
        Appearance {
            themes,
            current,
            problems,
            dir,
            draft: None,
            saved: None,
        }
    }

    /// The theme the window shows now.
    pub fn shown(&self) -> &Theme {
        self.draft.as_ref().unwrap_or(&self.themes[self.current])
    }

    pub fn color(&self, role: Role) -> egui::Color32 {
        self.shown().get(role)
    }

    pub fn apply(&self, ctx: &egui::Context) {
        self.shown().apply(ctx);
    }

    /// Saves the draft and picks it; the draft stays open on failure.
    fn save_draft(&mut self) -> Option<String> {
        let draft = self.draft.as_ref()?;
        let Some(dir) = &self.dir else {
            self.saved = Some(Err("no config folder (HOME is not set)".into()));
            return None;
        };
        match theme::save(draft, dir) {
            Ok(p) => {
                let name = draft.name.clone();
                self.saved = Some(Ok(p));
                self.draft = None;
                *self = Appearance {
                    saved: self.saved.take(),
                    ..Appearance::load(self.dir.clone(), Some(&name))
                };
                Some(name)
            }
            Err(e) => {
                self.saved = Some(Err(format!("{e:#}")));
                None
            }
        }
    }
}

pub fn show(app: &mut GuiApp, ui: &mut egui::Ui) {
    ui.heading("Appearance");
    appearance(app, ui);
    ui.add_space(12.0);
    ui.heading("Window");
    tray_setting(app, ui);
}

fn appearance(app: &mut GuiApp, ui: &mut egui::Ui) {
    let look = &mut app.look;
    let before = look.current;
    let names: Vec<String> = look.themes.iter().map(|t| t.name.clone()).collect();
    ui.add_enabled_ui(look.draft.is_none(), |ui| {
        egui::ComboBox::from_label("Theme")
            .selected_text(names[look.current].clone())
            .show_ui(ui, |ui| {
                for (i, n) in names.iter().enumerate() {
                    ui.selectable_value(&mut look.current, i, n);
                }
            });
    });
    if look.current != before {
        app.config.gui.theme = Some(names[app.look.current].clone());
        app.save_config();
    }
    let look = &mut app.look;
    if look.draft.is_none() {
        if ui.button("Edit / create a theme").clicked() {
            let mut draft = look.themes[look.current].clone();
            draft.name = format!("{} (mine)", draft.name);
            look.draft = Some(draft);
            look.saved = None;
        }
    } else {
        editor(app, ui);
    }
    match &app.look.saved {
        Some(Ok(p)) => {
            ui.colored_label(app.look.color(Role::Success), format!("✔ Saved {}", p.display()));
        }
        Some(Err(e)) => {
            ui.colored_label(app.look.color(Role::Error), e);
        }
        None => {}
    }
}

fn editor(app: &mut GuiApp, ui: &mut egui::Ui) {
    let Some(draft) = app.look.draft.as_mut() else { return };
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.horizontal(|ui| {
            let l = ui.label("Name");
            ui.text_edit_singleline(&mut draft.name).labelled_by(l.id);
        });
        ui.checkbox(&mut draft.dark, "Dark (start from egui's dark defaults)");
        egui::Grid::new("theme-fields").num_columns(2).show(ui, |ui| {
            for (i, (key, what)) in FIELDS.iter().enumerate() {
                ui.color_edit_button_srgba(&mut draft.colors[i]);
                ui.label(format!("{key}: {what}"));
                ui.end_row();
            }
        });
    });
    let mut picked = None;
    ui.horizontal(|ui| {
        if ui.button("Save").clicked() {
            picked = app.look.save_draft();
        }
        if ui.button("Cancel").clicked() {
            app.look.draft = None;
        }
    });
    if let Some(name) = picked {
        app.config.gui.theme = Some(name);
        app.save_config();
    }
}

fn tray_setting(app: &mut GuiApp, ui: &mut egui::Ui) {
    let status = lock(&app.shared.tray).clone();
    let mut keep = app.config.gui.keep_in_tray;
    let available = status == TrayStatus::Shown;
    let changed = ui
        .add_enabled(
            available,
            egui::Checkbox::new(&mut keep, "Keep running in the tray when I close the window"),
        )
        .changed();
    match status {
        TrayStatus::Shown => {}
        TrayStatus::Starting => {
            ui.label("Looking for a system tray…");
        }
        TrayStatus::Unavailable(why) => {
            ui.colored_label(
                app.look.color(Role::WeakText),
                format!("Not available: {why}. Closing the window quits (and stops any share)."),
            );
        }
    }
    if changed {
        app.config.gui.keep_in_tray = keep;
        app.shared.keep_in_tray.store(keep, Ordering::Relaxed);
        app.save_config();
    }
}
