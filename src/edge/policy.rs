//! The edge's decisions about a remote user's request, as pure functions (message and state in, decision or
//! bytes out) so that they can be tested and fuzzed without sockets: whether it may pass, and how it is rewritten
//! for the pool.

use std::net::SocketAddr;

use bytes::BytesMut;

use super::flows::Flow;
use super::token::{self, TokenKey};
use crate::net::ConnId;
use crate::sip::{Editor, HeaderName, Message, Method, NameAddr, TooManyEdits, Uri};

/// Why a request was refused at the edge (each has its counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Draining,
    /// An event only the edge may send to the pool.
    InternalEvent,
    Unauthenticated,
    SpoofedFrom,
    TooManyHops,
    Busy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// On to the pool.
    Forward,
    /// On to the pool marked `P-Parapet-Bind`: From is one of our users the flow has not proven yet (another
    /// account of a client sharing this connection). The pool's digest decides; on success the flow may speak
    /// for it too (see `proto`).
    Prove,
    /// OPTIONS to the edge itself: answer 200 here.
    KeepAlive,
    Refuse {
        code: u16,
        reason: &'static str,
        why: Refusal,
    },
}

pub struct Ctx<'a> {
    /// This connection's flow, if it has any state yet.
    pub flow: Option<&'a Flow>,
    pub draining: bool,
    pub in_flight_max: u32,
    /// Whether a URI names this edge.
    pub is_myself: &'a dyn Fn(&Uri<'_>) -> bool,
}

/// The gate: only REGISTER (and OPTIONS to the edge) before the flow registered; afterwards From must be one of
/// the flow's identities, or a user of our domain for the pool to authenticate (while the flow has room for
/// another identity); hop count and requests in flight are bounded.
pub fn decide(msg: &Message, ctx: &Ctx<'_>) -> Decision {
    let method = msg.method().copied().unwrap_or(Method::Other);
    let keepalive = method == Method::Options
        && msg.request_uri().and_then(|r| Uri::parse(r).ok()).is_some_and(|u| u.user.is_none() && (ctx.is_myself)(&u));
    if keepalive {
        return Decision::KeepAlive;
    }
    // Internal events (edge to pool) must never come from outside.
    if msg.header(HeaderName::Event).is_some_and(crate::proto::is_internal_event) {
        return Decision::Refuse { code: 489, reason: "Bad Event", why: Refusal::InternalEvent };
    }
    if ctx.draining && method != Method::Ack {
        return Decision::Refuse { code: 503, reason: "Service Unavailable: shutting down", why: Refusal::Draining };
    }
    let mut prove = false;
    if method != Method::Register {
        let Some(flow) = ctx.flow.filter(|f| f.is_authenticated()) else {
            return Decision::Refuse { code: 403, reason: "Forbidden: register first", why: Refusal::Unauthenticated };
        };
        let from = &msg.from().uri;
        if !flow.speaks_for_uri(from) {
            // Only an identity the pool could authenticate (a user of our domain), and only while the flow may
            // take it on: anything else is refused here as before.
            let ours = from.user.is_some_and(|u| !u.is_empty()) && (ctx.is_myself)(from);
            if !ours || !flow.has_room() {
                return Decision::Refuse {
                    code: 403,
                    reason: "Forbidden: From does not match the registered identity",
                    why: Refusal::SpoofedFrom,
                };
            }
            prove = true;
        }
    }
    if msg.max_forwards() == Some(0) {
        return Decision::Refuse { code: 483, reason: "Too Many Hops", why: Refusal::TooManyHops };
    }
    if method != Method::Ack && ctx.flow.is_some_and(|f| f.in_flight >= ctx.in_flight_max) {
        return Decision::Refuse {
            code: 503,
            reason: "Service Unavailable: too many requests in flight",
            why: Refusal::Busy,
        };
    }
    if prove {
        Decision::Prove
    } else {
        Decision::Forward
    }
}

/// Where the rewritten request comes from and goes through.
pub struct Hop<'a> {
    /// Our internal address, for the Via and the flow URI the pool will use to reach this flow.
    pub internal: &'a str,
    pub key: &'a TokenKey,
    pub conn: ConnId,
    pub peer: SocketAddr,
    /// Mark the request for the pool to prove its From ([`Decision::Prove`]).
    pub prove: bool,
    /// The user connects from outside `[edge] internal_networks`: mark the request `P-Parapet-Remote`.
    pub remote: bool,
}

