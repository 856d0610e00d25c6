//! The pool core driven with values: messages in, actions out, a clock that moves only when told.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::pool::digest;
use crate::store::directory::{Directory, User};
use crate::store::ContactRow;

pub(crate) const DOMAIN: &str = "example.com";
pub(crate) const EDGE: &str = "127.0.0.1:5063";
/// The Path the edge adds to a REGISTER, and names again in its flow-closed notice.
pub(crate) const PATH: &str = "<sip:f1234@127.0.0.1:5063;transport=tls;lr>";

pub(crate) fn users() -> Users {
    let user = |alias: &str| User {
        alias: alias.into(),
        display_name: alias.into(),
        password: Some(format!("{alias}-pw")),
        ..User::default()
    };
    Users::from_directory(&Directory { users: vec![user("alice"), user("bob")] }, DOMAIN, DOMAIN)
}

pub(crate) struct Rig {
    pub(crate) core: PoolCore,
    pub(crate) now: Now,
    n: u32,
}

pub(crate) fn conn() -> ConnId {
    ConnId { core: 0, gen: 1, slot: 3 }
}

impl Rig {
    pub(crate) fn new() -> Rig {
        Rig::with(|_| {})
    }

    /// A front end of an enterprise pool (`[pool.member] name`), no roster read yet.
    pub(crate) fn member(name: &str) -> Rig {
        Rig::with(|s| s.member = Some(name.into()))
    }

    fn with(f: impl FnOnce(&mut CoreSettings)) -> Rig {
        let edge: SocketAddr = EDGE.parse().unwrap();
        let mut s = CoreSettings::with_defaults(DOMAIN, "127.0.0.1:5062".parse().unwrap(), vec![edge], users());
        s.algorithms = vec![Algorithm::Md5];
        f(&mut s);
        let now = Now { secs: 1_700_000_000, mono: Instant::now() };
        Rig { core: PoolCore::new(Arc::new(s), 0, 1, Arc::new(PoolStats::default()), now), now, n: 0 }
    }

    pub(crate) fn step(&mut self, f: impl FnOnce(&mut PoolCore, Now)) -> Vec<Action> {
        f(&mut self.core, self.now);
        let mut out = Vec::new();
        self.core.take_actions(&mut out);
        out
    }

    pub(crate) fn input(&mut self, raw: &str) -> Vec<Action> {
        let msg = Message::parse(Bytes::from(raw.to_string()), &self.core.settings().limits).expect("test message");
        self.step(|c, now| c.on_message(conn(), msg, now))
    }

    /// A request from `user`, first without credentials, then answering the challenge it got.
    pub(crate) fn authed(&mut self, user: &str, make: impl Fn(u32, &str) -> String) -> Vec<Action> {
        self.n += 1;
        let first = self.input(&make(self.n, ""));
        let resp = only_response(&first);
        let (header, auth) = match resp.status() {
            Some(401) => (HeaderName::WwwAuthenticate, "Authorization"),
            Some(407) => (HeaderName::ProxyAuthenticate, "Proxy-Authorization"),
            s => panic!("expected a challenge, got {s:?}"),
        };
        let ch = sip::parse_challenge(resp.header(header).unwrap()).unwrap();
        let nonce = String::from_utf8_lossy(ch.nonce).to_string();
        let method = make(0, "").split(' ').next().unwrap().to_string();
        let uri = format!("sip:{DOMAIN}");
        let ha1 = digest::ha1(Algorithm::Md5, user.as_bytes(), DOMAIN.as_bytes(), format!("{user}-pw").as_bytes());
        let response = digest::response(
            Algorithm::Md5,
            ha1.as_bytes(),
            method.as_bytes(),
            uri.as_bytes(),
            nonce.as_bytes(),
            Some(b"00000001"),
            Some(b"cn"),
            Some(b"auth"),
        );
        let creds = format!(
            "{auth}: Digest username=\"{user}\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"cn\"\r\n"
        );
        self.n += 1;
        self.input(&make(self.n, &creds))
    }

    pub(crate) fn register(&mut self, user: &str) -> Vec<Action> {
        self.authed(user, |n, creds| {
            format!(
                "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKr{n}\r\n\
                 From: <sip:{user}@{DOMAIN}>;tag=r{n}\r\nTo: <sip:{user}@{DOMAIN}>\r\nCall-ID: reg-{user}\r\n\
                 CSeq: {n} REGISTER\r\nContact: <sip:{user}@192.0.2.1:5000;transport=tls>\r\nPath: {PATH}\r\n\
                 {creds}Expires: 600\r\nContent-Length: 0\r\n\r\n"
            )
        })
    }
}

