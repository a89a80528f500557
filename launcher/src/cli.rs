//! Command line: `pixelpass host`, `pixelpass view <ticket>` and the seed's shortcuts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// P2P screen sharing for Linux over iroh: the host shares its screen and sound and prints a
/// ticket; a viewer pastes the ticket and watches in mpv or VLC. No signup, no port
/// forwarding, no server.
#[derive(Debug, Parser)]
#[command(
    name = "pixelpass",
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = "Shortcuts: `pixelpass <TICKET>` views; `pixelpass` alone hosts (ticket on stdout).\n\
                  Exit codes: 0 ok, 2 usage or bad ticket, 1 runtime error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// A ticket to view (same as `pixelpass view TICKET`)
    #[arg(value_name = "TICKET")]
    pub ticket: Option<String>,

    /// Remove orphaned PipeWire state left by a crashed host and exit
    #[arg(long)]
    pub repair: bool,

    /// Re-run the upstream bandwidth test and exit
    #[arg(long)]
    pub reconfigure: bool,
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
    /// connections only. Default: n0's public relays
    #[arg(long, value_name = "URL", env = "PIXELPASS_RELAY")]
    pub relay: Option<String>,

    /// Write events as JSON lines on stdout (see README "Events")
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub events: Option<EventFormat>,

    /// Bind the iroh endpoint to one address (e.g. 127.0.0.1:0) instead of all interfaces
    #[arg(long, value_name = "ADDR", hide = true)]
    pub bind: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventFormat {
    Json,
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
    #[arg(long, value_name = "ID", conflicts_with = "monitor")]
    pub window_id: Option<String>,

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
    /// The ticket the host printed
    #[arg(value_name = "TICKET")]
    pub ticket: String,

    /// Player to open on the local stream
    #[arg(long, value_enum, default_value = "mpv")]
    pub player: Player,

    /// Local address players connect to (loopback only)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: String,

    #[command(flatten)]
    pub common: Common,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn shortcuts_and_flags_parse() {
        let c = Cli::try_parse_from(["pixelpass", "pp1abc"]).unwrap();
        assert_eq!(c.ticket.as_deref(), Some("pp1abc"));
        let c = Cli::try_parse_from(["pixelpass", "host", "--quality", "low", "--max-viewers", "3"]).unwrap();
        let Some(Command::Host(h)) = c.command else { panic!() };
        assert_eq!((h.quality, h.max_viewers), (Quality::Low, Some(3)));
        assert!(Cli::try_parse_from(["pixelpass", "host", "--max-viewers", "0"]).is_err());
        assert!(Cli::try_parse_from(["pixelpass", "host", "--window", "--window-id", "1"]).is_err());
        let c = Cli::try_parse_from(["pixelpass", "view", "pp1x", "--player", "none"]).unwrap();
        assert!(matches!(c.command, Some(Command::View(v)) if v.player == Player::None));
    }
}
