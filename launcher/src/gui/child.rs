//! The headless pixelpass the window drives: `pixelpass host|view … --events json`, its events
//! read on a thread of its own, commands on its stdin. The child ends with the window however
//! the window ends: its stdin closes (the host stops on that), and the kernel sends it SIGTERM
//! when the window's thread dies (PR_SET_PDEATHSIG), SIGKILL included.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::session::Incoming;

/// How long a stopped child gets to end on SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// A running child. Dropping it stops it.
pub struct Child {
    #[cfg(test)]
    pid: u32,
    stdin: Option<ChildStdin>,
    /// Some while the process may still be signalled: the reaper sets it None, under this lock,
    /// before the PID is freed, so a signal never reaches a recycled PID.
    live: Arc<Mutex<Option<u32>>>,
}

impl Child {
    /// Starts `exe args…`; `on_event` gets each event, then `on_exit` the exit code (None: a
    /// signal ended it), both on the reader thread.
    pub fn spawn(
        exe: &Path,
        args: &[String],
        config_home: Option<&Path>,
        on_event: impl Fn(Incoming) + Send + 'static,
        on_exit: impl FnOnce(Option<i32>) + Send + 'static,
    ) -> Result<Child> {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(home) = config_home {
            cmd.env("XDG_CONFIG_HOME", home);
        }
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
        let parent = std::process::id() as libc::pid_t;
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The window may have died before the prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("cannot start {}", exe.display()))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the child has no stdout")?;
        let live = Arc::new(Mutex::new(Some(pid)));
        let reaper_live = live.clone();
        std::thread::Builder::new()
            .name(format!("pixelpass-child-{pid}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(ev) = super::session::parse(&line) {
                        on_event(ev);
                    }
                }
                let code = reap(child, &reaper_live);
                on_exit(code);
            })
            .context("cannot start the event reader")?;
        Ok(Child {
            #[cfg(test)]
            pid,
            stdin,
            live,
        })
    }

    #[cfg(test)]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends one JSON command line (`--control stdin`); false when the child no longer reads.
    pub fn send(&mut self, json: &serde_json::Value) -> bool {
        let Some(stdin) = self.stdin.as_mut() else { return false };
        writeln!(stdin, "{json}").and_then(|()| stdin.flush()).is_ok()
    }

    /// Asks the child to end now: closes its stdin and sends SIGTERM; SIGKILL follows if it
    /// is still there after a grace period. Returns at once; the exit arrives as `on_exit`.
    pub fn stop(&mut self) {
        if self.stdin.take().is_none() {
            return; // stopped before
        }
        signal(&self.live, libc::SIGTERM);
        let live = self.live.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + GRACE;
            while std::time::Instant::now() < deadline {
                if live.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            signal(&live, libc::SIGKILL);
        });
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(live: &Mutex<Option<u32>>, sig: i32) {
    if let Some(pid) = *live.lock().unwrap_or_else(|e| e.into_inner()) {
        // SAFETY: kill has no memory preconditions; the PID is ours and not yet reaped.
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }
}

/// Waits for the child without reaping it (the PID stays ours), marks it gone, then reaps.
fn reap(mut child: std::process::Child, live: &Mutex<Option<u32>>) -> Option<i32> {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waitid with WNOWAIT only observes our own child.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                child.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    let mut guard = live.lock().unwrap_or_else(|e| e.into_inner());
    *guard = None;
    let status = child.wait().ok();
    drop(guard);
    status.and_then(|s| s.code())
}
