//! [`EdgeCore`] driven with values: inputs in, actions out, no sockets.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::sip::{HeaderName, Limits, Message};

fn settings() -> Arc<EdgeSettings> {
    static S: OnceLock<Arc<EdgeSettings>> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("parapet-edge-core-test-{}", std::process::id()));
        Arc::new(crate::edge::testkit::settings(&dir).expect("settings"))
    })
    .clone()
}

fn core() -> EdgeCore {
    EdgeCore::new(settings(), 0, 2, Arc::new(EdgeStats::default()))
}

const USER: ConnId = ConnId { core: 0, gen: 1, slot: 1 };
const POOL: ConnId = ConnId { core: 0, gen: 1, slot: 2 };

fn user() -> ConnInfo<'static> {
    ConnInfo { id: USER, kind: ConnKind::User, peer: "192.0.2.10:40000".parse().expect("addr"), names: &[] }
}

fn pool_names() -> &'static [String] {
    static N: OnceLock<Vec<String>> = OnceLock::new();
    N.get_or_init(|| vec!["pool.example.com".to_string()])
}

fn pool() -> ConnInfo<'static> {
    ConnInfo { id: POOL, kind: ConnKind::PeerOut, peer: "127.0.0.1:5062".parse().expect("addr"), names: pool_names() }
}

fn parse(b: impl Into<Bytes>) -> Message {
    Message::parse(b.into(), &crate::net::conn::peer_limits(&Limits::default())).expect("parses")
}

fn request(method: &str, from: &str) -> Message {
    parse(format!(
        "{method} sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.10:40000;branch=z9hG4bKu1\r\nMax-Forwards: 70\r\n\
         From: <sip:{from}@example.com>;tag=1\r\nTo: <sip:{from}@example.com>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n\
         Contact: <sip:{from}@192.0.2.10:40000;transport=tls>\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn actions(core: &mut EdgeCore) -> Vec<Action> {
    let mut v = Vec::new();
    core.take_actions(&mut v);
    v
}

/// The one request the core sent to the pool in `actions`.
fn to_pool(actions: &[Action]) -> Message {
    let sent: Vec<&Bytes> =
        actions.iter().filter_map(|a| if let Action::ToPool(b) = a { Some(b) } else { None }).collect();
    assert_eq!(sent.len(), 1, "one request to the pool");
    parse(sent[0].clone())
}

/// The pool's answer to `fwd` (its Vias copied, ours on top).
fn pool_response(fwd: &Message, code: u16, extra: &[(HeaderName, &[u8])]) -> Message {
    let mut out = BytesMut::new();
    crate::sip::write_response(&mut out, fwd, code, "OK", Some(b"t1"), extra, None);
    parse(out.freeze())
}

fn sent_to(actions: &[Action], conn: ConnId) -> Vec<Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn: c, bytes } if *c == conn => Some(parse(bytes.clone())),
            _ => None,
        })
        .collect()
}

/// A REGISTER from `user()` through to the pool and its 200 back: the flow is registered for alice.
fn register(core: &mut EdgeCore, now: Instant) -> Message {
    core.on_message(&user(), request("REGISTER", "alice"), now);
    let fwd = to_pool(&actions(core));
    let ok = pool_response(&fwd, 200, &[(HeaderName::Contact, b"<sip:alice@192.0.2.10:40000;transport=tls>")]);
    core.on_message(&pool(), ok, now);
    fwd
}

#[test]
fn a_register_goes_to_the_pool_with_our_via_and_a_path() {
    let mut c = core();
    c.on_message(&user(), request("REGISTER", "alice"), Instant::now());
    let fwd = to_pool(&actions(&mut c));
    let via = fwd.top_via().expect("via");
    assert!(via.raw.starts_with(format!("SIP/2.0/TLS {}", settings().internal_text).as_bytes()));
    assert_eq!(token::parse_up_branch(via.branch().expect("branch")), Some(USER));
    let path = fwd.header(HeaderName::Path).expect("path");
    let na = crate::sip::NameAddr::parse(path).expect("name-addr");
    assert_eq!(token::parse_flow(&settings().key, na.uri.user.expect("user")), Some(USER));
    assert_eq!(c.flows().len(), 1, "the flow exists from its first request on");
}

