//! The edge's own notices to the pool (a registered flow closed), kept until the pool has taken them.
//!
//! A notice the pool did not take — answered 503 (its mesh full), or handed back because the pool could not be
//! reached, or not answered at all — would leave the flow's bindings at the pool until they expire: every later
//! request for that user forks to a dead flow. So each notice waits here, named by its Via branch, until a final
//! answer other than a retryable failure arrives, and is sent again on the tick otherwise. The pool's handling of
//! a notice is idempotent (it drops the bindings of a flow), so a notice sent twice does no harm. Bounded: a full
//! table, or a notice that exhausted its tries, is counted and logged, and those bindings expire on their own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Notices waiting for the pool's answer, per core.
pub const NOTICES_MAX: usize = 65_536;
/// Sends of one notice before it is given up.
pub const NOTICE_TRIES_MAX: u8 = 8;
/// After a retryable failure (503, 408, 500, handed back): the next send.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Without any answer this long, the notice is sent again.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

struct Pending {
    bytes: Bytes,
    due: Instant,
    tries: u8,
}

/// What [`Notices::due`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    pub resent: usize,
    pub given_up: usize,
}

#[derive(Default)]
pub struct Notices {
    pending: HashMap<u64, Pending>,
    next: u64,
}

impl Notices {
    /// A new notice: `build` writes it with the id its branch must carry. None when the table is full (nothing
    /// is sent then: the caller counts it).
    pub fn add(&mut self, now: Instant, build: impl FnOnce(u64) -> Bytes) -> Option<Bytes> {
        if self.pending.len() >= NOTICES_MAX {
            return None;
        }
        self.next = self.next.wrapping_add(1);
        let id = self.next;
        let bytes = build(id);
        self.pending.insert(id, Pending { bytes: bytes.clone(), due: now + ANSWER_WAIT, tries: 1 });
        Some(bytes)
    }

    /// The pool's answer to notice `id`: taken (any final answer but a retryable failure), or to be sent again.
    pub fn answered(&mut self, id: u64, status: u16, now: Instant) {
        if status < 200 {
            return;
        }
        if matches!(status, 408 | 500 | 503) {
            if let Some(p) = self.pending.get_mut(&id) {
                p.due = now + RETRY_AFTER;
            }
            return;
        }
        self.pending.remove(&id);
    }

    /// The notices whose time has come, sent again into `out`; those out of tries are given up.
    pub fn due(&mut self, now: Instant, out: &mut Vec<Bytes>) -> Due {
        let mut found = Due::default();
        self.pending.retain(|_, p| {
            if p.due > now {
                return true;
            }
            if p.tries >= NOTICE_TRIES_MAX {
                found.given_up += 1;
                return false;
            }
            p.tries += 1;
            p.due = now + ANSWER_WAIT;
            out.push(p.bytes.clone());
            found.resent += 1;
            true
        });
        found
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// The id a notice's branch carries after the prefix (hex), as written by the edge.
pub fn id_of(branch_rest: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(branch_rest).ok()?;
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_until_taken_resent_after_a_retryable_failure_given_up_after_its_tries() {
        let mut n = Notices::default();
        let t0 = Instant::now();
        let sent = n.add(t0, |id| Bytes::from(format!("notice {id}"))).expect("room");
        assert_eq!(&sent[..], b"notice 1");
        let mut out = Vec::new();
        assert_eq!(n.due(t0, &mut out), Due::default(), "not yet due");
        // The pool's mesh was full: again a second later.
        n.answered(1, 503, t0);
        assert_eq!(n.due(t0 + Duration::from_millis(1001), &mut out), Due { resent: 1, given_up: 0 });
        assert_eq!(out, vec![sent.clone()]);
        // Taken: gone for good.
        n.answered(1, 200, t0);
        assert!(n.is_empty());
        // Never answered: sent again every ANSWER_WAIT, then given up.
        n.add(t0, |_| Bytes::from_static(b"x")).expect("room");
        let mut t = t0;
        let mut resent = 0;
        for _ in 0..20 {
            t += ANSWER_WAIT;
            let d = n.due(t, &mut Vec::new());
            resent += d.resent;
            if d.given_up == 1 {
                break;
            }
        }
        assert_eq!(resent, usize::from(NOTICE_TRIES_MAX) - 1);
        assert!(n.is_empty());
        // Other failures are final (the pool took it and said no): not sent again.
        n.add(t0, |_| Bytes::from_static(b"y")).expect("room");
        n.answered(3, 481, t0);
        assert!(n.is_empty());
        assert_eq!(id_of(b"00000000000000ff"), Some(255));
        assert_eq!(id_of(b"zz"), None);
    }
}
