//! Which rendition a viewer gets: the per-viewer switching rules (see `PROTOCOL.md`, "Switch
//! rules"). The sender feeds it what it sees after every step ([`Ladder::observe`]) and asks
//! it at every GOP boundary where to go ([`Ladder::at_boundary`]); the switch itself, and the
//! check that the target rendition has a GOP starting at the same instant, are the sender's.
//!
//! Pure: no network, no GStreamer; unit-tested with scripted observations.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A viewer strained this long (behind, or a GOP cut) moves down at the next GOP boundary.
pub const DOWN_HOLD: Duration = Duration::from_millis(500);
/// A viewer this long on a rung without strain probes the rung above (doubled after every
/// failed probe, up to [`MAX_UP_HOLD`]).
pub const UP_HOLD: Duration = Duration::from_secs(4);
/// Longest wait between two probes that failed: a link restored just after a failed probe is
/// back on the top rung after this, a probe (2 s) and the next GOP boundary (≈ 10 s with 2 s
/// GOPs; the bound is 15 s).
pub const MAX_UP_HOLD: Duration = Duration::from_secs(6);
/// Behind live by more than this (age of the oldest undelivered media) is strain.
pub const STRAIN_LAG: Duration = Duration::from_millis(300);
/// A rung fits a path that carries this much more than the rung's stream rate.
pub const FIT_MARGIN: f64 = 1.2;
/// A probe tries to carry this much more than the highest rung the viewer may have.
pub const PROBE_MARGIN: f64 = 1.25;
/// A probe ramps its padding up over this long, then holds it as long again.
pub const PROBE_RAMP: Duration = Duration::from_millis(1000);
/// How long a probe runs at most.
pub const PROBE_TIME: Duration = Duration::from_millis(2000);
/// A probe whose padding would take longer than this to drain is stopped: the path is full
/// (and the stream would start queueing behind it). The viewer's lag may grow this much too.
pub const PROBE_MAX_DRAIN: Duration = Duration::from_millis(150);
/// A probe that makes the path's RTT grow by this much (or by half, if more) is stopped: a
/// queue is building in front of the stream.
pub const PROBE_MAX_QUEUE: Duration = Duration::from_millis(50);
/// The lag a probe watches is the lowest over this long (two of the viewer's report
/// intervals): between reports the lag seen by the host grows by the interval, and a late
/// report (a busy viewer) shows as a spike shorter than this, while a queue is a rise that
/// lasts. (The RTT is QUIC's smoothed estimate already.)
pub const PROBE_NOISE: Duration = Duration::from_millis(200);
/// Padding written since the viewer's last report counts as in flight for at most this long:
/// a late report is forgiven, a viewer that stopped reporting is not.
pub const PROBE_MAX_UNREPORTED: Duration = Duration::from_millis(300);

/// What a probe sees at one check.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSeen {
    /// Since the probe started.
    pub elapsed: Duration,
    /// The padding's full rate (bytes/s); it ramps up to it over [`PROBE_RAMP`].
    pub padding_rate: f64,
    /// Padding written and not reported received (bytes).
    pub outstanding: u64,
    /// Since the viewer's last report (or the probe's start, if later).
    pub unreported: Duration,
    /// The path's RTT now and when the probe started.
    pub rtt: Duration,
    pub rtt_at_start: Duration,
    /// The viewer's lag (lowest over [`PROBE_NOISE`]) now and when the probe started.
    pub lag: Duration,
    pub lag_at_start: Duration,
}

/// Why a probe stopped before its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStop {
    /// Its padding backs up: more outstanding than its rate keeps in flight (the round trip
    /// and what was written since the viewer's last report) plus [`PROBE_MAX_DRAIN`]'s worth.
    Backlog,
    /// The RTT grew: a queue is building in the network.
    Queue,
    /// The stream itself fell behind.
    Lagging,
}

impl ProbeSeen {
    /// Whether the probe must stop now (the path is full), and why.
    pub fn verdict(&self) -> Option<ProbeStop> {
        let ramp = (self.elapsed.as_secs_f64() / PROBE_RAMP.as_secs_f64()).min(1.0);
        let in_flight = PROBE_MAX_DRAIN + self.unreported.min(PROBE_MAX_UNREPORTED) + self.rtt;
        let allowance = self.padding_rate * ramp * in_flight.as_secs_f64() + 8192.0;
        if self.outstanding as f64 > allowance {
            Some(ProbeStop::Backlog)
        } else if self.rtt > self.rtt_at_start + PROBE_MAX_QUEUE.max(self.rtt_at_start / 2) {
            Some(ProbeStop::Queue)
        } else if self.lag > self.lag_at_start + PROBE_MAX_DRAIN {
            Some(ProbeStop::Lagging)
        } else {
            None
        }
    }
}

