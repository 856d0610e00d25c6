//! SUBSCRIBE for `Event: presence` (RFC 6665 §4.2, RFC 3856 §6) on the core owning the presentity: a new
//! subscription creates a dialog (our To tag, the watcher's Contact as remote target, its Record-Route as route
//! set), refreshes and unsubscribes find it by Call-ID and the watcher's tag. Every accepted SUBSCRIBE is
//! answered 200 with Expires and our Contact, then a NOTIFY at once (`notify.rs`).
//!
//! Authorization (`policy.rs`) decides what the watcher sees: allowed watchers the real state, blocked ones a
//! closed document in an otherwise identical `active` subscription (they cannot tell), pending ones a `pending`
//! subscription without state until the presentity decides.

use super::notify::Final;
use super::policy::Watch;
use super::subscriptions::{Package, SubError, SubState, Subscription};
use super::{accepts, event_of, winfo, PIDF};
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::pool::{aor_of, PoolCore};
use crate::sip::{Contact, HeaderName, Message};

impl PoolCore {
    /// The watcher's end of a new subscription dialog: its Contact (the target of our NOTIFYs) and the
    /// Record-Route set, which must lead back through one of our edges. None once answered (400 / 403).
    pub(crate) fn watcher_dialog(&mut self, origin: ConnId, msg: &Message) -> Option<(String, Vec<String>)> {
        let Some(target) = msg.contacts().find_map(|c| match c {
            Ok(Contact::Addr(na)) => Some(String::from_utf8_lossy(na.uri_raw).to_string()),
            _ => None,
        }) else {
            self.reply(origin, msg, 400, "Bad Request: SUBSCRIBE without Contact", &[]);
            return None;
        };
        let route_set: Vec<String> =
            msg.values(HeaderName::RecordRoute).map(|v| String::from_utf8_lossy(v).to_string()).collect();
        if route_set.first().and_then(|r| self.edge_for(r)).is_none() {
            bump(&self.pstats.subscribe_refused);
            self.reply(origin, msg, 403, "Forbidden: no route back to the watcher", &[]);
            return None;
        }
        Some((target, route_set))
    }

    pub(crate) fn subscribe(&mut self, origin: ConnId, msg: &Message) {
        // A presentity in another organization: its own server answers, through our edge's federation (the
        // dialog's route set leads through the edges, not through us). Its Request-URI is the presentity's AOR,
        // or within the dialog its server's Contact, which names that AOR too.
        if msg.request_uri_parsed().is_some_and(|u| !self.is_local_host(&u)) {
            bump(&self.pstats.subscriptions_federated_out);
            self.route_foreign(origin, msg.clone());
            return;
        }
        let Some(package) = event_of(msg).and_then(|(p, _)| Package::parse(&p)) else {
            self.reply(origin, msg, 489, "Bad Event", &[(HeaderName::AllowEvents, super::ALLOW_EVENTS)]);
            return;
        };
        let media = match package {
            Package::Presence => PIDF,
            Package::Winfo => winfo::WINFO,
        };
        if !accepts(msg, media) {
            self.reply(origin, msg, 406, "Not Acceptable", &[(HeaderName::Accept, media.as_bytes())]);
            return;
        }
        let requested = msg.expires();
        let granted = match self.presence.subs.grant(requested) {
            Ok(g) => g,
            Err(SubError::IntervalTooBrief { min }) => {
                let min = min.to_string();
                self.reply(origin, msg, 423, "Interval Too Brief", &[(HeaderName::MinExpires, min.as_bytes())]);
                return;
            }
            Err(_) => 0,
        };
        let call_id = String::from_utf8_lossy(msg.call_id()).to_string();
        let remote_tag = msg.from().tag().map(|t| String::from_utf8_lossy(t).to_string()).unwrap_or_default();
        if msg.to().tag().is_some() {
            self.resubscribe(origin, msg, &call_id, &remote_tag, granted);
            return;
        }
        let Some(ruri) = msg.request_uri_parsed() else {
            self.reply(origin, msg, 416, "Unsupported URI Scheme", &[]);
            return;
        };
        if let Some(owner) = ruri.user.and_then(super::rls::list_owner).filter(|_| package == Package::Presence) {
            if self.is_local_host(&ruri) {
                let owner = owner.to_string();
                self.subscribe_list(origin, msg, &owner, granted);
                return;
            }
        }
        if !self.is_local_host(&ruri) || self.dir.view.users.get(&ruri.user_unescaped()).is_none() {
            self.reply(origin, msg, 404, "Not Found", &[]);
            return;
        }
        let presentity = aor_of(&ruri);
        let watcher = aor_of(&msg.from().uri);
        if package == Package::Winfo && presentity != watcher {
            bump(&self.pstats.subscribe_refused);
            self.reply(origin, msg, 403, "Forbidden: watcher information is for the presentity only", &[]);
            return;
        }
        let Some((target, route_set)) = self.watcher_dialog(origin, msg) else { return };
        let watch = match package {
            Package::Presence => self.presence.policy.watch(&presentity, &watcher),
            Package::Winfo => Watch::Allow,
        };
        let state = if watch == Watch::Pending { SubState::Pending } else { SubState::Active };
        let sub = Subscription {
            id: 0,
            package,
            winfo_version: 0,
            entity: format!("sip:{presentity}"),
            presentity: presentity.clone(),
            watcher: watcher.clone(),
            call_id,
            remote_tag,
            local_tag: crate::pool::to_tag(msg),
            remote_uri: String::from_utf8_lossy(msg.header(HeaderName::From).unwrap_or(b"")).to_string(),
            remote_target: target,
            route_set,
            event_id: event_of(msg).and_then(|(_, id)| id),
            expires_at: self.now.secs + u64::from(granted),
            local_cseq: 0,
            saved_cseq: 0,
            remote_cseq: msg.cseq().seq,
            state,
            list: None,
        };
        if !self.admit_subscription(origin, msg, &watcher, &presentity) {
            return;
        }
        let registered = self.registrar.is_registered(&presentity, self.now.secs);
        let id = {
            let p = &mut self.presence;
            p.registered.entry(presentity.clone()).or_insert(registered);
            p.subs.insert(sub)
        };
        bump(&self.pstats.subscriptions);
        if granted > 0 {
            self.persist_subscription(id);
        }
        self.answer_subscribe(origin, msg, &presentity, granted);
        if granted == 0 {
            // A fetch (RFC 6665 §4.4.3): one NOTIFY with the state, terminated.
            self.send_notify(id, Some(Final::Timeout));
        } else {
            self.send_notify(id, None);
            if package == Package::Presence {
                self.watchers_changed(&presentity);
            }
        }
    }

