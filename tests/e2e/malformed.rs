//! Raw TLS client against the remote-user listener: malformed input, oversize messages, garbage,
//! keep-alive pings.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::support::Appliance;

const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Raw<'a> {
    pub(crate) app: &'a Appliance,
    s: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
    pub(crate) local_port: u16,
}

#[derive(Debug)]
pub(crate) enum ReadEnd {
    /// EOF, close_notify, reset: the server closed the connection.
    Closed(#[allow(dead_code)] String),
    Timeout,
}

pub(crate) struct Response {
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn status_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or("")
    }
    pub(crate) fn code(&self) -> Option<u16> {
        let mut it = self.status_line().splitn(3, ' ');
        if it.next() != Some("SIP/2.0") {
            return None;
        }
        it.next().and_then(|c| c.parse().ok()).filter(|c| (100..700).contains(c))
    }
    pub(crate) fn reason(&self) -> &str {
        self.status_line().splitn(3, ' ').nth(2).unwrap_or("")
    }
    /// Value of the first header called `name` (case-insensitive; compact forms not handled).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

impl<'a> Raw<'a> {
    pub(crate) fn connect(app: &'a Appliance) -> Raw<'a> {
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&app.ca)
            .unwrap_or_else(|e| app.fail(&format!("read CA {}: {e:?}", app.ca.display())));
        for c in certs {
            let c = c.unwrap_or_else(|e| app.fail(&format!("parse CA {}: {e:?}", app.ca.display())));
            roots.add(c).unwrap_or_else(|e| app.fail(&format!("add CA: {e}")));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| app.fail(&format!("rustls config: {e}")))
            .with_root_certificates(roots)
            .with_no_client_auth();
        let host = app.edge.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_default();
        let name = ServerName::try_from(host.clone()).unwrap_or_else(|e| app.fail(&format!("server name {host}: {e}")));
        let conn = ClientConnection::new(Arc::new(cfg), name).unwrap_or_else(|e| app.fail(&format!("rustls: {e}")));
        let tcp = TcpStream::connect(&app.edge).unwrap_or_else(|e| app.fail(&format!("connect {}: {e}", app.edge)));
        tcp.set_read_timeout(Some(Duration::from_millis(250))).expect("set_read_timeout");
        tcp.set_write_timeout(Some(READ_TIMEOUT)).expect("set_write_timeout");
        let local_port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        let mut s = StreamOwned::new(conn, tcp);
        // Complete the handshake now so that TLS problems are reported as such.
        let deadline = Instant::now() + READ_TIMEOUT;
        while s.conn.is_handshaking() {
            match s.conn.complete_io(&mut s.sock) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if Instant::now() >= deadline {
                        app.fail("TLS handshake timed out");
                    }
                }
                Err(e) => app.fail(&format!("TLS handshake with {} failed: {e}", app.edge)),
            }
        }
        Raw { app, s, buf: Vec::new(), local_port }
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)?;
        self.s.flush()
    }

    pub(crate) fn send_ok(&mut self, bytes: &[u8], what: &str) {
        if let Err(e) = self.send(bytes) {
            self.app.fail(&format!("sending {what} failed: {e}"));
        }
    }

    /// Read more bytes into the buffer, up to `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), ReadEnd> {
        let mut chunk = [0u8; 16384];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return Err(ReadEnd::Closed("EOF".into())),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    if Instant::now() >= deadline {
                        return Err(ReadEnd::Timeout);
                    }
                }
                Err(e) => return Err(ReadEnd::Closed(format!("{:?}: {e}", e.kind()))),
            }
        }
    }

    /// Read one SIP response (head + Content-Length body).
    fn response(&mut self, timeout: Duration) -> Result<Response, ReadEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            // Skip keep-alive CRLFs between messages.
            while self.buf.starts_with(b"\r\n") && !self.buf.starts_with(b"\r\n\r\n") {
                self.buf.drain(..2);
            }
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let len = head
                    .split("\r\n")
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        let k = k.trim();
                        (k.eq_ignore_ascii_case("content-length") || k == "l")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    return Ok(Response { head, body });
                }
            }
            self.fill(deadline)?;
        }
    }

    pub(crate) fn expect_response(&mut self, what: &str) -> Response {
        match self.response(READ_TIMEOUT) {
            Ok(r) => r,
            Err(e) => {
                let got = String::from_utf8_lossy(&self.buf).to_string();
                self.app.fail(&format!("{what}: no complete response ({e:?}); bytes received so far: {got:?}"))
            }
        }
    }

    /// Wait (bounded) until the server closes; returns whatever bytes arrived before that.
    fn expect_closed(&mut self, what: &str, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(()) => {}
                Err(ReadEnd::Closed(_)) => return std::mem::take(&mut self.buf),
                Err(ReadEnd::Timeout) => {
                    let got = String::from_utf8_lossy(&self.buf).to_string();
                    self.app.fail(&format!("{what}: connection still open after {timeout:?}; bytes received: {got:?}"))
                }
            }
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