#[test]
fn the_pools_response_is_written_to_the_user_without_our_via() {
    let mut c = core();
    let now = Instant::now();
    c.on_message(&user(), request("REGISTER", "alice"), now);
    let fwd = to_pool(&actions(&mut c));
    let ok = pool_response(&fwd, 200, &[(HeaderName::Contact, b"<sip:alice@192.0.2.10:40000;transport=tls>")]);
    c.on_message(&pool(), ok, now);
    let out = sent_to(&actions(&mut c), USER);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status(), Some(200));
    assert_eq!(out[0].values(HeaderName::Via).count(), 1, "only the user's own Via");
    assert!(out[0].top_via().expect("via").raw.starts_with(b"SIP/2.0/TLS 192.0.2.10:40000"));
    assert!(c.flows().get(USER).is_some_and(|f| f.is_authenticated() && f.in_flight == 0));
}

#[test]
fn an_unregistered_message_is_refused_403() {
    let mut c = core();
    c.on_message(&user(), request("MESSAGE", "alice"), Instant::now());
    let a = actions(&mut c);
    assert!(!a.iter().any(|a| matches!(a, Action::ToPool(_))), "nothing reaches the pool");
    let out = sent_to(&a, USER);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status(), Some(403));
    assert!(c.flows().is_empty(), "a refused request makes no flow");
}

#[test]
fn closing_a_registered_flow_tells_the_pool() {
    let mut c = core();
    register(&mut c, Instant::now());
    let _ = actions(&mut c);
    c.on_closed(&user(), Instant::now());
    let notice = to_pool(&actions(&mut c));
    assert_eq!(notice.method(), Some(&crate::sip::Method::Notify));
    assert_eq!(notice.header(HeaderName::Event), Some(crate::proto::FLOW_CLOSED_EVENT.as_bytes()));
    assert_eq!(notice.request_uri(), Some(&b"sip:alice@example.com"[..]));
    assert!(c.flows().is_empty());
}

#[test]
fn a_late_response_after_the_close_makes_no_flow() {
    let mut c = core();
    let now = Instant::now();
    register(&mut c, now);
    // A second REGISTER (bob) in flight when the connection closes.
    c.on_message(&user(), request("REGISTER", "bob"), now);
    let fwd = to_pool(&actions(&mut c));
    c.on_closed(&user(), Instant::now());
    let _ = actions(&mut c);
    assert!(c.flows().is_empty());
    // Its 2xx arrives late: nothing is recreated, and no AOR is added to a flow that is gone.
    let ok = pool_response(&fwd, 200, &[(HeaderName::Contact, b"<sip:bob@192.0.2.10:40000;transport=tls>")]);
    c.on_message(&pool(), ok, now);
    let _ = actions(&mut c);
    assert!(c.flows().is_empty(), "a late REGISTER 2xx recreated the flow");
    // A late 403 (failed credentials) neither.
    let refused = pool_response(&fwd, 403, &[]);
    c.on_message(&pool(), refused, now);
    assert!(c.flows().is_empty());
    // And a second close of the same id tells the pool nothing.
    c.on_closed(&user(), Instant::now());
    assert!(!actions(&mut c).iter().any(|a| matches!(a, Action::ToPool(_))));
}