    /// Room for one more subscription of `watcher` to `key` (the per-watcher cap, the table's bound); false once
    /// answered 403 or 503.
    pub(crate) fn admit_subscription(&mut self, origin: ConnId, msg: &Message, watcher: &str, key: &str) -> bool {
        let admitted = self.presence.subs.admit(watcher, key);
        match admitted {
            Ok(()) => true,
            Err(SubError::WatcherCap) => {
                bump(&self.pstats.subscriptions_over_cap);
                tracing::info!(%watcher, "too many subscriptions for one watcher: refused");
                self.reply(origin, msg, 403, "Forbidden: too many subscriptions", &[]);
                false
            }
            Err(_) => {
                bump(&self.pstats.subscribe_refused);
                let retry: &[(HeaderName, &[u8])] = &[(HeaderName::RetryAfter, b"60")];
                self.reply(origin, msg, 503, "Service Unavailable: too many subscriptions", retry);
                false
            }
        }
    }

    /// A refresh or unsubscribe within an existing dialog.
    fn resubscribe(&mut self, origin: ConnId, msg: &Message, call_id: &str, remote_tag: &str, granted: u32) {
        let found = self.presence.subs.find(call_id, remote_tag);
        let Some(id) = found else {
            self.reply(origin, msg, 481, "Subscription Does Not Exist", &[]);
            return;
        };
        let now = self.now.secs;
        let presentity = {
            let Some(s) = self.presence.subs.get_mut(id) else { return };
            if msg.cseq().seq <= s.remote_cseq && s.remote_cseq != 0 {
                self.reply(
                    origin,
                    msg,
                    500,
                    "Server Internal Error: CSeq out of order",
                    &[(HeaderName::RetryAfter, b"1")],
                );
                return;
            }
            s.remote_cseq = msg.cseq().seq;
            s.expires_at = now + u64::from(granted);
            // A refresh may bring a new remote target (RFC 6665 §4.1.2.1, RFC 3261 §12.2.2).
            if let Some(Ok(Contact::Addr(na))) = msg.contacts().next() {
                s.remote_target = String::from_utf8_lossy(na.uri_raw).to_string();
            }
            s.presentity.clone()
        };
        self.answer_subscribe(origin, msg, &presentity, granted);
        if granted == 0 {
            bump(&self.pstats.unsubscribes);
            self.send_notify(id, Some(Final::Timeout));
        } else {
            self.persist_subscription(id);
            self.send_notify(id, None);
            self.watch_list(id);
        }
    }

    fn answer_subscribe(&mut self, origin: ConnId, msg: &Message, presentity: &str, granted: u32) {
        let expires = granted.to_string();
        let contact = self.presence_contact(presentity);
        let mut extra: Vec<(HeaderName, &[u8])> =
            vec![(HeaderName::Expires, expires.as_bytes()), (HeaderName::Contact, contact.as_bytes())];
        // RFC 3261 §12.1.1: the UAS copies Record-Route into its 2xx (the edge rewrites it toward the user).
        for rr in msg.header_lines(HeaderName::RecordRoute) {
            extra.push((HeaderName::RecordRoute, rr));
        }
        self.reply(origin, msg, 200, "OK", &extra);
    }

    /// Our Contact in presence dialogs: the presentity's AOR, so in-dialog requests reach its core.
    pub(crate) fn presence_contact(&self, presentity: &str) -> String {
        format!("<sip:{presentity};transport=tls>")
    }
}
