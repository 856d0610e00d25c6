//! Federation with a standard SIP proxy (issue 6 acceptance): Kamailio 5.x with its tls module, from Debian, acts
//! as the edge of partner.test. The test installs it when missing (apt-get; a failure is a test failure), writes
//! its kamailio.cfg and tls.cfg, and runs it next to a parapet appliance for example.com:
//! - Kamailio listens TLS on two loopback ports with a certificate for edge.partner.test from partner.test's own
//!   development CA: a user port (registrar for partner.test, no client certificate) and a federation port that
//!   requires and verifies a client certificate from example.com's CA (parapet connects there);
//! - requests for example.com go to parapet's federation listener over TLS, Kamailio presenting its certificate
//!   as a client (parapet verifies it carries edge.partner.test);
//! - requests from parapet for partner.test users go to their registered contact.
//!
//! Then alice@example.com (raw TLS client, digest at parapet's edge) and dave@partner.test (raw TLS client
//! registered at Kamailio) exchange MESSAGEs both ways, each answered 200 end to end.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parapet::sip::{self, Frame, Limits, Message};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::malformed::uniq;
use crate::rawsip::{text, Metrics, Ua};
use crate::support::{
    apt_install, free_port_base, run_bounded, stops_with_the_test, terminate_group, wait_timeout, Appliance, Tail,
};

/// Port (offset from the appliance's port base) of parapet's federation listener.
const FED_PORT: u16 = 5;
const WAIT: Duration = Duration::from_secs(15);

/// Where Debian (and a source build) put Kamailio's modules.
const MODULE_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib/kamailio/modules",
    "/usr/local/lib64/kamailio/modules",
    "/usr/local/lib/kamailio/modules",
];

