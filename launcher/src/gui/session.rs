//! What the window shows about a running child, from its `--events json` lines: pure state,
//! so the rules (who is watching, which state to show, when to notify) are tested without a
//! window or a process.

use serde::Deserialize;

/// The events the window reads (README "Events"); others are ignored, so a newer headless
/// pixelpass can add some.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Incoming {
    Ticket {
        ticket: String,
    },
    CaptureStarted {
        what: String,
        encoder: String,
        width: u32,
        height: u32,
        fps: u32,
        bitrate_kbps: u32,
    },
    CaptureStopped {
        reason: String,
    },
    ViewerJoined {
        id: String,
        name: String,
        path: String,
    },
    ViewerLeft {
        id: String,
        reason: String,
    },
    HostStats {
        bitrate_kbps: f64,
        #[serde(default)]
        ids: Vec<String>,
        #[serde(default)]
        paths: Vec<String>,
        #[serde(default)]
        renditions: Vec<String>,
        /// Each viewer's figures (a newer host; the arrays above otherwise).
        #[serde(default)]
        per_viewer: Vec<PerViewer>,
    },
    Connected {
        path: String,
        rtt_ms: f64,
    },
    Path {
        path: String,
    },
    Url {
        url: String,
    },
    PlayerStarted {
        player: String,
    },
    PlayerExited {
        player: String,
        code: Option<i32>,
    },
    ViewerStats {
        path: String,
        #[serde(default)]
        rendition: String,
        bitrate_kbps: f64,
        latency_ms: f64,
    },
    Warning {
        message: String,
    },
    Error {
        message: String,
    },
    Ended {
        reason: String,
    },
    #[serde(other)]
    Other,
}

/// One line of the child's stdout; None when it is not an event (the child writes nothing
/// else there with `--events json`, but a line is never worth a crash).
pub fn parse(line: &str) -> Option<Incoming> {
    serde_json::from_str(line).ok()
}

/// A viewer in the host's list.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewerRow {
    pub id: String,
    pub name: String,
    /// direct / relay, from the latest stats (a path changes after the join).
    pub path: String,
    /// The rendition it receives (empty from a host with one).
    pub rendition: String,
    /// Round-trip time (ms), what the host sends it (kbit/s) and how far its delivery runs
    /// behind the newest frame (ms), from the latest stats; `None` before any.
    pub figures: Option<(f64, f64, u64)>,
}

/// One viewer's figures in the host's `host-stats`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PerViewer {
    pub id: String,
    pub rtt_ms: f64,
    pub bitrate_kbps: f64,
    pub lag_ms: u64,
}

/// Where a child is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Started, no ticket (host) or connection (viewer) yet.
    Starting,
    /// Running: the host has its ticket, the viewer is connected.
    Running,
    /// Asked to stop; waiting for the process to end.
    Stopping,
    /// The process ended: why, and whether that was a failure.
    Ended { reason: String, failed: bool },
}

/// The reason of the phase before the first share / connection (nothing to say yet).
pub const NOT_STARTED: &str = "not started";
pub const NOT_CONNECTED: &str = "not connected";

/// Something worth a desktop notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub summary: String,
    pub body: String,
}

/// A host child as the window sees it.
#[derive(Debug, Clone)]
pub struct HostSession {
    pub phase: Phase,
    pub ticket: Option<String>,
    pub viewers: Vec<ViewerRow>,
    /// Upstream bitrate of the share, all viewers.
    pub bitrate_kbps: f64,
    /// "1280x720@30 4000 kbit/s (x264enc)" once capture runs.
    pub capture: Option<String>,
    pub warnings: Vec<String>,
    /// The child's stated error, kept for the end.
    error: Option<String>,
}

impl Default for HostSession {
    fn default() -> Self {
        HostSession {
            phase: Phase::Starting,
            ticket: None,
            viewers: Vec::new(),
            bitrate_kbps: 0.0,
            capture: None,
            warnings: Vec::new(),
            error: None,
        }
    }
}

impl HostSession {
    /// No host: before the first share.
    pub fn idle() -> HostSession {
        HostSession {
            phase: Phase::Ended {
                reason: NOT_STARTED.into(),
                failed: false,
            },
            ..HostSession::default()
        }
    }

