//! Federation policing and peer identity on real appliances. example.com (A) serves users and partners on one
//! port (`[edge.federation]` without `listen`); partner.test (B) has a federation listener of its own and
//! reaches A at A's user port. A trusts B's CA, under which the test issues more certificates: a second listed
//! identity (`edge2.partner.test`, partner domain other.test), an unknown peer (`stranger.test`, admitted with
//! `unknown = "limited"`) and a blocked one (`evil.test`). Proves:
//! - the shared port: bob@partner.test and alice@example.com exchange MESSAGEs through B's edge and A's user
//!   port, where alice registered with digest and no certificate; a certificate the table does not admit is
//!   refused there (closed, counted); an unknown peer speaks for its own domain only; A routes nothing to it;
//! - a partner over its rate (5/s, burst 5) gets 503 with Retry-After, counted, and is read no faster than its
//!   rate (what passes fits burst + rate x elapsed), while the other listed identity sending 30 at the same time
//!   gets no 503;
//! - a partner at its connection cap (1) has its next connection refused;
//! - a partner's message over `[edge.federation] message_bytes_max` (4096) gets 513 and is closed, while a user's
//!   message of the same size passes under `[limits]`;
//! - `parapet federation test` from B succeeds against A's shared port.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parapet::sip::{self, Frame, Limits, Message};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::federation::{im, mtls_config};
use crate::malformed::uniq;
use crate::pjsua::Agent;
use crate::rawsip::{text, Metrics, Ua};
use crate::support::{parapet_bin, Appliance};

/// Port (offset from the port base) of B's federation listener.
const FED_PORT: u16 = 5;
/// The size of the over-size message: above the partners' 4096, far below the users' 65,535.
const BIG: usize = 6000;

