//! Federation through a clearinghouse: three organizations and a hub, each a real appliance (edge + pool
//! processes) with its own development CA, all mutual TLS on loopback.
//!
//! example.com and partner.test are direct partners of each other and members of hub.test
//! (`[edge.federation] clearinghouse = true`); third.test is a member of the hub only. Every member lists the hub
//! as a clearinghouse for any domain. Proves:
//! - alice@example.com and carol@third.test exchange MESSAGEs both ways through the hub, and carol reaches
//!   bob@partner.test, with the original From arriving at each end;
//! - example.com still reaches partner.test directly (the hub relays nothing for it);
//! - a member speaking for another member's domain through the hub gets 403 (counted at the hub); a request routed
//!   back to the member it came from gets 482; a domain no member serves gets 404;
//! - the hub counted its relays, and its own pool saw none of it; the hub's own users still reach members.

use std::path::{Path, PathBuf};
use std::thread;

use crate::federation::{exchange, im, message_from, mtls_config};
use crate::federation_presence::registered;
use crate::pjsua::quote;
use crate::presence_pjsip::wait_state;
use crate::rawsip::{Metrics, Ua};
use crate::support::Appliance;

/// Port (offset from the port base) of each edge's federation listener.
const FED_PORT: u16 = 5;

fn fed_addr(app: &Appliance) -> String {
    format!("127.0.0.1:{}", app.port_base + FED_PORT)
}

/// One file with the CAs of every peer `me` talks to over federation.
fn ca_bundle(me: &Appliance, peers: &[&Appliance]) -> PathBuf {
    let mut pem = String::new();
    for p in peers {
        pem += &std::fs::read_to_string(&p.ca).unwrap_or_else(|e| me.fail(&format!("read {}: {e}", p.ca.display())));
    }
    let path = me.data_dir.join("federation-ca.pem");
    std::fs::write(&path, pem).unwrap_or_else(|e| me.fail(&format!("write {}: {e}", path.display())));
    path
}

fn head(me: &Appliance, ca: &Path, hub: bool) -> String {
    format!("[edge.federation]\nlisten = \"{}\"\nca = \"{}\"\nclearinghouse = {hub}\n\n", fed_addr(me), ca.display())
}

fn partner(peer: &Appliance) -> String {
    format!(
        "[[edge.federation.partners]]\ndomain = \"{d}\"\ncert_name = \"edge.{d}\"\naddr = \"{}\"\n",
        fed_addr(peer),
        d = peer.domain,
    )
}

fn via_hub(hub: &Appliance) -> String {
    format!(
        "[[edge.federation.clearinghouses]]\nname = \"edge.{}\"\naddr = \"{}\"\ndomains = [\"*\"]\n",
        hub.domain,
        fed_addr(hub)
    )
}

