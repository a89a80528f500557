//! The latency meter: the built-in player's capture → display figure, and `view --stats`.

use super::*;

#[test]
fn the_built_in_player_measures_capture_to_display_in_its_window() {
    require!("Xvfb", "xdotool");
    let x = Xvfb::start(1280, 720);
    let env = display_env(&x);
    let (_host, ticket) = Pixelpass::host(&["--source", "test", "--renditions", "off", "--quality", "low"], &[]);
    let mut viewer = Pixelpass::start(&["view", &ticket, "--player", "gst", "--events", "json"], &env);
    let measured = || -> Vec<(f64, f64)> {
        events_of(&viewer.out.lock().unwrap(), "viewer-stats")
            .iter()
            .filter_map(|s| Some((s["latency_ms"].as_f64()?, s["display_latency_ms"].as_f64()?)))
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(30), || measured().len() >= 4),
        "{}\n{}",
        viewer.out.lock().unwrap(),
        viewer.err.lock().unwrap()
    );
    for (receive, display) in measured().into_iter().skip(1) {
        assert!(display > 0.0, "{display}");
        // The player's own share: decode, convert, draw of 854x480 (the bench measures it).
        assert!(
            display >= receive - 40.0 && display <= receive + 400.0,
            "capture→display {display:.0} ms against capture→receive {receive:.0} ms"
        );
    }
    // Its window is on the screen.
    let window = Command::new("xdotool")
        .args([
            "search",
            "--pid",
            &viewer.proc.pid().to_string(),
            "--onlyvisible",
            "--name",
            "",
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(!window.stdout.is_empty(), "the player's window is on the screen");
    viewer.proc.signal(libc::SIGINT);
    assert_eq!(viewer.exit(Duration::from_secs(10)), Ok(Some(0)));
}

#[test]
fn view_stats_prints_the_live_figures_each_second() {
    let (_host, ticket) = Pixelpass::host(&["--source", "test", "--renditions", "off", "--quality", "low"], &[]);
    let viewer = Pixelpass::start(&["view", &ticket, "--player", "none", "--stats"], &[]);
    let lines = || {
        viewer
            .err
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains("capture→receive"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_for(Duration::from_secs(30), || lines().len() >= 3),
        "{}",
        viewer.err.lock().unwrap()
    );
    let l = lines().pop().unwrap();
    for part in [
        "direct · 480p · RTT ",
        " Mbit/s · capture→receive ",
        " ms · GOPs skipped 0, cut 0",
    ] {
        assert!(l.contains(part), "{l}");
    }
}
