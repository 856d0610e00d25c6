//! The presence-aware help desk (`[[helpdesk]]`, `crate::config::helpdesk`): a MESSAGE to a desk's address,
//! on the core owning that address (after the routing rules, which may still reject or divert it), asks every
//! member's core for the member's state through the mesh (a user's bindings and publications are touched only on
//! its core), then [`select`] picks the member, and the MESSAGE is diverted to it the way a routing rule's divert
//! does (Request-URI rewritten, To kept: the member sees it was written to the desk; the member answers the
//! sender directly, From itself). Nobody available: 200, then the desk's auto-reply From the desk's address.
//!
//! "Available" is what a watcher would see: a live binding, and the most available live publication open with no
//! busy/away/brb/dnd activity; a registered member who never published counts as available unless the desk says
//! `unpublished = "unavailable"`. In an enterprise pool, members the roster gives to another front end are
//! watched through the edge instead and read as their owner's NOTIFYs say ([`watch`]).
//!
//! Bounds: gathers in flight per core ([`GATHERS_MAX`], over it 503 and `helpdesk_busy`), a gather waits at
//! most [`GATHER_TIMEOUT`] (members whose core did not answer count as offline), conversations per desk
//! (`conversations_max`, the oldest forgotten first: `helpdesk_evicted`).

pub mod select;
pub mod watch;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::apps::AUTO_CALL_ID;
use super::{aor_of, Action, PoolCore, PoolMsg};
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::shard::shard_for;
use crate::sip::{HeaderName, Message};
pub use select::{Choice, DeskState, MemberState};

/// Gathers in flight per core; more get 503.
pub const GATHERS_MAX: usize = 1024;
/// How long a gather waits for the members' cores (answered by the sweep, every 500 ms, once it is over).
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(1);

/// Members' states across cores.
#[derive(Debug)]
pub enum Msg {
    Ask { core: usize, gather: u32, aors: Vec<String> },
    States { gather: u32, states: Vec<(String, MemberState)> },
}

/// A MESSAGE waiting for its members' states.
struct Gather {
    desk: String,
    origin: ConnId,
    request: Bytes,
    states: HashMap<String, MemberState>,
    waiting: usize,
    deadline: Instant,
}

/// One core's help desk state: the desks whose address it owns, and its gathers.
#[derive(Default)]
pub struct HelpdeskState {
    desks: HashMap<String, DeskState>,
    gathers: HashMap<u32, Gather>,
    next: u32,
    /// (desk, member) watched through the edge (enterprise pool, [`watch`]).
    watched: HashMap<(String, String), watch::Watched>,
}

impl HelpdeskState {
    /// The conversations of a desk (tests, diagnostics).
    pub fn desk(&self, address: &str) -> Option<&DeskState> {
        self.desks.get(address)
    }

    pub fn gathers(&self) -> usize {
        self.gathers.len()
    }

    /// Members watched through the edge, all desks together.
    pub fn watched(&self) -> usize {
        self.watched.len()
    }

    /// Conversations remembered, all desks together.
    pub fn conversations(&self) -> usize {
        self.desks.values().map(DeskState::len).sum()
    }
}

impl PoolCore {
    /// On the target's core, for a MESSAGE: true when the target is a help desk (the request is then taken care
    /// of); false: route as usual.
    pub(crate) fn helpdesk_took(&mut self, origin: ConnId, msg: &Message) -> bool {
        if self.rules.set.helpdesks.is_empty() {
            return false;
        }
        let set = self.rules.set.clone();
        let Some(target) = msg.request_uri_parsed().map(|u| aor_of(&u)) else { return false };
        let Some(desk) = set.helpdesks.iter().find(|d| d.address == target) else { return false };
        if self.hd.gathers.len() >= GATHERS_MAX {
            bump(&self.pstats.helpdesk_busy);
            // Logged at the 1st, 2nd, 4th, 8th... refusal: an overload does not flood the log.
            let n = self.pstats.helpdesk_busy.get();
            if n.is_power_of_two() {
                tracing::warn!(core = self.id, desk = %desk.address, refused = n,
                    "help desk: too many messages waiting for members' states; 503");
            }
            self.reply(origin, msg, 503, "Service Unavailable: help desk busy", &[(HeaderName::RetryAfter, b"1")]);
            return true;
        }
        let mut states = HashMap::new();
        let mut by_core: HashMap<usize, Vec<String>> = HashMap::new();
        for m in &desk.members {
            let core = shard_for(m.as_bytes(), self.count);
            if self.watched_member(m) {
                states.insert(m.clone(), self.watched_state(&desk.address, m));
            } else if core == self.id {
                states.insert(m.clone(), self.member_state(m));
            } else {
                by_core.entry(core).or_default().push(m.clone());
            }
        }
        let gather = Gather {
            desk: desk.address.clone(),
            origin,
            request: msg.bytes().clone(),
            states,
            waiting: by_core.len(),
            deadline: self.now.mono + GATHER_TIMEOUT,
        };
        if by_core.is_empty() {
            self.helpdesk_decide(gather);
            return true;
        }
        self.hd.next = self.hd.next.wrapping_add(1);
        let id = self.hd.next;
        for (core, aors) in by_core {
            self.push(Action::Mesh { core, msg: PoolMsg::Helpdesk(Msg::Ask { core: self.id, gather: id, aors }) });
        }
        self.hd.gathers.insert(id, gather);
        true
    }

