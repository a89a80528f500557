//! Command line: `pixelpass host`, `pixelpass view <ticket>` and the seed's shortcuts.
//!
//! Every value is parsed into its type here, at the edge: a bad ticket, relay, address or
//! window id ends the run with exit code 2 and the reason before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gstiroh::net::Relay;
use gstiroh::ticket::Ticket;

/// P2P screen sharing for Linux over iroh: the host shares its screen and sound and prints a
/// ticket; a viewer pastes the ticket and watches in mpv or VLC. No signup, no port
/// forwarding, no server.
#[derive(Debug, Parser)]
#[command(
    name = "pixelpass",
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = "Shortcuts: `pixelpass` alone on a terminal opens the menu (Host or View; Enter at every\n\
                  question shares the whole screen with the recommended settings; the ticket goes to\n\
                  the clipboard and shows as a QR code; keys k kick, r new ticket, q stop). Without a\n\
                  terminal `pixelpass` hosts (ticket on stdout). `pixelpass <TICKET>` views headless.\n\
                  Exit codes: 0 ok, 2 usage or bad ticket, 1 runtime error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// A ticket to view (same as `pixelpass view TICKET`)
    #[arg(value_name = "TICKET", value_parser = parse_ticket)]
    pub ticket: Option<Ticket>,

    /// Remove orphaned PipeWire state left by a crashed host and exit
    #[arg(long)]
    pub repair: bool,

    /// Open the window: host and view with buttons, viewers with Kick, tray, themes (builds
    /// with the `gui` feature; README "The window"). Host options given with it apply to every
    /// share started from the window
    #[arg(long)]
    pub gui: bool,

    /// Re-run the upstream bandwidth test (about 5 s, at most 10; up to 5 MB; endpoint from
    /// PIXELPASS_SPEEDTEST_URL, else the config's, else Cloudflare's), store it and exit
    #[arg(long)]
    pub reconfigure: bool,

    /// `pixelpass` alone takes the host options too: the menu does not ask what they answer,
    /// and without a terminal the host uses them.
    #[command(
        flatten,
        next_help_heading = "Host options for `pixelpass` alone (the menu skips what they answer)"
    )]
    pub host: HostArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Share this screen (and its sound); prints the ticket on stdout and waits for viewers
    Host(HostArgs),
    /// Watch a share: dial the ticket and play it in a local player
    View(ViewArgs),
    /// Print shell completions for SHELL to stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout
    Man,
}

