//! The partner table as data: who a peer is (its certificate names), what it may speak for, and where a
//! request for a foreign domain goes. Pure functions of the table, so that every rule is unit-tested.

use std::net::SocketAddr;

use crate::config::FederationConfig;

/// Whether a peer with these certificate names is a partner or clearinghouse of `cfg`.
pub fn admits(cfg: &FederationConfig, names: &[String]) -> bool {
    let has = |n: &str| names.iter().any(|m| m.eq_ignore_ascii_case(n));
    cfg.partners.iter().any(|p| has(&p.cert_name)) || cfg.clearinghouses.iter().any(|c| has(&c.name))
}

/// Where a request for a foreign domain goes: the peer's certificate name and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
}

/// Domains (lowercase; `*` = any not otherwise configured) a peer with these certificate names may speak for.
pub fn speaks_for(cfg: &FederationConfig, names: &[String]) -> Vec<String> {
    let has = |n: &str| names.iter().any(|m| m.eq_ignore_ascii_case(n));
    let mut v: Vec<String> = cfg.partners.iter().filter(|p| has(&p.cert_name)).map(|p| p.domain.clone()).collect();
    for c in cfg.clearinghouses.iter().filter(|c| has(&c.name)) {
        v.extend(c.domains.iter().cloned());
    }
    v
}

/// Whether a peer speaking for `domains` may send a request From `from` (a lowercase domain).
pub fn may_speak(cfg: &FederationConfig, own: &str, domains: &[String], from: &str) -> bool {
    if from == own || cfg.blocked_domains.iter().any(|b| b == from) {
        return false;
    }
    if domains.iter().any(|d| d == from) {
        return true;
    }
    // A clearinghouse for "any" domain does not speak for a domain we federate with directly.
    domains.iter().any(|d| d == "*") && !cfg.partners.iter().any(|p| p.domain == from)
}

/// The routing table: a direct partner, else a clearinghouse listing the domain, else one for any domain.
pub fn route_for(cfg: &FederationConfig, domain: &str) -> Option<Target> {
    if cfg.blocked_domains.iter().any(|b| b == domain) {
        return None;
    }
    if let Some(p) = cfg.partners.iter().find(|p| p.domain == domain) {
        return Some(Target { name: p.cert_name.clone(), addr: p.addr });
    }
    let hub = |any: bool| {
        cfg.clearinghouses
            .iter()
            .find(|c| c.domains.iter().any(|d| if any { d == "*" } else { d == domain }))
            .map(|c| Target { name: c.name.clone(), addr: c.addr })
    };
    hub(false).or_else(|| hub(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Clearinghouse, Partner, PeerLimits, UnknownPeers};
    use std::net::SocketAddr;

    fn cfg() -> FederationConfig {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        FederationConfig {
            listen: a(5065),
            ca: "ca.pem".into(),
            partners: vec![Partner {
                domain: "partner.test".into(),
                cert_name: "edge.partner.test".into(),
                addr: a(1),
                limits: PeerLimits::LISTED,
            }],
            clearinghouses: vec![
                Clearinghouse {
                    name: "hub.test".into(),
                    addr: a(2),
                    domains: vec!["third.test".into()],
                    limits: PeerLimits::LISTED,
                },
                Clearinghouse {
                    name: "any.test".into(),
                    addr: a(3),
                    domains: vec!["*".into()],
                    limits: PeerLimits::LISTED,
                },
            ],
            blocked_domains: vec!["evil.test".into()],
            unknown: UnknownPeers::Refuse,
            unknown_limits: PeerLimits::UNKNOWN,
            message_bytes_max: 65_535,
        }
    }

    #[test]
    fn identity_and_spoofing() {
        let c = cfg();
        let own = "example.com";
        let partner = speaks_for(&c, &["partner.test".into(), "EDGE.partner.test".into()]);
        assert_eq!(partner, vec!["partner.test".to_string()]);
        assert!(may_speak(&c, own, &partner, "partner.test"));
        assert!(!may_speak(&c, own, &partner, "third.test"));
        assert!(!may_speak(&c, own, &partner, "example.com"));
        assert!(speaks_for(&c, &["stranger.test".into()]).is_empty());
        let any = speaks_for(&c, &["any.test".into()]);
        assert!(may_speak(&c, own, &any, "fourth.test"));
        assert!(!may_speak(&c, own, &any, "partner.test"), "a direct partner speaks for itself");
        assert!(!may_speak(&c, own, &any, "evil.test"));
    }

    #[test]
    fn routing_table() {
        let c = cfg();
        assert_eq!(route_for(&c, "partner.test").map(|t| t.name), Some("edge.partner.test".into()));
        assert_eq!(route_for(&c, "third.test").map(|t| t.name), Some("hub.test".into()));
        assert_eq!(route_for(&c, "other.test").map(|t| t.name), Some("any.test".into()));
        assert_eq!(route_for(&c, "evil.test"), None);
        let mut direct_only = cfg();
        direct_only.clearinghouses.clear();
        assert_eq!(route_for(&direct_only, "other.test"), None);
    }
}
