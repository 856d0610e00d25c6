//! NOTIFY (RFC 6665 §4.2.2, RFC 3856 §6.6): what a watcher is told and how it reaches it. The presentity's
//! document is built once per change and sent to every watcher of it; each NOTIFY follows the dialog's route
//! set to the edge holding the watcher's flow. Also: the answers to our NOTIFYs (a failed one ends the
//! subscription) and the periodic sweep (expired publications, subscriptions and registrations).
//!
//! The document: the publications (one as received, several composed) while the presentity has a live
//! binding; closed when it has none or published nothing (or unpublished: clients then show offline). A
//! blocked watcher always gets the closed document; a pending one no body.

use bytes::{Bytes, BytesMut};

use super::pidf;
use super::policy::Watch;
use super::subscriptions::{Package, SubState};
use super::{winfo, PIDF};
use crate::net::conn::bump;
use crate::pool::{Action, PoolCore};
use crate::sip::{self, HeaderName, Message};

const BRANCH_PREFIX: &[u8] = b"z9hG4bKn";

/// Why a subscription ends (the `reason` of `Subscription-State: terminated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    /// Expired, or the watcher unsubscribed (RFC 6665 §4.2.2: "timeout").
    Timeout,
    /// The presentity is gone, or this pool is shutting down.
    Noresource,
    /// The presentity refused the watcher.
    Rejected,
}

impl Final {
    fn as_str(self) -> &'static str {
        match self {
            Final::Timeout => "timeout",
            Final::Noresource => "noresource",
            Final::Rejected => "rejected",
        }
    }
}

fn write_branch(out: &mut Vec<u8>, core: usize, id: u32, cseq: u32) {
    out.extend_from_slice(BRANCH_PREFIX);
    out.extend_from_slice(format!("{:04x}{:08x}{:08x}", core as u16, id, cseq).as_bytes());
}

/// (core, subscription id) of a NOTIFY branch of ours.
pub fn parse_branch(b: &[u8]) -> Option<(usize, u32)> {
    let rest = std::str::from_utf8(b.strip_prefix(BRANCH_PREFIX)?).ok()?;
    let core = u16::from_str_radix(rest.get(0..4)?, 16).ok()?;
    let id = u32::from_str_radix(rest.get(4..12)?, 16).ok()?;
    Some((usize::from(core), id))
}

pub fn is_notify_branch(b: &[u8]) -> bool {
    b.starts_with(BRANCH_PREFIX)
}

impl PoolCore {
    /// The document watchers allowed to see `presentity` get now.
    pub(crate) fn presence_document(&self, presentity: &str, entity: &str) -> (String, Bytes) {
        let registered = self.registrar.is_registered(presentity, self.now.secs);
        if !registered {
            return (PIDF.to_string(), Bytes::from(pidf::closed(entity)));
        }
        match self.presence.pubs.document(presentity, entity) {
            Some(d) => d,
            None => (PIDF.to_string(), Bytes::from(pidf::closed(entity))),
        }
    }

    /// The composed state of `presentity` changed: tell every watcher (one document, built once).
    pub(crate) fn presence_changed(&mut self, presentity: &str) {
        self.remote_changed(presentity);
        let ids = self.presence.subs.watchers_of(presentity);
        if ids.is_empty() {
            return;
        }
        let entity = format!("sip:{presentity}");
        let doc = self.presence_document(presentity, &entity);
        let closed = Bytes::from(pidf::closed(&entity));
        for id in ids {
            self.notify_with(id, None, Some((&doc, &closed)));
        }
    }

    /// One NOTIFY in one subscription, with the current state; `fin` ends the subscription.
    pub(crate) fn send_notify(&mut self, id: u32, fin: Option<Final>) {
        let Some((presentity, package)) = self.presence.subs.get(id).map(|s| (s.presentity.clone(), s.package)) else {
            return;
        };
        if package == Package::Winfo {
            self.notify_with(id, fin, None);
            return;
        }
        let entity = format!("sip:{presentity}");
        let doc = self.presence_document(&presentity, &entity);
        let closed = Bytes::from(pidf::closed(&entity));
        self.notify_with(id, fin, Some((&doc, &closed)));
    }

