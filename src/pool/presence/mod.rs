//! Presence in the pool (RFC 3856 on RFC 6665, RFC 3903 publication, RFC 3863 PIDF, RFC 4480 RPID): the
//! state of the presentities a core owns, and how the core answers PUBLISH and SUBSCRIBE and sends NOTIFY.
//!
//! Lives on the core owning the presentity's AOR (the same core as its bindings, so registration state is at
//! hand without the mesh): its publications, its watchers' subscriptions, and its owner's authorization
//! entries. A request arrives here after the sender's core authenticated it (`Stage::Route`).
//!
//! Files: `xml` (bounded reader), `pidf` (summaries, composition, closed documents), `publications` (ETags,
//! expiry), `subscriptions` (dialogs, caps), `policy` (allow/block), `publish` and `subscribe` (the SIP side),
//! `notify` (building and sending NOTIFY, fan-out, responses, the sweep), `authz` (allow/block changes applied
//! to live subscriptions), `winfo` (watcher information documents), `rls` (contact-list subscriptions, RFC
//! 4662) and `remote` (watching presentities of other cores through the mesh).

pub mod authz;
pub mod backend;
pub mod notify;
pub mod pidf;
pub mod policy;
pub mod publications;
pub mod publish;
pub mod remote;
pub mod rls;
pub mod subscribe;
pub mod subscriptions;
pub mod winfo;
pub mod xml;

use std::collections::{HashMap, HashSet};

use crate::sip::{HeaderName, Message};
use policy::{Defaults, Policy, Rule};
use publications::{PubLimits, Publications};
use subscriptions::{SubLimits, Subscriptions};

/// Event packages this pool serves.
pub const ALLOW_EVENTS: &[u8] = b"presence, presence.winfo";
pub const PIDF: &str = "application/pidf+xml";

/// Read-only presence settings shared by every core.
#[derive(Debug, Clone, Default)]
pub struct PresenceSettings {
    pub publications: PubLimits,
    pub subscriptions: SubLimits,
    pub defaults: Defaults,
    /// Authorization entries loaded from the store at start: (owner AOR key, entry).
    pub rules: Vec<(String, Rule)>,
}

/// One core's presence state.
pub struct Presence {
    pub pubs: Publications,
    pub subs: Subscriptions,
    pub policy: Policy,
    /// Registration state last seen for each watched presentity, to notice a last binding going away.
    pub(crate) registered: HashMap<String, bool>,
    /// Subscriptions whose NOTIFY CSeq moved far since they were last saved (flushed by the sweep).
    pub(crate) dirty: HashSet<u32>,
    /// Resource-list subscriptions of other cores (or this one) watching presentities of this core.
    pub(crate) remote: HashMap<String, Vec<remote::RemoteWatch>>,
    /// This core's list subscriptions' SUBSCRIBEs to contacts in other organizations.
    pub(crate) backends: backend::Backends,
}

impl Presence {
    pub fn new(s: &PresenceSettings, core: usize, count: usize, salt: u32) -> Presence {
        let mut policy = Policy::new(s.defaults);
        for (owner, rule) in &s.rules {
            if crate::shard::shard_for(owner.as_bytes(), count) == core {
                policy.set(owner, rule.clone());
            }
        }
        Presence {
            pubs: Publications::new(s.publications, core, salt),
            subs: Subscriptions::new(s.subscriptions),
            policy,
            registered: HashMap::new(),
            dirty: HashSet::new(),
            remote: HashMap::new(),
            backends: backend::Backends::default(),
        }
    }
}

