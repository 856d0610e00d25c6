//! Partners by name, and the partners file.
//!
//! A peer's `addr` is an address (`"192.0.2.7:5061"`), a name with a port (`"edge.partner.test:5061"`, A/AAAA
//! only) or a name alone (`"partner.test"`: SRV `_sipfederationtls._tcp`, then `_sips._tcp`, then A/AAAA at
//! 5061, RFC 3263; see `crate::net::dns`). How names resolve:
//!
//! ```toml
//! [edge.federation]
//! resolver = "127.0.0.1:5353"   # the DNS server (UDP and TCP); default: the system's (/etc/resolv.conf)
//! dns_ttl_min_secs = 5          # a TTL below counts as this
//! dns_ttl_max_secs = 3600       # a TTL above counts as this
//! dns_grace_secs = 3600         # a name that stops resolving keeps its last addresses this long after expiry
//! partners_file = "partners.toml"
//! ```
//!
//! The partners file holds the partners `parapet partner add` wrote (`[[partners]]` entries with the keys of
//! `[[edge.federation.partners]]`); it is read with the config, so a reload applies it, and it is kept apart from
//! the config file because `parapet up` regenerates that one. A missing file is an empty list. For a domain in
//! both, the file's entry wins (so a partner `up` writes can be repointed); twice in the file is an error.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use super::federation::RawPartner;
use super::validate::validate_name;
use super::{invalid, ConfigError};

/// Where a federation peer is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    Ip(SocketAddr),
    /// A DNS name (lowercase, no trailing dot); without a port, SRV records are looked up first.
    Name {
        host: String,
        port: Option<u16>,
    },
}

impl PeerAddr {
    /// The port given, or the SIP-over-TLS default (5061) for a name left to SRV.
    pub fn port(&self) -> u16 {
        match self {
            PeerAddr::Ip(a) => a.port(),
            PeerAddr::Name { port, .. } => port.unwrap_or(5061),
        }
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Ip(a) => write!(f, "{a}"),
            PeerAddr::Name { host, port: Some(p) } => write!(f, "{host}:{p}"),
            PeerAddr::Name { host, port: None } => f.write_str(host),
        }
    }
}

/// `addr` of `[table]`: `ip:port`, `name:port` or `name`.
pub(super) fn parse_peer_addr(table: &str, s: &str) -> Result<PeerAddr, ConfigError> {
    let s = s.trim();
    let key = format!("[{table}] addr");
    // A partner's "none" is handled before (inbound only); anywhere else it would be looked up as a host.
    if s.eq_ignore_ascii_case(super::federation::INBOUND_ONLY) {
        return Err(invalid(&key, "\"none\" (inbound only) is for partners: a clearinghouse needs an address"));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(PeerAddr::Ip(a));
    }
    let expected = "(expected ip:port, name:port or a DNS name, e.g. \"sip.partner.test\")";
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => {
            let port = p.parse::<u16>().ok().filter(|p| *p != 0);
            (h, Some(port.ok_or_else(|| invalid(&key, format!("{s:?}: invalid port {expected}")))?))
        }
        None => (s, None),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(invalid(&key, format!("{s:?}: an address needs its port {expected}")));
    }
    validate_name(&key, &host).map_err(|_| invalid(&key, format!("{s:?} is not a valid address {expected}")))?;
    Ok(PeerAddr::Name { host, port })
}

/// How partners' names resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsConfig {
    /// The DNS server; None: the system's.
    pub resolver: Option<SocketAddr>,
    pub ttl_min_secs: u64,
    pub ttl_max_secs: u64,
    pub grace_secs: u64,
    /// `discovery = true`: domains in no entry are found by their `_sipfederationtls._tcp` SRV record, and peers
    /// on no list admitted when their certificate names that record's target.
    pub discovery: bool,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig { resolver: None, ttl_min_secs: 5, ttl_max_secs: 3600, grace_secs: 3600, discovery: false }
    }
}

/// A day: longer TTLs or grace would let a renumbered or vanished partner linger for days.
const DNS_SECS_MAX: u64 = 86_400;

