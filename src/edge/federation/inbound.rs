//! Requests from federation peers (partners' edges, clearinghouses): checked, then handed to the pool (or, at a
//! clearinghouse, relayed to another member: [`super::hub`]).

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::super::core::{ConnInfo, EdgeCore};
use super::super::token;
use super::{discoverable, host_lower, may_send_from};
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::sip::{Editor, HeaderName, Message, Method, NameAddr};

/// Route values a federated request may carry.
pub(in crate::edge) const ROUTE_SET_MAX: usize = 8;

/// Methods a federated peer may send us.
fn allowed(m: Method) -> bool {
    matches!(m, Method::Message | Method::Subscribe | Method::Notify | Method::Options | Method::Ack)
}

// The names say which way a message goes (from a user, to a flow), not a conversion of the core.
#[allow(clippy::wrong_self_convention)]
impl EdgeCore {
    /// A request from a federated peer: checked, then on to the pool marked as federated.
    pub(in crate::edge) fn from_partner(&mut self, conn: &ConnInfo<'_>, msg: &Message, now: Instant) {
        if self.s.fed.is_none() {
            return;
        }
        bump(&self.estats.requests_from_partners);
        let method = msg.method().copied().unwrap_or(Method::Other);
        // Before any other check: every request a peer sends counts against its rate (an ACK has no answer).
        if method != Method::Ack && self.partner_over_rate(conn, msg, now) {
            return;
        }
        self.from_partner_checked(conn, msg, now);
    }

    /// The rest of [`EdgeCore::from_partner`], after the rate (also for requests replayed after discovery).
    pub(in crate::edge) fn from_partner_checked(&mut self, conn: &ConnInfo<'_>, msg: &Message, now: Instant) {
        let s = Arc::clone(&self.s);
        let Some(fed) = s.fed.as_ref() else { return };
        let method = msg.method().copied().unwrap_or(Method::Other);
        if !allowed(method) {
            bump(&self.estats.federation_refused);
            self.out.reply(conn.id, msg, 405, "Method Not Allowed");
            return;
        }
        if method == Method::Ack {
            return;
        }
        if msg.values(HeaderName::Route).nth(ROUTE_SET_MAX).is_some() {
            // Dialogs across organizations carry a few entries (our edge, theirs, a clearinghouse).
            bump(&self.estats.federation_refused);
            tracing::info!(peer = %conn.peer, "federated request with a route set over {ROUTE_SET_MAX}: refused");
            self.out.reply(conn.id, msg, 483, "Too Many Hops: route set too long");
            return;
        }
        if self.draining {
            self.out.reply(conn.id, msg, 503, "Service Unavailable: shutting down");
            return;
        }
        let Some(table) = self.fed_table.clone() else { return };
        let (mut from_buf, mut to_buf, mut ruri_buf) = ([0u8; 256], [0u8; 256], [0u8; 256]);
        let from = host_lower(&msg.from().uri, &mut from_buf);
        let to_domain = host_lower(&msg.to().uri, &mut to_buf);
        let discovered = || discoverable(&table, &fed.domain, conn.names, from);
        if !may_send_from(&table, &fed.domain, conn.names, from) && discovered() {
            let from = from.to_string();
            if !self.discovered_may_send(conn, msg, &from, now) {
                return;
            }
        } else if !may_send_from(&table, &fed.domain, conn.names, from) {
            bump(&self.estats.federation_spoofed_from);
            tracing::warn!(peer = %conn.peer, names = ?conn.names, %from, "federated request From a domain the peer does not speak for");
            self.out.reply(conn.id, msg, 403, "Forbidden: From domain not spoken for by this peer");
            return;
        }
        if let Some(flow) = self.flow_in_route(msg) {
            // An in-dialog request for a dialog a user of ours opened through us (our Record-Route carried the
            // user's flow token): straight to that flow, provided it is addressed to one of ours.
            if to_domain != fed.domain || method != Method::Notify {
                bump(&self.estats.federation_refused);
                self.out.reply(conn.id, msg, 403, "Forbidden: not a request within a dialog of ours");
                return;
            }
            bump(&self.estats.federation_in_dialog);
            self.to_flow(conn.id, flow, msg.clone(), now);
            return;
        }
        let Some(ruri) = msg.request_uri_parsed() else {
            self.out.reply(conn.id, msg, 416, "Unsupported URI Scheme");
            return;
        };
        if table.clearinghouse {
            // Within a dialog the Request-URI is the far end's Contact: the To domain names the member.
            let domain = if msg.to().tag().is_some() { to_domain } else { host_lower(&ruri, &mut ruri_buf) };
            if domain != fed.domain {
                self.relay_between_members(conn, msg, &table, domain, now);
                return;
            }
        }
        let domain = host_lower(&ruri, &mut ruri_buf);
        if domain != fed.domain && !self.is_myself(&ruri) {
            bump(&self.estats.federation_refused);
            self.out.reply(conn.id, msg, 404, "Not Found: domain not served here");
            return;
        }
        if method == Method::Options && ruri.user.is_none() {
            self.out.reply(conn.id, msg, 200, "OK");
            return;
        }
        let max_forwards = msg.max_forwards().unwrap_or(70);
        if max_forwards == 0 {
            self.out.reply(conn.id, msg, 483, "Too Many Hops");
            return;
        }
        let salt = msg.top_via().map(|v| token::hash(v.branch().unwrap_or(v.raw))).unwrap_or(0);
        let mut via = Vec::with_capacity(96);
        via.extend_from_slice(b"SIP/2.0/TLS ");
        via.extend_from_slice(self.s.internal_text.as_bytes());
        via.extend_from_slice(b";branch=");
        token::write_up_branch(&mut via, conn.id, salt);
        let received = conn.peer.ip().to_string();
        // A dialog the partner opens with one of ours (SUBSCRIBE): the pool's in-dialog requests (NOTIFY) must
        // come back through us, to be routed to the partner by the To domain.
        let record_route = (method == Method::Subscribe && msg.to().tag().is_none()).then_some(&fed.internal_rr);
        let mut ed = Editor::new(msg);
        if let Some(rr) = &record_route {
            ed.prepend_header(HeaderName::RecordRoute, rr.as_bytes());
        }
        ed.remove_headers(HeaderName::Route);
        // Internal headers are ours alone: none of a partner's goes on (our own mark is added below).
        crate::proto::strip_internal(msg, &mut ed);
        ed.set_top_via_params(Some(received.as_bytes()), Some(conn.peer.port()));
        ed.push_via(&via);
        ed.prepend_header(HeaderName::ParapetFederated, from.as_bytes());
        ed.set_max_forwards(max_forwards - 1);
        let mut out = BytesMut::with_capacity(msg.bytes().len() + 256);
        // At most thirteen edits (seven internal headers removed), under EDIT_OPS_MAX.
        if ed.write(&mut out).is_ok() {
            self.send_to_pool(&self.pool_routing_aor(msg), out.freeze(), now);
        }
    }

