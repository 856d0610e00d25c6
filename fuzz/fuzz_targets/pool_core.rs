//! Two pool cores driven by a sequence of inputs decoded from the fuzz data: requests from edge connections
//! (REGISTER, MESSAGE, SUBSCRIBE, PUBLISH with and without valid credentials, raw messages), answers to what the
//! cores sent to the edge, undeliverable requests, mesh messages delivered (or refused as full) between the two
//! cores, store replies, timers and ticks of a fake clock; and an application's connection on either core
//! (REGISTERs, MESSAGEs, answers to what the pool sent it, including redirects, and its close). The harness plays the shell: it keeps what the cores
//! asked for and hands it back when the data says so.
//!
//! Invariants after every step: no panic; every table within its configured bound; at most one final response
//! per request the harness sent.
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use parapet::config::applications::{Application, Fallback};
use parapet::config::helpdesk::Desk;
use parapet::config::routing::RoutingConfig;
use parapet::net::ConnId;
use parapet::pool::apps::agents::AppTable;
use parapet::pool::apps::{RuleSet, RulesSlot};
use parapet::pool::digest::{self, Algorithm};
use parapet::pool::presence::subscriptions::SubLimits;
use parapet::pool::presence::{publications::PubLimits, PresenceSettings};
use parapet::pool::registrar::RegistrarLimits;
use parapet::pool::users::Users;
use parapet::pool::{Action, CoreSettings, Now, PoolCore, PoolMsg, PoolStats, Resume, Timer};
use parapet::shard::shard_for;
use parapet::sip::{self, HeaderName, Limits, Message};
use parapet::store::directory::{Directory, User};
use parapet::store::thread::{Op, Reply};
use parapet::store::{ContactRow, PolicyRow, StoreError};

const DOMAIN: &str = "example.com";
const EDGE: &str = "127.0.0.1:5063";
const USERS: [&str; 4] = ["alice", "bob", "carol", "zed"];
const PATHS: [&str; 3] = [
    "<sip:f1@127.0.0.1:5063;transport=tls;lr>",
    "<sip:f2@127.0.0.1:5063;transport=tls;lr>",
    "<sip:f3@192.0.2.9:5063;transport=tls;lr>",
];
/// Our branches carry this mark; raw messages that contain it are not sent (they could fake our requests).
const MARK: &str = "HARN";
/// Pending items the harness keeps per kind (oldest dropped): bounds the harness, not the cores.
const PENDING_MAX: usize = 64;

const AORS_MAX: usize = 3;
const BINDINGS_PER_AOR: usize = 3;
const NONCES_MAX: usize = 6;
const TXNS_MAX: usize = 3;
const SUBS_MAX: usize = 5;
const PUBS_MAX: usize = 4;
/// Conversations the fuzzed help desk remembers (a small table: eviction is exercised).
const DESK_CONVERSATIONS_MAX: usize = 2;
/// The application's connection slot (on either core), and the MESSAGEs it may have waiting per core.
const APP_SLOT: u32 = 30;
const APP_QUEUE: usize = 2;

struct Data<'a>(&'a [u8]);

