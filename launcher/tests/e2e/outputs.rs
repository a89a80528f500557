//! The host's outputs besides its viewers: `--record` to a file and `--publish` to real
//! broadcast servers (nginx with Debian's RTMP module, `srt-live-transmit` as an SRT
//! listener), each started and stopped by PID.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use super::*;

/// How many `kind` events `p` has printed so far.
fn count(p: &Pixelpass, kind: &str) -> usize {
    events_of(&p.out.lock().unwrap(), kind).len()
}

/// Waits for `n` more `kind` events than `p` has printed so far.
fn wait_more(p: &Pixelpass, kind: &str, n: usize, timeout: Duration) -> bool {
    let seen = count(p, kind);
    wait_for(timeout, || count(p, kind) >= seen + n)
}

/// Checks that `file` holds H.264 and AAC of about `wall` seconds, decoding cleanly.
fn assert_recorded(file: &Path, wall: f64) {
    let (codecs, duration) = probe_file(file);
    assert!(
        codecs.contains(&"h264".into()) && codecs.contains(&"aac".into()),
        "{}: {codecs:?}",
        file.display()
    );
    assert!(
        (duration - wall).abs() <= 1.5,
        "{}: {duration:.2} s recorded over {wall:.2} s of capture",
        file.display()
    );
    assert_eq!(decode_errors(file), "", "{} decodes cleanly", file.display());
}

#[test]
fn the_host_records_from_the_start_viewers_or_not_and_a_full_disk_does_not_stop_it() {
    require!("ffmpeg", "ffprobe");
    let dir = TempDir::new("host-record");
    // A full disk: /dev/full fails every write with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", dir.path().join("full.ts")).unwrap();
    let files: Vec<PathBuf> = ["host.mp4", "host.mkv", "host.ts", "full.ts"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let mut hosts: Vec<(Pixelpass, Instant)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut args = vec!["--source", "test", "--record", f.to_str().unwrap()];
            // the first records the top of a ladder; the others spare the CPU one encode
            if i > 0 {
                args.extend(["--renditions", "off", "--quality", "low"]);
            }
            let (h, _) = host_json(&args, &[]);
            // capture starts with no viewer: the recording asked for it
            let started = wait_text(&h.out, "capture-started", Duration::from_secs(30));
            assert!(started.is_some(), "{}", h.err.lock().unwrap());
            (h, Instant::now())
        })
        .collect();
    let ticket = events_of(&hosts[0].0.out.lock().unwrap(), "ticket")[0]["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    // A viewer comes and goes: capture goes on for the recording.
    let (mut viewer, _) = Pixelpass::viewer(&ticket, &[]);
    assert!(wait_text(&viewer.out, "\"event\":\"connected\"", Duration::from_secs(30)).is_some());
    viewer.proc.signal(libc::SIGINT);
    assert_eq!(viewer.exit(Duration::from_secs(10)), Ok(Some(0)));
    assert!(
        wait_text(&hosts[0].0.out, "viewer-left", Duration::from_secs(10)).is_some(),
        "{}",
        hosts[0].0.out.lock().unwrap()
    );
    assert!(wait_more(&hosts[0].0, "host-stats", 3, Duration::from_secs(10)));
    let full = &hosts[3].0;
    assert!(
        wait_more(full, "host-stats", 2, Duration::from_secs(10)),
        "the share goes on"
    );
    let out = full.out.lock().unwrap().clone();
    assert!(
        events_of(&out, "warning")
            .iter()
            .any(|w| w["message"].as_str().unwrap().contains("No space left")),
        "a full disk is one warning with the reason: {out}"
    );
    for (i, (h, started)) in hosts.iter_mut().enumerate() {
        h.proc.signal(libc::SIGINT);
        let wall = started.elapsed().as_secs_f64();
        assert_eq!(h.exit(Duration::from_secs(20)), Ok(Some(0)));
        let out = h.out.lock().unwrap().clone();
        assert_eq!(count(h, "capture-stopped"), 1, "capture ran until the end: {out}");
        if i == 3 {
            continue;
        }
        assert_eq!(events_of(&out, "recorded").len(), 1, "{out}");
        assert_eq!(events_of(&out, "warning").len(), 0, "{out}");
        assert_recorded(&files[i], wall);
    }
}

/// A free port on loopback (TCP or UDP), released for the server about to take it.
fn free_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    } else {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}

/// nginx with the RTMP module in the foreground, recording each stream published to
/// `rtmp://127.0.0.1:port/live/KEY` into `dir/rec/`.
fn nginx_rtmp(dir: &Path, port: u16) -> Proc {
    let conf = dir.join("nginx.conf");
    let rec = dir.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    std::fs::write(
        &conf,
        format!(
            "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
             daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log info;\n\
             events {{}}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{\n\
               live on; record all; record_path {r}; record_unique on; }} }} }}\n",
            d = dir.display(),
            r = rec.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Proc::spawn("nginx", &mut cmd);
    assert!(
        wait_for(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "nginx listens: {}",
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    );
    p
}

