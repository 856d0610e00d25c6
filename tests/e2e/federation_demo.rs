//! `parapet up`'s demo partners are honest (issue 16): they are inbound-only partners (`addr = "none"`). A user's
//! MESSAGE to bob@partner.test gets a final 403 naming why (not "480 offline" after a connection to a port where
//! nothing listens), counted; the demo partner's edge, as `loadgen federation` plays it (its certificate, on our
//! federation port), is still admitted and its MESSAGE to one of our users answered 200; `partner list` says
//! inbound-only.

use std::thread;
use std::time::Duration;

use crate::federation::{mtls_config, FED_PORT};
use crate::federation_limits::{message, Peer};
use crate::rawsip::{reason, text, Metrics, Ua};
use crate::support::{parapet_bin, run_bounded, Appliance};

#[test]
fn up_demo_partners_are_inbound_only() {
    let app = Appliance::start("demo-partners");
    let mut alice = Ua::connect_ok(&app, "alice", None);
    alice.register_ok(&app, "alice");
    let refused_before = Metrics::edge(&app).must(&app, "parapet_edge_federation_refused");

    // Our user toward the demo partner: a final answer that says why, at once.
    let uri = "sip:bob@partner.test";
    let r = alice.transaction("MESSAGE", uri, uri, &[], b"hi").map(|(_, r)| r).unwrap_or_else(|e| app.fail(&e));
    if r.status() != Some(403) || !reason(&r).contains("partner.test accepts no requests from us") {
        app.fail(&format!("MESSAGE to bob@partner.test: expected 403 naming the reason, got\n{}", text(&r)));
    }
    let refused = Metrics::edge(&app).must(&app, "parapet_edge_federation_refused");
    assert!(refused > refused_before, "the refusal is counted ({refused_before} -> {refused})");

    // The demo partner toward our user, as `loadgen federation` plays it: admitted, delivered, 200.
    let answering = thread::spawn(move || {
        let req = alice.next_request(Duration::from_secs(15)).map_err(|e| format!("no request arrived: {e:?}"))?;
        alice.answer_with(&req, 200, "OK", |s| s);
        let from = String::from_utf8_lossy(req.from().uri.host).to_ascii_lowercase();
        if from == "partner.test" {
            Ok(())
        } else {
            Err(format!("unexpected request:\n{}", text(&req)))
        }
    });
    let pki = app.data_dir.join("pki");
    let cfg = mtls_config(&app.ca, &pki.join("partner.test.pem"), &pki.join("partner.test.key"));
    let mut peer = Peer::connect(cfg, app.port_base + FED_PORT);
    let code = peer.ask(&message("bob@partner.test", "alice@example.com", 5));
    let delivered = answering.join().unwrap_or_else(|_| Err("receiver thread panicked".into()));
    if let Err(e) = delivered {
        app.fail(&format!("inbound MESSAGE from partner.test: {e}"));
    }
    assert_eq!(code, Ok(200), "inbound MESSAGE from the demo partner");

    let mut cmd = std::process::Command::new(parapet_bin());
    cmd.args(["partner", "list", "-c"]).arg(app.data_dir.join("edge.toml"));
    let listed = run_bounded(&mut cmd, Duration::from_secs(30)).unwrap_or_else(|e| app.fail(&e));
    assert!(listed.contains("partner partner.test  cert_name=edge.partner.test  addr=none (inbound-only"), "{listed}");

    // `federation test` has nothing to connect to: it says so instead of "not a partner" or a refused connection.
    let mut cmd = std::process::Command::new(parapet_bin());
    cmd.args(["federation", "test", "partner.test", "-c"]).arg(app.data_dir.join("edge.toml"));
    match run_bounded(&mut cmd, Duration::from_secs(30)) {
        Err(out) if out.contains("partner.test is an inbound-only partner") => {}
        other => app.fail(&format!("federation test of an inbound-only partner: {other:?}")),
    }
    // `dns-records` reads the same config (our own records only: an inbound-only partner publishes none for us).
    let mut cmd = std::process::Command::new(parapet_bin());
    cmd.args(["dns-records", "-c"]).arg(app.data_dir.join("edge.toml"));
    let records = run_bounded(&mut cmd, Duration::from_secs(30)).unwrap_or_else(|e| app.fail(&e));
    assert!(records.contains("_sipfederationtls._tcp.example.com."), "{records}");
}