pub(super) fn dns_config(
    resolver: Option<&str>,
    (ttl_min, ttl_max, grace): (Option<u64>, Option<u64>, Option<u64>),
) -> Result<DnsConfig, ConfigError> {
    let d = DnsConfig::default();
    let t = "edge.federation";
    let resolver = match resolver.map(str::trim) {
        None | Some("") | Some("system") => None,
        Some(s) => Some(s.parse::<SocketAddr>().map_err(|_| {
            invalid(format!("[{t}] resolver"), format!("{s:?} is not ip:port (e.g. \"127.0.0.1:53\"), or \"system\""))
        })?),
    };
    let bounded = |key: &str, v: Option<u64>, dv: u64, min: u64| {
        let v = v.unwrap_or(dv);
        if (min..=DNS_SECS_MAX).contains(&v) {
            Ok(v)
        } else {
            Err(invalid(format!("[{t}] {key}"), format!("{v} is not between {min} and {DNS_SECS_MAX}")))
        }
    };
    let ttl_min_secs = bounded("dns_ttl_min_secs", ttl_min, d.ttl_min_secs, 1)?;
    let ttl_max_secs = bounded("dns_ttl_max_secs", ttl_max, d.ttl_max_secs.max(ttl_min_secs), 1)?;
    if ttl_max_secs < ttl_min_secs {
        return Err(invalid(
            format!("[{t}] dns_ttl_max_secs"),
            format!("{ttl_max_secs} is below dns_ttl_min_secs ({ttl_min_secs})"),
        ));
    }
    let grace_secs = bounded("dns_grace_secs", grace, d.grace_secs, 0)?;
    Ok(DnsConfig { resolver, ttl_min_secs, ttl_max_secs, grace_secs, discovery: false })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    partners: Option<Vec<RawPartner>>,
    blocked_domains: Option<Vec<String>>,
}

/// The partners file parsed as `T`; a file that does not exist yet is `T::default()`.
fn load<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T, ConfigError> {
    let key = "[edge.federation] partners_file";
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| invalid(key, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(invalid(key, format!("{}: {e}", path.display()))),
    }
}

/// The partners file's entries and blocked domains (none when it does not exist yet).
pub(super) fn read(path: &Path) -> Result<(Vec<RawPartner>, Vec<String>), ConfigError> {
    let f = load::<RawFile>(path)?;
    Ok((f.partners.unwrap_or_default(), f.blocked_domains.unwrap_or_default()))
}

/// The partners file as `partner add/remove` edit it: each entry kept whole (keys such as `rate` an operator
/// added by hand survive an edit); the reload that follows validates them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, Deserialize)]
pub struct FileEntries {
    /// Before the tables (TOML writes plain keys first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_domains: Vec<String>,
    #[serde(default)]
    pub partners: Vec<toml::Table>,
}

impl FileEntries {
    pub fn load(path: &Path) -> Result<FileEntries, ConfigError> {
        load(path)
    }

    /// Appends an entry as `parapet partner add` gives it.
    pub fn add(&mut self, domain: &str, cert_name: &str, addr: &str) {
        let mut t = toml::Table::new();
        for (k, v) in [("domain", domain), ("cert_name", cert_name), ("addr", addr)] {
            t.insert(k.to_string(), toml::Value::String(v.to_string()));
        }
        self.partners.push(t);
    }

