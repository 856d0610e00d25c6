//! Runs a [`Store`] on a thread of its own. Executors hand it operations through a bounded queue and await
//! the answer (`call`, an async receive: the core keeps serving while the disk works); a full queue is an
//! immediate error the caller turns into 503, never a wait. Start-up code and the CLI, which run on no
//! executor, may use `call_blocking`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::archive::{ArchiveBuffer, ArchiveGate, ArchiveQuery, ArchiveRow};
use super::backlog::Backlog;
use super::{ContactRow, MemberRow, PolicyRow, StateRow, StateWrite, Store, StoreError};

/// Operations waiting for the store thread before new ones are refused.
pub const QUEUE_MAX: usize = 4096;
/// How often the thread looks for changes made by other processes (the CLI).
pub const POLL: Duration = Duration::from_millis(500);
/// Soft-state writes committed in one transaction at most.
pub const BATCH_MAX: usize = 1024;
/// How long soft-state writes are gathered before one commit: every commit is an fsync, and a registration
/// refresh rate of thousands per second must not become thousands of fsyncs. Bounds the write-behind window.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub enum Op {
    Policies,
    PutPolicy(PolicyRow),
    DeletePolicy {
        owner: String,
        target: String,
    },
    Contacts {
        owner: String,
    },
    PutContact(ContactRow),
    DeleteContact {
        owner: String,
        uri: String,
    },
    /// Every policy change from now on (ours or another process's) sends the full entry list here.
    WatchPolicies(flume::Sender<Vec<PolicyRow>>),
    /// Every contact-list change (ours, or any change by another process) sends a signal here.
    WatchContacts(flume::Sender<()>),
    /// Live soft state, at start.
    States {
        now: u64,
    },
    /// One user's live soft state (a front end taking the user over).
    StatesOf {
        aor: String,
        now: u64,
    },
    /// A front end taking a user over: claims it ([`Store::claim_user`]), then reads its live soft state.
    ClaimAndLoad {
        aor: String,
        member: String,
        now: u64,
    },
    /// This member's lease (see [`Store::renew_member`]).
    RenewMember(MemberRow),
    /// The roster's rows.
    Members,
    /// `pool drain` / `pool undrain`.
    SetMemberState {
        name: String,
        state: String,
    },
    /// The pool-wide secret `name` (see [`Store::shared_secret`]).
    SharedSecret {
        name: String,
        candidate: Vec<u8>,
    },
    /// Soft state to write; queued without waiting ([`StoreHandle::write_state`]) and committed in batches.
    WriteState(StateWrite),
    /// An archived MESSAGE; queued without waiting ([`StoreHandle::archive`]) and committed in batches.
    Archive(ArchiveRow),
    SearchArchive(ArchiveQuery),
    PurgeArchive {
        before_ms: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Policies(Vec<PolicyRow>),
    States(Vec<StateRow>),
    Contacts(Vec<ContactRow>),
    Members(Vec<MemberRow>),
    Secret(Vec<u8>),
    /// A user claimed ([`Op::ClaimAndLoad`]): the claim's generation and the user's rows.
    Claimed {
        gen: u64,
        rows: Vec<StateRow>,
    },
    /// A write; for deletions, whether something was there.
    Done(bool),
    Archive(Vec<ArchiveRow>),
    /// Rows affected.
    Count(u64),
}

type Job = (Op, flume::Sender<Result<Reply, StoreError>>);

/// What the store thread counts, for `/metrics` (written by the store thread only).
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Soft-state writes waiting for the database (it is away).
    pub backlog_now: AtomicU64,
    /// Soft-state writes dropped because the backlog was full.
    pub soft_writes_dropped: AtomicU64,
    /// Soft-state commits that failed (each is retried from the backlog).
    pub soft_commit_failures: AtomicU64,
}

impl StoreStats {
    pub fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
        f("store_backlog_now", self.backlog_now.load(Ordering::Relaxed));
        f("store_soft_writes_dropped", self.soft_writes_dropped.load(Ordering::Relaxed));
        f("store_soft_commit_failures", self.soft_commit_failures.load(Ordering::Relaxed));
    }
}

/// A cheap, cloneable, `Send` handle to the store thread. The thread ends when every handle is dropped.
#[derive(Clone)]
pub struct StoreHandle {
    tx: flume::Sender<Job>,
    stats: Arc<StoreStats>,
    archive: Arc<ArchiveGate>,
}

