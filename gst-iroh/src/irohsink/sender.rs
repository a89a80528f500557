//! What the host sends one admitted viewer: it walks the GOP cache with the viewer's cursor,
//! one QUIC uni stream per GOP, older GOPs first.
//!
//! A viewer whose path is slower than the stream gets each GOP as far as it can take it in
//! time: a chunk is written only if the viewer's path (measured in [`Delivery`]) delivers it
//! before the next GOP starts, or within `max-lag` of its capture, whichever is later.
//! Otherwise the GOP is cut there (its stream finished early, so everything written still
//! arrives and decodes) and the viewer resumes at the next keyframe with an idle path. Only
//! when even that is not enough (the path fails to take one GOP in time) are undelivered GOP
//! streams reset and the viewer moved to the newest GOP: the last resort.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iroh::endpoint::{SendStream, VarInt};
use tokio::sync::watch;

use super::delivery::Delivery;
use super::imp::CAT;
use super::session::{Shared, Viewer};
use crate::gop_cache::{Chunk, Cursor, GopCache, Step};
use crate::net::write_control;
use crate::protocol::{CloseCode, Control, GopHeader, flags};

/// Stream reset code for a GOP dropped because the viewer fell behind.
const RESET_STALE: u32 = 1;
/// Finished GOP streams kept resettable while they may still be queued.
const KEEP_FINISHED: usize = 16;

/// Why a step did not complete.
enum Interrupt {
    /// The viewer fell too far behind during a write: drop its backlog.
    Stale,
    /// The viewer is gone or must go, with this close code.
    Gone(CloseCode),
}

/// A GOP stream to the viewer.
struct GopStream {
    seq: u64,
    send: SendStream,
    /// Whether media (not only the GOP header and stream headers) went out on it.
    media: bool,
}

/// Serves the viewer until it leaves or must go; returns the close code.
pub(super) async fn serve(shared: &Arc<Shared>, viewer: &Arc<Viewer>, control: SendStream) -> CloseCode {
    let (cursor, need_keyframe) = shared.gops.join(Instant::now());
    gst::debug!(
        CAT,
        "viewer {} starts {}",
        viewer.id,
        if need_keyframe {
            "at the next keyframe"
        } else {
            "with the cached GOP"
        }
    );
    if need_keyframe {
        shared.request_keyframe();
    }
    let mut sender = Sender {
        shared,
        viewer,
        cursor,
        current: None,
        finished: VecDeque::new(),
        discont_next: false,
        progressing: Instant::now(),
        reset_gops: 0,
    };
    let code = sender.run(control).await;
    shared.gops.leave(&sender.cursor);
    if let Some(mut s) = sender.current.take() {
        let _ = s.send.reset(VarInt::from_u32(RESET_STALE));
    }
    code
}

struct Sender<'a> {
    shared: &'a Arc<Shared>,
    viewer: &'a Arc<Viewer>,
    cursor: Cursor,
    current: Option<GopStream>,
    /// Finished GOP streams, oldest first, until they are surely delivered.
    finished: VecDeque<GopStream>,
    /// The next frame written follows skipped data: flag it DISCONT.
    discont_next: bool,
    /// Last time the viewer was within max-lag or finished a GOP.
    progressing: Instant,
    /// Finished GOP streams reset before they were delivered.
    reset_gops: u64,
}

