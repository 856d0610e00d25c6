//! The shell around one core's [`EdgeCore`]: everything of the edge that touches glommio, sockets or the mesh.
//!
//! It owns the core's state machine (borrowed for exactly one step), the [`ConnTable`], the mesh senders, the
//! connector to the pool and those to federation peers, the listeners' TLS slots and the core's tasks (the mesh
//! receive loops, the once-a-second tick). It implements [`Handler`] and [`Undeliverable`] for the network layer;
//! each callback is one step: borrow the core, hand it the input with `now`, take its actions, end the borrow,
//! then perform the actions. An action that fails in a way the logic must answer (a flow's write queue full, the
//! mesh toward a flow's core full) is handed back as one more step.

#[path = "members_shell.rs"]
mod members_shell;
pub(super) use members_shell::start_roster_reader;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::channels::channel_mesh::Senders;

use super::core::{is_pool_name, Action, ConnInfo, EdgeCore};
use super::federation::FedTls;
use super::{reload, EdgeMsg, EdgeSettings, EdgeStats, MESSAGE_DEADLINE_MS};
use crate::config::PeerAddr;
use crate::net::conn::{bump, NetTimes, Permit};
use crate::net::listener::{listen, tls_slot, ListenSpec, TlsSlot};
use crate::net::local::{self, LocalIdentity, LocalSpec};
use crate::net::{tls, Conn, ConnId, ConnKind, ConnTable, Connector, Handler, NetStats, SendError, Undeliverable};
use crate::shard::{self, Shard};
use crate::sip::{Limits, Message};

/// Connectors to discovered domains per core (our users' requests name the domains: a bound on what they cost).
const DISCOVERED_CONNECTORS_MAX: usize = 1024;

pub(super) struct Shell {
    id: usize,
    core: RefCell<EdgeCore>,
    table: RefCell<ConnTable>,
    stats: Arc<NetStats>,
    times: Arc<NetTimes>,
    estats: Arc<EdgeStats>,
    mesh: Senders<EdgeMsg>,
    pool: Rc<Connector>,
    /// One connector per pool member (`[edge.roster]`), indexed as the core's members.
    members: Vec<Rc<Connector>>,
    /// The roster generation this core last took ([`super::members_shell`]).
    roster_generation: Cell<u64>,
    /// One connector per `[[edge.pools]]` entry, in configured order (None: an enterprise pool, whose members
    /// are in `members`).
    home_pools: Vec<Option<Rc<Connector>>>,
    /// The roster generation of each `[[edge.pools]]` entry this core last took.
    home_roster_generations: Vec<Cell<u64>>,
    /// The home table generation this core last took.
    homes_generation: Cell<u64>,
    s: Arc<EdgeSettings>,
    /// Connectors to federation peers, by certificate name (made on first use).
    partners: super::federation::PartnerConnectors,
    /// The reload generation this core's federation table comes from.
    fed_generation: Cell<u64>,
    /// The TLS configurations in force for federation on this core (swapped by a reload), and the slots of the
    /// listeners that use them.
    fed_tls: RefCell<Option<FedTls>>,
    user_tls_slot: TlsSlot,
    fed_tls_slot: Option<TlsSlot>,
    /// The action buffer, reused from step to step (empty while a step's actions are performed, so that a step
    /// started by an action gets one of its own).
    spare: Cell<Vec<Action>>,
}

fn info(conn: &Conn) -> ConnInfo<'_> {
    ConnInfo { id: conn.id, kind: conn.kind, peer: conn.peer, names: &conn.peer_names }
}

