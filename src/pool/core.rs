//! The pool core as a state machine without I/O: every piece of one core's state as plain fields, one entry point
//! per input (a message from an edge connection, a mesh message, the sweep, a store reply, a timer, a request the
//! connector could not deliver), `now` given by the caller, and what to do about it pushed as [`Action`]s that the
//! shell ([`super::shell`]) performs once the step is over. Nothing here touches a socket, the connection table,
//! the mesh, the store or glommio, so a unit test or a fuzz target drives it with values.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::digest::{Algorithm, NonceKeeper};
use super::registrar::{Registrar, RegistrarLimits};
use super::users::Users;
use super::{aor_of, flow_key, presence, proxy, to_tag, PoolMsg, PoolStats, Stage, ALLOW};
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::shard::shard_for;
use crate::sip::{self, HeaderName, Limits, Message, Method, Uri};
use crate::store::thread::{Op, Reply};
use crate::store::{StateRow, StateWrite, StoreError};

/// The time a step runs at: wall-clock seconds (expiries, which the store keeps across restarts) and the
/// monotonic clock (transaction deadlines).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub secs: u64,
    pub mono: Instant,
}

impl Now {
    /// The clocks as they are (the shell's; tests and fuzzers make their own).
    pub fn current() -> Now {
        Now { secs: super::now_secs(), mono: Instant::now() }
    }
}

/// What the core asks the shell to do, in order.
pub enum Action {
    /// Bytes to a connection of any core: written here, or handed over the mesh to the core that owns it.
    Send { conn: ConnId, bytes: Bytes },
    /// A message to another core. A full channel: a request comes back as [`PoolCore::on_mesh_full`], anything
    /// else is dropped and counted.
    Mesh { core: usize, msg: PoolMsg },
    /// A request through this core's connector to the edge at `addr` (configured edges only); what cannot be
    /// delivered comes back as [`PoolCore::on_undeliverable`].
    ToEdge { addr: SocketAddr, bytes: Bytes },
    /// Soft state to the store, queued without waiting (write-behind); a full queue drops it (counted).
    StoreWrite(StateWrite),
    /// A store operation whose reply comes back as [`PoolCore::on_store_reply`] with `then`.
    StoreCall { op: Op, then: Resume },
    /// A MESSAGE to the IM archive, queued without waiting (write-behind); a full queue loses it (counted).
    Archive(crate::store::archive::ArchiveRow),
    /// Comes back as [`PoolCore::on_timer`] after `after`.
    Timer { after: Duration, timer: Timer },
}

/// What a store reply resumes.
#[derive(Debug, Clone)]
pub enum Resume {
    /// A new contact-list subscription waiting for its list (the SUBSCRIBE as received, and what was decided).
    ListLoad { origin: ConnId, request: Bytes, owner: String, list_uri: String, granted: u32 },
    /// A live list subscription reading its list again after a change in the store.
    ListReload { id: u32 },
    /// A user's soft state, for the requests waiting for it ([`super::ownership`]).
    UserLoad { aor: String },
    /// Every live soft-state row, after a roster change: the users gained.
    Gained,
}

/// Timers the core arms.
#[derive(Debug, Clone)]
pub enum Timer {
    /// The coalescing window of list subscription `id` is over: its NOTIFY goes out.
    ListFlush(u32),
    /// Restored subscriptions hear the current state once the edges are reachable.
    Restored(Vec<u32>),
    /// A roster change settled: load the users gained.
    Gain,
    /// A MESSAGE sent to an application is due its answer ([`super::apps::agents`]).
    AppDeadline(u32),
}