    /// Builds and sends the NOTIFY; `docs` = (allowed watchers' document, closed document) for presence.
    fn notify_with(&mut self, id: u32, fin: Option<Final>, docs: Option<(&(String, Bytes), &Bytes)>) {
        let now = self.now.secs;
        let Some(cseq) = self.presence.subs.next_cseq(id) else { return };
        let p = &mut self.presence;
        if p.subs.get(id).is_some_and(|s| cseq.wrapping_sub(s.saved_cseq) >= crate::pool::persist::CSEQ_SAVE_EVERY) {
            p.dirty.insert(id);
        }
        let p = &self.presence;
        let Some(s) = p.subs.get(id) else { return };
        let package = s.package;
        let watch = match (package, s.state) {
            _ if s.list.is_some() => Watch::Allow,
            (Package::Winfo, _) => Watch::Allow,
            (Package::Presence, SubState::Pending) => Watch::Pending,
            (Package::Presence, SubState::Active) => p.policy.watch(&s.presentity, &s.watcher),
        };
        let left = s.expires_at.saturating_sub(now);
        let state = match (fin, s.state) {
            (Some(f), _) => format!("terminated;reason={}", f.as_str()),
            (None, SubState::Pending) => format!("pending;expires={left}"),
            (None, SubState::Active) => format!("active;expires={left}"),
        };
        let winfo_body;
        let list_body;
        let body: Option<(&[u8], &[u8])> = match (package, watch, docs) {
            _ if s.list.is_some() => {
                list_body = s.list.as_ref().map(|l| super::rls::body(l, &s.call_id));
                list_body.as_ref().map(|(ct, b)| (ct.as_bytes(), &b[..]))
            }
            (Package::Winfo, _, _) => {
                let watchers: Vec<(u32, String, Watch)> = p
                    .subs
                    .presence_subs_of(&s.presentity)
                    .into_iter()
                    .map(|w| {
                        let decision = if w.state == SubState::Pending {
                            Watch::Pending
                        } else {
                            p.policy.watch(&w.presentity, &w.watcher)
                        };
                        (w.id, format!("sip:{}", w.watcher), decision)
                    })
                    .collect();
                let entries: Vec<winfo::Entry<'_>> = watchers
                    .iter()
                    .map(|(id, uri, decision)| winfo::Entry { id: *id, uri, decision: *decision })
                    .collect();
                winfo_body = winfo::document(&s.entity, s.winfo_version, &entries);
                Some((winfo::WINFO.as_bytes(), winfo_body.as_bytes()))
            }
            (_, Watch::Pending, _) | (_, _, None) => None,
            (_, Watch::Allow, Some(((ct, doc), _))) => Some((ct.as_bytes(), &doc[..])),
            (_, Watch::Block, Some((_, closed))) => Some((PIDF.as_bytes(), &closed[..])),
        };
        let Some(edge) = s.route_set.first().and_then(|r| self.edge_for(r)) else {
            self.drop_subscription(id);
            return;
        };
        let mut via = Vec::with_capacity(96);
        via.extend_from_slice(b"SIP/2.0/TLS ");
        via.extend_from_slice(self.s.listen.to_string().as_bytes());
        via.extend_from_slice(b";branch=");
        write_branch(&mut via, self.id, id, cseq);
        let route = s.route_set.join(", ");
        let from = format!("<{}>;tag={}", s.entity, s.local_tag);
        let cseq_v = format!("{cseq} NOTIFY");
        let event = match &s.event_id {
            Some(i) => format!("{};id={i}", package.as_str()),
            None => package.as_str().to_string(),
        };
        let contact = self.presence_contact(&s.presentity);
        let headers: [(HeaderName, &[u8]); 10] = [
            (HeaderName::Via, &via),
            (HeaderName::Route, route.as_bytes()),
            (HeaderName::MaxForwards, b"70"),
            (HeaderName::From, from.as_bytes()),
            (HeaderName::To, s.remote_uri.as_bytes()),
            (HeaderName::CallId, s.call_id.as_bytes()),
            (HeaderName::CSeq, cseq_v.as_bytes()),
            (HeaderName::Contact, contact.as_bytes()),
            (HeaderName::Event, event.as_bytes()),
            (HeaderName::SubscriptionState, state.as_bytes()),
        ];
        let mut out = BytesMut::with_capacity(512 + body.map_or(0, |(_, b)| b.len()));
        sip::write_request(&mut out, "NOTIFY", s.remote_target.as_bytes(), &headers, body);
        if let Some(s) = self.presence.subs.get_mut(id) {
            if package == Package::Winfo {
                s.winfo_version = s.winfo_version.wrapping_add(1);
            }
            if let Some(l) = s.list.as_mut() {
                l.version = l.version.wrapping_add(1);
            }
        }
        bump(&self.pstats.notifies_sent);
        self.push(Action::ToEdge { addr: edge, bytes: out.freeze() });
        if fin.is_some() {
            self.drop_subscription(id);
        }
    }

