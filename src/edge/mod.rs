//! The edge (access proxy): terminates remote users' TLS, admits their requests only once they have registered,
//! forwards them to the pool over mutual TLS, and brings requests from the pool back to the right user's own
//! connection, hiding every internal address on the way out.
//!
//! Owns, per core: the remote-user flows (this core's [`ConnTable`] plus [`flows::Flows`]), the connector to the
//! pool, the internal listener on which the pool reaches users, and the transactions toward users whose internal
//! Vias it keeps ([`downstream`]). Requests toward the pool need no state: the return path travels in our Via
//! branch and in the flow token of the Path we add to REGISTERs ([`token`]).
//!
//! Data path: user --TLS--> edge core (accepting) --mTLS--> pool; pool --mTLS--> edge internal listener (any core)
//! --mesh--> core owning the user's flow --TLS--> user. Responses retrace Via.
//!
//! Architecture invariant: a flow's state is read and written only on the core that owns its connection; a
//! message for another core's flow crosses the mesh first.

pub mod downstream;
pub mod federation;
pub mod flows;
pub mod guard;
pub mod policy;
pub mod reload;
pub mod token;
pub mod upstream;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use glommio::channels::channel_mesh::Senders;

use crate::config::Config;
use crate::net::conn::bump;
use crate::net::conn::Permit;
use crate::net::listener::{ensure_port_free, listen, tls_slot, ListenSpec, TlsSlot};
use crate::net::{tls, Conn, ConnId, ConnKind, ConnTable, Connector, Handler, NetStats, SendError, Undeliverable};
use crate::shard::{self, Shard};
use crate::sip::{self, HeaderName, Limits, Message, Method, Uri};
use token::TokenKey;

crate::counters! {
    /// Per-core counters of the edge's own decisions (network counters are in [`NetStats`]).
    pub struct EdgeStats {
        requests_from_users,
        requests_to_users,
        responses_routed,
        responses_unroutable,
        flows_failed,
        too_many_hops,
        mesh_full,
        /// Requests refused because the flow has not registered yet (only REGISTER may pass).
        unauthenticated_refused,
        /// Requests whose From is not an identity this flow registered or proved, nor one it could prove.
        spoofed_from_refused,
        /// Requests of a registered flow From another of our users, sent to the pool to be proven (digest).
        identities_to_prove,
        /// Identities a flow proved on a request (the pool authenticated them) and may speak for since.
        identities_proven,
        /// Flow tokens or branches whose MAC did not verify.
        tokens_refused,
        /// Requests refused because the flow already has too many in flight.
        flow_busy,
        /// Transactions toward users that never got a final response.
        downstream_expired,
        /// Flows that have registered (a gauge).
        flows_authenticated_connections,
        /// Requests refused while shutting down.
        draining_refused,
        /// Messages refused by a source address's rate limit.
        rate_limited,
        /// Failed authentications seen (403 from the registrar).
        auth_failures,
        /// Bans this core decided.
        bans,
        /// Addresses banned right now (a gauge).
        banned_now,
        /// Requests from federated peers (partners, clearinghouses).
        requests_from_partners,
        /// Requests from the pool toward federated peers.
        requests_to_partners,
        /// Federated requests whose From domain the peer may not speak for (403).
        federation_spoofed_from,
        /// In-dialog requests from federated peers delivered straight to a user's flow (NOTIFY for a subscription
        /// a user of ours made through us).
        federation_in_dialog,
        /// Connections on the user port that presented a certificate not from the partners' CA: taken as users.
        user_certificates_ignored,
        /// Federated requests refused otherwise (method, domain not ours, no route, blocked).
        federation_refused,
        /// Requests a clearinghouse relayed from one member organization to another.
        federation_relayed,
        /// Federation connections closed because a reloaded table no longer admits their peer.
        federation_peers_cut,
        /// Federation tables this core applied after a reload.
        federation_reloads,
        /// Federated requests refused over their peer's message rate (503 with Retry-After).
        federation_rate_limited,
        /// Federation connections refused after the handshake: certificate not admitted by the table, or the
        /// peer at its connection cap.
        federation_connections_refused,
    }
}

