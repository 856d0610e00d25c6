//! Resource lists (RFC 4662 event notification for resource lists, RFC 4826 naming aside): one SUBSCRIBE to a
//! user's server-stored contact list (`sip:<alias>+contacts@<domain>`, with `Supported: eventlist`) gives the
//! presence of every contact in one dialog, as multipart/related NOTIFYs whose first part is an RLMI document
//! (`application/rlmi+xml`) and the others the contacts' PIDF documents. Every NOTIFY carries full state.
//!
//! The list subscription lives on the core owning the list URI; it watches each contact through the mesh
//! (`remote.rs`): the contact's core authorizes the list owner as it would any watcher and sends the contact's
//! document (or a closed one, for a blocked owner) now and at every change. A contact in another organization is
//! watched by a SUBSCRIBE of our own through the federation (`backend.rs`). NOTIFYs are coalesced: changes that
//! arrive within [`COALESCE`] go out in one.
//!
//! A list subscription is soft state like any other (`crate::pool::persist`): its dialog, its resources (URIs and
//! names, not their states) and its RLMI version are written behind, and it is handed over with the list's AOR
//! (`alice+contacts@domain`, the key the edge routes and the pool shards it by). The member that gains it watches
//! every contact again and, once their states are in (or after [`RESTORED_GATHER`]), sends the subscriber a
//! full-state NOTIFY in the same dialog, its CSeq and version above anything sent before.

use std::time::Duration;

use bytes::Bytes;

use super::subscriptions::{Package, SubState, Subscription};
use super::{event_of, xml};
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::pool::{aor_of, Action, PoolCore, Resume, Timer};
use crate::sip::{HeaderName, Message};
use crate::store::thread::Op;
use crate::store::ContactRow;

pub const RLMI: &str = "application/rlmi+xml";
pub const RLMI_NS: &str = "urn:ietf:params:xml:ns:rlmi";
/// The user part suffix naming a user's contact list.
pub use crate::proto::LIST_SUFFIX;
/// Contact-state changes within this window share one NOTIFY.
pub const COALESCE: Duration = Duration::from_millis(50);
/// Contacts one list subscription watches at most.
pub const RESOURCES_MAX: usize = 500;
/// A restored list waits this long at most for its contacts' states before its first NOTIFY (it goes out at
/// once when every contact answered): one NOTIFY with the states, not one showing every contact pending.
pub const RESTORED_GATHER: Duration = Duration::from_millis(1_000);

#[derive(Debug, Clone)]
pub struct Resource {
    /// `sip:bob@example.com`
    pub uri: String,
    /// AOR key (`bob@example.com`).
    pub aor: String,
    pub name: String,
    /// The contact's document as the owner may see it; None until known, or while the owner is pending.
    pub state: Option<(String, Bytes)>,
}

#[derive(Debug, Clone)]
pub struct ListState {
    pub uri: String,
    pub resources: Vec<Resource>,
    pub version: u32,
    /// A coalesced NOTIFY is already on its way.
    pub flush_scheduled: bool,
    /// Restored and waiting for its contacts' states: the NOTIFY goes once every one is known.
    pub gathering: bool,
}

impl ListState {
    /// A list of these resources (states unknown), its next NOTIFY of this version.
    pub fn new(uri: String, resources: Vec<Resource>, version: u32) -> ListState {
        ListState { uri, resources, version, flush_scheduled: false, gathering: false }
    }
}

/// The owner's alias when `user` names a contact list (`alice+contacts` -> `alice`).
pub fn list_owner(user: &[u8]) -> Option<&str> {
    std::str::from_utf8(user).ok()?.strip_suffix(LIST_SUFFIX).filter(|a| !a.is_empty())
}

/// Whether a header lists the `eventlist` option tag.
fn has_eventlist(msg: &Message, h: HeaderName) -> bool {
    msg.values(h).any(|v| v.trim_ascii().eq_ignore_ascii_case(b"eventlist"))
}

