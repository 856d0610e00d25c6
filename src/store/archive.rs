//! The IM archive as the store sees it: the row, the search, and the write-behind buffer the store thread keeps
//! (bounded; a commit that fails is retried, and while it fails, or while the buffer is over its bound, the
//! [`ArchiveGate`] says so to the pool cores, which in `critical` mode refuse IM rather than relay it
//! unarchived). The cores only read the gate's atomics; the store thread alone commits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// One archived MESSAGE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRow {
    /// Assigned by the store (0 before it is written); orders rows of the same millisecond.
    pub id: i64,
    /// Unix milliseconds, when the pool accepted the MESSAGE for delivery.
    pub at_ms: i64,
    /// AOR keys (`user@domain`).
    pub sender: String,
    pub recipient: String,
    /// "internal", "federated-in" or "federated-out".
    pub direction: String,
    pub content_type: String,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
    pub call_id: String,
}

/// What `archive search` / `export` ask for; every filter optional. Rows come in the order they were archived (id), those with
/// id > `after_id` only (paging), at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// Sender or recipient.
    pub user: Option<String>,
    /// The other party (sender or recipient) too.
    pub peer: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until_ms: Option<i64>,
    /// A substring of the body (case-sensitive).
    pub text: Option<String>,
    pub after_id: i64,
    pub limit: u32,
}

impl ArchiveQuery {
    /// The bounds as SQL parameters (no bound: the widest range).
    pub fn range(&self) -> (i64, i64) {
        (self.since_ms.unwrap_or(i64::MIN), self.until_ms.unwrap_or(i64::MAX))
    }
}

/// Rows one search returns at most (the CLI pages through more).
pub const SEARCH_LIMIT_MAX: u32 = 10_000;
/// Rows committed in one transaction at most.
pub const ARCHIVE_BATCH_MAX: usize = 1024;
/// How long archive rows gather before one commit (one fsync per window, not per MESSAGE).
pub const ARCHIVE_WINDOW: Duration = Duration::from_millis(50);
/// After a failed commit, the next attempt waits this long.
pub const ARCHIVE_RETRY: Duration = Duration::from_millis(500);
/// How often the store thread purges rows past the retention period.
pub const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Bound of rows accepted but not yet committed. At most half the store thread's queue: while the thread is
/// stuck in a slow commit the rows wait in that queue, and critical mode must see the bound before the queue is
/// full (a row the queue refuses has already been relayed).
pub const PENDING_MAX_DEFAULT: u64 = (super::thread::QUEUE_MAX / 2) as u64;

/// Shared between the store thread (the only writer of `failing` and the only one to lower `pending`) and the
/// pool cores (which raise `pending` for each row they queue, and read both).
#[derive(Debug)]
pub struct ArchiveGate {
    /// Rows queued by the cores and not yet committed (nor dropped).
    pub pending: AtomicU64,
    /// The last commit failed and no later one succeeded.
    pub failing: AtomicBool,
    /// Over this many pending rows the archive counts as unwritable.
    pub pending_max: AtomicU64,
    /// Rows older than this are purged; 0: kept for ever.
    pub retention_s: AtomicU64,
    /// Rows dropped by the store thread (over the bound, or the store refusing them past the retry limit).
    pub dropped: AtomicU64,
    pub committed: AtomicU64,
    pub purged: AtomicU64,
}

impl Default for ArchiveGate {
    fn default() -> Self {
        ArchiveGate {
            pending: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            pending_max: AtomicU64::new(PENDING_MAX_DEFAULT),
            retention_s: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            purged: AtomicU64::new(0),
        }
    }
}

impl ArchiveGate {
    /// Whether a new row can be expected to reach the store: the last commit worked and the buffer has room.
    pub fn writable(&self) -> bool {
        !self.failing.load(Ordering::Relaxed) && self.has_room()
    }

    /// Whether another row may wait for its commit (the bound on memory, whatever the store's health).
    pub fn has_room(&self) -> bool {
        self.pending.load(Ordering::Relaxed) < self.pending_max.load(Ordering::Relaxed)
    }

