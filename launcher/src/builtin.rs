//! The built-in player (`--player gst`): the received MPEG-TS decoded in this process to a
//! window and the speakers, with a latency meter.
//!
//! It is fed the receiver's buffers directly (not through the loopback HTTP server), so it
//! knows each frame's capture time: irohsrc puts the capture wall clock on every buffer
//! (`timestamp/x-unix`), and the meter reads the PTS of each video PES as it goes in. tsdemux
//! hands frames on with its own timestamps, a constant offset from the stream's PTS, learned
//! from the first frame. The window draws each frame as soon as it is decoded; capture →
//! display is the wall time a frame reaches it minus its capture time. The overlay (top left; `i` in the window toggles it) shows that figure
//! with the path, RTT and bitrate; `viewer-stats` reports it as `display_latency_ms`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use gst::prelude::*;

use crate::output;
use crate::pipeline;

const DESC: &str = include_str!("../../pipelines/viewer-builtin.pipeline");

/// How many PES timestamps the meter remembers (about 4 s of video at 30 fps).
const REMEMBERED: usize = 128;

/// The running built-in player.
pub struct Builtin {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    overlay: gst::Element,
    meter: Arc<Mutex<Meter>>,
}

impl Builtin {
    /// `receiver`: the viewer's irohsrc, whose ceiling the `q` key changes.
    pub fn start(receiver: &gst::Element) -> Result<Builtin> {
        let pipeline = pipeline::launch(DESC, "built-in player")
            .map_err(|e| anyhow!("{e} (the built-in player needs gstreamer1.0-libav and -plugins-good)"))?;
        let src: gst_app::AppSrc = pipeline::child(&pipeline, "src", "built-in player")?;
        let overlay: gst::Element = pipeline::child(&pipeline, "meter", "built-in player")?;
        let demux: gst::Element = pipeline::child(&pipeline, "demux", "built-in player")?;
        let meter = Arc::new(Mutex::new(Meter::default()));
        watch_demuxed_video(&demux, meter.clone());
        watch_displayed(&overlay, meter.clone());
        on_keys(&overlay, receiver);
        pipeline::play(&pipeline, "the built-in player")?;
        Ok(Builtin {
            pipeline,
            src,
            overlay,
            meter,
        })
    }

    /// Plays one received buffer (MPEG-TS with its capture time); never blocks.
    pub fn push(&self, buffer: &gst::Buffer) {
        if let Some(capture) = capture_unix_ns(buffer)
            && let Ok(map) = buffer.map_readable()
        {
            let mut m = self.meter.lock().unwrap();
            for pts in video_pes_pts(&map) {
                m.remember(pts, capture);
            }
        }
        let _ = output::push(&self.src, buffer);
    }

    /// Capture → display over the last second, p50 (ms); `None` before a frame was shown.
    /// Also refreshes the overlay with it and `rest` (path, RTT, bitrate).
    pub fn tick(&self, rest: &str) -> Option<f64> {
        let latency = self.meter.lock().unwrap().take_p50();
        let text = match latency {
            Some(ms) => format!("capture → display {ms:.0} ms · {rest}"),
            None => rest.to_string(),
        };
        self.overlay.set_property("text", text);
        latency
    }

    /// The player's messages (its window closing is an error).
    pub fn bus(&self) -> gst::bus::BusStream {
        self.pipeline.bus().expect("pipeline has a bus").stream()
    }

