//! `pixelpass host --control stdin`: the host's commands as JSON lines, as a GUI or a script
//! sends them. Real Xvfb screen, real iroh on loopback (relay off), real viewers.

use pixelpass_test_support as support;

use std::io::Write as _;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_pixelpass");

/// A pixelpass with `--events json`, its events collected, its stdin kept for commands.
struct Json {
    proc: Proc,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
    _config: TempDir,
}

impl Json {
    fn start(args: &[&str], display: &str) -> Json {
        let config = TempDir::new("control-config");
        let mut proc = Proc::spawn(
            "pixelpass",
            Command::new(BIN)
                .args(args)
                .args(["--events", "json", "--relay", "disabled", "--bind", "127.0.0.1:0"])
                .env("XDG_CONFIG_HOME", config.path())
                .env("DISPLAY", display)
                .env("WAYLAND_DISPLAY", "")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let child = proc.child.as_mut().unwrap();
        let stdin = child.stdin.take();
        let out = collect(child.stdout.take().unwrap());
        Json {
            proc,
            stdin,
            out,
            _config: config,
        }
    }

    /// The `n`-th (0-based) event of this kind, waiting for it.
    fn event(&self, kind: &str, n: usize, secs: u64) -> serde_json::Value {
        let mut found = None;
        wait_for(Duration::from_secs(secs), || {
            found = events(&self.out.lock().unwrap(), kind).into_iter().nth(n);
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no {kind} event #{n}; events:\n{}", self.out.lock().unwrap()))
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

fn events(out: &str, kind: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == kind)
        .collect()
}

#[test]
fn control_stdin_kicks_revokes_and_its_end_stops_the_host() {
    require!("Xvfb");
    let x = Xvfb::start(320, 240);
    let mut host = Json::start(&["host", "--no-audio", "--control", "stdin"], &x.display);
    let ticket = host.event("ticket", 0, 30)["ticket"].as_str().unwrap().to_string();

    let mut viewer = Json::start(&["view", &ticket, "--player", "none"], &x.display);
    let id = host.event("viewer-joined", 0, 20)["id"].as_str().unwrap().to_string();
    host.send(r#"{"cmd":"dance"}"#);
    let w = host.event("warning", 0, 5);
    assert!(w["message"].as_str().unwrap().contains("not a command"), "{w}");

    host.send(&format!(r#"{{"cmd":"kick","id":"{id}"}}"#));
    let left = host.event("viewer-left", 0, 10);
    assert_eq!(
        (left["id"].as_str(), left["reason"].as_str()),
        (Some(id.as_str()), Some("kicked"))
    );
    assert!(
        viewer.proc.wait_timeout(Duration::from_secs(10)).is_ok(),
        "the kicked viewer ends"
    );

    host.send(r#"{"cmd":"revoke"}"#);
    let new = host.event("ticket", 1, 10)["ticket"].as_str().unwrap().to_string();
    assert_ne!(new, ticket, "revoke gives a new ticket");
    let mut old = Json::start(&["view", &ticket, "--player", "none"], &x.display);
    assert_eq!(
        old.proc.wait_timeout(Duration::from_secs(20)),
        Ok(Some(2)),
        "the old ticket is refused"
    );
    let e = old.event("error", 0, 1);
    assert_eq!(e["kind"], "not-authorized", "{e}");

    host.stdin.take(); // end of stdin: the front end went away
    assert_eq!(host.proc.wait_timeout(Duration::from_secs(10)), Ok(Some(0)));
    let ended = host.event("ended", 0, 1);
    assert_eq!(ended["reason"], "the host stopped the share", "{ended}");
}
