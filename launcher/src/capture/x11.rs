//! X11 capture with `ximagesrc`: the whole screen, one window (`--window` picker or
//! `--window-id`), or one xrandr monitor (`--monitor`).

use std::ffi::{CString, c_int, c_uchar, c_ulong, c_void};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow};
use tokio::process::Command;

use super::{DirectSource, Target};
use crate::UsageError;
use crate::cli::HostArgs;
use crate::text::list_or_none;

/// The screen, a window or a monitor, as the options ask.
pub async fn target(args: &HostArgs) -> Result<Target> {
    let display = std::env::var("DISPLAY").unwrap_or_default();
    if display.is_empty() {
        return Err(UsageError("X11 capture needs DISPLAY to be set".into()).into());
    }
    install_error_handler();
    let base = format!("ximagesrc display-name={display} use-damage=false show-pointer=true");
    let source = if args.window || args.window_id.is_some() {
        let id = match args.window_id {
            Some(id) => id,
            None => pick_window().await?,
        };
        let (w, h) = window_size(id).await?;
        DirectSource {
            desc: format!("{base} xid={id}"),
            size: (w, h),
            what: format!("window {id:#x} ({w}x{h})"),
            window: Some(id),
        }
    } else if let Some(name) = &args.monitor {
        let m = monitor(name).await?;
        let (x1, y1) = (m.x + m.width - 1, m.y + m.height - 1);
        DirectSource {
            desc: format!("{base} startx={} starty={} endx={x1} endy={y1}", m.x, m.y),
            size: (m.width, m.height),
            what: format!("monitor {name} ({}x{}+{}+{})", m.width, m.height, m.x, m.y),
            window: None,
        }
    } else {
        let (w, h) = root_size().await?;
        DirectSource {
            desc: base,
            size: (w, h),
            what: format!("the whole screen ({w}x{h})"),
            window: None,
        }
    };
    Ok(Target::Direct(source))
}

/// Runs an X11 tool to its end (killed if the future is dropped); its stdout.
async fn run(cmd: &mut Command) -> Result<String> {
    let name = cmd.as_std().get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {name}: install x11-utils / x11-xserver-utils"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(anyhow!("{name} failed: {}", err.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `xwininfo` fields we read: window id, width, height.
fn xwininfo_fields(text: &str) -> (Option<u64>, Option<u32>, Option<u32>) {
    let mut id = None;
    let mut w = None;
    let mut h = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("xwininfo: Window id:") {
            id = rest
                .split_whitespace()
                .next()
                .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok());
        } else if let Some(v) = line.strip_prefix("Width:") {
            w = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("Height:") {
            h = v.trim().parse().ok();
        }
    }
    (id, w, h)
}

async fn root_size() -> Result<(u32, u32)> {
    match xwininfo_fields(&run(Command::new("xwininfo").arg("-root")).await?) {
        (_, Some(w), Some(h)) => Ok((w, h)),
        _ => Err(anyhow!("cannot read the screen size from xwininfo")),
    }
}

async fn window_size(id: u64) -> Result<(u32, u32)> {
    let text = run(Command::new("xwininfo").args(["-id", &format!("{id:#x}")]))
        .await
        .map_err(|_| {
            UsageError(format!(
                "there is no X11 window {id:#x}: list windows with `xwininfo -root -tree`, or use --window to click one"
            ))
        })?;
    match xwininfo_fields(&text) {
        (_, Some(w), Some(h)) => Ok((w, h)),
        _ => Err(anyhow!("cannot read the size of window {id:#x}")),
    }
}

/// Runs the interactive `xwininfo` picker: the user clicks the window to share.
async fn pick_window() -> Result<u64> {
    eprintln!("pixelpass: click the window you want to share");
    match xwininfo_fields(&run(&mut Command::new("xwininfo")).await?) {
        (Some(id), _, _) => Ok(id),
        _ => Err(anyhow!("no window was picked")),
    }
}

/// An xrandr output's geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    pub width: u32,
    pub height: u32,
    pub x: u32,
    pub y: u32,
}

