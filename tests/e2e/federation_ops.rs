//! Federation operations on real appliances (the setup of [`crate::federation`]):
//! - `parapet federation test <domain>` against a partner (ok: names, trust, TLS, OPTIONS 200) and against a peer
//!   presenting a certificate from another CA (exit 1, one clear sentence);
//! - hot reload on SIGHUP: a broken file leaves the table in force; removing partner B cuts B's established
//!   connection and refuses B's new MESSAGE, while partner C's established connection and A's users keep working.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::federation::{im, mtls_config};
use crate::malformed::uniq;
use crate::rawsip::{Metrics, Ua};
use crate::support::{parapet_bin, Appliance};

const FED_PORT: u16 = 5;

fn partner_block(peer: &Appliance) -> String {
    format!(
        "[[edge.federation.partners]]\ndomain = \"{d}\"\ncert_name = \"edge.{d}\"\naddr = \"127.0.0.1:{}\"\n",
        peer.port_base + FED_PORT,
        d = peer.domain,
    )
}

fn fed_head(me: &Appliance, ca: &Path) -> String {
    format!("[edge.federation]\nlisten = \"127.0.0.1:{}\"\nca = \"{}\"\n\n", me.port_base + FED_PORT, ca.display())
}

/// A raw mutual-TLS connection to a federation listener, kept open across requests.
struct Peer(StreamOwned<ClientConnection, TcpStream>);

impl Peer {
    fn connect(cfg: Arc<ClientConfig>, server_name: &str, port: u16) -> Result<Peer, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
        let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
        let conn = ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
        Ok(Peer(StreamOwned::new(conn, tcp)))
    }

    /// Sends `request`, returns the response head, or Err when the connection ends first.
    fn ask(&mut self, request: &str) -> Result<String, String> {
        self.0.write_all(request.as_bytes()).map_err(|e| format!("write: {e}"))?;
        let _ = self.0.flush();
        self.read_head(Duration::from_secs(10))
    }

    fn read_head(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.0.read(&mut buf) {
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
        Err("timed out".into())
    }
}

fn request(method: &str, from: &str, to: &str) -> String {
    let u = uniq();
    let (ruri, body) = if method == "OPTIONS" { (format!("sip:{}", to), "") } else { (format!("sip:{to}"), "hello") };
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKo{u}\r\nMax-Forwards: 70\r\n\
         From: <sip:{from}>;tag=t{u}\r\nTo: <sip:{to}>\r\nCall-ID: ops-{u}\r\nCSeq: 1 {method}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn probe(app: &Appliance, config: &Path, domain: &str) -> (bool, String) {
    let mut cmd = Command::new(parapet_bin());
    cmd.args(["federation", "test", domain, "-c"]).arg(config);
    let out = cmd.output().unwrap_or_else(|e| app.fail(&format!("cannot run the probe: {e}")));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), all)
}

#[test]
fn federation_test_command_reports_trust_tls_and_options() {
    let mut a = Appliance::prepare("fedops-probe-a", &[]);
    let mut b = Appliance::prepare("fedops-probe-b", &["--domain", "partner.test"]);
    let sa = fed_head(&a, &b.ca) + &partner_block(&b);
    let sb = fed_head(&b, &a.ca) + &partner_block(&a);
    a.run_roles(&sa, &[a.port_base + FED_PORT]);
    b.run_roles(&sb, &[b.port_base + FED_PORT]);
    let edge_cfg = a.data_dir.join("edge.toml");

    let (ok, out) = probe(&a, &edge_cfg, "partner.test");
    if !ok {
        a.fail(&format!("probe of partner.test failed:\n{out}"));
    }
    for want in ["edge.partner.test", "trusted: yes", "tls: TLSv1_3", "SIP/2.0 200"] {
        assert!(out.contains(want), "probe output lacks {want:?}:\n{out}");
    }

    // A peer presenting a certificate from another CA: A's own edge (A's CA), listed under a partner domain.
    let mut text = std::fs::read_to_string(&edge_cfg).expect("edge.toml");
    text.push_str(&format!(
        "\n[[edge.federation.partners]]\ndomain = \"loop.test\"\ncert_name = \"edge.example.com\"\naddr = \"127.0.0.1:{}\"\n",
        a.port_base + FED_PORT
    ));
    let probe_cfg = a.data_dir.join("edge-probe.toml");
    std::fs::write(&probe_cfg, text).expect("write probe config");
    let (ok, out) = probe(&a, &probe_cfg, "loop.test");
    assert!(!ok, "probe of a peer from another CA must fail:\n{out}");
    assert!(out.contains("trusted: no"), "{out}");
    assert!(out.contains("is not trusted: it does not chain to our federation CA"), "{out}");
    // Nothing configured for the domain: one sentence, exit 1.
    let (ok, out) = probe(&a, &edge_cfg, "nowhere.test");
    assert!(!ok && out.contains("nowhere.test is not a partner"), "{out}");
}