fn kamailio_bin() -> Option<PathBuf> {
    ["/usr/sbin/kamailio", "/usr/local/sbin/kamailio", "/usr/bin/kamailio"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn module_dir() -> Option<PathBuf> {
    MODULE_DIRS.iter().map(PathBuf::from).find(|d| d.join("tls.so").exists() && d.join("tm.so").exists())
}

/// Kamailio and its tls module, installed from Debian when missing. Any failure panics with apt's output.
fn ensure_kamailio() -> (PathBuf, PathBuf) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let (Some(bin), Some(dir)) = (kamailio_bin(), module_dir()) {
        return (bin, dir);
    }
    apt_install(&["kamailio", "kamailio-tls-modules"]);
    match (kamailio_bin(), module_dir()) {
        (Some(bin), Some(dir)) => (bin, dir),
        other => {
            panic!("apt-get installed kamailio, but binary/modules not found: {other:?} (looked in {MODULE_DIRS:?})")
        }
    }
}

/// A running Kamailio (its own process group, killed on drop) and its log.
struct Kamailio {
    child: Child,
    log: Tail,
    cfg: String,
}

impl Kamailio {
    fn tail(&self) -> String {
        format!(
            "--- kamailio.cfg ---\n{}\n--- Kamailio log tail ---\n{}\n--- end of Kamailio log ---",
            self.cfg,
            self.log.last(120)
        )
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        terminate_group(&mut self.child, Duration::from_secs(5));
    }
}

struct KamPorts {
    /// Registrar for partner.test users (TLS, no client certificate).
    user: u16,
    /// Federation port: TLS requiring a client certificate from example.com's CA.
    fed: u16,
}

#[allow(clippy::too_many_arguments)]
fn kamailio_cfg(
    dir: &Path,
    modules: &Path,
    ports: &KamPorts,
    cert: &Path,
    key: &Path,
    peer_ca: &Path,
    parapet_fed: u16,
) -> (PathBuf, String) {
    let tls_cfg = dir.join("tls.cfg");
    let (cert, key, ca) = (cert.display(), key.display(), peer_ca.display());
    let (user, fed) = (ports.user, ports.fed);
    let tls = format!(
        "# partner.test's edge: users on {user} (no client certificate), federation on {fed} (mutual TLS)\n\
         [server:default]\nmethod = TLSv1.2+\ncertificate = {cert}\nprivate_key = {key}\n\
         verify_certificate = no\nrequire_certificate = no\n\n\
         [server:127.0.0.1:{fed}]\nmethod = TLSv1.2+\ncertificate = {cert}\nprivate_key = {key}\n\
         verify_certificate = yes\nrequire_certificate = yes\nca_list = {ca}\n\n\
         [client:default]\nmethod = TLSv1.2+\ncertificate = {cert}\nprivate_key = {key}\n\
         verify_certificate = yes\nrequire_certificate = yes\nca_list = {ca}\n"
    );
    fs::write(&tls_cfg, tls).expect("write tls.cfg");
    let cfg = format!(
        r#"#!KAMAILIO
# partner.test's edge for the parapet federation interop test.
debug=2
log_stderror=yes
fork=yes
children=2
tcp_children=2
auto_aliases=no
alias="partner.test"
alias="edge.partner.test"
listen=tls:127.0.0.1:{user}
listen=tls:127.0.0.1:{fed}
enable_tls=yes
disable_tcp=no
tcp_accept_no_cl=yes
tcp_connection_lifetime=600
dns=no
rev_dns=no
use_dns_cache=no
server_signature=no
user_agent_header="User-Agent: kamailio-partner-edge"

loadpath "{modules}"

loadmodule "tls.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "nathelper.so"
loadmodule "xlog.so"

modparam("tls", "config", "{tls_cfg}")
modparam("usrloc", "db_mode", 0)
modparam("usrloc", "use_domain", 0)
modparam("registrar", "max_expires", 3600)
modparam("registrar", "received_avp", "$avp(RECEIVED)")
modparam("nathelper", "received_avp", "$avp(RECEIVED)")
modparam("nathelper", "natping_interval", 0)
modparam("tm", "fr_timer", 10000)

request_route {{
	force_rport();
	xlog("L_INFO", "KAM request $rm $ru from $si:$sp on port $Rp, From $fu\n");
	if (!mf_process_maxfwd_header("10")) {{
		sl_send_reply("483", "Too Many Hops");
		exit;
	}}
	if (is_method("ACK")) {{
		if (t_check_trans()) {{ t_relay(); }}
		exit;
	}}
	if ($Rp == {fed}) {{
		# From example.com's edge (client certificate verified against its CA): only example.com users,
		# only toward ours.
		if ($fd != "example.com" || !(uri == myself)) {{
			sl_send_reply("403", "Forbidden");
			exit;
		}}
	}}
	if ($rd == "example.com") {{
		# Our user toward the partner: to parapet's federation listener, mutual TLS.
		$du = "sip:127.0.0.1:{parapet_fed};transport=tls";
		if (!t_relay()) {{ sl_reply_error(); }}
		exit;
	}}
	if (!(uri == myself)) {{
		sl_send_reply("404", "Not Found");
		exit;
	}}
	if (is_method("REGISTER")) {{
		fix_nated_register();
		if (!save("location")) {{ sl_reply_error(); }}
		exit;
	}}
	if (!lookup("location")) {{
		sl_send_reply("480", "Temporarily Unavailable");
		exit;
	}}
	if (!t_relay()) {{ sl_reply_error(); }}
	exit;
}}

onreply_route {{
	xlog("L_INFO", "KAM reply $rs $rr from $si:$sp for $rm\n");
}}
"#,
        modules = modules.display(),
        tls_cfg = tls_cfg.display(),
    );
    let path = dir.join("kamailio.cfg");
    fs::write(&path, &cfg).expect("write kamailio.cfg");
    (path, cfg)
}

fn start_kamailio(app: &Appliance, bin: &Path, cfg: &Path, cfg_text: String, ports: &KamPorts) -> Kamailio {
    let dir = cfg.parent().expect("cfg dir");
    let run = dir.join("run");
    fs::create_dir_all(&run).expect("run dir");
    let check = run_bounded(Command::new(bin).arg("-c").arg("-f").arg(cfg), Duration::from_secs(30));
    if let Err(e) = check {
        app.fail(&format!("kamailio -c rejects the config:\n{e}\n--- kamailio.cfg ---\n{cfg_text}"));
    }
    let mut cmd = Command::new(bin);
    cmd.arg("-f")
        .arg(cfg)
        .args(["-DD", "-E", "-m", "64", "-M", "8", "-Y"])
        .arg(&run)
        .arg("-w")
        .arg(dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    stops_with_the_test(&mut cmd);
    let mut child = cmd.spawn().unwrap_or_else(|e| app.fail(&format!("cannot start {}: {e}", bin.display())));
    let log = Tail::default();
    log.collect(child.stderr.take().expect("piped"), Some(dir.join("kamailio.stderr")), None);
    log.collect(child.stdout.take().expect("piped"), Some(dir.join("kamailio.stdout")), None);
    let mut kam = Kamailio { child, log, cfg: cfg_text };
    let deadline = Instant::now() + WAIT;
    loop {
        let up = [ports.user, ports.fed].iter().all(|p| {
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], *p)), Duration::from_millis(200)).is_ok()
        });
        if up {
            return kam;
        }
        if let Some(st) = wait_timeout(&mut kam.child, Duration::from_millis(100)) {
            thread::sleep(Duration::from_millis(200));
            app.fail(&format!("Kamailio exited during start-up ({st})\n{}", kam.tail()));
        }
        if Instant::now() >= deadline {
            app.fail(&format!(
                "Kamailio not accepting on {} and {} after {WAIT:?}\n{}",
                ports.user,
                ports.fed,
                kam.tail()
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dave: a minimal raw TLS user agent registered at Kamailio

struct Dave {
    s: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
    local: SocketAddr,
    limits: Limits,
    inbox: Vec<Message>,
}

fn roots(ca: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(c.expect("CA parses")).expect("CA added");
    }
    roots
}

impl Dave {
    fn connect(port: u16, ca: &Path) -> Result<Dave, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots(ca))
            .with_no_client_auth();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let tcp =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let name = ServerName::try_from("edge.partner.test").map_err(|e| e.to_string())?;
        let conn = ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
        let mut s = StreamOwned::new(conn, tcp);
        let deadline = Instant::now() + WAIT;
        while s.conn.is_handshaking() {
            match s.conn.complete_io(&mut s.sock) {
                Ok((0, 0)) => return Err("dave: closed during the TLS handshake".into()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    if Instant::now() >= deadline {
                        return Err("dave: TLS handshake timed out".into());
                    }
                }
                Err(e) => return Err(format!("dave: TLS handshake with Kamailio failed: {e}")),
            }
        }
        Ok(Dave { s, buf: Vec::new(), local, limits: Limits::DEFAULT, inbox: Vec::new() })
    }

    fn send(&mut self, bytes: &str) -> Result<(), String> {
        self.s.write_all(bytes.as_bytes()).and_then(|_| self.s.flush()).map_err(|e| format!("dave: write: {e}"))
    }

    fn next_message(&mut self, deadline: Instant) -> Result<Message, String> {
        let mut chunk = [0u8; 16384];
        loop {
            match sip::frame(&self.buf, &self.limits) {
                Ok(Frame::Message { len }) => {
                    let raw = Bytes::copy_from_slice(&self.buf[..len]);
                    self.buf.drain(..len);
                    return Message::parse(raw.clone(), &self.limits)
                        .map_err(|e| format!("dave: unparsable {e}: {:?}", String::from_utf8_lossy(&raw)));
                }
                Ok(Frame::Ping { consumed }) | Ok(Frame::Pong { consumed }) => {
                    self.buf.drain(..consumed.min(self.buf.len()));
                    continue;
                }
                Ok(Frame::Incomplete) => {}
                Err(e) => return Err(format!("dave: bad framing {e:?}: {:?}", String::from_utf8_lossy(&self.buf))),
            }
            match self.s.read(&mut chunk) {
                Ok(0) => return Err("dave: Kamailio closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "dave: nothing within the deadline (buffered {:?})",
                            String::from_utf8_lossy(&self.buf)
                        ));
                    }
                }
                Err(e) => return Err(format!("dave: read: {e}")),
            }
        }
    }

    fn next_request(&mut self, timeout: Duration) -> Result<Message, String> {
        if !self.inbox.is_empty() {
            return Ok(self.inbox.remove(0));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.next_message(deadline)?;
            if m.is_request() {
                return Ok(m);
            }
        }
    }

    /// Sends a request and returns its final response (requests arriving meanwhile are kept).
    fn transaction(&mut self, method: &str, ruri: &str, to: &str, extra: &str, body: &str) -> Result<Message, String> {
        let u = uniq();
        let call_id = format!("dave-{u}");
        let local = self.local;
        let ctype = if body.is_empty() { "" } else { "Content-Type: text/plain\r\n" };
        let req = format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKd{u};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:dave@partner.test>;tag=d{u}\r\nTo: <{to}>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n\
             Contact: <sip:dave@{local};transport=tls>\r\n{extra}{ctype}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(&req)?;
        let deadline = Instant::now() + WAIT;
        loop {
            let m = self.next_message(deadline).map_err(|e| format!("{e}\nsent:\n{req}"))?;
            if m.is_request() {
                self.inbox.push(m);
                continue;
            }
            if m.call_id() == call_id.as_bytes() && m.status().unwrap_or(0) >= 200 {
                return Ok(m);
            }
        }
    }

    fn answer(&mut self, req: &Message, code: u16, reason: &str) -> Result<(), String> {
        let mut out = BytesMut::with_capacity(512);
        sip::write_response(&mut out, req, code, reason, Some(b"dave1"), &[], None);
        self.send(&String::from_utf8_lossy(&out))
    }
}

