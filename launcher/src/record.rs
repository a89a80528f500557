//! Recording a share without re-encoding: the MPEG-TS as it travels (`.ts`), or remuxed into
//! Matroska (`.mkv`) or fragmented MP4 (`.mp4`: every second is a complete fragment, so the
//! file plays even when the recording was cut off).
//!
//! A recording never stops the share: its pipeline is separate and fed without blocking
//! (`output.rs`), and a write failure (full disk, removed drive) is one warning, after which
//! the share goes on unrecorded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use gst::prelude::*;

use crate::events::{Event, Events};
use crate::output::{self, OutputPipeline};
use crate::pipeline;

/// What a recording's file extension asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// The MPEG-TS as it travels.
    Ts,
    Mkv,
    /// Fragmented MP4 (one-second fragments).
    Mp4,
}

impl Container {
    pub fn of(path: &Path) -> Result<Container> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("ts" | "m2ts" | "mts") => Ok(Container::Ts),
            Some("mkv") => Ok(Container::Mkv),
            Some("mp4" | "m4v") => Ok(Container::Mp4),
            _ => bail!(
                "cannot record to {}: name the file .ts (as received), .mkv or .mp4",
                path.display()
            ),
        }
    }

    /// The muxer for a remuxed container.
    fn muxer(self) -> Option<&'static str> {
        match self {
            Container::Ts => None,
            Container::Mkv => Some("matroskamux name=mux"),
            Container::Mp4 => Some("mp4mux name=mux fragment-duration=1000"),
        }
    }
}

/// Checks a recording target before anything starts: a known extension, a directory that
/// exists. Bad input here is a usage error, not a warning later.
pub fn check_target(path: &Path) -> Result<Container> {
    let container = Container::of(path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "cannot record to {}: the folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    Ok(container)
}

/// A recording in progress: MPEG-TS buffers in, a file out.
pub struct Recorder {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    path: PathBuf,
    /// Set once the file cannot be written: later buffers are not pushed.
    failed: Arc<AtomicBool>,
    /// Whether anything reached the recording (else the empty file is removed at the end).
    pushed: AtomicBool,
    events: Arc<Events>,
}

impl Recorder {
    /// Starts recording to `path` (created or truncated). A failure to start is an error;
    /// a failure later is one warning on `events`.
    pub fn start(path: &Path, events: Arc<Events>) -> Result<Recorder> {
        let container = check_target(path)?;
        let sink = format!(
            "filesink location={} sync=false",
            pipeline::quote(&path.to_string_lossy())
        );
        let OutputPipeline { pipeline, src } = output::build(container.muxer(), &sink, "recording")?;
        let failed = Arc::new(AtomicBool::new(false));
        watch_failures(&pipeline, path, &failed, events.clone());
        pipeline::play(&pipeline, "recording")?;
        events.emit(Event::Recording {
            path: path.display().to_string(),
        });
        Ok(Recorder {
            pipeline,
            src,
            path: path.to_path_buf(),
            failed,
            pushed: AtomicBool::new(false),
            events,
        })
    }

    /// Records one buffer of MPEG-TS (its DISCONT flag marks where media was left out).
    pub fn push(&self, buffer: &gst::Buffer) {
        self.pushed.store(true, Ordering::Relaxed);
        if !self.failed.load(Ordering::Relaxed) && output::push(&self.src, buffer).is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    /// Ends the file properly (an MP4's last fragment, Matroska's index): EOS, waited for up
    /// to `timeout`, then the pipeline stops and a `recorded` event says what was written.
    pub fn finish(&self, timeout: Duration) {
        if !self.failed.load(Ordering::Relaxed) && self.src.end_of_stream().is_ok() {
            let bus = self.pipeline.bus().expect("pipeline has a bus");
            let end = bus.timed_pop_filtered(
                gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            );
            if end.is_none() {
                self.events.emit(Event::Warning {
                    message: format!(
                        "the recording to {} was not completed within {} s: it may lack its index",
                        self.path.display(),
                        timeout.as_secs()
                    ),
                });
            }
        }
        let _ = self.pipeline.set_state(gst::State::Null);
        let path = self.path.display();
        if !self.pushed.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file(&self.path);
            self.events.emit(Event::Warning {
                message: format!("nothing was received, so nothing was recorded to {path}"),
            });
        } else if !self.failed.load(Ordering::Relaxed) {
            self.events.emit(Event::Recorded {
                path: path.to_string(),
                bytes: std::fs::metadata(&self.path).map_or(0, |m| m.len()),
            });
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// The first error of the recording pipeline becomes one warning; recording stops there.
fn watch_failures(pipeline: &gst::Pipeline, path: &Path, failed: &Arc<AtomicBool>, events: Arc<Events>) {
    let bus = pipeline.bus().expect("pipeline has a bus");
    let (failed, path) = (failed.clone(), path.display().to_string());
    bus.set_sync_handler(move |_, msg| match msg.view() {
        gst::MessageView::Error(e) => {
            if !failed.swap(true, Ordering::Relaxed) {
                events.emit(Event::Warning {
                    message: format!("recording to {path} stopped: {} (the share goes on)", e.error()),
                });
            }
            gst::BusSyncReply::Pass
        }
        // kept for finish(); nothing else is read, so nothing else piles up
        gst::MessageView::Eos(_) => gst::BusSyncReply::Pass,
        _ => gst::BusSyncReply::Drop,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_picks_the_container() {
        assert_eq!(Container::of(Path::new("a.ts")).unwrap(), Container::Ts);
        assert_eq!(Container::of(Path::new("a.MKV")).unwrap(), Container::Mkv);
        assert_eq!(Container::of(Path::new("dir/a.mp4")).unwrap(), Container::Mp4);
        let e = Container::of(Path::new("a.avi")).unwrap_err().to_string();
        assert!(e.contains(".ts (as received), .mkv or .mp4"), "{e}");
        assert!(Container::of(Path::new("noext")).is_err());
    }

    #[test]
    fn a_missing_folder_is_refused_before_anything_starts() {
        let e = check_target(Path::new("/nonexistent-pixelpass/a.ts"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the folder /nonexistent-pixelpass does not exist"), "{e}");
        assert_eq!(check_target(Path::new("here.mkv")).unwrap(), Container::Mkv);
    }
}
