//! The pool (front end): registrar with digest authentication, and the proxy that delivers MESSAGE to every
//! registered device of a user through the edge that holds its flow.
//!
//! Owns, per core: the bindings and nonces of the users whose AOR hashes to this core ([`shard_for`]), the
//! MESSAGE transactions it forked, its connections from edges, and its connectors to edges' internal listeners.
//! A request travels: receiving core -> (mesh) core owning the *sender* (authentication) -> (mesh) core owning
//! the *target* (lookup, fork) -> responses come back to that core's connectors -> (mesh) receiving core.
//!
//! Architecture invariant: user state is touched only on the core that owns the user's AOR.

pub mod auth;
pub mod digest;
pub mod persist;
pub mod presence;
pub mod proxy;
pub mod register;
pub mod registrar;
pub mod users;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use glommio::channels::channel_mesh::Senders;

use crate::config::Config;
// The edge–pool contract's AOR key, under the name the pool's modules use.
use crate::net::conn::bump;
use crate::net::listener::{ensure_port_free, listen, ListenSpec};
use crate::net::{tls, Conn, ConnId, ConnKind, ConnTable, Connector, Handler, NetStats, SendError, Undeliverable};
pub use crate::proto::aor_of;
use crate::shard::{self, shard_for, Shard};
use crate::sip::{self, HeaderName, Limits, Message, Method, Uri};
use digest::{Algorithm, NonceKeeper};
use registrar::{Registrar, RegistrarLimits};
use users::Users;

crate::counters! {
    /// Per-core counters of the pool.
    pub struct PoolStats {
        challenges,
        auth_failures,
        registrations,
        messages_forked,
        messages_delivered,
        messages_offline,
        messages_unknown_user,
        transactions_timed_out,
        mesh_full,
        responses_unmatched,
        /// Bindings removed because the edge reported their flow closed.
        bindings_of_closed_flows,
        /// Bindings held by this core (a gauge, updated by the sweep).
        bindings_now,
        /// Forked transactions in flight on this core (a gauge, updated by the sweep).
        transactions_now,
        /// SUBSCRIBE or PUBLISH for an event package we do not serve (489).
        bad_event,
        /// MESSAGE refused because the recipient blocks the sender (answered like an offline recipient: 480).
        messages_refused_policy,
        /// Accepted PUBLISH requests (initial, refresh, modify, remove).
        publications,
        /// PUBLISH refused: someone else's presentity, wrong media type, too many devices.
        publish_refused,
        /// PUBLISH bodies that are not well-formed PIDF (400).
        pidf_malformed,
        /// PUBLISH with a SIP-If-Match naming no current publication (412).
        etag_mismatches,
        /// New subscriptions accepted.
        subscriptions,
        /// SUBSCRIBE refused for want of a route back, or a full table.
        subscribe_refused,
        /// SUBSCRIBE refused: the watcher holds too many subscriptions (per-user cap).
        subscriptions_over_cap,
        unsubscribes,
        subscriptions_expired,
        notifies_sent,
        /// NOTIFYs answered with a failure (the subscription was removed).
        notifies_failed,
        /// Publications held by this core (a gauge, updated by the sweep).
        publications_now,
        /// Subscriptions held by this core (a gauge, updated by the sweep).
        subscriptions_now,
        /// Subscriptions to a contact list (RFC 4662), also counted in `subscriptions`.
        list_subscriptions,
        /// Soft-state writes dropped because the store's queue was full (the next change rewrites them).
        store_queue_full,
        /// Requests from federated peers, as vouched for by an edge.
        federated_requests,
        /// Requests for foreign domains handed to an edge for federation.
        federated_out,
        /// SUBSCRIBEs of our users for presentities in other organizations, sent on to them.
        subscriptions_federated_out,
        /// Back-end SUBSCRIBEs (a contact list's contact in another organization), initial and refreshes.
        backend_subscribes,
        /// NOTIFYs received for them.
        backend_notifies,
        /// Back-end subscriptions refused by the partner, or over this core's bound (the contact shows closed).
        backend_refused,
        /// Back-end subscriptions held right now (a gauge).
        backend_subscriptions_now,
    }
}