    /// The flow named by the top Route, when it is one of our MAC'd flow tokens.
    fn flow_in_route(&self, msg: &Message) -> Option<ConnId> {
        let route = msg.values(HeaderName::Route).next()?;
        let na = NameAddr::parse(route).ok()?;
        token::parse_flow(&self.s.key, na.uri.user?)
    }

    /// The pool's response to a partner's request, on the partner connection's core: our Via off, our internal
    /// Record-Route (a dialog the partner opened) shown at our federation address instead, then back.
    pub(in crate::edge) fn response_to_partner(&mut self, back: ConnId, msg: &Message, now: Instant) {
        bump(&self.estats.responses_routed);
        if let Some(status) = msg.status().filter(|s| *s >= 200) {
            self.discovered_answered(back, status, now);
        }
        let mut ed = Editor::new(msg);
        ed.pop_via();
        // The route set goes back as one line, however many entries the dialog's peers put in it.
        let mut rrs = Vec::new();
        if let Some(fed) = self.s.fed.as_ref().filter(|_| msg.header(HeaderName::RecordRoute).is_some()) {
            ed.remove_headers(HeaderName::RecordRoute);
            for rr in msg.values(HeaderName::RecordRoute) {
                let ours = rr.eq_ignore_ascii_case(fed.internal_rr.as_bytes());
                if !rrs.is_empty() {
                    rrs.extend_from_slice(b", ");
                }
                rrs.extend_from_slice(if ours { fed.public_rr.as_bytes() } else { rr });
            }
            ed.append_header(HeaderName::RecordRoute, &rrs);
        }
        let mut out = BytesMut::with_capacity(msg.bytes().len());
        if ed.write(&mut out).is_ok() {
            self.out.send(back, out.freeze());
        }
    }
}
