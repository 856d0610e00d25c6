//! Routing to the members of an enterprise pool (`[edge.roster]`, and any `[[edge.pools]]` entry with a roster):
//! each request goes to the front end of the user's pool that **owns** the user it concerns
//! (`proto::membership::owner_among`), by that pool's roster read from its store and this core's view of each
//! member's health.
//!
//! Which user a request concerns, so that its owner holds what the request needs:
//! - REGISTER: the registered AOR (To): the owner holds the user's bindings;
//! - SUBSCRIBE, PUBLISH, MESSAGE and a partner's requests: the Request-URI's AOR (the presentity, the recipient):
//!   the owner holds the presentity's publications and the subscriptions to it, and the recipient's bindings;
//! - the flow-closed notice: the AOR it names (the owner of the bindings made through the flow).
//!
//! The sender's digest is checked wherever the request lands: every member shares the nonce key through the
//! store, so a nonce another member issued is stale, not forged, and the client retries without asking its user.
//!
//! Health: a member is routed to while its lease runs (the roster) and its link is not known to be broken. A
//! probe (OPTIONS over the member's mutual-TLS connector) goes to each member every [`PROBE_EVERY`]; a probe or
//! request the connector cannot deliver marks the member down for [`DOWN_FOR`], well before its lease runs out.
//! With no roster to go by (the store unreachable since start, or every lease expired in our view), the
//! configured members that are not down share the users by the same hash: a single survivor serves everyone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::core::{Action, EdgeCore};
use super::inflight::{InFlight, Verdict};
use super::token;
use super::NOTICE_BRANCH_PREFIX;
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::proto::aor_of;
use crate::proto::membership::{owner_among, Member, MemberState, Roster};
use crate::sip::{self, HeaderName, Message, Method};

/// How often each member is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long a member whose link failed is left out (probes go on meanwhile; an answered one ends it sooner).
pub const DOWN_FOR: Duration = Duration::from_secs(2);
/// The branch of probes: under the notice prefix, with an id that is not hex, so their answers are dropped.
const PROBE_BRANCH_REST: &str = "probe";

/// One enterprise pool's view: its roster and what routing falls back on without one.
struct PoolView {
    roster: Arc<Roster>,
    /// The roster's wall-clock reading (unix ms) and the step clock then: the leases are compared with
    /// `wall + (now - at)`, so a lease runs out on time between two reads.
    anchor: Option<(u64, Instant)>,
    /// Every member as if its lease never ran out, for routing without a roster.
    fallback: Roster,
}

/// The members this core routes to, in configured order (the shell's connectors have the same indices): the
/// default pool's (`[edge.roster]`, pool 0) first, then those of each `[[edge.pools]]` entry that is an
/// enterprise pool (pool 1 + its index). Each pool's users are owned among its own members, by its own roster.
pub struct Members {
    names: Vec<String>,
    /// The pool of each member.
    pool_of: Vec<usize>,
    pools: Vec<PoolView>,
    down_until: Vec<Option<Instant>>,
}

impl Members {
    /// The default pool's members only.
    pub fn new(names: Vec<String>) -> Members {
        Members::of_pools(vec![names])
    }

    /// Each pool's members (the default pool first; an empty list: a single front end or no pool).
    pub fn of_pools(pools: Vec<Vec<String>>) -> Members {
        let mut names = Vec::new();
        let mut pool_of = Vec::new();
        let mut views = Vec::with_capacity(pools.len());
        for (p, members) in pools.into_iter().enumerate() {
            let fallback = Roster::new(
                members
                    .iter()
                    .map(|n| Member {
                        name: n.clone(),
                        addr: String::new(),
                        state: MemberState::Active,
                        lease_until_ms: u64::MAX,
                        load: 0,
                        in_flight: 0,
                        users: 0,
                    })
                    .collect(),
            );
            views.push(PoolView { roster: Arc::new(Roster::default()), anchor: None, fallback });
            pool_of.extend(std::iter::repeat_n(p, members.len()));
            names.extend(members);
        }
        Members { down_until: vec![None; names.len()], names, pool_of, pools: views }
    }

