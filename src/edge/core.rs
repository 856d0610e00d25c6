//! The edge's per-core logic as a state machine without I/O: [`EdgeCore`] holds every piece of per-core state
//! (flows, transactions toward users, the flood guard, this core's copy of the federation table) as plain fields,
//! takes one input at a time (a message from a connection, a connection closed, a mesh message, a request the pool
//! could not be reached for, the once-a-second tick), with `now` as an argument, and pushes [`Action`]s into a
//! buffer the shell ([`super::shell`]) drains and performs after the step.
//!
//! It never touches a socket, the connection table, the mesh or an executor: a unit test or a fuzz target builds
//! one from settings alone and drives it with values. Because the shell performs the actions only once the step
//! has returned, no borrow of this state can outlive a step, and the logic never calls back into the shell.
//!
//! The logic itself lives, by concern, in [`super::upstream`] (users toward the pool), [`super::downstream`] (the
//! pool toward users), [`super::federation`] and [`super::reload`], as `impl EdgeCore` blocks.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::downstream::DownTxns;
use super::flows::Flows;
use super::{federation, guard, token, EdgeMsg, EdgeSettings, EdgeStats, NOTICE_BRANCH_PREFIX};
use crate::net::conn::bump;
use crate::net::{ConnId, ConnKind};
use crate::proto::FLOW_CLOSED_EVENT;
use crate::sip::{self, HeaderName, Limits, Message, Method, Uri};

/// What the logic needs to know about the connection an input came on, as a value (the shell builds it from the
/// connection's table entry).
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo<'a> {
    pub id: ConnId,
    pub kind: ConnKind,
    pub peer: SocketAddr,
    /// Names from the peer's certificate (mutual TLS only).
    pub names: &'a [String],
}

/// What the shell does for the logic, in the order pushed.
pub enum Action {
    /// Write to a connection on any core (the shell crosses the mesh when it is another core's). Best effort: a
    /// vanished connection is counted (`flows_failed`).
    Send { conn: ConnId, bytes: Bytes },
    /// A request for the user on `flow`, a connection of this core, whose internal Vias wait in transaction `txn`.
    /// When it cannot be queued, the shell hands it back ([`EdgeCore::flow_write_failed`]): `from` gets 430.
    ToFlow { flow: ConnId, bytes: Bytes, txn: u64, from: ConnId, req: Message },
    /// A message for another core. Best effort: a full mesh is counted (`mesh_full`).
    Mesh { core: usize, msg: EdgeMsg },
    /// A request (received on `from`) for a flow another core owns. When the mesh is full, the shell hands it back
    /// ([`EdgeCore::mesh_refused`]): `from` gets 503.
    MeshToFlow { core: usize, from: ConnId, flow: ConnId, req: Message },
    /// Through this core's connector to the pool (undeliverable requests come back as an input).
    ToPool(Bytes),
    /// Through this core's connector to pool member `member` (`[edge.roster]`, an `[[edge.pools]]` roster:
    /// [`super::members`]).
    ToMember { member: usize, bytes: Bytes },
    /// Through this core's connector to `[[edge.pools]]` entry `pool` (a user's home pool, [`super::homes`]).
    ToHomePool { pool: usize, bytes: Bytes },
    /// Through this core's connector to a federation peer (made on first use).
    ToPartner { name: String, addr: crate::config::PeerAddr, bytes: Bytes },
    /// To the edge of `domain` found by its `_sipfederationtls._tcp` SRV record (discovery).
    ToDiscovered { domain: String, bytes: Bytes },
    /// Look up `domain`'s federation SRV targets and hand them to [`EdgeCore::discovery_answer`].
    Discover { domain: String },
    /// Close every user connection of this core from this address (a ban).
    CloseAddress(IpAddr),
    /// Read nothing more from this connection for a while (a federation peer over its rate).
    PauseReading { conn: ConnId, duration: Duration },
    /// Tell the management API (`/bans`) about a ban this core decided.
    RecordBan { ip: IpAddr, reason: &'static str, duration: Duration },
}

/// The actions of the step under way.
#[derive(Default)]
pub(super) struct Outbox {
    actions: Vec<Action>,
}

impl Outbox {
    pub(super) fn push(&mut self, a: Action) {
        self.actions.push(a);
    }

    pub(super) fn send(&mut self, conn: ConnId, bytes: Bytes) {
        self.actions.push(Action::Send { conn, bytes });
    }

