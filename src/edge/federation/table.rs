//! The partner table as data: who a peer is (its certificate names), what it may speak for, and where a
//! request for a foreign domain goes. Pure functions of the table, so that every rule is unit-tested.
//!
//! Unknown peers (`unknown = "limited"`): a peer on no list whose certificate chains to the federation CA speaks
//! for exactly the domains its certificate names (RFC 5922: a SIP domain's certificate carries the domain
//! itself), except domains the table gives to a partner or a clearinghouse (those speak for themselves), our
//! own, and names that are no domain of an organization (a single label like `localhost`, a wildcard, which
//! RFC 5922 §7.2 lets match nothing but itself). A peer naming a blocked domain is refused outright, as is one
//! left with no domain to speak for.

use crate::config::{FederationConfig, PeerAddr, UnknownPeers};
use crate::net::identity;

/// Whether a peer with these certificate names is listed (a partner or clearinghouse of `cfg`).
fn listed(cfg: &FederationConfig, names: &[String]) -> bool {
    let has = |n: &str| identity::matches(names, n);
    cfg.partners.iter().any(|p| has(&p.cert_name)) || cfg.clearinghouses.iter().any(|c| has(&c.name))
}

/// Whether a peer with these certificate names may connect: listed, or admitted as unknown.
pub fn admits(cfg: &FederationConfig, names: &[String]) -> bool {
    let unknown_ok = cfg.unknown == UnknownPeers::Limited || cfg.dns.discovery;
    listed(cfg, names) || (unknown_ok && !unknown_domains(cfg, names).is_empty())
}

/// With discovery on: whether a peer on no list, From `from`, is for DNS to judge (its SRV targets against the
/// peer's certificate, [`super::discovery`]): not our domain, not blocked, not a domain the table gives to a
/// partner or clearinghouse (those speak for themselves), and a name that can be an organization's domain.
pub fn discoverable(cfg: &FederationConfig, own: &str, names: &[String], from: &str) -> bool {
    let taken = cfg.partners.iter().any(|p| p.domain == from)
        || cfg.clearinghouses.iter().any(|c| c.domains.iter().any(|d| d == from));
    cfg.dns.discovery
        && from != own
        && !taken
        && organization_domain(from)
        && !cfg.blocked_domains.iter().any(|b| b == from)
        && !listed(cfg, names)
}

/// The domains an unknown peer with these certificate names speaks for; empty when it names a blocked domain.
fn unknown_domains(cfg: &FederationConfig, names: &[String]) -> Vec<String> {
    if names.iter().any(|n| cfg.blocked_domains.iter().any(|b| b.eq_ignore_ascii_case(n))) {
        return Vec::new();
    }
    let taken = |n: &str| {
        cfg.partners.iter().any(|p| p.domain.eq_ignore_ascii_case(n))
            || cfg.clearinghouses.iter().any(|c| c.domains.iter().any(|d| d.eq_ignore_ascii_case(n)))
    };
    names.iter().filter(|n| organization_domain(n) && !taken(n)).map(|n| n.to_ascii_lowercase()).collect()
}

/// A name that can be an organization's SIP domain: two labels or more, letters, digits and hyphens only.
fn organization_domain(name: &str) -> bool {
    name.len() <= 253
        && name.contains('.')
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Where a request for a foreign domain goes: the peer's certificate name and address (borrowed from the table:
/// routing allocates nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub name: &'a str,
    pub addr: &'a PeerAddr,
}

/// Domains (lowercase; `*` = any not otherwise configured) a peer with these certificate names may speak for.
pub fn speaks_for(cfg: &FederationConfig, names: &[String]) -> Vec<String> {
    let has = |n: &str| identity::matches(names, n);
    let mut v: Vec<String> = cfg.partners.iter().filter(|p| has(&p.cert_name)).map(|p| p.domain.clone()).collect();
    for c in cfg.clearinghouses.iter().filter(|c| has(&c.name)) {
        v.extend(c.domains.iter().cloned());
    }
    if v.is_empty() && cfg.unknown == UnknownPeers::Limited {
        return unknown_domains(cfg, names);
    }
    v
}

