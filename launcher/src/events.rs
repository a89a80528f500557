//! The event stream: `--events json` writes one JSON object per line on stdout (what the GUI
//! and scripts drive); without it, people get the ticket on stdout, messages on stderr and,
//! on a terminal, a live status line.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;

use serde::Serialize;

/// One event. Serialized as `{"event": "<kebab-case name>", ...fields}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Host: the share ticket (also when it changes), and the link that opens it in the
    /// browser viewer page when one is configured (`--web-page`) and a browser can reach the
    /// host (the ticket names a relay).
    Ticket {
        ticket: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        browser_link: Option<String>,
    },
    /// Host: capture started because a first viewer joined.
    CaptureStarted {
        what: String,
        encoder: String,
        width: u32,
        height: u32,
        fps: u32,
        bitrate_kbps: u32,
        audio: bool,
        /// Wall-clock time (ns since the Unix epoch) of the capture's running time 0: a frame
        /// with MPEG-TS PTS `p` was captured at `epoch + (p − 3600 s)` (mpegtsmux starts PTS at
        /// one hour). Lets a viewer measure capture → display latency.
        epoch_unix_ns: u64,
        /// Wayland: the ScreenCast portal session's object path.
        #[serde(skip_serializing_if = "Option::is_none")]
        portal_session: Option<String>,
    },
    /// Host: capture stopped (no viewer left, or the share ends).
    CaptureStopped { reason: String },
    /// Host: a viewer joined.
    ViewerJoined { id: String, name: String, path: String },
    /// Host: a viewer left; reason: closed, kicked, revoked, slow, host stopped, ...
    ViewerLeft { id: String, reason: String },
    /// Host, every second: viewers, upstream bitrate, per-viewer path and rendition (same
    /// order).
    HostStats {
        viewers: u32,
        bitrate_kbps: f64,
        dropped_gops: u64,
        paths: Vec<String>,
        /// The viewers' ids, in the order of `paths` (a path changes while a viewer watches:
        /// connections start on the relay, then go direct).
        ids: Vec<String>,
        /// Each viewer's rendition, in the order of `paths`.
        renditions: Vec<String>,
        /// Each viewer's figures, in the order of `paths`.
        per_viewer: Vec<ViewerFigures>,
    },
    /// Host: a viewer was moved to another rendition at a GOP boundary; reason: congested
    /// (its path does not carry the one it was on) or headroom (a probe showed it carries more).
    RenditionChanged {
        id: String,
        from: String,
        to: String,
        reason: String,
    },
    /// Viewer: connected to the host; `id` is what the host calls this viewer (its
    /// `viewer-joined` id; empty when the host does not say).
    Connected { id: String, path: String, rtt_ms: f64 },
    /// Viewer: the path changed (direct / relay).
    Path { path: String },
    /// Viewer: the local URL players connect to.
    Url { url: String },
    /// Viewer: a player was started.
    PlayerStarted { player: String, pid: u32 },
    /// Viewer: the player exited.
    PlayerExited { player: String, code: Option<i32> },
    /// Viewer, every second: path, bitrate, latency, GOPs skipped whole and cut short.
    ViewerStats {
        path: String,
        /// The rendition being received (empty from a host with one).
        rendition: String,
        bitrate_kbps: f64,
        /// Round-trip time to the host (ms).
        rtt_ms: f64,
        latency_ms: f64,
        /// Capture → display through the built-in player (`--player gst`), p50 over the last
        /// second; absent with other players.
        #[serde(skip_serializing_if = "Option::is_none")]
        display_latency_ms: Option<f64>,
        gops_skipped: u64,
        gops_cut: u64,
        reconnects: u64,
        players: u32,
    },
    /// Recording to `path` started (`--record`).
    Recording { path: String },
    /// The recording is complete: `bytes` written to `path`.
    Recorded { path: String, bytes: u64 },
    /// A publish target's state (`--publish`): `connecting`, `live`, or `retrying` with the
    /// reason; `url` hides the stream key and passphrase.
    PublishState {
        url: String,
        state: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Something worth knowing that does not stop anything.
    Warning { message: String },
    /// What ended the run with a failure; `kind` when a viewer's failure has one
    /// (`host-full`, `not-authorized`, `unreachable`, `version`).
    Error {
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        kind: Option<&'static str>,
    },
    /// The run ended normally.
    Ended { reason: String },
}

/// A front end's say in how events are shown to people (the menu's host screen): extra lines
/// after an event, and its own status line. Not used with `--events json`.
pub trait Hook: Send + Sync {
    /// Called after `ev` was shown, with the terminal's stderr.
    fn after(&self, ev: &Event, err: &mut dyn std::io::Write);
    /// The status line for a stats event, instead of the plain one; `width` is the
    /// terminal's (a longer line is cut to it).
    fn status_line(&self, ev: &Event, width: usize) -> Option<String>;
}

