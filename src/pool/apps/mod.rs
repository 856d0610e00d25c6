//! Routing rules in the pool core: on the target's core, before a request is routed, the rules
//! (`[[routing.rules]]`, `crate::config::routing`) are tried in priority order; the first that matches and whose
//! action applies to the method decides: reject (the code and reason given), auto-reply (200, then a MESSAGE
//! with the text From the target to the sender, which is not delivered), or divert (the MESSAGE goes to another
//! address instead, Max-Forwards one lower, so rules that divert in a circle end in 483), deliver (to an
//! application, [`agents`], with a fallback when it is down or slow) or fork (a copy to an application, the
//! MESSAGE routed as usual). Each rule counts its
//! hits per core. The rule set is replaced whole when the config file changes ([`reload`]); a core swaps its copy
//! on its next sweep.

pub mod agents;
pub mod reload;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;

use super::archive::Direction;
use super::{aor_of, PoolCore, Stage};
use crate::config::routing::{media_type, DirectionMatch, RoutingConfig, Rule, RuleAction};
use crate::mgmt::metrics::Counter;
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::sip::{self, Editor, HeaderName, Message, Method};

/// The origin of requests the pool makes itself (auto-replies): their answers go nowhere.
pub const NO_ORIGIN: ConnId = ConnId { core: u16::MAX, gen: u16::MAX, slot: u32::MAX };
/// Call-ID prefix of auto-replies: a rule never auto-replies to one (two auto-replies would answer each other).
pub(crate) const AUTO_CALL_ID: &str = "parapet-auto-";

/// One generation of the rules, with its hit counters (`[core][rule]`, each core writes only its own row).
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// The help desks (`crate::pool::helpdesk`), loaded and reloaded with the rules.
    pub helpdesks: Arc<Vec<crate::config::helpdesk::Desk>>,
    pub generation: u64,
    cores: usize,
    hits: Vec<Counter>,
}

impl RuleSet {
    pub fn new(config: &RoutingConfig, generation: u64, cores: usize) -> RuleSet {
        let cores = cores.max(1);
        let hits = (0..config.rules.len() * cores).map(|_| Counter::default()).collect();
        RuleSet { rules: config.rules.clone(), helpdesks: Arc::new(config.helpdesks.clone()), generation, cores, hits }
    }

    fn hit(&self, core: usize, rule: usize) {
        if let Some(c) = self.hits.get((core % self.cores) * self.rules.len() + rule) {
            bump(c);
        }
    }

    /// Hits of each rule, all cores together.
    pub fn hits(&self) -> Vec<(&str, u64)> {
        let n = self.rules.len();
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (r.name.as_str(), (0..self.cores).filter_map(|c| self.hits.get(c * n + i)).map(Counter::get).sum())
            })
            .collect()
    }
}

/// The rules in force, where the reload thread puts a new set and the shells look for it.
pub struct RulesSlot {
    current: Mutex<Arc<RuleSet>>,
    generation: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
}

impl RulesSlot {
    pub fn new(set: RuleSet) -> RulesSlot {
        RulesSlot {
            generation: AtomicU64::new(set.generation),
            current: Mutex::new(Arc::new(set)),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Option<Arc<RuleSet>> {
        self.current.lock().ok().map(|g| g.clone())
    }

    pub fn publish(&self, set: RuleSet) {
        let g = set.generation;
        if let Ok(mut cur) = self.current.lock() {
            *cur = Arc::new(set);
            self.generation.store(g, Ordering::Release);
        }
    }

    /// For `/metrics`: `rule_hits_<name>` per rule, and the reload counters.
    pub fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
        f("rules_reloads", self.reloads.load(Ordering::Relaxed));
        f("rules_reload_errors", self.reload_errors.load(Ordering::Relaxed));
        if let Some(set) = self.current() {
            for (name, n) in set.hits() {
                f(&format!("rule_hits_{}", name.replace('-', "_")), n);
            }
        }
    }
}

/// Per-core state of the rules.
pub struct RulesState {
    pub(crate) set: Arc<RuleSet>,
    next: u32,
}

impl RulesState {
    pub fn new(set: Arc<RuleSet>) -> RulesState {
        RulesState { set, next: 0 }
    }
}

fn method_name(m: &Method) -> &'static str {
    m.as_str().unwrap_or("")
}

fn direction_matches(want: DirectionMatch, dir: Direction) -> bool {
    match want {
        // Between our users, wherever the sender connects from.
        DirectionMatch::Internal => !dir.is_federated(),
        DirectionMatch::Remote => dir == Direction::Remote,
        DirectionMatch::FederatedIn => dir == Direction::FederatedIn,
        DirectionMatch::FederatedOut => dir == Direction::FederatedOut,
        DirectionMatch::Federated => dir.is_federated(),
    }
}

impl PoolCore {
    /// The rules changed (a new generation from the reload thread).
    pub fn on_rules(&mut self, set: Arc<RuleSet>, now: super::Now) {
        self.now = now;
        tracing::info!(core = self.id, rules = set.rules.len(), generation = set.generation, "routing rules in force");
        self.rules = RulesState { set, next: self.rules.next };
    }

