//! Rate-limited logging of refusals: under attack, one line per refused request would be thousands of lines a
//! second (and the log itself a way to fill a disk). Each cause gets a [`RateLog`]: at most
//! [`REFUSALS_LOGGED_PER_S`] lines a second, all cores together; the lines not written are counted and the next
//! line written says how many were left out ("and N more since"), so nothing goes unaccounted. The counters on
//! `/metrics` still count every refusal.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lines per second per cause.
pub const REFUSALS_LOGGED_PER_S: u32 = 10;

/// One cause's budget: the second it is counting, the lines let through in it, the lines held back since the
/// last one let through. Lock-free; a race at a second's turn may let a line or two more through, never fewer.
#[derive(Debug, Default)]
pub struct RateLog {
    second: AtomicU64,
    lines: AtomicU32,
    held: AtomicU64,
}

fn now_s() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // +1: second 0 is "never", so the first call starts a fresh second.
    EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 1
}

impl RateLog {
    pub const fn new() -> RateLog {
        RateLog { second: AtomicU64::new(0), lines: AtomicU32::new(0), held: AtomicU64::new(0) }
    }

    /// Some(lines held back since the last one) when this line may be written now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(now_s(), REFUSALS_LOGGED_PER_S)
    }

    pub fn allow_at(&self, second: u64, per_s: u32) -> Option<u64> {
        let seen = self.second.load(Ordering::Relaxed);
        if seen != second && self.second.compare_exchange(seen, second, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.lines.store(0, Ordering::Relaxed);
        }
        if self.lines.fetch_add(1, Ordering::Relaxed) < per_s {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `tracing::info!` at most [`REFUSALS_LOGGED_PER_S`] times a second for the call site, with `held` (lines left
/// out since the previous one) as a field.
#[macro_export]
macro_rules! info_limited {
    ($($arg:tt)+) => {{
        static LOG: $crate::net::ratelog::RateLog = $crate::net::ratelog::RateLog::new();
        if let Some(held) = LOG.allow() {
            tracing::info!(held_back = held, $($arg)+);
        }
    }};
}

/// As [`info_limited!`], at warn level.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LOG: $crate::net::ratelog::RateLog = $crate::net::ratelog::RateLog::new();
        if let Some(held) = LOG.allow() {
            tracing::warn!(held_back = held, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lets_n_lines_through_and_the_next_line_counts_the_rest() {
        let log = RateLog::new();
        let through: Vec<Option<u64>> = (0..25).map(|_| log.allow_at(5, 10)).collect();
        assert_eq!(through.iter().filter(|t| t.is_some()).count(), 10);
        assert!(through.iter().take(10).all(|t| *t == Some(0)));
        assert_eq!(log.allow_at(6, 10), Some(15), "the first line of the next second reports the 15 held back");
        assert_eq!(log.allow_at(6, 10), Some(0));
    }
}
