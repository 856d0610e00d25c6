//! The pool's soft state in the store, so a restarted pool comes back with its registrations, publications and
//! subscriptions (contact-list ones too, with their resources and RLMI version: `presence::rls`), and watchers
//! get the current state again without doing anything.
//!
//! Write-behind, and why: REGISTER, PUBLISH and SUBSCRIBE are answered at once and their new state is queued to
//! the store thread, which gathers them for up to `store::thread::BATCH_WINDOW` (50 ms) and commits them in one
//! transaction, the last write per row only; a subscription is saved again after every [`CSEQ_SAVE_EVERY`] NOTIFYs (flushed by the sweep)
//! and a restored dialog's CSeq skips ahead by [`CSEQ_SKIP`], so it stays above anything sent before a crash. A crash can lose the changes of the last
//! moments only, and every one of them is soft state its client refreshes on its own (REGISTER and SUBSCRIBE
//! within their expiry, PUBLISH likewise), so the worst case is a state as old as one refresh interval. Making
//! each answer wait for an fsync would cost a disk round trip per request on the hottest path for no gain a
//! client could see. Allow/block entries and contact lists, which are not soft, are written synchronously.
//!
//! Registrations and publications are marked on the pool core and written out every [`WRITE_BEHIND`] (the last
//! state of each AOR), so a burst of REGISTERs costs one wake-up of the store thread, not one per request.
//!
//! Encoding: JSON of the small structs below (the store treats values as opaque bytes); rows written as TOML by
//! earlier versions are still read.

use std::collections::HashSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::presence::pidf;
use super::presence::publications::Publication;
use super::presence::rls::{self, ListState};
use super::presence::subscriptions::{Package, SubState, Subscription};
use super::registrar::Binding;
use super::{Action, PoolCore};
use crate::net::conn::bump;
use crate::shard::shard_for;
use crate::store::{StateRow, StateWrite};

/// A subscription is saved again when its NOTIFY CSeq moved this far since it was last saved (so the store
/// sees one write per this many NOTIFYs, not one per NOTIFY) ...
pub const CSEQ_SAVE_EVERY: u32 = 1_000;
/// ... and a restored dialog's CSeq jumps ahead by more than that, staying above anything sent before the crash.
pub const CSEQ_SKIP: u32 = 2 * CSEQ_SAVE_EVERY;

#[derive(Serialize, Deserialize)]
struct SavedBinding {
    contact: String,
    contact_params: String,
    instance: Option<String>,
    reg_id: Option<u32>,
    q: Option<String>,
    path: Vec<String>,
    call_id: String,
    cseq: u32,
    expires_at: u64,
}

#[derive(Serialize, Deserialize)]
struct SavedBindings {
    b: Vec<SavedBinding>,
}

#[derive(Serialize, Deserialize)]
struct SavedPublication {
    etag: String,
    body: String,
    content_type: String,
    expires_at: u64,
    changed: u64,
}

#[derive(Serialize, Deserialize)]
struct SavedPublications {
    p: Vec<SavedPublication>,
}

#[derive(Serialize, Deserialize)]
struct SavedSubscription {
    package: String,
    presentity: String,
    entity: String,
    watcher: String,
    call_id: String,
    remote_tag: String,
    local_tag: String,
    remote_uri: String,
    remote_target: String,
    route_set: Vec<String>,
    event_id: Option<String>,
    expires_at: u64,
    local_cseq: u32,
    remote_cseq: u32,
    pending: bool,
    /// A contact-list subscription's list (absent from other subscriptions, and from rows of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    list: Option<SavedList>,
}

/// A contact list as its subscription had it: the resources (their states are asked again on restore) and the
/// RLMI version of its next NOTIFY.
#[derive(Serialize, Deserialize)]
struct SavedList {
    uri: String,
    version: u32,
    /// (URI, display name) of each contact.
    resources: Vec<(String, String)>,
}

fn sub_key(s: &Subscription) -> String {
    format!("{} {} {}", s.presentity, s.call_id, s.remote_tag)
}

/// The AOR a soft-state row belongs to (and so the core that restores it).
pub fn owner_of(row: &StateRow) -> &str {
    row.key.split(' ').next().unwrap_or("")
}

fn encode<T: Serialize>(v: &T) -> Option<Vec<u8>> {
    serde_json::to_vec(v).ok()
}

fn decode<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Option<T> {
    serde_json::from_slice(v).ok().or_else(|| toml::from_str(std::str::from_utf8(v).ok()?).ok())
}

/// How often a pool core writes out the registrations and publications that changed.
pub const WRITE_BEHIND: std::time::Duration = std::time::Duration::from_millis(50);

/// AORs whose registrations or publications changed since the last write-out (one core's).
#[derive(Default)]
pub struct Unsaved {
    regs: HashSet<String>,
    pubs: HashSet<String>,
}

