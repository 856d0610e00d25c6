//! Configuration of parapet: one TOML file describes the edge role, the pool role or both.
//!
//! Parsing happens in two steps. serde reads the file into private `Raw*` structs in which every
//! field is optional and addresses are plain strings; `build` then applies defaults, resolves
//! relative paths against the file's folder and turns strings into typed values. The split lets
//! every error name the table and key a user has to fix ("config: [edge] listen: invalid socket
//! address \"x\"") instead of surfacing serde's generic wording.
//!
//! `Config::validate` holds the checks that depend on the machine or on several keys at once
//! (CPU ids, limit ordering, required files); callers run it once before starting a role.
//! Every value has a default, so `Config::default()` (no file at all) is a valid starting point.

pub mod applications;
pub mod archive;
pub mod certs;
pub mod devpki;
pub mod directory;
pub mod federation;
pub mod helpdesk;
pub mod membership;
pub mod networks;
pub mod ops;
pub mod partners_file;
pub mod pools;
pub mod roster;
pub mod routing;
pub mod store;
mod toml_error;
mod validate;

pub use federation::{Clearinghouse, FederationConfig, Partner, PeerAddr, PeerLimits, UnknownPeers};
pub use ops::MgmtConfig;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Whole configuration; `edge` and `pool` say which roles this process runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// SIP domain served, e.g. the host part of every AOR.
    pub domain: String,
    /// Log filter passed to the tracing subscriber.
    pub log: String,
    /// `log_format = "text"` (default) or `"json"` (one JSON object per line, for log collectors).
    pub log_format: ops::LogFormat,
    pub limits: SipLimits,
    pub edge: Option<EdgeConfig>,
    pub pool: Option<PoolConfig>,
    /// `[mgmt] listen = "127.0.0.1:5064"`: plain HTTP, `/metrics` (Prometheus text) and `/health`. Off when absent.
    pub mgmt: Option<MgmtConfig>,
    /// `[store]`: PostgreSQL for the pool's durable data; None: SQLite at `[pool] database`.
    pub store: Option<store::StoreConfig>,
    /// `[archive]`: IM archiving; None: nothing archived.
    pub archive: Option<archive::ArchiveConfig>,
    /// `[[routing.rules]]` and `[[helpdesk]]`: the pool's routing rules and help desks (re-read when the file
    /// changes).
    pub routing: routing::RoutingConfig,
    /// `[[applications]]`: trusted applications serving agent addresses over mutual TLS (read at start).
    pub applications: Vec<applications::Application>,
    /// The file this was loaded from (the pool re-reads its routing rules there).
    pub source: Option<PathBuf>,
    /// `[directory]`: the sources synced into the pool's store (`crate::directory`); absent: the users file.
    pub directory: Option<directory::DirectoryConfig>,
}

/// Hard bounds on a single SIP message, enforced by the parser on untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipLimits {
    pub message_bytes_max: usize,
    pub header_bytes_max: usize,
    pub header_count_max: usize,
    pub line_bytes_max: usize,
}

/// The other side of an internal mutual-TLS link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// DNS name its certificate must carry.
    pub name: String,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConfig {
    /// CPU ids to run one executor on each.
    pub cores: Vec<usize>,
    /// Remote users, TLS.
    pub listen: SocketAddr,
    /// Pool -> edge, mutual TLS.
    pub internal_listen: SocketAddr,
    /// PEM; the edge certificate, also its client certificate toward the pool.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM CA(s) trusted for the internal mutual TLS.
    pub ca: PathBuf,
    pub pool: Peer,
    /// `[edge.roster]`: an enterprise pool's members; None routes everything to `pool`.
    pub roster: Option<roster::RosterConfig>,
    /// Names accepted on the internal listener.
    pub pool_names: Vec<String>,
    /// `[[edge.pools]]`: pools users may be homed on besides the default one (`pool`, `roster`).
    pub pools: Vec<pools::HomePool>,
    /// `[edge.homes]`: where each user's home pool is read (with `[[edge.pools]]`).
    pub homes: Option<pools::HomesConfig>,
    pub handshake_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    /// Messages per connection write queue.
    pub flow_queue_max: usize,
    /// `[edge] internal_networks`: users connecting from elsewhere are remote (`networks`).
    pub internal_networks: Vec<networks::Network>,
    /// `[edge.flood]`: per source address and per flow limits, lockout and bans.
    pub flood: FloodConfig,
    /// `[edge.federation]`: the federation listener and the partner table; off when absent.
    pub federation: Option<FederationConfig>,
}

