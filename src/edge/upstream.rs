//! Requests from remote users toward the pool, and the pool's responses back to them.
//!
//! The gate: until the pool has accepted a REGISTER on a flow, only REGISTER (and OPTIONS to the edge itself)
//! pass; after it, a request must come From an identity the flow registered or proved, or else goes to the pool
//! marked for its From to be proven (`proto`: identity per request). Everything refused here never reaches the
//! pool.

use std::rc::Rc;

use bytes::BytesMut;

use super::policy::{self, Decision, Refusal};
use super::{guard, token, Edge};
use crate::net::conn::bump;
use crate::net::{Conn, ConnId};
use crate::proto::{self, aor_of, Failure};
use crate::sip::{self, Editor, HeaderName, Message, Method};

impl Edge {
    /// A remote user's request: checked, then on to the pool with our Via (and for REGISTER a Path naming this flow).
    pub(super) fn from_user(self: &Rc<Self>, conn: &Rc<Conn>, msg: &Message) {
        bump(&self.estats.requests_from_users);
        let now = std::time::Instant::now();
        let verdict = {
            let mut flows = self.flows.borrow_mut();
            let mut guard = self.guard.borrow_mut();
            match flows.get_mut_registered(conn.id) {
                Some(flow) => {
                    let bucket = flow.bucket.get_or_insert_with(|| guard.user_bucket(now));
                    guard.admit_user_message(conn.peer.ip(), bucket, now)
                }
                None => guard.admit_message(conn.peer.ip(), now),
            }
        };
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
        let decision = {
            let flows = self.flows.borrow();
            let is_myself = |u: &sip::Uri<'_>| self.is_myself(u);
            let ctx = policy::Ctx {
                flow: flows.get(conn.id),
                draining: crate::shard::draining(),
                in_flight_max: self.s.flow_in_flight_max,
                is_myself: &is_myself,
            };
            policy::decide(msg, &ctx)
        };
        match decision {
            Decision::Forward => {}
            Decision::Prove => bump(&self.estats.identities_to_prove),
            Decision::KeepAlive => {
                let allow: &[u8] = b"REGISTER, MESSAGE, OPTIONS, SUBSCRIBE, NOTIFY, PUBLISH";
                let mut out = BytesMut::with_capacity(512);
                sip::write_response(&mut out, msg, 200, "OK", Some(b"edge"), &[(HeaderName::Allow, allow)], None);
                self.deliver(conn.id, out.freeze());
                return;
            }
            Decision::Refuse { code, reason, why } => {
                let counter = match why {
                    Refusal::Draining => &self.estats.draining_refused,
                    Refusal::InternalEvent => &self.estats.tokens_refused,
                    Refusal::Unauthenticated => &self.estats.unauthenticated_refused,
                    Refusal::SpoofedFrom => &self.estats.spoofed_from_refused,
                    Refusal::TooManyHops => &self.estats.too_many_hops,
                    Refusal::Busy => &self.estats.flow_busy,
                };
                bump(counter);
                tracing::info!(peer = %conn.peer, ?why, "request refused at the edge");
                let retry: &[(HeaderName, &[u8])] = &[(HeaderName::RetryAfter, b"5")];
                let extra = if code == 503 { retry } else { &[] };
                let mut out = BytesMut::with_capacity(512);
                sip::write_response(&mut out, msg, code, reason, Some(b"edge"), extra, None);
                self.deliver(conn.id, out.freeze());
                return;
            }
        }
        if msg.method() != Some(&Method::Ack) {
            self.flows.borrow_mut().get_mut(conn.id).in_flight += 1;
        }
        let mut out = BytesMut::new();
        {
            let mut scratch = self.scratch.borrow_mut();
            let hop = policy::Hop {
                internal: &self.s.internal_text,
                key: &self.s.key,
                conn: conn.id,
                peer: conn.peer,
                prove: decision == Decision::Prove,
            };
            let is_myself = |u: &sip::Uri<'_>| self.is_myself(u);
            policy::rewrite_for_pool(msg, &hop, &is_myself, &mut scratch, &mut out);
        }
        self.pool.send(self, out.freeze());
    }

    /// The pool's response to a user's request; `back` is the user's connection, from our Via branch.
    pub(super) fn response_to_user(self: &Rc<Self>, back: ConnId, msg: Message) {
        if usize::from(back.core) != self.id {
            // The flow's bookkeeping lives on its own core.
            let bytes = msg.bytes().clone();
            self.to_core(usize::from(back.core), super::EdgeMsg::Response { bytes });
            return;
        }
        if self.table.borrow().get(back).is_some_and(|c| c.kind == crate::net::ConnKind::Partner) {
            self.response_to_partner(back, &msg);
            return;
        }
        if let Some(aor) = proto::identity_proven(&msg) {
            // The pool authenticated a request of this flow From another identity: the flow speaks for it now.
            // The notice is for us alone (a 100 goes no further than one hop).
            if self.flows.borrow_mut().proven(back, aor) {
                bump(&self.estats.identities_proven);
            }
            return;
        }
        let status = msg.status().unwrap_or(0);
        // Only failed credentials count toward the lockout (not, say, a registrar limit or a policy refusal).
        if Failure::of(&msg) == Some(Failure::Credentials) {
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
            token::write_flow_uri(&self.s.key, &mut rr, back, &self.s.listen_text);
            Some(rr)
        } else {
            None
        };
        let mut ed = Editor::new(&msg);
        ed.pop_via();
        crate::proto::strip_internal(&msg, &mut ed);
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
}
