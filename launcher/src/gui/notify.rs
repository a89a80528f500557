//! Desktop notifications when a viewer joins or leaves (freedesktop Notify over D-Bus). No
//! notification daemon is one warning in the window, never a failure.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::session::Notice;

/// Sends notices on the tray's runtime; remembers the first failure to show it once.
pub struct Notifier {
    runtime: tokio::runtime::Handle,
    /// Why notifications do not show, once one failed.
    problem: Arc<Mutex<Option<String>>>,
}

impl Notifier {
    pub fn new(runtime: tokio::runtime::Handle) -> Notifier {
        Notifier {
            runtime,
            problem: Arc::default(),
        }
    }

    /// Shows `n` in the background; a failure is kept for [`Notifier::problem`].
    pub fn notify(&self, n: Notice) {
        let problem = self.problem.clone();
        self.runtime.spawn(async move {
            let mut notification = notify_rust::Notification::new();
            notification
                .appname("pixelpass")
                .summary(&n.summary)
                .body(&n.body)
                .icon("video-display");
            let shown = notification.show_async();
            // A bus that answers nothing must not leave tasks piling up.
            let why = match tokio::time::timeout(Duration::from_secs(5), shown).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the notification service did not answer within 5 s".into(),
            };
            let mut p = problem.lock().unwrap_or_else(|e| e.into_inner());
            if p.is_none() {
                // Once on stderr too, for whoever started the window from a terminal.
                eprintln!("pixelpass: warning: {}", warning(&why));
                *p = Some(why);
            }
        });
    }

    /// The warning for the window, once a notification failed.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|why| warning(why))
    }
}

fn warning(why: &str) -> String {
    format!("desktop notifications do not show ({why}): is a notification daemon running (dunst, your desktop's)?")
}
