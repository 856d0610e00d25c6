//! One edge core as a state machine, driven by a sequence of inputs decoded from the fuzz data: users' connections
//! opening, sending requests (built from fuzzed choices, or raw bytes) and closing; the pool answering what the edge
//! forwarded and sending requests to users' flows (with the flow tokens the edge gave out); users answering those;
//! a federation partner's requests; mesh messages; requests handed back as undeliverable; ticks of a fake clock.
//! The harness plays the shell: it performs nothing but reports what a shell would hand back (a write to a closed
//! flow).
//!
//! Invariants, after every step: no panic; every flow belongs to a user connection opened and not closed; the
//! transactions toward users stay within their cap, and a flow's requests in flight within theirs; an input request
//! gets at most one outcome (one final response back to its sender, or one forwarding), and a response is routed at
//! most once. At the end, once every connection has closed, no flow is left.
#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use parapet::edge::core::{Action, ConnInfo, EdgeCore};
use parapet::edge::token::TokenKey;
use parapet::edge::{testkit, EdgeMsg, EdgeSettings, EdgeStats};
use parapet::net::{ConnId, ConnKind};
use parapet::sip::{HeaderName, Limits, Message};

/// Transactions toward users this core may hold (small, so the cap is reached).
const DOWNSTREAM_MAX: usize = 4;
/// Most inputs per run.
const STEPS_MAX: usize = 96;
/// Messages kept for later inputs to answer or reuse.
const KEEP: usize = 8;

fn settings() -> Arc<EdgeSettings> {
    static S: OnceLock<Arc<EdgeSettings>> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join("parapet-fuzz-edge-core");
        let mut s = match testkit::settings(&dir) {
            Ok(s) => s,
            Err(e) => panic!("edge settings for the fuzz target: {e}"),
        };
        // Reproducible tokens: the same input takes the same path on every run.
        s.key = TokenKey::from_bytes([7; 16]);
        s.downstream_max = DOWNSTREAM_MAX;
        Arc::new(s)
    })
    .clone()
}

struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn pick<'t, T>(&mut self, from: &'t [T]) -> Option<&'t T> {
        if from.is_empty() {
            return None;
        }
        let i = self.byte() as usize % from.len();
        from.get(i)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
}

struct Conn {
    id: ConnId,
    peer: SocketAddr,
    kind: ConnKind,
    open: bool,
}

struct World {
    core: EdgeCore,
    now: Instant,
    conns: Vec<Conn>,
    next_slot: u32,
    pool_names: Vec<String>,
    partner_names: Vec<String>,
    /// Requests the edge sent to the pool, and its requests toward users and partners.
    to_pool: Vec<Message>,
    to_users: Vec<(ConnId, Message)>,
    to_partners: Vec<Message>,
    /// Path and Record-Route values the edge wrote (flow tokens the pool and partners may use).
    routes: Vec<Vec<u8>>,
    actions: Vec<Action>,
    /// Addresses whose user connections the shell would close (a ban).
    banned: Vec<std::net::IpAddr>,
}

