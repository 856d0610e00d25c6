//! Trusted applications (`[[applications]]`): programs connected over mutual TLS that serve agent addresses. The
//! wire contract is in docs/agents.md; in short, an application REGISTERs the agent addresses it serves (its
//! certificate authenticates it, no digest), receives the MESSAGEs for them (and those a rule delivers or forks
//! to it) on its connection, answers them (a 3xx with a Contact hands the MESSAGE on to that address), and sends
//! MESSAGEs From its agent addresses, which are routed like our users'.
//!
//! State, per core: which connection serves each agent address (every core holds the whole table: a registration
//! is told to all cores, so any target's core can deliver), and the MESSAGEs this core sent to an application and
//! still waits an answer for. Each waits at most the application's `timeout_ms` (a timer) and at most `queue` wait
//! per application on a core; past either, or when no connection serves it, the fallback applies (the rule's, or
//! for an agent address the application's). Nothing here waits: a hung application costs only its own
//! MESSAGEs' timeouts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::super::core::{Action, Timer};
use super::super::{aor_of, PoolCore, PoolMsg, Stage};
use crate::config::applications::{Application, Fallback};
use crate::mgmt::metrics::Counter;
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::sip::{Editor, HeaderName, Message, Method};

/// Branch prefix of the MESSAGEs the pool sends to applications (then core and transaction, in hex).
const BRANCH_PREFIX: &[u8] = b"z9hG4bKapp";
/// Registration lifetime when the REGISTER names none, and the most granted.
const EXPIRES_DEFAULT: u32 = 3600;
const EXPIRES_MAX: u32 = 86_400;

/// Counters of one application on one core.
#[derive(Default)]
pub struct AppCounters {
    /// MESSAGEs it answered (2xx, a failure, or a hand-back), forked copies included.
    pub delivered: Counter,
    /// MESSAGEs it did not answer within `timeout_ms` (the fallback applied).
    pub timed_out: Counter,
    /// MESSAGEs for it while no connection served it, or whose connection closed before the answer.
    pub unavailable: Counter,
    /// MESSAGEs refused because `queue` already waited for it on that core.
    pub queue_full: Counter,
    /// Its REGISTERs and MESSAGEs refused (not one of its agent addresses, an internal header, a method).
    pub refused: Counter,
    /// REGISTERs accepted.
    pub registrations: Counter,
}

/// The configured applications and their counters (`[core][app]`, each core writes only its own row).
pub struct AppTable {
    pub apps: Vec<Application>,
    /// Agent AOR -> application index.
    agents: HashMap<String, usize>,
    cores: usize,
    counters: Vec<AppCounters>,
}

impl AppTable {
    pub fn new(apps: &[Application], cores: usize) -> AppTable {
        let cores = cores.max(1);
        let agents = apps.iter().enumerate().flat_map(|(i, a)| a.agents.iter().map(move |g| (g.clone(), i))).collect();
        let counters = (0..apps.len() * cores).map(|_| AppCounters::default()).collect();
        AppTable { apps: apps.to_vec(), agents, cores, counters }
    }

    /// The application whose `cert_name` is one of these certificate names.
    pub fn by_cert(&self, names: &[String]) -> Option<usize> {
        self.apps.iter().position(|a| names.iter().any(|n| n.eq_ignore_ascii_case(&a.cert_name)))
    }

    pub fn cert_names(&self) -> impl Iterator<Item = &str> {
        self.apps.iter().map(|a| a.cert_name.as_str())
    }

    fn counters(&self, core: usize, app: usize) -> Option<&AppCounters> {
        self.counters.get((core % self.cores) * self.apps.len() + app)
    }