/// A raw mutual-TLS peer on A's user port, reading SIP messages with the parapet codec.
pub(crate) struct Peer {
    s: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl Peer {
    pub(crate) fn connect(cfg: Arc<ClientConfig>, port: u16) -> Peer {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let name = ServerName::try_from("edge.example.com").expect("name");
        let conn = ClientConnection::new(cfg, name).expect("rustls");
        Peer { s: StreamOwned::new(conn, tcp), buf: Vec::new() }
    }

    pub(crate) fn send(&mut self, bytes: &str) -> Result<(), String> {
        self.s.write_all(bytes.as_bytes()).and_then(|_| self.s.flush()).map_err(|e| format!("write: {e}"))
    }

    /// The next `n` responses (requests skipped); Err with what arrived when the connection ends or time is up.
    pub(crate) fn responses(&mut self, n: usize, timeout: Duration) -> Result<Vec<Message>, (String, Vec<Message>)> {
        let limits = Limits::DEFAULT;
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut chunk = [0u8; 16384];
        while got.len() < n {
            match sip::frame(&self.buf, &limits) {
                Ok(Frame::Message { len }) => {
                    let raw = Bytes::copy_from_slice(&self.buf[..len]);
                    self.buf.drain(..len);
                    match Message::parse(raw, &limits) {
                        Ok(m) if !m.is_request() => got.push(m),
                        Ok(_) => {}
                        Err(e) => return Err((format!("unparsable message: {e}"), got)),
                    }
                    continue;
                }
                Ok(Frame::Ping { consumed }) | Ok(Frame::Pong { consumed }) => {
                    self.buf.drain(..consumed.min(self.buf.len()));
                    continue;
                }
                Ok(Frame::Incomplete) => {}
                Err(e) => return Err((format!("framing: {e:?}"), got)),
            }
            if Instant::now() >= deadline {
                return Err(("timed out".into(), got));
            }
            match self.s.read(&mut chunk) {
                Ok(0) => return Err(("closed".into(), got)),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err((format!("closed: {e}"), got)),
            }
        }
        Ok(got)
    }

    /// Sends `request` and returns the status of the first response, or Err when none comes.
    pub(crate) fn ask(&mut self, request: &str) -> Result<u16, String> {
        self.send(request)?;
        match self.responses(1, Duration::from_secs(10)) {
            Ok(r) => Ok(r[0].status().unwrap_or(0)),
            Err((why, _)) => Err(why),
        }
    }
}

pub(crate) fn message(from: &str, to: &str, body_len: usize) -> String {
    let u = uniq();
    format!(
        "MESSAGE sip:{to} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKl{u}\r\nMax-Forwards: 70\r\n\
         From: <sip:{from}>;tag=t{u}\r\nTo: <sip:{to}>\r\nCall-ID: lim-{u}\r\nCSeq: 1 MESSAGE\r\n\
         Content-Type: text/plain\r\nContent-Length: {body_len}\r\n\r\n{}",
        "x".repeat(body_len)
    )
}

fn wait_metric(app: &Appliance, name: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = Metrics::edge(app).must(app, name);
        if v >= at_least || Instant::now() >= deadline {
            return v;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn statuses(ms: &[Message]) -> Vec<u16> {
    ms.iter().map(|m| m.status().unwrap_or(0)).collect()
}

#[test]
fn partners_are_policed_per_identity_on_the_shared_user_port() {
    let mut a = Appliance::prepare("fedlim-example", &[]);
    let mut b = Appliance::prepare("fedlim-partner", &["--domain", "partner.test"]);
    let pki_b = b.data_dir.join("pki");
    let issue = |stem: &str, name: &str| {
        parapet::config::devpki::issue_leaf(&pki_b, stem, &[name.to_string()]).expect("certificate from B's CA")
    };
    let second = issue("edge2", "edge2.partner.test");
    let stranger = issue("stranger", "stranger.test");
    let evil = issue("evil", "evil.test");
    let fed_b = b.port_base + FED_PORT;
    let sa = format!(
        "[edge.federation]\nca = \"{}\"\nblocked_domains = [\"evil.test\"]\nunknown = \"limited\"\n\
         message_bytes_max = 4096\n\n\
         [[edge.federation.partners]]\ndomain = \"partner.test\"\ncert_name = \"edge.partner.test\"\n\
         addr = \"127.0.0.1:{fed_b}\"\nrate = 5\nburst = 5\n\n\
         [[edge.federation.partners]]\ndomain = \"other.test\"\ncert_name = \"edge2.partner.test\"\n\
         addr = \"127.0.0.1:{fed_b}\"\nconnections_max = 1\n",
        b.ca.display()
    );
    let sb = format!(
        "[edge.federation]\nlisten = \"127.0.0.1:{fed_b}\"\nca = \"{}\"\n\n\
         [[edge.federation.partners]]\ndomain = \"example.com\"\ncert_name = \"edge.example.com\"\naddr = \"{}\"\n",
        a.ca.display(),
        a.edge
    );
    a.run_roles(&sa, &[]);
    b.run_roles(&sb, &[fed_b]);
    let port_a: u16 = a.edge.rsplit(':').next().and_then(|p| p.parse().ok()).expect("A's user port");

    // The shared port: alice registers there with no certificate (digest), B's edge delivers bob's MESSAGE there.
    let mut alice = Ua::connect_ok(&a, "alice", None);
    alice.register_ok(&a, "alice");
    let mut bob = Ua::connect_ok(&b, "bob", None);
    bob.register_ok(&b, "bob");
    let alice = im(&mut bob, alice, &b, "alice@example.com", "to the shared port");
    let mut alice = alice;
    let _bob = im(&mut alice, bob, &a, "bob@partner.test", "from the shared port");
    assert!(Metrics::edge(&a).must(&a, "parapet_edge_requests_from_partners") >= 1);

    // A certificate from the trusted CA that the table refuses (a blocked domain): closed after the handshake.
    let refused_before = Metrics::edge(&a).must(&a, "parapet_edge_federation_connections_refused");
    let mut blocked = Peer::connect(mtls_config(&a.ca, &evil.0, &evil.1), port_a);
    if let Ok(code) = blocked.ask(&message("mallory@evil.test", "nobody@example.com", 5)) {
        a.fail(&format!("a blocked domain's certificate on the shared port: expected a closed connection, got {code}"));
    }
    // A certificate from a CA the federation does not trust, naming the partner (a user's client presenting its
    // own, as baresip must): the connection stays a user's, so its MESSAGE is refused as unregistered (403),
    // never taken for the partner's.
    let own_dir = a.scratch.join("own-client-cert");
    std::fs::create_dir_all(&own_dir).expect("own cert dir");
    let own = parapet::config::devpki::issue_leaf(&own_dir, "client", &["edge.partner.test".to_string()])
        .expect("a certificate from a CA of its own");
    let ignored_before = Metrics::edge(&a).must(&a, "parapet_edge_user_certificates_ignored");
    let mut own_cert = Peer::connect(mtls_config(&a.ca, &own.0, &own.1), port_a);
    match own_cert.ask(&message("bob@partner.test", "alice@example.com", 5)) {
        Ok(403) => {}
        other => {
            a.fail(&format!("a client's own certificate on the shared port: expected 403 (a user), got {other:?}"))
        }
    }
    assert!(
        Metrics::edge(&a).must(&a, "parapet_edge_user_certificates_ignored") > ignored_before,
        "the ignored certificate is counted"
    );
    // An unknown peer (unknown = "limited") speaks for its own domain, and no other.
    let mut unknown = Peer::connect(mtls_config(&a.ca, &stranger.0, &stranger.1), port_a);
    match unknown.ask(&message("someone@stranger.test", "nobody@example.com", 5)) {
        Ok(code) if code == 404 || code == 480 => {}
        other => a.fail(&format!("unknown peer, own domain: expected 404/480 from the pool, got {other:?}")),
    }
    match unknown.ask(&message("bob@partner.test", "alice@example.com", 5)) {
        Ok(403) => {}
        other => a.fail(&format!("unknown peer, a partner's domain: expected 403, got {other:?}")),
    }
    // Nothing is routed toward an unknown domain.
    match alice.transaction("MESSAGE", "sip:someone@stranger.test", "sip:someone@stranger.test", &[], b"hi") {
        Ok((_, r)) if r.status() == Some(404) => {}
        Ok((_, r)) => a.fail(&format!("MESSAGE to an unknown domain: expected 404, got\n{}", text(&r))),
        Err(e) => a.fail(&e),
    }

    // Rate: 30 MESSAGEs at once from each listed identity; partner.test (5/s, burst 5) is throttled, the other not.
    let mut limited = Peer::connect(mtls_config(&a.ca, &pki_b.join("edge.pem"), &pki_b.join("edge.key")), port_a);
    let mut other = Peer::connect(mtls_config(&a.ca, &second.0, &second.1), port_a);
    let burst = |from: &str| (0..30).map(|_| message(from, "nobody@example.com", 5)).collect::<String>();
    let rate_limited_before = Metrics::edge(&a).must(&a, "parapet_edge_federation_rate_limited");
    if let Err(e) = limited.send(&burst("bob@partner.test")).and_then(|_| other.send(&burst("carol@other.test"))) {
        a.fail(&format!("sending the bursts: {e}"));
    }
    let sent_at = Instant::now();
    let got_limited = limited.responses(30, Duration::from_secs(20));
    let elapsed = sent_at.elapsed().as_secs_f64();
    let got_other = other.responses(30, Duration::from_secs(20));
    let (got_limited, got_other) = match (got_limited, got_other) {
        (Ok(l), Ok(o)) => (l, o),
        (l, o) => a.fail(&format!(
            "30 responses each expected; partner.test: {:?}, other.test: {:?}",
            l.map(|v| statuses(&v)).map_err(|(e, v)| (e, statuses(&v))),
            o.map(|v| statuses(&v)).map_err(|(e, v)| (e, statuses(&v)))
        )),
    };
    let throttled: Vec<&Message> = got_limited.iter().filter(|m| m.status() == Some(503)).collect();
    let passed = got_limited.len() - throttled.len();
    let codes = statuses(&got_limited);
    // Over its rate it gets 503s, and is read no faster than its rate: what passed fits burst + rate x elapsed.
    // Sent at once, so refusals alone would let the burst (5) through and no more: the rest waited (read paused)
    // while tokens came back.
    assert!(passed > 5 && !throttled.is_empty(), "partner.test at 5/s, burst 5: paced, with 503s: {codes:?}");
    assert!(passed as f64 <= 5.0 + 5.0 * elapsed + 1.0, "{passed} passed in {elapsed:.2} s at 5/s, burst 5: {codes:?}");
    assert!(codes.iter().all(|c| [404, 480, 503].contains(c)), "{codes:?}");
    for m in &throttled {
        let head = String::from_utf8_lossy(m.bytes()).to_ascii_lowercase();
        assert!(head.contains("\r\nretry-after: "), "503 without Retry-After:\n{}", text(m));
    }
    let other_codes = statuses(&got_other);
    assert!(other_codes.iter().all(|c| *c == 404 || *c == 480), "other.test must not be throttled: {other_codes:?}");
    let counted = wait_metric(&a, "parapet_edge_federation_rate_limited", rate_limited_before + throttled.len() as u64);
    assert!(counted >= rate_limited_before + throttled.len() as u64, "federation_rate_limited moved: {counted}");

    // Connections: other.test may hold one; its second is refused after the handshake.
    let mut second_conn = Peer::connect(mtls_config(&a.ca, &second.0, &second.1), port_a);
    if let Ok(code) = second_conn.ask(&message("carol@other.test", "nobody@example.com", 5)) {
        a.fail(&format!("a connection over other.test's cap of 1: expected it closed, got {code}"));
    }
    let refused = wait_metric(&a, "parapet_edge_federation_connections_refused", refused_before + 2);
    assert!(refused >= refused_before + 2, "blocked certificate and connection over the cap counted: {refused}");

    // Size: a partner's message over 4096 bytes gets 513 and the connection closes; a user's of the same size passes.
    let too_large_before = Metrics::edge(&a).must(&a, "parapet_edge_too_large");
    match other.ask(&message("carol@other.test", "nobody@example.com", BIG)) {
        Ok(513) => {}
        other => a.fail(&format!("partner message of {BIG} bytes: expected 513, got {other:?}")),
    }
    if let Ok(r) = other.responses(1, Duration::from_secs(5)) {
        a.fail(&format!("after 513 the connection must close, got {:?}", statuses(&r)));
    }
    assert!(wait_metric(&a, "parapet_edge_too_large", too_large_before + 1) > too_large_before);
    let body = "y".repeat(BIG);
    match alice.transaction("MESSAGE", "sip:nobody@example.com", "sip:nobody@example.com", &[], body.as_bytes()) {
        Ok((_, r)) if r.status() != Some(513) => {}
        Ok((_, r)) => a.fail(&format!("a user's {BIG}-byte MESSAGE is under [limits]: got\n{}", text(&r))),
        Err(e) => a.fail(&e),
    }
    // Once its connection is gone, other.test may connect again.
    thread::sleep(Duration::from_millis(300));
    let mut again = Peer::connect(mtls_config(&a.ca, &second.0, &second.1), port_a);
    match again.ask(&message("carol@other.test", "nobody@example.com", 5)) {
        Ok(404) | Ok(480) => {}
        other => a.fail(&format!("other.test reconnecting after its connection closed: {other:?}")),
    }

    // The probe works against a shared port as against a federation listener: B checks A.
    let out = Command::new(parapet_bin())
        .args(["federation", "test", "example.com", "-c"])
        .arg(b.data_dir.join("edge.toml"))
        .output()
        .unwrap_or_else(|e| b.fail(&format!("cannot run the probe: {e}")));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && all.contains("trusted: yes") && all.contains("SIP/2.0 200"), "probe:\n{all}");
}

/// pjsip sends no client certificate: on a user port shared with partners (which asks for one without
/// requiring it) it registers and exchanges a MESSAGE exactly as on a plain user port.
#[test]
fn pjsip_users_are_unaffected_by_a_shared_port() {
    let app = Appliance::start_with_edge_extra("fedlim-pjsip", "[edge.federation]\nca = \"pki/ca.pem\"\n");
    let (alice_u, bob_u) = (app.user("alice"), app.user("bob"));
    let mut alice = Agent::spawn(&app, "alice", &alice_u.alias, &alice_u.password);
    let mut bob = Agent::spawn(&app, "bob", &bob_u.alias, &bob_u.password);
    for (agent, who) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        let ev = agent.register();
        agent.check(ev.int("code") == Some(200), || format!("{who} REGISTER on the shared port: {ev}"));
    }
    let st = alice.message(&format!("sip:bob@{}", app.domain), "over the shared port");
    alice.check(st.int("code") == Some(200), || format!("alice -> bob MESSAGE: {st}"));
    let m = bob.received();
    bob.check(m.str("text") == Some("over the shared port"), || format!("bob received: {m}"));
    assert_eq!(Metrics::edge(&app).must(&app, "parapet_edge_federation_connections_refused"), 0);
    // The port does ask for certificates: one that chains to the federation CA but is on no list is refused.
    let port: u16 = app.edge.rsplit(':').next().and_then(|p| p.parse().ok()).expect("user port");
    let pki = app.data_dir.join("pki");
    let mut peer = Peer::connect(mtls_config(&app.ca, &pki.join("edge.pem"), &pki.join("edge.key")), port);
    if let Ok(code) = peer.ask(&message("x@partner.test", "bob@example.com", 5)) {
        app.fail(&format!("an unlisted certificate on the shared port: expected it closed, got {code}"));
    }
    assert_eq!(wait_metric(&app, "parapet_edge_federation_connections_refused", 1), 1);
}