/// Where in its journey across cores a request is.
#[derive(Clone, Copy, Debug)]
pub enum Stage {
    /// On the core owning the authenticating user.
    Auth,
    /// Authenticated; on the core owning the target.
    Route,
    /// An edge's notice that a flow closed; on the core owning the AOR it had registered.
    FlowClosed,
}

pub enum PoolMsg {
    Write {
        conn: ConnId,
        bytes: Bytes,
    },
    Request {
        stage: Stage,
        origin: ConnId,
        bytes: Bytes,
    },
    /// Presence across cores (resource-list watches and the states they bring back).
    Presence(presence::remote::Msg),
}

/// Read-only settings shared by every core.
pub struct PoolSettings {
    pub domain: String,
    pub realm: String,
    pub listen: SocketAddr,
    pub limits: Limits,
    pub server_tls: Arc<rustls::ServerConfig>,
    pub client_tls: Arc<rustls::ClientConfig>,
    pub edges: Vec<crate::config::Peer>,
    pub users: Users,
    pub registrar: RegistrarLimits,
    pub algorithms: Vec<Algorithm>,
    pub nonce_ttl_s: u64,
    pub nonce_secret: [u8; 32],
    pub transaction_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Hosts that mean "this domain" in a Request-URI.
    pub local_hosts: Vec<String>,
    pub presence: presence::PresenceSettings,
    /// The durable store, on its own thread.
    pub store: crate::store::thread::StoreHandle,
    /// Soft state saved before the last stop, one share per core (each core takes its own at start).
    pub restore: Vec<std::sync::Mutex<Vec<crate::store::StateRow>>>,
}

impl PoolSettings {
    pub fn from_config(cfg: &Config) -> Result<PoolSettings, String> {
        let p = cfg.pool.as_ref().ok_or("config: no [pool] section")?;
        let realm = p.realm.clone().unwrap_or_else(|| cfg.domain.clone());
        let dir = crate::store::directory::Directory::load(&p.directory).map_err(|e| e.to_string())?;
        let users = Users::from_directory(&dir, &cfg.domain, &realm);
        let mut algorithms = Vec::new();
        for (i, a) in p.auth.algorithms.iter().enumerate() {
            algorithms.push(Algorithm::parse(a.as_bytes()).ok_or_else(|| {
                format!("config: [pool.auth] algorithms.{i}: unknown algorithm {a:?} (MD5 or SHA-256)")
            })?);
        }
        if algorithms.is_empty() {
            return Err("config: [pool.auth] algorithms: at least one of MD5, SHA-256".into());
        }
        let (presence, store) = presence::settings_from_config(p)?;
        let restore = persist::saved_state(&store, p.cores.len())?;
        let mut nonce_secret = [0u8; 32];
        getrandom::getrandom(&mut nonce_secret).map_err(|e| format!("no randomness for nonces: {e}"))?;
        Ok(PoolSettings {
            domain: cfg.domain.to_ascii_lowercase(),
            realm,
            listen: p.listen,
            // The pool only talks to trusted peers, whose messages carry the headers the edge added.
            limits: crate::proto::peer_limits(cfg),
            server_tls: tls::server_config(&p.cert, &p.key, Some(&p.ca)).map_err(|e| e.to_string())?,
            client_tls: tls::client_config(&p.ca, Some((&p.cert, &p.key))).map_err(|e| e.to_string())?,
            edges: p.edges.clone(),
            users,
            registrar: RegistrarLimits {
                min_expires: p.registrar.min_expires_s,
                max_expires: p.registrar.max_expires_s,
                default_expires: p.registrar.default_expires_s,
                bindings_per_aor_max: p.registrar.bindings_per_aor_max,
                aors_max: 1_000_000,
            },
            algorithms,
            nonce_ttl_s: p.auth.nonce_ttl_s,
            nonce_secret,
            transaction_timeout: Duration::from_millis(p.transaction_timeout_ms),
            handshake_timeout: Duration::from_millis(p.handshake_timeout_ms),
            local_hosts: vec![cfg.domain.to_ascii_lowercase()],
            presence,
            store,
            restore,
        })
    }
}