/// Cross-core messages of the edge.
pub enum EdgeMsg {
    /// Write to a connection owned by the receiving core.
    Write { conn: ConnId, bytes: Bytes },
    /// A request from the pool (received on connection `from`) for a flow owned by the receiving core.
    ToUser { from: ConnId, flow: ConnId, bytes: Bytes },
    /// A response whose return path is state of the receiving core.
    Response { bytes: Bytes },
    /// Another core banned an address: refuse it here too, and close its connections.
    Ban { ip: std::net::IpAddr, until: std::time::Instant },
}

/// What every core of the edge shares, read-only (built once from config).
pub struct EdgeSettings {
    pub listen: SocketAddr,
    pub internal: SocketAddr,
    /// `listen` and `internal` as text, for the Vias and Paths we write.
    pub listen_text: String,
    pub internal_text: String,
    /// Host names (lowercase) a Route may carry and still mean this edge.
    pub myself: Vec<String>,
    pub limits: Limits,
    /// For what comes from trusted peers (the pool), and for re-parsing on another core.
    pub peer_limits: Limits,
    pub user_tls: Arc<rustls::ServerConfig>,
    pub internal_tls: Arc<rustls::ServerConfig>,
    pub pool_tls: Arc<rustls::ClientConfig>,
    pub pool_addr: SocketAddr,
    pub pool_name: String,
    pub pool_names: Vec<String>,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub queue_max: usize,
    pub connections_max: usize,
    /// Requests one flow may have in flight toward the pool.
    pub flow_in_flight_max: u32,
    /// Transactions toward users kept per core (their internal Vias wait here for the response).
    pub downstream_max: usize,
    pub downstream_timeout: Duration,
    pub key: TokenKey,
    /// How long a SIGTERM waits for transactions in flight before closing connections.
    pub drain_timeout: Duration,
    pub flood: crate::config::FloodConfig,
    /// `[edge.federation]`, when configured.
    pub fed: Option<federation::FedSettings>,
}

impl EdgeSettings {
    pub fn from_config(cfg: &Config) -> Result<EdgeSettings, String> {
        let e = cfg.edge.as_ref().ok_or("config: no [edge] section")?;
        let fed = match &e.federation {
            Some(f) => {
                Some(federation::FedSettings::new(f, &cfg.domain, e.listen, e.internal_listen, &e.cert, &e.key)?)
            }
            None => None,
        };
        // Partners without a federation listener of their own share the user port: it asks for a client
        // certificate (from the federation CA) without requiring one.
        let user_tls = match fed.as_ref().and_then(|f| f.tls.shared_user.clone()) {
            Some(shared) => shared,
            None => tls::server_config(&e.cert, &e.key, None).map_err(|e| e.to_string())?,
        };
        let internal_tls = tls::server_config(&e.cert, &e.key, Some(&e.ca)).map_err(|e| e.to_string())?;
        let pool_tls = tls::client_config(&e.ca, Some((&e.cert, &e.key))).map_err(|e| e.to_string())?;
        let mut myself = vec!["localhost".to_string(), e.listen.ip().to_string(), cfg.domain.to_ascii_lowercase()];
        myself.extend(tls::peer_dns_names(Some(&tls::load_certs(&e.cert).map_err(|e| e.to_string())?)));
        Ok(EdgeSettings {
            listen: e.listen,
            internal: e.internal_listen,
            listen_text: e.listen.to_string(),
            internal_text: e.internal_listen.to_string(),
            myself,
            limits: crate::proto::sip_limits(cfg),
            peer_limits: crate::proto::peer_limits(cfg),
            user_tls,
            internal_tls,
            pool_tls,
            pool_addr: e.pool.addr,
            pool_name: e.pool.name.clone(),
            pool_names: if e.pool_names.is_empty() { vec![e.pool.name.clone()] } else { e.pool_names.clone() },
            handshake_timeout: Duration::from_millis(e.handshake_timeout_ms),
            idle_timeout: Duration::from_millis(e.idle_timeout_ms),
            queue_max: e.flow_queue_max,
            connections_max: 200_000,
            flow_in_flight_max: 32,
            downstream_max: 65_536,
            downstream_timeout: Duration::from_secs(32),
            key: TokenKey::random()?,
            drain_timeout: Duration::from_secs(5),
            flood: e.flood,
            fed,
        })
    }
}