    /// For `/metrics`: `app_<name>_<counter>`, all cores together.
    pub fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
        for (i, a) in self.apps.iter().enumerate() {
            let name = a.name.replace('-', "_");
            let sum = |pick: fn(&AppCounters) -> &Counter| {
                (0..self.cores).filter_map(|c| self.counters(c, i)).map(|c| pick(c).get()).sum::<u64>()
            };
            f(&format!("app_{name}_delivered"), sum(|c| &c.delivered));
            f(&format!("app_{name}_timed_out"), sum(|c| &c.timed_out));
            f(&format!("app_{name}_unavailable"), sum(|c| &c.unavailable));
            f(&format!("app_{name}_queue_full"), sum(|c| &c.queue_full));
            f(&format!("app_{name}_refused"), sum(|c| &c.refused));
            f(&format!("app_{name}_registrations"), sum(|c| &c.registrations));
        }
    }
}

impl Default for AppTable {
    fn default() -> AppTable {
        AppTable::new(&[], 1)
    }
}

/// What cores tell each other about applications.
#[derive(Debug)]
pub enum Msg {
    /// `agent` is served by `app` on `conn` until `expires` (wall-clock seconds); `expires` 0: no longer.
    Bind { agent: String, app: usize, conn: ConnId, expires: u64 },
    /// An application's connection closed: whatever it served and whatever waits for it.
    Closed { conn: ConnId },
    /// An application's answer (on connection `conn`), for the core that sent the MESSAGE.
    Response { conn: ConnId, bytes: Bytes },
}

#[derive(Debug, Clone, Copy)]
struct Binding {
    app: usize,
    conn: ConnId,
    expires: u64,
}

/// A MESSAGE sent to an application, until its answer.
struct Delivery {
    origin: ConnId,
    request: Bytes,
    app: usize,
    conn: ConnId,
    /// None: a forked copy (nobody waits for its answer).
    fallback: Option<Fallback>,
}

/// Per-core state of the applications.
#[derive(Default)]
pub struct AgentsState {
    bound: HashMap<String, Binding>,
    waiting: HashMap<u32, Delivery>,
    next: u32,
    /// Per application: deliveries waiting on this core.
    in_flight: Vec<usize>,
}

impl AgentsState {
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

fn parse_branch(b: &[u8]) -> Option<(usize, u32)> {
    let rest = std::str::from_utf8(b.strip_prefix(BRANCH_PREFIX)?).ok()?;
    let core = u16::from_str_radix(rest.get(0..4)?, 16).ok()?;
    let id = u32::from_str_radix(rest.get(4..12)?, 16).ok()?;
    Some((usize::from(core), id))
}

/// A response to a MESSAGE the pool sent to an application.
pub fn is_app_response(msg: &Message) -> bool {
    msg.top_via().and_then(|v| v.branch()).is_some_and(|b| b.starts_with(BRANCH_PREFIX))
}

impl PoolCore {
    fn app_counters(&self, app: usize) -> Option<&AppCounters> {
        self.s.apps.counters(self.id, app)
    }

    fn count_app(&self, app: usize, pick: fn(&AppCounters) -> &Counter) {
        if let Some(c) = self.app_counters(app) {
            bump(pick(c));
        }
    }

    /// A message on an application's connection (`app`: which one, by its certificate).
    pub fn on_app_message(&mut self, origin: ConnId, app: usize, msg: Message, now: super::super::Now) {
        self.now = now;
        if !msg.is_request() {
            self.app_answer(origin, msg);
            return;
        }
        let Some(a) = self.s.apps.apps.get(app) else { return };
        let name = a.name.clone();
        if crate::proto::INTERNAL_HEADERS.iter().any(|h| msg.header(*h).is_some()) {
            self.count_app(app, |c| &c.refused);
            self.reply(origin, &msg, 403, "Forbidden: internal header", &[]);
            return;
        }
        match msg.method() {
            Some(Method::Register) => self.app_register(origin, app, &msg),
            Some(Method::Message) => {
                let from = aor_of(&msg.from().uri);
                if !a.agents.contains(&from) {
                    self.count_app(app, |c| &c.refused);
                    tracing::info!(app = %name, %from, "application MESSAGE From an address not its own: 403");
                    self.reply(origin, &msg, 403, "Forbidden: From is not an agent of this application", &[]);
                    return;
                }
                let target = msg.request_uri_parsed().map(|u| aor_of(&u)).unwrap_or_default();
                self.hand_to_core(target.as_bytes(), Stage::Route, origin, msg);
            }
            Some(Method::Options) => self.reply(origin, &msg, 200, "OK", &[]),
            Some(Method::Ack) => {}
            _ => {
                self.count_app(app, |c| &c.refused);
                self.reply(origin, &msg, 403, "Forbidden: applications send REGISTER, MESSAGE and OPTIONS", &[]);
            }
        }
    }