pub fn start(cfg: &Config, io_memory: usize) -> Result<Vec<glommio::ExecutorJoinHandle<()>>, String> {
    let p = cfg.pool.as_ref().ok_or("config: no [pool] section")?;
    ensure_port_free(p.listen, "[pool] listen").map_err(|e| e.to_string())?;
    let settings = Arc::new(PoolSettings::from_config(cfg)?);
    tracing::info!(users = settings.users.len(), realm = %settings.realm, "pool directory loaded");
    shard::start("pool", &p.cores, 4096, io_memory, move |shard: Shard<PoolMsg>| {
        let settings = settings.clone();
        async move { run_core(shard, settings).await }
    })
    .map_err(|e| e.to_string())
}

async fn run_core(shard: Shard<PoolMsg>, s: Arc<PoolSettings>) {
    let Shard { id, count, senders, mut receivers } = shard;
    let edges = s
        .edges
        .iter()
        .map(|e| (e.addr, Rc::new(Connector::new(e.addr, &e.name, s.client_tls.clone(), s.handshake_timeout))))
        .collect();
    let stats = Arc::new(NetStats::default());
    let times = Arc::new(crate::net::conn::NetTimes::default());
    let pstats = Arc::new(PoolStats::default());
    {
        let (n, p, t) = (stats.clone(), pstats.clone(), times.clone());
        crate::mgmt::metrics::register(
            "pool",
            id,
            Box::new(move |f| {
                n.visit(f);
                p.visit(f);
                t.handle.visit("handle", f);
            }),
        );
    }
    let pool = Rc::new(Pool {
        id,
        count,
        table: RefCell::new(ConnTable::new(id, 4096, stats.clone())),
        stats,
        times,
        pstats,
        mesh: senders,
        registrar: RefCell::new(Registrar::new(s.registrar)),
        nonces: RefCell::new(NonceKeeper::new(s.nonce_secret, id as u16, s.nonce_ttl_s, 65_536)),
        txns: RefCell::new(proxy::Transactions::new(65_536)),
        presence: RefCell::new(presence::Presence::new(
            &s.presence,
            id,
            count,
            u32::from_le_bytes([s.nonce_secret[0], s.nonce_secret[1], s.nonce_secret[2], s.nonce_secret[3]]),
        )),
        edges,
        unsaved: RefCell::default(),
        s: s.clone(),
    });
    for (_, rx) in receivers.streams() {
        let pool = pool.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                pool.on_mesh(msg);
            }
        })
        .detach();
    }
    let saved = s.restore.get(id).and_then(|m| m.lock().ok().map(|mut v| std::mem::take(&mut *v))).unwrap_or_default();
    let restored = pool.restore(saved);
    if !restored.is_empty() {
        // Watchers hear the current state again once the edges are reachable (connectors queue meanwhile).
        let pool = pool.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(500)).await;
            for sub in restored {
                pool.send_notify(sub, None);
            }
        })
        .detach();
    }
    if let Ok(rx) = s.store.watch_contacts() {
        let pool = pool.clone();
        glommio::spawn_local(async move {
            while rx.recv_async().await.is_ok() {
                pool.reload_lists();
            }
        })
        .detach();
    }
    match s.store.watch_policies() {
        Ok(rx) => {
            let pool = pool.clone();
            glommio::spawn_local(async move {
                while let Ok(rows) = rx.recv_async().await {
                    pool.policies_replaced(&rows);
                }
            })
            .detach();
        }
        Err(e) => tracing::warn!(core = id, error = %e, "allow/block changes will not reach this core until restart"),
    }
    {
        let pool = pool.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(500)).await;
                pool.sweep();
            }
        })
        .detach();
    }
    {
        let pool = pool.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(persist::WRITE_BEHIND).await;
                pool.write_out_soft_state();
            }
        })
        .detach();
    }
    let spec = ListenSpec {
        addr: s.listen,
        tls: crate::net::listener::tls_slot(s.server_tls.clone()),
        kind: ConnKind::PeerIn,
        handshake_timeout: s.handshake_timeout,
        admit_names: Some(s.edges.iter().map(|e| e.name.clone()).collect()),
        connections_max: 10_000,
    };
    tracing::info!(core = id, listen = %s.listen, "pool core ready");
    let listener = match listen(spec, pool.clone()) {
        Ok(task) => task,
        Err(e) => {
            tracing::error!(core = id, error = %e, "pool listener failed");
            std::process::exit(1);
        }
    };
    shard::drain_requested().await;
    // Stop accepting: dropping the task closes the listener.
    drop(listener);
    let done = shard::wait_until(Duration::from_secs(5), || pool.txns.borrow().is_empty()).await;
    tracing::info!(core = id, finished = done, "pool draining: closing connections");
    pool.write_out_soft_state();
    pool.flush_dirty_subscriptions();
    pool.table.borrow().close_all();
    shard::wait_until(Duration::from_secs(2), || pool.table.borrow().is_empty()).await;
}