/// Settings the core's logic reads (no sockets, no TLS, no store: see [`super::PoolSettings`] for those).
pub struct CoreSettings {
    pub domain: String,
    pub realm: String,
    /// Our address, as our Vias name it.
    pub listen: SocketAddr,
    pub limits: Limits,
    /// The configured edges' internal listeners, in configured order (the first routes foreign domains).
    pub edges: Vec<SocketAddr>,
    pub users: Users,
    pub registrar: RegistrarLimits,
    pub algorithms: Vec<Algorithm>,
    pub nonce_ttl_s: u64,
    pub nonce_secret: [u8; 32],
    pub transaction_timeout: Duration,
    /// Hosts that mean "this domain" in a Request-URI.
    pub local_hosts: Vec<String>,
    pub presence: presence::PresenceSettings,
    /// Outstanding nonces per core (oldest evicted first).
    pub nonces_max: usize,
    /// Forked transactions per core (more get 503).
    pub transactions_max: usize,
    pub archive: super::archive::ArchiveSettings,
    /// The routing rules in force (the reload thread replaces them; the shell hands a new set to the core).
    pub rules: Arc<super::apps::RulesSlot>,
    /// `[[applications]]`: the trusted applications and their counters.
    pub apps: Arc<super::apps::agents::AppTable>,
    /// `[pool.member] name`: this front end in an enterprise pool (None: it holds every user).
    pub member: Option<String>,
    /// `[pool] home` and `home_default`: the users this pool serves when the edge routes to several pools
    /// (empty `home`: every user).
    pub home: String,
    pub home_default: bool,
    /// This member's counters (users held, requests), reported with its lease.
    pub member_stats: Arc<crate::store::members::MemberStats>,
}

impl CoreSettings {
    /// Settings with the configuration's defaults, for a domain and its users (tests, fuzzing, tools).
    pub fn with_defaults(domain: &str, listen: SocketAddr, edges: Vec<SocketAddr>, users: Users) -> CoreSettings {
        CoreSettings {
            domain: domain.to_ascii_lowercase(),
            realm: domain.to_ascii_lowercase(),
            listen,
            limits: crate::net::conn::peer_limits(&Limits::default()),
            edges,
            users,
            registrar: RegistrarLimits::default(),
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            nonce_ttl_s: 300,
            nonce_secret: [7; 32],
            transaction_timeout: Duration::from_secs(32),
            local_hosts: vec![domain.to_ascii_lowercase()],
            presence: presence::PresenceSettings::default(),
            nonces_max: NONCES_MAX,
            transactions_max: TRANSACTIONS_MAX,
            archive: super::archive::ArchiveSettings::off(),
            rules: Arc::new(super::apps::RulesSlot::new(super::apps::RuleSet::new(&Default::default(), 0, 1))),
            apps: Arc::default(),
            member: None,
            home: String::new(),
            home_default: false,
            member_stats: Arc::default(),
        }
    }
}

/// Default bounds of the core's tables.
pub const NONCES_MAX: usize = 65_536;
pub const TRANSACTIONS_MAX: usize = 65_536;

/// The sizes of the core's tables right now.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub aors: usize,
    pub bindings: usize,
    pub transactions: usize,
    pub nonces: usize,
    pub subscriptions: usize,
    pub publications: usize,
    pub backends: usize,
    /// Help desk messages waiting for members' states, and conversations remembered (all desks of this core).
    pub helpdesk_gathers: usize,
    pub helpdesk_conversations: usize,
}

/// One pool core's logic and state.
pub struct PoolCore {
    pub(crate) id: usize,
    pub(crate) count: usize,
    pub pstats: Arc<PoolStats>,
    pub(crate) s: Arc<CoreSettings>,
    pub(crate) registrar: Registrar,
    pub(crate) nonces: NonceKeeper,
    pub(crate) txns: proxy::Transactions,
    /// Soft state changed since the last write-out ([`super::persist`]).
    pub(crate) unsaved: super::persist::Unsaved,
    pub(crate) presence: presence::Presence,
    pub(crate) archive: super::archive::ArchiveCoreState,
    pub(crate) rules: super::apps::RulesState,
    /// Which connection serves each agent address, and the MESSAGEs waiting for an application's answer.
    pub(crate) agents: super::apps::agents::AgentsState,
    /// The users this core answers for ([`super::ownership`]).
    pub(crate) own: super::ownership::Ownership,
    /// The synced directory's view (users, search index) and the searches in progress ([`super::directory`]).
    pub(crate) dir: super::directory::DirState,
    /// The help desks whose address this core owns, and their gathers ([`super::helpdesk`]).
    pub(crate) hd: super::helpdesk::HelpdeskState,
    /// The time of the step being run.
    pub(crate) now: Now,
    actions: Vec<Action>,
}

