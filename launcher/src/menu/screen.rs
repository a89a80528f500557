//! The menu's host screen: the ticket with its QR code, copied to the clipboard (again after a
//! revoke), a status line that names the viewers, and keys: `k` kick (pick which), `r` a new
//! ticket, `q` stop. Keys become [`HostCommand`]s, the host's one command API.

use std::io::{Read as _, Write};
use std::os::fd::AsRawFd as _;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, Weak};

use crate::clipboard::Clipboard;
use crate::events::{Event, Events, Hook, host_status};
use crate::host::control::{Commander, HostCommand};

/// A viewer on the host screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub id: String,
    pub name: String,
    /// The path now (direct / relay), from the latest stats.
    pub path: String,
}

/// The viewers now, as the events tell.
pub type Viewers = Arc<Mutex<Vec<Viewer>>>;

pub const KEYS: &str = "keys: k kick a viewer · r new ticket (the old one stops working) · q stop";

/// What the host screen adds to the events. Printing only: the clipboard is another
/// thread's ([`copy_tickets`]).
pub struct HostScreen {
    viewers: Viewers,
    to_clipboard: Sender<String>,
}

impl HostScreen {
    pub fn new(viewers: Viewers, to_clipboard: Sender<String>) -> Self {
        HostScreen { viewers, to_clipboard }
    }

    /// Each viewer's path from the stats: it changes after the join (relay, then direct).
    fn update_paths(&self, ids: &[String], paths: &[String]) {
        let mut v = self.viewers.lock().unwrap_or_else(|e| e.into_inner());
        for (id, path) in ids.iter().zip(paths) {
            if let Some(x) = v.iter_mut().find(|x| &x.id == id) {
                x.path.clone_from(path);
            }
        }
    }
}

/// A thread of its own owns the clipboard: reaching the display can hang (over SSH with a
/// stale DISPLAY), and the share must not wait on it. It copies each ticket sent, says what
/// became of it, and keeps the contents served until the process exits.
pub fn copy_tickets(events: Weak<Events>) -> Sender<String> {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut clipboard = Clipboard::default();
        for ticket in rx {
            let copied = clipboard.copy(&ticket);
            let Some(events) = events.upgrade() else { return };
            events.note(&format!(
                "pixelpass: the ticket above is {copied}: send it to your viewers"
            ));
        }
    });
    tx
}

