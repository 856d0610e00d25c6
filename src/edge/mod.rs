//! The edge (access proxy): terminates remote users' TLS, admits their requests only once they have registered,
//! forwards them to the pool over mutual TLS, and brings requests from the pool back to the right user's own
//! connection, hiding every internal address on the way out.
//!
//! Per core, a state machine without I/O ([`core::EdgeCore`]: the remote-user flows ([`flows::Flows`]), the
//! transactions toward users whose internal Vias it keeps ([`downstream`]), the flood guard, the federation table)
//! and a shell around it (`shell`: the connection table, the connector to the pool, the internal listener on which
//! the pool reaches users, the mesh) that feeds it inputs and performs the actions it returns. Requests toward the
//! pool need no state: the return path travels in our Via branch and in the flow token of the Path we add to
//! REGISTERs ([`token`]).
//!
//! Data path: user --TLS--> edge core (accepting) --mTLS--> pool; pool --mTLS--> edge internal listener (any core)
//! --mesh--> core owning the user's flow --TLS--> user. Responses retrace Via.
//!
//! Architecture invariant: a flow's state is read and written only on the core that owns its connection; a
//! message for another core's flow crosses the mesh first.

pub mod core;
pub mod downstream;
pub mod federation;
pub mod flows;
pub mod guard;
pub mod homes;
pub mod homes_reader;
pub mod inflight;
pub mod members;
pub mod notices;
pub mod policy;
pub mod relay;
pub mod reload;
mod shell;
pub mod testkit;
pub mod token;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::Config;
use crate::net::listener::ensure_port_free;
use crate::net::{tls, ConnId};
use crate::shard::{self, Shard};
use crate::sip::Limits;
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
        /// Flow-closed notices sent to the pool again (it answered 503, could not be reached, or did not answer).
        notices_resent,
        /// Flow-closed notices given up after their tries, or not kept because the table was full (the bindings
        /// expire on their own).
        notices_lost,
        /// Flow-closed notices waiting for the pool's answer (a gauge).
        notices_pending,
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
        /// Pool members found unreachable (probe or request not delivered): left out until a probe passes.
        pool_members_down,
        /// Requests sent again to the user's new owner after its member was found unreachable.
        pool_rerouted,
        /// Requests a member took and could not answer (its link went down, or past the deadline): the edge
        /// answered them itself (503 or 408); their late answers are dropped.
        pool_answered_by_edge,
        /// Federation connections refused after the handshake: certificate not admitted by the table, or the
        /// peer at its connection cap.
        federation_connections_refused,
        /// Discovered domains put on the watch list (more than 1,000 distinct local users in an hour).
        federation_discovered_watched,
        /// Requests of discovered domains refused at the strict rate of a mostly failing domain (503).
        federation_discovered_strict,
        /// Requests a pool member sent another member through us (a contact list's back-end subscription and
        /// its NOTIFYs), routed to the owner of their user.
        member_relayed,
        /// Requests sent to the user's home pool, one of `[[edge.pools]]` (the default pool's are not counted).
        home_pool_routed,
    }
}

/// Cross-core messages of the edge.
#[derive(Debug)]
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
    /// The names our certificate carries: what a pool co-located on our threads admits us by ([`crate::net::local`]).
    pub own_names: Vec<String>,
    pub limits: Limits,
    /// For what comes from trusted peers (the pool), and for re-parsing on another core.
    pub peer_limits: Limits,
    pub user_tls: Arc<rustls::ServerConfig>,
    pub internal_tls: Arc<rustls::ServerConfig>,
    pub pool_tls: Arc<rustls::ClientConfig>,
    pub pool_addr: SocketAddr,
    pub pool_name: String,
    pub pool_names: Vec<String>,
    /// `[edge.roster]`: the members' names, addresses and certificate names, in configured order.
    pub pool_members: Vec<String>,
    pub pool_member_peers: Vec<crate::config::Peer>,
    /// The roster the roster reader publishes (`[edge.roster]`).
    pub roster: Arc<crate::store::members::RosterSlot>,
    /// `[[edge.pools]]`: the other pools users may be homed on, in configured order (a single front end's
    /// address, or none for an enterprise pool), and the table of who is homed where the homes reader publishes
    /// (`[edge.homes]`).
    pub home_pools: Vec<Option<crate::config::Peer>>,
    /// Per `[[edge.pools]]` entry: an enterprise pool's members (empty: a single front end; their peers follow
    /// the default pool's in `pool_member_peers`) and the roster its reader publishes.
    pub home_pool_members: Vec<Vec<String>>,
    pub home_rosters: Vec<Arc<crate::store::members::RosterSlot>>,
    pub homes: Arc<homes::HomesSlot>,
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
    /// `[edge] internal_networks`: users connecting from elsewhere are remote.
    pub internal_networks: Vec<crate::config::networks::Network>,
    /// `[edge.federation]`, when configured.
    pub fed: Option<federation::FedSettings>,
}

