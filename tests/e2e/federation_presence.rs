//! Presence across organizations with a real SIP stack: pjsip agents at example.com and partner.test (two
//! appliances, separate CAs, direct partners over mutual TLS) watch each other. Proves the whole dialog path:
//! the SUBSCRIBE goes user → edge → pool → edge → partner's edge → partner's pool; the partner's NOTIFYs come back
//! by the Record-Routes the edges put in (straight to the watcher's flow), and in-dialog requests (unsubscribe)
//! find the subscription on the other side.

use std::time::{Duration, Instant};

use crate::challenges::{authorization, headers, raw_register};
use crate::federation::{snippet, FED_PORT};
use crate::malformed::{uniq, Raw, Response};
use crate::pjsua::{quote, Agent};
use crate::presence_pjsip::wait_state;
use crate::presence_raw::{contacts, next_notify};
use crate::rawsip::Metrics;
use crate::support::Appliance;

/// How long a counter may take to show what a NOTIFY did.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn registered(app: &Appliance, user: &str) -> Agent {
    let u = app.user(user);
    let mut a = Agent::spawn(app, &format!("{user}-{}", app.domain), &u.alias, &u.password);
    let ev = a.register();
    a.check(ev.int("code") == Some(200), || format!("{user}@{} REGISTER: {ev}", app.domain));
    a
}

