//! The tray icon (StatusNotifierItem over D-Bus, ksni): the state in its title and tooltip
//! ("hosting, 2 viewers") and a menu: Show window, Copy ticket, Stop, Quit. Without a tray on
//! the desktop it says why, and the window's "keep running in the tray" setting is off.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ksni::TrayMethods as _;

use super::{Request, Shared, TrayStatus, lock};

struct PixelTray {
    shared: Weak<Shared>,
    /// The state words, refreshed from the sessions.
    line: String,
    /// The clipboard thread (it keeps the contents served).
    clipboard: Sender<String>,
}

impl PixelTray {
    fn with(&self, f: impl FnOnce(&Shared)) {
        if let Some(s) = self.shared.upgrade() {
            f(&s);
        }
    }
}

impl ksni::Tray for PixelTray {
    fn id(&self) -> String {
        "pixelpass".into()
    }

    fn title(&self) -> String {
        format!("pixelpass: {}", self.line)
    }

    fn icon_name(&self) -> String {
        "video-display".into()
    }

    fn tool_tip(&self) -> ksni::ToolTip {
        ksni::ToolTip {
            title: self.title(),
            ..Default::default()
        }
    }

    fn activate(&mut self, _x: i32, _y: i32) {
        self.with(|s| s.request(Request::Show));
    }

    fn menu(&self) -> Vec<ksni::MenuItem<Self>> {
        use ksni::menu::StandardItem;
        let item = |label: &str, f: fn(&mut PixelTray)| {
            StandardItem {
                label: label.into(),
                activate: Box::new(f),
                ..Default::default()
            }
            .into()
        };
        vec![
            item("Show window", |t| t.with(|s| s.request(Request::Show))),
            item("Copy ticket", |t| {
                let ticket = t.shared.upgrade().and_then(|s| lock(&s.host).ticket.clone());
                if let Some(ticket) = ticket {
                    let _ = t.clipboard.send(ticket);
                }
            }),
            item("Stop", |t| t.with(Shared::stop_host)),
            item("Quit", |t| t.with(|s| s.request(Request::Quit))),
        ]
    }
}

/// The tray's words for the state now.
fn line(s: &Shared) -> String {
    let host = lock(&s.host);
    if !matches!(host.phase, super::Phase::Ended { .. }) {
        return host.tray_line();
    }
    drop(host);
    match lock(&s.view).phase {
        super::Phase::Running => "viewing".into(),
        super::Phase::Starting => "connecting".into(),
        _ => "idle".into(),
    }
}

/// Puts up the tray icon and keeps its state current; records whether it shows.
pub fn start(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let tray = PixelTray {
        shared: weak.clone(),
        line: line(shared),
        clipboard: clipboard_thread(),
    };
    shared.runtime.spawn(async move {
        let status = match tray.spawn().await {
            Ok(handle) => Ok(handle),
            Err(e) => Err(why(&e)),
        };
        let Some(s) = weak.upgrade() else { return };
        let handle = match status {
            Ok(h) => {
                *lock(&s.tray) = TrayStatus::Shown;
                h
            }
            Err(why) => {
                *lock(&s.tray) = TrayStatus::Unavailable(why);
                s.repaint();
                return;
            }
        };
        s.repaint();
        drop(s);
        let mut shown = String::new();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Some(s) = weak.upgrade() else { return };
            let now = line(&s);
            if now != shown {
                shown.clone_from(&now);
                if handle.update(|t| t.line = now).await.is_none() {
                    return;
                }
            }
        }
    });
}

/// Why no tray icon shows, for the setting it disables.
fn why(e: &ksni::Error) -> String {
    match e {
        ksni::Error::Watcher(_) => {
            "no system tray on this desktop (no StatusNotifierWatcher; on GNOME, the AppIndicator extension adds one)"
                .into()
        }
        ksni::Error::WontShow => "the desktop's tray shows no icons (a StatusNotifierWatcher but no host)".into(),
        e => format!("no system tray: {e}"),
    }
}

/// A thread that owns the clipboard for the tray's "Copy ticket" (the contents live as long
/// as their owner).
fn clipboard_thread() -> Sender<String> {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut clipboard = crate::clipboard::Clipboard::default();
        for text in rx {
            let said = clipboard.copy(&text);
            eprintln!("pixelpass: the ticket is {said}");
        }
    });
    tx
}
