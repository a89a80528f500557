//! Capture backends: each turns the host options into a GStreamer video source description
//! and the size of what it captures. Swappable: X11 (`ximagesrc`) and the Wayland ScreenCast portal (`pipewiresrc`).

pub mod wayland;
pub mod x11;

use anyhow::Result;

use crate::cli::{DisplayServer, HostArgs, Source};

/// Which display server to capture from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    X11,
    Wayland,
}

/// The seed's autodetection: WAYLAND_DISPLAY → Wayland, else DISPLAY → X11, else
/// XDG_SESSION_TYPE. `--display-server` overrides.
pub fn detect(forced: Option<DisplayServer>, env: &dyn Fn(&str) -> Option<String>) -> Option<Backend> {
    match forced {
        Some(DisplayServer::X11) => return Some(Backend::X11),
        Some(DisplayServer::Wayland) => return Some(Backend::Wayland),
        None => {}
    }
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    if set("WAYLAND_DISPLAY") {
        Some(Backend::Wayland)
    } else if set("DISPLAY") {
        Some(Backend::X11)
    } else {
        match env("XDG_SESSION_TYPE").as_deref() {
            Some("wayland") => Some(Backend::Wayland),
            Some("x11") => Some(Backend::X11),
            _ => None,
        }
    }
}

/// What to capture, resolved: a GStreamer source description and its native size.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `gst-launch` description of the raw video source (live).
    pub source: String,
    pub width: u32,
    pub height: u32,
    /// What it is, for people ("the whole screen 1920x1080", "window 0x1e00007").
    pub what: String,
    /// The X11 window being shared, watched so its closing ends the share cleanly.
    pub window: Option<u64>,
    /// Captured through the ScreenCast portal: source and size are known only once the
    /// portal has answered (when the first viewer connects).
    pub portal: bool,
}

/// Resolves the capture plan for the host options.
pub fn plan(args: &HostArgs) -> Result<Plan> {
    if args.source == Source::Test {
        return Ok(Plan {
            source: "videotestsrc is-live=true pattern=ball".into(),
            width: 1280,
            height: 720,
            what: "a test pattern".into(),
            window: None,
            portal: false,
        });
    }
    match detect(args.display_server, &|k| std::env::var(k).ok()) {
        Some(Backend::X11) => x11::plan(args),
        Some(Backend::Wayland) => wayland::plan(args),
        None => Err(crate::UsageError(
            "no display found (neither WAYLAND_DISPLAY nor DISPLAY is set): run pixelpass inside your desktop \
             session, or use --source test to try it without a screen"
                .into(),
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn autodetection_follows_the_seed() {
        assert_eq!(
            detect(None, &env(&[("WAYLAND_DISPLAY", "wayland-0"), ("DISPLAY", ":0")])),
            Some(Backend::Wayland)
        );
        assert_eq!(detect(None, &env(&[("DISPLAY", ":0")])), Some(Backend::X11));
        assert_eq!(
            detect(None, &env(&[("WAYLAND_DISPLAY", ""), ("DISPLAY", ":1")])),
            Some(Backend::X11)
        );
        assert_eq!(
            detect(None, &env(&[("XDG_SESSION_TYPE", "wayland")])),
            Some(Backend::Wayland)
        );
        assert_eq!(detect(None, &env(&[("XDG_SESSION_TYPE", "tty")])), None);
        assert_eq!(
            detect(Some(DisplayServer::X11), &env(&[("WAYLAND_DISPLAY", "w")])),
            Some(Backend::X11)
        );
    }
}