/// Flood protection. Rates are per core (connections from one address spread over the cores), so the effective
/// rate of an address is about `cores` times these.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloodConfig {
    pub connections_per_ip_max: u32,
    pub new_connections_per_ip_per_s: f64,
    /// Messages from connections that have not registered yet, per address.
    pub messages_per_ip_per_s: f64,
    pub messages_per_ip_burst: f64,
    /// Messages per registered connection (a user): addresses behind NAT share the per-address budget, users don't.
    pub messages_per_user_per_s: f64,
    pub messages_per_user_burst: f64,
    /// Refused messages or connections (strikes) before an address is banned.
    pub strikes_to_ban: u32,
    /// Failed authentications (403 from the registrar) within `auth_failure_window_s` before a ban.
    pub auth_failures_max: u32,
    pub auth_failure_window_s: u64,
    pub ban_s: u64,
}

impl Default for FloodConfig {
    /// Generous enough for a benchmark from one loopback address; tighten for the Internet.
    fn default() -> Self {
        FloodConfig {
            connections_per_ip_max: 10_000,
            new_connections_per_ip_per_s: 500.0,
            messages_per_ip_per_s: 2_000.0,
            messages_per_ip_burst: 4_000.0,
            messages_per_user_per_s: 500.0,
            messages_per_user_burst: 1_000.0,
            strikes_to_ban: 100,
            auth_failures_max: 10,
            auth_failure_window_s: 60,
            ban_s: 300,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub cores: Vec<usize>,
    /// Mutual TLS, edges only.
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// `addr` is the edge's `internal_listen`; the pool connects there.
    pub edges: Vec<Peer>,
    /// Users file (.toml or .csv), see `crate::store::directory`.
    pub directory: PathBuf,
    /// The durable store (SQLite file, created when missing): allow/block entries, contact lists; see
    /// `crate::store`. Default `parapet.db` next to the directory file's folder (the config's folder).
    pub database: PathBuf,
    /// Digest realm; `None` means the domain (see `Config::realm`).
    pub realm: Option<String>,
    pub registrar: RegistrarConfig,
    pub auth: AuthConfig,
    pub presence: PresenceConfig,
    /// Timer F.
    pub transaction_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    /// `[pool.member]`: a member of an enterprise pool; None for a single front end.
    pub member: Option<membership::MemberConfig>,
    /// `[pool] home`: this pool's name among the edge's pools (`config::pools`); empty: it serves every user.
    pub home: String,
    /// `[pool] home_default`: with `home`, also serve the users the directory homes on no pool.
    pub home_default: bool,
}

/// `[pool.presence]`: publication and subscription bounds, and the deployment's default authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceConfig {
    /// Watchers no entry decides about: "allow", "block" (they see offline) or "confirm" (pending).
    pub default_policy: String,
    /// Senders no entry decides about: "allow" or "block" (their MESSAGE gets 480, like an offline user).
    pub im_default_policy: String,
    pub publish_min_expires_s: u32,
    pub publish_max_expires_s: u32,
    /// For a PUBLISH without Expires (pjsip sends none).
    pub publish_default_expires_s: u32,
    pub subscribe_min_expires_s: u32,
    pub subscribe_max_expires_s: u32,
    pub subscribe_default_expires_s: u32,
    /// Subscriptions one watcher may hold on one pool core.
    pub subscriptions_per_user_max: usize,
    pub watchers_per_presentity_max: usize,
    /// Devices publishing for one presentity.
    pub publications_per_presentity_max: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            default_policy: "allow".into(),
            im_default_policy: "allow".into(),
            publish_min_expires_s: 60,
            publish_max_expires_s: 7200,
            publish_default_expires_s: 3600,
            subscribe_min_expires_s: 60,
            subscribe_max_expires_s: 7200,
            subscribe_default_expires_s: 3600,
            subscriptions_per_user_max: 200,
            watchers_per_presentity_max: 1000,
            publications_per_presentity_max: 16,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrarConfig {
    pub min_expires_s: u32,
    pub max_expires_s: u32,
    pub default_expires_s: u32,
    pub bindings_per_aor_max: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Digest algorithms offered, one challenge each, in this order (default [`DEFAULT_AUTH_ALGORITHMS`]).
    pub algorithms: Vec<String>,
    pub nonce_ttl_s: u64,
}

/// Digest algorithms the pool implements; `validate` rejects anything else.
pub const AUTH_ALGORITHMS: &[&str] = &["SHA-256", "MD5"];

/// The default offer: MD5 only. baresip 1.0 (libre) gives up on a 401 that carries any challenge it cannot
/// answer — a SHA-256 one next to MD5 included — and MD5 is what every client knows (RFC 3261's baseline; over
/// TLS here). `[pool.auth] algorithms = ["SHA-256", "MD5"]` offers SHA-256 too (RFC 8760; pjsip and linphone
/// answer it), at the cost of baresip 1.0.
pub const DEFAULT_AUTH_ALGORITHMS: &[&str] = &["MD5"];

pub const DEFAULT_DOMAIN: &str = "example.com";
pub const DEFAULT_EDGE_LISTEN: &str = "127.0.0.1:5061";
pub const DEFAULT_POOL_LISTEN: &str = "127.0.0.1:5062";
pub const DEFAULT_EDGE_INTERNAL_LISTEN: &str = "127.0.0.1:5063";
pub const DEFAULT_MGMT_LISTEN: &str = "127.0.0.1:5064";
/// Relative to the config file's folder (or the working directory without a file).
pub const DEFAULT_DIRECTORY: &str = "users.toml";
/// Relative to the config file's folder (or the working directory without a file).
pub const DEFAULT_DATABASE: &str = "parapet.db";

#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Io { path: PathBuf, source: std::io::Error },
    /// TOML syntax, a wrong type or an unknown key; `path` is empty for `from_toml_str`.
    Toml { path: PathBuf, message: String },
    /// A value is well-formed TOML but unusable; `key` reads like "[edge] listen".
    Invalid { key: String, reason: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { path, source } => write!(f, "config {}: {source}", path.display()),
            ConfigError::Toml { path, message } if path.as_os_str().is_empty() => {
                write!(f, "config: {message}")
            }
            ConfigError::Toml { path, message } => {
                write!(f, "config {}: {message}", path.display())
            }
            // "missing" reads as a sentence after the key ("[pool.edges.0] name missing");
            // every other reason is a description after a colon.
            ConfigError::Invalid { key, reason } if reason.starts_with("missing") => {
                write!(f, "config: {key} {reason}")
            }
            ConfigError::Invalid { key, reason } => write!(f, "config: {key}: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// Number of online CPUs; CPU ids in `cores` must be below it.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf only reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

fn all_cores() -> Vec<usize> {
    (0..online_cpus()).collect()
}

fn addr(s: &str) -> SocketAddr {
    // Only used on the constants above, which are valid literals.
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl Default for SipLimits {
    fn default() -> Self {
        SipLimits { message_bytes_max: 65535, header_bytes_max: 16384, header_count_max: 64, line_bytes_max: 4096 }
    }
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig { min_expires_s: 60, max_expires_s: 7200, default_expires_s: 3600, bindings_per_aor_max: 10 }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { algorithms: DEFAULT_AUTH_ALGORITHMS.iter().map(|s| s.to_string()).collect(), nonce_ttl_s: 300 }
    }
}

impl Default for Config {
    /// Domain example.com, no roles.
    fn default() -> Self {
        Config {
            domain: DEFAULT_DOMAIN.into(),
            log: "info".into(),
            log_format: ops::LogFormat::Text,
            limits: SipLimits::default(),
            edge: None,
            pool: None,
            mgmt: None,
            store: None,
            archive: None,
            routing: routing::RoutingConfig::default(),
            applications: Vec::new(),
            source: None,
            directory: None,
        }
    }
}

impl EdgeConfig {
    /// Defaults for `domain`; the pool is expected at `pool.<domain>` on the default pool port.
    /// Certificate paths are empty: name them or use `Config::use_dev_pki`.
    pub fn defaults_for(domain: &str) -> Self {
        let pool = Peer { name: format!("pool.{domain}"), addr: addr(DEFAULT_POOL_LISTEN) };
        EdgeConfig {
            cores: all_cores(),
            listen: addr(DEFAULT_EDGE_LISTEN),
            internal_listen: addr(DEFAULT_EDGE_INTERNAL_LISTEN),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            ca: PathBuf::new(),
            pool_names: vec![pool.name.clone()],
            pools: Vec::new(),
            homes: None,
            roster: None,
            pool,
            handshake_timeout_ms: 5000,
            idle_timeout_ms: 300_000,
            flow_queue_max: 256,
            internal_networks: networks::build(None).unwrap_or_default(),
            flood: FloodConfig::default(),
            federation: None,
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig::defaults_for(DEFAULT_DOMAIN)
    }
}

impl PoolConfig {
    /// Defaults for `domain`: one edge `edge.<domain>` at the default internal port, users in
    /// `users.toml`. Certificate paths are empty: name them or use `Config::use_dev_pki`.
    pub fn defaults_for(domain: &str) -> Self {
        PoolConfig {
            cores: all_cores(),
            listen: addr(DEFAULT_POOL_LISTEN),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            ca: PathBuf::new(),
            edges: vec![Peer { name: format!("edge.{domain}"), addr: addr(DEFAULT_EDGE_INTERNAL_LISTEN) }],
            directory: PathBuf::from(DEFAULT_DIRECTORY),
            database: PathBuf::from(DEFAULT_DATABASE),
            realm: None,
            registrar: RegistrarConfig::default(),
            auth: AuthConfig::default(),
            presence: PresenceConfig::default(),
            transaction_timeout_ms: 32_000,
            handshake_timeout_ms: 5000,
            member: None,
            home: String::new(),
            home_default: false,
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig::defaults_for(DEFAULT_DOMAIN)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw file shape. Every field optional so defaults apply per key and missing keys can be named.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    domain: Option<String>,
    log: Option<String>,
    log_format: Option<String>,
    limits: Option<RawLimits>,
    edge: Option<RawEdge>,
    pool: Option<RawPool>,
    mgmt: Option<ops::RawMgmt>,
    store: Option<store::RawStore>,
    archive: Option<archive::RawArchive>,
    routing: Option<routing::RawRouting>,
    helpdesk: Option<Vec<helpdesk::RawDesk>>,
    applications: Option<Vec<applications::RawApplication>>,
    directory: Option<directory::RawDirectory>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    message_bytes_max: Option<usize>,
    header_bytes_max: Option<usize>,
    header_count_max: Option<usize>,
    line_bytes_max: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Option<String>,
    addr: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    cores: Option<toml::Value>,
    listen: Option<String>,
    internal_listen: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    pool: Option<RawPeer>,
    roster: Option<roster::RawRoster>,
    pool_names: Option<Vec<String>>,
    pools: Option<Vec<pools::RawHomePool>>,
    homes: Option<pools::RawHomes>,
    handshake_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    flow_queue_max: Option<usize>,
    internal_networks: Option<Vec<String>>,
    flood: Option<RawFlood>,
    federation: Option<federation::RawFederation>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFlood {
    connections_per_ip_max: Option<u32>,
    new_connections_per_ip_per_s: Option<f64>,
    messages_per_ip_per_s: Option<f64>,
    messages_per_ip_burst: Option<f64>,
    messages_per_user_per_s: Option<f64>,
    messages_per_user_burst: Option<f64>,
    strikes_to_ban: Option<u32>,
    auth_failures_max: Option<u32>,
    auth_failure_window_s: Option<u64>,
    ban_s: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPool {
    cores: Option<toml::Value>,
    listen: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    edges: Option<Vec<RawPeer>>,
    directory: Option<PathBuf>,
    database: Option<PathBuf>,
    realm: Option<String>,
    registrar: Option<RawRegistrar>,
    auth: Option<RawAuth>,
    presence: Option<RawPresence>,
    transaction_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    member: Option<membership::RawMember>,
    home: Option<String>,
    home_default: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPresence {
    default_policy: Option<String>,
    im_default_policy: Option<String>,
    publish_min_expires_s: Option<u32>,
    publish_max_expires_s: Option<u32>,
    publish_default_expires_s: Option<u32>,
    subscribe_min_expires_s: Option<u32>,
    subscribe_max_expires_s: Option<u32>,
    subscribe_default_expires_s: Option<u32>,
    subscriptions_per_user_max: Option<usize>,
    watchers_per_presentity_max: Option<usize>,
    publications_per_presentity_max: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRegistrar {
    min_expires_s: Option<u32>,
    max_expires_s: Option<u32>,
    default_expires_s: Option<u32>,
    bindings_per_aor_max: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    algorithms: Option<Vec<String>>,
    nonce_ttl_s: Option<u64>,
}

fn parse_addr(table: &str, key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim().parse().map_err(|_| {
        invalid(
            format!("[{table}] {key}"),
            format!("invalid socket address {s:?} (expected ip:port, e.g. \"127.0.0.1:5061\")"),
        )
    })
}

/// `cores = 2` means CPUs 0 and 1; `cores = [0, 3]` names CPU ids.
fn parse_cores(table: &str, v: Option<toml::Value>) -> Result<Vec<usize>, ConfigError> {
    let key = format!("[{table}] cores");
    let to_usize = |i: i64| usize::try_from(i).map_err(|_| invalid(&key, format!("{i} is negative")));
    match v {
        None => Ok(all_cores()),
        Some(toml::Value::Integer(n)) => {
            let n = to_usize(n)?;
            if n == 0 {
                return Err(invalid(&key, "count must be at least 1"));
            }
            Ok((0..n).collect())
        }
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                toml::Value::Integer(i) => to_usize(i),
                other => Err(invalid(&key, format!("list entries must be CPU ids, found {other}"))),
            })
            .collect(),
        Some(other) => Err(invalid(
            &key,
            format!("expected a count (cores = 2) or a list of CPU ids (cores = [0, 1]), found {other}"),
        )),
    }
}

/// Relative paths in the file are relative to the file, not to the working directory, so a
/// config keeps working whichever directory the server is started from.
fn resolve(base_dir: &Path, p: Option<PathBuf>) -> PathBuf {
    match p {
        Some(p) if p.as_os_str().is_empty() => p,
        Some(p) if p.is_relative() => base_dir.join(p),
        Some(p) => p,
        None => PathBuf::new(),
    }
}

fn required_peer(table: &str, raw: RawPeer) -> Result<Peer, ConfigError> {
    let name =
        raw.name.filter(|n| !n.trim().is_empty()).ok_or_else(|| invalid(format!("[{table}] name"), "missing"))?;
    let addr_s = raw.addr.ok_or_else(|| invalid(format!("[{table}] addr"), "missing"))?;
    Ok(Peer { name: name.trim().to_string(), addr: parse_addr(table, "addr", &addr_s)? })
}

fn build(raw: RawConfig, base_dir: &Path) -> Result<Config, ConfigError> {
    let domain = raw.domain.map(|d| d.trim().to_ascii_lowercase()).unwrap_or_else(|| DEFAULT_DOMAIN.into());
    let log = raw.log.unwrap_or_else(|| "info".into());

    let d = SipLimits::default();
    let l = raw.limits.unwrap_or_default();
    let limits = SipLimits {
        message_bytes_max: l.message_bytes_max.unwrap_or(d.message_bytes_max),
        header_bytes_max: l.header_bytes_max.unwrap_or(d.header_bytes_max),
        header_count_max: l.header_count_max.unwrap_or(d.header_count_max),
        line_bytes_max: l.line_bytes_max.unwrap_or(d.line_bytes_max),
    };

    // Parse listen addresses first: when one file holds both roles, each side's default peer
    // address follows the other side's listener, so changing one port needs one edit.
    let pool_listen = match raw.pool.as_ref().and_then(|p| p.listen.as_deref()) {
        Some(s) => Some(parse_addr("pool", "listen", s)?),
        None => raw.pool.as_ref().map(|_| addr(DEFAULT_POOL_LISTEN)),
    };
    let edge_internal = match raw.edge.as_ref().and_then(|e| e.internal_listen.as_deref()) {
        Some(s) => Some(parse_addr("edge", "internal_listen", s)?),
        None => raw.edge.as_ref().map(|_| addr(DEFAULT_EDGE_INTERNAL_LISTEN)),
    };

    let mgmt = ops::build(raw.mgmt, base_dir)?;

    let edge = match raw.edge {
        None => None,
        Some(e) => {
            let mut c = EdgeConfig::defaults_for(&domain);
            c.cores = parse_cores("edge", e.cores)?;
            if let Some(s) = e.listen {
                c.listen = parse_addr("edge", "listen", &s)?;
            }
            if let Some(a) = edge_internal {
                c.internal_listen = a;
            }
            c.cert = resolve(base_dir, e.cert);
            c.key = resolve(base_dir, e.key);
            c.ca = resolve(base_dir, e.ca);
            if let Some(a) = pool_listen {
                c.pool.addr = a;
            }
            if let Some(p) = e.pool {
                if let Some(name) = p.name {
                    c.pool.name = name.trim().to_string();
                }
                if let Some(s) = p.addr {
                    c.pool.addr = parse_addr("edge.pool", "addr", &s)?;
                }
            }
            c.pool_names = e.pool_names.unwrap_or_else(|| vec![c.pool.name.clone()]);
            (c.pools, c.homes) = pools::build(e.pools.unwrap_or_default(), e.homes, base_dir, &c.pool.name)?;
            // The other pools (their members too) connect to our internal listener.
            let mut peers: Vec<Peer> = Vec::new();
            for p in &c.pools {
                peers.extend(p.peer.iter().cloned());
                peers.extend(p.roster.iter().flat_map(|r| r.members.iter().map(|m| m.peer.clone())));
            }
            for peer in peers {
                if !c.pool_names.iter().any(|n| n.eq_ignore_ascii_case(&peer.name)) {
                    c.pool_names.push(peer.name);
                }
            }
            c.roster = e.roster.map(|r| roster::build(r, "edge.roster", base_dir, &c.pool.name)).transpose()?;
            c.handshake_timeout_ms = e.handshake_timeout_ms.unwrap_or(c.handshake_timeout_ms);
            c.idle_timeout_ms = e.idle_timeout_ms.unwrap_or(c.idle_timeout_ms);
            c.flow_queue_max = e.flow_queue_max.unwrap_or(c.flow_queue_max);
            c.internal_networks = networks::build(e.internal_networks)?;
            if let Some(f) = e.federation {
                c.federation = Some(federation::build(f, base_dir, &domain, limits.message_bytes_max)?);
            }
            if let Some(f) = e.flood {
                let d = c.flood;
                c.flood = FloodConfig {
                    connections_per_ip_max: f.connections_per_ip_max.unwrap_or(d.connections_per_ip_max),
                    new_connections_per_ip_per_s: f
                        .new_connections_per_ip_per_s
                        .unwrap_or(d.new_connections_per_ip_per_s),
                    messages_per_ip_per_s: f.messages_per_ip_per_s.unwrap_or(d.messages_per_ip_per_s),
                    messages_per_ip_burst: f.messages_per_ip_burst.unwrap_or(d.messages_per_ip_burst),
                    messages_per_user_per_s: f.messages_per_user_per_s.unwrap_or(d.messages_per_user_per_s),
                    messages_per_user_burst: f.messages_per_user_burst.unwrap_or(d.messages_per_user_burst),
                    strikes_to_ban: f.strikes_to_ban.unwrap_or(d.strikes_to_ban),
                    auth_failures_max: f.auth_failures_max.unwrap_or(d.auth_failures_max),
                    auth_failure_window_s: f.auth_failure_window_s.unwrap_or(d.auth_failure_window_s),
                    ban_s: f.ban_s.unwrap_or(d.ban_s),
                };
                for (key, v) in [
                    ("new_connections_per_ip_per_s", c.flood.new_connections_per_ip_per_s),
                    ("messages_per_ip_per_s", c.flood.messages_per_ip_per_s),
                    ("messages_per_ip_burst", c.flood.messages_per_ip_burst),
                    ("messages_per_user_per_s", c.flood.messages_per_user_per_s),
                    ("messages_per_user_burst", c.flood.messages_per_user_burst),
                ] {
                    if !(v > 0.0 && v.is_finite()) {
                        return Err(invalid(format!("[edge.flood] {key}"), "must be a positive number"));
                    }
                }
            }
            Some(c)
        }
    };

    let pool = match raw.pool {
        None => None,
        Some(p) => {
            let mut c = PoolConfig::defaults_for(&domain);
            c.cores = parse_cores("pool", p.cores)?;
            if let Some(a) = pool_listen {
                c.listen = a;
            }
            c.cert = resolve(base_dir, p.cert);
            c.key = resolve(base_dir, p.key);
            c.ca = resolve(base_dir, p.ca);
            match p.edges {
                Some(edges) => {
                    c.edges = edges
                        .into_iter()
                        .enumerate()
                        .map(|(i, e)| required_peer(&format!("pool.edges.{i}"), e))
                        .collect::<Result<_, _>>()?;
                }
                None => {
                    if let (Some(a), Some(first)) = (edge_internal, c.edges.first_mut()) {
                        first.addr = a;
                    }
                }
            }
            c.directory = resolve(base_dir, Some(p.directory.unwrap_or_else(|| PathBuf::from(DEFAULT_DIRECTORY))));
            c.database = resolve(base_dir, Some(p.database.unwrap_or_else(|| PathBuf::from(DEFAULT_DATABASE))));
            let r = p.presence.unwrap_or_default();
            let d = PresenceConfig::default();
            c.presence = PresenceConfig {
                default_policy: r.default_policy.unwrap_or(d.default_policy),
                im_default_policy: r.im_default_policy.unwrap_or(d.im_default_policy),
                publish_min_expires_s: r.publish_min_expires_s.unwrap_or(d.publish_min_expires_s),
                publish_max_expires_s: r.publish_max_expires_s.unwrap_or(d.publish_max_expires_s),
                publish_default_expires_s: r.publish_default_expires_s.unwrap_or(d.publish_default_expires_s),
                subscribe_min_expires_s: r.subscribe_min_expires_s.unwrap_or(d.subscribe_min_expires_s),
                subscribe_max_expires_s: r.subscribe_max_expires_s.unwrap_or(d.subscribe_max_expires_s),
                subscribe_default_expires_s: r.subscribe_default_expires_s.unwrap_or(d.subscribe_default_expires_s),
                subscriptions_per_user_max: r.subscriptions_per_user_max.unwrap_or(d.subscriptions_per_user_max),
                watchers_per_presentity_max: r.watchers_per_presentity_max.unwrap_or(d.watchers_per_presentity_max),
                publications_per_presentity_max: r
                    .publications_per_presentity_max
                    .unwrap_or(d.publications_per_presentity_max),
            };
            c.realm = p.realm;
            c.member = p.member.map(|m| membership::build(m, c.listen)).transpose()?;
            c.home = p.home.map(|h| h.trim().to_string()).unwrap_or_default();
            if !crate::store::directory::pool_name_ok(&c.home) {
                return Err(invalid("[pool] home", format!("{:?}: letters, digits, '-', '_' and '.'", c.home)));
            }
            c.home_default = p.home_default.unwrap_or(false);
            let r = p.registrar.unwrap_or_default();
            let rd = RegistrarConfig::default();
            c.registrar = RegistrarConfig {
                min_expires_s: r.min_expires_s.unwrap_or(rd.min_expires_s),
                max_expires_s: r.max_expires_s.unwrap_or(rd.max_expires_s),
                default_expires_s: r.default_expires_s.unwrap_or(rd.default_expires_s),
                bindings_per_aor_max: r.bindings_per_aor_max.unwrap_or(rd.bindings_per_aor_max),
            };
            let a = p.auth.unwrap_or_default();
            if let Some(algs) = a.algorithms {
                c.auth.algorithms = algs;
            }
            c.auth.nonce_ttl_s = a.nonce_ttl_s.unwrap_or(c.auth.nonce_ttl_s);
            c.transaction_timeout_ms = p.transaction_timeout_ms.unwrap_or(c.transaction_timeout_ms);
            c.handshake_timeout_ms = p.handshake_timeout_ms.unwrap_or(c.handshake_timeout_ms);
            Some(c)
        }
    };

    let log_format = ops::log_format(raw.log_format.as_deref())?;
    let store = raw.store.map(store::build).transpose()?;
    let archive = raw.archive.map(archive::build).transpose()?;
    let mut routing = routing::build(raw.routing.unwrap_or_default())?;
    routing.helpdesks = helpdesk::build(raw.helpdesk.unwrap_or_default(), &domain)?;
    let applications = applications::build(raw.applications)?;
    applications::check(&applications, pool.as_ref(), &routing)?;
    let directory = raw.directory.map(|d| directory::build(d, base_dir)).transpose()?;
    Ok(Config {
        domain,
        log,
        log_format,
        limits,
        edge,
        pool,
        mgmt,
        store,
        archive,
        routing,
        applications,
        source: None,
        directory,
    })
}

impl Config {
    /// Reads and parses `path`; relative paths in the file are resolved against the file's folder.
    /// Does not call `validate`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let mut c = Self::parse(&text, base).map_err(|e| match e {
            ConfigError::Toml { message, .. } => ConfigError::Toml { path: path.to_path_buf(), message },
            other => other,
        })?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses TOML text; relative paths are resolved against `base_dir`. Does not call `validate`.
    pub fn from_toml_str(s: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Self::parse(s, base_dir)
    }

    fn parse(s: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(s)
            .map_err(|e| ConfigError::Toml { path: PathBuf::new(), message: toml_error::toml_message(s, &e) })?;
        build(raw, base_dir)
    }

    /// Digest realm of the pool: `[pool] realm`, else the domain.
    pub fn realm(&self) -> &str {
        self.pool.as_ref().and_then(|p| p.realm.as_deref()).unwrap_or(&self.domain)
    }

    /// Fills every empty cert/key/ca path with the development PKI's files; paths named in the
    /// file are kept. Lets `parapet` run with no file and no certificates of its own.
    pub fn use_dev_pki(&mut self, pki: &devpki::DevPki) {
        fn fill(p: &mut PathBuf, with: &Path) {
            if p.as_os_str().is_empty() {
                *p = with.to_path_buf();
            }
        }
        if let Some(e) = self.edge.as_mut() {
            fill(&mut e.cert, &pki.edge_cert);
            fill(&mut e.key, &pki.edge_key);
            fill(&mut e.ca, &pki.ca_cert);
        }
        if let Some(p) = self.pool.as_mut() {
            fill(&mut p.cert, &pki.pool_cert);
            fill(&mut p.key, &pki.pool_key);
            fill(&mut p.ca, &pki.ca_cert);
        }
    }
}

#[cfg(test)]
mod tests;