/// One operation on the store, as the thread runs it (also the simulation's store step).
pub(crate) fn run(store: &mut dyn Store, op: Op) -> Result<Reply, StoreError> {
    Ok(match op {
        Op::Policies => Reply::Policies(store.policies()?),
        Op::PutPolicy(r) => {
            store.put_policy(&r)?;
            Reply::Done(true)
        }
        Op::DeletePolicy { owner, target } => Reply::Done(store.delete_policy(&owner, &target)?),
        Op::Contacts { owner } => Reply::Contacts(store.contacts(&owner)?),
        Op::PutContact(r) => {
            store.put_contact(&r)?;
            Reply::Done(true)
        }
        Op::DeleteContact { owner, uri } => Reply::Done(store.delete_contact(&owner, &uri)?),
        Op::WatchPolicies(_) | Op::WatchContacts(_) => Reply::Done(true),
        Op::States { now } => Reply::States(store.states(now)?),
        Op::StatesOf { aor, now } => Reply::States(store.states_of(&aor, now)?),
        Op::ClaimAndLoad { aor, member, now } => {
            // The claim first: from here on the old owner's late writes are refused, so what is loaded is final.
            let gen = store.claim_user(&aor, &member)?;
            Reply::Claimed { gen, rows: store.states_of(&aor, now)? }
        }
        Op::RenewMember(r) => {
            store.renew_member(&r)?;
            Reply::Done(true)
        }
        Op::Members => Reply::Members(store.members()?),
        Op::SharedSecret { name, candidate } => Reply::Secret(store.shared_secret(&name, &candidate)?),
        Op::SetMemberState { name, state } => Reply::Done(store.set_member_state(&name, &state)?),
        Op::WriteState(w) => {
            store.write_states(std::slice::from_ref(&w))?;
            Reply::Done(true)
        }
        Op::Archive(r) => {
            store.write_archive(std::slice::from_ref(&r))?;
            Reply::Done(true)
        }
        Op::SearchArchive(q) => Reply::Archive(store.search_archive(&q)?),
        Op::PurgeArchive { before_ms } => Reply::Count(store.purge_archive(before_ms)?),
    })
}

/// Commits a run of queued soft-state writes in one transaction; returns the job that ended the run, if any.
/// Writes to the same row within one window collapse into the last one (a refresh overwrites the previous).
/// A batch that cannot be committed (the database is away), or that must wait behind one that could not, joins
/// the backlog, retried in order.
fn write_batch(
    store: &mut dyn Store,
    first: StateWrite,
    rx: &flume::Receiver<Job>,
    backlog: &mut Backlog,
    stats: &StoreStats,
    archive: (&mut ArchiveBuffer, &ArchiveGate),
) -> Option<Job> {
    let deadline = std::time::Instant::now() + BATCH_WINDOW;
    let mut batch = vec![first];
    let mut next = None;
    while batch.len() < BATCH_MAX {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((Op::WriteState(w), _)) => batch.push(w),
            Ok((Op::Archive(r), _)) => archive.0.push(r, archive.1, Instant::now()),
            Ok(job) => {
                next = Some(job);
                break;
            }
            Err(_) => break,
        }
    }
    let batch = last_write_per_row(batch);
    if !backlog.is_empty() {
        keep(backlog, batch);
        flush_backlog(store, backlog, stats);
    } else if let Err(e) = store.write_states(&batch) {
        tracing::warn!(error = %e, writes = batch.len(), "store: soft state not written; kept for a retry");
        stats.soft_commit_failures.fetch_add(1, Ordering::Relaxed);
        keep(backlog, batch);
    }
    next
}

fn keep(backlog: &mut Backlog, batch: Vec<StateWrite>) {
    let (_, log) = backlog.push(batch, Instant::now());
    if log {
        tracing::warn!(
            held = backlog.len(),
            dropped_total = backlog.dropped,
            "store: soft-state backlog full; dropping the oldest writes (clients' refreshes rewrite them)"
        );
    }
}

/// Retries the backlog when due, oldest first, until it is empty or a commit fails.
fn flush_backlog(store: &mut dyn Store, backlog: &mut Backlog, stats: &StoreStats) {
    let mut written = 0;
    while backlog.due(Instant::now()) {
        let chunk = backlog.take(BATCH_MAX);
        match store.write_states(&chunk) {
            Ok(()) => {
                written += chunk.len();
                backlog.committed();
            }
            Err(_) => {
                stats.soft_commit_failures.fetch_add(1, Ordering::Relaxed);
                backlog.failed(chunk, Instant::now());
                break;
            }
        }
    }
    if written > 0 && backlog.is_empty() {
        tracing::info!(written, dropped_total = backlog.dropped, "store: soft-state backlog written");
    }
}

fn row_of(w: &StateWrite) -> (&str, &str) {
    match w {
        StateWrite::Put(r) => (r.kind.as_str(), r.key.as_str()),
        StateWrite::Delete { kind, key } => (kind.as_str(), key.as_str()),
        StateWrite::Fenced { write, .. } => row_of(write),
    }
}

