//! Default limits on discovered partners beyond their message rate, as pure logic (time is an input), shared by
//! every core behind one mutex (discovered peers are few and slow, 20 requests/s each at most):
//! - a watch list: a domain reaching more than [`USERS_WATCH`] distinct local users within an hour is listed
//!   (logged once, counted, shown by `GET /partners`), the sign of a harvester rather than colleagues;
//! - a stricter rate for a domain whose requests mostly fail (at least [`FAILING_MIN`] answered in the window,
//!   more than half with an error): [`STRICT_RATE`] requests/s until the window ends.
//!
//! Windows are an hour; at most [`DOMAINS_MAX`] domains are tracked (beyond, new domains get no watch: their
//! per-peer rate still applies). Users are kept as 64-bit hashes, at most `USERS_WATCH + 1` per domain.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(3600);
pub const USERS_WATCH: usize = 1000;
pub const FAILING_MIN: u32 = 20;
/// Requests per second of a domain whose requests mostly fail.
pub const STRICT_RATE: u32 = 1;
pub const DOMAINS_MAX: usize = 4096;

#[derive(Debug)]
struct Domain {
    window_start: Instant,
    users: HashSet<u64>,
    watched: bool,
    answered: u32,
    failed: u32,
    /// The strict bucket: the next instant a request is allowed.
    next_allowed: Instant,
}

/// What the watch says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// The domain just crossed the distinct-users mark (log it, once).
    NowWatched,
    /// Over the strict rate of a mostly failing domain: refuse (503).
    Strict,
}

#[derive(Default)]
pub struct Watch {
    domains: HashMap<String, Domain>,
}

impl Watch {
    fn domain(&mut self, name: &str, now: Instant) -> Option<&mut Domain> {
        if !self.domains.contains_key(name) {
            if self.domains.len() >= DOMAINS_MAX {
                self.domains.retain(|_, d| now.saturating_duration_since(d.window_start) < WINDOW);
                if self.domains.len() >= DOMAINS_MAX {
                    return None;
                }
            }
            let d = Domain {
                window_start: now,
                users: HashSet::new(),
                watched: false,
                answered: 0,
                failed: 0,
                next_allowed: now,
            };
            self.domains.insert(name.to_string(), d);
        }
        let d = self.domains.get_mut(name)?;
        if now.saturating_duration_since(d.window_start) >= WINDOW {
            // A new hour: counts start again (the watch list entry stays until an operator acts).
            d.window_start = now;
            d.users.clear();
            d.answered = 0;
            d.failed = 0;
        }
        Some(d)
    }

    /// A request of `domain` for the local user hashed as `user`.
    pub fn request(&mut self, domain: &str, user: u64, now: Instant) -> Verdict {
        let Some(d) = self.domain(domain, now) else { return Verdict::Pass };
        if d.answered >= FAILING_MIN && d.failed * 2 > d.answered {
            if now < d.next_allowed {
                return Verdict::Strict;
            }
            d.next_allowed = now + Duration::from_secs(1) / STRICT_RATE;
        }
        if d.users.len() <= USERS_WATCH {
            d.users.insert(user);
        }
        if d.users.len() > USERS_WATCH && !d.watched {
            d.watched = true;
            return Verdict::NowWatched;
        }
        Verdict::Pass
    }

    /// The final response to one of `domain`'s requests.
    pub fn answered(&mut self, domain: &str, failed: bool, now: Instant) {
        if let Some(d) = self.domain(domain, now) {
            d.answered = d.answered.saturating_add(1);
            d.failed = d.failed.saturating_add(u32::from(failed));
        }
    }

    /// Watch-listed domains and those under the strict rate, for `GET /partners`.
    pub fn report(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .domains
            .iter()
            .filter(|(_, d)| d.watched || (d.answered >= FAILING_MIN && d.failed * 2 > d.answered))
            .map(|(n, d)| {
                format!(
                    "discovered {n}  watched={}  distinct_users={}  answered={} failed={}",
                    d.watched,
                    d.users.len(),
                    d.answered,
                    d.failed
                )
            })
            .collect();
        v.sort();
        v
    }
}

/// The process's watch, for every core.
pub static WATCH: Mutex<Option<Watch>> = Mutex::new(None);

/// Runs `f` on the shared watch.
pub fn with<R>(f: impl FnOnce(&mut Watch) -> R) -> R {
    let mut g = WATCH.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(Watch::default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_distinct_users_put_a_domain_on_the_watch_list_once() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        for u in 0..USERS_WATCH as u64 {
            assert_eq!(w.request("d.test", u, t0), Verdict::Pass);
            assert_eq!(w.request("d.test", u, t0), Verdict::Pass, "the same user twice counts once");
        }
        assert_eq!(w.request("d.test", 99_999, t0), Verdict::NowWatched);
        assert_eq!(w.request("d.test", 100_000, t0), Verdict::Pass, "reported once");
        assert_eq!(w.report().len(), 1);
        assert_eq!(w.request("other.test", 1, t0), Verdict::Pass);
    }

    #[test]
    fn a_mostly_failing_domain_gets_the_strict_rate_until_the_window_ends() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        for i in 0..FAILING_MIN {
            assert_eq!(w.request("f.test", 1, t0), Verdict::Pass);
            w.answered("f.test", i % 4 != 0, t0);
        }
        assert_eq!(w.request("f.test", 1, t0), Verdict::Pass, "one per second ...");
        assert_eq!(w.request("f.test", 1, t0 + Duration::from_millis(500)), Verdict::Strict);
        assert_eq!(w.request("f.test", 1, t0 + Duration::from_millis(1000)), Verdict::Pass);
        // Mostly successful: no strict rate.
        for _ in 0..FAILING_MIN {
            w.answered("ok.test", false, t0);
        }
        assert_eq!(w.request("ok.test", 1, t0), Verdict::Pass);
        assert_eq!(w.request("ok.test", 1, t0), Verdict::Pass);
        // The next hour starts afresh.
        assert_eq!(w.request("f.test", 1, t0 + WINDOW + Duration::from_millis(1500)), Verdict::Pass);
        assert_eq!(w.request("f.test", 1, t0 + WINDOW + Duration::from_millis(1600)), Verdict::Pass);
    }
}
