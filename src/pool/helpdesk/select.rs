//! Which member gets a help desk's message, without I/O: given each member's state and `now`, a conversation
//! (the sender's AOR: MESSAGE has no dialog) stays with its member while it is fresh (`stick_s` since its last
//! message) and the member is still online (busy included: busy means "no new conversations", not "drop the
//! one I am in"); otherwise the next available member after the last one chosen, round robin, skipping the
//! unavailable and the sender itself. The table of conversations is bounded: the least recently active is
//! forgotten first.

use std::collections::{BTreeMap, HashMap};

use crate::config::helpdesk::Desk;
use crate::pool::presence::pidf::Rich;

/// A member as its core sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// No live binding.
    Offline,
    /// Registered, no live publication.
    Unpublished,
    /// Registered; the most available of its live publications (what its watchers see).
    Published(Rich),
}

impl MemberState {
    /// May take a new conversation: open and no busy/away/brb/dnd activity (or unpublished, if the desk says so).
    pub fn takes_new(self, desk: &Desk) -> bool {
        match self {
            MemberState::Published(r) => r == Rich::Available,
            MemberState::Unpublished => desk.unpublished_available,
            MemberState::Offline => false,
        }
    }

    /// May keep the conversation it has: registered and not published as closed.
    pub fn online(self) -> bool {
        !matches!(self, MemberState::Offline | MemberState::Published(Rich::Offline))
    }

    /// As the directory search shows it.
    pub fn label(self) -> &'static str {
        match self {
            MemberState::Offline => "offline",
            MemberState::Unpublished => "online",
            MemberState::Published(r) => r.as_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The conversation's member, again.
    Sticky(String),
    /// A new (or reassigned) conversation; `evicted`: conversations forgotten to make room.
    Assigned { agent: String, evicted: usize },
    /// Nobody available.
    NoAgent,
}

struct Conv {
    agent: String,
    /// `(last message, sequence)`: the key in `by_age`.
    age: (u64, u64),
}

/// One desk's conversations and round-robin position (on the core owning the desk's address).
#[derive(Default)]
pub struct DeskState {
    /// Index into the members of the next one to try.
    next: usize,
    convs: HashMap<String, Conv>,
    /// Conversations by last activity, oldest first.
    by_age: BTreeMap<(u64, u64), String>,
    seq: u64,
}

impl DeskState {
    pub fn len(&self) -> usize {
        self.convs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.convs.is_empty()
    }

    /// The member for `sender`'s message at `now`.
    pub fn choose(&mut self, desk: &Desk, sender: &str, state: impl Fn(&str) -> MemberState, now: u64) -> Choice {
        if let Some(c) = self.convs.get(sender) {
            let fresh = c.age.0.saturating_add(desk.stick_s) > now;
            if fresh && desk.members.contains(&c.agent) && state(&c.agent).online() {
                let agent = c.agent.clone();
                self.touch(sender, &agent, now, desk.conversations_max);
                return Choice::Sticky(agent);
            }
        }
        self.forget(sender);
        let n = desk.members.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let Some(m) = desk.members.get(i) else { continue };
            if m != sender && state(m).takes_new(desk) {
                self.next = (i + 1) % n;
                let agent = m.clone();
                let evicted = self.touch(sender, &agent, now, desk.conversations_max);
                return Choice::Assigned { agent, evicted };
            }
        }
        Choice::NoAgent
    }

    /// Records `sender`'s conversation with `agent` as active at `now`; returns how many were forgotten for room.
    fn touch(&mut self, sender: &str, agent: &str, now: u64, max: usize) -> usize {
        self.forget(sender);
        let mut evicted = 0;
        while self.convs.len() >= max.max(1) {
            let Some((_, oldest)) = self.by_age.pop_first() else { break };
            self.convs.remove(&oldest);
            evicted += 1;
        }
        self.seq = self.seq.wrapping_add(1);
        let age = (now, self.seq);
        self.by_age.insert(age, sender.to_string());
        self.convs.insert(sender.to_string(), Conv { agent: agent.to_string(), age });
        evicted
    }

    fn forget(&mut self, sender: &str) {
        if let Some(c) = self.convs.remove(sender) {
            self.by_age.remove(&c.age);
        }
    }

    /// Forgets the conversations idle for `stick_s` or more.
    pub fn expire(&mut self, stick_s: u64, now: u64) {
        while let Some(entry) = self.by_age.first_entry() {
            if entry.key().0.saturating_add(stick_s) > now {
                break;
            }
            let sender = entry.remove();
            self.convs.remove(&sender);
        }
    }

    /// The member `sender` is talking to, if any (tests, diagnostics).
    pub fn agent_of(&self, sender: &str) -> Option<&str> {
        self.convs.get(sender).map(|c| c.agent.as_str())
    }
}