    /// Removes a subscription; the presentity's watcher-information subscribers hear about a presence one.
    pub(crate) fn drop_subscription(&mut self, id: u32) {
        self.presence.dirty.remove(&id);
        let gone = self.presence.subs.remove(id);
        let Some(s) = gone else { return };
        self.forget_subscription(&s);
        if let Some(list) = &s.list {
            for r in &list.resources {
                self.remote_unwatch(r.aor.clone(), id);
            }
            return;
        }
        if s.package == Package::Presence {
            self.watchers_changed(&s.presentity);
        }
    }

    /// The watcher list of `presentity` changed: tell its watcher-information subscribers.
    pub(crate) fn watchers_changed(&mut self, presentity: &str) {
        let ids = self.presence.subs.of_package(presentity, Package::Winfo);
        for id in ids {
            self.notify_with(id, None, None);
        }
    }

    /// A response to one of our NOTIFYs. A failure ends the subscription (RFC 6665 §4.2.2); the watcher will
    /// subscribe again if it still cares.
    pub(crate) fn notify_response(&mut self, msg: &Message) {
        let Some(status) = msg.status() else { return };
        if status < 200 {
            return;
        }
        let Some((core, id)) = msg.top_via().and_then(|v| v.branch()).and_then(parse_branch) else { return };
        if core != self.id {
            bump(&self.pstats.responses_unmatched);
            return;
        }
        if status >= 300 {
            bump(&self.pstats.notifies_failed);
            tracing::debug!(status, id, "NOTIFY failed: subscription removed");
            self.drop_subscription(id);
        }
    }

    /// After a REGISTER or an expiry: a presentity that went from no binding to some (or back) changes state.
    pub(crate) fn presence_registration(&mut self, presentity: &str) {
        let now_registered = self.registrar.is_registered(presentity, self.now.secs);
        let changed = {
            let p = &mut self.presence;
            if p.subs.watchers_of(presentity).is_empty() && !p.remote.contains_key(presentity) {
                p.registered.remove(presentity);
                return;
            }
            p.registered.insert(presentity.to_string(), now_registered) != Some(now_registered)
        };
        if changed {
            self.presence_changed(presentity);
        }
    }

    /// Periodic: expired publications and subscriptions, registrations that lapsed.
    pub(crate) fn presence_sweep(&mut self) {
        let now = self.now.secs;
        self.expire_remote(now);
        self.expire_backends(now);
        let changed = self.presence.pubs.expire(now);
        for aor in changed {
            self.presence_changed(&aor);
        }
        let due = self.presence.subs.due(now);
        for id in due {
            bump(&self.pstats.subscriptions_expired);
            self.send_notify(id, Some(Final::Timeout));
        }
        let watched: Vec<String> = {
            let p = &self.presence;
            let mut v: Vec<String> = p.registered.keys().cloned().collect();
            v.retain(|a| !p.subs.watchers_of(a).is_empty() || p.remote.contains_key(a));
            v
        };
        for aor in watched {
            self.presence_registration(&aor);
        }
        let p = &self.presence;
        self.pstats.publications_now.set(p.pubs.len() as u64);
        self.pstats.subscriptions_now.set(p.subs.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_round_trip_and_not_a_proxy_branch() {
        let mut b = Vec::new();
        write_branch(&mut b, 2, 0xfeed_beef, 7);
        assert_eq!(parse_branch(&b), Some((2, 0xfeed_beef)));
        assert!(is_notify_branch(&b));
        assert!(!is_notify_branch(b"z9hG4bKp0001"));
        assert_eq!(parse_branch(b"z9hG4bKnzz"), None);
    }
}
