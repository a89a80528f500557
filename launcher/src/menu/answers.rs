//! The menu's decisions, as pure functions: which questions to ask, the choices in order
//! (recommended first, so Enter everywhere gives the recommended share), and the answers as
//! the command line they stand for, parsed by the same definition as typed flags.

use crate::cli::{Player, Quality};
use crate::config::{BandwidthStatus, Config};
use crate::quality::{self, Overrides};

/// What to share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareWhat {
    Screen,
    Window,
    /// An xrandr output by name (X11).
    Monitor(String),
}

/// Which sound to share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sound {
    System,
    Only(String),
    Except(String),
    None,
}

/// Everything the host questions decide; None where a typed flag answered the question.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAnswers {
    pub what: Option<ShareWhat>,
    pub sound: Option<Sound>,
    pub quality: Option<Quality>,
}

/// Which host questions the typed flags already answer (so the menu does not ask them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preset {
    pub what: bool,
    pub sound: bool,
    pub quality: bool,
}

/// `typed(id)`: whether the argument with this clap id was on the command line.
pub fn preset(typed: &dyn Fn(&str) -> bool) -> Preset {
    let any = |ids: &[&str]| ids.iter().any(|id| typed(id));
    Preset {
        what: any(&["window", "window_id", "monitor", "source"]),
        sound: any(&["no_audio", "app", "exclude_app"]),
        quality: any(&["quality"]),
    }
}

/// The host's questions, in the order asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Bandwidth,
    What,
    Sound,
    Quality,
}

/// The question after `from` (None: the first), skipping the bandwidth test after the first
/// run and what typed flags answer; None when all are answered.
pub fn next_step(from: Option<Step>, first_run: bool, preset: &Preset) -> Option<Step> {
    const ORDER: [Step; 4] = [Step::Bandwidth, Step::What, Step::Sound, Step::Quality];
    let start = from
        .and_then(|f| ORDER.iter().position(|s| *s == f))
        .map_or(0, |i| i + 1);
    ORDER[start..].iter().copied().find(|s| match s {
        Step::Bandwidth => first_run,
        Step::What => !preset.what,
        Step::Sound => !preset.sound,
        Step::Quality => !preset.quality,
    })
}

/// The bandwidth question comes on the first run only: skipped, failed or measured are all
/// answers (`--reconfigure` asks again).
pub fn asks_bandwidth(config: &Config) -> bool {
    config.bandwidth.status == BandwidthStatus::Unmeasured
}

/// The host answers as `pixelpass host` arguments, after the ones typed.
pub fn host_argv(typed: &[String], a: &HostAnswers) -> Vec<String> {
    let mut v = vec!["pixelpass".to_string(), "host".into()];
    v.extend(typed.iter().cloned());
    match &a.what {
        None | Some(ShareWhat::Screen) => {}
        Some(ShareWhat::Window) => v.push("--window".into()),
        Some(ShareWhat::Monitor(name)) => v.extend(["--monitor".into(), name.clone()]),
    }
    match &a.sound {
        None | Some(Sound::System) => {}
        Some(Sound::Only(app)) => v.extend(["--app".into(), app.clone()]),
        Some(Sound::Except(app)) => v.extend(["--exclude-app".into(), app.clone()]),
        Some(Sound::None) => v.push("--no-audio".into()),
    }
    if let Some(q) = a.quality {
        v.extend(["--quality".into(), value_name(q)]);
    }
    v
}

/// The viewer answers as `pixelpass` arguments.
pub fn view_argv(ticket: &str, player: Player) -> Vec<String> {
    vec![
        "pixelpass".into(),
        "view".into(),
        ticket.trim().into(),
        "--player".into(),
        value_name(player),
    ]
}