/// Starts the edge on its cores. Returns once every executor is running.
pub fn start(cfg: &Config, io_memory: usize) -> Result<Vec<glommio::ExecutorJoinHandle<()>>, String> {
    let e = cfg.edge.as_ref().ok_or("config: no [edge] section")?;
    ensure_port_free(e.listen, "[edge] listen").map_err(|e| e.to_string())?;
    ensure_port_free(e.internal_listen, "[edge] internal_listen").map_err(|e| e.to_string())?;
    if let Some(l) = e.federation.as_ref().and_then(|f| f.listen) {
        ensure_port_free(l, "[edge.federation] listen").map_err(|e| e.to_string())?;
    }
    let settings = Arc::new(EdgeSettings::from_config(cfg)?);
    if let Some(f) = &e.federation {
        reload::install(f);
    }
    shard::start("edge", &e.cores, 4096, io_memory, move |shard: Shard<EdgeMsg>| {
        let settings = settings.clone();
        async move { run_core(shard, settings).await }
    })
    .map_err(|e| e.to_string())
}

async fn run_core(shard: Shard<EdgeMsg>, s: Arc<EdgeSettings>) {
    let Shard { id, count, senders, mut receivers } = shard;
    let pool = Rc::new(Connector::new(s.pool_addr, &s.pool_name, s.pool_tls.clone(), s.handshake_timeout));
    let stats = Arc::new(NetStats::default());
    let times = Arc::new(crate::net::conn::NetTimes::default());
    let estats = Arc::new(EdgeStats::default());
    {
        let (n, e, t) = (stats.clone(), estats.clone(), times.clone());
        crate::mgmt::metrics::register(
            "edge",
            id,
            Box::new(move |f| {
                n.visit(f);
                e.visit(f);
                t.handle.visit("handle", f);
            }),
        );
    }
    let edge = Rc::new(Edge {
        id,
        count,
        table: RefCell::new(ConnTable::new(id, s.queue_max, stats.clone())),
        stats,
        times,
        estats,
        mesh: senders,
        pool,
        s: s.clone(),
        flows: RefCell::new(flows::Flows::default()),
        down: RefCell::new(downstream::DownTxns::new(id, s.downstream_max)),
        guard: RefCell::new(guard::Guard::new(s.flood)),
        scratch: RefCell::new(Vec::with_capacity(256)),
        partners: RefCell::default(),
        fed_table: RefCell::new(s.fed.as_ref().map(|f| Arc::new(f.cfg.clone()))),
        fed_generation: std::cell::Cell::new(reload::generation()),
        fed_limits: RefCell::new(reload::current_limits()),
        fed_tls: RefCell::new(s.fed.as_ref().map(|f| f.tls.clone())),
        user_tls_slot: tls_slot(s.user_tls.clone()),
        fed_tls_slot: s.fed.as_ref().filter(|f| f.cfg.listen.is_some()).map(|f| tls_slot(f.tls.server.clone())),
    });
    for (_, rx) in receivers.streams() {
        let edge = edge.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                edge.on_mesh(msg);
            }
        })
        .detach();
    }
    {
        let edge = edge.clone();
        let idle_ms = s.idle_timeout.as_millis() as u64;
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_secs(1)).await;
                let (idle, slow) = edge.table.borrow().close_stale(idle_ms, MESSAGE_DEADLINE_MS);
                edge.stats.idle_closed.add(idle as u64);
                edge.stats.slow_senders_closed.add(slow as u64);
                edge.sweep();
            }
        })
        .detach();
    }
    let users = ListenSpec {
        addr: s.listen,
        tls: edge.user_tls_slot.clone(),
        kind: ConnKind::User,
        handshake_timeout: s.handshake_timeout,
        admit_names: None,
        connections_max: s.connections_max,
    };
    let internal = ListenSpec {
        addr: s.internal,
        tls: tls_slot(s.internal_tls.clone()),
        kind: ConnKind::PeerIn,
        handshake_timeout: s.handshake_timeout,
        admit_names: Some(s.pool_names.clone()),
        connections_max: s.connections_max,
    };
    tracing::info!(core = id, listen = %s.listen, internal = %s.internal, "edge core ready");
    // Without a listener of its own, partners come in on the user port (see [`Handler::admit_peer`]).
    let fed = s.fed.as_ref().and_then(|f| {
        f.cfg.listen.zip(edge.fed_tls_slot.clone()).map(|(addr, tls)| ListenSpec {
            addr,
            tls,
            kind: ConnKind::Partner,
            handshake_timeout: s.handshake_timeout,
            // Admitted by the table in force on this core ([`Handler::admit_peer`]), which a reload may change.
            admit_names: None,
            connections_max: s.connections_max,
        })
    });
    let mut listeners = Vec::with_capacity(3);
    for spec in [Some(users), Some(internal), fed].into_iter().flatten() {
        match listen(spec, edge.clone()) {
            Ok(task) => listeners.push(task),
            Err(e) => {
                tracing::error!(core = id, error = %e, "edge listener failed");
                std::process::exit(1);
            }
        }
    }
    shard::drain_requested().await;
    // Stop accepting: dropping the tasks closes the listeners.
    drop(listeners);
    // Draining: the listeners are closed; let transactions in flight finish, then close every flow so that
    // clients re-register elsewhere at once instead of waiting for a timeout.
    let done = shard::wait_until(s.drain_timeout, || edge.in_flight() == 0).await;
    tracing::info!(core = id, in_flight = edge.in_flight(), finished = done, "edge draining: closing connections");
    edge.table.borrow().close_all();
    shard::wait_until(Duration::from_secs(2), || edge.table.borrow().is_empty()).await;
}

