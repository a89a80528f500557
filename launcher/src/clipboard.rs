//! The ticket on the clipboard: arboard (X11, or Wayland's data-control protocol) and, over SSH
//! or without a display, OSC 52 so the local terminal takes it. The contents live only while
//! the process that set them does, so the host keeps its [`Clipboard`] until it exits (a
//! clipboard manager may keep a copy: the ticket is marked to be left out of its history). A
//! failure is only ever reported, never fatal.

use std::io::Write as _;

use arboard::SetExtLinux as _;
use base64::Engine as _;

/// The clipboard the host owns while it runs.
#[derive(Default)]
pub struct Clipboard {
    /// Kept alive: dropping it would empty the clipboard.
    board: Option<arboard::Clipboard>,
}

impl Clipboard {
    /// Copies `text`; returns what people are told ("the ticket is on your clipboard" or why
    /// not).
    pub fn copy(&mut self, text: &str) -> String {
        let env = |k: &str| std::env::var(k).ok();
        let osc = osc52_wanted(&env);
        if osc {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(osc52(text).as_bytes());
            let _ = err.flush();
        }
        let board = match self.board.take() {
            Some(b) => Ok(b),
            None => arboard::Clipboard::new(),
        };
        let copied = board.and_then(|mut b| {
            // The ticket is a secret: clipboard managers are asked not to keep it.
            b.set().exclude_from_history().text(text)?;
            Ok(b)
        });
        match (copied, osc) {
            (Ok(b), osc) => {
                self.board = Some(b);
                let also = if osc { " (and your terminal's, OSC 52)" } else { "" };
                format!("copied to your clipboard{also}")
            }
            (Err(_), true) => "sent to your terminal's clipboard (OSC 52)".into(),
            (Err(e), false) => format!("not copied to the clipboard ({e}): copy it from here"),
        }
    }
}

/// OSC 52 as well as arboard: over SSH (the display is not the person's) or with no display.
pub fn osc52_wanted(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    set("SSH_TTY") || (!set("DISPLAY") && !set("WAYLAND_DISPLAY"))
}

/// The escape sequence that asks the terminal to put `text` on its clipboard.
pub fn osc52(text: &str) -> String {
    format!(
        "\x1b]52;c;{}\x07",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn osc52_over_ssh_or_without_a_display() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert!(!osc52_wanted(&env(&[("DISPLAY", ":0")])));
        assert!(!osc52_wanted(&env(&[("WAYLAND_DISPLAY", "wayland-1")])));
        assert!(osc52_wanted(&env(&[("DISPLAY", ":0"), ("SSH_TTY", "/dev/pts/1")])));
        assert!(osc52_wanted(&env(&[])));
        assert!(osc52_wanted(&env(&[("DISPLAY", "")])));
        assert_eq!(osc52("pp1ab"), "\x1b]52;c;cHAxYWI=\x07");
    }
}
