//! Back-end subscriptions (RFC 4662 §1: the list server subscribes to each resource it cannot serve itself): a
//! contact list's contact in another organization is watched by a SUBSCRIBE of our own, on the list owner's
//! behalf, sent through the edge's federation like any request for a foreign domain.
//!
//! It lives on the core of the list subscription that needs it, one per (list subscription, contact). Its
//! Contact is the list's URI (`sip:<owner>+contacts@<domain>`), so the partner's NOTIFYs reach that same core
//! (the edge hands them over as federated requests); each NOTIFY's document becomes the contact's state in the
//! list, exactly as a local contact's state arrives from its core ([`super::remote`]). The partner's server
//! authorizes the list owner as the watcher. A refresh of the list refreshes it (in its dialog once the first
//! NOTIFY told us the partner's tag and Contact); the list ending, or the contact leaving it, unsubscribes.
//! Refusals and failures leave the contact closed. Not persisted: the list subscription is, and when it is restored
//! (a restart, or its member died or drained) it starts its back-end subscriptions again; the old ones' NOTIFYs
//! get 481 there, which ends them at the contact's owner.
//!
//! In an enterprise pool the same goes for a contact of our own domain ([`Via::Member`]): another member may own
//! it, and which one changes (kill, drain). The SUBSCRIBE goes to the edge with the Route
//! `<sip:member@edge;lr>`, and the edge sends it to the contact's owner as it would a user's request; the owner
//! serves it as any watcher's subscription (authorized, persisted with the user's soft state, handed over with
//! the user), and its NOTIFYs come back through the edge to the member owning the list's URI, which is this
//! one. When the roster changes, every such subscription whose contact moved is refreshed (within its dialog: the
//! edge sends the refresh to the contact's owner now, which loaded the dialog with the user); an answer that says the dialog is
//! lost (481), or that its member died (408, 503, 480, 500), starts a new subscription at once, then after
//! [`RETRY_S`], at most [`RETRIES_MAX`] times in a row (then the contact shows closed until the list is refreshed).
//!
//! A help desk watches its members the same way ([`Watcher::Desk`]: Contact and From the desk's address, whose
//! core runs the desk; see `crate::pool::helpdesk::watch`).

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use super::{pidf, PIDF};
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::pool::{Action, PoolCore};
use crate::sip::{self, HeaderName, Message};

/// Branches of our back-end SUBSCRIBEs (the responses come back to the pool like any other).
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bKb";
/// Back-end subscriptions one core keeps at most (a list holds at most `rls::RESOURCES_MAX` contacts).
const MAX: usize = 10_000;
/// A member's subscription that failed is started again after this long (the first time at once).
pub const RETRY_S: u64 = 2;
/// Failed starts in a row of a member's subscription before the contact is left closed.
pub const RETRIES_MAX: u8 = 5;

/// How a back-end subscription reaches its contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Another organization's contact: through the edge's federation.
    Federation,
    /// A contact of our own pool (enterprise): through the edge, to the contact's owner.
    Member,
}

/// Who a back-end subscription reports to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watcher {
    /// A contact list subscription of this core.
    List(u32),
    /// A help desk (its address, owned by this core) watching a member another front end may hold
    /// (`crate::pool::helpdesk::watch`).
    Desk(String),
}

struct Backend {
    watcher: Watcher,
    /// The contact's AOR key (`bob@partner.test`).
    presentity: String,
    /// The list owner's AOR key: our From, the watcher the partner authorizes.
    owner: String,
    /// Our Contact: the list's URI, whose core is this one.
    contact: String,
    local_tag: String,
    /// From the first NOTIFY: the partner's tag and Contact, for requests within the dialog.
    remote_tag: Option<String>,
    remote_target: Option<String>,
    cseq: u32,
    expires_at: u64,
    via: Via,
    /// Failed starts in a row (a member's subscription), and when the next one is due.
    failures: u8,
    retry_at: Option<u64>,
    /// The member our roster gave the contact to when this was last sent (a member's subscription): a roster
    /// change refreshes only the subscriptions whose contact moved.
    owner_seen: Option<String>,
}

/// This core's back-end subscriptions, by Call-ID.
#[derive(Default)]
pub struct Backends {
    by_call: HashMap<String, Backend>,
    next: u64,
}

impl Backends {
    fn find(&self, watcher: &Watcher, presentity: &str) -> Option<String> {
        self.by_call.iter().find(|(_, b)| b.watcher == *watcher && b.presentity == presentity).map(|(k, _)| k.clone())
    }