pub(crate) fn uniq() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}x{}x{nanos}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// A well-formed OPTIONS from a (non-authenticated) remote client.
fn options(raw: &Raw, call_id: &str, cseq: &str) -> String {
    let d = &raw.app.domain;
    let p = raw.local_port;
    let u = uniq();
    format!(
        "OPTIONS sip:{d} SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:{p};branch=z9hG4bK{u};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@{d}>;tag=t{u}\r\n\
         To: <sip:{d}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq}\r\n\
         Contact: <sip:alice@127.0.0.1:{p};transport=tls>\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn broken_cseq_gets_400_and_connection_stays_usable() {
    let app = Appliance::start("malformed-cseq");
    let mut raw = Raw::connect(&app);

    let bad = options(&raw, &format!("bad-cseq-{}", uniq()), "abc OPTIONS");
    raw.send_ok(bad.as_bytes(), "OPTIONS with a broken CSeq");
    let r = raw.expect_response("OPTIONS with CSeq `abc OPTIONS`");
    if r.code() != Some(400) || r.reason().trim().is_empty() {
        app.fail(&format!(
            "broken CSeq: expected `SIP/2.0 400 <reason>`, got status line {:?}\n{}",
            r.status_line(),
            r.head
        ));
    }

    // Same connection, valid request: must still be answered, with Call-ID and CSeq echoed.
    let call_id = format!("good-{}", uniq());
    let good = options(&raw, &call_id, "2 OPTIONS");
    raw.send_ok(good.as_bytes(), "valid OPTIONS after the 400");
    let r = raw.expect_response("valid OPTIONS after a 400 on the same connection");
    let Some(code) = r.code() else {
        app.fail(&format!("valid OPTIONS: not a SIP response: {:?}", r.head));
    };
    if code < 200 {
        // Provisional: read on to the final response.
        let r2 = raw.expect_response("final response to the valid OPTIONS");
        if r2.code().unwrap_or(0) < 200 {
            app.fail(&format!("valid OPTIONS: no final response, got {:?}", r2.status_line()));
        }
    }
    if code == 400 {
        app.fail(&format!("valid OPTIONS after a broken one was rejected as malformed:\n{}", r.head));
    }
    if r.header("Call-ID") != Some(call_id.as_str()) {
        app.fail(&format!("response to the valid OPTIONS does not echo Call-ID {call_id}:\n{}", r.head));
    }
    if r.header("CSeq").map(|c| c.split_whitespace().collect::<Vec<_>>()) != Some(vec!["2", "OPTIONS"]) {
        app.fail(&format!("response to the valid OPTIONS does not echo `CSeq: 2 OPTIONS`:\n{}", r.head));
    }
    let _ = r.body;
}

#[test]
fn content_length_over_limit_gets_513_and_close() {
    let app = Appliance::start("malformed-513");
    let mut raw = Raw::connect(&app);
    let d = &app.domain;
    let p = raw.local_port;
    let u = uniq();
    let req = format!(
        "MESSAGE sip:bob@{d} SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:{p};branch=z9hG4bK{u};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@{d}>;tag=t{u}\r\n\
         To: <sip:bob@{d}>\r\n\
         Call-ID: big-{u}\r\n\
         CSeq: 1 MESSAGE\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: 70000\r\n\r\n"
    );
    raw.send_ok(req.as_bytes(), "MESSAGE head with Content-Length: 70000");
    // No body: the head alone must be enough for the verdict (and unread body bytes could make the
    // server's close a TCP reset that discards the response before we read it).
    let r = raw.expect_response("MESSAGE with Content-Length 70000");
    if r.status_line() != "SIP/2.0 513 Message Too Large" {
        app.fail(&format!(
            "Content-Length 70000: expected `SIP/2.0 513 Message Too Large`, got {:?}\n{}",
            r.status_line(),
            r.head
        ));
    }
    raw.expect_closed("after 513", Duration::from_secs(10));
}

#[test]
fn garbage_without_framing_closes_connection() {
    let app = Appliance::start("malformed-garbage");
    let mut raw = Raw::connect(&app);
    // 96 KiB of binary noise: no CRLF, so no SIP start line and no header block ever ends.
    let mut x: u32 = 0x1234_5678;
    let garbage: Vec<u8> = (0..96 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            match (x >> 24) as u8 {
                b'\r' | b'\n' => 0,
                b => b,
            }
        })
        .collect();
    // The server may close while we are still writing: that is fine.
    let _ = raw.send(&garbage);
    let before_close = raw.expect_closed("after 96 KiB of unframed garbage", Duration::from_secs(15));
    if !before_close.is_empty() && !before_close.starts_with(b"SIP/2.0 ") {
        app.fail(&format!("server sent non-SIP bytes before closing: {:?}", String::from_utf8_lossy(&before_close)));
    }
}

#[test]
fn crlf_ping_gets_crlf_pong() {
    let app = Appliance::start("malformed-ping");
    let mut raw = Raw::connect(&app);
    raw.send_ok(b"\r\n\r\n", "CRLFCRLF ping");
    let deadline = Instant::now() + Duration::from_secs(5);
    while raw.buf.len() < 2 {
        if let Err(e) = raw.fill(deadline) {
            app.fail(&format!(
                "CRLFCRLF ping: expected a CRLF pong, got {:?} then {e:?}",
                String::from_utf8_lossy(&raw.buf)
            ));
        }
    }
    if raw.buf != b"\r\n" {
        app.fail(&format!("CRLFCRLF ping: expected exactly \"\\r\\n\", got {:?}", String::from_utf8_lossy(&raw.buf)));
    }
    raw.buf.clear();
    // Still usable afterwards.
    let call_id = format!("after-ping-{}", uniq());
    let req = options(&raw, &call_id, "7 OPTIONS");
    raw.send_ok(req.as_bytes(), "OPTIONS after the ping");
    let r = raw.expect_response("OPTIONS after a CRLF ping");
    if r.code().is_none() || r.header("Call-ID") != Some(call_id.as_str()) {
        app.fail(&format!("OPTIONS after ping: bad response\n{}", r.head));
    }
}
