//! A parapet application in a few lines: connect to the pool over mutual TLS with the certificate its
//! `[[applications]]` entry names, register the agent addresses it serves, receive the MESSAGEs sent to them (or
//! delivered to it by a routing rule) and answer them.
//!
//! ```no_run
//! let cfg = agent::Config::new("127.0.0.1:5062", "pool.example.com", "ca.pem", "echo.pem", "echo.key");
//! let mut agent = agent::Agent::connect(&cfg)?;
//! agent.register("sip:echo@example.com")?;
//! loop {
//!     let m = agent.recv()?;
//!     agent.reply(&m, &format!("echo: {}", m.text()))?;
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Blocking, one connection, one thread. The wire contract it speaks (plain RFC 3261 over TLS, so any SIP stack
//! can do the same) is in docs/agents.md.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parapet::sip::{self, Frame, Framer, HeaderName, Limits, Message, Method, Uri};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

/// Where the pool is and who we are.
#[derive(Debug, Clone)]
pub struct Config {
    /// The pool's listener (`[pool] listen`).
    pub pool: String,
    /// A DNS name in the pool's certificate.
    pub server_name: String,
    /// The CA the pool's certificate chains to.
    pub ca: PathBuf,
    /// Our certificate (carrying the application's `cert_name`) and its key, PEM.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How long `connect` and `register` wait.
    pub timeout: Duration,
}

impl Config {
    pub fn new(
        pool: &str,
        server_name: &str,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Config {
        Config {
            pool: pool.into(),
            server_name: server_name.into(),
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A MESSAGE for one of our agent addresses.
pub struct Incoming {
    /// The sender's address (`sip:alice@example.com`).
    pub from: String,
    /// The address it was sent to (the Request-URI: our agent address, or a user's when a rule delivered it).
    pub target: String,
    pub content_type: String,
    pub body: Bytes,
    request: Message,
}

impl Incoming {
    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The request as received, for anything else an application wants to read.
    pub fn request(&self) -> &Message {
        &self.request
    }
}

struct Registration {
    aor: String,
    refresh_at: Instant,
}

/// A connection to the pool.
pub struct Agent {
    tls: StreamOwned<ClientConnection, TcpStream>,
    local: SocketAddr,
    buf: Vec<u8>,
    framer: Framer,
    limits: Limits,
    /// Requests that arrived while we waited for an answer of ours.
    pending: VecDeque<Message>,
    registrations: Vec<Registration>,
    seq: u64,
    salt: u64,
    timeout: Duration,
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, what.to_string())
}

/// Registration lifetime asked for; refreshed at half of what the pool grants.
const EXPIRES: u32 = 600;
/// How often a blocked `recv` wakes up to refresh registrations.
const TICK: Duration = Duration::from_millis(500);

/// `sip:user@host` of a URI's text, without parameters or angle brackets.
fn plain_uri(v: &[u8]) -> String {
    let addr = sip::NameAddr::parse(v).ok();
    match addr {
        Some(a) => format!(
            "sip:{}@{}",
            String::from_utf8_lossy(&a.uri.user_unescaped()),
            String::from_utf8_lossy(a.uri.host).to_ascii_lowercase()
        ),
        None => String::from_utf8_lossy(v).into_owned(),
    }
}

fn with_scheme(aor: &str) -> String {
    if aor.starts_with("sip:") || aor.starts_with("sips:") {
        aor.to_string()
    } else {
        format!("sip:{aor}")
    }
}

impl Agent {
    /// Connects and completes the TLS handshake (our certificate is checked by the pool then; a certificate it
    /// does not admit gets the connection closed, seen as an error here or at the first read).
    pub fn connect(cfg: &Config) -> io::Result<Agent> {
        let tls_cfg = parapet::net::tls::client_config(&cfg.ca, Some((&cfg.cert, &cfg.key)))
            .map_err(|e| io::Error::other(e.to_string()))?;
        let name = ServerName::try_from(cfg.server_name.clone()).map_err(invalid)?;
        let addr = cfg
            .pool
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(ErrorKind::NotFound, format!("{}: no address", cfg.pool)))?;
        let tcp = TcpStream::connect_timeout(&addr, cfg.timeout)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(cfg.timeout))?;
        let local = tcp.local_addr()?;
        let conn = ClientConnection::new(Arc::clone(&tls_cfg), name).map_err(invalid)?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        tls.sock.set_read_timeout(Some(TICK))?;
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()) << 32;
        Ok(Agent {
            tls,
            local,
            buf: Vec::with_capacity(16 * 1024),
            framer: Framer::new(),
            limits: Limits::default(),
            pending: VecDeque::new(),
            registrations: Vec::new(),
            seq: 0,
            salt,
            timeout: cfg.timeout,
        })
    }

    fn token(&mut self) -> String {
        self.seq += 1;
        format!("{:x}{:x}", self.salt, self.seq)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tls.write_all(bytes)?;
        self.tls.flush()
    }

    /// Sends a request of ours; returns its Call-ID.
    fn request(
        &mut self,
        method: &str,
        ruri: &str,
        from: &str,
        to: &str,
        extra: &[(HeaderName, &[u8])],
        body: Option<(&[u8], &[u8])>,
    ) -> io::Result<String> {
        let t = self.token();
        let via = format!("SIP/2.0/TLS {};branch=z9hG4bK{t}", self.local);
        let (from, to) = (format!("<{from}>;tag={t}"), format!("<{to}>"));
        let call_id = format!("{t}@{}", self.local.ip());
        let cseq = format!("1 {method}");
        let mut headers: Vec<(HeaderName, &[u8])> = vec![
            (HeaderName::Via, via.as_bytes()),
            (HeaderName::MaxForwards, b"70"),
            (HeaderName::From, from.as_bytes()),
            (HeaderName::To, to.as_bytes()),
            (HeaderName::CallId, call_id.as_bytes()),
            (HeaderName::CSeq, cseq.as_bytes()),
        ];
        headers.extend_from_slice(extra);
        let mut out = BytesMut::with_capacity(512 + body.map_or(0, |b| b.1.len()));
        sip::write_request(&mut out, method, ruri.as_bytes(), &headers, body);
        self.write(&out)?;
        Ok(call_id)
    }

    fn send_register(&mut self, aor: &str, expires: u32) -> io::Result<String> {
        let user = Uri::parse(aor.as_bytes())
            .map(|u| String::from_utf8_lossy(u.user.unwrap_or_default()).into_owned())
            .unwrap_or_default();
        let contact = format!("<sip:{user}@{};transport=tls>", self.local);
        let expires = expires.to_string();
        let domain = aor.rsplit_once('@').map_or("", |(_, d)| d).to_string();
        self.request(
            "REGISTER",
            &format!("sip:{domain}"),
            aor,
            aor,
            &[(HeaderName::Contact, contact.as_bytes()), (HeaderName::Expires, expires.as_bytes())],
            None,
        )
    }

    /// Registers an agent address (`sip:echo@example.com`) on this connection, waiting for the pool's answer;
    /// kept registered while `recv` runs. A 403 means the address is not in the application's `agents`.
    pub fn register(&mut self, aor: &str) -> io::Result<()> {
        let aor = with_scheme(aor);
        let call_id = self.send_register(&aor, EXPIRES)?;
        let answer = self.wait_answer(&call_id)?;
        match answer.status() {
            Some(200) => {
                let granted = answer.expires().unwrap_or(EXPIRES).max(2);
                let refresh_at = Instant::now() + Duration::from_secs(u64::from(granted / 2));
                self.registrations.retain(|r| r.aor != aor);
                self.registrations.push(Registration { aor, refresh_at });
                Ok(())
            }
            s => Err(io::Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "REGISTER {aor}: {} {}",
                    s.unwrap_or(0),
                    String::from_utf8_lossy(answer.reason().unwrap_or_default())
                ),
            )),
        }
    }

    /// The next MESSAGE for us (blocking). Answer it with [`Agent::answer`], [`Agent::reply`] or
    /// [`Agent::redirect`]: the pool waits for the answer only as long as the application's `timeout_ms`.
    pub fn recv(&mut self) -> io::Result<Incoming> {
        loop {
            let msg = match self.pending.pop_front() {
                Some(m) => m,
                None => self.next_message()?,
            };
            match msg.method() {
                Some(Method::Message) => {
                    let target = msg.request_uri().map(plain_uri).unwrap_or_default();
                    return Ok(Incoming {
                        from: plain_uri(msg.header(HeaderName::From).unwrap_or_default()),
                        target,
                        content_type: String::from_utf8_lossy(msg.content_type().unwrap_or_default()).into_owned(),
                        body: Bytes::copy_from_slice(msg.body()),
                        request: msg,
                    });
                }
                Some(Method::Options) => self.respond(&msg, 200, "OK", &[], None)?,
                Some(Method::Ack) => {}
                Some(_) => self.respond(&msg, 501, "Not Implemented", &[], None)?,
                // Answers to our own MESSAGEs and refreshes: nobody waits for them.
                None => {}
            }
        }
    }

    /// Answers a MESSAGE we received (e.g. 200, or 486 Busy Here).
    pub fn answer(&mut self, m: &Incoming, code: u16, reason: &str) -> io::Result<()> {
        self.respond(&m.request, code, reason, &[], None)
    }

    /// Answers 200, then sends `text` back to the sender, From the agent address it was sent to (or, for a
    /// MESSAGE a rule delivered to us, From our first registered address).
    pub fn reply(&mut self, m: &Incoming, text: &str) -> io::Result<()> {
        self.answer(m, 200, "OK")?;
        let from = if self.registrations.iter().any(|r| r.aor == m.target) {
            m.target.clone()
        } else {
            self.registrations.first().map(|r| r.aor.clone()).unwrap_or_else(|| m.target.clone())
        };
        self.send(&from, &m.from, text)
    }

    /// Hands the MESSAGE back to the pool for another target (a 302 with that Contact): it is delivered there.
    pub fn redirect(&mut self, m: &Incoming, target: &str) -> io::Result<()> {
        let contact = format!("<{}>", with_scheme(target));
        self.respond(&m.request, 302, "Moved Temporarily", &[(HeaderName::Contact, contact.as_bytes())], None)
    }

    /// Sends a MESSAGE From one of our agent addresses (text/plain). Its answer is not waited for.
    pub fn send(&mut self, from: &str, to: &str, text: &str) -> io::Result<()> {
        let (from, to) = (with_scheme(from), with_scheme(to));
        self.request("MESSAGE", &to, &from, &to, &[], Some((b"text/plain;charset=UTF-8", text.as_bytes())))?;
        Ok(())
    }

    fn respond(
        &mut self,
        req: &Message,
        code: u16,
        reason: &str,
        extra: &[(HeaderName, &[u8])],
        body: Option<(&[u8], &[u8])>,
    ) -> io::Result<()> {
        let tag = format!("a{:x}", self.salt);
        let mut out = BytesMut::with_capacity(512);
        sip::write_response(&mut out, req, code, reason, Some(tag.as_bytes()), extra, body);
        self.write(&out)
    }

    /// Waits for the answer to our request `call_id`, keeping requests that arrive meanwhile for `recv`.
    fn wait_answer(&mut self, call_id: &str) -> io::Result<Message> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if Instant::now() >= deadline {
                return Err(io::Error::new(ErrorKind::TimedOut, "no answer from the pool"));
            }
            let m = self.next_message()?;
            if m.is_request() {
                self.pending.push_back(m);
            } else if m.call_id() == call_id.as_bytes() && m.status().is_some_and(|s| s >= 200) {
                return Ok(m);
            }
        }
    }

    fn refresh_due(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let due: Vec<String> =
            self.registrations.iter().filter(|r| r.refresh_at <= now).map(|r| r.aor.clone()).collect();
        for aor in due {
            self.send_register(&aor, EXPIRES)?;
            for r in self.registrations.iter_mut().filter(|r| r.aor == aor) {
                r.refresh_at = now + Duration::from_secs(u64::from(EXPIRES / 2));
            }
        }
        Ok(())
    }

    /// The next complete message on the connection (blocking; refreshes registrations while it waits).
    fn next_message(&mut self) -> io::Result<Message> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.framer.frame(&self.buf, &self.limits) {
                Ok(Frame::Message { len }) => {
                    let bytes = Bytes::copy_from_slice(self.buf.get(..len).unwrap_or_default());
                    self.buf.drain(..len.min(self.buf.len()));
                    match Message::parse(bytes, &self.limits) {
                        Ok(m) => return Ok(m),
                        // Not ours to fix: skip it (the pool only sends what it parsed).
                        Err(_) => continue,
                    }
                }
                Ok(Frame::Ping { consumed }) => {
                    self.buf.drain(..consumed.min(self.buf.len()));
                    self.write(b"\r\n")?;
                    continue;
                }
                Ok(Frame::Pong { consumed }) => {
                    self.buf.drain(..consumed.min(self.buf.len()));
                    continue;
                }
                Ok(Frame::Incomplete) => {}
                Err(e) => return Err(invalid(format!("framing lost: {e}"))),
            }
            match self.tls.read(&mut chunk) {
                Ok(0) => return Err(io::Error::new(ErrorKind::ConnectionAborted, "the pool closed the connection")),
                Ok(n) => self.buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => self.refresh_due()?,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_plain_sip_uris() {
        assert_eq!(plain_uri(b"\"Alice\" <sip:alice@Example.COM;transport=tls>;tag=1"), "sip:alice@example.com");
        assert_eq!(plain_uri(b"sip:echo@example.com"), "sip:echo@example.com");
        assert_eq!(with_scheme("echo@example.com"), "sip:echo@example.com");
        assert_eq!(with_scheme("sip:echo@example.com"), "sip:echo@example.com");
    }

    #[test]
    fn connect_fails_with_the_reason() {
        let cfg = Config::new("127.0.0.1:9", "pool.example.com", "/nonexistent/ca.pem", "/x.pem", "/x.key");
        let e = Agent::connect(&cfg).err().unwrap().to_string();
        assert!(e.contains("ca.pem"), "{e}");
    }
}
