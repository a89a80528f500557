//! The host's model of one viewer's path: what was written for it, what it reported received,
//! and from those the rate its path carries. The sender asks it when a chunk written now
//! would arrive, to stop a GOP early instead of queueing what the viewer can no longer use.
//!
//! Pure: no network, no GStreamer; unit-tested with a simulated link.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The rate is measured over the last stretch of this much time with data outstanding.
const RATE_WINDOW: Duration = Duration::from_millis(1500);
/// Less time than this with data outstanding measures nothing yet.
const MIN_BUSY: Duration = Duration::from_millis(150);
/// Delivery is extrapolated at the measured rate for at most this long after a report (a bit
/// more than the report interval): a viewer that stops reporting has stopped receiving.
const MAX_EXTRAPOLATION: Duration = Duration::from_millis(250);

/// One write to a GOP stream.
#[derive(Debug, Clone, Copy)]
struct Write {
    seq: u64,
    /// Capture time (ns since the Unix epoch, host clock) of the newest frame in the write;
    /// None for headers, which are delivered with the first frame after them.
    capture: Option<u64>,
    bytes: u64,
    /// When the host received the oldest media in the write.
    arrived: Instant,
}

/// What one viewer was sent and has received.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Writes the viewer has not reported yet, oldest first.
    pending: VecDeque<Write>,
    /// Bytes written and not reset.
    written: u64,
    /// Bytes the viewer reported received.
    delivered: u64,
    /// When the newest progress report came.
    reported_at: Option<Instant>,
    /// Since when data has been outstanding and not yet accounted in `samples` (None while
    /// nothing is outstanding: idle time says nothing about the path).
    busy_since: Option<Instant>,
    /// (end, time with data outstanding, bytes delivered in it), oldest first.
    samples: VecDeque<(Instant, Duration, u64)>,
    /// Probe padding written and reported received (it counts as delivered data: a probe
    /// measures what the path carries beyond the stream).
    probe_written: u64,
    probe_delivered: u64,
}

impl Delivery {
    /// Records a write at `now` of `bytes` to GOP `seq`.
    pub fn on_write(&mut self, now: Instant, seq: u64, capture: Option<u64>, bytes: u64, arrived: Instant) {
        if self.busy_since.is_none() {
            self.busy_since = Some(now);
        }
        self.written += bytes;
        self.pending.push_back(Write {
            seq,
            capture,
            bytes,
            arrived,
        });
    }

    /// GOP `seq` was reset: what of it was not delivered never will be.
    pub fn on_reset(&mut self, seq: u64) {
        let before = self.pending.len();
        let mut lost = 0;
        self.pending.retain(|w| {
            let gone = w.seq == seq;
            if gone {
                lost += w.bytes;
            }
            !gone
        });
        if self.pending.len() != before {
            self.written -= lost;
        }
    }

    /// The viewer reports it has handed downstream GOP `seq` up to the frame captured at
    /// `capture`.
    pub fn on_progress(&mut self, now: Instant, seq: u64, capture: u64) {
        let before = self.delivered;
        while let Some(w) = self.pending.front() {
            let done = w.seq < seq || (w.seq == seq && w.capture.is_none_or(|c| c <= capture));
            if !done {
                break;
            }
            self.delivered += w.bytes;
            self.pending.pop_front();
        }
        self.sample(now, self.delivered - before);
    }

    /// Records `bytes` of probe padding written at `now`.
    pub fn on_probe_write(&mut self, now: Instant, bytes: u64) {
        if self.busy_since.is_none() {
            self.busy_since = Some(now);
        }
        self.written += bytes;
        self.probe_written += bytes;
    }

    /// The viewer reports `total` probe bytes received so far.
    pub fn on_probe_report(&mut self, now: Instant, total: u64) {
        let total = total.min(self.probe_written);
        let new = total.saturating_sub(self.probe_delivered);
        self.probe_delivered = self.probe_delivered.max(total);
        self.delivered += new;
        self.sample(now, new);
    }

    /// Time with data outstanding behind the current rate estimate: below half a second the
    /// estimate is a guess (the first reports, slow start).
    pub fn measured_for(&self) -> Duration {
        self.samples.iter().map(|(_, dt, _)| *dt).sum()
    }

