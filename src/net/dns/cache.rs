//! The resolver's cache, as pure logic (time is an input): answers kept for their TTL clamped between a floor and
//! a ceiling; a name whose lookups start failing keeps its last good answer for a grace period after it expired
//! (retried no more often than the floor meanwhile); failures without a good answer are remembered for the floor
//! too, so a dead name costs one lookup per floor, not one per connection attempt. Every name carries its error
//! and stale-answer counts, and the transitions (starts failing, resolves again) are returned as events so that
//! the thread logs them once per name, not per request. At most [`ENTRIES_MAX`] names.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::select::SrvTarget;

/// Names cached at most; beyond it the entry that expires first goes (a name we federate with is looked up again).
pub const ENTRIES_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// A TTL below this counts as this (a zero TTL must not mean a lookup per connection).
    pub ttl_min: Duration,
    /// A TTL above this counts as this (a renumbered partner is found again within it).
    pub ttl_max: Duration,
    /// How long after expiry a name that no longer resolves keeps its last good answer.
    pub grace: Duration,
}

impl Bounds {
    pub const DEFAULT: Bounds = Bounds {
        ttl_min: Duration::from_secs(5),
        ttl_max: Duration::from_secs(3600),
        grace: Duration::from_secs(3600),
    };
}

#[derive(Debug)]
struct Entry {
    /// The last good answer (empty: never resolved).
    targets: Vec<SrvTarget>,
    /// Answered from the cache without a lookup until then.
    fresh_until: Instant,
    /// The last good answer is served until then when lookups fail.
    keep_until: Instant,
    failing: bool,
    errors: u64,
    stale_answers: u64,
    last_error: String,
}

/// What the cache holds for a name right now.
#[derive(Debug, PartialEq, Eq)]
pub enum Cached<'a> {
    /// Within its TTL (or a failing name's retry floor, with its stale answer): no lookup.
    Fresh(&'a [SrvTarget]),
    /// A failure remembered within the floor: no lookup either.
    Failing(&'a str),
    /// Look it up.
    Missing,
}

/// A change worth one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The name stopped resolving; `stale` says whether its last good answer is still served.
    StartedFailing { stale: bool, error: String },
    /// It resolves again after failing.
    Recovered,
    /// Its grace period ran out: nothing is served any more.
    GraceOver,
}

/// What the cache knows of one name (for `partner list` and the mgmt API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameStats {
    pub name: String,
    pub targets: Vec<SrvTarget>,
    pub failing: bool,
    pub errors: u64,
    pub stale_answers: u64,
    pub last_error: String,
}

pub struct Cache {
    bounds: Bounds,
    entries: HashMap<String, Entry>,
}

impl Cache {
    pub fn new(bounds: Bounds) -> Cache {
        Cache { bounds, entries: HashMap::new() }
    }

