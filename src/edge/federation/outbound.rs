//! Requests from our pool for foreign domains: routed by the table to a partner or clearinghouse.
//!
//! A request that opens a dialog (SUBSCRIBE from a user of ours) leaves with our public Record-Route, carrying the
//! flow token of the user's connection, so that the partner's in-dialog requests (NOTIFY) come back to this edge
//! and straight to that flow. In-dialog requests (To tag) are routed by the To domain, since their Request-URI is
//! the remote party's Contact, and keep the partner's part of the route set (the Routes after ours).

use std::rc::Rc;

use super::super::{token, Edge};
use super::{host_lower, route_for, FedSettings, Target};
use crate::net::conn::bump;
use crate::net::{ConnId, Connector};
use crate::sip::{HeaderName, Message, Method, NameAddr};

impl Edge {
    /// A request from the pool (received on `from`) for a foreign domain: route it to the right peer.
    pub(in crate::edge) fn to_partner(self: &Rc<Self>, from: ConnId, msg: Message) {
        let Some(fed) = self.s.fed.as_ref() else {
            self.reply(from, &msg, 404, "Not Found: federation is not configured");
            return;
        };
        bump(&self.estats.requests_to_partners);
        let mut buf = [0u8; 256];
        if host_lower(&msg.from().uri, &mut buf) != fed.domain {
            bump(&self.estats.federation_refused);
            self.reply(from, &msg, 403, "Forbidden: From must be our domain");
            return;
        }
        let in_dialog = msg.to().tag().is_some();
        let to = msg.to();
        let ruri = msg.request_uri_parsed();
        let domain =
            if in_dialog { Some(host_lower(&to.uri, &mut buf)) } else { ruri.map(|u| host_lower(&u, &mut buf)) };
        let Some(domain) = domain else {
            self.reply(from, &msg, 416, "Unsupported URI Scheme");
            return;
        };
        let Some(table) = self.fed_table.borrow().clone() else { return };
        let Some(target) = route_for(&table, domain) else {
            bump(&self.estats.federation_refused);
            let blocked = table.blocked_domains.iter().any(|b| b == domain);
            let (code, reason) =
                if blocked { (403, "Forbidden: domain blocked") } else { (404, "Not Found: no federation route") };
            self.reply(from, &msg, code, reason);
            return;
        };
        // The first Route is the pool's `fed` entry that brought the request here; the rest are the partner's.
        let mut add: Vec<(HeaderName, &[u8])> =
            msg.values(HeaderName::Route).skip(1).map(|r| (HeaderName::Route, r)).collect();
        let public_rr = if !in_dialog && msg.method() == Some(&Method::Subscribe) {
            self.public_record_route(&msg, &fed.listen_text)
        } else {
            None
        };
        if let Some(rr) = &public_rr {
            add.push((HeaderName::RecordRoute, rr));
        }
        let Some((_, out)) = self.hide_internal_hops(from, &msg, &fed.listen_text, &add) else { return };
        let connector = self.partner_connector(&target, fed);
        connector.send(self, out);
    }

    /// Our Record-Route toward a partner for a dialog a user of ours opens: the flow token of the Record-Route our
    /// user-facing side added (internal address), at our federation address. None when no such entry exists.
    fn public_record_route(&self, msg: &Message, fed_host: &str) -> Option<Vec<u8>> {
        let flow = msg.values(HeaderName::RecordRoute).find_map(|rr| {
            let na = NameAddr::parse(rr).ok()?;
            token::parse_flow(&self.s.key, na.uri.user?)
        })?;
        let mut out = Vec::with_capacity(96);
        token::write_flow_uri(&self.s.key, &mut out, flow, fed_host);
        Some(out)
    }

    /// This core's connector to a federation peer, made on first use.
    pub(super) fn partner_connector(&self, t: &Target<'_>, fed: &FedSettings) -> Rc<Connector> {
        if let Some(c) = self.partners.borrow().get(t.name) {
            return c.clone();
        }
        let tls = self.fed_tls.borrow().as_ref().map_or_else(|| fed.tls.client.clone(), |t| t.client.clone());
        let c = Rc::new(Connector::federated(t.addr, t.name, tls, self.s.handshake_timeout));
        self.partners.borrow_mut().insert(t.name.to_string(), c.clone());
        c
    }
}