/// Parses `xrandr --query` for connected outputs: (name, geometry).
pub fn parse_xrandr(text: &str) -> Vec<(String, Monitor)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some("connected")) = (parts.next(), parts.next()) else {
            continue;
        };
        let geom = parts.find(|p| p.contains('x') && p.contains('+'));
        let Some(geom) = geom else { continue };
        let nums: Vec<u32> = geom.split(['x', '+']).filter_map(|n| n.parse().ok()).collect();
        if let [w, h, x, y] = nums[..] {
            out.push((
                name.to_string(),
                Monitor {
                    width: w,
                    height: h,
                    x,
                    y,
                },
            ));
        }
    }
    out
}

async fn monitor(name: &str) -> Result<Monitor> {
    let text = run(Command::new("xrandr").arg("--query")).await?;
    let all = parse_xrandr(&text);
    if let Some((_, m)) = all.iter().find(|(n, _)| n == name) {
        return Ok(m.clone());
    }
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    Err(UsageError(format!(
        "no connected monitor named {name:?}; connected: {}",
        list_or_none(&names)
    ))
    .into())
}

// ---------------------------------------------------------------------------------------------
// X errors: Xlib's default handler exits the process on BadWindow (a shared window was closed).
// We install one that records the error instead, so the share can end with a message.

#[repr(C)]
struct XErrorEvent {
    kind: c_int,
    display: *mut c_void,
    resourceid: c_ulong,
    serial: c_ulong,
    error_code: c_uchar,
    request_code: c_uchar,
    minor_code: c_uchar,
}

/// The resource id of the last BadWindow/BadDrawable/BadMatch error (0 = none).
static BAD_RESOURCE: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn on_x_error(_display: *mut c_void, ev: *mut XErrorEvent) -> c_int {
    // SAFETY: Xlib passes a valid event for the duration of the call.
    let ev = unsafe { &*ev };
    // 3 BadWindow, 8 BadMatch, 9 BadDrawable: what XGetImage on a vanished window yields.
    if matches!(ev.error_code, 3 | 8 | 9) {
        BAD_RESOURCE.store(ev.resourceid, Ordering::Relaxed);
    }
    0
}

/// Makes X protocol errors non-fatal for this process (once).
pub fn install_error_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: dlopen/dlsym with valid C strings; XSetErrorHandler takes a C function
        // pointer of exactly this signature and is safe to call before or after XOpenDisplay.
        unsafe {
            let lib = CString::new("libX11.so.6").unwrap();
            let h = libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
            if h.is_null() {
                return;
            }
            let sym = CString::new("XSetErrorHandler").unwrap();
            let f = libc::dlsym(h, sym.as_ptr());
            if f.is_null() {
                return;
            }
            type Handler = unsafe extern "C" fn(*mut c_void, *mut XErrorEvent) -> c_int;
            let set: unsafe extern "C" fn(Option<Handler>) -> Option<Handler> = std::mem::transmute(f);
            set(Some(on_x_error));
        }
    });
}

/// Whether window `id` is gone: an X error named it, or `xwininfo` no longer finds it.
pub async fn window_gone(id: u64) -> bool {
    if BAD_RESOURCE.load(Ordering::Relaxed) == id {
        return true;
    }
    !Command::new("xwininfo")
        .args(["-id", &format!("{id:#x}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xrandr_outputs() {
        let text = "Screen 0: minimum 8 x 8, current 3840 x 1080, maximum 32767 x 32767\n\
                    HDMI-1 connected primary 1920x1080+0+0 (normal left inverted right x axis y axis) 527mm x 296mm\n\
                    \x20  1920x1080     60.00*+\n\
                    DP-1 connected 1920x1080+1920+0 (normal left inverted right x axis y axis) 0mm x 0mm\n\
                    DP-2 disconnected (normal left inverted right x axis y axis)\n\
                    VGA-1 connected (normal left inverted right x axis y axis)\n";
        let m = parse_xrandr(text);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(
            m[1],
            (
                "DP-1".into(),
                Monitor {
                    width: 1920,
                    height: 1080,
                    x: 1920,
                    y: 0
                }
            )
        );
    }

    #[test]
    fn xwininfo_parsing() {
        let text = "\nxwininfo: Window id: 0x1e00007 \"xclock\"\n\n  Absolute upper-left X:  700\n  Width: 201\n  Height: 151\n";
        assert_eq!(xwininfo_fields(text), (Some(0x1e00007), Some(201), Some(151)));
    }
}