    /// A response of our own to `req` (none to an ACK).
    pub(super) fn reply(&mut self, conn: ConnId, req: &Message, code: u16, reason: &str) {
        self.reply_with(conn, req, code, reason, &[]);
    }

    pub(super) fn reply_with(
        &mut self,
        conn: ConnId,
        req: &Message,
        code: u16,
        reason: &str,
        extra: &[(HeaderName, &[u8])],
    ) {
        if req.method() == Some(&Method::Ack) {
            return;
        }
        self.respond(conn, req, code, reason, extra);
    }

    /// A response of our own to `req`, whatever its method: the gate's refusals answer even an ACK, as they always
    /// have (kept as it is by the move to a state machine).
    pub(super) fn respond(
        &mut self,
        conn: ConnId,
        req: &Message,
        code: u16,
        reason: &str,
        extra: &[(HeaderName, &[u8])],
    ) {
        let mut out = BytesMut::with_capacity(512);
        sip::write_response(&mut out, req, code, reason, Some(b"edge"), extra, None);
        self.send(conn, out.freeze());
    }
}

/// One core of the edge, as a value.
pub struct EdgeCore {
    pub(super) id: usize,
    pub(super) count: usize,
    pub(super) s: Arc<EdgeSettings>,
    pub(super) estats: Arc<EdgeStats>,
    pub(super) flows: Flows,
    pub(super) down: DownTxns,
    pub(super) guard: guard::Guard,
    /// Partner connections of this core that have sent us a request (their responses from the pool are rewritten
    /// for a partner, not a user); forgotten when they close.
    pub(super) partner_conns: HashSet<ConnId>,
    /// Pool connections of this core whose requests we relayed to another member ([`super::relay`]): their
    /// answers go back as they are; forgotten when they close.
    pub(super) member_senders: HashSet<ConnId>,
    pub(super) scratch: Vec<u8>,
    /// This core's copy of the federation table (replaced on reload, see [`super::reload`]).
    pub(super) fed_table: Option<Arc<crate::config::FederationConfig>>,
    /// The per-peer limits of federation, shared by every core (replaced with `fed_table`).
    pub(super) fed_limits: Option<Arc<federation::Limiter>>,
    /// Discovered domains' SRV verdicts and the requests waiting for one.
    pub(super) discovery: federation::discovery::Discovery,
    /// Flow-closed notices the pool has not taken yet.
    pub(super) notices: super::notices::Notices,
    /// Shutting down: new requests are refused (set by the shell before each step).
    pub(super) draining: bool,
    /// The enterprise pools' members and their health (the default pool's, then `[[edge.pools]]`'; empty: none).
    pub(super) members: super::members::Members,
    /// Requests sent to a pool member and not answered yet ([`super::inflight`]).
    pub(super) inflight: super::members::MemberTxns,
    /// Who is homed on which of `[[edge.pools]]` (empty: everyone on the default pool).
    pub(super) homes: Arc<super::homes::HomeTable>,
    pub(super) out: Outbox,
}

impl EdgeCore {
    pub fn new(s: Arc<EdgeSettings>, id: usize, count: usize, estats: Arc<EdgeStats>) -> EdgeCore {
        EdgeCore {
            id,
            count,
            flows: Flows::default(),
            down: DownTxns::new(id, s.downstream_max),
            guard: guard::Guard::new(s.flood),
            partner_conns: HashSet::new(),
            member_senders: HashSet::new(),
            scratch: Vec::with_capacity(256),
            fed_table: s.fed.as_ref().map(|f| Arc::new(f.cfg.clone())),
            fed_limits: s.fed.as_ref().map(|f| Arc::new(federation::Limiter::build(&f.cfg, None))),
            discovery: Default::default(),
            notices: super::notices::Notices::default(),
            draining: false,
            members: super::members::Members::of_pools(
                std::iter::once(s.pool_members.clone()).chain(s.home_pool_members.iter().cloned()).collect(),
            ),
            inflight: super::inflight::InFlight::new(s.downstream_max, s.downstream_timeout),
            homes: Arc::default(),
            out: Outbox::default(),
            s,
            estats,
        }
    }

