//! A small blocking SIP-over-TLS user agent for end-to-end tests: it frames with `parapet::sip::frame`, parses
//! with `parapet::sip::Message`, answers digest challenges with `parapet::pool::digest::response`, can bind its
//! socket to another loopback address (127.0.0.2, ...), and records every byte it receives (for the edge's leak
//! scan). Also: scraping `/metrics`, and the scan itself.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parapet::pool::digest::{self, Algorithm};
use parapet::sip::{self, Frame, HeaderName, Limits, Message};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::malformed::uniq;
use crate::support::Appliance;

/// Upper bound for any single SIP answer we wait for.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Wire recording (for the leak scan)

/// Every byte the edge wrote to a raw client, per appliance (port base) and client label.
pub(crate) type WireLog = Arc<Mutex<Vec<u8>>>;

pub(crate) fn wires() -> &'static Mutex<Vec<(u16, String, WireLog)>> {
    static W: Mutex<Vec<(u16, String, WireLog)>> = Mutex::new(Vec::new());
    &W
}

pub(crate) fn new_wire(app: &Appliance, label: &str) -> WireLog {
    let w: WireLog = Arc::default();
    wires().lock().unwrap_or_else(|p| p.into_inner()).push((app.port_base, label.to_string(), w.clone()));
    w
}

/// Strings that name an internal hop: the pool's and the edge's internal listeners, the pool's host name, and
/// the prefix of the edge's branches toward the pool; and the edge–pool protocol's own headers.
pub(crate) fn internal_markers(app: &Appliance) -> Vec<String> {
    vec![
        format!("127.0.0.1:{}", app.port_base + 1),
        format!("127.0.0.1:{}", app.port_base + 2),
        format!("pool.{}", app.domain),
        "z9hG4bKu".to_string(),
        "P-Parapet-".to_string(),
    ]
}

/// Scans everything the edge wrote to this appliance's raw clients; fails on any internal marker.
/// Returns how many bytes were scanned.
pub(crate) fn assert_no_internal_leaks(app: &Appliance) -> usize {
    let markers = internal_markers(app);
    let mut scanned = 0;
    let list: Vec<(String, WireLog)> = wires()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(b, _, _)| *b == app.port_base)
        .map(|(_, l, w)| (l.clone(), w.clone()))
        .collect();
    for (label, w) in list {
        let bytes = w.lock().unwrap_or_else(|p| p.into_inner()).clone();
        scanned += bytes.len();
        for m in &markers {
            if let Some(at) = find(&bytes, m.as_bytes()) {
                let from = at.saturating_sub(300);
                let to = (at + 300).min(bytes.len());
                app.fail(&format!(
                    "topology leak: the edge wrote {m:?} to client {label} (offset {at}); context:\n{}",
                    String::from_utf8_lossy(&bytes[from..to])
                ));
            }
        }
    }
    scanned
}

pub(crate) fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    h.windows(n.len()).position(|w| w == n)
}

// ---------------------------------------------------------------------------------------------
// Metrics and /bans

pub(crate) fn http_get(port: u16, path: &str) -> Result<String, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    // One write: the management server reads the request with a single read(2).
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("write {addr}: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("read {addr}{path}: {e}"))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    if !out.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path}: {}", out.lines().next().unwrap_or("")));
    }
    Ok(body)
}

/// A scrape of one /metrics endpoint.
pub(crate) struct Metrics(pub(crate) String);

impl Metrics {
    pub(crate) fn edge(app: &Appliance) -> Metrics {
        Metrics(http_get(app.port_base + 3, "/metrics").unwrap_or_else(|e| app.fail(&format!("edge metrics: {e}"))))
    }
    pub(crate) fn pool(app: &Appliance) -> Metrics {
        Metrics(http_get(app.port_base + 4, "/metrics").unwrap_or_else(|e| app.fail(&format!("pool metrics: {e}"))))
    }
    /// Sum over cores of `name{core="N"} v`; None when the counter is not exposed at all.
    pub(crate) fn get(&self, name: &str) -> Option<u64> {
        let mut found = false;
        let mut sum = 0;
        for l in self.0.lines() {
            // Counters are exposed as `<name>_total`; tests name them either way.
            if let Some(rest) = l.strip_prefix(name).map(|r| r.strip_prefix("_total").unwrap_or(r)) {
                if rest.starts_with('{') || rest.starts_with(' ') {
                    if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()) {
                        found = true;
                        sum += v;
                    }
                }
            }
        }
        found.then_some(sum)
    }
    pub(crate) fn must(&self, app: &Appliance, name: &str) -> u64 {
        self.get(name).unwrap_or_else(|| app.fail(&format!("metric {name} not exposed; scrape:\n{}", self.0)))
    }
}