pub struct Pool {
    id: usize,
    count: usize,
    table: RefCell<ConnTable>,
    stats: Arc<NetStats>,
    times: Arc<crate::net::conn::NetTimes>,
    pub pstats: Arc<PoolStats>,
    mesh: Senders<PoolMsg>,
    registrar: RefCell<Registrar>,
    nonces: RefCell<NonceKeeper>,
    txns: RefCell<proxy::Transactions>,
    /// Soft state changed since the last write-out ([`persist`]).
    unsaved: RefCell<persist::Unsaved>,
    presence: RefCell<presence::Presence>,
    edges: HashMap<SocketAddr, Rc<Connector>>,
    s: Arc<PoolSettings>,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Handler for Pool {
    fn table(&self) -> &RefCell<ConnTable> {
        &self.table
    }
    fn stats(&self) -> &NetStats {
        &self.stats
    }
    fn times(&self) -> &crate::net::conn::NetTimes {
        &self.times
    }
    fn limits(&self) -> &Limits {
        &self.s.limits
    }
    fn on_message(self: &Rc<Self>, conn: &Rc<Conn>, msg: Message) {
        if msg.is_request() {
            self.on_request(conn.id, msg);
        } else {
            self.on_any_response(msg);
        }
    }
}

impl Undeliverable for Pool {
    /// A forked request that could not reach its edge: answer it ourselves, as that branch's response.
    fn undeliverable(self: &Rc<Self>, bytes: Bytes, code: u16, reason: &'static str) {
        let Ok(req) = Message::parse(bytes, &self.s.limits) else { return };
        let mut out = BytesMut::with_capacity(512);
        sip::write_response(&mut out, &req, code, reason, Some(b"pool"), &[], None);
        if let Ok(resp) = Message::parse(out.freeze(), &self.s.limits) {
            self.on_any_response(resp);
        }
    }
}

impl Pool {
    /// Responses to our NOTIFYs and to forked requests are told apart by their branch.
    fn on_any_response(self: &Rc<Self>, msg: Message) {
        if msg.top_via().and_then(|v| v.branch()).is_some_and(presence::notify::is_notify_branch) {
            self.notify_response(&msg);
        } else {
            self.on_response(msg);
        }
    }