#[test]
fn three_organizations_talk_through_a_clearinghouse() {
    // `parapet up` once per organization (data dir, its own CA, users), in parallel: this is most of the time.
    let apps: Vec<Appliance> = thread::scope(|s| {
        let start =
            |name: &'static str, domain: &'static str| s.spawn(move || Appliance::prepare(name, &["--domain", domain]));
        let handles = [
            start("fedhub-example", "example.com"),
            start("fedhub-partner", "partner.test"),
            start("fedhub-third", "third.test"),
            start("fedhub-hub", "hub.test"),
        ];
        handles.into_iter().map(|h| h.join().expect("appliance prepared")).collect()
    });
    let [mut ex, mut pt, mut th, mut hub]: [Appliance; 4] = apps.try_into().unwrap_or_else(|_| panic!("four"));

    let ca_ex = ca_bundle(&ex, &[&pt, &hub]);
    let ca_pt = ca_bundle(&pt, &[&ex, &hub]);
    let ca_th = ca_bundle(&th, &[&hub]);
    let ca_hub = ca_bundle(&hub, &[&ex, &pt, &th]);
    let cfg_ex = head(&ex, &ca_ex, false) + &partner(&pt) + &via_hub(&hub);
    let cfg_pt = head(&pt, &ca_pt, false) + &partner(&ex) + &via_hub(&hub);
    let cfg_th = head(&th, &ca_th, false) + &via_hub(&hub);
    let cfg_hub = head(&hub, &ca_hub, true) + &partner(&ex) + &partner(&pt) + &partner(&th);
    for (app, cfg) in [(&mut hub, &cfg_hub), (&mut ex, &cfg_ex), (&mut pt, &cfg_pt), (&mut th, &cfg_th)] {
        let fed = app.port_base + FED_PORT;
        app.run_roles(cfg, &[fed]);
    }

    let mut alice = Ua::connect_ok(&ex, "alice", None);
    alice.register_ok(&ex, "alice");
    let mut bob = Ua::connect_ok(&pt, "bob", None);
    bob.register_ok(&pt, "bob");
    let mut carol = Ua::connect_ok(&th, "carol", None);
    carol.register_ok(&th, "carol");

    // Through the hub, both ways, and on to the other member.
    let mut carol = im(&mut alice, carol, &ex, "carol@third.test", "hello third, via the hub");
    let mut alice = im(&mut carol, alice, &th, "alice@example.com", "hello example, via the hub");
    let bob = im(&mut carol, bob, &th, "bob@partner.test", "hello partner, via the hub");
    let relayed = Metrics::edge(&hub).must(&hub, "parapet_edge_federation_relayed");
    assert_eq!(relayed, 3, "the hub relayed each of the three MESSAGEs once");
    assert!(Metrics::edge(&th).must(&th, "parapet_edge_requests_to_partners") >= 2, "third.test sent via its edge");

    // Direct partners stay direct: the hub sees nothing of example.com ↔ partner.test.
    let _bob = im(&mut alice, bob, &ex, "bob@partner.test", "hello partner, directly");
    assert_eq!(Metrics::edge(&hub).must(&hub, "parapet_edge_federation_relayed"), relayed, "direct route kept");

    // third.test's own edge certificate, talking to the hub directly.
    let pki_th = th.data_dir.join("pki");
    let as_third = mtls_config(&hub.ca, &pki_th.join("edge.pem"), &pki_th.join("edge.key"));
    let fed_hub = hub.port_base + FED_PORT;
    let ask = |from: &str, to: &str| exchange(as_third.clone(), "edge.hub.test", fed_hub, &message_from(from, to));
    let spoofed_before = Metrics::edge(&hub).must(&hub, "parapet_edge_federation_spoofed_from");
    let refused_before = Metrics::edge(&hub).must(&hub, "parapet_edge_federation_refused");
    // A member speaking for another member's domain.
    match ask("eve@partner.test", "alice@example.com") {
        Ok(r) if r.starts_with("SIP/2.0 403") => {}
        other => hub.fail(&format!("member spoofing partner.test through the hub: expected 403, got {other:?}")),
    }
    match ask("eve@example.com", "bob@partner.test") {
        Ok(r) if r.starts_with("SIP/2.0 403") => {}
        other => hub.fail(&format!("member spoofing example.com through the hub: expected 403, got {other:?}")),
    }
    // Back to the member it came from.
    match ask("carol@third.test", "bob@third.test") {
        Ok(r) if r.starts_with("SIP/2.0 482") => {}
        other => hub.fail(&format!("request routed back to its sender: expected 482, got {other:?}")),
    }
    // No member serves it.
    match ask("carol@third.test", "dave@nowhere.test") {
        Ok(r) if r.starts_with("SIP/2.0 404") => {}
        other => hub.fail(&format!("unknown domain through the hub: expected 404, got {other:?}")),
    }
    let hub_edge = Metrics::edge(&hub);
    assert_eq!(hub_edge.must(&hub, "parapet_edge_federation_spoofed_from"), spoofed_before + 2, "spoofs counted");
    assert_eq!(hub_edge.must(&hub, "parapet_edge_federation_refused"), refused_before + 2, "loop, no route");
    assert_eq!(hub_edge.must(&hub, "parapet_edge_federation_relayed"), relayed, "refused requests not relayed");
    assert!(hub_edge.must(&hub, "parapet_edge_requests_from_partners") >= 7, "every member request seen");

    // None of it touched the hub's pool (its own users would): nothing federated reached it, nothing left it.
    let hub_pool = Metrics::pool(&hub);
    assert_eq!(hub_pool.must(&hub, "parapet_pool_federated_requests"), 0, "hub pool saw a member's request");
    assert_eq!(hub_pool.must(&hub, "parapet_pool_federated_out"), 0, "hub pool routed a member's request");
    assert_eq!(hub_edge.must(&hub, "parapet_edge_requests_to_partners"), 0, "nothing from the hub's pool");
    // The members' pools did see the federated requests they served.
    assert!(Metrics::pool(&th).must(&th, "parapet_pool_federated_requests") >= 1);

    // The hub's own users are an organization like any other: its pool routes them out, nothing is relayed.
    let mut hub_alice = Ua::connect_ok(&hub, "alice", None);
    hub_alice.register_ok(&hub, "alice");
    let _carol = im(&mut hub_alice, carol, &hub, "carol@third.test", "hello third, from the hub's own");
    assert_eq!(Metrics::pool(&hub).must(&hub, "parapet_pool_federated_out"), 1, "the hub's user went out its pool");
    assert_eq!(Metrics::edge(&hub).must(&hub, "parapet_edge_federation_relayed"), relayed, "not a relay");

    // Presence through the hub, both ways, with pjsip: the dialogs cross the hub by its Record-Route.
    let mut p_alice = registered(&ex, "alice");
    let mut p_carol = registered(&th, "carol");
    let (alice_uri, carol_uri) = ("sip:alice@example.com", "sip:carol@third.test");
    p_alice.send(&format!(r#"{{"cmd":"subscribe","uri":{}}}"#, quote(carol_uri)));
    wait_state(&mut p_alice, carol_uri, "offline", "", None);
    p_carol.send(r#"{"cmd":"publish","status":"busy","note":"Reached through the hub"}"#);
    wait_state(&mut p_alice, carol_uri, "online", "busy", Some("Reached through the hub"));
    p_carol.send(&format!(r#"{{"cmd":"subscribe","uri":{}}}"#, quote(alice_uri)));
    wait_state(&mut p_carol, alice_uri, "offline", "", None);
    p_alice.send(r#"{"cmd":"publish","status":"online","note":"Hello hub"}"#);
    wait_state(&mut p_carol, alice_uri, "online", "", Some("Hello hub"));
    assert!(Metrics::edge(&hub).must(&hub, "parapet_edge_federation_relayed") > relayed + 4, "dialogs relayed");
    assert_eq!(Metrics::pool(&hub).must(&hub, "parapet_pool_federated_requests"), 0, "hub pool kept out");
}