/// Polls the edge's metrics until `name` reaches `at_least` (bounded); returns the last value.
pub(crate) fn wait_edge_metric(app: &Appliance, name: &str, at_least: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = Metrics::edge(app).must(app, name);
        if v >= at_least || Instant::now() >= deadline {
            return v;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets

pub(crate) fn tls_config(app: &Appliance) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&app.ca)
        .unwrap_or_else(|e| app.fail(&format!("read CA {}: {e:?}", app.ca.display())));
    for c in certs {
        let c = c.unwrap_or_else(|e| app.fail(&format!("parse CA: {e:?}")));
        roots.add(c).unwrap_or_else(|e| app.fail(&format!("add CA: {e}")));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| app.fail(&format!("rustls config: {e}")))
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

pub(crate) fn edge_addr(app: &Appliance) -> SocketAddrV4 {
    app.edge.parse().unwrap_or_else(|e| app.fail(&format!("edge address {:?}: {e}", app.edge)))
}

pub(crate) fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// A TCP connection to `to`, from loopback address `from` (any port) if given, with a small receive buffer if
/// `rcvbuf` is given (set before connect, so the advertised window stays small).
pub(crate) fn tcp_connect(from: Option<Ipv4Addr>, to: SocketAddrV4, rcvbuf: Option<i32>) -> std::io::Result<TcpStream> {
    let err = std::io::Error::last_os_error;
    // SAFETY: plain socket(2)/setsockopt(2)/bind(2)/connect(2) on a descriptor we own; the TcpStream takes
    // ownership right away, so every early return closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(err());
        }
        let stream = TcpStream::from_raw_fd(fd);
        if let Some(n) = rcvbuf {
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &n as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
            if rc != 0 {
                return Err(err());
            }
        }
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if let Some(ip) = from {
            let sa = sockaddr(SocketAddrV4::new(ip, 0));
            if libc::bind(fd, &sa as *const libc::sockaddr_in as *const libc::sockaddr, len) != 0 {
                return Err(err());
            }
        }
        let sa = sockaddr(to);
        if libc::connect(fd, &sa as *const libc::sockaddr_in as *const libc::sockaddr, len) != 0 {
            return Err(err());
        }
        Ok(stream)
    }
}

// ---------------------------------------------------------------------------------------------
// The raw UA

#[derive(Debug)]
pub(crate) enum End {
    /// EOF, reset, TLS alert: the edge closed the connection.
    Closed(String),
    Timeout,
    /// Bytes that do not frame or parse as SIP (description, raw message bytes if framed).
    Garbage(String, Vec<u8>),
}

pub(crate) struct Nonce {
    pub(crate) realm: String,
    pub(crate) nonce: String,
    pub(crate) alg: Algorithm,
    pub(crate) nc: u32,
}

pub(crate) struct Ua {
    pub(crate) label: String,
    pub(crate) s: StreamOwned<ClientConnection, TcpStream>,
    pub(crate) buf: Vec<u8>,
    pub(crate) wire: WireLog,
    pub(crate) local: SocketAddr,
    pub(crate) domain: String,
    /// alias and password once known (digest answers).
    pub(crate) creds: Option<(String, String)>,
    /// The last proxy challenge answered, reused with nc+1 (RFC 7616 §3.4).
    pub(crate) nonce: Option<Nonce>,
    /// Requests that arrived while we waited for a response.
    pub(crate) inbox: VecDeque<Message>,
    pub(crate) limits: Limits,
    pub(crate) cseq: u32,
}

/// A request we sent and how to find its answer.
#[derive(Clone)]
pub(crate) struct Sent {
    pub(crate) call_id: String,
    pub(crate) cseq: u32,
    pub(crate) bytes: String,
}

impl Ua {
    /// TLS connection to the edge's user port from `from` (loopback; None = kernel's choice).
    pub(crate) fn connect(app: &Appliance, label: &str, from: Option<Ipv4Addr>) -> Result<Ua, String> {
        Ua::connect_with(app, label, from, None)
    }