/// The multipart/related body of a full-state NOTIFY: (Content-Type value, body).
pub fn body(list: &ListState, call_id: &str) -> (String, Vec<u8>) {
    let boundary = format!("rlmi-{:08x}", list.version ^ 0x5a5a_5a5a);
    let cid = |i: usize| format!("r{i}.{}@rls", short_hash(call_id));
    let mut rlmi = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<list xmlns=\"{RLMI_NS}\" uri=\"{}\" version=\"{}\" fullState=\"true\">\n",
        xml::escape(&list.uri),
        list.version
    );
    for (i, r) in list.resources.iter().enumerate() {
        rlmi.push_str(&format!("<resource uri=\"{}\">", xml::escape(&r.uri)));
        if !r.name.is_empty() {
            rlmi.push_str(&format!("<name>{}</name>", xml::escape(&r.name)));
        }
        match &r.state {
            Some(_) => rlmi.push_str(&format!("<instance id=\"i{i}\" state=\"active\" cid=\"{}\"/>", cid(i))),
            None => rlmi.push_str(&format!("<instance id=\"i{i}\" state=\"pending\"/>")),
        }
        rlmi.push_str("</resource>\n");
    }
    rlmi.push_str("</list>\n");
    let start = format!("list.{}@rls", short_hash(call_id));
    let mut out = Vec::with_capacity(rlmi.len() + 512 * list.resources.len());
    let mut part = |id: &str, ct: &str, content: &[u8]| {
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <{id}>\r\nContent-Type: {ct}\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
    };
    part(&start, "application/rlmi+xml;charset=\"UTF-8\"", rlmi.as_bytes());
    for (i, r) in list.resources.iter().enumerate() {
        if let Some((ct, doc)) = &r.state {
            part(&cid(i), ct, doc);
        }
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/related;type=\"{RLMI}\";start=\"<{start}>\";boundary=\"{boundary}\"");
    (ct, out)
}

/// A list's resources from (URI, display name) pairs, as the store or a saved subscription has them (bounded,
/// unusable URIs skipped, states unknown).
pub fn resources_of(entries: impl ExactSizeIterator<Item = (String, String)>) -> Vec<Resource> {
    if entries.len() > RESOURCES_MAX {
        crate::warn_limited!(
            contacts = entries.len(),
            max = RESOURCES_MAX,
            "contact list over its bound: the rest is not watched"
        );
    }
    entries
        .take(RESOURCES_MAX)
        .filter_map(|(uri, name)| {
            let aor = uri.trim_start_matches("sip:").to_ascii_lowercase();
            aor.contains('@').then(|| Resource { uri, aor, name, state: None })
        })
        .collect()
}

fn rows_to_resources(rows: Vec<ContactRow>) -> Vec<Resource> {
    resources_of(rows.into_iter().map(|c| (c.uri, c.display_name)))
}

fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

impl PoolCore {
    /// A new SUBSCRIBE to `sip:<owner>+contacts@domain`: only the owner may; the list comes from the store
    /// (read on the store thread while this core goes on), then 200, a first NOTIFY, and a watch per contact.
    pub(crate) fn subscribe_list(&mut self, origin: ConnId, msg: &Message, owner_alias: &str, granted: u32) {
        if !has_eventlist(msg, HeaderName::Supported) && !has_eventlist(msg, HeaderName::Require) {
            self.reply(origin, msg, 421, "Extension Required", &[(HeaderName::Require, b"eventlist")]);
            return;
        }
        let accept_all = msg.header(HeaderName::Accept).is_none();
        let accepts = |m: &str| accept_all || super::accepts(msg, m);
        if !accepts(RLMI) || !accepts("multipart/related") {
            self.reply(
                origin,
                msg,
                406,
                "Not Acceptable",
                &[(HeaderName::Accept, b"multipart/related, application/rlmi+xml, application/pidf+xml")],
            );
            return;
        }
        let Some(owner) = self.dir.view.users.get(owner_alias.as_bytes()).map(|u| u.aor.clone()) else {
            self.reply(origin, msg, 404, "Not Found", &[]);
            return;
        };
        let watcher = aor_of(&msg.from().uri);
        if watcher != owner {
            bump(&self.pstats.subscribe_refused);
            self.reply(origin, msg, 403, "Forbidden: a contact list is for its owner only", &[]);
            return;
        }
        let list_uri = msg.request_uri_parsed().map(|u| format!("sip:{}", aor_of(&u))).unwrap_or_default();
        // The list is read on the store thread while this core goes on; the reply resumes here.
        let then = Resume::ListLoad { origin, request: msg.bytes().clone(), owner: owner.clone(), list_uri, granted };
        self.push(Action::StoreCall { op: Op::Contacts { owner }, then });
    }

