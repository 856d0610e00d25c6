//! Requests from the pool toward remote users, and the users' responses back.
//!
//! Topology hiding: every Via, Route and Record-Route of the internal hops is removed before the request leaves,
//! and our single Via names a transaction kept on the flow's core ([`DownTxns`]): the saved Vias are put back when
//! the user's response arrives. The branch carries a MAC, so a user cannot make us route a response elsewhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::core::{Action, EdgeCore};
use super::{token, EdgeMsg};
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::sip::{Editor, HeaderName, Message, NameAddr};

/// A request sent to a user, waiting for its final response.
struct DownTxn {
    /// The connection (to the pool) the response goes back on.
    back: ConnId,
    /// The Via values we removed, in order, joined as one header value.
    vias: Bytes,
    deadline: Instant,
}

/// Transactions toward the users of one core, bounded.
pub struct DownTxns {
    map: HashMap<u64, DownTxn>,
    core: u64,
    next: u64,
    max: usize,
}

impl DownTxns {
    pub fn new(core: usize, max: usize) -> DownTxns {
        DownTxns { map: HashMap::new(), core: core as u64, next: 0, max }
    }

    fn insert(&mut self, t: DownTxn) -> Option<u64> {
        if self.map.len() >= self.max {
            return None;
        }
        // The top 16 bits name the core, so any core can tell where a response's state lives.
        self.next = (self.next + 1) & 0x0000_ffff_ffff_ffff;
        let id = (self.core << 48) | self.next;
        self.map.insert(id, t);
        Some(id)
    }

    /// Drops transactions past their deadline; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.map.len();
        self.map.retain(|_, t| t.deadline > now);
        before - self.map.len()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

// The names say which way a message goes (from a user, to a flow), not a conversion of the core.
#[allow(clippy::wrong_self_convention)]
impl EdgeCore {
    /// A request from the pool: the first Route carries the flow token we put in Path.
    pub(super) fn to_user(&mut self, from: ConnId, msg: Message, now: Instant) {
        bump(&self.estats.requests_to_users);
        let route = msg.values(HeaderName::Route).next().and_then(|r| NameAddr::parse(r).ok());
        if route.as_ref().and_then(|na| na.uri.user) == Some(super::federation::FED_ROUTE_USER) {
            self.to_partner(from, msg, now);
            return;
        }
        if route.as_ref().and_then(|na| na.uri.user) == Some(crate::proto::MEMBER_ROUTE_USER) {
            self.to_member(from, msg, now);
            return;
        }
        let flow = route.and_then(|na| na.uri.user.and_then(|u| token::parse_flow(&self.s.key, u)));
        let Some(flow) = flow else {
            bump(&self.estats.tokens_refused);
            self.out.reply(from, &msg, 404, "Not Found: no valid flow token");
            return;
        };
        self.to_flow(from, flow, msg, now);
    }

    /// A request for the user on `flow` (from the pool, or in a federated dialog from a partner on `from`).
    pub(super) fn to_flow(&mut self, from: ConnId, flow: ConnId, msg: Message, now: Instant) {
        if usize::from(flow.core) != self.id {
            self.out.push(Action::MeshToFlow { core: usize::from(flow.core), from, flow, req: msg });
            return;
        }
        self.to_local_user(from, flow, msg, now);
    }

    /// On the flow's core: hide the internal hops, remember them, write to the user.
    pub(super) fn to_local_user(&mut self, from: ConnId, flow: ConnId, msg: Message, now: Instant) {
        // A flow token names a connection that sent us a request; its flow lives exactly as long as it does.
        if self.flows.get(flow).is_none() {
            bump(&self.estats.flows_failed);
            // RFC 5626 §5.3: the flow this request was bound to is gone.
            self.out.reply(from, &msg, 430, "Flow Failed");
            return;
        }
        let s = Arc::clone(&self.s);
        let Some((txn, bytes)) = self.hide_internal_hops(from, &msg, &s.listen_text, &[], now) else { return };
        self.out.push(Action::ToFlow { flow, bytes, txn, from, req: msg });
    }

    /// The shell could not queue [`Action::ToFlow`]: the transaction goes, and the pool learns the flow failed.
    pub fn flow_write_failed(&mut self, txn: u64, from: ConnId, req: &Message) {
        self.down.map.remove(&txn);
        bump(&self.estats.flows_failed);
        self.out.reply(from, req, 430, "Flow Failed");
    }

