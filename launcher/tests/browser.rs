//! The browser viewer page (web/dist, built by scripts/build-web.sh) watching a real
//! `pixelpass host --source test` through a local plain-http iroh relay, in Debian's headless
//! Chromium. The page serves from an ephemeral 127.0.0.1 port (a secure context) and POSTs
//! its counters to that server (`?report=`), which is how the test reads what it did.
//! Chromium runs in its own process group, killed by PID on every exit path.

use pixelpass_test_support as support;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstiroh::ticket::Ticket;
use serde_json::Value;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_pixelpass");

/// A host and a browser decoding take most of two cores: the tests that run them take turns,
/// so each one's frame rate is its own.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What a refused browser shows: the native viewer's words.
const HOST_FULL: &str = "host is full: it already has its maximum number of viewers";
const BAD_SECRET: &str = "ticket is not valid: the host does not accept its secret";
const REVOKED: &str = "this ticket was revoked: ask the host for a new one";
const NO_RELAY: &str = "this share is not reachable from a browser";

/// The built page, or why the test cannot run.
fn dist() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/dist");
    if d.join("pkg/pixelpass_web_bg.wasm").is_file() {
        return Some(d);
    }
    skip("web/dist is not built (bash scripts/build-web.sh)");
    None
}

/// A local iroh relay on plain http, on its own runtime; stops when dropped.
struct Relay {
    url: String,
    _rt: tokio::runtime::Runtime,
    _server: iroh_relay::server::Server,
}

impl Relay {
    fn start() -> Relay {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(async {
            let mut cfg = iroh_relay::server::ServerConfig::default();
            cfg.relay = Some(iroh_relay::server::RelayConfig::new(SocketAddr::from((
                [127, 0, 0, 1],
                0,
            ))));
            iroh_relay::server::Server::spawn(cfg)
                .await
                .expect("local relay starts")
        });
        let url = format!("http://{}", server.http_addr().expect("relay has an http address"));
        Relay {
            url,
            _rt: rt,
            _server: server,
        }
    }
}

/// Serves the page's folder and keeps the last report POSTed to each `/result/<name>`.
struct PageServer {
    addr: SocketAddr,
    reports: Arc<Mutex<HashMap<String, Value>>>,
}

impl PageServer {
    fn start(root: PathBuf) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reports = Arc::new(Mutex::new(HashMap::new()));
        let r = reports.clone();
        // Lives as long as the test process: the listener thread ends with it.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, r) = (root.clone(), r.clone());
                std::thread::spawn(move || serve_one(stream, &root, &r));
            }
        });
        PageServer { addr, reports }
    }

    fn url(&self, report: &str, ticket: &str) -> String {
        format!("http://{}/?report=/result/{report}#{ticket}", self.addr)
    }

    fn report(&self, name: &str) -> Option<Value> {
        self.reports.lock().unwrap().get(name).cloned()
    }

    /// Waits until the report of `name` satisfies `cond`; returns the last report seen, at
    /// once if the page ended for good without satisfying it (its `ended` says why).
    fn wait(&self, name: &str, timeout: Duration, cond: impl Fn(&Value) -> bool) -> Result<Value, Option<Value>> {
        let mut last = None;
        let mut met = false;
        wait_for(timeout, || {
            last = self.report(name);
            met = last.as_ref().is_some_and(&cond);
            met || last.as_ref().is_some_and(|r| !r["ended"].is_null())
        });
        match met {
            true => Ok(last.unwrap()),
            false => Err(last),
        }
    }
}