    pub fn stop(&self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// What the meter knows: recent video PTS with their capture times, the demuxer's offset, and
/// the latencies of the frames shown since the last tick.
#[derive(Default)]
struct Meter {
    /// (PTS in ns, capture wall clock in ns), in stream order.
    recent: VecDeque<(u64, u64)>,
    /// tsdemux's output timestamp minus the stream's PTS (ns), once learned.
    offset: Option<i128>,
    /// Frames out of tsdemux that matched no remembered PTS in a row: the offset is relearned.
    misses: u32,
    shown_ms: Vec<f64>,
}

impl Meter {
    fn remember(&mut self, pts_ns: u64, capture_ns: u64) {
        if self.recent.len() == REMEMBERED {
            self.recent.pop_front();
        }
        self.recent.push_back((pts_ns, capture_ns));
    }

    /// A frame left tsdemux with timestamp `out_ns`: learn (or check) the offset.
    fn demuxed(&mut self, out_ns: u64) {
        let Some(offset) = self.offset else {
            // the first frame out is the oldest one in: tsdemux keeps the order
            self.offset = self.recent.front().map(|&(pts, _)| out_ns as i128 - pts as i128);
            return;
        };
        if self.capture_of(out_ns, offset).is_some() {
            self.misses = 0;
        } else {
            self.misses += 1;
            if self.misses > 30 {
                // the stream's timing restarted (the host's capture restarted): start over
                self.offset = None;
                self.recent.retain(|&(pts, _)| pts as i128 + offset > out_ns as i128);
                self.misses = 0;
            }
        }
    }

    /// The capture time of the frame tsdemux stamped `out_ns` (within a millisecond).
    fn capture_of(&self, out_ns: u64, offset: i128) -> Option<u64> {
        let pts = out_ns as i128 - offset;
        self.recent
            .iter()
            .rev()
            .find(|&&(p, _)| (p as i128 - pts).abs() < 1_000_000)
            .map(|&(_, c)| c)
    }

    /// A frame stamped `out_ns` is shown at wall time `shown_ns`.
    fn shown(&mut self, out_ns: u64, shown_ns: u64) {
        if let Some(offset) = self.offset
            && let Some(capture) = self.capture_of(out_ns, offset)
        {
            self.shown_ms.push((shown_ns as f64 - capture as f64) / 1e6);
        }
    }

    fn take_p50(&mut self) -> Option<f64> {
        let mut v = std::mem::take(&mut self.shown_ms);
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }
}

/// The capture wall clock irohsrc put on a buffer.
fn capture_unix_ns(buffer: &gst::BufferRef) -> Option<u64> {
    buffer
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .find(|m| {
            m.reference()
                .structure(0)
                .is_some_and(|s| s.name() == "timestamp/x-unix")
        })
        .map(|m| m.timestamp().nseconds())
}

/// The PTS (ns) of every video PES that starts in these MPEG-TS packets.
fn video_pes_pts(ts: &[u8]) -> Vec<u64> {
    ts.chunks_exact(188)
        .filter(|p| p[0] == 0x47 && p[1] & 0x40 != 0)
        .filter_map(|p| {
            let start = match (p[3] >> 4) & 0x3 {
                1 => 4,
                3 => 5 + p[4] as usize,
                _ => return None,
            };
            pes_pts(p.get(start..)?)
        })
        .map(|ticks| ticks * 100_000 / 9)
        .collect()
}

/// A video PES header's PTS in 90 kHz ticks.
fn pes_pts(pes: &[u8]) -> Option<u64> {
    let is_video = pes.len() >= 14 && pes[..3] == [0, 0, 1] && (0xe0..=0xef).contains(&pes[3]);
    if !is_video || pes[7] & 0x80 == 0 {
        return None;
    }
    let b = &pes[9..14];
    Some(
        ((b[0] as u64 >> 1) & 0x07) << 30
            | (b[1] as u64) << 22
            | (b[2] as u64 >> 1) << 15
            | (b[3] as u64) << 7
            | b[4] as u64 >> 1,
    )
}

/// Tells the meter each video frame's timestamp as tsdemux hands it on.
fn watch_demuxed_video(demux: &gst::Element, meter: Arc<Mutex<Meter>>) {
    demux.connect_pad_added(move |_, pad| {
        if !pad.name().starts_with("video") {
            return;
        }
        let meter = meter.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(pts) = info.buffer().and_then(|b| b.pts()) {
                meter.lock().unwrap().demuxed(pts.nseconds());
            }
            gst::PadProbeReturn::Ok
        });
    });
}

