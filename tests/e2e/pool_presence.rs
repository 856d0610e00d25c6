//! Contact lists (RFC 4662) in the enterprise pool: a user's list subscription lives on one front end, a contact
//! of the list is owned by another; the list shows the contact's real presence, and goes on showing it after the
//! contact's owner is killed (-9) and another front end owns the contact, and again after that one is drained.

use std::time::{Duration, Instant};

use crate::challenges::raw_register;
use crate::malformed::{uniq, Raw};
use crate::pjsua::Agent;
use crate::presence_raw::{contacts, next_notify, ok_to, subscribe_list};
use crate::support_members::Enterprise;

const NOTIFY_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads list NOTIFYs until one's body contains `want`; fails past [`NOTIFY_TIMEOUT`].
pub(crate) fn wait_list_note(raw: &mut Raw, seen: &mut Vec<crate::malformed::Response>, want: &str) -> String {
    let deadline = Instant::now() + NOTIFY_TIMEOUT;
    loop {
        let n = next_notify(raw, seen, &format!("list NOTIFY with {want:?}"));
        let body = String::from_utf8_lossy(&n.body).to_string();
        if body.contains(want) {
            return body;
        }
        if Instant::now() >= deadline {
            raw.app.fail(&format!("no list NOTIFY with {want:?} within {NOTIFY_TIMEOUT:?}; last:\n{}\n{body}", n.head));
        }
    }
}

#[test]
fn pool_contact_list_follows_a_contact_of_another_member() {
    let pool = Enterprise::start("pool-rls", &["fe1", "fe2", "fe3"]);
    let d = pool.app.domain.clone();
    // A list owner and a contact whose owners differ (ownership is by rendezvous hash of the AOR).
    let users = ["alice", "bob", "carol"];
    let pairs = users.iter().flat_map(|o| users.iter().filter(move |c| *c != o).map(move |c| (*o, *c)));
    let owner_of = |aor: String| pool.owner(&aor);
    let pair = pairs.clone().find(|(o, c)| owner_of(format!("{o}+contacts@{d}")) != owner_of(format!("{c}@{d}")));
    let Some((watcher, friend)) = pair else {
        let owners: Vec<_> =
            pairs.map(|(o, c)| (o, owner_of(format!("{o}+contacts@{d}")), c, owner_of(format!("{c}@{d}")))).collect();
        pool.app.fail(&format!("no list whose contact another member owns: {owners:?}"));
    };
    let friend_aor = format!("{friend}@{d}");
    contacts(&pool.app, &["add", watcher, friend, "--name", "Friend"]);
    let u = pool.app.user(friend);
    let mut agent = Agent::spawn(&pool.app, friend, &u.alias, &u.password);
    let ev = agent.register();
    agent.check(ev.int("code") == Some(200), || format!("{friend} REGISTER: {ev}"));
    agent.send(r#"{"cmd":"publish","status":"busy","note":"Before the move"}"#);

    let me = pool.app.user(watcher);
    let mut raw = Raw::connect(&pool.app);
    raw_register(&pool.app, &mut raw, &me.alias, &me.password);
    let mut seen = Vec::new();
    let first = subscribe_list(&mut raw, &me, &format!("pool-rls-{}", uniq()), 1, "Supported: eventlist\r\n");
    if first.status_line().starts_with("NOTIFY ") {
        raw.send_ok(ok_to(&first).as_bytes(), "200 to NOTIFY");
    } else {
        seen.push(first);
    }
    let body = wait_list_note(&mut raw, &mut seen, "Before the move");
    if !body.contains(&format!("<resource uri=\"sip:{friend_aor}\"><name>Friend</name>")) {
        pool.app.fail(&format!("the list NOTIFY does not name {friend_aor}:\n{body}"));
    }
    let ok = seen.iter().find(|r| r.code().is_some());
    if ok.is_none_or(|r| r.code() != Some(200)) {
        pool.app.fail(&format!("list SUBSCRIBE: expected 200, got {:?}", ok.map(|r| &r.head)));
    }

    // The contact's owner dies: another member owns the contact, and the list follows its next change.
    let Some(old) = pool.owner(&friend_aor) else { pool.app.fail(&format!("{friend_aor} has no owner")) };
    pool.wait_saved(&friend_aor, &["reg", "pub", "sub"], Duration::from_secs(5));
    pool.kill9(&old);
    let (new, took) = pool.wait_new_owner(&friend_aor, &old, Duration::from_secs(10));
    eprintln!("[pool-rls] {friend_aor} moved from {old} to {new} {took:?} after the kill");
    agent.send(r#"{"cmd":"publish","status":"online","note":"After the move"}"#);
    wait_list_note(&mut raw, &mut seen, "After the move");

    // The contact's new owner is drained: the list follows the contact to the one member left.
    let list_member = pool.owner(&format!("{watcher}+contacts@{d}"));
    if list_member.as_deref() == Some(new.as_str()) {
        pool.app.fail(&format!("{friend_aor} moved to the list's member {new}: no other member to drain"));
    }
    let cfg = pool.pool_config();
    let out = pool.cli(&["pool", "-c", cfg.to_str().unwrap_or_default(), "drain", &new]);
    if !out.contains("can be stopped") {
        pool.app.fail(&format!("pool drain {new} said: {out}"));
    }
    let (last, _) = pool.wait_new_owner(&friend_aor, &new, Duration::from_secs(10));
    eprintln!("[pool-rls] {friend_aor} moved from {new} to {last} by the drain");
    agent.send(r#"{"cmd":"publish","status":"away","note":"After the drain"}"#);
    wait_list_note(&mut raw, &mut seen, "After the drain");
}
