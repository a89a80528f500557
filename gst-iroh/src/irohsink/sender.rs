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
//!
//! With several renditions (a version 2 viewer), the sender moves the viewer between them at
//! GOP boundaries as [`Ladder`] decides, and only where the target rendition has a GOP
//! starting at the same running time; it probes the path with padding before going up.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iroh::endpoint::{SendStream, VarInt};
use tokio::sync::watch;

use super::delivery::Delivery;
use super::imp::CAT;
use super::ladder::{self, Ladder, ProbeSeen, RecentMin, Seen, Why};
use super::rendition::Rendition;
use super::session::{Shared, Viewer};
use crate::gop_cache::{Aligned, Chunk, Cursor, GopCache, Step};
use crate::net::{RUNTIME, write_control};
use crate::protocol::{CloseCode, Control, GopHeader, flags};

/// GOP starts this close (ns) are the same instant in two renditions.
const ALIGN_TOLERANCE: u64 = 5_000_000;
/// How long a switch waits for the target rendition's GOP at the same instant.
const ALIGN_WAIT: Duration = Duration::from_millis(200);
/// Behind by more than this while the path measures slower than the stream: the rung does not
/// fit (the down switch does not wait for the hold).
const OVERLOAD_LAG: Duration = Duration::from_millis(150);
/// What a probe carried is measured over its last stretch of this long.
const PROBE_WINDOW: Duration = Duration::from_millis(1000);

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

/// Where a new viewer starts: its rendition and its cursor there (taken when it is admitted,
/// so it counts as a viewer only once it is sure to get the next keyframe).
pub(super) struct Start {
    rendition: Arc<Rendition>,
    rung: usize,
    adaptive: bool,
    cursor: Cursor,
    need_keyframe: bool,
}

impl Start {
    /// The viewer never got going: release its place.
    pub(super) fn abandon(self) {
        self.rendition.gops.leave(&self.cursor);
    }
}

/// The starting point of a viewer speaking `version` with ceiling `max_kbps`: the highest
/// rendition under the ceiling (the top one for version 1). None without any rendition.
pub(super) fn start(shared: &Shared, version: u32, max_kbps: u32) -> Option<Start> {
    let ladder = shared.ladder();
    let adaptive = version >= 2 && ladder.len() > 1;
    let rung = if adaptive { top_allowed(&ladder, max_kbps) } else { 0 };
    let rendition = ladder.get(rung)?.clone();
    let (cursor, need_keyframe) = rendition.gops.join(Instant::now());
    Some(Start {
        rendition,
        rung,
        adaptive,
        cursor,
        need_keyframe,
    })
}

/// Serves the viewer from `start` until it leaves or must go; returns the close code.
pub(super) async fn serve(shared: &Arc<Shared>, viewer: &Arc<Viewer>, control: SendStream, start: Start) -> CloseCode {
    let Start {
        rendition,
        rung,
        adaptive,
        cursor,
        need_keyframe,
    } = start;
    *viewer.rendition.lock().unwrap() = rendition.name();
    gst::debug!(
        CAT,
        "viewer {} starts on {} {}",
        viewer.id,
        rendition.name(),
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
        rendition,
        ladder: Ladder::new(rung, rung, Instant::now()),
        adaptive,
        wire_offset: 0,
        earlier: (0, 0),
        cut_in_gop: false,
        probe: None,
        probe_rate: 0.0,
        probe_marks: VecDeque::new(),
        probe_lag: Duration::ZERO,
        probe_rtt: Duration::ZERO,
        lag_floor: RecentMin::new(ladder::PROBE_NOISE),
        probe_checked: Instant::now(),
    };
    let code = sender.run(control).await;
    sender.rendition.gops.leave(&sender.cursor);
    sender.stop_probe();
    if let Some(mut s) = sender.current.take() {
        let _ = s.send.reset(VarInt::from_u32(RESET_STALE));
    }
    code
}