    /// Members of every pool.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether `pool` is an enterprise pool (has members).
    pub fn has_members(&self, pool: usize) -> bool {
        self.pool_of.contains(&pool)
    }

    fn index(&self, pool: usize, name: &str) -> Option<usize> {
        self.names.iter().zip(&self.pool_of).position(|(n, p)| *p == pool && n == name)
    }

    fn is_down(&self, i: usize, now: Instant) -> bool {
        self.down_until.get(i).copied().flatten().is_some_and(|t| now < t)
    }

    fn wall_ms(view: &PoolView, now: Instant) -> u64 {
        let Some((wall, at)) = view.anchor else { return 0 };
        let since = u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX);
        wall.saturating_add(since)
    }

    /// The default pool's member that owns `aor` now (see [`Self::pick_in`]).
    pub fn pick(&self, aor: &str, now: Instant) -> Option<usize> {
        self.pick_in(0, aor, now)
    }

    /// The member of `pool` that owns `aor` now, by its roster, else by its configured members; None only when
    /// every configured member is down.
    pub fn pick_in(&self, pool: usize, aor: &str, now: Instant) -> Option<usize> {
        let view = self.pools.get(pool)?;
        let up = |m: &Member| self.index(pool, &m.name).is_some_and(|i| !self.is_down(i, now));
        let by_roster = owner_among(aor, &view.roster, Self::wall_ms(view, now), up);
        let owner = by_roster.or_else(|| owner_among(aor, &view.fallback, 0, up))?;
        self.index(pool, &owner.name)
    }

    /// A member of `pool` by the hash alone (every member down: its connector tries anyway).
    pub fn any_in(&self, pool: usize, aor: &str) -> Option<usize> {
        let members: Vec<usize> = (0..self.names.len()).filter(|i| self.pool_of.get(*i) == Some(&pool)).collect();
        members.get(crate::shard::shard_for(aor.as_bytes(), members.len().max(1))).copied()
    }

    pub fn set_roster(&mut self, roster: Arc<Roster>, wall_ms: u64, now: Instant) {
        self.set_roster_of(0, roster, wall_ms, now);
    }

    pub fn set_roster_of(&mut self, pool: usize, roster: Arc<Roster>, wall_ms: u64, now: Instant) {
        if let Some(view) = self.pools.get_mut(pool) {
            view.roster = roster;
            view.anchor = Some((wall_ms, now));
        }
    }

    /// Whether this marked the member down anew (it was up).
    pub fn mark_down(&mut self, i: usize, now: Instant) -> bool {
        let was_down = self.is_down(i, now);
        if let Some(slot) = self.down_until.get_mut(i) {
            *slot = Some(now + DOWN_FOR);
        }
        !was_down
    }

    pub fn mark_up(&mut self, i: usize) {
        if let Some(slot) = self.down_until.get_mut(i) {
            *slot = None;
        }
    }
}

/// The AOR a request to the pool concerns (see the module); empty when it names none (any member may answer).
pub fn routing_aor(msg: &Message) -> String {
    if msg.method() == Some(&Method::Register) {
        return aor_of(&msg.to().uri);
    }
    msg.request_uri_parsed().map(|u| aor_of(&u)).unwrap_or_default()
}

impl EdgeCore {
    /// The AOR [`Self::send_to_pool`] routes `msg` by, or nothing when the edge has one pool and no homes (it
    /// routes by no user then, and this runs on every user's request: no String for it).
    pub(super) fn pool_routing_aor(&self, msg: &Message) -> String {
        if self.members.is_empty() && self.homes.is_empty() {
            return String::new();
        }
        routing_aor(msg)
    }

