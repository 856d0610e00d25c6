//! Acceptance scenario with a real SIP stack: pjsip (pjsua2-python) agents, one process per user.

use std::time::Duration;

use crate::pjsua::Agent;
use crate::support::Appliance;

/// Text with characters that a sloppy relay would mangle (UTF-8, quotes, markup, CRLF).
const ALICE_TO_BOB: &str = "Hello Bob! \u{2014} gr\u{fc}\u{df}e \u{2713} <b>&amp;</b> \"quoted\" 1+1=2\r\nsecond line";
const BOB_TO_ALICE: &str = "Hi Alice, got it \u{1F600}; reply #2";

fn aor(app: &Appliance, user: &str) -> String {
    format!("sip:{user}@{}", app.domain)
}

fn expect_code(agent: &Agent, ev: &crate::pjsua::Json, what: &str, allowed: &[i64]) {
    let code = ev.int("code");
    agent.check(code.is_some_and(|c| allowed.contains(&c)), || {
        format!("{what}: expected SIP status {allowed:?}, got {ev}")
    });
    agent.check(!ev.str("reason").unwrap_or("").trim().is_empty(), || format!("{what}: empty reason phrase in {ev}"));
    // A locally generated status (transport error, timeout) is never the server's answer.
    agent.check(ev.get("local") != Some(&crate::pjsua::Json::Bool(true)), || {
        format!("{what}: status was generated locally by pjsip (no response from the server): {ev}")
    });
}

/// alice and bob register, then exchange a MESSAGE each way; both get 200 from the other client
/// and the recipient sees the exact text.
#[test]
fn pjsip_register_and_message_both_ways() {
    let app = Appliance::start("pjsip-both-ways");
    let (alice_u, bob_u) = (app.user("alice"), app.user("bob"));
    let mut alice = Agent::spawn(&app, "alice", &alice_u.alias, &alice_u.password);
    let mut bob = Agent::spawn(&app, "bob", &bob_u.alias, &bob_u.password);

    let ev = alice.register();
    expect_code(&alice, &ev, "alice REGISTER", &[200]);
    alice.check(ev.int("expires").unwrap_or(0) > 0, || format!("alice REGISTER 200 without expiry: {ev}"));
    let ev = bob.register();
    expect_code(&bob, &ev, "bob REGISTER", &[200]);
    bob.check(ev.int("expires").unwrap_or(0) > 0, || format!("bob REGISTER 200 without expiry: {ev}"));

    // alice -> bob
    let st = alice.message(&aor(&app, "bob"), ALICE_TO_BOB);
    expect_code(&alice, &st, "alice -> bob MESSAGE", &[200]);
    let m = bob.received();
    bob.check(m.str("text") == Some(ALICE_TO_BOB), || format!("bob received a different text: {m}"));
    bob.check(m.str("from").is_some_and(|f| f.contains(&aor(&app, "alice"))), || {
        format!("bob's message does not come from {}: {m}", aor(&app, "alice"))
    });
    bob.check(m.str("content_type") == Some("text/plain"), || format!("Content-Type changed in transit: {m}"));

    // bob -> alice
    let st = bob.message(&aor(&app, "alice"), BOB_TO_ALICE);
    expect_code(&bob, &st, "bob -> alice MESSAGE", &[200]);
    let m = alice.received();
    alice.check(m.str("text") == Some(BOB_TO_ALICE), || format!("alice received a different text: {m}"));
    alice.check(m.str("from").is_some_and(|f| f.contains(&aor(&app, "bob"))), || {
        format!("alice's message does not come from {}: {m}", aor(&app, "bob"))
    });

    // Exactly one copy each.
    std::thread::sleep(Duration::from_millis(500));
    let dup_b = bob.pending("message");
    bob.check(dup_b.is_empty(), || format!("bob got extra messages: {dup_b:?}"));
    let dup_a = alice.pending("message");
    alice.check(dup_a.is_empty(), || format!("alice got extra messages: {dup_a:?}"));
}