/// Tells the meter when each frame is shown: the window draws each frame as soon as it is
/// decoded (no clock sync: the stream arrives live, and waiting would only add latency), so
/// when it passes the overlay, a frame is on screen within the draw time.
fn watch_displayed(overlay: &gst::Element, meter: Arc<Mutex<Meter>>) {
    let pad = overlay.static_pad("src").expect("textoverlay has a src pad");
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(pts) = info.buffer().and_then(|b| b.pts()) {
            meter.lock().unwrap().shown(pts.nseconds(), gstiroh::net::unix_now_ns());
        }
        gst::PadProbeReturn::Ok
    });
}

/// Keys in the window: `i` shows or hides the overlay; `q` steps the most this viewer asks
/// the host for (`max-bitrate` of `receiver`) through no ceiling, low, medium and high (a host
/// with renditions moves it at its next GOP).
fn on_keys(overlay: &gst::Element, receiver: &gst::Element) {
    let pad = overlay.static_pad("src").expect("textoverlay has a src pad");
    let (weak, receiver) = (overlay.downgrade(), receiver.downgrade());
    let hidden = AtomicBool::new(false);
    pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
        let Some(gst::PadProbeData::Event(ev)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let Ok(gst_video::NavigationEvent::KeyPress { key, .. }) = gst_video::NavigationEvent::parse(ev) else {
            return gst::PadProbeReturn::Ok;
        };
        match key.as_str() {
            "i" => {
                if let Some(o) = weak.upgrade() {
                    let now_hidden = !hidden.fetch_xor(true, Ordering::Relaxed);
                    o.set_property("silent", now_hidden);
                }
            }
            "q" => {
                if let Some(r) = receiver.upgrade() {
                    let next = crate::quality::next_viewer_ceiling(r.property::<u32>("max-bitrate"));
                    r.set_property("max-bitrate", next);
                }
            }
            _ => {}
        }
        gst::PadProbeReturn::Ok
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One TS packet starting a video PES with `pts` (90 kHz).
    fn pes_packet(pts: u64) -> Vec<u8> {
        let mut p = vec![0x47, 0x40 | 0x01, 0x00, 0x10];
        p.extend([0, 0, 1, 0xe0, 0, 0, 0x80, 0x80, 5]);
        p.extend([
            0x21 | ((pts >> 29) as u8 & 0x0e),
            (pts >> 22) as u8,
            0x01 | ((pts >> 14) as u8 & 0xfe),
            (pts >> 7) as u8,
            0x01 | ((pts << 1) as u8 & 0xfe),
        ]);
        p.resize(188, 0xff);
        p
    }

    #[test]
    fn video_pes_timestamps_are_read_from_the_packets() {
        let pts = 324_002_897u64; // 3600.032 s, as mpegtsmux starts
        let mut ts = pes_packet(pts);
        ts.extend(pes_packet(pts + 3000));
        let mut not_start = pes_packet(1);
        not_start[1] &= !0x40;
        ts.extend(not_start);
        let got = video_pes_pts(&ts);
        assert_eq!(got, vec![pts * 100_000 / 9, (pts + 3000) * 100_000 / 9]);
    }

    #[test]
    fn the_meter_learns_the_demuxer_offset_and_measures_frames_shown() {
        let mut m = Meter::default();
        let ms = 1_000_000u64;
        for i in 0..5u64 {
            m.remember(3_600_000 * ms + i * 33 * ms, 1_000_000 * ms + i * 33 * ms);
        }
        // tsdemux stamps the first frame 125 ms
        m.demuxed(125 * ms);
        m.demuxed(158 * ms);
        m.shown(158 * ms, 1_000_000 * ms + 33 * ms + 80 * ms);
        m.shown(191 * ms, 1_000_000 * ms + 66 * ms + 90 * ms);
        assert_eq!(m.take_p50(), Some(90.0));
        assert_eq!(m.take_p50(), None, "a tick takes what was shown since the last");
    }
}
