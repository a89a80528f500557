//! Publishing a share to a broadcast server without re-encoding, beside the P2P share:
//! `rtmp://` / `rtmps://` (FLV through `rtmp2sink`: nginx-rtmp, Owncast, PeerTube, YouTube,
//! Twitch, …) and `srt://` (the MPEG-TS as it travels, through `srtsink` as caller; the URL's
//! `passphrase` and `streamid` go with it).
//!
//! A server that is down, refuses or restarts never disturbs the viewers: the publish
//! pipeline is separate and fed without blocking (`output.rs`); on a failure it is torn down
//! and rebuilt with backoff (1 s doubling to 15 s), and resumes at the next keyframe, after
//! the program tables. `publish-state` events say what happens (`connecting`, `live`,
//! `retrying` with the reason); URLs in them hide the stream key and the passphrase.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use gst::prelude::*;
use gstiroh::psi_cache::PsiCache;

use crate::events::{Event, Events};
use crate::output::{self, OutputPipeline};
use crate::pipeline::{self, StopOnDrop};

/// A publish target, checked at argument time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishUrl {
    Rtmp(String),
    Srt(String),
}

impl std::str::FromStr for PublishUrl {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<PublishUrl> {
        let scheme = s.split_once("://").map(|(k, _)| k.to_ascii_lowercase());
        let rest_ok = s
            .split_once("://")
            .is_some_and(|(_, r)| !r.is_empty() && !r.starts_with('/'));
        match scheme.as_deref() {
            Some("rtmp" | "rtmps") if rest_ok => Ok(PublishUrl::Rtmp(s.to_string())),
            Some("srt") if rest_ok => Ok(PublishUrl::Srt(s.to_string())),
            Some("rtmp" | "rtmps" | "srt") => bail!("{s} names no server: like rtmp://host/app/key or srt://host:port"),
            _ => bail!("cannot publish to {s}: use rtmp://, rtmps:// (FLV) or srt:// (MPEG-TS) URLs"),
        }
    }
}

impl PublishUrl {
    fn url(&self) -> &str {
        match self {
            PublishUrl::Rtmp(u) | PublishUrl::Srt(u) => u,
        }
    }

    /// The URL as events and logs show it: an RTMP stream key (the last path part) and SRT
    /// secrets (`passphrase`, `streamid`) are replaced by `…`.
    pub fn shown(&self) -> String {
        match self {
            PublishUrl::Rtmp(u) => {
                let (head, rest) = u.split_once("://").unwrap_or(("", u));
                match rest.split('/').collect::<Vec<_>>().as_slice() {
                    [host, app, _key, ..] => format!("{head}://{host}/{app}/…"),
                    _ => u.clone(),
                }
            }
            PublishUrl::Srt(u) => match u.split_once('?') {
                None => u.clone(),
                Some((base, query)) => {
                    let params: Vec<String> = query
                        .split('&')
                        .map(|p| match p.split_once('=') {
                            Some((k, _)) if matches!(k, "passphrase" | "streamid") => format!("{k}=…"),
                            _ => p.to_string(),
                        })
                        .collect();
                    format!("{base}?{}", params.join("&"))
                }
            },
        }
    }

    /// The muxer and sink of its pipeline.
    fn parts(&self) -> (Option<&'static str>, String) {
        let url = pipeline::quote(self.url());
        match self {
            PublishUrl::Rtmp(_) => (
                Some("flvmux name=mux streamable=true"),
                format!("rtmp2sink name=sink location={url} async-connect=true"),
            ),
            PublishUrl::Srt(_) => (None, format!("srtsink name=sink uri={url} wait-for-connection=false")),
        }
    }
}