impl EdgeSettings {
    pub fn from_config(cfg: &Config) -> Result<EdgeSettings, String> {
        let e = cfg.edge.as_ref().ok_or("config: no [edge] section")?;
        let fed = match &e.federation {
            Some(f) => {
                let mut fed =
                    federation::FedSettings::new(f, &cfg.domain, e.listen, e.internal_listen, &e.cert, &e.key)?;
                fed.start_resolver()?;
                Some(fed)
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
        let own_names = tls::peer_dns_names(Some(&tls::load_certs(&e.cert).map_err(|e| e.to_string())?));
        myself.extend(own_names.iter().cloned());
        Ok(EdgeSettings {
            listen: e.listen,
            internal: e.internal_listen,
            listen_text: e.listen.to_string(),
            internal_text: e.internal_listen.to_string(),
            myself,
            own_names,
            limits: crate::proto::sip_limits(cfg),
            peer_limits: crate::proto::peer_limits(cfg),
            user_tls,
            internal_tls,
            pool_tls,
            pool_addr: e.pool.addr,
            pool_name: e.pool.name.clone(),
            pool_names: if e.pool_names.is_empty() { vec![e.pool.name.clone()] } else { e.pool_names.clone() },
            pool_members: e.roster.iter().flat_map(|r| r.members.iter().map(|m| m.name.clone())).collect(),
            pool_member_peers: e
                .roster
                .iter()
                .chain(e.pools.iter().filter_map(|p| p.roster.as_ref()))
                .flat_map(|r| r.members.iter().map(|m| m.peer.clone()))
                .collect(),
            roster: Arc::default(),
            home_pools: e.pools.iter().map(|p| p.peer.clone()).collect(),
            home_pool_members: e
                .pools
                .iter()
                .map(|p| p.roster.iter().flat_map(|r| r.members.iter().map(|m| m.name.clone())).collect())
                .collect(),
            home_rosters: e.pools.iter().map(|_| Arc::default()).collect(),
            homes: Arc::default(),
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
            internal_networks: e.internal_networks.clone(),
            fed,
        })
    }
}

/// Starts the edge on its cores. Returns once every executor is running.
pub fn start(cfg: &Config, io_memory: usize) -> Result<Vec<glommio::ExecutorJoinHandle<()>>, String> {
    let cores = cfg.edge.as_ref().map(|r| r.cores.clone()).unwrap_or_default();
    shard::start_role("edge", &cores, MESH_CAPACITY, io_memory, prepare(cfg)?, run_core).map_err(|e| e.to_string())
}

/// Mesh channel capacity between the edge's cores.
pub const MESH_CAPACITY: usize = 4096;

/// What [`start`] does before the cores start (ports, settings, the threads the edge needs); the settings each core
/// is then run with ([`run_core`]), for a caller that starts the executors itself (roles co-located on the same
/// executors, `mgmt::run`).
pub fn prepare(cfg: &Config) -> Result<Arc<EdgeSettings>, String> {
    let e = cfg.edge.as_ref().ok_or("config: no [edge] section")?;
    ensure_port_free(e.listen, "[edge] listen").map_err(|e| e.to_string())?;
    ensure_port_free(e.internal_listen, "[edge] internal_listen").map_err(|e| e.to_string())?;
    if let Some(l) = e.federation.as_ref().and_then(|f| f.listen) {
        ensure_port_free(l, "[edge.federation] listen").map_err(|e| e.to_string())?;
    }
    let settings = Arc::new(EdgeSettings::from_config(cfg)?);
    if let Some(r) = &e.roster {
        crate::mgmt::pool_admin::serve_roster(settings.roster.clone());
        let store = r.store.as_ref().or(cfg.store.as_ref());
        shell::start_roster_reader(r, store, settings.roster.clone(), "[edge.roster]")?;
    }
    for (i, (p, slot)) in e.pools.iter().zip(&settings.home_rosters).enumerate() {
        if let Some(r) = &p.roster {
            shell::start_roster_reader(r, r.store.as_ref(), slot.clone(), &format!("[edge.pools.{i}.roster]"))?;
        }
    }
    if let Some(h) = &e.homes {
        let pools = e.pools.iter().map(|p| p.name.clone()).collect();
        homes_reader::start(h, pools, &cfg.domain, settings.homes.clone())?;
    }
    if let Some(f) = &e.federation {
        reload::install(f);
    }
    Ok(settings)
}

/// One edge core, on an executor someone else started (see [`prepare`]).
pub async fn run_core(shard: Shard<EdgeMsg>, settings: Arc<EdgeSettings>) {
    shell::run_core(shard, settings).await
}

/// Branches of the edge's own notices to the pool.
const NOTICE_BRANCH_PREFIX: &[u8] = b"z9hG4bKx";

/// A message must be complete this long after its first byte arrived (slowloris): the driver's timer closes it
/// then; the once-a-second sweep only backs it up.
const MESSAGE_DEADLINE_MS: u64 = 10_000;
