//! The GOP cache and per-viewer cursors.
//!
//! The streaming thread appends chunks (`push`), which never waits on anything but a short
//! mutex. Each viewer task walks the cache with its own [`Cursor`]: it starts at a GOP start
//! (the cached GOP if it is recent enough, else the next keyframe). A viewer that cannot take
//! a whole GOP in time either stops it early ([`GopCache::cut`]: the rest of the GOP is left
//! out, the frames it got decode) or jumps to the newest GOP start
//! ([`GopCache::skip_to_newest`]), so what it gets always decodes. Memory is bounded by age
//! and bytes whatever the viewers do.
//!
//! No network and no GStreamer here: unit-tested with synthetic chunks.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::protocol::FrameMeta;

/// One unit of media as the host received it: a buffer, or a run of buffers coalesced.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Flags and timing.
    pub meta: FrameMeta,
    /// Payload.
    pub data: Bytes,
    /// When the host's streaming thread handed it over.
    pub arrived: Instant,
}

impl Chunk {
    /// A header chunk (caps `streamheader`, or MPEG-TS PAT/PMT): flagged HEADER, sent to
    /// every viewer before its first GOP.
    pub fn header(data: Bytes) -> Self {
        Self {
            meta: FrameMeta {
                flags: crate::protocol::flags::HEADER | crate::protocol::flags::DELTA,
                ..Default::default()
            },
            data,
            arrived: Instant::now(),
        }
    }
}

/// Limits of the cache.
#[derive(Debug, Clone, Copy)]
pub struct GopCacheConfig {
    /// A new viewer is burst the current GOP if it started less than this ago; otherwise it
    /// waits for the next keyframe (and a keyframe is requested).
    pub burst_max_age: Duration,
    /// Complete GOPs whose last chunk is older than this are dropped.
    pub keep: Duration,
    /// Upper bound of cached bytes; the oldest data goes first.
    pub max_bytes: usize,
    /// Keyframes closer than this to the current GOP's start do not cut a new GOP unless a
    /// viewer waits for one or the GOP already holds `min_gop_bytes` (keeps audio-only
    /// streams, where every buffer is a keyframe, from becoming one QUIC stream per buffer).
    pub min_gop: Duration,
    /// See `min_gop`.
    pub min_gop_bytes: usize,
}

impl Default for GopCacheConfig {
    fn default() -> Self {
        Self {
            burst_max_age: Duration::from_millis(500),
            keep: Duration::from_secs(3),
            max_bytes: 64 * 1024 * 1024,
            min_gop: Duration::from_millis(200),
            min_gop_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug)]
struct Gop {
    seq: u64,
    started: Instant,
    /// Running time (ns) of the first chunk with one: where the GOP starts on the timeline,
    /// the same instant in every rendition of one source.
    pts: Option<u64>,
    caps: Arc<str>,
    /// Index within the GOP of `chunks[0]` (> 0 once the front was trimmed for memory).
    first_idx: usize,
    chunks: VecDeque<Chunk>,
    bytes: usize,
    closed: bool,
}

impl Gop {
    fn last_arrival(&self) -> Instant {
        self.chunks.back().map_or(self.started, |c| c.arrived)
    }
}

#[derive(Debug, Default)]
struct Inner {
    gops: VecDeque<Gop>,
    next_seq: u64,
    caps: Option<Arc<str>>,
    headers: Vec<Chunk>,
    waiting_keyframe: usize,
    bytes: usize,
    eos: bool,
    dropped_before_keyframe: u64,
    /// Time between the last few GOP starts, newest last.
    periods: VecDeque<Duration>,
}

/// Where a viewer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pos {
    /// Waiting for a GOP with a sequence number above `after` (None = any).
    WaitNext { after: Option<u64>, counted: bool },
    /// Inside GOP `seq`, next chunk index `idx`. `opened` once the viewer was told.
    In { seq: u64, idx: usize, opened: bool },
}