impl Sender<'_> {
    fn gops(&self) -> &GopCache {
        &self.shared.gops
    }

    fn delivery(&self) -> std::sync::MutexGuard<'_, Delivery> {
        self.viewer.delivery.lock().unwrap()
    }

    async fn run(&mut self, mut control: SendStream) -> CloseCode {
        let mut changed = self.gops().subscribe();
        loop {
            let step = self.shared.gops.next(&mut self.cursor, 64);
            gst::trace!(CAT, "viewer {}: {step:?}", self.viewer.id);
            let gop_done = matches!(step, Step::Close);
            let res = match step {
                Step::Open {
                    seq,
                    caps,
                    headers,
                    discont,
                } => self.open(seq, &caps, &headers, discont).await,
                Step::Data(chunks) => self.send(chunks).await,
                Step::Close => {
                    self.finish_current();
                    Ok(())
                }
                Step::Wait => self.wait(&mut changed).await,
                Step::End => return self.end(&mut control).await,
            };
            match res {
                Ok(()) => {}
                Err(Interrupt::Gone(code)) => return code,
                Err(Interrupt::Stale) => self.skip("a write fell behind"),
            }
            if let Some(code) = self.check(gop_done) {
                return code;
            }
        }
    }

    /// Opens the stream of GOP `seq` and writes its header and the stream headers.
    async fn open(&mut self, seq: u64, caps: &str, headers: &[Chunk], discont: bool) -> Result<(), Interrupt> {
        self.finish_current();
        self.drop_obsolete_backlog();
        let send = tokio::select! {
            s = self.viewer.conn.open_uni() => s.map_err(|_| Interrupt::Gone(CloseCode::Normal))?,
            _ = self.viewer.cancel.cancelled() => return Err(Interrupt::Gone(CloseCode::HostStopped)),
        };
        // Older GOPs first: the viewer plays GOPs in order, so a newer GOP that took the
        // bandwidth would starve the tail of the one being played.
        let _ = send.set_priority(-((seq & 0x7fff_ffff) as i32));
        self.discont_next |= discont;
        self.current = Some(GopStream {
            seq,
            send,
            media: false,
        });
        let header = GopHeader {
            seq,
            caps: caps.to_string(),
        };
        let mut parts = vec![Bytes::from(header.encode())];
        self.encode(headers, &mut parts);
        self.write(parts, None, Instant::now()).await
    }

    /// Writes the chunks the viewer's path delivers in time; cuts the GOP at the first that
    /// it would not.
    async fn send(&mut self, chunks: Vec<Chunk>) -> Result<(), Interrupt> {
        let Some(media) = self.current.as_ref().map(|s| s.media) else {
            return Ok(());
        };
        let fits = if media {
            self.chunks_in_time(&chunks)
        } else {
            // A GOP's keyframe always goes: without it nothing of the GOP decodes.
            chunks.len()
        };
        if fits > 0 {
            let mut parts = Vec::with_capacity(fits * 2);
            self.encode(&chunks[..fits], &mut parts);
            let capture = chunks[..fits].iter().rev().find_map(|c| c.meta.capture_unix_ns);
            self.write(parts, capture, chunks[0].arrived).await?;
            if let Some(s) = &mut self.current {
                s.media = true;
            }
        }
        if fits < chunks.len() {
            self.cut();
        }
        Ok(())
    }

    /// How many of `chunks` arrive in time: before the next GOP is due to start (then the
    /// path would idle anyway), or within max-lag of when the host got them.
    fn chunks_in_time(&self, chunks: &[Chunk]) -> usize {
        let now = Instant::now();
        // The next GOP's start only counts while no newer GOP exists (else it is overdue).
        let due = (!self.gops().newer_gop_exists(&self.cursor))
            .then(|| self.gops().next_gop_due())
            .flatten();
        let delivery = self.delivery();
        let mut bytes = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            bytes += c.data.len() as u64 + 24;
            let Some(arrival) = delivery.arrival(now, bytes) else {
                return chunks.len();
            };
            let lag_deadline = c.arrived + self.shared.limits.max_lag;
            let deadline = due.map_or(lag_deadline, |d| d.max(lag_deadline));
            if arrival > deadline {
                gst::debug!(
                    CAT,
                    "viewer {}: chunk {i} would arrive {:?} after its deadline ({} bytes in flight at {:.0} kB/s)",
                    self.viewer.id,
                    arrival - deadline,
                    delivery.in_flight(now),
                    delivery.rate().unwrap_or(0.0) / 1000.0
                );
                return i;
            }
        }
        chunks.len()
    }

    /// Ends the current GOP early: what was written arrives, the rest is left out.
    fn cut(&mut self) {
        if self.shared.gops.cut(&mut self.cursor) {
            gst::debug!(CAT, "viewer {}: GOP cut to arrive in time", self.viewer.id);
            self.viewer.cut_gops.store(self.cursor.cut_gops, Ordering::Relaxed);
            self.finish_current();
        }
    }

    fn encode(&mut self, chunks: &[Chunk], parts: &mut Vec<Bytes>) {
        for c in chunks {
            let mut meta = c.meta;
            if std::mem::take(&mut self.discont_next) {
                meta.flags |= flags::DISCONT;
            }
            let mut hdr = Vec::with_capacity(24);
            meta.encode_header(c.data.len(), &mut hdr);
            parts.push(Bytes::from(hdr));
            parts.push(c.data.clone());
        }
    }

    /// Writes `parts` to the current GOP stream. Interrupted when the viewer falls too far
    /// behind while a newer GOP exists, when it is kicked or when it goes.
    async fn write(&mut self, parts: Vec<Bytes>, capture: Option<u64>, arrived: Instant) -> Result<(), Interrupt> {
        // Taken out while writing, so the lag checks can look at the rest of the sender.
        let Some(mut stream) = self.current.take() else {
            return Ok(());
        };
        let n: usize = parts.iter().map(Bytes::len).sum();
        let res = self.write_to(&mut stream.send, parts).await;
        let seq = stream.seq;
        self.current = Some(stream);
        res?;
        self.viewer.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        self.delivery()
            .on_write(Instant::now(), seq, capture, n as u64, arrived);
        Ok(())
    }

    async fn write_to(&self, send: &mut SendStream, mut parts: Vec<Bytes>) -> Result<(), Interrupt> {
        let write = send.write_all_chunks(&mut parts);
        tokio::pin!(write);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                r = &mut write => return r.map_err(|_| Interrupt::Gone(CloseCode::Normal)),
                _ = tick.tick() => {
                    if self.behind_beyond_repair() {
                        return Err(Interrupt::Stale);
                    }
                }
                _ = self.viewer.cancel.cancelled() => return Err(Interrupt::Gone(CloseCode::HostStopped)),
            }
        }
    }

    fn finish_current(&mut self) {
        if let Some(mut s) = self.current.take() {
            let _ = s.send.finish();
            // Finished is not delivered: keep it resettable while it may still queue.
            self.finished.push_back(s);
            if self.finished.len() > KEEP_FINISHED {
                self.finished.pop_front();
            }
        }
    }

    /// Resets finished GOP streams whose remaining bytes would hold up the GOP about to open
    /// by more than max-lag: they are older than it, so the viewer is better off without them.
    fn drop_obsolete_backlog(&mut self) {
        if self.finished.is_empty() || !self.backlog_too_long(Instant::now()) {
            return;
        }
        gst::debug!(
            CAT,
            "viewer {}: backlog drains in {:?}",
            self.viewer.id,
            self.delivery().drain_time(Instant::now())
        );
        for mut s in self.finished.drain(..) {
            gst::debug!(CAT, "viewer {}: dropping the rest of GOP {}", self.viewer.id, s.seq);
            let _ = s.send.reset(VarInt::from_u32(RESET_STALE));
            self.viewer.delivery.lock().unwrap().on_reset(s.seq);
            self.reset_gops += 1;
        }
        self.count_dropped();
    }

    fn count_dropped(&self) {
        let n = self.cursor.dropped_gops + self.reset_gops;
        self.viewer.dropped_gops.store(n, Ordering::Relaxed);
    }

    /// Whether what is in flight takes longer than max-lag to arrive (by the measured rate;
    /// by its age while no rate is known).
    fn backlog_too_long(&self, now: Instant) -> bool {
        let delivery = self.delivery();
        match delivery.drain_time(now) {
            Some(d) => d > self.shared.limits.max_lag,
            None => delivery
                .oldest_undelivered()
                .is_some_and(|t| now.saturating_duration_since(t) > self.shared.limits.max_lag),
        }
    }

    /// Behind by more than max-lag, a newer GOP exists and the backlog does not clear in time.
    fn behind_beyond_repair(&self) -> bool {
        let now = Instant::now();
        self.lag(now) > self.shared.limits.max_lag
            && self.gops().newer_gop_exists(&self.cursor)
            && self.backlog_too_long(now)
    }

    /// The last resort: resets every GOP stream not seen delivered and resumes at the newest
    /// GOP (or the next one).
    fn skip(&mut self, why: &str) {
        if !self.shared.gops.skip_to_newest(&mut self.cursor) {
            self.shared.gops.abandon(&mut self.cursor);
        }
        let streams: Vec<GopStream> = self.finished.drain(..).chain(self.current.take()).collect();
        for mut s in streams {
            gst::debug!(CAT, "viewer {} ({why}): dropping GOP {}", self.viewer.id, s.seq);
            let _ = s.send.reset(VarInt::from_u32(RESET_STALE));
            self.delivery().on_reset(s.seq);
        }
        self.count_dropped();
    }

    async fn wait(&self, changed: &mut watch::Receiver<u64>) -> Result<(), Interrupt> {
        tokio::select! {
            r = changed.changed() => r.map_err(|_| Interrupt::Gone(CloseCode::HostStopped)),
            _ = tokio::time::sleep(Duration::from_millis(100)) => Ok(()),
            _ = self.viewer.cancel.cancelled() => Err(Interrupt::Gone(CloseCode::HostStopped)),
            _ = self.viewer.conn.closed() => Err(Interrupt::Gone(CloseCode::Normal)),
        }
    }

    /// End of stream: finish, say End, and give the viewer a moment to read everything.
    async fn end(&mut self, control: &mut SendStream) -> CloseCode {
        if let Some(mut s) = self.current.take() {
            let _ = s.send.finish();
        }
        let _ = write_control(control, &Control::End).await;
        let _ = control.finish();
        tokio::select! {
            _ = self.viewer.conn.closed() => {},
            _ = tokio::time::sleep(Duration::from_secs(2)) => {},
            _ = self.viewer.cancel.cancelled() => {},
        }
        self.viewer.cancel.cancel();
        CloseCode::Normal
    }

    /// How far behind live the viewer is: the age of the oldest media it has not received,
    /// whether written already or still in the cache.
    fn lag(&self, now: Instant) -> Duration {
        let in_flight = self
            .delivery()
            .oldest_undelivered()
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        in_flight.max(self.gops().backlog_age(&self.cursor, now))
    }

    /// Bookkeeping after every step: the lag figure, removal of a viewer that stopped
    /// reading or stayed hopeless, and the last-resort skip.
    fn check(&mut self, gop_done: bool) -> Option<CloseCode> {
        let now = Instant::now();
        let lag = self.lag(now);
        self.viewer.lag_ms.store(lag.as_millis() as u64, Ordering::Relaxed);
        self.count_dropped();
        let timeout = self.shared.limits.slow_timeout;
        // Data outstanding and no progress report for slow-timeout: it stopped reading (or
        // never started), whatever the lag estimate says.
        let silent = {
            let d = self.delivery();
            let since = d.reported_at().unwrap_or(self.viewer.joined);
            d.has_pending() && now.saturating_duration_since(since) > timeout
        };
        if silent {
            return Some(CloseCode::Slow);
        }
        // Hopeless: neither within max-lag nor finishing a single GOP for slow-timeout. A
        // viewer that gets part of every GOP finishes GOPs and stays.
        if lag <= self.shared.limits.max_lag || gop_done {
            self.progressing = now;
        } else if now.saturating_duration_since(self.progressing) > timeout {
            return Some(CloseCode::Slow);
        }
        if self.behind_beyond_repair() {
            self.skip("behind");
        }
        None
    }
}