    pub fn rules_generation(&self) -> u64 {
        self.rules.set.generation
    }

    /// On the target's core: the first matching rule whose action applies decides. True when it did (the request
    /// has been answered or sent on); false: route as usual.
    pub(crate) fn rules_applied(&mut self, origin: ConnId, msg: &Message) -> bool {
        if self.rules.set.rules.is_empty() {
            return false;
        }
        let Some(method) = msg.method().map(method_name) else { return false };
        let Some(ruri) = msg.request_uri_parsed() else { return false };
        let (from, to) = (aor_of(&msg.from().uri), aor_of(&ruri));
        let ct = msg.content_type().map(media_type);
        let dir = self.direction_of(msg);
        let set = self.rules.set.clone();
        for (i, r) in set.rules.iter().enumerate() {
            let matched = r.method.as_deref().is_none_or(|m| m == method)
                && r.from.as_ref().is_none_or(|m| m.matches(&from))
                && r.to.as_ref().is_none_or(|m| m.matches(&to))
                && r.content_type.as_ref().is_none_or(|c| ct.as_deref() == Some(c.as_str()))
                && r.direction.is_none_or(|d| direction_matches(d, dir));
            if !matched {
                continue;
            }
            let is_message = method == "MESSAGE";
            match &r.action {
                RuleAction::Reject { code, reason } => {
                    set.hit(self.id, i);
                    self.reply(origin, msg, *code, reason, &[]);
                }
                RuleAction::AutoReply { text } if is_message && !msg.call_id().starts_with(AUTO_CALL_ID.as_bytes()) => {
                    set.hit(self.id, i);
                    self.reply(origin, msg, 200, "OK", &[]);
                    self.auto_reply(&from, &to, text);
                }
                RuleAction::Divert { target } if is_message => {
                    set.hit(self.id, i);
                    self.divert(origin, msg, target);
                }
                RuleAction::Deliver { application, fallback } if is_message => {
                    set.hit(self.id, i);
                    if self.archive_admits(origin, msg) {
                        self.deliver_to_application(origin, msg, application, Some(fallback.clone()));
                    }
                }
                RuleAction::Fork { application } if is_message => {
                    set.hit(self.id, i);
                    self.deliver_to_application(origin, msg, application, None);
                    tracing::debug!(rule = %r.name, %from, %to, "routing rule forked a copy");
                    // The MESSAGE itself goes on as usual.
                    return false;
                }
                // An action that does not apply to this request: the next rule may.
                _ => continue,
            }
            tracing::debug!(rule = %r.name, %from, %to, method, "routing rule applied");
            return true;
        }
        false
    }

    /// A MESSAGE with `text` From `target` To `sender`, routed like any (on the sender's core; federated senders
    /// through the edge). Its answers go nowhere.
    pub(crate) fn auto_reply(&mut self, sender: &str, target: &str, text: &str) {
        self.rules.next = self.rules.next.wrapping_add(1);
        let n = format!("{:x}{:08x}", self.id, self.rules.next);
        let via = format!("SIP/2.0/TLS {};branch=z9hG4bKauto{n}", self.s.listen);
        let (ruri, from, to) =
            (format!("sip:{sender}"), format!("<sip:{target}>;tag=auto{n}"), format!("<sip:{sender}>"));
        let call_id = format!("{AUTO_CALL_ID}{n}@{}", self.s.domain);
        let mut out = BytesMut::with_capacity(512 + text.len());
        sip::write_request(
            &mut out,
            "MESSAGE",
            ruri.as_bytes(),
            &[
                (HeaderName::Via, via.as_bytes()),
                (HeaderName::MaxForwards, b"10"),
                (HeaderName::From, from.as_bytes()),
                (HeaderName::To, to.as_bytes()),
                (HeaderName::CallId, call_id.as_bytes()),
                (HeaderName::CSeq, b"1 MESSAGE"),
            ],
            Some((b"text/plain;charset=UTF-8", text.as_bytes())),
        );
        match Message::parse(out.freeze(), &self.s.limits) {
            Ok(m) => self.hand_to_core(sender.as_bytes(), Stage::Route, NO_ORIGIN, m),
            Err(e) => tracing::warn!(error = %e, "routing rule: auto-reply not sent (does not parse)"),
        }
    }

    pub(crate) fn divert(&mut self, origin: ConnId, msg: &Message, target: &str) {
        let hops = msg.max_forwards().unwrap_or(70);
        if hops == 0 {
            self.reply(origin, msg, 483, "Too Many Hops", &[]);
            return;
        }
        let uri = format!("sip:{target}");
        let mut ed = Editor::new(msg);
        ed.set_request_uri(uri.as_bytes());
        ed.set_max_forwards(hops - 1);
        let mut out = BytesMut::with_capacity(msg.bytes().len() + 64);
        // Two edits: cannot overflow.
        if ed.write(&mut out).is_err() {
            return;
        }
        match Message::parse(out.freeze(), &self.s.limits) {
            Ok(m) => self.hand_to_core(target.as_bytes(), Stage::Route, origin, m),
            Err(_) => self.reply(origin, msg, 500, "Server Internal Error", &[]),
        }
    }
}

#[cfg(test)]
mod tests;