fn mark(set: &mut HashSet<String>, aor: &str) {
    if !set.contains(aor) {
        set.insert(aor.to_owned());
    }
}

/// The soft state saved by the previous run, split by owning core (read here, before any executor runs).
pub fn saved_state(
    store: &crate::store::thread::StoreHandle,
    cores: usize,
) -> Result<Vec<std::sync::Mutex<Vec<crate::store::StateRow>>>, String> {
    use crate::store::thread::{Op, Reply};
    let Reply::States(rows) = store.call_blocking(Op::States { now: super::now_secs() }).map_err(|e| e.to_string())?
    else {
        return Err("store: unexpected answer to a state load".into());
    };
    let mut shares: Vec<Vec<crate::store::StateRow>> = (0..cores.max(1)).map(|_| Vec::new()).collect();
    for row in rows {
        let core = shard_for(owner_of(&row).as_bytes(), shares.len());
        if let Some(share) = shares.get_mut(core) {
            share.push(row);
        }
    }
    Ok(shares.into_iter().map(std::sync::Mutex::new).collect())
}

impl PoolCore {
    fn write_state(&mut self, w: StateWrite) {
        let aor = match &w {
            StateWrite::Put(r) => owner_of(r),
            StateWrite::Delete { key, .. } => key.split(' ').next().unwrap_or(""),
            StateWrite::Fenced { aor, .. } => aor,
        };
        let w = match self.fence_of(aor) {
            Some(gen) => StateWrite::Fenced { aor: aor.to_string(), gen, write: Box::new(w) },
            None => w,
        };
        self.push(Action::StoreWrite(w));
    }

    /// After a REGISTER (or a flow's bindings went): written out with the next batch.
    pub(crate) fn persist_bindings(&mut self, aor: &str) {
        mark(&mut self.unsaved.regs, aor);
    }

    /// After a PUBLISH: written out with the next batch.
    pub(crate) fn persist_publications(&mut self, aor: &str) {
        mark(&mut self.unsaved.pubs, aor);
    }

    /// Every [`WRITE_BEHIND`], and at shutdown: the marked AORs' state as it is now, to the store.
    pub(crate) fn write_out_soft_state(&mut self) {
        let u = &mut self.unsaved;
        if u.regs.is_empty() && u.pubs.is_empty() {
            return;
        }
        let (regs, pubs) = (std::mem::take(&mut u.regs), std::mem::take(&mut u.pubs));
        for aor in &regs {
            self.save_bindings(aor);
        }
        for aor in &pubs {
            self.save_publications(aor);
        }
    }

    /// The AOR's bindings as they are now.
    fn save_bindings(&mut self, aor: &str) {
        let bindings = self.registrar.lookup(aor, self.now.secs);
        let Some(expires_at) = bindings.iter().map(|b| b.expires_at).max() else {
            self.write_state(StateWrite::Delete { kind: "reg".into(), key: aor.into() });
            return;
        };
        let saved = SavedBindings {
            b: bindings
                .into_iter()
                .map(|b| SavedBinding {
                    contact: b.contact,
                    contact_params: b.contact_params,
                    instance: b.instance,
                    reg_id: b.reg_id,
                    q: b.q,
                    path: b.path,
                    call_id: b.call_id,
                    cseq: b.cseq,
                    expires_at: b.expires_at,
                })
                .collect(),
        };
        if let Some(value) = encode(&saved) {
            self.write_state(StateWrite::Put(StateRow { kind: "reg".into(), key: aor.into(), value, expires_at }));
        }
    }

    /// The presentity's publications as they are now.
    fn save_publications(&mut self, aor: &str) {
        let list = self.presence.pubs.of(aor);
        let Some(expires_at) = list.iter().map(|p| p.expires_at).max() else {
            self.write_state(StateWrite::Delete { kind: "pub".into(), key: aor.into() });
            return;
        };
        let saved = SavedPublications {
            p: list
                .iter()
                .map(|p| SavedPublication {
                    etag: p.etag.clone(),
                    body: String::from_utf8_lossy(&p.body).into_owned(),
                    content_type: p.content_type.clone(),
                    expires_at: p.expires_at,
                    changed: p.changed,
                })
                .collect(),
        };
        if let Some(value) = encode(&saved) {
            self.write_state(StateWrite::Put(StateRow { kind: "pub".into(), key: aor.into(), value, expires_at }));
        }
    }