    fn on_mesh(self: &Rc<Self>, msg: PoolMsg) {
        match msg {
            PoolMsg::Write { conn, bytes } => self.deliver(conn, bytes),
            PoolMsg::Request { stage, origin, bytes } => match Message::parse(bytes, &self.s.limits) {
                Ok(m) => self.at_stage(stage, origin, m),
                Err(e) => tracing::error!(error = %e, "a message that parsed once failed on another core"),
            },
            PoolMsg::Presence(m) => self.on_presence_msg(m),
        }
    }

    /// Sends bytes to a connection of any core.
    pub(crate) fn deliver(self: &Rc<Self>, conn: ConnId, bytes: Bytes) {
        if usize::from(conn.core) == self.id {
            if let Err(SendError::Full) = self.table.borrow().send(conn, &bytes) {
                tracing::warn!(?conn, "edge connection queue full: closed");
            }
            return;
        }
        if self.mesh.try_send_to(usize::from(conn.core), PoolMsg::Write { conn, bytes }).is_err() {
            bump(&self.pstats.mesh_full);
        }
    }

    /// Hands a request to the core that owns `key`, or handles it here.
    fn to_core(self: &Rc<Self>, key: &[u8], stage: Stage, origin: ConnId, msg: Message) {
        let core = shard_for(key, self.count);
        if core == self.id {
            self.at_stage(stage, origin, msg);
            return;
        }
        let bytes = msg.bytes().clone();
        if self.mesh.try_send_to(core, PoolMsg::Request { stage, origin, bytes }).is_err() {
            bump(&self.pstats.mesh_full);
            self.reply(origin, &msg, 503, "Service Unavailable", &[]);
        }
    }

    pub(crate) fn reply(
        self: &Rc<Self>,
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

    fn on_request(self: &Rc<Self>, origin: ConnId, msg: Message) {
        let Some(method) = msg.method().cloned() else { return };
        if msg.header(HeaderName::ParapetFederated).is_some() && method != Method::Options {
            self.federated_request(origin, msg);
            return;
        }
        if method == Method::Notify && crate::proto::is_flow_closed_notice(&msg) {
            let key = msg.request_uri().and_then(|r| Uri::parse(r).ok()).map(|u| aor_of(&u)).unwrap_or_default();
            self.to_core(key.as_bytes(), Stage::FlowClosed, origin, msg);
            return;
        }
        match method {
            Method::Register => {
                let key = aor_of(&msg.to().uri);
                self.to_core(key.as_bytes(), Stage::Auth, origin, msg);
            }
            Method::Message => {
                let key = aor_of(&msg.from().uri);
                self.to_core(key.as_bytes(), Stage::Auth, origin, msg);
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
                    self.to_core(key.as_bytes(), Stage::Auth, origin, msg);
                } else {
                    bump(&self.pstats.bad_event);
                    self.reply(origin, &msg, 489, "Bad Event", &[(HeaderName::AllowEvents, presence::ALLOW_EVENTS)])
                }
            }
            _ => self.reply(origin, &msg, 501, "Not Implemented", &[(HeaderName::Allow, ALLOW)]),
        }
    }

    fn at_stage(self: &Rc<Self>, stage: Stage, origin: ConnId, msg: Message) {
        match stage {
            Stage::Auth => {
                let Some(user) = self.authenticate(origin, &msg) else { return };
                match msg.method() {
                    Some(Method::Register) => {
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
                        let target =
                            msg.request_uri().and_then(|r| Uri::parse(r).ok()).map(|u| aor_of(&u)).unwrap_or_default();
                        self.to_core(target.as_bytes(), Stage::Route, origin, msg);
                    }
                }
            }
            Stage::FlowClosed => {
                let aor = msg.request_uri().and_then(|r| Uri::parse(r).ok()).map(|u| aor_of(&u)).unwrap_or_default();
                let flow = msg.header(HeaderName::ParapetFlow).map(flow_key);
                let removed = flow.map_or(0, |f| self.registrar.borrow_mut().remove_flow(f));
                if removed > 0 {
                    self.pstats.bindings_of_closed_flows.add(removed as u64);
                    self.persist_bindings(&aor);
                    self.presence_registration(&aor);
                }
                self.reply(origin, &msg, 200, "OK", &[]);
            }
            Stage::Route => match msg.method() {
                Some(Method::Publish) => self.publish(origin, &msg),
                // Only federated NOTIFYs get here (users' NOTIFYs are not served).
                Some(Method::Notify) => self.backend_notify(origin, &msg),
                Some(Method::Subscribe) => self.subscribe(origin, &msg),
                Some(Method::Message) if self.im_refused(&msg) => {
                    // The same answer an offline recipient gives: the sender cannot tell it is blocked.
                    bump(&self.pstats.messages_refused_policy);
                    self.reply(origin, &msg, 480, "Temporarily Unavailable", &[]);
                }
                _ => self.route(origin, msg),
            },
        }
    }

