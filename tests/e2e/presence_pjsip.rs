//! Presence with a real SIP stack through the edge: pjsip (pjsua2-python) agents publish (PUBLISH, RFC 3903)
//! and watch (SUBSCRIBE/NOTIFY, RFC 3856) each other; one process per device.

use std::time::Duration;

use crate::pjsua::{quote, Agent, Json, SIP_TIMEOUT};
use crate::support::Appliance;

/// A presence change must reach the watcher well within this (the issue asks for about a second).
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

fn aor(app: &Appliance, user: &str) -> String {
    format!("sip:{user}@{}", app.domain)
}

pub(crate) fn registered(app: &Appliance, label: &str, user: &str) -> Agent {
    let u = app.user(user);
    let mut a = Agent::spawn(app, label, &u.alias, &u.password);
    let ev = a.register();
    a.check(ev.int("code") == Some(200), || format!("{label} REGISTER: {ev}"));
    a
}

pub(crate) fn publish(agent: &mut Agent, status: &str, note: &str) {
    agent.send(&format!(r#"{{"cmd":"publish","status":{},"note":{}}}"#, quote(status), quote(note)));
}

fn subscribe(agent: &mut Agent, uri: &str) {
    agent.send(&format!(r#"{{"cmd":"subscribe","uri":{}}}"#, quote(uri)));
}

fn unsubscribe(agent: &mut Agent, uri: &str) {
    agent.send(&format!(r#"{{"cmd":"unsubscribe","uri":{}}}"#, quote(uri)));
}

/// Waits for a `buddy_state` of `uri` with this status, activity and note (None: any note).
pub(crate) fn wait_state(agent: &mut Agent, uri: &str, status: &str, activity: &str, note: Option<&str>) -> Json {
    let (uri, status, activity, note) =
        (uri.to_string(), status.to_string(), activity.to_string(), note.map(str::to_string));
    let what = format!("buddy_state {uri} {status}/{activity:?}/{note:?}");
    agent.wait_for(&what, NOTIFY_TIMEOUT, move |e| {
        e.event() == "buddy_state"
            && e.str("uri").is_some_and(|u| u.contains(&uri))
            && e.str("sub_state") == Some("ACTIVE")
            && e.str("status") == Some(status.as_str())
            && e.str("activity") == Some(activity.as_str())
            && note.as_ref().is_none_or(|n| e.str("note") == Some(n.as_str()))
    })
}

/// bob is registered but has published nothing: alice's subscription is active and shows him offline; bob
/// publishes busy with a note, then online, then offline, and alice sees each state.
#[test]
fn pjsip_presence_publish_and_watch() {
    let app = Appliance::start("presence-publish-watch");
    let mut alice = registered(&app, "alice", "alice");
    let mut bob = registered(&app, "bob", "bob");
    let bob_uri = aor(&app, "bob");

    subscribe(&mut alice, &bob_uri);
    wait_state(&mut alice, &bob_uri, "offline", "", None);

    publish(&mut bob, "busy", "In a meeting until 3");
    wait_state(&mut alice, &bob_uri, "online", "busy", Some("In a meeting until 3"));

    publish(&mut bob, "online", "Back at my desk");
    wait_state(&mut alice, &bob_uri, "online", "", Some("Back at my desk"));

    publish(&mut bob, "offline", "Gone home");
    wait_state(&mut alice, &bob_uri, "offline", "", None);

    // A device's publication stands for it: when it goes away (pjsip removes it on shutdown), bob is offline.
    publish(&mut bob, "online", "Back once more");
    wait_state(&mut alice, &bob_uri, "online", "", Some("Back once more"));
    bob.quit();
    // The pool's closed document carries no note (bob's own offline publication said "Gone home").
    wait_state(&mut alice, &bob_uri, "offline", "", Some(""));
}

/// bob's client dies without unregistering or unpublishing: the edge sees its flow close and tells the pool, which
/// drops the bindings registered through it at once, so alice sees bob offline within seconds, not at expiry.
#[test]
fn pjsip_presence_crashed_client_goes_offline_at_once() {
    let app = Appliance::start("presence-crash");
    let mut alice = registered(&app, "alice", "alice");
    let mut bob = registered(&app, "bob", "bob");
    let bob_uri = aor(&app, "bob");
    subscribe(&mut alice, &bob_uri);
    publish(&mut bob, "online", "Here");
    wait_state(&mut alice, &bob_uri, "online", "", Some("Here"));
    // Forget older states (the first NOTIFY said offline): only what follows the crash counts.
    alice.discard("buddy_state");
    let started = std::time::Instant::now();
    bob.crash();
    wait_state(&mut alice, &bob_uri, "offline", "", None);
    let took = started.elapsed();
    alice.check(took < Duration::from_secs(5), || format!("bob went offline only after {took:?}"));
    // And a MESSAGE to him is answered as to an offline user.
    let r = alice.message(&bob_uri, "are you there?");
    alice.check(r.int("code") == Some(480), || format!("MESSAGE to crashed bob: {r}"));
}

/// bob on two devices: alice sees one aggregated state, the most available one, with the note of the most
/// recent change.
#[test]
fn pjsip_presence_two_devices_aggregate() {
    let app = Appliance::start("presence-two-devices");
    let mut alice = registered(&app, "alice", "alice");
    let mut phone = registered(&app, "bob-phone", "bob");
    let mut desk = registered(&app, "bob-desk", "bob");
    let bob_uri = aor(&app, "bob");
    subscribe(&mut alice, &bob_uri);
    wait_state(&mut alice, &bob_uri, "offline", "", None);

    publish(&mut phone, "busy", "On a call");
    wait_state(&mut alice, &bob_uri, "online", "busy", Some("On a call"));

    // The desk is available: more available than busy, and its note is the most recent.
    publish(&mut desk, "online", "At my desk");
    wait_state(&mut alice, &bob_uri, "online", "", Some("At my desk"));

    // The desk goes away: busy (phone) beats away (desk); the note still comes from the latest change.
    publish(&mut desk, "away", "Lunch break");
    wait_state(&mut alice, &bob_uri, "online", "busy", Some("Lunch break"));
}

/// An unsubscribe gets a final NOTIFY with `Subscription-State: terminated`.
#[test]
fn pjsip_presence_unsubscribe_terminates() {
    let app = Appliance::start("presence-unsubscribe");
    let mut alice = registered(&app, "alice", "alice");
    let mut bob = registered(&app, "bob", "bob");
    let bob_uri = aor(&app, "bob");
    subscribe(&mut alice, &bob_uri);
    publish(&mut bob, "away", "Walking the dog");
    wait_state(&mut alice, &bob_uri, "online", "away", Some("Walking the dog"));

    unsubscribe(&mut alice, &bob_uri);
    let want = bob_uri.clone();
    let ev = alice.wait_for("subscription TERMINATED", SIP_TIMEOUT, move |e| {
        e.event() == "buddy_state"
            && e.str("uri").is_some_and(|u| u.contains(&want))
            && e.str("sub_state") == Some("TERMINATED")
    });
    alice.check(ev.int("term_code").is_some(), || format!("terminated state without a code: {ev}"));
}

/// `parapet policy` against the appliance's pool config (the running pool picks the change up).
fn policy(app: &Appliance, args: &[&str]) {
    let cfg = app.data_dir.join("pool.toml");
    let mut cmd = std::process::Command::new(crate::support::parapet_bin());
    cmd.arg("policy").arg("--config").arg(&cfg).args(args);
    if let Err(e) = crate::support::run_bounded(&mut cmd, Duration::from_secs(20)) {
        app.fail(&format!("parapet policy {args:?}: {e}"));
    }
}

/// bob blocks carol: carol's subscription is accepted like anyone's but shows bob offline, and her MESSAGE gets
/// the answer an offline user gives; alice sees and reaches bob. Unblocked, carol sees bob's real state.
#[test]
fn pjsip_presence_blocked_watcher_sees_offline() {
    let app = Appliance::start("presence-block");
    policy(&app, &["set", "bob", "carol@example.com", "--presence", "block", "--im", "block"]);
    // The pool looks for outside changes every 0.5 s.
    std::thread::sleep(Duration::from_millis(1500));
    let mut alice = registered(&app, "alice", "alice");
    let mut bob = registered(&app, "bob", "bob");
    let mut carol = registered(&app, "carol", "carol");
    let bob_uri = aor(&app, "bob");

    subscribe(&mut alice, &bob_uri);
    subscribe(&mut carol, &bob_uri);
    publish(&mut bob, "online", "Free to chat");
    wait_state(&mut alice, &bob_uri, "online", "", Some("Free to chat"));
    wait_state(&mut carol, &bob_uri, "offline", "", None);
    std::thread::sleep(Duration::from_millis(500));
    let leaked: Vec<Json> =
        carol.pending("buddy_state").into_iter().filter(|e| e.str("status") == Some("online")).collect();
    carol.check(leaked.is_empty(), || format!("blocked carol saw bob online: {leaked:?}"));

    let st = carol.message(&bob_uri, "hello?");
    carol
        .check(st.int("code") == Some(480), || format!("blocked MESSAGE: expected 480 like an offline user, got {st}"));
    let st = alice.message(&bob_uri, "hi bob");
    alice.check(st.int("code") == Some(200), || format!("alice -> bob: {st}"));

    policy(&app, &["set", "bob", "carol@example.com", "--presence", "unset"]);
    wait_state(&mut carol, &bob_uri, "online", "", Some("Free to chat"));
}