/// A binding of `alias`'s one device through the edge's flow [`PATH`], as a REGISTER would have made it.
pub(crate) fn binding(alias: &str, expires_at: u64) -> crate::pool::registrar::Binding {
    crate::pool::registrar::Binding {
        contact: format!("sip:{alias}@192.0.2.1:5000;transport=tls"),
        contact_params: String::new(),
        instance: None,
        reg_id: None,
        q: None,
        path: vec![PATH.to_string()],
        call_id: format!("c-{alias}"),
        cseq: 1,
        expires_at,
        flow: None,
    }
}

pub(crate) fn sent(actions: &[Action]) -> Vec<Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { bytes, .. } => Some(Message::parse(bytes.clone(), &Limits::default()).unwrap()),
            _ => None,
        })
        .collect()
}

pub(crate) fn only_response(actions: &[Action]) -> Message {
    let r = sent(actions);
    assert_eq!(r.len(), 1, "one response");
    r.into_iter().next().unwrap()
}

pub(crate) fn to_edge(actions: &[Action]) -> Vec<(SocketAddr, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToEdge { addr, bytes } => Some((*addr, Message::parse(bytes.clone(), &Limits::default()).unwrap())),
            _ => None,
        })
        .collect()
}

#[test]
fn register_without_credentials_is_challenged() {
    let mut rig = Rig::new();
    let out = rig.input(&format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bK1\r\n\
         From: <sip:alice@{DOMAIN}>;tag=1\r\nTo: <sip:alice@{DOMAIN}>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:alice@192.0.2.1:5000>\r\nContent-Length: 0\r\n\r\n"
    ));
    let resp = only_response(&out);
    assert_eq!(resp.status(), Some(401));
    let ch = sip::parse_challenge(resp.header(HeaderName::WwwAuthenticate).expect("a challenge")).unwrap();
    assert_eq!(ch.realm, DOMAIN.as_bytes());
    assert!(matches!(out[0], Action::Send { conn: c, .. } if c == conn()), "to the connection it came from");
    assert_eq!(rig.core.sizes().bindings, 0);
    assert_eq!(rig.core.sizes().nonces, 1);
}

#[test]
fn register_with_valid_digest_binds() {
    let mut rig = Rig::new();
    let out = rig.register("alice");
    let resp = only_response(&out);
    assert_eq!(resp.status(), Some(200));
    let contact = String::from_utf8_lossy(resp.header(HeaderName::Contact).unwrap()).to_string();
    assert!(contact.contains("sip:alice@192.0.2.1:5000") && contact.contains("expires=600"), "{contact}");
    assert_eq!((rig.core.sizes().aors, rig.core.sizes().bindings), (1, 1));
    // The binding is written behind: nothing until the write-behind input, then one row.
    let writes = rig.step(|c, now| c.on_write_behind(now));
    assert!(matches!(&writes[..], [Action::StoreWrite(StateWrite::Put(r))] if r.key == "alice@example.com"));
}

