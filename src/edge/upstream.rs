//! Requests from remote users toward the pool, and the pool's responses back to them.
//!
//! The gate: until the pool has accepted a REGISTER on a flow, only REGISTER (and OPTIONS to the edge itself)
//! pass; after it, a request must come From an identity the flow registered or proved, or else goes to the pool
//! marked for its From to be proven (`proto`: identity per request). Everything refused here never reaches the
//! pool.

use std::time::Instant;

use bytes::BytesMut;

use super::core::{is_myself, Action, ConnInfo, EdgeCore};
use super::policy::{self, Decision, Refusal};
use super::{guard, token};
use crate::net::conn::bump;
use crate::net::ratelog::RateLog;
use crate::net::ConnId;
use crate::proto::{self, aor_of, Failure};
use crate::sip::{self, Editor, HeaderName, Message, Method};

// The names say which way a message goes (from a user, to a flow), not a conversion of the core.
#[allow(clippy::wrong_self_convention)]
impl EdgeCore {
    /// A remote user's request: checked, then on to the pool with our Via (and for REGISTER a Path naming this flow).
    pub(super) fn from_user(&mut self, conn: &ConnInfo<'_>, msg: &Message, now: Instant) {
        bump(&self.estats.requests_from_users);
        let verdict = match self.flows.get_mut_registered(conn.id) {
            Some(flow) => {
                let bucket = flow.bucket.get_or_insert_with(|| self.guard.user_bucket(now));
                self.guard.admit_user_message(conn.peer.ip(), bucket, now)
            }
            None => self.guard.admit_message(conn.peer.ip(), now),
        };
        match verdict {
            guard::Verdict::Allow => {}
            guard::Verdict::Refuse => {
                bump(&self.estats.rate_limited);
                let extra: &[(HeaderName, &[u8])] = &[(HeaderName::RetryAfter, b"10")];
                self.out.respond(conn.id, msg, 503, "Service Unavailable: rate limit", extra);
                return;
            }
            guard::Verdict::Ban(reason) => {
                bump(&self.estats.rate_limited);
                self.ban(conn.peer.ip(), reason, now);
                return;
            }
        }
        let decision = {
            let s = &*self.s;
            let is_myself = |u: &sip::Uri<'_>| is_myself(s, u);
            let ctx = policy::Ctx {
                flow: self.flows.get(conn.id),
                draining: self.draining,
                in_flight_max: s.flow_in_flight_max,
                is_myself: &is_myself,
            };
            policy::decide(msg, &ctx)
        };
        match decision {
            Decision::Forward => {}
            Decision::Prove => bump(&self.estats.identities_to_prove),
            Decision::KeepAlive => {
                let allow: &[u8] = b"REGISTER, MESSAGE, OPTIONS, SUBSCRIBE, NOTIFY, PUBLISH";
                self.out.respond(conn.id, msg, 200, "OK", &[(HeaderName::Allow, allow)]);
                return;
            }
            Decision::Refuse { code, reason, why } => {
                let (counter, cause) = match why {
                    Refusal::Draining => (&self.estats.draining_refused, 0),
                    Refusal::InternalEvent => (&self.estats.tokens_refused, 1),
                    Refusal::Unauthenticated => (&self.estats.unauthenticated_refused, 2),
                    Refusal::SpoofedFrom => (&self.estats.spoofed_from_refused, 3),
                    Refusal::TooManyHops => (&self.estats.too_many_hops, 4),
                    Refusal::Busy => (&self.estats.flow_busy, 5),
                };
                bump(counter);
                // At most a few lines a second per cause (a flood must not become a flood of log lines).
                static REFUSED_LOG: [RateLog; 6] = [const { RateLog::new() }; 6];
                if let Some(held_back) = REFUSED_LOG.get(cause).and_then(RateLog::allow) {
                    tracing::info!(peer = %conn.peer, ?why, held_back, "request refused at the edge");
                }
                let retry: &[(HeaderName, &[u8])] = &[(HeaderName::RetryAfter, b"5")];
                let extra = if code == 503 { retry } else { &[] };
                self.out.respond(conn.id, msg, code, reason, extra);
                return;
            }
        }
        // The flow exists from its connection's first request on, until the connection closes.
        let flow = self.flows.open(conn.id, conn.peer.ip());
        if msg.method() != Some(&Method::Ack) {
            flow.in_flight += 1;
        }
        let mut out = BytesMut::new();
        {
            let s = &*self.s;
            let hop = policy::Hop {
                internal: &s.internal_text,
                key: &s.key,
                conn: conn.id,
                peer: conn.peer,
                prove: decision == Decision::Prove,
                remote: !crate::config::networks::any_contains(&s.internal_networks, conn.peer.ip()),
            };
            let is_myself = |u: &sip::Uri<'_>| is_myself(s, u);
            // Seventeen edits at most (four Routes of ours popped, seven internal headers removed): cannot overflow.
            if policy::rewrite_for_pool(msg, &hop, &is_myself, &mut self.scratch, &mut out).is_err() {
                if let Some(f) = self.flows.get_mut_registered(conn.id) {
                    f.in_flight = f.in_flight.saturating_sub(1);
                }
                self.out.reply(conn.id, msg, 500, "Server Internal Error: too many edits");
                return;
            }
        }
        if let Some(member) = self.send_to_pool(&self.pool_routing_aor(msg), out.freeze(), now) {
            self.track_member_txn(conn.id, msg, member, now);
        }
    }

