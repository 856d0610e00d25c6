//! In an enterprise pool, the desk's members held by other front ends: the desk's core watches each member of
//! the desks it runs (their address is owned by this front end and this core) with a back-end subscription
//! through the edge (`presence::backend`, [`Watcher::Desk`]: From and Contact the desk's address, so the
//! owner's NOTIFYs come back to this core, and they follow the member's ownership changes). A member the roster
//! gives to this front end keeps the direct path (its core is asked); the others read as their last NOTIFY said:
//! open with no busy/away/brb/dnd activity is available, closed or pending or no NOTIFY yet is offline. A
//! conversation given to such a member goes to it through the edge too (to whichever front end owns it then).
//!
//! The owner answers such a watcher as any other: a registered member who never published is sent the closed
//! document, exactly like an unregistered one (a watcher cannot tell them apart), so here such a member is
//! offline whatever the desk's `unpublished` says; and the member's allow/block entries apply to the desk's
//! address as a watcher.
//!
//! Bounds: at most `members` (≤ 100) watches per desk, within the back-end subscriptions' own bound per core.

use std::collections::HashSet;

use bytes::{Bytes, BytesMut};

use super::MemberState;
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::pool::presence::backend::{Via, Watcher};
use crate::pool::presence::pidf::{self, Rich};
use crate::pool::PoolCore;
use crate::shard::shard_for;
use crate::sip::{Editor, Message};

/// Expiry asked for a member's watch; refreshed when half of it (or of what the owner granted) is left.
pub const WATCH_S: u64 = 600;
/// A watch whose back-end subscription was refused or gave up is started again after this long.
pub const RESTART_S: u64 = 30;

/// One member watched for a desk.
pub(super) struct Watched {
    /// When the sweep refreshes it.
    refresh_at: u64,
    /// When it was last (re)started.
    started: u64,
    state: MemberState,
}

impl PoolCore {
    /// Whether `member` of a desk this core runs reads from its watch (another front end may hold it).
    pub(super) fn watched_member(&self, member: &str) -> bool {
        self.own.is_member() && !self.own.owned_here(member, self.now.mono)
    }

    /// A watched member's state as its last NOTIFY said (offline when none came yet).
    pub(super) fn watched_state(&self, desk: &str, member: &str) -> MemberState {
        self.hd.watched.get(&(desk.to_string(), member.to_string())).map_or(MemberState::Offline, |w| w.state)
    }

    /// From the sweep: start, refresh and end the watches of the desks this core runs.
    pub(super) fn helpdesk_watch_sweep(&mut self) {
        if !self.own.is_member() && self.hd.watched.is_empty() {
            return;
        }
        let (now, mono) = (self.now.secs, self.now.mono);
        let set = self.rules.set.clone();
        let mut wanted: HashSet<(String, String)> = HashSet::new();
        if self.own.is_member() {
            for d in set.helpdesks.iter() {
                if shard_for(d.address.as_bytes(), self.count) == self.id && self.own.owned_here(&d.address, mono) {
                    wanted.extend(d.members.iter().map(|m| (d.address.clone(), m.clone())));
                }
            }
        }
        let gone: Vec<(String, String)> = self.hd.watched.keys().filter(|k| !wanted.contains(*k)).cloned().collect();
        for key in gone {
            self.hd.watched.remove(&key);
            let (desk, member) = key;
            self.backend_unwatch(&member, &Watcher::Desk(desk));
        }
        for (desk, member) in wanted {
            let watcher = Watcher::Desk(desk.clone());
            let due = match self.hd.watched.get(&(desk.clone(), member.clone())) {
                None => true,
                Some(w) => {
                    w.refresh_at <= now
                        || (!self.presence.backends.has(&watcher, &member)
                            && w.started.saturating_add(RESTART_S) <= now)
                }
            };
            if !due {
                continue;
            }
            let expires_at = now.saturating_add(WATCH_S);
            let refresh_at = now.saturating_add(WATCH_S / 2);
            let w = self.hd.watched.entry((desk.clone(), member.clone())).or_insert(Watched {
                refresh_at,
                started: now,
                state: MemberState::Offline,
            });
            w.refresh_at = refresh_at;
            if !self.presence.backends.has(&watcher, &member) {
                w.started = now;
            }
            let contact = format!("<sip:{desk};transport=tls>");
            self.backend_watch_for(member, desk, watcher, contact, expires_at, Via::Member);
        }
    }

    /// The chosen member gets the MESSAGE (Request-URI rewritten, To kept). A watched member (held by another
    /// front end) from one of our users: through the edge to its owner, which delivers it (loading the member
    /// here would take it from its owner); otherwise as a routing rule's divert.
    pub(super) fn helpdesk_hand(&mut self, origin: ConnId, msg: &Message, agent: &str) {
        if !self.watched_member(agent) || !self.is_local_host(&msg.from().uri) {
            self.divert(origin, msg, agent);
            return;
        }
        if msg.max_forwards() == Some(0) {
            self.reply(origin, msg, 483, "Too Many Hops", &[]);
            return;
        }
        let uri = format!("sip:{agent}");
        let mut ed = Editor::new(msg);
        ed.set_request_uri(uri.as_bytes());
        let mut out = BytesMut::with_capacity(msg.bytes().len() + 64);
        // One edit: cannot overflow.
        if ed.write(&mut out).is_err() {
            return;
        }
        match Message::parse(out.freeze(), &self.s.limits) {
            Ok(m) => self.route_to_member(origin, m),
            Err(_) => self.reply(origin, msg, 500, "Server Internal Error", &[]),
        }
    }

    /// The member's owner accepted the watch for `granted` seconds (it may grant less than asked).
    pub(crate) fn helpdesk_watch_granted(&mut self, desk: &str, member: &str, granted: u64) {
        let now = self.now.secs;
        if let Some(w) = self.hd.watched.get_mut(&(desk.to_string(), member.to_string())) {
            w.refresh_at = w.refresh_at.min(now.saturating_add((granted / 2).max(1)));
        }
    }

    /// A NOTIFY (or a refusal: the closed document) about `member` for `desk`; `doc` None: pending.
    pub(crate) fn helpdesk_member_notified(&mut self, desk: &str, member: &str, doc: Option<&Bytes>) {
        let Some(w) = self.hd.watched.get_mut(&(desk.to_string(), member.to_string())) else { return };
        bump(&self.pstats.helpdesk_member_notifies);
        w.state = match doc.map(|d| pidf::summarize(d)) {
            Some(Ok(s)) if s.rich != Rich::Offline => MemberState::Published(s.rich),
            Some(Ok(_)) | None => MemberState::Offline,
            Some(Err(e)) => {
                tracing::info!(%desk, %member, error = ?e, "help desk: a member's NOTIFY is not PIDF; offline");
                MemberState::Offline
            }
        };
        tracing::debug!(%desk, %member, state = w.state.label(), "help desk: watched member's state");
    }
}