/// A viewer's position in the cache.
#[derive(Debug)]
pub struct Cursor {
    pos: Pos,
    started: bool,
    /// GOPs skipped because the viewer fell behind (or its GOP was evicted).
    pub dropped_gops: u64,
    /// GOPs the viewer stopped early ([`GopCache::cut`]).
    pub cut_gops: u64,
    /// The next GOP opened follows skipped data.
    discont: bool,
    last_seq: Option<u64>,
}

impl Cursor {
    /// Gives up GOP `seq` (counted as dropped): resume at the next GOP start, marked discont.
    fn resync_after(&mut self, seq: u64) {
        self.pos = Pos::WaitNext {
            after: Some(seq),
            counted: false,
        };
        self.dropped_gops += 1;
        self.discont = true;
    }

    /// The GOP the cursor is in (or about to open), if any.
    pub fn seq(&self) -> Option<u64> {
        match self.pos {
            Pos::In { seq, .. } => Some(seq),
            Pos::WaitNext { .. } => None,
        }
    }
}

/// What a viewer task should do next.
#[derive(Debug)]
pub enum Step {
    /// Open a new GOP stream. `headers` go first (stream headers, cached PAT/PMT), then chunks.
    Open {
        seq: u64,
        caps: Arc<str>,
        headers: Vec<Chunk>,
        /// Data before this GOP was skipped for this viewer.
        discont: bool,
    },
    /// More chunks of the open GOP.
    Data(Vec<Chunk>),
    /// The open GOP is complete: finish its stream.
    Close,
    /// Nothing new yet: wait for the next notification.
    Wait,
    /// End of stream and everything was handed out.
    End,
}

/// Whether a cache has a GOP starting at a given instant ([`GopCache::aligned_gop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aligned {
    /// GOP `seq` starts there.
    At(u64),
    /// Not yet: the newest GOP starts earlier, one starting there may still come.
    NotYet,
    /// No GOP starts there (the encoders' keyframes are not aligned).
    Never,
}

/// Snapshot of aggregate counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct GopCacheStats {
    /// GOPs cut so far.
    pub gops: u64,
    /// Bytes held in the cache.
    pub cached_bytes: usize,
    /// GOPs held in the cache.
    pub cached_gops: usize,
    /// Viewers waiting for a keyframe.
    pub waiting_keyframe: usize,
    /// Buffers dropped because no keyframe had been seen yet.
    pub dropped_before_keyframe: u64,
}

