//! The element in a real pipeline: caps halve both ways, pixels are the blocks' means.

use gst::prelude::*;
use gst_video::prelude::*;

fn init() {
    gst::init().unwrap();
    gsthalfscale::register_static().unwrap();
}

/// One `format` frame of `w`×`h` through halfscale: the output caps' size and the frame.
fn halve_one(format: &str, w: i32, h: i32) -> (i32, i32, gst::Buffer) {
    init();
    let mut harness = gst_check::Harness::new("halfscale");
    harness.set_src_caps_str(&format!(
        "video/x-raw,format={format},width={w},height={h},framerate=30/1"
    ));
    let info = gst_video::VideoInfo::builder(format.parse().unwrap(), w as u32, h as u32)
        .build()
        .unwrap();
    let mut buf = gst::Buffer::with_size(info.size()).unwrap();
    {
        let buf = buf.get_mut().unwrap();
        let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(buf, &info).unwrap();
        for p in 0..frame.n_planes() {
            let stride = frame.plane_stride()[p as usize] as usize;
            let data = frame.plane_data_mut(p).unwrap();
            // even rows 0, odd rows 100 + column parity × 20: every 2×2 block means 60
            for (i, v) in data.iter_mut().enumerate() {
                let (row, col) = (i / stride, i % stride);
                *v = if row % 2 == 0 {
                    0
                } else {
                    100 + if col % 2 == 0 { 0 } else { 40 }
                };
            }
        }
    }
    let out = harness.push_and_pull(buf).unwrap();
    let caps = harness.sinkpad().unwrap().current_caps().unwrap();
    let s = caps.structure(0).unwrap();
    (s.get("width").unwrap(), s.get("height").unwrap(), out)
}

#[test]
fn i420_1080p_becomes_540p_of_block_means() {
    let (w, h, out) = halve_one("I420", 1920, 1080);
    assert_eq!((w, h), (960, 540));
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 960, 540)
        .build()
        .unwrap();
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(out.as_ref(), &info).unwrap();
    for p in 0..3 {
        let stride = frame.plane_stride()[p as usize] as usize;
        let w = frame.comp_width(p) as usize;
        let data = frame.plane_data(p).unwrap();
        assert!(
            data.chunks(stride).all(|row| row[..w].iter().all(|v| *v == 60)),
            "plane {p}"
        );
    }
}

#[test]
fn nv12_with_odd_sizes_rounds_down_to_even() {
    // 1366 wide: half is 683, odd; H.264 needs even
    let (w, h, _) = halve_one("NV12", 1366, 768);
    assert_eq!((w, h), (682, 384));
}

#[test]
fn downstream_asking_for_a_size_gets_the_input_that_halves_to_it() {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=3 ! video/x-raw,format=I420,framerate=30/1 ! halfscale \
         ! video/x-raw,width=640,height=360 ! fakesink name=sink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(10),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("the pipeline ends");
    let caps = pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .current_caps();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    let s = caps.unwrap();
    let s = s.structure(0).unwrap();
    assert_eq!(
        (s.get::<i32>("width").unwrap(), s.get::<i32>("height").unwrap()),
        (640, 360)
    );
}