impl PoolCore {
    pub fn new(s: Arc<CoreSettings>, id: usize, count: usize, pstats: Arc<PoolStats>, now: Now) -> PoolCore {
        let salt = u32::from_le_bytes([s.nonce_secret[0], s.nonce_secret[1], s.nonce_secret[2], s.nonce_secret[3]]);
        PoolCore {
            id,
            count,
            pstats,
            registrar: Registrar::new(s.registrar),
            nonces: NonceKeeper::new(s.nonce_secret, id as u16, s.nonce_ttl_s, s.nonces_max),
            txns: proxy::Transactions::new(s.transactions_max),
            presence: presence::Presence::new(&s.presence, id, count, salt),
            unsaved: super::persist::Unsaved::default(),
            archive: Default::default(),
            rules: super::apps::RulesState::new(
                s.rules.current().unwrap_or_else(|| Arc::new(super::apps::RuleSet::new(&Default::default(), 0, 1))),
            ),
            agents: Default::default(),
            own: super::ownership::Ownership::new(s.member.clone(), s.member_stats.clone()),
            dir: super::directory::DirState::new(s.users.clone()),
            hd: Default::default(),
            now,
            actions: Vec::new(),
            s,
        }
    }

    /// Moves the actions of the steps so far into `out` (both buffers keep their capacity).
    pub fn take_actions(&mut self, out: &mut Vec<Action>) {
        out.append(&mut self.actions);
    }

    pub(crate) fn push(&mut self, a: Action) {
        self.actions.push(a);
    }

    pub fn sizes(&self) -> Sizes {
        Sizes {
            aors: self.registrar.aor_count(),
            bindings: self.registrar.binding_count(),
            transactions: self.txns.len(),
            nonces: self.nonces.len(),
            subscriptions: self.presence.subs.len(),
            publications: self.presence.pubs.len(),
            backends: self.presence.backends.len(),
            helpdesk_gathers: self.hd.gathers(),
            helpdesk_conversations: self.hd.conversations(),
        }
    }

    pub fn settings(&self) -> &CoreSettings {
        &self.s
    }

    /// Forked transactions still open, and MESSAGEs waiting for an application's answer (the shell waits for
    /// none at shutdown).
    pub fn transactions_in_flight(&self) -> usize {
        self.txns.len() + self.agents.waiting()
    }

    // ---- inputs ----

    /// A message from one of this core's edge connections.
    pub fn on_message(&mut self, origin: ConnId, msg: Message, now: Now) {
        self.now = now;
        if msg.is_request() {
            self.on_request(origin, msg);
        } else {
            self.on_any_response(msg);
        }
    }

    /// A message from another core.
    pub fn on_mesh(&mut self, msg: PoolMsg, now: Now) {
        self.now = now;
        match msg {
            // Writes are the shell's (it owns the connections); one reaching the core is sent on as it is.
            PoolMsg::Write { conn, bytes } => self.push(Action::Send { conn, bytes }),
            PoolMsg::Request { stage, origin, bytes } => match Message::parse(bytes, &self.s.limits) {
                Ok(m) => self.at_stage(stage, origin, m),
                Err(e) => tracing::error!(error = %e, "a message that parsed once failed on another core"),
            },
            PoolMsg::Presence(m) => self.on_presence_msg(m),
            PoolMsg::Directory(m) => self.on_directory_msg(m),
            PoolMsg::Helpdesk(m) => self.on_helpdesk_msg(m),
            PoolMsg::Apps(m) => self.on_apps_msg(m),
        }
    }

    /// A request this core handed to another could not go: the mesh channel was full. Overload: 503.
    pub fn on_mesh_full(&mut self, origin: ConnId, bytes: Bytes, now: Now) {
        self.now = now;
        bump(&self.pstats.mesh_full);
        if let Ok(msg) = Message::parse(bytes, &self.s.limits) {
            self.reply(origin, &msg, 503, "Service Unavailable", &[]);
        }
    }

    /// A forked request that could not reach its edge: answered here, as that branch's response.
    pub fn on_undeliverable(&mut self, bytes: Bytes, code: u16, reason: &'static str, now: Now) {
        self.now = now;
        let Ok(req) = Message::parse(bytes, &self.s.limits) else { return };
        let mut out = BytesMut::with_capacity(512);
        sip::write_response(&mut out, &req, code, reason, Some(b"pool"), &[], None);
        if let Ok(resp) = Message::parse(out.freeze(), &self.s.limits) {
            self.on_any_response(resp);
        }
    }