/// Presence bounds and defaults from `[pool.presence]`, the allow/block entries from the store (read here, at
/// start, before any executor runs), and the store thread for later writes.
pub fn settings_from_config(
    p: &crate::config::PoolConfig,
    store_cfg: Option<&crate::config::store::StoreConfig>,
) -> Result<(PresenceSettings, crate::store::thread::StoreHandle), String> {
    use crate::store::thread::{Op, Reply, StoreHandle};
    use policy::{Decision, Defaults, PresenceDefault};
    let c = &p.presence;
    let db = crate::store::open(store_cfg, &p.database).map_err(|e| e.to_string())?;
    let store = StoreHandle::start(db).map_err(|e| e.to_string())?;
    let Reply::Policies(rows) = store.call_blocking(Op::Policies).map_err(|e| e.to_string())? else {
        return Err("store: unexpected answer to a policy load".into());
    };
    let rules = policy::rules_from_rows(&rows);
    let where_ = crate::store::describe(store_cfg, &p.database);
    tracing::info!(entries = rules.len(), store = %where_, "pool store opened");
    let settings = PresenceSettings {
        publications: publications::PubLimits {
            min_expires: c.publish_min_expires_s,
            max_expires: c.publish_max_expires_s,
            default_expires: c.publish_default_expires_s,
            per_presentity_max: c.publications_per_presentity_max,
            ..Default::default()
        },
        subscriptions: subscriptions::SubLimits {
            min_expires: c.subscribe_min_expires_s,
            max_expires: c.subscribe_max_expires_s,
            default_expires: c.subscribe_default_expires_s,
            per_watcher_max: c.subscriptions_per_user_max,
            per_presentity_max: c.watchers_per_presentity_max,
            ..Default::default()
        },
        defaults: Defaults {
            presence: PresenceDefault::parse(&c.default_policy).unwrap_or(PresenceDefault::Allow),
            im: Decision::parse(&c.im_default_policy).unwrap_or(Decision::Allow),
        },
        rules,
    };
    Ok((settings, store))
}

/// The `Event` header's package (lower-cased) and its `id` parameter.
pub fn event_of(msg: &Message) -> Option<(String, Option<String>)> {
    let v = msg.header(HeaderName::Event)?;
    let v = std::str::from_utf8(v).ok()?;
    let mut parts = v.split(';');
    let package = parts.next()?.trim().to_ascii_lowercase();
    let id = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("id"))
        .map(|(_, v)| v.trim().to_string());
    Some((package, id))
}

/// Whether an `Accept` header (absent: RFC 3856 §6.7 default) allows PIDF.
pub fn accepts_pidf(msg: &Message) -> bool {
    accepts(msg, PIDF)
}

/// Whether an `Accept` header allows `media` (absent: the package's default, which is `media`).
pub fn accepts(msg: &Message, media: &str) -> bool {
    let mut any = false;
    for v in msg.values(HeaderName::Accept) {
        any = true;
        let t = std::str::from_utf8(v).unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if t == media || t == "*/*" || t == "application/*" {
            return true;
        }
    }
    // `Accept:` present but empty means "no body", which a presence subscription cannot do without.
    !any && msg.header(HeaderName::Accept).is_none()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sip::Limits;

    fn msg(extra: &str) -> Message {
        let raw = format!(
            "SUBSCRIBE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\n\
             To: <sip:bob@x>\r\nCall-ID: c\r\nCSeq: 1 SUBSCRIBE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse(bytes::Bytes::from(raw), &Limits::default()).unwrap()
    }

    #[test]
    fn event_and_accept() {
        assert_eq!(event_of(&msg("Event: Presence ; id=7\r\n")), Some(("presence".into(), Some("7".into()))));
        assert_eq!(event_of(&msg("o: dialog\r\n")), Some(("dialog".into(), None)));
        assert_eq!(event_of(&msg("")), None);
        assert!(accepts_pidf(&msg("")));
        assert!(accepts_pidf(&msg("Accept: application/pidf+xml, application/xpidf+xml\r\n")));
        assert!(accepts_pidf(&msg("Accept: text/plain\r\nAccept: */*\r\n")));
        assert!(!accepts_pidf(&msg("Accept: application/xpidf+xml\r\n")));
    }
}
