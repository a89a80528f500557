//! irohsink / irohsrc element behaviour with synthetic buffers: properties, keyframe requests,
//! GOP gating, stream headers. Real iroh endpoints on loopback, no relay.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gst::glib;
use gst::prelude::*;

#[test]
fn properties_and_ticket() {
    init();
    let sink = gst::ElementFactory::make("irohsink").build().unwrap();
    assert_eq!(
        sink.property::<Option<String>>("ticket"),
        None,
        "no ticket before start"
    );
    assert_eq!(sink.property::<String>("relay"), "default");
    assert_eq!(sink.property::<u32>("max-viewers"), 0);
    assert_eq!(sink.property::<u32>("max-lag"), 500);
    assert!(!sink.property::<bool>("sync"), "a network sink sends at once");
    let pspec = sink.find_property("ticket").unwrap();
    assert!(!pspec.flags().contains(glib::ParamFlags::WRITABLE));

    let h = host(&[("max-viewers", &3u32)]);
    let t = ticket(&h);
    assert!(t.starts_with("pp1"), "{t}");
    let parsed: gstiroh::ticket::Ticket = t.parse().unwrap();
    let id = h.element().unwrap().property::<String>("endpoint-id");
    assert_eq!(parsed.addr.id.to_string(), id);
    assert!(
        parsed.addr.ip_addrs().all(|a| a.ip().is_loopback()),
        "bound to loopback only"
    );
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u32>("viewers").unwrap(), 0);

    let src = gst::ElementFactory::make("irohsrc").build().unwrap();
    assert!(src.property::<bool>("reconnect"));
    assert_eq!(src.property::<u32>("latency"), 100);
}

#[test]
fn invalid_settings_fail_with_the_property_named() {
    init();
    let sink = gst::ElementFactory::make("irohsink")
        .property("relay", "ftp://nope")
        .build()
        .unwrap();
    assert!(sink.set_state(gst::State::Ready).is_err());
    let src = gst::ElementFactory::make("irohsrc")
        .property("ticket", "pp1notaticket")
        .build()
        .unwrap();
    let bus = gst::Bus::new();
    src.set_bus(Some(&bus));
    assert!(src.set_state(gst::State::Ready).is_err());
    let msg = bus.pop_filtered(&[gst::MessageType::Error]).unwrap();
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    assert!(e.error().message().starts_with("ticket is not valid:"), "{}", e.error());
    assert_eq!(
        e.error().kind::<gst::ResourceError>(),
        Some(gst::ResourceError::Settings)
    );
    let details = e.details().expect("error details");
    assert_eq!(details.get::<&str>("property").unwrap(), "ticket");
}

