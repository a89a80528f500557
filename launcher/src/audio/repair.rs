//! `--repair`: unload the per-app capture sinks (`pixelpass_capture_<pid>`) and their
//! loopbacks that a crashed host left in the audio server, when that host's PID is gone.

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

fn pactl(args: &[&str]) -> Result<String> {
    let out = Command::new("pactl")
        .args(args)
        .output()
        .map_err(|e| anyhow!("pactl is not available ({e}): install pulseaudio-utils"))?;
    if !out.status.success() {
        return Err(anyhow!(
            "pactl {} failed: {} (is PipeWire with pipewire-pulse running?)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Unloads orphaned modules (loopbacks first, then sinks); returns what was removed.
pub fn repair() -> Result<Vec<String>> {
    let modules = parse_modules(&pactl(&["list", "short", "modules"])?);
    let mut found = orphans(&modules, |pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    found.sort_by_key(|m| m.name != "module-loopback");
    let mut done = Vec::new();
    for m in found {
        pactl(&["unload-module", &m.index.to_string()])?;
        done.push(format!("unloaded {} #{} ({})", m.name, m.index, m.argument));
    }
    Ok(done)
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
}