/// One publish target in progress: MPEG-TS buffers in; a thread owns the pipeline's life.
pub struct Publisher {
    current: Arc<Mutex<Option<gst_app::AppSrc>>>,
    /// The program tables, sent first whenever a (re)built pipeline starts.
    psi: Mutex<PsiCache>,
    /// Set when a new pipeline waits for its first keyframe.
    want_keyframe: Arc<AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Publisher {
    pub fn start(target: PublishUrl, events: Arc<Events>) -> Publisher {
        let current = Arc::new(Mutex::new(None));
        let want_keyframe = Arc::new(AtomicBool::new(true));
        let (stop, stopped) = mpsc::channel();
        let keeper = Keeper {
            target,
            events,
            current: current.clone(),
            want_keyframe: want_keyframe.clone(),
            stopped,
        };
        let thread = std::thread::Builder::new()
            .name("publish".into())
            .spawn(move || keeper.run())
            .expect("spawn the publish thread");
        Publisher {
            current,
            psi: Mutex::new(PsiCache::default()),
            want_keyframe,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Publishes one buffer of MPEG-TS; never blocks. A new pipeline starts at a keyframe.
    pub fn push(&self, buffer: &gst::Buffer) {
        let tables = {
            let mut psi = self.psi.lock().unwrap();
            if let Ok(map) = buffer.map_readable() {
                psi.scan(&map);
            }
            psi.tables()
        };
        let Some(src) = self.current.lock().unwrap().clone() else {
            return;
        };
        if self.want_keyframe.load(Ordering::Relaxed) {
            let (true, Some(tables)) = (!buffer.flags().contains(gst::BufferFlags::DELTA_UNIT), tables) else {
                return;
            };
            let _ = src.push_buffer(gst::Buffer::from_slice(tables));
            self.want_keyframe.store(false, Ordering::Relaxed);
        }
        let _ = output::push(&src, buffer);
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The publish thread: builds the pipeline, watches it, rebuilds it with backoff.
struct Keeper {
    target: PublishUrl,
    events: Arc<Events>,
    current: Arc<Mutex<Option<gst_app::AppSrc>>>,
    want_keyframe: Arc<AtomicBool>,
    stopped: mpsc::Receiver<()>,
}

const BACKOFF_MAX: Duration = Duration::from_secs(15);

impl Keeper {
    fn run(self) {
        let mut backoff = Duration::from_secs(1);
        loop {
            self.state("connecting", None);
            let reason = match self.attempt() {
                Ok(None) => return, // stopped
                Ok(Some(reason)) => reason,
                Err(e) => e.to_string(),
            };
            *self.current.lock().unwrap() = None;
            self.state("retrying", Some(format!("{reason}; again in {} s", backoff.as_secs())));
            match self.stopped.recv_timeout(backoff) {
                Err(RecvTimeoutError::Timeout) => backoff = (backoff * 2).min(BACKOFF_MAX),
                _ => return,
            }
        }
    }

    /// One pipeline's life: `None` when asked to stop, else why it failed.
    fn attempt(&self) -> Result<Option<String>> {
        let (mux, sink) = self.target.parts();
        let OutputPipeline { pipeline, src } = output::build(mux, &sink, "publish")?;
        let _stop_on_drop = StopOnDrop(pipeline.clone());
        pipeline::play(&pipeline, "publish")?;
        self.want_keyframe.store(true, Ordering::Relaxed);
        *self.current.lock().unwrap() = Some(src);
        let sink: gst::Element = pipeline::child(&pipeline, "sink", "publish")?;
        let bus = pipeline.bus().expect("pipeline has a bus");
        let (mut sent, mut live) = (0u64, false);
        loop {
            match self.stopped.recv_timeout(Duration::from_millis(250)) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return Ok(None),
            }
            if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos]) {
                return Ok(Some(match msg.view() {
                    gst::MessageView::Error(e) => e.error().to_string(),
                    _ => "the server ended the stream".into(),
                }));
            }
            let now = bytes_sent(&sink);
            if now > sent && !live {
                live = true;
                self.state("live", None);
            }
            sent = now;
        }
    }

    fn state(&self, state: &str, reason: Option<String>) {
        self.events.emit(Event::PublishState {
            url: self.target.shown(),
            state: state.into(),
            reason,
        });
    }
}

/// Bytes the sink has sent so far, from its `stats` (rtmp2sink: `out-bytes-total`, srtsink:
/// `bytes-sent-total`).
fn bytes_sent(sink: &gst::Element) -> u64 {
    let Some(stats) = sink.property::<Option<gst::Structure>>("stats") else {
        return 0;
    };
    ["out-bytes-total", "bytes-sent-total"]
        .iter()
        .find_map(|&k| {
            stats
                .get::<u64>(k)
                .ok()
                .or_else(|| stats.get::<i64>(k).ok().map(|v| v.max(0) as u64))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_their_secrets_hidden() {
        let r: PublishUrl = "rtmp://live.example.com/app/s3cr3t-key".parse().unwrap();
        assert_eq!(r, PublishUrl::Rtmp("rtmp://live.example.com/app/s3cr3t-key".into()));
        assert_eq!(r.shown(), "rtmp://live.example.com/app/…");
        let s: PublishUrl = "srt://10.0.0.2:9000?passphrase=longenough123&streamid=me&latency=200"
            .parse()
            .unwrap();
        assert_eq!(s.shown(), "srt://10.0.0.2:9000?passphrase=…&streamid=…&latency=200");
        assert!("rtmps://h/app/k".parse::<PublishUrl>().is_ok());
        let e = "http://example.com".parse::<PublishUrl>().unwrap_err().to_string();
        assert!(e.contains("use rtmp://, rtmps:// (FLV) or srt:// (MPEG-TS)"), "{e}");
        let e = "srt://".parse::<PublishUrl>().unwrap_err().to_string();
        assert!(e.contains("names no server"), "{e}");
    }
}
