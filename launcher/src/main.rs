//! pixelpass: share your screen P2P over iroh.
//!
//! Reads like a table of contents: parse the arguments, pick the mode, run it, map the error
//! to a message and an exit code (0 ok, 2 usage or bad ticket, 1 runtime).

mod audio;
mod bandwidth;
mod builtin;
mod capture;
mod cli;
mod clipboard;
mod config;
mod encoder;
mod events;
#[cfg(feature = "gui")]
mod gui;
mod host;
mod menu;
mod output;
mod pipeline;
mod player;
mod publish;
mod pw;
mod qr;
mod quality;
mod record;
mod text;
mod view;
mod web_page;

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory as _, FromArgMatches as _, Parser as _};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, EventFormat};
use crate::events::{Event, Events};

/// An error in what the user asked for (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The arguments as typed: the shortcuts pass them on to their subcommand.
    let typed: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let command = match (cli.command, cli.ticket) {
        (Some(c), _) => c,
        // The seed's headless viewer: serve the stream and print the mpv command.
        (None, Some(_)) => parse_as("view", &typed, &["--player", "none"]),
        (None, None) if cli.gui => return gui(&cli.host, &typed),
        (None, None) if cli.repair => return repair(),
        (None, None) if cli.reconfigure => return reconfigure(),
        // A person at a terminal gets the menu; scripts get the seed's headless host.
        (None, None) if wants_menu(&cli.host) => {
            let typed_ids: Vec<String> = matches
                .ids()
                .filter(|id| matches.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
                .map(|id| id.to_string())
                .collect();
            let preset = menu::answers::preset(&|id| typed_ids.iter().any(|t| t == id));
            return from_menu(&preset, &cli.host, &typed);
        }
        (None, None) => parse_as("host", &typed, &[]),
    };
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "pixelpass", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        },
        Command::Host(args) => {
            let events = Arc::new(Events::new(args.common.events == Some(EventFormat::Json)));
            let commands = args.control.map(|cli::ControlFrom::Stdin| {
                let (commander, commands) = host::control::channel();
                let ev = events.clone();
                std::thread::spawn(move || host::control::read_stdin(commander, ev));
                commands
            });
            run(events.clone(), |cancel| host::run(args, events, cancel, commands))
        }
        Command::View(args) => {
            let mut events = Events::new(args.common.events == Some(EventFormat::Json));
            events.stats_lines = args.stats;
            let events = Arc::new(events);
            run(events.clone(), |cancel| view::run(args, events, cancel))
        }
    }
}

/// The menu is for a person at a terminal; `--events json` or `--control stdin` mean a program
/// reads or drives the host, so those get the headless host even on a terminal.
fn wants_menu(host: &cli::HostArgs) -> bool {
    std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal()
        && host.common.events.is_none()
        && host.control.is_none()
}

/// 2 for usage errors and tickets the host refuses (wrong or revoked secret: the ticket is
/// bad), 1 for the rest. Decided by type and error code, never by the message.
fn exit_code(e: &anyhow::Error, failure: Option<view::Failure>) -> u8 {
    if e.downcast_ref::<UsageError>().is_some() || failure == Some(view::Failure::NotAuthorized) {
        2
    } else {
        1
    }
}

/// `--gui`: the window, driving `pixelpass host|view` children (this binary). The typed host
/// options go to every host it starts; `--relay` and `--bind` to viewers too.
#[cfg(feature = "gui")]
fn gui(host: &cli::HostArgs, typed: &[String]) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("pixelpass: cannot find this program to run its share: {e}");
            return ExitCode::from(1);
        }
    };
    let mut view_args = Vec::new();
    if let Some(relay) = &host.common.relay {
        view_args.extend(["--relay".to_string(), relay.to_string()]);
    }
    if let Some(bind) = host.common.bind {
        view_args.extend(["--bind".to_string(), bind.to_string()]);
    }
    gui::run(gui::Launch {
        exe,
        host_args: typed.iter().filter(|a| *a != "--gui").cloned().collect(),
        view_args,
        config_home: None,
    })
}

/// `--gui` in a build without the window: how to get it (exit 2, as for an unknown option).
#[cfg(not(feature = "gui"))]
fn gui(_host: &cli::HostArgs, _typed: &[String]) -> ExitCode {
    eprintln!(
        "pixelpass: this pixelpass was built without the window (--gui): build it with `cargo build --release --features gui` (README \"The window\")"
    );
    ExitCode::from(2)
}