#[test]
fn message_to_a_binding_goes_to_its_edge_with_route() {
    let mut rig = Rig::new();
    assert_eq!(only_response(&rig.register("bob")).status(), Some(200));
    let out = rig.authed("alice", |n, creds| {
        format!(
            "MESSAGE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKm{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=m{n}\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: m-{n}\r\n\
             CSeq: 1 MESSAGE\r\n{creds}Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        )
    });
    assert!(sent(&out).is_empty(), "no answer before the edge's");
    let fwd = to_edge(&out);
    assert_eq!(fwd.len(), 1);
    let (addr, req) = &fwd[0];
    assert_eq!(*addr, EDGE.parse::<SocketAddr>().unwrap());
    assert_eq!(req.header(HeaderName::Route), Some(PATH.as_bytes()));
    assert_eq!(req.request_uri(), Some(&b"sip:bob@192.0.2.1:5000;transport=tls"[..]));
    assert!(req.header(HeaderName::ProxyAuthorization).is_none());
    assert_eq!(rig.core.sizes().transactions, 1);
    // Bob's 200 comes back through the edge: it goes to alice's connection, our Via removed.
    let mut ok = BytesMut::new();
    sip::write_response(&mut ok, req, 200, "OK", Some(b"b"), &[], None);
    let out = rig.step(|c, now| c.on_message(conn(), Message::parse(ok.freeze(), &Limits::default()).unwrap(), now));
    let resp = only_response(&out);
    assert_eq!(resp.status(), Some(200));
    assert!(resp.top_via().and_then(|v| v.branch()).is_some_and(|b| b.starts_with(b"z9hG4bKm")));
    assert_eq!(rig.core.sizes().transactions, 0);
    assert_eq!(rig.core.pstats.messages_internal.get(), 1, "alice and bob are both ours");
}

/// A request for a foreign domain goes to the edge's federation; the edge's own final refusal (a blocked domain)
/// comes back to alice as it is, once, our Via removed.
#[test]
fn an_edge_refusal_of_a_federated_request_is_passed_on() {
    let mut rig = Rig::new();
    let out = rig.authed("alice", |n, creds| {
        format!(
            "MESSAGE sip:carol@third.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKm{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=m{n}\r\nTo: <sip:carol@third.test>\r\n\
             Call-ID: f-{n}\r\nCSeq: 1 MESSAGE\r\n{creds}Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        )
    });
    assert!(sent(&out).is_empty(), "no answer before the edge's");
    let fwd = to_edge(&out);
    assert_eq!(fwd.len(), 1);
    let (addr, req) = &fwd[0];
    assert_eq!(*addr, EDGE.parse::<SocketAddr>().unwrap());
    assert_eq!(req.header(HeaderName::Route), Some(format!("<sip:fed@{EDGE};lr>").as_bytes()));
    let mut refused = BytesMut::new();
    sip::write_response(&mut refused, req, 403, "Forbidden: domain blocked", None, &[], None);
    let out =
        rig.step(|c, now| c.on_message(conn(), Message::parse(refused.freeze(), &Limits::default()).unwrap(), now));
    let resp = only_response(&out);
    assert_eq!(resp.status(), Some(403));
    assert!(resp.top_via().and_then(|v| v.branch()).is_some_and(|b| b.starts_with(b"z9hG4bKm")));
    assert_eq!(rig.core.sizes().transactions, 0);
}

#[test]
fn a_dead_edge_reads_as_offline() {
    let mut rig = Rig::new();
    rig.register("bob");
    let out = rig.authed("alice", |n, creds| {
        format!(
            "MESSAGE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKm{n}\r\n\
             From: <sip:alice@{DOMAIN}>;tag=m{n}\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: m-{n}\r\n\
             CSeq: 1 MESSAGE\r\n{creds}Content-Length: 0\r\n\r\n"
        )
    });
    let Action::ToEdge { bytes, .. } = out.into_iter().find(|a| matches!(a, Action::ToEdge { .. })).unwrap() else {
        unreachable!()
    };
    let out = rig.step(|c, now| c.on_undeliverable(bytes, 503, "Service Unavailable", now));
    assert_eq!(only_response(&out).status(), Some(480));
    assert_eq!(rig.core.sizes().transactions, 0);
}

#[test]
fn flow_closed_notice_removes_the_bindings() {
    let mut rig = Rig::new();
    rig.register("alice");
    assert_eq!(rig.core.sizes().bindings, 1);
    let out = rig.input(&format!(
        "NOTIFY sip:alice@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKx1\r\nMax-Forwards: 1\r\n\
         From: <sip:edge@127.0.0.1:5063>;tag=flow\r\nTo: <sip:alice@{DOMAIN}>\r\nCall-ID: flow-1\r\n\
         CSeq: 1 NOTIFY\r\nEvent: x-parapet-flow-closed\r\nSubscription-State: terminated\r\n\
         P-Parapet-Flow: {PATH}\r\nContent-Length: 0\r\n\r\n"
    ));
    assert_eq!(only_response(&out).status(), Some(200));
    assert_eq!(rig.core.sizes().bindings, 0);
    let writes = rig.step(|c, now| c.on_write_behind(now));
    assert!(matches!(&writes[..], [Action::StoreWrite(StateWrite::Delete { key, .. })] if key == "alice@example.com"));
}

#[test]
fn a_store_reply_completes_a_list_subscription() {
    let mut rig = Rig::new();
    rig.register("alice");
    let out = subscribe_alices_list(&mut rig);
    assert!(sent(&out).is_empty(), "answered once the list is read");
    let Some(Action::StoreCall { op: Op::Contacts { owner }, then }) =
        out.into_iter().find(|a| matches!(a, Action::StoreCall { .. }))
    else {
        panic!("the list is read from the store")
    };
    assert_eq!(owner, "alice@example.com");
    assert_eq!(rig.core.sizes().subscriptions, 0);
    let rows = vec![ContactRow {
        owner: owner.clone(),
        uri: format!("sip:bob@{DOMAIN}"),
        display_name: "Bob".into(),
        group: String::new(),
    }];
    let out = rig.step(|c, now| c.on_store_reply(then, Ok(Reply::Contacts(rows)), now));
    let resp = only_response(&out);
    assert_eq!(resp.status(), Some(200));
    assert_eq!(resp.header(HeaderName::Require), Some(&b"eventlist"[..]));
    assert_eq!(rig.core.sizes().subscriptions, 1);
    let notifies = to_edge(&out);
    assert_eq!(notifies.len(), 1, "the first NOTIFY");
    assert!(notifies[0].1.content_type().is_some_and(|c| c.starts_with(b"multipart/related")));
    // Bob's state arrives from his core (this one): a coalesced NOTIFY, after the timer.
    let timer = out.into_iter().find_map(|a| match a {
        Action::Timer { timer, after } => Some((timer, after)),
        _ => None,
    });
    let Some((timer @ Timer::ListFlush(_), after)) = timer else { panic!("a coalescing timer") };
    assert_eq!(after, Duration::from_millis(50));
    let out = rig.step(|c, now| c.on_timer(timer, now));
    assert_eq!(to_edge(&out).len(), 1, "one NOTIFY for the gathered changes");
}

#[test]
fn a_failed_store_call_answers_503() {
    let mut rig = Rig::new();
    let then = Resume::ListLoad {
        origin: conn(),
        request: Bytes::from(format!(
            "SUBSCRIBE sip:alice+contacts@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKs\r\n\
             From: <sip:alice@{DOMAIN}>;tag=s\r\nTo: <sip:alice+contacts@{DOMAIN}>\r\nCall-ID: l\r\n\
             CSeq: 1 SUBSCRIBE\r\nContent-Length: 0\r\n\r\n"
        )),
        owner: "alice@example.com".into(),
        list_uri: "sip:alice+contacts@example.com".into(),
        granted: 600,
    };
    let out = rig.step(|c, now| c.on_store_reply(then, Err(StoreError("busy".into())), now));
    assert_eq!(only_response(&out).status(), Some(503));
}

#[test]
fn a_full_mesh_answers_503() {
    let mut rig = Rig::new();
    let bytes = Bytes::from(format!(
        "MESSAGE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKq\r\n\
         From: <sip:alice@{DOMAIN}>;tag=q\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: q\r\nCSeq: 1 MESSAGE\r\n\
         Content-Length: 0\r\n\r\n"
    ));
    let out = rig.step(|c, now| c.on_mesh_full(conn(), bytes, now));
    assert_eq!(only_response(&out).status(), Some(503));
}

#[test]
fn transactions_time_out_on_the_given_clock() {
    let mut rig = Rig::new();
    rig.register("bob");
    rig.authed("alice", |n, creds| {
        format!(
            "MESSAGE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKm{n}\r\n\
             From: <sip:alice@{DOMAIN}>;tag=m{n}\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: m-{n}\r\n\
             CSeq: 1 MESSAGE\r\n{creds}Content-Length: 0\r\n\r\n"
        )
    });
    assert!(sent(&rig.step(|c, now| c.on_tick(now))).is_empty(), "not yet");
    rig.now.mono += Duration::from_secs(33);
    let out = rig.step(|c, now| c.on_tick(now));
    assert_eq!(only_response(&out).status(), Some(408));
    assert_eq!(rig.core.sizes().transactions, 0);
}

/// A refused REGISTER is counted under its reason (the report's "failures by reason").
#[test]
fn a_refused_register_is_counted_by_reason() {
    let mut rig = Rig::new();
    let out = rig.authed("alice", |n, creds| {
        format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKb{n}\r\n\
             From: <sip:alice@{DOMAIN}>;tag=b{n}\r\nTo: <sip:alice@{DOMAIN}>\r\nCall-ID: brief\r\n\
             CSeq: {n} REGISTER\r\nContact: <sip:alice@192.0.2.1:5000;transport=tls>\r\nPath: {PATH}\r\n\
             {creds}Expires: 5\r\nContent-Length: 0\r\n\r\n"
        )
    });
    assert_eq!(only_response(&out).status(), Some(423));
    let p = &rig.core.pstats;
    assert_eq!((p.register_refused_interval.get(), p.registrations.get(), p.register_refused_full.get()), (1, 0, 0));
}

/// alice's SUBSCRIBE to her contact list, authenticated (the list is then read from the store).
fn subscribe_alices_list(rig: &mut Rig) -> Vec<Action> {
    rig.authed("alice", |n, creds| {
        format!(
            "SUBSCRIBE sip:alice+contacts@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKs{n}\r\n\
             From: <sip:alice@{DOMAIN}>;tag=s{n}\r\nTo: <sip:alice+contacts@{DOMAIN}>\r\nCall-ID: list-1\r\n\
             CSeq: {n} SUBSCRIBE\r\nContact: <sip:alice@192.0.2.1:5000;transport=tls>\r\n\
             Record-Route: <sip:127.0.0.1:5063;transport=tls;lr>\r\nEvent: presence\r\nSupported: eventlist\r\n\
             Accept: application/pidf+xml, application/rlmi+xml, multipart/related\r\n{creds}Expires: 600\r\n\
             Content-Length: 0\r\n\r\n"
        )
    })
}

/// A list subscription whose store read is answered with `contacts` (their AORs' users); returns the actions.
fn list_subscribed(rig: &mut Rig, contacts: &[&str]) -> Vec<Action> {
    let mut out = subscribe_alices_list(rig);
    // A member first claims and loads the list's AOR (nothing saved for it here), then reads the list.
    if let Some(Action::StoreCall { op: Op::ClaimAndLoad { .. }, then }) =
        out.iter().find(|a| matches!(a, Action::StoreCall { op: Op::ClaimAndLoad { .. }, .. })).map(clone_call)
    {
        out = rig.step(|c, now| c.on_store_reply(then, Ok(Reply::Claimed { gen: 1, rows: Vec::new() }), now));
    }
    let Some(Action::StoreCall { then, .. }) = out.into_iter().find(|a| matches!(a, Action::StoreCall { .. })) else {
        panic!("the list is read from the store")
    };
    let rows = contacts
        .iter()
        .map(|c| ContactRow {
            owner: format!("alice@{DOMAIN}"),
            uri: format!("sip:{c}@{DOMAIN}"),
            display_name: String::new(),
            group: String::new(),
        })
        .collect();
    rig.step(|c, now| c.on_store_reply(then, Ok(Reply::Contacts(rows)), now))
}

/// The back-end SUBSCRIBEs among `out` (their Call-IDs tell them apart).
fn backend_subscribes(out: &[Action]) -> Vec<Message> {
    to_edge(out).into_iter().map(|(_, m)| m).filter(|m| m.method() == Some(&Method::Subscribe)).collect()
}

/// In an enterprise pool a list's contact of our own domain is watched through the edge, by its owner: a
/// SUBSCRIBE routed `member`; a lost dialog (481) starts a new one, a refusal (403) leaves the contact closed.
#[test]
fn a_members_list_watches_its_contacts_through_the_edge_and_starts_again_when_lost() {
    let mut rig = Rig::member("fe1");
    let out = list_subscribed(&mut rig, &["bob"]);
    let subs = backend_subscribes(&out);
    assert_eq!(subs.len(), 1, "one back-end SUBSCRIBE for bob");
    let sub = &subs[0];
    assert_eq!(sub.request_uri(), Some(format!("sip:bob@{DOMAIN}").as_bytes()));
    assert_eq!(sub.header(HeaderName::Route), Some(format!("<sip:member@{EDGE};lr>").as_bytes()));
    assert_eq!(sub.from().uri.user, Some(&b"alice"[..]), "the list's owner is the watcher");
    let answer = |m: &Message, code: u16| {
        let mut b = BytesMut::new();
        sip::write_response(&mut b, m, code, "x", Some(b"t"), &[], None);
        Message::parse(b.freeze(), &Limits::default()).unwrap()
    };
    let out = rig.step(|c, now| c.on_message(conn(), answer(sub, 481), now));
    let again = backend_subscribes(&out);
    assert_eq!(again.len(), 1, "a lost dialog starts again at once");
    assert_ne!(again[0].call_id(), sub.call_id(), "as a new dialog");
    assert!(again[0].to().tag().is_none());
    assert_eq!(rig.core.pstats.backend_restarts.get(), 1);
    let out = rig.step(|c, now| c.on_message(conn(), answer(&again[0], 403), now));
    assert!(backend_subscribes(&out).is_empty(), "a refusal is final");
    assert!(out.iter().any(|a| matches!(a, Action::Timer { timer: Timer::ListFlush(_), .. })), "bob shown closed");
    assert_eq!(rig.core.presence.backends.len(), 0);
}

/// A member's SUBSCRIBE (the edge's mark) is served without a challenge, as the list owner's watch.
#[test]
fn a_members_subscribe_is_served_without_a_challenge() {
    let mut rig = Rig::new();
    let out = rig.input(&format!(
        "SUBSCRIBE sip:bob@{DOMAIN} SIP/2.0\r\nP-Parapet-Member: bob@{DOMAIN}\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKe1\r\nVia: SIP/2.0/TLS 127.0.0.1:5062;branch=z9hG4bKb1x1\r\n\
         Record-Route: <sip:member@{EDGE};lr>\r\nFrom: <sip:alice@{DOMAIN}>;tag=b1\r\nTo: <sip:bob@{DOMAIN}>\r\n\
         Call-ID: bes-1\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:alice+contacts@{DOMAIN};transport=tls>\r\n\
         Event: presence\r\nAccept: application/pidf+xml\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    ));
    assert_eq!(only_response(&out).status(), Some(200));
    let notify = to_edge(&out);
    assert_eq!(notify.len(), 1, "the first NOTIFY");
    assert_eq!(notify[0].1.request_uri(), Some(format!("sip:alice+contacts@{DOMAIN};transport=tls").as_bytes()));
    assert_eq!(notify[0].1.header(HeaderName::Route), Some(format!("<sip:member@{EDGE};lr>").as_bytes()));
    // Without the mark the same request is a user's: challenged.
    let out = rig.input(&format!(
        "SUBSCRIBE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKe2\r\n\
         Record-Route: <sip:member@{EDGE};lr>\r\nFrom: <sip:alice@{DOMAIN}>;tag=b2\r\nTo: <sip:bob@{DOMAIN}>\r\n\
         Call-ID: bes-2\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:alice+contacts@{DOMAIN};transport=tls>\r\n\
         Event: presence\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    ));
    assert_eq!(only_response(&out).status(), Some(407));
}

/// A roster change refreshes the back-end subscriptions whose contact moved to another member, and only those.
#[test]
fn a_roster_change_refreshes_the_watches_of_contacts_that_moved() {
    use crate::proto::membership::{Member, MemberState, Roster};
    let mut rig = Rig::member("fe1");
    let sub = backend_subscribes(&list_subscribed(&mut rig, &["bob"])).remove(0);
    let wall = rig.now.secs * 1000;
    let roster = |names: &[&str]| {
        let m = |n: &&str| Member {
            name: n.to_string(),
            addr: String::new(),
            state: MemberState::Active,
            lease_until_ms: wall + 60_000,
            load: 0,
            in_flight: 0,
            users: 0,
        };
        Arc::new(Roster::new(names.iter().map(m).collect()))
    };
    let settle = |rig: &mut Rig, r: Arc<Roster>| {
        let out = rig.step(|c, now| c.on_roster(r, wall, now));
        let gain = out.into_iter().find_map(|a| match a {
            Action::Timer { timer: t @ Timer::Gain, .. } => Some(t),
            _ => None,
        });
        gain.map(|t| backend_subscribes(&rig.step(|c, now| c.on_timer(t, now)))).unwrap_or_default()
    };
    let refreshed = settle(&mut rig, roster(&["fe1", "fe2"]));
    assert_eq!(refreshed.len(), 1, "bob has an owner now: his watch follows");
    assert_eq!(refreshed[0].call_id(), sub.call_id(), "within its dialog");
    let owner_in = |names: &[&str]| {
        crate::proto::membership::owner("bob@example.com", &roster(names), wall).map(|m| m.name.clone())
    };
    let first = owner_in(&["fe1", "fe2"]);
    // A member joins that does not take bob: nothing to refresh.
    let stays = (3..40).map(|i| format!("fe{i}")).find(|n| owner_in(&["fe1", "fe2", n]) == first).unwrap();
    assert!(settle(&mut rig, roster(&["fe1", "fe2", &stays])).is_empty(), "bob did not move");
    // One that takes him: his watch follows.
    let takes = (40..200).map(|i| format!("fe{i}")).find(|n| owner_in(&["fe1", "fe2", &stays, n]) != first).unwrap();
    assert_eq!(settle(&mut rig, roster(&["fe1", "fe2", &stays, &takes])).len(), 1, "bob moved");
}

fn clone_call(a: &Action) -> Action {
    match a {
        Action::StoreCall { op, then } => Action::StoreCall { op: op.clone(), then: then.clone() },
        _ => unreachable!("a store call"),
    }
}

/// The subscription rows among `out`'s store writes (fenced or not).
fn saved_subs(out: &[Action]) -> Vec<StateRow> {
    fn put(w: &StateWrite) -> Option<&StateRow> {
        match w {
            StateWrite::Put(r) => Some(r),
            StateWrite::Fenced { write, .. } => put(write),
            StateWrite::Delete { .. } => None,
        }
    }
    let rows = out.iter().filter_map(|a| match a {
        Action::StoreWrite(w) => put(w),
        _ => None,
    });
    rows.filter(|r| r.kind == "sub").cloned().collect()
}

fn notifies(out: &[Action]) -> Vec<Message> {
    to_edge(out).into_iter().map(|(_, m)| m).filter(|m| m.method() == Some(&Method::Notify)).collect()
}

/// The RLMI `version` of a list NOTIFY.
fn rlmi_version(n: &Message) -> u32 {
    let body = String::from_utf8_lossy(n.body()).to_string();
    let list = body.split("<list ").nth(1).unwrap_or_default();
    let v = list.split(" version=\"").nth(1).and_then(|r| r.split('"').next()).and_then(|v| v.parse().ok());
    v.unwrap_or_else(|| panic!("no RLMI version in:\n{body}"))
}

/// Member fe2 gains alice's list from these saved rows: it watches bob again, and once bob's owner tells it his
/// state, the subscriber gets one full-state NOTIFY in her dialog; returns it.
fn list_gained_by_fe2(rows: Vec<StateRow>) -> Message {
    let mut b = Rig::member("fe2");
    let aor = format!("alice+contacts@{DOMAIN}");
    let out = b.step(|c, now| c.on_store_reply(Resume::UserLoad { aor }, Ok(Reply::Claimed { gen: 2, rows }), now));
    // Saved again at once past the skip: a later hand-over skips ahead from there.
    let saved = saved_subs(&out);
    assert_eq!(saved.len(), 1, "saved again when restored");
    let saved = String::from_utf8_lossy(&saved[0].value).to_string();
    let restored = out.into_iter().find_map(|a| match a {
        Action::Timer { timer: t @ Timer::Restored(_), .. } => Some(t),
        _ => None,
    });
    let out = b.step(|c, now| c.on_timer(restored.expect("the list subscription is restored"), now));
    assert!(notifies(&out).is_empty(), "no NOTIFY before the contacts' states are in");
    assert!(
        out.iter().any(|a| matches!(a, Action::StoreCall { op: Op::Contacts { .. }, .. })),
        "the list is read again"
    );
    let gather = out.iter().find_map(|a| match a {
        Action::Timer { timer: t @ Timer::ListFlush(_), after } => Some((t.clone(), *after)),
        _ => None,
    });
    let Some((gather, after)) = gather else { panic!("a gather timer") };
    assert_eq!(after, crate::pool::presence::rls::RESTORED_GATHER);
    let watch = backend_subscribes(&out);
    assert_eq!(watch.len(), 1, "bob is watched again, through the edge");
    assert_eq!(
        watch[0].header(HeaderName::Contact),
        Some(format!("<sip:alice+contacts@{DOMAIN};transport=tls>").as_bytes())
    );
    // bob's owner answers with his state.
    let pidf = format!(
        "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:bob@{DOMAIN}\">\
         <tuple id=\"t\"><status><basic>open</basic></status><note>In the lab</note></tuple></presence>"
    );
    let tag = String::from_utf8_lossy(watch[0].from().tag().unwrap()).to_string();
    let call_id = String::from_utf8_lossy(watch[0].call_id()).to_string();
    let out = b.input(&format!(
        "NOTIFY sip:alice+contacts@{DOMAIN};transport=tls SIP/2.0\r\nP-Parapet-Member: bob@{DOMAIN}\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKbn1\r\nFrom: <sip:bob@{DOMAIN}>;tag=bt\r\n\
         To: <sip:alice@{DOMAIN}>;tag={tag}\r\nCall-ID: {call_id}\r\nCSeq: 1 NOTIFY\r\n\
         Contact: <sip:bob@{DOMAIN};transport=tls>\r\nEvent: presence\r\nSubscription-State: active;expires=600\r\n\
         Content-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{pidf}",
        pidf.len()
    ));
    let mut n = notifies(&out);
    assert_eq!(n.len(), 1, "one NOTIFY once every contact's state is in");
    assert!(notifies(&b.step(|c, now| c.on_timer(gather, now))).is_empty(), "the gather timer sends nothing more");
    let n = n.remove(0);
    let base = format!("\"local_cseq\":{}", n.cseq().seq - 1);
    assert!(saved.contains(&base), "saved with {base}: {saved}");
    n
}

/// The same dialog, a higher CSeq and RLMI version, full state with bob's document.
fn assert_continues(first: &Message, after: &Message) {
    assert_eq!(after.call_id(), first.call_id());
    assert_eq!(after.from().tag(), first.from().tag(), "our tag");
    assert_eq!(after.header(HeaderName::To), first.header(HeaderName::To), "the subscriber's tag");
    assert_eq!(after.request_uri(), first.request_uri());
    assert_eq!(after.header(HeaderName::Route), first.header(HeaderName::Route));
    assert!(after.cseq().seq > first.cseq().seq, "CSeq {} after {}", after.cseq().seq, first.cseq().seq);
    assert!(rlmi_version(after) > rlmi_version(first));
    assert!(after.header(HeaderName::SubscriptionState).is_some_and(|v| v.starts_with(b"active")));
    let body = String::from_utf8_lossy(after.body()).to_string();
    assert!(body.contains("fullState=\"true\"") && body.contains("In the lab"), "bob's state:\n{body}");
}

/// The list's member dies: another gains the list's AOR and restores the subscription from the row written when
/// it was made (nothing else was saved since), watches the contacts again and goes on in the same dialog.
#[test]
fn a_list_subscription_is_restored_by_the_member_that_gains_it() {
    let mut a = Rig::member("fe1");
    let out = list_subscribed(&mut a, &["bob"]);
    let rows = saved_subs(&out);
    assert_eq!(rows.len(), 1, "written behind when made");
    assert!(rows[0].key.starts_with(&format!("alice+contacts@{DOMAIN} list-1 ")), "keyed by the list's AOR");
    let first = notifies(&out).remove(0);
    assert_continues(&first, &list_gained_by_fe2(rows));
}

/// fe1 reads a roster where it drains and fe2 owns everyone; the actions of that step.
fn fe1_drained(rig: &mut Rig) -> Vec<Action> {
    use crate::proto::membership::{Member, MemberState, Roster};
    let wall = rig.now.secs * 1000;
    let m = |name: &str, state| Member {
        name: name.into(),
        addr: String::new(),
        state,
        lease_until_ms: wall + 60_000,
        load: 0,
        in_flight: 0,
        users: 0,
    };
    let roster = Arc::new(Roster::new(vec![m("fe1", MemberState::Draining), m("fe2", MemberState::Active)]));
    rig.step(|c, now| c.on_roster(roster, wall, now))
}

/// The list's member drains: it writes the subscription out with its exact CSeq, ends its watches and drops it;
/// the member that gains the list goes on with it.
#[test]
fn a_drained_member_hands_a_list_subscription_over() {
    let mut a = Rig::member("fe1");
    let first = notifies(&list_subscribed(&mut a, &["bob"])).remove(0);
    let out = fe1_drained(&mut a);
    assert_eq!(a.core.sizes().subscriptions, 0, "dropped here");
    assert!(
        out.iter().any(|x| matches!(x, Action::StoreWrite(StateWrite::Fenced { gen: 1, .. }))),
        "written under its claim"
    );
    let ended = backend_subscribes(&out);
    assert_eq!(ended.len(), 1, "bob's watch ends here");
    assert_eq!(ended[0].expires(), Some(0));
    let rows = saved_subs(&out);
    assert_eq!(rows.len(), 1);
    assert_continues(&first, &list_gained_by_fe2(rows));
}

/// A contact's NOTIFY for a list another member holds now (the edge had not read the roster yet) is answered
/// without loading the list here: two members would notify its subscriber in one dialog.
#[test]
fn a_contacts_notify_for_a_list_held_elsewhere_does_not_load_it() {
    let mut rig = Rig::member("fe1");
    fe1_drained(&mut rig);
    let out = rig.input(&format!(
        "NOTIFY sip:alice+contacts@{DOMAIN};transport=tls SIP/2.0\r\nP-Parapet-Member: bob@{DOMAIN}\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKbn9\r\nFrom: <sip:bob@{DOMAIN}>;tag=bt\r\n\
         To: <sip:alice@{DOMAIN}>;tag=b01\r\nCall-ID: bes-0-1-1@127.0.0.1:5062\r\nCSeq: 2 NOTIFY\r\n\
         Event: presence\r\nSubscription-State: terminated;reason=timeout\r\nContent-Length: 0\r\n\r\n"
    ));
    assert_eq!(only_response(&out).status(), Some(200));
    assert!(!out.iter().any(|a| matches!(a, Action::StoreCall { .. })), "the list is not loaded here");
    assert_eq!(rig.core.pstats.list_notifies_elsewhere.get(), 1);
}