    /// Blocks `domain` (`partner block`); false when it already was.
    pub fn block(&mut self, domain: &str) -> bool {
        if self.blocked_domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return false;
        }
        self.blocked_domains.push(domain.to_ascii_lowercase());
        true
    }

    /// Removes the entry or the block for `domain`; whether there was one.
    pub fn remove(&mut self, domain: &str) -> bool {
        let blocked = self.blocked_domains.len();
        self.blocked_domains.retain(|d| !d.eq_ignore_ascii_case(domain));
        if self.blocked_domains.len() != blocked {
            return true;
        }
        let before = self.partners.len();
        self.partners
            .retain(|t| !t.get("domain").and_then(|d| d.as_str()).is_some_and(|d| d.eq_ignore_ascii_case(domain)));
        self.partners.len() != before
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!("# Partners added by `parapet partner add` (edited by `partner remove`); read with the edge config.\n\n{body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_names_and_names_with_ports() {
        let p = |s| parse_peer_addr("t", s);
        assert_eq!(p("127.0.0.1:5061").ok(), Some(PeerAddr::Ip("127.0.0.1:5061".parse().expect("addr"))));
        assert_eq!(p("[::1]:5061").map(|a| a.port()).ok(), Some(5061));
        assert_eq!(p("Sip.Partner.test").ok(), Some(PeerAddr::Name { host: "sip.partner.test".into(), port: None }));
        assert_eq!(
            p("edge.partner.test.:5070").ok(),
            Some(PeerAddr::Name { host: "edge.partner.test".into(), port: Some(5070) })
        );
        assert_eq!(p("sip.partner.test").map(|a| a.port()).ok(), Some(5061));
        assert_eq!(p("edge.partner.test:5070").map(|a| a.to_string()).ok(), Some("edge.partner.test:5070".to_string()));
        for bad in ["", "host:0", "host:x", "127.0.0.1", "a b.test", "x.test:70000", "::1"] {
            let e = p(bad).expect_err(bad).to_string();
            assert!(e.contains("[t] addr"), "{bad}: {e}");
        }
    }

    #[test]
    fn dns_settings_bounded() {
        assert_eq!(dns_config(None, (None, None, None)).ok(), Some(DnsConfig::default()));
        let c = dns_config(Some("127.0.0.1:5353"), (Some(1), Some(30), Some(0))).expect("valid");
        assert_eq!(c.resolver, Some("127.0.0.1:5353".parse().expect("addr")));
        assert_eq!((c.ttl_min_secs, c.ttl_max_secs, c.grace_secs), (1, 30, 0));
        for (r, t, key) in [
            (Some("localhost"), (None, None, None), "resolver"),
            (None, (Some(0), None, None), "dns_ttl_min_secs"),
            (None, (Some(10), Some(5), None), "dns_ttl_max_secs"),
            (None, (None, None, Some(100_000)), "dns_grace_secs"),
        ] {
            let e = dns_config(r, t).expect_err(key).to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn rendered_file_reads_back() {
        let dir = std::env::temp_dir().join(format!("parapet-partners-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("partners.toml");
        let mut v = FileEntries::default();
        v.add("a.test", "edge.a.test", "a.test");
        v.add("b.test", "edge.b.test", "127.0.0.1:5061");
        std::fs::write(&path, v.render()).expect("write");
        assert_eq!(FileEntries::load(&path).ok(), Some(v.clone()));
        assert_eq!(read(&path).map(|(p, _)| p.len()).ok(), Some(2));
        assert!(v.remove("A.test"));
        assert!(!v.remove("a.test"));
        assert_eq!(v.partners.len(), 1);
        assert!(v.block("Evil.test") && !v.block("evil.test"));
        std::fs::write(&path, v.render()).expect("write");
        assert_eq!(read(&path).map(|(p, b)| (p.len(), b)).ok(), Some((1, vec!["evil.test".to_string()])));
        assert!(v.remove("evil.test") && v.blocked_domains.is_empty());
        assert_eq!(FileEntries::load(&dir.join("none.toml")).ok(), Some(FileEntries::default()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod override_tests {
    use crate::config::Config;

    #[test]
    fn the_file_repoints_a_partner_of_the_config() {
        let dir = std::env::temp_dir().join(format!("parapet-override-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let mut f = super::FileEntries::default();
        f.add("partner.test", "edge.partner.test", "127.0.0.1:7000");
        f.add("new.test", "edge.new.test", "new.test");
        std::fs::write(dir.join("partners.toml"), f.render()).expect("write");
        let text = "domain = \"example.com\"\n[edge]\n[edge.federation]\nca = \"p.pem\"\n\
                    [[edge.federation.partners]]\ndomain = \"partner.test\"\ncert_name = \"edge.partner.test\"\n\
                    addr = \"127.0.0.1:6000\"\n";
        let c = Config::from_toml_str(text, &dir).expect("parses");
        let fed = c.edge.and_then(|e| e.federation).expect("federation");
        let got: Vec<(String, String)> = fed
            .partners
            .iter()
            .map(|p| (p.domain.clone(), p.addr.as_ref().map(|a| a.to_string()).unwrap_or_default()))
            .collect();
        assert_eq!(got, [("partner.test".into(), "127.0.0.1:7000".into()), ("new.test".into(), "new.test".into())]);
        f.add("new.test", "edge.new.test", "new.test");
        std::fs::write(dir.join("partners.toml"), f.render()).expect("write");
        let e = Config::from_toml_str(text, &dir).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("partners.toml partners.2") && e.contains("twice"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