    /// Uses these per-peer federation limits, shared by every core (those published at start), instead of its own.
    pub fn with_fed_limits(mut self, limits: Option<Arc<federation::Limiter>>) -> EdgeCore {
        if limits.is_some() {
            self.fed_limits = limits;
        }
        self
    }

    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Moves the actions of the steps so far to the end of `out` (keeping this buffer's capacity).
    pub fn take_actions(&mut self, out: &mut Vec<Action>) {
        out.append(&mut self.out.actions);
    }

    /// The flows of this core (read-only, for tests and invariants).
    pub fn flows(&self) -> &Flows {
        &self.flows
    }

    /// Transactions toward users waiting for their final response.
    pub fn downstream_len(&self) -> usize {
        self.down.len()
    }

    /// Requests in flight through this core, both ways.
    pub fn in_flight(&self) -> usize {
        self.flows.in_flight() + self.down.len()
    }

    /// A complete message that parsed, from a connection of this core.
    pub fn on_message(&mut self, conn: &ConnInfo<'_>, msg: Message, now: Instant) {
        if !msg.is_request() {
            // Up-branches carry no MAC: only the pool, which got them from us, may hand them back.
            let from_pool = self.is_pool_conn(conn);
            self.route_response(msg, from_pool, now);
            return;
        }
        match conn.kind {
            ConnKind::User => self.from_user(conn, &msg, now),
            // Our outbound connection to a federation peer carries its requests too: those are a partner's.
            ConnKind::PeerOut if !self.is_pool(conn.names) => self.from_partner(conn, &msg, now),
            ConnKind::PeerIn | ConnKind::PeerOut => self.to_user(conn.id, msg, now),
            ConnKind::Partner => {
                self.partner_conns.insert(conn.id);
                self.from_partner(conn, &msg, now)
            }
        }
    }

    /// A connection of this core is gone: its flow with it (the pool is told when it had registered).
    pub fn on_closed(&mut self, conn: &ConnInfo<'_>, now: Instant) {
        match conn.kind {
            ConnKind::User => {
                let aors = self.flows.remove(conn.id);
                if !aors.is_empty() && !self.draining {
                    self.flow_closed(conn.id, &aors, now);
                }
            }
            ConnKind::Partner => {
                self.partner_conns.remove(&conn.id);
                self.discovered_closed(conn.id);
            }
            ConnKind::PeerOut => {
                self.member_senders.remove(&conn.id);
                self.discovered_closed(conn.id);
            }
            ConnKind::PeerIn => {
                self.member_senders.remove(&conn.id);
            }
        }
    }

    /// A new connection on a listener, before its handshake: false closes it.
    pub fn admit(&mut self, peer: SocketAddr, kind: ConnKind, now: Instant) -> bool {
        if kind != ConnKind::User {
            return true;
        }
        match self.guard.admit_connection(peer.ip(), now) {
            guard::Verdict::Allow => true,
            guard::Verdict::Refuse => false,
            guard::Verdict::Ban(reason) => {
                self.ban(peer.ip(), reason, now);
                false
            }
        }
    }

    /// An admitted connection has ended.
    pub fn release(&mut self, peer: SocketAddr, kind: ConnKind) {
        if kind == ConnKind::User {
            self.guard.connection_closed(peer.ip());
        }
    }

    /// The limits a connection's messages are parsed under. Federation connections (a partner's to us, ours to a
    /// partner) are server connections: their size limit is `[edge.federation] message_bytes_max` of the table in
    /// force when they start, not the users' one.
    pub fn limits_for(&self, conn: &ConnInfo<'_>) -> Limits {
        match (self.is_federated(conn.kind, conn.names), self.fed_table.as_ref()) {
            (true, Some(t)) => Limits { message_bytes_max: t.message_bytes_max, ..self.s.limits },
            _ => match conn.kind {
                ConnKind::User | ConnKind::Partner => self.s.limits,
                ConnKind::PeerIn | ConnKind::PeerOut => self.s.peer_limits,
            },
        }
    }

    /// A new table of home pools, read by the homes reader.
    pub fn on_homes(&mut self, homes: Arc<super::homes::HomeTable>) {
        self.homes = homes;
    }

    /// A message from another core.
    pub fn on_mesh(&mut self, msg: EdgeMsg, now: Instant) {
        match msg {
            EdgeMsg::Write { conn, bytes } => self.out.send(conn, bytes),
            EdgeMsg::ToUser { from, flow, bytes } => match Message::parse(bytes, &self.s.peer_limits) {
                Ok(m) => self.to_local_user(from, flow, m, now),
                Err(e) => tracing::error!(error = %e, "a request that parsed on one core failed on another"),
            },
            EdgeMsg::Response { bytes } => match Message::parse(bytes, &self.s.peer_limits) {
                // Checked by the core that received it.
                Ok(m) => self.route_response(m, true, now),
                Err(e) => tracing::error!(error = %e, "a response that parsed on one core failed on another"),
            },
            EdgeMsg::Ban { ip, until } => {
                self.guard.ban(ip, until);
                self.out.push(Action::CloseAddress(ip));
            }
        }
    }

    /// A user's request the pool could not be reached for: answer it back along its Via (ours is on top).
    /// `marked_down`: the shell just found a pool member's link broken (the request goes to the user's new owner).
    pub fn undeliverable(&mut self, bytes: Bytes, code: u16, reason: &'static str, marked_down: bool, now: Instant) {
        let Ok(req) = Message::parse(bytes, &self.s.peer_limits) else { return };
        if !req.is_request() || req.method() == Some(&Method::Ack) {
            return;
        }
        if self.reroute(&req, marked_down, now) {
            return;
        }
        let mut out = BytesMut::with_capacity(512);
        sip::write_response(&mut out, &req, code, reason, Some(b"edge"), &[], None);
        if let Ok(resp) = Message::parse(out.freeze(), &self.s.peer_limits) {
            self.route_response(resp, true, now);
        }
    }

    /// The mesh toward a flow's core was full ([`Action::MeshToFlow`]): the sender of the request learns it.
    pub fn mesh_refused(&mut self, from: ConnId, req: &Message) {
        self.out.reply(from, req, 503, "Service Unavailable");
    }

    /// Once a second: expire transactions toward users, refresh gauges.
    pub fn on_tick(&mut self, now: Instant) {
        let expired = self.down.expire(now);
        self.expire_member_txns(now);
        self.guard.sweep(now);
        self.estats.banned_now.set(self.guard.banned_count() as u64);
        self.estats.downstream_expired.add(expired as u64);
        self.estats.flows_authenticated_connections.set(self.flows.authenticated() as u64);
        let mut resend = Vec::new();
        let due = self.notices.due(now, &mut resend);
        self.estats.notices_resent.add(due.resent as u64);
        if due.given_up > 0 {
            self.estats.notices_lost.add(due.given_up as u64);
            tracing::warn!(count = due.given_up, "flow-closed notices not taken by the pool: given up");
        }
        for bytes in resend {
            let aor = Message::parse(bytes.clone(), &self.s.peer_limits).map(|m| super::members::routing_aor(&m));
            self.send_to_pool(&aor.unwrap_or_default(), bytes, now);
        }
        self.estats.notices_pending.set(self.notices.len() as u64);
    }

    /// Bans an address on every core, closes its connections, and tells the management API.
    pub(super) fn ban(&mut self, ip: IpAddr, reason: &'static str, now: Instant) {
        let duration = self.guard.ban_duration();
        let until = now + duration;
        self.guard.ban(ip, until);
        bump(&self.estats.bans);
        crate::warn_limited!(%ip, reason, seconds = duration.as_secs(), "address banned");
        self.out.push(Action::RecordBan { ip, reason, duration });
        for core in (0..self.count).filter(|c| *c != self.id) {
            self.out.push(Action::Mesh { core, msg: EdgeMsg::Ban { ip, until } });
        }
        self.out.push(Action::CloseAddress(ip));
    }

    /// Whether certificate names are (one of) our pool(s)'.
    pub(super) fn is_pool(&self, names: &[String]) -> bool {
        is_pool_name(&self.s, names)
    }

    /// A connection to or from our pool (its certificate carries a pool name).
    fn is_pool_conn(&self, conn: &ConnInfo<'_>) -> bool {
        matches!(conn.kind, ConnKind::PeerIn | ConnKind::PeerOut) && self.is_pool(conn.names)
    }

    /// A federation connection: a partner's to us, or ours to a peer that is not our pool.
    pub(super) fn is_federated(&self, kind: ConnKind, names: &[String]) -> bool {
        kind == ConnKind::Partner || (kind == ConnKind::PeerOut && !self.is_pool(names))
    }

    pub(super) fn is_myself(&self, uri: &Uri<'_>) -> bool {
        is_myself(&self.s, uri)
    }

    /// Any response: our top Via says where it goes, and on which core that knowledge lives.
    /// `from_pool`: it came from the pool (or from our own code), so an up-branch may be believed.
    pub(super) fn route_response(&mut self, msg: Message, from_pool: bool, now: Instant) {
        let Some(branch) = msg.top_via().and_then(|v| v.branch()) else {
            bump(&self.estats.responses_unroutable);
            return;
        };
        if let Some(rest) = branch.strip_prefix(NOTICE_BRANCH_PREFIX) {
            // The pool's answer to one of our own notices (flow closed), or the connector handing one back.
            if let (true, Some(id)) = (from_pool, super::notices::id_of(rest)) {
                self.notices.answered(id, msg.status().unwrap_or(0), now);
            }
            return;
        }
        if token::is_down_branch(branch) {
            self.response_from_user(msg);
        } else if let Some(back) = token::parse_up_branch(branch) {
            if !from_pool {
                // A user or partner naming another connection in a branch it was never given: refused.
                bump(&self.estats.tokens_refused);
                return;
            }
            self.response_to_user(back, msg, now);
        } else {
            bump(&self.estats.responses_unroutable);
            tracing::debug!("response without our Via branch: dropped");
        }
    }

    /// Tells the pool that a registered flow is gone, so its bindings go now rather than at expiry (watchers see the
    /// user offline at once). One internal NOTIFY per AOR (`Event: x-parapet-flow-closed`, the flow's Path URI in
    /// `P-Parapet-Flow`); users cannot send that event (the gate refuses it).
    fn flow_closed(&mut self, flow: ConnId, aors: &[String], now: Instant) {
        let mut path = Vec::with_capacity(96);
        token::write_flow_uri(&self.s.key, &mut path, flow, &self.s.internal_text);
        for aor in aors {
            let s = &self.s;
            let built = self.notices.add(now, |id| notice(s, flow, self.id, aor, &path, id));
            match built {
                Some(bytes) => {
                    self.send_to_pool(aor, bytes, now);
                }
                None => {
                    bump(&self.estats.notices_lost);
                    tracing::warn!(%aor, "flow-closed notice table full: the bindings will expire on their own");
                }
            }
        }
    }
}

/// The internal NOTIFY telling the pool that `flow`, through which `aor` registered, is gone; its branch carries
/// the notice's `id` ([`super::notices`]).
fn notice(s: &EdgeSettings, flow: ConnId, core: usize, aor: &str, path: &[u8], id: u64) -> Bytes {
    let ruri = format!("sip:{aor}");
    let via = format!(
        "SIP/2.0/TLS {};branch={}{id:016x}",
        s.internal_text,
        std::str::from_utf8(NOTICE_BRANCH_PREFIX).unwrap_or("z9hG4bKx"),
    );
    let from = format!("<sip:edge@{}>;tag=flow", s.internal_text);
    let to = format!("<{ruri}>");
    let call_id = format!("flow-{:016x}-{core}", flow.to_u64());
    let mut out = BytesMut::with_capacity(512);
    sip::write_request(
        &mut out,
        "NOTIFY",
        ruri.as_bytes(),
        &[
            (HeaderName::Via, via.as_bytes()),
            (HeaderName::MaxForwards, b"1"),
            (HeaderName::From, from.as_bytes()),
            (HeaderName::To, to.as_bytes()),
            (HeaderName::CallId, call_id.as_bytes()),
            (HeaderName::CSeq, b"1 NOTIFY"),
            (HeaderName::Event, FLOW_CLOSED_EVENT.as_bytes()),
            (HeaderName::SubscriptionState, b"terminated"),
            (HeaderName::ParapetFlow, path),
        ],
        None,
    );
    out.freeze()
}

/// Whether certificate names are (one of) our pool(s)'.
pub(super) fn is_pool_name(s: &EdgeSettings, names: &[String]) -> bool {
    names.iter().any(|n| s.pool_names.iter().any(|p| p.eq_ignore_ascii_case(n)))
}

/// Whether a URI names this edge (one of its names, at its user port or none).
pub(super) fn is_myself(s: &EdgeSettings, uri: &Uri<'_>) -> bool {
    let named = s.myself.iter().any(|m| uri.host_eq(m.as_bytes()));
    let port_ok = match uri.port {
        None => true,
        Some(p) => p == s.listen.port(),
    };
    named && port_ok && !uri.host.is_empty()
}

#[cfg(test)]
mod tests;
