//! Presence bad input over a raw TLS client (after a real REGISTER through the edge): unknown event package,
//! malformed PIDF, stale SIP-If-Match, PUBLISH for someone else; each gets its standard answer and a counter.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::challenges::{authorization, headers, raw_register};
use crate::malformed::{uniq, Raw, Response};
use crate::support::Appliance;

#[allow(clippy::too_many_arguments)]
fn publish_req(
    raw: &Raw,
    user: &str,
    ruri: &str,
    cseq: u32,
    call_id: &str,
    expires: u32,
    extra: &str,
    body: &str,
) -> String {
    let d = &raw.app.domain;
    let p = raw.local_port;
    let u = uniq();
    let ctype = if body.is_empty() { String::new() } else { "Content-Type: application/pidf+xml\r\n".into() };
    format!(
        "PUBLISH {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{p};branch=z9hG4bK{u};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:{user}@{d}>;tag=p{call_id}\r\nTo: <{ruri}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} PUBLISH\r\n\
         Event: presence\r\nExpires: {expires}\r\n{extra}{ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends a PUBLISH, answers the 407 with digest credentials, returns the final response.
fn publish(raw: &mut Raw, user: &str, password: &str, ruri: &str, expires: u32, extra: &str, body: &str) -> Response {
    let call_id = format!("pub-{}", uniq());
    let req = publish_req(raw, user, ruri, 1, &call_id, expires, extra, body);
    raw.send_ok(req.as_bytes(), "PUBLISH");
    let r = raw.expect_response("PUBLISH without credentials");
    if r.code() != Some(407) {
        raw.app.fail(&format!("PUBLISH without credentials: expected 407, got {:?}\n{}", r.status_line(), r.head));
    }
    let chals = headers(&r, "Proxy-Authenticate");
    let chal = chals.iter().find(|c| c.contains("MD5")).or(chals.first()).copied().unwrap_or("");
    let Some(auth) = authorization(chal, user, password, "PUBLISH", ruri) else {
        raw.app.fail(&format!("cannot answer {chal:?}"));
    };
    let extra = format!("{extra}Proxy-Authorization: {auth}\r\n");
    let req = publish_req(raw, user, ruri, 2, &call_id, expires, &extra, body);
    raw.send_ok(req.as_bytes(), "PUBLISH with credentials");
    raw.expect_response("PUBLISH with credentials")
}

fn pool_metric(app: &Appliance, name: &str) -> u64 {
    let addr = SocketAddr::from(([127, 0, 0, 1], app.port_base + 4));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|e| app.fail(&format!("pool mgmt {addr}: {e}")));
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        // Counters are exposed as `<name>_total`.
        .filter_map(|l| {
            l.strip_prefix(name).map(|r| r.strip_prefix("_total").unwrap_or(r)).filter(|r| r.starts_with('{'))
        })
        .filter_map(|r| r.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

const PIDF_OK: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:x="urn:example:unknown" entity="sip:alice@example.com">
<tuple id="t1"><status><basic>open</basic></status><x:mood>fine</x:mood></tuple></presence>"#;

#[test]
fn presence_bad_input_gets_standard_answers_and_counters() {
    let app = Appliance::start("presence-bad-input");
    let alice = app.user("alice");
    let mut raw = Raw::connect(&app);
    raw_register(&app, &mut raw, &alice.alias, &alice.password);
    let d = app.domain.clone();
    let me = format!("sip:alice@{d}");

    // Unknown event package: 489 with Allow-Events, before any challenge.
    let u = uniq();
    let p = raw.local_port;
    let sub = format!(
        "SUBSCRIBE sip:bob@{d} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{p};branch=z9hG4bK{u};rport\r\nMax-Forwards: 70\r\n\
         From: <{me}>;tag=s{u}\r\nTo: <sip:bob@{d}>\r\nCall-ID: sub-{u}\r\nCSeq: 1 SUBSCRIBE\r\n\
         Contact: <sip:alice@127.0.0.1:{p};transport=tls>\r\nEvent: dialog\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    );
    raw.send_ok(sub.as_bytes(), "SUBSCRIBE Event: dialog");
    let r = raw.expect_response("SUBSCRIBE Event: dialog");
    if r.code() != Some(489) || !r.header("Allow-Events").is_some_and(|a| a.split(',').any(|p| p.trim() == "presence"))
    {
        app.fail(&format!("SUBSCRIBE for an unknown package: expected 489 + Allow-Events: presence\n{}", r.head));
    }

    // Malformed PIDF: 400.
    let r = publish(
        &mut raw,
        &alice.alias,
        &alice.password,
        &me,
        600,
        "",
        "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"><tuple>",
    );
    if r.code() != Some(400) {
        app.fail(&format!("PUBLISH with a malformed PIDF: expected 400\n{}", r.head));
    }

    // A good document (unknown namespace included): 200, SIP-ETag, default bounds.
    let r = publish(&mut raw, &alice.alias, &alice.password, &me, 600, "", PIDF_OK);
    let Some(etag) = r.header("SIP-ETag").filter(|_| r.code() == Some(200)).map(str::to_string) else {
        app.fail(&format!("PUBLISH: expected 200 with SIP-ETag\n{}", r.head));
    };
    if r.header("Expires") != Some("600") {
        app.fail(&format!("PUBLISH Expires: 600 granted as is\n{}", r.head));
    }
    // Refresh with the tag: a new tag.
    let r = publish(&mut raw, &alice.alias, &alice.password, &me, 600, &format!("SIP-If-Match: {etag}\r\n"), "");
    let new_tag = r.header("SIP-ETag").unwrap_or("").to_string();
    if r.code() != Some(200) || new_tag.is_empty() || new_tag == etag {
        app.fail(&format!("PUBLISH refresh: expected 200 with a new SIP-ETag\n{}", r.head));
    }
    // The old tag is stale: 412.
    let r = publish(&mut raw, &alice.alias, &alice.password, &me, 600, &format!("SIP-If-Match: {etag}\r\n"), "");
    if r.code() != Some(412) {
        app.fail(&format!("PUBLISH with a stale SIP-If-Match: expected 412\n{}", r.head));
    }
    // Too brief: 423 with Min-Expires.
    let r = publish(&mut raw, &alice.alias, &alice.password, &me, 5, &format!("SIP-If-Match: {new_tag}\r\n"), "");
    if r.code() != Some(423) || r.header("Min-Expires").is_none() {
        app.fail(&format!("PUBLISH Expires: 5: expected 423 with Min-Expires\n{}", r.head));
    }
    // Removal with Expires: 0.
    let r = publish(&mut raw, &alice.alias, &alice.password, &me, 0, &format!("SIP-If-Match: {new_tag}\r\n"), "");
    if r.code() != Some(200) {
        app.fail(&format!("PUBLISH Expires: 0 (removal): expected 200\n{}", r.head));
    }
    // Someone else's presentity: 403.
    let r = publish(&mut raw, &alice.alias, &alice.password, &format!("sip:bob@{d}"), 600, "", PIDF_OK);
    if r.code() != Some(403) {
        app.fail(&format!("PUBLISH for bob by alice: expected 403\n{}", r.head));
    }

    for (name, min) in [
        ("parapet_pool_bad_event", 1),
        ("parapet_pool_pidf_malformed", 1),
        ("parapet_pool_etag_mismatches", 1),
        ("parapet_pool_publish_refused", 1),
    ] {
        let v = pool_metric(&app, name);
        if v < min {
            app.fail(&format!("{name} = {v}, expected at least {min}"));
        }
    }
}

/// A 200 answering a request read from the raw connection (Via, From, To, Call-ID, CSeq copied).
pub(crate) fn ok_to(req: &Response) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for l in req.head.split("\r\n").skip(1) {
        let name = l.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
        if matches!(name.as_str(), "via" | "v" | "from" | "f" | "to" | "t" | "call-id" | "i" | "cseq") {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// Reads messages until a NOTIFY arrives (answering it), returns it; responses met on the way go to `seen`.
pub(crate) fn next_notify(raw: &mut Raw, seen: &mut Vec<Response>, what: &str) -> Response {
    for _ in 0..8 {
        let m = raw.expect_response(what);
        if m.status_line().starts_with("NOTIFY ") {
            let ok = ok_to(&m);
            raw.send_ok(ok.as_bytes(), "200 to NOTIFY");
            return m;
        }
        seen.push(m);
    }
    raw.app.fail(&format!("{what}: no NOTIFY among 8 messages"));
}

/// alice subscribes to her own watcher information (RFC 3857); when bob starts watching her, she is told.
#[test]
fn presence_winfo_tells_the_presentity_who_watches() {
    let app = Appliance::start("presence-winfo");
    let alice = app.user("alice");
    let mut raw = Raw::connect(&app);
    raw_register(&app, &mut raw, &alice.alias, &alice.password);
    let d = app.domain.clone();
    let me = format!("sip:alice@{d}");
    let p = raw.local_port;
    let call_id = format!("winfo-{}", uniq());
    let build = |cseq: u32, extra: &str| {
        let u = uniq();
        format!(
            "SUBSCRIBE {me} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{p};branch=z9hG4bK{u};rport\r\nMax-Forwards: 70\r\n\
             From: <{me}>;tag=w1\r\nTo: <{me}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} SUBSCRIBE\r\n\
             Contact: <sip:alice@127.0.0.1:{p};transport=tls>\r\nEvent: presence.winfo\r\n\
             Accept: application/watcherinfo+xml\r\nExpires: 600\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    };
    raw.send_ok(build(1, "").as_bytes(), "winfo SUBSCRIBE");
    let r = raw.expect_response("winfo SUBSCRIBE without credentials");
    let chals = headers(&r, "Proxy-Authenticate");
    let chal = chals.iter().find(|c| c.contains("MD5")).or(chals.first()).copied().unwrap_or("");
    let Some(auth) = authorization(chal, &alice.alias, &alice.password, "SUBSCRIBE", &me) else {
        app.fail(&format!("winfo SUBSCRIBE: no usable challenge\n{}", r.head));
    };
    raw.send_ok(build(2, &format!("Proxy-Authorization: {auth}\r\n")).as_bytes(), "winfo SUBSCRIBE with credentials");
    let mut seen = Vec::new();
    let n = next_notify(&mut raw, &mut seen, "first winfo NOTIFY");
    let body = String::from_utf8_lossy(&n.body).to_string();
    if n.header("Event") != Some("presence.winfo") || !body.contains("version=\"0\"") || body.contains("<watcher ") {
        app.fail(&format!("first winfo NOTIFY: expected an empty list, version 0\n{}\n{body}", n.head));
    }
    while seen.is_empty() {
        seen.push(raw.expect_response("200 to the winfo SUBSCRIBE"));
    }
    if seen[0].code() != Some(200) || seen[0].header("Expires").is_none() {
        app.fail(&format!("winfo SUBSCRIBE: expected 200 with Expires\n{}", seen[0].head));
    }

    let bob_u = app.user("bob");
    let mut bob = crate::pjsua::Agent::spawn(&app, "bob", &bob_u.alias, &bob_u.password);
    let ev = bob.register();
    bob.check(ev.int("code") == Some(200), || format!("bob REGISTER: {ev}"));
    bob.send(&format!(r#"{{"cmd":"subscribe","uri":"{me}"}}"#));
    let n = next_notify(&mut raw, &mut seen, "winfo NOTIFY after bob subscribed");
    let body = String::from_utf8_lossy(&n.body).to_string();
    if !body.contains(&format!(">sip:bob@{d}</watcher>")) || !body.contains("status=\"active\"") {
        app.fail(&format!("winfo NOTIFY: expected bob as an active watcher\n{}\n{body}", n.head));
    }
}

/// An authenticated SUBSCRIBE of `user`'s contact list on a raw connection (sent twice: first for the challenge,
/// at CSeq `cseq` then `cseq + 1`), with `extra` header lines; the first message that follows (a response, or a
/// NOTIFY that overtook it).
pub(crate) fn subscribe_list(
    raw: &mut Raw,
    user: &crate::support::User,
    call_id: &str,
    cseq: u32,
    extra: &str,
) -> Response {
    let d = raw.app.domain.clone();
    let me = format!("sip:{}@{d}", user.alias);
    let list = format!("sip:{}+contacts@{d}", user.alias);
    let p = raw.local_port;
    let build = |cseq: u32, extra: &str| {
        let u = uniq();
        format!(
            "SUBSCRIBE {list} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{p};branch=z9hG4bK{u};rport\r\nMax-Forwards: 70\r\n\
             From: <{me}>;tag=l1\r\nTo: <{list}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} SUBSCRIBE\r\n\
             Contact: <sip:{}@127.0.0.1:{p};transport=tls>\r\nEvent: presence\r\n\
             Accept: application/pidf+xml, application/rlmi+xml, multipart/related\r\nExpires: 600\r\n{extra}\
             Content-Length: 0\r\n\r\n",
            user.alias
        )
    };
    raw.send_ok(build(cseq, extra).as_bytes(), "list SUBSCRIBE");
    let r = raw.expect_response("list SUBSCRIBE without credentials");
    let chals = headers(&r, "Proxy-Authenticate");
    let chal = chals.iter().find(|c| c.contains("MD5")).or(chals.first()).copied().unwrap_or("");
    let Some(auth) = authorization(chal, &user.alias, &user.password, "SUBSCRIBE", &list) else {
        raw.app.fail(&format!("list SUBSCRIBE: no usable challenge\n{}", r.head));
    };
    raw.send_ok(build(cseq + 1, &format!("{extra}Proxy-Authorization: {auth}\r\n")).as_bytes(), "list SUBSCRIBE");
    raw.expect_response("list SUBSCRIBE with credentials")
}

/// `parapet contacts` against the appliance's pool config.
pub(crate) fn contacts(app: &Appliance, args: &[&str]) {
    let mut cmd = std::process::Command::new(crate::support::parapet_bin());
    cmd.arg("contacts").arg("--config").arg(app.data_dir.join("pool.toml")).args(args);
    if let Err(e) = crate::support::run_bounded(&mut cmd, Duration::from_secs(20)) {
        app.fail(&format!("parapet contacts {args:?}: {e}"));
    }
}

/// alice's server-stored contact list (bob, carol) in one subscription (RFC 4662): a multipart NOTIFY with an
/// RLMI document and each contact's state; without `Supported: eventlist` the list is refused with 421.
#[test]
fn presence_resource_list_returns_every_contact() {
    let app = Appliance::start("presence-rls");
    contacts(&app, &["add", "alice", "bob", "--name", "Bob", "--group", "Work"]);
    contacts(&app, &["add", "alice", "carol", "--name", "Carol"]);
    let bob_u = app.user("bob");
    let mut bob = crate::pjsua::Agent::spawn(&app, "bob", &bob_u.alias, &bob_u.password);
    let ev = bob.register();
    bob.check(ev.int("code") == Some(200), || format!("bob REGISTER: {ev}"));
    bob.send(r#"{"cmd":"publish","status":"busy","note":"In the lab"}"#);

    let alice = app.user("alice");
    let mut raw = Raw::connect(&app);
    raw_register(&app, &mut raw, &alice.alias, &alice.password);
    let d = app.domain.clone();
    let call_id = format!("rls-{}", uniq());
    let authed = |raw: &mut Raw, cseq: u32, extra: &str| subscribe_list(raw, &alice, &call_id, cseq, extra);
    let r = authed(&mut raw, 1, "");
    if r.code() != Some(421) {
        app.fail(&format!("list SUBSCRIBE without Supported: eventlist: expected 421\n{}", r.head));
    }
    let mut seen = Vec::new();
    let first = authed(&mut raw, 3, "Supported: eventlist\r\n");
    if first.status_line().starts_with("NOTIFY ") {
        raw.send_ok(ok_to(&first).as_bytes(), "200 to NOTIFY");
    } else {
        seen.push(first);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let n = next_notify(&mut raw, &mut seen, "list NOTIFY");
        let body = String::from_utf8_lossy(&n.body).to_string();
        let ct = n.header("Content-Type").unwrap_or("").to_string();
        if !ct.starts_with("multipart/related") || !body.contains("application/rlmi+xml") {
            app.fail(&format!("list NOTIFY: expected multipart/related with RLMI\n{}\n{body}", n.head));
        }
        let complete = body.contains(&format!("<resource uri=\"sip:bob@{d}\"><name>Bob</name>"))
            && body.contains(&format!("<resource uri=\"sip:carol@{d}\"><name>Carol</name>"))
            && body.contains("In the lab")
            && body.contains("<basic>closed</basic>")
            && !body.contains("state=\"pending\"");
        if complete {
            break;
        }
        if std::time::Instant::now() >= deadline {
            app.fail(&format!("no list NOTIFY with bob busy (In the lab) and carol closed; last:\n{}\n{body}", n.head));
        }
    }
    let ok = seen.iter().find(|r| r.code().is_some());
    if !ok.is_some_and(|r| r.code() == Some(200) && r.header("Require") == Some("eventlist")) {
        app.fail(&format!("list SUBSCRIBE: expected 200 with Require: eventlist, got {:?}", ok.map(|r| &r.head)));
    }

    // The list follows the store: carol removed (by the CLI, another process), the subscriber is told.
    contacts(&app, &["remove", "alice", "carol"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = next_notify(&mut raw, &mut seen, "list NOTIFY after a removal");
        let body = String::from_utf8_lossy(&n.body).to_string();
        if !body.contains(&format!("sip:carol@{d}")) && body.contains("In the lab") {
            break;
        }
        if std::time::Instant::now() >= deadline {
            app.fail(&format!("carol still in the list NOTIFY after her removal:\n{body}"));
        }
    }
}
