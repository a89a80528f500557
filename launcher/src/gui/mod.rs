//! `pixelpass --gui`: the window front-end (feature `gui`). A thin driver: it runs the headless
//! `pixelpass host|view … --events json` as a child process, reads its events and sends the
//! host its commands (`--control stdin`); the capture machinery is untouched by it.
//!
//! The children, the event readers and what they told live in [`Shared`], outside the window,
//! so the window can close while a share goes on (keep in the tray) and open again.

mod app;
mod child;
mod host_tab;
mod notify;
mod session;
mod settings;
mod theme;
mod tray;
mod view_tab;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

use self::child::Child;
use self::session::{HostSession, Phase, ViewSession};

/// How the window starts its children.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The pixelpass binary the children run (this one).
    pub exe: PathBuf,
    /// Host options typed after `--gui`: every share from the window uses them.
    pub host_args: Vec<String>,
    /// Options both sides take (`--relay`, `--bind`), for the viewer.
    pub view_args: Vec<String>,
    /// Another config folder instead of `~/.config/pixelpass` (tests); passed to the children
    /// as XDG_CONFIG_HOME.
    pub config_home: Option<PathBuf>,
}

/// What the tray can ask of the window, or of the process while the window is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Show,
    Quit,
}

/// Whether a tray icon is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrayStatus {
    Starting,
    Shown,
    /// No tray on this desktop: why (closing the window then quits).
    Unavailable(String),
}

/// Everything that outlives a window.
pub struct Shared {
    pub launch: Launch,
    pub host: Mutex<HostSession>,
    pub view: Mutex<ViewSession>,
    host_child: Mutex<Option<Child>>,
    view_child: Mutex<Option<Child>>,
    /// The open window's context, to repaint it when an event arrives.
    window: Mutex<Option<egui::Context>>,
    pub notifier: notify::Notifier,
    pub tray: Mutex<TrayStatus>,
    /// The setting "keep running in the tray when I close the window".
    pub keep_in_tray: AtomicBool,
    /// Quit was asked for: a close then ends the process even with the tray setting on.
    pub quitting: AtomicBool,
    requests: (Sender<Request>, Mutex<Receiver<Request>>),
    /// The tray's runtime (D-Bus for the tray and notifications).
    pub runtime: tokio::runtime::Runtime,
}

/// Keeps a started child in `slot`; a child that could not start ends its session's `phase`
/// with the reason.
fn keep_child(slot: &Mutex<Option<Child>>, child: anyhow::Result<Child>, phase: &mut Phase) -> anyhow::Result<()> {
    match child {
        Ok(c) => {
            *lock(slot) = Some(c);
            Ok(())
        }
        Err(e) => {
            *phase = Phase::Ended {
                reason: format!("{e:#}"),
                failed: true,
            };
            Err(e)
        }
    }
}

/// Stops the child in `slot`; whether there was one. (Its session is marked after this
/// returns: the child's exit callback takes the session's lock.)
fn stop_child(slot: &Mutex<Option<Child>>) -> bool {
    let Some(mut c) = lock(slot).take() else { return false };
    c.stop();
    true
}