/// The shared GOP cache.
#[derive(Debug)]
pub struct GopCache {
    cfg: GopCacheConfig,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl GopCache {
    /// A new, empty cache.
    pub fn new(cfg: GopCacheConfig) -> Self {
        Self {
            cfg,
            inner: Mutex::new(Inner::default()),
            changed: watch::Sender::new(0),
        }
    }

    /// A receiver that is marked changed after every push, caps change and EOS.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the caps that the next GOP will carry.
    pub fn set_caps(&self, caps: &str) {
        let mut inner = self.lock();
        if inner.caps.as_deref() != Some(caps) {
            inner.caps = Some(Arc::from(caps));
        }
    }

    /// Sets the header chunks every viewer gets before its first GOP (caps `streamheader`,
    /// or the latest MPEG-TS PAT/PMT).
    pub fn set_headers(&self, headers: Vec<Chunk>) {
        self.lock().headers = headers;
    }

    /// Appends a chunk. Called from the streaming thread; never blocks on viewers.
    pub fn push(&self, chunk: Chunk) {
        {
            let mut inner = self.lock();
            let inner = &mut *inner;
            inner.eos = false;
            // mpegtsmux (1.22) marks the PAT it re-sends before a keyframe as the only
            // non-DELTA buffer of the GOP (flagged HEADER too): any non-DELTA buffer cuts.
            let keyframe = chunk.meta.is_keyframe();
            let cut = keyframe
                && match inner.gops.back() {
                    None => true,
                    Some(g) => {
                        g.closed
                            || inner.waiting_keyframe > 0
                            || chunk.arrived.saturating_duration_since(g.started) >= self.cfg.min_gop
                            || g.bytes >= self.cfg.min_gop_bytes
                            || Some(&g.caps) != inner.caps.as_ref()
                    }
                };
            if cut {
                if let Some(g) = inner.gops.back_mut() {
                    g.closed = true;
                    let period = chunk.arrived.saturating_duration_since(g.started);
                    inner.periods.push_back(period);
                    if inner.periods.len() > 3 {
                        inner.periods.pop_front();
                    }
                }
                let seq = inner.next_seq;
                inner.next_seq += 1;
                inner.gops.push_back(Gop {
                    seq,
                    started: chunk.arrived,
                    pts: None,
                    caps: inner.caps.clone().unwrap_or_else(|| Arc::from("ANY")),
                    first_idx: 0,
                    chunks: VecDeque::new(),
                    bytes: 0,
                    closed: false,
                });
            }
            match inner.gops.back_mut() {
                Some(g) if !g.closed => {
                    g.pts = g.pts.or(chunk.meta.pts);
                    g.bytes += chunk.data.len();
                    inner.bytes += chunk.data.len();
                    g.chunks.push_back(chunk);
                }
                // Nothing before the first keyframe can be decoded by anyone.
                _ => inner.dropped_before_keyframe += 1,
            }
            self.evict(inner);
        }
        self.notify();
    }

    fn evict(&self, inner: &mut Inner) {
        let now = Instant::now();
        while inner.gops.len() > 1 {
            let g = &inner.gops[0];
            let too_old = now.saturating_duration_since(g.last_arrival()) > self.cfg.keep;
            if !(too_old || inner.bytes > self.cfg.max_bytes) {
                break;
            }
            let g = inner.gops.pop_front().expect("len > 1");
            inner.bytes -= g.bytes;
        }
        // One GOP larger than the whole budget: trim its front (viewers there skip ahead).
        if let Some(g) = inner.gops.front_mut() {
            while inner.bytes > self.cfg.max_bytes && g.chunks.len() > 1 {
                let c = g.chunks.pop_front().expect("len > 1");
                g.first_idx += 1;
                g.bytes -= c.data.len();
                inner.bytes -= c.data.len();
            }
        }
    }

    /// Marks end of stream: the current GOP is complete, viewers finish and end.
    pub fn end(&self) {
        {
            let mut inner = self.lock();
            if let Some(g) = inner.gops.back_mut() {
                g.closed = true;
            }
            inner.eos = true;
        }
        self.notify();
    }

    /// Whether end of stream was reached (and nothing was pushed since).
    pub fn is_eos(&self) -> bool {
        self.lock().eos
    }

    /// Forgets all cached data (flush, or caps renegotiation from scratch). Viewers wait for
    /// the next keyframe.
    pub fn flush(&self) {
        {
            let mut inner = self.lock();
            inner.gops.clear();
            inner.bytes = 0;
            inner.eos = false;
        }
        self.notify();
    }

    /// A cursor for a new viewer, and whether a keyframe should be requested upstream.
    pub fn join(&self, now: Instant) -> (Cursor, bool) {
        let mut inner = self.lock();
        let burst = inner.gops.back().filter(|g| {
            !g.closed && g.first_idx == 0 && now.saturating_duration_since(g.started) <= self.cfg.burst_max_age
        });
        let mut cursor = Cursor {
            pos: Pos::WaitNext {
                after: None,
                counted: false,
            },
            started: false,
            dropped_gops: 0,
            cut_gops: 0,
            discont: false,
            last_seq: None,
        };
        if let Some(g) = burst {
            cursor.pos = Pos::In {
                seq: g.seq,
                idx: 0,
                opened: false,
            };
            return (cursor, false);
        }
        let after = inner.gops.back().map(|g| g.seq);
        cursor.pos = Pos::WaitNext { after, counted: true };
        inner.waiting_keyframe += 1;
        (cursor, true)
    }

    /// Forgets a viewer's cursor (it left).
    pub fn leave(&self, cursor: &Cursor) {
        if let Pos::WaitNext { counted: true, .. } = cursor.pos {
            let mut inner = self.lock();
            inner.waiting_keyframe = inner.waiting_keyframe.saturating_sub(1);
        }
    }

    /// Moves the cursor to the start of the newest GOP, dropping what it had not sent. Returns
    /// false (and does nothing) when the viewer is already in the newest GOP.
    pub fn skip_to_newest(&self, cursor: &mut Cursor) -> bool {
        let inner = self.lock();
        let Some(newest) = inner.gops.back() else {
            return false;
        };
        match cursor.pos {
            Pos::In { seq, .. } if seq < newest.seq && newest.first_idx == 0 => {
                cursor.dropped_gops += newest.seq - seq;
                cursor.pos = Pos::In {
                    seq: newest.seq,
                    idx: 0,
                    opened: false,
                };
                cursor.discont = true;
                true
            }
            _ => false,
        }
    }

    /// Gives up the cursor's current GOP (its stream was reset): resume at the next GOP start.
    pub fn abandon(&self, cursor: &mut Cursor) {
        if let Pos::In { seq, .. } = cursor.pos {
            cursor.resync_after(seq);
        }
    }

    /// Stops the cursor's current GOP early: what was handed out stays valid (it ends at a
    /// chunk boundary), the rest of the GOP is left out and the next GOP opened is marked
    /// discont. Returns false when the cursor is not inside a GOP.
    pub fn cut(&self, cursor: &mut Cursor) -> bool {
        let Pos::In { seq, .. } = cursor.pos else {
            return false;
        };
        cursor.pos = Pos::WaitNext {
            after: Some(seq),
            counted: false,
        };
        cursor.cut_gops += 1;
        cursor.discont = true;
        true
    }

    /// When the GOP after the newest one is expected to start: the newest GOP's start plus the
    /// median of the last three GOP periods. None until two GOPs were cut.
    pub fn next_gop_due(&self) -> Option<Instant> {
        let inner = self.lock();
        let mut p: Vec<Duration> = inner.periods.iter().copied().collect();
        p.sort();
        let period = *p.get(p.len() / 2)?;
        Some(inner.gops.back()?.started + period)
    }

    /// Where GOP `seq` starts on the timeline (running time, ns), if known.
    pub fn gop_pts(&self, seq: u64) -> Option<u64> {
        find(&self.lock(), seq)?.pts
    }

    /// Whether this cache has a whole GOP starting at running time `pts` (within `tolerance`
    /// ns): where a viewer can switch to this rendition.
    pub fn aligned_gop(&self, pts: u64, tolerance: u64) -> Aligned {
        let inner = self.lock();
        let at = inner
            .gops
            .iter()
            .find(|g| g.first_idx == 0 && g.pts.is_some_and(|p| p.abs_diff(pts) <= tolerance));
        if let Some(g) = at {
            return Aligned::At(g.seq);
        }
        match inner.gops.back().and_then(|g| g.pts) {
            Some(p) if p > pts + tolerance => Aligned::Never,
            _ => Aligned::NotYet,
        }
    }

    /// A cursor for a viewer switching to this cache at GOP `seq` (from another rendition):
    /// its stream headers go first, as for a new viewer.
    pub fn cursor_at(&self, seq: u64) -> Cursor {
        Cursor {
            pos: Pos::In {
                seq,
                idx: 0,
                opened: false,
            },
            started: false,
            dropped_gops: 0,
            cut_gops: 0,
            discont: false,
            last_seq: None,
        }
    }

    /// Bytes per second this stream carries, over its last few complete GOPs (None until two
    /// GOPs were cut).
    pub fn rate(&self) -> Option<f64> {
        let inner = self.lock();
        let mut bytes = 0usize;
        let mut span = Duration::ZERO;
        let gops: Vec<&Gop> = inner.gops.iter().rev().take(4).collect();
        for pair in gops.windows(2) {
            let (newer, older) = (pair[0], pair[1]);
            if older.first_idx == 0 && older.closed {
                bytes += older.bytes;
                span += newer.started.saturating_duration_since(older.started);
            }
        }
        (span >= Duration::from_millis(100)).then(|| bytes as f64 / span.as_secs_f64())
    }

    /// Whether a newer GOP than the cursor's exists (so skipping would help).
    pub fn newer_gop_exists(&self, cursor: &Cursor) -> bool {
        let inner = self.lock();
        match (&cursor.pos, inner.gops.back()) {
            (Pos::In { seq, .. }, Some(g)) => g.seq > *seq,
            _ => false,
        }
    }

    /// Age of the oldest chunk this viewer has not taken yet (zero when it is caught up).
    pub fn backlog_age(&self, cursor: &Cursor, now: Instant) -> Duration {
        let inner = self.lock();
        if let Pos::In { seq, idx, .. } = cursor.pos
            && let Some(g) = find(&inner, seq)
            && let Some(c) = g.chunks.get(idx.saturating_sub(g.first_idx))
        {
            return now.saturating_duration_since(c.arrived);
        }
        Duration::ZERO
    }

    /// The next step for a viewer; takes at most `max_chunks` chunks at a time.
    pub fn next(&self, cursor: &mut Cursor, max_chunks: usize) -> Step {
        let mut inner = self.lock();
        loop {
            let step = match cursor.pos.clone() {
                Pos::WaitNext { after, counted } => enter_next_gop(&mut inner, cursor, after, counted),
                Pos::In { seq, idx, opened } => step_in_gop(&inner, cursor, seq, idx, opened, max_chunks),
            };
            if let Some(step) = step {
                return step;
            }
        }
    }

    /// Aggregate counters.
    pub fn stats(&self) -> GopCacheStats {
        let inner = self.lock();
        GopCacheStats {
            gops: inner.next_seq,
            cached_bytes: inner.bytes,
            cached_gops: inner.gops.len(),
            waiting_keyframe: inner.waiting_keyframe,
            dropped_before_keyframe: inner.dropped_before_keyframe,
        }
    }
}

/// A cursor waiting for a GOP after `after` moves into the first one there is (None: go on);
/// otherwise it waits, or ends after EOS.
fn enter_next_gop(inner: &mut Inner, cursor: &mut Cursor, after: Option<u64>, counted: bool) -> Option<Step> {
    let next = inner
        .gops
        .iter()
        .find(|g| after.is_none_or(|a| g.seq > a) && g.first_idx == 0)
        .map(|g| g.seq);
    match next {
        Some(seq) => {
            if counted {
                inner.waiting_keyframe = inner.waiting_keyframe.saturating_sub(1);
            }
            cursor.pos = Pos::In {
                seq,
                idx: 0,
                opened: false,
            };
            None
        }
        None if inner.eos => Some(Step::End),
        None => Some(Step::Wait),
    }
}

/// The next step of a cursor inside GOP `seq` (None: its position changed, go on).
fn step_in_gop(inner: &Inner, cursor: &mut Cursor, seq: u64, idx: usize, opened: bool, max: usize) -> Option<Step> {
    let Some(g) = find(inner, seq) else {
        // Evicted under this viewer: it was far behind. Resync at the newest GOP start
        // (skipping what lies between).
        let newest = inner.gops.back().map_or(seq, |g| g.seq.max(seq + 1) - 1);
        cursor.resync_after(newest);
        cursor.dropped_gops += newest - seq;
        return (cursor.started && opened).then_some(Step::Close);
    };
    if !opened {
        return open_gop(inner, g, cursor, idx);
    }
    if idx < g.first_idx {
        // Trimmed under the viewer mid-GOP.
        cursor.resync_after(seq);
        return Some(Step::Close);
    }
    let rel = idx - g.first_idx;
    if rel < g.chunks.len() {
        let n = (g.chunks.len() - rel).min(max.max(1));
        let out: Vec<Chunk> = g.chunks.range(rel..rel + n).cloned().collect();
        cursor.pos = Pos::In {
            seq,
            idx: idx + n,
            opened: true,
        };
        return Some(Step::Data(out));
    }
    if g.closed {
        cursor.pos = Pos::WaitNext {
            after: Some(seq),
            counted: false,
        };
        return Some(Step::Close);
    }
    Some(Step::Wait)
}

/// Opens GOP `g` for the cursor (stream headers first for a new viewer), unless its start was
/// trimmed: then the cursor waits for the next GOP (None).
fn open_gop(inner: &Inner, g: &Gop, cursor: &mut Cursor, idx: usize) -> Option<Step> {
    if g.first_idx > idx {
        cursor.resync_after(g.seq);
        return None;
    }
    let headers = if cursor.started {
        Vec::new()
    } else {
        inner.headers.clone()
    };
    let seq = g.seq;
    let discont = cursor.discont || cursor.last_seq.is_some_and(|l| seq != l + 1);
    cursor.discont = false;
    cursor.started = true;
    cursor.last_seq = Some(seq);
    cursor.pos = Pos::In { seq, idx, opened: true };
    Some(Step::Open {
        seq,
        caps: g.caps.clone(),
        headers,
        discont,
    })
}

fn find(inner: &Inner, seq: u64) -> Option<&Gop> {
    let first = inner.gops.front()?.seq;
    inner.gops.get(usize::try_from(seq.checked_sub(first)?).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::flags;

    fn chunk(key: bool, tag: u8, at: Instant) -> Chunk {
        Chunk {
            meta: FrameMeta {
                flags: if key { 0 } else { flags::DELTA },
                ..Default::default()
            },
            data: Bytes::from(vec![tag; 10]),
            arrived: at,
        }
    }

    fn fanout() -> GopCache {
        let f = GopCache::new(GopCacheConfig::default());
        f.set_caps("video/x-h264");
        f
    }

    /// Drains a viewer: returns (events as text, tags of data received).
    fn drain(f: &GopCache, c: &mut Cursor) -> (Vec<String>, Vec<u8>) {
        let mut ev = Vec::new();
        let mut tags = Vec::new();
        loop {
            match f.next(c, 2) {
                Step::Open {
                    seq, headers, discont, ..
                } => {
                    ev.push(format!("open{seq}{}", if discont { "!" } else { "" }));
                    tags.extend(headers.iter().map(|h| h.data[0]));
                }
                Step::Data(d) => tags.extend(d.iter().map(|c| c.data[0])),
                Step::Close => ev.push("close".into()),
                Step::Wait => return (ev, tags),
                Step::End => {
                    ev.push("end".into());
                    return (ev, tags);
                }
            }
        }
    }

    #[test]
    fn delta_before_first_keyframe_is_dropped() {
        let f = fanout();
        let t = Instant::now();
        f.push(chunk(false, 1, t));
        f.push(chunk(false, 2, t));
        assert_eq!(f.stats().dropped_before_keyframe, 2);
        let (mut c, fku) = f.join(t);
        assert!(fku, "no GOP yet: the viewer needs a keyframe");
        f.push(chunk(true, 3, t));
        f.push(chunk(false, 4, t));
        assert_eq!(drain(&f, &mut c), (vec!["open0".into()], vec![3, 4]));
    }

    #[test]
    fn late_joiner_is_gated_to_the_next_keyframe_when_the_gop_is_old() {
        let f = fanout();
        let t0 = Instant::now() - Duration::from_secs(2);
        f.push(chunk(true, 1, t0));
        f.push(chunk(false, 2, t0));
        let (mut c, fku) = f.join(Instant::now());
        assert!(fku);
        assert_eq!(f.stats().waiting_keyframe, 1);
        f.push(chunk(false, 3, Instant::now()));
        assert_eq!(drain(&f, &mut c), (vec![], vec![]), "nothing until a keyframe");
        // A keyframe right away still cuts a GOP because a viewer waits for it.
        f.push(chunk(true, 4, Instant::now()));
        f.push(chunk(false, 5, Instant::now()));
        assert_eq!(drain(&f, &mut c), (vec!["open1".into()], vec![4, 5]));
        assert_eq!(f.stats().waiting_keyframe, 0);
    }

    #[test]
    fn recent_gop_is_burst_with_headers_first() {
        let f = fanout();
        f.set_headers(vec![chunk(true, 9, Instant::now())]);
        let t = Instant::now();
        f.push(chunk(true, 1, t));
        f.push(chunk(false, 2, t));
        f.push(chunk(false, 3, t));
        let (mut c, fku) = f.join(t);
        assert!(!fku);
        assert_eq!(drain(&f, &mut c), (vec!["open0".into()], vec![9, 1, 2, 3]));
    }

    #[test]
    fn slow_viewer_skips_whole_gops_others_untouched() {
        let f = fanout();
        let t = Instant::now();
        f.push(chunk(true, 1, t));
        let (mut slow, _) = f.join(t);
        let (mut fast, _) = f.join(t);
        let mut fast_tags = drain(&f, &mut fast).1;
        // the slow one reads only the GOP open, then stalls
        assert!(matches!(f.next(&mut slow, 1), Step::Open { seq: 0, .. }));
        for g in 0..3u8 {
            let t = t + Duration::from_secs(u64::from(g) + 1);
            f.push(chunk(true, 10 * (g + 1), t));
            f.push(chunk(false, 10 * (g + 1) + 1, t));
            fast_tags.extend(drain(&f, &mut fast).1);
        }
        assert_eq!(
            fast_tags,
            vec![1, 10, 11, 20, 21, 30, 31],
            "fast viewer sees everything"
        );
        assert!(f.newer_gop_exists(&slow));
        assert!(f.skip_to_newest(&mut slow));
        assert_eq!(slow.dropped_gops, 3);
        let (ev, tags) = drain(&f, &mut slow);
        assert_eq!(ev, vec!["open3!".to_string()]);
        assert_eq!(tags, vec![30, 31], "resumes at a GOP start");
        assert!(!f.skip_to_newest(&mut slow), "already in the newest GOP");
    }

    #[test]
    fn a_cut_gop_keeps_what_was_sent_and_the_next_gop_opens_discont() {
        let f = fanout();
        let t = Instant::now();
        f.push(chunk(true, 1, t));
        f.push(chunk(false, 2, t));
        let (mut c, _) = f.join(t);
        assert!(matches!(f.next(&mut c, 1), Step::Open { seq: 0, .. }));
        assert!(matches!(f.next(&mut c, 1), Step::Data(d) if d[0].data[0] == 1));
        assert!(f.cut(&mut c));
        assert!(!f.cut(&mut c), "already out of the GOP");
        f.push(chunk(false, 3, t));
        assert_eq!(drain(&f, &mut c), (vec![], vec![]), "the rest of GOP 0 is left out");
        f.push(chunk(true, 10, t + Duration::from_secs(1)));
        assert_eq!(drain(&f, &mut c), (vec!["open1!".into()], vec![10]));
        assert_eq!((c.cut_gops, c.dropped_gops), (1, 0));
    }

    #[test]
    fn the_next_gop_is_due_one_median_period_after_the_newest() {
        let f = fanout();
        let t = Instant::now();
        assert_eq!(f.next_gop_due(), None);
        for (i, ms) in [0u64, 1000, 2000, 2300, 3300].iter().enumerate() {
            f.push(chunk(true, i as u8, t + Duration::from_millis(*ms)));
        }
        // periods 1000, 300, 1000 (the last three): median 1000
        assert_eq!(f.next_gop_due(), Some(t + Duration::from_millis(4300)));
    }

    #[test]
    fn memory_is_bounded_and_evicted_viewer_resyncs() {
        let f = GopCache::new(GopCacheConfig {
            max_bytes: 100,
            ..Default::default()
        });
        f.set_caps("x");
        let t = Instant::now();
        f.push(chunk(true, 1, t));
        let (mut c, _) = f.join(t);
        assert!(matches!(f.next(&mut c, 1), Step::Open { seq: 0, .. }));
        for i in 0..50u8 {
            let at = t + Duration::from_secs(u64::from(i) + 1);
            f.push(chunk(i % 5 == 0, i, at));
        }
        assert!(f.stats().cached_bytes <= 100, "{:?}", f.stats());
        let (ev, tags) = drain(&f, &mut c);
        assert_eq!(ev.first().map(String::as_str), Some("close"));
        assert!(ev[1].ends_with('!'), "resync is marked discont: {ev:?}");
        assert_eq!(tags[0] % 5, 0, "resumes at a keyframe: {tags:?}");
        assert!(c.dropped_gops > 0);
    }

    #[test]
    fn audio_only_keyframes_group_by_min_gop() {
        let f = fanout();
        let t = Instant::now();
        for i in 0..10u8 {
            f.push(chunk(true, i, t + Duration::from_millis(u64::from(i) * 50)));
        }
        assert_eq!(f.stats().gops, 3, "10 keyframes over 450 ms with min-gop 200 ms");
    }

    #[test]
    fn eos_ends_viewers_after_the_last_gop() {
        let f = fanout();
        let t = Instant::now();
        f.push(chunk(true, 1, t));
        let (mut c, _) = f.join(t);
        f.end();
        assert_eq!(
            drain(&f, &mut c),
            (vec!["open0".into(), "close".into(), "end".into()], vec![1])
        );
    }

    fn chunk_at(key: bool, pts: u64, at: Instant) -> Chunk {
        let mut c = chunk(key, 0, at);
        c.meta.pts = Some(pts);
        c
    }

    #[test]
    fn aligned_gops_are_found_by_their_start_and_a_cursor_can_switch_there() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let (top, low) = (fanout(), fanout());
        for cache in [&top, &low] {
            cache.set_headers(vec![Chunk::header(Bytes::from_static(b"PAT"))]);
            for f in 0..40u64 {
                cache.push(chunk_at(f % 30 == 0, f * 33_000_000, ms(f * 33)));
            }
        }
        let second = top.aligned_gop(30 * 33_000_000, 1_000_000);
        assert_eq!(second, Aligned::At(1));
        assert_eq!(low.aligned_gop(30 * 33_000_000, 1_000_000), Aligned::At(1));
        assert_eq!(low.aligned_gop(15 * 33_000_000, 1_000_000), Aligned::Never);
        assert_eq!(low.aligned_gop(60 * 33_000_000, 1_000_000), Aligned::NotYet);
        assert_eq!(top.gop_pts(1), Some(30 * 33_000_000));
        let mut c = low.cursor_at(1);
        match low.next(&mut c, 64) {
            Step::Open { seq, headers, .. } => assert_eq!((seq, headers.len()), (1, 1), "headers first"),
            other => panic!("{other:?}"),
        }
        let r = top.rate().unwrap();
        assert!(r > 0.0, "{r}");
    }

    #[test]
    fn leaving_while_waiting_releases_the_keyframe_gate() {
        let f = fanout();
        let (c, fku) = f.join(Instant::now());
        assert!(fku);
        assert_eq!(f.stats().waiting_keyframe, 1);
        f.leave(&c);
        assert_eq!(f.stats().waiting_keyframe, 0);
    }
}