/// The highest rung at or below the viewer's ceiling (`max_kbps`, 0: none); the lowest when
/// none is.
fn top_allowed(ladder: &[Arc<Rendition>], max_kbps: u32) -> usize {
    if max_kbps == 0 {
        return 0;
    }
    ladder
        .iter()
        .position(|r| r.kbps() <= max_kbps)
        .unwrap_or(ladder.len().saturating_sub(1))
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
    /// The rendition the cursor walks.
    rendition: Arc<Rendition>,
    ladder: Ladder,
    /// Several renditions and a version 2 viewer: it may be switched.
    adaptive: bool,
    /// Wire GOP number = the cursor's GOP number + this (continuous across switches).
    wire_offset: i64,
    /// GOPs dropped and cut under earlier renditions' cursors.
    earlier: (u64, u64),
    /// The current GOP was cut short.
    cut_in_gop: bool,
    /// The padding task of a probe in progress, its full padding rate, and (time, bytes
    /// delivered) while it runs.
    probe: Option<tokio_util::sync::CancellationToken>,
    probe_rate: f64,

    probe_marks: VecDeque<(Instant, u64)>,
    /// The viewer's lag and the path's RTT when the probe started (see [`ProbeSeen`]).
    probe_lag: Duration,
    probe_rtt: Duration,
    /// The lag as a probe judges it (lowest over [`ladder::PROBE_NOISE`]), sampled at every
    /// check.
    lag_floor: RecentMin,
    probe_checked: Instant,
}

