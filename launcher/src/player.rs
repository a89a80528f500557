//! Local players: mpv (low-latency profile), VLC (low network caching) or none. Players run
//! detached in their own process group and a reaper thread waits for each, so no `<defunct>`
//! entries pile up under a long-lived viewer. No fork in this multithreaded process: `spawn`
//! uses posix_spawn.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Result, anyhow};
use tokio::sync::oneshot;

use crate::cli::Player;

/// A started player: its pid, and its exit code when it ends.
pub struct Running {
    pub name: &'static str,
    pub pid: u32,
    pub exited: oneshot::Receiver<Option<i32>>,
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(cmd).is_file()))
}

/// The command line for `player` on `url`.
pub fn command(player: Player, url: &str) -> Option<(&'static str, Vec<String>)> {
    match player {
        Player::Mpv => Some((
            "mpv",
            vec![
                "--profile=low-latency".into(),
                "--cache=no".into(),
                "--force-window=immediate".into(),
                "--title=pixelpass".into(),
                url.into(),
            ],
        )),
        Player::Vlc => Some((
            "vlc",
            vec![
                "--network-caching=300".into(),
                "--no-video-title-show".into(),
                "--meta-title=pixelpass".into(),
                url.into(),
            ],
        )),
        Player::Gst | Player::None => None,
    }
}

/// Whether the player's program is installed (the built-in window always is).
pub fn installed(player: Player) -> bool {
    match player {
        Player::Mpv => which("mpv"),
        Player::Vlc => which("vlc"),
        Player::Gst | Player::None => true,
    }
}

/// Why a player cannot play the stream here, if we can tell (missing binary, VLC as root, VLC
/// plugins).
pub fn check(player: Player) -> Option<String> {
    match player {
        Player::Mpv if !which("mpv") => Some("mpv is not installed (Debian: apt install mpv)".into()),
        Player::Vlc if !which("vlc") => Some("VLC is not installed (Debian: apt install vlc)".into()),
        // SAFETY: geteuid has no preconditions.
        Player::Vlc if unsafe { libc::geteuid() } == 0 => {
            Some("VLC refuses to run as root: pick mpv, or run pixelpass as your own user".into())
        }
        Player::Vlc => vlc_plugins_missing(Path::new("/usr/lib")),
        _ => None,
    }
}

/// VLC needs its MPEG-TS demuxer and libavcodec decoder plugins. Debian's vlc-plugin-base
/// ships both; Arch-family distros split them into vlc-plugin-dvb and vlc-plugin-ffmpeg.
pub fn vlc_plugins_missing(lib: &Path) -> Option<String> {
    let dirs: Vec<_> = std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("vlc/plugins")))
        .chain([lib.join("vlc/plugins")])
        .filter(|d| d.is_dir())
        .collect();
    let dir = dirs.first()?;
    let mut missing = Vec::new();
    if !dir.join("demux/libts_plugin.so").exists() {
        missing.push("the MPEG-TS demuxer (libts_plugin.so: Debian vlc-plugin-base, Arch vlc-plugin-dvb)");
    }
    if !dir.join("codec/libavcodec_plugin.so").exists() {
        missing.push("the H.264 decoder (libavcodec_plugin.so: Debian vlc-plugin-base, Arch vlc-plugin-ffmpeg)");
    }
    (!missing.is_empty()).then(|| format!("VLC cannot play the stream: it lacks {}", missing.join(" and ")))
}

/// Starts `player` on `url`, detached and reaped.
pub fn spawn(player: Player, url: &str) -> Result<Running> {
    let (name, args) = command(player, url).ok_or_else(|| anyhow!("no external player for {player:?}"))?;
    let mut child = Command::new(name)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a ctrl-c meant for pixelpass does not hit the player, which
        // ends by itself when the stream does.
        .process_group(0)
        .spawn()
        .map_err(|e| anyhow!("cannot start {name}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("reap-{name}"))
        .spawn(move || {
            let code = child.wait().ok().and_then(|s| s.code());
            let _ = tx.send(code);
        })?;
    Ok(Running { name, pid, exited: rx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlc_plugin_check_names_the_packages() {
        let root = std::env::temp_dir().join(format!("pixelpass-vlc-{}", std::process::id()));
        let plugins = root.join("x86_64-linux-gnu/vlc/plugins");
        std::fs::create_dir_all(plugins.join("demux")).unwrap();
        std::fs::create_dir_all(plugins.join("codec")).unwrap();
        let msg = vlc_plugins_missing(&root).unwrap();
        assert!(
            msg.contains("vlc-plugin-dvb") && msg.contains("vlc-plugin-ffmpeg"),
            "{msg}"
        );
        std::fs::write(plugins.join("demux/libts_plugin.so"), b"").unwrap();
        std::fs::write(plugins.join("codec/libavcodec_plugin.so"), b"").unwrap();
        assert_eq!(vlc_plugins_missing(&root), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn mpv_uses_the_low_latency_profile() {
        let (name, args) = command(Player::Mpv, "http://127.0.0.1:1/").unwrap();
        assert_eq!(name, "mpv");
        assert!(args.contains(&"--profile=low-latency".to_string()));
    }
}