/// Keeps, for every (kind, key), only its last write, in the order of those last writes.
pub(crate) fn last_write_per_row(batch: Vec<StateWrite>) -> Vec<StateWrite> {
    let mut last: std::collections::HashMap<(String, String), usize> = std::collections::HashMap::new();
    for (i, w) in batch.iter().enumerate() {
        let (k, key) = row_of(w);
        last.insert((k.to_string(), key.to_string()), i);
    }
    batch
        .into_iter()
        .enumerate()
        .filter(|(i, w)| {
            let (k, key) = row_of(w);
            last.get(&(k.to_string(), key.to_string())) == Some(i)
        })
        .map(|(_, w)| w)
        .collect()
}

/// The store thread: operations in order; between them, a look for other writers every [`POLL`]; after any
/// policy change, the new entry list to every watcher.
fn serve(store: &mut dyn Store, rx: &flume::Receiver<Job>, stats: &StoreStats, gate: &ArchiveGate) {
    let mut archive = ArchiveBuffer::default();
    let mut watchers: Vec<flume::Sender<Vec<PolicyRow>>> = Vec::new();
    let mut contact_watchers: Vec<flume::Sender<()>> = Vec::new();
    let mut carried: Option<Job> = None;
    let mut backlog = Backlog::default();
    // Whether the failure to look for outside changes has been logged (once per outage, not every POLL).
    let mut poll_failing = false;
    loop {
        flush_backlog(store, &mut backlog, stats);
        stats.backlog_now.store(backlog.len() as u64, Ordering::Relaxed);
        stats.soft_writes_dropped.store(backlog.dropped, Ordering::Relaxed);
        archive.work(store, gate, Instant::now(), super::archive::now_ms());
        let wait = if backlog.is_empty() { POLL } else { POLL.min(super::backlog::RETRY_EVERY) };
        let wait = archive.wait(gate, Instant::now()).map_or(wait, |a| wait.min(a));
        let next = match carried.take() {
            Some(job) => Ok(job),
            None => rx.recv_timeout(wait),
        };
        let (policy_changed, contacts_changed) = match next {
            Ok((Op::WriteState(w), _)) => {
                carried = write_batch(store, w, rx, &mut backlog, stats, (&mut archive, gate));
                (false, false)
            }
            Ok((Op::Archive(r), _)) => {
                archive.push(r, gate, Instant::now());
                (false, false)
            }
            Ok((op, reply)) => {
                let writes_policy = matches!(op, Op::PutPolicy(_) | Op::DeletePolicy { .. });
                let writes_contacts = matches!(op, Op::PutContact(_) | Op::DeleteContact { .. });
                match &op {
                    Op::WatchPolicies(w) => watchers.push(w.clone()),
                    Op::WatchContacts(w) => contact_watchers.push(w.clone()),
                    _ => {}
                }
                let result = run(store, op);
                let ok = result.is_ok();
                let _ = reply.send(result);
                (writes_policy && ok, writes_contacts && ok)
            }
            Err(flume::RecvTimeoutError::Timeout) => match store.changed_elsewhere() {
                // Another process wrote: which table is not known, so both kinds of watchers hear of it.
                Ok(c) => {
                    poll_failing = false;
                    (c, c)
                }
                Err(e) => {
                    if !poll_failing {
                        tracing::warn!(error = %e, "store: cannot check for outside changes");
                    }
                    poll_failing = true;
                    (false, false)
                }
            },
            Err(flume::RecvTimeoutError::Disconnected) => {
                archive.finish(store, gate);
                return;
            }
        };
        if contacts_changed {
            // A full channel already holds a signal: nothing is lost.
            contact_watchers.retain(|w| !w.is_disconnected());
            for w in &contact_watchers {
                let _ = w.try_send(());
            }
        }
        if policy_changed && !watchers.is_empty() {
            match store.policies() {
                Ok(rows) => watchers.retain(|w| w.try_send(rows.clone()).is_ok() || !w.is_disconnected()),
                Err(e) => tracing::warn!(error = %e, "store: cannot reload policies"),
            }
        }
    }
}

impl StoreHandle {
    pub fn start(mut store: Box<dyn Store>) -> Result<StoreHandle, StoreError> {
        let (tx, rx) = flume::bounded::<Job>(QUEUE_MAX);
        let stats = Arc::new(StoreStats::default());
        let counted = stats.clone();
        let archive = Arc::new(ArchiveGate::default());
        let gate = archive.clone();
        thread::Builder::new()
            .name("parapet-store".into())
            .spawn(move || serve(store.as_mut(), &rx, &counted, &gate))
            .map_err(|e| StoreError(format!("cannot start the store thread: {e}")))?;
        Ok(StoreHandle { tx, stats, archive })
    }