    /// Takes one event; returns a notice for a join or a leave.
    pub fn apply(&mut self, ev: Incoming) -> Option<Notice> {
        match ev {
            Incoming::Ticket { ticket } => {
                self.ticket = Some(ticket);
                if self.phase == Phase::Starting {
                    self.phase = Phase::Running;
                }
            }
            Incoming::CaptureStarted {
                what,
                encoder,
                width,
                height,
                fps,
                bitrate_kbps,
            } => {
                self.capture = Some(format!(
                    "{what}: {width}x{height}@{fps} {bitrate_kbps} kbit/s ({encoder})"
                ))
            }
            Incoming::CaptureStopped { .. } => self.capture = None,
            Incoming::ViewerJoined { id, name, path } => {
                self.viewers.retain(|v| v.id != id);
                let body = format!("{name} ({path})");
                self.viewers.push(ViewerRow {
                    id,
                    name,
                    path,
                    rendition: String::new(),
                    figures: None,
                });
                return Some(Notice {
                    summary: "Viewer joined".into(),
                    body,
                });
            }
            Incoming::ViewerLeft { id, reason } => {
                let i = self.viewers.iter().position(|v| v.id == id)?;
                let gone = self.viewers.remove(i);
                return Some(Notice {
                    summary: "Viewer left".into(),
                    body: format!("{} ({reason})", gone.name),
                });
            }
            Incoming::HostStats {
                bitrate_kbps,
                ids,
                paths,
                renditions,
                per_viewer,
            } => {
                self.bitrate_kbps = bitrate_kbps;
                for (i, id) in ids.iter().enumerate() {
                    if let Some(v) = self.viewers.iter_mut().find(|v| &v.id == id) {
                        v.path = paths.get(i).cloned().unwrap_or_default();
                        v.rendition = renditions.get(i).cloned().unwrap_or_default();
                        v.figures = per_viewer
                            .iter()
                            .find(|f| &f.id == id)
                            .map(|f| (f.rtt_ms, f.bitrate_kbps, f.lag_ms));
                    }
                }
            }
            Incoming::Warning { message } => self.warnings.push(message),
            Incoming::Error { message } => self.error = Some(message),
            Incoming::Ended { reason } => {
                self.error.get_or_insert(reason);
            }
            _ => {}
        }
        None
    }

    /// The process ended with `code` (None: killed by a signal).
    pub fn exited(&mut self, code: Option<i32>) {
        self.viewers.clear();
        self.phase = ended(code, self.error.take(), "the host stopped");
    }

    /// The state line: "Waiting for viewers…" / "Streaming to 2 viewers".
    pub fn state_line(&self) -> String {
        match &self.phase {
            Phase::Starting => "Starting…".into(),
            Phase::Stopping => "Stopping…".into(),
            Phase::Ended { reason, .. } => format!("Stopped: {reason}"),
            Phase::Running if self.viewers.is_empty() => "Waiting for viewers…".into(),
            Phase::Running => format!("Streaming to {}", viewers(self.viewers.len())),
        }
    }

    /// The tray's words: "hosting, 2 viewers".
    pub fn tray_line(&self) -> String {
        match &self.phase {
            Phase::Running | Phase::Starting => format!("hosting, {}", viewers(self.viewers.len())),
            Phase::Stopping => "stopping".into(),
            Phase::Ended { .. } => "idle".into(),
        }
    }
}

/// "1 viewer", "2 viewers".
pub fn viewers(n: usize) -> String {
    format!("{n} viewer{}", if n == 1 { "" } else { "s" })
}

/// The phase after an exit: a clean exit ends with the child's own reason, a failure with its
/// error (or the code).
fn ended(code: Option<i32>, said: Option<String>, normal: &str) -> Phase {
    match code {
        Some(0) => Phase::Ended {
            reason: said.unwrap_or_else(|| normal.into()),
            failed: false,
        },
        Some(c) => Phase::Ended {
            reason: said.unwrap_or_else(|| format!("pixelpass exited with code {c}")),
            failed: true,
        },
        None => Phase::Ended {
            reason: said.unwrap_or_else(|| "stopped".into()),
            failed: false,
        },
    }
}

/// A viewer child as the window sees it.
#[derive(Debug, Clone)]
pub struct ViewSession {
    pub phase: Phase,
    pub path: Option<String>,
    pub rtt_ms: Option<f64>,
    pub bitrate_kbps: Option<f64>,
    pub latency_ms: Option<f64>,
    pub rendition: String,
    pub url: Option<String>,
    pub player: Option<String>,
    pub warnings: Vec<String>,
    error: Option<String>,
}

impl Default for ViewSession {
    fn default() -> Self {
        ViewSession {
            phase: Phase::Starting,
            path: None,
            rtt_ms: None,
            bitrate_kbps: None,
            latency_ms: None,
            rendition: String::new(),
            url: None,
            player: None,
            warnings: Vec::new(),
            error: None,
        }
    }
}

impl ViewSession {
    /// No viewer: before the first Connect.
    pub fn idle() -> ViewSession {
        ViewSession {
            phase: Phase::Ended {
                reason: NOT_CONNECTED.into(),
                failed: false,
            },
            ..ViewSession::default()
        }
    }