    pub(crate) fn list_loaded(
        &mut self,
        origin: ConnId,
        msg: &Message,
        owner: &str,
        list_uri: &str,
        rows: Vec<ContactRow>,
        granted: u32,
    ) {
        let Some((target, route_set)) = self.watcher_dialog(origin, msg) else { return };
        let list_key = list_uri.trim_start_matches("sip:").to_string();
        if !self.admit_subscription(origin, msg, owner, &list_key) {
            return;
        }
        let resources = rows_to_resources(rows);
        let expires_at = self.now.secs + u64::from(granted);
        let sub = Subscription {
            id: 0,
            package: Package::Presence,
            winfo_version: 0,
            presentity: list_key.clone(),
            entity: list_uri.to_string(),
            watcher: owner.to_string(),
            call_id: String::from_utf8_lossy(msg.call_id()).to_string(),
            remote_tag: msg.from().tag().map(|t| String::from_utf8_lossy(t).to_string()).unwrap_or_default(),
            local_tag: crate::pool::to_tag(msg),
            remote_uri: String::from_utf8_lossy(msg.header(HeaderName::From).unwrap_or(b"")).to_string(),
            remote_target: target,
            route_set,
            event_id: event_of(msg).and_then(|(_, id)| id),
            expires_at,
            local_cseq: 0,
            saved_cseq: 0,
            remote_cseq: msg.cseq().seq,
            state: SubState::Active,
            list: Some(Box::new(ListState::new(list_uri.to_string(), resources, 0))),
        };
        let id = self.presence.subs.insert(sub);
        bump(&self.pstats.subscriptions);
        bump(&self.pstats.list_subscriptions);
        let expires = granted.to_string();
        let contact = self.presence_contact(&list_key);
        let mut extra: Vec<(HeaderName, &[u8])> = vec![
            (HeaderName::Expires, expires.as_bytes()),
            (HeaderName::Contact, contact.as_bytes()),
            (HeaderName::Require, b"eventlist"),
        ];
        for rr in msg.header_lines(HeaderName::RecordRoute) {
            extra.push((HeaderName::RecordRoute, rr));
        }
        self.reply(origin, msg, 200, "OK", &extra);
        if granted == 0 {
            self.send_notify(id, Some(super::notify::Final::Timeout));
            return;
        }
        self.persist_subscription(id);
        self.send_notify(id, None);
        self.watch_list(id);
    }

    /// A list subscription restored from the store (after a restart, or gained from another member): watch its
    /// contacts again, read the list again (it may have changed meanwhile), and tell the subscriber once the
    /// states are in ([`RESTORED_GATHER`]).
    pub(crate) fn list_restored(&mut self, id: u32) {
        let Some((owner, list)) =
            self.presence.subs.get_mut(id).and_then(|s| Some((s.watcher.clone(), s.list.as_mut()?)))
        else {
            return;
        };
        list.gathering = true;
        list.flush_scheduled = true;
        self.push(Action::Timer { after: RESTORED_GATHER, timer: Timer::ListFlush(id) });
        self.push(Action::StoreCall { op: Op::Contacts { owner }, then: Resume::ListReload { id } });
        self.watch_list(id);
        self.list_gathered(id);
    }

    /// A restored list whose every contact's state is known: its NOTIFY goes now rather than at the gather timer.
    fn list_gathered(&mut self, id: u32) {
        let Some(list) = self.presence.subs.get_mut(id).and_then(|s| s.list.as_mut()) else { return };
        if !list.gathering || list.resources.iter().any(|r| r.state.is_none()) {
            return;
        }
        list.gathering = false;
        list.flush_scheduled = false;
        self.send_notify(id, None);
    }

    /// Asks every contact's core for its state, now and at each change (also after a refresh: new expiry).
    pub(crate) fn watch_list(&mut self, id: u32) {
        let watches: Vec<(String, String, u64)> = {
            let p = &self.presence;
            let Some(s) = p.subs.get(id) else { return };
            let Some(list) = &s.list else { return };
            list.resources.iter().map(|r| (r.aor.clone(), s.watcher.clone(), s.expires_at)).collect()
        };
        for (presentity, watcher, expires_at) in watches {
            self.remote_watch(presentity, watcher, id, expires_at);
        }
    }

    /// Contact lists changed in the store: every live list subscription of this core reads its list again,
    /// watches the new contacts, drops the removed ones, and tells its subscriber.
    pub(crate) fn reload_lists(&mut self) {
        let lists: Vec<(u32, String)> = self.presence.subs.lists().map(|s| (s.id, s.watcher.clone())).collect();
        for (id, owner) in lists {
            self.push(Action::StoreCall { op: Op::Contacts { owner }, then: Resume::ListReload { id } });
        }
    }

