//! Federation at the edge: requests from partner organizations' edges (and clearinghouses) toward our pool, and
//! our pool's requests for foreign domains toward them, both over mutual TLS.
//!
//! Inbound: the federation listener admits only peers whose certificate carries a configured name (RFC 5922:
//! the subjectAltName DNS names, matched exactly); the connection may speak for the domains the partner table
//! gives that name. Every request is checked (method, From domain spoken for, Request-URI ours, hop count)
//! before it reaches the pool, marked with `P-Parapet-Federated: <peer domain>` so that the pool skips digest
//! authentication (a header the edge removes from anything a user sends). Responses return by our Via.
//!
//! Outbound: the pool sends a request for a foreign domain with `Route: <sip:fed@EDGE_INTERNAL;lr>`; the edge
//! looks the domain up in the routing table (direct partner, clearinghouse, or refuse), hides the internal hops
//! exactly as toward a user ([`super::downstream`]), and sends it through this core's connector to that peer,
//! which verifies the peer's certificate name. The response comes back on that connection, under our Via.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;

use super::{token, Edge};
use crate::config::FederationConfig;
use crate::net::conn::bump;
use crate::net::{tls, Conn, ConnId, ConnKind, Connector};
use crate::sip::{Editor, HeaderName, Message, Method, Uri};

/// The user part of the Route with which the pool hands us a request for a foreign domain.
pub const FED_ROUTE_USER: &[u8] = b"fed";

/// Federation settings shared by every core, read-only.
pub struct FedSettings {
    pub cfg: FederationConfig,
    /// Our SIP domain (lowercase).
    pub domain: String,
    pub listen_text: String,
    pub server_tls: Arc<rustls::ServerConfig>,
    pub client_tls: Arc<rustls::ClientConfig>,
}

impl FedSettings {
    pub fn new(
        cfg: &FederationConfig,
        domain: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Self, String> {
        let server_tls = tls::server_config(cert, key, Some(&cfg.ca)).map_err(|e| format!("[edge.federation] {e}"))?;
        let client_tls =
            tls::client_config(&cfg.ca, Some((cert, key))).map_err(|e| format!("[edge.federation] {e}"))?;
        Ok(FedSettings {
            cfg: cfg.clone(),
            domain: domain.to_ascii_lowercase(),
            listen_text: cfg.listen.to_string(),
            server_tls,
            client_tls,
        })
    }
}

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

fn host_lower(uri: &Uri<'_>) -> String {
    String::from_utf8_lossy(uri.host).to_ascii_lowercase()
}

/// Methods a federated peer may send us.
fn allowed(m: Method) -> bool {
    matches!(m, Method::Message | Method::Subscribe | Method::Notify | Method::Options | Method::Ack)
}

impl Edge {
    /// A request from a federated peer: checked, then on to the pool marked as federated.
    pub(super) fn from_partner(self: &Rc<Self>, conn: &Rc<Conn>, msg: &Message) {
        let Some(fed) = self.s.fed.as_ref() else { return };
        bump(&self.estats.requests_from_partners);
        let method = msg.method().copied().unwrap_or(Method::Other);
        if !allowed(method) {
            bump(&self.estats.federation_refused);
            self.reply(conn.id, msg, 405, "Method Not Allowed");
            return;
        }
        if method == Method::Ack {
            return;
        }
        if crate::shard::draining() {
            self.reply(conn.id, msg, 503, "Service Unavailable: shutting down");
            return;
        }
        let Some(table) = self.fed_table.borrow().clone() else { return };
        let domains = speaks_for(&table, &conn.peer_names);
        let from = host_lower(&msg.from().uri);
        if !may_speak(&table, &fed.domain, &domains, &from) {
            bump(&self.estats.federation_spoofed_from);
            tracing::warn!(peer = %conn.peer, names = ?conn.peer_names, %from, "federated request From a domain the peer does not speak for");
            self.reply(conn.id, msg, 403, "Forbidden: From domain not spoken for by this peer");
            return;
        }
        let Some(ruri) = msg.request_uri_parsed() else {
            self.reply(conn.id, msg, 416, "Unsupported URI Scheme");
            return;
        };
        if host_lower(&ruri) != fed.domain && !self.is_myself(&ruri) {
            bump(&self.estats.federation_refused);
            self.reply(conn.id, msg, 404, "Not Found: domain not served here");
            return;
        }
        if method == Method::Options && ruri.user.is_none() {
            self.reply(conn.id, msg, 200, "OK");
            return;
        }
        let max_forwards = msg.max_forwards().unwrap_or(70);
        if max_forwards == 0 {
            self.reply(conn.id, msg, 483, "Too Many Hops");
            return;
        }
        let salt = msg.top_via().map(|v| token::hash(v.branch().unwrap_or(v.raw))).unwrap_or(0);
        let mut via = Vec::with_capacity(96);
        via.extend_from_slice(b"SIP/2.0/TLS ");
        via.extend_from_slice(self.s.internal_text.as_bytes());
        via.extend_from_slice(b";branch=");
        token::write_up_branch(&mut via, conn.id, salt);
        let received = conn.peer.ip().to_string();
        let mut ed = Editor::new(msg);
        ed.remove_headers(HeaderName::Route);
        ed.remove_headers(HeaderName::ParapetFederated);
        ed.set_top_via_params(Some(received.as_bytes()), Some(conn.peer.port()));
        ed.push_via(&via);
        ed.prepend_header(HeaderName::ParapetFederated, from.as_bytes());
        ed.set_max_forwards(max_forwards - 1);
        let mut out = BytesMut::with_capacity(msg.bytes().len() + 256);
        ed.write(&mut out);
        self.pool.send(self, out.freeze());
    }