/// A session whose child was stopped is stopping, unless it has already ended.
fn mark_stopping(phase: &mut Phase) {
    if !matches!(phase, Phase::Ended { .. }) {
        *phase = Phase::Stopping;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn new(launch: Launch) -> std::io::Result<Arc<Shared>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("pixelpass-gui-rt")
            .build()?;
        let (tx, rx) = std::sync::mpsc::channel();
        Ok(Arc::new(Shared {
            launch,
            host: Mutex::new(HostSession::idle()),
            view: Mutex::new(ViewSession::idle()),
            host_child: Mutex::new(None),
            view_child: Mutex::new(None),
            window: Mutex::new(None),
            notifier: notify::Notifier::new(runtime.handle().clone()),
            tray: Mutex::new(TrayStatus::Starting),
            keep_in_tray: AtomicBool::new(false),
            quitting: AtomicBool::new(false),
            requests: (tx, Mutex::new(rx)),
            runtime,
        }))
    }

    /// The window to repaint on events (None while it is closed).
    pub fn set_window(&self, ctx: Option<egui::Context>) {
        *lock(&self.window) = ctx;
    }

    pub fn repaint(&self) {
        if let Some(ctx) = lock(&self.window).as_ref() {
            ctx.request_repaint();
        }
    }

    pub fn request(&self, r: Request) {
        let _ = self.requests.0.send(r);
        self.repaint();
    }

    /// A request from the tray, if any (the window polls; a closed window waits).
    pub fn next_request(&self, wait: bool) -> Option<Request> {
        let rx = lock(&self.requests.1);
        if wait { rx.recv().ok() } else { rx.try_recv().ok() }
    }

    /// Starts a host with `args` (after `host`); the events go to [`Shared::host`].
    pub fn start_host(self: &Arc<Self>, args: Vec<String>) -> anyhow::Result<()> {
        self.stop_host();
        *lock(&self.host) = HostSession::default();
        let exe = self.launch.exe.clone();
        let (me, me2) = (Arc::downgrade(self), Arc::downgrade(self));
        let child = Child::spawn(
            &exe,
            &args,
            self.launch.config_home.as_deref(),
            move |ev| {
                let Some(s) = me.upgrade() else { return };
                if let session::Incoming::Ticket { ticket } = &ev {
                    // Like the headless host: the ticket on stdout, for scripts around the window.
                    println!("{ticket}");
                }
                let notice = lock(&s.host).apply(ev);
                if let Some(n) = notice {
                    s.notifier.notify(n);
                }
                s.repaint();
            },
            move |code| {
                let Some(s) = me2.upgrade() else { return };
                lock(&s.host).exited(code);
                s.repaint();
            },
        );
        let phase = &mut lock(&self.host).phase;
        keep_child(&self.host_child, child, phase)
    }

    /// Sends a command to the host (`--control stdin`).
    pub fn host_command(&self, json: serde_json::Value) -> bool {
        lock(&self.host_child).as_mut().is_some_and(|c| c.send(&json))
    }

    pub fn stop_host(&self) {
        if stop_child(&self.host_child) {
            mark_stopping(&mut lock(&self.host).phase);
        }
    }

    /// Starts a viewer with `args` (after `view`).
    pub fn start_view(self: &Arc<Self>, args: Vec<String>) -> anyhow::Result<()> {
        self.stop_view();
        *lock(&self.view) = ViewSession::default();
        let exe = self.launch.exe.clone();
        let (me, me2) = (Arc::downgrade(self), Arc::downgrade(self));
        let child = Child::spawn(
            &exe,
            &args,
            self.launch.config_home.as_deref(),
            move |ev| {
                let Some(s) = me.upgrade() else { return };
                lock(&s.view).apply(ev);
                s.repaint();
            },
            move |code| {
                let Some(s) = me2.upgrade() else { return };
                lock(&s.view).exited(code);
                s.repaint();
            },
        );
        let phase = &mut lock(&self.view).phase;
        keep_child(&self.view_child, child, phase)
    }

    pub fn stop_view(&self) {
        if stop_child(&self.view_child) {
            mark_stopping(&mut lock(&self.view).phase);
        }
    }

    /// Whether closing the window leaves the process (and its share) running in the tray.
    pub fn stays_in_tray(&self) -> bool {
        self.keep_in_tray.load(Ordering::Relaxed)
            && !self.quitting.load(Ordering::Relaxed)
            && *lock(&self.tray) == TrayStatus::Shown
    }

    /// The running children's PIDs (host, viewer).
    #[cfg(test)]
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            lock(&self.host_child).as_ref().map(Child::pid),
            lock(&self.view_child).as_ref().map(Child::pid),
        )
    }
}

/// `pixelpass --gui`: the window, again after the tray reopens it, until Quit (or a close
/// without the tray). The children stop with it.
pub fn run(launch: Launch) -> ExitCode {
    let shared = match Shared::new(launch) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pixelpass: cannot start the window's runtime: {e}");
            return ExitCode::from(1);
        }
    };
    tray::start(&shared);
    let result = loop {
        let s = shared.clone();
        let shown = eframe::run_native(
            "pixelpass",
            app::native_options(),
            Box::new(move |cc| Ok(Box::new(app::GuiApp::new(cc, s)))),
        );
        shared.set_window(None);
        if let Err(e) = shown {
            break Err(e);
        }
        if !shared.stays_in_tray() {
            break Ok(());
        }
        // The window is gone; the share goes on until the tray asks.
        match shared.next_request(true) {
            Some(Request::Show) => continue,
            _ => break Ok(()),
        }
    };
    shared.stop_host();
    shared.stop_view();
    // Let the children see their stdin close and SIGTERM before this process ends.
    std::thread::sleep(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "pixelpass: cannot open the window: {e} (it needs a display: X11 or Wayland, and OpenGL; Mesa's software GL will do)"
            );
            ExitCode::from(1)
        }
    }
}