/// Whether a peer with these certificate names may send a request From `from` (a lowercase domain): the rules of
/// [`speaks_for`] and [`may_speak`] together, without collecting anything (every federated request asks).
pub fn may_send_from(cfg: &FederationConfig, own: &str, names: &[String], from: &str) -> bool {
    if from == own || cfg.blocked_domains.iter().any(|b| b == from) {
        return false;
    }
    let has = |n: &str| identity::matches(names, n);
    let direct = |d: &str| cfg.partners.iter().any(|p| p.domain == d);
    let mut listed = false;
    for p in cfg.partners.iter().filter(|p| has(&p.cert_name)) {
        listed = true;
        if p.domain == from {
            return true;
        }
    }
    for c in cfg.clearinghouses.iter().filter(|c| has(&c.name)) {
        listed = true;
        // A clearinghouse for "any" domain does not speak for a domain we federate with directly.
        if c.domains.iter().any(|d| d == from || (d == "*" && !direct(from))) {
            return true;
        }
    }
    !listed && cfg.unknown == UnknownPeers::Limited && unknown_domains(cfg, names).iter().any(|d| d == from)
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

/// Whether `domain` is a partner's that we never send to (`addr = "none"`): [`route_for`] has no route for it,
/// and the caller says why instead of "no route".
pub fn inbound_only(cfg: &FederationConfig, domain: &str) -> bool {
    cfg.partners.iter().any(|p| p.domain == domain && p.addr.is_none())
}

/// The final answer to our request for an inbound-only partner's domain. 403, not 404 (the user may well exist
/// there) nor 480/503 (nothing will change by retrying): RFC 3261 §21.4.4, the request is understood and refused
/// by policy, and is not to be repeated. The reason phrase names the domain and why, for the user's client to show.
pub fn inbound_only_refusal(domain: &str) -> (u16, String) {
    (403, format!("Forbidden: {domain} accepts no requests from us (inbound-only partner, e.g. a demo partner played by loadgen)"))
}

/// The routing table: a direct partner, else a clearinghouse listing the domain, else one for any domain.
pub fn route_for<'a>(cfg: &'a FederationConfig, domain: &str) -> Option<Target<'a>> {
    if cfg.blocked_domains.iter().any(|b| b == domain) {
        return None;
    }
    // A partner's domain is the partner's alone: an inbound-only one gets no route, not a hub's ([`inbound_only`]).
    if let Some(p) = cfg.partners.iter().find(|p| p.domain == domain) {
        return p.addr.as_ref().map(|addr| Target { name: &p.cert_name, addr });
    }
    let hub = |any: bool| {
        cfg.clearinghouses
            .iter()
            .find(|c| c.domains.iter().any(|d| if any { d == "*" } else { d == domain }))
            .map(|c| Target { name: &c.name, addr: &c.addr })
    };
    hub(false).or_else(|| hub(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Clearinghouse, Partner, PeerLimits, UnknownPeers};
    fn cfg() -> FederationConfig {
        let a = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        let ip = |p: u16| crate::config::PeerAddr::Ip(a(p));
        FederationConfig {
            listen: Some(a(5065)),
            ca: "ca.pem".into(),
            partners: vec![Partner {
                domain: "partner.test".into(),
                cert_name: "edge.partner.test".into(),
                addr: Some(ip(1)),
                limits: PeerLimits::LISTED,
            }],
            clearinghouses: vec![
                Clearinghouse {
                    name: "hub.test".into(),
                    addr: ip(2),
                    domains: vec!["third.test".into()],
                    limits: PeerLimits::LISTED,
                },
                Clearinghouse {
                    name: "any.test".into(),
                    addr: ip(3),
                    domains: vec!["*".into()],
                    limits: PeerLimits::LISTED,
                },
            ],
            blocked_domains: vec!["evil.test".into()],
            unknown: UnknownPeers::Refuse,
            unknown_limits: PeerLimits::UNKNOWN,
            message_bytes_max: 65_535,
            clearinghouse: false,
            dns: Default::default(),
            partners_file: None,
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

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn may_send_from_agrees_with_speaks_for_and_may_speak() {
        let mut limited = cfg();
        limited.unknown = UnknownPeers::Limited;
        let peers: [&[&str]; 6] = [
            &["edge.partner.test"],
            &["EDGE.partner.test", "partner.test"],
            &["hub.test"],
            &["any.test"],
            &["stranger.test", "edge.stranger.test"],
            &["evil.test"],
        ];
        let froms = ["partner.test", "third.test", "fourth.test", "stranger.test", "evil.test", "example.com", ""];
        for c in [cfg(), limited] {
            for p in peers {
                let n = names(p);
                for from in froms {
                    let expected = may_speak(&c, "example.com", &speaks_for(&c, &n), from);
                    assert_eq!(
                        may_send_from(&c, "example.com", &n, from),
                        expected,
                        "{p:?} From {from:?} ({:?})",
                        c.unknown
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_peers_refused_by_default() {
        let c = cfg();
        assert!(admits(&c, &names(&["edge.partner.test"])));
        assert!(admits(&c, &names(&["HUB.test"])), "names compare case-insensitively");
        assert!(!admits(&c, &names(&["stranger.test", "edge.stranger.test"])));
        assert!(speaks_for(&c, &names(&["stranger.test"])).is_empty());
        // RFC 5922 §7.2: a wildcard certificate name is no match for a configured name, nor a suffix.
        assert!(!admits(&c, &names(&["*.partner.test"])));
        assert!(!admits(&c, &names(&["partner.edge.partner.test", "test"])));
    }

    #[test]
    fn limited_unknown_peers_speak_for_the_domains_their_certificate_names() {
        let mut c = cfg();
        c.unknown = UnknownPeers::Limited;
        let own = "example.com";
        let stranger = names(&["localhost", "stranger.test", "edge.stranger.test", "*.stranger.test"]);
        assert!(admits(&c, &stranger));
        let domains = speaks_for(&c, &stranger);
        assert_eq!(domains, names(&["stranger.test", "edge.stranger.test"]), "no single label, no wildcard");
        assert!(may_speak(&c, own, &domains, "stranger.test"));
        assert!(!may_speak(&c, own, &domains, "sub.stranger.test"), "no suffix match");
        assert!(!may_speak(&c, own, &domains, "partner.test"));
        // Domains the table gives to a partner or a clearinghouse are not an unknown peer's to speak for.
        let squatter = names(&["partner.test", "third.test", "squat.test"]);
        assert_eq!(speaks_for(&c, &squatter), names(&["squat.test"]));
        assert!(!admits(&c, &names(&["partner.test"])), "nothing left to speak for");
        // Our own domain is never a peer's.
        assert!(!may_speak(&c, own, &speaks_for(&c, &names(&["example.com", "x.test"])), "example.com"));
        // Blocked domains are still refused: the whole peer.
        assert!(!admits(&c, &names(&["evil.test", "nice.test"])));
        assert!(!admits(&c, &names(&["localhost", "*.wild.test"])), "no domain at all");
        // A listed peer keeps its listing (no extra domains from its certificate).
        assert_eq!(speaks_for(&c, &names(&["edge.partner.test", "other.test"])), names(&["partner.test"]));
        // Outbound, unknown domains stay unrouted (unless a clearinghouse serves them).
        let mut direct_only = c.clone();
        direct_only.clearinghouses.clear();
        assert_eq!(route_for(&direct_only, "stranger.test"), None);
    }

    #[test]
    fn routing_table() {
        let c = cfg();
        assert_eq!(route_for(&c, "partner.test").map(|t| t.name), Some("edge.partner.test"));
        assert_eq!(route_for(&c, "third.test").map(|t| t.name), Some("hub.test"));
        assert_eq!(route_for(&c, "other.test").map(|t| t.name), Some("any.test"));
        assert_eq!(route_for(&c, "evil.test"), None);
        let mut direct_only = cfg();
        direct_only.clearinghouses.clear();
        assert_eq!(route_for(&direct_only, "other.test"), None);
    }

    #[test]
    fn inbound_only_partners_are_admitted_but_never_routed() {
        let mut c = cfg();
        c.partners[0].addr = None;
        let own = "example.com";
        let peer = names(&["edge.partner.test"]);
        assert!(admits(&c, &peer), "admitted inbound exactly as before");
        assert!(may_send_from(&c, own, &peer, "partner.test"));
        assert!(inbound_only(&c, "partner.test"));
        assert!(!inbound_only(&c, "third.test") && !inbound_only(&cfg(), "partner.test"));
        assert_eq!(route_for(&c, "partner.test"), None, "not even through the hub for any domain");
        assert_eq!(route_for(&c, "other.test").map(|t| t.name), Some("any.test"), "other domains unchanged");
        c.dns.discovery = true;
        assert!(!discoverable(&c, own, &[], "partner.test"), "nor left to DNS discovery");
        let (code, reason) = inbound_only_refusal("partner.test");
        assert_eq!(code, 403);
        assert!(reason.contains("partner.test accepts no requests from us"), "{reason}");
    }

    #[test]
    fn discovery_leaves_unlisted_domains_to_dns() {
        let mut c = cfg();
        let own = "example.com";
        let stranger = names(&["edge.stranger.test"]);
        assert!(!admits(&c, &stranger), "off by default");
        assert!(!discoverable(&c, own, &stranger, "stranger.test"));
        c.dns.discovery = true;
        assert!(admits(&c, &stranger), "admitted for DNS to judge, request by request");
        assert!(discoverable(&c, own, &stranger, "stranger.test"));
        assert!(!discoverable(&c, own, &stranger, "partner.test"), "a partner's domain speaks for itself");
        assert!(!discoverable(&c, own, &stranger, "third.test"), "as does a clearinghouse's");
        assert!(!discoverable(&c, own, &stranger, "evil.test"), "blocked");
        assert!(!discoverable(&c, own, &stranger, own));
        assert!(!discoverable(&c, own, &stranger, "localhost"), "no organization's domain");
        assert!(!discoverable(&c, own, &names(&["edge.partner.test"]), "stranger.test"), "a listed peer is listed");
        assert!(!admits(&c, &names(&["evil.test"])), "a blocked name is refused outright");
        assert_eq!(route_for(&c, "stranger.test").map(|t| t.name), Some("any.test"), "a hub for any domain first");
    }
}