#[test]
fn a_request_for_a_closed_flow_gets_430() {
    let mut c = core();
    let now = Instant::now();
    let fwd = register(&mut c, now);
    let _ = actions(&mut c);
    let path = fwd.header(HeaderName::Path).expect("path").to_vec();
    let msg = |cseq: u32| {
        let mut t = format!(
            "MESSAGE sip:alice@192.0.2.10:40000 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5062;branch=z9hG4bKp{cseq}\r\n\
             Route: "
        )
        .into_bytes();
        t.extend_from_slice(&path);
        t.extend_from_slice(
            format!(
                "\r\nMax-Forwards: 69\r\nFrom: <sip:bob@example.com>;tag=2\r\nTo: <sip:alice@example.com>\r\n\
                 Call-ID: m{cseq}\r\nCSeq: {cseq} MESSAGE\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        );
        parse(t)
    };
    c.on_message(&pool(), msg(1), now);
    let a = actions(&mut c);
    assert!(a.iter().any(|a| matches!(a, Action::ToFlow { flow, .. } if *flow == USER)));
    assert_eq!(c.downstream_len(), 1);
    c.on_closed(&user(), Instant::now());
    let _ = actions(&mut c);
    c.on_message(&pool(), msg(2), now);
    let out = sent_to(&actions(&mut c), POOL);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status(), Some(430));
}

#[test]
fn a_notice_the_pool_did_not_take_is_sent_again_until_it_does() {
    let mut c = core();
    let t0 = Instant::now();
    register(&mut c, t0);
    let _ = actions(&mut c);
    c.on_closed(&user(), t0);
    let notice = to_pool(&actions(&mut c));
    // The pool's mesh was full: 503. The next tick after a second sends the same notice again.
    c.on_message(&pool(), pool_response(&notice, 503, &[]), t0);
    c.on_tick(t0 + std::time::Duration::from_millis(500));
    assert!(actions(&mut c).is_empty(), "not before its time");
    c.on_tick(t0 + std::time::Duration::from_millis(1100));
    let again = to_pool(&actions(&mut c));
    assert_eq!(again.bytes(), notice.bytes(), "the same notice, the same branch");
    // The connector could not reach the pool: handed back, sent again later.
    c.undeliverable(
        again.bytes().clone(),
        503,
        "Service Unavailable",
        false,
        t0 + std::time::Duration::from_millis(1200),
    );
    c.on_tick(t0 + std::time::Duration::from_millis(2300));
    let third = to_pool(&actions(&mut c));
    // A user answering in the pool's place is not believed: still pending.
    c.on_message(&user(), pool_response(&third, 200, &[]), t0 + std::time::Duration::from_millis(2400));
    assert_eq!(c.notices.len(), 1);
    // Taken: nothing more, however long we wait.
    c.on_message(&pool(), pool_response(&third, 200, &[]), t0 + std::time::Duration::from_millis(2400));
    assert!(c.notices.is_empty());
    c.on_tick(t0 + std::time::Duration::from_secs(60));
    assert!(actions(&mut c).iter().all(|a| !matches!(a, Action::ToPool(_))), "a taken notice is not sent again");
}

/// A user's MESSAGE to `bob@partner.test`, as the pool hands it to us for federation (Route `fed@`).
fn message_for_partner() -> Message {
    parse(
        "MESSAGE sip:bob@partner.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5062;branch=z9hG4bKp1\r\n\
         Route: <sip:fed@127.0.0.1:5063;transport=tls;lr>\r\nMax-Forwards: 69\r\n\
         From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@partner.test>\r\nCall-ID: m1\r\nCSeq: 1 MESSAGE\r\n\
         Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
    )
}

#[test]
fn a_request_for_an_inbound_only_partner_gets_a_final_403_naming_why() {
    let now = Instant::now();
    // The control: with an address, the request leaves for the partner.
    let mut routed = core();
    routed.on_message(&pool(), message_for_partner(), now);
    assert!(actions(&mut routed).iter().any(|a| matches!(a, Action::ToPartner { .. })), "routed with an addr");

    let stats = Arc::new(EdgeStats::default());
    let mut c = EdgeCore::new(settings(), 0, 2, Arc::clone(&stats));
    let mut table = (**c.fed_table.as_ref().expect("federation")).clone();
    table.partners.iter_mut().for_each(|p| p.addr = None);
    c.fed_table = Some(Arc::new(table));
    c.on_message(&pool(), message_for_partner(), now);
    let out = actions(&mut c);
    assert!(!out.iter().any(|a| matches!(a, Action::ToPartner { .. } | Action::ToDiscovered { .. })), "not sent");
    let answers = sent_to(&out, POOL);
    assert_eq!(answers.len(), 1, "one final answer to the pool");
    assert_eq!(answers[0].status(), Some(403));
    let reason = String::from_utf8_lossy(answers[0].reason().unwrap_or_default()).into_owned();
    assert!(reason.contains("partner.test accepts no requests from us"), "{reason}");
    assert_eq!(stats.federation_refused.get(), 1, "counted");
}

/// A back-end SUBSCRIBE a pool member sends another member through us (`relay`): marked, Record-Routed, our Via
/// naming the sender's connection; the answer goes back to that connection as it is.
#[test]
fn a_members_request_goes_on_to_the_pool_marked_and_its_answer_back_to_the_member() {
    let mut c = core();
    let now = Instant::now();
    let internal = &settings().internal_text;
    let sub = parse(format!(
        "SUBSCRIBE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5062;branch=z9hG4bKb1x1\r\n\
         Route: <sip:member@{internal};lr>\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=b1\r\n\
         To: <sip:bob@example.com>\r\nCall-ID: bes-1@pool\r\nCSeq: 1 SUBSCRIBE\r\n\
         Contact: <sip:alice+contacts@example.com;transport=tls>\r\nEvent: presence\r\nExpires: 600\r\n\
         P-Parapet-Federated: forged.test\r\nContent-Length: 0\r\n\r\n"
    ));
    c.on_message(&pool(), sub, now);
    let fwd = to_pool(&actions(&mut c));
    assert_eq!(fwd.header(HeaderName::ParapetMember), Some(&b"bob@example.com"[..]));
    assert!(fwd.header(HeaderName::ParapetFederated).is_none(), "no other internal mark goes on");
    assert!(fwd.header(HeaderName::Route).is_none());
    let rr = format!("<sip:member@{internal};lr>");
    assert_eq!(fwd.header(HeaderName::RecordRoute), Some(rr.as_bytes()), "the dialog's NOTIFYs come back here");
    assert_eq!(fwd.values(HeaderName::Via).count(), 2);
    let ok = pool_response(&fwd, 200, &[]);
    c.on_message(&pool(), ok, now);
    let back = sent_to(&actions(&mut c), POOL);
    assert_eq!(back.len(), 1, "the answer goes back to the member that asked");
    assert_eq!(back[0].values(HeaderName::Via).count(), 1, "our Via off");
    assert_eq!(back[0].status(), Some(200));
}

/// `[[edge.pools]]`: a user homed on another pool has every request sent there; the others go to the default.
#[test]
fn a_user_homed_on_another_pool_is_routed_there() {
    let mut c = core();
    let now = Instant::now();
    let person =
        |a: &str, p: &str| crate::store::directory::User { alias: a.into(), pool: p.into(), ..Default::default() };
    let dir = crate::store::directory::Directory { users: vec![person("bob", "branch"), person("alice", "")] };
    let (table, _) = crate::edge::homes::HomeTable::build(&dir, &["branch".to_string()], "example.com");
    c.on_homes(Arc::new(table));
    c.on_message(&user(), request("REGISTER", "bob"), now);
    let a = actions(&mut c);
    assert!(matches!(a.as_slice(), [Action::ToHomePool { pool: 0, .. }]), "bob's REGISTER to his home pool");
    let alice = ConnInfo { id: ConnId { core: 0, gen: 1, slot: 5 }, ..user() };
    c.on_message(&alice, request("REGISTER", "alice"), now);
    to_pool(&actions(&mut c));
}
