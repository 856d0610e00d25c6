//! The enterprise pool end to end: one edge, three front ends sharing one store, real pjsip clients.
//! A front end killed (-9) while alice messages bob and watches his presence; a cold start with one of three.

use std::time::Duration;

use crate::pjsua::{quote, Agent, Json};
use crate::support_members::Enterprise;

/// `[pool.member] lease_ms` by default: the failure-detection time the issue asks for (≤ 3 s).
const DETECTION: Duration = Duration::from_secs(3);
/// The test reads the store itself, every 20 ms: its own lag on top of the detection time.
const READ_SLACK: Duration = Duration::from_millis(300);
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

fn registered(pool: &Enterprise, label: &str, user: &str) -> Agent {
    registered_at(&pool.app, label, user)
}

/// A pjsip agent of `user` registered through the appliance's edge (or the test fails).
pub(crate) fn registered_at(app: &crate::support::Appliance, label: &str, user: &str) -> Agent {
    let u = app.user(user);
    let mut a = Agent::spawn(app, label, &u.alias, &u.password);
    let ev = a.register();
    a.check(ev.int("code") == Some(200), || format!("{label} REGISTER: {ev}"));
    a
}

fn wait_state(agent: &mut Agent, uri: &str, status: &str, activity: &str, note: &str) -> Json {
    let (uri, status, activity, note) = (uri.to_string(), status.to_string(), activity.to_string(), note.to_string());
    let what = format!("buddy_state {uri} {status}/{activity}/{note}");
    agent.wait_for(&what, NOTIFY_TIMEOUT, move |e| {
        e.event() == "buddy_state"
            && e.str("uri").is_some_and(|u| u.contains(&uri))
            && e.str("sub_state") == Some("ACTIVE")
            && e.str("status") == Some(status.as_str())
            && e.str("activity") == Some(activity.as_str())
            && e.str("note") == Some(note.as_str())
    })
}

pub(crate) fn message_delivered(from: &mut Agent, to: &mut Agent, uri: &str, text: &str) {
    let st = from.message(uri, text);
    from.check(st.int("code") == Some(200), || format!("MESSAGE {text:?} to {uri}: {st}"));
    let m = to.received();
    to.check(m.str("text") == Some(text), || format!("expected {text:?}, got {m}"));
}

