//! Requests between the members of an enterprise pool, through the edge: a member that needs a user another
//! member owns (a contact list watching a contact of our own domain, `pool::presence::backend`) sends its request
//! here with the Route `<sip:member@<internal>;lr>` ([`crate::proto::MEMBER_ROUTE_USER`]), and the edge sends it
//! on as it would a user's: to the owner of its user by the roster and the members' health
//! ([`super::members`]), kept in flight until its final answer (answered by the edge, 503 or 408, when the
//! member dies). So the request follows the user's ownership exactly as users' requests do, and no member needs
//! to know the roster's routing or to reach another member directly.
//!
//! The edge marks the request `P-Parapet-Member` (the pool takes it from a member, not a user: no digest), adds
//! its Via (an up-branch naming the sending connection, so the answer goes back there untouched) and, on an
//! initial SUBSCRIBE, a Record-Route `<sip:member@<internal>;lr>`: the dialog's NOTIFYs come back through here,
//! to the member owning the subscriber's Contact.

use std::time::Instant;

use bytes::BytesMut;

use super::core::EdgeCore;
use super::token;
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::sip::{Editor, HeaderName, Message, Method};

// The names say which way a message goes, not a conversion of the core.
#[allow(clippy::wrong_self_convention)]
impl EdgeCore {
    /// A request from a pool member (on `from`) for the member owning its user.
    pub(super) fn to_member(&mut self, from: ConnId, msg: Message, now: Instant) {
        let max_forwards = msg.max_forwards().unwrap_or(70);
        if max_forwards == 0 {
            self.out.reply(from, &msg, 483, "Too Many Hops");
            return;
        }
        bump(&self.estats.member_relayed);
        let salt = msg.top_via().map(|v| token::hash(v.branch().unwrap_or(v.raw))).unwrap_or(0);
        let mut via = Vec::with_capacity(96);
        via.extend_from_slice(b"SIP/2.0/TLS ");
        via.extend_from_slice(self.s.internal_text.as_bytes());
        via.extend_from_slice(b";branch=");
        token::write_up_branch(&mut via, from, salt);
        let aor = super::members::routing_aor(&msg);
        let record_route = (msg.method() == Some(&Method::Subscribe) && msg.to().tag().is_none())
            .then(|| member_uri(&self.s.internal_text));
        let mut ed = Editor::new(&msg);
        // The member's request carries our Route alone (its own route set is that one entry).
        ed.remove_headers(HeaderName::Route);
        crate::proto::strip_internal(&msg, &mut ed);
        if let Some(rr) = &record_route {
            ed.prepend_header(HeaderName::RecordRoute, rr.as_bytes());
        }
        ed.push_via(&via);
        ed.prepend_header(HeaderName::ParapetMember, aor.as_bytes());
        ed.set_max_forwards(max_forwards - 1);
        let mut out = BytesMut::with_capacity(msg.bytes().len() + 256);
        // At most twelve edits (seven internal headers removed), under EDIT_OPS_MAX.
        if ed.write(&mut out).is_err() {
            self.out.reply(from, &msg, 500, "Server Internal Error: too many edits");
            return;
        }
        self.member_senders.insert(from);
        if let Some(member) = self.send_to_pool(&aor, out.freeze(), now) {
            self.track_member_txn(from, &msg, member, now);
        }
    }

    /// Whether `back` is a pool connection whose request we relayed to another member (its answers go back as
    /// they are, not to a user).
    pub(super) fn is_member_sender(&self, back: ConnId) -> bool {
        self.member_senders.contains(&back)
    }

    /// A member's answer to a request another member sent through us: our Via off, back to the sender.
    pub(super) fn response_to_member(&mut self, back: ConnId, msg: &Message) {
        if !self.member_answer_passes(back, msg) {
            return;
        }
        bump(&self.estats.responses_routed);
        let mut ed = Editor::new(msg);
        ed.pop_via();
        crate::proto::strip_internal(msg, &mut ed);
        let mut out = BytesMut::with_capacity(msg.bytes().len());
        // At most seven edits: cannot overflow.
        if ed.write(&mut out).is_ok() {
            self.out.send(back, out.freeze());
        }
    }
}

/// Our Route/Record-Route for requests between members: `<sip:member@<internal>;lr>`.
pub fn member_uri(internal: &str) -> String {
    format!("<sip:{}@{internal};lr>", String::from_utf8_lossy(crate::proto::MEMBER_ROUTE_USER))
}
