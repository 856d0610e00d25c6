//! Federation by DNS names (issue 16), against a real DNS server (dnsmasq on loopback, see `support_dns`) serving
//! the SRV and A records of two organizations, each a real appliance (edge + pool processes):
//! - a partner configured by name (`addr = "partner.test"`) is reached through its `_sipfederationtls._tcp` SRV
//!   record; of two targets, the second priority is used while the first is down;
//! - its record changed to another port: once the TTL has passed, the next connection goes there;
//! - the DNS server stopped: established federation continues, a new connection uses the last good answer, and
//!   the failure is counted and logged once per name, not per request;
//! - `parapet partner add` against a running edge: federation with the new partner works without a restart.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use crate::federation::{im, FED_PORT};
use crate::rawsip::{http_get, text, wait_edge_metric, Metrics, Ua, ANSWER_TIMEOUT};
use crate::support::{free_port_base, parapet_bin, run_bounded, Appliance};
use crate::support_dns::{a, srv, Dnsmasq, Forwarder};

const ZONES: [&str; 2] = ["partner.test", "example.com"];

/// `[edge.federation]` naming one partner by `addr`, resolved through our DNS server.
fn snippet(me: &Appliance, peer: &Appliance, peer_domain: &str, addr: &str, dns_port: u16) -> String {
    format!(
        "[edge.federation]\nlisten = \"127.0.0.1:{}\"\nca = \"{}\"\nresolver = \"127.0.0.1:{dns_port}\"\n\
         dns_ttl_min_secs = 1\n\n\
         [[edge.federation.partners]]\ndomain = \"{peer_domain}\"\ncert_name = \"edge.{peer_domain}\"\naddr = \"{addr}\"\n",
        me.port_base + FED_PORT,
        peer.ca.display(),
    )
}

/// A MESSAGE from `sender` to `to` with `body`, answered by `receiver` when it arrives: Ok when this very message
/// was delivered and answered 200. Requests of earlier attempts that arrive late are answered and skipped. Unlike
/// `im`, a failure is returned (the caller retries until a deadline).
fn try_im(sender: &mut Ua, receiver: Ua, to: &str, body: &str) -> (Ua, Result<(), String>) {
    let want = body.as_bytes().to_vec();
    let answering = thread::spawn(move || {
        let mut receiver = receiver;
        let deadline = Instant::now() + ANSWER_TIMEOUT + Duration::from_secs(1);
        let mut arrived = false;
        while let Ok(req) = receiver.next_request(deadline.saturating_duration_since(Instant::now())) {
            receiver.answer_with(&req, 200, "OK", |s| s);
            if req.body() == want.as_slice() {
                arrived = true;
                break;
            }
        }
        (receiver, arrived)
    });
    let uri = format!("sip:{to}");
    let r = sender.transaction("MESSAGE", &uri, &uri, &[], body.as_bytes());
    let (receiver, arrived) = answering.join().expect("receiver thread");
    let result = match r {
        Ok((_, resp)) if resp.status() == Some(200) && arrived => Ok(()),
        Ok((_, resp)) => Err(format!("got\n{}", text(&resp))),
        Err(e) => Err(e),
    };
    (receiver, result)
}

/// `try_im` until it works (bounded): the first attempts may meet a connection being remade.
fn im_eventually(app: &Appliance, sender: &mut Ua, mut receiver: Ua, to: &str, why: &str) -> Ua {
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut last = String::new();
    let mut attempt = 0;
    while Instant::now() < deadline {
        attempt += 1;
        let (r, result) = try_im(sender, receiver, to, &format!("{why} #{attempt}"));
        receiver = r;
        match result {
            Ok(()) => return receiver,
            Err(e) => last = e,
        }
        thread::sleep(Duration::from_millis(300));
    }
    app.fail(&format!("{why}: MESSAGE to {to} never delivered; last: {last}"))
}

/// The federation SRV record (one target, `edge.<domain>`) and the A record of each organization's edge.
fn records(orgs: &[(&str, u16)]) -> Vec<String> {
    let mut v: Vec<String> = orgs
        .iter()
        .map(|(d, port)| srv(&format!("_sipfederationtls._tcp.{d}"), &format!("edge.{d}"), *port, 10, 0))
        .collect();
    v.extend(orgs.iter().map(|(d, _)| a(&format!("edge.{d}"))));
    v
}

