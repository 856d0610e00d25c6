//! Presence subscriptions (RFC 6665 dialogs, RFC 3856) held by the core owning the presentity: the dialog
//! state needed to send NOTIFY (route set, remote target, tags, CSeq), expiry, and the caps on how many one
//! watcher and one presentity may have. Pure: no I/O, no clock; the caller builds the messages.
//!
//! The per-watcher cap counts the subscriptions a watcher holds *on this core* (presentities are spread over
//! cores by AOR hash, and cores share nothing), so the effective cap across the pool is at most
//! `per_watcher_max` times the number of cores.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubLimits {
    pub min_expires: u32,
    pub max_expires: u32,
    /// RFC 3856 §6.4 suggests 3600; every client we know sends 600.
    pub default_expires: u32,
    pub per_watcher_max: usize,
    pub per_presentity_max: usize,
    pub total_max: usize,
}

impl Default for SubLimits {
    fn default() -> Self {
        SubLimits {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            per_watcher_max: 200,
            per_presentity_max: 1000,
            total_max: 500_000,
        }
    }
}

/// The event package of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Package {
    /// RFC 3856: a watcher of a presentity.
    Presence,
    /// RFC 3857: a presentity watching who watches it (always its own).
    Winfo,
}

impl Package {
    pub fn parse(event: &str) -> Option<Package> {
        match event {
            "presence" => Some(Package::Presence),
            "presence.winfo" => Some(Package::Winfo),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Package::Presence => "presence",
            Package::Winfo => "presence.winfo",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    Active,
    /// Waiting for the presentity's decision (RFC 3857).
    Pending,
}

#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: u32,
    pub package: Package,
    /// Watcher information documents sent in this subscription (RFC 3858 `version`, from 0).
    pub winfo_version: u32,
    /// AOR key of the presentity (`bob@example.com`) and the URI watchers name it by.
    pub presentity: String,
    pub entity: String,
    /// AOR key of the watcher.
    pub watcher: String,
    pub call_id: String,
    /// The watcher's tag (From of its SUBSCRIBE) and ours (To of our 200).
    pub remote_tag: String,
    pub local_tag: String,
    /// The From of the SUBSCRIBE (our NOTIFY's To), as received.
    pub remote_uri: String,
    /// The watcher's Contact URI: our NOTIFY's Request-URI.
    pub remote_target: String,
    /// Record-Route values of the SUBSCRIBE in order: our NOTIFY's Route set (RFC 3261 §12.1.1).
    pub route_set: Vec<String>,
    /// Event header `id` parameter, echoed in NOTIFY.
    pub event_id: Option<String>,
    pub expires_at: u64,
    pub local_cseq: u32,
    /// `local_cseq` when the subscription was last written to the store.
    pub saved_cseq: u32,
    pub remote_cseq: u32,
    pub state: SubState,
    /// A contact-list subscription (RFC 4662): its resources and their states.
    pub list: Option<Box<super::rls::ListState>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubError {
    IntervalTooBrief {
        min: u32,
    },
    /// The watcher holds too many subscriptions (per-user cap): 403 here, with a counter.
    WatcherCap,
    /// The presentity has too many watchers, or the core's table is full: 503.
    Full,
}

#[derive(Default)]
pub struct Subscriptions {
    by_id: HashMap<u32, Subscription>,
    by_dialog: HashMap<(String, String), u32>,
    by_presentity: HashMap<String, Vec<u32>>,
    per_watcher: HashMap<String, usize>,
    next: u32,
    pub limits: SubLimits,
}

impl Subscriptions {
    pub fn new(limits: SubLimits) -> Subscriptions {
        Subscriptions { limits, ..Subscriptions::default() }
    }

    /// The expiry granted for a requested one (None: the default); Err for 423.
    pub fn grant(&self, requested: Option<u32>) -> Result<u32, SubError> {
        let r = requested.unwrap_or(self.limits.default_expires);
        if r != 0 && r < self.limits.min_expires {
            return Err(SubError::IntervalTooBrief { min: self.limits.min_expires });
        }
        Ok(r.min(self.limits.max_expires))
    }

    /// Checks the caps for a new subscription of `watcher` to `presentity`.
    pub fn admit(&self, watcher: &str, presentity: &str) -> Result<(), SubError> {
        if self.per_watcher.get(watcher).copied().unwrap_or(0) >= self.limits.per_watcher_max {
            return Err(SubError::WatcherCap);
        }
        if self.by_id.len() >= self.limits.total_max
            || self.by_presentity.get(presentity).map_or(0, Vec::len) >= self.limits.per_presentity_max
        {
            return Err(SubError::Full);
        }
        Ok(())
    }

    /// Inserts a new subscription (after `admit`); returns its id.
    pub fn insert(&mut self, mut s: Subscription) -> u32 {
        loop {
            self.next = self.next.wrapping_add(1);
            if self.next != 0 && !self.by_id.contains_key(&self.next) {
                break;
            }
        }
        s.id = self.next;
        self.by_dialog.insert((s.call_id.clone(), s.remote_tag.clone()), s.id);
        self.by_presentity.entry(s.presentity.clone()).or_default().push(s.id);
        *self.per_watcher.entry(s.watcher.clone()).or_default() += 1;
        let id = s.id;
        self.by_id.insert(id, s);
        id
    }

    pub fn find(&self, call_id: &str, remote_tag: &str) -> Option<u32> {
        self.by_dialog.get(&(call_id.to_string(), remote_tag.to_string())).copied()
    }

    pub fn get(&self, id: u32) -> Option<&Subscription> {
        self.by_id.get(&id)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Subscription> {
        self.by_id.get_mut(&id)
    }

    pub fn remove(&mut self, id: u32) -> Option<Subscription> {
        let s = self.by_id.remove(&id)?;
        self.by_dialog.remove(&(s.call_id.clone(), s.remote_tag.clone()));
        if let Some(list) = self.by_presentity.get_mut(&s.presentity) {
            list.retain(|x| *x != id);
            if list.is_empty() {
                self.by_presentity.remove(&s.presentity);
            }
        }
        if let Some(n) = self.per_watcher.get_mut(&s.watcher) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_watcher.remove(&s.watcher);
            }
        }
        Some(s)
    }

    /// Ids of the presence subscriptions to `presentity`.
    pub fn watchers_of(&self, presentity: &str) -> Vec<u32> {
        self.of_package(presentity, Package::Presence)
    }

    /// Ids of the subscriptions to `presentity` in one package.
    pub fn of_package(&self, presentity: &str, package: Package) -> Vec<u32> {
        let Some(ids) = self.by_presentity.get(presentity) else { return Vec::new() };
        ids.iter().copied().filter(|id| self.by_id.get(id).is_some_and(|s| s.package == package)).collect()
    }

    /// Whether anyone subscribes to `presentity` (in any package).
    pub fn is_watched(&self, presentity: &str) -> bool {
        self.by_presentity.contains_key(presentity)
    }

    /// Every subscription that has expired at `now` (still in the table: the caller sends the final NOTIFY).
    pub fn due(&self, now: u64) -> Vec<u32> {
        self.by_id.values().filter(|s| s.expires_at <= now).map(|s| s.id).collect()
    }

    /// Next CSeq for a NOTIFY in this dialog.
    pub fn next_cseq(&mut self, id: u32) -> Option<u32> {
        let s = self.by_id.get_mut(&id)?;
        s.local_cseq = s.local_cseq.wrapping_add(1);
        Some(s.local_cseq)
    }

    /// Subscriptions a watcher holds here.
    pub fn of_watcher(&self, watcher: &str) -> Vec<u32> {
        self.by_id.values().filter(|s| s.watcher == watcher).map(|s| s.id).collect()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every contact-list subscription.
    pub fn lists(&self) -> impl Iterator<Item = &Subscription> + '_ {
        self.by_id.values().filter(|s| s.list.is_some())
    }

    /// The presence subscriptions to a presentity (for watcher information).
    pub fn presence_subs_of(&self, presentity: &str) -> Vec<&Subscription> {
        self.watchers_of(presentity).into_iter().filter_map(|id| self.by_id.get(&id)).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sub(watcher: &str, presentity: &str, call_id: &str) -> Subscription {
        Subscription {
            id: 0,
            package: Package::Presence,
            winfo_version: 0,
            presentity: presentity.into(),
            entity: format!("sip:{presentity}"),
            watcher: watcher.into(),
            call_id: call_id.into(),
            remote_tag: "rt".into(),
            local_tag: "lt".into(),
            remote_uri: format!("<sip:{watcher}>;tag=rt"),
            remote_target: "sip:w@10.0.0.1:5061;transport=tls".into(),
            route_set: vec!["<sip:tok@127.0.0.1:5063;transport=tls;lr>".into()],
            event_id: None,
            expires_at: 600,
            local_cseq: 0,
            saved_cseq: 0,
            remote_cseq: 1,
            state: SubState::Active,
            list: None,
        }
    }

    #[test]
    fn insert_find_remove() {
        let mut t = Subscriptions::new(SubLimits::default());
        let id = t.insert(sub("alice@x", "bob@x", "c1"));
        assert_eq!(t.find("c1", "rt"), Some(id));
        assert_eq!(t.watchers_of("bob@x"), vec![id]);
        assert_eq!(t.next_cseq(id), Some(1));
        assert_eq!(t.next_cseq(id), Some(2));
        assert_eq!(t.due(599), Vec::<u32>::new());
        assert_eq!(t.due(600), vec![id]);
        let mut w = sub("bob@x", "bob@x", "c9");
        w.package = Package::Winfo;
        let wid = t.insert(w);
        assert_eq!(t.watchers_of("bob@x"), vec![id], "presence watchers only");
        assert_eq!(t.of_package("bob@x", Package::Winfo), vec![wid]);
        assert!(t.remove(wid).is_some());
        assert!(t.remove(id).is_some());
        assert!(t.is_empty());
        assert!(!t.is_watched("bob@x"));
        assert_eq!(t.find("c1", "rt"), None);
        assert!(t.watchers_of("bob@x").is_empty());
    }

    #[test]
    fn caps_and_expiry_bounds() {
        let mut t = Subscriptions::new(SubLimits { per_watcher_max: 2, per_presentity_max: 3, ..SubLimits::default() });
        assert_eq!(t.grant(None), Ok(3600));
        assert_eq!(t.grant(Some(600)), Ok(600));
        assert_eq!(t.grant(Some(0)), Ok(0));
        assert_eq!(t.grant(Some(5)), Err(SubError::IntervalTooBrief { min: 60 }));
        assert_eq!(t.grant(Some(100_000)), Ok(7200));
        t.insert(sub("alice@x", "bob@x", "c1"));
        t.insert(sub("alice@x", "bob@x", "c2"));
        assert_eq!(t.admit("alice@x", "bob@x"), Err(SubError::WatcherCap));
        assert_eq!(t.admit("carol@x", "bob@x"), Ok(()));
        t.insert(sub("carol@x", "bob@x", "c3"));
        assert_eq!(t.admit("dave@x", "bob@x"), Err(SubError::Full));
        let id = t.find("c1", "rt").unwrap();
        t.remove(id);
        assert_eq!(t.admit("alice@x", "carol@x"), Ok(()), "a removal frees the watcher's slot");
    }
}
