//! Colour themes: Default Dark, Catppuccin Mocha and Catppuccin Latte built in, user themes as
//! TOML files in `~/.config/pixelpass/themes/`, all in one schema (README "Themes"). A field a
//! file leaves out falls back to Default Dark; a user theme named like a built-in replaces it.

use std::path::{Path, PathBuf};

use egui::Color32;

/// The built-in themes, in the picker's order, as the same TOML a user would write.
const BUILT_IN: [&str; 3] = [
    include_str!("themes/default-dark.toml"),
    include_str!("themes/catppuccin-mocha.toml"),
    include_str!("themes/catppuccin-latte.toml"),
];

/// The colour fields, in the schema's order: the file's key and what it colours (the
/// editor's labels).
pub const FIELDS: [(&str, &str); 13] = [
    ("window_bg", "window background"),
    ("panel_bg", "panels / frames"),
    ("input_bg", "text fields, the ticket box"),
    ("text", "primary text"),
    ("weak_text", "hints, secondary text"),
    ("accent", "selection, links, the active control"),
    ("button_bg", "buttons at rest"),
    ("button_hovered", "buttons under the pointer"),
    ("streaming", "\"Streaming\" (its dot)"),
    ("waiting", "\"Waiting for viewers…\" (its dot)"),
    ("success", "\"✔ Copied\", a valid code"),
    ("warning", "non-fatal warnings"),
    ("error", "errors"),
];

/// A theme: a name, light or dark base, and one colour per field of [`FIELDS`].
#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    pub name: String,
    pub dark: bool,
    pub colors: [Color32; FIELDS.len()],
}

/// Which colour, by field name.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    WindowBg,
    PanelBg,
    InputBg,
    Text,
    WeakText,
    Accent,
    ButtonBg,
    ButtonHovered,
    Streaming,
    Waiting,
    Success,
    Warning,
    Error,
}

impl Theme {
    pub fn get(&self, role: Role) -> Color32 {
        self.colors[role as usize]
    }

    /// Default Dark: every other theme's fallback.
    pub fn default_dark() -> Theme {
        let base = Theme {
            name: String::new(),
            dark: true,
            colors: [Color32::BLACK; FIELDS.len()],
        };
        parse(BUILT_IN[0], &base).expect("the built-in Default Dark is valid")
    }

    /// The theme as TOML, in the schema's order (what Save writes).
    pub fn to_toml(&self) -> String {
        let mut s = format!("name = {}\ndark = {}\n", toml_string(&self.name), self.dark);
        for ((key, _), c) in FIELDS.iter().zip(self.colors) {
            s += &format!("{key} = \"#{:02x}{:02x}{:02x}\"\n", c.r(), c.g(), c.b());
        }
        s
    }

    /// Sets egui's look from the theme (every frame is cheap: the editor's live preview).
    pub fn apply(&self, ctx: &egui::Context) {
        use Role::*;
        let mut v = if self.dark {
            egui::Visuals::dark()
        } else {
            egui::Visuals::light()
        };
        v.window_fill = self.get(WindowBg);
        v.panel_fill = self.get(WindowBg);
        v.faint_bg_color = self.get(PanelBg);
        v.extreme_bg_color = self.get(InputBg);
        v.text_edit_bg_color = Some(self.get(InputBg));
        v.override_text_color = Some(self.get(Text));
        v.weak_text_color = Some(self.get(WeakText));
        v.hyperlink_color = self.get(Accent);
        v.selection.bg_fill = self.get(Accent).gamma_multiply(0.6);
        v.selection.stroke.color = self.get(Text);
        v.widgets.noninteractive.bg_fill = self.get(PanelBg);
        v.widgets.noninteractive.weak_bg_fill = self.get(PanelBg);
        for w in [&mut v.widgets.inactive, &mut v.widgets.open] {
            w.bg_fill = self.get(ButtonBg);
            w.weak_bg_fill = self.get(ButtonBg);
        }
        v.widgets.hovered.bg_fill = self.get(ButtonHovered);
        v.widgets.hovered.weak_bg_fill = self.get(ButtonHovered);
        v.widgets.active.bg_fill = self.get(Accent);
        v.widgets.active.weak_bg_fill = self.get(Accent);
        v.warn_fg_color = self.get(Warning);
        v.error_fg_color = self.get(Error);
        ctx.set_visuals(v);
    }
}

/// A theme from TOML text; fields it leaves out come from `fallback`. Err names the field.
pub fn parse(text: &str, fallback: &Theme) -> Result<Theme, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
            .unwrap_or(1);
        format!("not TOML at line {line}: {}", e.message())
    })?;
    let mut t = fallback.clone();
    match table.get("name") {
        Some(toml::Value::String(n)) if !n.trim().is_empty() => t.name = n.trim().to_string(),
        Some(_) => return Err("field `name`: not a name (a string like \"My Theme\")".into()),
        None => return Err("field `name` is missing".into()),
    }
    match table.get("dark") {
        Some(toml::Value::Boolean(d)) => t.dark = *d,
        Some(_) => return Err("field `dark`: not true or false".into()),
        None => {}
    }
    for (i, (key, _)) in FIELDS.iter().enumerate() {
        if let Some(v) = table.get(*key) {
            t.colors[i] = v
                .as_str()
                .and_then(hex)
                .ok_or_else(|| format!("field `{key}`: {v} is not a colour like \"#1b1b1f\""))?;
        }
    }
    Ok(t)
}

