//! H.264 encoder choice: a hardware encoder that really encodes (a short test encode, not
//! just "the element exists"), else x264.

use std::time::Duration;

use anyhow::{Result, anyhow};
use futures_util::StreamExt as _;
use gst::prelude::*;

use crate::pipeline::{self, StopOnDrop};

/// The chosen encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoder {
    /// Factory name.
    pub name: String,
    /// Raw format the encoder is fed (x264 would pick 4:4:4 from BGRx if not told I420).
    pub format: &'static str,
    /// Why it was chosen, for the one stderr line.
    pub reason: String,
}

/// Hardware encoders in order of preference.
const HARDWARE: [&str; 3] = ["vah264enc", "vaapih264enc", "nvh264enc"];

impl Encoder {
    fn of(name: &str, reason: String) -> Self {
        Encoder {
            name: name.into(),
            format: if is_software(name) { "I420" } else { "NV12" },
            reason,
        }
    }

    /// The element description for `bitrate_kbps` at `fps` with a keyframe every 2 s.
    pub fn description(&self, bitrate_kbps: u32, fps: u32) -> String {
        let gop = fps * 2;
        match self.name.as_str() {
            "x264enc" => format!(
                "x264enc tune=zerolatency speed-preset=ultrafast bitrate={bitrate_kbps} key-int-max={gop} \
                 vbv-buf-capacity=500"
            ),
            "vah264enc" => format!("vah264enc bitrate={bitrate_kbps} key-int-max={gop} rate-control=cbr"),
            "vaapih264enc" => format!("vaapih264enc bitrate={bitrate_kbps} keyframe-period={gop} rate-control=cbr"),
            "nvh264enc" => format!("nvh264enc bitrate={bitrate_kbps} gop-size={gop} zerolatency=true rc-mode=cbr"),
            other => format!("{other} bitrate={bitrate_kbps}"),
        }
    }
}

/// A software encoder: fed I420, no session limits.
fn is_software(name: &str) -> bool {
    name == "x264enc" || name == "openh264enc"
}

/// Encodes a few frames with `name`; Ok when they reach the end of the stream. The test
/// pipeline stops on every path, also when the future is dropped (ctrl-c while planning).
pub async fn probe(name: &str) -> Result<(), String> {
    probe_sessions(name, 1).await
}

/// Like [`probe`] with `sessions` encoders of `name` running at once (one per rendition).
async fn probe_sessions(name: &str, sessions: usize) -> Result<(), String> {
    if gst::ElementFactory::find(name).is_none() {
        return Err("not installed".into());
    }
    eprintln!("pixelpass: trying encoder {name} (a short test encode, {sessions} at once)");
    let enc = Encoder::of(name, String::new());
    let branches: String = (0..sessions)
        .map(|_| format!(" t. ! queue ! {} ! fakesink", enc.description(1000, 30)))
        .collect();
    let desc = format!(
        "videotestsrc num-buffers=5 ! video/x-raw,format={},width=320,height=240,framerate=30/1 ! tee name=t{branches}",
        enc.format,
    );
    let test = StopOnDrop(pipeline::launch(&desc, "test encode").map_err(|e| format!("{e:#}"))?);
    pipeline::play(&test.0, "the test encode").map_err(|e| format!("{e:#}"))?;
    let mut bus = test.0.bus().ok_or("the test encode has no bus")?.stream();
    let end = async {
        while let Some(msg) = bus.next().await {
            match msg.view() {
                gst::MessageView::Eos(_) => return Ok(()),
                gst::MessageView::Error(e) => return Err(e.error().to_string()),
                _ => {}
            }
        }
        Err("the test encode stopped".to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), end)
        .await
        .unwrap_or_else(|_| Err("test encode timed out".into()))
}

/// Chooses the encoder: `forced` if given (it must work), software if `no_hw`, else the first
/// hardware encoder that passes a test encode, else x264.
pub async fn choose(no_hw: bool, forced: Option<&str>) -> Result<Encoder> {
    if let Some(name) = forced {
        return match probe(name).await {
            Ok(()) => Ok(Encoder::of(name, "chosen with --encoder".into())),
            Err(e) => Err(anyhow!("encoder {name} does not work here: {e}")),
        };
    }
    if no_hw {
        return software("software (x264) forced with --no-hwencode".into()).await;
    }
    let mut tried = Vec::new();
    for name in HARDWARE {
        match probe(name).await {
            Ok(()) => return Ok(Encoder::of(name, "hardware encoder, test encode passed".into())),
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    software(format!(
        "software (x264): no hardware H.264 encoder works here ({})",
        tried.join("; ")
    ))
    .await
}

/// The encoder for the lower renditions when `top` encodes the top one and the ladder has
/// `renditions` rungs: `top` itself when that many of it encode at once (a test encode), else
/// x264 (a driver that allows fewer hardware sessions); software needs no test.
pub async fn for_lower_rungs(top: &Encoder, renditions: usize) -> Encoder {
    if renditions <= 1 || is_software(&top.name) {
        return top.clone();
    }
    match probe_sessions(&top.name, renditions).await {
        Ok(()) => top.clone(),
        Err(e) => Encoder::of(
            "x264enc",
            format!(
                "software for the lower renditions: {} does not run {renditions} encodes at once here ({e})",
                top.name
            ),
        ),
    }
}

/// x264, after its test encode; `reason` says why software.
async fn software(reason: String) -> Result<Encoder> {
    probe("x264enc")
        .await
        .map_err(|e| anyhow!("the software encoder x264enc does not work ({e}): install gstreamer1.0-plugins-ugly"))?;
    Ok(Encoder::of("x264enc", reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_rungs_fall_back_to_x264_when_the_encoder_does_not_run_once_per_rung() {
        gst::init().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let x264 = Encoder::of("x264enc", "test".into());
        assert_eq!(rt.block_on(for_lower_rungs(&x264, 3)), x264, "software: the same");
        assert!(rt.block_on(probe_sessions("x264enc", 3)).is_ok(), "three at once");
        // a hardware encoder this machine cannot run (no GPU, or not installed) stands for
        // a driver that refuses a second session: the lower rungs get x264
        let hw = Encoder::of("vah264enc", "test".into());
        let lower = rt.block_on(for_lower_rungs(&hw, 3));
        assert_eq!((lower.name.as_str(), lower.format), ("x264enc", "I420"));
        assert!(
            lower.reason.contains("vah264enc does not run 3 encodes at once"),
            "{}",
            lower.reason
        );
        assert_eq!(rt.block_on(for_lower_rungs(&hw, 1)), hw, "one rendition: no test");
    }

    #[test]
    fn falls_back_to_x264_without_a_gpu() {
        gst::init().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let choose = |no_hw, forced| rt.block_on(choose(no_hw, forced));
        let e = choose(false, None).unwrap();
        // This machine has no GPU: every hardware candidate must fail its test encode.
        if std::path::Path::new("/dev/dri").exists() {
            return;
        }
        assert_eq!(e.name, "x264enc");
        assert_eq!(e.format, "I420");
        assert!(e.reason.contains("vah264enc"), "{}", e.reason);
        assert_eq!(
            choose(true, None).unwrap().reason,
            "software (x264) forced with --no-hwencode"
        );
        let err = choose(false, Some("vah264enc")).unwrap_err().to_string();
        assert!(err.starts_with("encoder vah264enc does not work here"), "{err}");
        assert!(
            choose(false, Some("nosuchenc"))
                .unwrap_err()
                .to_string()
                .contains("not installed")
        );
    }
}
