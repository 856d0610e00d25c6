//! DNS for federation: partners and clearinghouses by name (RFC 3263 order), off the executors.
//!
//! A name without a port is looked up as SRV `_sipfederationtls._tcp.<name>`, then `_sips._tcp.<name>`, then
//! A/AAAA with port 5061; a name with a port as A/AAAA only. SRV targets are ordered by priority and weight
//! ([`select`], RFC 2782) afresh for every connection attempt. Answers are cached by TTL between a floor and a
//! ceiling, and a name that stops resolving keeps its last good answer for a grace period ([`cache`]); both are
//! pure logic with unit tests.
//!
//! The resolver (hickory, tokio-based) runs on a thread of its own with a current-thread runtime: an executor
//! hands a [`Query`] over a bounded flume channel and awaits the answer asynchronously, so no core ever waits on
//! DNS. A full channel is an immediate error. Concurrent lookups of one name share one query to the server.
//! What it does not do: decide who a peer is (identity stays with the certificate, see [`super::identity`]).

pub mod cache;
pub mod select;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use cache::{Bounds, NameStats};
pub use select::SrvTarget;

/// Lookups waiting for the resolver thread before new ones are refused.
pub const QUEUE_MAX: usize = 1024;
/// The port of a SIP-over-TLS name without SRV records (RFC 3263 §4.2).
pub const SIPS_PORT: u16 = 5061;
/// The SRV services tried for a name without a port, in order: federation first, then plain SIP over TLS.
pub const SERVICES: [&str; 2] = ["_sipfederationtls._tcp", "_sips._tcp"];

/// A name to resolve, with or without a port (a port skips SRV).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Query {
    /// Lowercase, without a trailing dot.
    pub host: String,
    pub port: Option<u16>,
}

impl Query {
    fn key(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

/// How the resolver thread is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The DNS server (UDP and TCP); None: the system's (`/etc/resolv.conf`).
    pub server: Option<SocketAddr>,
    pub bounds: Bounds,
    /// One query to the server, before it counts as failed.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The resolver thread has too many lookups waiting (or is gone).
    Busy,
    /// The name does not resolve (and no answer of it is kept); the text says why.
    Failed(String),
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::Busy => f.write_str("the DNS resolver thread is busy"),
            DnsError::Failed(why) => f.write_str(why),
        }
    }
}
impl std::error::Error for DnsError {}

enum Request {
    Resolve(Query, flume::Sender<Result<Vec<SocketAddr>, DnsError>>),
    /// Raw SRV targets of a domain for one service only, ordered (discovery and `dns-records` checks).
    Srv(String, flume::Sender<Result<Vec<SrvTarget>, DnsError>>),
}

/// A cheap, cloneable handle to the resolver thread; the thread ends when every handle is dropped.
#[derive(Clone)]
pub struct Resolver {
    tx: flume::Sender<Request>,
    stats: Arc<Mutex<Vec<NameStats>>>,
    /// Lookups that failed (a stale answer or an error), all names together.
    pub errors: Arc<crate::mgmt::metrics::Counter>,
}

impl Resolver {
    /// The addresses to try for `q`, in order. An IP address answers itself without the thread.
    pub async fn resolve(&self, q: &Query) -> Result<Vec<SocketAddr>, DnsError> {
        if let Ok(ip) = q.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, q.port.unwrap_or(SIPS_PORT))]);
        }
        let (tx, rx) = flume::bounded(1);
        self.tx.try_send(Request::Resolve(q.clone(), tx)).map_err(|_| DnsError::Busy)?;
        rx.recv_async().await.map_err(|_| DnsError::Busy)?
    }

    /// The `_sipfederationtls._tcp` SRV targets of `domain` (discovery), ordered by RFC 2782.
    pub async fn federation_srv(&self, domain: &str) -> Result<Vec<SrvTarget>, DnsError> {
        let (tx, rx) = flume::bounded(1);
        self.tx.try_send(Request::Srv(domain.to_ascii_lowercase(), tx)).map_err(|_| DnsError::Busy)?;
        rx.recv_async().await.map_err(|_| DnsError::Busy)?
    }

    /// What the cache knows, by name (refreshed by the thread after every lookup).
    pub fn stats(&self) -> Vec<NameStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// For the CLI (no executor): the addresses of `q`, looked up through `server` (None: the system's).
pub fn resolve_blocking(server: Option<SocketAddr>, q: &Query) -> Result<Vec<SocketAddr>, String> {
    let r = start(Settings { server, bounds: Bounds::DEFAULT, timeout: Duration::from_secs(3) })?;
    futures_lite::future::block_on(r.resolve(q)).map_err(|e| format!("DNS {q}: {e}"))
}

static PUBLISHED: std::sync::OnceLock<Resolver> = std::sync::OnceLock::new();