/// The lowest of a signal's samples over a short window: what persists, not what one late
/// report or one scheduling hiccup shows.
#[derive(Debug)]
pub struct RecentMin {
    window: Duration,
    samples: VecDeque<(Instant, Duration)>,
}

impl RecentMin {
    pub fn new(window: Duration) -> Self {
        RecentMin {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Adds the sample `v` seen at `now` and returns the lowest over the window up to now.
    pub fn push(&mut self, now: Instant, v: Duration) -> Duration {
        // (a sample above a newer one can never be the lowest again)
        while self.samples.back().is_some_and(|(_, b)| *b >= v) {
            self.samples.pop_back();
        }
        self.samples.push_back((now, v));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.window)
        {
            self.samples.pop_front();
        }
        self.samples.front().map_or(v, |(_, m)| *m)
    }
}

/// What the sender saw at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub now: Instant,
    /// Age of the oldest media the viewer has not received.
    pub lag: Duration,
    /// The current GOP was cut short for this viewer, or the measured path rate is below the
    /// current rung's stream rate while data queues: the rung does not fit, no need to wait.
    pub cut: bool,
}

/// Why a viewer moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its path does not carry the rung it was on.
    Congested,
    /// A probe showed its path carries a higher rung.
    Headroom,
    /// Its ceiling changed.
    Ceiling,
}

impl Why {
    /// For stats and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Congested => "congested",
            Why::Headroom => "headroom",
            Why::Ceiling => "ceiling",
        }
    }
}

/// A probe in progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    pub started: Instant,
    /// Bytes/s the path must carry, stream included, for the rung above.
    pub target: f64,
    /// Bytes delivered (stream and probe) when it started.
    pub delivered_at_start: u64,
}

/// One viewer's place on the ladder (rung 0 is the top).
#[derive(Debug)]
pub struct Ladder {
    rung: usize,
    /// Highest rung the viewer may have (its ceiling).
    floor_rung: usize,
    since: Instant,
    strained_since: Option<Instant>,
    up_hold: Duration,
    probe: Option<Probe>,
    /// A probe showed the path carries this rung: go there at the next boundary.
    probe_ok: Option<usize>,
}

impl Ladder {
    /// A viewer starting on `rung`, allowed up to `top_allowed`.
    pub fn new(rung: usize, top_allowed: usize, now: Instant) -> Self {
        Ladder {
            rung,
            floor_rung: top_allowed,
            since: now,
            strained_since: None,
            up_hold: UP_HOLD,
            probe: None,
            probe_ok: None,
        }
    }

    /// The rung the viewer is on.
    pub fn rung(&self) -> usize {
        self.rung
    }

    /// Notes strain (behind, cut) or its absence.
    pub fn observe(&mut self, seen: Seen) {
        if seen.cut || seen.lag > STRAIN_LAG {
            let since = self.strained_since.get_or_insert(seen.now);
            if seen.cut {
                // a cut is strain held long enough: the rung did not fit one GOP
                *since = (*since).min(seen.now.checked_sub(DOWN_HOLD).unwrap_or(seen.now));
            }
        } else {
            self.strained_since = None;
        }
    }

    /// Where to go at a GOP boundary: `rates` are the rungs' stream rates (bytes/s, top
    /// first), `capacity` what the viewer's path was measured to carry. None: stay.
    pub fn at_boundary(&mut self, now: Instant, rates: &[f64], capacity: Option<f64>) -> Option<(usize, Why)> {
        let last = rates.len().saturating_sub(1);
        if self.rung > last {
            return self.go(last, Why::Congested, now);
        }
        if self.rung < self.floor_rung {
            return self.go(self.floor_rung.min(last), Why::Ceiling, now);
        }
        let strained = self
            .strained_since
            .is_some_and(|s| now.saturating_duration_since(s) >= DOWN_HOLD);
        if strained && self.rung < last {
            // straight to the highest rung the measured path fits (one switch, not a walk)
            let to = match capacity {
                None => self.rung + 1,
                Some(c) => (self.rung + 1..=last)
                    .find(|r| rates[*r] * FIT_MARGIN <= c)
                    .unwrap_or(last),
            };
            return self.go(to.max(self.floor_rung), Why::Congested, now);
        }
        if let Some(to) = self.probe_ok.take()
            && to < self.rung
            && self.strained_since.is_none()
        {
            self.up_hold = UP_HOLD;
            return self.go(to.max(self.floor_rung), Why::Headroom, now);
        }
        None
    }

