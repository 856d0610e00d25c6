//! The threads that keep the pool's roster: a front end's lease keeper (renews its lease, then reads the
//! roster) and an edge's roster reader (reads only). Both block on the store, so they run on threads of their
//! own and publish the roster into a [`RosterSlot`] that cores read on their tick without waiting.
//!
//! What the rows mean is `crate::proto::membership`'s business; this file only moves them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::thread::{Op, Reply, StoreHandle};
use super::MemberRow;
use crate::proto::membership::{Member, MemberState, Roster};
use crate::shard::published::Published;

/// The latest roster read from the store, shared by the cores of one process ([`Published`]).
#[derive(Default)]
pub struct RosterSlot {
    roster: Published<Roster>,
    /// Reads that failed in a row (the store unreachable): `pool status` and the logs say so.
    pub failed_reads: AtomicU64,
}

impl std::ops::Deref for RosterSlot {
    type Target = Published<Roster>;

    fn deref(&self) -> &Published<Roster> {
        &self.roster
    }
}

/// A roster from the store's rows; a row with a state this build does not know is skipped (logged).
pub fn roster_of(rows: Vec<MemberRow>) -> Roster {
    let members = rows
        .into_iter()
        .filter_map(|r| match MemberState::parse(&r.state) {
            Some(state) => Some(Member {
                name: r.name,
                addr: r.addr,
                state,
                lease_until_ms: r.lease_until_ms,
                load: r.load,
                users: r.users,
                in_flight: r.in_flight,
            }),
            None => {
                tracing::warn!(member = %r.name, state = %r.state, "roster: unknown member state, row skipped");
                None
            }
        })
        .collect();
    Roster::new(members)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What a front end's lease keeper needs.
#[derive(Debug, Clone)]
pub struct Lease {
    pub name: String,
    pub addr: String,
    pub lease: Duration,
    pub renew: Duration,
}

/// Counters the cores feed and the lease keeper reports with each renewal.
#[derive(Default)]
pub struct MemberStats {
    /// Users this member owns now (the cores' sum, as last counted).
    pub users: AtomicU64,
    /// Requests handled since the previous renewal.
    pub load: AtomicU64,
    /// Transactions in progress (the cores' sum, as last counted on their sweeps).
    pub in_flight: AtomicU64,
    /// Set when the process stops cleanly: the next renewal gives the lease up (state "gone").
    pub leaving: std::sync::atomic::AtomicBool,
}

fn read_roster(store: &StoreHandle, slot: &RosterSlot) {
    match store.call_blocking(Op::Members) {
        Ok(Reply::Members(rows)) => {
            slot.failed_reads.store(0, Ordering::Relaxed);
            slot.publish(roster_of(rows));
        }
        Ok(other) => tracing::error!(?other, "roster: unexpected store reply"),
        Err(e) => {
            let n = slot.failed_reads.fetch_add(1, Ordering::Relaxed) + 1;
            // The last roster stays published: its leases run out on their own if the store stays away.
            tracing::warn!(error = %e, failed_reads = n, "roster: cannot read the members");
        }
    }
}

/// Renews `lease` every `lease.renew` and publishes the roster after each renewal, until `stats.leaving` is set
/// (then gives the lease up and ends).
pub fn start_lease_keeper(
    store: StoreHandle,
    lease: Lease,
    slot: Arc<RosterSlot>,
    stats: Arc<MemberStats>,
) -> Result<thread::JoinHandle<()>, String> {
    thread::Builder::new()
        .name("parapet-lease".into())
        .spawn(move || loop {
            let leaving = stats.leaving.load(Ordering::Acquire);
            let lease_ms = u64::try_from(lease.lease.as_millis()).unwrap_or(u64::MAX);
            let row = MemberRow {
                name: lease.name.clone(),
                addr: lease.addr.clone(),
                state: if leaving { "gone" } else { "active" }.into(),
                lease_until_ms: if leaving { 0 } else { now_ms().saturating_add(lease_ms) },
                users: stats.users.load(Ordering::Relaxed),
                load: stats.load.swap(0, Ordering::Relaxed),
                in_flight: stats.in_flight.load(Ordering::Relaxed),
            };
            if let Err(e) = store.call_blocking(Op::RenewMember(row)) {
                tracing::warn!(error = %e, member = %lease.name, "lease: not renewed");
            }
            if leaving {
                return;
            }
            read_roster(&store, &slot);
            thread::sleep(lease.renew);
        })
        .map_err(|e| format!("cannot start the lease thread: {e}"))
}

/// Reads the roster every `every` (an edge, which holds no lease).
pub fn start_roster_reader(
    store: StoreHandle,
    slot: Arc<RosterSlot>,
    every: Duration,
) -> Result<thread::JoinHandle<()>, String> {
    thread::Builder::new()
        .name("parapet-roster".into())
        .spawn(move || loop {
            read_roster(&store, &slot);
            thread::sleep(every);
        })
        .map_err(|e| format!("cannot start the roster thread: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proto::membership::owner;
    use crate::store::sqlite::SqliteStore;

    fn wait_for(slot: &RosterSlot, what: &str, ok: impl Fn(&Roster) -> bool) -> Arc<Roster> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = slot.get();
            if ok(&r) {
                return r;
            }
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}: {r:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn leases_make_a_shared_roster_and_a_stopped_member_leaves_it() {
        let dir = std::env::temp_dir().join(format!("parapet-lease-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("p.db");
        let open = || StoreHandle::start(Box::new(SqliteStore::open(&path).unwrap())).unwrap();
        let keep = |name: &str| {
            let slot = Arc::new(RosterSlot::default());
            let stats = Arc::new(MemberStats::default());
            let lease = Lease {
                name: name.into(),
                addr: "127.0.0.1:5071".into(),
                lease: Duration::from_millis(600),
                renew: Duration::from_millis(100),
            };
            let h = start_lease_keeper(open(), lease, slot.clone(), stats.clone()).unwrap();
            (slot, stats, h)
        };
        let (s1, _st1, _h1) = keep("fe1");
        let (_s2, st2, h2) = keep("fe2");
        let edge = Arc::new(RosterSlot::default());
        start_roster_reader(open(), edge.clone(), Duration::from_millis(50)).unwrap();
        let both = |r: &Roster| r.eligible(now_ms()).count() == 2;
        let at_fe1 = wait_for(&s1, "both members at fe1", both);
        let at_edge = wait_for(&edge, "both members at the edge", both);
        let now = now_ms();
        for u in ["alice@x", "bob@x", "carol@x", "dave@x"] {
            assert_eq!(owner(u, &at_fe1, now).map(|m| &m.name), owner(u, &at_edge, now).map(|m| &m.name));
        }
        st2.leaving.store(true, Ordering::Release);
        h2.join().unwrap();
        let r = wait_for(&edge, "fe2 gone", |r| r.eligible(now_ms()).map(|m| m.name.as_str()).eq(["fe1"]));
        assert_eq!(r.get("fe2").unwrap().state_at(now_ms()), MemberState::Gone);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
