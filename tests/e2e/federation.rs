//! Federation between two organizations, each a real appliance (edge + pool processes) with its own development
//! CA: example.com and partner.test trust each other's CA for federation only (`[edge.federation] ca`) and list
//! each other as direct partners. Proves, over mutual TLS on the edges' federation ports:
//! - alice@example.com and bob@partner.test exchange MESSAGEs both ways (raw TLS user agents);
//! - a request from the partner's connection with a From domain it does not speak for is refused (403, counted);
//! - a certificate from a CA neither trusts is refused at the handshake, and nothing reaches a pool.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::malformed::uniq;
use crate::rawsip::{text, Metrics, Ua};
use crate::support::Appliance;

/// Port (offset from the port base) of each edge's federation listener.
pub(crate) const FED_PORT: u16 = 5;

pub(crate) fn snippet(peer: &Appliance, peer_domain: &str, me: &Appliance) -> String {
    format!(
        "[edge.federation]\nlisten = \"127.0.0.1:{}\"\nca = \"{}\"\nblocked_domains = [\"evil.test\"]\n\n\
         [[edge.federation.partners]]\ndomain = \"{peer_domain}\"\ncert_name = \"edge.{peer_domain}\"\naddr = \"127.0.0.1:{}\"\n",
        me.port_base + FED_PORT,
        peer.ca.display(),
        peer.port_base + FED_PORT,
    )
}

/// A client config presenting `cert`/`key` and trusting `ca` (as a partner's edge would).
pub(crate) fn mtls_config(ca: &Path, cert: &Path, key: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(c.expect("CA parses")).expect("CA added");
    }
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).expect("read cert").map(|c| c.expect("cert parses")).collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("read key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client cert");
    Arc::new(cfg)
}

/// Sends `request` over a fresh mutual-TLS connection to `port` and returns what comes back until a complete
/// response head (or the connection ends: Err with what was read).
pub(crate) fn exchange(cfg: Arc<ClientConfig>, server_name: &str, port: u16, request: &str) -> Result<String, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
    let mut s = StreamOwned::new(conn, tcp);
    s.write_all(request.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let _ = s.flush();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&got))),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    return Ok(String::from_utf8_lossy(&got).into_owned());
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("read: {e} after {:?}", String::from_utf8_lossy(&got))),
        }
    }
    Err(format!("no answer; read {:?}", String::from_utf8_lossy(&got)))
}

