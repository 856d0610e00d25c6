//! Requests from remote users toward the pool, and the pool's responses back to them.
//!
//! The gate: until the pool has accepted a REGISTER on a flow, only REGISTER (and OPTIONS to the edge itself)
//! pass; after it, a request must come From an identity the flow registered. Everything refused here never
//! reaches the pool.

use std::rc::Rc;

use bytes::BytesMut;

use super::{guard, token, Edge};
use crate::net::conn::bump;
use crate::net::{Conn, ConnId};
use crate::pool::aor_of;
use crate::sip::{self, Editor, HeaderName, Message, Method, NameAddr};

impl Edge {
    /// A remote user's request: checked, then on to the pool with our Via (and for REGISTER a Path naming this flow).
    pub(super) fn from_user(self: &Rc<Self>, conn: &Rc<Conn>, msg: &Message) {
        bump(&self.estats.requests_from_users);
        let verdict = self.guard.borrow_mut().admit_message(conn.peer.ip(), std::time::Instant::now());
        match verdict {
            guard::Verdict::Allow => {}
            guard::Verdict::Refuse => {
                bump(&self.estats.rate_limited);
                let extra: &[(HeaderName, &[u8])] = &[(HeaderName::RetryAfter, b"10")];
                let mut out = BytesMut::with_capacity(512);
                sip::write_response(&mut out, msg, 503, "Service Unavailable: rate limit", Some(b"edge"), extra, None);
                self.deliver(conn.id, out.freeze());
                return;
            }
            guard::Verdict::Ban(reason) => {
                bump(&self.estats.rate_limited);
                self.ban(conn.peer.ip(), reason);
                return;
            }
        }
        let method = msg.method().copied().unwrap_or(Method::Other);
        if method == Method::Options && self.is_keepalive_options(msg) {
            let allow: &[u8] = b"REGISTER, MESSAGE, OPTIONS";
            let mut out = BytesMut::with_capacity(512);
            sip::write_response(&mut out, msg, 200, "OK", Some(b"edge"), &[(HeaderName::Allow, allow)], None);
            self.deliver(conn.id, out.freeze());
            return;
        }
        if crate::shard::draining() && method != Method::Ack {
            let mut out = BytesMut::with_capacity(512);
            let extra: &[(HeaderName, &[u8])] = &[(HeaderName::RetryAfter, b"5")];
            sip::write_response(&mut out, msg, 503, "Service Unavailable: shutting down", Some(b"edge"), extra, None);
            self.deliver(conn.id, out.freeze());
            return;
        }
        if method != Method::Register {
            let flows = self.flows.borrow();
            let Some(flow) = flows.get(conn.id).filter(|f| f.is_authenticated()) else {
                drop(flows);
                bump(&self.estats.unauthenticated_refused);
                tracing::info!(peer = %conn.peer, method = ?method, "request before REGISTER: refused at the edge");
                self.reply(conn.id, msg, 403, "Forbidden: register first");
                return;
            };
            if !flow.speaks_for(&aor_of(&msg.from().uri)) {
                drop(flows);
                bump(&self.estats.spoofed_from_refused);
                tracing::info!(peer = %conn.peer, "From is not an identity this connection registered: refused");
                self.reply(conn.id, msg, 403, "Forbidden: From does not match the registered identity");
                return;
            }
        }
        let max_forwards = msg.max_forwards().unwrap_or(70);
        if max_forwards == 0 {
            bump(&self.estats.too_many_hops);
            self.reply(conn.id, msg, 483, "Too Many Hops");
            return;
        }
        if method != Method::Ack {
            let mut flows = self.flows.borrow_mut();
            let flow = flows.get_mut(conn.id);
            if flow.in_flight >= self.s.flow_in_flight_max {
                drop(flows);
                bump(&self.estats.flow_busy);
                self.reply(conn.id, msg, 503, "Service Unavailable: too many requests in flight");
                return;
            }
            flow.in_flight += 1;
        }
        let Some(top) = msg.top_via() else {
            self.reply(conn.id, msg, 400, "Bad Request: no Via");
            return;
        };
        let salt = token::hash(top.branch().unwrap_or(top.raw));
        let own_routes = msg
            .values(HeaderName::Route)
            .take_while(|r| NameAddr::parse(r).map(|na| self.is_myself(&na.uri)).unwrap_or(false))
            .count();

        let mut scratch = self.scratch.borrow_mut();
        scratch.clear();
        scratch.extend_from_slice(b"SIP/2.0/TLS ");
        scratch.extend_from_slice(self.s.internal_text.as_bytes());
        scratch.extend_from_slice(b";branch=");
        token::write_up_branch(&mut scratch, conn.id, salt);
        let via_end = scratch.len();
        // REGISTER gets a Path and a dialog-creating request a Record-Route, both naming this flow, so that the
        // pool's requests for this user (MESSAGE, NOTIFY) come back to this very connection (RFC 3327, RFC 5626).
        let flow_header = match method {
            Method::Register => Some(HeaderName::Path),
            Method::Subscribe | Method::Invite | Method::Refer if msg.to().tag().is_none() => {
                Some(HeaderName::RecordRoute)
            }
            _ => None,
        };
        if flow_header.is_some() {
            self.write_flow_uri(&mut scratch, conn.id, &self.s.internal_text);
        }
        let (via, flow_uri) = scratch.split_at(via_end);
        let received = conn.peer.ip().to_string();

        let mut ed = Editor::new(msg);
        for _ in 0..own_routes {
            ed.pop_route();
        }
        ed.set_top_via_params(Some(received.as_bytes()), Some(conn.peer.port()));
        ed.push_via(via);
        if let Some(name) = flow_header {
            ed.prepend_header(name, flow_uri);
        }
        ed.set_max_forwards(max_forwards - 1);
        let mut out = BytesMut::with_capacity(msg.bytes().len() + 256);
        ed.write(&mut out);
        drop(scratch);
        self.pool.send(self, out.freeze());
    }

