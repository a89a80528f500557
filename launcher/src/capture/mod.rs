//! Capture backends: each turns the host options into a [`Target`]: a GStreamer video source
//! and its size (X11 `ximagesrc`, the test pattern), or the Wayland ScreenCast portal
//! (`pipewiresrc`), whose source is known only once the portal answers.

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

/// What the host captures, resolved from its options before any viewer comes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A source pixelpass opens itself: known now.
    Direct(DirectSource),
    /// The ScreenCast portal: the source and its size are known once the portal has answered
    /// (when the first viewer connects). `window`: a window is asked for, not a monitor.
    Portal { window: bool },
}

/// A video source GStreamer opens directly (`ximagesrc`, `videotestsrc`).
#[derive(Debug, Clone)]
pub struct DirectSource {
    /// `gst-launch` description of the raw video source (live).
    pub desc: String,
    /// Native size in pixels.
    pub size: (u32, u32),
    /// What it is, for people ("the whole screen (1920x1080)", "window 0x1e00007 (…)").
    pub what: String,
    /// The X11 window being shared, watched so its closing ends the share cleanly.
    pub window: Option<u64>,
}

impl Target {
    /// What is shared, for people.
    pub fn what(&self) -> String {
        match self {
            Target::Direct(d) => d.what.clone(),
            Target::Portal { window: true } => "a window (picked in the portal dialog)".into(),
            Target::Portal { window: false } => "the screen (picked in the portal dialog)".into(),
        }
    }
}

/// Resolves what to capture for the host options. Helper processes it runs (`xwininfo`,
/// `xrandr`) are killed if the returned future is dropped (ctrl-c while planning).
pub async fn resolve_target(args: &HostArgs) -> Result<Target> {
    if args.source == Source::Test {
        return Ok(Target::Direct(DirectSource {
            desc: "videotestsrc is-live=true pattern=ball".into(),
            size: (1280, 720),
            what: "a test pattern".into(),
            window: None,
        }));
    }
    match detect(args.display_server, &|k| std::env::var(k).ok()) {
        Some(Backend::X11) => x11::target(args).await,
        Some(Backend::Wayland) => wayland::target(args),
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