    /// A request leaving the edge (toward a user or a partner) with its internal hops hidden: its Vias wait in a
    /// transaction on this core, named by the MAC'd branch of the single Via it carries out (at `via_host`), and
    /// Route, Record-Route, Path, Proxy-Authorization and our internal marks are gone. None when it was answered
    /// here instead (483, or 503 when the transaction table is full). `add` are lines put back after the removal
    /// (a federated dialog's Routes beyond us, our public Record-Route).
    pub(super) fn hide_internal_hops(
        &mut self,
        from: ConnId,
        msg: &Message,
        via_host: &str,
        add: &[(HeaderName, &[u8])],
        now: Instant,
    ) -> Option<(u64, Bytes)> {
        let max_forwards = msg.max_forwards().unwrap_or(70);
        if max_forwards == 0 {
            self.out.reply(from, msg, 483, "Too Many Hops");
            return None;
        }
        let mut vias = BytesMut::with_capacity(256);
        for v in msg.values(HeaderName::Via) {
            if !vias.is_empty() {
                vias.extend_from_slice(b", ");
            }
            vias.extend_from_slice(v);
        }
        let txn = DownTxn { back: from, vias: vias.freeze(), deadline: now + self.s.downstream_timeout };
        let Some(id) = self.down.insert(txn) else {
            self.out.reply(from, msg, 503, "Service Unavailable: too many transactions in progress");
            return None;
        };
        let mut via = Vec::with_capacity(96);
        via.extend_from_slice(b"SIP/2.0/TLS ");
        via.extend_from_slice(via_host.as_bytes());
        via.extend_from_slice(b";branch=");
        token::write_down_branch(&self.s.key, &mut via, id);
        let mut ed = Editor::new(msg);
        for name in [
            HeaderName::Via,
            HeaderName::Route,
            HeaderName::RecordRoute,
            HeaderName::Path,
            HeaderName::ProxyAuthorization,
            HeaderName::ParapetFederated,
        ] {
            ed.remove_headers(name);
        }
        // Our own mark on a user's request (P-Parapet-Bind) rides on through the pool: it stays inside. (Users'
        // internal headers were removed on the way in; one edit at most here, the editor's edits are bounded.)
        if msg.header(HeaderName::ParapetBind).is_some() {
            ed.remove_headers(HeaderName::ParapetBind);
        }
        // A member's mark never rides on a request the pool forwards (it serves those itself); should one, it
        // stays inside too.
        if msg.header(HeaderName::ParapetMember).is_some() {
            ed.remove_headers(HeaderName::ParapetMember);
        }
        // Whether the sender is a remote user is ours to know, not the recipient's.
        if msg.header(HeaderName::ParapetRemote).is_some() {
            ed.remove_headers(HeaderName::ParapetRemote);
        }
        // One line per header name, whatever the number of values: a peer's route set cannot multiply our edits.
        let joined = join_by_name(add);
        for (name, value) in &joined {
            ed.append_header(*name, value);
        }
        ed.push_via(&via);
        ed.set_max_forwards(max_forwards - 1);
        let mut out = BytesMut::with_capacity(msg.bytes().len());
        if ed.write(&mut out).is_err() {
            self.down.map.remove(&id);
            self.out.reply(from, msg, 500, "Server Internal Error: too many edits");
            return None;
        }
        Some((id, out.freeze()))
    }

    /// A user's response to a request we sent it: restore the internal Vias and return it to the pool.
    pub(super) fn response_from_user(&mut self, msg: Message) {
        let branch = msg.top_via().and_then(|v| v.branch()).unwrap_or(b"");
        let Some(id) = token::parse_down_branch(&self.s.key, branch) else {
            bump(&self.estats.tokens_refused);
            return;
        };
        let core = (id >> 48) as usize;
        if core != self.id {
            let bytes = msg.bytes().clone();
            self.out.push(Action::Mesh { core, msg: EdgeMsg::Response { bytes } });
            return;
        }
        let final_response = msg.status().unwrap_or(0) >= 200;
        let found =
            if final_response { self.down.map.remove(&id) } else { self.down.map.get(&id).map(|t| t.clone_ref()) };
        let Some(DownTxn { back, vias, .. }) = found else {
            bump(&self.estats.responses_unroutable);
            return;
        };
        bump(&self.estats.responses_routed);
        let mut ed = Editor::new(&msg);
        ed.pop_via();
        ed.push_via(&vias);
        // Only the pool may mark a response for the edge: a user's or partner's mark would come back to us as
        // the pool's. (Internal headers of any kind stay inside.)
        crate::proto::strip_internal(&msg, &mut ed);
        let mut out = BytesMut::with_capacity(msg.bytes().len() + vias.len());
        // Two edits: cannot overflow.
        if ed.write(&mut out).is_ok() {
            self.out.send(back, out.freeze());
        }
    }
}

/// `lines` with the values of each header name joined into one line (order kept within a name), so that the edits
/// they cost do not grow with what a peer sent.
pub(super) fn join_by_name(lines: &[(HeaderName, &[u8])]) -> Vec<(HeaderName, Vec<u8>)> {
    let mut joined: Vec<(HeaderName, Vec<u8>)> = Vec::new();
    for (name, value) in lines {
        match joined.iter_mut().find(|(n, _)| n == name) {
            Some((_, line)) => {
                line.extend_from_slice(b", ");
                line.extend_from_slice(value);
            }
            None => joined.push((*name, value.to_vec())),
        }
    }
    joined
}

impl DownTxn {
    fn clone_ref(&self) -> DownTxn {
        DownTxn { back: self.back, vias: self.vias.clone(), deadline: self.deadline }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_one_name_share_a_line() {
        let lines: &[(HeaderName, &[u8])] = &[
            (HeaderName::Route, b"<sip:a;lr>"),
            (HeaderName::RecordRoute, b"<sip:x;lr>"),
            (HeaderName::Route, b"<sip:b;lr>"),
        ];
        let joined = join_by_name(lines);
        assert_eq!(joined.len(), 2);
        assert_eq!(joined[0], (HeaderName::Route, b"<sip:a;lr>, <sip:b;lr>".to_vec()));
        assert_eq!(joined[1], (HeaderName::RecordRoute, b"<sip:x;lr>".to_vec()));
    }

    #[test]
    fn bounded_and_expiring() {
        let mut d = DownTxns::new(3, 2);
        let t = || DownTxn { back: ConnId { core: 0, gen: 0, slot: 1 }, vias: Bytes::new(), deadline: Instant::now() };
        let a = d.insert(t()).unwrap_or(0);
        assert_eq!(a >> 48, 3);
        assert!(d.insert(t()).is_some());
        assert!(d.insert(t()).is_none(), "capacity holds");
        assert_eq!(d.expire(Instant::now() + std::time::Duration::from_secs(1)), 2);
        assert!(d.is_empty());
    }
}
