//! The directory in the pool core, with values: a view replaced under a registered user, and the search service.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use std::time::Duration;

use crate::pool::core::tests::{only_response, to_edge, Rig, DOMAIN};
use crate::sip::Method;
use crate::store::DirectoryRow;

fn row(alias: &str, first: &str, last: &str) -> DirectoryRow {
    let ha1 = crate::pool::digest::ha1(
        crate::pool::digest::Algorithm::Md5,
        alias.as_bytes(),
        DOMAIN.as_bytes(),
        format!("{alias}-pw").as_bytes(),
    );
    DirectoryRow { ha1_md5: Some(ha1), ..crate::directory::search::tests::row(alias, first, last, "") }
}

fn view(rows: &[DirectoryRow]) -> View {
    View { users: Arc::new(Users::from_rows(rows, &[], DOMAIN)), index: Arc::new(Index::build(rows, DOMAIN)) }
}

fn message(rig: &mut Rig, from: &str, to: &str, body: &str) -> Vec<Action> {
    rig.authed(from, |n, creds| {
        format!(
            "MESSAGE sip:{to}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKd{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{from}@{DOMAIN}>;tag=d{n}\r\nTo: <sip:{to}@{DOMAIN}>\r\nCall-ID: d-{n}\r\n\
             CSeq: 1 MESSAGE\r\n{creds}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    })
}

#[test]
fn a_removed_person_is_refused_and_loses_their_bindings() {
    let mut rig = Rig::new();
    let v = view(&[row("alice", "Alice", "Lee"), row("bob", "Bob", "Leeds")]);
    rig.step(|c, now| c.on_directory(v, now));
    assert_eq!(only_response(&rig.register("bob")).status(), Some(200));
    assert_eq!(rig.core.sizes().bindings, 1);
    // Bob leaves the directory: his binding goes at once, and his next request is refused.
    let v = view(&[row("alice", "Alice", "Lee")]);
    let out = rig.step(|c, now| c.on_directory(v, now));
    assert_eq!(rig.core.sizes().bindings, 0);
    assert!(out.is_empty() || out.iter().all(|a| !matches!(a, Action::Send { .. })));
    let out = rig.input(&format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKx\r\n\
         From: <sip:bob@{DOMAIN}>;tag=x\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: x\r\nCSeq: 9 REGISTER\r\n\
         Authorization: Digest username=\"bob\", realm=\"{DOMAIN}\", nonce=\"n\", uri=\"sip:{DOMAIN}\", response=\"r\"\r\n\
         Contact: <sip:bob@192.0.2.1:5000>\r\nContent-Length: 0\r\n\r\n"
    ));
    assert_eq!(only_response(&out).status(), Some(403), "an unknown user's credentials are refused");
    // A MESSAGE to him: 404 from now on.
    let out = message(&mut rig, "alice", "bob", "hi");
    assert_eq!(only_response(&out).status(), Some(404));
}

#[test]
fn the_search_service_answers_with_a_message_back() {
    let mut rig = Rig::new();
    let v = view(&[row("alice", "Alice", "Lee"), row("bob", "Bob", "Leeds"), row("carol", "Carol", "Smith")]);
    rig.step(|c, now| c.on_directory(v, now));
    assert_eq!(only_response(&rig.register("alice")).status(), Some(200));
    let out = message(&mut rig, "alice", "directory", "lee");
    assert_eq!(only_response(&out).status(), Some(200));
    let answers = to_edge(&out);
    assert_eq!(answers.len(), 1, "one MESSAGE to alice's one device");
    let (_, m) = &answers[0];
    assert_eq!(m.method(), Some(&Method::Message));
    assert_eq!(m.request_uri(), Some(&b"sip:alice@192.0.2.1:5000;transport=tls"[..]));
    assert!(m.from().uri.host_eq(DOMAIN.as_bytes()));
    let body = String::from_utf8_lossy(m.body()).to_string();
    assert!(body.starts_with("2 found for \"lee\""), "{body}");
    assert!(body.contains("Alice Lee <sip:alice@example.com>, Engineer, +1 555 0100 [online]"), "{body}");
    assert!(body.contains("Bob Leeds <sip:bob@example.com>, Engineer, +1 555 0100 [offline]"), "{body}");
    assert!(!body.contains("Carol"));
    // The answer's response is absorbed, not counted as unmatched.
    let mut ok = BytesMut::new();
    sip::write_response(&mut ok, m, 200, "OK", Some(b"t"), &[], None);
    let before = rig.core.pstats.responses_unmatched.get();
    let out = rig.step(|c, now| {
        c.on_message(crate::pool::core::tests::conn(), Message::parse(ok.freeze(), &Default::default()).unwrap(), now)
    });
    assert!(out.is_empty());
    assert_eq!(rig.core.pstats.responses_unmatched.get(), before);
    // Fields, and a query nobody matches.
    let out = message(&mut rig, "alice", "directory", "first:carol last:smi");
    assert!(String::from_utf8_lossy(to_edge(&out)[0].1.body()).contains("Carol Smith"));
    let out = message(&mut rig, "alice", "directory", "zz");
    assert!(String::from_utf8_lossy(to_edge(&out)[0].1.body()).starts_with("No one found"));
}

#[test]
fn states_from_other_cores_are_gathered() {
    let mut states = HashMap::new();
    states.insert("bob@example.com".to_string(), "away");
    let hits = vec![Hit {
        alias: "bob".into(),
        display_name: "Bob".into(),
        uri: "sip:bob@example.com".into(),
        title: String::new(),
        phone: String::new(),
        department: String::new(),
    }];
    assert_eq!(render_answer("bo", &hits, &states), "1 found for \"bo\":\r\nBob <sip:bob@example.com> [away]\r\n");
    assert_eq!(
        render_answer("bo", &hits, &HashMap::new()),
        "1 found for \"bo\":\r\nBob <sip:bob@example.com> [unknown]\r\n"
    );
}

/// Two cores: the searcher's core asks the other for the states of the people it owns, and answers once it
/// has them; a core that never answers delays the answer by the gather timeout, not forever.
#[test]
fn presence_is_gathered_from_the_core_that_owns_it() {
    let rows: Vec<DirectoryRow> = (0..8).map(|i| row(&format!("p{i}"), "Pat", &format!("Lee{i}"))).collect();
    let owner = |a: &str| shard_for(format!("{a}@{DOMAIN}").as_bytes(), 2);
    let me = rows.iter().find(|r| owner(&r.alias) == 0).unwrap().alias.clone();
    let other = rows.iter().find(|r| owner(&r.alias) == 1).unwrap().alias.clone();
    let edge: std::net::SocketAddr = crate::pool::core::tests::EDGE.parse().unwrap();
    let settings = Arc::new(crate::pool::CoreSettings::with_defaults(
        DOMAIN,
        "127.0.0.1:5062".parse().unwrap(),
        vec![edge],
        Users::from_rows(&rows, &[], DOMAIN),
    ));
    let now = Now { secs: 1_700_000_000, mono: Instant::now() };
    let stats = Arc::new(crate::pool::PoolStats::default());
    let mut a = PoolCore::new(settings.clone(), 0, 2, stats.clone(), now);
    let mut b = PoolCore::new(settings, 1, 2, stats, now);
    for c in [&mut a, &mut b] {
        c.on_directory(view(&rows), now);
    }
    let binding = |alias: &str| crate::pool::core::tests::binding(alias, now.secs + 600);
    assert!(a.registrar.restore(&format!("{me}@{DOMAIN}"), vec![binding(&me)], now.secs));
    assert!(b.registrar.restore(&format!("{other}@{DOMAIN}"), vec![binding(&other)], now.secs));
    let req = format!(
        "MESSAGE sip:directory@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKq\r\n\
         From: <sip:{me}@{DOMAIN}>;tag=q\r\nTo: <sip:directory@{DOMAIN}>\r\nCall-ID: q\r\nCSeq: 1 MESSAGE\r\n\
         Content-Type: text/plain\r\nContent-Length: 3\r\n\r\nlee"
    );
    let msg = Message::parse(bytes::Bytes::from(req), &Default::default()).unwrap();
    let take = |c: &mut PoolCore| {
        let mut out = Vec::new();
        c.take_actions(&mut out);
        out
    };
    for round in 0..2 {
        a.directory_message(crate::pool::core::tests::conn(), &msg, &format!("{me}@{DOMAIN}"));
        let out = take(&mut a);
        assert_eq!(only_response(&out).status(), Some(200));
        assert!(to_edge(&out).is_empty(), "no answer before the other core's states");
        let ask = out.into_iter().find_map(|x| match x {
            Action::Mesh { core: 1, msg: PoolMsg::Directory(m) } => Some(m),
            _ => None,
        });
        let ask = ask.expect("a question to core 1");
        if round == 1 {
            // Core 1 never answers: the sweep after the timeout sends what core 0 knows.
            a.now = Now { secs: now.secs + 2, mono: now.mono + Duration::from_secs(2) };
            a.directory_sweep();
            let body = String::from_utf8_lossy(to_edge(&take(&mut a))[0].1.body()).to_string();
            assert!(body.contains(&format!("<sip:{other}@{DOMAIN}>, Engineer, +1 555 0100 [unknown]")), "{body}");
            break;
        }
        b.on_directory_msg(ask);
        let reply = take(&mut b).into_iter().find_map(|x| match x {
            Action::Mesh { core: 0, msg: PoolMsg::Directory(m) } => Some(m),
            _ => None,
        });
        a.on_directory_msg(reply.expect("states back to core 0"));
        let body = String::from_utf8_lossy(to_edge(&take(&mut a))[0].1.body()).to_string();
        assert!(body.contains(&format!("<sip:{other}@{DOMAIN}>, Engineer, +1 555 0100 [online]")), "{body}");
        assert!(body.contains(&format!("<sip:{me}@{DOMAIN}>, Engineer, +1 555 0100 [online]")), "{body}");
        assert!(body.contains("[offline]"), "the unregistered others: {body}");
    }
}

/// A person who leaves: their watchers hear them closed; the subscriptions they held end (noresource).
#[test]
fn watchers_see_a_removed_person_closed_and_their_own_subscriptions_end() {
    let mut rig = Rig::new();
    let all = [row("alice", "Alice", "Lee"), row("bob", "Bob", "Leeds")];
    rig.step(|c, now| c.on_directory(view(&all), now));
    rig.register("alice");
    rig.register("bob");
    let subscribe = |rig: &mut Rig, watcher: &str, target: &str| {
        let out = rig.authed(watcher, |n, creds| {
            format!(
                "SUBSCRIBE sip:{target}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKw{n}\r\n\
                 From: <sip:{watcher}@{DOMAIN}>;tag=w{n}\r\nTo: <sip:{target}@{DOMAIN}>\r\nCall-ID: w-{watcher}\r\n\
                 CSeq: {n} SUBSCRIBE\r\nContact: <sip:{watcher}@192.0.2.1:5000;transport=tls>\r\n\
                 Record-Route: <sip:127.0.0.1:5063;transport=tls;lr>\r\n\
                 Event: presence\r\nAccept: application/pidf+xml\r\n{creds}Expires: 600\r\nContent-Length: 0\r\n\r\n"
            )
        });
        let r = only_response(&out);
        assert_eq!(r.status(), Some(200), "{watcher} watches {target}: {}", String::from_utf8_lossy(r.bytes()));
    };
    subscribe(&mut rig, "alice", "bob");
    subscribe(&mut rig, "bob", "alice");
    assert_eq!(rig.core.sizes().subscriptions, 2);
    // Bob leaves: alice's subscription to him stays (he may come back) and tells her he is closed; his own
    // subscription to alice ends.
    let out = rig.step(|c, now| c.on_directory(view(&all[..1]), now));
    let notifies = to_edge(&out);
    let to_alice: Vec<_> =
        notifies.iter().filter(|(_, m)| m.request_uri().is_some_and(|u| u.starts_with(b"sip:alice@"))).collect();
    let to_bob: Vec<_> =
        notifies.iter().filter(|(_, m)| m.request_uri().is_some_and(|u| u.starts_with(b"sip:bob@"))).collect();
    assert!(
        !to_alice.is_empty()
            && to_alice.iter().all(|(_, m)| String::from_utf8_lossy(m.body()).contains("<basic>closed</basic>"))
    );
    assert_eq!(to_bob.len(), 1);
    let state = to_bob[0].1.header(HeaderName::SubscriptionState).unwrap();
    assert!(state.starts_with(b"terminated;reason=noresource"), "{}", String::from_utf8_lossy(state));
    assert_eq!(rig.core.sizes().subscriptions, 1);
}