    /// The highest rung the viewer may have is now `top_allowed`: above it, it moves down at
    /// the next boundary; below, it may probe up to it.
    pub fn set_ceiling(&mut self, top_allowed: usize) {
        self.floor_rung = top_allowed;
    }

    /// A decided switch could not happen (no aligned GOP): the viewer stays on `rung`.
    pub fn stay_on(&mut self, rung: usize) {
        self.rung = rung;
    }

    fn go(&mut self, to: usize, why: Why, now: Instant) -> Option<(usize, Why)> {
        if to == self.rung {
            return None;
        }
        self.rung = to;
        self.since = now;
        self.strained_since = None;
        self.probe = None;
        self.probe_ok = None;
        Some((to, why))
    }

    /// A probe to start now, if the viewer has been unstrained on a rung below its ceiling for
    /// the hold time: the bytes/s the path must carry (the highest allowed rung's rate ×
    /// margin: one probe finds the highest rung that fits, however many steps up that is).
    pub fn want_probe(&mut self, now: Instant, rates: &[f64], delivered: u64) -> Option<Probe> {
        let quiet = self.strained_since.is_none() && now.saturating_duration_since(self.since) >= self.up_hold;
        if self.probe.is_some() || self.probe_ok.is_some() || self.rung <= self.floor_rung || !quiet {
            return None;
        }
        let above = *rates.get(self.floor_rung)?;
        let p = Probe {
            started: now,
            target: above * PROBE_MARGIN,
            delivered_at_start: delivered,
        };
        self.probe = Some(p);
        Some(p)
    }

    /// The probe in progress.
    pub fn probe(&self) -> Option<Probe> {
        self.probe
    }

