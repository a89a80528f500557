//! Wayland capture through the ScreenCast portal (xdg-desktop-portal): CreateSession →
//! SelectSources (a monitor, or a window with `--window`; cursor embedded) → Start (the
//! desktop's "Share screen?" dialog) → OpenPipeWireRemote → `pipewiresrc fd=… path=<node>`.
//!
//! The dialog appears when the first viewer connects (capture on demand). A restore token is
//! asked for and kept in the config directory, so the next share of the same source skips the
//! dialog where the portal supports it; `--forget-source` drops it. The PipeWire fd is an
//! `OwnedFd` from the portal reply on: whatever holds it closes it, on every path.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use ashpd::desktop::PersistMode;
use ashpd::desktop::screencast::{
    CursorMode, OpenPipeWireRemoteOptions, Screencast, SelectSourcesOptions, SourceType, StartCastOptions,
};
use ashpd::desktop::{CreateSessionOptions, Session};
use ashpd::enumflags2::BitFlags;

use super::Target;
use crate::cli::HostArgs;

/// What the portal offers, checked when the share starts (before any viewer).
#[derive(Debug, Clone)]
pub struct Portal {
    /// bus address; None = the session bus
    bus: Option<String>,
    window: bool,
    embed_cursor: bool,
}

/// Source kind as the restore-token file names it.
fn kind(window: bool) -> &'static str {
    if window { "window" } else { "monitor" }
}

/// Where the restore token for a source kind is kept.
pub fn token_path(window: bool) -> Option<PathBuf> {
    crate::config::path().map(|p| p.with_file_name(format!("screencast-{}.token", kind(window))))
}

/// Drops the remembered sources; returns the files removed.
pub fn forget_sources() -> Vec<PathBuf> {
    [false, true]
        .into_iter()
        .filter_map(token_path)
        .filter(|p| std::fs::remove_file(p).is_ok())
        .collect()
}

