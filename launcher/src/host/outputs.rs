//! What the host sends besides its viewers: a recording (`--record`) and broadcast servers
//! (`--publish`), each fed the top rendition's MPEG-TS as the capture makes it, without
//! re-encoding. Neither can slow the share: both are fed without blocking (`output.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use crate::cli::HostArgs;
use crate::events::Events;
use crate::publish::Publisher;
use crate::record::Recorder;

/// The running outputs of a share.
pub(super) struct Outputs {
    recorder: Option<Recorder>,
    /// Taken (and so stopped) by [`Outputs::finish`].
    publishers: Mutex<Vec<Publisher>>,
}

impl Outputs {
    /// Starts what `args` asks for; `None` when it asks for nothing (capture then runs only
    /// while someone watches).
    pub fn start(args: &HostArgs, events: &Arc<Events>) -> Result<Option<Arc<Outputs>>> {
        if args.record.is_none() && args.publish.is_empty() {
            return Ok(None);
        }
        let recorder = match &args.record {
            Some(path) => Some(Recorder::start(path, events.clone())?),
            None => None,
        };
        let publishers = args
            .publish
            .iter()
            .map(|url| Publisher::start(url.clone(), events.clone()))
            .collect();
        Ok(Some(Arc::new(Outputs {
            recorder,
            publishers: Mutex::new(publishers),
        })))
    }

    /// Hands one buffer of MPEG-TS to every output; never blocks.
    pub fn push(&self, buffer: &gst::Buffer) {
        if let Some(r) = &self.recorder {
            r.push(buffer);
        }
        for p in self.publishers.lock().unwrap().iter() {
            p.push(buffer);
        }
    }

    /// Completes the recording (its index, an MP4's last fragment) and stops publishing.
    pub fn finish(&self) {
        drop(std::mem::take(&mut *self.publishers.lock().unwrap()));
        if let Some(r) = &self.recorder {
            r.finish(Duration::from_secs(10));
        }
    }
}