/// A flag value as typed (`--quality high`, `--player vlc`): clap's own name for it.
pub fn value_name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// The quality choices: auto first, saying what it resolves to and why (with the typed
/// `--max-viewers` and `--bitrate`, `--max-height`, `--framerate`), then the presets.
pub fn quality_choices(config: &Config, max_viewers: Option<u32>, typed: Overrides) -> Vec<(Quality, String)> {
    let viewers = max_viewers.unwrap_or_else(|| config.default_max_viewers());
    let up = config.upstream_mbps();
    let auto = quality::resolve(Quality::Auto, typed, up, viewers);
    let why = match up {
        Some(m) => format!(
            "{} kbit/s × {viewers} viewer{} for your usable {m:.1} Mbit/s upstream",
            auto.bitrate_kbps,
            if viewers == 1 { "" } else { "s" }
        ),
        None => "no measured upstream (pixelpass --reconfigure measures it)".into(),
    };
    let mut out = vec![(
        Quality::Auto,
        format!("auto: {} ({why})", settings_label(auto.preset, &auto)),
    )];
    for q in [Quality::Source, Quality::High, Quality::Medium, Quality::Low] {
        out.push((q, settings_label(q, &quality::resolve(q, typed, None, 1))));
    }
    out
}

/// "high: up to 1080p, 4000 kbit/s".
fn settings_label(q: Quality, s: &quality::Settings) -> String {
    let res = s
        .max_height
        .map_or("native resolution".into(), |h| format!("up to {h}p"));
    format!("{}: {res}, {} kbit/s", value_name(q), s.bitrate_kbps)
}