    /// The pool's response to a user's request; `back` is the user's connection, from our Via branch.
    pub(super) fn response_to_user(&mut self, back: ConnId, msg: Message, now: Instant) {
        if usize::from(back.core) != self.id {
            // The flow's bookkeeping lives on its own core.
            let bytes = msg.bytes().clone();
            self.out.push(Action::Mesh { core: usize::from(back.core), msg: super::EdgeMsg::Response { bytes } });
            return;
        }
        if self.partner_conns.contains(&back) {
            self.response_to_partner(back, &msg, now);
            return;
        }
        if self.is_member_sender(back) {
            self.response_to_member(back, &msg);
            return;
        }
        if let Some(aor) = proto::identity_proven(&msg) {
            // The pool authenticated a request of this flow From another identity: the flow speaks for it now.
            // The notice is for us alone (a 100 goes no further than one hop).
            if self.flows.proven(back, aor) {
                bump(&self.estats.identities_proven);
            }
            return;
        }
        if !self.member_answer_passes(back, &msg) {
            return;
        }
        let status = msg.status().unwrap_or(0);
        // Only failed credentials count toward the lockout (not, say, a registrar limit or a policy refusal).
        if Failure::of(&msg) == Some(Failure::Credentials) {
            self.auth_failed(back, now);
        }
        if status >= 200 {
            // No flow (its connection closed meanwhile): nothing to count, and nothing is made for it.
            if let Some(flow) = self.flows.get_mut(back) {
                flow.in_flight = flow.in_flight.saturating_sub(1);
                if (200..300).contains(&status) && msg.cseq().method == Method::Register {
                    let bound = msg.values(HeaderName::Contact).next().is_some();
                    self.flows.registered(back, aor_of(&msg.to().uri), bound);
                }
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
        // At most three edits: cannot overflow.
        if ed.write(&mut out).is_ok() {
            self.out.send(back, out.freeze());
        }
    }

    /// The registrar refused this flow's credentials: count it against the address (lockout, fail2ban-like).
    fn auth_failed(&mut self, flow: ConnId, now: Instant) {
        let Some(ip) = self.flows.get(flow).map(|f| f.ip) else { return };
        bump(&self.estats.auth_failures);
        let verdict = self.guard.auth_failed(ip, now);
        if let guard::Verdict::Ban(reason) = verdict {
            self.ban(ip, reason, now);
        }
    }
}