    /// An application's connection closed (on the core that held it): every core forgets it.
    pub fn on_app_closed(&mut self, conn: ConnId, now: super::super::Now) {
        self.now = now;
        self.tell_all_cores(Msg::Closed { conn });
    }

    fn tell_all_cores(&mut self, msg: Msg) {
        for core in 0..self.count {
            if core == self.id {
                continue;
            }
            let copy = match &msg {
                Msg::Bind { agent, app, conn, expires } => {
                    Msg::Bind { agent: agent.clone(), app: *app, conn: *conn, expires: *expires }
                }
                Msg::Closed { conn } => Msg::Closed { conn: *conn },
                Msg::Response { conn, bytes } => Msg::Response { conn: *conn, bytes: bytes.clone() },
            };
            self.push(Action::Mesh { core, msg: PoolMsg::Apps(copy) });
        }
        self.on_apps_msg(msg);
    }

    /// What another core told this one.
    pub(crate) fn on_apps_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Bind { agent, app, conn, expires } => {
                if expires == 0 {
                    if self.agents.bound.get(&agent).is_some_and(|b| b.conn == conn) {
                        self.agents.bound.remove(&agent);
                    }
                } else if self.s.apps.agents.get(&agent) == Some(&app) {
                    self.agents.bound.insert(agent, Binding { app, conn, expires });
                }
            }
            Msg::Closed { conn } => {
                self.agents.bound.retain(|_, b| b.conn != conn);
                let lost: Vec<u32> =
                    self.agents.waiting.iter().filter(|(_, d)| d.conn == conn).map(|(k, _)| *k).collect();
                for id in lost {
                    if let Some(d) = self.take_delivery(id) {
                        self.count_app(d.app, |c| &c.unavailable);
                        self.fall_back(d.origin, d.request, d.fallback.as_ref());
                    }
                }
            }
            Msg::Response { conn, bytes } => {
                if let Ok(m) = Message::parse(bytes, &self.s.limits) {
                    self.app_answer(conn, m);
                }
            }
        }
    }

    fn app_register(&mut self, origin: ConnId, app: usize, msg: &Message) {
        let agent = aor_of(&msg.to().uri);
        let Some(a) = self.s.apps.apps.get(app) else { return };
        if !a.agents.contains(&agent) {
            let name = a.name.clone();
            self.count_app(app, |c| &c.refused);
            tracing::info!(app = %name, %agent, "application REGISTER for an address not its own: 403");
            self.reply(origin, msg, 403, "Forbidden: not an agent of this application", &[]);
            return;
        }
        let asked = msg.contacts().flatten().find_map(|c| c.expires()).or(msg.expires()).unwrap_or(EXPIRES_DEFAULT);
        let granted = asked.min(EXPIRES_MAX);
        let expires = if granted == 0 { 0 } else { self.now.secs + u64::from(granted) };
        self.count_app(app, |c| &c.registrations);
        tracing::info!(app = %a.name, %agent, granted, "application agent registered");
        self.tell_all_cores(Msg::Bind { agent, app, conn: origin, expires });
        let granted = granted.to_string();
        let contact = msg.header(HeaderName::Contact).map(<[u8]>::to_vec);
        let mut extra: Vec<(HeaderName, &[u8])> = vec![(HeaderName::Expires, granted.as_bytes())];
        if let Some(c) = contact.as_deref().filter(|_| granted != "0") {
            extra.push((HeaderName::Contact, c));
        }
        self.reply(origin, msg, 200, "OK", &extra);
    }

    /// The connection serving `app` now, if any (any of its agent addresses' registrations).
    fn app_conn(&self, app: usize) -> Option<ConnId> {
        let a = self.s.apps.apps.get(app)?;
        a.agents.iter().filter_map(|g| self.agents.bound.get(g)).find(|b| b.expires > self.now.secs).map(|b| b.conn)
    }

    /// On the target's core: a MESSAGE to an agent address goes to its application. False: not an agent address.
    pub(crate) fn deliver_to_agent(&mut self, origin: ConnId, msg: &Message) -> bool {
        // No application, no agent: every MESSAGE comes through here, so no AOR string is made for nothing.
        if self.s.apps.agents.is_empty() {
            return false;
        }
        let Some(target) = msg.request_uri_parsed().map(|u| aor_of(&u)) else { return false };
        let Some(&app) = self.s.apps.agents.get(&target) else { return false };
        let fallback = self.s.apps.apps.get(app).map(|a| a.fallback.clone());
        let conn = self.agents.bound.get(&target).filter(|b| b.expires > self.now.secs && b.app == app).map(|b| b.conn);
        self.send_to_app(origin, msg, app, conn, fallback);
        true
    }

    /// A rule's `deliver` (`fallback` Some) or `fork` (None) to the application named.
    pub(crate) fn deliver_to_application(
        &mut self,
        origin: ConnId,
        msg: &Message,
        name: &str,
        fallback: Option<Fallback>,
    ) {
        let app = self.s.apps.apps.iter().position(|a| a.name == name);
        match app {
            Some(app) => {
                let conn = self.app_conn(app);
                self.send_to_app(origin, msg, app, conn, fallback);
            }
            // Named by a rule reloaded after start, but not configured when the pool started.
            None => {
                crate::warn_limited!(application = name, "routing rule names an application unknown since start");
                self.fall_back(origin, msg.bytes().clone(), fallback.as_ref());
            }
        }
    }

    fn send_to_app(
        &mut self,
        origin: ConnId,
        msg: &Message,
        app: usize,
        conn: Option<ConnId>,
        fallback: Option<Fallback>,
    ) {
        let Some(a) = self.s.apps.apps.get(app) else { return };
        let (name, queue, timeout) = (a.name.clone(), a.queue, Duration::from_millis(a.timeout_ms));
        let Some(conn) = conn else {
            self.count_app(app, |c| &c.unavailable);
            crate::info_limited!(app = %name, "application not connected: its fallback applies");
            self.fall_back(origin, msg.bytes().clone(), fallback.as_ref());
            return;
        };
        if self.agents.in_flight.len() < self.s.apps.apps.len() {
            self.agents.in_flight.resize(self.s.apps.apps.len(), 0);
        }
        if self.agents.in_flight.get(app).is_some_and(|n| *n >= queue) {
            self.count_app(app, |c| &c.queue_full);
            crate::warn_limited!(app = %name, queue, "application queue full: its fallback applies");
            self.fall_back(origin, msg.bytes().clone(), fallback.as_ref());
            return;
        }
        let hops = msg.max_forwards().unwrap_or(70);
        if hops == 0 {
            self.reply(origin, msg, 483, "Too Many Hops", &[]);
            return;
        }
        let id = loop {
            self.agents.next = self.agents.next.wrapping_add(1);
            if !self.agents.waiting.contains_key(&self.agents.next) {
                break self.agents.next;
            }
        };
        let via = format!(
            "SIP/2.0/TLS {};branch={}{:04x}{id:08x}",
            self.s.listen,
            String::from_utf8_lossy(BRANCH_PREFIX),
            self.id as u16
        );
        let mut ed = Editor::new(msg);
        ed.remove_headers(HeaderName::Route);
        ed.remove_headers(HeaderName::ProxyAuthorization);
        crate::proto::strip_internal(msg, &mut ed);
        ed.push_via(via.as_bytes());
        ed.set_max_forwards(hops - 1);
        let mut out = BytesMut::with_capacity(msg.bytes().len() + 128);
        // At most nine edits: cannot overflow.
        if ed.write(&mut out).is_err() {
            return;
        }
        self.push(Action::Send { conn, bytes: out.freeze() });
        self.push(Action::Timer { after: timeout, timer: Timer::AppDeadline(id) });
        if let Some(n) = self.agents.in_flight.get_mut(app) {
            *n += 1;
        }
        self.agents.waiting.insert(id, Delivery { origin, request: msg.bytes().clone(), app, conn, fallback });
    }

    fn take_delivery(&mut self, id: u32) -> Option<Delivery> {
        let d = self.agents.waiting.remove(&id)?;
        if let Some(n) = self.agents.in_flight.get_mut(d.app) {
            *n = n.saturating_sub(1);
        }
        Some(d)
    }

    /// An application's answer on connection `conn` (here, or handed over by the core that connection is on).
    fn app_answer(&mut self, conn: ConnId, msg: Message) {
        let Some((core, id)) = msg.top_via().and_then(|v| v.branch()).and_then(parse_branch) else {
            bump(&self.pstats.responses_unmatched);
            return;
        };
        if core >= self.count {
            bump(&self.pstats.responses_unmatched);
            return;
        }
        if core != self.id {
            let bytes = msg.bytes().clone();
            self.push(Action::Mesh { core, msg: PoolMsg::Apps(Msg::Response { conn, bytes }) });
            return;
        }
        let Some(status) = msg.status().filter(|s| *s >= 200) else { return };
        // Only the connection it was sent to answers it: another application cannot answer for this one.
        if self.agents.waiting.get(&id).is_none_or(|d| d.conn != conn) {
            // Late (after its timeout: the fallback answered), or not this connection's.
            bump(&self.pstats.responses_unmatched);
            return;
        }
        let Some(d) = self.take_delivery(id) else { return };
        self.count_app(d.app, |c| &c.delivered);
        if d.fallback.is_none() {
            return;
        }
        if (300..400).contains(&status) {
            // Handed back with another target: the MESSAGE goes there, one hop less.
            let target = msg.contacts().flatten().find_map(|c| c.addr().map(|a| aor_of(&a.uri)));
            if let (Some(target), Ok(req)) = (target, Message::parse(d.request.clone(), &self.s.limits)) {
                self.divert(d.origin, &req, &target);
                return;
            }
        }
        self.forward_response(d.origin, msg.bytes().clone());
    }

    /// The application did not answer in time.
    pub(crate) fn app_deadline(&mut self, id: u32) {
        let Some(d) = self.take_delivery(id) else { return };
        self.count_app(d.app, |c| &c.timed_out);
        let name = self.s.apps.apps.get(d.app).map(|a| a.name.clone()).unwrap_or_default();
        crate::warn_limited!(app = %name, "application did not answer in time: its fallback applies");
        self.fall_back(d.origin, d.request, d.fallback.as_ref());
    }

    fn fall_back(&mut self, origin: ConnId, request: Bytes, fallback: Option<&Fallback>) {
        let Some(fallback) = fallback else { return };
        let Ok(req) = Message::parse(request, &self.s.limits) else { return };
        match fallback {
            Fallback::Reject { code, reason } => self.reply(origin, &req, *code, reason, &[]),
            Fallback::AutoReply { text } => {
                self.reply(origin, &req, 200, "OK", &[]);
                let target = req.request_uri_parsed().map(|u| aor_of(&u)).unwrap_or_default();
                self.auto_reply(&aor_of(&req.from().uri), &target, text);
            }
            Fallback::Deliver => self.route_after_rules(origin, req),
        }
    }
}

/// A table for tests: `apps` on `cores` cores.
pub fn table(apps: &[Application], cores: usize) -> Arc<AppTable> {
    Arc::new(AppTable::new(apps, cores))
}

#[cfg(test)]
mod tests;