    /// The store answered an operation of ours.
    pub fn on_store_reply(&mut self, then: Resume, reply: Result<Reply, StoreError>, now: Now) {
        self.now = now;
        match then {
            Resume::ListLoad { origin, request, owner, list_uri, granted } => {
                let Ok(msg) = Message::parse(request, &self.s.limits) else { return };
                match reply {
                    Ok(Reply::Contacts(rows)) => self.list_loaded(origin, &msg, &owner, &list_uri, rows, granted),
                    Ok(_) | Err(_) => self.reply(
                        origin,
                        &msg,
                        503,
                        "Service Unavailable: contact list unavailable",
                        &[(HeaderName::RetryAfter, b"5")],
                    ),
                }
            }
            Resume::ListReload { id } => {
                if let Ok(Reply::Contacts(rows)) = reply {
                    self.list_reloaded(id, rows);
                }
            }
            Resume::UserLoad { aor } => self.user_loaded(aor, reply),
            Resume::Gained => self.gained(reply),
        }
    }

    pub fn on_timer(&mut self, timer: Timer, now: Now) {
        self.now = now;
        match timer {
            Timer::ListFlush(id) => self.list_flush_due(id),
            Timer::Restored(subs) => {
                for id in subs {
                    if self.presence.subs.get(id).is_some_and(|s| s.list.is_some()) {
                        self.list_restored(id);
                    } else {
                        self.send_notify(id, None);
                    }
                }
            }
            Timer::Gain => self.gain_due(),
            Timer::AppDeadline(id) => self.app_deadline(id),
        }
    }

    /// The periodic sweep (every 500 ms): expiries, timed-out transactions, gauges.
    pub fn on_tick(&mut self, now: Now) {
        self.now = now;
        self.registrar.expire(now.secs);
        self.expire_transactions();
        self.presence_sweep();
        self.flush_dirty_subscriptions();
        self.release_foreign();
        self.directory_sweep();
        self.helpdesk_sweep();
        self.report_in_flight();
        self.pstats.bindings_now.set(self.registrar.binding_count() as u64);
        self.pstats.transactions_now.set(self.txns.len() as u64);
        self.pstats.app_waiting_now.set(self.agents.waiting() as u64);
        self.pstats.backend_subscriptions_now.set(self.presence.backends.len() as u64);
    }

    /// Every [`super::persist::WRITE_BEHIND`]: the soft state that changed, to the store.
    pub fn on_write_behind(&mut self, now: Now) {
        self.now = now;
        self.write_out_soft_state();
    }

    /// Shutdown: everything not yet saved, to the store.
    pub fn on_drain(&mut self, now: Now) {
        self.now = now;
        self.write_out_soft_state();
        self.flush_dirty_subscriptions();
    }

    /// Allow/block entries changed in the store (the full list).
    pub fn on_policies(&mut self, rows: &[crate::store::PolicyRow], now: Now) {
        self.now = now;
        self.policies_replaced(rows);
    }

    /// Contact lists changed in the store.
    pub fn on_contacts_changed(&mut self, now: Now) {
        self.now = now;
        self.reload_lists();
    }

    /// At start: this core's share of the soft state saved by the previous run.
    pub fn on_restore(&mut self, rows: Vec<StateRow>, now: Now) {
        self.now = now;
        let restored = self.restore(rows);
        if !restored.is_empty() {
            // Watchers hear the current state again once the edges are reachable (connectors queue meanwhile).
            self.push(Action::Timer { after: Duration::from_millis(500), timer: Timer::Restored(restored) });
        }
    }

    // ---- the logic ----

    /// Responses to our NOTIFYs and to forked requests are told apart by their branch.
    fn on_any_response(&mut self, msg: Message) {
        if super::directory::is_answer_response(&msg) {
            return;
        }
        if super::apps::agents::is_app_response(&msg) {
            // Only from an application's connection (the shell tells them apart): an edge may not answer for one.
            bump(&self.pstats.responses_unmatched);
            return;
        }
        if msg.top_via().and_then(|v| v.branch()).is_some_and(presence::notify::is_notify_branch) {
            self.notify_response(&msg);
        } else {
            self.on_response(msg);
        }
    }

