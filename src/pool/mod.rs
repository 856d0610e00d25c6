//! The pool (front end): registrar with digest authentication, and the proxy that delivers MESSAGE to every
//! registered device of a user through the edge that holds its flow.
//!
//! Owns, per core: the bindings and nonces of the users whose AOR hashes to this core ([`crate::shard::shard_for`]), the
//! MESSAGE transactions it forked, its connections from edges, and its connectors to edges' internal listeners.
//! A request travels: receiving core -> (mesh) core owning the *sender* (authentication) -> (mesh) core owning
//! the *target* (lookup, fork) -> responses come back to that core's connectors -> (mesh) receiving core.
//!
//! Architecture invariant: user state is touched only on the core that owns the user's AOR.
//!
//! Structure: [`core::PoolCore`] is the logic and state of one core, without I/O (inputs in, [`Action`]s out);
//! [`shell`] runs it on a glommio executor and performs its actions.

pub mod apps;
pub mod archive;
pub mod auth;
pub mod core;
pub mod digest;
pub mod directory;
pub mod helpdesk;
pub mod membership;
pub mod ownership;
pub mod persist;
pub mod presence;
pub mod proxy;
pub mod register;
pub mod registrar;
pub mod shell;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::Config;
use crate::net::listener::ensure_port_free;
use crate::net::{tls, ConnId};
use crate::shard::{self, Shard};
use crate::sip::Message;
pub use core::{Action, CoreSettings, Now, PoolCore, Resume, Timer};
// The edge–pool contract's AOR key, under the name the pool's modules use.
pub use crate::proto::aor_of;
use digest::Algorithm;
use registrar::RegistrarLimits;