    pub(crate) fn connect_with(
        app: &Appliance,
        label: &str,
        from: Option<Ipv4Addr>,
        rcvbuf: Option<i32>,
    ) -> Result<Ua, String> {
        let tcp =
            tcp_connect(from, edge_addr(app), rcvbuf).map_err(|e| format!("{label}: connect {}: {e}", app.edge))?;
        tcp.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(|e| e.to_string())?;
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let conn = ClientConnection::new(tls_config(app), name).map_err(|e| format!("{label}: rustls: {e}"))?;
        let mut s = StreamOwned::new(conn, tcp);
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        while s.conn.is_handshaking() {
            match s.conn.complete_io(&mut s.sock) {
                Ok((0, 0)) => return Err(format!("{label}: connection closed during the TLS handshake")),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    if Instant::now() >= deadline {
                        return Err(format!("{label}: TLS handshake timed out"));
                    }
                }
                Err(e) => return Err(format!("{label}: TLS handshake failed: {e}")),
            }
        }
        Ok(Ua {
            label: label.to_string(),
            s,
            buf: Vec::new(),
            wire: new_wire(app, label),
            local,
            domain: app.domain.clone(),
            creds: None,
            nonce: None,
            inbox: VecDeque::new(),
            limits: Limits::DEFAULT,
            cseq: 0,
        })
    }

    pub(crate) fn connect_ok(app: &Appliance, label: &str, from: Option<Ipv4Addr>) -> Ua {
        Ua::connect(app, label, from).unwrap_or_else(|e| app.fail(&e))
    }

    /// How long one blocking read waits before the deadline is looked at again (100 ms by default).
    pub(crate) fn set_poll(&mut self, d: Duration) {
        let _ = self.s.sock.set_read_timeout(Some(d));
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)?;
        self.s.flush()
    }

    pub(crate) fn fill(&mut self, deadline: Instant) -> Result<(), End> {
        let mut chunk = [0u8; 16384];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return Err(End::Closed("EOF".into())),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.wire.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    if Instant::now() >= deadline {
                        return Err(End::Timeout);
                    }
                }
                Err(e) => return Err(End::Closed(format!("{:?}: {e}", e.kind()))),
            }
        }
    }

    /// The next SIP message on the wire (keep-alive CRLFs skipped).
    pub(crate) fn next_message(&mut self, timeout: Duration) -> Result<Message, End> {
        let deadline = Instant::now() + timeout;
        loop {
            match sip::frame(&self.buf, &self.limits) {
                Ok(Frame::Message { len }) => {
                    let raw = Bytes::copy_from_slice(&self.buf[..len]);
                    self.buf.drain(..len);
                    return Message::parse(raw.clone(), &self.limits)
                        .map_err(|e| End::Garbage(format!("{e}: {:?}", String::from_utf8_lossy(&raw)), raw.to_vec()));
                }
                Ok(Frame::Ping { consumed }) | Ok(Frame::Pong { consumed }) => {
                    self.buf.drain(..consumed.min(self.buf.len()));
                }
                Ok(Frame::Incomplete) => self.fill(deadline)?,
                Err(e) => {
                    return Err(End::Garbage(format!("{e:?}: {:?}", String::from_utf8_lossy(&self.buf)), Vec::new()))
                }
            }
        }
    }

    /// The next request addressed to us (from the inbox first).
    pub(crate) fn next_request(&mut self, timeout: Duration) -> Result<Message, End> {
        if let Some(m) = self.inbox.pop_front() {
            return Ok(m);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.next_message(deadline.saturating_duration_since(Instant::now()))?;
            if m.is_request() {
                return Ok(m);
            }
        }
    }

    /// The final response to `sent` (provisional ones and unrelated responses skipped, requests kept).
    pub(crate) fn final_response(&mut self, sent: &Sent, timeout: Duration) -> Result<Message, End> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.next_message(deadline.saturating_duration_since(Instant::now()))?;
            if m.is_request() {
                self.inbox.push_back(m);
                continue;
            }
            if m.call_id() == sent.call_id.as_bytes() && m.cseq().seq == sent.cseq && m.status().unwrap_or(0) >= 200 {
                return Ok(m);
            }
        }
    }

    pub(crate) fn user(&self) -> String {
        self.creds.as_ref().map(|(a, _)| a.clone()).unwrap_or_else(|| "anonymous".into())
    }

    /// Bytes of a request. `from_user` names the From AOR's user part.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        &self,
        method: &str,
        ruri: &str,
        from_user: &str,
        to: &str,
        call_id: &str,
        cseq: u32,
        extra: &[String],
        body: &[u8],
    ) -> String {
        let d = &self.domain;
        let local = self.local;
        let me = self.user();
        let branch = format!("z9hG4bKc{}", uniq());
        let tag = format!("f{}", &digest_hex(call_id)[..10]);
        let mut h = format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/TLS {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{from_user}@{d}>;tag={tag}\r\n\
             To: <{to}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:{me}@{local};transport=tls>\r\n"
        );
        for e in extra {
            h.push_str(e);
            h.push_str("\r\n");
        }
        if !body.is_empty() {
            h.push_str("Content-Type: text/plain\r\n");
        }
        h.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        h.push_str(&String::from_utf8_lossy(body));
        h
    }

    /// `Digest ...` credentials for `method ruri` against our cached nonce (nc advanced).
    pub(crate) fn credentials(&mut self, method: &str, ruri: &str) -> Option<String> {
        let (alias, password) = self.creds.clone()?;
        let n = self.nonce.as_mut()?;
        n.nc += 1;
        let nc = format!("{:08x}", n.nc);
        let cnonce = format!("c{}", digest_hex(&uniq()).get(..16).unwrap_or("0"));
        let ha1 = digest::ha1(n.alg, alias.as_bytes(), n.realm.as_bytes(), password.as_bytes());
        let resp = digest::response(
            n.alg,
            ha1.as_bytes(),
            method.as_bytes(),
            ruri.as_bytes(),
            n.nonce.as_bytes(),
            Some(nc.as_bytes()),
            Some(cnonce.as_bytes()),
            Some(b"auth"),
        );
        Some(format!(
            "Digest username=\"{alias}\", realm=\"{}\", nonce=\"{}\", uri=\"{ruri}\", response=\"{resp}\", \
             algorithm={}, qop=auth, nc={nc}, cnonce=\"{cnonce}\"",
            n.realm,
            n.nonce,
            n.alg.as_str()
        ))
    }

    /// Takes the challenge of a 401/407 (MD5 preferred, else the first usable one) as our nonce.
    pub(crate) fn take_challenge(&mut self, r: &Message) -> bool {
        let name = if r.status() == Some(401) { HeaderName::WwwAuthenticate } else { HeaderName::ProxyAuthenticate };
        let mut best: Option<Nonce> = None;
        for v in r.header_lines(name) {
            let Ok(c) = sip::parse_challenge(v) else { continue };
            let alg = match c.algorithm {
                None => Algorithm::Md5,
                Some(a) => match Algorithm::parse(a) {
                    Some(a) => a,
                    None => continue,
                },
            };
            let n = Nonce {
                realm: String::from_utf8_lossy(c.realm).into_owned(),
                nonce: String::from_utf8_lossy(c.nonce).into_owned(),
                alg,
                nc: 0,
            };
            if best.is_none() || alg == Algorithm::Md5 {
                best = Some(n);
            }
        }
        self.nonce = best;
        self.nonce.is_some()
    }

    /// Sends a request (with cached credentials when `auth` and we have a nonce); does not wait.
    pub(crate) fn send_request(
        &mut self,
        method: &str,
        ruri: &str,
        from_user: &str,
        to: &str,
        extra: &[String],
        body: &[u8],
    ) -> Sent {
        self.send_request_in(&format!("{}-{}", self.label, uniq()), method, ruri, from_user, to, extra, body, true)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_request_in(
        &mut self,
        call_id: &str,
        method: &str,
        ruri: &str,
        from_user: &str,
        to: &str,
        extra: &[String],
        body: &[u8],
        auth: bool,
    ) -> Sent {
        self.cseq += 1;
        let mut extra = extra.to_vec();
        if auth && method != "REGISTER" {
            if let Some(c) = self.credentials(method, ruri) {
                extra.push(format!("Proxy-Authorization: {c}"));
            }
        }
        let bytes = self.build(method, ruri, from_user, to, call_id, self.cseq, &extra, body);
        let _ = self.send(bytes.as_bytes());
        Sent { call_id: call_id.to_string(), cseq: self.cseq, bytes }
    }

    /// A whole transaction as our own user: send, answer one challenge (401/407) if we have credentials, return
    /// the final response.
    pub(crate) fn transaction(
        &mut self,
        method: &str,
        ruri: &str,
        to: &str,
        extra: &[String],
        body: &[u8],
    ) -> Result<(Sent, Message), String> {
        let me = self.user();
        let call_id = format!("{}-{}", self.label, uniq());
        let mut sent = self.send_request_in(&call_id, method, ruri, &me, to, extra, body, true);
        for _ in 0..3 {
            let r = self.final_response(&sent, ANSWER_TIMEOUT).map_err(|e| {
                format!("{}: {method} {ruri}: no final response ({e:?})\nsent:\n{}", self.label, sent.bytes)
            })?;
            let code = r.status().unwrap_or(0);
            if !(code == 401 || code == 407) || self.creds.is_none() || !self.take_challenge(&r) {
                return Ok((sent, r));
            }
            let mut ex = extra.to_vec();
            if method == "REGISTER" {
                if let Some(c) = self.credentials(method, ruri) {
                    ex.push(format!("Authorization: {c}"));
                }
            }
            sent = self.send_request_in(&call_id, method, ruri, &me, to, &ex, body, true);
        }
        Err(format!("{}: {method} {ruri}: challenged again and again", self.label))
    }

    /// REGISTER as `alias` (digest computed here); the final response.
    pub(crate) fn register(&mut self, alias: &str, password: &str) -> Result<Message, String> {
        self.creds = Some((alias.to_string(), password.to_string()));
        let d = self.domain.clone();
        let (_, r) = self.transaction(
            "REGISTER",
            &format!("sip:{d}"),
            &format!("sip:{alias}@{d}"),
            &["Expires: 600".into()],
            b"",
        )?;
        self.nonce = None; // the registrar's nonce lives on another pool core than the proxy challenges may
        Ok(r)
    }

    pub(crate) fn register_ok(&mut self, app: &Appliance, alias: &str) {
        let u = app.user(alias);
        match self.register(&u.alias, &u.password) {
            Ok(r) if r.status() == Some(200) => {}
            Ok(r) => app.fail(&format!("{}: REGISTER as {alias}: expected 200, got\n{}", self.label, text(&r))),
            Err(e) => app.fail(&e),
        }
    }

    /// MESSAGE to `to_user` as ourselves; the final response.
    pub(crate) fn message(&mut self, to_user: &str, body: &str) -> Result<Message, String> {
        let d = self.domain.clone();
        let to = format!("sip:{to_user}@{d}");
        self.transaction("MESSAGE", &to, &to, &[], body.as_bytes()).map(|(_, r)| r)
    }

    /// Answers `req` (To tag added); returns the bytes, after `edit` has had its way with them.
    pub(crate) fn answer_with(
        &mut self,
        req: &Message,
        code: u16,
        reason: &str,
        edit: impl Fn(String) -> String,
    ) -> String {
        let mut out = BytesMut::with_capacity(512);
        let tag = format!("a{}", &digest_hex(&self.label)[..8]);
        sip::write_response(&mut out, req, code, reason, Some(tag.as_bytes()), &[], None);
        let s = edit(String::from_utf8_lossy(&out).into_owned());
        let _ = self.send(s.as_bytes());
        s
    }

    /// Reads until the edge closes the connection (bounded); Err if it is still open at the deadline.
    pub(crate) fn wait_closed(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(()) => {
                    // Keep the buffer small: we only care about the end.
                    if self.buf.len() > 1 << 20 {
                        self.buf.clear();
                    }
                }
                Err(End::Closed(why)) => return Ok(why),
                Err(End::Timeout) => return Err(format!("{}: still open after {timeout:?}", self.label)),
                Err(End::Garbage(g, _)) => return Err(g),
            }
        }
    }
}

pub(crate) fn digest_hex(s: &str) -> String {
    use md5::Digest as _;
    md5::Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.bytes()).into_owned()
}

pub(crate) fn reason(m: &Message) -> String {
    String::from_utf8_lossy(m.reason().unwrap_or(b"")).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Gate: register first
