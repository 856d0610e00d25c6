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

/// The established TCP connections from process `pid` to `edge` (host:port), by `ss`.
fn connections_to(pid: u32, edge: &str) -> usize {
    let out = std::process::Command::new("ss").args(["-Htnp", "state", "established"]).output();
    let Ok(out) = out else { return 0 };
    let needle = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle) && l.split_whitespace().any(|f| f == edge))
        .count()
}

/// Issue 10: one pjsip process with two accounts, alice and bob (one TLS transport, the same registrar and outbound
/// proxy), which pjsip sends over one shared TLS connection; bob also has a phone of his own (another pjsip
/// process, its own connection), and carol (pjsip) is who they talk to. alice registers; bob's account publishes,
/// watches alice and messages carol before it registers in this process (as pjsip does when an account is added:
/// its PUBLISH does not wait for the REGISTER), so its requests leave on the connection alice registered, while bob
/// is registered on his phone's. Refused before with `403 From does not match the registered identity`; now the
/// pool challenges them (407) and the connection may speak for bob once he answered. Then bob's account registers
/// here too, and both accounts publish, watch each other and exchange messages with carol.
#[test]
fn pjsip_two_accounts_share_one_connection() {
    use crate::pjsua::{quote, Json, SIP_TIMEOUT};
    use crate::presence_pjsip::wait_state;
    let app = Appliance::start("pjsip-two-accounts");
    let (alice_u, bob_u, carol_u) = (app.user("alice"), app.user("bob"), app.user("carol"));
    let (alice_aor, bob_aor, carol_aor) = (aor(&app, "alice"), aor(&app, "bob"), aor(&app, "carol"));
    let mut carol = Agent::spawn(&app, "carol", &carol_u.alias, &carol_u.password);
    let ev = carol.register();
    expect_code(&carol, &ev, "carol REGISTER", &[200]);
    let mut phone = Agent::spawn(&app, "bob-phone", &bob_u.alias, &bob_u.password);
    let ev = phone.register();
    expect_code(&phone, &ev, "bob's phone REGISTER", &[200]);
    let also = [(bob_u.alias.as_str(), bob_u.password.as_str())];
    let mut two = Agent::spawn_accounts(&app, "alice+bob", &alice_u.alias, &alice_u.password, &also);

    // Events of one account of the shared agent.
    fn of(user: &str, kind: &str) -> impl Fn(&Json) -> bool {
        let (user, kind) = (user.to_string(), kind.to_string());
        move |e: &Json| e.event() == kind && e.str("account") == Some(user.as_str())
    }
    fn watched(user: &str, uri: &str, activity: &str) -> impl Fn(&Json) -> bool {
        let (is_event, uri, activity) = (of(user, "buddy_state"), uri.to_string(), activity.to_string());
        move |e: &Json| {
            is_event(e)
                && e.str("uri").is_some_and(|u| u.contains(&uri))
                && e.str("sub_state") == Some("ACTIVE")
                && e.str("status") == Some("online")
                && e.str("activity") == Some(activity.as_str())
        }
    }
    let say = |two: &mut Agent, carol: &mut Agent, user: &str, text: &str| {
        two.send(&format!(
            r#"{{"cmd":"message","as":{},"to":{},"text":{}}}"#,
            quote(user),
            quote(&carol_aor),
            quote(text)
        ));
        let st = two.wait_for(&format!("{user}'s message_status"), SIP_TIMEOUT, of(user, "message_status"));
        expect_code(two, &st, &format!("{user} -> carol MESSAGE"), &[200]);
        let m = carol.received();
        carol.check(m.str("text") == Some(text), || format!("carol received a different text: {m}"));
        carol.check(m.str("from").is_some_and(|f| f.contains(&aor(&app, user))), || {
            format!("carol's message does not come from {user}: {m}")
        });
    };

    two.send(r#"{"cmd":"register","as":"alice"}"#);
    let ev = two.wait_for("alice's reg", SIP_TIMEOUT, of("alice", "reg"));
    expect_code(&two, &ev, "alice REGISTER", &[200]);
    for who in [&alice_aor, &bob_aor] {
        carol.send(&format!(r#"{{"cmd":"subscribe","uri":{}}}"#, quote(who)));
    }
    two.send(r#"{"cmd":"publish","as":"alice","status":"busy","note":"alice on the shared line"}"#);
    wait_state(&mut carol, &alice_aor, "online", "busy", Some("alice on the shared line"));

    // bob's account, not registered in this process: its requests share alice's connection.
    say(&mut two, &mut carol, "bob", "hello carol, from bob's second account");
    two.send(&format!(r#"{{"cmd":"subscribe","as":"bob","uri":{}}}"#, quote(&alice_aor)));
    two.wait_for("bob sees alice busy", SIP_TIMEOUT, watched("bob", &alice_aor, "busy"));
    let conns = connections_to(two.pid(), &app.edge);
    eprintln!("the two-account agent holds {conns} TLS connection(s) to the edge");
    two.check(conns == 1, || format!("pjsip should share one TLS connection between its accounts, holds {conns}"));
    // bob was proven on that connection by the pool's digest, not let through unchecked.
    let proven = crate::rawsip::Metrics::edge(&app).must(&app, "parapet_edge_identities_proven");
    two.check(proven >= 1, || format!("no identity was proven on the shared connection ({proven})"));

    // Now bob's account registers here too; it publishes, alice watches it, both message carol and hear from her.
    two.send(r#"{"cmd":"register","as":"bob"}"#);
    let ev = two.wait_for("bob's reg", SIP_TIMEOUT, of("bob", "reg"));
    expect_code(&two, &ev, "bob REGISTER", &[200]);
    two.send(&format!(r#"{{"cmd":"subscribe","as":"alice","uri":{}}}"#, quote(&bob_aor)));
    two.send(r#"{"cmd":"publish","as":"bob","status":"away","note":"bob on the shared line"}"#);
    wait_state(&mut carol, &bob_aor, "online", "away", Some("bob on the shared line"));
    two.wait_for("alice sees bob away", SIP_TIMEOUT, watched("alice", &bob_aor, "away"));
    for user in ["alice", "bob"] {
        say(&mut two, &mut carol, user, &format!("hello carol, from {user} on the shared line"));
        let reply = format!("hello {user}, from carol");
        let st = carol.message(&aor(&app, user), &reply);
        expect_code(&carol, &st, &format!("carol -> {user} MESSAGE"), &[200]);
        let m = two.wait_for(&format!("{user}'s message"), SIP_TIMEOUT, of(user, "message"));
        two.check(m.str("text") == Some(reply.as_str()), || format!("{user} received a different text: {m}"));
    }
    let errors = two.pending("error");
    two.check(errors.is_empty(), || format!("the two-account agent reported errors: {errors:?}"));
    let conns = connections_to(two.pid(), &app.edge);
    two.check(conns == 1, || format!("the accounts stopped sharing one connection: {conns}"));
}