    /// Sends a request to the pool: to the user's home pool when it is one of `[[edge.pools]]`, else to the
    /// owner of `aor` among the members, or to the single pool. Returns the member it went to (None: a single
    /// pool).
    pub(super) fn send_to_pool(&mut self, aor: &str, bytes: Bytes, now: Instant) -> Option<usize> {
        let home = self.homes.pool_of(aor);
        if home.is_some() {
            bump(&self.estats.home_pool_routed);
        }
        let Some(pool) = self.member_pool(home) else {
            match home {
                Some(pool) => self.out.push(Action::ToHomePool { pool, bytes }),
                None => self.out.push(Action::ToPool(bytes)),
            }
            return None;
        };
        // Every member down: the connector of the hash's choice tries anyway, and answers 503 if it fails.
        let member = self.members.pick_in(pool, aor, now).or_else(|| self.members.any_in(pool, aor))?;
        self.out.push(Action::ToMember { member, bytes });
        Some(member)
    }

    /// The pool (in [`Members`]' numbering) whose members serve a user homed on `home` (None: the default pool),
    /// when that pool is an enterprise pool.
    fn member_pool(&self, home: Option<usize>) -> Option<usize> {
        let pool = home.map_or(0, |h| h + 1);
        self.members.has_members(pool).then_some(pool)
    }

    /// A user's request (`req`, as the user sent it, on `conn`) went to `member`: kept until its final answer.
    pub(super) fn track_member_txn(&mut self, conn: ConnId, req: &Message, member: usize, now: Instant) {
        if req.method() == Some(&Method::Ack) {
            return;
        }
        self.inflight.sent(TxnKey::of(conn, req), member, (conn, req.clone()), now);
    }

    /// A member's final answer to a user's request on `back`: false when the edge answered it already.
    pub(super) fn member_answer_passes(&mut self, back: ConnId, resp: &Message) -> bool {
        if self.members.is_empty() || resp.status().unwrap_or(0) < 200 {
            return true;
        }
        if self.inflight.answered(&TxnKey::of(back, resp)) == Verdict::Drop {
            tracing::debug!("a member's late answer to a request the edge answered: dropped");
            return false;
        }
        true
    }

    /// Answers, once, requests no member will answer: `503` when their member's link went down, `408` past their
    /// deadline.
    fn answer_for_members(&mut self, txns: Vec<(ConnId, Message)>, code: u16, reason: &'static str) {
        for (conn, req) in txns {
            bump(&self.estats.pool_answered_by_edge);
            if let Some(flow) = self.flows.get_mut(conn) {
                flow.in_flight = flow.in_flight.saturating_sub(1);
            }
            let extra: &[(HeaderName, &[u8])] = &[(HeaderName::RetryAfter, b"1")];
            self.out.respond(conn, &req, code, reason, if code == 503 { extra } else { &[] });
        }
    }

    /// Once a second: requests whose member went down, or past their deadline at a member.
    pub(super) fn expire_member_txns(&mut self, now: Instant) {
        let e = self.inflight.expire(now);
        self.answer_for_members(e.lost, 503, "Service Unavailable: pool member lost");
        self.answer_for_members(e.late, 408, "Request Timeout");
    }

    /// A new roster of the default pool read from the store (`wall_ms`: the wall clock when it was handed over).
    pub fn on_roster(&mut self, roster: Arc<Roster>, wall_ms: u64, now: Instant) {
        self.members.set_roster(roster, wall_ms, now);
    }

    /// A new roster of `[[edge.pools]]` entry `pool`, an enterprise pool.
    pub fn on_home_pool_roster(&mut self, pool: usize, roster: Arc<Roster>, wall_ms: u64, now: Instant) {
        self.members.set_roster_of(pool + 1, roster, wall_ms, now);
    }

    /// What the shell knows of member `i`'s link: up (connected), or failed (a send could not be delivered).
    pub fn on_member_link(&mut self, i: usize, up: bool, now: Instant) -> bool {
        if up {
            self.members.mark_up(i);
            false
        } else {
            let new = self.members.mark_down(i, now);
            if new {
                bump(&self.estats.pool_members_down);
                tracing::warn!(member = i, "pool member unreachable: its users go to the others");
            }
            // What it took and had not answered, it never will (or its answer cannot come back this way).
            self.inflight.member_down(i);
            new
        }
    }

    /// Every [`PROBE_EVERY`]: an OPTIONS to each member (its failure marks the member down).
    pub fn on_probe_tick(&mut self) {
        for member in 0..self.members.len() {
            let bytes = probe(&self.s.internal_text, self.id, member);
            self.out.push(Action::ToMember { member, bytes });
        }
    }

