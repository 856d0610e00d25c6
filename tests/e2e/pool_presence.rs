//! Contact lists (RFC 4662) in the enterprise pool: a user's list subscription lives on one front end, a contact
//! of the list is owned by another; the list shows the contact's real presence, and goes on showing it after the
//! contact's owner is killed (-9) and another front end owns the contact, and again after that one is drained.
//! The list subscription itself outlives its own front end too: killed, then drained, each time its subscriber
//! hears the list's state again in the same dialog without subscribing again.

use std::time::{Duration, Instant};

use crate::challenges::raw_register;
use crate::malformed::{uniq, Raw, Response};
use crate::pjsua::Agent;
use crate::presence_raw::{contacts, next_notify, ok_to, subscribe_list};
use crate::support_members::Enterprise;

const NOTIFY_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads list NOTIFYs until one's body contains `want`; fails past [`NOTIFY_TIMEOUT`].
pub(crate) fn wait_list_note(raw: &mut Raw, seen: &mut Vec<Response>, want: &str) -> String {
    String::from_utf8_lossy(&wait_list_notify(raw, seen, want, |_| Ok(())).body).to_string()
}

/// Reads list NOTIFYs, each passing `check`, until one's body contains `want`; fails past [`NOTIFY_TIMEOUT`].
fn wait_list_notify(
    raw: &mut Raw,
    seen: &mut Vec<Response>,
    want: &str,
    mut check: impl FnMut(&Response) -> Result<(), String>,
) -> Response {
    let deadline = Instant::now() + NOTIFY_TIMEOUT;
    loop {
        let n = next_notify(raw, seen, &format!("list NOTIFY with {want:?}"));
        let body = String::from_utf8_lossy(&n.body).to_string();
        if let Err(e) = check(&n) {
            raw.app.fail(&format!("{e}:\n{}\n{body}", n.head));
        }
        if body.contains(want) {
            return n;
        }
        if Instant::now() >= deadline {
            raw.app.fail(&format!("no list NOTIFY with {want:?} within {NOTIFY_TIMEOUT:?}; last:\n{}\n{body}", n.head));
        }
    }
}

/// A subscription dialog as its NOTIFYs show it (Call-ID, our From with its tag, the subscriber's To with hers)
/// and the last CSeq in it.
struct Dialog {
    call_id: String,
    from: String,
    to: String,
    cseq: u32,
}

fn header(n: &Response, name: &str) -> String {
    n.header(name).unwrap_or_default().to_string()
}

fn cseq_of(n: &Response) -> u32 {
    header(n, "CSeq").split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(0)
}

impl Dialog {
    fn of(n: &Response) -> Dialog {
        Dialog { call_id: header(n, "Call-ID"), from: header(n, "From"), to: header(n, "To"), cseq: cseq_of(n) }
    }

    /// `n` is in this dialog with a higher CSeq (then its CSeq is the last).
    fn follow(&mut self, n: &Response) -> Result<(), String> {
        let same = (header(n, "Call-ID"), header(n, "From"), header(n, "To"));
        if same != (self.call_id.clone(), self.from.clone(), self.to.clone()) {
            return Err(format!("a NOTIFY outside the dialog {} / {} / {}", self.call_id, self.from, self.to));
        }
        if cseq_of(n) <= self.cseq {
            return Err(format!("CSeq {} after {}: not increasing", cseq_of(n), self.cseq));
        }
        self.cseq = cseq_of(n);
        Ok(())
    }
}

/// The list's members and their contacts' owners differ: a list owner and a contact whose owners differ (or fail).
fn list_and_contact_of_different_members(pool: &Enterprise) -> (&'static str, &'static str) {
    let d = pool.app.domain.clone();
    let users = ["alice", "bob", "carol"];
    let pairs = users.iter().flat_map(|o| users.iter().filter(move |c| *c != o).map(move |c| (*o, *c)));
    let owner_of = |aor: String| pool.owner(&aor);
    let pair = pairs.clone().find(|(o, c)| owner_of(format!("{o}+contacts@{d}")) != owner_of(format!("{c}@{d}")));
    let Some(pair) = pair else {
        let owners: Vec<_> =
            pairs.map(|(o, c)| (o, owner_of(format!("{o}+contacts@{d}")), c, owner_of(format!("{c}@{d}")))).collect();
        pool.app.fail(&format!("no list whose contact another member owns: {owners:?}"));
    };
    pair
}