    /// Whether `watcher` has a back-end subscription to `presentity` (live, or waiting for its retry).
    pub fn has(&self, watcher: &Watcher, presentity: &str) -> bool {
        self.by_call.values().any(|b| b.watcher == *watcher && b.presentity == presentity)
    }

    pub fn len(&self) -> usize {
        self.by_call.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_call.is_empty()
    }
}

/// Answers to a member's subscription that mean its dialog or its member is lost, not a refusal.
fn restartable(status: u16) -> bool {
    matches!(status, 408 | 480 | 481 | 500 | 503)
}

fn closed(presentity: &str) -> Option<(String, Bytes)> {
    Some((PIDF.to_string(), Bytes::from(pidf::closed(&format!("sip:{presentity}")))))
}

impl PoolCore {
    /// A list subscription `list` (refreshed or new) watches `presentity` of another organization until
    /// `expires_at`: subscribe, or refresh the subscription already made.
    pub(crate) fn backend_watch(&mut self, presentity: String, owner: String, list: u32, expires_at: u64, via: Via) {
        let Some(contact) = self.presence.subs.get(list).map(|s| format!("<{};transport=tls>", s.entity)) else {
            return;
        };
        self.backend_watch_for(presentity, owner, Watcher::List(list), contact, expires_at, via);
    }

    /// `watcher` watches `presentity` until `expires_at`, as `owner` (our From), NOTIFYs to `contact` (whose core
    /// must be this one): subscribe, or refresh the subscription already made.
    pub(crate) fn backend_watch_for(
        &mut self,
        presentity: String,
        owner: String,
        watcher: Watcher,
        contact: String,
        expires_at: u64,
        via: Via,
    ) {
        let (core, now, listen) = (self.id, self.now.secs, self.s.listen);
        let call_id = {
            let p = &mut self.presence;
            let existing = p.backends.find(&watcher, &presentity);
            match existing {
                Some(c) => {
                    if let Some(b) = p.backends.by_call.get_mut(&c) {
                        b.expires_at = expires_at;
                    }
                    c
                }
                None => {
                    if p.backends.by_call.len() >= MAX {
                        bump(&self.pstats.backend_refused);
                        crate::warn_limited!(
                            core,
                            max = MAX,
                            "back-end subscriptions at their bound: contact shown closed"
                        );
                        self.backend_state(&watcher, &presentity, closed(&presentity));
                        return;
                    }
                    p.backends.next += 1;
                    let call_id = format!("bes-{:x}-{:x}-{:x}@{}", core, p.backends.next, now, listen);
                    let local_tag = format!("b{:x}{:x}", core, p.backends.next);
                    let b = Backend {
                        watcher,
                        presentity: presentity.clone(),
                        owner,
                        contact,
                        local_tag,
                        remote_tag: None,
                        remote_target: None,
                        cseq: 0,
                        expires_at,
                        via,
                        failures: 0,
                        retry_at: None,
                        owner_seen: None,
                    };
                    p.backends.by_call.insert(call_id.clone(), b);
                    call_id
                }
            }
        };
        self.backend_subscribe(&call_id);
    }

    /// The list no longer watches `presentity` (it ended, or the contact left it): unsubscribe.
    pub(crate) fn backend_unwatch(&mut self, presentity: &str, watcher: &Watcher) {
        let found = self.presence.backends.find(watcher, presentity);
        let Some(call_id) = found else { return };
        if let Some(b) = self.presence.backends.by_call.get_mut(&call_id) {
            b.expires_at = 0;
        }
        self.backend_subscribe(&call_id);
        self.presence.backends.by_call.remove(&call_id);
    }

