//! The directory in the pool core, with values: a view replaced under a registered user, and the search service.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
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
