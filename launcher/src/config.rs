//! `~/.config/pixelpass/config.toml` (XDG): the bandwidth test result, the defaults that
//! derive from it, and what the menu remembers.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The keys this version knows, per section; others are warned about and kept (another
/// version of pixelpass may use them).
const KNOWN: [(&str, &[&str]); 4] = [
    (
        "bandwidth",
        &["status", "upstream_mbps", "measured_at", "error", "endpoint"],
    ),
    ("viewer", &["player", "quality"]),
    (
        "gui",
        &["theme", "keep_in_tray", "quality", "max_viewers", "software_encoder"],
    ),
    ("web", &["page"]),
];

/// The whole config file.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Config {
    #[serde(default)]
    pub bandwidth: Bandwidth,
    #[serde(default, skip_serializing_if = "Viewer::is_empty")]
    pub viewer: Viewer,
    #[serde(default, skip_serializing_if = "Gui::is_empty")]
    pub gui: Gui,
    #[serde(default, skip_serializing_if = "Web::is_empty")]
    pub web: Web,
}

/// The `[gui]` section: what the window (`--gui`) remembers.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gui {
    /// The theme picked last, by name.
    pub theme: Option<String>,
    /// Closing the window leaves the share running, reopened from the tray.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_in_tray: bool,
    /// The host's last quality preset (`auto`, `high`, …).
    pub quality: Option<String>,
    /// The host's last viewer cap.
    pub max_viewers: Option<u32>,
    /// The host's last "software encoder" choice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub software_encoder: bool,
}

impl Gui {
    fn is_empty(&self) -> bool {
        *self == Gui::default()
    }
}

/// The `[web] section`: the browser viewer page.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Web {
    /// Where the page is published (`https://…/`): the host prints browser links to it.
    pub page: Option<String>,
}

impl Web {
    fn is_empty(&self) -> bool {
        self.page.is_none()
    }
}

/// The `[viewer]` section: what the menu's viewer remembers.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Viewer {
    /// The player picked last (`mpv`, `vlc`, `gst`), offered first next time.
    pub player: Option<String>,
    /// The window's viewer ceiling picked last (`auto`, `high`, `medium`, `low`).
    pub quality: Option<String>,
}

impl Viewer {
    fn is_empty(&self) -> bool {
        *self == Viewer::default()
    }
}

/// The `[bandwidth]` section, in the seed's format.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bandwidth {
    /// measured | skipped | failed | unmeasured
    #[serde(default)]
    pub status: BandwidthStatus,
    /// Safe upstream estimate in Mbit/s (raw × 0.8).
    pub upstream_mbps: Option<f64>,
    /// RFC 3339 time of the measurement.
    pub measured_at: Option<String>,
    /// Why the last test failed (status `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Upload endpoint for the test (`PIXELPASS_SPEEDTEST_URL` wins); Cloudflare's by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BandwidthStatus {
    Measured,
    Skipped,
    Failed,
    #[default]
    Unmeasured,
}

/// Where the config lives: `$XDG_CONFIG_HOME/pixelpass/config.toml`, else
/// `~/.config/pixelpass/config.toml`.
pub fn path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("pixelpass").join("config.toml"))
}

impl Config {
    /// Loads the config; a missing file is the default config. A broken one is an error that
    /// names the file and the line.
    pub fn load() -> Result<Self> {
        match path() {
            Some(p) => Self::load_from(&p),
            None => Ok(Self::default()),
        }
    }

    pub fn load_from(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        for key in unknown_keys(&text) {
            eprintln!(
                "pixelpass: warning: {}: unknown key `{key}` ignored (kept in the file; another pixelpass version may use it)",
                path.display()
            );
        }
        toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(1);
            anyhow::anyhow!(
                "config file {} is not valid at line {line}: {}\nfix or delete it (deleting resets pixelpass to first-run state)",
                path.display(),
                e.message()
            )
        })
    }

    /// Writes the config (creating its folder); a missing home is an error.
    pub fn save(&self) -> Result<PathBuf> {
        let p = path().context("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep the config")?;
        self.save_to(&p)?;
        Ok(p)
    }

    /// Writes atomically (a temporary file renamed over the old one), so a crash never leaves
    /// half a config. Only the keys this version knows change: unknown keys and comments in
    /// the file stay.
    pub fn save_to(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let fresh: toml_edit::DocumentMut = toml::to_string(self)
            .context("cannot write the config as TOML")?
            .parse()
            .context("cannot write the config as TOML")?;
        let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or_default();
        merge_known(&mut doc, &fresh);
        let text = doc.to_string();
        let tmp = path.with_extension(format!("toml.{}", std::process::id()));
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
    }

    /// Measured safe upstream in Mbit/s, if any.
    pub fn upstream_mbps(&self) -> Option<f64> {
        (self.bandwidth.status == BandwidthStatus::Measured)
            .then_some(self.bandwidth.upstream_mbps)
            .flatten()
            .filter(|m| *m > 0.0)
    }

    /// Default viewer cap: how many medium-quality (2.5 Mbit/s) streams fit the measured
    /// upstream (1..=10), else 2.
    pub fn default_max_viewers(&self) -> u32 {
        match self.upstream_mbps() {
            Some(m) => ((m / 2.5).floor() as u32).clamp(1, 10),
            None => 2,
        }
    }
}

/// The keys in `text` this version does not know, as `section.key` (nothing when `text` is
/// not TOML: parsing reports that).
pub fn unknown_keys(text: &str) -> Vec<String> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (section, value) in &table {
        match KNOWN.iter().find(|(s, _)| s == section) {
            None => out.push(section.clone()),
            Some((_, keys)) => {
                let Some(t) = value.as_table() else { continue };
                out.extend(
                    t.keys()
                        .filter(|k| !keys.contains(&k.as_str()))
                        .map(|k| format!("{section}.{k}")),
                );
            }
        }
    }
    out
}

