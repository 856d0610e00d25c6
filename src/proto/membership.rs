//! The pool's members and who owns which user: the roster every edge and front end reads from the store, and
//! the owner of an AOR by rendezvous (highest-random-weight) hashing over the members that may own users.
//!
//! Sans-I/O: values in, values out, the clock an argument. It sits in `proto` because the edge (routing each
//! request to the owner) and the pool (answering only for its own users) must compute the same owner from the
//! same roster; neither imports the other.
//!
//! Why rendezvous hashing: each (member, user) pair gets a weight from a keyed hash and the heaviest eligible
//! member owns the user. Removing a member moves exactly the users it owned (everyone else's heaviest member is
//! unchanged), and adding it back moves exactly those users back; no ring, no virtual nodes, no state to agree
//! on beyond the roster itself. The cost is one hash per member per lookup, and pools have a handful of members.
//!
//! Liveness: a member renews a lease in the store (`lease_until_ms`, unix milliseconds); a member whose lease
//! has run out is `gone` for routing whatever its stored state says. Drained members keep renewing but own no one.
//! The lease compares clocks of different hosts with the store's rows: members' clocks must agree to well under
//! the lease (NTP does).

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

/// Fixed key of the ownership hash. Not a secret: every process of every version must compute the same owner,
/// and a user cannot choose a member by it any more than by the AOR it already has.
const OWNER_HASH_KEY: [u8; 16] = *b"parapet-owner-v1";

/// Members one roster holds at most (a roster read with more is cut, the rest logged by the reader).
pub const MEMBERS_MAX: usize = 64;

/// What an operator (or the member itself) said about a member; `Gone` is also what an expired lease reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Takes ownership of users.
    Active,
    /// Keeps serving its in-flight transactions, owns no one: its users move to the others.
    Draining,
    /// Stopped cleanly, or its lease ran out.
    Gone,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Draining => "draining",
            MemberState::Gone => "gone",
        }
    }

    /// The stored spelling back; None for anything else (a row written by a newer version, or damaged).
    pub fn parse(s: &str) -> Option<MemberState> {
        match s {
            "active" => Some(MemberState::Active),
            "draining" => Some(MemberState::Draining),
            "gone" => Some(MemberState::Gone),
            _ => None,
        }
    }
}

/// One member of the pool as the roster knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Unique in the pool; the name of its certificate and of its lease row.
    pub name: String,
    /// Where edges reach it (`host:port`).
    pub addr: String,
    /// The stored state; see [`Member::state_at`] for what it means now.
    pub state: MemberState,
    /// Unix milliseconds; the member is gone after this unless it renews.
    pub lease_until_ms: u64,
    /// Requests it handled in its last renewal period (for `pool status`; routing ignores it: ownership must
    /// not move with load, or every busy moment would hand users over).
    pub load: u64,
    /// Users it owned at its last renewal (for `pool status`).
    pub users: u64,
    /// Transactions it had in progress at its last renewal (a drained member can be stopped at 0).
    pub in_flight: u64,
}

impl Member {
    /// The state now: an expired lease is `Gone` whatever was stored.
    pub fn state_at(&self, now_ms: u64) -> MemberState {
        if self.lease_until_ms <= now_ms {
            MemberState::Gone
        } else {
            self.state
        }
    }

    /// Whether it may own users now.
    pub fn may_own(&self, now_ms: u64) -> bool {
        self.state_at(now_ms) == MemberState::Active
    }
}

/// The members of the pool, ordered by name (so that every reader sees the same roster the same way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    members: Vec<Member>,
}

impl Roster {
    /// A roster from rows in any order; duplicates by name keep the later lease; at most [`MEMBERS_MAX`].
    pub fn new(mut members: Vec<Member>) -> Roster {
        members.sort_by(|a, b| a.name.cmp(&b.name).then(b.lease_until_ms.cmp(&a.lease_until_ms)));
        members.dedup_by(|later, kept| later.name == kept.name);
        members.truncate(MEMBERS_MAX);
        Roster { members }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn get(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The members that may own users now (active, lease running).
    pub fn eligible(&self, now_ms: u64) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.may_own(now_ms))
    }
}

/// The weight of `member` for `aor_key`: the heaviest eligible member owns the user.
pub fn weight(member: &str, aor_key: &str) -> u64 {
    let mut h = SipHasher13::new_with_key(&OWNER_HASH_KEY);
    h.write(member.as_bytes());
    // A separator no name contains, so ("ab", "c") and ("a", "bc") differ.
    h.write_u8(0xff);
    h.write(aor_key.as_bytes());
    h.finish()
}

/// The owner of `aor_key` now among the members `healthy` admits: the heaviest eligible one; ties (a 64-bit
/// collision) go to the smaller name. None when no member may own users.
pub fn owner_among<'r>(
    aor_key: &str,
    roster: &'r Roster,
    now_ms: u64,
    mut healthy: impl FnMut(&Member) -> bool,
) -> Option<&'r Member> {
    let mut best: Option<(u64, &Member)> = None;
    for m in roster.eligible(now_ms) {
        if !healthy(m) {
            continue;
        }
        let w = weight(&m.name, aor_key);
        // Members come ordered by name, so strict `>` keeps the smaller name on a tie.
        if best.is_none_or(|(bw, _)| w > bw) {
            best = Some((w, m));
        }
    }
    best.map(|(_, m)| m)
}

