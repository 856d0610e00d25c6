//! Which users this front end answers for, in an enterprise pool (`[pool.member]`): a user's soft state
//! (registrations, publications, the subscriptions to it, with their dialog state and CSeqs) is in memory on
//! the front end that owns the user, and in the store for the others.
//!
//! - Gaining a user: before the first request for a local user this core does not hold is answered, the user's
//!   rows are read from the store (`Op::StatesOf`) and restored; requests arriving meanwhile wait (bounded; a
//!   full wait list or a failed read answers 503 with Retry-After). After a change of the roster, the users
//!   this member gained are loaded without waiting for a request ([`GAIN_DELAY`] later, so that the old
//!   owner's flush is committed first), and their watchers get a NOTIFY with the state as it is.
//! - Losing a user (the roster gives it to another member, or this member drains): its state is written out at
//!   once (bindings, publications, each subscription with its exact CSeq) and dropped from memory.
//! - A request for a user the roster gives to another member is **answered here anyway** (after loading the
//!   user): the edge routed it by a roster at most one read older or newer than ours, and answering is the only
//!   way the request gets exactly one final answer without a retry by the client. The user is handed over again
//!   by the next sweep (every 500 ms) while the roster gives it to the other member.
//!
//! A Standard Edition pool (no `[pool.member]`) holds every user from the start and loads nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::core::{Action, PoolCore, Resume, Timer};
use super::{aor_of, Stage};
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::proto::membership::{owner, Roster};
use crate::shard::shard_for;
use crate::sip::{HeaderName, Message, Method, Uri};
use crate::store::members::MemberStats;
use crate::store::thread::{Op, Reply};
use crate::store::{StateRow, StoreError};

/// Requests waiting for their user's state, per core; more get 503.
pub const WAITING_MAX: usize = 4_096;
/// After a roster change, how long before the gained users are loaded (the old owner's flush is a batch of the
/// store thread, committed within `store::thread::BATCH_WINDOW`).
pub const GAIN_DELAY: Duration = Duration::from_millis(250);

/// One core's share of ownership.
pub struct Ownership {
    /// This member's name; None: a single front end, which holds every user.
    me: Option<String>,
    roster: Arc<Roster>,
    /// The roster's wall-clock reading and the step clock then (leases compare with the wall clock).
    anchor: Option<(u64, Instant)>,
    /// The members that may own users, as the last hand-over saw them ([`PoolCore::follow_roster`]).
    eligible_seen: Vec<String>,
    /// Users whose state is in memory here.
    held: HashSet<String>,
    /// Users being loaded, and the requests waiting for them.
    loading: HashMap<String, Vec<(Stage, ConnId, Bytes)>>,
    waiting: usize,
    stats: Arc<MemberStats>,
    /// This core's share of [`MemberStats::in_flight`] as last reported.
    in_flight_reported: u64,
    /// The generation of this member's claim on each held user: its soft-state writes carry it, and the store
    /// refuses them once another member has claimed the user since ([`crate::store::Store::claim_user`]).
    gens: HashMap<String, u64>,
}

impl Ownership {
    pub fn new(me: Option<String>, stats: Arc<MemberStats>) -> Ownership {
        Ownership {
            me,
            roster: Arc::new(Roster::default()),
            anchor: None,
            eligible_seen: Vec::new(),
            held: HashSet::new(),
            loading: HashMap::new(),
            waiting: 0,
            stats,
            in_flight_reported: 0,
            gens: HashMap::new(),
        }
    }

