//! Requests from our pool for foreign domains: routed by the table to a partner or clearinghouse.
//!
//! A request that opens a dialog (SUBSCRIBE from a user of ours) leaves with our public Record-Route, carrying the
//! flow token of the user's connection, so that the partner's in-dialog requests (NOTIFY) come back to this edge
//! and straight to that flow. In-dialog requests (To tag) are routed by the To domain, since their Request-URI is
//! the remote party's Contact, and keep the partner's part of the route set (the Routes after ours).

use std::sync::Arc;
use std::time::Instant;

use super::super::core::{Action, EdgeCore};
use super::super::token;
use super::{discoverable, host_lower, inbound_only, inbound_only_refusal, route_for};
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::sip::{HeaderName, Message, Method, NameAddr};

// The names say which way a message goes (from a user, to a flow), not a conversion of the core.
#[allow(clippy::wrong_self_convention)]
impl EdgeCore {
    /// A request from the pool (received on `from`) for a foreign domain: route it to the right peer.
    pub(in crate::edge) fn to_partner(&mut self, from: ConnId, msg: Message, now: Instant) {
        let s = Arc::clone(&self.s);
        let Some(fed) = s.fed.as_ref() else {
            self.out.reply(from, &msg, 404, "Not Found: federation is not configured");
            return;
        };
        bump(&self.estats.requests_to_partners);
        let mut buf = [0u8; 256];
        if host_lower(&msg.from().uri, &mut buf) != fed.domain {
            bump(&self.estats.federation_refused);
            self.out.reply(from, &msg, 403, "Forbidden: From must be our domain");
            return;
        }
        let in_dialog = msg.to().tag().is_some();
        let to = msg.to();
        let ruri = msg.request_uri_parsed();
        let domain =
            if in_dialog { Some(host_lower(&to.uri, &mut buf)) } else { ruri.map(|u| host_lower(&u, &mut buf)) };
        let Some(domain) = domain else {
            self.out.reply(from, &msg, 416, "Unsupported URI Scheme");
            return;
        };
        let Some(table) = self.fed_table.clone() else { return };
        let target = route_for(&table, domain);
        // Discovery: a domain no entry routes goes to the edge its SRV record names (checked by the connector).
        let discovered = target.is_none() && discoverable(&table, &fed.domain, &[], domain);
        if target.is_none() && !discovered {
            bump(&self.estats.federation_refused);
            if inbound_only(&table, domain) {
                let (code, reason) = inbound_only_refusal(domain);
                tracing::debug!(%domain, "request for an inbound-only partner refused");
                self.out.reply(from, &msg, code, &reason);
                return;
            }
            let blocked = table.blocked_domains.iter().any(|b| b == domain);
            let (code, reason) =
                if blocked { (403, "Forbidden: domain blocked") } else { (404, "Not Found: no federation route") };
            self.out.reply(from, &msg, code, reason);
            return;
        }
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
        let Some((_, bytes)) = self.hide_internal_hops(from, &msg, &fed.listen_text, &add, now) else { return };
        match target {
            Some(t) => self.out.push(Action::ToPartner { name: t.name.to_string(), addr: t.addr.clone(), bytes }),
            None => self.out.push(Action::ToDiscovered { domain: domain.to_string(), bytes }),
        }
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
}