/// The request as the pool gets it: our Routes popped, the user's Via stamped with received/rport, our Via on
/// top (its branch names this connection), a Path (REGISTER) or Record-Route (dialog-creating request) naming this
/// flow, Max-Forwards decremented. `scratch` is reused between calls to spare an allocation.
pub fn rewrite_for_pool(
    msg: &Message,
    hop: &Hop<'_>,
    is_myself: &dyn Fn(&Uri<'_>) -> bool,
    scratch: &mut Vec<u8>,
    out: &mut BytesMut,
) -> Result<(), TooManyEdits> {
    let method = msg.method().copied().unwrap_or(Method::Other);
    let salt = msg.top_via().map(|v| token::hash(v.branch().unwrap_or(v.raw))).unwrap_or(0);
    let own_routes = msg
        .values(HeaderName::Route)
        .take_while(|r| NameAddr::parse(r).map(|na| is_myself(&na.uri)).unwrap_or(false))
        .count();
    scratch.clear();
    scratch.extend_from_slice(b"SIP/2.0/TLS ");
    scratch.extend_from_slice(hop.internal.as_bytes());
    scratch.extend_from_slice(b";branch=");
    token::write_up_branch(scratch, hop.conn, salt);
    let via_end = scratch.len();
    // REGISTER gets a Path and a dialog-creating request a Record-Route, both naming this flow, so that the pool's
    // requests for this user (MESSAGE, NOTIFY) come back to this very connection (RFC 3327, RFC 5626).
    let flow_header = match method {
        Method::Register => Some(HeaderName::Path),
        Method::Subscribe | Method::Invite | Method::Refer if msg.to().tag().is_none() => Some(HeaderName::RecordRoute),
        _ => None,
    };
    if flow_header.is_some() {
        token::write_flow_uri(hop.key, scratch, hop.conn, hop.internal);
    }
    let (via, flow_uri) = scratch.split_at(via_end);
    let received = hop.peer.ip().to_string();

    let mut ed = Editor::new(msg);
    for _ in 0..own_routes.min(4) {
        ed.pop_route();
    }
    // Only the edge may say a request comes from a federated peer, or ask for an identity to be proven: no
    // internal header of a user's goes on.
    crate::proto::strip_internal(msg, &mut ed);
    if hop.prove {
        let (name, value) = crate::proto::BIND_MARK;
        ed.prepend_header(name, value);
    }
    if hop.remote {
        ed.prepend_header(HeaderName::ParapetRemote, b"1");
    }
    ed.set_top_via_params(Some(received.as_bytes()), Some(hop.peer.port()));
    ed.push_via(via);
    if let Some(name) = flow_header {
        ed.prepend_header(name, flow_uri);
    }
    ed.set_max_forwards(msg.max_forwards().unwrap_or(70).saturating_sub(1));
    out.reserve(msg.bytes().len() + 256);
    ed.write(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::flows::Flows;
    use crate::sip::Limits;

    /// Fuzz findings: a request with exactly the maximum number of headers, or a Via line at the maximum length,
    /// forwarded with our Via, Path and received/rport, must still parse at the pool (which allows peers a little
    /// more than users).
    #[test]
    fn forwarded_request_at_the_header_limit_still_parses() {
        for data in [
            &include_bytes!("../../fuzz/regressions/edge_request-too-many-headers")[1..],
            &include_bytes!("../../fuzz/regressions/edge_request-repeated-rport")[1..],
            &include_bytes!("../../fuzz/regressions/parse_edit-too-many-headers")[..],
            &include_bytes!("../../fuzz/regressions/parse_edit-via-line-at-limit")[..],
        ] {
            let limits = Limits::default();
            let Ok(msg) = Message::parse(bytes::Bytes::copy_from_slice(data), &limits) else { continue };
            let conn = ConnId { core: 0, gen: 1, slot: 7 };
            let key = TokenKey::from_bytes([3; 16]);
            let hop = Hop {
                internal: "127.0.0.1:5063",
                key: &key,
                conn,
                peer: "192.0.2.7:40000".parse().expect("addr"),
                prove: false,
                remote: false,
            };
            let is_myself = |u: &Uri<'_>| u.host_eq(b"127.0.0.1");
            let (mut scratch, mut out) = (Vec::new(), BytesMut::new());
            rewrite_for_pool(&msg, &hop, &is_myself, &mut scratch, &mut out).expect("fixed edits fit");
            let peer = crate::net::conn::peer_limits(&limits);
            assert!(Message::parse(out.freeze(), &peer).is_ok());
        }
    }

    #[test]
    fn a_users_federation_mark_is_removed() {
        let limits = Limits::default();
        let text = "MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.5;branch=z9hG4bK1\r\n\
                    P-Parapet-Federated: partner.test\r\nFrom: <sip:alice@partner.test>;tag=1\r\n\
                    To: <sip:bob@example.com>\r\nCall-ID: c1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
        let msg = Message::parse(bytes::Bytes::from(text), &limits).expect("parses");
        assert!(msg.header(HeaderName::ParapetFederated).is_some());
        let key = TokenKey::from_bytes([3; 16]);
        let conn = ConnId { core: 0, gen: 1, slot: 7 };
        let hop = Hop {
            internal: "127.0.0.1:5063",
            key: &key,
            conn,
            peer: "192.0.2.7:40000".parse().expect("addr"),
            prove: false,
            remote: false,
        };
        let (mut scratch, mut out) = (Vec::new(), BytesMut::new());
        rewrite_for_pool(&msg, &hop, &|_: &Uri<'_>| false, &mut scratch, &mut out).expect("fixed edits fit");
        let fwd = Message::parse(out.freeze(), &crate::net::conn::peer_limits(&limits)).expect("parses");
        assert!(fwd.header(HeaderName::ParapetFederated).is_none());
    }

    #[test]
    fn a_remote_users_request_is_marked_and_a_forged_mark_removed() {
        let limits = Limits::default();
        let text = "MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.5;branch=z9hG4bK1\r\n\
                    P-Parapet-Remote: 1\r\nFrom: <sip:alice@example.com>;tag=1\r\n\
                    To: <sip:bob@example.com>\r\nCall-ID: c1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
        let msg = Message::parse(bytes::Bytes::from(text), &limits).expect("parses");
        let key = TokenKey::from_bytes([3; 16]);
        let conn = ConnId { core: 0, gen: 1, slot: 7 };
        for remote in [false, true] {
            let peer = "192.0.2.7:40000".parse().expect("addr");
            let hop = Hop { internal: "127.0.0.1:5063", key: &key, conn, peer, prove: false, remote };
            let (mut scratch, mut out) = (Vec::new(), BytesMut::new());
            rewrite_for_pool(&msg, &hop, &|_: &Uri<'_>| false, &mut scratch, &mut out).expect("fixed edits fit");
            let fwd = Message::parse(out.freeze(), &crate::net::conn::peer_limits(&limits)).expect("parses");
            assert_eq!(fwd.values(HeaderName::ParapetRemote).count(), usize::from(remote), "remote={remote}");
        }
    }

    #[test]
    fn gate_lets_only_register_through_an_unregistered_flow() {
        let limits = Limits::default();
        let req = |m: &str| {
            let text = format!(
                "{m} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.5;branch=z9hG4bK1\r\nFrom: <sip:alice@example.com>;tag=1\r\n\
                 To: <sip:bob@example.com>\r\nCall-ID: c1\r\nCSeq: 1 {m}\r\nContent-Length: 0\r\n\r\n"
            );
            Message::parse(bytes::Bytes::from(text), &limits).expect("parses")
        };
        let conn = ConnId { core: 0, gen: 0, slot: 1 };
        let mut flows = Flows::default();
        let is_myself = |_: &Uri<'_>| false;
        let ctx = Ctx { flow: flows.get(conn), draining: false, in_flight_max: 4, is_myself: &is_myself };
        assert_eq!(decide(&req("REGISTER"), &ctx), Decision::Forward);
        assert!(matches!(decide(&req("MESSAGE"), &ctx), Decision::Refuse { why: Refusal::Unauthenticated, .. }));
        flows.open(conn, [192, 0, 2, 7].into());
        flows.registered(conn, "carol@example.com".into(), true);
        let ctx = Ctx { flow: flows.get(conn), draining: false, in_flight_max: 4, is_myself: &is_myself };
        // (example.com is not this edge's domain here: nothing to prove.)
        assert!(matches!(decide(&req("MESSAGE"), &ctx), Decision::Refuse { why: Refusal::SpoofedFrom, .. }));
        flows.registered(conn, "alice@example.com".into(), true);
        let ctx = Ctx { flow: flows.get(conn), draining: true, in_flight_max: 4, is_myself: &is_myself };
        assert!(matches!(decide(&req("MESSAGE"), &ctx), Decision::Refuse { why: Refusal::Draining, .. }));
        let ctx = Ctx { flow: flows.get(conn), draining: false, in_flight_max: 4, is_myself: &is_myself };
        assert_eq!(decide(&req("MESSAGE"), &ctx), Decision::Forward);
    }

    fn request(method: &str, from: &str, extra: &str) -> Message {
        let text = format!(
            "{method} sip:carol@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.5;branch=z9hG4bK1\r\n\
             From: <{from}>;tag=1\r\nTo: <sip:carol@example.com>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n{extra}\
             Content-Length: 0\r\n\r\n"
        );
        Message::parse(bytes::Bytes::from(text), &Limits::default()).expect("parses")
    }

    /// Identity per request: on a registered flow, another user of our domain goes to the pool to be proven;
    /// anyone else, or anything once the flow is at its identity cap, is refused as before; an unregistered flow
    /// still passes nothing but REGISTER; a proven identity passes unmarked.
    #[test]
    fn gate_sends_another_of_our_users_to_be_proven() {
        let conn = ConnId { core: 0, gen: 0, slot: 1 };
        let is_myself = |u: &Uri<'_>| u.host_eq(b"example.com") && u.port.is_none();
        let mut flows = Flows::default();
        let decide_with = |flows: &Flows, msg: &Message| {
            decide(msg, &Ctx { flow: flows.get(conn), draining: false, in_flight_max: 4, is_myself: &is_myself })
        };
        let bob = request("MESSAGE", "sip:bob@example.com", "");
        assert!(matches!(decide_with(&flows, &bob), Decision::Refuse { why: Refusal::Unauthenticated, .. }));
        flows.open(conn, [192, 0, 2, 5].into());
        flows.registered(conn, "alice@example.com".into(), true);
        assert_eq!(decide_with(&flows, &request("MESSAGE", "sip:alice@example.com", "")), Decision::Forward);
        for m in ["MESSAGE", "PUBLISH", "SUBSCRIBE"] {
            assert_eq!(decide_with(&flows, &request(m, "sip:bob@example.com", "Event: presence\r\n")), Decision::Prove);
        }
        for from in ["sip:bob@evil.example.net", "sip:example.com", "sip:bob@example.com:5099"] {
            let msg = request("MESSAGE", from, "");
            assert!(matches!(decide_with(&flows, &msg), Decision::Refuse { why: Refusal::SpoofedFrom, .. }), "{from}");
        }
        // Internal events and hop limits are refused before anything is proven.
        let internal = request("NOTIFY", "sip:bob@example.com", "Event: x-parapet-flow-closed\r\n");
        assert!(matches!(decide_with(&flows, &internal), Decision::Refuse { why: Refusal::InternalEvent, .. }));
        let hops = request("MESSAGE", "sip:bob@example.com", "Max-Forwards: 0\r\n");
        assert!(matches!(decide_with(&flows, &hops), Decision::Refuse { why: Refusal::TooManyHops, .. }));
        // Proven: passes as the flow's own.
        assert!(flows.proven(conn, "bob@example.com".into()));
        assert_eq!(decide_with(&flows, &bob), Decision::Forward);
        // At the cap, a new identity is refused at the edge.
        for n in 0..6 {
            assert!(flows.proven(conn, format!("user{n}@example.com")));
        }
        let dave = request("MESSAGE", "sip:dave@example.com", "");
        assert!(matches!(decide_with(&flows, &dave), Decision::Refuse { why: Refusal::SpoofedFrom, .. }));
        assert_eq!(decide_with(&flows, &bob), Decision::Forward);
    }

    /// The mark reaches the pool only when the edge sets it: a user's own is removed.
    #[test]
    fn only_the_edge_marks_a_request_to_be_proven() {
        let key = TokenKey::from_bytes([3; 16]);
        let conn = ConnId { core: 0, gen: 1, slot: 7 };
        let forwarded = |msg: &Message, prove: bool| {
            let hop = Hop {
                internal: "127.0.0.1:5063",
                key: &key,
                conn,
                peer: "192.0.2.7:40000".parse().expect("a"),
                prove,
                remote: false,
            };
            let (mut scratch, mut out) = (Vec::new(), BytesMut::new());
            rewrite_for_pool(msg, &hop, &|_: &Uri<'_>| false, &mut scratch, &mut out).expect("fits");
            Message::parse(out.freeze(), &crate::net::conn::peer_limits(&Limits::default())).expect("parses")
        };
        let forged = request(
            "MESSAGE",
            "sip:bob@example.com",
            "P-Parapet-Bind: from\r\nP-Parapet-Bind: x\r\nP-Parapet-Identity: bob@example.com\r\n\
             P-Parapet-Failure: credentials\r\nP-Parapet-Flow: <sip:f1@127.0.0.1:5063;lr>\r\n\
             P-Parapet-Federated: partner.test\r\n",
        );
        let plain = request("MESSAGE", "sip:bob@example.com", "");
        assert!(!crate::proto::wants_identity_notice(&forwarded(&forged, false)));
        assert!(!crate::proto::wants_identity_notice(&forwarded(&plain, false)));
        for msg in [&forged, &plain] {
            let fwd = forwarded(msg, true);
            assert!(crate::proto::wants_identity_notice(&fwd));
            assert_eq!(fwd.header_lines(HeaderName::ParapetBind).count(), 1);
            for name in crate::proto::INTERNAL_HEADERS.iter().filter(|n| **n != HeaderName::ParapetBind) {
                assert!(fwd.header(*name).is_none(), "{name:?} went on to the pool");
            }
        }
    }
}