    pub(crate) fn list_reloaded(&mut self, id: u32, rows: Vec<ContactRow>) {
        let (added, removed, expires_at, watcher) = {
            let Some(s) = self.presence.subs.get_mut(id) else { return };
            let (expires_at, watcher) = (s.expires_at, s.watcher.clone());
            let Some(list) = s.list.as_mut() else { return };
            let fresh = rows_to_resources(rows);
            let old = std::mem::take(&mut list.resources);
            let removed: Vec<String> =
                old.iter().filter(|o| !fresh.iter().any(|f| f.aor == o.aor)).map(|o| o.aor.clone()).collect();
            let added: Vec<String> =
                fresh.iter().filter(|f| !old.iter().any(|o| o.aor == f.aor)).map(|f| f.aor.clone()).collect();
            list.resources = fresh
                .into_iter()
                .map(|mut f| {
                    f.state = old.iter().find(|o| o.aor == f.aor).and_then(|o| o.state.clone());
                    f
                })
                .collect();
            (added, removed, expires_at, watcher)
        };
        if added.is_empty() && removed.is_empty() {
            return;
        }
        for aor in removed {
            self.remote_unwatch(aor, id);
        }
        for aor in added {
            self.remote_watch(aor, watcher.clone(), id, expires_at);
        }
        self.persist_subscription(id);
        if self.presence.subs.get(id).and_then(|s| s.list.as_ref()).is_some_and(|l| l.gathering) {
            // A restored list still gathering: its NOTIFY comes with the states.
            self.list_gathered(id);
            return;
        }
        self.send_notify(id, None);
    }

    /// A contact's state for a list subscription of this core: store it and schedule a coalesced NOTIFY.
    pub(crate) fn list_state(&mut self, id: u32, presentity: &str, state: Option<(String, Bytes)>) {
        let Some(list) = self.presence.subs.get_mut(id).and_then(|s| s.list.as_mut()) else { return };
        for r in list.resources.iter_mut().filter(|r| r.aor == presentity) {
            r.state = state.clone();
        }
        if list.gathering {
            self.list_gathered(id);
            return;
        }
        if !std::mem::replace(&mut list.flush_scheduled, true) {
            self.push(Action::Timer { after: COALESCE, timer: Timer::ListFlush(id) });
        }
    }

    /// The coalescing window of list subscription `id` is over: one NOTIFY for the changes it gathered.
    pub(crate) fn list_flush_due(&mut self, id: u32) {
        let due = self.presence.subs.get_mut(id).and_then(|s| s.list.as_mut()).map(|l| {
            l.gathering = false;
            std::mem::replace(&mut l.flush_scheduled, false)
        });
        if due == Some(true) {
            self.send_notify(id, None);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn list_names() {
        assert_eq!(list_owner(b"alice+contacts"), Some("alice"));
        assert_eq!(list_owner(b"+contacts"), None);
        assert_eq!(list_owner(b"alice"), None);
    }

    #[test]
    fn multipart_body_has_rlmi_first_and_one_part_per_known_state() {
        let pidf = Bytes::from_static(b"<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:bob@x\"/>");
        let list = ListState::new(
            "sip:alice+contacts@x".into(),
            vec![
                Resource {
                    uri: "sip:bob@x".into(),
                    aor: "bob@x".into(),
                    name: "Bob & co".into(),
                    state: Some(("application/pidf+xml".into(), pidf)),
                },
                Resource { uri: "sip:carol@x".into(), aor: "carol@x".into(), name: String::new(), state: None },
            ],
            3,
        );
        let (ct, body) = body(&list, "call-1");
        let text = String::from_utf8(body).unwrap();
        assert!(ct.starts_with("multipart/related;type=\"application/rlmi+xml\";start=\"<list."));
        let boundary = ct.rsplit("boundary=\"").next().unwrap().trim_end_matches('"');
        let parts: Vec<&str> = text.split(&format!("--{boundary}")).collect();
        assert_eq!(parts.len(), 4, "preamble, rlmi, bob, closing: {text}");
        assert!(parts[1].contains("Content-Type: application/rlmi+xml"));
        assert!(parts[1].contains("version=\"3\" fullState=\"true\""));
        assert!(parts[1].contains("<name>Bob &amp; co</name>"));
        assert!(parts[1].contains("state=\"pending\""), "carol's state is not known yet");
        let cid = parts[1].split("cid=\"").nth(1).unwrap().split('"').next().unwrap();
        assert!(parts[2].contains(&format!("Content-ID: <{cid}>")));
        assert!(parts[2].contains("entity=\"sip:bob@x\""));
        assert_eq!(parts[3], "--\r\n");
        let rlmi = parts[1].split("\r\n\r\n").nth(1).unwrap().trim_end();
        assert!(xml::Doc::parse(rlmi.as_bytes()).is_ok(), "the RLMI part is well-formed: {rlmi}");
    }
}