impl Sender<'_> {
    fn gops(&self) -> &GopCache {
        &self.rendition.gops
    }

    fn delivery(&self) -> std::sync::MutexGuard<'_, Delivery> {
        self.viewer.delivery.lock().unwrap()
    }

    async fn run(&mut self, mut control: SendStream) -> CloseCode {
        let mut changed = self.gops().subscribe();
        loop {
            let step = self.rendition.gops.next(&mut self.cursor, 64);
            gst::trace!(CAT, "viewer {}: {step:?}", self.viewer.id);
            let gop_done = matches!(step, Step::Close);
            let res = match step {
                Step::Open {
                    seq,
                    caps,
                    headers,
                    discont,
                } => {
                    let (seq, caps, headers) = self.at_boundary(seq, caps, headers).await;
                    let wire = (seq as i64 + self.wire_offset).max(0) as u64;
                    self.open(wire, &caps, &headers, discont).await
                }
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
        self.cut_in_gop = false;
        self.current = Some(GopStream {
            seq,
            send,
            media: false,
        });
        let header = GopHeader {
            seq,
            caps: caps.to_string(),
            rendition: (self.viewer.version >= 2).then(|| self.ladder.rung() as u32),
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
        if self.rendition.gops.cut(&mut self.cursor) {
            gst::debug!(CAT, "viewer {}: GOP cut to arrive in time", self.viewer.id);
            self.cut_in_gop = true;
            self.viewer
                .cut_gops
                .store(self.earlier.1 + self.cursor.cut_gops, Ordering::Relaxed);
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
        let n = self.earlier.0 + self.cursor.dropped_gops + self.reset_gops;
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
        if !self.rendition.gops.skip_to_newest(&mut self.cursor) {
            self.rendition.gops.abandon(&mut self.cursor);
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
        if self.adaptive {
            // (below half a second of measuring, the estimate is a guess: slow start, relay)
            let (settled, capacity) = {
                let d = self.delivery();
                (d.measured_for() >= Duration::from_millis(500), d.rate())
            };
            let overloaded = lag > OVERLOAD_LAG && capacity.is_some_and(|c| c < self.rendition.rate());
            self.ladder.observe(Seen {
                now,
                lag,
                cut: settled && (self.cut_in_gop || overloaded),
            });
            self.manage_probe(now, lag);
        }
        None
    }
}

/// Switching renditions and probing the path (version 2 viewers, several renditions).
impl Sender<'_> {
    /// At the start of cursor GOP `seq`: moves the viewer to another rendition if the ladder
    /// says so and that rendition has a GOP starting at the same instant. Returns the GOP to
    /// open (the cursor's own, or the target's).
    async fn at_boundary(&mut self, seq: u64, caps: Arc<str>, headers: Vec<Chunk>) -> (u64, Arc<str>, Vec<Chunk>) {
        if !self.adaptive {
            return (seq, caps, headers);
        }
        let ladder = self.shared.ladder();
        let rates: Vec<f64> = ladder.iter().map(|r| r.rate()).collect();
        let from = self.ladder.rung();
        self.ladder
            .set_ceiling(top_allowed(&ladder, self.viewer.max_kbps.load(Ordering::Relaxed)));
        let now = Instant::now();
        let capacity = self.delivery().recent_rate(now, Duration::from_millis(500));
        let Some((to, why)) = self.ladder.at_boundary(now, &rates, capacity) else {
            return (seq, caps, headers);
        };
        let (Some(target), Some(pts)) = (ladder.get(to).cloned(), self.gops().gop_pts(seq)) else {
            self.ladder.stay_on(from);
            return (seq, caps, headers);
        };
        let Some(target_seq) = wait_aligned(&target, pts).await else {
            gst::info!(
                CAT,
                "viewer {}: {} has no GOP at {} ms: staying on {} (asking for aligned keyframes)",
                self.viewer.id,
                target.name(),
                pts / 1_000_000,
                self.rendition.name()
            );
            self.ladder.stay_on(from);
            self.shared.request_keyframe();
            return (seq, caps, headers);
        };
        let mut cursor = target.gops.cursor_at(target_seq);
        let Step::Open {
            seq: opened,
            caps: new_caps,
            headers: new_headers,
            ..
        } = target.gops.next(&mut cursor, 64)
        else {
            self.ladder.stay_on(from);
            return (seq, caps, headers);
        };
        self.switch_to(target, cursor, seq, opened, why, rates[to]);
        (opened, new_caps, new_headers)
    }

    /// Makes `target` (at its GOP `opened`, the same instant as the old cursor's GOP `seq`)
    /// the viewer's rendition.
    fn switch_to(&mut self, target: Arc<Rendition>, cursor: Cursor, seq: u64, opened: u64, why: Why, rate: f64) {
        let old = std::mem::replace(&mut self.cursor, cursor);
        self.rendition.gops.leave(&old);
        self.earlier.0 += old.dropped_gops;
        self.earlier.1 += old.cut_gops;
        let wire = seq as i64 + self.wire_offset;
        self.wire_offset = wire - opened as i64;
        let from = std::mem::replace(&mut self.rendition, target);
        self.stop_probe();
        let name = self.rendition.name();
        gst::info!(
            CAT,
            "viewer {}: {} -> {name} ({}, path {:.0} kB/s, stream {:.0} kB/s)",
            self.viewer.id,
            from.name(),
            why.as_str(),
            self.delivery().rate().unwrap_or(0.0) / 1000.0,
            rate / 1000.0
        );
        *self.viewer.rendition.lock().unwrap() = name.clone();
        self.viewer.switches.fetch_add(1, Ordering::Relaxed);
        self.shared.post(
            gst::Structure::builder("iroh-rendition-changed")
                .field("id", &self.viewer.id)
                .field("from", from.name())
                .field("to", name)
                .field("reason", why.as_str())
                .build(),
        );
    }

    /// Starts, watches and ends probes (about every 50 ms).
    fn manage_probe(&mut self, now: Instant, lag: Duration) {
        if now.saturating_duration_since(self.probe_checked) < Duration::from_millis(50) {
            return;
        }
        self.probe_checked = now;
        let lag = self.lag_floor.push(now, lag);
        let rtt = crate::net::path_info(&self.viewer.conn).1.unwrap_or_default();
        let delivered = self.delivery().delivered();
        let rates: Vec<f64> = self.shared.ladder().iter().map(|r| r.rate()).collect();
        if let Some(p) = self.ladder.probe() {
            self.probe_marks.push_back((now, delivered));
            while self
                .probe_marks
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > PROBE_WINDOW)
            {
                self.probe_marks.pop_front();
            }
            let elapsed = now.saturating_duration_since(p.started);
            let (outstanding, reported) = {
                let d = self.delivery();
                (d.probe_in_flight(), d.reported_at().unwrap_or(p.started))
            };
            let seen = ProbeSeen {
                elapsed,
                padding_rate: self.probe_rate,
                outstanding,
                unreported: now.saturating_duration_since(reported.max(p.started)),
                rtt,
                rtt_at_start: self.probe_rtt,
                lag,
                lag_at_start: self.probe_lag,
            };
            let stop = seen.verdict();
            if elapsed >= ladder::PROBE_TIME || stop.is_some() {
                // (only a probe that held its rate measures the path: one stopped early failed)
                let held = elapsed >= ladder::PROBE_TIME;
                let carried = if held { self.probe_carried(now, delivered) } else { 0.0 };
                self.stop_probe();
                self.probe_marks.clear();
                let to = self.ladder.probe_done(now, carried, &rates);
                gst::debug!(
                    CAT,
                    "viewer {}: probe carried {:.0} kB/s (target {:.0}) in {elapsed:?}, stopped by {stop:?}: \
                     {to:?} (padding outstanding {outstanding} B, {:?} unreported, rtt {rtt:?} from {:?}, \
                     lag {lag:?} from {:?})",
                    self.viewer.id,
                    carried / 1000.0,
                    p.target / 1000.0,
                    seen.unreported,
                    self.probe_rtt,
                    self.probe_lag
                );
            }
            return;
        }
        if let Some(p) = self.ladder.want_probe(now, &rates, delivered) {
            // over the target: the stream's own rate varies, and the reports lag what was sent
            let padding = (p.target * 1.1 - rates[self.ladder.rung()]).max(0.0);
            gst::debug!(
                CAT,
                "viewer {}: probing with up to {:.0} kB/s of padding",
                self.viewer.id,
                padding / 1000.0
            );
            self.probe_rate = padding;
            self.probe_lag = lag;
            self.probe_rtt = rtt;
            let stop = self.viewer.cancel.child_token();
            RUNTIME.spawn(pad_path(self.viewer.clone(), padding, stop.clone()));
            self.probe = Some(stop);
        }
    }

    /// Bytes/s delivered (stream and padding) over the probe's last [`PROBE_WINDOW`].
    fn probe_carried(&self, now: Instant, delivered: u64) -> f64 {
        self.probe_marks.front().map_or(0.0, |(t, d)| {
            (delivered - d) as f64 / now.saturating_duration_since(*t).as_secs_f64().max(0.05)
        })
    }

    fn stop_probe(&mut self) {
        if let Some(stop) = self.probe.take() {
            stop.cancel();
            self.delivery().on_probe_end();
        }
    }
}

/// Waits (briefly) for `target` to have a GOP starting at running time `pts`.
async fn wait_aligned(target: &Rendition, pts: u64) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + ALIGN_WAIT;
    let mut changed = target.gops.subscribe();
    loop {
        match target.gops.aligned_gop(pts, ALIGN_TOLERANCE) {
            Aligned::At(seq) => return Some(seq),
            Aligned::Never => return None,
            Aligned::NotYet => {}
        }
        if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
            return None;
        }
    }
}