impl Data<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn pick(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn settings() -> Arc<CoreSettings> {
    let user = |alias: &str| User {
        alias: alias.into(),
        display_name: alias.into(),
        password: Some(format!("{alias}-pw")),
        ..User::default()
    };
    let users =
        Users::from_directory(&Directory { users: vec![user("alice"), user("bob"), user("carol")] }, DOMAIN, DOMAIN);
    let edge: SocketAddr = EDGE.parse().expect("addr");
    let mut s = CoreSettings::with_defaults(DOMAIN, "127.0.0.1:5062".parse().expect("addr"), vec![edge], users);
    s.algorithms = vec![Algorithm::Md5];
    s.registrar = RegistrarLimits { bindings_per_aor_max: BINDINGS_PER_AOR, aors_max: AORS_MAX, ..Default::default() };
    s.nonces_max = NONCES_MAX;
    s.transactions_max = TXNS_MAX;
    s.nonce_ttl_s = 120;
    // A help desk (MESSAGEs to `desk@`): members on both cores, one of them no user at all; a small table.
    let desk = Desk {
        address: format!("desk@{DOMAIN}"),
        members: ["bob", "carol", "zed"].map(aor).to_vec(),
        stick_s: 30,
        auto_reply: "nobody".into(),
        unpublished_available: true,
        conversations_max: DESK_CONVERSATIONS_MAX,
    };
    let routing = RoutingConfig { helpdesks: vec![desk], ..Default::default() };
    s.rules = Arc::new(RulesSlot::new(RuleSet::new(&routing, 1, 2)));
    let echo = Application {
        name: "echo".into(),
        cert_name: "echo.apps".into(),
        agents: vec![format!("echo@{DOMAIN}")],
        timeout_ms: 500,
        queue: APP_QUEUE,
        fallback: Fallback::Reject { code: 480, reason: "Temporarily Unavailable".into() },
    };
    s.apps = Arc::new(AppTable::new(&[echo], 2));
    s.presence = PresenceSettings {
        publications: PubLimits { per_presentity_max: 2, total_max: PUBS_MAX, ..Default::default() },
        subscriptions: SubLimits {
            per_watcher_max: 3,
            per_presentity_max: 3,
            total_max: SUBS_MAX,
            ..Default::default()
        },
        ..Default::default()
    };
    Arc::new(s)
}

struct Harness {
    cores: Vec<PoolCore>,
    now: Now,
    n: u32,
    /// Requests the cores sent to the edge, to answer.
    to_edge: VecDeque<(usize, Bytes)>,
    /// Requests the cores sent to the application (the core its connection is on), to answer.
    to_app: VecDeque<(usize, Bytes)>,
    mesh: VecDeque<(usize, PoolMsg)>,
    calls: VecDeque<(usize, Op, Resume)>,
    timers: VecDeque<(usize, Timer)>,
    /// The last nonce each core challenged with, and the nc used with it.
    nonces: HashMap<usize, (String, u32)>,
    /// Final responses per request of ours (by branch).
    finals: HashMap<String, u32>,
    /// Subscription dialogs the cores accepted: (Call-ID, From tag, our To tag, Request-URI, user).
    dialogs: VecDeque<(String, String, String, String, usize)>,
    etags: VecDeque<String>,
    scratch: Vec<Action>,
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() >= PENDING_MAX {
        q.pop_front();
    }
    q.push_back(v);
}

fn conn(core: usize, slot: u32) -> ConnId {
    ConnId { core: core as u16, gen: 1, slot }
}

fn aor(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

impl Harness {
    fn new() -> Harness {
        let s = settings();
        let now = Now { secs: 1_700_000_000, mono: Instant::now() };
        let cores = (0..2).map(|id| PoolCore::new(s.clone(), id, 2, Arc::new(PoolStats::default()), now)).collect();
        Harness {
            cores,
            now,
            n: 0,
            to_edge: VecDeque::new(),
            to_app: VecDeque::new(),
            mesh: VecDeque::new(),
            calls: VecDeque::new(),
            timers: VecDeque::new(),
            nonces: HashMap::new(),
            finals: HashMap::new(),
            dialogs: VecDeque::new(),
            etags: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    /// One input into core `c`, then what it asked for.
    fn step(&mut self, c: usize, f: impl FnOnce(&mut PoolCore, Now)) {
        let now = self.now;
        let Some(core) = self.cores.get_mut(c) else { return };
        f(core, now);
        let mut out = std::mem::take(&mut self.scratch);
        core.take_actions(&mut out);
        for a in out.drain(..) {
            self.perform(c, a);
        }
        self.scratch = out;
        self.check();
    }

    fn perform(&mut self, c: usize, a: Action) {
        match a {
            Action::Send { conn, bytes } if conn.slot == APP_SLOT => self.seen_at_app(conn, bytes),
            Action::Send { bytes, .. } => self.seen_response(c, bytes),
            Action::Mesh { core, msg } => {
                assert_ne!(core, c, "a core hands nothing to itself over the mesh");
                assert!(core < 2, "no such core");
                if let PoolMsg::Write { conn, bytes } = msg {
                    if conn.slot == APP_SLOT {
                        self.seen_at_app(conn, bytes);
                    } else {
                        self.seen_response(core, bytes);
                    }
                } else {
                    push_bounded(&mut self.mesh, (core, msg));
                }
            }
            Action::ToEdge { addr, bytes } => {
                assert_eq!(addr, EDGE.parse::<SocketAddr>().expect("addr"), "only to configured edges");
                assert!(Message::parse(bytes.clone(), &Limits::default()).is_ok(), "what goes to the edge parses");
                push_bounded(&mut self.to_edge, (c, bytes));
            }
            Action::StoreWrite(_) | Action::Archive(_) => {}
            Action::StoreCall { op, then } => push_bounded(&mut self.calls, (c, op, then)),
            Action::Timer { timer, .. } => push_bounded(&mut self.timers, (c, timer)),
        }
    }

    /// Something written to the application's connection: a request to answer later, or an answer to its own.
    fn seen_at_app(&mut self, conn: ConnId, bytes: Bytes) {
        let is_request = match Message::parse(bytes.clone(), &parapet::net::conn::peer_limits(&Limits::default())) {
            Ok(m) => m.is_request(),
            Err(e) => panic!("the pool sent the application something that does not parse: {e:?}"),
        };
        if is_request {
            push_bounded(&mut self.to_app, (usize::from(conn.core), bytes));
        } else {
            self.seen_response(usize::from(conn.core), bytes);
        }
    }

    fn seen_response(&mut self, core: usize, bytes: Bytes) {
        let msg = match Message::parse(bytes, &parapet::net::conn::peer_limits(&Limits::default())) {
            Ok(m) => m,
            Err(e) => panic!("the pool sent something that does not parse: {e:?}"),
        };
        let Some(status) = msg.status() else { return };
        if let Some(w) = msg.header(HeaderName::WwwAuthenticate).or(msg.header(HeaderName::ProxyAuthenticate)) {
            if let Ok(ch) = sip::parse_challenge(w) {
                self.nonces.insert(core, (String::from_utf8_lossy(ch.nonce).to_string(), 0));
            }
        }
        if let Some(t) = msg.header(HeaderName::SipETag) {
            push_bounded(&mut self.etags, String::from_utf8_lossy(t).to_string());
        }
        let Some(branch) = msg.top_via().and_then(|v| v.branch()).map(|b| String::from_utf8_lossy(b).to_string())
        else {
            return;
        };
        if !branch.contains(MARK) || status < 200 {
            return;
        }
        if status < 300 && msg.cseq().method == parapet::sip::Method::Subscribe {
            if let (Some(to), Some(from)) = (msg.to().tag(), msg.from().tag()) {
                let user = USERS.iter().position(|u| msg.from().uri.user == Some(u.as_bytes())).unwrap_or(0);
                let ruri = format!("sip:{}", parapet::pool::aor_of(&msg.to().uri));
                let call = String::from_utf8_lossy(msg.call_id()).to_string();
                let d = (call, String::from_utf8_lossy(from).into(), String::from_utf8_lossy(to).into(), ruri, user);
                push_bounded(&mut self.dialogs, d);
            }
        }
        let n = self.finals.entry(branch.clone()).or_default();
        *n += 1;
        assert!(*n <= 1, "two final responses to one request ({branch}), the second: {status}");
    }

    fn check(&self) {
        for core in &self.cores {
            let s = core.sizes();
            assert!(s.aors <= AORS_MAX, "{s:?}");
            assert!(s.bindings <= AORS_MAX * BINDINGS_PER_AOR, "{s:?}");
            assert!(s.nonces <= NONCES_MAX, "{s:?}");
            assert!(s.transactions <= TXNS_MAX, "{s:?}");
            assert!(s.subscriptions <= SUBS_MAX, "{s:?}");
            assert!(s.publications <= PUBS_MAX, "{s:?}");
            assert!(s.backends <= SUBS_MAX * 500, "{s:?}");
            assert!(s.helpdesk_gathers <= parapet::pool::helpdesk::GATHERS_MAX, "{s:?}");
            assert!(s.helpdesk_conversations <= DESK_CONVERSATIONS_MAX, "{s:?}");
            assert!(core.transactions_in_flight() - s.transactions <= APP_QUEUE, "application queue bound");
        }
    }

    fn owner(user: &str) -> usize {
        shard_for(aor(user).as_bytes(), 2)
    }

    /// Credentials for `user` over the nonce its core gave last (a wrong password when `bad`).
    fn creds(&mut self, header: &str, user: &str, method: &str, bad: bool) -> String {
        let Some((nonce, nc)) = self.nonces.get_mut(&Self::owner(user)) else { return String::new() };
        *nc += 1;
        let nc = format!("{:08x}", *nc);
        let uri = format!("sip:{DOMAIN}");
        let pw = if bad { "wrong".to_string() } else { format!("{user}-pw") };
        let ha1 = digest::ha1(Algorithm::Md5, user.as_bytes(), DOMAIN.as_bytes(), pw.as_bytes());
        let r = digest::response(
            Algorithm::Md5,
            ha1.as_bytes(),
            method.as_bytes(),
            uri.as_bytes(),
            nonce.as_bytes(),
            Some(nc.as_bytes()),
            Some(b"cn"),
            Some(b"auth"),
        );
        format!(
            "{header}: Digest username=\"{user}\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{r}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"cn\"\r\n"
        )
    }

    fn branch(&mut self) -> String {
        self.n += 1;
        format!("z9hG4bK{MARK}{}", self.n)
    }

    fn send(&mut self, c: usize, raw: String) {
        let Ok(msg) = Message::parse(Bytes::from(raw), &parapet::net::conn::peer_limits(&Limits::default())) else {
            return;
        };
        let slot = 1 + self.n % 3;
        self.step(c, |core, now| core.on_message(conn(c, slot), msg, now));
    }

    fn run(&mut self, d: &mut Data<'_>) {
        match d.pick(22) {
            0 => {
                let (c, u, f) = (d.pick(2), USERS[d.pick(4)], d.byte());
                let creds =
                    if f & 1 == 1 { self.creds("Authorization", u, "REGISTER", f & 2 == 2) } else { String::new() };
                let b = self.branch();
                let n = self.n;
                let (contact, expires) = match (f & 4 == 4, f & 8 == 8, f & 0x80 == 0x80) {
                    (true, _, _) => ("Contact: *\r\n".to_string(), 0),
                    (_, true, _) => (format!("Contact: <sip:{u}@192.0.2.1:{}>\r\n", 5000 + n % 4), 0),
                    (_, _, true) => (format!("Contact: <sip:{u}@192.0.2.1:{}>\r\n", 5000 + n % 4), 30),
                    _ => (
                        format!(
                            "Contact: <sip:{u}@192.0.2.1:{}>;+sip.instance=\"<urn:uuid:{}>\";reg-id=1\r\n",
                            5000 + n % 4,
                            n % 3
                        ),
                        600,
                    ),
                };
                let second =
                    if f & 16 == 16 { format!("Contact: <sip:{u}@192.0.2.2:{}>\r\n", n % 5) } else { String::new() };
                let path =
                    if f & 32 == 32 { String::new() } else { format!("Path: {}\r\n", PATHS[usize::from(f >> 6) % 3]) };
                self.send(
                    c,
                    format!(
                        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE};branch={b}\r\nFrom: <sip:{u}@{DOMAIN}>;tag=r{n}\r\n\
                         To: <sip:{u}@{DOMAIN}>\r\nCall-ID: reg-{u}\r\nCSeq: {n} REGISTER\r\n{contact}{second}{path}{creds}\
                         Expires: {expires}\r\nContent-Length: 0\r\n\r\n"
                    ),
                );
            }
            1 => {
                let (c, u, v, f) = (d.pick(2), USERS[d.pick(4)], d.pick(8), d.byte());
                let to = match v {
                    0..=3 => aor(USERS[v]),
                    4 => "bob@partner.test".to_string(),
                    5 => format!("desk@{DOMAIN}"),
                    6 => aor("echo"),
                    _ => format!("{}+contacts@{DOMAIN}", USERS[d.pick(4)]),
                };
                let creds = if f & 1 == 1 {
                    self.creds("Proxy-Authorization", u, "MESSAGE", f & 2 == 2)
                } else {
                    String::new()
                };
                let b = self.branch();
                let n = self.n;
                self.send(
                    c,
                    format!(
                        "MESSAGE sip:{to} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE};branch={b}\r\nMax-Forwards: 70\r\n\
                         From: <sip:{u}@{DOMAIN}>;tag=m{n}\r\nTo: <sip:{to}>\r\nCall-ID: m-{n}\r\nCSeq: 1 MESSAGE\r\n\
                         {creds}Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
                    ),
                );
            }
            2 => {
                let (c, u, v, f) = (d.pick(2), d.pick(4), d.pick(6), d.byte());
                let user = USERS[u];
                let creds = if f & 1 == 1 {
                    self.creds("Proxy-Authorization", user, "SUBSCRIBE", f & 2 == 2)
                } else {
                    String::new()
                };
                let b = self.branch();
                let n = self.n;
                let event = if f & 4 == 4 { "presence.winfo" } else { "presence" };
                let expires = if f & 8 == 8 { 0 } else { 600 };
                let rr = if f & 32 == 32 {
                    String::new()
                } else {
                    format!("Record-Route: <sip:{EDGE};transport=tls;lr>\r\n")
                };
                let eventlist = if f & 64 == 64 { "" } else { "Supported: eventlist\r\n" };
                let within = (f & 16 == 16).then(|| d.pick(PENDING_MAX)).and_then(|k| self.dialogs.get(k).cloned());
                let (ruri, call, from_tag, to_tag, user) = match within {
                    Some((call, from, to, ruri, u)) => (ruri, call, from, format!(";tag={to}"), USERS[u]),
                    None => {
                        let ruri = match v {
                            0..=3 => format!("sip:{}", aor(USERS[v])),
                            4 => "sip:dan@partner.test".to_string(),
                            _ => format!("sip:{user}+contacts@{DOMAIN}"),
                        };
                        (ruri, format!("s-{n}"), format!("s{n}"), String::new(), user)
                    }
                };
                let to = ruri.trim_start_matches("sip:");
                self.send(
                    c,
                    format!(
                        "SUBSCRIBE {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE};branch={b}\r\nFrom: <sip:{user}@{DOMAIN}>;tag={from_tag}\r\n\
                         To: <sip:{to}>{to_tag}\r\nCall-ID: {call}\r\nCSeq: {n} SUBSCRIBE\r\n\
                         Contact: <sip:{user}@192.0.2.1:5000;transport=tls>\r\n{rr}Event: {event}\r\n{eventlist}{creds}\
                         Expires: {expires}\r\nContent-Length: 0\r\n\r\n"
                    ),
                );
            }
            3 => {
                let (c, u, f) = (d.pick(2), USERS[d.pick(4)], d.byte());
                let creds = if f & 1 == 1 {
                    self.creds("Proxy-Authorization", u, "PUBLISH", f & 2 == 2)
                } else {
                    String::new()
                };
                let b = self.branch();
                let n = self.n;
                let body = match (f >> 2) % 4 {
                    0 => format!(
                        "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:{u}@{DOMAIN}\">\
                         <tuple id=\"t{n}\"><status><basic>open</basic></status></tuple></presence>"
                    ),
                    1 => format!(
                        "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:{u}@{DOMAIN}\"><tuple id=\"a\">\
                         <status><basic>closed</basic></status><note>away</note></tuple></presence>"
                    ),
                    2 => "<presence><tuple".to_string(),
                    _ => String::new(),
                };
                let if_match = match (f & 16 == 16).then(|| d.pick(PENDING_MAX)).and_then(|k| self.etags.get(k)) {
                    Some(t) => format!("SIP-If-Match: {t}\r\n"),
                    None => String::new(),
                };
                let expires = if f & 32 == 32 { 0 } else { 600 };
                let ct = if body.is_empty() { String::new() } else { "Content-Type: application/pidf+xml\r\n".into() };
                self.send(
                    c,
                    format!(
                        "PUBLISH sip:{u}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE};branch={b}\r\nFrom: <sip:{u}@{DOMAIN}>;tag=p{n}\r\n\
                         To: <sip:{u}@{DOMAIN}>\r\nCall-ID: p-{n}\r\nCSeq: {n} PUBLISH\r\nEvent: presence\r\n{if_match}{creds}\
                         Expires: {expires}\r\n{ct}Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    ),
                );
            }
            4 => {
                let (c, m) = (d.pick(2), ["OPTIONS", "INFO", "ACK", "BYE"][d.pick(4)]);
                let b = self.branch();
                self.send(
                    c,
                    format!(
                        "{m} sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE};branch={b}\r\nFrom: <sip:alice@{DOMAIN}>;tag=o\r\n\
                         To: <sip:{DOMAIN}>\r\nCall-ID: o-{b}\r\nCSeq: 1 {m}\r\nContent-Length: 0\r\n\r\n"
                    ),
                );
            }
            5 => {
                let c = d.pick(2);
                let len = usize::from(d.byte()) * 4;
                let raw = d.bytes(len).to_vec();
                if raw.windows(MARK.len()).any(|w| w == MARK.as_bytes()) {
                    return;
                }
                let Ok(msg) = Message::parse(Bytes::from(raw), &parapet::net::conn::peer_limits(&Limits::default()))
                else {
                    return;
                };
                self.step(c, |core, now| core.on_message(conn(c, 1), msg, now));
            }
            6 | 7 => {
                let undeliverable = d.byte() & 1 == 1;
                let k = d.pick(self.to_edge.len());
                let status = [100, 180, 200, 202, 404, 408, 481, 486, 503, 603][d.pick(10)];
                let keep = d.byte() & 1 == 1;
                let Some((c, bytes)) = (if keep { self.to_edge.get(k).cloned() } else { self.to_edge.remove(k) })
                else {
                    return;
                };
                if undeliverable {
                    self.step(c, |core, now| core.on_undeliverable(bytes, 503, "Service Unavailable", now));
                    return;
                }
                let Ok(req) = Message::parse(bytes, &Limits::default()) else { return };
                let mut out = BytesMut::new();
                sip::write_response(&mut out, &req, status, "X", Some(b"e"), &[], None);
                let Ok(resp) = Message::parse(out.freeze(), &Limits::default()) else { return };
                self.step(c, |core, now| core.on_message(conn(c, 9), resp, now));
            }
            8 => {
                let secs = u64::from(d.byte());
                self.now.secs += secs;
                self.now.mono += Duration::from_secs(secs) + Duration::from_millis(u64::from(d.byte()) * 4);
                for c in 0..2 {
                    self.step(c, |core, now| core.on_tick(now));
                }
            }
            9 | 10 => {
                let full = d.byte() & 1 == 1;
                let k = d.pick(self.mesh.len());
                let Some((c, msg)) = self.mesh.remove(k) else { return };
                match msg {
                    PoolMsg::Request { origin, bytes, .. } if full => {
                        self.step(1 - c, |core, now| core.on_mesh_full(origin, bytes, now))
                    }
                    msg => self.step(c, |core, now| core.on_mesh(msg, now)),
                }
            }
            11 => {
                let kind = d.pick(3);
                let rows = d.pick(5);
                let k = d.pick(self.calls.len());
                let Some((c, op, then)) = self.calls.remove(k) else { return };
                let owner = match op {
                    Op::Contacts { owner } => owner,
                    _ => String::new(),
                };
                let reply = match kind {
                    0 => {
                        let uris = [
                            "sip:bob@example.com",
                            "sip:carol@example.com",
                            "sip:dan@partner.test",
                            "sip:zed@example.com",
                            "not a uri",
                        ];
                        let rows = uris
                            .iter()
                            .take(rows)
                            .map(|u| ContactRow {
                                owner: owner.clone(),
                                uri: u.to_string(),
                                display_name: "x".into(),
                                group: String::new(),
                            })
                            .collect();
                        Ok(Reply::Contacts(rows))
                    }
                    1 => Err(StoreError("busy".into())),
                    _ => Ok(Reply::Done(true)),
                };
                self.step(c, |core, now| core.on_store_reply(then, reply, now));
            }
            12 => {
                let k = d.pick(self.timers.len());
                let Some((c, timer)) = self.timers.remove(k) else { return };
                self.step(c, |core, now| core.on_timer(timer, now));
            }
            13 => {
                let (c, u, p) = (d.pick(2), USERS[d.pick(4)], PATHS[d.pick(3)]);
                let b = self.branch();
                self.send(
                    c,
                    format!(
                        "NOTIFY sip:{u}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE};branch={b}\r\nMax-Forwards: 1\r\n\
                         From: <sip:edge@{EDGE}>;tag=flow\r\nTo: <sip:{u}@{DOMAIN}>\r\nCall-ID: flow-{b}\r\nCSeq: 1 NOTIFY\r\n\
                         Event: x-parapet-flow-closed\r\nSubscription-State: terminated\r\nP-Parapet-Flow: {p}\r\n\
                         Content-Length: 0\r\n\r\n"
                    ),
                );
            }
            14 => {
                // A partner's request, vouched for by the edge; or its NOTIFY for one of our back-end SUBSCRIBEs.
                let (c, kind, v) = (d.pick(2), d.pick(4), USERS[d.pick(4)]);
                let b = self.branch();
                let backend =
                    self.to_edge.iter().find(|(_, r)| r.starts_with(b"SUBSCRIBE sip:dan@partner.test")).cloned();
                let raw = match (kind, backend) {
                    (0, Some((_, sub))) => {
                        let Ok(s) = Message::parse(sub, &Limits::default()) else { return };
                        let call = String::from_utf8_lossy(s.call_id()).to_string();
                        let list = s.contacts().find_map(|c| match c {
                            Ok(sip::Contact::Addr(na)) => Some(String::from_utf8_lossy(na.uri_raw).to_string()),
                            _ => None,
                        });
                        let from = String::from_utf8_lossy(s.header(HeaderName::From).unwrap_or(b"")).to_string();
                        let state = if d.byte() & 1 == 1 { "terminated" } else { "active;expires=60" };
                        let body = "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:dan@partner.test\"/>";
                        format!(
                            "NOTIFY {} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE};branch={b}\r\nFrom: <sip:dan@partner.test>;tag=pt\r\n\
                             To: {from}\r\nCall-ID: {call}\r\nCSeq: 1 NOTIFY\r\nContact: <sip:dan@198.51.100.1>\r\n\
                             Event: presence\r\nSubscription-State: {state}\r\nP-Parapet-Federated: partner.test\r\n\
                             Content-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{body}",
                            list.unwrap_or_default(),
                            body.len()
                        )
                    }
                    (k, _) => {
                        let m = ["MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH"][k];
                        format!(
                            "{m} sip:{v}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS {EDGE};branch={b}\r\nFrom: <sip:dan@partner.test>;tag=f\r\n\
                             To: <sip:{v}@{DOMAIN}>\r\nCall-ID: f-{b}\r\nCSeq: 1 {m}\r\nEvent: presence\r\n\
                             Contact: <sip:dan@198.51.100.1>\r\nRecord-Route: <sip:{EDGE};transport=tls;lr>\r\n\
                             P-Parapet-Federated: partner.test\r\nContent-Length: 0\r\n\r\n"
                        )
                    }
                };
                self.send(c, raw);
            }
            15 => {
                let f = d.byte();
                let mut rows = Vec::new();
                for (i, (owner, target)) in
                    [("bob", "alice@example.com"), ("alice", "@example.com"), ("carol", "*"), ("bob", "@partner.test")]
                        .iter()
                        .enumerate()
                {
                    if f & (1 << i) != 0 {
                        let decision = if f & (16 << i) != 0 { "block" } else { "allow" };
                        rows.push(PolicyRow {
                            owner: aor(owner),
                            target: (*target).into(),
                            presence: Some(decision.into()),
                            im: Some(decision.into()),
                        });
                    }
                }
                for c in 0..2 {
                    self.step(c, |core, now| core.on_policies(&rows, now));
                }
            }
            16 => {
                for c in 0..2 {
                    self.step(c, |core, now| core.on_contacts_changed(now));
                }
            }
            17 => {
                for c in 0..2 {
                    self.step(c, |core, now| core.on_write_behind(now));
                }
            }
            19 => {
                // The application's own requests, on its connection on core `c`.
                let (c, f) = (d.pick(2), d.byte());
                let me = ["echo", "bob"][usize::from(f & 1)];
                let to = ["echo@example.com", "bob@example.com", "zed@example.com", "bob@partner.test"]
                    [usize::from(f >> 1) % 4]
                    .to_string();
                let method = ["REGISTER", "MESSAGE", "OPTIONS", "SUBSCRIBE"][usize::from(f >> 3) % 4];
                let (ruri, to) = if method == "REGISTER" { (DOMAIN.to_string(), aor(me)) } else { (to.clone(), to) };
                let expires = if f & 0x20 == 0x20 { 0 } else { 600 };
                let internal = if f & 0x40 == 0x40 { "P-Parapet-Federated: x\r\n" } else { "" };
                let b = self.branch();
                let raw = format!(
                    "{method} sip:{ruri} SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.7:40000;branch={b}\r\nMax-Forwards: 70\r\n\
                     From: <sip:{me}@{DOMAIN}>;tag=a{b}\r\nTo: <sip:{to}>\r\nCall-ID: a-{b}\r\nCSeq: 1 {method}\r\n\
                     Contact: <sip:{me}@192.0.2.7:40000>\r\nExpires: {expires}\r\nEvent: presence\r\n{internal}\
                     Content-Length: 0\r\n\r\n"
                );
                let Ok(msg) = Message::parse(Bytes::from(raw), &parapet::net::conn::peer_limits(&Limits::default()))
                else {
                    return;
                };
                self.step(c, |core, now| core.on_app_message(conn(c, APP_SLOT), 0, msg, now));
            }
            20 => {
                // The application answers something the pool sent it (on the connection it was sent to).
                let k = d.pick(self.to_app.len());
                let (status, contact) = [
                    (100, ""),
                    (200, ""),
                    (302, "Contact: <sip:bob@example.com>\r\n"),
                    (302, "Contact: <sip:echo@example.com>\r\n"),
                    (302, ""),
                    (486, ""),
                ][d.pick(6)];
                let keep = d.byte() & 1 == 1;
                let Some((c, bytes)) = (if keep { self.to_app.get(k).cloned() } else { self.to_app.remove(k) }) else {
                    return;
                };
                let Ok(req) = Message::parse(bytes, &Limits::default()) else { return };
                let mut out = BytesMut::new();
                let extra: Vec<(HeaderName, &[u8])> = match contact.strip_prefix("Contact: ") {
                    Some(v) => vec![(HeaderName::Contact, v.trim_end().as_bytes())],
                    None => Vec::new(),
                };
                sip::write_response(&mut out, &req, status, "X", Some(b"app"), &extra, None);
                let Ok(resp) = Message::parse(out.freeze(), &Limits::default()) else { return };
                self.step(c, |core, now| core.on_app_message(conn(c, APP_SLOT), 0, resp, now));
            }
            21 => {
                let c = d.pick(2);
                self.step(c, |core, now| core.on_app_closed(conn(c, APP_SLOT), now));
            }
            _ => {
                for c in 0..2 {
                    self.step(c, |core, now| core.on_drain(now));
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut h = Harness::new();
    let mut d = Data(data);
    let mut steps = 0;
    while !d.0.is_empty() && steps < 256 {
        h.run(&mut d);
        steps += 1;
    }
});
