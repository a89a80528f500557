//! What the host decides before the share starts: what to capture, the encoder, the quality,
//! the sound. Every step that waits (the portal probe, the encoder's test encodes, `pactl`,
//! listing PipeWire's apps) ends when the planning future is dropped, so one ctrl-c is enough
//! here too.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::audio::apps::Rule;
use crate::capture::{self, Target, wayland};
use crate::cli::{HostArgs, Source};
use crate::config::Config;
use crate::encoder::{self, Encoder};
use crate::events::{Event, Events};
use crate::pipeline::{self, CaptureParts, RungParts, quote};
use crate::quality::{self, Overrides};
use crate::text::list_or_none;

/// How the host captures and encodes, decided before the share starts. The capture pipeline
/// itself runs only while viewers watch.
pub(super) struct CapturePlan {
    pub input: VideoInput,
    pub video: VideoParts,
    /// `gst-launch` description of the audio source, if sound is shared.
    pub audio_source: Option<String>,
    /// Per-app audio: which apps' sound the capture sink collects.
    pub apps: Option<Rule>,
    /// What is shared, for people.
    pub what: String,
}

/// Where the video comes from.
pub(super) enum VideoInput {
    /// A source GStreamer opens itself: the capture pipeline is built (and checked) now.
    Direct {
        desc: String,
        /// Native size of the source.
        size: (u32, u32),
        /// The X11 window shared, if one is.
        window: Option<u64>,
    },
    /// The ScreenCast portal: the pipeline is built once it answers.
    Portal(wayland::Portal),
}

/// The encode half of the capture pipeline.
pub(super) struct VideoParts {
    pub format: &'static str,
    /// Factory name, for people.
    pub encoder_name: String,
    /// Element description with its settings.
    pub encoder: String,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub max_height: Option<u32>,
    /// The lower renditions' encoder: the top one's, or x264 when that is hardware that does
    /// not run one session per rung.
    pub rung_enc: Encoder,
    /// Which renditions besides the top one (`--renditions`).
    pub renditions: quality::Renditions,
}

impl VideoParts {
    /// The renditions for a source of `size`, top first: output size and kbit/s.
    pub fn ladder(&self, size: (u32, u32)) -> Vec<((u32, u32), u32)> {
        let top = quality::Settings {
            max_height: self.max_height,
            bitrate_kbps: self.bitrate_kbps,
            framerate: self.fps,
            preset: crate::cli::Quality::Auto,
        };
        quality::ladder(&top, size.1, &self.renditions)
            .iter()
            .map(|r| (quality::output_size(size.0, size.1, r.max_height), r.bitrate_kbps))
            .collect()
    }
}

impl CapturePlan {
    /// The X11 window shared, if one is: its closing ends the share.
    pub fn window(&self) -> Option<u64> {
        match self.input {
            VideoInput::Direct { window, .. } => window,
            VideoInput::Portal(_) => None,
        }
    }

    /// The size the capture is scaled to from a source of `size`.
    pub fn output_size(&self, size: (u32, u32)) -> (u32, u32) {
        quality::output_size(size.0, size.1, self.video.max_height)
    }

    /// Each rendition's name (its height) and kbit/s, top first. The portal's size is known
    /// only once it answers: its names assume a 1080p screen.
    pub fn rendition_names(&self) -> Vec<(String, u32)> {
        let size = match self.input {
            VideoInput::Direct { size, .. } => size,
            VideoInput::Portal(_) => (1920, 1080),
        };
        self.video
            .ladder(size)
            .into_iter()
            .map(|((_, h), kbps)| (format!("{h}p"), kbps))
            .collect()
    }

    /// The capture pipeline for a video source of `size`.
    pub fn capture_desc(&self, video_source: &str, size: (u32, u32)) -> Result<String> {
        let paced = matches!(self.input, VideoInput::Direct { .. });
        capture_desc(&self.video, self.audio_source.as_deref(), video_source, size, paced)
    }
}

/// `paced_source`: the source keeps the rate its caps ask for (see [`CaptureParts`]).
fn capture_desc(
    video: &VideoParts,
    audio_source: Option<&str>,
    video_source: &str,
    size: (u32, u32),
    paced_source: bool,
) -> Result<String> {
    let (width, height) = quality::output_size(size.0, size.1, video.max_height);
    let rungs: Vec<RungParts> = video
        .ladder(size)
        .into_iter()
        .skip(1)
        .map(|((width, height), kbps)| RungParts {
            width,
            height,
            encoder: video.rung_enc.description(kbps, video.fps),
        })
        .collect();
    pipeline::host_capture(&CaptureParts {
        video_source,
        format: video.format,
        width,
        height,
        fps: video.fps,
        encoder: &video.encoder,
        paced_source,
        audio_source,
        rungs: &rungs,
    })
}

