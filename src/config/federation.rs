//! `[edge.federation]`: the edge's federation listener and its partner table (direct partners, clearinghouses,
//! blocked domains, the policy for unknown peers).
//!
//! ```toml
//! [edge.federation]
//! listen = "127.0.0.1:5065"          # mutual TLS, its own port
//! ca = "partners-ca.pem"             # CAs trusted for partners' certificates
//! blocked_domains = ["evil.test"]
//! unknown = "refuse"
//! clearinghouse = false              # true: this edge is a hub relaying between its partners (members)
//!
//! [[edge.federation.partners]]
//! domain = "partner.test"
//! cert_name = "edge.partner.test"    # the name its certificate must carry (RFC 5922)
//! addr = "127.0.0.1:5165"            # its federation listener
//!
//! [[edge.federation.clearinghouses]]
//! name = "hub.example.net"
//! addr = "127.0.0.1:5265"
//! domains = ["*"]                    # or the domains it may speak for
//! ```
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

use super::validate::validate_name;
use super::{invalid, parse_addr, resolve, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationConfig {
    /// The federation listener (mutual TLS).
    pub listen: SocketAddr,
    /// PEM CA(s) trusted for partners' and clearinghouses' certificates.
    pub ca: PathBuf,
    pub partners: Vec<Partner>,
    pub clearinghouses: Vec<Clearinghouse>,
    /// Lowercase domains refused both ways.
    pub blocked_domains: Vec<String>,
    pub unknown: UnknownPeers,
    /// This edge is a clearinghouse: requests from partners (members) for another member's domain are relayed.
    pub clearinghouse: bool,
}

/// A directly federated organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    /// Its SIP domain (lowercase).
    pub domain: String,
    /// The DNS name its edge's certificate must carry (lowercase).
    pub cert_name: String,
    /// Its edge's federation listener.
    pub addr: SocketAddr,
}

/// A hub relaying for several organizations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clearinghouse {
    /// The DNS name its certificate must carry (lowercase).
    pub name: String,
    pub addr: SocketAddr,
    /// Domains it may speak for (lowercase); `*` is any domain not otherwise configured.
    pub domains: Vec<String>,
}

/// What to do with a peer (or a destination domain) on no list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownPeers {
    Refuse,
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
    clearinghouse: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartner {
    domain: Option<String>,
    cert_name: Option<String>,
    addr: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClearinghouse {
    name: Option<String>,
    addr: Option<String>,
    domains: Option<Vec<String>>,
}

const T: &str = "edge.federation";

fn required(key: String, v: Option<String>) -> Result<String, ConfigError> {
    match v.map(|s| s.trim().to_ascii_lowercase()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(invalid(key, "missing")),
    }
}

pub(super) fn build(raw: RawFederation, base_dir: &Path, own_domain: &str) -> Result<FederationConfig, ConfigError> {
    let listen =
        parse_addr(T, "listen", raw.listen.as_deref().ok_or_else(|| invalid(format!("[{T}] listen"), "missing"))?)?;
    let ca = resolve(base_dir, raw.ca);
    if ca.as_os_str().is_empty() {
        return Err(invalid(format!("[{T}] ca"), "missing (name the PEM file of the CAs trusted for partners)"));
    }
    let own = own_domain.to_ascii_lowercase();
    let mut partners = Vec::new();
    for (i, p) in raw.partners.unwrap_or_default().into_iter().enumerate() {
        let table = format!("{T}.partners.{i}");
        let domain = required(format!("[{table}] domain"), p.domain)?;
        validate_name(&format!("[{table}] domain"), &domain)?;
        if domain == own {
            return Err(invalid(format!("[{table}] domain"), format!("{domain:?} is our own domain")));
        }
        if partners.iter().any(|q: &Partner| q.domain == domain) {
            return Err(invalid(format!("[{table}] domain"), format!("{domain:?} is listed twice")));
        }
        let cert_name = required(format!("[{table}] cert_name"), p.cert_name)?;
        validate_name(&format!("[{table}] cert_name"), &cert_name)?;
        let addr = parse_addr(
            &table,
            "addr",
            p.addr.as_deref().ok_or_else(|| invalid(format!("[{table}] addr"), "missing"))?,
        )?;
        partners.push(Partner { domain, cert_name, addr });
    }
    let mut clearinghouses = Vec::new();
    for (i, c) in raw.clearinghouses.unwrap_or_default().into_iter().enumerate() {
        let table = format!("{T}.clearinghouses.{i}");
        let name = required(format!("[{table}] name"), c.name)?;
        validate_name(&format!("[{table}] name"), &name)?;
        let addr = parse_addr(
            &table,
            "addr",
            c.addr.as_deref().ok_or_else(|| invalid(format!("[{table}] addr"), "missing"))?,
        )?;
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
        clearinghouses.push(Clearinghouse { name, addr, domains });
    }
    let mut blocked_domains = Vec::new();
    for (i, d) in raw.blocked_domains.unwrap_or_default().iter().enumerate() {
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
        Some(other) => {
            return Err(invalid(format!("[{T}] unknown"), format!("{other:?}: only \"refuse\" is supported")))
        }
    };
    let clearinghouse = raw.clearinghouse.unwrap_or(false);
    if clearinghouse && partners.is_empty() {
        return Err(invalid(
            format!("[{T}] clearinghouse"),
            "true, but no [[edge.federation.partners]]: list the member organizations a hub relays between",
        ));
    }
    Ok(FederationConfig { listen, ca, partners, clearinghouses, blocked_domains, unknown, clearinghouse })
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
        assert_eq!(f.ca, PathBuf::from("/etc/parapet/p.pem"));
        assert_eq!(f.partners[0].domain, "partner.test");
        assert_eq!(f.clearinghouses[0].domains, vec!["*".to_string()]);
        assert_eq!(f.blocked_domains, vec!["evil.test".to_string()]);
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