fn wait_metric(app: &Appliance, pool: bool, name: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + NOTIFY_TIMEOUT;
    loop {
        let m = if pool { Metrics::pool(app) } else { Metrics::edge(app) };
        let v = m.get(name).unwrap_or(0);
        if v >= at_least || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pjsip_presence_between_two_organizations_both_ways() {
    let mut a = Appliance::prepare("fedp-example", &[]);
    let mut b = Appliance::prepare("fedp-partner", &["--domain", "partner.test"]);
    let (sa, sb) = (snippet(&b, "partner.test", &a), snippet(&a, "example.com", &b));
    a.run_roles(&sa, &[a.port_base + FED_PORT]);
    b.run_roles(&sb, &[b.port_base + FED_PORT]);

    let mut alice = registered(&a, "alice");
    let mut bob = registered(&b, "bob");
    let (alice_uri, bob_uri) = ("sip:alice@example.com", "sip:bob@partner.test");

    // alice watches bob across the federation: offline first, then each state he publishes at partner.test.
    alice.send(&format!(r#"{{"cmd":"subscribe","uri":{}}}"#, quote(bob_uri)));
    wait_state(&mut alice, bob_uri, "offline", "", None);
    bob.send(&format!(r#"{{"cmd":"publish","status":"busy","note":{}}}"#, quote("In a meeting at partner")));
    wait_state(&mut alice, bob_uri, "online", "busy", Some("In a meeting at partner"));
    bob.send(r#"{"cmd":"publish","status":"online","note":"Back"}"#);
    wait_state(&mut alice, bob_uri, "online", "", Some("Back"));

    // And the other way: bob watches alice at example.com.
    bob.send(&format!(r#"{{"cmd":"subscribe","uri":{}}}"#, quote(alice_uri)));
    wait_state(&mut bob, alice_uri, "offline", "", None);
    alice.send(r#"{"cmd":"publish","status":"online","note":"At my desk"}"#);
    wait_state(&mut bob, alice_uri, "online", "", Some("At my desk"));

    // Each side's NOTIFYs reached the watcher's flow by the edge's Record-Route, not through the pool.
    assert!(wait_metric(&a, false, "parapet_edge_federation_in_dialog", 3) >= 3, "NOTIFYs to alice via her flow");
    assert!(wait_metric(&b, false, "parapet_edge_federation_in_dialog", 2) >= 2, "NOTIFYs to bob via his flow");
    assert!(Metrics::pool(&a).must(&a, "parapet_pool_subscriptions_federated_out") >= 1);

    // An in-dialog request from alice (unsubscribe) finds the subscription at partner.test.
    let before = Metrics::pool(&b).get("parapet_pool_unsubscribes").unwrap_or(0);
    alice.send(&format!(r#"{{"cmd":"unsubscribe","uri":{}}}"#, quote(bob_uri)));
    let after = wait_metric(&b, true, "parapet_pool_unsubscribes", before + 1);
    if after <= before {
        b.fail("alice's unsubscribe did not reach partner.test's pool");
    }

    // bob in alice's server-stored contact list: her one list subscription (RFC 4662) shows his state, which
    // example.com's pool subscribes to at partner.test on her behalf, and follows his changes.
    contacts(&a, &["add", "alice", "bob@partner.test", "--name", "Bob at partner"]);
    let (mut raw, mut seen) = list_subscription(&a, "alice");
    wait_list(&a, &mut raw, &mut seen, &["<resource uri=\"sip:bob@partner.test\"><name>Bob at partner</name>", "Back"]);
    bob.send(r#"{"cmd":"publish","status":"busy","note":"Seen through the list"}"#);
    wait_list(&a, &mut raw, &mut seen, &["Seen through the list"]);
    assert!(Metrics::pool(&a).must(&a, "parapet_pool_backend_notifies") >= 2, "the partner's NOTIFYs reached the list");
    assert!(wait_metric(&a, true, "parapet_pool_backend_subscriptions_now", 1) >= 1, "one back-end subscription held");

    // bob leaves the list: example.com's pool ends its subscription at partner.test (in the dialog, Expires: 0).
    let before = Metrics::pool(&b).get("parapet_pool_unsubscribes").unwrap_or(0);
    contacts(&a, &["remove", "alice", "bob@partner.test"]);
    if wait_metric(&b, true, "parapet_pool_unsubscribes", before + 1) <= before {
        b.fail("the list's subscription to bob was not ended at partner.test when he left alice's list");
    }
}

/// `alias` subscribes to its contact list (with credentials and `Supported: eventlist`) over a raw connection.
fn list_subscription<'a>(app: &'a Appliance, alias: &str) -> (Raw<'a>, Vec<Response>) {
    let user = app.user(alias);
    let mut raw = Raw::connect(app);
    raw_register(app, &mut raw, &user.alias, &user.password);
    let d = &app.domain;
    let (me, list, p, call_id) =
        (format!("sip:{alias}@{d}"), format!("sip:{alias}+contacts@{d}"), raw.local_port, uniq());
    let build = |cseq: u32, auth: &str| {
        let u = uniq();
        format!(
            "SUBSCRIBE {list} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{p};branch=z9hG4bK{u};rport\r\nMax-Forwards: 70\r\n\
             From: <{me}>;tag=l1\r\nTo: <{list}>\r\nCall-ID: fl-{call_id}\r\nCSeq: {cseq} SUBSCRIBE\r\n\
             Contact: <sip:{alias}@127.0.0.1:{p};transport=tls>\r\nEvent: presence\r\nSupported: eventlist\r\n\
             Accept: application/pidf+xml, application/rlmi+xml, multipart/related\r\nExpires: 600\r\n{auth}\
             Content-Length: 0\r\n\r\n"
        )
    };
    raw.send_ok(build(1, "").as_bytes(), "list SUBSCRIBE");
    let r = raw.expect_response("list SUBSCRIBE without credentials");
    let chals = headers(&r, "Proxy-Authenticate");
    let chal = chals.iter().find(|c| c.contains("MD5")).or(chals.first()).copied().unwrap_or("");
    let Some(auth) = authorization(chal, &user.alias, &user.password, "SUBSCRIBE", &list) else {
        app.fail(&format!("list SUBSCRIBE: no usable challenge\n{}", r.head));
    };
    raw.send_ok(build(2, &format!("Proxy-Authorization: {auth}\r\n")).as_bytes(), "list SUBSCRIBE");
    (raw, Vec::new())
}

/// Reads the list's NOTIFYs until one carries every piece of `want` (15 s at most).
fn wait_list(app: &Appliance, raw: &mut Raw<'_>, seen: &mut Vec<Response>, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = next_notify(raw, seen, "list NOTIFY");
        let body = String::from_utf8_lossy(&n.body).to_string();
        if want.iter().all(|w| body.contains(w)) {
            return;
        }
        if Instant::now() >= deadline {
            app.fail(&format!("no list NOTIFY with {want:?}; last:\n{}\n{body}", n.head));
        }
    }
}
