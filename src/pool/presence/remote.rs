//! Presence across cores, through the mesh: a list subscription (`rls.rs`) on one core watches presentities
//! owned by others. The presentity's core keeps a *remote watch* per (list core, list subscription), authorizes
//! the list owner like any watcher, and sends its state back now and at every change. Remote watches expire
//! with the list subscription (refreshes renew them) and are removed when it ends. A full mesh channel drops the
//! message (counted in `mesh_full`): the next change or refresh carries the state again.

use bytes::Bytes;

use super::backend::{Via, Watcher};
use super::pidf;
use super::policy::Watch;
use crate::pool::{Action, PoolCore, PoolMsg};
use crate::shard::shard_for;

pub enum Msg {
    Watch {
        presentity: String,
        watcher: String,
        core: usize,
        list: u32,
        expires_at: u64,
    },
    Unwatch {
        presentity: String,
        core: usize,
        list: u32,
    },
    /// A presentity's document as the list owner may see it (None: the owner is pending).
    State {
        list: u32,
        presentity: String,
        state: Option<(String, Bytes)>,
    },
}

#[derive(Debug, Clone)]
pub struct RemoteWatch {
    pub core: usize,
    pub list: u32,
    pub watcher: String,
    pub expires_at: u64,
}

/// Remote watches outlive their list subscription's expiry by this much (a refresh in flight renews them).
const SLACK_S: u64 = 30;

impl PoolCore {
    fn send_presence_to(&mut self, core: usize, msg: Msg) {
        if core == self.id {
            self.on_presence_msg(msg);
        } else {
            self.push(Action::Mesh { core, msg: PoolMsg::Presence(msg) });
        }
    }

    pub(crate) fn remote_watch(&mut self, presentity: String, watcher: String, list: u32, expires_at: u64) {
        if !self.is_local_aor(&presentity) {
            // Another organization's contact: its own server answers, to a SUBSCRIBE of ours (`backend.rs`).
            self.backend_watch(presentity, watcher, list, expires_at, Via::Federation);
            return;
        }
        if self.watched_through_edge(&presentity) {
            // Whichever member owns the contact (now, and after a kill or a drain), or the contact's home pool,
            // answers a SUBSCRIBE the edge routes to it (`backend.rs`).
            self.backend_watch(presentity, watcher, list, expires_at, Via::Member);
            return;
        }
        let core = shard_for(presentity.as_bytes(), self.count);
        let msg = Msg::Watch { presentity, watcher, core: self.id, list, expires_at: expires_at + SLACK_S };
        self.send_presence_to(core, msg);
    }

    pub(crate) fn remote_unwatch(&mut self, presentity: String, list: u32) {
        if !self.is_local_aor(&presentity) || self.watched_through_edge(&presentity) {
            self.backend_unwatch(&presentity, &Watcher::List(list));
            return;
        }
        let core = shard_for(presentity.as_bytes(), self.count);
        self.send_presence_to(core, Msg::Unwatch { presentity, core: self.id, list });
    }

    pub(crate) fn on_presence_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Watch { presentity, watcher, core, list, expires_at } => {
                let state = self.state_for(&presentity, &watcher);
                {
                    let registered = self.registrar.is_registered(&presentity, self.now.secs);
                    let p = &mut self.presence;
                    p.registered.entry(presentity.clone()).or_insert(registered);
                    let watches = p.remote.entry(presentity.clone()).or_default();
                    watches.retain(|w| !(w.core == core && w.list == list));
                    watches.push(RemoteWatch { core, list, watcher, expires_at });
                }
                self.send_presence_to(core, Msg::State { list, presentity, state });
            }
            Msg::Unwatch { presentity, core, list } => {
                let p = &mut self.presence;
                if let Some(watches) = p.remote.get_mut(&presentity) {
                    watches.retain(|w| !(w.core == core && w.list == list));
                    if watches.is_empty() {
                        p.remote.remove(&presentity);
                    }
                }
            }
            Msg::State { list, presentity, state } => self.list_state(list, &presentity, state),
        }
    }

    /// Whether a contact of our own domain is watched through the edge rather than the mesh: in an enterprise
    /// pool (another member may own it), or when the directory homes it on another pool (`[pool] home`).
    fn watched_through_edge(&self, aor: &str) -> bool {
        if self.own.is_member() {
            return true;
        }
        let (alias, _) = aor.rsplit_once('@').unwrap_or((aor, ""));
        self.homed_elsewhere_alias(alias).is_some()
    }

    /// Whether an AOR key (`bob@example.com`) is of a domain this pool serves.
    fn is_local_aor(&self, aor: &str) -> bool {
        let domain = aor.rsplit_once('@').map_or("", |(_, d)| d);
        self.s.local_hosts.iter().any(|h| h.eq_ignore_ascii_case(domain))
    }

    /// `presentity`'s document as `watcher` may see it; unknown presentities read as closed.
    fn state_for(&self, presentity: &str, watcher: &str) -> Option<(String, Bytes)> {
        let entity = format!("sip:{presentity}");
        let (alias, domain) = presentity.split_once('@').unwrap_or((presentity, ""));
        let known =
            self.s.local_hosts.iter().any(|h| h == domain) && self.dir.view.users.get(alias.as_bytes()).is_some();
        let closed = || Some((super::PIDF.to_string(), Bytes::from(pidf::closed(&entity))));
        if !known {
            return closed();
        }
        match self.presence.policy.watch(presentity, watcher) {
            Watch::Allow => {}
            Watch::Block => return closed(),
            Watch::Pending => return None,
        }
        Some(self.presence_document(presentity, &entity))
    }

    /// The presentity changed: every remote watcher gets its view of the new state.
    pub(crate) fn remote_changed(&mut self, presentity: &str) {
        let watches = self.presence.remote.get(presentity).cloned().unwrap_or_default();
        for w in watches {
            let state = self.state_for(presentity, &w.watcher);
            self.send_presence_to(w.core, Msg::State { list: w.list, presentity: presentity.to_string(), state });
        }
    }

    /// Sweep: remote watches whose list subscription stopped refreshing.
    pub(crate) fn expire_remote(&mut self, now: u64) {
        self.presence.remote.retain(|_, watches| {
            watches.retain(|w| w.expires_at > now);
            !watches.is_empty()
        });
    }
}