    /// After a subscription was created or refreshed, or sent [`CSEQ_SAVE_EVERY`] NOTIFYs.
    pub(crate) fn persist_subscription(&mut self, id: u32) {
        let p = &mut self.presence;
        let Some(s) = p.subs.get_mut(id) else { return };
        s.saved_cseq = s.local_cseq;
        let s = &*s;
        let saved = SavedSubscription {
            package: s.package.as_str().into(),
            presentity: s.presentity.clone(),
            entity: s.entity.clone(),
            watcher: s.watcher.clone(),
            call_id: s.call_id.clone(),
            remote_tag: s.remote_tag.clone(),
            local_tag: s.local_tag.clone(),
            remote_uri: s.remote_uri.clone(),
            remote_target: s.remote_target.clone(),
            route_set: s.route_set.clone(),
            event_id: s.event_id.clone(),
            expires_at: s.expires_at,
            local_cseq: s.local_cseq,
            remote_cseq: s.remote_cseq,
            pending: s.state == SubState::Pending,
            list: s.list.as_ref().map(|l| SavedList {
                uri: l.uri.clone(),
                version: l.version,
                resources: l.resources.iter().map(|r| (r.uri.clone(), r.name.clone())).collect(),
            }),
        };
        let (key, expires_at) = (sub_key(s), s.expires_at);
        if let Some(value) = encode(&saved) {
            self.write_state(StateWrite::Put(StateRow { kind: "sub".into(), key, value, expires_at }));
        }
    }

    pub(crate) fn forget_subscription(&mut self, s: &Subscription) {
        self.write_state(StateWrite::Delete { kind: "sub".into(), key: sub_key(s) });
    }

    /// Sweep: subscriptions whose NOTIFY CSeq moved since they were last saved.
    pub(crate) fn flush_dirty_subscriptions(&mut self) {
        let dirty: Vec<u32> = self.presence.dirty.drain().collect();
        for id in dirty {
            self.persist_subscription(id);
        }
    }

    /// At core start: puts back this core's share of the saved soft state; returns the restored subscriptions
    /// (the caller tells their watchers the current state once the edges are reachable).
    pub(crate) fn restore(&mut self, rows: Vec<StateRow>) -> Vec<u32> {
        let now = self.now.secs;
        let (mut regs, mut pubs, mut subs) = (0usize, 0usize, Vec::new());
        for row in rows {
            if shard_for(owner_of(&row).as_bytes(), self.count) != self.id {
                continue;
            }
            match row.kind.as_str() {
                "reg" => {
                    let Some(saved) = decode::<SavedBindings>(&row.value) else { continue };
                    let bindings = saved
                        .b
                        .into_iter()
                        .map(|b| Binding {
                            // Same key as at registration, so the edge's flow-closed notice still finds it.
                            flow: b.path.first().map(|p| super::flow_key(p.as_bytes())),
                            contact: b.contact,
                            contact_params: b.contact_params,
                            instance: b.instance,
                            reg_id: b.reg_id,
                            q: b.q,
                            path: b.path,
                            call_id: b.call_id,
                            cseq: b.cseq,
                            expires_at: b.expires_at,
                        })
                        .collect();
                    if self.registrar.restore(&row.key, bindings, now) {
                        regs += 1;
                    }
                }
                "pub" => {
                    let Some(saved) = decode::<SavedPublications>(&row.value) else { continue };
                    let list: Vec<Publication> = saved
                        .p
                        .into_iter()
                        .filter_map(|p| {
                            let summary = pidf::summarize(p.body.as_bytes()).ok()?;
                            Some(Publication {
                                etag: p.etag,
                                body: Bytes::from(p.body),
                                content_type: p.content_type,
                                summary,
                                expires_at: p.expires_at,
                                changed: p.changed,
                            })
                        })
                        .collect();
                    self.presence.pubs.restore(&row.key, list, now);
                    pubs += 1;
                }
                "sub" => {
                    let Some(s) = decode::<SavedSubscription>(&row.value) else { continue };
                    let Some(package) = Package::parse(&s.package) else { continue };
                    if s.expires_at <= now {
                        continue;
                    }
                    // The version jumps ahead with the CSeq: it moves once per NOTIFY too, so it also stays
                    // above any sent since the last save (RFC 4662 §5.2: a subscriber discards older versions).
                    let list = s.list.map(|l| {
                        let resources = rls::resources_of(l.resources.into_iter());
                        Box::new(ListState::new(l.uri, resources, l.version.wrapping_add(CSEQ_SKIP)))
                    });
                    let sub = Subscription {
                        id: 0,
                        package,
                        winfo_version: 0,
                        presentity: s.presentity,
                        entity: s.entity,
                        watcher: s.watcher,
                        call_id: s.call_id,
                        remote_tag: s.remote_tag,
                        local_tag: s.local_tag,
                        remote_uri: s.remote_uri,
                        remote_target: s.remote_target,
                        route_set: s.route_set,
                        event_id: s.event_id,
                        expires_at: s.expires_at,
                        local_cseq: s.local_cseq.wrapping_add(CSEQ_SKIP),
                        // What the store holds: the first NOTIFY (past the skip) marks the subscription to be
                        // saved again, so that a later hand-over skips ahead from there, not from this row again.
                        saved_cseq: s.local_cseq,
                        remote_cseq: s.remote_cseq,
                        state: if s.pending { SubState::Pending } else { SubState::Active },
                        list,
                    };
                    let registered = self.registrar.is_registered(&sub.presentity, now);
                    let p = &mut self.presence;
                    if let Err(e) = p.subs.admit(&sub.watcher, &sub.presentity) {
                        bump(&self.pstats.subscriptions_over_cap);
                        tracing::info!(watcher = %sub.watcher, presentity = %sub.presentity, error = ?e, "saved subscription over a bound: not restored");
                        continue;
                    }
                    if sub.list.is_none() {
                        p.registered.entry(sub.presentity.clone()).or_insert(registered);
                    }
                    subs.push(p.subs.insert(sub));
                }
                _ => {}
            }
        }
        if regs + pubs + subs.len() > 0 {
            tracing::info!(
                core = self.id,
                registrations = regs,
                publications = pubs,
                subscriptions = subs.len(),
                "restored"
            );
        }
        subs
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        let b = SavedBindings {
            b: vec![SavedBinding {
                contact: "sip:a@1.2.3.4:5;transport=tls;ob".into(),
                contact_params: ";+sip.instance=\"<urn:uuid:1>\";reg-id=1".into(),
                instance: Some("<urn:uuid:1>".into()),
                reg_id: Some(1),
                q: None,
                path: vec!["<sip:tok@127.0.0.1:5063;transport=tls;lr>".into()],
                call_id: "c".into(),
                cseq: 7,
                expires_at: 99,
            }],
        };
        let back: SavedBindings = decode(&encode(&b).unwrap()).unwrap();
        assert_eq!(back.b[0].contact_params, b.b[0].contact_params);
        assert_eq!(back.b[0].q, None);
        let p = SavedPublications {
            p: vec![SavedPublication {
                etag: "e".into(),
                body: "<presence>\n\"quoted\" ''' \\ </presence>".into(),
                content_type: "application/pidf+xml".into(),
                expires_at: 1,
                changed: 2,
            }],
        };
        let back: SavedPublications = decode(&encode(&p).unwrap()).unwrap();
        assert_eq!(back.p[0].body, p.p[0].body);
        assert_eq!(
            owner_of(&StateRow { kind: "sub".into(), key: "bob@x call id".into(), value: vec![], expires_at: 0 }),
            "bob@x"
        );
    }