/// Registered alice sends to carol (exists, not registered) → 480 or 404, and to an unknown
/// user → 404.
#[test]
fn pjsip_message_to_offline_and_unknown_users() {
    let app = Appliance::start("pjsip-offline-unknown");
    let alice_u = app.user("alice");
    let _carol = app.user("carol"); // carol must exist in users.toml for the 480/404 case to mean "offline"
    let mut alice = Agent::spawn(&app, "alice", &alice_u.alias, &alice_u.password);
    let ev = alice.register();
    expect_code(&alice, &ev, "alice REGISTER", &[200]);

    let st = alice.message(&aor(&app, "carol"), "are you there, carol?");
    expect_code(&alice, &st, "alice -> carol (not registered) MESSAGE", &[480, 404]);

    let st = alice.message(&aor(&app, "nobody"), "hello nobody");
    expect_code(&alice, &st, "alice -> nobody (unknown user) MESSAGE", &[404]);
}

/// A third client with alice's name and a wrong password is refused (401 or 403), while the real
/// alice stays registered and reachable.
#[test]
fn pjsip_wrong_password_is_refused() {
    let app = Appliance::start("pjsip-wrong-password");
    let (alice_u, bob_u) = (app.user("alice"), app.user("bob"));
    let mut alice = Agent::spawn(&app, "alice", &alice_u.alias, &alice_u.password);
    let mut bob = Agent::spawn(&app, "bob", &bob_u.alias, &bob_u.password);
    let ev = alice.register();
    expect_code(&alice, &ev, "alice REGISTER", &[200]);
    let ev = bob.register();
    expect_code(&bob, &ev, "bob REGISTER", &[200]);

    let wrong = format!("{}-wrong", alice_u.password);
    let mut mallory = Agent::spawn(&app, "mallory-as-alice", &alice_u.alias, &wrong);
    let ev = mallory.register();
    expect_code(&mallory, &ev, "REGISTER as alice with a wrong password", &[401, 403]);
    mallory.quit();

    // The genuine alice binding survived the failed attempt.
    let st = bob.message(&aor(&app, "alice"), "still there?");
    expect_code(&bob, &st, "bob -> alice after the failed impersonation", &[200]);
    let m = alice.received();
    alice.check(m.str("text") == Some("still there?"), || format!("alice received a different text: {m}"));
}

/// bob as a pjsip agent, registered: the peer other clients' interop tests exchange messages with.
pub(crate) fn registered_bob(app: &Appliance) -> Agent {
    let bob_u = app.user("bob");
    let mut bob = Agent::spawn(app, "bob", &bob_u.alias, &bob_u.password);
    let ev = bob.register();
    bob.check(ev.int("code") == Some(200), || format!("bob REGISTER: {ev}"));
    bob
}

/// What every other client (as alice) goes through with pjsip's bob: `say(text)` makes it send `text` to bob, who
/// must receive it From alice; bob's answer must get the client's own 200, and `heard(text)` then checks the
/// client's side saw it.
pub(crate) fn messages_with_bob(
    app: &Appliance,
    bob: &mut Agent,
    client: &str,
    say: impl FnOnce(&str),
    heard: impl FnOnce(&str),
) {
    let text = format!("hello bob, from {client}");
    say(&text);
    let m = bob.received();
    bob.check(m.str("text") == Some(text.as_str()), || format!("bob received a different text: {m}"));
    bob.check(m.str("from").is_some_and(|f| f.contains(&format!("sip:alice@{}", app.domain))), || {
        format!("bob's message does not come from alice: {m}")
    });
    let reply = format!("hello {client}, from pjsip");
    let st = bob.message(&format!("sip:alice@{}", app.domain), &reply);
    bob.check(st.int("code") == Some(200), || format!("bob -> {client} MESSAGE: {st}"));
    heard(&reply);
}