/// The owner of `aor_key` now by the roster alone (what a front end computes; the edge also excludes members
/// failing its probes, [`owner_among`]).
pub fn owner<'r>(aor_key: &str, roster: &'r Roster, now_ms: u64) -> Option<&'r Member> {
    owner_among(aor_key, roster, now_ms, |_| true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn member(name: &str, state: MemberState) -> Member {
        Member {
            name: name.into(),
            addr: format!("127.0.0.1:{}", 5000 + name.len()),
            state,
            lease_until_ms: NOW + 3_000,
            load: 0,
            in_flight: 0,
            users: 0,
        }
    }

    fn roster(names: &[&str]) -> Roster {
        Roster::new(names.iter().map(|n| member(n, MemberState::Active)).collect())
    }

    fn users() -> Vec<String> {
        (0..2_000).map(|i| format!("user{i}@example.com")).collect()
    }

    fn owners(r: &Roster) -> Vec<Option<String>> {
        users().iter().map(|u| owner(u, r, NOW).map(|m| m.name.clone())).collect()
    }

    #[test]
    fn one_owner_per_user_and_a_fair_spread() {
        let r = roster(&["fe1", "fe2", "fe3"]);
        let o = owners(&r);
        assert!(o.iter().all(Option::is_some), "every user has an owner");
        for name in ["fe1", "fe2", "fe3"] {
            let n = o.iter().filter(|x| x.as_deref() == Some(name)).count();
            assert!((500..=830).contains(&n), "{name} owns {n} of 2000");
        }
    }

    #[test]
    fn deterministic_whatever_the_row_order() {
        let a = roster(&["fe1", "fe2", "fe3"]);
        let b = roster(&["fe3", "fe1", "fe2"]);
        assert_eq!(a, b);
        assert_eq!(owners(&a), owners(&b));
        assert_eq!(owners(&a), owners(&a.clone()));
    }

    #[test]
    fn removing_a_member_moves_only_its_users_and_re_adding_moves_them_back() {
        let all = roster(&["fe1", "fe2", "fe3"]);
        let without = roster(&["fe1", "fe3"]);
        let (before, after) = (owners(&all), owners(&without));
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b.as_deref() == Some("fe2") {
                moved += 1;
                assert_ne!(a.as_deref(), Some("fe2"));
            } else {
                assert_eq!(a, b, "a user of another member stayed put");
            }
        }
        assert!(moved > 0);
        let back = owners(&all);
        let changed_back = after.iter().zip(&back).filter(|(a, b)| a != b).count();
        assert_eq!(changed_back, moved, "re-adding moves exactly its users back");
        assert_eq!(back, before);
    }

    #[test]
    fn draining_gone_and_expired_members_own_no_one() {
        let mut ms = vec![
            member("fe1", MemberState::Active),
            member("fe2", MemberState::Draining),
            member("fe3", MemberState::Gone),
        ];
        let mut expired = member("fe4", MemberState::Active);
        expired.lease_until_ms = NOW;
        ms.push(expired);
        let r = Roster::new(ms);
        assert!(owners(&r).iter().all(|o| o.as_deref() == Some("fe1")));
        assert_eq!(r.get("fe4").unwrap().state_at(NOW), MemberState::Gone);
        assert_eq!(r.get("fe2").unwrap().state_at(NOW), MemberState::Draining);
        assert_eq!(owner("bob@x", &Roster::new(vec![member("fe2", MemberState::Draining)]), NOW), None);
        assert_eq!(owner("bob@x", &Roster::default(), NOW), None);
    }

    #[test]
    fn an_unhealthy_member_is_skipped_like_a_removed_one() {
        let all = roster(&["fe1", "fe2", "fe3"]);
        let without = roster(&["fe1", "fe3"]);
        for u in users().iter().take(300) {
            let skipped = owner_among(u, &all, NOW, |m| m.name != "fe2").map(|m| &m.name);
            assert_eq!(skipped, owner(u, &without, NOW).map(|m| &m.name));
        }
    }

    #[test]
    fn duplicate_rows_keep_the_later_lease() {
        let mut old = member("fe1", MemberState::Draining);
        old.lease_until_ms = NOW - 1;
        let r = Roster::new(vec![old, member("fe1", MemberState::Active)]);
        assert_eq!(r.members().len(), 1);
        assert!(r.get("fe1").unwrap().may_own(NOW));
    }

    #[test]
    fn states_round_trip() {
        for s in [MemberState::Active, MemberState::Draining, MemberState::Gone] {
            assert_eq!(MemberState::parse(s.as_str()), Some(s));
        }
        assert_eq!(MemberState::parse("maybe"), None);
    }
}