    /// Sends bytes to a connection of any core.
    pub(crate) fn deliver(&mut self, conn: ConnId, bytes: Bytes) {
        if conn == super::apps::NO_ORIGIN {
            // An answer to a request the pool made itself (an auto-reply): nobody waits for it.
            return;
        }
        self.push(Action::Send { conn, bytes });
    }

    /// Hands a request to the core that owns `key`, or handles it here.
    pub(crate) fn hand_to_core(&mut self, key: &[u8], stage: Stage, origin: ConnId, msg: Message) {
        let core = shard_for(key, self.count);
        if core == self.id {
            self.at_stage(stage, origin, msg);
            return;
        }
        let bytes = msg.bytes().clone();
        self.push(Action::Mesh { core, msg: PoolMsg::Request { stage, origin, bytes } });
    }

    pub(crate) fn reply(
        &mut self,
        origin: ConnId,
        req: &Message,
        code: u16,
        reason: &str,
        extra: &[(HeaderName, &[u8])],
    ) {
        if req.method() == Some(&Method::Ack) {
            return;
        }
        let mut out = BytesMut::with_capacity(512);
        let tag = to_tag(req);
        sip::write_response(&mut out, req, code, reason, Some(tag.as_bytes()), extra, None);
        self.deliver(origin, out.freeze());
    }

    fn on_request(&mut self, origin: ConnId, msg: Message) {
        let Some(method) = msg.method().cloned() else { return };
        if msg.header(HeaderName::ParapetFederated).is_some() && method != Method::Options {
            self.federated_request(origin, msg);
            return;
        }
        if crate::proto::from_member(&msg) {
            self.member_request(origin, msg);
            return;
        }
        if method == Method::Notify && crate::proto::is_flow_closed_notice(&msg) {
            let key = msg.request_uri().and_then(|r| Uri::parse(r).ok()).map(|u| aor_of(&u)).unwrap_or_default();
            self.hand_to_core(key.as_bytes(), Stage::FlowClosed, origin, msg);
            return;
        }
        match method {
            Method::Register => {
                let key = aor_of(&msg.to().uri);
                self.hand_to_core(key.as_bytes(), Stage::Auth, origin, msg);
            }
            Method::Message => {
                let key = aor_of(&msg.from().uri);
                self.hand_to_core(key.as_bytes(), Stage::Auth, origin, msg);
            }
            Method::Options => {
                self.reply(
                    origin,
                    &msg,
                    200,
                    "OK",
                    &[
                        (HeaderName::Allow, ALLOW),
                        (HeaderName::AllowEvents, presence::ALLOW_EVENTS),
                        (HeaderName::Accept, b"text/plain, application/pidf+xml"),
                    ],
                );
            }
            Method::Ack => {}
            Method::Subscribe | Method::Publish => {
                // The package is checked before authentication: 489 says nothing about any user.
                if presence::event_of(&msg).is_some_and(|(p, _)| presence::subscriptions::Package::parse(&p).is_some())
                {
                    let key = aor_of(&msg.from().uri);
                    self.hand_to_core(key.as_bytes(), Stage::Auth, origin, msg);
                } else {
                    bump(&self.pstats.bad_event);
                    self.reply(origin, &msg, 489, "Bad Event", &[(HeaderName::AllowEvents, presence::ALLOW_EVENTS)])
                }
            }
            _ => self.reply(origin, &msg, 501, "Not Implemented", &[(HeaderName::Allow, ALLOW)]),
        }
    }

    fn at_stage(&mut self, stage: Stage, origin: ConnId, msg: Message) {
        if !self.user_ready(stage, origin, &msg) {
            return;
        }
        self.resume_stage(stage, origin, msg);
    }

