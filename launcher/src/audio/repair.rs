//! `--repair`: unload the per-app capture sinks (`pixelpass_capture_<pid>`) and their
//! loopbacks that a crashed host left in the audio server, when that host's PID is gone.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, anyhow};

/// Prefix of every sink pixelpass creates for per-app audio.
pub const SINK_PREFIX: &str = "pixelpass_capture_";

/// One loaded module: index, name, argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub index: u32,
    pub name: String,
    pub argument: String,
}

/// Parses `pactl list short modules` (tab-separated: index, name, argument, ...).
pub fn parse_modules(text: &str) -> Vec<Module> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some(Module {
                index: f.next()?.trim().parse().ok()?,
                name: f.next()?.trim().to_string(),
                argument: f.next().unwrap_or("").trim().to_string(),
            })
        })
        .collect()
}

/// The PID in a module argument that names a pixelpass capture sink, if any.
fn owner_pid(argument: &str) -> Option<u32> {
    let start = argument.find(SINK_PREFIX)? + SINK_PREFIX.len();
    let digits: String = argument[start..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The modules to unload: capture sinks and loopbacks whose owner PID no longer runs.
pub fn orphans(modules: &[Module], alive: impl Fn(u32) -> bool) -> Vec<Module> {
    modules
        .iter()
        .filter(|m| matches!(m.name.as_str(), "module-null-sink" | "module-loopback"))
        .filter(|m| owner_pid(&m.argument).is_some_and(|pid| !alive(pid)))
        .cloned()
        .collect()
}

/// What no audio server answering looks like from `pactl`; None when one answered.
fn no_server(pactl_stderr: &str) -> Option<String> {
    // pactl exits 1 for every failure: only its (C locale) words tell this one apart
    let line = pactl_stderr.lines().find(|l| l.starts_with("Connection failure"))?;
    Some(format!("no audio server is running (pactl: {})", line.trim()))
}

fn pactl(args: &[&str]) -> Result<String> {
    let out = Command::new("pactl")
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| anyhow!("pactl is not available ({e}): install pulseaudio-utils"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(why) = no_server(&stderr) {
            return Err(NoServer(why).into());
        }
        return Err(anyhow!(
            "pactl {} failed: {} (is PipeWire with pipewire-pulse running?)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// No audio server answered `pactl`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NoServer(String);

/// What `--repair` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Repaired {
    /// No audio server runs, so nothing can be left in one; says where none answered.
    NoServer(String),
    /// What was unloaded (empty: nothing was orphaned).
    Unloaded(Vec<String>),
}

/// The local socket the audio server (PulseAudio or pipewire-pulse) listens on, found the way
/// libpulse finds it: `PULSE_SERVER` (a socket path, `unix:` prefixed or not), else
/// `$XDG_RUNTIME_DIR/pulse/native`. None when it is not a local socket (`tcp:…`) or unknown:
/// then `pactl` decides.
fn server_socket(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    match env("PULSE_SERVER").filter(|s| !s.trim().is_empty()) {
        Some(servers) => {
            let first = servers.split_whitespace().next()?;
            // an entry may be prefixed with {machine id}
            let first = first.rsplit_once('}').map_or(first, |(_, s)| s);
            let path = first.strip_prefix("unix:").unwrap_or(first);
            path.starts_with('/').then(|| PathBuf::from(path))
        }
        None => env("XDG_RUNTIME_DIR")
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join("pulse/native")),
    }
}

/// Unloads orphaned modules (loopbacks first, then sinks); says what was removed, or that no
/// audio server runs (nothing to repair then, not an error).
pub fn repair() -> Result<Repaired> {
    if let Some(socket) = server_socket(|k| std::env::var(k).ok())
        && let Err(e) = UnixStream::connect(&socket)
    {
        return Ok(Repaired::NoServer(format!(
            "no audio server is running (nothing answers at {}: {e})",
            socket.display()
        )));
    }
    let modules = match pactl(&["list", "short", "modules"]) {
        Ok(text) => parse_modules(&text),
        Err(e) => match e.downcast::<NoServer>() {
            Ok(NoServer(why)) => return Ok(Repaired::NoServer(why)),
            Err(e) => return Err(e),
        },
    };
    let mut found = orphans(&modules, |pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    found.sort_by_key(|m| m.name != "module-loopback");
    let mut done = Vec::new();
    for m in found {
        pactl(&["unload-module", &m.index.to_string()])?;
        done.push(format!("unloaded {} #{} ({})", m.name, m.index, m.argument));
    }
    Ok(Repaired::Unloaded(done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_dead_owners() {
        let text = "5\tmodule-null-sink\tsink_name=desktop\t\n\
                    21\tmodule-null-sink\tsink_name=pixelpass_capture_4242 sink_properties=x\t\n\
                    22\tmodule-loopback\tsource=pixelpass_capture_4242.monitor sink=desktop\t\n\
                    23\tmodule-null-sink\tsink_name=pixelpass_capture_77\t\n";
        let m = parse_modules(text);
        assert_eq!(m.len(), 4);
        let o = orphans(&m, |pid| pid == 77);
        assert_eq!(o.iter().map(|m| m.index).collect::<Vec<_>>(), vec![21, 22]);
    }

    #[test]
    fn finds_the_server_socket_as_libpulse_does() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let at = |p: &str| Some(PathBuf::from(p));
        assert_eq!(
            server_socket(env(&[("XDG_RUNTIME_DIR", "/run/user/7")])),
            at("/run/user/7/pulse/native")
        );
        let both = &[("XDG_RUNTIME_DIR", "/run/user/7"), ("PULSE_SERVER", "unix:/tmp/p")];
        assert_eq!(server_socket(env(both)), at("/tmp/p"));
        assert_eq!(server_socket(env(&[("PULSE_SERVER", "/tmp/q other")])), at("/tmp/q"));
        assert_eq!(
            server_socket(env(&[("PULSE_SERVER", "{abc}unix:/tmp/r")])),
            at("/tmp/r")
        );
        assert_eq!(server_socket(env(&[("PULSE_SERVER", "tcp:host:4713")])), None);
        assert_eq!(server_socket(env(&[])), None);
        let refused = "Connection failure: Connection refused\npa_context_connect() failed: Connection refused\n";
        assert_eq!(
            no_server(refused).as_deref(),
            Some("no audio server is running (pactl: Connection failure: Connection refused)")
        );
        assert_eq!(no_server("Failure: No such entity\n"), None);
    }
}