/// The players to offer: the installed ones, the last used first, else mpv, VLC, built-in.
/// Not VLC as root: it refuses to run.
pub fn player_choices(installed: &dyn Fn(Player) -> bool, last: Option<&str>, as_root: bool) -> Vec<Player> {
    let mut v: Vec<Player> = [Player::Mpv, Player::Vlc, Player::Gst]
        .into_iter()
        .filter(|p| installed(*p) && !(as_root && *p == Player::Vlc))
        .collect();
    if let Some(i) = v.iter().position(|p| Some(value_name(*p).as_str()) == last) {
        let p = v.remove(i);
        v.insert(0, p);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn parse_host(argv: &[String]) -> crate::cli::HostArgs {
        match Cli::try_parse_from(argv).unwrap().command {
            Some(Command::Host(h)) => h,
            _ => panic!("a host command"),
        }
    }

    #[test]
    fn enter_everywhere_is_the_whole_screen_with_sound_and_auto_quality() {
        let enter = HostAnswers {
            what: Some(ShareWhat::Screen),
            sound: Some(Sound::System),
            quality: Some(Quality::Auto),
        };
        let argv = host_argv(&[], &enter);
        assert_eq!(argv, ["pixelpass", "host", "--quality", "auto"]);
        let h = parse_host(&argv);
        assert!(!h.window && h.monitor.is_none() && !h.no_audio && h.app.is_empty());
        assert_eq!(h.quality, Quality::Auto);
    }

    #[test]
    fn each_answer_becomes_its_flag() {
        let a = HostAnswers {
            what: Some(ShareWhat::Monitor("HDMI-1".into())),
            sound: Some(Sound::Except("Discord".into())),
            quality: Some(Quality::Low),
        };
        let h = parse_host(&host_argv(&[], &a));
        assert_eq!(h.monitor.as_deref(), Some("HDMI-1"));
        assert_eq!(h.exclude_app, ["Discord"]);
        assert_eq!(h.quality, Quality::Low);
        let a = HostAnswers {
            what: Some(ShareWhat::Window),
            sound: Some(Sound::Only("Firefox".into())),
            quality: Some(Quality::Source),
        };
        let h = parse_host(&host_argv(&[], &a));
        assert!(h.window);
        assert_eq!(h.app, ["Firefox"]);
        let a = HostAnswers {
            sound: Some(Sound::None),
            ..Default::default()
        };
        assert!(parse_host(&host_argv(&[], &a)).no_audio);
    }

    #[test]
    fn typed_flags_answer_their_questions_and_are_kept() {
        let typed = |ids: &'static [&'static str]| move |id: &str| ids.contains(&id);
        assert_eq!(preset(&typed(&[])), Preset::default());
        assert_eq!(
            preset(&typed(&["no_audio", "relay"])),
            Preset {
                sound: true,
                ..Default::default()
            }
        );
        let p = preset(&typed(&["monitor", "exclude_app", "quality"]));
        assert!(p.what && p.sound && p.quality);
        assert!(preset(&typed(&["source"])).what, "--source test answers what to share");
        let typed = ["--no-audio".to_string(), "--max-viewers".into(), "4".into()];
        let a = HostAnswers {
            what: Some(ShareWhat::Window),
            quality: Some(Quality::High),
            ..Default::default()
        };
        let h = parse_host(&host_argv(&typed, &a));
        assert!(h.no_audio && h.window);
        assert_eq!((h.max_viewers, h.quality), (Some(4), Quality::High));
    }

    #[test]
    fn bandwidth_is_asked_on_the_first_run_only() {
        let mut c = Config::default();
        assert!(asks_bandwidth(&c));
        for s in [
            BandwidthStatus::Skipped,
            BandwidthStatus::Failed,
            BandwidthStatus::Measured,
        ] {
            c.bandwidth.status = s;
            assert!(!asks_bandwidth(&c), "{s:?} is an answer");
        }
    }

    #[test]
    fn questions_come_in_order_without_the_answered_ones() {
        let none = Preset::default();
        assert_eq!(next_step(None, true, &none), Some(Step::Bandwidth));
        assert_eq!(next_step(None, false, &none), Some(Step::What));
        assert_eq!(next_step(Some(Step::What), false, &none), Some(Step::Sound));
        assert_eq!(next_step(Some(Step::Quality), false, &none), None);
        let sound = Preset { sound: true, ..none };
        assert_eq!(next_step(Some(Step::What), true, &sound), Some(Step::Quality));
        let all = Preset {
            what: true,
            sound: true,
            quality: true,
        };
        assert_eq!(next_step(None, false, &all), None, "nothing left to ask: host at once");
        assert_eq!(
            next_step(None, true, &all),
            Some(Step::Bandwidth),
            "first run still asks"
        );
    }

    #[test]
    fn auto_says_what_it_resolves_to_and_why() {
        let mut c = Config::default();
        let q = quality_choices(&c, None, Overrides::default());
        assert_eq!(q[0].0, Quality::Auto);
        assert!(
            q[0].1.starts_with("auto: medium") && q[0].1.contains("--reconfigure"),
            "{}",
            q[0].1
        );
        c.bandwidth.status = BandwidthStatus::Measured;
        c.bandwidth.upstream_mbps = Some(8.8);
        let q = quality_choices(&c, None, Overrides::default());
        assert_eq!(
            q[0].1,
            "auto: medium: up to 720p, 2500 kbit/s (2500 kbit/s × 3 viewers for your usable 8.8 Mbit/s upstream)"
        );
        let names: Vec<_> = q.iter().map(|(q, _)| *q).collect();
        assert_eq!(
            names,
            [
                Quality::Auto,
                Quality::Source,
                Quality::High,
                Quality::Medium,
                Quality::Low
            ]
        );
        assert_eq!(q[1].1, "source: native resolution, 6000 kbit/s");
        // Typed --max-viewers and --bitrate count.
        let typed = Overrides {
            bitrate_kbps: Some(1500),
            ..Default::default()
        };
        let q = quality_choices(&c, Some(8), typed);
        assert_eq!(
            q[0].1,
            "auto: low: up to 480p, 1500 kbit/s (1500 kbit/s × 8 viewers for your usable 8.8 Mbit/s upstream)"
        );
    }

    #[test]
    fn players_are_the_installed_ones_last_used_first() {
        let all = |_: Player| true;
        assert_eq!(
            player_choices(&all, None, false),
            [Player::Mpv, Player::Vlc, Player::Gst]
        );
        assert_eq!(
            player_choices(&all, Some("vlc"), false),
            [Player::Vlc, Player::Mpv, Player::Gst]
        );
        let no_vlc = |p: Player| p != Player::Vlc;
        assert_eq!(player_choices(&no_vlc, Some("vlc"), false), [Player::Mpv, Player::Gst]);
        assert_eq!(player_choices(&no_vlc, Some("gst"), false), [Player::Gst, Player::Mpv]);
        assert_eq!(
            player_choices(&all, Some("vlc"), true),
            [Player::Mpv, Player::Gst],
            "VLC refuses to run as root: not offered"
        );
        assert_eq!(value_name(Quality::High), "high");
        let argv = view_argv(" pp1abc \n", Player::Gst);
        assert_eq!(argv, ["pixelpass", "view", "pp1abc", "--player", "gst"]);
    }
}