impl Hook for HostScreen {
    fn after(&self, ev: &Event, err: &mut dyn Write) {
        match ev {
            Event::Ticket { ticket, .. } => {
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
                let _ = writeln!(err, "pixelpass: {KEYS}");
                let _ = self.to_clipboard.send(ticket.clone());
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

    fn status_line(&self, ev: &Event, width: usize) -> Option<String> {
        let Event::HostStats {
            bitrate_kbps,
            ids,
            paths,
            ..
        } = ev
        else {
            return None;
        };
        self.update_paths(ids, paths);
        let v = self.viewers.lock().unwrap_or_else(|e| e.into_inner());
        Some(status(&v, *bitrate_kbps, width))
    }
}

/// "● 2 viewers: alice (direct), bob (relay) · 2.4 Mbit/s · k kick · r new ticket · q stop",
/// shortened until it fits `width` columns: the keys as "k/r/q", then the viewers counted by
/// path ("2 viewers (1 direct, 1 relay)"); cut as a last resort.
pub fn status(viewers: &[Viewer], bitrate_kbps: f64, width: usize) -> String {
    const KEYS_LONG: &str = " · k kick · r new ticket · q stop";
    const KEYS_SHORT: &str = " · k/r/q";
    let n = viewers.len();
    let counted = format!("{n} viewer{}", if n == 1 { "" } else { "s" });
    let named = if viewers.is_empty() {
        "no viewers yet".to_string()
    } else {
        let names: Vec<String> = viewers.iter().map(|v| format!("{} ({})", label(v), v.path)).collect();
        format!("{counted}: {}", names.join(", "))
    };
    let mut by_path: Vec<(&str, usize)> = Vec::new();
    for v in viewers {
        match by_path.iter_mut().find(|(p, _)| *p == v.path) {
            Some((_, c)) => *c += 1,
            None => by_path.push((&v.path, 1)),
        }
    }
    let paths: Vec<String> = by_path.iter().map(|(p, c)| format!("{c} {p}")).collect();
    let summary = if viewers.is_empty() {
        named.clone()
    } else {
        format!("{counted} ({})", paths.join(", "))
    };
    let fits = |s: &String| unicode_width::UnicodeWidthStr::width(s.as_str()) < width;
    [
        host_status(&named, bitrate_kbps, KEYS_LONG),
        host_status(&named, bitrate_kbps, KEYS_SHORT),
        host_status(&summary, bitrate_kbps, KEYS_SHORT),
    ]
    .into_iter()
    .find(fits)
    .unwrap_or_else(|| crate::events::fit(&host_status(&summary, bitrate_kbps, KEYS_SHORT), width))
}

fn label(v: &Viewer) -> &str {
    if v.name.is_empty() { &v.id } else { &v.name }
}

/// What a key does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    Command(HostCommand),
    /// Show the numbered viewers; a number and Enter picks one.
    PickViewer,
    /// Tell people something.
    Say(String),
    Nothing,
}

/// The kick picker after `k`: the viewers it showed and the number typed so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Picking {
    list: Vec<Viewer>,
    number: String,
}

/// Pure: a key press while hosting. While picking, digits make a number, Enter kicks that
/// viewer, Backspace takes a digit back, `q` still stops, and any other key gives up.
pub fn on_key(key: u8, picking: &mut Option<Picking>, viewers: &[Viewer]) -> KeyAction {
    if let Some(p) = picking {
        match key {
            b'0'..=b'9' => {
                p.number.push(key as char);
                return KeyAction::Nothing;
            }
            0x7f | 0x08 => {
                p.number.pop();
                return KeyAction::Nothing;
            }
            b'\n' | b'\r' => {
                let p = picking.take().unwrap_or_default();
                let n: Option<usize> = p.number.parse().ok();
                return match n.and_then(|n| n.checked_sub(1)).and_then(|i| p.list.get(i)) {
                    Some(v) => KeyAction::Command(HostCommand::Kick { id: v.id.clone() }),
                    None => KeyAction::Say(format!("nobody kicked: no viewer {:?} in the list", p.number)),
                };
            }
            b'q' | b'Q' => {}
            _ => {
                *picking = None;
                return KeyAction::Say("nobody kicked".into());
            }
        }
        *picking = None;
    }
    match key {
        b'k' | b'K' if viewers.is_empty() => KeyAction::Say("no viewer to kick".into()),
        b'k' | b'K' => {
            *picking = Some(Picking {
                list: viewers.to_vec(),
                number: String::new(),
            });
            KeyAction::PickViewer
        }
        b'r' | b'R' => KeyAction::Command(HostCommand::Revoke),
        b'q' | b'Q' => KeyAction::Command(HostCommand::Stop),
        _ => KeyAction::Nothing,
    }
}

/// The numbered list `k` shows.
pub fn pick_list(viewers: &[Viewer]) -> String {
    let mut s = String::from("kick which viewer? ");
    for (i, v) in viewers.iter().enumerate() {
        s += &format!("{}) {} ({}, {})  ", i + 1, label(v), v.id, v.path);
    }
    s + "(type its number and Enter; any other key: nobody)"
}

/// Reads keys from the terminal until the host ends (the process exits with this thread
/// blocked in read, which is fine: the terminal mode is restored by [`KeyMode`]'s Drop).
pub fn read_keys(commands: Commander, viewers: Viewers, events: Arc<Events>) {
    let mut picking: Option<Picking> = None;
    let mut stdin = std::io::stdin().lock();
    let mut byte = [0u8; 1];
    while let Ok(1) = stdin.read(&mut byte) {
        let now = viewers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match on_key(byte[0], &mut picking, &now) {
            KeyAction::Command(c) => {
                let stop = c == HostCommand::Stop;
                if let HostCommand::Kick { id } = &c {
                    events.note(&format!("pixelpass: kicking {id}"));
                }
                if commands.send(c).is_err() || stop {
                    return;
                }
            }
            KeyAction::PickViewer => events.note(&format!("pixelpass: {}", pick_list(&now))),
            KeyAction::Say(s) => events.note(&format!("pixelpass: {s}")),
            KeyAction::Nothing => {}
        }
    }
}

/// The terminal's mode before [`KeyMode`] changed it: what the panic hook puts back.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts the saved terminal mode back, dropping typed-ahead keys (they would reach the shell).
fn restore_terminal() {
    if let Some(t) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // SAFETY: restores what tcgetattr returned for this terminal.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSAFLUSH, &t) };
    }
}

