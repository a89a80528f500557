//! System audio: the default sink's monitor source.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The monitor source of the default sink (`<sink>.monitor`). `@DEFAULT_MONITOR@` is not used:
/// on pipewire-pulse it can name another sink's monitor and give silence.
pub fn default_monitor() -> Result<String, String> {
    let mut child = Command::new("pactl")
        .arg("get-default-sink")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("pactl is not available ({e}): install pulseaudio-utils"))?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the audio server does not answer".into());
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let sink = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || sink.is_empty() || sink.starts_with('@') {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(if err.is_empty() {
            "no default audio sink".into()
        } else {
            err
        });
    }
    Ok(format!("{sink}.monitor"))
}