/// Sets the known keys of `doc` to `fresh`'s (removing those `fresh` leaves out), keeping each
/// value's comments and everything else in `doc`.
fn merge_known(doc: &mut toml_edit::DocumentMut, fresh: &toml_edit::DocumentMut) {
    for (section, keys) in KNOWN {
        let new = fresh.get(section).and_then(|i| i.as_table());
        if doc.get(section).and_then(|i| i.as_table_like()).is_none() {
            match new {
                Some(n) => doc[section] = toml_edit::Item::Table(n.clone()),
                None => {
                    doc.remove(section);
                }
            }
            continue;
        }
        let Some(table) = doc[section].as_table_like_mut() else {
            continue;
        };
        for key in keys {
            match new.and_then(|n| n.get(key)) {
                Some(value) => {
                    let mut value = value.clone();
                    if let (Some(old), Some(v)) = (table.get(key).and_then(|o| o.as_value()), value.as_value_mut()) {
                        *v.decor_mut() = old.decor().clone();
                    }
                    // In place: the key keeps its own comments.
                    match table.get_mut(key) {
                        Some(slot) => *slot = value,
                        None => {
                            table.insert(key, value);
                        }
                    }
                }
                None => {
                    table.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pixelpass-cfg-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn seed_format_parses() {
        let p = tmp(
            "ok",
            "[bandwidth]\nstatus = \"measured\" # measured | skipped\nupstream_mbps = 8.78\nmeasured_at = \"2026-05-21T20:41:16Z\"\n",
        );
        let c = Config::load_from(&p).unwrap();
        assert_eq!(c.upstream_mbps(), Some(8.78));
        assert_eq!(c.default_max_viewers(), 3);
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn missing_file_is_default_and_skipped_means_no_measurement() {
        assert_eq!(
            Config::load_from(Path::new("/nonexistent/pixelpass.toml")).unwrap(),
            Config::default()
        );
        let p = tmp("skip", "[bandwidth]\nstatus = \"skipped\"\n");
        let c = Config::load_from(&p).unwrap();
        assert_eq!((c.upstream_mbps(), c.default_max_viewers()), (None, 2));
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn save_round_trips_and_keeps_the_seed_keys() {
        let p = tmp("save", "");
        let c = Config {
            bandwidth: Bandwidth {
                status: BandwidthStatus::Measured,
                upstream_mbps: Some(7.5),
                measured_at: Some("2026-12-01T10:00:00Z".into()),
                ..Default::default()
            },
            viewer: Viewer {
                player: Some("vlc".into()),
                quality: Some("low".into()),
            },
            gui: Gui {
                theme: Some("Catppuccin Latte".into()),
                keep_in_tray: true,
                ..Default::default()
            },
            web: Web {
                page: Some("https://example.org/pixelpass/".into()),
            },
        };
        c.save_to(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("[bandwidth]") && text.contains("status = \"measured\""),
            "{text}"
        );
        assert!(!text.contains("endpoint"), "unset keys are left out: {text}");
        assert_eq!(Config::load_from(&p).unwrap(), c);
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn unknown_keys_are_named_and_do_not_stop_loading() {
        let text = "# mine\n[bandwidth]\nstatus = \"skipped\"\nprobe_ms = 3\n\n[viewer]\nplayer = \"mpv\"\nvolume = 9\n\n[later]\ntheme = \"dark\"\n";
        assert_eq!(unknown_keys(text), ["bandwidth.probe_ms", "later", "viewer.volume"]);
        let p = tmp("unknown", text);
        let c = Config::load_from(&p).unwrap();
        assert_eq!(c.bandwidth.status, BandwidthStatus::Skipped);
        assert_eq!(c.viewer.player.as_deref(), Some("mpv"));
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn save_keeps_unknown_keys_and_comments() {
        let text = "# my settings\n[bandwidth]\n# from the office\nstatus = \"skipped\" # for now\nprobe_ms = 3\nendpoint = \"http://sink/up\"\n\n[later]\ntheme = \"dark\" # newer build\n";
        let p = tmp("keep", text);
        let mut c = Config::load_from(&p).unwrap();
        c.bandwidth.status = BandwidthStatus::Measured;
        c.bandwidth.upstream_mbps = Some(7.5);
        c.bandwidth.endpoint = None;
        c.viewer.player = Some("vlc".into());
        c.save_to(&p).unwrap();
        let saved = std::fs::read_to_string(&p).unwrap();
        for kept in [
            "# my settings",
            "# from the office",
            "status = \"measured\" # for now",
            "probe_ms = 3",
            "[later]",
            "theme = \"dark\" # newer build",
            "upstream_mbps = 7.5",
            "player = \"vlc\"",
        ] {
            assert!(saved.contains(kept), "{kept:?} in:\n{saved}");
        }
        assert!(!saved.contains("endpoint"), "an unset known key goes:\n{saved}");
        assert_eq!(Config::load_from(&p).unwrap(), c);
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn corrupt_file_names_file_and_line() {
        let p = tmp("bad", "[bandwidth]\nstatus = \"measured\"\nupstream_mbps = = 3\n");
        let e = Config::load_from(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(e.contains("line 3"), "{e}");
        let p2 = tmp("bad2", "[bandwidth]\nstatus = \"sometimes\"\n");
        let e = Config::load_from(&p2).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
        std::fs::remove_dir_all(p2.parent().unwrap()).unwrap();
    }
}
