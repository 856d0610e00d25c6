//! Soft-state writes that the store could not commit (the database is away: PostgreSQL restarting or failing
//! over), kept in order to be retried when it is back. Bounded: past [`BACKLOG_MAX`] rows the oldest writes are
//! dropped and counted (soft state is refreshed by the clients themselves, so losing some is a longer
//! write-behind window, not lost data), and the first drop of an outage is logged once. No I/O here: the store
//! thread asks what to retry and reports how it went.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::StateWrite;

/// Soft-state writes held while the store is away (about one per registered user, publication or subscription
/// refreshed during the outage: a minute's worth for tens of thousands of users).
pub const BACKLOG_MAX: usize = 65_536;
/// Pause between retries of a backlog after a failed one (the store's own reconnection backoff applies too).
pub const RETRY_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct Backlog {
    writes: VecDeque<StateWrite>,
    max: usize,
    /// Writes dropped over the bound since the start (a counter for metrics and the log).
    pub dropped: u64,
    /// Whether this outage's first drop has been logged.
    drop_logged: bool,
    retry_at: Option<Instant>,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog::with_max(BACKLOG_MAX)
    }
}

impl Backlog {
    pub fn with_max(max: usize) -> Backlog {
        Backlog { writes: VecDeque::new(), max: max.max(1), dropped: 0, drop_logged: false, retry_at: None }
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// A batch that failed (or that must wait behind older ones) joins the end, in order. Returns how many
    /// writes were dropped to stay within the bound, and whether the caller should log it (first drop of an
    /// outage).
    pub fn push(&mut self, batch: Vec<StateWrite>, now: Instant) -> (usize, bool) {
        self.writes.extend(batch);
        if self.retry_at.is_none() {
            self.retry_at = Some(now + RETRY_EVERY);
        }
        let mut over = self.writes.len().saturating_sub(self.max);
        if over > 0 {
            // A later write to the same row supersedes an earlier one: collapse before dropping anything.
            let collapsed = super::thread::last_write_per_row(self.writes.drain(..).collect());
            self.writes = collapsed.into();
            over = self.writes.len().saturating_sub(self.max);
            self.writes.drain(..over);
        }
        self.dropped += over as u64;
        let log = over > 0 && !self.drop_logged;
        self.drop_logged |= over > 0;
        (over, log)
    }

    /// Whether a retry is due.
    pub fn due(&self, now: Instant) -> bool {
        match self.retry_at {
            _ if self.writes.is_empty() => false,
            None => true,
            Some(t) => now >= t,
        }
    }

    /// The oldest `max` writes, to commit in one transaction; hand them back with [`Backlog::failed`] when that
    /// does not work.
    pub fn take(&mut self, max: usize) -> Vec<StateWrite> {
        let n = max.min(self.writes.len());
        self.writes.drain(..n).collect()
    }

    /// A taken chunk that could not be committed goes back in front, in its order; the next retry waits.
    pub fn failed(&mut self, chunk: Vec<StateWrite>, now: Instant) {
        for w in chunk.into_iter().rev() {
            self.writes.push_front(w);
        }
        self.retry_at = Some(now + RETRY_EVERY);
    }

    /// A taken chunk was committed; once everything is, the outage is over.
    pub fn committed(&mut self) {
        if self.writes.is_empty() {
            self.retry_at = None;
            self.drop_logged = false;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::StateRow;

    fn put(key: &str, v: u8) -> StateWrite {
        StateWrite::Put(StateRow { kind: "reg".into(), key: key.into(), value: vec![v], expires_at: 9 })
    }

    fn keys(b: &mut Backlog) -> Vec<(String, u8)> {
        b.take(usize::MAX)
            .into_iter()
            .map(|w| match w {
                StateWrite::Put(r) => (r.key, r.value[0]),
                StateWrite::Delete { key, .. } => (key, 0),
                StateWrite::Fenced { aor, .. } => (aor, 1),
            })
            .collect()
    }

    #[test]
    fn retries_in_order_after_a_failure() {
        let t0 = Instant::now();
        let mut b = Backlog::default();
        b.push(vec![put("a", 1), put("b", 1)], t0);
        assert!(!b.due(t0), "a retry waits a little");
        assert!(b.due(t0 + RETRY_EVERY));
        let chunk = b.take(1);
        b.push(vec![put("c", 1)], t0 + RETRY_EVERY);
        b.failed(chunk, t0 + RETRY_EVERY);
        assert!(!b.due(t0 + RETRY_EVERY));
        assert_eq!(keys(&mut b), vec![("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]);
        b.committed();
        assert!(b.is_empty() && !b.due(t0 + RETRY_EVERY * 10));
    }

    #[test]
    fn bounded_collapses_then_drops_the_oldest_and_logs_once() {
        let t0 = Instant::now();
        let mut b = Backlog::with_max(3);
        assert_eq!(b.push(vec![put("a", 1), put("b", 1), put("a", 2)], t0), (0, false));
        // Four rows after collapsing a: b, a=2, c, d -> one over.
        assert_eq!(b.push(vec![put("c", 1), put("d", 1)], t0), (1, true));
        assert_eq!(b.push(vec![put("e", 1)], t0), (1, false), "logged once per outage");
        assert_eq!(b.dropped, 2);
        assert_eq!(b.len(), 3);
        assert_eq!(keys(&mut b), vec![("c".into(), 1), ("d".into(), 1), ("e".into(), 1)]);
        b.committed();
        assert_eq!(b.push(vec![put("f", 1), put("g", 1), put("h", 1), put("i", 1)], t0), (1, true), "a new outage");
    }
}
