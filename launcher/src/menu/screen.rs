//! The menu's host screen: the ticket with its QR code, copied to the clipboard (again after a
//! revoke), a status line that names the viewers, and keys: `k` kick (pick which), `r` a new
//! ticket, `q` stop. Keys become [`HostCommand`]s, the host's one command API.

use std::io::{Read as _, Write};
use std::os::fd::AsRawFd as _;
use std::sync::{Arc, Mutex};

use crate::clipboard::Clipboard;
use crate::events::{Event, Events, Hook};
use crate::host::control::{Commander, HostCommand};

/// A viewer on the host screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub id: String,
    pub name: String,
    pub path: String,
}

/// The viewers now, as the events tell.
pub type Viewers = Arc<Mutex<Vec<Viewer>>>;

pub const KEYS: &str = "keys: k kick a viewer · r new ticket (the old one stops working) · q stop";

/// What the host screen adds to the events.
pub struct HostScreen {
    clipboard: Mutex<Clipboard>,
    viewers: Viewers,
}

impl HostScreen {
    pub fn new(viewers: Viewers) -> Self {
        HostScreen {
            clipboard: Mutex::new(Clipboard::default()),
            viewers,
        }
    }
}

impl Hook for HostScreen {
    fn after(&self, ev: &Event, err: &mut dyn Write) {
        match ev {
            Event::Ticket { ticket } => {
                match crate::qr::render(ticket) {
                    Ok(lines) => {
                        for l in lines {
                            let _ = writeln!(err, "{l}");
                        }
                    }
                    Err(e) => {
                        let _ = writeln!(err, "pixelpass: no QR code: {e:#}");
                    }
                }
                let copied = self.clipboard.lock().unwrap_or_else(|e| e.into_inner()).copy(ticket);
                let _ = writeln!(err, "pixelpass: the ticket above is {copied}: send it to your viewers");
                let _ = writeln!(err, "pixelpass: {KEYS}");
            }
            Event::ViewerJoined { id, name, path } => {
                let mut v = self.viewers.lock().unwrap_or_else(|e| e.into_inner());
                v.retain(|x| &x.id != id);
                v.push(Viewer {
                    id: id.clone(),
                    name: name.clone(),
                    path: path.clone(),
                });
            }
            Event::ViewerLeft { id, .. } => {
                self.viewers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|x| &x.id != id);
            }
            _ => {}
        }
    }

    fn status_line(&self, ev: &Event) -> Option<String> {
        let Event::HostStats { bitrate_kbps, .. } = ev else {
            return None;
        };
        let v = self.viewers.lock().unwrap_or_else(|e| e.into_inner());
        Some(status(&v, *bitrate_kbps))
    }
}

/// "● 2 viewers: alice (direct), bob (relay) · 2.4 Mbit/s · k/r/q".
pub fn status(viewers: &[Viewer], bitrate_kbps: f64) -> String {
    let who = if viewers.is_empty() {
        "no viewers yet".to_string()
    } else {
        let names: Vec<String> = viewers.iter().map(|v| format!("{} ({})", label(v), v.path)).collect();
        format!(
            "{} viewer{}: {}",
            viewers.len(),
            if viewers.len() == 1 { "" } else { "s" },
            names.join(", ")
        )
    };
    format!(
        "● {who} · {:.1} Mbit/s · k kick · r new ticket · q stop",
        bitrate_kbps / 1000.0
    )
}

fn label(v: &Viewer) -> &str {
    if v.name.is_empty() { &v.id } else { &v.name }
}

/// What a key does, given the state of the kick picker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    Command(HostCommand),
    /// Show the numbered viewers; the next key picks one.
    PickViewer,
    /// Tell people something.
    Say(String),
    Nothing,
}

/// Pure: a key press while hosting. `picking` is the list shown by the last `k`.
pub fn on_key(key: u8, picking: Option<&[Viewer]>, viewers: &[Viewer]) -> KeyAction {
    if let Some(list) = picking {
        let n = (key as char).to_digit(10).map(|d| d as usize);
        return match n.and_then(|n| n.checked_sub(1)).and_then(|i| list.get(i)) {
            Some(v) => KeyAction::Command(HostCommand::Kick { id: v.id.clone() }),
            None => KeyAction::Say("nobody kicked".into()),
        };
    }
    match key {
        b'k' | b'K' if viewers.is_empty() => KeyAction::Say("no viewer to kick".into()),
        b'k' | b'K' => KeyAction::PickViewer,
        b'r' | b'R' => KeyAction::Command(HostCommand::Revoke),
        b'q' | b'Q' => KeyAction::Command(HostCommand::Stop),
        _ => KeyAction::Nothing,
    }
}