    /// A request at its stage, its user's state in memory.
    pub(crate) fn resume_stage(&mut self, stage: Stage, origin: ConnId, msg: Message) {
        match stage {
            Stage::Auth => {
                let Some(user) = self.authenticate(origin, &msg) else { return };
                match msg.method() {
                    Some(Method::Register) => {
                        if let Some(home) = self.homed_elsewhere(&msg.to().uri) {
                            let reason = format!("Forbidden: this user's home is pool \"{home}\", not this one");
                            self.reply(origin, &msg, 403, &reason, &[]);
                            return;
                        }
                        self.register(origin, &msg, &user);
                        self.persist_bindings(&user.aor);
                        self.presence_registration(&user.aor);
                    }
                    _ => {
                        if crate::proto::wants_identity_notice(&msg) {
                            // The edge asked: its flow proved this From, and may speak for it from now on.
                            let (code, reason) = crate::proto::IDENTITY_NOTICE;
                            self.reply(origin, &msg, code, reason, &[crate::proto::identity_header(&user.aor)]);
                        }
                        if msg.method() == Some(&Method::Message) && self.is_directory_request(&msg) {
                            self.directory_message(origin, &msg, &user.aor);
                            return;
                        }
                        let target =
                            msg.request_uri().and_then(|r| Uri::parse(r).ok()).map(|u| aor_of(&u)).unwrap_or_default();
                        self.hand_to_core(target.as_bytes(), Stage::Route, origin, msg);
                    }
                }
            }
            Stage::FlowClosed => {
                let aor = msg.request_uri().and_then(|r| Uri::parse(r).ok()).map(|u| aor_of(&u)).unwrap_or_default();
                let flow = msg.header(HeaderName::ParapetFlow).map(flow_key);
                let removed = flow.map_or(0, |f| self.registrar.remove_flow(f));
                if removed > 0 {
                    self.pstats.bindings_of_closed_flows.add(removed as u64);
                    self.persist_bindings(&aor);
                    self.presence_registration(&aor);
                }
                self.reply(origin, &msg, 200, "OK", &[]);
            }
            Stage::Route if self.target_homed_elsewhere(origin, &msg) => {}
            Stage::Route if self.rules_applied(origin, &msg) => {}
            Stage::Route if msg.method() == Some(&Method::Message) && self.helpdesk_took(origin, &msg) => {}
            Stage::Route => self.route_after_rules(origin, msg),
        }
    }

    /// On the target's core, once no routing rule decided (or a rule's fallback says "deliver as usual").
    pub(crate) fn route_after_rules(&mut self, origin: ConnId, msg: Message) {
        match msg.method() {
            Some(Method::Publish) => self.publish(origin, &msg),
            // Only federated NOTIFYs get here (users' NOTIFYs are not served).
            Some(Method::Notify) => self.backend_notify(origin, &msg),
            Some(Method::Subscribe) => self.subscribe(origin, &msg),
            Some(Method::Message) if self.im_refused(&msg) => {
                // The same answer an offline recipient gives: the sender cannot tell it is blocked.
                bump(&self.pstats.messages_refused_policy);
                self.reply(origin, &msg, 480, "Temporarily Unavailable", &[]);
            }
            Some(Method::Message) if !self.archive_admits(origin, &msg) => {}
            Some(Method::Message) if self.deliver_to_agent(origin, &msg) => {}
            _ => self.route(origin, msg),
        }
    }

    /// A request an edge received from a federated peer (which vouched for its From domain): no digest
    /// authentication, since the user is not ours; only MESSAGE, only From a foreign domain, only to ours.
    fn federated_request(&mut self, origin: ConnId, msg: Message) {
        bump(&self.pstats.federated_requests);
        if self.is_local_host(&msg.from().uri) {
            self.reply(origin, &msg, 403, "Forbidden: a federated request From our own domain", &[]);
            return;
        }
        if !msg.request_uri_parsed().is_some_and(|u| self.is_local_host(&u)) {
            self.reply(origin, &msg, 404, "Not Found: domain not served here", &[]);
            return;
        }
        match msg.method() {
            Some(Method::Message) => {
                let target = msg.request_uri_parsed().map(|u| aor_of(&u)).unwrap_or_default();
                self.hand_to_core(target.as_bytes(), Stage::Route, origin, msg);
            }
            // A partner's user watching one of ours: authorized like any watcher (allow/block lists, defaults).
            Some(Method::Subscribe) if presence::event_of(&msg).is_some_and(|(p, _)| p == "presence") => {
                let target = msg.request_uri_parsed().map(|u| aor_of(&u)).unwrap_or_default();
                self.hand_to_core(target.as_bytes(), Stage::Route, origin, msg);
            }
            Some(Method::Subscribe) => {
                bump(&self.pstats.bad_event);
                self.reply(origin, &msg, 489, "Bad Event", &[(HeaderName::AllowEvents, b"presence")]);
            }
            // A partner's NOTIFY for a contact-list subscription of ours: to the list's core (its URI is our Contact).
            Some(Method::Notify) => {
                let list = msg.request_uri_parsed().map(|u| aor_of(&u)).unwrap_or_default();
                self.hand_to_core(list.as_bytes(), Stage::Route, origin, msg);
            }
            Some(Method::Ack) => {}
            _ => self.reply(origin, &msg, 403, "Forbidden: not served to federated peers", &[]),
        }
    }