/// One viewer's figures in `host-stats`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ViewerFigures {
    pub id: String,
    pub path: String,
    pub rendition: String,
    /// Round-trip time on its path (ms; -1 unknown).
    pub rtt_ms: f64,
    /// What the host sent it over the last second.
    pub bitrate_kbps: f64,
    /// How far its delivery runs behind the newest frame (ms).
    pub lag_ms: u64,
}

/// Where events go.
pub struct Events {
    json: bool,
    /// Stats go to a status line (a terminal, human output).
    status_line: bool,
    /// Whether a status line is on screen now (the next message clears it first). The lock
    /// also keeps two events' lines from interleaving.
    status_line_shown: Mutex<bool>,
    hook: Option<Box<dyn Hook>>,
    /// Viewer stats as a line each second (`view --stats`), not a status line.
    pub stats_lines: bool,
}

impl Events {
    pub fn new(json: bool) -> Self {
        Events {
            json,
            status_line: !json && std::io::stderr().is_terminal(),
            status_line_shown: Mutex::new(false),
            hook: None,
            stats_lines: false,
        }
    }

    /// Human output shaped by a front end's [`Hook`].
    pub fn with_hook(hook: Box<dyn Hook>) -> Self {
        Events {
            hook: Some(hook),
            ..Events::new(false)
        }
    }

    /// A line for people on stderr (clears the status line first); nothing with JSON.
    pub fn note(&self, line: &str) {
        if self.json {
            return;
        }
        let mut status_shown = self.status_line_shown.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = std::io::stderr().lock();
        clear_status_line(&mut status_shown, &mut err);
        let _ = writeln!(err, "{line}");
    }

    /// The program is done with the terminal: the status line, if one is on screen, goes, so
    /// what comes next (the shell's prompt) starts on a line of its own.
    pub fn end(&self) {
        let mut status_shown = self.status_line_shown.lock().unwrap_or_else(|e| e.into_inner());
        clear_status_line(&mut status_shown, &mut std::io::stderr().lock());
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Emits an event: a JSON line, or the human form (ticket alone on stdout, the rest on
    /// stderr, stats as a status line on a terminal).
    pub fn emit(&self, ev: Event) {
        let mut status_shown = self.status_line_shown.lock().unwrap_or_else(|e| e.into_inner());
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut out, &ev);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
            return;
        }
        let mut err = std::io::stderr().lock();
        clear_status_line(&mut status_shown, &mut err);
        if let Event::Ticket { ticket, browser_link } = &ev {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{ticket}");
            let _ = out.flush();
            if let Some(link) = browser_link {
                let _ = writeln!(err, "pixelpass: watch in a browser: {link}");
            }
        } else if let Some(line) = self.stats_lines.then(|| stats_line(&ev)).flatten() {
            let _ = writeln!(err, "{line}");
        } else if let Some(status) = status_line(&ev) {
            if self.status_line {
                // Only the last row can be cleared: the line must not wrap.
                let width = terminal_width();
                let status = self
                    .hook
                    .as_ref()
                    .and_then(|h| h.status_line(&ev, width))
                    .unwrap_or(status);
                let _ = write!(err, "{}", fit(&status, width));
                let _ = err.flush();
                *status_shown = true;
            }
        } else {
            let _ = writeln!(err, "pixelpass: {}", human_line(&ev));
        }
        if let Some(h) = &self.hook {
            h.after(&ev, &mut err);
        }
    }
}

/// Clears the status line if one is on screen, so the next line takes its place.
fn clear_status_line(shown: &mut bool, err: &mut impl std::io::Write) {
    if std::mem::take(shown) {
        let _ = write!(err, "\r\x1b[K");
    }
}

/// The terminal's width in columns (80 when it cannot tell).
fn terminal_width() -> usize {
    match crossterm::terminal::size() {
        Ok((cols, _)) if cols > 0 => usize::from(cols),
        _ => 80,
    }
}

/// `line` cut to fit `width` columns with room for the cursor (a line filling the last
/// column would wrap on some terminals), ending in "…" when cut.
pub fn fit(line: &str, width: usize) -> String {
    use unicode_width::UnicodeWidthChar as _;
    let room = width.saturating_sub(1);
    if unicode_width::UnicodeWidthStr::width(line) <= room {
        return line.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in line.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > room {
            break;
        }
        out.push(c);
        used += w;
    }
    out + "…"
}

/// The host's status line: "● {who} · 2.4 Mbit/s", then `extra` (a front end's keys).
pub fn host_status(who: &str, bitrate_kbps: f64, extra: &str) -> String {
    format!("● {who} · {:.1} Mbit/s{extra}", bitrate_kbps / 1000.0)
}

/// The status line for a stats event; None for other events.
fn status_line(ev: &Event) -> Option<String> {
    match ev {
        Event::HostStats {
            viewers,
            bitrate_kbps,
            paths,
            ..
        } => {
            let s = if *viewers == 1 { "" } else { "s" };
            let who = if paths.is_empty() {
                format!("{viewers} viewer{s}")
            } else {
                format!("{viewers} viewer{s} ({})", paths.join(", "))
            };
            Some(host_status(&who, *bitrate_kbps, ""))
        }
        Event::ViewerStats {
            path,
            rendition,
            bitrate_kbps,
            latency_ms,
            ..
        } => Some(format!(
            "● {path}{} · {:.1} Mbit/s · {latency_ms:.0} ms behind capture",
            if rendition.is_empty() {
                String::new()
            } else {
                format!(" · {rendition}")
            },
            bitrate_kbps / 1000.0
        )),
        _ => None,
    }
}

