//! `pixelpass` on a terminal: the interactive menu. The prompts are thin (inquire: arrows,
//! type to filter, Enter, Esc back, ctrl-c out with the terminal restored); what they decide
//! is in [`answers`], and the result is a command line parsed like typed flags.

pub mod answers;
pub mod screen;

use std::fmt;

use anyhow::{Context as _, Result};
use inquire::error::InquireError;
use inquire::{Select, Text};

use self::answers::{HostAnswers, ShareWhat, Sound, Step};
use crate::cli::{HostArgs, Player, Quality};
use crate::config::Config;
use crate::quality::Overrides;
use crate::{bandwidth, capture, player};

/// What the menu decided.
pub enum Choice {
    /// Run these arguments (`pixelpass host …` or `pixelpass view …`).
    Run(Vec<String>),
    /// Ctrl-C at a question: exit at once with code 130.
    Quit,
}

/// Ctrl-C at a question.
struct Quit;

/// One question's result: an answer, or Esc (back one question).
type Asked<T> = std::result::Result<Option<T>, Quit>;

fn asked<T>(r: std::result::Result<T, InquireError>) -> Result<Asked<T>> {
    match r {
        Ok(v) => Ok(Ok(Some(v))),
        Err(InquireError::OperationCanceled) => Ok(Ok(None)),
        Err(InquireError::OperationInterrupted) => Ok(Err(Quit)),
        Err(e) => Err(anyhow::anyhow!("the menu cannot ask: {e}")),
    }
}

/// A list item: what it stands for and how it reads.
struct Item<T>(T, String);

impl<T> fmt::Display for Item<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.1)
    }
}

/// A list question; the first item is the default. `Ok(None)` on Esc.
fn pick<T: Clone>(question: &str, items: Vec<(T, String)>) -> Result<Asked<T>> {
    let items: Vec<Item<T>> = items.into_iter().map(|(v, s)| Item(v, s)).collect();
    let r = Select::new(question, items).with_page_size(10).prompt();
    Ok(asked(r)?.map(|o| o.map(|Item(v, _)| v)))
}

/// Runs the menu: Host or View, then their questions (but not those `preset` answers; the
/// `typed` arguments go to the host as they are).
pub fn run(preset: &answers::Preset, typed_args: &HostArgs, typed: &[String]) -> Result<Choice> {
    let mut config = Config::load()?;
    loop {
        let mode = pick(
            "What do you want to do?",
            vec![
                (true, "Host: share my screen".into()),
                (false, "View: watch a share (paste a ticket)".into()),
            ],
        )?;
        let result = match mode {
            Err(Quit) => return Ok(Choice::Quit),
            Ok(None) => continue, // Esc on the first question: nothing to go back to
            Ok(Some(true)) => host(&mut config, preset, typed_args, typed)?,
            Ok(Some(false)) => view(&mut config)?,
        };
        match result {
            Err(Quit) => return Ok(Choice::Quit),
            Ok(None) => continue,
            Ok(Some(argv)) => return Ok(Choice::Run(argv)),
        }
    }
}

fn host(
    config: &mut Config,
    preset: &answers::Preset,
    typed_args: &HostArgs,
    typed: &[String],
) -> Result<Asked<Vec<String>>> {
    let overrides = Overrides {
        max_height: typed_args.max_height,
        bitrate_kbps: typed_args.bitrate,
        framerate: typed_args.framerate,
    };
    let first_run = answers::asks_bandwidth(config);
    let mut a = HostAnswers::default();
    let mut history: Vec<Step> = Vec::new();
    let Some(mut step) = answers::next_step(None, first_run, preset) else {
        return Ok(Ok(Some(answers::host_argv(typed, &a))));
    };
    loop {
        let answered = match step {
            Step::Bandwidth => ask_bandwidth(config)?,
            Step::What => ask_what()?.map(|o| o.map(|w| a.what = Some(w))),
            Step::Sound => ask_sound()?.map(|o| o.map(|s| a.sound = Some(s))),
            Step::Quality => {
                let choices = answers::quality_choices(config, typed_args.max_viewers, overrides);
                pick("Quality", choices)?.map(|o| o.map(|q: Quality| a.quality = Some(q)))
            }
        };
        match answered {
            Err(Quit) => return Ok(Err(Quit)),
            // Esc: back one question, or to Host/View from the first.
            Ok(None) => match history.pop() {
                Some(s) => step = s,
                None => return Ok(Ok(None)),
            },
            Ok(Some(())) => {
                history.push(step);
                match answers::next_step(Some(step), first_run, preset) {
                    Some(s) => step = s,
                    None => return Ok(Ok(Some(answers::host_argv(typed, &a)))),
                }
            }
        }
    }
}

/// First run: test the upstream now (default) or skip (remembered).
fn ask_bandwidth(config: &mut Config) -> Result<Asked<()>> {
    let run = match pick(
        "Test your upload speed first? (about 5 s, at most 10; up to 5 MB; sizes the viewer cap and quality)",
        vec![
            (true, "Run the test (recommended)".into()),
            (
                false,
                "Skip (2 viewers, medium quality; pixelpass --reconfigure runs it later)".into(),
            ),
        ],
    )? {
        Ok(Some(r)) => r,
        other => return Ok(other.map(|o| o.map(|_| ()))),
    };
    if run {
        let outcome = measure_now(config)?;
        eprintln!("pixelpass: {}", bandwidth::describe(&outcome));
        config.bandwidth = bandwidth::record(&config.bandwidth, &outcome, std::time::SystemTime::now());
    } else {
        config.bandwidth = bandwidth::skipped(&config.bandwidth);
    }
    if let Err(e) = config.save() {
        eprintln!("pixelpass: warning: the result is not remembered: {e:#}");
    }
    Ok(Ok(Some(())))
}

