//! A federation member's oversized route set cannot stop an edge core (issue 10: the Editor asserted on more than
//! 16 edits, and a clearinghouse spent one edit per Route value a member sent, so nine values in one line killed
//! the core that read them).
//!
//! A clearinghouse (hub.test) with two members in its table: partner.test (whose edge certificate the test
//! presents) and third.test (nothing listens there: the request never gets that far). partner.test sends requests
//! for third.test with 9, 50 and 1,000 Route values, all in one line and one value per line; each gets an error
//! response or a closed connection, and afterwards every core of the hub still answers.

use crate::federation::{exchange, mtls_config};
use crate::malformed::uniq;
use crate::rawsip::Metrics;
use crate::support::Appliance;

/// Port (offset from the port base) of the hub's federation listener.
const FED_PORT: u16 = 5;

fn request_with_routes(count: usize, one_line: bool) -> String {
    let u = uniq();
    let values: Vec<String> = (0..count).map(|i| format!("<sip:r{i}.third.test;lr>")).collect();
    let routes = if one_line {
        format!("Route: {}\r\n", values.join(", "))
    } else {
        values.iter().map(|v| format!("Route: {v}\r\n")).collect()
    };
    format!(
        "MESSAGE sip:carol@third.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKr{u}\r\n\
         Max-Forwards: 70\r\n{routes}From: <sip:bob@partner.test>;tag=r{u}\r\nTo: <sip:carol@third.test>\r\n\
         Call-ID: routes-{u}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    )
}

#[test]
fn a_members_route_flood_gets_an_error_and_the_hub_keeps_serving() {
    let member = Appliance::prepare("routes-member", &["--domain", "partner.test"]);
    let mut hub = Appliance::prepare("routes-hub", &["--domain", "hub.test"]);
    let fed = hub.port_base + FED_PORT;
    let table = format!(
        "[edge.federation]\nlisten = \"127.0.0.1:{fed}\"\nca = \"{}\"\nclearinghouse = true\n\n\
         [[edge.federation.partners]]\ndomain = \"partner.test\"\ncert_name = \"edge.partner.test\"\n\
         addr = \"127.0.0.1:{}\"\n\n\
         [[edge.federation.partners]]\ndomain = \"third.test\"\ncert_name = \"edge.third.test\"\n\
         addr = \"127.0.0.1:{}\"\n",
        member.ca.display(),
        member.port_base + FED_PORT,
        // Nobody listens: a relayed request would be answered by the hub's connector (503), not by a member.
        member.port_base + 9,
    );
    hub.run_roles(&table, &[fed]);
    let pki = member.data_dir.join("pki");
    let as_member = mtls_config(&hub.ca, &pki.join("edge.pem"), &pki.join("edge.key"));

    for count in [9, 50, 1000] {
        for one_line in [true, false] {
            // Several connections each, so that every core (SO_REUSEPORT spreads them) reads one.
            for _ in 0..4 {
                let req = request_with_routes(count, one_line);
                match exchange(as_member.clone(), "edge.hub.test", fed, &req) {
                    // A clear error: the route set is refused (483), or the message is (400 for too many
                    // headers, 513 too large).
                    Ok(r) if r.starts_with("SIP/2.0 4") || r.starts_with("SIP/2.0 5") => {}
                    // Or the connection closed without an answer (framing refused it).
                    Err(e) if e.starts_with("closed") => {}
                    other => hub.fail(&format!("{count} Route values (one line: {one_line}): got {other:?}")),
                }
            }
        }
    }
    // Every core still serves: a fresh connection's OPTIONS to the hub itself gets 200, wherever it lands.
    for _ in 0..8 {
        let u = uniq();
        let options = format!(
            "OPTIONS sip:hub.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKo{u}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@partner.test>;tag=o{u}\r\nTo: <sip:hub.test>\r\n\
             Call-ID: alive-{u}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        match exchange(as_member.clone(), "edge.hub.test", fed, &options) {
            Ok(r) if r.starts_with("SIP/2.0 200") => {}
            other => hub.fail(&format!("after the route floods, OPTIONS to the hub: expected 200, got {other:?}")),
        }
    }
    assert!(
        Metrics::edge(&hub).must(&hub, "parapet_edge_federation_refused") >= 8,
        "the one-line floods that parse were refused and counted"
    );
}