/// Branches of the edge's own notices to the pool.
const NOTICE_BRANCH_PREFIX: &[u8] = b"z9hG4bKx";

/// A message must be complete this long after its first byte arrived (slowloris).
const MESSAGE_DEADLINE_MS: u64 = 10_000;

pub struct Edge {
    id: usize,
    count: usize,
    table: RefCell<ConnTable>,
    stats: Arc<NetStats>,
    times: Arc<crate::net::conn::NetTimes>,
    estats: Arc<EdgeStats>,
    mesh: Senders<EdgeMsg>,
    pool: Rc<Connector>,
    s: Arc<EdgeSettings>,
    flows: RefCell<flows::Flows>,
    down: RefCell<downstream::DownTxns>,
    guard: RefCell<guard::Guard>,
    scratch: RefCell<Vec<u8>>,
    /// Connectors to federation peers, by certificate name (made on first use).
    partners: federation::PartnerConnectors,
    /// This core's copy of the federation table (replaced on reload, see [`reload`]).
    fed_table: RefCell<Option<Arc<crate::config::FederationConfig>>>,
    /// The reload generation `fed_table` comes from.
    fed_generation: std::cell::Cell<u64>,
    /// The per-peer limits of federation, shared by every core (replaced with `fed_table`).
    fed_limits: RefCell<Option<Arc<federation::Limiter>>>,
    /// The TLS configurations in force for federation on this core (swapped by a reload), and the slots of the
    /// listeners that use them.
    fed_tls: RefCell<Option<federation::FedTls>>,
    user_tls_slot: TlsSlot,
    fed_tls_slot: Option<TlsSlot>,
}