/// The numbered list `k` shows.
pub fn pick_list(viewers: &[Viewer]) -> String {
    let mut s = String::from("kick which viewer? ");
    for (i, v) in viewers.iter().take(9).enumerate() {
        s += &format!("{}) {} ({}, {})  ", i + 1, label(v), v.id, v.path);
    }
    s + "(any other key: nobody)"
}

/// Reads keys from the terminal until the host ends (the process exits with this thread
/// blocked in read, which is fine: the terminal mode is restored by [`KeyMode`]'s Drop).
pub fn read_keys(commands: Commander, viewers: Viewers, events: Arc<Events>) {
    let mut picking: Option<Vec<Viewer>> = None;
    let mut stdin = std::io::stdin().lock();
    let mut byte = [0u8; 1];
    while let Ok(1) = stdin.read(&mut byte) {
        let now = viewers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let action = on_key(byte[0], picking.as_deref(), &now);
        picking = None;
        match action {
            KeyAction::Command(c) => {
                let stop = c == HostCommand::Stop;
                if let HostCommand::Kick { id } = &c {
                    events.note(&format!("pixelpass: kicking {id}"));
                }
                if commands.send(c).is_err() || stop {
                    return;
                }
            }
            KeyAction::PickViewer => {
                events.note(&format!("pixelpass: {}", pick_list(&now)));
                picking = Some(now);
            }
            KeyAction::Say(s) => events.note(&format!("pixelpass: {s}")),
            KeyAction::Nothing => {}
        }
    }
}

/// The terminal in key-at-a-time mode without echo, ctrl-c still a signal; restored on drop.
pub struct KeyMode {
    saved: Option<libc::termios>,
}

impl KeyMode {
    pub fn enter() -> KeyMode {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it or fails on a non-terminal.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return KeyMode { saved: None };
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: a valid termios for this terminal.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
        KeyMode { saved: Some(saved) }
    }
}

impl Drop for KeyMode {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores what tcgetattr returned.
            unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &t) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: &str, name: &str) -> Viewer {
        Viewer {
            id: id.into(),
            name: name.into(),
            path: "direct".into(),
        }
    }

    #[test]
    fn keys_become_host_commands() {
        let two = [v("a-1", "alice"), v("b-2", "")];
        assert_eq!(on_key(b'k', None, &two), KeyAction::PickViewer);
        assert_eq!(on_key(b'k', None, &[]), KeyAction::Say("no viewer to kick".into()));
        assert_eq!(
            on_key(b'2', Some(&two), &two),
            KeyAction::Command(HostCommand::Kick { id: "b-2".into() })
        );
        assert_eq!(on_key(b'3', Some(&two), &two), KeyAction::Say("nobody kicked".into()));
        assert_eq!(on_key(0x1b, Some(&two), &two), KeyAction::Say("nobody kicked".into()));
        assert_eq!(on_key(b'0', Some(&two), &two), KeyAction::Say("nobody kicked".into()));
        assert_eq!(on_key(b'r', None, &two), KeyAction::Command(HostCommand::Revoke));
        assert_eq!(on_key(b'q', None, &[]), KeyAction::Command(HostCommand::Stop));
        assert_eq!(on_key(b'x', None, &two), KeyAction::Nothing);
    }

    #[test]
    fn the_status_line_names_viewers_and_paths() {
        assert_eq!(
            status(&[v("a-1", "alice"), v("b-2", "")], 2400.0),
            "● 2 viewers: alice (direct), b-2 (direct) · 2.4 Mbit/s · k kick · r new ticket · q stop"
        );
        assert!(status(&[], 0.0).starts_with("● no viewers yet · 0.0 Mbit/s"));
        let l = pick_list(&[v("a-1", "alice")]);
        assert!(l.contains("1) alice (a-1, direct)"), "{l}");
    }
}
