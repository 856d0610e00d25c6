//! Clearinghouse (hub) mode: a member's request for another member's domain is relayed from edge to edge, never
//! through our pool.
//!
//! The member was already checked on the way in ([`super::inbound`]: its certificate names, the From domain it may
//! speak for). Here the Request-URI's domain picks the way out by the same routing table as our own outbound
//! requests (a member, or a clearinghouse we know), and the request leaves with the member's Vias hidden exactly
//! as toward a user ([`crate::edge::downstream`]): one MAC'd Via of ours, the rest waiting in a transaction on this
//! core, so the answering member's response, arriving on our connection to it, finds its way back to the member
//! that asked. A SUBSCRIBE that opens a dialog gets our Record-Route (`<sip:hub@...>`) on top of the members'
//! ones, and the in-dialog requests that come back with it are relayed by their To domain, dropping our entry and
//! keeping the rest of the route set, so presence works across the hub as between direct partners.

use std::sync::Arc;
use std::time::Instant;

use super::super::core::{Action, ConnInfo, EdgeCore};
use super::{route_for, Target};
use crate::config::FederationConfig;
use crate::net::conn::bump;
use crate::sip::{HeaderName, Message, Method, NameAddr};

/// The user part of the Record-Route a hub puts on the dialogs it relays.
pub(super) const HUB_ROUTE_USER: &str = "hub";

fn is_hub_route(r: &[u8]) -> bool {
    NameAddr::parse(r).is_ok_and(|na| na.uri.user == Some(HUB_ROUTE_USER.as_bytes()))
}

/// Why a hub does not relay a member's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Blocked,
    NoRoute,
    /// The domain is an inbound-only partner's.
    InboundOnly,
    /// The route leads back to the peer the request came from.
    Loop,
}

impl Refusal {
    fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::Blocked => (403, "Forbidden: domain blocked"),
            Refusal::NoRoute => (404, "Not Found: no federation route"),
            // As for our own users' requests (`super::inbound_only_refusal`), without the domain (no allocation).
            Refusal::InboundOnly => (403, "Forbidden: inbound-only partner, it accepts no requests from us"),
            Refusal::Loop => (482, "Loop Detected"),
        }
    }
}

/// Where a hub relays a request for `domain` that came from a peer with certificate names `from_names`.
fn relay_target<'a>(cfg: &'a FederationConfig, from_names: &[String], domain: &str) -> Result<Target<'a>, Refusal> {
    if cfg.blocked_domains.iter().any(|b| b == domain) {
        return Err(Refusal::Blocked);
    }
    if super::inbound_only(cfg, domain) {
        return Err(Refusal::InboundOnly);
    }
    let target = route_for(cfg, domain).ok_or(Refusal::NoRoute)?;
    if from_names.iter().any(|n| n.eq_ignore_ascii_case(target.name)) {
        return Err(Refusal::Loop);
    }
    Ok(target)
}

impl EdgeCore {
    /// A member's request (already checked: peer and From domain) for `domain`, which is not ours: relay it to the
    /// member (or clearinghouse) serving that domain.
    pub(in crate::edge) fn relay_between_members(
        &mut self,
        conn: &ConnInfo<'_>,
        msg: &Message,
        table: &FederationConfig,
        domain: &str,
        now: Instant,
    ) {
        let s = Arc::clone(&self.s);
        let Some(fed) = s.fed.as_ref() else { return };
        let target = match relay_target(table, conn.names, domain) {
            Ok(t) => t,
            Err(why) => {
                bump(&self.estats.federation_refused);
                tracing::info!(peer = %conn.peer, names = ?conn.names, %domain, ?why, "clearinghouse: not relayed");
                let (code, reason) = why.status();
                self.out.reply(conn.id, msg, code, reason);
                return;
            }
        };
        // Dialogs through the hub (presence): the route set beyond us stays, we drop our own entry, and a SUBSCRIBE
        // that opens a dialog gets our Record-Route on top of the members', so in-dialog requests cross the hub too.
        let mut add: Vec<(HeaderName, &[u8])> = Vec::new();
        let mut routes = msg.values(HeaderName::Route).peekable();
        if routes.peek().is_some_and(|r| is_hub_route(r)) {
            routes.next();
        }
        add.extend(routes.map(|r| (HeaderName::Route, r)));
        if msg.method() == Some(&Method::Subscribe) && msg.to().tag().is_none() {
            add.push((HeaderName::RecordRoute, fed.hub_rr.as_bytes()));
        }
        add.extend(msg.values(HeaderName::RecordRoute).map(|r| (HeaderName::RecordRoute, r)));
        let Some((_, bytes)) = self.hide_internal_hops(conn.id, msg, &fed.listen_text, &add, now) else { return };
        bump(&self.estats.federation_relayed);
        self.out.push(Action::ToPartner { name: target.name.to_string(), addr: target.addr.clone(), bytes });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Clearinghouse, Partner, PeerLimits, UnknownPeers};
    use std::net::SocketAddr;

    fn hub() -> FederationConfig {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let member = |d: &str, p: u16| Partner {
            domain: d.into(),
            cert_name: format!("edge.{d}"),
            addr: Some(crate::config::PeerAddr::Ip(a(p))),
            limits: PeerLimits::LISTED,
        };
        FederationConfig {
            listen: Some(a(5065)),
            ca: "ca.pem".into(),
            partners: vec![member("example.com", 1), member("partner.test", 2), member("third.test", 3)],
            clearinghouses: vec![Clearinghouse {
                name: "other-hub.test".into(),
                addr: crate::config::PeerAddr::Ip(a(4)),
                domains: vec!["far.test".into()],
                limits: PeerLimits::LISTED,
            }],
            blocked_domains: vec!["evil.test".into()],
            unknown: UnknownPeers::Refuse,
            unknown_limits: PeerLimits::UNKNOWN,
            message_bytes_max: 65_535,
            clearinghouse: true,
            dns: Default::default(),
            partners_file: None,
        }
    }

    #[test]
    fn relays_to_the_member_serving_the_domain() {
        let c = hub();
        let from = ["edge.example.com".to_string()];
        assert_eq!(relay_target(&c, &from, "third.test").map(|t| t.name), Ok("edge.third.test"));
        assert_eq!(relay_target(&c, &from, "partner.test").map(|t| t.addr.port()), Ok(2));
        assert_eq!(relay_target(&c, &from, "far.test").map(|t| t.name), Ok("other-hub.test"));
    }

    #[test]
    fn refuses_loops_unknown_and_blocked_domains() {
        let c = hub();
        let from = ["EDGE.example.com".to_string()];
        assert_eq!(relay_target(&c, &from, "example.com"), Err(Refusal::Loop));
        assert_eq!(relay_target(&c, &["other-hub.test".into()], "far.test"), Err(Refusal::Loop));
        assert_eq!(relay_target(&c, &from, "nowhere.test"), Err(Refusal::NoRoute));
        assert_eq!(relay_target(&c, &from, "evil.test"), Err(Refusal::Blocked));
        assert_eq!(Refusal::Loop.status().0, 482);
        let mut c = c;
        c.partners[1].addr = None;
        assert_eq!(relay_target(&c, &from, "partner.test"), Err(Refusal::InboundOnly));
        assert_eq!(Refusal::InboundOnly.status().0, 403);
    }
}