    /// Sends the back-end SUBSCRIBE `call_id` as it stands (Expires: 0 once it is ending).
    fn backend_subscribe(&mut self, call_id: &str) {
        let Some(addr) = self.s.edges.first().copied() else {
            return;
        };
        let (now, listen) = (self.now.secs, self.s.listen);
        let owner_now = match self.presence.backends.by_call.get(call_id) {
            Some(b) if b.via == Via::Member => self.own.owner_now(&b.presentity, self.now.mono),
            _ => None,
        };
        let out = {
            let Some(b) = self.presence.backends.by_call.get_mut(call_id) else { return };
            b.owner_seen = owner_now;
            b.cseq += 1;
            let expires = b.expires_at.saturating_sub(now).to_string();
            let aor_uri = format!("sip:{}", b.presentity);
            // Within the dialog once the partner's first NOTIFY told us its tag and Contact; until then a new one.
            let ruri = b.remote_target.clone().unwrap_or_else(|| aor_uri.clone());
            let to = match &b.remote_tag {
                Some(t) => format!("<{aor_uri}>;tag={t}"),
                None => format!("<{aor_uri}>"),
            };
            let from = format!("<sip:{}>;tag={}", b.owner, b.local_tag);
            let prefix = std::str::from_utf8(BRANCH_PREFIX).unwrap_or_default();
            let via = format!("SIP/2.0/TLS {};branch={prefix}{:x}x{:x}", listen, b.cseq, now);
            let route = match b.via {
                Via::Federation => format!("<sip:fed@{addr};lr>"),
                Via::Member => format!(
                    "<sip:{}@{addr};lr>",
                    std::str::from_utf8(crate::proto::MEMBER_ROUTE_USER).unwrap_or("member")
                ),
            };
            let cseq = format!("{} SUBSCRIBE", b.cseq);
            let headers: [(HeaderName, &[u8]); 11] = [
                (HeaderName::Via, via.as_bytes()),
                (HeaderName::Route, route.as_bytes()),
                (HeaderName::MaxForwards, b"70"),
                (HeaderName::From, from.as_bytes()),
                (HeaderName::To, to.as_bytes()),
                (HeaderName::CallId, call_id.as_bytes()),
                (HeaderName::CSeq, cseq.as_bytes()),
                (HeaderName::Contact, b.contact.as_bytes()),
                (HeaderName::Event, b"presence"),
                (HeaderName::Accept, PIDF.as_bytes()),
                (HeaderName::Expires, expires.as_bytes()),
            ];
            let mut out = BytesMut::with_capacity(768);
            sip::write_request(&mut out, "SUBSCRIBE", ruri.as_bytes(), &headers, None);
            out.freeze()
        };
        bump(&self.pstats.backend_subscribes);
        self.push(Action::ToEdge { addr, bytes: out });
    }

    /// A NOTIFY from a partner (handed over by the edge as federated) for one of our back-end subscriptions.
    pub(crate) fn backend_notify(&mut self, origin: ConnId, msg: &Message) {
        let call_id = String::from_utf8_lossy(msg.call_id()).to_string();
        // Only the contact itself speaks in its dialog: the edge vouched for the From domain, and the presentity
        // and our tag must match too (a Call-ID alone could be guessed by another partner).
        let from = crate::pool::aor_of(&msg.from().uri);
        let to_tag = msg.to().tag().map(|t| String::from_utf8_lossy(t).to_string());
        let found = {
            let b = self.presence.backends.by_call.get_mut(&call_id);
            match b.filter(|b| b.presentity == from && to_tag.as_deref() == Some(b.local_tag.as_str())) {
                Some(b) => {
                    if b.remote_tag.is_none() {
                        b.remote_tag = msg.from().tag().map(|t| String::from_utf8_lossy(t).to_string());
                    }
                    if let Some(Ok(sip::Contact::Addr(na))) = msg.contacts().next() {
                        b.remote_target = Some(String::from_utf8_lossy(na.uri_raw).to_string());
                    }
                    Some((b.watcher.clone(), b.presentity.clone()))
                }
                None => None,
            }
        };
        let Some((watcher, presentity)) = found else {
            self.reply(origin, msg, 481, "Subscription Does Not Exist", &[]);
            return;
        };
        bump(&self.pstats.backend_notifies);
        let terminated = msg
            .header(HeaderName::SubscriptionState)
            .is_some_and(|v| v.trim_ascii().get(..10).is_some_and(|s| s.eq_ignore_ascii_case(b"terminated")));
        let is_pidf = msg.header(HeaderName::ContentType).is_some_and(|ct| {
            ct.split(|b| *b == b';').next().is_some_and(|m| m.trim_ascii().eq_ignore_ascii_case(PIDF.as_bytes()))
        });
        let state = if terminated {
            self.presence.backends.by_call.remove(&call_id);
            closed(&presentity)
        } else if is_pidf && !msg.body().is_empty() {
            Some((PIDF.to_string(), Bytes::copy_from_slice(msg.body())))
        } else {
            // Pending at the partner (no document yet).
            None
        };
        self.reply(origin, msg, 200, "OK", &[]);
        self.backend_state(&watcher, &presentity, state);
    }

