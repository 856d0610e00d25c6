//! `[edge.federation]`: the edge's federation listener and its partner table (direct partners, clearinghouses,
//! blocked domains, the policy for unknown peers), with each peer's limits.
//!
//! ```toml
//! [edge.federation]
//! # listen = "127.0.0.1:5065"        # a port of its own (mutual TLS); omitted: partners use the user port
//! ca = "partners-ca.pem"             # CAs trusted for partners' certificates
//! blocked_domains = ["evil.test"]
//! unknown = "refuse"                 # or "limited": a peer whose certificate chains to `ca` but is on no list
//! unknown_rate = 5                   # requests/s of each unknown peer (burst: unknown_burst, default 2x)
//! unknown_connections_max = 2
//! message_bytes_max = 65535          # for server connections; users have [limits] message_bytes_max
//! clearinghouse = false              # true: this edge is a hub relaying between its partners (members)
//!
//! [[edge.federation.partners]]
//! domain = "partner.test"
//! cert_name = "edge.partner.test"    # the name its certificate must carry (RFC 5922)
//! addr = "sip.partner.test"          # its edge: a DNS name (SRV, then A/AAAA), name:port or ip:port
//!                                    # (see super::partners_file for resolver, TTL bounds and the partners file)
//!                                    # or "none": inbound only (it may send to us; we never route to it)
//! rate = 500                         # requests/s (token bucket), default 500
//! burst = 1000                       # default 2x rate
//! connections_max = 16               # default 16
//!
//! [[edge.federation.clearinghouses]]
//! name = "hub.example.net"
//! addr = "127.0.0.1:5265"
//! domains = ["*"]                    # or the domains it may speak for
//! # rate, burst, connections_max as for partners
//! ```
//!
//! Without `listen`, one port serves both roles (as LCS did on its external edge): the user listener asks for a
//! client certificate without requiring one; a peer presenting one that the table admits is a partner, one
//! presenting none is a remote user who must register.
//!
//! Limits. Each listed peer (one partner or clearinghouse entry, by certificate name) has one token bucket and
//! one connection count for the whole edge, whichever core its connections land on; each unknown peer (admitted
//! with `unknown = "limited"`) has its own, at the much lower unknown rate. The default partner rate, 500/s with
//! a burst of 1000, is far above what one organization's IM and presence toward us needs in steady state (tens
//! of requests/s for thousands of users) and absorbs the re-subscriptions after a partner restarts, while one
//! partner alone stays a small share of what an edge core forwards. 16 connections cover a partner edge of 16
//! cores (one connector per core). Over its rate a peer gets 503 with Retry-After and its connection is not read
//! until its next token is due (at least 50 ms): a flood waits in TCP instead of costing a refusal per request, so
//! other partners keep their latency. Over its connection cap its
//! new connections are closed after the handshake.
//!
//! `message_bytes_max` (default 65,535, or `[limits] message_bytes_max` when lower) may not exceed `[limits]
//! message_bytes_max`: the pool parses a forwarded request under its own `[limits]` (plus room for our hops).
//!
//! Parsed in the same two steps as the rest of the config ([`super`]): a private raw form, then `build`, whose
//! errors name the key. A domain both allowed (partner or clearinghouse) and blocked is an error.
//!
//! A clearinghouse (hub) is the same edge with `clearinghouse = true`: its partners are its members, each
//! admitted and checked exactly as a partner, and a member's request for another member's domain is relayed to
//! that member (see `crate::edge::federation`). A hub without partners has nobody to relay between: an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::partners_file::parse_peer_addr;
pub use super::partners_file::{DnsConfig, PeerAddr};
use super::validate::validate_name;
use super::{invalid, parse_addr, resolve, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationConfig {
    /// The federation listener (mutual TLS); None: partners connect to the user port (`[edge] listen`).
    pub listen: Option<SocketAddr>,
    /// PEM CA(s) trusted for partners' and clearinghouses' certificates.
    pub ca: PathBuf,
    pub partners: Vec<Partner>,
    pub clearinghouses: Vec<Clearinghouse>,
    /// Lowercase domains refused both ways.
    pub blocked_domains: Vec<String>,
    pub unknown: UnknownPeers,
    /// Limits of each peer admitted as unknown (`unknown = "limited"`).
    pub unknown_limits: PeerLimits,
    /// Largest message on a federation (server) connection; at most `[limits] message_bytes_max`.
    pub message_bytes_max: usize,
    /// This edge is a clearinghouse: requests from partners (members) for another member's domain are relayed.
    pub clearinghouse: bool,
    /// How partners' names are resolved (`resolver`, `dns_ttl_min_secs`, ...).
    pub dns: DnsConfig,
    /// Partners kept by `parapet partner add/remove`, read with this config (see [`super::partners_file`]).
    pub partners_file: Option<PathBuf>,
}

/// What one federation peer (a partner, a clearinghouse, each unknown peer) may use of the edge, all cores
/// together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Requests per second, sustained (token bucket refill).
    pub rate: u32,
    /// Requests at once after a quiet period (bucket size).
    pub burst: u32,
    /// Connections from the peer at once (its connections to us; ours to it are not counted).
    pub connections_max: u32,
}