/// Waits for a force-key-unit event with all-headers on the harness' upstream side.
fn wait_fku(h: &mut gst_check::Harness, timeout: Duration) -> Option<gst_video::UpstreamForceKeyUnitEvent> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        while let Some(ev) = h.try_pull_upstream_event() {
            if let Ok(fku) = gst_video::UpstreamForceKeyUnitEvent::parse(&ev) {
                return Some(fku);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn late_joiner_triggers_one_keyframe_request_and_is_gated_to_the_keyframe() {
    let mut h = host(&[("burst-max-age", &0u32), ("keyframe-interval", &1000u32)]);
    h.set_src_caps_str("video/x-h264,stream-format=byte-stream,alignment=au");
    // An old GOP: keyframe then deltas.
    h.push(buf(1, 100, false, 0)).unwrap();
    for i in 0..5 {
        h.push(buf(2, 100, true, 33 * (i + 1))).unwrap();
    }
    while h.try_pull_upstream_event().is_some() {}

    let v = Viewer::new(&ticket(&h), "queue");
    assert!(wait_until(Duration::from_secs(5), || num_viewers(&h) == 1));
    let fku = wait_fku(&mut h, Duration::from_secs(5)).expect("a force-key-unit event went upstream");
    assert!(fku.all_headers, "all-headers=true, or mpegtsmux swallows it");
    // More deltas: the gated viewer must not see them.
    for i in 0..5 {
        h.push(buf(3, 100, true, 300 + 33 * i)).unwrap();
    }
    assert!(
        v.pull(Duration::from_millis(300)).is_none(),
        "nothing before the keyframe"
    );
    h.push(buf(4, 100, false, 500)).unwrap();
    h.push(buf(5, 100, true, 533)).unwrap();
    let first = v.pull(Duration::from_secs(5)).expect("keyframe arrives");
    let b = first.buffer().unwrap();
    assert_eq!(b.map_readable().unwrap()[0], 4, "first buffer is the keyframe");
    assert!(!b.flags().contains(gst::BufferFlags::DELTA_UNIT));
    assert!(
        b.flags().contains(gst::BufferFlags::DISCONT),
        "first buffer of a session is DISCONT"
    );
    let caps = first.caps().unwrap();
    assert_eq!(
        caps.structure(0).unwrap().name(),
        "video/x-h264",
        "caps travel to the viewer"
    );
    let second = v.pull(Duration::from_secs(5)).unwrap();
    assert_eq!(second.buffer().unwrap().map_readable().unwrap()[0], 5);
    // A second viewer within the rate limit sends no new request.
    let _v2 = Viewer::new(&ticket(&h), "queue");
    assert!(wait_until(Duration::from_secs(5), || num_viewers(&h) == 2));
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    assert!(stats.get::<u64>("keyframe-requests").unwrap() <= 2);
}

#[test]
fn recent_gop_is_burst_to_a_new_viewer_without_waiting() {
    let h = host(&[("burst-max-age", &60_000u32)]);
    let mut h = h;
    h.set_src_caps_str("video/x-h264,stream-format=byte-stream,alignment=au");
    h.push(buf(7, 50, false, 0)).unwrap();
    h.push(buf(8, 50, true, 33)).unwrap();
    let v = Viewer::new(&ticket(&h), "queue");
    let a = v.pull(Duration::from_secs(5)).expect("burst of the cached GOP");
    let b = v.pull(Duration::from_secs(5)).unwrap();
    assert_eq!(a.buffer().unwrap().map_readable().unwrap()[0], 7);
    assert_eq!(b.buffer().unwrap().map_readable().unwrap()[0], 8);
}

#[test]
fn caps_streamheader_goes_first_and_in_caps_headers_are_not_duplicated() {
    let mut h = host(&[]);
    let hdr = {
        let mut b = gst::Buffer::from_slice(b"HEADER-BYTES".to_vec());
        b.get_mut().unwrap().set_flags(gst::BufferFlags::HEADER);
        b
    };
    let caps = gst::Caps::builder("application/x-test")
        .field("streamheader", gst::Array::new([hdr.clone()]))
        .build();
    h.set_src_caps(caps);
    h.push(hdr).unwrap(); // the same header as data: must not reach viewers twice
    h.push(buf(1, 20, false, 0)).unwrap();
    let v = Viewer::new(&ticket(&h), "queue");
    let first = v.pull(Duration::from_secs(5)).unwrap();
    let b = first.buffer().unwrap();
    assert_eq!(&b.map_readable().unwrap()[..], b"HEADER-BYTES");
    assert!(b.flags().contains(gst::BufferFlags::HEADER));
    let second = v.pull(Duration::from_secs(5)).unwrap();
    assert_eq!(second.buffer().unwrap().map_readable().unwrap()[0], 1);
}

#[test]
fn capture_time_and_timing_travel_with_each_buffer() {
    let mut h = host(&[]);
    h.set_src_caps_str("audio/x-raw,format=S16LE,rate=48000,channels=2,layout=interleaved");
    let mut b = buf(1, 64, false, 0);
    b.get_mut().unwrap().set_duration(gst::ClockTime::from_mseconds(20));
    h.push(b).unwrap();
    let v = Viewer::new(&ticket(&h), "queue");
    let s = v.pull(Duration::from_secs(5)).unwrap();
    let b = s.buffer().unwrap();
    assert_eq!(b.duration(), Some(gst::ClockTime::from_mseconds(20)));
    assert!(b.pts().is_some(), "live source output is timestamped");
    let unix = gst::Caps::builder("timestamp/x-unix").build();
    let meta = b
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .find(|m| m.reference().is_subset(&unix))
        .expect("capture wall-clock time as a reference timestamp meta");
    let now = gstiroh::net::unix_now_ns();
    let age = now.saturating_sub(meta.timestamp().nseconds());
    assert!(age < 10_000_000_000, "capture time is recent: {age} ns");
}

#[test]
fn a_keyframe_request_downstream_of_the_viewer_reaches_the_host_encoder() {
    let mut h = host(&[("keyframe-interval", &0u32)]);
    h.set_src_caps_str("video/x-h264,stream-format=byte-stream,alignment=au");
    h.push(buf(1, 10, false, 0)).unwrap();
    let v = Viewer::new(&ticket(&h), "queue");
    assert!(v.pull(Duration::from_secs(5)).is_some());
    std::thread::sleep(Duration::from_millis(200));
    while h.try_pull_upstream_event().is_some() {}
    let ev = gst::event::CustomUpstream::builder(
        gst::Structure::builder("GstForceKeyUnit")
            .field("all-headers", true)
            .build(),
    )
    .build();
    assert!(v.sink.send_event(ev));
    let fku = wait_fku(&mut h, Duration::from_secs(5)).expect("the host asked its encoder for a keyframe");
    assert!(fku.all_headers);
}

/// A host with two renditions and its pads' harnesses (top 2000 kbit/s on `sink`, "low" 300
/// on `sink_1`), keyframe-gated joins.
fn two_rendition_host() -> (gst::Element, gst_check::Harness, gst_check::Harness) {
    init();
    let el = gst::ElementFactory::make("irohsink")
        .property("relay", "disabled")
        .property("bind-address", "127.0.0.1:0")
        .property("burst-max-age", 0u32)
        .build()
        .unwrap();
    let mut top = gst_check::Harness::with_element(&el, Some("sink"), None);
    let mut low = gst_check::Harness::with_element(&el, Some("sink_1"), None);
    let pad = el.static_pad("sink_1").expect("request pad sink_1");
    pad.set_property("bitrate", 300u32);
    pad.set_property("rendition-name", "low");
    el.static_pad("sink").unwrap().set_property("bitrate", 2000u32);
    top.play();
    low.play();
    for h in [&mut top, &mut low] {
        h.set_src_caps_str("video/x-h264,stream-format=byte-stream,alignment=au");
    }
    (el, top, low)
}

/// A version 1 viewer (an older pixelpass) is served as before: Welcome, 'G' GOP headers, the
/// top rendition.
#[test]
fn a_version_1_viewer_gets_the_top_rendition_in_version_1() {
    use gstiroh::net::{self, RUNTIME, Relay, read_control, write_control};
    use gstiroh::protocol::{ALPN_V1, Control, GopHeader};
    let (el, mut top, mut low) = two_rendition_host();
    let t: gstiroh::ticket::Ticket = ticket(&top).parse().unwrap();
    let (ep, conn, welcome) = RUNTIME.block_on(async {
        let local = ["127.0.0.1:0".parse().unwrap()];
        let ep = net::bind(iroh::SecretKey::generate(), &Relay::Disabled, &local, vec![])
            .await
            .unwrap();
        let conn = ep.connect(t.addr.clone(), ALPN_V1).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let hello = Control::Hello {
            secret: t.secret,
            name: "old".into(),
        };
        write_control(&mut send, &hello).await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let welcome = read_control(&mut recv, &mut buf).await.unwrap();
        std::mem::forget((send, recv));
        (ep, conn, welcome)
    });
    assert!(matches!(welcome, Control::Welcome { .. }), "{welcome:?}");
    assert!(wait_until(Duration::from_secs(5), || num_viewers(&top) == 1));
    top.push(buf(7, 1000, false, 1000)).unwrap();
    low.push(buf(8, 100, false, 1000)).unwrap();
    let head = RUNTIME.block_on(async {
        let mut s = tokio::time::timeout(Duration::from_secs(5), conn.accept_uni())
            .await
            .unwrap()
            .unwrap();
        let mut b = vec![0u8; 512];
        let n = s.read(&mut b).await.unwrap().unwrap();
        b.truncate(n);
        b
    });
    let (h, used) = GopHeader::decode(&head).unwrap().unwrap();
    assert_eq!((head[0], h.rendition), (b'G', None), "a version 1 GOP header");
    assert!(
        head[used..].windows(8).any(|w| w == [7; 8]),
        "the top rendition's bytes"
    );
    let st = el.property::<gst::Structure>("stats");
    let v = st.get::<gst::Array>("viewer-stats").unwrap()[0]
        .get::<gst::Structure>()
        .unwrap();
    assert_eq!(v.get::<u32>("protocol").unwrap(), 1);
    RUNTIME.block_on(ep.close());
}

/// Two renditions on one irohsink: a join asks both encoders for a keyframe at the same
/// running time (ahead of what was received), a viewer with a ceiling gets the lower rendition
/// only, and the stats name both rungs.
#[test]
fn renditions_get_aligned_keyframe_requests_and_a_ceiling_picks_the_lower_one() {
    let (el, mut top, mut low) = two_rendition_host();
    for i in 0..5u64 {
        top.push(buf(1, 1000, i > 0, 33 * i)).unwrap();
        low.push(buf(2, 100, i > 0, 33 * i)).unwrap();
    }
    for h in [&mut top, &mut low] {
        while h.try_pull_upstream_event().is_some() {}
    }
    let v = Viewer::with_src_props(&ticket(&top), "max-bitrate=500", "queue");
    let a = wait_fku(&mut top, Duration::from_secs(5)).expect("a request to the top encoder");
    let b = wait_fku(&mut low, Duration::from_secs(5)).expect("the same to the low one");
    assert_eq!(a.running_time, b.running_time, "the same instant on both");
    assert!(
        a.running_time.unwrap() > gst::ClockTime::from_mseconds(132),
        "ahead of what arrived"
    );
    let at = a.running_time.unwrap().mseconds();
    top.push(buf(3, 1000, false, at)).unwrap();
    low.push(buf(4, 100, false, at)).unwrap();
    let first = v.pull(Duration::from_secs(5)).expect("the low keyframe arrives");
    assert_eq!(
        first.buffer().unwrap().map_readable().unwrap()[0],
        4,
        "the rendition under the ceiling"
    );
    let st = el.property::<gst::Structure>("stats");
    let rungs = st.get::<gst::Array>("renditions").unwrap();
    let names: Vec<String> = rungs
        .iter()
        .map(|r| r.get::<gst::Structure>().unwrap().get::<String>("name").unwrap())
        .collect();
    assert_eq!(names, ["sink", "low"], "top first");
    assert!(wait_until(Duration::from_secs(5), || v
        .stats()
        .get::<String>("rendition")
        .unwrap()
        == "low"));
    drop(v);
    drop(low);
}

/// A viewer that lowers its ceiling while playing (`max-bitrate` set in PLAYING) is moved to
/// the rendition under it at the next GOP boundary, and the move is in its stats.
#[test]
fn a_ceiling_set_while_playing_moves_the_viewer_down_at_the_next_gop() {
    let (_el, mut top, mut low) = two_rendition_host();
    for i in 0..3u64 {
        top.push(buf(1, 1000, i > 0, 33 * i)).unwrap();
        low.push(buf(2, 100, i > 0, 33 * i)).unwrap();
    }
    let v = Viewer::new(&ticket(&top), "queue");
    let a = wait_fku(&mut top, Duration::from_secs(5)).expect("a request to the top encoder");
    let mut at = a.running_time.unwrap().mseconds();
    top.push(buf(3, 1000, false, at)).unwrap();
    low.push(buf(4, 100, false, at)).unwrap();
    let first = v.pull(Duration::from_secs(5)).expect("the top keyframe arrives");
    assert_eq!(
        first.buffer().unwrap().map_readable().unwrap()[0],
        3,
        "no ceiling: the top"
    );
    v.src.set_property("max-bitrate", 500u32);
    assert_eq!(v.src.property::<u32>("max-bitrate"), 500);
    // a GOP on both renditions every 100 ms until one from the low one arrives
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut moved = false;
    while !moved && Instant::now() < deadline {
        at += 100;
        top.push(buf(5, 1000, false, at)).unwrap();
        low.push(buf(6, 100, false, at)).unwrap();
        while let Some(s) = v.pull(Duration::from_millis(100)) {
            moved |= s.buffer().unwrap().map_readable().unwrap()[0] == 6;
        }
    }
    assert!(moved, "the viewer's new ceiling moved it to the low rendition");
    assert!(wait_until(Duration::from_secs(5), || {
        let st = v.stats();
        st.get::<String>("rendition").unwrap() == "low" && st.get::<u64>("rendition-switches").unwrap() == 1
    }));
    drop(v);
    drop(low);
}