    #[test]
    fn a_list_subscription_keeps_its_resources_and_version_and_earlier_rows_still_read() {
        let row = |list: &str| {
            format!(
                "{{\"package\":\"presence\",\"presentity\":\"a+contacts@x\",\"entity\":\"sip:a+contacts@x\",\
                 \"watcher\":\"a@x\",\"call_id\":\"c\",\"remote_tag\":\"r\",\"local_tag\":\"l\",\
                 \"remote_uri\":\"<sip:a@x>;tag=r\",\"remote_target\":\"sip:a@1.2.3.4\",\"route_set\":[],\
                 \"event_id\":null,\"expires_at\":9,\"local_cseq\":4,\"remote_cseq\":2,\"pending\":false{list}}}"
            )
        };
        let earlier: SavedSubscription = decode(row("").as_bytes()).expect("a row without a list");
        assert!(earlier.list.is_none());
        assert!(!String::from_utf8(encode(&earlier).unwrap()).unwrap().contains("\"list\""), "nor written with one");
        let list = r#","list":{"uri":"sip:a+contacts@x","version":7,"resources":[["sip:b@x","Bob"]]}"#;
        let saved: SavedSubscription = decode(row(list).as_bytes()).expect("a list subscription's row");
        let back: SavedSubscription = decode(&encode(&saved).unwrap()).unwrap();
        let l = back.list.expect("its list");
        assert_eq!((l.uri.as_str(), l.version), ("sip:a+contacts@x", 7));
        assert_eq!(l.resources, vec![("sip:b@x".to_string(), "Bob".to_string())]);
    }

    #[test]
    fn rows_written_as_toml_by_earlier_versions_still_read() {
        let old = "[[p]]\netag = \"e1\"\nbody = \"<x/>\"\ncontent_type = \"application/pidf+xml\"\nexpires_at = 9\nchanged = 3\n";
        let saved: SavedPublications = decode(old.as_bytes()).expect("TOML row");
        assert_eq!(saved.p[0].etag, "e1");
        let new = encode(&saved).expect("encodes");
        assert!(new.starts_with(b"{"), "written as JSON");
        let again: SavedPublications = decode(&new).expect("JSON row");
        assert_eq!((again.p[0].expires_at, again.p[0].changed), (9, 3));
        assert!(decode::<SavedPublications>(b"\xff not a row").is_none());
    }
}