    /// Ends the probe: the path carried `carried` bytes/s at its end. The viewer goes up at
    /// the next boundary to the highest rung that fits it, if one above fits; otherwise the
    /// next probe waits twice as long.
    pub fn probe_done(&mut self, now: Instant, carried: f64, rates: &[f64]) -> Option<usize> {
        self.probe.take()?;
        let fits = (self.floor_rung..self.rung.min(rates.len())).find(|r| rates[*r] * FIT_MARGIN <= carried);
        match fits {
            Some(r) => self.probe_ok = Some(r),
            None => {
                self.up_hold = (self.up_hold * 2).min(MAX_UP_HOLD);
                self.since = now;
            }
        }
        fits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    /// top 500 kB/s, ⅓ and ⅛ of it
    const RATES: [f64; 3] = [500_000.0, 166_000.0, 62_000.0];

    fn seen(now: Instant, lag_ms: u64, cut: bool) -> Seen {
        Seen {
            now,
            lag: Duration::from_millis(lag_ms),
            cut,
        }
    }

    #[test]
    fn a_strained_viewer_moves_down_to_the_rung_its_path_fits_after_the_hold() {
        let t = Instant::now();
        let mut l = Ladder::new(0, 0, t);
        l.observe(seen(t, 400, false));
        assert_eq!(
            l.at_boundary(t + 300 * MS, &RATES, Some(200_000.0)),
            None,
            "not held yet"
        );
        l.observe(seen(t + 400 * MS, 450, false));
        assert_eq!(
            l.at_boundary(t + 600 * MS, &RATES, Some(200_000.0)),
            Some((1, Why::Congested)),
            "40 % of the top: the ⅓ rung"
        );
        assert_eq!(l.rung(), 1);
    }

    #[test]
    fn a_cut_moves_down_at_once_and_unknown_capacity_steps_one_rung() {
        let t = Instant::now();
        let mut l = Ladder::new(0, 0, t);
        l.observe(seen(t, 0, true));
        assert_eq!(l.at_boundary(t, &RATES, None), Some((1, Why::Congested)));
        l.observe(seen(t + 100 * MS, 0, true));
        assert_eq!(
            l.at_boundary(t + 100 * MS, &RATES, Some(10_000.0)),
            Some((2, Why::Congested)),
            "nothing fits: the lowest"
        );
        l.observe(seen(t + 200 * MS, 0, true));
        assert_eq!(
            l.at_boundary(t + 200 * MS, &RATES, Some(10_000.0)),
            None,
            "no lower rung"
        );
    }

    #[test]
    fn a_short_strain_or_a_healthy_viewer_stays() {
        let t = Instant::now();
        let mut l = Ladder::new(0, 0, t);
        l.observe(seen(t, 400, false));
        l.observe(seen(t + 200 * MS, 100, false));
        assert_eq!(l.at_boundary(t + 800 * MS, &RATES, Some(100_000.0)), None);
        assert_eq!(
            l.want_probe(t + Duration::from_secs(10), &RATES, 0),
            None,
            "top: no probe"
        );
    }

    #[test]
    fn up_only_after_the_hold_and_a_probe_that_carried_the_rung_above() {
        let t = Instant::now();
        let mut l = Ladder::new(2, 0, t);
        assert!(
            l.want_probe(t + Duration::from_secs(3), &RATES, 0).is_none(),
            "held 4 s"
        );
        let p = l.want_probe(t + Duration::from_secs(4), &RATES, 0).unwrap();
        assert_eq!(p.target, RATES[0] * PROBE_MARGIN, "aims at the top");
        assert!(
            l.want_probe(t + Duration::from_secs(4), &RATES, 0).is_none(),
            "one at a time"
        );
        assert_eq!(
            l.probe_done(t + Duration::from_millis(5500), 250_000.0, &RATES),
            Some(1),
            "carried enough for the middle rung only"
        );
        assert_eq!(
            l.at_boundary(t + Duration::from_secs(6), &RATES, None),
            Some((1, Why::Headroom))
        );
        let p = l.want_probe(t + Duration::from_secs(10), &RATES, 0).unwrap();
        assert_eq!(l.probe_done(t + Duration::from_secs(12), p.target, &RATES), Some(0));
        assert_eq!(
            l.at_boundary(t + Duration::from_secs(12), &RATES, None),
            Some((0, Why::Headroom))
        );
    }

    #[test]
    fn failed_probes_back_off_and_the_ceiling_is_kept() {
        let t = Instant::now();
        let mut l = Ladder::new(1, 0, t);
        let p = l.want_probe(t + UP_HOLD, &RATES, 0).unwrap();
        assert_eq!(l.probe_done(t + UP_HOLD, p.target * 0.3, &RATES), None);
        let t1 = t + UP_HOLD;
        assert!(l.want_probe(t1 + UP_HOLD, &RATES, 0).is_none(), "now longer");
        assert!(
            l.want_probe(t1 + MAX_UP_HOLD, &RATES, 0).is_some(),
            "but at most MAX_UP_HOLD"
        );
        let mut capped = Ladder::new(2, 2, t);
        assert!(capped.want_probe(t + Duration::from_secs(60), &RATES, 0).is_none());
        capped.observe(seen(t, 0, true));
        assert_eq!(capped.at_boundary(t, &RATES, None), None, "already lowest");
        let mut mid = Ladder::new(1, 1, t);
        assert!(
            mid.want_probe(t + Duration::from_secs(60), &RATES, 0).is_none(),
            "ceiling"
        );
        mid.set_ceiling(2);
        assert_eq!(
            mid.at_boundary(t, &RATES, None),
            Some((2, Why::Ceiling)),
            "a lower ceiling"
        );
        mid.set_ceiling(0);
        assert!(mid.want_probe(t + UP_HOLD, &RATES, 0).is_some(), "a raised one: probe");
    }

    #[test]
    fn the_recent_minimum_ignores_a_spike_and_follows_a_sustained_rise() {
        let t = Instant::now();
        let mut m = RecentMin::new(300 * MS);
        let lag = |ms| Duration::from_millis(ms);
        // 50 ms ticks: a late report shows as one 250 ms spike
        let spiky = [20, 60, 250, 30, 70, 20];
        let floors: Vec<_> = spiky
            .iter()
            .enumerate()
            .map(|(i, v)| m.push(t + 50 * MS * i as u32, lag(*v)))
            .collect();
        assert!(floors.iter().all(|f| *f <= lag(30)), "{floors:?}");
        // a queue building: the lag grows every tick
        let mut last = Duration::ZERO;
        for i in 0..12u32 {
            last = m.push(t + 300 * MS + 50 * MS * i, lag(100 + 40 * i as u64));
        }
        assert!(last >= lag(100 + 40 * 5), "within the window of the newest: {last:?}");
    }

    /// A probe on a path that carries `capacity` bytes/s (the stream takes `stream` of it),
    /// checked every 50 ms; the viewer reports every 100 ms, but the report due at `late.0`
    /// comes `late.1` ms late (and the next ones 100 ms after it). The first stop and when.
    fn run_probe(capacity: f64, stream: f64, late: Option<(u64, u64)>) -> Option<(u64, ProbeStop)> {
        let rate = 330_000.0;
        let base_rtt = Duration::from_millis(2);
        let mut floor = RecentMin::new(PROBE_NOISE);
        let (mut reported_at, mut delivered_then, mut next_report) = (0u64, 0.0, 0u64);
        let mut lag_at_start = None;
        for ms in (0..=2000u64).step_by(50) {
            let t = ms as f64 / 1000.0;
            let ramp = PROBE_RAMP.as_secs_f64();
            let written = rate * if t < ramp { t * t / (2.0 * ramp) } else { t - ramp / 2.0 };
            let delivered = written.min((capacity - stream) * t);
            // what waits in the network queue, before the stream's own next bytes
            let queue = Duration::from_secs_f64((written - delivered) / capacity);
            if ms >= next_report {
                reported_at = ms;
                delivered_then = delivered;
                next_report = ms + 100;
                if let Some((at, by)) = late
                    && next_report == at
                {
                    next_report += by;
                }
            }
            let unreported = Duration::from_millis(ms - reported_at);
            let lag = floor.push(
                Instant::now() + Duration::from_millis(ms),
                queue + unreported + Duration::from_millis(1),
            );
            let seen = ProbeSeen {
                elapsed: Duration::from_millis(ms),
                padding_rate: rate,
                outstanding: (written - delivered_then) as u64,
                unreported,
                rtt: base_rtt + queue,
                rtt_at_start: base_rtt,
                lag,
                lag_at_start: *lag_at_start.get_or_insert(lag),
            };
            if let Some(stop) = seen.verdict() {
                return Some((ms, stop));
            }
        }
        None
    }

    #[test]
    fn a_probe_on_a_free_path_runs_its_time_even_with_a_late_report() {
        assert_eq!(run_probe(10_000_000.0, 40_000.0, None), None);
        // one report 200 ms late (a busy viewer): a spike of lag and of unreported padding,
        // not a queue (the judgment before the lag's floor and the report allowance stopped
        // this probe)
        assert_eq!(run_probe(10_000_000.0, 40_000.0, Some((1200, 200))), None);
        assert_eq!(run_probe(10_000_000.0, 40_000.0, Some((300, 200))), None);
    }

    #[test]
    fn a_probe_on_a_full_path_stops_soon_after_the_queue_forms() {
        // 100 kB/s path, 40 kB/s stream: the padding outgrows the rest at 0.18 s
        let (at, why) = run_probe(100_000.0, 40_000.0, None).expect("stopped");
        assert!(at <= 500, "stopped at {at} ms ({why:?})");
        // a viewer that stops reporting (from 1 s on) is not forgiven for long
        let (at, why) = run_probe(10_000_000.0, 40_000.0, Some((1000, 5000))).expect("stopped");
        assert!((1000..=1500).contains(&at), "stopped at {at} ms ({why:?})");
    }

    #[test]
    fn alternating_strain_switches_at_most_once_per_hold() {
        // link alternates every 5 s between too slow for the top and plenty
        let t = Instant::now();
        let mut l = Ladder::new(0, 0, t);
        let mut switches = Vec::new();
        for ms in (0..30_000u64).step_by(100) {
            let now = t + Duration::from_millis(ms);
            let slow = (ms / 5000) % 2 == 0;
            let on_top = l.rung() == 0;
            l.observe(seen(now, if slow && on_top { 600 } else { 50 }, false));
            if l.probe()
                .is_some_and(|p| now.saturating_duration_since(p.started) >= PROBE_TIME)
            {
                let carried = if slow { 200_000.0 } else { 900_000.0 };
                l.probe_done(now, carried, &RATES);
            }
            l.want_probe(now, &RATES, 0);
            if ms % 1000 == 0 && l.at_boundary(now, &RATES, Some(200_000.0)).is_some() {
                switches.push(ms);
            }
        }
        assert!(!switches.is_empty());
        for w in switches.windows(2) {
            assert!(w[1] - w[0] >= 1000, "{switches:?}");
        }
        assert!(switches.len() <= 30 / 4 + 1, "{switches:?}");
    }
}