/// Decides the capture: target, encoder, quality and sound. Fails now, not when the first
/// viewer arrives, when an element is missing.
pub(super) async fn plan_capture(args: &HostArgs, config: &Config, events: &Arc<Events>) -> Result<CapturePlan> {
    let q = quality::resolve(
        args.quality,
        Overrides {
            max_height: args.max_height,
            bitrate_kbps: args.bitrate,
            framerate: args.framerate,
        },
        config.upstream_mbps(),
        args.max_viewers.unwrap_or(1),
    );
    if args.forget_source {
        for p in wayland::forget_sources() {
            eprintln!("pixelpass: forgot the remembered screen-cast source ({})", p.display());
        }
    }
    let target = capture::resolve_target(args).await?;
    let enc = encoder::choose(args.no_hwencode, args.encoder.as_deref()).await?;
    eprintln!("pixelpass: encoder {}: {}", enc.name, enc.reason);
    let rung_enc = encoder::for_lower_rungs(&enc, args.renditions.count()).await;
    if rung_enc != enc {
        eprintln!("pixelpass: encoder {}: {}", rung_enc.name, rung_enc.reason);
    }
    let video = video_parts(&enc, &rung_enc, &q, &args.renditions);
    let apps = if args.no_audio { None } else { app_rule(args) };
    let audio_source = audio_source(args, apps.as_ref(), events).await?;
    Ok(CapturePlan {
        what: target.what(),
        input: video_input(target, &video, audio_source.as_deref()).await?,
        video,
        audio_source,
        apps,
    })
}

/// The video input, its capture pipeline checked now: a missing element fails the start, not
/// the first viewer.
async fn video_input(target: Target, video: &VideoParts, audio_source: Option<&str>) -> Result<VideoInput> {
    let check = |desc: &str| {
        pipeline::launch(desc, "capture")
            .with_context(|| desc.to_string())
            .map(drop)
    };
    match target {
        Target::Direct(d) => {
            let desc = capture_desc(video, audio_source, &d.desc, d.size, true)?;
            check(&desc)?;
            Ok(VideoInput::Direct {
                desc,
                size: d.size,
                window: d.window,
            })
        }
        Target::Portal { window } => {
            // (its pipeline is built once the portal answers: checked here with a stand-in)
            check(&capture_desc(video, audio_source, "pipewiresrc", (1280, 720), false)?)?;
            Ok(VideoInput::Portal(wayland::Portal::probe(window, None).await?))
        }
    }
}

fn video_parts(
    enc: &Encoder,
    rung_enc: &Encoder,
    q: &quality::Settings,
    renditions: &quality::Renditions,
) -> VideoParts {
    VideoParts {
        rung_enc: rung_enc.clone(),
        renditions: renditions.clone(),
        format: enc.format,
        encoder_name: enc.name.clone(),
        encoder: enc.description(q.bitrate_kbps, q.framerate),
        fps: q.framerate,
        bitrate_kbps: q.bitrate_kbps,
        max_height: q.max_height,
    }
}

/// A `pulsesrc` recording `device` (a monitor source).
fn pulse_source(device: &str) -> String {
    format!("pulsesrc device={} client-name=pixelpass", quote(device))
}

/// The per-app rule the flags ask for, if any.
fn app_rule(args: &HostArgs) -> Option<Rule> {
    if !args.app.is_empty() {
        Some(Rule::Only(args.app.clone()))
    } else if !args.exclude_app.is_empty() {
        Some(Rule::Except(args.exclude_app.clone()))
    } else {
        None
    }
}

/// Where the sound comes from: none, the per-app capture sink, a test tone, or the default
/// sink's monitor (without an audio server: a warning, and video alone).
async fn audio_source(args: &HostArgs, apps: Option<&Rule>, events: &Arc<Events>) -> Result<Option<String>> {
    if args.no_audio {
        return Ok(None);
    }
    if let Some(rule) = apps {
        let (rule, ev) = (rule.clone(), events.clone());
        tokio::task::spawn_blocking(move || app_audio_check(&rule, &ev)).await??;
        return Ok(Some(pulse_source(&format!(
            "{}.monitor",
            crate::audio::apps::sink_name()
        ))));
    }
    if args.source == Source::Test {
        return Ok(Some("audiotestsrc is-live=true wave=sine freq=440 volume=0.3".into()));
    }
    match crate::audio::monitor::default_monitor().await {
        Ok(dev) => Ok(Some(pulse_source(&dev))),
        Err(e) => {
            events.emit(Event::Warning {
                message: format!("sharing video without sound: {e} (use --no-audio to silence this)"),
            });
            Ok(None)
        }
    }
}

/// Per-app audio needs PipeWire; says which apps play now, so a typo is seen at once.
fn app_audio_check(rule: &Rule, events: &Events) -> Result<()> {
    let playing = crate::audio::apps::playing().context("per-app audio (--app/--exclude-app) needs PipeWire")?;
    let shared: Vec<&str> = playing.iter().filter(|a| rule.shares(a)).map(|a| a.label()).collect();
    let all: Vec<&str> = playing.iter().map(|a| a.label()).collect();
    match rule {
        Rule::Only(names) if shared.is_empty() => events.emit(Event::Warning {
            message: format!(
                "no app named {} is playing sound now; it is shared as soon as it does (playing now: {})",
                names.join(", "),
                list_or_none(&all)
            ),
        }),
        _ => eprintln!(
            "pixelpass: sharing {} (playing now: {})",
            rule.describe(),
            list_or_none(&shared)
        ),
    }
    Ok(())
}