/// The terminal in key-at-a-time mode without echo, ctrl-c still a signal; restored on drop
/// and on a panic. Enter it only once ctrl-c is handled (else the default action kills the
/// process with the terminal still changed).
pub struct KeyMode(());

impl KeyMode {
    pub fn enter() -> KeyMode {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it or fails on a non-terminal.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return KeyMode(());
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let next = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                next(info);
            }));
        });
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: a valid termios for this terminal.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
        KeyMode(())
    }
}

impl Drop for KeyMode {
    fn drop(&mut self) {
        restore_terminal();
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

    fn keys(keys: &[u8], picking: &mut Option<Picking>, viewers: &[Viewer]) -> Vec<KeyAction> {
        keys.iter().map(|k| on_key(*k, picking, viewers)).collect()
    }

    #[test]
    fn keys_become_host_commands() {
        let two = [v("a-1", "alice"), v("b-2", "")];
        let mut p = None;
        assert_eq!(on_key(b'k', &mut p, &[]), KeyAction::Say("no viewer to kick".into()));
        assert_eq!(p, None);
        assert_eq!(on_key(b'r', &mut p, &two), KeyAction::Command(HostCommand::Revoke));
        assert_eq!(on_key(b'q', &mut p, &[]), KeyAction::Command(HostCommand::Stop));
        assert_eq!(on_key(b'x', &mut p, &two), KeyAction::Nothing);
        assert_eq!(on_key(b'k', &mut p, &two), KeyAction::PickViewer);
        assert_eq!(
            keys(b"2\r", &mut p, &two).pop(),
            Some(KeyAction::Command(HostCommand::Kick { id: "b-2".into() }))
        );
        assert_eq!(p, None, "the pick is over");
        for (typed, says) in [
            (&b"k3\n"[..], "nobody kicked: no viewer \"3\" in the list"),
            (b"k0\n", "nobody kicked: no viewer \"0\" in the list"),
            (b"k\n", "nobody kicked: no viewer \"\" in the list"),
            (b"k\x1b", "nobody kicked"),
        ] {
            assert_eq!(keys(typed, &mut p, &two).pop(), Some(KeyAction::Say(says.into())));
            assert_eq!(p, None);
        }
        // q during the pick still stops.
        assert_eq!(
            keys(b"k1q", &mut p, &two).pop(),
            Some(KeyAction::Command(HostCommand::Stop))
        );
    }

    #[test]
    fn viewers_past_the_ninth_can_be_kicked() {
        let many: Vec<Viewer> = (1..=12).map(|i| v(&format!("id-{i}"), "")).collect();
        let mut p = None;
        assert_eq!(
            keys(b"k13\x7f2\r", &mut p, &many).pop(),
            Some(KeyAction::Command(HostCommand::Kick { id: "id-12".into() }))
        );
        assert!(pick_list(&many).contains("12) id-12"));
    }

    #[test]
    fn the_status_line_names_viewers_and_paths() {
        assert_eq!(
            status(&[v("a-1", "alice"), v("b-2", "")], 2400.0, 200),
            "● 2 viewers: alice (direct), b-2 (direct) · 2.4 Mbit/s · k kick · r new ticket · q stop"
        );
        assert!(status(&[], 0.0, 80).starts_with("● no viewers yet · 0.0 Mbit/s"));
        let l = pick_list(&[v("a-1", "alice")]);
        assert!(l.contains("1) alice (a-1, direct)"), "{l}");
    }

    #[test]
    fn the_status_line_fits_the_terminal() {
        let mut relay = v("c3d4e5f6-2", "carol-laptop");
        relay.path = "relay".into();
        let two = [v("a1b2c3d4-1", "alice-desktop"), relay];
        let s = status(&two, 2400.0, 80);
        assert_eq!(
            s,
            "● 2 viewers: alice-desktop (direct), carol-laptop (relay) · 2.4 Mbit/s · k/r/q"
        );
        let s = status(&two, 2400.0, 60);
        assert_eq!(s, "● 2 viewers (1 direct, 1 relay) · 2.4 Mbit/s · k/r/q");
        let s = status(&two, 2400.0, 30);
        assert_eq!(unicode_width::UnicodeWidthStr::width(s.as_str()), 29, "{s}");
        assert!(s.ends_with('…'), "{s}");
    }
}