/// Makes `r` the process's resolver for the management API's view (`GET /partners`); the first one stays.
pub fn publish(r: &Resolver) {
    let _ = PUBLISHED.set(r.clone());
}

/// The resolver [`publish`]ed by the edge of this process, if any.
pub fn published() -> Option<&'static Resolver> {
    PUBLISHED.get()
}

/// Starts the resolver thread. A resolver that cannot be built (no readable resolv.conf) still starts: every
/// lookup then fails with the reason, which names the setting to fix.
pub fn start(settings: Settings) -> Result<Resolver, String> {
    let (tx, rx) = flume::bounded::<Request>(QUEUE_MAX);
    let stats = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(crate::mgmt::metrics::Counter::default());
    let r = Resolver { tx, stats: stats.clone(), errors: errors.clone() };
    std::thread::Builder::new()
        .name("parapet-dns".into())
        .spawn(move || run(settings, rx, stats, errors))
        .map_err(|e| format!("dns: cannot start the resolver thread: {e}"))?;
    Ok(r)
}

type Hickory = hickory_resolver::TokioResolver;

fn build(settings: &Settings) -> Result<Hickory, String> {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let provider = TokioRuntimeProvider::default();
    let mut builder = match settings.server {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            hickory_resolver::Resolver::builder_with_config(ResolverConfig::from_name_servers(vec![ns]), provider)
        }
        None => hickory_resolver::Resolver::builder(provider).map_err(|e| {
            format!(
                "dns: the system's resolver configuration (/etc/resolv.conf): {e}; or set [edge.federation] resolver"
            )
        })?,
    };
    let o = builder.options_mut();
    o.timeout = settings.timeout;
    o.attempts = 1;
    // Our own cache applies the floor, ceiling and grace; hickory's would hide a changed record behind its TTL.
    o.cache_size = 0;
    builder.build().map_err(|e| format!("dns: cannot build the resolver: {e}"))
}

fn run(
    settings: Settings,
    rx: flume::Receiver<Request>,
    stats: Arc<Mutex<Vec<NameStats>>>,
    errors: Arc<crate::mgmt::metrics::Counter>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "dns: cannot start the resolver's runtime: names will not resolve");
            while let Ok(req) = rx.recv() {
                fail(req, &format!("dns: no resolver runtime: {e}"));
            }
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let hickory = match build(&settings) {
            Ok(h) => Rc::new(h),
            Err(e) => {
                tracing::error!(error = %e, "dns: names will not resolve");
                while let Ok(req) = rx.recv_async().await {
                    fail(req, &e);
                }
                return;
            }
        };
        let cache = Rc::new(RefCell::new(cache::Cache::new(settings.bounds)));
        type Waiters = Vec<flume::Sender<Result<Vec<SocketAddr>, DnsError>>>;
        let inflight: Rc<RefCell<HashMap<Query, Waiters>>> = Rc::new(RefCell::new(HashMap::new()));
        let mut rng = Rng::seeded();
        while let Ok(req) = rx.recv_async().await {
            let (q, reply) = match req {
                Request::Resolve(q, reply) => (q, reply),
                Request::Srv(domain, reply) => {
                    let h = hickory.clone();
                    let mut r = Rng(rng.next() | 1);
                    tokio::task::spawn_local(async move {
                        let got = srv(&h, SERVICES[0], &domain).await.map(|(mut t, _)| {
                            let order = select::order(&t, |n| r.below(n));
                            t.sort_by_key(|x| order.iter().position(|a| x.addrs.first() == Some(a)));
                            t
                        });
                        let _ = reply.send(got.map_err(DnsError::Failed));
                    });
                    continue;
                }
            };
            let key = q.key();
            let now = Instant::now();
            let cached = match cache.borrow().get(&key, now) {
                cache::Cached::Fresh(t) => Some(Ok(select::order(t, |n| rng.below(n)))),
                cache::Cached::Failing(why) => Some(Err(DnsError::Failed(why.to_string()))),
                cache::Cached::Missing => None,
            };
            if let Some(answer) = cached {
                if answer.is_ok() {
                    cache.borrow_mut().count_stale(&key);
                }
                let _ = reply.send(answer);
                continue;
            }
            if let Some(w) = inflight.borrow_mut().get_mut(&q) {
                w.push(reply);
                continue;
            }
            inflight.borrow_mut().insert(q.clone(), vec![reply]);
            let (h, cache, inflight, stats, errors) =
                (hickory.clone(), cache.clone(), inflight.clone(), stats.clone(), errors.clone());
            let mut r = Rng(rng.next() | 1);
            tokio::task::spawn_local(async move {
                let result = lookup(&h, &q).await;
                if result.is_err() {
                    errors.inc();
                }
                let (got, event) = cache.borrow_mut().store(&key, result, Instant::now());
                match event {
                    Some(cache::Event::StartedFailing { stale: true, error }) => tracing::warn!(
                        name = %key, %error,
                        "dns: name no longer resolves: its last good addresses are used for the grace period"
                    ),
                    Some(cache::Event::StartedFailing { stale: false, error }) => {
                        tracing::warn!(name = %key, %error, "dns: name does not resolve")
                    }
                    Some(cache::Event::GraceOver) => {
                        tracing::warn!(name = %key, "dns: grace period over: the name's last addresses are dropped")
                    }
                    Some(cache::Event::Recovered) => tracing::info!(name = %key, "dns: name resolves again"),
                    None => {}
                }
                *stats.lock().unwrap_or_else(|p| p.into_inner()) = cache.borrow().stats();
                let waiters = inflight.borrow_mut().remove(&q).unwrap_or_default();
                for w in waiters {
                    let answer = match &got {
                        Ok(t) => Ok(select::order(t, |n| r.below(n))),
                        Err(e) => Err(DnsError::Failed(e.clone())),
                    };
                    let _ = w.send(answer);
                }
            });
        }
    });
}