/// What the server recorded so far, one file per publish session, oldest first.
fn recordings(dir: &Path) -> Vec<PathBuf> {
    let mut r: Vec<PathBuf> = std::fs::read_dir(dir.join("rec"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    r.sort();
    r
}

/// Waits for the server's recording of session `n` to hold media (a few seconds), not just
/// a handshake.
fn recording_grows(dir: &Path, n: usize) -> bool {
    wait_for(Duration::from_secs(20), || {
        recordings(dir)
            .get(n)
            .is_some_and(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 100_000))
    })
}

/// The `publish-state` events' states so far.
fn publish_states(p: &Pixelpass) -> Vec<String> {
    events_of(&p.out.lock().unwrap(), "publish-state")
        .iter()
        .map(|e| e["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn wait_live(p: &Pixelpass, n: usize) -> bool {
    wait_for(Duration::from_secs(30), || {
        publish_states(p).iter().filter(|s| *s == "live").count() >= n
    })
}

#[test]
fn publishing_to_rtmp_survives_a_server_restart_and_never_disturbs_viewers() {
    require!("nginx", "ffprobe", "ffmpeg");
    let dir = TempDir::new("rtmp");
    let port = free_port(false);
    let mut server = nginx_rtmp(dir.path(), port);
    let url = format!("rtmp://127.0.0.1:{port}/live/s3cret-key");
    let (mut host, ticket) = host_json(&["--source", "test", "--renditions", "off", "--publish", &url], &[]);
    assert!(wait_live(&host, 1), "{}", host.out.lock().unwrap());
    let (viewer, _) = Pixelpass::viewer(&ticket, &[]);
    assert!(recording_grows(dir.path(), 0), "{}", host.out.lock().unwrap());
    // a player pulls the live stream from the server
    let (codecs, _) = probe_file(Path::new(&url));
    assert!(
        codecs.contains(&"h264".into()) && codecs.contains(&"aac".into()),
        "{codecs:?}"
    );
    // The server dies: publishing retries; the viewer goes on untouched.
    server.signal(libc::SIGKILL);
    let _ = server.wait_timeout(Duration::from_secs(5));
    assert!(
        wait_for(Duration::from_secs(20), || publish_states(&host)
            .contains(&"retrying".into())),
        "{}",
        host.out.lock().unwrap()
    );
    assert!(wait_more(&viewer, "viewer-stats", 3, Duration::from_secs(10)));
    let _server = nginx_rtmp(dir.path(), port);
    assert!(wait_live(&host, 2), "back live: {}", host.out.lock().unwrap());
    assert!(
        recording_grows(dir.path(), 1),
        "{:?} {}",
        recordings(dir.path()),
        host.out.lock().unwrap()
    );
    host.proc.signal(libc::SIGINT);
    assert_eq!(host.exit(Duration::from_secs(20)), Ok(Some(0)));
    let out = host.out.lock().unwrap().clone() + &host.err.lock().unwrap();
    assert!(!out.contains("s3cret"), "the stream key never shows: {out}");
    assert!(out.contains(&format!("rtmp://127.0.0.1:{port}/live/…")), "{out}");
    let stats = events_of(&viewer.out.lock().unwrap(), "viewer-stats");
    assert_eq!(stats.last().unwrap()["gops_skipped"].as_u64(), Some(0), "{stats:?}");
    // Each session's recording on the server holds both streams and decodes cleanly.
    let recs = recordings(dir.path());
    assert_eq!(recs.len(), 2, "one recording per session: {recs:?}");
    for rec in &recs {
        let (codecs, duration) = probe_file(rec);
        assert!(
            codecs.contains(&"h264".into()) && codecs.contains(&"aac".into()),
            "{codecs:?}"
        );
        assert!(duration > 1.0, "{}: {duration} s", rec.display());
        assert_eq!(decode_errors(rec), "", "{} starts at a keyframe", rec.display());
    }
}

#[test]
fn publishing_to_srt_carries_the_passphrase_and_the_mpeg_ts() {
    require!("srt-live-transmit", "ffprobe", "ffmpeg");
    let dir = TempDir::new("srt");
    let port = free_port(true);
    let got = dir.path().join("got.ts");
    let secret = "pixelpass-test-passphrase";
    let mut cmd = Command::new("srt-live-transmit");
    cmd.args([
        "-q",
        &format!("srt://127.0.0.1:{port}?mode=listener&passphrase={secret}"),
        "file://con",
    ])
    .stdout(std::fs::File::create(&got).unwrap())
    .stderr(Stdio::null());
    let mut listener = Proc::spawn("srt-live-transmit", &mut cmd);
    let url = format!("srt://127.0.0.1:{port}?passphrase={secret}&streamid=me");
    let (mut host, _) = host_json(&["--source", "test", "--renditions", "off", "--publish", &url], &[]);
    assert!(wait_live(&host, 1), "{}", host.out.lock().unwrap());
    assert!(wait_for(Duration::from_secs(20), || {
        std::fs::metadata(&got).is_ok_and(|m| m.len() > 200_000)
    }));
    host.proc.signal(libc::SIGINT);
    assert_eq!(host.exit(Duration::from_secs(20)), Ok(Some(0)));
    listener.signal(libc::SIGTERM);
    let _ = listener.wait_timeout(Duration::from_secs(5));
    let out = host.out.lock().unwrap().clone() + &host.err.lock().unwrap();
    assert!(!out.contains(secret), "the passphrase never shows: {out}");
    let (codecs, _) = probe_file(&got);
    assert!(
        codecs.contains(&"h264".into()) && codecs.contains(&"aac".into()),
        "{codecs:?}"
    );
    assert_eq!(decode_errors(&got), "", "it starts at a keyframe, after the tables");
}

#[test]
fn a_publish_url_that_cannot_work_is_a_usage_error() {
    for (url, says) in [
        (
            "http://example.com/live",
            "use rtmp://, rtmps:// (FLV) or srt:// (MPEG-TS)",
        ),
        ("rtmp://", "names no server"),
    ] {
        let (code, err, _) = run_to_end(&["host", "--publish", url], &[]);
        assert_eq!(code, Some(2), "{url}: {err}");
        assert!(err.contains(says), "{url}: {err}");
    }
}