/// Options both sides share.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Relay server URL (both sides should use the same one); "disabled" for direct
    /// connections only, "default" for n0's public relays (the default)
    #[arg(long, value_name = "URL", env = "PIXELPASS_RELAY")]
    pub relay: Option<Relay>,

    /// Write events as JSON lines on stdout (see README "Events")
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub events: Option<EventFormat>,

    /// Bind the iroh endpoint to one address (e.g. 127.0.0.1:0) instead of all interfaces
    #[arg(long, value_name = "ADDR", hide = true, env = "PIXELPASS_BIND")]
    pub bind: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventFormat {
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ControlFrom {
    /// JSON lines on standard input
    Stdin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DisplayServer {
    Wayland,
    X11,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Quality {
    /// native resolution, 6000 kbit/s
    Source,
    /// up to 1080p, 4000 kbit/s
    High,
    /// up to 720p, 2500 kbit/s
    Medium,
    /// up to 480p, 1000 kbit/s
    Low,
    /// from the measured upstream divided by the viewer cap (medium when unmeasured)
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// the screen (or a window or monitor of it)
    Screen,
    /// a moving test pattern and a tone: try pixelpass without sharing anything real
    Test,
}

#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    /// Pick a window to share (X11: click it; Wayland: pick it in the portal dialog)
    #[arg(long, conflicts_with_all = ["window_id", "monitor"])]
    pub window: bool,

    /// Share the X11 window with this id (e.g. 0x1e00007), for scripts
    #[arg(long, value_name = "ID", conflicts_with = "monitor", value_parser = parse_window_id)]
    pub window_id: Option<u64>,

    /// Share one monitor (X11: an xrandr output name such as HDMI-1; on Wayland the portal
    /// dialog picks it)
    #[arg(long, value_name = "NAME")]
    pub monitor: Option<String>,

    /// Capture backend; autodetected from WAYLAND_DISPLAY, DISPLAY, XDG_SESSION_TYPE
    #[arg(long, value_enum, value_name = "SERVER")]
    pub display_server: Option<DisplayServer>,

    /// What to share
    #[arg(long, value_enum, default_value = "screen")]
    pub source: Source,

    /// Use software H.264 (x264) even if a hardware encoder works
    #[arg(long)]
    pub no_hwencode: bool,

    /// Use this GStreamer H.264 encoder (e.g. x264enc, vah264enc)
    #[arg(long, value_name = "NAME", conflicts_with = "no_hwencode")]
    pub encoder: Option<String>,

    /// Share video only
    #[arg(long)]
    pub no_audio: bool,

    /// Share only the sound of this app (PipeWire application.name or binary, any case;
    /// repeatable; also apps that start later). The host keeps hearing it as before
    #[arg(long, value_name = "NAME", conflicts_with_all = ["no_audio", "exclude_app"])]
    pub app: Vec<String>,

    /// Share all sound except this app's, e.g. your voice-chat app (repeatable)
    #[arg(long, value_name = "NAME", conflicts_with = "no_audio")]
    pub exclude_app: Vec<String>,

    /// Wayland: forget the screen or window remembered from the last share, so the portal
    /// dialog asks again
    #[arg(long)]
    pub forget_source: bool,

    /// Most viewers at once; default from the bandwidth test, else 2
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_viewers: Option<u32>,

    /// Quality preset (overridden field by field by --max-height, --bitrate, --framerate)
    #[arg(long, value_enum, default_value = "auto")]
    pub quality: Quality,

    /// Largest video height in pixels (aspect ratio kept)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=8640))]
    pub max_height: Option<u32>,

    /// Video bitrate in kbit/s
    #[arg(long, value_name = "KBPS", value_parser = clap::value_parser!(u32).range(100..=100_000))]
    pub bitrate: Option<u32>,

    /// Frames per second
    #[arg(long, value_name = "FPS", value_parser = clap::value_parser!(u32).range(1..=120))]
    pub framerate: Option<u32>,

    /// Keep the host identity in this file: the same ticket after a restart
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,

    /// Take commands as JSON lines on stdin: {"cmd":"kick","id":"…"}, {"cmd":"revoke"},
    /// {"cmd":"stop"}; the end of stdin stops the host (for GUIs and scripts)
    #[arg(long, value_enum, value_name = "FROM")]
    pub control: Option<ControlFrom>,

    /// Encodings viewers are switched between by their path: auto (the quality plus ~1/3 of
    /// its bitrate at 1/2 of its height and ~1/8 at 1/4, at least 180 lines), off (one
    /// encode), or lower rungs as HEIGHT:KBPS,... (e.g. 480:800,240:250)
    #[arg(long, value_name = "LIST", default_value = "auto")]
    pub renditions: crate::quality::Renditions,

    /// Also record what viewers receive (the top rendition) to FILE: .ts as sent, .mkv, or
    /// .mp4 (fragmented: playable even if cut off). Capture then runs from the start,
    /// viewers or not
    #[arg(long, value_name = "FILE", value_parser = parse_record)]
    pub record: Option<PathBuf>,

    /// Also publish the share, without re-encoding, to rtmp://HOST/APP/KEY, rtmps://… (FLV) or
    /// srt://HOST:PORT?streamid=…&passphrase=… (MPEG-TS); repeatable. Reconnects with backoff;
    /// capture then runs from the start, viewers or not
    #[arg(long, value_name = "URL")]
    pub publish: Vec<crate::publish::PublishUrl>,

    /// Where the browser viewer page is published (scripts/build-web.sh builds it): print a
    /// link that opens the ticket in it next to the ticket (default: the config's `[web] page`)
    #[arg(long, value_name = "URL", env = "PIXELPASS_WEB_PAGE")]
    pub web_page: Option<crate::web_page::WebPage>,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Player {
    /// mpv with its low-latency profile
    Mpv,
    /// VLC with low network caching
    Vlc,
    /// a built-in GStreamer playback window
    Gst,
    /// no player: print the local URL and an mpv command
    None,
}

#[derive(Debug, Clone, Args)]
pub struct ViewArgs {
    /// The ticket the host printed (pp1…), or the share's URI (pixelpass://pp1…)
    #[arg(value_name = "TICKET", value_parser = parse_ticket)]
    pub ticket: Ticket,

    /// Player to open on the local stream
    #[arg(long, value_enum, default_value = "mpv")]
    pub player: Player,

    /// Print the live figures once a second (path, rendition, RTT, bitrate, capture → receive
    /// and, with --player gst, capture → display; GOPs left out)
    #[arg(long)]
    pub stats: bool,

    /// Local address players connect to (loopback only)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0", value_parser = parse_loopback)]
    pub listen: SocketAddr,

    /// Also record what this viewer receives to FILE (.ts as received, .mkv, or .mp4 in
    /// fragments), without re-encoding; also with --player none
    #[arg(long, value_name = "FILE", value_parser = parse_record)]
    pub record: Option<PathBuf>,

    /// The most this viewer receives from a host with several renditions (low for a metered
    /// connection); auto: whatever the path carries
    #[arg(long, value_enum, default_value = "auto")]
    pub quality: Quality,

    #[command(flatten)]
    pub common: Common,
}

/// A recording target: a known extension in a folder that exists.
fn parse_record(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    crate::record::check_target(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

fn parse_ticket(s: &str) -> Result<Ticket, String> {
    s.parse().map_err(|e| format!("ticket is not valid: {e}"))
}

/// An X11 window id, as `xwininfo` prints it (0x1e00007) or in decimal (31457287).
fn parse_window_id(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    v.map_err(|_| "not a window id (like 0x1e00007 or 31457287)".to_string())
}

/// The players' address: loopback only, since the local stream is for this machine.
fn parse_loopback(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| "not an address like 127.0.0.1:0".to_string())?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the local stream is for this machine only"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    fn ticket() -> String {
        Ticket {
            addr: iroh::EndpointAddr::new(iroh::SecretKey::from_bytes(&[1; 32]).public()),
            secret: [0; 16],
        }
        .to_string()
    }

    /// The message clap prints for a value it refused (exit code 2).
    fn refused(args: &[&str]) -> String {
        let e = Cli::try_parse_from(args).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{e}");
        e.to_string()
    }

    #[test]
    fn shortcuts_and_flags_parse() {
        let t = ticket();
        let c = Cli::try_parse_from(["pixelpass", &t]).unwrap();
        assert_eq!(c.ticket.map(|t| t.to_string()), Some(t.clone()));
        let c = Cli::try_parse_from(["pixelpass", "host", "--quality", "low", "--max-viewers", "3"]).unwrap();
        let Some(Command::Host(h)) = c.command else { panic!() };
        assert_eq!((h.quality, h.max_viewers), (Quality::Low, Some(3)));
        assert!(Cli::try_parse_from(["pixelpass", "host", "--max-viewers", "0"]).is_err());
        assert!(Cli::try_parse_from(["pixelpass", "host", "--window", "--window-id", "1"]).is_err());
        let c = Cli::try_parse_from(["pixelpass", "view", &t, "--player", "none"]).unwrap();
        assert!(matches!(c.command, Some(Command::View(v)) if v.player == Player::None));
    }

    #[test]
    fn pixelpass_alone_takes_host_options_but_not_with_a_subcommand() {
        let c = Cli::try_parse_from(["pixelpass", "--no-audio", "--quality", "low"]).unwrap();
        assert!(c.command.is_none() && c.host.no_audio && c.host.quality == Quality::Low);
        assert!(Cli::try_parse_from(["pixelpass", "--no-audio", "host"]).is_err());
        assert!(Cli::try_parse_from(["pixelpass", "--quality", "nonsense"]).is_err());
    }

    #[test]
    fn bad_tickets_and_non_loopback_listen_are_usage_errors() {
        let e = refused(&["pixelpass", "view", "hello"]);
        assert!(e.contains("ticket is not valid"), "{e}");
        let t = ticket();
        let e = refused(&["pixelpass", "view", &t, "--listen", "0.0.0.0:8080"]);
        assert!(e.contains("not a loopback address"), "{e}");
        let e = refused(&["pixelpass", "view", &t, "--listen", "localhost"]);
        assert!(e.contains("--listen") && e.contains("not an address"), "{e}");
        let c = Cli::try_parse_from(["pixelpass", "view", &t, "--listen", "127.0.0.1:0"]).unwrap();
        assert!(matches!(c.command, Some(Command::View(v)) if v.listen.ip().is_loopback()));
        let e = refused(&["pixelpass", "nonsense-ticket"]);
        assert!(e.contains("ticket is not valid"), "{e}");
    }

    #[test]
    fn relay_bind_and_window_id_are_typed() {
        let host = |extra: &[&str]| {
            let mut args = vec!["pixelpass", "host"];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(args).unwrap().command {
                Some(Command::Host(h)) => h,
                _ => panic!("a host command"),
            }
        };
        assert_eq!(host(&["--relay", "disabled"]).common.relay, Some(Relay::Disabled));
        assert_eq!(host(&["--relay", "default"]).common.relay, Some(Relay::Default));
        assert!(matches!(
            host(&["--relay", "http://127.0.0.1:3340"]).common.relay,
            Some(Relay::Custom(_))
        ));
        let e = refused(&["pixelpass", "host", "--relay", "not-a-url"]);
        assert!(e.contains("--relay") && e.contains("not-a-url"), "{e}");
        assert_eq!(
            host(&["--bind", "127.0.0.1:0"]).common.bind,
            Some("127.0.0.1:0".parse().unwrap())
        );
        let e = refused(&["pixelpass", "host", "--bind", "127.0.0.1"]);
        assert!(e.contains("--bind"), "{e}");
        assert_eq!(host(&["--window-id", "0x1e00007"]).window_id, Some(0x1e00007));
        assert_eq!(host(&["--window-id", "31457287"]).window_id, Some(31457287));
        let e = refused(&["pixelpass", "host", "--window-id", "xclock"]);
        assert!(e.contains("--window-id") && e.contains("not a window id"), "{e}");
    }
}