    fn wall_ms(&self, now: Instant) -> u64 {
        let Some((wall, at)) = self.anchor else { return 0 };
        let since = u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX);
        wall.saturating_add(since)
    }

    /// The members that may own users now, by the roster and the leases' times.
    fn eligible_now(&self, now: Instant) -> Vec<String> {
        self.roster.eligible(self.wall_ms(now)).map(|m| m.name.clone()).collect()
    }

    /// Whether the roster gives `aor` to another member now (None, an empty roster, is nobody's: kept).
    fn owned_elsewhere(&self, aor: &str, now: Instant) -> bool {
        let Some(me) = &self.me else { return false };
        owner(aor, &self.roster, self.wall_ms(now)).is_some_and(|m| &m.name != me)
    }

    pub(crate) fn owned_here(&self, aor: &str, now: Instant) -> bool {
        let Some(me) = &self.me else { return true };
        owner(aor, &self.roster, self.wall_ms(now)).is_some_and(|m| &m.name == me)
    }

    /// The member the roster gives `aor` to now (None: a single front end, or nobody may own).
    pub fn owner_now(&self, aor: &str, now: Instant) -> Option<String> {
        self.me.as_ref()?;
        owner(aor, &self.roster, self.wall_ms(now)).map(|m| m.name.clone())
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether this front end is a member of an enterprise pool (other members own some of the users).
    pub fn is_member(&self) -> bool {
        self.me.is_some()
    }

    pub fn holds(&self, aor: &str) -> bool {
        self.me.is_none() || self.held.contains(aor)
    }
}

impl PoolCore {
    /// Whether this core has the user's state in memory (a single front end: everyone).
    pub fn holds_user(&self, aor: &str) -> bool {
        self.own.holds(aor)
    }

    /// The local user whose state a request at `stage` touches on this core, if any (see [`super::Stage`]).
    fn stateful_user(&self, stage: Stage, msg: &Message) -> Option<String> {
        let uri = match (stage, msg.method()) {
            (Stage::Auth, Some(Method::Register)) => Some(msg.to().uri),
            (Stage::Auth, _) => None,
            (Stage::Route | Stage::FlowClosed, _) => msg.request_uri().and_then(|r| Uri::parse(r).ok()),
        }?;
        if !self.is_local_host(&uri) {
            return None;
        }
        let user = uri.user_unescaped();
        // A contact list (`alice+contacts`) is state of its own, held by the owner of the list's AOR (the key the
        // edge routes it by), not by alice's.
        let named = match super::presence::rls::list_owner(&user) {
            Some(alias) => self.s.users.get(alias.as_bytes()).is_some(),
            None => self.s.users.get(&user).is_some(),
        };
        named.then(|| aor_of(&uri))
    }

    /// Whether the request may go on now; otherwise it waits for its user's state (or was answered 503).
    pub(crate) fn user_ready(&mut self, stage: Stage, origin: ConnId, msg: &Message) -> bool {
        if self.own.me.is_none() {
            return true;
        }
        let Some(aor) = self.stateful_user(stage, msg) else { return true };
        self.own.stats.load.fetch_add(1, Ordering::Relaxed);
        if self.own.held.contains(&aor) {
            return true;
        }
        let is_list = aor.split('@').next().and_then(|u| super::presence::rls::list_owner(u.as_bytes())).is_some();
        if is_list
            && msg.method() == Some(&Method::Notify)
            && crate::proto::from_member(msg)
            && self.own.owned_elsewhere(&aor, self.now.mono)
        {
            // A contact's NOTIFY for a contact list another member holds now, sent here by an edge that has not
            // read the roster yet (or in a back-end dialog this member ended when it handed the list over).
            // Loading the list to answer it would make two members notify its subscriber in one dialog; its
            // owner subscribes to every contact afresh when it takes the list, so the state is not lost.
            bump(&self.pstats.list_notifies_elsewhere);
            self.reply(origin, msg, 200, "OK", &[]);
            return false;
        }
        if self.own.waiting >= WAITING_MAX {
            self.reply(origin, msg, 503, "Service Unavailable: loading", &[(HeaderName::RetryAfter, b"1")]);
            return false;
        }
        self.own.waiting += 1;
        let first = !self.own.loading.contains_key(&aor);
        self.own.loading.entry(aor.clone()).or_default().push((stage, origin, msg.bytes().clone()));
        if first {
            self.claim_and_load(aor);
        }
        false
    }

    /// Claims a user in the store, then loads its state ([`Op::ClaimAndLoad`]): the old owner's writes that
    /// arrive after the claim are refused, so nothing it writes late overwrites what is loaded here.
    fn claim_and_load(&mut self, aor: String) {
        let now = self.now.secs;
        let op = match &self.own.me {
            Some(member) => Op::ClaimAndLoad { aor: aor.clone(), member: member.clone(), now },
            None => Op::StatesOf { aor: aor.clone(), now },
        };
        self.push(Action::StoreCall { op, then: Resume::UserLoad { aor } });
    }