impl PeerLimits {
    /// A listed peer's defaults (see the module comment for why these values).
    pub const LISTED: PeerLimits = PeerLimits { rate: 500, burst: 1000, connections_max: 16 };
    /// An unknown peer's defaults: enough to exchange a few messages, far too little to load us.
    pub const UNKNOWN: PeerLimits = PeerLimits { rate: 5, burst: 10, connections_max: 2 };
    /// With discovery, each discovered (or unknown) peer's defaults: 20 requests/s, one connection per core of a
    /// small edge.
    pub const DISCOVERED: PeerLimits = PeerLimits { rate: 20, burst: 40, connections_max: 4 };
}

/// A directly federated organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    /// Its SIP domain (lowercase).
    pub domain: String,
    /// The DNS name its edge's certificate must carry (lowercase).
    pub cert_name: String,
    /// Its edge's federation listener: an address, or a name resolved by DNS (RFC 3263). None (`addr = "none"`):
    /// inbound only — admitted exactly like any partner, but no route: our users' requests for its domain get a
    /// final refusal instead of a connection attempt to nowhere (`parapet up`'s demo partners, which only
    /// `loadgen federation` plays, and only toward us).
    pub addr: Option<PeerAddr>,
    pub limits: PeerLimits,
}

/// A hub relaying for several organizations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clearinghouse {
    /// The DNS name its certificate must carry (lowercase).
    pub name: String,
    pub addr: PeerAddr,
    /// Domains it may speak for (lowercase); `*` is any domain not otherwise configured.
    pub domains: Vec<String>,
    pub limits: PeerLimits,
}