#[test]
fn kamailio_partner_edge_exchanges_messages_over_mutual_tls() {
    exchange_with_kamailio(false);
}

/// The same with Kamailio's edge known by DNS name only (issue 16): `addr = "partner.test"`, found through the
/// `_sipfederationtls._tcp.partner.test` SRV record a real DNS server (dnsmasq) serves.
#[test]
fn kamailio_partner_edge_reached_by_dns_name() {
    exchange_with_kamailio(true);
}

fn exchange_with_kamailio(by_dns: bool) {
    let (bin, modules) = ensure_kamailio();
    let mut app = Appliance::prepare(if by_dns { "fed-kamailio-dns" } else { "fed-kamailio" }, &[]);
    assert_eq!(app.domain, "example.com");

    // partner.test's own development CA and its edge certificate.
    let kdir = app.scratch.join("kamailio");
    let pki = kdir.join("pki");
    fs::create_dir_all(&pki).expect("kamailio pki dir");
    let (cert, key) =
        parapet::config::devpki::issue_leaf(&pki, "edge", &["edge.partner.test".to_string(), "127.0.0.1".to_string()])
            .unwrap_or_else(|e| app.fail(&format!("partner certificate: {e}")));
    let partner_ca = pki.join("ca.pem");

    let kb = free_port_base();
    let ports = KamPorts { user: kb, fed: kb + 1 };
    let parapet_fed = app.port_base + FED_PORT;
    let (addr, resolver, _dns) = if by_dns {
        let dns_port = kb + 2;
        let records = [
            crate::support_dns::srv("_sipfederationtls._tcp.partner.test", "edge.partner.test", ports.fed, 10, 0),
            crate::support_dns::a("edge.partner.test"),
        ];
        let dns = crate::support_dns::Dnsmasq::start(kdir.join("dns"), dns_port, &["partner.test"], &records);
        ("partner.test".to_string(), format!("resolver = \"127.0.0.1:{dns_port}\"\n"), Some(dns))
    } else {
        (format!("127.0.0.1:{}", ports.fed), String::new(), None)
    };
    let snippet = format!(
        "[edge.federation]\nlisten = \"127.0.0.1:{parapet_fed}\"\nca = \"{}\"\n{resolver}\n\
         [[edge.federation.partners]]\ndomain = \"partner.test\"\ncert_name = \"edge.partner.test\"\naddr = \"{addr}\"\n",
        partner_ca.display(),
    );
    app.run_roles(&snippet, &[parapet_fed]);

    let (cfg_path, cfg_text) = kamailio_cfg(&kdir, &modules, &ports, &cert, &key, &app.ca, parapet_fed);
    let kam = start_kamailio(&app, &bin, &cfg_path, cfg_text, &ports);
    let fail = |msg: &str| -> ! { app.fail(&format!("{msg}\n{}", kam.tail())) };

    // dave registers at Kamailio (no auth there), alice at parapet (digest).
    let mut dave = Dave::connect(ports.user, &partner_ca).unwrap_or_else(|e| fail(&e));
    match dave.transaction("REGISTER", "sip:partner.test", "sip:dave@partner.test", "Expires: 600\r\n", "") {
        Ok(r) if r.status() == Some(200) => {}
        Ok(r) => fail(&format!("dave's REGISTER at Kamailio: expected 200, got\n{}", text(&r))),
        Err(e) => fail(&e),
    }
    let mut alice = Ua::connect_ok(&app, "alice", None);
    alice.register_ok(&app, "alice");

    // alice → dave: parapet's edge → Kamailio's federation port (mutual TLS) → dave; 200 back the same way.
    let answering = thread::spawn(move || {
        let got = dave.next_request(WAIT);
        let result = match got {
            Ok(req) => {
                let ok = req.body() == b"hello dave" && req.method().is_some();
                let answered = dave.answer(&req, 200, "OK");
                match (ok, answered) {
                    (true, Ok(())) => Ok(()),
                    (false, _) => Err(format!("unexpected request at dave:\n{}", text(&req))),
                    (_, Err(e)) => Err(e),
                }
            }
            Err(e) => Err(format!("no request reached dave: {e}")),
        };
        (dave, result)
    });
    let r = alice.transaction("MESSAGE", "sip:dave@partner.test", "sip:dave@partner.test", &[], b"hello dave");
    let (mut dave, delivered) = answering.join().expect("dave's thread");
    if let Err(e) = delivered {
        fail(&format!("alice → dave: {e}"));
    }
    match r {
        Ok((_, resp)) if resp.status() == Some(200) => {}
        Ok((_, resp)) => fail(&format!("alice → dave: expected 200, got\n{}", text(&resp))),
        Err(e) => fail(&format!("alice → dave: {e}")),
    }

    // dave → alice: Kamailio → parapet's federation listener (Kamailio's client certificate) → alice.
    let answering = thread::spawn(move || {
        let mut alice = alice;
        let result = match alice.next_request(WAIT) {
            Ok(req) => {
                let ok = req.body() == b"hello alice";
                alice.answer_with(&req, 200, "OK", |s| s);
                if ok {
                    Ok(())
                } else {
                    Err(format!("unexpected request at alice:\n{}", text(&req)))
                }
            }
            Err(e) => Err(format!("no request reached alice: {e:?}")),
        };
        (alice, result)
    });
    let r = dave.transaction("MESSAGE", "sip:alice@example.com", "sip:alice@example.com", "", "hello alice");
    let (_alice, delivered) = answering.join().expect("alice's thread");
    if let Err(e) = delivered {
        fail(&format!("dave → alice: {e}"));
    }
    match r {
        Ok(resp) if resp.status() == Some(200) => {}
        Ok(resp) => fail(&format!("dave → alice: expected 200, got\n{}", text(&resp))),
        Err(e) => fail(&format!("dave → alice: {e}")),
    }
    assert!(Metrics::edge(&app).must(&app, "parapet_edge_requests_to_partners") >= 1);
    assert!(Metrics::edge(&app).must(&app, "parapet_edge_requests_from_partners") >= 1);
    drop(kam);
}