    pub fn get(&self, key: &str, now: Instant) -> Cached<'_> {
        match self.entries.get(key) {
            Some(e) if now < e.fresh_until && (!e.targets.is_empty()) => Cached::Fresh(&e.targets),
            Some(e) if now < e.fresh_until && e.failing => Cached::Failing(&e.last_error),
            _ => Cached::Missing,
        }
    }

    /// A lookup's outcome: the answer (with its smallest TTL in seconds) or why it failed. Returns what to hand
    /// the asker (a good answer, the last good one within grace, or the error) and the event to log, if any.
    pub fn store(
        &mut self,
        key: &str,
        result: Result<(Vec<SrvTarget>, u32), String>,
        now: Instant,
    ) -> (Result<Vec<SrvTarget>, String>, Option<Event>) {
        self.make_room(key, now);
        let b = self.bounds;
        let e = self.entries.entry(key.to_string()).or_insert_with(|| Entry {
            targets: Vec::new(),
            fresh_until: now,
            keep_until: now,
            failing: false,
            errors: 0,
            stale_answers: 0,
            last_error: String::new(),
        });
        match result {
            Ok((targets, ttl)) if !targets.is_empty() => {
                let ttl = Duration::from_secs(u64::from(ttl)).clamp(b.ttl_min, b.ttl_max.max(b.ttl_min));
                e.fresh_until = now + ttl;
                e.keep_until = e.fresh_until + b.grace;
                e.targets = targets.clone();
                let event = std::mem::replace(&mut e.failing, false).then_some(Event::Recovered);
                (Ok(targets), event)
            }
            other => {
                let error = match other {
                    Err(s) => s,
                    Ok(_) => "no usable address in the answer".to_string(),
                };
                e.errors += 1;
                e.fresh_until = now + b.ttl_min;
                let stale = !e.targets.is_empty() && now < e.keep_until;
                let started = !std::mem::replace(&mut e.failing, true);
                e.last_error.clone_from(&error);
                if stale {
                    e.stale_answers += 1;
                    let event = started.then_some(Event::StartedFailing { stale: true, error });
                    return (Ok(e.targets.clone()), event);
                }
                let had_answer = !e.targets.is_empty();
                e.targets.clear();
                let event = if started {
                    Some(Event::StartedFailing { stale: false, error: error.clone() })
                } else if had_answer {
                    Some(Event::GraceOver)
                } else {
                    None
                };
                (Err(error), event)
            }
        }
    }

    /// A stale answer served from the cache within the retry floor (counted with the others).
    pub fn count_stale(&mut self, key: &str) {
        if let Some(e) = self.entries.get_mut(key).filter(|e| e.failing) {
            e.stale_answers += 1;
        }
    }

    pub fn stats(&self) -> Vec<NameStats> {
        let mut v: Vec<NameStats> = self
            .entries
            .iter()
            .map(|(k, e)| NameStats {
                name: k.clone(),
                targets: e.targets.clone(),
                failing: e.failing,
                errors: e.errors,
                stale_answers: e.stale_answers,
                last_error: e.last_error.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn make_room(&mut self, key: &str, now: Instant) {
        if self.entries.len() < ENTRIES_MAX || self.entries.contains_key(key) {
            return;
        }
        self.entries.retain(|_, e| now < e.keep_until.max(e.fresh_until));
        if self.entries.len() >= ENTRIES_MAX {
            let first = self.entries.iter().min_by_key(|(_, e)| e.keep_until).map(|(k, _)| k.clone());
            if let Some(k) = first {
                self.entries.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn answer(port: u16) -> Vec<SrvTarget> {
        vec![SrvTarget {
            priority: 0,
            weight: 0,
            name: "a.test".into(),
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        }]
    }

    const B: Bounds =
        Bounds { ttl_min: Duration::from_secs(2), ttl_max: Duration::from_secs(60), grace: Duration::from_secs(100) };

    #[test]
    fn ttl_clamped_between_floor_and_ceiling() {
        let t0 = Instant::now();
        let mut c = Cache::new(B);
        assert_eq!(c.get("a", t0), Cached::Missing);
        let _ = c.store("a", Ok((answer(1), 0)), t0);
        assert!(matches!(c.get("a", t0 + Duration::from_millis(1900)), Cached::Fresh(_)), "floor of 2 s");
        assert_eq!(c.get("a", t0 + Duration::from_secs(2)), Cached::Missing);
        let _ = c.store("b", Ok((answer(1), 86_400)), t0);
        assert!(matches!(c.get("b", t0 + Duration::from_secs(59)), Cached::Fresh(_)));
        assert_eq!(c.get("b", t0 + Duration::from_secs(60)), Cached::Missing, "ceiling of 60 s");
        // A changed record is taken as soon as it is looked up again.
        let (got, ev) = c.store("b", Ok((answer(2), 30)), t0 + Duration::from_secs(60));
        assert_eq!(got, Ok(answer(2)));
        assert_eq!(ev, None);
    }

    #[test]
    fn a_failing_name_keeps_its_answer_for_the_grace_period_and_reports_once() {
        let t0 = Instant::now();
        let mut c = Cache::new(B);
        let _ = c.store("a", Ok((answer(1), 10)), t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let (got, ev) = c.store("a", Err("timed out".into()), at(10));
        assert_eq!(got, Ok(answer(1)), "stale answer within grace");
        assert_eq!(ev, Some(Event::StartedFailing { stale: true, error: "timed out".into() }));
        // Within the floor no lookup: the stale answer straight from the cache.
        assert!(matches!(c.get("a", at(11)), Cached::Fresh(_)));
        let (got, ev) = c.store("a", Err("timed out".into()), at(12));
        assert_eq!(got, Ok(answer(1)));
        assert_eq!(ev, None, "reported once, not per lookup");
        // Grace: 10 s of TTL + 100 s.
        let (got, ev) = c.store("a", Err("timed out".into()), at(111));
        assert_eq!(got, Err("timed out".into()));
        assert_eq!(ev, Some(Event::GraceOver));
        let s = c.stats();
        assert_eq!((s[0].errors, s[0].stale_answers, s[0].failing), (3, 2, true));
        let (got, ev) = c.store("a", Ok((answer(3), 10)), at(120));
        assert_eq!((got, ev), (Ok(answer(3)), Some(Event::Recovered)));
        assert!(!c.stats()[0].failing);
    }

    #[test]
    fn a_name_that_never_resolved_is_negatively_cached_for_the_floor() {
        let t0 = Instant::now();
        let mut c = Cache::new(B);
        let (got, ev) = c.store("x", Err("no such name".into()), t0);
        assert_eq!(got, Err("no such name".into()));
        assert!(matches!(ev, Some(Event::StartedFailing { stale: false, .. })));
        assert_eq!(c.get("x", t0 + Duration::from_secs(1)), Cached::Failing("no such name"));
        assert_eq!(c.get("x", t0 + Duration::from_secs(2)), Cached::Missing);
        let (_, ev) = c.store("x", Err("no such name".into()), t0 + Duration::from_secs(2));
        assert_eq!(ev, None);
        // An empty answer is a failure too.
        let (got, _) = c.store("y", Ok((Vec::new(), 10)), t0);
        assert!(got.is_err());
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut c = Cache::new(B);
        for i in 0..ENTRIES_MAX + 10 {
            let _ = c.store(&format!("n{i}"), Ok((answer(1), 10)), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(c.entries.len(), ENTRIES_MAX);
        assert!(matches!(c.get(&format!("n{}", ENTRIES_MAX + 9), t0), Cached::Fresh(_)));
    }
}