    /// Bytes delivered so far (stream and probe).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Accounts `bytes` delivered since the last report, over the time data was outstanding.
    fn sample(&mut self, now: Instant, bytes: u64) {
        self.reported_at = Some(now);
        if let Some(since) = self.busy_since {
            self.samples
                .push_back((now, now.saturating_duration_since(since), bytes));
            while self
                .samples
                .front()
                .is_some_and(|(end, _, _)| now.saturating_duration_since(*end) > RATE_WINDOW)
            {
                self.samples.pop_front();
            }
            self.busy_since = self.has_pending().then_some(now);
        }
    }

    /// The rate over the reports of the last `window` only (after a drop, the full window
    /// still remembers the faster path), or the full window's if that is lower.
    pub fn recent_rate(&self, now: Instant, window: Duration) -> Option<f64> {
        let (busy, bytes) = self
            .samples
            .iter()
            .filter(|(end, _, _)| now.saturating_duration_since(*end) <= window)
            .fold((Duration::ZERO, 0), |(t, b), (_, dt, db)| (t + *dt, b + db));
        let recent = (busy >= MIN_BUSY && bytes > 0).then(|| bytes as f64 / busy.as_secs_f64());
        match (recent, self.rate()) {
            (Some(r), Some(all)) => Some(r.min(all)),
            (r, all) => r.or(all),
        }
    }

    /// Bytes/s the path delivers while data is outstanding. None until measured.
    pub fn rate(&self) -> Option<f64> {
        let (busy, bytes) = self
            .samples
            .iter()
            .fold((Duration::ZERO, 0), |(t, b), (_, dt, db)| (t + *dt, b + db));
        (busy >= MIN_BUSY && bytes > 0).then(|| bytes as f64 / busy.as_secs_f64())
    }

    /// Probe padding written and not reported received.
    pub fn probe_in_flight(&self) -> u64 {
        self.probe_written - self.probe_delivered
    }

    /// The probe stream ended: what of it was not delivered never will be.
    pub fn on_probe_end(&mut self) {
        self.written -= self.probe_in_flight();
        self.probe_written = self.probe_delivered;
    }

    /// Stream bytes written and not yet received at `now`, assuming the path kept its rate
    /// since the last report (for a report interval or so). Probe padding is left out: it goes
    /// at the lowest priority, after the stream.
    pub fn in_flight(&self, now: Instant) -> u64 {
        let reported = self.written - self.delivered - self.probe_in_flight();
        match (self.rate(), self.reported_at) {
            (Some(rate), Some(at)) => {
                let since = now.saturating_duration_since(at).min(MAX_EXTRAPOLATION).as_secs_f64();
                reported.saturating_sub((rate * since) as u64)
            }
            _ => reported,
        }
    }

    /// When `bytes` written now would have arrived. None while the rate is unknown.
    pub fn arrival(&self, now: Instant, bytes: u64) -> Option<Instant> {
        let rate = self.rate().filter(|r| *r > 0.0)?;
        let secs = (self.in_flight(now) + bytes) as f64 / rate;
        Some(now + Duration::from_secs_f64(secs.min(3600.0)))
    }

    /// How long what is in flight takes to arrive. None while the rate is unknown.
    pub fn drain_time(&self, now: Instant) -> Option<Duration> {
        self.arrival(now, 0).map(|a| a - now)
    }

    /// When the host received the oldest media still undelivered to this viewer.
    pub fn oldest_undelivered(&self) -> Option<Instant> {
        self.pending.front().map(|w| w.arrived)
    }

    /// When the newest progress report came (None before the first).
    pub fn reported_at(&self) -> Option<Instant> {
        self.reported_at
    }

    /// Whether written data awaits a report.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.probe_written > self.probe_delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A path of `rate` bytes/s: writes `frame` bytes every 33 ms for `secs`, reports every
    /// 100 ms what has arrived by then.
    fn simulate(rate: f64, frame: u64, secs: u64) -> (Delivery, Instant) {
        let t0 = Instant::now();
        let mut d = Delivery::default();
        let mut queue: VecDeque<(u64, u64, f64)> = VecDeque::new(); // (capture, bytes, arrives at s)
        let mut link_free = 0.0f64;
        let mut newest = 0;
        for ms in 0..secs * 1000 {
            let now = t0 + ms as u32 * MS;
            let t = ms as f64 / 1000.0;
            if ms % 33 == 0 {
                let capture = 1_000_000 * ms + 1;
                d.on_write(now, 0, Some(capture), frame, now);
                link_free = link_free.max(t) + frame as f64 / rate;
                queue.push_back((capture, frame, link_free));
            }
            while queue.front().is_some_and(|(_, _, at)| *at <= t) {
                newest = queue.pop_front().unwrap().0;
            }
            if ms % 100 == 0 && newest > 0 {
                d.on_progress(now, 0, newest);
            }
        }
        (d, t0 + Duration::from_secs(secs))
    }