    pub fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
        f("archive_pending_now", self.pending.load(Ordering::Relaxed));
        f("archive_failing", u64::from(self.failing.load(Ordering::Relaxed)));
        f("archive_committed", self.committed.load(Ordering::Relaxed));
        f("archive_dropped", self.dropped.load(Ordering::Relaxed));
        f("archive_purged", self.purged.load(Ordering::Relaxed));
    }

    fn release(&self, n: usize) {
        let n = n as u64;
        // Never below zero, even if a test or a race released more than was queued.
        let _ = self.pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(p.saturating_sub(n)));
    }
}

/// The store thread's side: rows waiting for their commit, in arrival order.
#[derive(Default)]
pub struct ArchiveBuffer {
    rows: VecDeque<ArchiveRow>,
    /// When the oldest waiting row arrived.
    since: Option<Instant>,
    retry_at: Option<Instant>,
    purge_at: Option<Instant>,
}

impl ArchiveBuffer {
    pub fn push(&mut self, row: ArchiveRow, gate: &ArchiveGate, now: Instant) {
        self.rows.push_back(row);
        self.since.get_or_insert(now);
        // A hard bound above the gate's: cores stop queueing at pending_max, but a race of several may pass it.
        let hard_max = gate.pending_max.load(Ordering::Relaxed).saturating_mul(2).max(1) as usize;
        while self.rows.len() > hard_max {
            self.rows.pop_front();
            gate.dropped.fetch_add(1, Ordering::Relaxed);
            gate.release(1);
        }
    }