    /// The fence a soft-state write of `aor` carries (None: not claimed here, written as is).
    pub(crate) fn fence_of(&self, aor: &str) -> Option<u64> {
        self.own.gens.get(aor).copied()
    }

    /// The store answered a user's load: restore, hold, and let the waiting requests go on in order.
    pub(crate) fn user_loaded(&mut self, aor: String, reply: Result<Reply, StoreError>) {
        let waiting = self.own.loading.remove(&aor).unwrap_or_default();
        self.own.waiting = self.own.waiting.saturating_sub(waiting.len());
        match reply {
            Ok(Reply::States(rows)) => self.hold(&aor, rows),
            Ok(Reply::Claimed { gen, rows }) => {
                self.own.gens.insert(aor.clone(), gen);
                self.hold(&aor, rows);
            }
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(r) => format!("unexpected reply {r:?}"),
                };
                tracing::warn!(%aor, error = %why, "cannot load a user's state: its requests get 503");
                for (_, origin, bytes) in waiting {
                    if let Ok(m) = Message::parse(bytes, &self.s.limits) {
                        self.reply(origin, &m, 503, "Service Unavailable", &[(HeaderName::RetryAfter, b"1")]);
                    }
                }
                return;
            }
        }
        for (stage, origin, bytes) in waiting {
            if let Ok(m) = Message::parse(bytes, &self.s.limits) {
                self.resume_stage(stage, origin, m);
            }
        }
    }

    fn hold(&mut self, aor: &str, rows: Vec<StateRow>) {
        if !self.own.held.insert(aor.to_string()) {
            return;
        }
        self.own.stats.users.fetch_add(1, Ordering::Relaxed);
        let restored = self.restore(rows);
        for id in &restored {
            // Saved at once past the CSeq skip: a member taking the user over after this one skips ahead from
            // here, above every NOTIFY this one sends before its next save.
            self.persist_subscription(*id);
        }
        if !restored.is_empty() {
            // The watchers hear the state as it is now, with the dialog's CSeq carried on from the store.
            self.push(Action::Timer { after: Duration::ZERO, timer: Timer::Restored(restored) });
        }
    }

    /// A roster read from the store (`wall_ms`: the wall clock when it was handed over).
    pub fn on_roster(&mut self, roster: Arc<Roster>, wall_ms: u64, now: super::core::Now) {
        self.now = now;
        if self.own.me.is_none() {
            return;
        }
        self.own.roster = roster;
        self.own.anchor = Some((wall_ms, now.mono));
        self.follow_roster();
    }

    /// After a roster read (every lease renewal): when the members that may own users are not those the last
    /// hand-over saw, hand over the users lost and, [`GAIN_DELAY`] later, load those gained. Compared with what
    /// was seen, not between two reads at one instant: a killed member stops renewing, so the reads just before
    /// and after its lease runs out hold the same row; only the clock makes it gone (and its users, and the
    /// contact lists it held, must be loaded by the others without waiting for a request). Not on the sweep: a
    /// renewal a moment late would hand users back and forth.
    pub(crate) fn follow_roster(&mut self) {
        if self.own.me.is_none() {
            return;
        }
        let eligible = self.own.eligible_now(self.now.mono);
        if eligible == self.own.eligible_seen {
            return;
        }
        self.own.eligible_seen = eligible;
        self.release_foreign();
        self.push(Action::Timer { after: GAIN_DELAY, timer: Timer::Gain });
    }

    /// On each sweep: this core's transactions in progress, into the member's count (a drain reports the member
    /// stoppable only at 0, `pool drain`).
    pub(crate) fn report_in_flight(&mut self) {
        if self.own.me.is_none() {
            return;
        }
        // Forked transactions waiting for a user's answer, and requests waiting for their user's state.
        let now = (self.txns.len() + self.own.waiting) as u64;
        let was = std::mem::replace(&mut self.own.in_flight_reported, now);
        if now > was {
            self.own.stats.in_flight.fetch_add(now - was, Ordering::Relaxed);
        } else {
            self.own.stats.in_flight.fetch_sub(was - now, Ordering::Relaxed);
        }
    }

    /// Hands over the users the roster gives to another member: after a roster change, and on every sweep (a
    /// request the edge sent by an older roster may have loaded one since).
    pub(crate) fn release_foreign(&mut self) {
        if self.own.me.is_none() {
            return;
        }
        let mono = self.now.mono;
        let lost: Vec<String> = self.own.held.iter().filter(|a| self.own.owned_elsewhere(a, mono)).cloned().collect();
        for aor in lost {
            self.release(&aor);
        }
    }

    /// Writes a user's state out and drops it from memory: another member owns it now.
    fn release(&mut self, aor: &str) {
        self.write_out_soft_state();
        let subs = &self.presence.subs;
        let mut all: Vec<u32> = subs.presence_subs_of(aor).iter().map(|s| s.id).collect();
        all.extend(subs.of_package(aor, super::presence::subscriptions::Package::Winfo));
        for id in all {
            self.persist_subscription(id);
            self.presence.dirty.remove(&id);
            let gone = self.presence.subs.remove(id);
            // A contact list's watches end with it here; the new owner watches the contacts again.
            for r in gone.and_then(|s| s.list).map(|l| l.resources).unwrap_or_default() {
                self.remote_unwatch(r.aor, id);
            }
        }
        self.registrar.forget(aor);
        self.presence.pubs.forget(aor);
        self.presence.registered.remove(aor);
        self.own.held.remove(aor);
        // After the write-out above (it carries this claim): whatever this core writes for the user from now on
        // is unfenced, and the user's next claim refuses nothing of what it wrote before.
        self.own.gens.remove(aor);
        self.own.stats.users.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(core = self.id, %aor, "user handed over to another member");
    }

    /// [`GAIN_DELAY`] after a roster change: read the soft state to find the users gained.
    pub(crate) fn gain_due(&mut self) {
        // Contacts of this core's lists may have moved too: their back-end subscriptions follow them.
        self.backend_follow_owners();
        let now = self.now.secs;
        self.push(Action::StoreCall { op: Op::States { now }, then: Resume::Gained });
    }

    /// Every live row: the users this core gained (owned here, not held nor being loaded) are restored.
    pub(crate) fn gained(&mut self, reply: Result<Reply, StoreError>) {
        let rows = match reply {
            Ok(Reply::States(rows)) => rows,
            Ok(_) | Err(_) => {
                tracing::warn!(
                    core = self.id,
                    "cannot read the soft state after a roster change: users load on demand"
                );
                return;
            }
        };
        let mut gained: HashSet<String> = HashSet::new();
        for row in rows {
            let aor = super::persist::owner_of(&row).to_string();
            if shard_for(aor.as_bytes(), self.count) != self.id
                || self.own.held.contains(&aor)
                || self.own.loading.contains_key(&aor)
                || !self.own.owned_here(&aor, self.now.mono)
            {
                continue;
            }
            gained.insert(aor);
        }
        // Each is claimed before its rows are read again: these rows were read before the claim, and the old
        // owner may have written since.
        for aor in gained {
            self.own.loading.insert(aor.clone(), Vec::new());
            self.claim_and_load(aor);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::pool::core::{CoreSettings, Now};
    use crate::pool::users::Users;
    use crate::pool::PoolStats;
    use crate::proto::membership::{Member, MemberState};
    use crate::sip::Limits;
    use crate::store::directory::{Directory, User};
    use crate::store::sqlite::SqliteStore;
    use crate::store::thread::run;
    use crate::store::{StateWrite, Store};

    const WALL: u64 = 1_700_000_000_000;
    const BOB: &str = "bob@example.com";

    /// One front end (one core) whose store actions are performed on the shared store at once.
    struct Fe {
        core: PoolCore,
        stats: Arc<MemberStats>,
        now: Now,
    }

    fn users() -> Users {
        let user = |a: &str| User { alias: a.into(), password: Some("pw".into()), ..User::default() };
        Users::from_directory(&Directory { users: vec![user("alice"), user("bob")] }, "example.com", "example.com")
    }

    impl Fe {
        fn new(name: &str, mono: Instant) -> Fe {
            let edge: SocketAddr = "127.0.0.1:5063".parse().unwrap();
            let mut s =
                CoreSettings::with_defaults("example.com", "127.0.0.1:5062".parse().unwrap(), vec![edge], users());
            s.member = Some(name.into());
            let stats = s.member_stats.clone();
            let now = Now { secs: WALL / 1000, mono };
            Fe { core: PoolCore::new(Arc::new(s), 0, 1, Arc::new(PoolStats::default()), now), stats, now }
        }

        /// Runs the step and every action it leads to (store calls answered, timers fired at once); returns
        /// what was sent to connections.
        fn step(&mut self, store: &mut SqliteStore, f: impl FnOnce(&mut PoolCore, Now)) -> Vec<Message> {
            f(&mut self.core, self.now);
            let mut sent = Vec::new();
            loop {
                let mut actions = Vec::new();
                self.core.take_actions(&mut actions);
                if actions.is_empty() {
                    return sent;
                }
                for a in actions {
                    match a {
                        Action::Send { bytes, .. } => sent.push(Message::parse(bytes, &Limits::default()).unwrap()),
                        Action::StoreWrite(w) => store.write_states(&[w]).unwrap(),
                        Action::StoreCall { op, then } => {
                            let reply = run(store, op);
                            self.core.on_store_reply(then, reply, self.now);
                        }
                        Action::Timer { timer, .. } => self.core.on_timer(timer, self.now),
                        Action::Mesh { .. } | Action::ToEdge { .. } | Action::Archive(_) => {}
                    }
                }
            }
        }

        fn roster(&mut self, store: &mut SqliteStore, r: &Arc<Roster>) {
            let r = r.clone();
            self.step(store, |c, now| c.on_roster(r, WALL, now));
        }

        fn registered(&self) -> bool {
            self.core.registrar.is_registered(BOB, self.now.secs)
        }
    }

    fn roster(states: &[(&str, MemberState)]) -> Arc<Roster> {
        let m = |(n, s): &(&str, MemberState)| Member {
            name: n.to_string(),
            addr: String::new(),
            state: *s,
            lease_until_ms: WALL + 3_000,
            load: 0,
            in_flight: 0,
            users: 0,
        };
        Arc::new(Roster::new(states.iter().map(m).collect()))
    }

    /// Bob registered before: his binding is in the store, as a front end writes it.
    fn store_with_bob() -> SqliteStore {
        let mut store = SqliteStore::in_memory().unwrap();
        let expires_at = WALL / 1000 + 600;
        let value = format!(
            "{{\"b\":[{{\"contact\":\"sip:bob@192.0.2.1:5000;transport=tls\",\"contact_params\":\"\",\
             \"instance\":null,\"reg_id\":null,\"q\":null,\"path\":[\"<sip:f1@127.0.0.1:5063;lr>\"],\
             \"call_id\":\"reg-bob\",\"cseq\":7,\"expires_at\":{expires_at}}}]}}"
        );
        let row = StateRow { kind: "reg".into(), key: BOB.into(), value: value.into_bytes(), expires_at };
        store.write_states(&[StateWrite::Put(row)]).unwrap();
        store
    }

    fn register_without_credentials() -> Message {
        let raw = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKr1\r\n\
                   From: <sip:bob@example.com>;tag=r1\r\nTo: <sip:bob@example.com>\r\nCall-ID: reg-bob\r\n\
                   CSeq: 8 REGISTER\r\nContact: <sip:bob@192.0.2.1:5000;transport=tls>\r\n\
                   Content-Length: 0\r\n\r\n";
        Message::parse(Bytes::from(raw), &Limits::default()).unwrap()
    }

    /// The two members, the one the hash gives bob to first.
    fn bobs_owner_and_other() -> (&'static str, &'static str) {
        let r = roster(&[("fe1", MemberState::Active), ("fe2", MemberState::Active)]);
        if owner(BOB, &r, WALL).unwrap().name == "fe1" {
            ("fe1", "fe2")
        } else {
            ("fe2", "fe1")
        }
    }

    /// Bob in the store, and two members: his owner (by the roster of both) and the other.
    fn bob_and_two_members() -> (SqliteStore, (&'static str, &'static str), Fe, Fe) {
        let mono = Instant::now();
        let (o, other) = bobs_owner_and_other();
        (store_with_bob(), (o, other), Fe::new(o, mono), Fe::new(other, mono))
    }

    #[test]
    fn the_owner_loads_a_gained_user_and_a_drained_one_hands_it_over() {
        let (mut store, (o, other), mut owner_fe, mut other_fe) = bob_and_two_members();
        let both = roster(&[(o, MemberState::Active), (other, MemberState::Active)]);
        owner_fe.roster(&mut store, &both);
        other_fe.roster(&mut store, &both);
        assert!(owner_fe.registered(), "the owner loaded bob after the roster change");
        assert!(!other_fe.registered(), "the other member did not");
        assert_eq!(owner_fe.stats.users.load(Ordering::Relaxed), 1);

        // The owner drains: it writes bob out and drops him; the other gains him from the store.
        let drained = roster(&[(o, MemberState::Draining), (other, MemberState::Active)]);
        owner_fe.roster(&mut store, &drained);
        assert!(!owner_fe.registered(), "a drained member holds no one");
        assert_eq!(owner_fe.stats.users.load(Ordering::Relaxed), 0);
        other_fe.roster(&mut store, &drained);
        assert!(other_fe.registered(), "the new owner has bob's binding without a new REGISTER");
        let rows = store.states_of(BOB, 0).unwrap();
        assert_eq!(rows.len(), 1, "the hand-over kept bob's row: {rows:?}");
    }

    /// bob's owner is killed: it renews its lease no more, so the rows the others read just before and just after
    /// its lease runs out are the same for it; the clock alone makes it gone. The other member loads bob then, with
    /// no request of his to make it.
    #[test]
    fn a_killed_members_users_are_loaded_by_the_others_when_its_lease_runs_out() {
        let (mut store, (o, other), _, mut other_fe) = bob_and_two_members();
        let at = |lease_until_ms: &[(&str, u64)]| {
            let m = |(n, until): &(&str, u64)| Member {
                name: n.to_string(),
                addr: String::new(),
                state: MemberState::Active,
                lease_until_ms: *until,
                load: 0,
                in_flight: 0,
                users: 0,
            };
            Arc::new(Roster::new(lease_until_ms.iter().map(m).collect()))
        };
        // Read while both renew; bob's owner dies just after renewing until WALL + 3 s.
        other_fe.roster(&mut store, &at(&[(o, WALL + 3_000), (other, WALL + 3_000)]));
        assert!(!other_fe.registered(), "bob is his owner's");
        let mut later = |fe: &mut Fe, secs: u64, roster: Arc<Roster>| {
            fe.now.mono += Duration::from_secs(secs);
            fe.now.secs += secs;
            let wall = fe.now.secs * 1000;
            fe.step(&mut store, |c, now| c.on_roster(roster, wall, now));
        };
        later(&mut other_fe, 2, at(&[(o, WALL + 3_000), (other, WALL + 5_000)]));
        assert!(!other_fe.registered(), "the dead owner's lease still runs");
        later(&mut other_fe, 2, at(&[(o, WALL + 3_000), (other, WALL + 7_000)]));
        assert!(other_fe.registered(), "loaded once the dead owner's lease ran out");
    }

    #[test]
    fn an_old_owners_late_write_behind_does_not_overwrite_the_new_owners_state() {
        let (mut store, _, mut old, mut new) = bob_and_two_members();
        let conn = ConnId { core: 0, gen: 1, slot: 3 };
        // The old owner holds bob; then the new one takes him over (a roster it read first, say).
        old.step(&mut store, |c, now| c.on_message(conn, register_without_credentials(), now));
        assert!(old.registered());
        new.step(&mut store, |c, now| c.on_message(conn, register_without_credentials(), now));
        let (Some(g_old), Some(g_new)) = (old.core.fence_of(BOB), new.core.fence_of(BOB)) else {
            panic!("both claimed bob")
        };
        assert!(g_new > g_old, "the later claim is newer");
        // The new owner's newer state...
        let newer = StateRow { kind: "reg".into(), key: BOB.into(), value: b"{\"b\":[]}".to_vec(), expires_at: WALL };
        let w = StateWrite::Fenced { aor: BOB.into(), gen: g_new, write: Box::new(StateWrite::Put(newer.clone())) };
        store.write_states(&[w]).unwrap();
        // ...is not overwritten by the old owner's write-behind arriving late: refused by the store.
        old.core.persist_bindings(BOB);
        old.step(&mut store, |c, now| c.on_write_behind(now));
        assert_eq!(store.states_of(BOB, 0).unwrap(), vec![newer]);
    }

    #[test]
    fn a_request_for_a_user_not_held_waits_for_its_state_and_gets_one_answer() {
        let mono = Instant::now();
        let mut store = store_with_bob();
        let (_, other) = bobs_owner_and_other();
        let mut fe = Fe::new(other, mono);
        // No roster yet (or one giving bob elsewhere): the request is still answered, after loading bob.
        let req = register_without_credentials();
        let mut actions = Vec::new();
        fe.core.on_message(ConnId { core: 0, gen: 1, slot: 3 }, req.clone(), fe.now);
        fe.core.take_actions(&mut actions);
        assert!(
            matches!(actions.as_slice(), [Action::StoreCall { op: Op::ClaimAndLoad { aor, .. }, .. }] if aor == BOB),
            "nothing is answered before bob's state is in"
        );
        let Some(Action::StoreCall { op, then }) = actions.pop() else { unreachable!() };
        // A second request for bob waits on the same load.
        let second = fe.step(&mut store, |c, now| c.on_message(ConnId { core: 0, gen: 1, slot: 3 }, req, now));
        assert!(second.is_empty());
        let reply = run(&mut store, op);
        let sent = fe.step(&mut store, |c, now| c.on_store_reply(then, reply, now));
        assert_eq!(sent.iter().map(|m| m.status()).collect::<Vec<_>>(), vec![Some(401), Some(401)]);
        assert!(fe.registered(), "bob's binding came with him");
    }

    #[test]
    fn a_failed_load_answers_503_once_per_request() {
        let mono = Instant::now();
        let mut store = store_with_bob();
        let mut fe = Fe::new("fe1", mono);
        let mut actions = Vec::new();
        fe.core.on_message(ConnId { core: 0, gen: 1, slot: 3 }, register_without_credentials(), fe.now);
        fe.core.take_actions(&mut actions);
        let Some(Action::StoreCall { then, .. }) = actions.pop() else { panic!("a load") };
        let sent = fe.step(&mut store, |c, now| c.on_store_reply(then, Err(StoreError("down".into())), now));
        assert_eq!(sent.iter().map(|m| m.status()).collect::<Vec<_>>(), vec![Some(503)]);
        assert!(sent[0].header(HeaderName::RetryAfter).is_some());
        assert!(!fe.registered());
    }

    #[test]
    fn a_single_front_end_holds_everyone_without_loading() {
        let edge: SocketAddr = "127.0.0.1:5063".parse().unwrap();
        let s = CoreSettings::with_defaults("example.com", "127.0.0.1:5062".parse().unwrap(), vec![edge], users());
        let now = Now { secs: WALL / 1000, mono: Instant::now() };
        let mut core = PoolCore::new(Arc::new(s), 0, 1, Arc::new(PoolStats::default()), now);
        core.on_message(ConnId { core: 0, gen: 1, slot: 3 }, register_without_credentials(), now);
        let mut actions = Vec::new();
        core.take_actions(&mut actions);
        assert!(actions.iter().all(|a| !matches!(a, Action::StoreCall { .. })));
        assert!(actions.iter().any(|a| matches!(a, Action::Send { .. })), "challenged at once");
    }
}