    #[test]
    fn a_path_slower_than_the_stream_is_measured() {
        // 250 kB/s of stream into a 125 kB/s path
        let (d, now) = simulate(125_000.0, 8_250, 4);
        let r = d.rate().unwrap();
        assert!((110_000.0..=140_000.0).contains(&r), "rate {r}");
        assert!(d.in_flight(now) > 100_000, "the backlog grows: {}", d.in_flight(now));
        let drain = d.drain_time(now).unwrap();
        assert!(drain > Duration::from_secs(1), "{drain:?}");
    }

    #[test]
    fn a_fast_path_is_not_mistaken_for_a_slow_one() {
        // 250 kB/s of stream into a 10 MB/s path: never busy, the rate is at least the stream's
        let (d, now) = simulate(10_000_000.0, 8_250, 3);
        let r = d.rate().unwrap();
        assert!(r >= 200_000.0, "rate {r}");
        assert!(d.in_flight(now) < 20_000, "{}", d.in_flight(now));
        let arrival = d.arrival(now, 8_250).unwrap() - now;
        assert!(arrival < Duration::from_millis(150), "{arrival:?}");
    }

    #[test]
    fn headers_are_delivered_with_the_frame_after_them_and_resets_forget_bytes() {
        let t = Instant::now();
        let mut d = Delivery::default();
        d.on_write(t, 3, None, 100, t);
        d.on_write(t, 3, Some(10), 1000, t);
        d.on_write(t, 3, Some(20), 1000, t + 10 * MS);
        d.on_write(t, 4, None, 100, t + 20 * MS);
        d.on_write(t, 4, Some(30), 5000, t + 20 * MS);
        d.on_progress(t + 30 * MS, 3, 10);
        assert_eq!(d.written - d.delivered, 6100);
        assert_eq!(d.oldest_undelivered(), Some(t + 10 * MS));
        d.on_reset(3);
        assert_eq!(d.written - d.delivered, 5100, "GOP 3's undelivered tail is gone");
        d.on_progress(t + 40 * MS, 4, 30);
        assert!(!d.has_pending());
        assert_eq!(d.in_flight(t + 40 * MS), 0);
    }

    #[test]
    fn a_burst_after_idle_is_timed_from_its_write_and_idle_time_does_not_count() {
        let t = Instant::now();
        let mut d = Delivery::default();
        for i in 0..3u64 {
            // every second: 57 kB written at once, received whole 0.46 s later (125 kB/s)
            let at = t + Duration::from_secs(i);
            d.on_write(at, i, Some(i + 1), 57_000, at);
            d.on_progress(at + 460 * MS, i, i + 1);
        }
        let r = d.rate().unwrap();
        assert!((120_000.0..=130_000.0).contains(&r), "rate {r}");
    }

    #[test]
    fn probe_padding_counts_as_delivered_and_raises_the_measured_rate() {
        let t = Instant::now();
        let mut d = Delivery::default();
        // 1 s: 10 kB of stream and 40 kB of probe every 100 ms, all received in time
        for i in 0..10u64 {
            let at = t + Duration::from_millis(100 * i);
            d.on_write(at, 0, Some(i + 1), 10_000, at);
            d.on_probe_write(at, 40_000);
            let rep = at + 90 * MS;
            d.on_progress(rep, 0, i + 1);
            d.on_probe_report(rep, 40_000 * (i + 1));
        }
        let r = d.rate().unwrap();
        assert!(r > 450_000.0, "stream + probe measured: {r}");
        assert_eq!(d.delivered(), 500_000);
        assert!(!d.has_pending());
        d.on_probe_report(t + Duration::from_secs(2), 10_000_000);
        assert_eq!(d.delivered(), 500_000, "a report beyond what was written is capped");
    }

    #[test]
    fn a_viewer_that_stops_reporting_is_not_assumed_to_receive() {
        let (mut d, now) = simulate(125_000.0, 8_250, 2);
        d.on_write(now, 0, Some(u64::MAX), 500_000, now);
        let later = now + Duration::from_secs(10);
        assert!(d.in_flight(later) > 400_000, "{}", d.in_flight(later));
        assert!(d.drain_time(later).unwrap() > Duration::from_secs(2));
    }
}