    /// OPTIONS addressed to the edge itself (no user part): a client's keep-alive or capability probe.
    fn is_keepalive_options(&self, msg: &Message) -> bool {
        msg.request_uri().and_then(|r| sip::Uri::parse(r).ok()).is_some_and(|u| u.user.is_none() && self.is_myself(&u))
    }

    /// The pool's response to a user's request; `back` is the user's connection, from our Via branch.
    pub(super) fn response_to_user(self: &Rc<Self>, back: ConnId, msg: Message) {
        if usize::from(back.core) != self.id {
            // The flow's bookkeeping lives on its own core.
            let bytes = msg.bytes().clone();
            self.to_core(usize::from(back.core), super::EdgeMsg::Response { bytes });
            return;
        }
        let status = msg.status().unwrap_or(0);
        if status == 403 {
            self.auth_failed(back);
        }
        if status >= 200 {
            let mut flows = self.flows.borrow_mut();
            let flow = flows.get_mut(back);
            flow.in_flight = flow.in_flight.saturating_sub(1);
            if (200..300).contains(&status) && msg.cseq().method == Method::Register {
                let bound = msg.values(HeaderName::Contact).next().is_some();
                flows.registered(back, aor_of(&msg.to().uri), bound);
            }
        }
        bump(&self.estats.responses_routed);
        // A dialog's route set must not show internal hops: the user sees one Record-Route, ours, at our public
        // address, carrying the same flow token.
        let public_rr = if msg.header(HeaderName::RecordRoute).is_some() {
            let mut rr = Vec::with_capacity(96);
            self.write_flow_uri(&mut rr, back, &self.s.listen_text);
            Some(rr)
        } else {
            None
        };
        let mut ed = Editor::new(&msg);
        ed.pop_via();
        if let Some(rr) = &public_rr {
            ed.remove_headers(HeaderName::RecordRoute);
            ed.append_header(HeaderName::RecordRoute, rr);
        }
        let mut out = BytesMut::with_capacity(msg.bytes().len());
        ed.write(&mut out);
        self.deliver(back, out.freeze());
    }

    /// The registrar refused this flow's credentials: count it against the address (lockout, fail2ban-like).
    fn auth_failed(self: &Rc<Self>, flow: ConnId) {
        let Some(ip) = self.table.borrow().get(flow).map(|c| c.peer.ip()) else { return };
        bump(&self.estats.auth_failures);
        let verdict = self.guard.borrow_mut().auth_failed(ip, std::time::Instant::now());
        if let guard::Verdict::Ban(reason) = verdict {
            self.ban(ip, reason);
        }
    }

    /// `<sip:<flow token>@<host:port>;transport=tls;lr>`
    pub(super) fn write_flow_uri(&self, out: &mut Vec<u8>, flow: ConnId, hostport: &str) {
        out.extend_from_slice(b"<sip:");
        token::write_flow(&self.s.key, out, flow);
        out.push(b'@');
        out.extend_from_slice(hostport.as_bytes());
        out.extend_from_slice(b";transport=tls;lr>");
    }
}