/// What to do with a peer on no list (requests *to* a domain on no list are refused either way, unless a
/// clearinghouse serves it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownPeers {
    /// Closed after the handshake.
    Refuse,
    /// Admitted when its certificate chains to `ca` and names a domain (see [`crate::edge::federation`]): it
    /// speaks for the domains its certificate names, at `unknown_rate` and `unknown_connections_max`.
    Limited,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFederation {
    listen: Option<String>,
    ca: Option<PathBuf>,
    partners: Option<Vec<RawPartner>>,
    clearinghouses: Option<Vec<RawClearinghouse>>,
    blocked_domains: Option<Vec<String>>,
    unknown: Option<String>,
    unknown_rate: Option<u32>,
    unknown_burst: Option<u32>,
    unknown_connections_max: Option<u32>,
    message_bytes_max: Option<usize>,
    clearinghouse: Option<bool>,
    resolver: Option<String>,
    dns_ttl_min_secs: Option<u64>,
    dns_ttl_max_secs: Option<u64>,
    dns_grace_secs: Option<u64>,
    partners_file: Option<PathBuf>,
    discovery: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPartner {
    domain: Option<String>,
    cert_name: Option<String>,
    addr: Option<String>,
    rate: Option<u32>,
    burst: Option<u32>,
    connections_max: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClearinghouse {
    name: Option<String>,
    addr: Option<String>,
    domains: Option<Vec<String>>,
    rate: Option<u32>,
    burst: Option<u32>,
    connections_max: Option<u32>,
}

const T: &str = "edge.federation";

fn required(key: String, v: Option<String>) -> Result<String, ConfigError> {
    match v.map(|s| s.trim().to_ascii_lowercase()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(invalid(key, "missing")),
    }
}

/// Most requests/s (and burst, and connections) a limit may name: beyond it the limit means nothing.
const LIMIT_MAX: u32 = 1_000_000;

/// `rate`, `burst` and `connections_max` of `[table]` (`prefix` names the keys, e.g. "unknown_"), as given
/// (`rate`, `burst`, `connections_max`), defaults from `d`.
fn peer_limits(
    table: &str,
    prefix: &str,
    given: (Option<u32>, Option<u32>, Option<u32>),
    d: PeerLimits,
) -> Result<PeerLimits, ConfigError> {
    let bounded = |key: &str, v: u32| {
        if (1..=LIMIT_MAX).contains(&v) {
            Ok(v)
        } else {
            Err(invalid(format!("[{table}] {prefix}{key}"), format!("{v} is not between 1 and {LIMIT_MAX}")))
        }
    };
    let (rate, burst, connections_max) = given;
    let rate = bounded("rate", rate.unwrap_or(d.rate))?;
    // Without an explicit burst, twice the rate: a peer may send two seconds' worth at once after a pause.
    let burst = bounded("burst", burst.unwrap_or(rate.saturating_mul(2).min(LIMIT_MAX)))?;
    let connections_max = bounded("connections_max", connections_max.unwrap_or(d.connections_max))?;
    Ok(PeerLimits { rate, burst, connections_max })
}

/// The default `message_bytes_max` for server connections (when `[limits]` allows as much).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 65_535;
/// Below this a server connection could not carry an ordinary request with a few hops' headers.
const MESSAGE_BYTES_MIN: usize = 1024;

/// `user_message_bytes_max` is `[limits] message_bytes_max`, the bound of the federation one.
pub(super) fn build(
    raw: RawFederation,
    base_dir: &Path,
    own_domain: &str,
    user_message_bytes_max: usize,
) -> Result<FederationConfig, ConfigError> {
    let listen = raw.listen.as_deref().map(|s| parse_addr(T, "listen", s)).transpose()?;
    let ca = resolve(base_dir, raw.ca);
    if ca.as_os_str().is_empty() {
        return Err(invalid(format!("[{T}] ca"), "missing (name the PEM file of the CAs trusted for partners)"));
    }
    let own = own_domain.to_ascii_lowercase();
    let mut partners = Vec::new();
    for (i, p) in raw.partners.unwrap_or_default().into_iter().enumerate() {
        partners.push(partner(&format!("{T}.partners.{i}"), p, &own, &partners)?);
    }
    // By default next to the config: `parapet partner add` needs somewhere to write that `up` leaves alone.
    let partners_file = Some(resolve(base_dir, Some(raw.partners_file.unwrap_or_else(|| "partners.toml".into()))));
    let mut file_blocked = Vec::new();
    if let Some(path) = &partners_file {
        let (file_partners, blocked) = super::partners_file::read(path)?;
        let mut from_config = partners.len();
        for (i, p) in file_partners.into_iter().enumerate() {
            let table = format!("{} partners.{i}", path.display());
            let p = partner(&table, p, &own, partners.get(from_config..).unwrap_or_default())?;
            // The file's entry wins over the config's for the same domain (`partner add` repoints a partner that
            // `parapet up` writes into the config at every start).
            if let Some(j) = partners.iter().take(from_config).position(|q| q.domain == p.domain) {
                partners.remove(j);
                from_config -= 1;
            }
            partners.push(p);
        }
        file_blocked = blocked;
    }
    let mut dns = super::partners_file::dns_config(
        raw.resolver.as_deref(),
        (raw.dns_ttl_min_secs, raw.dns_ttl_max_secs, raw.dns_grace_secs),
    )?;
    dns.discovery = raw.discovery.unwrap_or(false);
    let mut clearinghouses = Vec::new();
    for (i, c) in raw.clearinghouses.unwrap_or_default().into_iter().enumerate() {
        let table = format!("{T}.clearinghouses.{i}");
        let name = required(format!("[{table}] name"), c.name)?;
        validate_name(&format!("[{table}] name"), &name)?;
        let addr =
            parse_peer_addr(&table, c.addr.as_deref().ok_or_else(|| invalid(format!("[{table}] addr"), "missing"))?)?;
        let domains: Vec<String> =
            c.domains.unwrap_or_default().iter().map(|d| d.trim().to_ascii_lowercase()).collect();
        if domains.is_empty() {
            return Err(invalid(format!("[{table}] domains"), "missing (list its domains, or [\"*\"] for any)"));
        }
        for (j, d) in domains.iter().enumerate() {
            if d != "*" {
                validate_name(&format!("[{table}] domains.{j}"), d)?;
            }
        }
        let limits = peer_limits(&table, "", (c.rate, c.burst, c.connections_max), PeerLimits::LISTED)?;
        clearinghouses.push(Clearinghouse { name, addr, domains, limits });
    }
    let mut blocked_domains = Vec::new();
    for (i, d) in raw.blocked_domains.unwrap_or_default().iter().chain(&file_blocked).enumerate() {
        let d = d.trim().to_ascii_lowercase();
        let key = format!("[{T}] blocked_domains.{i}");
        validate_name(&key, &d)?;
        let allowed = partners.iter().any(|p| p.domain == d) || clearinghouses.iter().any(|c| c.domains.contains(&d));
        if allowed {
            return Err(invalid(key, format!("{d:?} is also an allowed partner or clearinghouse domain")));
        }
        blocked_domains.push(d);
    }
    let unknown = match raw.unknown.as_deref().map(str::trim) {
        None | Some("refuse") => UnknownPeers::Refuse,
        Some("limited") => UnknownPeers::Limited,
        Some(other) => {
            return Err(invalid(format!("[{T}] unknown"), format!("{other:?}: expected \"refuse\" or \"limited\"")))
        }
    };
    let given = (raw.unknown_rate, raw.unknown_burst, raw.unknown_connections_max);
    // Discovered peers are limited as unknown ones, by default at a rate a few users' IM and presence needs.
    let unknown_default = if dns.discovery { PeerLimits::DISCOVERED } else { PeerLimits::UNKNOWN };
    let unknown_limits = peer_limits(T, "unknown_", given, unknown_default)?;
    let message_bytes_max = raw.message_bytes_max.unwrap_or(MESSAGE_BYTES_MAX_DEFAULT.min(user_message_bytes_max));
    if message_bytes_max < MESSAGE_BYTES_MIN || message_bytes_max > user_message_bytes_max {
        // The pool parses what we forward under its own [limits] (plus room for our hops): a larger federation
        // limit would have it refuse, or drop our connection to it.
        return Err(invalid(
            format!("[{T}] message_bytes_max"),
            format!(
                "{message_bytes_max} is not between {MESSAGE_BYTES_MIN} and [limits] message_bytes_max \
                 ({user_message_bytes_max}), which the pool applies to what we forward"
            ),
        ));
    }
    let clearinghouse = raw.clearinghouse.unwrap_or(false);
    if clearinghouse && partners.is_empty() {
        return Err(invalid(
            format!("[{T}] clearinghouse"),
            "true, but no [[edge.federation.partners]]: list the member organizations a hub relays between",
        ));
    }
    Ok(FederationConfig {
        listen,
        ca,
        partners,
        clearinghouses,
        blocked_domains,
        unknown,
        unknown_limits,
        message_bytes_max,
        clearinghouse,
        dns,
        partners_file,
    })
}

/// `addr` of a partner that we never send to.
pub const INBOUND_ONLY: &str = "none";

/// One `[[partners]]` entry (of the config or of the partners file, `table` names it), checked against those
/// before it.
fn partner(table: &str, p: RawPartner, own: &str, before: &[Partner]) -> Result<Partner, ConfigError> {
    let domain = required(format!("[{table}] domain"), p.domain)?;
    validate_name(&format!("[{table}] domain"), &domain)?;
    if domain == own {
        return Err(invalid(format!("[{table}] domain"), format!("{domain:?} is our own domain")));
    }
    if before.iter().any(|q| q.domain == domain) {
        return Err(invalid(format!("[{table}] domain"), format!("{domain:?} is listed twice")));
    }
    let cert_name = required(format!("[{table}] cert_name"), p.cert_name)?;
    validate_name(&format!("[{table}] cert_name"), &cert_name)?;
    // Explicit rather than a missing key, so that a forgotten addr stays an error.
    let addr = match p.addr.as_deref().map(str::trim) {
        None => return Err(invalid(format!("[{table}] addr"), "missing (or \"none\" for an inbound-only partner)")),
        Some(s) if s.eq_ignore_ascii_case(INBOUND_ONLY) => None,
        Some(s) => Some(parse_peer_addr(table, s)?),
    };
    let limits = peer_limits(table, "", (p.rate, p.burst, p.connections_max), PeerLimits::LISTED)?;
    Ok(Partner { domain, cert_name, addr, limits })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        let s = format!(
            "domain = \"example.com\"\n[edge]\n[edge.federation]\nlisten = \"127.0.0.1:5065\"\nca = \"p.pem\"\n{extra}"
        );
        Config::from_toml_str(&s, Path::new("/etc/parapet"))
    }

    #[test]
    fn partners_clearinghouses_and_blocks() {
        let c = parse(
            "blocked_domains = [\"Evil.test\"]\nunknown = \"refuse\"\n\
             [[edge.federation.partners]]\ndomain = \"Partner.test\"\ncert_name = \"edge.partner.test\"\naddr = \"127.0.0.1:6000\"\n\
             [[edge.federation.clearinghouses]]\nname = \"hub.test\"\naddr = \"127.0.0.1:6001\"\ndomains = [\"*\"]\n",
        )
        .expect("parses");
        let f = c.edge.and_then(|e| e.federation).expect("federation");
        assert_eq!(f.listen, Some("127.0.0.1:5065".parse().expect("addr")));
        assert_eq!(f.ca, PathBuf::from("/etc/parapet/p.pem"));
        assert_eq!(f.partners[0].domain, "partner.test");
        assert_eq!(f.clearinghouses[0].domains, vec!["*".to_string()]);
        assert_eq!(f.blocked_domains, vec!["evil.test".to_string()]);
        assert_eq!(f.unknown, UnknownPeers::Refuse);
        let l = parse("unknown = \"limited\"\n").expect("limited").edge.and_then(|e| e.federation).expect("fed");
        assert_eq!(l.unknown, UnknownPeers::Limited);
    }

    #[test]
    fn peer_limits_default_and_override() {
        let c = parse(
            "unknown_rate = 3\n\
             [[edge.federation.partners]]\ndomain = \"a.test\"\ncert_name = \"edge.a.test\"\naddr = \"127.0.0.1:6000\"\n\
             [[edge.federation.partners]]\ndomain = \"b.test\"\ncert_name = \"edge.b.test\"\naddr = \"127.0.0.1:6000\"\n\
             rate = 5\n\
             [[edge.federation.clearinghouses]]\nname = \"hub.test\"\naddr = \"127.0.0.1:6001\"\ndomains = [\"*\"]\n\
             rate = 50\nburst = 60\nconnections_max = 4\n",
        )
        .expect("parses");
        let f = c.edge.and_then(|e| e.federation).expect("federation");
        assert_eq!(f.partners[0].limits, PeerLimits::LISTED);
        let b = PeerLimits { rate: 5, burst: 10, connections_max: 16 };
        assert_eq!(f.partners[1].limits, b, "burst defaults to twice the rate");
        assert_eq!(f.clearinghouses[0].limits, PeerLimits { rate: 50, burst: 60, connections_max: 4 });
        assert_eq!(f.unknown_limits, PeerLimits { rate: 3, burst: 6, connections_max: 2 });
        let d = parse("").expect("defaults").edge.and_then(|e| e.federation).expect("federation");
        assert_eq!(d.unknown_limits, PeerLimits::UNKNOWN);
    }

    #[test]
    fn peer_limit_errors_name_the_key() {
        let partner =
            "[[edge.federation.partners]]\ndomain = \"a.test\"\ncert_name = \"edge.a.test\"\naddr = \"127.0.0.1:1\"\n";
        for (extra, key) in [
            (format!("{partner}rate = 0\n"), "[edge.federation.partners.0] rate"),
            (format!("{partner}burst = 0\n"), "[edge.federation.partners.0] burst"),
            (format!("{partner}rate = 2000000\n"), "[edge.federation.partners.0] rate"),
            ("unknown_rate = 0\n".to_string(), "[edge.federation] unknown_rate"),
            ("unknown_burst = 0\n".to_string(), "[edge.federation] unknown_burst"),
            (format!("{partner}connections_max = 0\n"), "[edge.federation.partners.0] connections_max"),
            ("unknown_connections_max = 0\n".to_string(), "[edge.federation] unknown_connections_max"),
            (
                "[[edge.federation.clearinghouses]]\nname = \"h.test\"\naddr = \"127.0.0.1:1\"\ndomains = [\"*\"]\nburst = 0\n"
                    .to_string(),
                "[edge.federation.clearinghouses.0] burst",
            ),
        ] {
            let e = parse(&extra).expect_err(key).to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = parse(&format!("{partner}rate = -1\n")).expect_err("negative").to_string();
        assert!(e.contains("rate"), "{e}");
    }

    #[test]
    fn without_listen_partners_share_the_user_port() {
        let s = "domain = \"example.com\"\n[edge]\n[edge.federation]\nca = \"p.pem\"\n";
        let c = Config::from_toml_str(s, Path::new("/etc/parapet")).expect("parses");
        assert_eq!(c.edge.and_then(|e| e.federation).expect("federation").listen, None);
        let bad = s.replace("ca = ", "listen = \"nowhere\"\nca = ");
        let e = Config::from_toml_str(&bad, Path::new("/etc/parapet")).err().map(|e| e.to_string());
        assert!(e.as_ref().is_some_and(|e| e.contains("[edge.federation] listen")), "{e:?}");
    }

    #[test]
    fn message_size_for_server_connections() {
        let f = |c: Config| c.edge.and_then(|e| e.federation).expect("federation");
        assert_eq!(f(parse("").expect("default")).message_bytes_max, MESSAGE_BYTES_MAX_DEFAULT);
        assert_eq!(f(parse("message_bytes_max = 4096\n").expect("set")).message_bytes_max, 4096);
        // Users limited lower: the default follows them down.
        let s = "domain = \"example.com\"\n[limits]\nmessage_bytes_max = 8192\n[edge]\n[edge.federation]\n\
                 listen = \"127.0.0.1:5065\"\nca = \"p.pem\"\n";
        let c = Config::from_toml_str(s, Path::new("/etc/parapet")).expect("parses");
        assert_eq!(f(c).message_bytes_max, 8192);
        for bad in ["message_bytes_max = 100\n", "message_bytes_max = 70000\n"] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(e.contains("[edge.federation] message_bytes_max"), "{e}");
        }
    }

    #[test]
    fn inbound_only_partners() {
        let entry = |addr: &str| {
            format!(
                "[[edge.federation.partners]]\ndomain = \"partner.test\"\ncert_name = \"edge.partner.test\"\n{addr}"
            )
        };
        let c = parse(&entry("addr = \" None \"\n")).expect("inbound only");
        assert_eq!(c.edge.and_then(|e| e.federation).expect("federation").partners[0].addr, None);
        let e = parse(&entry("")).expect_err("no addr").to_string();
        assert!(e.contains("[edge.federation.partners.0] addr") && e.contains("\"none\""), "{e}");
        let e = parse("[[edge.federation.clearinghouses]]\nname = \"hub.test\"\naddr = \"none\"\ndomains = [\"*\"]\n")
            .expect_err("a hub needs an address")
            .to_string();
        assert!(e.contains("[edge.federation.clearinghouses.0] addr") && e.contains("for partners"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let both = parse(
            "blocked_domains = [\"partner.test\"]\n[[edge.federation.partners]]\ndomain = \"partner.test\"\n\
             cert_name = \"edge.partner.test\"\naddr = \"127.0.0.1:6000\"\n",
        );
        let e = both.expect_err("allowed and blocked").to_string();
        assert!(e.contains("[edge.federation] blocked_domains.0"), "{e}");
        let e = parse("[[edge.federation.partners]]\ndomain = \"partner.test\"\naddr = \"127.0.0.1:6000\"\n")
            .expect_err("no cert_name")
            .to_string();
        assert!(e.contains("[edge.federation.partners.0] cert_name"), "{e}");
        let e = parse("unknown = \"allow\"\n").expect_err("unsupported").to_string();
        assert!(e.contains("[edge.federation] unknown"), "{e}");
        let e = parse("[[edge.federation.clearinghouses]]\nname = \"hub.test\"\naddr = \"127.0.0.1:1\"\n")
            .expect_err("no domains")
            .to_string();
        assert!(e.contains("[edge.federation.clearinghouses.0] domains"), "{e}");
        let e = parse("clearinghouse = true\n").expect_err("hub without members").to_string();
        assert!(e.contains("[edge.federation] clearinghouse"), "{e}");
    }

    #[test]
    fn clearinghouse_mode() {
        let f = |c: Config| c.edge.and_then(|e| e.federation).expect("federation");
        assert!(!f(parse("").expect("parses")).clearinghouse, "off by default");
        let hub = parse(
            "clearinghouse = true\n[[edge.federation.partners]]\ndomain = \"partner.test\"\n\
             cert_name = \"edge.partner.test\"\naddr = \"127.0.0.1:6000\"\n",
        )
        .expect("parses");
        assert!(f(hub).clearinghouse);
    }
}
