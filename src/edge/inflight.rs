//! Requests the edge sent to an enterprise pool's members and that have no final answer yet.
//!
//! The edge forwards a user's request statelessly; the member answers it. When that member dies (kill -9, a
//! machine lost) after taking the request, nobody would answer it: the client would wait out its own timer
//! (32 s over TLS) and see no response at all. So the edge keeps, per core, each request it sent to a member
//! until the member's final answer comes back, and answers it itself exactly once when that cannot happen:
//! `503` (with Retry-After) on the first tick after the member's link was found down, `408` when the transaction
//! outlives its deadline. (On the tick, not at once: a request the connector hands back undelivered in the step
//! right after the link was marked down is sent to the user's new owner instead, [`InFlight::move_to`].) A member's late answer to a request the edge already answered is dropped, so the client never sees
//! two final answers. The request is not sent again to the new owner: the dead member may have acted on it
//! (a MESSAGE delivered, a binding written), and SIP clients retry a 503 themselves.
//!
//! Generic over the key and the payload so the simulation (`crate::sim`) drives this very table.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

enum Entry<T> {
    /// Sent to `member`, no final answer yet.
    Live { member: usize, deadline: Instant, item: T, orphaned: bool },
    /// Answered by the edge; a late answer from the member is dropped until `until`.
    Answered { until: Instant },
}

/// Requests for the edge to answer ([`InFlight::expire`]).
pub struct Expired<T> {
    /// Their member went down: 503.
    pub lost: Vec<T>,
    /// Past the deadline: 408.
    pub late: Vec<T>,
}

/// What to do with a member's final answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on to the user (the request was in flight, or not tracked).
    Forward,
    /// The edge answered this request already: drop it.
    Drop,
}

pub struct InFlight<K, T> {
    entries: HashMap<K, Entry<T>>,
    max: usize,
    deadline: Duration,
}

impl<K: Hash + Eq + Clone, T> InFlight<K, T> {
    /// At most `max` entries (past it, requests are forwarded untracked, as without a pool); each answered by the
    /// edge once `deadline` has passed.
    pub fn new(max: usize, deadline: Duration) -> InFlight<K, T> {
        InFlight { entries: HashMap::new(), max, deadline }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many requests wait for an answer from `member`.
    pub fn live_at(&self, member: usize) -> usize {
        self.entries.values().filter(|e| matches!(e, Entry::Live { member: m, .. } if *m == member)).count()
    }

    /// A request went to `member`; false when the table is full (it goes untracked). A retransmission of a request
    /// in flight keeps its entry (and deadline), only its member may change.
    pub fn sent(&mut self, key: K, member: usize, item: T, now: Instant) -> bool {
        if let Some(Entry::Live { member: m, orphaned, .. }) = self.entries.get_mut(&key) {
            *m = member;
            *orphaned = false;
            return true;
        }
        if self.entries.len() >= self.max && !self.entries.contains_key(&key) {
            return false;
        }
        self.entries.insert(key, Entry::Live { member, deadline: now + self.deadline, item, orphaned: false });
        true
    }

    /// The request was sent again, to `member` (its first one was found unreachable).
    pub fn move_to(&mut self, key: &K, member: usize) {
        if let Some(Entry::Live { member: m, orphaned, .. }) = self.entries.get_mut(key) {
            *m = member;
            *orphaned = false;
        }
    }

    /// Whether the edge answered `key` itself.
    pub fn is_answered(&self, key: &K) -> bool {
        matches!(self.entries.get(key), Some(Entry::Answered { .. }))
    }

    /// A final answer for `key` came from the pool (or from the connector handing the request back).
    pub fn answered(&mut self, key: &K) -> Verdict {
        match self.entries.remove(key) {
            Some(Entry::Answered { .. }) => Verdict::Drop,
            Some(Entry::Live { .. }) | None => Verdict::Forward,
        }
    }

    /// `member`'s link went down: every request waiting on it is answered by the edge on the next
    /// [`InFlight::expire`], unless sent again meanwhile.
    pub fn member_down(&mut self, member: usize) {
        for e in self.entries.values_mut() {
            if let Entry::Live { member: m, orphaned, .. } = e {
                if *m == member {
                    *orphaned = true;
                }
            }
        }
    }

    /// The requests for the edge to answer now: those whose member went down (`lost`, 503) and those past their
    /// deadline (`late`, 408). Forgets answered ones whose late answers can no longer come.
    pub fn expire(&mut self, now: Instant) -> Expired<T> {
        self.entries.retain(|_, e| !matches!(e, Entry::Answered { until } if *until <= now));
        let (mut lost, mut late) = (Vec::new(), Vec::new());
        for (k, e) in self.entries.iter() {
            match e {
                Entry::Live { orphaned: true, .. } => lost.push(k.clone()),
                Entry::Live { deadline, .. } if *deadline <= now => late.push(k.clone()),
                _ => {}
            }
        }
        Expired { lost: self.close(lost, now), late: self.close(late, now) }
    }

    fn close(&mut self, keys: Vec<K>, now: Instant) -> Vec<T> {
        let until = now + self.deadline;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(Entry::Live { item, .. }) = self.entries.insert(k, Entry::Answered { until }) {
                out.push(item);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_members_requests_are_answered_once_and_its_late_answers_dropped() {
        let t0 = Instant::now();
        let mut f: InFlight<u32, &str> = InFlight::new(8, Duration::from_secs(32));
        assert!(f.sent(1, 0, "a", t0));
        assert!(f.sent(2, 1, "b", t0));
        assert_eq!(f.live_at(0), 1);
        f.member_down(0);
        assert_eq!(f.expire(t0).lost, vec!["a"]);
        f.member_down(0);
        let again = f.expire(t0);
        assert!(again.lost.is_empty() && again.late.is_empty(), "answered once");
        assert_eq!(f.answered(&1), Verdict::Drop, "the member's late answer");
        assert_eq!(f.answered(&2), Verdict::Forward);
        assert_eq!(f.answered(&3), Verdict::Forward, "untracked: passes");
    }

    #[test]
    fn a_request_sent_again_after_its_member_went_down_is_not_answered_by_the_edge() {
        let t0 = Instant::now();
        let mut f: InFlight<u32, &str> = InFlight::new(8, Duration::from_secs(32));
        assert!(f.sent(1, 0, "a", t0));
        f.member_down(0);
        f.move_to(&1, 2);
        assert!(f.expire(t0).lost.is_empty());
        assert_eq!(f.live_at(2), 1);
    }

    #[test]
    fn past_the_deadline_the_edge_answers_and_forgets() {
        let t0 = Instant::now();
        let mut f: InFlight<u32, &str> = InFlight::new(1, Duration::from_secs(2));
        assert!(f.sent(1, 0, "a", t0));
        assert!(!f.sent(2, 0, "b", t0), "full: untracked");
        assert!(f.expire(t0 + Duration::from_secs(1)).late.is_empty());
        assert_eq!(f.expire(t0 + Duration::from_secs(2)).late, vec!["a"]);
        assert_eq!(f.len(), 1, "kept to drop a late answer");
        assert!(f.expire(t0 + Duration::from_secs(4)).late.is_empty());
        assert!(f.is_empty());
    }
}