const POOL: ConnId = ConnId { core: 0, gen: 1, slot: 0 };
const METHODS: &[&str] = &["REGISTER", "MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "OPTIONS", "ACK", "INVITE", "BYE"];
const USERS: &[&str] = &["alice", "bob", "carol", ""];
const DOMAINS: &[&str] = &["example.com", "partner.test", "other.test", "EXAMPLE.com", "127.0.0.1"];

fn limits() -> Limits {
    parapet::net::conn::peer_limits(&Limits::default())
}

fn keep<T>(v: &mut Vec<T>, t: T) {
    if v.len() >= KEEP {
        v.remove(0);
    }
    v.push(t);
}

impl World {
    fn new() -> World {
        let s = settings();
        let core = EdgeCore::new(s.clone(), 0, 2, Arc::new(EdgeStats::default()));
        World {
            core,
            now: Instant::now(),
            conns: Vec::new(),
            next_slot: 1,
            pool_names: s.pool_names.clone(),
            partner_names: vec![testkit::PARTNER_CERT_NAME.to_string()],
            to_pool: Vec::new(),
            to_users: Vec::new(),
            to_partners: Vec::new(),
            routes: Vec::new(),
            actions: Vec::new(),
            banned: Vec::new(),
        }
    }

    fn open(&mut self, kind: ConnKind, ip_byte: u8) {
        let peer = SocketAddr::from(([192, 0, 2, ip_byte % 4], 40000 + self.next_slot as u16));
        let admitted = match kind {
            ConnKind::User => self.core.admit(peer, kind, self.now),
            _ => self.core.admit_federation_peer(kind, &self.partner_names, self.now).is_some(),
        };
        self.settle(None);
        if !admitted {
            return;
        }
        let id = ConnId { core: 0, gen: 1, slot: self.next_slot };
        self.next_slot += 1;
        self.conns.push(Conn { id, peer, kind, open: true });
    }

    fn close(&mut self, i: usize) {
        let Some(c) = self.conns.get_mut(i).filter(|c| c.open) else { return };
        c.open = false;
        let (id, peer, kind) = (c.id, c.peer, c.kind);
        let names = if kind == ConnKind::Partner { self.partner_names.clone() } else { Vec::new() };
        self.core.on_closed(&ConnInfo { id, kind, peer, names: &names }, self.now);
        self.core.release(peer, kind);
        self.settle(None);
    }

    fn input_from_conn(&mut self, i: usize, msg: Message) {
        let Some(c) = self.conns.get(i).filter(|c| c.open) else { return };
        let (id, peer, kind) = (c.id, c.peer, c.kind);
        let names = if kind == ConnKind::Partner { self.partner_names.clone() } else { Vec::new() };
        let request = msg.is_request();
        self.core.on_message(&ConnInfo { id, kind, peer, names: &names }, msg, self.now);
        self.settle(Some((id, request)));
    }

    fn input_from_pool(&mut self, msg: Message) {
        let request = msg.is_request();
        let names = self.pool_names.clone();
        let info = ConnInfo {
            id: POOL,
            kind: ConnKind::PeerOut,
            peer: "127.0.0.1:5062".parse().expect("addr"),
            names: &names,
        };
        self.core.on_message(&info, msg, self.now);
        self.settle(Some((POOL, request)));
    }

    fn is_open(&self, id: ConnId) -> bool {
        self.conns.iter().any(|c| c.id == id && c.open)
    }

    /// Takes the step's actions, checks them, keeps what later inputs may use, and hands back what a shell would.
    /// `input`: the connection the step's message came from, and whether it was a request.
    fn settle(&mut self, input: Option<(ConnId, bool)>) {
        let mut outcomes = 0;
        loop {
            self.core.take_actions(&mut self.actions);
            if self.actions.is_empty() {
                break;
            }
            let actions = std::mem::take(&mut self.actions);
            for a in actions {
                match a {
                    Action::Send { conn, bytes } => {
                        let Ok(m) = Message::parse(bytes, &limits()) else {
                            panic!("the edge wrote a message that does not parse")
                        };
                        let final_to_sender =
                            input.is_some_and(|(from, _)| from == conn) && m.status().is_some_and(|s| s >= 200);
                        if final_to_sender || input.is_some_and(|(_, request)| !request) {
                            outcomes += 1;
                        }
                    }
                    Action::ToFlow { flow, bytes, txn, from, req } => {
                        if self.is_open(flow) {
                            outcomes += 1;
                            let Ok(m) = Message::parse(bytes, &limits()) else {
                                panic!("the edge wrote a request to a user that does not parse")
                            };
                            keep(&mut self.to_users, (flow, m));
                        } else {
                            // What the shell does when the flow's queue refuses it.
                            self.core.flow_write_failed(txn, from, &req);
                        }
                    }
                    Action::MeshToFlow { .. } | Action::ToPartner { .. } => {
                        outcomes += 1;
                        if let Action::ToPartner { bytes, .. } = a {
                            if let Ok(m) = Message::parse(bytes, &limits()) {
                                self.keep_routes(&m);
                                keep(&mut self.to_partners, m);
                            }
                        }
                    }
                    Action::ToPool(bytes) | Action::ToMember { bytes, .. } | Action::ToHomePool { bytes, .. } => {
                        let Ok(m) = Message::parse(bytes, &limits()) else {
                            panic!("the edge sent the pool a message that does not parse")
                        };
                        if input.is_some() {
                            outcomes += 1;
                        }
                        self.keep_routes(&m);
                        if m.is_request() {
                            keep(&mut self.to_pool, m);
                        }
                    }
                    Action::Mesh { msg: EdgeMsg::Response { .. } | EdgeMsg::Write { .. }, .. } => {
                        if input.is_some_and(|(_, request)| !request) {
                            outcomes += 1;
                        }
                    }
                    Action::CloseAddress(ip) => self.banned.push(ip),
                    // A request for a discovered domain leaves like one for a partner; a lookup is no outcome (the
                    // request waits for its answer).
                    Action::ToDiscovered { .. } => outcomes += 1,
                    Action::Mesh { .. }
                    | Action::PauseReading { .. }
                    | Action::RecordBan { .. }
                    | Action::Discover { .. } => {}
                }
            }
        }
        assert!(outcomes <= 1, "{outcomes} outcomes for one input");
        let open: HashSet<ConnId> =
            self.conns.iter().filter(|c| c.open && c.kind == ConnKind::User).map(|c| c.id).collect();
        let in_flight_max = settings().flow_in_flight_max;
        for id in self.core.flows().ids() {
            assert!(open.contains(&id), "a flow without an open user connection: {id:?}");
            assert!(self.core.flows().get(id).is_some_and(|f| f.in_flight <= in_flight_max));
        }
        assert!(self.core.flows().len() <= open.len());
        assert!(self.core.downstream_len() <= DOWNSTREAM_MAX);
    }

    fn keep_routes(&mut self, m: &Message) {
        for name in [HeaderName::Path, HeaderName::RecordRoute] {
            if let Some(v) = m.values(name).next() {
                keep(&mut self.routes, v.to_vec());
            }
        }
    }

    /// A request built from fuzzed choices. `route`: a Route value to put first.
    fn request(&self, inp: &mut Input<'_>, via: &str, route: Option<&[u8]>) -> Option<Message> {
        let method = *inp.pick(METHODS)?;
        let from_user = *inp.pick(USERS)?;
        let from_dom = *inp.pick(DOMAINS)?;
        let to_user = *inp.pick(USERS)?;
        let to_dom = *inp.pick(DOMAINS)?;
        let flags = inp.byte();
        let max_forwards = if flags & 1 == 1 { inp.byte() % 3 } else { 70 };
        let mut t = format!("{method} sip:{to_user}@{to_dom} SIP/2.0\r\nVia: {via};branch=z9hG4bK{}\r\n", inp.byte())
            .into_bytes();
        if let Some(r) = route {
            t.extend_from_slice(b"Route: ");
            t.extend_from_slice(r);
            t.extend_from_slice(b"\r\n");
        }
        let to_tag = if flags & 2 == 2 { ";tag=tt" } else { "" };
        t.extend_from_slice(
            format!(
                "Max-Forwards: {max_forwards}\r\nFrom: <sip:{from_user}@{from_dom}>;tag=ft\r\nTo: <sip:{to_user}@{to_dom}>{to_tag}\r\n\
                 Call-ID: c{}\r\nCSeq: 1 {method}\r\n",
                inp.byte()
            )
            .as_bytes(),
        );
        if flags & 4 == 4 {
            t.extend_from_slice(format!("Contact: <sip:{from_user}@192.0.2.1:40000;transport=tls>\r\n").as_bytes());
        }
        if flags & 8 == 8 {
            t.extend_from_slice(b"Event: x-parapet-flow-closed\r\n");
        }
        if flags & 16 == 16 {
            t.extend_from_slice(b"Event: presence\r\nExpires: 600\r\n");
        }
        t.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        Message::parse(Bytes::from(t), &Limits::default()).ok()
    }
}

/// A response to `req` (its Vias copied), with a Contact when `contact`.
fn response(req: &Message, code: u16, contact: bool) -> Option<Message> {
    let mut out = BytesMut::new();
    let c: &[(HeaderName, &[u8])] = &[(HeaderName::Contact, b"<sip:alice@192.0.2.1:40000;transport=tls>")];
    parapet::sip::write_response(&mut out, req, code, "Fuzz", Some(b"t"), if contact { c } else { &[] }, None);
    Message::parse(out.freeze(), &limits()).ok()
}

const CODES: &[u16] = &[100, 180, 200, 202, 403, 404, 430, 480, 503];

fuzz_target!(|data: &[u8]| {
    let mut w = World::new();
    let mut inp = Input { data };
    for _ in 0..STEPS_MAX {
        if inp.data.is_empty() {
            break;
        }
        let op = inp.byte();
        match op % 12 {
            0 => {
                let b = inp.byte();
                w.open(ConnKind::User, b)
            }
            1 => {
                let b = inp.byte();
                w.open(ConnKind::Partner, b)
            }
            2 => {
                let i = inp.byte() as usize % w.conns.len().max(1);
                w.close(i)
            }
            3 | 4 => {
                // A user's (or partner's) request, built.
                let i = inp.byte() as usize % w.conns.len().max(1);
                let route = if inp.byte() & 1 == 1 { inp.pick(&w.routes).cloned() } else { None };
                if let Some(m) = w.request(&mut inp, "SIP/2.0/TLS 192.0.2.1:40000", route.as_deref()) {
                    w.input_from_conn(i, m);
                }
            }
            5 => {
                // Raw bytes from a connection.
                let i = inp.byte() as usize % w.conns.len().max(1);
                let n = inp.byte() as usize * 4;
                let raw = Bytes::copy_from_slice(inp.bytes(n));
                if let Ok(m) = Message::parse(raw, &Limits::default()) {
                    w.input_from_conn(i, m);
                }
            }
            6 => {
                // The pool answers something the edge forwarded.
                let (Some(req), Some(&code)) = (inp.pick(&w.to_pool).cloned(), inp.pick(CODES)) else { continue };
                let contact = inp.byte() & 1 == 1;
                if let Some(r) = response(&req, code, contact) {
                    w.input_from_pool(r);
                }
            }
            7 => {
                // The pool sends a request to a flow (a token the edge gave out, the federation route, or none).
                let route = match inp.byte() % 3 {
                    0 => inp.pick(&w.routes).cloned(),
                    1 => Some(format!("<sip:fed@{};lr>", settings().internal_text).into_bytes()),
                    _ => None,
                };
                if let Some(m) = w.request(&mut inp, "SIP/2.0/TLS 127.0.0.1:5062", route.as_deref()) {
                    w.input_from_pool(m);
                }
            }
            8 => {
                // A user (or partner) answers a request the edge wrote to it.
                let Some((flow, req)) = inp.pick(&w.to_users).cloned() else { continue };
                let Some(&code) = inp.pick(CODES) else { continue };
                let i = w.conns.iter().position(|c| c.id == flow).unwrap_or(0);
                if let Some(r) = response(&req, code, false) {
                    w.input_from_conn(i, r);
                }
            }
            9 => {
                // Mesh messages from the other core.
                match inp.byte() % 3 {
                    0 => {
                        let ip = [192, 0, 2, inp.byte() % 4].into();
                        w.core.on_mesh(EdgeMsg::Ban { ip, until: w.now + Duration::from_secs(60) }, w.now);
                        w.settle(None);
                    }
                    1 => {
                        let Some(req) = inp.pick(&w.to_pool).cloned() else { continue };
                        let Some(r) = response(&req, 200, false) else { continue };
                        w.core.on_mesh(EdgeMsg::Response { bytes: r.bytes().clone() }, w.now);
                        w.settle(Some((POOL, false)));
                    }
                    _ => {
                        let Some(c) = inp.pick(&w.conns).map(|c| c.id) else { continue };
                        let Some(m) = w.request(&mut inp, "SIP/2.0/TLS 127.0.0.1:5062", None) else { continue };
                        w.core.on_mesh(EdgeMsg::ToUser { from: POOL, flow: c, bytes: m.bytes().clone() }, w.now);
                        w.settle(Some((POOL, true)));
                    }
                }
            }
            10 => {
                // The pool could not be reached for something the edge forwarded.
                let Some(req) = inp.pick(&w.to_pool).cloned() else { continue };
                w.core.undeliverable(req.bytes().clone(), 503, "Service Unavailable", false, w.now);
                w.settle(None);
            }
            _ => {
                // Time passes: up to 25.5 s, then the tick.
                w.now += Duration::from_millis(u64::from(inp.byte()) * 100);
                w.core.on_tick(w.now);
                w.settle(None);
            }
        }
        // The shell closes a banned address's user connections.
        while let Some(ip) = w.banned.pop() {
            for i in 0..w.conns.len() {
                if w.conns[i].open && w.conns[i].kind == ConnKind::User && w.conns[i].peer.ip() == ip {
                    w.close(i);
                }
            }
        }
    }
    // Every connection closes: no flow is left.
    for i in 0..w.conns.len() {
        w.close(i);
    }
    assert!(w.core.flows().is_empty(), "flows left after every connection closed");
});