impl Handler for Edge {
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

    /// Federation connections (a partner's to us, ours to a partner) are server connections: their size limit is
    /// `[edge.federation] message_bytes_max` of the table in force when they start, not the users' one.
    fn limits_for(&self, conn: &Conn) -> Limits {
        let federated = conn.kind == ConnKind::Partner || (conn.kind == ConnKind::PeerOut && !self.is_pool(conn));
        match (federated, self.fed_table.borrow().as_ref()) {
            (true, Some(t)) => Limits { message_bytes_max: t.message_bytes_max, ..self.s.limits },
            _ => match conn.kind {
                ConnKind::User | ConnKind::Partner => self.s.limits,
                ConnKind::PeerIn | ConnKind::PeerOut => self.s.peer_limits,
            },
        }
    }

    fn on_message(self: &Rc<Self>, conn: &Rc<Conn>, msg: Message) {
        if !msg.is_request() {
            // Up-branches carry no MAC: only the pool, which got them from us, may hand them back.
            self.route_response(msg, self.is_pool_conn(conn));
            return;
        }
        match conn.kind {
            ConnKind::User => self.from_user(conn, &msg),
            // Our outbound connection to a federation peer carries its requests too: those are a partner's.
            ConnKind::PeerOut if !self.is_pool(conn) => self.from_partner(conn, &msg),
            ConnKind::PeerIn | ConnKind::PeerOut => self.to_user(conn.id, msg),
            ConnKind::Partner => self.from_partner(conn, &msg),
        }
    }

    fn on_closed(self: &Rc<Self>, conn: &Rc<Conn>) {
        if conn.kind == ConnKind::User {
            let aors = self.flows.borrow_mut().remove(conn.id);
            if !aors.is_empty() && !crate::shard::draining() {
                self.flow_closed(conn.id, &aors);
            }
        }
    }

    fn admit(&self, peer: SocketAddr, kind: ConnKind) -> bool {
        if kind != ConnKind::User {
            return true;
        }
        let verdict = self.guard.borrow_mut().admit_connection(peer.ip(), std::time::Instant::now());
        match verdict {
            guard::Verdict::Allow => true,
            guard::Verdict::Refuse => false,
            guard::Verdict::Ban(reason) => {
                self.ban(peer.ip(), reason);
                false
            }
        }
    }