    /// A request another member of this pool sent through an edge (which vouched for it): a contact list's (or a
    /// help desk's) back-end SUBSCRIBE to a user of ours, or a NOTIFY in such a dialog for a list of ours
    /// (`presence::backend`), or a help desk's MESSAGE to its member. No digest: the sending member authenticated
    /// the list's owner, or the desk's sender.
    fn member_request(&mut self, origin: ConnId, msg: Message) {
        if !self.is_local_host(&msg.from().uri) || !msg.request_uri_parsed().is_some_and(|u| self.is_local_host(&u)) {
            self.reply(origin, &msg, 403, "Forbidden: a member's request is between users of this pool", &[]);
            return;
        }
        let target = msg.request_uri_parsed().map(|u| aor_of(&u)).unwrap_or_default();
        match msg.method() {
            Some(Method::Subscribe) if presence::event_of(&msg).is_some_and(|(p, _)| p == "presence") => {
                self.hand_to_core(target.as_bytes(), Stage::Route, origin, msg);
            }
            Some(Method::Notify) => self.hand_to_core(target.as_bytes(), Stage::Route, origin, msg),
            // A help desk's conversation for its member held here (`helpdesk::watch`): delivered as usual.
            Some(Method::Message) => self.hand_to_core(target.as_bytes(), Stage::Route, origin, msg),
            Some(Method::Ack) => {}
            _ => self.reply(origin, &msg, 403, "Forbidden: not served between members", &[]),
        }
    }

    /// The home pool of a local user this pool does not serve (`[pool] home`), if `uri` names one.
    fn homed_elsewhere(&self, uri: &Uri<'_>) -> Option<String> {
        // `home` first: a single pool (the common case) pays for no alias string on each request.
        if self.s.home.is_empty() || !self.is_local_host(uri) {
            return None;
        }
        self.homed_elsewhere_alias(&String::from_utf8_lossy(&uri.user_unescaped()))
    }

    /// The home pool of the local user `alias` when this pool does not serve it (`[pool] home`).
    pub(crate) fn homed_elsewhere_alias(&self, alias: &str) -> Option<String> {
        if self.s.home.is_empty() {
            return None;
        }
        let user = self.dir.view.users.get(alias.as_bytes())?;
        let served = user.home == self.s.home || (user.home.is_empty() && self.s.home_default);
        (!served).then(|| if user.home.is_empty() { "(default)".to_string() } else { user.home.clone() })
    }

    /// A request for a user homed on another pool (the edge routes by the directory it reads, which may differ
    /// from ours for a moment): answered 404 naming the home, so the misrouting is plain.
    fn target_homed_elsewhere(&mut self, origin: ConnId, msg: &Message) -> bool {
        let Some(home) = msg.request_uri_parsed().and_then(|u| self.homed_elsewhere(&u)) else { return false };
        bump(&self.pstats.homed_elsewhere);
        let reason = format!("Not Found: this user's home is pool \"{home}\", not this one");
        self.reply(origin, msg, 404, &reason, &[]);
        true
    }

    /// A MESSAGE whose (existing, local) recipient does not accept IM from the sender.
    fn im_refused(&self, msg: &Message) -> bool {
        let Some(ruri) = msg.request_uri_parsed() else { return false };
        if !self.is_local_host(&ruri) || self.dir.view.users.get(&ruri.user_unescaped()).is_none() {
            return false;
        }
        !self.presence.policy.may_message(&aor_of(&ruri), &aor_of(&msg.from().uri))
    }

    pub(crate) fn is_local_host(&self, uri: &Uri<'_>) -> bool {
        self.s.local_hosts.iter().any(|h| uri.host_eq(h.as_bytes()))
    }
}

#[cfg(test)]
pub(crate) mod tests;