/// One HTTP/1.1 request: a file GET, or a report POST to `/result/<name>`.
fn serve_one(mut stream: TcpStream, root: &Path, reports: &Mutex<HashMap<String, Value>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let (status, kind, body) = if method == "POST" {
        let mut body = vec![0; length];
        let _ = reader.read_exact(&mut body);
        if let (Some(name), Ok(v)) = (path.strip_prefix("/result/"), serde_json::from_slice(&body)) {
            reports.lock().unwrap().insert(name.to_string(), v);
        }
        ("204 No Content", "text/plain", Vec::new())
    } else {
        let rel = if path == "/" {
            "index.html"
        } else {
            path.trim_start_matches('/')
        };
        match (rel.contains(".."), std::fs::read(root.join(rel))) {
            (false, Ok(b)) => ("200 OK", content_type(rel), b),
            _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// Headless Chromium on one URL, in a process group of its own: killed (the whole group) and
/// reaped when dropped, whatever happens in the test.
struct Chromium {
    child: Child,
    _profile: TempDir,
}

impl Chromium {
    fn open(url: &str) -> Chromium {
        let profile = TempDir::new("chromium");
        let child = Self::command(url, &profile).spawn().expect("chromium starts");
        Chromium {
            child,
            _profile: profile,
        }
    }

    /// As [`Chromium::open`], with the DevTools protocol on a pipe to act on the page.
    fn open_with_devtools(url: &str) -> (Chromium, DevTools) {
        let profile = TempDir::new("chromium");
        let (theirs_in, ours_out) = std::io::pipe().unwrap();
        let (ours_in, theirs_out) = std::io::pipe().unwrap();
        let (fd_in, fd_out) = (theirs_in.as_raw_fd(), theirs_out.as_raw_fd());
        let mut cmd = Self::command(url, &profile);
        cmd.arg("--remote-debugging-pipe");
        // SAFETY: only async-signal-safe calls between fork and exec. Chromium reads commands
        // on fd 3 and answers on fd 4; copying both above 10 first keeps one from overwriting
        // the other, and dup2's copies are inherited (no close-on-exec).
        unsafe {
            cmd.pre_exec(move || {
                let (a, b) = (
                    libc::fcntl(fd_in, libc::F_DUPFD, 10),
                    libc::fcntl(fd_out, libc::F_DUPFD, 10),
                );
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(a);
                libc::close(b);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("chromium starts");
        drop((theirs_in, theirs_out));
        let (tx, from) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for msg in BufReader::new(ours_in).split(0).map_while(Result::ok) {
                if let Ok(v) = serde_json::from_slice::<Value>(&msg)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let chromium = Chromium {
            child,
            _profile: profile,
        };
        let mut devtools = DevTools {
            to: ours_out,
            from,
            next: 0,
            session: None,
        };
        devtools.attach_to_page();
        (chromium, devtools)
    }

    fn command(url: &str, profile: &TempDir) -> Command {
        let mut cmd = Command::new("chromium");
        cmd.args(["--headless=new", "--no-sandbox", "--no-first-run", "--mute-audio"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--autoplay-policy=no-user-gesture-required")
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        cmd
    }
}

/// Chromium's DevTools protocol over `--remote-debugging-pipe` (JSON messages ending in NUL):
/// runs script in the page the way a user's click would act on it.
struct DevTools {
    to: std::io::PipeWriter,
    from: std::sync::mpsc::Receiver<Value>,
    next: u64,
    /// The page's session, once attached.
    session: Option<String>,
}

impl DevTools {
    /// Sends `method` and waits for its answer (events in between are ignored).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = Value::from(s.as_str());
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("chromium reads its DevTools pipe");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no DevTools answer to {method}: {e}"));
            if v["id"] == id {
                assert!(v["error"].is_null(), "DevTools {method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    fn attach_to_page(&mut self) {
        let mut page = None;
        let found = wait_for(Duration::from_secs(20), || {
            let targets = self.call("Target.getTargets", serde_json::json!({}));
            page = targets["targetInfos"]
                .as_array()
                .and_then(|l| l.iter().find(|t| t["type"] == "page"))
                .map(|t| t["targetId"].clone());
            page.is_some()
        });
        assert!(found, "chromium shows no page");
        let attached = self.call(
            "Target.attachToTarget",
            serde_json::json!({"targetId": page.unwrap(), "flatten": true}),
        );
        self.session = attached["sessionId"].as_str().map(str::to_string);
    }

    /// The value of `expression` evaluated in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({"expression": expression, "returnByValue": true}),
        );
        assert!(
            r["exceptionDetails"].is_null(),
            "{expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let group = self.child.id() as i32;
        // SAFETY: kill(2) on the process group we created for our own child.
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; the group's helpers (renderer, GPU, zygote) go too.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// What most tests share: one small encode (the host and the browser fit two cores).
const ONE_ENCODE: [&str; 4] = ["--quality", "low", "--renditions", "off"];

/// `pixelpass host --source test` on the local relay, events as JSON, commands on stdin.
struct Host {
    proc: Proc,
    _config: TempDir,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Host {
    fn start(relay: &str, page: &str, max_viewers: u32, extra: &[&str]) -> Host {
        let config = TempDir::new("browser-config");
        let mut cmd = Command::new(BIN);
        cmd.args(["host", "--source", "test"])
            .args(extra)
            .args([
                "--events",
                "json",
                "--control",
                "stdin",
                "--relay",
                relay,
                "--bind",
                "127.0.0.1:0",
            ])
            .args(["--web-page", page, "--max-viewers", &max_viewers.to_string()])
            .env("XDG_CONFIG_HOME", config.path())
            .env_remove("PIXELPASS_RELAY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn("pixelpass", &mut cmd);
        let child = proc.child.as_mut().unwrap();
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        Host {
            proc,
            _config: config,
            out,
            err,
        }
    }

    /// The newest `ticket` event with a browser link, waiting for one after `after` of them.
    fn browser_link(&self, after: usize) -> (String, String) {
        let mut found = None;
        let ok = wait_for(Duration::from_secs(30), || {
            let events = self.events("ticket");
            let linked: Vec<_> = events.iter().filter(|v| v["browser_link"].is_string()).collect();
            found = linked.get(after).map(|v| {
                (
                    v["ticket"].as_str().unwrap().to_string(),
                    v["browser_link"].as_str().unwrap().to_string(),
                )
            });
            found.is_some()
        });
        assert!(
            ok,
            "host printed no ticket with a browser link; stderr:\n{}",
            self.err()
        );
        found.unwrap()
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        let out = self.out.lock().unwrap();
        out.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == kind)
            .collect()
    }

    fn command(&mut self, json: &str) {
        let stdin = self.proc.child.as_mut().unwrap().stdin.as_mut().unwrap();
        writeln!(stdin, "{json}").unwrap();
        stdin.flush().unwrap();
    }

    fn err(&self) -> String {
        self.err.lock().unwrap().clone()
    }
}

/// The median and 90th percentile of a list of latencies the page keeps (ms), if any.
fn percentiles(r: &Value, field: &str) -> Option<(u64, u64)> {
    let mut l: Vec<f64> = r[field].as_array()?.iter().filter_map(Value::as_f64).collect();
    l.sort_by(f64::total_cmp);
    let at = |q: usize| l[l.len() * q / 10].round() as u64;
    (!l.is_empty()).then(|| (at(5), at(9)))
}

fn num(v: &Value, field: &str) -> f64 {
    v[field].as_f64().unwrap_or(0.0)
}

/// A browser's page refused `ticket` with `text` (the message shown, and its end state).
fn assert_refused(page: &PageServer, name: &str, ticket: &str, text: &str) {
    let _browser = Chromium::open(&page.url(name, ticket));
    let r = page.wait(name, Duration::from_secs(30), |r| r["ended"].is_object());
    let r = r.unwrap_or_else(|last| panic!("{name}: the page did not stop; last report: {last:?}"));
    let shown = r["message"].as_str().unwrap_or("");
    assert!(
        shown.starts_with(text),
        "{name}: the page shows {shown:?}, not {text:?}"
    );
    assert_eq!(num(&r, "framesDecoded"), 0.0, "{name}: nothing was decoded");
}

#[test]
fn a_browser_watches_a_share_and_shows_refusals() {
    require!("chromium");
    let Some(root) = dist() else { return };
    let relay = Relay::start();
    let page = PageServer::start(root);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut host = Host::start(&relay.url, &format!("http://{}/", page.addr), 1, &ONE_ENCODE);
    let (ticket, link) = host.browser_link(0);
    assert_eq!(link, format!("http://{}/#{ticket}", page.addr));

    let watcher = Chromium::open(&page.url("watch", &ticket));
    let first = page.wait("watch", Duration::from_secs(40), |r| num(r, "framesDecoded") >= 1.0);
    let first = first.unwrap_or_else(|last| panic!("no frame decoded; last report {last:?}; host:\n{}", host.err()));
    // It keeps decoding: 60 frames more (2 s of the share; how fast is a figure, not a test:
    // a busy or slow machine decodes fewer per second).
    let t0 = Instant::now();
    let r = page.wait("watch", Duration::from_secs(30), |r| {
        num(r, "framesDecoded") >= num(&first, "framesDecoded") + 60.0
    });
    let r = r.unwrap_or_else(|last| panic!("the page stopped decoding; last report {last:?}"));
    let frames = num(&r, "framesDecoded") - num(&first, "framesDecoded");
    let (decoded, drawn) = (
        percentiles(&r, "captureToDecodedMs"),
        percentiles(&r, "captureToDrawnMs"),
    );
    assert!(
        decoded.is_some() && drawn.is_some(),
        "the page measures its latency: {r}"
    );
    eprintln!(
        "browser: {frames} frames decoded in {:.1} s; capture → decoded p50/p90 {:?} ms, → drawn {:?} ms (local relay); {r}",
        t0.elapsed().as_secs_f64(),
        decoded.unwrap(),
        drawn.unwrap()
    );
    assert_eq!(r["decoderErrors"], serde_json::json!([]), "no decoder error");
    assert!(r["ended"].is_null(), "still watching: {r}");
    assert_eq!(
        r["firstUnitKey"], true,
        "the first access unit the page got was a keyframe"
    );
    assert_eq!(r["canvasNonBlank"], true, "the canvas shows the picture: {r}");
    assert!(num(&r, "audioFramesDecoded") > 0.0, "audio decodes too: {r}");
    let joined = host.events("viewer-joined");
    assert_eq!(joined.len(), 1, "{joined:?}");
    assert_eq!(joined[0]["path"], "relay", "a browser comes through the relay");

    // One seat, taken: the next browser is told the host is full.
    assert_refused(&page, "full", &ticket, HOST_FULL);
    drop(watcher);
    assert!(
        wait_for(Duration::from_secs(15), || !host.events("viewer-left").is_empty()),
        "the host saw the browser leave"
    );

    let mut wrong: Ticket = ticket.parse().unwrap();
    wrong.secret[0] ^= 1;
    assert_refused(&page, "secret", &wrong.to_string(), BAD_SECRET);

    host.command(r#"{"cmd":"revoke"}"#);
    let (fresh, _) = host.browser_link(1);
    assert_ne!(fresh, ticket, "revoking makes a new ticket");
    assert_refused(&page, "revoked", &ticket, REVOKED);
}

#[test]
fn a_ticket_without_a_relay_gets_a_clear_message() {
    require!("chromium");
    let Some(root) = dist() else { return };
    let page = PageServer::start(root);
    let addr = iroh::EndpointAddr::new(iroh::SecretKey::from_bytes(&[9; 32]).public())
        .with_ip_addr("127.0.0.1:4433".parse().unwrap());
    let ticket = Ticket { addr, secret: [1; 16] }.to_string();
    let _browser = Chromium::open(&page.url("norelay", &ticket));
    let r = page.wait("norelay", Duration::from_secs(30), |r| r["ended"].is_object());
    let r = r.unwrap_or_else(|last| panic!("the page did not refuse the ticket; last report: {last:?}"));
    assert_eq!(r["ended"]["kind"], "ticket");
    let shown = r["message"].as_str().unwrap_or("");
    assert!(shown.starts_with(NO_RELAY), "the page shows {shown:?}");
}

#[test]
fn the_page_reconnects_to_a_restarted_host() {
    require!("chromium");
    let Some(root) = dist() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let relay = Relay::start();
    let page = PageServer::start(root);
    let keys = TempDir::new("browser-key");
    let key = keys.path().join("host.key");
    let key_arg = [&ONE_ENCODE[..], &["--key-file", key.to_str().unwrap()]].concat();
    let web_page = format!("http://{}/", page.addr);
    let mut host = Host::start(&relay.url, &web_page, 2, &key_arg);
    let (ticket, _) = host.browser_link(0);
    let _browser = Chromium::open(&page.url("again", &ticket));
    let before = page.wait("again", Duration::from_secs(40), |r| num(r, "framesDecoded") >= 30.0);
    let before = before.unwrap_or_else(|last| panic!("no frames; last report {last:?}; host:\n{}", host.err()));

    // Gone without a word (no End): the page notices the dead connection and dials again.
    host.proc.signal(libc::SIGKILL);
    let _ = host.proc.wait_timeout(Duration::from_secs(5));
    let host = Host::start(&relay.url, &web_page, 2, &key_arg);
    let (old, new): (Ticket, Ticket) = (ticket.parse().unwrap(), host.browser_link(0).0.parse().unwrap());
    assert_eq!(
        (old.addr.id, old.secret),
        (new.addr.id, new.secret),
        "the key file keeps the host"
    );
    let frames = num(&before, "framesDecoded");
    let after = page.wait("again", Duration::from_secs(45), |r| {
        r["stats"]["reconnects"].as_f64() >= Some(1.0) && num(r, "framesDecoded") >= frames + 30.0
    });
    let after = after.unwrap_or_else(|last| panic!("no frames after the restart; last report {last:?}"));
    assert!(after["ended"].is_null(), "still watching: {after}");
    assert_eq!(after["decoderErrors"], serde_json::json!([]), "no decoder error");
}

/// The page's quality menu: a viewer on a metered connection picks the lowest rendition, the
/// host moves it there at the next GOP, the page keeps decoding through the change of size;
/// the choice is remembered by the next visit, which starts there; "Auto" brings it back to
/// the top.
#[test]
fn the_quality_menu_moves_the_page_between_renditions_without_a_decoder_error() {
    require!("chromium");
    let Some(root) = dist() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let relay = Relay::start();
    let page = PageServer::start(root);
    let host = Host::start(&relay.url, &format!("http://{}/", page.addr), 2, &["--quality", "low"]);
    let (ticket, _) = host.browser_link(0);
    let (_browser, mut devtools) = Chromium::open_with_devtools(&page.url("menu", &ticket));
    let first = page.wait("menu", Duration::from_secs(40), |r| {
        num(r, "framesDecoded") >= 30.0 && r["rendition"] != ""
    });
    first.unwrap_or_else(|last| panic!("no frames; last report {last:?}; host:\n{}", host.err()));
    let menu = devtools.eval(
        "(() => { const m = document.getElementById('quality'); \
         return { hidden: m.hidden, options: [...m.options].map((o) => [o.value, o.text]) }; })()",
    );
    let options = menu["options"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        menu["hidden"], false,
        "a share of several renditions offers the menu: {menu}"
    );
    assert!(options.len() >= 3, "auto and each rendition: {menu}");
    assert_eq!(options[0][0], "0", "auto first: {menu}");
    let lowest = options.last().unwrap()[0].as_str().unwrap().to_string();
    // "Up to 180p (0.1 Mbit/s)": a rendition's name
    let name_of = |option: &Value| {
        let text = option[1].as_str().unwrap_or("");
        text.trim_start_matches("Up to ").split(' ').next().unwrap().to_string()
    };
    let lowest_name = name_of(options.last().unwrap());
    // On the top rendition first: three encodes and a browser on two cores can have moved
    // the page down for congestion already (then it comes back after the hold and a probe).
    let top_name = name_of(&options[1]);
    let top = page.wait("menu", Duration::from_secs(40), |r| {
        r["rendition"] == top_name.as_str() && num(r, "framesDecoded") >= 30.0
    });
    let top =
        top.unwrap_or_else(|last| panic!("not on the top rendition; last report {last:?}; host:\n{}", host.err()));
    let top_width = num(&top, "width");

    let pick = |devtools: &mut DevTools, value: &str| {
        devtools.eval(&format!(
            "(() => {{ const m = document.getElementById('quality'); m.value = '{value}'; \
             m.dispatchEvent(new Event('change')); return m.value; }})()"
        ))
    };
    assert_eq!(pick(&mut devtools, &lowest), lowest.as_str());
    let frames = num(&top, "framesDecoded");
    let low = page.wait("menu", Duration::from_secs(15), |r| {
        r["rendition"] == lowest_name.as_str()
            && num(r, "width") < top_width
            && num(r, "framesDecoded") >= frames + 60.0
    });
    let low = low.unwrap_or_else(|last| {
        panic!(
            "the page did not move down; last report {last:?}; host:\n{}",
            host.err()
        )
    });
    eprintln!(
        "browser: {} ({}) -> {} ({}) after choosing {lowest} kbit/s",
        top_name,
        top_width,
        low["rendition"],
        num(&low, "width")
    );
    assert_eq!(low["decoderErrors"], serde_json::json!([]), "no decoder error: {low}");
    // (one switch, unless the load of three encodes and a browser on two cores moved it down
    // for congestion first)
    assert!(num(&low, "renditionChanges") >= 1.0, "{low}");
    let moved = host.events("rendition-changed");
    assert!(
        moved.iter().any(|e| e["reason"] == "ceiling"),
        "the host says why it moved the viewer: {moved:?}"
    );

    // The next visit starts on the chosen rendition (no switch) and offers it selected.
    devtools.call("Page.reload", serde_json::json!({}));
    let again = page.wait("menu", Duration::from_secs(40), |r| {
        r["connected"] == true
            && num(r, "framesDecoded") >= 30.0
            && num(r, "renditionChanges") == 0.0
            && r["rendition"] != ""
    });
    let again = again.unwrap_or_else(|last| {
        panic!(
            "no frames after the reload; last report {last:?}; host:\n{}",
            host.err()
        )
    });
    assert_eq!(again["rendition"], low["rendition"], "remembered: {again}");
    assert_eq!(num(&again, "ceilingKbps").to_string(), lowest, "{again}");
    assert_eq!(
        devtools.eval("document.getElementById('quality').value"),
        lowest.as_str()
    );

    // Up again needs the hold (4 s on the rendition) and a probe (2 s) showing the path
    // carries it, twice that if a probe fails on this busy machine, then a GOP boundary.
    assert_eq!(pick(&mut devtools, "0"), "0");
    let frames = num(&again, "framesDecoded");
    let back = page.wait("menu", Duration::from_secs(30), |r| {
        r["rendition"] == top_name.as_str() && num(r, "width") == top_width && num(r, "framesDecoded") >= frames + 60.0
    });
    let back = back.unwrap_or_else(|last| {
        panic!(
            "the page did not move back up; last report {last:?}; host:\n{}",
            host.err()
        )
    });
    assert_eq!(back["decoderErrors"], serde_json::json!([]), "no decoder error: {back}");
    assert_eq!(back["canvasNonBlank"], true, "the canvas shows the picture: {back}");
}

/// A decoding error (here a garbage access unit the test slips into the page's decoder; in
/// the wild a codec reclaimed in a background tab or a hardware decoder's glitch) closes the
/// page's decoder: the page asks the host for a keyframe, gets one before the next GOP would
/// have brought it, and plays on from there with one error counted.
#[test]
fn a_decoder_error_is_mended_at_a_keyframe_the_page_asks_for() {
    require!("chromium");
    let Some(root) = dist() else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let relay = Relay::start();
    let page = PageServer::start(root);
    let host = Host::start(&relay.url, &format!("http://{}/", page.addr), 1, &ONE_ENCODE);
    let (ticket, _) = host.browser_link(0);
    let (_browser, mut devtools) = Chromium::open_with_devtools(&page.url("mend", &ticket));
    let playing = page.wait("mend", Duration::from_secs(40), |r| num(r, "framesDecoded") >= 30.0);
    let playing = playing.unwrap_or_else(|last| panic!("no frames; last report {last:?}; host:\n{}", host.err()));

    // The second delta unit after the next keyframe becomes garbage: the next keyframe the
    // share brings by itself is a whole GOP (2 s) after that keyframe.
    devtools.eval(
        "(() => { const decode = VideoDecoder.prototype.decode; \
         const t = window.injected = { keys: [], errorAt: null, deltas: 0 }; \
         VideoDecoder.prototype.decode = function (chunk) { \
           if (chunk.type === 'key') t.keys.push(chunk.timestamp); \
           else if (t.keys.length && t.errorAt === null && ++t.deltas === 2) { \
             t.errorAt = chunk.timestamp; \
             const junk = new Uint8Array(2000).map((_, i) => (i * 7919 + 13) & 255); \
             junk.set([0, 0, 0, 1, 0x41]); \
             chunk = new EncodedVideoChunk({ type: 'delta', timestamp: chunk.timestamp, data: junk }); \
           } \
           return decode.call(this, chunk); }; \
         return true; })()",
    );
    let frames = num(&playing, "framesDecoded");
    let mended = page.wait("mend", Duration::from_secs(30), |r| {
        r["decoderErrors"].as_array().is_some_and(|e| !e.is_empty()) && num(r, "framesDecoded") >= frames + 60.0
    });
    let mended =
        mended.unwrap_or_else(|last| panic!("the page did not play on; last report {last:?}; host:\n{}", host.err()));
    let t = devtools.eval("window.injected");
    let error_at = t["errorAt"].as_f64().expect("the garbage went in");
    let keys: Vec<f64> = t["keys"].as_array().unwrap().iter().filter_map(Value::as_f64).collect();
    let before = keys.iter().copied().rfind(|&k| k < error_at).unwrap();
    let after = keys.iter().copied().find(|&k| k > error_at);
    let after = after.unwrap_or_else(|| panic!("no keyframe after the error: {t}; {mended}"));
    eprintln!(
        "browser: decoder error at {:.0} ms of the GOP, keyframe {:.0} ms later (the next GOP was due {:.0} ms later); {mended}",
        (error_at - before) / 1000.0,
        (after - error_at) / 1000.0,
        (before + 2e6 - error_at) / 1000.0
    );
    assert_eq!(
        mended["decoderErrors"].as_array().unwrap().len(),
        1,
        "one error, not one per unit until the keyframe: {mended}"
    );
    assert_eq!(num(&mended, "keyframeRequests"), 1.0, "{mended}");
    assert!(
        after - before < 1.5e6,
        "the keyframe came on request, before the 2 s GOP's next one: {t}"
    );
    assert!(mended["ended"].is_null(), "still watching: {mended}");
    assert_eq!(mended["canvasNonBlank"], true, "the canvas shows the picture: {mended}");
}