fn fail(req: Request, why: &str) {
    match req {
        Request::Resolve(_, r) => drop(r.send(Err(DnsError::Failed(why.to_string())))),
        Request::Srv(_, r) => drop(r.send(Err(DnsError::Failed(why.to_string())))),
    }
}

/// RFC 3263 for one name: the targets and the smallest TTL of the records used.
async fn lookup(h: &Hickory, q: &Query) -> Result<(Vec<SrvTarget>, u32), String> {
    if let Some(port) = q.port {
        let (addrs, ttl) = addresses(h, &q.host, port).await?;
        return Ok((vec![SrvTarget { priority: 0, weight: 0, name: q.host.clone(), addrs }], ttl));
    }
    for service in SERVICES {
        match srv(h, service, &q.host).await {
            Ok(found) => return Ok(found),
            Err(e) if e.starts_with(NO_RECORDS) => continue,
            Err(e) => return Err(e),
        }
    }
    let (addrs, ttl) = addresses(h, &q.host, SIPS_PORT).await?;
    Ok((vec![SrvTarget { priority: 0, weight: 0, name: q.host.clone(), addrs }], ttl))
}

const NO_RECORDS: &str = "no records";

fn why(name: &str, what: &str, e: &hickory_resolver::net::NetError) -> String {
    if e.is_no_records_found() {
        format!("{NO_RECORDS}: {what} {name}")
    } else {
        format!("{what} {name}: {e}")
    }
}

/// The SRV records of `service.domain`, each target's name resolved (targets that do not resolve are left out;
/// `.` means the service is not offered).
async fn srv(h: &Hickory, service: &str, domain: &str) -> Result<(Vec<SrvTarget>, u32), String> {
    use hickory_resolver::proto::rr::RData;
    let name = format!("{service}.{domain}.");
    let found = h.srv_lookup(name.as_str()).await.map_err(|e| why(&name, "SRV", &e))?;
    let mut ttl = u32::MAX;
    let mut targets = Vec::new();
    let mut last_error = None;
    for record in found.answers() {
        let RData::SRV(s) = &record.data else { continue };
        ttl = ttl.min(record.ttl);
        let target = s.target.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        if target.is_empty() {
            continue;
        }
        match addresses(h, &target, s.port).await {
            Ok((addrs, t)) => {
                ttl = ttl.min(t);
                targets.push(SrvTarget { priority: s.priority, weight: s.weight, name: target, addrs });
            }
            Err(e) => last_error = Some(e),
        }
    }
    if targets.is_empty() {
        return Err(last_error.unwrap_or_else(|| format!("SRV {name}: the service is not offered (target \".\")")));
    }
    Ok((targets, ttl))
}

/// The A/AAAA addresses of `host` at `port`, and the smallest TTL.
async fn addresses(h: &Hickory, host: &str, port: u16) -> Result<(Vec<SocketAddr>, u32), String> {
    let fqdn = format!("{host}.");
    let found = h.lookup_ip(fqdn.as_str()).await.map_err(|e| why(host, "A/AAAA", &e))?;
    let ttl = found.as_lookup().answers().iter().map(|r| r.ttl).min().unwrap_or(0);
    let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    if addrs.is_empty() {
        return Err(format!("{NO_RECORDS}: A/AAAA {host}"));
    }
    Ok((addrs, ttl))
}

/// xorshift32 for weighted SRV draws: not for secrets, only to spread load.
struct Rng(u32);

impl Rng {
    fn seeded() -> Rng {
        let mut b = [0u8; 4];
        let _ = getrandom::getrandom(&mut b);
        Rng(u32::from_le_bytes(b) | 1)
    }
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
    /// A number in `0..=n`.
    fn below(&mut self, n: u32) -> u32 {
        self.next() % n.saturating_add(1).max(1)
    }
}