fn load_token(window: bool) -> Option<String> {
    let t = std::fs::read_to_string(token_path(window)?).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn save_token(window: bool, token: &str) {
    let Some(p) = token_path(window) else { return };
    if let Some(dir) = p.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // (a lost token only means the dialog asks again)
    let _ = gstiroh::net::write_private(&p, format!("{token}\n").as_bytes());
}

async fn connect(bus: Option<&str>) -> Result<Screencast> {
    let conn = match bus {
        Some(addr) => zbus_connection(addr).await?,
        None => ashpd::zbus::Connection::session()
            .await
            .map_err(|e| anyhow!("cannot reach the session bus ({e}): run pixelpass inside your desktop session"))?,
    };
    Screencast::with_connection(conn).await.map_err(|e| {
        anyhow!(
            "no ScreenCast portal on the session bus ({e}): install xdg-desktop-portal and the backend for \
             your desktop (xdg-desktop-portal-gnome, -kde or -wlr)"
        )
    })
}

async fn zbus_connection(addr: &str) -> Result<ashpd::zbus::Connection> {
    ashpd::zbus::connection::Builder::address(addr)
        .map_err(|e| anyhow!("bad bus address {addr}: {e}"))?
        .build()
        .await
        .map_err(|e| anyhow!("cannot reach the bus at {addr}: {e}"))
}

impl Portal {
    /// Checks that a ScreenCast portal is there and can capture what was asked for.
    pub async fn probe(window: bool, bus: Option<String>) -> Result<Portal> {
        let sc = connect(bus.as_deref()).await?;
        let types = sc
            .available_source_types()
            .await
            .unwrap_or(BitFlags::from(SourceType::Monitor));
        if window && !types.contains(SourceType::Window) {
            return Err(crate::UsageError(
                "this desktop's screen-cast portal cannot share single windows: share the whole screen \
                 (drop --window)"
                    .into(),
            )
            .into());
        }
        let cursors = sc.available_cursor_modes().await.unwrap_or_default();
        Ok(Portal {
            bus,
            window,
            embed_cursor: cursors.contains(CursorMode::Embedded),
        })
    }

    /// Runs the portal handshake (shows the dialog unless a restore token skips it).
    pub async fn start(&self) -> Result<Cast> {
        let sc = connect(self.bus.as_deref()).await?;
        let session = sc
            .create_session(CreateSessionOptions::default())
            .await
            .map_err(|e| anyhow!("the portal refused a screen-cast session: {e}"))?;
        // From here the session is ours to close on every early return.
        match self.handshake(&sc, &session).await {
            Ok((node, fd, watch_fd, size)) => Ok(Cast {
                node,
                fd,
                watch_fd: Some(watch_fd),
                size,
                session: Arc::new(session),
                _portal: sc,
            }),
            Err(e) => {
                let _ = session.close().await;
                Err(e)
            }
        }
    }

    async fn handshake(
        &self,
        sc: &Screencast,
        session: &Session<Screencast>,
    ) -> Result<(u32, OwnedFd, OwnedFd, Option<(u32, u32)>)> {
        let token = load_token(self.window);
        let mut select = SelectSourcesOptions::default()
            .set_sources(BitFlags::from(if self.window {
                SourceType::Window
            } else {
                SourceType::Monitor
            }))
            .set_multiple(false)
            .set_persist_mode(PersistMode::ExplicitlyRevoked)
            .set_restore_token(token.as_deref());
        if self.embed_cursor {
            select = select.set_cursor_mode(CursorMode::Embedded);
        }
        sc.select_sources(session, select)
            .await
            .and_then(|r| r.response())
            .map_err(|e| portal_error("selecting what to share", e))?;
        let streams = sc
            .start(session, None, StartCastOptions::default())
            .await
            .and_then(|r| r.response())
            .map_err(|e| portal_error("starting the screen cast", e))?;
        if let Some(t) = streams.restore_token() {
            save_token(self.window, t);
        }
        let stream = streams
            .streams()
            .first()
            .ok_or_else(|| anyhow!("the portal started a screen cast with no stream"))?;
        let node = stream.pipe_wire_node_id();
        let size = stream
            .size()
            .filter(|(w, h)| *w > 0 && *h > 0)
            .map(|(w, h)| (w as u32, h as u32));
        // Two connections: one for pipewiresrc, one to watch the stream node. (A dup of one fd
        // would be the same socket, and two clients on one socket corrupt each other.)
        let mut fds = Vec::with_capacity(2);
        for _ in 0..2 {
            fds.push(
                sc.open_pipe_wire_remote(session, OpenPipeWireRemoteOptions::default())
                    .await
                    .map_err(|e| anyhow!("the portal gave no PipeWire connection: {e}"))?,
            );
        }
        let (watch, fd) = (fds.pop().unwrap(), fds.pop().unwrap());
        Ok((node, fd, watch, size))
    }
}

fn portal_error(step: &str, e: ashpd::Error) -> anyhow::Error {
    match e {
        ashpd::Error::Response(ashpd::desktop::ResponseError::Cancelled) => {
            anyhow!("the screen-share dialog was cancelled, so nothing is shared")
        }
        other => anyhow!("the portal failed {step}: {other}"),
    }
}

/// A started screen cast: its PipeWire node, the fd to reach it, and the portal session.
pub struct Cast {
    pub node: u32,
    /// The portal's PipeWire remote. `pipewiresrc fd=` takes a copy; this one is closed when
    /// the cast is dropped.
    pub fd: OwnedFd,
    /// A second connection to the same remote, for watching the stream node.
    pub watch_fd: Option<OwnedFd>,
    pub size: Option<(u32, u32)>,
    session: Arc<Session<Screencast>>,
    _portal: Screencast,
}

impl Cast {
    /// The `pipewiresrc` description for this cast. keepalive-time resends the last frame when
    /// the screen is still, so the encoder can always answer a keyframe request.
    pub fn source(&self) -> String {
        format!(
            "pipewiresrc fd={} path={} do-timestamp=true keepalive-time=250 always-copy=true",
            self.fd.as_raw_fd(),
            self.node
        )
    }

    /// The portal session's object path (for scripts and tests).
    pub fn session_path(&self) -> String {
        serde_json::to_value(&*self.session)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Resolves when the desktop ends the cast with the session's Closed signal (the user
    /// pressed "stop sharing"); never, if the signal cannot be subscribed to.
    pub fn closed_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let session = self.session.clone();
        async move {
            use futures_util::StreamExt as _;
            match session.receive_closed().await {
                Ok(s) => {
                    let mut s = std::pin::pin!(s);
                    s.next().await;
                }
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Closes the portal session (the desktop's sharing indicator goes away) and the fd.
    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}

/// The portal as the capture target, after refusing the X11-only options.
pub fn target(args: &HostArgs) -> Result<Target> {
    if args.window_id.is_some() {
        return Err(crate::UsageError(
            "--window-id is for X11; on Wayland use --window and pick the window in the portal dialog".into(),
        )
        .into());
    }
    if args.monitor.is_some() {
        return Err(crate::UsageError(
            "--monitor is for X11; on Wayland the monitor is picked in the portal dialog".into(),
        )
        .into());
    }
    Ok(Target::Portal { window: args.window })
}
