//! The edge's request handling as a pure function: a user's message in, the gate's decision and the request the
//! pool would get out. Invariants: no panic; what the edge forwards parses; an unregistered flow only ever
//! forwards REGISTER; only a registered flow sends a From to be proven, and the pool sees the mark exactly then.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use parapet::edge::flows::Flows;
use parapet::edge::policy::{self, Ctx, Decision, Hop};
use parapet::edge::token::TokenKey;
use parapet::net::ConnId;
use parapet::sip::{Limits, Message, Method, Uri};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let limits = Limits::default();
    let Ok(msg) = Message::parse(Bytes::copy_from_slice(rest), &limits) else { return };
    if !msg.is_request() {
        return;
    }
    let conn = ConnId { core: 0, gen: 1, slot: 7 };
    let mut flows = Flows::default();
    let registered = mode & 1 == 1;
    if registered {
        flows.open(conn, [192, 0, 2, 7].into());
        flows.registered(conn, "alice@example.com".into(), true);
    }
    let is_myself = |u: &Uri<'_>| u.host_eq(b"127.0.0.1") || u.host_eq(b"example.com");
    let ctx = Ctx { flow: flows.get(conn), draining: mode & 2 == 2, in_flight_max: 32, is_myself: &is_myself };
    let decision = policy::decide(&msg, &ctx);
    if decision == Decision::Forward || decision == Decision::Prove {
        if !registered {
            assert_eq!(msg.method(), Some(&Method::Register), "only REGISTER passes an unregistered flow");
        }
        let prove = decision == Decision::Prove;
        let key = TokenKey::from_bytes([3; 16]);
        let peer = "192.0.2.7:40000".parse().expect("addr");
        let hop = Hop { internal: "127.0.0.1:5063", key: &key, conn, peer, prove, remote: mode & 4 == 4 };
        let mut scratch = Vec::new();
        let mut out = BytesMut::new();
        if policy::rewrite_for_pool(&msg, &hop, &is_myself, &mut scratch, &mut out).is_err() {
            panic!("at most seventeen edits refused: the cap is {}", parapet::sip::EDIT_OPS_MAX);
        }
        let big = parapet::net::conn::peer_limits(&limits);
        match Message::parse(out.freeze(), &big) {
            Ok(fwd) => assert_eq!(parapet::proto::wants_identity_notice(&fwd), prove, "the mark is the edge's alone"),
            Err(e) => panic!("request for the pool does not parse: {e:?}"),
        }
    }
});