/// Runs the bandwidth test on a small runtime of its own, with a progress bar.
pub fn measure_now(config: &Config) -> Result<bandwidth::Outcome> {
    let url = match bandwidth::endpoint(config, std::env::var(bandwidth::ENDPOINT_ENV).ok()) {
        Ok(u) => u,
        Err(why) => return Ok(bandwidth::Outcome::Failed(why)),
    };
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the bandwidth test")?;
    Ok(rt.block_on(bandwidth::measure(&url, progress)))
}

fn ask_what() -> Result<Asked<ShareWhat>> {
    let env = |k: &str| std::env::var(k).ok();
    let x11 = capture::detect(None, &env) == Some(capture::Backend::X11);
    let mut items = vec![(None, "The whole screen (recommended)".to_string())];
    if x11 {
        items.push((Some(ShareWhat::Window), "One window (click it)".into()));
        for (name, m) in monitors() {
            let label = format!("One monitor: {name} ({}x{})", m.width, m.height);
            items.push((Some(ShareWhat::Monitor(name)), label));
        }
    } else {
        items.push((
            Some(ShareWhat::Window),
            "One window (pick it in the desktop's dialog)".into(),
        ));
    }
    Ok(pick("What to share?", items)?.map(|o| o.map(|w| w.unwrap_or(ShareWhat::Screen))))
}

/// X11: the connected xrandr outputs (none when there is only one: that is the whole screen).
/// The window offers the same.
pub fn monitors() -> Vec<(String, capture::x11::Monitor)> {
    let out = std::process::Command::new("xrandr").arg("--query").output();
    let all = out
        .map(|o| capture::x11::parse_xrandr(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    if all.len() > 1 { all } else { Vec::new() }
}

#[derive(Clone, Copy)]
enum SoundKind {
    System,
    Only,
    Except,
    None,
}

fn ask_sound() -> Result<Asked<Sound>> {
    loop {
        let kind = match pick(
            "Sound?",
            vec![
                (
                    SoundKind::System,
                    "System sound: everything you hear (recommended)".into(),
                ),
                (SoundKind::Only, "Only one app's sound".into()),
                (
                    SoundKind::Except,
                    "Everything except one app (e.g. your voice chat)".into(),
                ),
                (SoundKind::None, "No sound".into()),
            ],
        )? {
            Ok(Some(k)) => k,
            Ok(None) => return Ok(Ok(None)),
            Err(q) => return Ok(Err(q)),
        };
        let which = match kind {
            SoundKind::System => return Ok(Ok(Some(Sound::System))),
            SoundKind::None => return Ok(Ok(Some(Sound::None))),
            SoundKind::Only => "Share the sound of which app?",
            SoundKind::Except => "Share all sound except which app?",
        };
        match ask_app(which)? {
            Ok(Some(app)) => {
                return Ok(Ok(Some(match kind {
                    SoundKind::Only => Sound::Only(app),
                    _ => Sound::Except(app),
                })));
            }
            Ok(None) => continue, // Esc or no apps: the sound question again
            Err(q) => return Ok(Err(q)),
        }
    }
}

/// The apps playing now, from PipeWire; with none (or no PipeWire) says so.
fn ask_app(question: &str) -> Result<Asked<String>> {
    let apps = match crate::audio::apps::playing() {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => {
            eprintln!("pixelpass: no app is playing sound now: start it, then pick again");
            return Ok(Ok(None));
        }
        Err(e) => {
            eprintln!("pixelpass: cannot list the apps playing sound: {e:#}");
            return Ok(Ok(None));
        }
    };
    let items = apps
        .iter()
        .map(|a| {
            let name = a.label().to_string();
            let label = if a.binary.is_empty() || a.binary == name {
                name.clone()
            } else {
                format!("{name} ({})", a.binary)
            };
            (name, label)
        })
        .collect();
    pick(question, items)
}

fn view(config: &mut Config) -> Result<Asked<Vec<String>>> {
    loop {
        let ticket = Text::new("Paste the ticket:")
            .with_validator(|s: &str| {
                Ok(match s.trim().parse::<gstiroh::ticket::Ticket>() {
                    Ok(_) => inquire::validator::Validation::Valid,
                    Err(e) => inquire::validator::Validation::Invalid(format!("not a ticket: {e}").into()),
                })
            })
            .prompt();
        let ticket = match asked(ticket)? {
            Ok(Some(t)) => t,
            other => return Ok(other.map(|o| o.map(|_| Vec::new()))),
        };
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        if as_root && player::installed(Player::Vlc) {
            eprintln!(
                "pixelpass: VLC is not offered: it refuses to run as root (run pixelpass as your own user for it)"
            );
        }
        let players = answers::player_choices(&|p| player::installed(p), config.viewer.player.as_deref(), as_root);
        let items = players.into_iter().map(|p| (p, player_label(p))).collect();
        match pick("Play it in", items)? {
            Ok(Some(p)) => {
                if let Some(problem) = player::check(p) {
                    eprintln!("pixelpass: warning: {problem}");
                }
                config.viewer.player = Some(answers::value_name(p));
                if let Err(e) = config.save() {
                    eprintln!("pixelpass: warning: the player choice is not remembered: {e:#}");
                }
                return Ok(Ok(Some(answers::view_argv(&ticket, p))));
            }
            Ok(None) => continue,
            Err(q) => return Ok(Err(q)),
        }
    }
}

pub fn player_label(p: Player) -> String {
    match p {
        Player::Mpv => "mpv (low latency)".into(),
        Player::Vlc => "VLC".into(),
        Player::Gst => "the built-in GStreamer window".into(),
        Player::None => "no player".into(),
    }
}