    pub fn apply(&mut self, ev: Incoming) {
        match ev {
            Incoming::Connected { path, rtt_ms } => {
                self.path = Some(path);
                self.rtt_ms = Some(rtt_ms);
                if self.phase == Phase::Starting {
                    self.phase = Phase::Running;
                }
            }
            Incoming::Path { path } => self.path = Some(path),
            Incoming::Url { url } => self.url = Some(url),
            Incoming::PlayerStarted { player } => self.player = Some(player),
            Incoming::PlayerExited { player, code } => self.warnings.push(match code {
                Some(c) => format!("{player} exited with code {c}"),
                None => format!("{player} exited"),
            }),
            Incoming::ViewerStats {
                path,
                rendition,
                bitrate_kbps,
                latency_ms,
            } => {
                self.path = Some(path);
                self.rendition = rendition;
                self.bitrate_kbps = Some(bitrate_kbps);
                self.latency_ms = Some(latency_ms);
            }
            Incoming::Warning { message } => self.warnings.push(message),
            Incoming::Error { message } => self.error = Some(message),
            Incoming::Ended { reason } => {
                self.error.get_or_insert(reason);
            }
            _ => {}
        }
    }

    pub fn exited(&mut self, code: Option<i32>) {
        self.phase = ended(code, self.error.take(), "disconnected");
    }

    /// "Connected (direct) · RTT 3 ms · 2.4 Mbit/s · 120 ms behind capture · 720p".
    pub fn state_line(&self) -> String {
        match &self.phase {
            Phase::Starting => "Connecting…".into(),
            Phase::Stopping => "Disconnecting…".into(),
            Phase::Ended { reason, .. } => format!("Disconnected: {reason}"),
            Phase::Running => {
                let mut s = format!("Connected ({})", self.path.as_deref().unwrap_or("?"));
                if let Some(rtt) = self.rtt_ms {
                    s += &format!(" · RTT {rtt:.0} ms");
                }
                if let Some(b) = self.bitrate_kbps {
                    s += &format!(" · {:.1} Mbit/s", b / 1000.0);
                }
                if let Some(l) = self.latency_ms {
                    s += &format!(" · {l:.0} ms behind capture");
                }
                if !self.rendition.is_empty() {
                    s += &format!(" · {}", self.rendition);
                }
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(line: &str) -> Incoming {
        parse(line).unwrap_or_else(|| panic!("not an event: {line}"))
    }

    #[test]
    fn joins_and_leaves_make_the_list_and_notices() {
        let mut h = HostSession::default();
        assert_eq!(h.state_line(), "Starting…");
        assert!(h.apply(ev(r#"{"event":"ticket","ticket":"pp1abc"}"#)).is_none());
        assert_eq!(h.state_line(), "Waiting for viewers…");
        let n = h.apply(ev(
            r#"{"event":"viewer-joined","id":"a-1","name":"alice","path":"relay"}"#,
        ));
        assert_eq!(n.unwrap().body, "alice (relay)");
        h.apply(ev(
            r#"{"event":"host-stats","viewers":1,"bitrate_kbps":2500.0,"dropped_gops":0,"paths":["direct"],"ids":["a-1"],"renditions":["720p"],"per_viewer":[{"id":"a-1","path":"direct","rendition":"720p","rtt_ms":3.5,"bitrate_kbps":2400.0,"lag_ms":40}]}"#,
        ));
        assert_eq!(h.viewers[0].path, "direct", "the path follows the stats");
        assert_eq!(h.viewers[0].figures, Some((3.5, 2400.0, 40)));
        assert_eq!(h.state_line(), "Streaming to 1 viewer");
        assert_eq!(h.tray_line(), "hosting, 1 viewer");
        let n = h.apply(ev(r#"{"event":"viewer-left","id":"a-1","reason":"kicked"}"#));
        assert_eq!(n.unwrap().body, "alice (kicked)");
        assert!(
            h.apply(ev(r#"{"event":"viewer-left","id":"a-1","reason":"closed"}"#))
                .is_none(),
            "a viewer leaves once"
        );
        assert!(parse("not json").is_none());
        assert_eq!(parse(r#"{"event":"something-new","x":1}"#), Some(Incoming::Other));
    }

    #[test]
    fn the_end_says_why() {
        let mut h = HostSession::default();
        h.apply(ev(r#"{"event":"error","message":"no screen to share"}"#));
        h.exited(Some(1));
        assert_eq!(
            h.phase,
            Phase::Ended {
                reason: "no screen to share".into(),
                failed: true
            }
        );
        let mut v = ViewSession::default();
        v.apply(ev(
            r#"{"event":"error","message":"the host removed this viewer","kind":"kicked"}"#,
        ));
        v.exited(Some(1));
        assert_eq!(v.state_line(), "Disconnected: the host removed this viewer");
        let mut v = ViewSession::default();
        v.exited(None);
        assert!(matches!(v.phase, Phase::Ended { failed: false, .. }));
    }
}