    /// A request a member could not be sent: when that just marked a member down, it goes to the user's new
    /// owner; true when it was sent again (else the caller answers it).
    pub(super) fn reroute(&mut self, req: &Message, marked_down: bool, now: Instant) -> bool {
        if self.members.is_empty() || !marked_down {
            return false;
        }
        if req
            .top_via()
            .and_then(|v| v.branch())
            .is_some_and(|b| b.starts_with(NOTICE_BRANCH_PREFIX) && b.ends_with(PROBE_BRANCH_REST.as_bytes()))
        {
            return true;
        }
        let key = req.top_via().and_then(|v| v.branch()).and_then(token::parse_up_branch).map(|b| TxnKey::of(b, req));
        if key.as_ref().is_some_and(|k| self.inflight.is_answered(k)) {
            // The edge answered it already (503 or 408): sending it again could bring a second answer.
            return true;
        }
        let aor = routing_aor(req);
        let Some(pool) = self.member_pool(self.homes.pool_of(&aor)) else { return false };
        match self.members.pick_in(pool, &aor, now) {
            Some(member) => {
                bump(&self.estats.pool_rerouted);
                if let Some(k) = &key {
                    self.inflight.move_to(k, member);
                }
                self.out.push(Action::ToMember { member, bytes: req.bytes().clone() });
                true
            }
            None => false,
        }
    }
}

/// Requests in flight at members, keyed as their responses name them.
pub type MemberTxns = InFlight<TxnKey, (ConnId, Message)>;

/// A transaction as both the user's request and the member's response name it: the user's connection, Call-ID and
/// CSeq (a CANCEL is its own transaction: its method is part of the key).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TxnKey {
    conn: ConnId,
    call_id: Bytes,
    seq: u32,
    method: Method,
}

impl TxnKey {
    fn of(conn: ConnId, msg: &Message) -> TxnKey {
        let c = msg.cseq();
        TxnKey { conn, call_id: Bytes::copy_from_slice(msg.call_id()), seq: c.seq, method: c.method }
    }
}

