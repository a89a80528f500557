//! Runs the Python (GObject introspection) applications against the plugin this build
//! produced: `refusals.py` (irohsrc's refusals by error domain and code) and `uri.py`
//! (playbin and gst-play-1.0 opening a `pixelpass://` URI). Needs python3-gi and
//! gir1.2-gstreamer-1.0 (scripts/install-deps.sh installs them); without them it fails.

use std::path::PathBuf;
use std::process::Command;

/// Debian's python3-gi is built for the system interpreter, which a pyenv or venv `python3`
/// earlier on PATH would hide.
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// The cdylib cargo built for this test run, beside the test binary in `target/<profile>/deps`
/// (the copy one level up is only refreshed by `cargo build`).
fn plugin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let so = exe.parent().unwrap().join("libgstiroh.so");
    assert!(so.exists(), "the plugin was not built at {}", so.display());
    so
}

/// A directory holding only the plugin (the profile directory holds other libraries GStreamer
/// would try to load) and a private registry; removed on drop.
struct PluginDir(PathBuf);

impl PluginDir {
    fn new() -> PluginDir {
        // One per test: tests run in parallel, and each removes its own on drop.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gst-iroh-python-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("libgstiroh.so");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(plugin(), &link).unwrap();
        PluginDir(dir)
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `tests/{script}` against the plugin this build produced: its stdout.
fn run(script: &str) -> String {
    let dir = PluginDir::new();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join(script);
    let out = Command::new(python())
        .arg(&script)
        .env("GST_PLUGIN_PATH", &dir.0)
        .env("GST_REGISTRY", dir.0.join("registry.bin"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {} failed ({}):\n{stdout}\n{stderr}",
        python(),
        script.display(),
        out.status
    );
    stdout
}

#[test]
fn python_sees_refusals_by_error_domain_and_code() {
    let stdout = run("refusals.py");
    assert!(
        stdout.contains("ok: revoked: an error on the bus"),
        "every check ran:\n{stdout}"
    );
}

#[test]
fn playbin_and_gst_play_open_a_pixelpass_uri() {
    let stdout = run("uri.py");
    assert!(
        stdout.contains("ok: bad URI → Gst.URIError.BAD_URI") && stdout.contains("latency"),
        "every check ran:\n{stdout}"
    );
}
