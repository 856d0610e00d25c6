//! This front end as a member of an enterprise pool (`[pool.member]`): its lease in the store, the roster it
//! reads back, and the nonce key every member shares. The ownership rule itself is
//! `crate::proto::membership`; the threads are `crate::store::members`.

use std::sync::Arc;
use std::time::Duration;

use super::PoolSettings;
use crate::config::membership::MemberConfig;
use crate::store::members::{start_lease_keeper, Lease, MemberStats, RosterSlot};
use crate::store::thread::{Op, Reply, StoreHandle};

/// The roster as this process last read it, and the counters its lease reports.
#[derive(Default, Clone)]
pub struct Membership {
    pub roster: Arc<RosterSlot>,
    pub stats: Arc<MemberStats>,
}

/// What a clean stop needs to give the lease up ([`leave`]).
static LEAVE: std::sync::OnceLock<(StoreHandle, Lease, Arc<MemberStats>)> = std::sync::OnceLock::new();

/// A clean stop, once the cores have drained (their users written out): the lease is given up at once, so the
/// others take this member's users now rather than when the lease runs out. Blocking: not on an executor.
pub fn leave() {
    let Some((store, lease, stats)) = LEAVE.get() else { return };
    stats.leaving.store(true, std::sync::atomic::Ordering::Release);
    let row = crate::store::MemberRow {
        name: lease.name.clone(),
        addr: lease.addr.clone(),
        state: "gone".into(),
        lease_until_ms: 0,
        users: 0,
        load: 0,
        in_flight: 0,
    };
    match store.call_blocking(Op::RenewMember(row)) {
        Ok(_) => tracing::info!(member = %lease.name, "pool member: lease given up"),
        Err(e) => tracing::warn!(member = %lease.name, error = %e, "pool member: lease not given up (it runs out)"),
    }
}

/// Starts the lease keeper: the member appears in the roster within one renewal.
pub fn start(m: &MemberConfig, settings: &PoolSettings) -> Result<(), String> {
    let lease = Lease {
        name: m.name.clone(),
        addr: m.addr.to_string(),
        lease: Duration::from_millis(m.lease_ms),
        renew: Duration::from_millis(m.renew_ms),
    };
    tracing::info!(member = %m.name, addr = %m.addr, lease_ms = m.lease_ms, "pool member: lease kept in the store");
    let ms = &settings.membership;
    crate::mgmt::pool_admin::serve_roster(ms.roster.clone());
    let _ = LEAVE.set((settings.store.clone(), lease.clone(), ms.stats.clone()));
    start_lease_keeper(settings.store.clone(), lease, ms.roster.clone(), ms.stats.clone()).map(drop)
}

/// The pool's nonce key: the first member's random one, read back by every other (blocking: start-up only).
pub fn shared_nonce_secret(store: &StoreHandle, candidate: [u8; 32]) -> Result<[u8; 32], String> {
    let op = Op::SharedSecret { name: "digest-nonce".into(), candidate: candidate.to_vec() };
    match store.call_blocking(op) {
        Ok(Reply::Secret(v)) => {
            <[u8; 32]>::try_from(v.as_slice()).map_err(|_| "store: the pool's nonce secret is not 32 bytes".into())
        }
        Ok(other) => Err(format!("store: unexpected reply to the nonce secret: {other:?}")),
        Err(e) => Err(format!("{e} (reading the pool's shared nonce secret)")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pool::digest::{NonceCheck, NonceKeeper};
    use crate::store::sqlite::SqliteStore;

    #[test]
    fn members_share_the_nonce_key_so_a_nonce_is_authentic_at_each() {
        let dir = std::env::temp_dir().join(format!("parapet-nonce-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("p.db");
        let open = || StoreHandle::start(Box::new(SqliteStore::open(&path).unwrap())).unwrap();
        let a = shared_nonce_secret(&open(), [1; 32]).unwrap();
        let b = shared_nonce_secret(&open(), [2; 32]).unwrap();
        assert_eq!(a, b);
        let mut fe1 = NonceKeeper::new(a, 0, 300, 16);
        let fe2 = NonceKeeper::new(b, 0, 300, 16);
        let nonce = fe1.issue(1_000);
        // Stale, not Invalid: the client retries with the fresh nonce of the 401 (stale=true) without asking
        // its user, and nothing counts toward the lockout.
        assert!(matches!(fe2.peek(nonce.as_bytes(), Some(1), 1_000), NonceCheck::Stale));
        assert!(matches!(fe1.peek(nonce.as_bytes(), Some(1), 1_000), NonceCheck::Fresh));
        let other = NonceKeeper::new([2; 32], 0, 300, 16);
        assert!(
            matches!(other.peek(nonce.as_bytes(), Some(1), 1_000), NonceCheck::Invalid),
            "with a key of its own a front end would refuse a nonce of another as forged"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