    /// A user of this core as a help desk sees it.
    pub(crate) fn member_state(&self, aor: &str) -> MemberState {
        let now = self.now.secs;
        if !self.registrar.is_registered(aor, now) {
            return MemberState::Offline;
        }
        let best = self.presence.pubs.of(aor).iter().filter(|p| p.expires_at > now).map(|p| p.summary.rich).max();
        best.map_or(MemberState::Unpublished, MemberState::Published)
    }

    pub(crate) fn on_helpdesk_msg(&mut self, m: Msg) {
        match m {
            Msg::Ask { core, gather, aors } => {
                let states = aors
                    .into_iter()
                    .map(|a| {
                        let s = self.member_state(&a);
                        (a, s)
                    })
                    .collect();
                self.push(Action::Mesh { core, msg: PoolMsg::Helpdesk(Msg::States { gather, states }) });
            }
            Msg::States { gather, states } => {
                let Some(g) = self.hd.gathers.get_mut(&gather) else { return };
                g.states.extend(states);
                g.waiting = g.waiting.saturating_sub(1);
                if g.waiting == 0 {
                    if let Some(g) = self.hd.gathers.remove(&gather) {
                        self.helpdesk_decide(g);
                    }
                }
            }
        }
    }

    fn helpdesk_decide(&mut self, g: Gather) {
        let Ok(msg) = Message::parse(g.request, &self.s.limits) else { return };
        let set = self.rules.set.clone();
        let Some(desk) = set.helpdesks.iter().find(|d| d.address == g.desk) else {
            // The desk went away with a reload while its members were asked.
            self.reply(g.origin, &msg, 480, "Temporarily Unavailable", &[]);
            return;
        };
        let sender = aor_of(&msg.from().uri);
        let states = g.states;
        let state = |m: &str| states.get(m).copied().unwrap_or(MemberState::Offline);
        let now = self.now.secs;
        let choice = self.hd.desks.entry(desk.address.clone()).or_default().choose(desk, &sender, state, now);
        match choice {
            Choice::Sticky(agent) => {
                bump(&self.pstats.helpdesk_sticky);
                self.helpdesk_hand(g.origin, &msg, &agent);
            }
            Choice::Assigned { agent, evicted } => {
                bump(&self.pstats.helpdesk_assigned);
                if evicted > 0 {
                    let before = self.pstats.helpdesk_evicted.get();
                    let after = before.saturating_add(evicted as u64);
                    self.pstats.helpdesk_evicted.set(after);
                    // Logged when the count passes a power of two: a full table does not flood the log.
                    if after.checked_ilog2() != before.checked_ilog2() {
                        tracing::warn!(desk = %desk.address, max = desk.conversations_max, evicted = after,
                            "help desk: conversation table full; the least recently active forgotten");
                    }
                }
                tracing::debug!(desk = %desk.address, %sender, %agent, "help desk: conversation assigned");
                self.helpdesk_hand(g.origin, &msg, &agent);
            }
            Choice::NoAgent => {
                bump(&self.pstats.helpdesk_no_agent);
                tracing::info!(desk = %desk.address, %sender, members = desk.members.len(),
                    "help desk: no member available; the sender gets the auto-reply");
                if msg.call_id().starts_with(AUTO_CALL_ID.as_bytes()) {
                    // Another auto-reply (a desk or a rule answering us): answering it could loop.
                    self.reply(g.origin, &msg, 480, "Temporarily Unavailable", &[]);
                    return;
                }
                self.reply(g.origin, &msg, 200, "OK", &[]);
                self.auto_reply(&sender, &desk.address, &desk.auto_reply);
            }
        }
    }

    /// From the sweep: gathers past their deadline decide with what they have; idle conversations are forgotten,
    /// and so are desks no longer configured.
    pub(crate) fn helpdesk_sweep(&mut self) {
        let now = self.now.mono;
        let due: Vec<u32> = self.hd.gathers.iter().filter(|(_, g)| g.deadline <= now).map(|(id, _)| *id).collect();
        for id in due {
            if let Some(g) = self.hd.gathers.remove(&id) {
                self.helpdesk_decide(g);
            }
        }
        self.helpdesk_watch_sweep();
        let set = self.rules.set.clone();
        let secs = self.now.secs;
        self.hd.desks.retain(|addr, st| match set.helpdesks.iter().find(|d| d.address == *addr) {
            Some(d) => {
                st.expire(d.stick_s, secs);
                true
            }
            None => false,
        });
    }
}

#[cfg(test)]
mod tests;