fn probe(internal: &str, core: usize, member: usize) -> Bytes {
    let via = format!(
        "SIP/2.0/TLS {internal};branch={}{PROBE_BRANCH_REST}",
        std::str::from_utf8(NOTICE_BRANCH_PREFIX).unwrap_or("z9hG4bKx")
    );
    let from = format!("<sip:edge@{internal}>;tag=probe");
    let call_id = format!("probe-{core}-{member}");
    let mut out = BytesMut::with_capacity(384);
    sip::write_request(
        &mut out,
        "OPTIONS",
        b"sip:pool-member-probe@edge-internal",
        &[
            (HeaderName::Via, via.as_bytes()),
            (HeaderName::MaxForwards, b"1"),
            (HeaderName::From, from.as_bytes()),
            (HeaderName::To, b"<sip:pool-member-probe@edge-internal>"),
            (HeaderName::CallId, call_id.as_bytes()),
            (HeaderName::CSeq, b"1 OPTIONS"),
        ],
        None,
    );
    out.freeze()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::edge::{EdgeSettings, EdgeStats};
    use crate::net::{ConnId, ConnKind};
    use crate::proto::membership::owner;
    use crate::sip::Limits;

    const WALL: u64 = 1_000_000;
    const USER: ConnId = ConnId { core: 0, gen: 1, slot: 1 };
    const NAMES: [&str; 3] = ["fe1", "fe2", "fe3"];

    fn settings() -> Arc<EdgeSettings> {
        static S: OnceLock<Arc<EdgeSettings>> = OnceLock::new();
        S.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("parapet-edge-members-test-{}", std::process::id()));
            let mut s = crate::edge::testkit::settings(&dir).expect("settings");
            s.pool_members = NAMES.iter().map(|n| n.to_string()).collect();
            Arc::new(s)
        })
        .clone()
    }

    fn core() -> EdgeCore {
        EdgeCore::new(settings(), 0, 1, Arc::new(EdgeStats::default()))
    }

    fn member(name: &str, state: MemberState, lease_until_ms: u64) -> Member {
        Member { name: name.into(), addr: String::new(), state, lease_until_ms, load: 0, users: 0, in_flight: 0 }
    }

    fn roster(states: &[(&str, MemberState)]) -> Arc<Roster> {
        Arc::new(Roster::new(states.iter().map(|(n, s)| member(n, *s, WALL + 3_000)).collect()))
    }

    fn all_active() -> Arc<Roster> {
        roster(&[("fe1", MemberState::Active), ("fe2", MemberState::Active), ("fe3", MemberState::Active)])
    }

    fn actions(c: &mut EdgeCore) -> Vec<Action> {
        let mut v = Vec::new();
        c.take_actions(&mut v);
        v
    }

    fn sent_to_members(a: &[Action]) -> Vec<(usize, Message)> {
        a.iter()
            .filter_map(|a| match a {
                Action::ToMember { member, bytes } => Some((
                    *member,
                    Message::parse(bytes.clone(), &crate::net::conn::peer_limits(&Limits::default())).unwrap(),
                )),
                _ => None,
            })
            .collect()
    }

    fn register(c: &mut EdgeCore, user: &str, now: Instant) -> Vec<Action> {
        let req = format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.10:40000;branch=z9hG4bK1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@example.com>;tag=1\r\nTo: <sip:{user}@example.com>\r\n\
             Call-ID: c1\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@192.0.2.10:40000;transport=tls>\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let msg = Message::parse(Bytes::from(req), &Limits::default()).unwrap();
        let info = crate::edge::core::ConnInfo {
            id: USER,
            kind: ConnKind::User,
            peer: "192.0.2.10:40000".parse().unwrap(),
            names: &[],
        };
        c.on_message(&info, msg, now);
        actions(c)
    }

    fn owner_index(r: &Roster, aor: &str) -> usize {
        let name = &owner(aor, r, WALL).unwrap().name;
        NAMES.iter().position(|n| n == name).unwrap()
    }

    #[test]
    fn an_enterprise_home_pool_owns_its_users_among_its_own_members() {
        let now = Instant::now();
        let dir = std::env::temp_dir().join(format!("parapet-edge-members-ent-{}", std::process::id()));
        let mut s = crate::edge::testkit::settings(&dir).expect("settings");
        s.pool_members = NAMES.iter().map(|n| n.to_string()).collect();
        // "ent" has members named as the default pool's: names are the pool's own.
        s.home_pools = vec![None];
        s.home_pool_members = vec![vec!["fe1".into(), "fe2".into()]];
        let mut c = EdgeCore::new(Arc::new(s), 0, 1, Arc::new(EdgeStats::default()));
        c.on_roster(all_active(), WALL, now);
        let ent = roster(&[("fe1", MemberState::Active), ("fe2", MemberState::Active)]);
        c.on_home_pool_roster(0, ent.clone(), WALL, now);
        let users = ["bob", "bo", "bea", "ben", "bill", "babs"];
        let dir = crate::store::directory::Directory {
            users: users
                .iter()
                .map(|u| crate::store::directory::User {
                    alias: u.to_string(),
                    pool: "ent".into(),
                    ..Default::default()
                })
                .collect(),
        };
        c.on_homes(Arc::new(super::super::homes::HomeTable::build(&dir, &["ent".to_string()], "example.com").0));
        let mut hits = [0usize; 2];
        for u in users {
            let sent = sent_to_members(&register(&mut c, u, now));
            assert_eq!(sent.len(), 1, "{u}: one member");
            let want = 3 + owner_index(&ent, &format!("{u}@example.com"));
            assert_eq!(sent[0].0, want, "{u} goes to its owner among ent's members (after the default pool's 3)");
            hits[want - 3] += 1;
        }
        assert!(hits.iter().all(|h| *h > 0), "both of ent's members own someone: {hits:?}");
        let sent = sent_to_members(&register(&mut c, "alice", now));
        assert!(sent[0].0 < 3, "a user of the default pool stays among its members: {}", sent[0].0);
        // ent's fe1 (member 3) fails: its users go to fe2, never to a default pool member.
        assert!(c.on_member_link(3, false, now));
        for u in users {
            assert_eq!(sent_to_members(&register(&mut c, u, now))[0].0, 4, "{u}");
        }
        // Both down: the hash's choice among ent's members tries anyway.
        c.on_member_link(4, false, now);
        for u in users {
            assert!((3..5).contains(&sent_to_members(&register(&mut c, u, now))[0].0), "{u}");
        }
    }

    #[test]
    fn a_register_goes_to_the_member_owning_its_aor() {
        let now = Instant::now();
        let r = all_active();
        let mut hits = [0usize; 3];
        for u in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
            let mut c = core();
            c.on_roster(r.clone(), WALL, now);
            let sent = sent_to_members(&register(&mut c, u, now));
            assert_eq!(sent.len(), 1, "exactly one member gets it");
            let want = owner_index(&r, &format!("{u}@example.com"));
            assert_eq!(sent[0].0, want, "{u} goes to its owner");
            hits[want] += 1;
        }
        assert!(hits.iter().filter(|h| **h > 0).count() >= 2, "users spread over members: {hits:?}");
    }

    #[test]
    fn a_draining_or_expired_member_gets_no_one() {
        let now = Instant::now();
        let mut c = core();
        c.on_roster(
            Arc::new(Roster::new(vec![
                member("fe1", MemberState::Active, WALL + 10_000),
                member("fe2", MemberState::Draining, WALL + 10_000),
                member("fe3", MemberState::Active, WALL + 3_000),
            ])),
            WALL,
            now,
        );
        for u in ["alice", "bob", "carol", "dave", "erin", "frank"] {
            let sent = sent_to_members(&register(&mut c, u, now));
            assert_ne!(sent[0].0, 1, "fe2 is draining");
        }
        // fe3's lease runs out 3 s later without a new roster read: the step clock carries the lease clock.
        let later = now + Duration::from_millis(3_001);
        for u in ["alice", "bob", "carol", "dave", "erin", "frank"] {
            let sent = sent_to_members(&register(&mut c, u, later));
            assert_eq!(sent[0].0, 0, "only fe1 may own now");
        }
    }

    #[test]
    fn without_a_roster_the_configured_members_share_the_users() {
        let now = Instant::now();
        let mut c = core();
        let sent = sent_to_members(&register(&mut c, "alice", now));
        assert_eq!(sent.len(), 1);
        // A single survivor by its link alone: everyone goes to it.
        assert!(c.on_member_link(0, false, now));
        assert!(c.on_member_link(1, false, now));
        for u in ["alice", "bob", "carol", "dave"] {
            assert_eq!(sent_to_members(&register(&mut c, u, now))[0].0, 2);
        }
    }

    #[test]
    fn a_request_its_member_could_not_take_goes_to_the_new_owner_once() {
        let now = Instant::now();
        let r = all_active();
        let mut c = core();
        c.on_roster(r.clone(), WALL, now);
        let (first, fwd) = sent_to_members(&register(&mut c, "bob", now)).remove(0);
        assert_eq!(first, owner_index(&r, "bob@example.com"));
        // The shell found bob's member's link down: the request goes to bob's next owner, not back to the user.
        assert!(c.on_member_link(first, false, now));
        c.undeliverable(fwd.bytes().clone(), 503, "Service Unavailable", true, now);
        let a = actions(&mut c);
        let again = sent_to_members(&a);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].0, first);
        assert!(!a.iter().any(|a| matches!(a, Action::Send { .. })), "no answer to the user yet");
        // Nothing newly marked down (the link was known down): the user gets the 503, once.
        c.undeliverable(again[0].1.bytes().clone(), 503, "Service Unavailable", false, now);
        let a = actions(&mut c);
        assert!(sent_to_members(&a).is_empty());
        assert_eq!(a.iter().filter(|a| matches!(a, Action::Send { conn, .. } if *conn == USER)).count(), 1);
        // A passed probe brings it back: bob's requests go to his owner again.
        c.on_member_link(first, true, now);
        assert_eq!(sent_to_members(&register(&mut c, "bob", now))[0].0, first);
    }

    #[test]
    fn a_request_taken_by_a_member_that_died_is_answered_once_by_the_edge() {
        let now = Instant::now();
        let mut c = core();
        c.on_roster(all_active(), WALL, now);
        let (first, fwd) = sent_to_members(&register(&mut c, "bob", now)).remove(0);
        // The member took it, then died: the probe finds its link down; the next tick answers the user.
        c.on_member_link(first, false, now);
        assert!(actions(&mut c).iter().all(|a| !matches!(a, Action::Send { .. })));
        c.on_tick(now + Duration::from_secs(1));
        let to_user: Vec<Message> = actions(&mut c)
            .into_iter()
            .filter_map(|a| match a {
                Action::Send { conn, bytes } if conn == USER => {
                    Some(Message::parse(bytes, &Limits::default()).unwrap())
                }
                _ => None,
            })
            .collect();
        assert_eq!(to_user.len(), 1, "exactly one final answer");
        assert_eq!(to_user[0].status(), Some(503));
        // Its answer after all (the link was only slow): dropped, the user has its answer.
        let late = format!(
            "SIP/2.0 200 OK\r\nVia: {}\r\nVia: SIP/2.0/TLS 192.0.2.10:40000;branch=z9hG4bK1\r\n\
             From: <sip:bob@example.com>;tag=1\r\nTo: <sip:bob@example.com>;tag=2\r\nCall-ID: c1\r\n\
             CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
            std::str::from_utf8(fwd.header(HeaderName::Via).unwrap()).unwrap()
        );
        c.route_response(Message::parse(Bytes::from(late), &Limits::default()).unwrap(), true, now);
        assert!(actions(&mut c).iter().all(|a| !matches!(a, Action::Send { .. })), "a second final answer");
    }

    #[test]
    fn a_request_its_member_never_answers_gets_408_from_the_edge() {
        let now = Instant::now();
        let mut c = core();
        c.on_roster(all_active(), WALL, now);
        register(&mut c, "carol", now);
        c.on_tick(now + Duration::from_secs(1));
        assert!(actions(&mut c).iter().all(|a| !matches!(a, Action::Send { .. })), "in time: no answer yet");
        c.on_tick(now + Duration::from_secs(33));
        let answers: Vec<u16> = actions(&mut c)
            .into_iter()
            .filter_map(|a| match a {
                Action::Send { conn, bytes } if conn == USER => {
                    Message::parse(bytes, &Limits::default()).unwrap().status()
                }
                _ => None,
            })
            .collect();
        assert_eq!(answers, vec![408]);
    }

    #[test]
    fn probes_go_to_every_member_and_their_failures_answer_no_one() {
        let now = Instant::now();
        let mut c = core();
        c.on_probe_tick();
        let probes = sent_to_members(&actions(&mut c));
        assert_eq!(probes.iter().map(|(m, _)| *m).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(probes[0].1.method(), Some(&Method::Options));
        c.undeliverable(probes[0].1.bytes().clone(), 503, "Service Unavailable", true, now);
        assert!(actions(&mut c).is_empty(), "a failed probe is not sent again nor answered");
        c.undeliverable(probes[1].1.bytes().clone(), 503, "Service Unavailable", false, now);
        assert!(actions(&mut c).is_empty());
    }

    #[test]
    fn routing_aor_is_the_registered_or_the_target_user() {
        let parse = |s: &str| Message::parse(Bytes::from(s.to_string()), &Limits::default()).unwrap();
        let head = "Via: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:alice@example.com>;tag=1\r\n\
                    To: <sip:Bob@Example.com>\r\nCall-ID: c\r\n";
        let reg = parse(&format!("REGISTER sip:example.com SIP/2.0\r\n{head}CSeq: 1 REGISTER\r\n\r\n"));
        assert_eq!(routing_aor(&reg), "Bob@example.com");
        let msg = parse(&format!("MESSAGE sip:carol@example.com SIP/2.0\r\n{head}CSeq: 1 MESSAGE\r\n\r\n"));
        assert_eq!(routing_aor(&msg), "carol@example.com");
    }
}