/// Every live figure of a viewer's stats, for `view --stats`.
fn stats_line(ev: &Event) -> Option<String> {
    let Event::ViewerStats {
        path,
        rendition,
        bitrate_kbps,
        rtt_ms,
        latency_ms,
        display_latency_ms,
        gops_skipped,
        gops_cut,
        ..
    } = ev
    else {
        return None;
    };
    let rendition = if rendition.is_empty() { "-" } else { rendition };
    let display = display_latency_ms.map_or(String::new(), |d| format!(" · capture→display {d:.0} ms"));
    Some(format!(
        "{path} · {rendition} · RTT {rtt_ms:.0} ms · {:.2} Mbit/s · capture→receive {latency_ms:.0} ms{display} · GOPs skipped {gops_skipped}, cut {gops_cut}",
        bitrate_kbps / 1000.0
    ))
}

/// The line people read on stderr for an event.
fn human_line(ev: &Event) -> String {
    match ev {
        Event::CaptureStarted {
            what,
            width,
            height,
            fps,
            bitrate_kbps,
            audio,
            ..
        } => format!(
            "capturing {what} as {width}x{height}@{fps} {bitrate_kbps} kbit/s{}",
            if *audio { " with sound" } else { ", no sound" }
        ),
        Event::CaptureStopped { reason } => format!("capture stopped: {reason}"),
        Event::ViewerJoined { id, name, path } => format!("viewer {name} ({id}) joined over {path}"),
        Event::ViewerLeft { id, reason } => format!("viewer {id} left: {reason}"),
        Event::RenditionChanged { id, from, to, reason } => format!("viewer {id}: {from} → {to} ({reason})"),
        Event::Connected { path, rtt_ms, .. } => format!("connected to the host over {path} ({rtt_ms:.0} ms RTT)"),
        Event::Path { path } => format!("path is now {path}"),
        Event::Url { url } => format!("stream at {url}"),
        Event::PlayerStarted { player, pid } => format!("started {player} (pid {pid})"),
        Event::PlayerExited { player, code } => {
            format!(
                "{player} exited{}",
                code.map(|c| format!(" with code {c}")).unwrap_or_default()
            )
        }
        Event::Recording { path } => format!("recording to {path}"),
        Event::Recorded { path, bytes } => format!("recorded {:.1} MB to {path}", *bytes as f64 / 1e6),
        Event::PublishState { url, state, reason } => match reason {
            Some(r) => format!("publish {url}: {state} ({r})"),
            None => format!("publish {url}: {state}"),
        },
        Event::Warning { message } => format!("warning: {message}"),
        Event::Error { message, .. } => format!("error: {message}"),
        Event::Ended { reason } => reason.clone(),
        Event::Ticket { ticket, .. } => ticket.clone(),
        Event::HostStats { .. } | Event::ViewerStats { .. } => status_line(ev).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_schema() {
        let v = serde_json::to_value(Event::ViewerLeft {
            id: "ab-1".into(),
            reason: "kicked".into(),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "viewer-left", "id": "ab-1", "reason": "kicked"})
        );
        let v = serde_json::to_value(Event::Ticket {
            ticket: "pp1x".into(),
            browser_link: None,
        })
        .unwrap();
        assert_eq!(v, serde_json::json!({"event": "ticket", "ticket": "pp1x"}));
        let v = serde_json::to_value(Event::Ticket {
            ticket: "pp1x".into(),
            browser_link: Some("https://example.org/#pp1x".into()),
        })
        .unwrap();
        assert_eq!(v["browser_link"], "https://example.org/#pp1x");
        let v = serde_json::to_value(Event::Error {
            message: "host is full".into(),
            kind: Some("host-full"),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "error", "message": "host is full", "kind": "host-full"})
        );
        let v = serde_json::to_value(Event::Error {
            message: "x".into(),
            kind: None,
        })
        .unwrap();
        assert!(v.get("kind").is_none(), "no kind when there is none: {v}");
    }

    #[test]
    fn a_status_line_is_cut_to_the_terminal() {
        assert_eq!(fit("● 1 viewer", 80), "● 1 viewer");
        let long = "● ".to_string() + &"x".repeat(100);
        let cut = fit(&long, 80);
        assert_eq!(cut.chars().count(), 79, "{cut}");
        assert!(cut.ends_with('…'));
        // Wide characters count double.
        assert_eq!(
            unicode_width::UnicodeWidthStr::width(fit(&"名".repeat(50), 20).as_str()),
            19
        );
        assert_eq!(fit("abcdef", 6), "abcd…");
    }
}