/// "#rrggbb" as a colour.
fn hex(s: &str) -> Option<Color32> {
    let h = s.strip_prefix('#')?;
    if h.len() != 6 || !h.is_ascii() {
        return None;
    }
    let b = |i: usize| u8::from_str_radix(&h[i..i + 2], 16).ok();
    Some(Color32::from_rgb(b(0)?, b(2)?, b(4)?))
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The themes to offer: the built-ins (each replaced by a user theme of its name), then the
/// user's, by name; and a message per file skipped, naming the file and the field.
pub fn load_all(dir: Option<&Path>) -> (Vec<Theme>, Vec<String>) {
    let dark = Theme::default_dark();
    let mut themes: Vec<Theme> = BUILT_IN
        .iter()
        .map(|t| parse(t, &dark).expect("built-in themes are valid"))
        .collect();
    let mut problems = Vec::new();
    let mut files: Vec<PathBuf> = dir
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut users = Vec::new();
    for f in files {
        let loaded = std::fs::read_to_string(&f)
            .map_err(|e| e.to_string())
            .and_then(|text| parse(&text, &dark));
        match loaded {
            Ok(t) => match themes.iter_mut().find(|b| b.name == t.name) {
                Some(b) => *b = t,
                None => users.push(t),
            },
            Err(why) => problems.push(format!("theme {} skipped: {why}", f.display())),
        }
    }
    users.sort_by(|a, b| a.name.cmp(&b.name));
    themes.extend(users);
    (themes, problems)
}

/// Writes `theme` to `dir` as `<name>.toml` (lower case, dashes); returns the file.
pub fn save(theme: &Theme, dir: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    let stem: String = theme
        .name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .collect();
    let stem = stem.trim_matches('-');
    anyhow::ensure!(!stem.is_empty(), "give the theme a name first");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{stem}.toml"));
    std::fs::write(&path, theme.to_toml()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pixelpass-themes-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn built_ins_load_in_order() {
        let (themes, problems) = load_all(None);
        let names: Vec<&str> = themes.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["Default Dark", "Catppuccin Mocha", "Catppuccin Latte"]);
        assert!(problems.is_empty());
        assert!(!themes[2].dark, "Latte is light");
        assert_eq!(themes[1].get(Role::Accent), Color32::from_rgb(0x89, 0xb4, 0xfa));
    }

    #[test]
    fn partial_override_and_broken_files() {
        let d = dir("load");
        std::fs::write(d.join("a.toml"), "name = \"Mine\"\naccent = \"#ff0000\"\n").unwrap();
        std::fs::write(
            d.join("b.toml"),
            "name = \"Catppuccin Latte\"\ndark = false\ntext = \"#000000\"\n",
        )
        .unwrap();
        std::fs::write(d.join("c.toml"), "name = \"Broken\"\nerror = \"red\"\n").unwrap();
        std::fs::write(d.join("d.toml"), "name = = \n").unwrap();
        std::fs::write(d.join("notes.txt"), "not a theme").unwrap();
        let (themes, problems) = load_all(Some(&d));
        let names: Vec<&str> = themes.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["Default Dark", "Catppuccin Mocha", "Catppuccin Latte", "Mine"]);
        let mine = &themes[3];
        assert_eq!(mine.get(Role::Accent), Color32::from_rgb(255, 0, 0));
        let dark = Theme::default_dark();
        assert_eq!(
            mine.get(Role::Text),
            dark.get(Role::Text),
            "missing fields fall back to Default Dark"
        );
        let latte = &themes[2];
        assert_eq!(
            latte.get(Role::Text),
            Color32::BLACK,
            "the user's Latte overrides the built-in"
        );
        assert_eq!(
            latte.get(Role::WindowBg),
            dark.get(Role::WindowBg),
            "…and falls back to Default Dark"
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("c.toml") && problems[0].contains("`error`"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("d.toml") && problems[1].contains("line 1"),
            "{problems:?}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn save_round_trips() {
        let d = dir("save");
        let mut t = Theme::default_dark();
        t.name = "My Theme".into();
        t.dark = false;
        t.colors[Role::Streaming as usize] = Color32::from_rgb(1, 2, 3);
        let path = save(&t, &d).unwrap();
        assert_eq!(path.file_name().unwrap(), "my-theme.toml");
        let (themes, problems) = load_all(Some(&d));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(themes.last(), Some(&t));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