/// `--repair`: prints what it unloaded, or why there was nothing to.
fn repair() -> ExitCode {
    use audio::repair::Repaired;
    match audio::repair::repair() {
        Ok(Repaired::NoServer(why)) => println!("nothing to repair: {why}"),
        Ok(Repaired::Unloaded(done)) if done.is_empty() => {
            println!("nothing to repair: no orphaned pixelpass audio sinks or loopbacks")
        }
        Ok(Repaired::Unloaded(done)) => {
            for d in done {
                println!("{d}");
            }
        }
        Err(e) => {
            eprintln!("pixelpass: --repair: {e:#}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

/// `--reconfigure`: runs the bandwidth test, stores the result (replacing any old one) and
/// prints it; exit 1 when the test failed.
fn reconfigure() -> ExitCode {
    let mut config = match config::Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pixelpass: {e:#}");
            return ExitCode::from(1);
        }
    };
    let outcome = match menu::measure_now(&config) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("pixelpass: {e:#}");
            return ExitCode::from(1);
        }
    };
    config.bandwidth = bandwidth::record(&config.bandwidth, &outcome, std::time::SystemTime::now());
    println!("{}", bandwidth::describe(&outcome));
    match config.save() {
        Ok(p) => eprintln!("pixelpass: saved in {}", p.display()),
        Err(e) => {
            eprintln!("pixelpass: the result is not saved: {e:#}");
            return ExitCode::from(1);
        }
    }
    match outcome {
        bandwidth::Outcome::Measured { .. } => ExitCode::SUCCESS,
        bandwidth::Outcome::Failed(_) => ExitCode::from(1),
    }
}

/// The interactive menu, then what it chose: a host with the menu's screen and keys, or a
/// viewer. Ctrl-C at a question exits 130 at once.
fn from_menu(preset: &menu::answers::Preset, typed_args: &cli::HostArgs, typed: &[String]) -> ExitCode {
    let argv = match menu::run(preset, typed_args, typed) {
        Ok(menu::Choice::Run(argv)) => argv,
        Ok(menu::Choice::Quit) => return ExitCode::from(130),
        Err(e) => {
            eprintln!("pixelpass: {e:#}");
            return ExitCode::from(1);
        }
    };
    match Cli::try_parse_from(&argv).map(|c| c.command) {
        Ok(Some(Command::Host(args))) => host_on_screen(args),
        Ok(Some(Command::View(args))) => {
            let events = Arc::new(Events::new(false));
            run(events.clone(), |cancel| view::run(args, events, cancel))
        }
        Ok(_) => unreachable!("the menu runs host or view"),
        Err(e) => e.exit(),
    }
}

/// A host driven from the terminal: the menu's screen (QR code, clipboard, viewers) and keys.
fn host_on_screen(args: cli::HostArgs) -> ExitCode {
    use menu::screen;
    let viewers = screen::Viewers::default();
    let events = Arc::new_cyclic(|events| {
        let to_clipboard = screen::copy_tickets(events.clone());
        Events::with_hook(Box::new(screen::HostScreen::new(viewers.clone(), to_clipboard)))
    });
    let (commander, commands) = host::control::channel();
    run(events.clone(), |cancel| {
        // Only now, with ctrl-c handled, may the terminal change (see KeyMode).
        let keys = screen::KeyMode::enter();
        let ev = events.clone();
        std::thread::spawn(move || screen::read_keys(commander, viewers, ev));
        async move {
            let result = host::run(args, events, cancel, Some(commands)).await;
            drop(keys);
            result
        }
    })
}

/// Parses a shortcut as its full subcommand (the typed arguments, then `extra`), so defaults,
/// environment and checks apply the same way.
fn parse_as(sub: &str, typed: &[String], extra: &[&str]) -> Command {
    let argv = ["pixelpass", sub]
        .into_iter()
        .map(String::from)
        .chain(typed.iter().cloned())
        .chain(extra.iter().map(|s| s.to_string()));
    match Cli::try_parse_from(argv) {
        Ok(c) => c.command.expect("the shortcut names a subcommand"),
        Err(e) => e.exit(),
    }
}

/// Runs a mode on a tokio runtime with ctrl-c wired to cancellation; maps errors to codes.
fn run<F, Fut>(events: Arc<Events>, mode: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    if let Err(e) = gst::init() {
        eprintln!("pixelpass: cannot initialise GStreamer: {e}");
        return ExitCode::from(1);
    }
    if let Err(e) = pipeline::register_elements() {
        eprintln!("pixelpass: cannot register our GStreamer elements: {e}");
        return ExitCode::from(1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cancel = CancellationToken::new();
    let result = rt.block_on(async {
        // Handlers in place before `mode` starts (and may change the terminal).
        use tokio::signal::unix::{SignalKind, signal};
        for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
            let mut sig = signal(kind).ok();
            let c = cancel.clone();
            tokio::spawn(async move {
                if let Some(s) = sig.as_mut() {
                    s.recv().await;
                    c.cancel();
                }
            });
        }
        mode(cancel).await
    });
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    events.end();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let failure = e.downcast_ref::<view::ViewError>().and_then(|v| v.failure);
            events.emit(Event::Error {
                message: format!("{e:#}"),
                kind: failure.map(view::Failure::name),
            });
            if events.is_json() {
                eprintln!("pixelpass: {e:#}");
            }
            ExitCode::from(exit_code(&e, failure))
        }
    }
}
