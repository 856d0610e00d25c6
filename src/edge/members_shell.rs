//! The I/O half of routing to pool members ([`crate::edge::members`] is the logic): the member connectors, the
//! roster reader thread and the hand-over of each roster to the core, the probes' timing and the links' state.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::Shell;
use crate::config::roster::RosterConfig;
use crate::config::store::StoreConfig;
use crate::edge::EdgeSettings;
use crate::net::connector::Connector;
use crate::store::members::now_ms;
use crate::store::members::RosterSlot;
use crate::store::thread::StoreHandle;

/// One connector per configured member, in configured order.
pub(super) fn connectors(s: &EdgeSettings) -> Vec<Rc<Connector>> {
    s.pool_member_peers
        .iter()
        .map(|p| Rc::new(Connector::new(p.addr, &p.name, s.pool_tls.clone(), s.handshake_timeout)))
        .collect()
}

/// Reads the members' leases from a pool's store on a thread of its own (a blocking read, never on an
/// executor); each core takes the roster on its tick. The store is `store` (PostgreSQL) when given, else the
/// SQLite file `database`; `key` names the roster's table in errors.
pub(in crate::edge) fn start_roster_reader(
    r: &RosterConfig,
    store: Option<&StoreConfig>,
    slot: Arc<RosterSlot>,
    key: &str,
) -> Result<(), String> {
    let store = crate::store::open(store, &r.database).map_err(|e| format!("{key} database: {e}"))?;
    let handle = StoreHandle::start(store).map_err(|e| e.to_string())?;
    crate::store::members::start_roster_reader(handle, slot, Duration::from_millis(r.read_ms)).map(drop)
}

impl Shell {
    /// Hands the core each pool's roster when a newer one was read.
    pub(super) fn take_roster(self: &Rc<Self>) {
        let slot: &Arc<_> = &self.s.roster;
        let generation = slot.generation();
        if generation != self.roster_generation.get() {
            self.roster_generation.set(generation);
            let roster = slot.get();
            let wall = now_ms();
            self.step(|core, now| core.on_roster(roster, wall, now));
        }
        for (pool, (slot, seen)) in self.s.home_rosters.iter().zip(&self.home_roster_generations).enumerate() {
            let generation = slot.generation();
            if generation != seen.get() {
                seen.set(generation);
                let roster = slot.get();
                let wall = now_ms();
                self.step(|core, now| core.on_home_pool_roster(pool, roster, wall, now));
            }
        }
    }

    /// Hands the core the table of home pools when a newer one was read ([`crate::edge::homes_reader`]).
    pub(super) fn take_homes(self: &Rc<Self>) {
        let generation = self.s.homes.generation();
        if generation == self.homes_generation.get() {
            return;
        }
        self.homes_generation.set(generation);
        let homes = self.s.homes.get();
        self.step(|core, _| core.on_homes(homes));
    }

    /// The links' state to the core, then a probe to each member; the roster too (probes run more often than
    /// the sweep, so a drained or expired member is noticed sooner).
    pub(super) fn probe_members(self: &Rc<Self>) {
        self.take_roster();
        for (i, c) in self.members.iter().enumerate() {
            if c.is_up() {
                self.step(|core, now| core.on_member_link(i, true, now));
            }
        }
        self.step(|core, _| core.on_probe_tick());
    }

    /// After a send failed: every member whose link is down is marked so; whether any was not already.
    pub(super) fn mark_members_down(self: &Rc<Self>) -> bool {
        let mut marked = false;
        for (i, c) in self.members.iter().enumerate() {
            if c.is_down() {
                marked |= self.step(|core, now| core.on_member_link(i, false, now));
            }
        }
        marked
    }
}