fn sighup(app: &Appliance) {
    let pid = app.edge_pid().unwrap_or_else(|| app.fail("no edge pid"));
    // SAFETY: kill(2) on a process this test started.
    unsafe {
        libc::kill(pid as i32, libc::SIGHUP);
    }
}

fn wait_metric(app: &Appliance, name: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = Metrics::edge(app).must(app, name);
        if v >= at_least || Instant::now() >= deadline {
            return v;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_reload_cuts_a_removed_partner_and_keeps_the_others() {
    let mut a = Appliance::prepare("fedops-reload-a", &[]);
    let mut b = Appliance::prepare("fedops-reload-b", &["--domain", "partner.test"]);
    let mut c = Appliance::prepare("fedops-reload-c", &["--domain", "third.test"]);
    // A trusts both partners' CAs.
    let cas = a.data_dir.join("partners-ca.pem");
    let pem = std::fs::read_to_string(&b.ca).expect("B's CA") + &std::fs::read_to_string(&c.ca).expect("C's CA");
    std::fs::write(&cas, pem).expect("write CA bundle");
    let (block_b, block_c) = (partner_block(&b), partner_block(&c));
    let sa = fed_head(&a, &cas) + &block_b + &block_c;
    a.run_roles(&sa, &[a.port_base + FED_PORT]);
    b.run_roles(&(fed_head(&b, &a.ca) + &partner_block(&a)), &[b.port_base + FED_PORT]);
    c.run_roles(&(fed_head(&c, &a.ca) + &partner_block(&a)), &[c.port_base + FED_PORT]);

    let mut alice = Ua::connect_ok(&a, "alice", None);
    alice.register_ok(&a, "alice");
    let mut bob = Ua::connect_ok(&b, "bob", None);
    bob.register_ok(&b, "bob");
    let mut carol = Ua::connect_ok(&c, "bob", None);
    carol.register_ok(&c, "bob");
    let alice = im(&mut bob, alice, &b, "alice@example.com", "from b, before");
    let alice = im(&mut carol, alice, &c, "alice@example.com", "from c, before");

    // Raw connections as B's and C's edges, established before the reloads.
    let fed_a = a.port_base + FED_PORT;
    let (pki_b, pki_c) = (b.data_dir.join("pki"), c.data_dir.join("pki"));
    let as_b = mtls_config(&a.ca, &pki_b.join("edge.pem"), &pki_b.join("edge.key"));
    let as_c = mtls_config(&a.ca, &pki_c.join("edge.pem"), &pki_c.join("edge.key"));
    let mut raw_b = Peer::connect(as_b.clone(), "edge.example.com", fed_a).expect("B connects");
    let mut raw_c = Peer::connect(as_c, "edge.example.com", fed_a).expect("C connects");
    for (p, from) in [(&mut raw_b, "probe@partner.test"), (&mut raw_c, "probe@third.test")] {
        match p.ask(&request("OPTIONS", from, "example.com")) {
            Ok(r) if r.starts_with("SIP/2.0 200") => {}
            other => a.fail(&format!("OPTIONS from {from} before reload: {other:?}")),
        }
    }

    // A broken file: refused, logged, the table in force stays.
    let edge_cfg = a.data_dir.join("edge.toml");
    let good = std::fs::read_to_string(&edge_cfg).expect("edge.toml");
    std::fs::write(&edge_cfg, good.replace(&block_b, &block_b.replace("addr = \"127", "addr = \"not an address ")))
        .expect("w");
    sighup(&a);
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(Metrics::edge(&a).must(&a, "parapet_edge_federation_reloads"), 0, "a broken file must not apply");
    assert!(a.stderr.last(200).contains("reload refused"), "refusal logged:\n{}", a.stderr.last(30));
    let alice = im(&mut bob, alice, &b, "alice@example.com", "from b, after a bad reload");

    // Partner B removed: its connections are cut, its new requests refused; C and A's own users carry on.
    std::fs::write(&edge_cfg, good.replace(&block_b, "")).expect("write edge.toml");
    sighup(&a);
    assert!(wait_metric(&a, "parapet_edge_federation_reloads", 1) >= 1, "reload applied");
    assert!(wait_metric(&a, "parapet_edge_federation_peers_cut", 2) >= 2, "B's connections (edge + raw) cut");
    match raw_b.read_head(Duration::from_secs(5)) {
        Err(e) if e.starts_with("closed") || e.starts_with("read") => {}
        other => a.fail(&format!("B's established connection should be closed, got {other:?}")),
    }
    let refused = Peer::connect(as_b, "edge.example.com", fed_a)
        .and_then(|mut p| p.ask(&request("MESSAGE", "bob@partner.test", "alice@example.com")));
    if let Ok(r) = &refused {
        a.fail(&format!("a new MESSAGE from removed partner B must be refused, got\n{r}"));
    }
    match raw_c.ask(&request("OPTIONS", "probe@third.test", "example.com")) {
        Ok(r) if r.starts_with("SIP/2.0 200") => {}
        other => a.fail(&format!("C's established connection after reload: {other:?}")),
    }
    let mut alice = im(&mut carol, alice, &c, "alice@example.com", "from c, after");
    let _carol = im(&mut alice, carol, &a, "bob@third.test", "from a, after");

    // The management API reloads the same way: POST /reload answers with the summary.
    let before = Metrics::edge(&a).must(&a, "parapet_edge_federation_reloads");
    let answer = post_reload(a.port_base + 3).unwrap_or_else(|e| a.fail(&format!("POST /reload: {e}")));
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("federation table reloaded"), "{answer}");
    assert!(wait_metric(&a, "parapet_edge_federation_reloads", before + 1) > before, "POST /reload applied");

    // A new partner with a CA of its own: refused at the handshake until a reload brings its CA into the bundle
    // (same file, new contents) and its entry into the table; then admitted, while C's connection carries on.
    let dir_d = a.scratch.join("fourth-pki");
    std::fs::create_dir_all(&dir_d).expect("fourth dir");
    let (cert_d, key_d) = parapet::config::devpki::issue_leaf(&dir_d, "edge", &["edge.fourth.test".to_string()])
        .expect("fourth.test's certificate");
    let as_d = mtls_config(&a.ca, &cert_d, &key_d);
    let options_d = request("OPTIONS", "probe@fourth.test", "example.com");
    if let Ok(r) = Peer::connect(as_d.clone(), "edge.example.com", fed_a).and_then(|mut p| p.ask(&options_d)) {
        a.fail(&format!("fourth.test before its CA is trusted: expected a refused handshake, got\n{r}"));
    }
    let bundle = std::fs::read_to_string(&cas).expect("bundle")
        + &std::fs::read_to_string(dir_d.join("ca.pem")).expect("D's CA");
    std::fs::write(&cas, bundle).expect("write CA bundle");
    let block_d = "[[edge.federation.partners]]\ndomain = \"fourth.test\"\ncert_name = \"edge.fourth.test\"\n\
                   addr = \"127.0.0.1:9\"\n";
    std::fs::write(&edge_cfg, good.replace(&block_b, "") + "\n" + block_d).expect("write edge.toml");
    let before = Metrics::edge(&a).must(&a, "parapet_edge_federation_reloads");
    sighup(&a);
    assert!(wait_metric(&a, "parapet_edge_federation_reloads", before + 1) > before, "reload with the new CA applied");
    match Peer::connect(as_d, "edge.example.com", fed_a).and_then(|mut p| p.ask(&options_d)) {
        Ok(r) if r.starts_with("SIP/2.0 200") => {}
        other => a.fail(&format!("fourth.test after the reload of CA and table: expected 200, got {other:?}")),
    }
    match raw_c.ask(&request("OPTIONS", "probe@third.test", "example.com")) {
        Ok(r) if r.starts_with("SIP/2.0 200") => {}
        other => a.fail(&format!("C's connection established before both reloads: {other:?}")),
    }
}

fn post_reload(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    s.write_all(b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}