/// example.com and `other` (prepared, not yet running) with a DNS server publishing each one's federation SRV
/// record (zones: both domains and `zones`): (example.com, other, the DNS port, the server).
fn org_pair(label: &str, other: &str, zones: &[&str]) -> (Appliance, Appliance, u16, Dnsmasq) {
    let ex = Appliance::prepare(&format!("{label}-example"), &[]);
    let o = Appliance::prepare(&format!("{label}-other"), &["--domain", other]);
    let dns_port = free_port_base();
    let records = records(&[(other, o.port_base + FED_PORT), ("example.com", ex.port_base + FED_PORT)]);
    let mut all = vec![other, "example.com"];
    all.extend_from_slice(zones);
    let dns = Dnsmasq::start(ex.scratch.join("dns"), dns_port, &all, &records);
    (ex, o, dns_port, dns)
}

/// A raw user registered at each appliance.
fn registered(x: &Appliance, alias_x: &str, y: &Appliance, alias_y: &str) -> (Ua, Ua) {
    let mut ux = Ua::connect_ok(x, alias_x, None);
    ux.register_ok(x, alias_x);
    let mut uy = Ua::connect_ok(y, alias_y, None);
    uy.register_ok(y, alias_y);
    (ux, uy)
}

/// `parapet partner <args> -c <app's edge.toml>`: its output, or Err with it.
fn partner_cli(app: &Appliance, args: &[&str]) -> Result<String, String> {
    let mut cmd = std::process::Command::new(parapet_bin());
    cmd.arg("partner").args(args).arg("-c").arg(app.data_dir.join("edge.toml"));
    run_bounded(&mut cmd, Duration::from_secs(30))
}

