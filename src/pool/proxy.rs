//! Delivering a request to every registered device of its target (RFC 3261 §16, RFC 3428): one branch per
//! binding, sent to the edge named by the binding's Path; the first 2xx goes back to the sender at once, and when
//! every branch has failed (or the transaction times out) the best failure does.

use std::collections::HashMap;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::{aor_of, Action, PoolCore};
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::sip::{Editor, HeaderName, Message, NameAddr, Uri};

const BRANCH_PREFIX: &[u8] = b"z9hG4bKp";

/// One forked request.
struct Txn {
    origin: ConnId,
    /// The request as the pool received it, to answer it ourselves when no branch gives a usable answer.
    request: Bytes,
    outstanding: usize,
    /// A 2xx has been sent back: later answers are absorbed.
    done: bool,
    best: Option<(u16, Bytes)>,
    deadline: Instant,
}

/// The transactions forked by one core, bounded.
pub struct Transactions {
    map: HashMap<u32, Txn>,
    next: u32,
    max: usize,
}

impl Transactions {
    pub fn new(max: usize) -> Transactions {
        Transactions { map: HashMap::new(), next: 0, max }
    }
    fn insert(&mut self, t: Txn) -> Option<u32> {
        if self.map.len() >= self.max {
            return None;
        }
        loop {
            self.next = self.next.wrapping_add(1);
            if !self.map.contains_key(&self.next) {
                break;
            }
        }
        self.map.insert(self.next, t);
        Some(self.next)
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn write_branch(out: &mut Vec<u8>, core: usize, txn: u32, fork: usize) {
    out.extend_from_slice(BRANCH_PREFIX);
    out.extend_from_slice(format!("{:04x}{:08x}{:02x}", core as u16, txn, fork as u8).as_bytes());
}

fn parse_branch(b: &[u8]) -> Option<(usize, u32)> {
    let rest = std::str::from_utf8(b.strip_prefix(BRANCH_PREFIX)?).ok()?;
    let core = u16::from_str_radix(rest.get(0..4)?, 16).ok()?;
    let txn = u32::from_str_radix(rest.get(4..12)?, 16).ok()?;
    Some((usize::from(core), txn))
}

/// RFC 3261 §16.7 step 6, simplified: a 6xx beats everything, else the lowest class wins.
fn rank(code: u16) -> u16 {
    if code >= 600 {
        0
    } else {
        code / 100
    }
}

impl PoolCore {
    /// On the core owning the target: look up its bindings and fork.
    pub(crate) fn route(&mut self, origin: ConnId, msg: Message) {
        let Some(ruri) = msg.request_uri().and_then(|r| Uri::parse(r).ok()) else {
            self.reply(origin, &msg, 416, "Unsupported URI Scheme", &[]);
            return;
        };
        if !self.is_local_host(&ruri) {
            self.route_foreign(origin, msg);
            return;
        }
        if self.dir.view.users.get(&ruri.user_unescaped()).is_none() {
            bump(&self.pstats.messages_unknown_user);
            self.reply(origin, &msg, 404, "Not Found", &[]);
            return;
        }
        let bindings = self.registrar.lookup(&aor_of(&ruri), self.now.secs);
        if bindings.is_empty() {
            bump(&self.pstats.messages_offline);
            self.reply(origin, &msg, 480, "Temporarily Unavailable", &[]);
            return;
        }
        let Some(id) = self.open_transaction(origin, &msg, 0) else { return };
        let max_forwards = msg.max_forwards().unwrap_or(70).saturating_sub(1);
        let mut sent = 0;
        for (fork, b) in bindings.iter().enumerate() {
            let Some(edge) = b.path.first().and_then(|p| self.edge_for(p)) else {
                tracing::debug!(contact = %b.contact, "binding without a known edge in its Path: skipped");
                continue;
            };
            let route = b.path.join(", ");
            let mut via = Vec::with_capacity(96);
            via.extend_from_slice(b"SIP/2.0/TLS ");
            via.extend_from_slice(self.s.listen.to_string().as_bytes());
            via.extend_from_slice(b";branch=");
            write_branch(&mut via, self.id, id, fork);
            let mut ed = Editor::new(&msg);
            ed.set_request_uri(b.contact.as_bytes());
            ed.remove_headers(HeaderName::Route);
            ed.remove_headers(HeaderName::ProxyAuthorization);
            ed.prepend_header(HeaderName::Route, route.as_bytes());
            ed.push_via(&via);
            ed.set_max_forwards(max_forwards);
            let mut out = BytesMut::with_capacity(msg.bytes().len() + 256);
            // Six edits: cannot overflow.
            if ed.write(&mut out).is_err() {
                continue;
            }
            self.push(Action::ToEdge { addr: edge, bytes: out.freeze() });
            sent += 1;
        }
        if sent == 0 {
            self.txns.map.remove(&id);
            self.reply(origin, &msg, 480, "Temporarily Unavailable", &[]);
            return;
        }
        bump(&self.pstats.messages_forked);
        if self.is_local_host(&msg.from().uri) {
            bump(&self.pstats.messages_internal);
            self.note_talker(&msg);
        }
        if let Some(t) = self.txns.map.get_mut(&id) {
            t.outstanding += sent;
        }
    }

    /// A transaction for a request we send on, with `outstanding` branches so far; None (after a 503) when the
    /// table is full.
    fn open_transaction(&mut self, origin: ConnId, msg: &Message, outstanding: usize) -> Option<u32> {
        let txn = Txn {
            origin,
            request: msg.bytes().clone(),
            outstanding,
            done: false,
            best: None,
            deadline: self.now.mono + self.s.transaction_timeout,
        };
        let id = self.txns.insert(txn);
        if id.is_none() {
            let retry: &[(HeaderName, &[u8])] = &[(HeaderName::RetryAfter, b"5")];
            self.reply(origin, msg, 503, "Service Unavailable: too many transactions", retry);
        }
        id
    }

    /// A request of ours for a foreign domain: to the first edge, whose federation routes it (never relayed for a
    /// federated peer).
    /// Our user's MESSAGE, for the report's top talkers (see [`crate::mgmt::talkers`]).
    fn note_talker(&self, msg: &Message) {
        if msg.method_bytes() == Some(&b"MESSAGE"[..]) {
            crate::mgmt::talkers::note(self.id, &aor_of(&msg.from().uri));
        }
    }

    pub(crate) fn route_foreign(&mut self, origin: ConnId, msg: Message) {
        let edge = self.s.edges.first().copied();
        let Some(addr) = edge.filter(|_| msg.header(HeaderName::ParapetFederated).is_none()) else {
            self.reply(origin, &msg, 404, "Not Found: domain not served here", &[]);
            return;
        };
        let Some(id) = self.open_transaction(origin, &msg, 1) else { return };
        bump(&self.pstats.federated_out);
        self.note_talker(&msg);
        self.through_edge(addr, id, &msg, &format!("<sip:fed@{addr};lr>"));
    }

    /// A request for a local user another front end of the enterprise pool holds (a help desk's MESSAGE to its
    /// member, `helpdesk::watch`): to the first edge, which sends it to the user's owner.
    pub(crate) fn route_to_member(&mut self, origin: ConnId, msg: Message) {
        let Some(addr) = self.s.edges.first().copied() else {
            self.reply(origin, &msg, 480, "Temporarily Unavailable", &[]);
            return;
        };
        let Some(id) = self.open_transaction(origin, &msg, 1) else { return };
        let user = std::str::from_utf8(crate::proto::MEMBER_ROUTE_USER).unwrap_or("member");
        self.through_edge(addr, id, &msg, &format!("<sip:{user}@{addr};lr>"));
    }

    /// Branch 0 of transaction `id`: `msg` to the edge `addr` with our Via and the single Route `route`.
    fn through_edge(&mut self, addr: std::net::SocketAddr, id: u32, msg: &Message, route: &str) {
        let mut via = Vec::with_capacity(96);
        via.extend_from_slice(b"SIP/2.0/TLS ");
        via.extend_from_slice(self.s.listen.to_string().as_bytes());
        via.extend_from_slice(b";branch=");
        write_branch(&mut via, self.id, id, 0);
        let mut ed = Editor::new(msg);
        ed.remove_headers(HeaderName::Route);
        ed.remove_headers(HeaderName::ProxyAuthorization);
        ed.prepend_header(HeaderName::Route, route.as_bytes());
        ed.push_via(&via);
        ed.set_max_forwards(msg.max_forwards().unwrap_or(70).saturating_sub(1));
        let mut out = BytesMut::with_capacity(msg.bytes().len() + 256);
        // Five edits: cannot overflow.
        if ed.write(&mut out).is_ok() {
            self.push(Action::ToEdge { addr, bytes: out.freeze() });
        }
    }

    /// The edge a Path entry names (only configured edges: a forged Path reaches nobody).
    pub(crate) fn edge_for(&self, path: &str) -> Option<std::net::SocketAddr> {
        let na = NameAddr::parse(path.as_bytes()).ok()?;
        let host = std::str::from_utf8(na.uri.host).ok()?.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = host.parse().ok()?;
        let addr = std::net::SocketAddr::new(ip, na.uri.port.unwrap_or(5061));
        self.s.edges.contains(&addr).then_some(addr)
    }

    /// A response to one of our branches (from an edge, or made up for an undeliverable branch).
    pub(crate) fn on_response(&mut self, msg: Message) {
        let Some(status) = msg.status() else { return };
        if msg
            .top_via()
            .and_then(|v| v.branch())
            .is_some_and(|b| b.starts_with(super::presence::backend::BRANCH_PREFIX))
        {
            // To one of our own back-end SUBSCRIBEs, sent by the list's core: answered there.
            if status >= 200 {
                self.backend_response(&msg);
            }
            return;
        }
        let Some((core, id)) = msg.top_via().and_then(|v| v.branch()).and_then(parse_branch) else {
            bump(&self.pstats.responses_unmatched);
            return;
        };
        if core != self.id || status < 200 {
            return;
        }
        let Some(t) = self.txns.map.get_mut(&id) else {
            bump(&self.pstats.responses_unmatched);
            return;
        };
        let mut forward = None;
        if status < 300 {
            if !t.done {
                t.done = true;
                forward = Some((t.origin, msg.bytes().clone()));
            }
        } else if t.best.as_ref().is_none_or(|(c, _)| rank(status) < rank(*c)) {
            t.best = Some((status, msg.bytes().clone()));
        }
        t.outstanding = t.outstanding.saturating_sub(1);
        let finished = if t.outstanding == 0 { self.txns.map.remove(&id) } else { None };
        if let Some((origin, bytes)) = forward {
            bump(&self.pstats.messages_delivered);
            self.forward_response(origin, bytes);
        }
        if let Some(t) = finished {
            if !t.done {
                self.answer_failed(t);
            }
        }
    }

    pub(crate) fn forward_response(&mut self, origin: ConnId, bytes: Bytes) {
        let Ok(resp) = Message::parse(bytes, &self.s.limits) else { return };
        let mut ed = Editor::new(&resp);
        ed.pop_via();
        let mut out = BytesMut::with_capacity(resp.bytes().len());
        if ed.write(&mut out).is_ok() {
            self.deliver(origin, out.freeze());
        }
    }

    /// Every branch failed: pass on the best answer; a dead flow or an unreachable edge reads as "offline".
    fn answer_failed(&mut self, t: Txn) {
        match t.best {
            Some((code, bytes)) if !matches!(code, 408 | 430 | 503) => self.forward_response(t.origin, bytes),
            Some(_) => self.answer_from_request(&t, 480, "Temporarily Unavailable"),
            None => self.answer_from_request(&t, 408, "Request Timeout"),
        }
    }

    fn answer_from_request(&mut self, t: &Txn, code: u16, reason: &str) {
        if let Ok(req) = Message::parse(t.request.clone(), &self.s.limits) {
            self.reply(t.origin, &req, code, reason, &[]);
        }
    }

    pub(crate) fn expire_transactions(&mut self) {
        let now = self.now.mono;
        let expired: Vec<u32> = self.txns.map.iter().filter(|(_, t)| t.deadline <= now).map(|(k, _)| *k).collect();
        for id in expired {
            let t = self.txns.map.remove(&id);
            if let Some(t) = t {
                bump(&self.pstats.transactions_timed_out);
                if !t.done {
                    self.answer_failed(t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_round_trip() {
        let mut b = Vec::new();
        write_branch(&mut b, 3, 0xdead_beef, 2);
        assert_eq!(parse_branch(&b), Some((3, 0xdead_beef)));
        assert_eq!(parse_branch(b"z9hG4bKzzz"), None);
    }

    #[test]
    fn best_response_ranking() {
        assert!(rank(603) < rank(404));
        assert!(rank(404) < rank(503));
    }
}