    /// A request an edge received from a federated peer (which vouched for its From domain): no digest
    /// authentication, since the user is not ours; only MESSAGE, only From a foreign domain, only to ours.
    fn federated_request(self: &Rc<Self>, origin: ConnId, msg: Message) {
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
                self.to_core(target.as_bytes(), Stage::Route, origin, msg);
            }
            // A partner's user watching one of ours: authorized like any watcher (allow/block lists, defaults).
            Some(Method::Subscribe) if presence::event_of(&msg).is_some_and(|(p, _)| p == "presence") => {
                let target = msg.request_uri_parsed().map(|u| aor_of(&u)).unwrap_or_default();
                self.to_core(target.as_bytes(), Stage::Route, origin, msg);
            }
            Some(Method::Subscribe) => {
                bump(&self.pstats.bad_event);
                self.reply(origin, &msg, 489, "Bad Event", &[(HeaderName::AllowEvents, b"presence")]);
            }
            // A partner's NOTIFY for a contact-list subscription of ours: to the list's core (its URI is our Contact).
            Some(Method::Notify) => {
                let list = msg.request_uri_parsed().map(|u| aor_of(&u)).unwrap_or_default();
                self.to_core(list.as_bytes(), Stage::Route, origin, msg);
            }
            Some(Method::Ack) => {}
            _ => self.reply(origin, &msg, 403, "Forbidden: not served to federated peers", &[]),
        }
    }

    /// A MESSAGE whose (existing, local) recipient does not accept IM from the sender.
    fn im_refused(&self, msg: &Message) -> bool {
        let Some(ruri) = msg.request_uri_parsed() else { return false };
        if !self.is_local_host(&ruri) || self.s.users.get(&ruri.user_unescaped()).is_none() {
            return false;
        }
        !self.presence.borrow().policy.may_message(&aor_of(&ruri), &aor_of(&msg.from().uri))
    }

    fn sweep(self: &Rc<Self>) {
        let now = now_secs();
        self.registrar.borrow_mut().expire(now);
        self.expire_transactions();
        self.presence_sweep();
        self.flush_dirty_subscriptions();
        self.pstats.bindings_now.set(self.registrar.borrow().binding_count() as u64);
        self.pstats.transactions_now.set(self.txns.borrow().len() as u64);
        self.pstats.backend_subscriptions_now.set(self.presence.borrow().backends.len() as u64);
    }

    pub(crate) fn is_local_host(&self, uri: &Uri<'_>) -> bool {
        self.s.local_hosts.iter().any(|h| uri.host_eq(h.as_bytes()))
    }
}

/// Methods the pool serves.
const ALLOW: &[u8] = b"REGISTER, MESSAGE, SUBSCRIBE, PUBLISH, OPTIONS";

/// The registrar's name for an edge flow: a hash of the Path URI the edge wrote (the same bytes in the REGISTER
/// and in the edge's flow-closed notice).
pub fn flow_key(path: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.trim_ascii() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A To tag for responses we generate: stable for a request, so a retransmission gets the same one.
pub(crate) fn to_tag(req: &Message) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in req.call_id().iter().chain(req.from().tag().unwrap_or(b"")) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}