    /// The pool's response to a partner's request, on the partner connection's core: our Via off, then back.
    pub(super) fn response_to_partner(self: &Rc<Self>, back: ConnId, msg: &Message) {
        bump(&self.estats.responses_routed);
        let mut ed = Editor::new(msg);
        ed.pop_via();
        let mut out = BytesMut::with_capacity(msg.bytes().len());
        ed.write(&mut out);
        self.deliver(back, out.freeze());
    }

    /// A request from the pool (received on `from`) for a foreign domain: route it to the right peer.
    pub(super) fn to_partner(self: &Rc<Self>, from: ConnId, msg: Message) {
        let Some(fed) = self.s.fed.as_ref() else {
            self.reply(from, &msg, 404, "Not Found: federation is not configured");
            return;
        };
        bump(&self.estats.requests_to_partners);
        if host_lower(&msg.from().uri) != fed.domain {
            bump(&self.estats.federation_refused);
            self.reply(from, &msg, 403, "Forbidden: From must be our domain");
            return;
        }
        let Some(domain) = msg.request_uri_parsed().map(|u| host_lower(&u)) else {
            self.reply(from, &msg, 416, "Unsupported URI Scheme");
            return;
        };
        let Some(table) = self.fed_table.borrow().clone() else { return };
        let Some(target) = route_for(&table, &domain) else {
            bump(&self.estats.federation_refused);
            let blocked = table.blocked_domains.contains(&domain);
            let (code, reason) =
                if blocked { (403, "Forbidden: domain blocked") } else { (404, "Not Found: no federation route") };
            self.reply(from, &msg, code, reason);
            return;
        };
        let Some((_, out)) = self.hide_internal_hops(from, &msg, &fed.listen_text) else { return };
        let connector = self.partner_connector(&target, fed);
        connector.send(self, out);
    }

    /// This core's connector to a federation peer, made on first use.
    fn partner_connector(&self, t: &Target, fed: &FedSettings) -> Rc<Connector> {
        let mut map = self.partners.borrow_mut();
        map.entry(t.name.clone())
            .or_insert_with(|| {
                Rc::new(Connector::new(t.addr, &t.name, fed.client_tls.clone(), self.s.handshake_timeout))
            })
            .clone()
    }
}

impl Edge {
    /// Once a second, from the sweep: when a reload published a new table, take it, forget connectors to peers it
    /// no longer routes to, and close the federation connections of peers it no longer admits.
    pub(super) fn apply_federation_reload(&self) {
        let generation = super::reload::generation();
        if generation == self.fed_generation.get() {
            return;
        }
        self.fed_generation.set(generation);
        let Some(new) = super::reload::current() else { return };
        if self.s.fed.is_none() {
            return;
        }
        *self.fed_table.borrow_mut() = Some(new.clone());
        bump(&self.estats.federation_reloads);
        let routed = |name: &str, addr: SocketAddr| {
            new.partners.iter().any(|p| p.cert_name == name && p.addr == addr)
                || new.clearinghouses.iter().any(|c| c.name == name && c.addr == addr)
        };
        self.partners.borrow_mut().retain(|name, c| routed(name, c.addr));
        let table = self.table.borrow();
        let mut cut = 0u64;
        for c in table.iter() {
            let federated = c.kind == ConnKind::Partner || (c.kind == ConnKind::PeerOut && !self.is_pool(c));
            if federated && !admits(&new, &c.peer_names) {
                tracing::info!(peer = %c.peer, names = ?c.peer_names, "federation peer removed by reload: closing");
                table.close(c.id);
                cut += 1;
            }
        }
        self.estats.federation_peers_cut.add(cut);
        tracing::info!(core = self.id, generation, closed = cut, "federation table applied");
    }
}

/// Per-core connectors to federation peers, by certificate name.
pub type PartnerConnectors = std::cell::RefCell<HashMap<String, Rc<Connector>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Clearinghouse, Partner, UnknownPeers};

    fn cfg() -> FederationConfig {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        FederationConfig {
            listen: a(5065),
            ca: "ca.pem".into(),
            partners: vec![Partner {
                domain: "partner.test".into(),
                cert_name: "edge.partner.test".into(),
                addr: a(1),
            }],
            clearinghouses: vec![
                Clearinghouse { name: "hub.test".into(), addr: a(2), domains: vec!["third.test".into()] },
                Clearinghouse { name: "any.test".into(), addr: a(3), domains: vec!["*".into()] },
            ],
            blocked_domains: vec!["evil.test".into()],
            unknown: UnknownPeers::Refuse,
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