    /// A watched contact's state (None: pending, no document yet) goes to whoever watches it.
    fn backend_state(&mut self, watcher: &Watcher, presentity: &str, state: Option<(String, Bytes)>) {
        match watcher {
            Watcher::List(id) => self.list_state(*id, presentity, state),
            Watcher::Desk(desk) => self.helpdesk_member_notified(desk, presentity, state.as_ref().map(|(_, b)| b)),
        }
    }

    /// The final answer to one of our back-end SUBSCRIBEs: a refusal leaves the contact closed; a member's
    /// subscription whose dialog or member is lost starts again (see the module).
    pub(crate) fn backend_response(&mut self, msg: &Message) {
        let status = msg.status().unwrap_or(0);
        let call_id = String::from_utf8_lossy(msg.call_id()).to_string();
        if status < 300 {
            let granted = msg
                .header(HeaderName::Expires)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let desk = self.presence.backends.by_call.get_mut(&call_id).and_then(|b| {
                b.failures = 0;
                match (&b.watcher, granted) {
                    (Watcher::Desk(d), Some(g)) => Some((d.clone(), b.presentity.clone(), g)),
                    _ => None,
                }
            });
            // A list is refreshed by its own subscriber; a desk refreshes its watches itself, within what the
            // member's owner granted.
            if let Some((desk, member, granted)) = desk {
                self.helpdesk_watch_granted(&desk, &member, granted);
            }
            return;
        }
        let now = self.now.secs;
        let restart = self.presence.backends.by_call.get(&call_id).is_some_and(|b| {
            b.via == Via::Member && b.expires_at > now && b.failures < RETRIES_MAX && restartable(status)
        });
        if restart {
            self.backend_restart(&call_id);
            return;
        }
        let gone = self.presence.backends.by_call.remove(&call_id);
        if let Some(b) = gone {
            bump(&self.pstats.backend_refused);
            tracing::info!(presentity = %b.presentity, status, "back-end subscription refused: contact shown closed");
            self.backend_state(&b.watcher, &b.presentity, closed(&b.presentity));
        }
    }

    /// A member's subscription starts again as a new dialog: at once the first time, then after [`RETRY_S`].
    fn backend_restart(&mut self, call_id: &str) {
        let now = self.now.secs;
        let Some(mut b) = self.presence.backends.by_call.remove(call_id) else { return };
        let p = &mut self.presence.backends;
        p.next += 1;
        let fresh = format!("bes-{:x}-{:x}-{:x}@{}", self.id, p.next, now, self.s.listen);
        b.local_tag = format!("b{:x}{:x}", self.id, p.next);
        (b.remote_tag, b.remote_target, b.cseq) = (None, None, 0);
        b.failures += 1;
        let at_once = b.failures == 1;
        b.retry_at = (!at_once).then_some(now + RETRY_S);
        p.by_call.insert(fresh.clone(), b);
        bump(&self.pstats.backend_restarts);
        if at_once {
            self.backend_subscribe(&fresh);
        }
    }

    /// The roster changed: each member's subscription whose contact moved is refreshed, so that it reaches the
    /// contact's owner now (which answers from the dialog it loaded with the user, or 481: then it starts again).
    pub(crate) fn backend_follow_owners(&mut self) {
        let (now, mono) = (self.now.secs, self.now.mono);
        let own = &self.own;
        let live: Vec<String> = self
            .presence
            .backends
            .by_call
            .iter()
            .filter(|(_, b)| b.via == Via::Member && b.expires_at > now && b.retry_at.is_none())
            .filter(|(_, b)| own.owner_now(&b.presentity, mono) != b.owner_seen)
            .map(|(c, _)| c.clone())
            .collect();
        for call_id in live {
            self.backend_subscribe(&call_id);
        }
    }

    /// Sweep: back-end subscriptions whose list stopped refreshing.
    pub(crate) fn expire_backends(&mut self, now: u64) {
        self.presence.backends.by_call.retain(|_, b| b.expires_at > now);
        let due: Vec<String> = self
            .presence
            .backends
            .by_call
            .iter_mut()
            .filter(|(_, b)| b.retry_at.is_some_and(|t| t <= now))
            .map(|(c, b)| {
                b.retry_at = None;
                c.clone()
            })
            .collect();
        for call_id in due {
            self.backend_subscribe(&call_id);
        }
    }
}