#[test]
fn pool_failover_kill9_of_bobs_owner() {
    let pool = Enterprise::start("pool-failover-kill", &["fe1", "fe2", "fe3"]);
    let mut alice = registered(&pool, "alice", "alice");
    let mut bob = registered(&pool, "bob", "bob");
    let bob_aor = format!("bob@{}", pool.app.domain);
    let bob_uri = format!("sip:{bob_aor}");
    alice.send(&format!(r#"{{"cmd":"subscribe","uri":{}}}"#, quote(&bob_uri)));
    bob.send(r#"{"cmd":"publish","status":"busy","note":"Before the crash"}"#);
    wait_state(&mut alice, &bob_uri, "online", "busy", "Before the crash");
    message_delivered(&mut alice, &mut bob, &bob_uri, "before the crash");
    // An acknowledged durable write: bob's allow entry for alice.
    let cfg = pool.pool_config();
    let cfg = cfg.to_str().unwrap_or_default().to_string();
    pool.cli(&["policy", "-c", &cfg, "set", "bob", "alice@example.com", "--im", "allow"]);
    // The write-behind has committed bob's binding, publication and alice's subscription to him.
    pool.wait_saved(&bob_aor, &["reg", "pub", "sub"], Duration::from_secs(5));

    let Some(old) = pool.owner(&bob_aor) else { pool.app.fail("bob has no owner") };
    bob.discard("reg");
    alice.discard("buddy_state");
    pool.kill9(&old);
    // Measured from the kill: the roster gives bob to another member once the dead one's lease has run out.
    let (new, took) = pool.wait_new_owner(&bob_aor, &old, Duration::from_secs(10));
    alice.check(took <= DETECTION + READ_SLACK, || format!("bob's new owner {new} only after {took:?}"));
    eprintln!("[pool-failover-kill] bob moved from {old} to {new} {took:?} after the kill");
    // bob's new owner loads his binding from the store: the MESSAGE reaches him without a REGISTER of his.
    message_delivered(&mut alice, &mut bob, &bob_uri, "during the failover");
    message_delivered(&mut alice, &mut bob, &bob_uri, "after the failover");
    // alice's subscription lives on at bob's new owner: the state as it was, then bob's next change.
    wait_state(&mut alice, &bob_uri, "online", "busy", "Before the crash");
    bob.send(r#"{"cmd":"publish","status":"online","note":"After the failover"}"#);
    wait_state(&mut alice, &bob_uri, "online", "", "After the failover");
    let regs = bob.pending("reg");
    bob.check(regs.is_empty(), || format!("bob registered again: {regs:?}"));
    let list = pool.cli(&["policy", "-c", &cfg, "list", "bob"]);
    alice.check(list.contains("alice@example.com"), || format!("the acknowledged entry is missing:\n{list}"));
}

#[test]
fn pool_cold_start_with_one_of_three_front_ends() {
    let pool = Enterprise::start("pool-cold-one", &["fe2"]);
    let mut alice = registered(&pool, "alice", "alice");
    let mut bob = registered(&pool, "bob", "bob");
    let mut carol = registered(&pool, "carol", "carol");
    let d = pool.app.domain.clone();
    message_delivered(&mut alice, &mut bob, &format!("sip:bob@{d}"), "cold start: alice to bob");
    message_delivered(&mut bob, &mut carol, &format!("sip:carol@{d}"), "cold start: bob to carol");
    message_delivered(&mut carol, &mut alice, &format!("sip:alice@{d}"), "cold start: carol to alice");
    // The leases `up` left from its own short run run out: then the roster names the one front end for all.
    for u in ["alice", "bob", "carol"] {
        let aor = format!("{u}@{d}");
        for other in ["fe1", "fe3"] {
            if pool.owner(&aor).as_deref() == Some(other) {
                pool.wait_new_owner(&aor, other, DETECTION + READ_SLACK);
            }
        }
        let o = pool.owner(&aor);
        alice.check(o.as_deref() == Some("fe2"), || format!("{u} owned by {o:?}, not the one front end up"));
    }
    message_delivered(&mut alice, &mut carol, &format!("sip:carol@{d}"), "cold start: by the roster now");
}

/// bob's owner is drained while alice keeps messaging bob and carol: every MESSAGE gets its 200 and arrives,
/// the drain reports the member can be stopped, and bob has another owner (his binding moved with him).
#[test]
fn pool_drain_under_steady_load() {
    let pool = Enterprise::start("pool-drain", &["fe1", "fe2", "fe3"]);
    let mut alice = registered(&pool, "alice", "alice");
    let mut bob = registered(&pool, "bob", "bob");
    let mut carol = registered(&pool, "carol", "carol");
    let d = pool.app.domain.clone();
    let bob_aor = format!("bob@{d}");
    pool.wait_saved(&bob_aor, &["reg"], Duration::from_secs(5));
    let Some(drained) = pool.owner(&bob_aor) else { pool.app.fail("bob has no owner") };
    let cfg = pool.pool_config();
    let (tx, rx) = std::sync::mpsc::channel();
    let member = drained.clone();
    std::thread::spawn(move || {
        let mut cmd = std::process::Command::new(crate::support::parapet_bin());
        cmd.arg("pool").arg("-c").arg(&cfg).arg("drain").arg(&member);
        let _ = tx.send(crate::support::run_bounded(&mut cmd, Duration::from_secs(60)));
    });
    let mut sent = 0;
    let mut after_drain = 0;
    let drain = loop {
        let (to, agent) = if sent % 2 == 0 { ("bob", &mut bob) } else { ("carol", &mut carol) };
        message_delivered(&mut alice, agent, &format!("sip:{to}@{d}"), &format!("steady {sent}"));
        sent += 1;
        if let Ok(r) = rx.try_recv() {
            break r;
        }
        if sent > 500 {
            pool.app.fail("the drain did not end within 500 messages");
        }
    };
    let out = drain.unwrap_or_else(|e| pool.app.fail(&format!("pool drain failed: {e}")));
    alice.check(out.contains("can be stopped"), || format!("pool drain said: {out}"));
    // The load goes on after the hand-over, through the new owners.
    while after_drain < 6 {
        let (to, agent) = if after_drain % 2 == 0 { ("bob", &mut bob) } else { ("carol", &mut carol) };
        message_delivered(&mut alice, agent, &format!("sip:{to}@{d}"), &format!("after the drain {after_drain}"));
        after_drain += 1;
    }
    let owner = pool.owner(&bob_aor);
    alice.check(owner.as_deref().is_some_and(|o| o != drained), || format!("bob still owned by {owner:?}"));
    let status = pool.cli(&["pool", "-c", pool.pool_config().to_str().unwrap_or_default(), "status"]);
    alice.check(status.lines().any(|l| l.starts_with(&format!("{drained}\t")) && l.contains("\tdraining\t")), || {
        format!("status after the drain:\n{status}")
    });
    eprintln!("[pool-drain] {sent} MESSAGEs during the drain of {drained}, all answered 200 and delivered");
}
