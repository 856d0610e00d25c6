//! Presence across organizations with a real SIP stack: pjsip agents at example.com and partner.test (two
//! appliances, separate CAs, direct partners over mutual TLS) watch each other. Proves the whole dialog path:
//! the SUBSCRIBE goes user → edge → pool → edge → partner's edge → partner's pool; the partner's NOTIFYs come back
//! by the Record-Routes the edges put in (straight to the watcher's flow), and in-dialog requests (unsubscribe)
//! find the subscription on the other side.

use std::time::{Duration, Instant};

use crate::federation::{snippet, FED_PORT};
use crate::pjsua::{quote, Agent};
use crate::presence_pjsip::wait_state;
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
}
