//! System audio: the default sink's monitor source.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// The monitor source of the default sink (`<sink>.monitor`). `@DEFAULT_MONITOR@` is not used:
/// on pipewire-pulse it can name another sink's monitor and give silence. `pactl` is given 3 s
/// and is killed if the future is dropped.
pub async fn default_monitor() -> Result<String, String> {
    let run = Command::new("pactl")
        .arg("get-default-sink")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(3), run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("pactl is not available ({e}): install pulseaudio-utils")),
        Err(_) => return Err("the audio server does not answer".into()),
    };
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
