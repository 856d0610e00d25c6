//! `parapet pool status|drain|undrain`: the pool's roster as the store holds it, and the operator's say about
//! a member. Reads and writes the store named by a pool config (`[pool] database`), like `policy`; runs on
//! no executor, so it may block.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::proto::membership::{MemberState, Roster};
use crate::store::members::{now_ms, roster_of, RosterSlot};
use crate::store::Store;

#[derive(clap::Subcommand)]
pub enum PoolCmd {
    /// Members, their state (active, draining, gone), lease left, users owned, load.
    Status,
    /// The member takes no new ownership: its users move to the others (written out first, loaded by their new
    /// owners). Waits (up to --wait seconds) until the member reports holding no one: then it can be stopped.
    Drain {
        member: String,
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// The member owns users again.
    Undrain { member: String },
}

static ROSTER: std::sync::OnceLock<std::sync::Arc<RosterSlot>> = std::sync::OnceLock::new();

/// The roster this process reads (a pool member's lease keeper, an edge's roster reader), for `GET /pool/status`.
pub fn serve_roster(slot: std::sync::Arc<RosterSlot>) {
    let _ = ROSTER.set(slot);
}

/// `GET /pool/status`: the roster as this process last read it (the table of `parapet pool status`).
pub fn http_status() -> (&'static str, &'static str, String) {
    match ROSTER.get() {
        Some(slot) => ("200 OK", "text/plain", status_text(&slot.get(), now_ms())),
        None => ("404 Not Found", "text/plain", "this process is not part of an enterprise pool\n".to_string()),
    }
}

fn open(config: &Path) -> Result<Box<dyn Store>, String> {
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let pool = cfg.pool.as_ref().ok_or_else(|| format!("{}: no [pool] section", config.display()))?;
    crate::store::open(cfg.store.as_ref(), &pool.database).map_err(|e| e.to_string())
}

fn roster(store: &mut dyn Store) -> Result<Roster, String> {
    Ok(roster_of(store.members().map_err(|e| e.to_string())?))
}

/// The status table (tab-separated, a header line first).
pub fn status_text(roster: &Roster, now_ms: u64) -> String {
    let mut out = String::from("# member\taddr\tstate\tlease_left_ms\tusers\tload\n");
    for m in roster.members() {
        let left = m.lease_until_ms.saturating_sub(now_ms);
        let state = m.state_at(now_ms).as_str();
        out.push_str(&format!("{}\t{}\t{state}\t{left}\t{}\t{}\n", m.name, m.addr, m.users, m.load));
    }
    out
}

/// Renewed after the drain (so it read its new state), holding no one (so it wrote each of its users out for
/// their new owners), and with no transaction in progress (a request it forwarded still waits for its answer).
fn drained(m: &crate::proto::membership::Member, drain_lease_before: u64) -> bool {
    m.lease_until_ms > drain_lease_before && m.users == 0 && m.in_flight == 0
}

pub fn run(config: &Path, cmd: PoolCmd) -> Result<String, String> {
    let mut store = open(config)?;
    match cmd {
        PoolCmd::Status => Ok(status_text(&roster(&mut *store)?, now_ms())),
        PoolCmd::Undrain { member } => {
            set_state(&mut *store, &member, MemberState::Active)?;
            Ok(format!("{member}: active (owns users again from its next lease renewal)\n"))
        }
        PoolCmd::Drain { member, wait } => {
            let before = set_state(&mut *store, &member, MemberState::Draining)?;
            // The member's own renewal after ours proves it is alive and read its new state with the roster.
            let deadline = Instant::now() + Duration::from_secs(wait);
            loop {
                let r = roster(&mut *store)?;
                let m = r.get(&member).ok_or_else(|| format!("{member}: left the roster"))?;
                let now = now_ms();
                if m.state_at(now) == MemberState::Gone {
                    return Ok(format!("{member}: draining, and its lease has run out: it can be stopped\n"));
                }
                if drained(m, before) {
                    return Ok(format!(
                        "{member}: drained: it owns no users, their state is in the store for their new owners, \
                         and no transaction is in progress there; it can be stopped\n"
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(if m.lease_until_ms > before {
                        format!(
                            "{member}: draining, but it still holds {} users and {} transactions in progress after \
                             {wait} s (is it the only active member? no other may own them)",
                            m.users, m.in_flight
                        )
                    } else {
                        format!("{member}: marked draining, but it did not renew its lease within {wait} s")
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Sets the state; returns the member's lease expiry at that moment. An unknown member is an error naming the
/// known ones.
fn set_state(store: &mut dyn Store, member: &str, state: MemberState) -> Result<u64, String> {
    let r = roster(store)?;
    let Some(m) = r.get(member) else {
        let known: Vec<_> = r.members().iter().map(|m| m.name.as_str()).collect();
        return Err(format!("{member}: no such pool member (members: {})", known.join(", ")));
    };
    let until = m.lease_until_ms;
    store.set_member_state(member, state.as_str()).map_err(|e| e.to_string())?;
    Ok(until)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proto::membership::Member;

    #[test]
    fn status_shows_the_state_now() {
        let m = |name: &str, state, until| Member {
            name: name.into(),
            addr: "127.0.0.1:5062".into(),
            state,
            lease_until_ms: until,
            load: 4,
            in_flight: 0,
            users: 2,
        };
        let r = Roster::new(vec![
            m("fe1", MemberState::Active, 3_000),
            m("fe2", MemberState::Draining, 2_000),
            m("fe3", MemberState::Active, 500),
        ]);
        let t = status_text(&r, 1_000);
        assert!(t.contains("fe1\t127.0.0.1:5062\tactive\t2000\t2\t4\n"), "{t}");
        assert!(t.contains("fe2\t127.0.0.1:5062\tdraining\t1000\t"), "{t}");
        assert!(t.contains("fe3\t127.0.0.1:5062\tgone\t0\t"), "an expired lease reads as gone: {t}");
    }

    #[test]
    fn a_drained_member_is_stoppable_only_once_its_transactions_are_done() {
        let m = |until, users, in_flight| Member {
            name: "fe2".into(),
            addr: String::new(),
            state: MemberState::Draining,
            lease_until_ms: until,
            load: 0,
            in_flight,
            users,
        };
        assert!(!drained(&m(1_000, 0, 0), 1_000), "not renewed since the drain: it may not know yet");
        assert!(!drained(&m(2_000, 3, 0), 1_000), "still holds users");
        assert!(!drained(&m(2_000, 0, 2), 1_000), "transactions still in progress");
        assert!(drained(&m(2_000, 0, 0), 1_000));
    }
}