    /// On the federation listener, a partner admitted by the table and under its connection cap. On the user
    /// port, a client without a certificate is a user (who must register); one with a certificate (which the
    /// handshake verified against the federation CA, the only one the user port asks for when partners share
    /// it) is a partner, admitted exactly as on the federation listener, or refused.
    fn admit_peer(
        &self,
        kind: ConnKind,
        names: &[String],
        chain: &[rustls::pki_types::CertificateDer<'_>],
    ) -> Option<(ConnKind, Permit)> {
        // On the user port shared with partners, a certificate makes a partner only if it chains to the partners'
        // CA; any other (a client's own, as baresip must present one) leaves the connection a user's.
        let partner_cert = kind == ConnKind::User
            && !chain.is_empty()
            && self.fed_tls.borrow().as_ref().is_some_and(|t| tls::chains_to(t.partner_verifier.as_ref(), chain));
        if kind == ConnKind::User && !chain.is_empty() && !partner_cert {
            bump(&self.estats.user_certificates_ignored);
        }
        let federated = kind == ConnKind::Partner || partner_cert;
        if !federated {
            return Some((kind, None));
        }
        let slot = self.admit_federation_peer(kind, names)?;
        Some((ConnKind::Partner, Some(Box::new(slot))))
    }

    fn release(&self, peer: SocketAddr, kind: ConnKind) {
        if kind == ConnKind::User {
            self.guard.borrow_mut().connection_closed(peer.ip());
        }
    }
}

impl Undeliverable for Edge {
    /// A user's request the pool could not be reached for: answer it back along its Via (ours is on top).
    fn undeliverable(self: &Rc<Self>, bytes: Bytes, code: u16, reason: &'static str) {
        let Ok(req) = Message::parse(bytes, &self.s.peer_limits) else { return };
        if !req.is_request() || req.method() == Some(&Method::Ack) {
            return;
        }
        let mut out = BytesMut::with_capacity(512);
        sip::write_response(&mut out, &req, code, reason, Some(b"edge"), &[], None);
        if let Ok(resp) = Message::parse(out.freeze(), &self.s.peer_limits) {
            self.route_response(resp, true);
        }
    }
}

impl Edge {
    fn on_mesh(self: &Rc<Self>, msg: EdgeMsg) {
        match msg {
            EdgeMsg::Write { conn, bytes } => self.deliver(conn, bytes),
            EdgeMsg::ToUser { from, flow, bytes } => match Message::parse(bytes, &self.s.peer_limits) {
                Ok(m) => self.to_local_user(from, flow, m),
                Err(e) => tracing::error!(error = %e, "a request that parsed on one core failed on another"),
            },
            EdgeMsg::Response { bytes } => match Message::parse(bytes, &self.s.peer_limits) {
                // Checked by the core that received it.
                Ok(m) => self.route_response(m, true),
                Err(e) => tracing::error!(error = %e, "a response that parsed on one core failed on another"),
            },
            EdgeMsg::Ban { ip, until } => {
                self.guard.borrow_mut().ban(ip, until);
                self.close_address(ip);
            }
        }
    }

    /// Bans an address on every core, closes its connections, and tells the management API.
    fn ban(&self, ip: std::net::IpAddr, reason: &'static str) {
        let duration = self.guard.borrow().ban_duration();
        let until = std::time::Instant::now() + duration;
        self.guard.borrow_mut().ban(ip, until);
        bump(&self.estats.bans);
        tracing::warn!(%ip, reason, seconds = duration.as_secs(), "address banned");
        crate::mgmt::metrics::record_ban("edge", ip, reason, duration);
        for core in 0..self.count {
            if core != self.id && self.mesh.try_send_to(core, EdgeMsg::Ban { ip, until }).is_err() {
                bump(&self.estats.mesh_full);
            }
        }
        self.close_address(ip);
    }

    fn close_address(&self, ip: std::net::IpAddr) {
        let table = self.table.borrow();
        for c in table.iter().filter(|c| c.kind == ConnKind::User && c.peer.ip() == ip) {
            table.close(c.id);
        }
    }

    /// Hands a message to the core that owns its state; false when the mesh is full (the caller answers 503).
    fn to_core(self: &Rc<Self>, core: usize, msg: EdgeMsg) -> bool {
        if self.mesh.try_send_to(core, msg).is_err() {
            bump(&self.estats.mesh_full);
            return false;
        }
        true
    }

    /// Writes to a connection on whichever core owns it. Best effort: a vanished connection is counted.
    fn deliver(self: &Rc<Self>, conn: ConnId, bytes: Bytes) {
        if usize::from(conn.core) == self.id {
            if let Err(e) = self.table.borrow().send(conn, &bytes) {
                bump(&self.estats.flows_failed);
                if e == SendError::Full {
                    tracing::info!(?conn, "write queue full: connection closed");
                }
            }
            return;
        }
        self.to_core(usize::from(conn.core), EdgeMsg::Write { conn, bytes });
    }

    fn reply(self: &Rc<Self>, conn: ConnId, req: &Message, code: u16, reason: &str) {
        if req.method() == Some(&Method::Ack) {
            return;
        }
        let mut out = BytesMut::with_capacity(512);
        sip::write_response(&mut out, req, code, reason, Some(b"edge"), &[], None);
        self.deliver(conn, out.freeze());
    }