/// Sends padding on a bi-stream at the lowest priority (after every GOP stream), ramping up to
/// `rate` bytes/s over [`ladder::PROBE_RAMP`] (so a full path is noticed before the stream
/// queues behind it), until `stop`; then the stream is reset, so what is still queued in QUIC
/// is dropped rather than sent. The viewer reports what arrived.
async fn pad_path(viewer: Arc<Viewer>, rate: f64, stop: tokio_util::sync::CancellationToken) {
    static ZEROS: [u8; 16 * 1024] = [0; 16 * 1024];
    let Ok((mut send, _recv)) = viewer.conn.open_bi().await else {
        return;
    };
    let _ = send.set_priority(i32::MIN);
    let start = Instant::now();
    let mut written = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => {
                let _ = send.reset(VarInt::from_u32(RESET_STALE));
                return;
            }
        }
        let (t, ramp) = (start.elapsed().as_secs_f64(), ladder::PROBE_RAMP.as_secs_f64());
        let due = (rate * if t < ramp { t * t / (2.0 * ramp) } else { t - ramp / 2.0 }) as u64;
        while written + 1200 <= due {
            let n = (due - written).min(ZEROS.len() as u64) as usize;
            let written_all = tokio::select! {
                r = send.write_all(&ZEROS[..n]) => r.is_ok(),
                _ = stop.cancelled() => false,
            };
            if !written_all {
                let _ = send.reset(VarInt::from_u32(RESET_STALE));
                return;
            }
            written += n as u64;
            viewer.delivery.lock().unwrap().on_probe_write(Instant::now(), n as u64);
        }
    }
}
