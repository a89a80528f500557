//! Runs `refusals.py`: irohsrc's refusals as a Python (GObject introspection) application
//! sees them, against the plugin this build produced. Needs python3-gi and
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
        let dir = std::env::temp_dir().join(format!("gst-iroh-python-{}", std::process::id()));
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

#[test]
fn python_sees_refusals_by_error_domain_and_code() {
    let dir = PluginDir::new();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/refusals.py");
    let out = Command::new(python())
        .arg(&script)
        .env("GST_PLUGIN_PATH", &dir.0)
        .env("GST_REGISTRY", dir.0.join("registry.bin"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {} failed ({}):\n{stdout}\n{stderr}",
        python(),
        script.display(),
        out.status
    );
    assert!(
        stdout.contains("ok: revoked: an error on the bus"),
        "every check ran:\n{stdout}"
    );
}