    /// The archive's state, shared with the pool cores (they read whether it is writable).
    pub fn archive_gate(&self) -> Arc<ArchiveGate> {
        self.archive.clone()
    }

    /// Queues an archived MESSAGE without waiting (write-behind). False when the store thread's queue is full:
    /// the row is lost, and the caller counts it.
    pub fn archive(&self, row: ArchiveRow) -> bool {
        let (rtx, _) = flume::bounded(1);
        self.archive.pending.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send((Op::Archive(row), rtx)).is_ok() {
            return true;
        }
        let _ = self.archive.pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(p.saturating_sub(1)));
        false
    }

    /// The store thread's counters (the pool lists them on `/metrics`).
    pub fn stats(&self) -> Arc<StoreStats> {
        self.stats.clone()
    }

    fn submit(&self, op: Op) -> Result<flume::Receiver<Result<Reply, StoreError>>, StoreError> {
        let (rtx, rrx) = flume::bounded(1);
        self.tx.try_send((op, rtx)).map_err(|e| match e {
            flume::TrySendError::Full(_) => StoreError("busy: too many operations queued".into()),
            flume::TrySendError::Disconnected(_) => StoreError("the store thread has stopped".into()),
        })?;
        Ok(rrx)
    }

    /// From an executor: never blocks the thread.
    pub async fn call(&self, op: Op) -> Result<Reply, StoreError> {
        let rx = self.submit(op)?;
        rx.recv_async().await.map_err(|_| StoreError("the store thread has stopped".into()))?
    }

    /// Queues a soft-state write without waiting (write-behind: committed with the next batch, typically within
    /// milliseconds). False when the queue is full: the write is dropped, and the next change rewrites it.
    pub fn write_state(&self, w: StateWrite) -> bool {
        let (rtx, _) = flume::bounded(1);
        self.tx.try_send((Op::WriteState(w), rtx)).is_ok()
    }

    /// Entry lists after every policy change (for a core: receive with `recv_async`).
    pub fn watch_policies(&self) -> Result<flume::Receiver<Vec<PolicyRow>>, StoreError> {
        let (tx, rx) = flume::bounded(4);
        // Queued, not awaited: a core may call this at start without waiting for the disk.
        drop(self.submit(Op::WatchPolicies(tx))?);
        Ok(rx)
    }

    /// A signal after every contact-list change (for a core: receive with `recv_async`).
    pub fn watch_contacts(&self) -> Result<flume::Receiver<()>, StoreError> {
        let (tx, rx) = flume::bounded(1);
        drop(self.submit(Op::WatchContacts(tx))?);
        Ok(rx)
    }

    /// Off the executors only (start-up, CLI).
    pub fn call_blocking(&self, op: Op) -> Result<Reply, StoreError> {
        let rx = self.submit(op)?;
        rx.recv().map_err(|_| StoreError("the store thread has stopped".into()))?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn a_window_keeps_the_last_write_per_row() {
        let put = |key: &str, v: u8| {
            StateWrite::Put(StateRow { kind: "reg".into(), key: key.into(), value: vec![v], expires_at: 0 })
        };
        let out = last_write_per_row(vec![
            put("a", 1),
            put("b", 1),
            put("a", 2),
            StateWrite::Delete { kind: "reg".into(), key: "b".into() },
        ]);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], StateWrite::Put(r) if r.key == "a" && r.value == vec![2]));
        assert!(matches!(&out[1], StateWrite::Delete { key, .. } if key == "b"));
    }

    use super::*;
    use crate::store::sqlite::SqliteStore;

    #[test]
    fn operations_through_the_thread() {
        let h = StoreHandle::start(Box::new(SqliteStore::in_memory().unwrap())).unwrap();
        let row = PolicyRow { owner: "bob@x".into(), target: "@y".into(), presence: Some("block".into()), im: None };
        assert_eq!(h.call_blocking(Op::PutPolicy(row.clone())).unwrap(), Reply::Done(true));
        assert_eq!(h.call_blocking(Op::Policies).unwrap(), Reply::Policies(vec![row]));
        let watch = h.watch_policies().unwrap();
        let r = futures_lite::future::block_on(h.call(Op::DeletePolicy { owner: "bob@x".into(), target: "@y".into() }));
        assert_eq!(r.unwrap(), Reply::Done(true));
        assert_eq!(watch.recv_timeout(Duration::from_secs(5)).unwrap(), vec![], "watchers get the new list");
        let row = StateRow { kind: "sub".into(), key: "k".into(), value: vec![1], expires_at: u64::MAX >> 2 };
        for _ in 0..3 {
            assert!(h.write_state(StateWrite::Put(row.clone())));
        }
        assert_eq!(h.call_blocking(Op::States { now: 0 }).unwrap(), Reply::States(vec![row]));
    }
}