pub(super) async fn run_core(shard: Shard<EdgeMsg>, s: Arc<EdgeSettings>) {
    let Shard { id, count, senders, mut receivers } = shard;
    // A pool co-located on this thread is reached in memory ([`crate::net::local`]), as the edge it admits.
    let me = LocalIdentity { names: s.own_names.clone(), addr: s.internal };
    let pool = Rc::new(Connector::new(s.pool_addr, &s.pool_name, s.pool_tls.clone(), s.handshake_timeout).local_as(me));
    let stats = Arc::new(NetStats::default());
    let times = Arc::new(NetTimes::default());
    let estats = Arc::new(EdgeStats::default());
    {
        let (n, e, t) = (stats.clone(), estats.clone(), times.clone());
        // The resolver is one thread for the process: its count is reported once, by core 0's visitor.
        let dns = s.fed.as_ref().and_then(|f| f.resolver.clone()).filter(|_| id == 0);
        crate::mgmt::metrics::register(
            "edge",
            id,
            Box::new(move |f| {
                n.visit(f);
                e.visit(f);
                if let Some(r) = &dns {
                    f("federation_dns_errors", r.errors.get());
                }
                t.handle.visit("handle", f);
            }),
        );
    }
    let mut core = EdgeCore::new(s.clone(), id, count, estats.clone()).with_fed_limits(reload::current_limits());
    // The home pools were read before the cores started: routed by from the first request.
    let homes_generation = s.homes.generation();
    core.on_homes(s.homes.get());
    let edge = Rc::new(Shell {
        id,
        core: RefCell::new(core),
        table: RefCell::new(ConnTable::new(id, s.queue_max, stats.clone())),
        stats,
        times,
        estats,
        mesh: senders,
        pool,
        members: members_shell::connectors(&s),
        roster_generation: Cell::new(0),
        home_pools: s
            .home_pools
            .iter()
            .map(|p| {
                p.as_ref().map(|p| Rc::new(Connector::new(p.addr, &p.name, s.pool_tls.clone(), s.handshake_timeout)))
            })
            .collect(),
        home_roster_generations: s.home_rosters.iter().map(|_| Cell::new(0)).collect(),
        homes_generation: Cell::new(homes_generation),
        s: s.clone(),
        partners: RefCell::default(),
        fed_generation: Cell::new(reload::generation()),
        fed_tls: RefCell::new(s.fed.as_ref().map(|f| f.tls.clone())),
        user_tls_slot: tls_slot(s.user_tls.clone()),
        fed_tls_slot: s.fed.as_ref().filter(|f| f.cfg.listen.is_some()).map(|f| tls_slot(f.tls.server.clone())),
        spare: Cell::new(Vec::with_capacity(16)),
    });
    for (_, rx) in receivers.streams() {
        let edge = edge.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                edge.step(|core, now| core.on_mesh(msg, now));
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
                edge.apply_federation_reload();
                edge.take_roster();
                edge.take_homes();
                edge.step(|core, now| core.on_tick(now));
            }
        })
        .detach();
    }
    if !edge.members.is_empty() {
        let edge = edge.clone();
        glommio::spawn_local(async move {
            loop {
                edge.probe_members();
                glommio::timer::sleep(super::members::PROBE_EVERY).await;
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
    // The pool co-located on this thread (if any) reaches the internal listener in memory.
    let local = local::serve(
        LocalSpec {
            addr: s.internal,
            kind: ConnKind::PeerIn,
            admit_names: s.pool_names.clone(),
            own_names: s.own_names.clone(),
        },
        edge.clone(),
    );
    shard::drain_requested().await;
    // Stop accepting: dropping the tasks closes the listeners.
    drop(listeners);
    drop(local);
    // Draining: the listeners are closed; let transactions in flight finish, then close every flow so that
    // clients re-register elsewhere at once instead of waiting for a timeout.
    let in_flight = || edge.core.borrow().in_flight();
    let done = shard::wait_until(s.drain_timeout, || in_flight() == 0).await;
    tracing::info!(core = id, in_flight = in_flight(), finished = done, "edge draining: closing connections");
    edge.table.borrow().close_all();
    shard::wait_until(Duration::from_secs(2), || edge.table.borrow().is_empty()).await;
}

impl Shell {
    /// One step of the core: the input, with the time and whether we are shutting down; then its actions.
    fn step<R>(self: &Rc<Self>, input: impl FnOnce(&mut EdgeCore, Instant) -> R) -> R {
        let mut actions = self.spare.take();
        let r = {
            let mut core = self.core.borrow_mut();
            core.set_draining(shard::draining());
            let r = input(&mut core, Instant::now());
            core.take_actions(&mut actions);
            r
        };
        for a in actions.drain(..) {
            self.perform(a);
        }
        self.spare.set(actions);
        r
    }

    fn perform(self: &Rc<Self>, a: Action) {
        match a {
            Action::Send { conn, bytes } => self.deliver(conn, bytes),
            Action::ToFlow { flow, bytes, txn, from, req } => {
                let queued = self.table.borrow().send(flow, &bytes).is_ok();
                if !queued {
                    self.step(|core, _| core.flow_write_failed(txn, from, &req));
                }
            }
            Action::Mesh { core, msg } => {
                self.to_core(core, msg);
            }
            Action::MeshToFlow { core, from, flow, req } => {
                let bytes = req.bytes().clone();
                if !self.to_core(core, EdgeMsg::ToUser { from, flow, bytes }) {
                    self.step(|c, _| c.mesh_refused(from, &req));
                }
            }
            Action::ToPool(bytes) => self.pool.send(self, bytes),
            Action::ToHomePool { pool, bytes } => match self.home_pools.get(pool).and_then(Option::as_ref) {
                Some(c) => c.send(self, bytes),
                None => tracing::error!(pool, "no connector for this home pool"),
            },
            Action::ToMember { member, bytes } => match self.members.get(member) {
                Some(c) => c.send(self, bytes),
                None => tracing::error!(member, "no connector for this pool member"),
            },
            Action::ToPartner { name, addr, bytes } => self.partner_connector(&name, &addr).send(self, bytes),
            Action::ToDiscovered { domain, bytes } => match self.discovered_connector(&domain) {
                Some(c) => c.send(self, bytes),
                None => self.undeliverable(bytes, 503, "Service Unavailable: too many discovered domains at once"),
            },
            Action::Discover { domain } => self.discover(domain),
            Action::CloseAddress(ip) => self.close_address(ip),
            Action::PauseReading { conn, duration } => {
                if let Some(c) = self.table.borrow().get(conn) {
                    c.pause_reading(duration);
                }
            }
            Action::RecordBan { ip, reason, duration } => {
                crate::mgmt::metrics::record_ban("edge", ip, reason, duration)
            }
        }
    }

    fn close_address(&self, ip: std::net::IpAddr) {
        let table = self.table.borrow();
        for c in table.iter().filter(|c| c.kind == ConnKind::User && c.peer.ip() == ip) {
            table.close(c.id);
        }
    }

    /// Hands a message to another core; false when the mesh is full (counted).
    fn to_core(&self, core: usize, msg: EdgeMsg) -> bool {
        if self.mesh.try_send_to(core, msg).is_err() {
            bump(&self.estats.mesh_full);
            return false;
        }
        true
    }

    /// Writes to a connection on whichever core owns it. Best effort: a vanished connection is counted.
    fn deliver(&self, conn: ConnId, bytes: Bytes) {
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

    /// The client TLS configuration toward federation peers in force on this core.
    fn fed_client_tls(&self) -> Arc<rustls::ClientConfig> {
        match (self.fed_tls.borrow().as_ref(), self.s.fed.as_ref()) {
            (Some(t), _) => t.client.clone(),
            (None, Some(f)) => f.tls.client.clone(),
            // Federation actions come only from a core with federation configured.
            (None, None) => self.s.pool_tls.clone(),
        }
    }

    /// This core's connector to a federation peer, made on first use.
    fn partner_connector(&self, name: &str, addr: &PeerAddr) -> Rc<Connector> {
        if let Some(c) = self.partners.borrow().get(name) {
            return c.clone();
        }
        let tls = self.fed_client_tls();
        let timeout = self.s.handshake_timeout;
        let resolver = self.s.fed.as_ref().and_then(|f| f.resolver.clone());
        let c = match (addr, resolver) {
            (PeerAddr::Ip(a), _) => Connector::federated(*a, name, tls, timeout),
            (PeerAddr::Name { host, port }, Some(r)) => {
                let q = crate::net::dns::Query { host: host.clone(), port: *port };
                Connector::federated_by_name(q, r, name, tls, timeout)
            }
            // The resolver starts with the federation settings, so this is never reached; a connector to nowhere
            // answers 503 rather than a panic.
            (PeerAddr::Name { .. }, None) => {
                Connector::federated(SocketAddr::from(([0, 0, 0, 0], addr.port())), name, tls, timeout)
            }
        };
        let c = Rc::new(c);
        self.partners.borrow_mut().insert(name.to_string(), c.clone());
        c
    }

    /// This core's connector to a discovered domain's edge (by its SRV record), made on first use; at most
    /// [`DISCOVERED_CONNECTORS_MAX`] (idle ones are forgotten to make room; None when all are busy).
    fn discovered_connector(&self, domain: &str) -> Option<Rc<Connector>> {
        let key = format!("srv:{domain}");
        if let Some(c) = self.partners.borrow().get(&key) {
            return Some(c.clone());
        }
        let discovered = |k: &String| k.starts_with("srv:");
        if self.partners.borrow().keys().filter(|k| discovered(k)).count() >= DISCOVERED_CONNECTORS_MAX {
            self.partners.borrow_mut().retain(|k, c| !discovered(k) || c.is_busy());
            if self.partners.borrow().keys().filter(|k| discovered(k)).count() >= DISCOVERED_CONNECTORS_MAX {
                return None;
            }
        }
        let tls = self.fed_client_tls();
        let timeout = self.s.handshake_timeout;
        let c = match self.s.fed.as_ref().and_then(|f| f.resolver.clone()) {
            Some(r) => Connector::discovered(domain, r, tls, timeout),
            // Never reached (the resolver starts with federation): a connector to nowhere answers 503.
            None => Connector::federated(SocketAddr::from(([0, 0, 0, 0], 5061)), domain, tls, timeout),
        };
        let c = Rc::new(c);
        self.partners.borrow_mut().insert(key, c.clone());
        Some(c)
    }

    /// Looks up `domain`'s federation SRV targets off the core and hands them to the core.
    fn discover(self: &Rc<Self>, domain: String) {
        let Some(r) = self.s.fed.as_ref().and_then(|f| f.resolver.clone()) else {
            self.step(|core, now| core.discovery_answer(&domain, Err("no resolver".into()), now));
            return;
        };
        let me = self.clone();
        glommio::spawn_local(async move {
            let targets = r.federation_srv(&domain).await;
            let names = targets.map(|t| t.into_iter().map(|t| t.name).collect()).map_err(|e| e.to_string());
            me.step(|core, now| core.discovery_answer(&domain, names, now));
        })
        .detach();
    }

    /// Once a second, before the core's tick: when a reload published a new table, the core takes it, and here the
    /// TLS configurations are swapped, connectors to peers no longer routed to forgotten, and the federation
    /// connections of peers the table no longer admits closed.
    fn apply_federation_reload(self: &Rc<Self>) {
        let Some(p) = reload::published_since(self.fed_generation.get()) else { return };
        self.fed_generation.set(p.generation);
        let new = p.table.clone();
        if !self.step(|core, _| core.apply_federation_table(p.table, p.limits)) {
            return;
        }
        if let Some(tls) = p.tls {
            // New handshakes (accepted or made) use the reloaded certificates and trust; established ones stay.
            if let Some(shared) = &tls.shared_user {
                *self.user_tls_slot.borrow_mut() = shared.clone();
            }
            if let Some(slot) = &self.fed_tls_slot {
                *slot.borrow_mut() = tls.server.clone();
            }
            for c in self.partners.borrow().values() {
                c.set_tls(tls.client.clone());
            }
            *self.fed_tls.borrow_mut() = Some(tls);
        }
        let same = |a: &PeerAddr, c: &Connector| match (a, c.query()) {
            (PeerAddr::Ip(ip), None) => *ip == c.addr(),
            (PeerAddr::Name { host, port }, Some(q)) => *host == q.host && *port == q.port,
            _ => false,
        };
        let routed = |name: &str, c: &Connector| {
            new.partners.iter().any(|p| p.cert_name == name && p.addr.as_ref().is_some_and(|a| same(a, c)))
                || new.clearinghouses.iter().any(|h| h.name == name && same(&h.addr, c))
        };
        // Connectors to discovered domains stay while discovery does (their identity is checked per connection).
        let discovered = |name: &str| new.dns.discovery && name.starts_with("srv:");
        self.partners.borrow_mut().retain(|name, c| discovered(name) || routed(name, c));
        let table = self.table.borrow();
        let mut cut = 0u64;
        for c in table.iter() {
            let federated =
                c.kind == ConnKind::Partner || (c.kind == ConnKind::PeerOut && !is_pool_name(&self.s, &c.peer_names));
            if federated && !super::federation::admits(&new, &c.peer_names) {
                tracing::info!(peer = %c.peer, names = ?c.peer_names, "federation peer removed by reload: closing");
                table.close(c.id);
                cut += 1;
            }
        }
        self.estats.federation_peers_cut.add(cut);
        tracing::info!(core = self.id, generation = p.generation, closed = cut, "federation table applied");
    }
}

impl Handler for Shell {
    fn table(&self) -> &RefCell<ConnTable> {
        &self.table
    }
    fn stats(&self) -> &NetStats {
        &self.stats
    }
    fn times(&self) -> &NetTimes {
        &self.times
    }
    fn limits(&self) -> &Limits {
        &self.s.limits
    }

    fn limits_for(&self, conn: &Conn) -> Limits {
        self.core.borrow().limits_for(&info(conn))
    }

    fn message_deadline(&self, _conn: &Conn) -> Option<Duration> {
        Some(Duration::from_millis(MESSAGE_DEADLINE_MS))
    }

    fn on_message(self: &Rc<Self>, conn: &Rc<Conn>, msg: Message) {
        self.step(|core, now| core.on_message(&info(conn), msg, now));
    }

    fn on_closed(self: &Rc<Self>, conn: &Rc<Conn>) {
        self.step(|core, now| core.on_closed(&info(conn), now));
    }

    fn admit(&self, peer: SocketAddr, kind: ConnKind) -> bool {
        let mut actions = self.spare.take();
        let admitted = {
            let mut core = self.core.borrow_mut();
            let admitted = core.admit(peer, kind, Instant::now());
            core.take_actions(&mut actions);
            admitted
        };
        // A ban's actions (close, record, tell the other cores): none needs a connector or a step of its own.
        for a in actions.drain(..) {
            match a {
                Action::Mesh { core, msg } => {
                    self.to_core(core, msg);
                }
                Action::CloseAddress(ip) => self.close_address(ip),
                Action::RecordBan { ip, reason, duration } => {
                    crate::mgmt::metrics::record_ban("edge", ip, reason, duration)
                }
                _ => tracing::error!("an admission asked for more than a ban's actions: dropped"),
            }
        }
        self.spare.set(actions);
        admitted
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
        let slot = self.core.borrow().admit_federation_peer(kind, names, Instant::now())?;
        Some((ConnKind::Partner, Some(Box::new(slot))))
    }

    fn release(&self, peer: SocketAddr, kind: ConnKind) {
        self.core.borrow_mut().release(peer, kind);
    }
}

impl Undeliverable for Shell {
    /// A user's request the pool could not be reached for: answer it back along its Via (ours is on top).
    fn undeliverable(self: &Rc<Self>, bytes: Bytes, code: u16, reason: &'static str) {
        let marked_down = self.mark_members_down();
        self.step(|core, now| core.undeliverable(bytes, code, reason, marked_down, now));
    }
}
