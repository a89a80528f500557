//! Players across rendition switches: a host with two renditions (640x360 and 320x180, one
//! source, aligned GOPs), a `pixelpass view` serving players over its loopback HTTP, and mpv,
//! VLC and ffmpeg on it while the host moves the viewer down and back up (its `set-max-bitrate`
//! action, so the switches happen on cue). Every player must keep playing: mpv sees both
//! sizes and keeps going, VLC keeps running, ffmpeg decodes to the end without a decoder error.

use pixelpass_test_support as support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gst::prelude::*;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_pixelpass");

const HOST: &str = "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=640,height=360,framerate=30/1 \
    ! tee name=vt \
    audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! audio/x-raw,rate=48000,channels=2 ! avenc_aac ! aacparse \
    ! tee name=at \
    irohsink name=sink relay=disabled bind-address=127.0.0.1:0 sink::rendition-name=360p sink::bitrate=1500 \
    sink_1::rendition-name=180p sink_1::bitrate=300 \
    vt. ! queue ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=1500 \
    ! h264parse config-interval=-1 ! queue ! mux0. \
    vt. ! queue ! videoscale ! video/x-raw,width=320,height=180 \
    ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=300 ! h264parse config-interval=-1 \
    ! queue ! mux1. \
    at. ! queue ! mux0. at. ! queue ! mux1. \
    mpegtsmux name=mux0 ! sink.sink mpegtsmux name=mux1 ! sink.sink_1";

/// The host pipeline, set to NULL when dropped.
struct Host(gst::Pipeline, gst::Element);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

impl Host {
    fn start() -> (Host, String) {
        gst::init().unwrap();
        gstiroh::plugin_register_static().unwrap();
        let p = gst::parse::launch(HOST).unwrap().downcast::<gst::Pipeline>().unwrap();
        let sink = p.by_name("sink").unwrap();
        let host = Host(p, sink);
        host.0.set_state(gst::State::Playing).unwrap();
        let mut ticket = None;
        assert!(wait_for(Duration::from_secs(20), || {
            ticket = host.1.property::<Option<String>>("ticket");
            ticket.is_some()
        }));
        (host, ticket.unwrap())
    }

    /// (id, rendition) of the first viewer.
    fn viewer(&self) -> Option<(String, String)> {
        let st = self.1.property::<gst::Structure>("stats");
        let v = st
            .get::<gst::Array>("viewer-stats")
            .ok()?
            .first()?
            .get::<gst::Structure>()
            .ok()?;
        Some((v.get("id").ok()?, v.get("rendition").ok()?))
    }

    fn rendition(&self) -> String {
        self.viewer().map(|v| v.1).unwrap_or_default()
    }
}

/// `pixelpass view --player none`; returns it and its local URL.
fn viewer(ticket: &str, config: &TempDir) -> (Proc, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["view", ticket, "--player", "none", "--events", "json"])
        .args(["--relay", "disabled", "--bind", "127.0.0.1:0"])
        .env("XDG_CONFIG_HOME", config.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("pixelpass view", &mut cmd);
    let out = collect(p.child.as_mut().unwrap().stdout.take().unwrap());
    let text = wait_text(&out, "\"event\":\"url\"", Duration::from_secs(20)).expect("the viewer prints its URL");
    let url = event_field(&text, "url", "url").unwrap();
    (p, url)
}

/// cvlc headless on `url`, errors on stderr. VLC refuses to run as root: as root (CI), it
/// runs as nobody.
fn vlc_command(url: &str, home: &std::path::Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let _ = Command::new("chown").args(["65534", &home.to_string_lossy()]).status();
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "cvlc"]);
        c
    } else {
        Command::new("cvlc")
    };
    cmd.args([
        "--intf",
        "dummy",
        "--vout",
        "dummy",
        "--aout",
        "dummy",
        "--no-loop",
        url,
    ])
    .env("HOME", home)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    cmd
}

/// Waits until mpv reports video height `h`; records every height it reports meanwhile.
fn mpv_reaches(sock: &std::path::Path, h: u64, seen: &mut Vec<u64>, timeout: Duration) -> bool {
    wait_for(timeout, || {
        let now = mpv_get(sock, "height").and_then(|v| v.as_u64());
        if let Some(now) = now
            && seen.last() != Some(&now)
        {
            seen.push(now);
        }
        now == Some(h)
    })
}