    /// How long the store thread may wait before [`ArchiveBuffer::work`] has something to do.
    pub fn wait(&self, gate: &ArchiveGate, now: Instant) -> Option<Duration> {
        let purge = (gate.retention_s.load(Ordering::Relaxed) > 0)
            .then(|| self.purge_at.map_or(Duration::ZERO, |t| t.saturating_duration_since(now)));
        let flush = self.since.map(|s| {
            let due = self.retry_at.unwrap_or(s + ARCHIVE_WINDOW);
            due.saturating_duration_since(now)
        });
        match (purge, flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Commits what is due (a full batch at once, else after the window; after a failure, at the retry time),
    /// and purges past the retention period when that is due.
    pub fn work(&mut self, store: &mut dyn Store, gate: &ArchiveGate, now: Instant, now_ms: i64) {
        let retention = gate.retention_s.load(Ordering::Relaxed);
        if retention > 0 && self.purge_at.is_none_or(|t| now >= t) {
            self.purge_at = Some(now + PURGE_EVERY);
            let before = now_ms.saturating_sub(i64::try_from(retention.saturating_mul(1000)).unwrap_or(i64::MAX));
            match store.purge_archive(before) {
                Ok(n) if n > 0 => {
                    gate.purged.fetch_add(n, Ordering::Relaxed);
                    tracing::info!(rows = n, retention_s = retention, "archive: purged rows past retention");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "archive: purge failed (retried later)"),
            }
        }
        while let Some(since) = self.since {
            let due = match self.retry_at {
                Some(t) => now >= t,
                None => self.rows.len() >= ARCHIVE_BATCH_MAX || now >= since + ARCHIVE_WINDOW,
            };
            if !due {
                return;
            }
            let n = self.rows.len().min(ARCHIVE_BATCH_MAX);
            let batch: Vec<ArchiveRow> = self.rows.iter().take(n).cloned().collect();
            match store.write_archive(&batch) {
                Ok(()) => {
                    self.rows.drain(..n);
                    gate.committed.fetch_add(n as u64, Ordering::Relaxed);
                    gate.release(n);
                    if gate.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(pending = self.rows.len(), "archive: writable again");
                    }
                    self.retry_at = None;
                    self.since = if self.rows.is_empty() { None } else { Some(now) };
                }
                Err(e) => {
                    if !gate.failing.swap(true, Ordering::Relaxed) {
                        tracing::error!(error = %e, pending = self.rows.len(), "archive: cannot write; retrying");
                    }
                    self.retry_at = Some(now + ARCHIVE_RETRY);
                    return;
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// At the end (the store thread stops): one last attempt.
    pub fn finish(&mut self, store: &mut dyn Store, gate: &ArchiveGate) {
        if self.rows.is_empty() {
            return;
        }
        self.retry_at = None;
        self.since = Some(Instant::now() - ARCHIVE_WINDOW);
        self.work(store, gate, Instant::now(), 0);
    }
}

/// Wall-clock unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The JSON line `archive export` writes for a row.
pub fn json_line(row: &ArchiveRow) -> Result<String, StoreError> {
    serde_json::to_string(row).map_err(|e| StoreError(format!("archive export: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    pub(crate) fn row(at_ms: i64, from: &str, to: &str, body: &str) -> ArchiveRow {
        ArchiveRow {
            id: 0,
            at_ms,
            sender: from.into(),
            recipient: to.into(),
            direction: "internal".into(),
            content_type: "text/plain".into(),
            body: body.into(),
            call_id: format!("c{at_ms}"),
        }
    }

    #[test]
    fn rows_wait_for_the_window_then_commit_in_one_batch() {
        let mut s = SqliteStore::in_memory().unwrap();
        let gate = ArchiveGate::default();
        let mut b = ArchiveBuffer::default();
        let t0 = Instant::now();
        for i in 0..3 {
            gate.pending.fetch_add(1, Ordering::Relaxed);
            b.push(row(i, "a@x", "b@x", "hi"), &gate, t0);
        }
        b.work(&mut s, &gate, t0, 0);
        assert_eq!(b.len(), 3, "not before the window");
        assert!(b.wait(&gate, t0).unwrap() <= ARCHIVE_WINDOW);
        b.work(&mut s, &gate, t0 + ARCHIVE_WINDOW, 0);
        assert!(b.is_empty());
        assert_eq!(gate.pending.load(Ordering::Relaxed), 0);
        assert_eq!(gate.committed.load(Ordering::Relaxed), 3);
        let q = ArchiveQuery { limit: 10, ..Default::default() };
        assert_eq!(s.search_archive(&q).unwrap().len(), 3);
    }

    #[test]
    fn the_store_thread_purges_past_retention_once_a_period() {
        let mut s = SqliteStore::in_memory().unwrap();
        let day_ms = 86_400_000;
        let now_ms = 100 * day_ms;
        s.write_archive(&[row(now_ms - 31 * day_ms, "a@x", "b@x", "old"), row(now_ms - day_ms, "a@x", "b@x", "new")])
            .unwrap();
        let gate = ArchiveGate::default();
        gate.retention_s.store(30 * 86_400, Ordering::Relaxed);
        let mut b = ArchiveBuffer::default();
        let t0 = Instant::now();
        assert_eq!(b.wait(&gate, t0), Some(Duration::ZERO), "a purge is due at start");
        b.work(&mut s, &gate, t0, now_ms);
        assert_eq!(gate.purged.load(Ordering::Relaxed), 1);
        let left = s.search_archive(&ArchiveQuery { limit: 10, ..Default::default() }).unwrap();
        assert_eq!(left.iter().map(|r| r.body.as_str()).collect::<Vec<_>>(), vec!["new"]);
        s.write_archive(&[row(0, "a@x", "b@x", "ancient")]).unwrap();
        b.work(&mut s, &gate, t0 + Duration::from_secs(1), now_ms);
        assert_eq!(gate.purged.load(Ordering::Relaxed), 1, "not again before PURGE_EVERY");
        b.work(&mut s, &gate, t0 + PURGE_EVERY, now_ms);
        assert_eq!(gate.purged.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn over_the_hard_bound_the_oldest_are_dropped_and_counted() {
        let gate = ArchiveGate::default();
        gate.pending_max.store(2, Ordering::Relaxed);
        let mut b = ArchiveBuffer::default();
        for i in 0..6 {
            gate.pending.fetch_add(1, Ordering::Relaxed);
            b.push(row(i, "a@x", "b@x", "hi"), &gate, Instant::now());
        }
        assert_eq!(b.len(), 4);
        assert_eq!(gate.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(gate.pending.load(Ordering::Relaxed), 4);
        assert!(!gate.writable(), "over pending_max");
    }
}