    /// Whether a mutual-TLS peer is (one of) our pool(s), by certificate name.
    fn is_pool(&self, conn: &Conn) -> bool {
        conn.peer_names.iter().any(|n| self.s.pool_names.iter().any(|p| p.eq_ignore_ascii_case(n)))
    }

    fn is_myself(&self, uri: &Uri<'_>) -> bool {
        let named = self.s.myself.iter().any(|m| uri.host_eq(m.as_bytes()));
        let port_ok = match uri.port {
            None => true,
            Some(p) => p == self.s.listen.port(),
        };
        named && port_ok && !uri.host.is_empty()
    }

    /// Any response: our top Via says where it goes, and on which core that knowledge lives.
    /// `from_pool`: it came from the pool (or from our own code), so an up-branch may be believed.
    fn route_response(self: &Rc<Self>, msg: Message, from_pool: bool) {
        let Some(branch) = msg.top_via().and_then(|v| v.branch()) else {
            bump(&self.estats.responses_unroutable);
            return;
        };
        if branch.starts_with(NOTICE_BRANCH_PREFIX) {
            // The pool's answer to one of our own notices (flow closed): nothing waits for it.
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
            self.response_to_user(back, msg);
        } else {
            bump(&self.estats.responses_unroutable);
            tracing::debug!("response without our Via branch: dropped");
        }
    }

    /// Tells the pool that a registered flow is gone, so its bindings go now rather than at expiry (watchers see the
    /// user offline at once). One internal NOTIFY per AOR (`Event: x-parapet-flow-closed`, the flow's Path URI in
    /// `P-Parapet-Flow`); users cannot send that event (the gate refuses it).
    fn flow_closed(self: &Rc<Self>, flow: ConnId, aors: &[String]) {
        let mut path = Vec::with_capacity(96);
        token::write_flow_uri(&self.s.key, &mut path, flow, &self.s.internal_text);
        for aor in aors {
            let ruri = format!("sip:{aor}");
            let via = format!(
                "SIP/2.0/TLS {};branch={}{:016x}",
                self.s.internal_text,
                std::str::from_utf8(NOTICE_BRANCH_PREFIX).unwrap_or("z9hG4bKx"),
                token::hash(&path)
            );
            let from = format!("<sip:edge@{}>;tag=flow", self.s.internal_text);
            let to = format!("<{ruri}>");
            let call_id = format!("flow-{:016x}-{}", flow.to_u64(), self.id);
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
                    (HeaderName::Event, crate::proto::FLOW_CLOSED_EVENT.as_bytes()),
                    (HeaderName::SubscriptionState, b"terminated"),
                    (HeaderName::ParapetFlow, &path),
                ],
                None,
            );
            // Best effort: if the pool cannot be reached, the bindings expire on their own.
            self.pool.send(self, out.freeze());
        }
    }

    /// A connection to or from our pool (its certificate carries a pool name).
    fn is_pool_conn(&self, conn: &Conn) -> bool {
        matches!(conn.kind, ConnKind::PeerIn | ConnKind::PeerOut)
            && conn.peer_names.iter().any(|n| self.s.pool_names.iter().any(|p| p.eq_ignore_ascii_case(n)))
    }

    /// Requests in flight through this core, both ways.
    fn in_flight(&self) -> usize {
        self.flows.borrow().in_flight() + self.down.borrow().len()
    }

    /// Once a second: expire transactions toward users, refresh gauges.
    fn sweep(self: &Rc<Self>) {
        self.apply_federation_reload();
        let now = std::time::Instant::now();
        let expired = self.down.borrow_mut().expire(now);
        let mut guard = self.guard.borrow_mut();
        guard.sweep(now);
        self.estats.banned_now.set(guard.banned_count() as u64);
        drop(guard);
        self.estats.downstream_expired.add(expired as u64);
        self.estats.flows_authenticated_connections.set(self.flows.borrow().authenticated() as u64);
    }
}