pub(crate) fn message_from(from: &str, to: &str) -> String {
    let u = uniq();
    format!(
        "MESSAGE sip:{to} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKf{u}\r\nMax-Forwards: 70\r\n\
         From: <sip:{from}>;tag=t{u}\r\nTo: <sip:{to}>\r\nCall-ID: fed-{u}\r\nCSeq: 1 MESSAGE\r\n\
         Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    )
}

/// `sender` sends a MESSAGE to `to` while `receiver` (on another appliance) answers it 200 on its own thread; it must
/// arrive with the body and the sender's own From domain. The federation tests' common IM step.
pub(crate) fn im(sender: &mut Ua, receiver: Ua, sender_app: &Appliance, to: &str, body: &str) -> Ua {
    let (want, want_from) = (body.to_string(), sender_app.domain.clone());
    let answering = thread::spawn(move || {
        let mut receiver = receiver;
        let result = match receiver.next_request(Duration::from_secs(15)) {
            Ok(req) => {
                receiver.answer_with(&req, 200, "OK", |s| s);
                let from = String::from_utf8_lossy(req.from().uri.host).to_ascii_lowercase();
                if req.body() == want.as_bytes() && from == want_from {
                    Ok(())
                } else {
                    Err(format!("unexpected request (want From domain {want_from}):\n{}", text(&req)))
                }
            }
            Err(e) => Err(format!("no request arrived: {e:?}")),
        };
        (receiver, result)
    });
    let uri = format!("sip:{to}");
    let r = sender.transaction("MESSAGE", &uri, &uri, &[], body.as_bytes());
    let (receiver, delivered) = answering.join().expect("receiver thread");
    if let Err(e) = delivered {
        sender_app.fail(&format!("MESSAGE to {to}: {e}"));
    }
    match r {
        Ok((_, resp)) if resp.status() == Some(200) => {}
        Ok((_, resp)) => sender_app.fail(&format!("MESSAGE to {to}: expected 200, got\n{}", text(&resp))),
        Err(e) => sender_app.fail(&e),
    }
    receiver
}

#[test]
fn two_organizations_federate_over_mutual_tls() {
    let mut a = Appliance::prepare("fed-example", &[]);
    let mut b = Appliance::prepare("fed-partner", &["--domain", "partner.test"]);
    assert_eq!((a.domain.as_str(), b.domain.as_str()), ("example.com", "partner.test"));
    let (sa, sb) = (snippet(&b, "partner.test", &a), snippet(&a, "example.com", &b));
    a.run_roles(&sa, &[a.port_base + FED_PORT]);
    b.run_roles(&sb, &[b.port_base + FED_PORT]);

    let mut alice = Ua::connect_ok(&a, "alice", None);
    alice.register_ok(&a, "alice");
    let mut bob = Ua::connect_ok(&b, "bob", None);
    bob.register_ok(&b, "bob");

    // Both ways, through both edges and both pools.
    let bob = im(&mut alice, bob, &a, "bob@partner.test", "hello bob");
    let mut bob = bob;
    let _alice = im(&mut bob, alice, &b, "alice@example.com", "hello alice");
    assert!(Metrics::edge(&a).must(&a, "parapet_edge_requests_to_partners") >= 1);
    assert!(Metrics::edge(&a).must(&a, "parapet_edge_requests_from_partners") >= 1);

    // The partner's own certificate, but a From domain it does not speak for: 403 at example.com's edge.
    let pki_b = b.data_dir.join("pki");
    let partner = mtls_config(&a.ca, &pki_b.join("edge.pem"), &pki_b.join("edge.key"));
    let fed_a = a.port_base + FED_PORT;
    let spoofed =
        exchange(partner.clone(), "edge.example.com", fed_a, &message_from("eve@third.test", "alice@example.com"));
    match spoofed {
        Ok(r) if r.starts_with("SIP/2.0 403") => {}
        other => a.fail(&format!("spoofed From domain: expected 403, got {other:?}")),
    }
    let own =
        exchange(partner.clone(), "edge.example.com", fed_a, &message_from("eve@example.com", "alice@example.com"));
    match own {
        Ok(r) if r.starts_with("SIP/2.0 403") => {}
        other => a.fail(&format!("From our own domain via a partner: expected 403, got {other:?}")),
    }
    assert!(Metrics::edge(&a).must(&a, "parapet_edge_federation_spoofed_from") >= 2);
    // A NOTIFY for a dialog of ours that does not exist (a contact list's subscriptions are ours to name): 481.
    let u = uniq();
    let forged = format!(
        "NOTIFY sip:alice+contacts@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKn{u}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@partner.test>;tag=n{u}\r\nTo: <sip:alice@example.com>;tag=guess\r\n\
         Call-ID: forged-{u}\r\nCSeq: 1 NOTIFY\r\nEvent: presence\r\nSubscription-State: active\r\n\
         Content-Length: 0\r\n\r\n"
    );
    match exchange(partner.clone(), "edge.example.com", fed_a, &forged) {
        Ok(r) if r.starts_with("SIP/2.0 481") => {}
        other => a.fail(&format!("NOTIFY for no subscription of ours: expected 481, got {other:?}")),
    }
    // Not our domain: the partner cannot use us as a relay.
    let relay = exchange(partner, "edge.example.com", fed_a, &message_from("bob@partner.test", "carol@elsewhere.test"));
    match relay {
        Ok(r) if r.starts_with("SIP/2.0 404") => {}
        other => a.fail(&format!("relay attempt: expected 404, got {other:?}")),
    }

    // A certificate for the partner's very name, but from a CA nobody trusts: refused at the handshake.
    let rogue_dir = a.scratch.join("rogue-pki");
    std::fs::create_dir_all(&rogue_dir).expect("rogue dir");
    let (cert, key) = parapet::config::devpki::issue_leaf(&rogue_dir, "edge", &["edge.partner.test".to_string()])
        .expect("rogue certificate");
    let failed_before = Metrics::edge(&a).must(&a, "parapet_edge_handshakes_failed");
    let rogue = mtls_config(&a.ca, &cert, &key);
    match exchange(rogue, "edge.example.com", fed_a, &message_from("bob@partner.test", "alice@example.com")) {
        Err(_) => {}
        Ok(r) => a.fail(&format!("untrusted CA: expected the handshake to fail, got\n{r}")),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Metrics::edge(&a).must(&a, "parapet_edge_handshakes_failed") <= failed_before && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(Metrics::edge(&a).must(&a, "parapet_edge_handshakes_failed") > failed_before, "handshake failure counted");
}