crate::counters! {
    /// Per-core counters of the pool.
    pub struct PoolStats {
        challenges,
        auth_failures,
        registrations,
        /// REGISTER refused: an expiry below the minimum (423).
        register_refused_interval,
        /// REGISTER refused: a Contact we cannot parse, or `*` misused (400).
        register_refused_bad_contact,
        /// REGISTER refused: out of order, CSeq not above the stored one for its Call-ID (400).
        register_refused_out_of_order,
        /// REGISTER refused: the user has the most devices allowed (403).
        register_refused_devices,
        /// REGISTER refused: the registrar table is full (503). (Failed authentication: `auth_failures`.)
        register_refused_full,
        messages_forked,
        /// MESSAGEs forked between two of our users (From and target both ours): the report's "internal".
        messages_internal,
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
        /// Back-end subscriptions to a contact of our own pool started again (dialog or member lost: 481, 408,
        /// 503, ...), each counted once.
        backend_restarts,
        /// A contact's NOTIFY for a contact list another member holds now, answered without loading the list (an
        /// edge that had not read the roster yet sent it here; the list's owner subscribes to its contacts afresh).
        list_notifies_elsewhere,
        /// Back-end subscriptions held right now (a gauge).
        backend_subscriptions_now,
        /// Requests for a user homed on another pool (`[pool] home`), answered 404 (or 403 to a REGISTER).
        homed_elsewhere,
        messages_archived,
        archive_lost,
        messages_refused_archive,
        /// Searches of the directory service (`MESSAGE sip:directory@<domain>`), and those refused as busy.
        directory_searches,
        directory_searches_busy,
        /// Help desk conversations given to a member (new, or reassigned after their member went away).
        helpdesk_assigned,
        /// Help desk messages that stayed with their conversation's member.
        helpdesk_sticky,
        /// Help desk messages that found no member available (the sender got the auto-reply).
        helpdesk_no_agent,
        /// Help desk conversations forgotten because the desk's table was full.
        helpdesk_evicted,
        /// Help desk messages refused (503) because too many were waiting for members' states.
        helpdesk_busy,
        /// NOTIFYs about help desk members held by other front ends (enterprise pool), from their owners.
        helpdesk_member_notifies,
        /// MESSAGEs sent to applications and waiting for their answer on this core (a gauge, updated by the sweep).
        app_waiting_now,
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
    /// Directory searches' presence states, across cores.
    Directory(directory::Msg),
    /// Help desk members' states, across cores.
    Helpdesk(helpdesk::Msg),
    /// Applications' registrations, closed connections and answers, across cores.
    Apps(apps::agents::Msg),
}

/// Read-only settings shared by every core: the logic's ([`CoreSettings`]) and the shell's (TLS, the store,
/// what to restore).
pub struct PoolSettings {
    pub core: Arc<CoreSettings>,
    pub server_tls: Arc<rustls::ServerConfig>,
    pub client_tls: Arc<rustls::ClientConfig>,
    pub edges: Vec<crate::config::Peer>,
    /// The names our certificate carries: what an edge co-located on our threads admits us by
    /// ([`crate::net::local`]).
    pub own_names: Vec<String>,
    pub handshake_timeout: Duration,
    /// The durable store, on its own thread.
    pub store: crate::store::thread::StoreHandle,
    /// Soft state saved before the last stop, one share per core (each core takes its own at start).
    pub restore: Vec<std::sync::Mutex<Vec<crate::store::StateRow>>>,
    /// The pool's roster and this member's counters (`[pool.member]`; unused by a single front end).
    pub membership: membership::Membership,
    /// New directory views after each sync, one channel per core ([`directory::start_thread`] sends).
    pub directory: directory::Feed,
}

impl PoolSettings {
    pub fn from_config(cfg: &Config) -> Result<PoolSettings, String> {
        let p = cfg.pool.as_ref().ok_or("config: no [pool] section")?;
        let realm = p.realm.clone().unwrap_or_else(|| cfg.domain.clone());
        let users = directory::initial_users(cfg, &realm)?;
        let mut algorithms = Vec::new();
        for (i, a) in p.auth.algorithms.iter().enumerate() {
            algorithms.push(Algorithm::parse(a.as_bytes()).ok_or_else(|| {
                format!("config: [pool.auth] algorithms.{i}: unknown algorithm {a:?} (MD5 or SHA-256)")
            })?);
        }
        if algorithms.is_empty() {
            return Err("config: [pool.auth] algorithms: at least one of MD5, SHA-256".into());
        }
        let (presence, store) = presence::settings_from_config(p, cfg.store.as_ref())?;
        // A member of an enterprise pool restores no one at start: it loads each user it owns when it gains it.
        let restore = if p.member.is_some() {
            (0..p.cores.len()).map(|_| std::sync::Mutex::default()).collect()
        } else {
            persist::saved_state(&store, p.cores.len())?
        };
        let membership = membership::Membership::default();
        let mut nonce_secret = [0u8; 32];
        getrandom::getrandom(&mut nonce_secret).map_err(|e| format!("no randomness for nonces: {e}"))?;
        if p.member.is_some() {
            // Every front end must find every other's nonces authentic: the client may retry on another.
            nonce_secret = membership::shared_nonce_secret(&store, nonce_secret)?;
        }
        let core = CoreSettings {
            domain: cfg.domain.to_ascii_lowercase(),
            realm,
            listen: p.listen,
            // The pool only talks to trusted peers, whose messages carry the headers the edge added.
            limits: crate::proto::peer_limits(cfg),
            edges: p.edges.iter().map(|e| e.addr).collect(),
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
            local_hosts: vec![cfg.domain.to_ascii_lowercase()],
            presence,
            nonces_max: core::NONCES_MAX,
            transactions_max: core::TRANSACTIONS_MAX,
            archive: archive::settings(cfg.archive.as_ref(), &store),
            rules: apps::reload::start(cfg, p.cores.len())?,
            apps: Arc::new(apps::agents::AppTable::new(&cfg.applications, p.cores.len())),
            member: p.member.as_ref().map(|m| m.name.clone()),
            home: p.home.clone(),
            home_default: p.home_default,
            member_stats: membership.stats.clone(),
        };
        Ok(PoolSettings {
            core: Arc::new(core),
            server_tls: tls::server_config(&p.cert, &p.key, Some(&p.ca)).map_err(|e| e.to_string())?,
            client_tls: tls::client_config(&p.ca, Some((&p.cert, &p.key))).map_err(|e| e.to_string())?,
            edges: p.edges.clone(),
            own_names: tls::peer_dns_names(Some(&tls::load_certs(&p.cert).map_err(|e| e.to_string())?)),
            handshake_timeout: Duration::from_millis(p.handshake_timeout_ms),
            store,
            restore,
            membership,
            directory: directory::Feed::new(p.cores.len()),
        })
    }
}

pub fn start(cfg: &Config, io_memory: usize) -> Result<Vec<glommio::ExecutorJoinHandle<()>>, String> {
    let cores = cfg.pool.as_ref().map(|r| r.cores.clone()).unwrap_or_default();
    shard::start_role("pool", &cores, MESH_CAPACITY, io_memory, prepare(cfg)?, run_core).map_err(|e| e.to_string())
}

/// Mesh channel capacity between the pool's cores.
pub const MESH_CAPACITY: usize = 4096;

/// What [`start`] does before the cores start (port, settings, membership, the directory thread); the settings
/// each core is then run with ([`run_core`]), for a caller that starts the executors itself (roles
/// co-located on the same executors, `mgmt::run`).
pub fn prepare(cfg: &Config) -> Result<Arc<PoolSettings>, String> {
    let p = cfg.pool.as_ref().ok_or("config: no [pool] section")?;
    ensure_port_free(p.listen, "[pool] listen").map_err(|e| e.to_string())?;
    let settings = Arc::new(PoolSettings::from_config(cfg)?);
    if let Some(m) = &p.member {
        membership::start(m, &settings)?;
    }
    directory::start_thread(cfg, settings.directory.senders.clone())?;
    tracing::info!(users = settings.core.users.len(), realm = %settings.core.realm, "pool directory loaded");
    Ok(settings)
}

/// One pool core, on an executor someone else started (see [`prepare`]).
pub async fn run_core(shard: Shard<PoolMsg>, settings: Arc<PoolSettings>) {
    shell::run_core(shard, settings).await
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Methods the pool serves.
pub(crate) const ALLOW: &[u8] = b"REGISTER, MESSAGE, SUBSCRIBE, PUBLISH, OPTIONS";

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