fn count_in(path: &std::path::Path, needle: &str) -> usize {
    fs::read_to_string(path).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn partners_by_dns_name_srv_failover_record_change_and_dns_outage() {
    let mut ex = Appliance::prepare("dns-example", &[]);
    let mut pt = Appliance::prepare("dns-partner", &["--domain", "partner.test"]);
    let block = free_port_base();
    let (dns_port, dead, via1, via2) = (block, block + 1, block + 2, block + 3);
    let (ex_fed, pt_fed) = (ex.port_base + FED_PORT, pt.port_base + FED_PORT);
    let fed_srv = |d: &str| format!("_sipfederationtls._tcp.{d}");
    let hosts = [a("dead.partner.test"), a("edge.partner.test"), a("edge.example.com")];
    // partner.test: priority 10 at a port where nothing listens, priority 20 through the first forwarder.
    let mut v1 = vec![
        srv(&fed_srv("partner.test"), "dead.partner.test", dead, 10, 0),
        srv(&fed_srv("partner.test"), "edge.partner.test", via1, 20, 0),
        srv(&fed_srv("example.com"), "edge.example.com", ex_fed, 10, 0),
    ];
    v1.extend(hosts.iter().cloned());
    let mut dns = Dnsmasq::start(ex.scratch.join("dns"), dns_port, &ZONES, &v1);
    let first = Forwarder::start(via1, pt_fed);
    let second = Forwarder::start(via2, pt_fed);

    ex.run_roles(&snippet(&ex, &pt, "partner.test", "partner.test", dns_port), &[ex_fed]);
    pt.run_roles(&snippet(&pt, &ex, "example.com", "example.com", dns_port), &[pt_fed]);
    let (mut alice, bob) = registered(&ex, "alice", &pt, "bob");

    // By SRV both ways; toward partner.test the priority-10 target is down, so the priority-20 one carries it.
    let mut bob = im(&mut alice, bob, &ex, "bob@partner.test", "by srv");
    let alice = im(&mut bob, alice, &pt, "alice@example.com", "back by srv");
    let mut alice = alice;
    assert!(first.accepted() >= 1, "the second SRV target was used");
    assert_eq!(second.accepted(), 0);

    // The record moves to another port. Once the connection in use goes (its address is down) and the 1 s TTL has
    // passed, the next connection follows the new record.
    let mut v2 = vec![
        srv(&fed_srv("partner.test"), "edge.partner.test", via2, 10, 0),
        srv(&fed_srv("example.com"), "edge.example.com", ex_fed, 10, 0),
    ];
    v2.extend(hosts.iter().cloned());
    dns.restart(&ZONES, &v2);
    first.stop();
    let bob = im_eventually(&ex, &mut alice, bob, "bob@partner.test", "after the record changed");
    assert!(second.accepted() >= 1, "the new record's port is used");
    let mut bob = bob;
    let alice = im(&mut bob, alice, &pt, "alice@example.com", "back after the change");
    let mut alice = alice;

    // The DNS server stops. What is connected stays connected.
    dns.stop();
    let before = Metrics::edge(&ex).get("parapet_edge_federation_dns_errors").unwrap_or(0);
    let bob = im(&mut alice, bob, &ex, "bob@partner.test", "dns down, connection up");
    let mut bob = bob;
    let alice = im(&mut bob, alice, &pt, "alice@example.com", "dns down, back");
    let mut alice = alice;
    // New connections (the old ones cut, the address still up): the name no longer resolves, so they use its last
    // good answer, again and again, with one log line for the name.
    let mut bob = bob;
    for round in 0..3 {
        second.cut();
        thread::sleep(Duration::from_millis(1100)); // past the 1 s TTL: a lookup, which fails
        bob = im_eventually(&ex, &mut alice, bob, "bob@partner.test", &format!("dns down, reconnect {round}"));
    }
    assert!(second.accepted() >= 4, "each round made a new connection: {}", second.accepted());
    let errors = Metrics::edge(&ex).must(&ex, "parapet_edge_federation_dns_errors");
    assert!(errors > before, "DNS failures counted ({before} -> {errors})");
    let logged = count_in(&ex.scratch.join("edge.stderr"), "name no longer resolves");
    assert_eq!(logged, 1, "one log line for the name, not one per lookup or request");
    let partners = http_get(ex.port_base + 3, "/partners").unwrap_or_else(|e| ex.fail(&e));
    assert!(
        partners.contains("partner.test") && partners.contains("dns failing"),
        "GET /partners shows the name's DNS state:\n{partners}"
    );
}

#[test]
fn partner_add_against_a_running_edge() {
    let (mut ex, mut pt, dns_port, _dns) = org_pair("dns-add", "partner.test", &[]);
    let (ex_fed, pt_fed) = (ex.port_base + FED_PORT, pt.port_base + FED_PORT);
    // example.com starts with no partner at all; partner.test lists example.com.
    let bare = format!(
        "[edge.federation]\nlisten = \"127.0.0.1:{ex_fed}\"\nca = \"{}\"\nresolver = \"127.0.0.1:{dns_port}\"\n",
        pt.ca.display()
    );
    ex.run_roles(&bare, &[ex_fed]);
    pt.run_roles(&snippet(&pt, &ex, "example.com", "example.com", dns_port), &[pt_fed]);
    let (mut alice, bob) = registered(&ex, "alice", &pt, "bob");
    let to = "sip:bob@partner.test";
    match alice.transaction("MESSAGE", to, to, &[], b"not yet").map(|(_, r)| r.status()) {
        Ok(Some(404)) => {}
        other => ex.fail(&format!("before `partner add`: expected 404 (no route), got {other:?}")),
    }
    let cli = |args: &[&str]| partner_cli(&ex, args);
    // Validated: a bad address is refused with the key named, and nothing changes.
    let bad = cli(&["add", "partner.test", "--addr", "not a name", "--cert-name", "edge.partner.test"]);
    match bad {
        Err(e) if e.contains("addr") => {}
        other => ex.fail(&format!("partner add with a bad addr: expected a refusal naming addr, got {other:?}")),
    }
    let added = cli(&["add", "partner.test", "--addr", "partner.test", "--cert-name", "edge.partner.test"])
        .unwrap_or_else(|e| ex.fail(&format!("partner add: {e}")));
    assert!(added.contains("partner.test"), "{added}");
    let listed = cli(&["list"]).unwrap_or_else(|e| ex.fail(&format!("partner list: {e}")));
    assert!(listed.contains("partner.test") && listed.contains("edge.partner.test"), "{listed}");
    let file = fs::read_to_string(ex.data_dir.join("partners.toml")).unwrap_or_default();
    assert!(file.contains("domain = \"partner.test\""), "persisted in the partners file:\n{file}");
    // Applied by the cores' once-a-second sweep: both ways, no restart.
    let bob = im_eventually(&ex, &mut alice, bob, "bob@partner.test", "after partner add");
    let mut bob = bob;
    let _alice = im(&mut bob, alice, &pt, "alice@example.com", "back after partner add");
    assert!(ex.edge_pid().is_some(), "the same edge process");
    // And removed again: requests to it are refused.
    cli(&["remove", "partner.test"]).unwrap_or_else(|e| ex.fail(&format!("partner remove: {e}")));
    let listed = cli(&["list"]).unwrap_or_else(|e| ex.fail(&format!("partner list: {e}")));
    assert!(!listed.contains("edge.partner.test"), "{listed}");
}

/// `[edge.federation]` with discovery on and no partner at all.
fn discovery_snippet(me: &Appliance, ca: &std::path::Path, dns_port: u16) -> String {
    format!(
        "[edge.federation]\nlisten = \"127.0.0.1:{}\"\nca = \"{}\"\nresolver = \"127.0.0.1:{dns_port}\"\n\
         dns_ttl_min_secs = 1\ndiscovery = true\n",
        me.port_base + FED_PORT,
        ca.display(),
    )
}

fn options(from: &str, to_domain: &str, n: usize) -> String {
    format!(
        "OPTIONS sip:{to_domain} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKd{n}x{}\r\nMax-Forwards: 70\r\n\
         From: <sip:{from}>;tag=d{n}\r\nTo: <sip:{to_domain}>\r\nCall-ID: disc-{n}-{}\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        crate::malformed::uniq(),
        crate::malformed::uniq()
    )
}

#[test]
fn discovery_federates_an_organization_in_no_table_and_checks_its_certificate_against_dns() {
    let (mut ex, mut th, dns_port, _dns) = org_pair("disc", "third.test", &["partner.test"]);
    // Only its PKI: a certificate from a CA example.com trusts, for another organization's names.
    let pt = Appliance::prepare("disc-partner", &["--domain", "partner.test"]);
    let (ex_fed, th_fed) = (ex.port_base + FED_PORT, th.port_base + FED_PORT);
    let bundle = ex.scratch.join("partners-ca.pem");
    let pems: String = [&th.ca, &pt.ca].iter().map(|p| fs::read_to_string(p).expect("CA")).collect();
    fs::write(&bundle, pems).expect("bundle");
    ex.run_roles(&discovery_snippet(&ex, &bundle, dns_port), &[ex_fed]);
    th.run_roles(&discovery_snippet(&th, &ex.ca, dns_port), &[th_fed]);
    let (mut alice, carol) = registered(&ex, "alice", &th, "carol");

    // Neither lists the other: each finds the other by its SRV record and checks the other's certificate by it.
    let carol = im(&mut alice, carol, &ex, "carol@third.test", "found by srv");
    let mut carol = carol;
    let mut alice = im(&mut carol, alice, &th, "alice@example.com", "found back by srv");

    // A raw peer on example.com's federation port with `app`'s edge certificate.
    let as_edge_of = |app: &Appliance| {
        let pki = app.data_dir.join("pki");
        let cfg = crate::federation::mtls_config(&ex.ca, &pki.join("edge.pem"), &pki.join("edge.key"));
        crate::federation_limits::Peer::connect(cfg, ex_fed)
    };
    let expect = |raw: &mut crate::federation_limits::Peer, from: &str, n: usize, want: u16, what: &str| match raw
        .ask(&options(from, "example.com", n))
    {
        Ok(got) if got == want => {}
        other => ex.fail(&format!("{what}: expected {want}, got {other:?}")),
    };
    // A certificate of partner.test (its CA trusted) claiming third.test: not the SRV target of third.test. Nor
    // for its own domain, which publishes no federation SRV record.
    let mut raw = as_edge_of(&pt);
    expect(&mut raw, "mallory@third.test", 1, 403, "a certificate not naming third.test's SRV target");
    expect(&mut raw, "mallory@partner.test", 2, 403, "a domain without an SRV record");
    // third.test's own certificate passes the same check (so the refusals above are the check's).
    let mut raw = as_edge_of(&th);
    expect(&mut raw, "probe@third.test", 3, 200, "third.test's own edge certificate");
    // A discovered partner is held to the discovered rate (20/s, burst 40): a burst of 100 meets 503s.
    let burst: String = (0..100).map(|i| options("probe@third.test", "example.com", 100 + i)).collect();
    raw.send(&burst).unwrap_or_else(|e| ex.fail(&e));
    let got = match raw.responses(100, Duration::from_secs(30)) {
        Ok(g) => g,
        Err((why, g)) => ex.fail(&format!("burst: {why} after {} responses", g.len())),
    };
    let refused = got.iter().filter(|m| m.status() == Some(503)).count();
    let served = got.iter().filter(|m| m.status() == Some(200)).count();
    assert!(refused >= 1 && served >= 20, "503 over the discovered rate: {served} served, {refused} refused");
    assert!(
        got.iter()
            .filter(|m| m.status() == Some(503))
            .all(|m| m.header(parapet::sip::HeaderName::RetryAfter).is_some()),
        "every 503 says when to retry"
    );

    // The operator promotes it into the table, as DNS names it now; then blocks it instead.
    let cli = |args: &[&str]| partner_cli(&ex, args).unwrap_or_else(|e| ex.fail(&format!("partner {args:?}: {e}")));
    cli(&["promote", "third.test"]);
    let listed = cli(&["list"]);
    assert!(listed.contains("partner third.test  cert_name=edge.third.test  addr=third.test"), "{listed}");
    let carol = im_eventually(&ex, &mut alice, carol, "carol@third.test", "promoted");
    let scrape = Metrics::edge(&ex);
    // One line per core: counters are exposed as `<name>_total{core="N"}` (a count of 0 would wait for nothing).
    let cores = scrape.0.lines().filter(|l| l.starts_with("parapet_edge_federation_reloads_total{")).count() as u64;
    assert!(cores > 0, "no per-core parapet_edge_federation_reloads_total in the scrape:\n{}", scrape.0);
    // Each edit applied by every core (within a second), then the next.
    let mut reloads = scrape.must(&ex, "parapet_edge_federation_reloads");
    for edit in [["remove", "third.test"], ["block", "third.test"]] {
        cli(&edit);
        let applied =
            wait_edge_metric(&ex, "parapet_edge_federation_reloads", reloads + cores, Duration::from_secs(10));
        assert!(applied >= reloads + cores, "{edit:?} applied by {cores} cores: {reloads} -> {applied}");
        reloads = applied;
    }
    assert!(cli(&["list"]).contains("blocked third.test"));
    let to = "sip:carol@third.test";
    match alice.transaction("MESSAGE", to, to, &[], b"blocked?").map(|(_, r)| r.status()) {
        Ok(Some(403)) => {}
        other => ex.fail(&format!("blocked domain: expected 403, got {other:?}")),
    }
    drop(carol);
}

/// Presence both ways between pjsip users of two organizations in no table: each edge finds the other by SRV, and
/// the dialog's NOTIFYs come back by the edges' Record-Routes.
#[test]
fn discovery_carries_pjsip_presence_both_ways() {
    use crate::federation_presence::registered as agent;
    use crate::pjsua::quote;
    use crate::presence_pjsip::wait_state;
    let (mut ex, mut th, dns_port, _dns) = org_pair("discp", "third.test", &[]);
    let (ex_fed, th_fed) = (ex.port_base + FED_PORT, th.port_base + FED_PORT);
    ex.run_roles(&discovery_snippet(&ex, &th.ca, dns_port), &[ex_fed]);
    th.run_roles(&discovery_snippet(&th, &ex.ca, dns_port), &[th_fed]);
    let mut alice = agent(&ex, "alice");
    let mut carol = agent(&th, "carol");
    let (alice_uri, carol_uri) = ("sip:alice@example.com", "sip:carol@third.test");
    alice.send(&format!(r#"{{"cmd":"subscribe","uri":{}}}"#, quote(carol_uri)));
    wait_state(&mut alice, carol_uri, "offline", "", None);
    carol.send(r#"{"cmd":"publish","status":"online","note":"Found by SRV"}"#);
    wait_state(&mut alice, carol_uri, "online", "", Some("Found by SRV"));
    carol.send(&format!(r#"{{"cmd":"subscribe","uri":{}}}"#, quote(alice_uri)));
    wait_state(&mut carol, alice_uri, "offline", "", None);
    alice.send(r#"{"cmd":"publish","status":"online","note":"Found back"}"#);
    wait_state(&mut carol, alice_uri, "online", "", Some("Found back"));
    assert!(Metrics::edge(&ex).must(&ex, "parapet_edge_federation_in_dialog") >= 1, "NOTIFYs to alice via her flow");
    assert!(Metrics::edge(&th).must(&th, "parapet_edge_federation_in_dialog") >= 1, "NOTIFYs to carol via her flow");
}

/// `parapet up` then `parapet up --domain partner.test --federate-with <the first's data dir>`: the two
/// organizations federate both ways, nothing edited by hand, the first not restarted.
#[test]
fn two_up_organizations_federate_in_two_commands() {
    let ex = Appliance::start("fedwith-example");
    let data = ex.data_dir.to_string_lossy().into_owned();
    let pt = Appliance::start_with_args("fedwith-partner", &["--domain", "partner.test", "--federate-with", &data]);
    let (mut alice, bob) = registered(&ex, "alice", &pt, "bob");
    let mut bob = im_eventually(&ex, &mut alice, bob, "bob@partner.test", "up to up");
    let _alice = im_eventually(&pt, &mut bob, alice, "alice@example.com", "up to up, back");
    let listed = partner_cli(&ex, &["list"]).unwrap_or_else(|e| ex.fail(&e));
    assert!(
        listed.contains(&format!(
            "partner partner.test  cert_name=edge.partner.test  addr=127.0.0.1:{}",
            pt.port_base + FED_PORT
        )),
        "{listed}"
    );
}
