//! Measurement: what happened to every scheduled operation, and its latency from the *scheduled* send time.
//!
//! Owns the outcome taxonomy (ok, SIP error by status code, transport failure, timeout, dropped because the
//! client was overloaded), the latency histograms (microseconds, 3 significant digits), per-second intervals,
//! and the merge of per-core results into one `Summary`. Does no I/O and reads no clock: callers pass times.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency a histogram keeps exactly (60 s); longer values are clamped (they are timeouts anyway).
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// What became of one scheduled operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The final answer was a 2xx (or the handshake completed).
    Ok,
    /// A final non-2xx answer, by status code (after the digest retry, if any).
    Status(u16),
    /// The connection failed or closed before an answer.
    Transport,
    /// No final answer within --timeout-ms.
    Timeout,
    /// Never sent: too many operations in flight (cap: --count * 4).
    Dropped,
}

pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that satisfy the crate's preconditions (low >= 1, high >= 2 * low, sigfig <= 5).
    match Histogram::new_with_bounds(1, LATENCY_US_MAX, 3) {
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram bounds rejected: {e}"),
    }
}

/// Counts and latencies of a set of operations (a run, a step, or one second).
#[derive(Clone, Debug)]
pub struct Tally {
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub timeouts: u64,
    pub dropped: u64,
    /// Operations that were actually started (sent), whatever their outcome.
    pub sent: u64,
    /// presence: NOTIFYs received by the watchers in the measured window.
    pub notifies: u64,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            latency_us: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            timeouts: 0,
            dropped: 0,
            sent: 0,
            notifies: 0,
        }
    }
}

impl Tally {
    /// Latency is recorded for every answered operation (ok or SIP error), not for timeouts and drops.
    pub fn record(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Dropped => {
                self.dropped += 1;
                return;
            }
            Outcome::Timeout => {
                self.sent += 1;
                self.timeouts += 1;
                return;
            }
            Outcome::Ok => self.ok += 1,
            Outcome::Status(code) => *self.errors.entry(code.to_string()).or_insert(0) += 1,
            Outcome::Transport => *self.errors.entry("transport".to_string()).or_insert(0) += 1,
        }
        self.sent += 1;
        let us = u64::try_from(latency.as_micros()).unwrap_or(LATENCY_US_MAX).clamp(1, LATENCY_US_MAX);
        self.latency_us.saturating_record(us);
    }

    pub fn add(&mut self, other: &Tally) {
        // Same bounds everywhere, so `add` cannot fail; saturate rather than panic if it ever did.
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        self.timeouts += other.timeouts;
        self.dropped += other.dropped;
        self.sent += other.sent;
        self.notifies += other.notifies;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Operations that completed (answered or timed out) — the basis of the achieved rate.
    pub fn completed(&self) -> u64 {
        self.ok + self.error_count() + self.timeouts
    }

    pub fn latency(&self) -> Latency {
        Latency::of(&self.latency_us)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            min: ms(h.min()),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One core's record of a run: a total per step and one tally per second of measurement.
#[derive(Debug, Default)]
pub struct Recorder {
    pub total: Tally,
    /// Index = whole seconds since the measurement clock started.
    pub seconds: Vec<Tally>,
}

impl Recorder {
    /// `at_s`: completion time in seconds since the measurement clock started.
    pub fn record(&mut self, outcome: Outcome, latency: Duration, at_s: usize) {
        self.total.record(outcome, latency);
        // Bounded: a run lasts at most its steps' durations plus the drain timeout.
        if self.seconds.len() <= at_s {
            self.seconds.resize_with(at_s + 1, Tally::default);
        }
        if let Some(t) = self.seconds.get_mut(at_s) {
            t.record(outcome, latency);
        }
    }
}

/// Adds `src` into `dst[from..]`, growing `dst` as needed.
pub fn add_seconds_at(dst: &mut Vec<Tally>, src: &[Tally], from: usize) {
    if dst.len() < from + src.len() {
        dst.resize_with(from + src.len(), Tally::default);
    }
    for (d, s) in dst.iter_mut().skip(from).zip(src) {
        d.add(s);
    }
}

/// A finished step (a whole run is one step), merged across cores.
#[derive(Clone, Debug)]
pub struct StepResult {
    pub target_rate: f64,
    pub duration_s: f64,
    pub tally: Tally,
    /// SLO verdict (find-max only; always true otherwise).
    pub held: bool,
    /// federation: each partner's own schedule (their tallies add up to `tally`); empty for other scenarios.
    pub parts: Vec<Part>,
}

/// One independent schedule within a step (federation: one partner), merged across cores.
#[derive(Clone, Debug)]
pub struct Part {
    pub name: String,
    pub target_rate: f64,
    pub tally: Tally,
}

impl Part {
    pub fn achieved_rate(&self, duration_s: f64) -> f64 {
        if duration_s > 0.0 {
            self.tally.completed() as f64 / duration_s
        } else {
            0.0
        }
    }
}

impl StepResult {
    pub fn achieved_rate(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.tally.completed() as f64 / self.duration_s
        } else {
            0.0
        }
    }

    /// The SLO of --find-max: p99 within bound, no error, no timeout, no drop, and the rate was reached.
    pub fn meets_slo(&self, slo_p99_ms: f64) -> bool {
        let t = &self.tally;
        t.completed() > 0
            && t.latency().p99 <= slo_p99_ms
            && t.error_count() == 0
            && t.timeouts == 0
            && t.dropped == 0
            && self.achieved_rate() >= 0.9 * self.target_rate
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uniform_distribution_percentiles() {
        let mut t = Tally::default();
        for us in 1..=10_000u64 {
            t.record(Outcome::Ok, Duration::from_micros(us));
        }
        let l = t.latency();
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.01;
        assert!(near(l.p50, 5.0), "p50 {}", l.p50);
        assert!(near(l.p90, 9.0), "p90 {}", l.p90);
        assert!(near(l.p99, 9.9), "p99 {}", l.p99);
        assert!(near(l.p999, 9.99), "p99.9 {}", l.p999);
        assert!(near(l.min, 0.001) && near(l.max, 10.0), "{l:?}");
        assert_eq!(t.ok, 10_000);
    }

    #[test]
    fn outcomes_are_counted_apart() {
        let mut r = Recorder::default();
        let d = Duration::from_millis(1);
        r.record(Outcome::Status(480), d, 0);
        r.record(Outcome::Status(480), d, 2);
        r.record(Outcome::Status(503), d, 2);
        r.record(Outcome::Timeout, d, 1);
        r.record(Outcome::Dropped, d, 1);
        r.record(Outcome::Transport, d, 1);
        assert_eq!(r.total.errors.get("480"), Some(&2));
        assert_eq!(r.total.errors.get("503"), Some(&1));
        assert_eq!(r.total.errors.get("transport"), Some(&1));
        assert_eq!((r.total.timeouts, r.total.dropped, r.total.sent), (1, 1, 5));
        assert_eq!(r.seconds.len(), 3);
        assert_eq!(r.total.latency_us.len(), 4);
    }
}