#[test]
fn mpv_vlc_and_ffmpeg_keep_playing_through_a_down_and_an_up_switch() {
    if !(have("mpv") && have("cvlc") && have("ffmpeg")) {
        eprintln!("SKIP: mpv, cvlc and ffmpeg are needed");
        return;
    }
    let (host, ticket) = Host::start();
    let config = TempDir::new("renditions-config");
    let (_viewer, url) = viewer(&ticket, &config);
    let dir = TempDir::new("renditions-mpv");
    let (mut mpv, sock) = mpv_headless(&url, dir.path(), None);
    let vlc_home = TempDir::new("renditions-vlc");
    let mut vlc = Proc::spawn("vlc", &mut vlc_command(&url, vlc_home.path()));
    let vlc_err = collect(vlc.child.as_mut().unwrap().stderr.take().unwrap());
    let mut ffmpeg_cmd = Command::new("ffmpeg");
    ffmpeg_cmd
        .args([
            "-nostdin", "-v", "info", "-i", &url, "-t", "22", "-an", "-vf", "showinfo", "-f", "null", "-",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut ffmpeg = Proc::spawn("ffmpeg", &mut ffmpeg_cmd);
    let ff_err = collect(ffmpeg.child.as_mut().unwrap().stderr.take().unwrap());

    let mut seen = Vec::new();
    assert!(
        mpv_reaches(&sock, 360, &mut seen, Duration::from_secs(20)),
        "mpv plays the top: {seen:?}"
    );
    let (id, _) = host.viewer().expect("one viewer");
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    assert!(host.1.emit_by_name::<bool>("set-max-bitrate", &[&id, &500u32]));
    assert!(
        wait_for(Duration::from_secs(5), || host.rendition() == "180p"),
        "moved down"
    );
    eprintln!("FIGURE players_down_switch_s {:.2}", t.elapsed().as_secs_f64());
    assert!(
        mpv_reaches(&sock, 180, &mut seen, Duration::from_secs(5)),
        "mpv follows down: {seen:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    assert!(host.1.emit_by_name::<bool>("set-max-bitrate", &[&id, &0u32]));
    assert!(
        wait_for(Duration::from_secs(12), || host.rendition() == "360p"),
        "back up after a probe"
    );
    eprintln!("FIGURE players_up_switch_s {:.2}", t.elapsed().as_secs_f64());
    assert!(
        mpv_reaches(&sock, 360, &mut seen, Duration::from_secs(5)),
        "mpv follows up: {seen:?}"
    );
    std::thread::sleep(Duration::from_secs(2));

    assert!(mpv.alive(), "mpv still plays after both switches");
    assert!(mpv_get(&sock, "time-pos").is_some(), "mpv is still playing");
    let vlc_text = vlc_err.lock().unwrap().clone();
    assert!(vlc.alive(), "VLC still plays after both switches: {vlc_text}");
    // (its interface modules complain without a desktop session: not about the stream)
    let vlc_errors: Vec<&str> = vlc_text
        .lines()
        .filter(|l| l.contains(" error:") && !l.contains("interface"))
        .collect();
    assert!(vlc_errors.is_empty(), "no error from VLC: {vlc_errors:#?}");
    let code = ffmpeg.wait_timeout(Duration::from_secs(30));
    let text = ff_err.lock().unwrap().clone();
    assert_eq!(code, Ok(Some(0)), "ffmpeg decoded to the end: {text}");
    let sizes = |s: &str| text.lines().filter(|l| l.contains("showinfo") && l.contains(s)).count();
    assert!(
        sizes("s:640x360") > 0 && sizes("s:320x180") > 0,
        "ffmpeg saw both sizes"
    );
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("[h264") || l.to_lowercase().contains("error"))
        .collect();
    assert!(
        complaints.is_empty(),
        "no decoder complaint from ffmpeg: {complaints:#?}"
    );
    eprintln!("mpv heights: {seen:?}");
}