/// `friend` in `watcher`'s contact list: `friend` registers (pjsua) and publishes busy with `note`; `watcher`
/// registers on a raw connection and subscribes to the list (Call-ID `tag`-n). The contact's agent, the raw
/// connection, and what came first after the SUBSCRIBE (its answer or the first NOTIFY).
fn watch_list<'a>(
    pool: &'a Enterprise,
    watcher: &str,
    friend: &str,
    note: &str,
    tag: &str,
) -> (Agent, Raw<'a>, Response) {
    contacts(&pool.app, &["add", watcher, friend, "--name", "Friend"]);
    let u = pool.app.user(friend);
    let mut agent = Agent::spawn(&pool.app, friend, &u.alias, &u.password);
    let ev = agent.register();
    agent.check(ev.int("code") == Some(200), || format!("{friend} REGISTER: {ev}"));
    agent.send(&format!(r#"{{"cmd":"publish","status":"busy","note":"{note}"}}"#));
    let me = pool.app.user(watcher);
    let mut raw = Raw::connect(&pool.app);
    raw_register(&pool.app, &mut raw, &me.alias, &me.password);
    let first = subscribe_list(&mut raw, &me, &format!("{tag}-{}", uniq()), 1, "Supported: eventlist\r\n");
    (agent, raw, first)
}

#[test]
fn pool_contact_list_follows_a_contact_of_another_member() {
    let pool = Enterprise::start("pool-rls", &["fe1", "fe2", "fe3"]);
    let d = pool.app.domain.clone();
    // A list owner and a contact whose owners differ (ownership is by rendezvous hash of the AOR).
    let (watcher, friend) = list_and_contact_of_different_members(&pool);
    let friend_aor = format!("{friend}@{d}");
    let (mut agent, mut raw, first) = watch_list(&pool, watcher, friend, "Before the move", "pool-rls");
    let mut seen = Vec::new();
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

/// `[pool.member] lease_ms` by default: the failure-detection time (≤ 3 s).
const DETECTION: Duration = Duration::from_secs(3);
/// On top of it: the survivor's roster read, its hand-over delay (`GAIN_DELAY`), loading the list and one round
/// trip to the contact's owner for the state.
const TAKE_OVER: Duration = Duration::from_millis(1_500);

/// alice's contact-list subscription outlives its own front end: kill -9 of the member holding it, then a drain
/// (and stop) of the one that took it over. Each time she gets a NOTIFY in the same dialog (same Call-ID and
/// tags, a higher CSeq) with her contact's state, and the contact's later changes still reach her, without her
/// subscribing again (the raw client never does).
#[test]
fn pool_contact_list_outlives_its_own_front_end() {
    let pool = Enterprise::start("pool-rls-own", &["fe1", "fe2", "fe3"]);
    let d = pool.app.domain.clone();
    let (watcher, friend) = list_and_contact_of_different_members(&pool);
    let list_aor = format!("{watcher}+contacts@{d}");
    let (mut agent, mut raw, first) = watch_list(&pool, watcher, friend, "Before the kill", "pool-rls-own");
    let mut seen = Vec::new();
    let mut dialog = None::<Dialog>;
    let mut follow = |n: &Response| match dialog.as_mut() {
        Some(dl) => dl.follow(n),
        None => {
            dialog = Some(Dialog::of(n));
            Ok(())
        }
    };
    if first.status_line().starts_with("NOTIFY ") {
        raw.send_ok(ok_to(&first).as_bytes(), "200 to NOTIFY");
        let _ = follow(&first);
    } else {
        seen.push(first);
    }
    let before = wait_list_notify(&mut raw, &mut seen, "Before the kill", &mut follow);
    let ok = seen.iter().find(|r| r.code().is_some());
    if ok.is_none_or(|r| r.code() != Some(200)) {
        pool.app.fail(&format!("list SUBSCRIBE: expected 200, got {:?}", ok.map(|r| &r.head)));
    }

    // The list's front end dies: the member that owns the list's AOR next loads the subscription and tells alice.
    let Some(old) = pool.owner(&list_aor) else { pool.app.fail(&format!("{list_aor} has no owner")) };
    pool.wait_saved(&list_aor, &["sub"], Duration::from_secs(5));
    pool.kill9(&old);
    let t0 = Instant::now();
    // The edge hides which front end sent a NOTIFY; a restored dialog's CSeq jumps past what the dead one could
    // have sent since its last save, so the first NOTIFY past that is the new owner's (one the dead front end sent
    // before it died may still be on its way).
    let restored_from = cseq_of(&before) + parapet::pool::persist::CSEQ_SAVE_EVERY;
    let after = loop {
        let n = wait_list_notify(&mut raw, &mut seen, "Before the kill", &mut follow);
        if cseq_of(&n) > restored_from {
            break n;
        }
    };
    let took = t0.elapsed();
    let body = String::from_utf8_lossy(&after.body).to_string();
    eprintln!("[pool-rls-own] {list_aor} on {old} killed: NOTIFY in the same dialog {took:?} after the kill");
    if took > DETECTION + TAKE_OVER {
        pool.app.fail(&format!("the list's state came back only {took:?} after the kill"));
    }
    if !body.contains("fullState=\"true\"") || !body.contains(&format!("<resource uri=\"sip:{friend}@{d}\">")) {
        pool.app.fail(&format!("not the full list after the kill:\n{body}"));
    }
    agent.send(r#"{"cmd":"publish","status":"online","note":"After the kill"}"#);
    wait_list_notify(&mut raw, &mut seen, "After the kill", &mut follow);

    // Its new front end is drained, then stopped: the one left goes on in the same dialog.
    let (new, _) = pool.wait_new_owner(&list_aor, &old, Duration::from_secs(10));
    let cfg = pool.pool_config();
    let out = pool.cli(&["pool", "-c", cfg.to_str().unwrap_or_default(), "drain", &new]);
    if !out.contains("can be stopped") {
        pool.app.fail(&format!("pool drain {new} said: {out}"));
    }
    pool.kill9(&new);
    let (last, _) = pool.wait_new_owner(&list_aor, &new, Duration::from_secs(10));
    eprintln!("[pool-rls-own] {list_aor} moved from {new} to {last} by the drain");
    agent.send(r#"{"cmd":"publish","status":"away","note":"After the drain"}"#);
    // Sent by `last`: the drained front end is gone.
    wait_list_notify(&mut raw, &mut seen, "After the drain", &mut follow);
    let refused = seen.iter().find(|r| r.code().is_some_and(|c| c >= 300));
    if let Some(r) = refused {
        pool.app.fail(&format!("an error on alice's connection: {}", r.head));
    }
}
