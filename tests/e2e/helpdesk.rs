//! The presence-aware help desk with real SIP stacks (pjsip agents) against a real appliance whose pool config
//! carries a `[[helpdesk]]` (`support@`, beside `up`'s demo desk) with two members, bob and carol. Registered but
//! not published (this desk says `unpublished = "unavailable"`) they get nothing and the sender gets the
//! auto-reply; once both publish open, a first conversation (alice) reaches one of them, a second (load1) the
//! other, alice's next message stays with hers, whose answer reaches alice directly; with bob published closed and
//! carol unregistered, the user gets the auto-reply From the desk. `up`'s demo desk (`helpdesk@`, `unpublished`
//! left at "available") hands a message to one of them as soon as they are registered.

use std::time::{Duration, Instant};

use crate::pjsua::{quote, Agent, Json};
use crate::presence_pjsip::{publish, registered, wait_state};
use crate::rawsip::Metrics;
use crate::support::Appliance;

const AUTO_REPLY: &str = "Nobody is at the help desk right now; we will be back at 8.";

fn desk_config() -> String {
    format!(
        r#"
[[helpdesk]]
address = "sip:support@example.com"
members = ["sip:bob@example.com", "sip:carol@example.com"]
stick_s = 600
auto_reply = "{AUTO_REPLY}"
unpublished = "unavailable"
"#
    )
}

fn aor(app: &Appliance, user: &str) -> String {
    format!("sip:{user}@{}", app.domain)
}

fn code(ev: &Json) -> i64 {
    ev.int("code").unwrap_or(0)
}

/// Which of the agents got a MESSAGE (exactly one must, within the deadline); its event, consumed.
fn who_received(agents: &mut [&mut Agent], what: &str) -> (usize, Json) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<usize> = (0..agents.len()).filter(|&i| !agents[i].pending("message").is_empty()).collect();
        if let [i] = got[..] {
            let m = agents[i].received();
            return (i, m);
        }
        agents[0].check(got.len() <= 1, || format!("{what}: reached several members: {got:?}"));
        agents[0].check(Instant::now() < deadline, || format!("{what}: no member received it"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sender's auto-reply: 200 for its MESSAGE, then the desk's text From the desk.
fn expect_auto_reply(user: &mut Agent, desk: &str, text: &str) {
    let st = user.message(desk, text);
    user.check(code(&st) == 200, || format!("MESSAGE to the desk with nobody there: expected 200, got {st}"));
    let m = user.received();
    user.check(m.str("text") == Some(AUTO_REPLY), || format!("auto-reply text: {m}"));
    user.check(m.str("from").is_some_and(|f| f.contains("support@example.com")), || format!("auto-reply From: {m}"));
}

#[test]
fn helpdesk_round_robin_among_online_members_sticky_and_auto_reply_with_pjsip() {
    let mut app = Appliance::prepare("helpdesk", &["--load-users", "1"]);
    let pool_cfg = app.data_dir.join("pool.toml");
    let base = std::fs::read_to_string(&pool_cfg).unwrap_or_else(|e| app.fail(&e.to_string()));
    std::fs::write(&pool_cfg, format!("{base}\n{}", desk_config())).unwrap_or_else(|e| app.fail(&e.to_string()));
    app.run_roles("", &[]);
    let desk = aor(&app, "support");
    let (bob_uri, carol_uri) = (aor(&app, "bob"), aor(&app, "carol"));

    let mut alice = registered(&app, "alice", "alice");
    let mut load1 = registered(&app, "load1", "load1");
    let mut bob = registered(&app, "bob", "bob");
    let mut carol = registered(&app, "carol", "carol");

    // `up`'s demo desk counts a registered member who published nothing as available (the default).
    let st = alice.message(&aor(&app, "helpdesk"), "hello demo desk");
    alice.check(code(&st) == 200, || format!("alice -> the demo desk: {st}"));
    let (_, m) = who_received(&mut [&mut bob, &mut carol], "the demo desk's message");
    bob.check(m.str("to").is_some_and(|t| t.contains("helpdesk@")), || format!("the demo desk's message: {m}"));

    // Registered, nothing published: this desk counts them unavailable.
    expect_auto_reply(&mut alice, &desk, "anyone there?");

    // Both publish open; alice watches them to know the pool has it.
    for uri in [&bob_uri, &carol_uri] {
        alice.send(&format!(r#"{{"cmd":"subscribe","uri":{}}}"#, quote(uri)));
    }
    publish(&mut bob, "online", "bob at the desk");
    publish(&mut carol, "online", "carol at the desk");
    wait_state(&mut alice, &bob_uri, "online", "", Some("bob at the desk"));
    wait_state(&mut alice, &carol_uri, "online", "", Some("carol at the desk"));

    // The first conversation reaches one member; its final answer is the member's 200.
    let st = alice.message(&desk, "my printer is on fire");
    alice.check(code(&st) == 200, || format!("alice -> desk: {st}"));
    let (first, m) = who_received(&mut [&mut bob, &mut carol], "alice's first message");
    bob.check(m.str("text") == Some("my printer is on fire"), || format!("the member received: {m}"));
    bob.check(m.str("from").is_some_and(|f| f.contains("alice@example.com")), || format!("From kept: {m}"));
    bob.check(m.str("to").is_some_and(|t| t.contains("support@")), || format!("To kept (the desk): {m}"));

    // The next conversation (another user) reaches the other member.
    let st = load1.message(&desk, "I forgot my password");
    load1.check(code(&st) == 200, || format!("load1 -> desk: {st}"));
    let (second, m) = who_received(&mut [&mut bob, &mut carol], "load1's message");
    bob.check(second != first, || format!("both conversations went to member {first}"));
    bob.check(m.str("text") == Some("I forgot my password"), || format!("the other member received: {m}"));

    // alice's next message stays with her member, who answers her directly.
    let st = alice.message(&desk, "it is still burning");
    alice.check(code(&st) == 200, || format!("alice -> desk again: {st}"));
    let (again, _) = who_received(&mut [&mut bob, &mut carol], "alice's second message");
    alice.check(again == first, || format!("alice's conversation moved from member {first} to {again}"));
    let (member, member_uri) = if first == 0 { (&mut bob, &bob_uri) } else { (&mut carol, &carol_uri) };
    let st = member.message(&aor(&app, "alice"), "have you tried water?");
    member.check(code(&st) == 200, || format!("member -> alice: {st}"));
    let m = alice.received();
    alice.check(m.str("text") == Some("have you tried water?"), || format!("the member's answer: {m}"));
    let member_user = member_uri.trim_start_matches("sip:").to_string();
    alice.check(m.str("from").is_some_and(|f| f.contains(&member_user)), || format!("From the member: {m}"));

    // Both offline (bob publishes closed, carol unregisters): load1 gets the auto-reply.
    alice.discard("buddy_state");
    publish(&mut bob, "offline", "gone home");
    carol.send(r#"{"cmd":"unregister"}"#);
    wait_state(&mut alice, &bob_uri, "offline", "", None);
    wait_state(&mut alice, &carol_uri, "offline", "", None);
    expect_auto_reply(&mut load1, &desk, "hello?");
    for (a, who) in [(&mut bob, "bob"), (&mut carol, "carol")] {
        let none = a.pending("message").is_empty();
        a.check(none, || format!("{who} got a message while offline"));
    }

    let metrics = Metrics::pool(&app);
    assert_eq!(metrics.must(&app, "parapet_pool_helpdesk_assigned"), 3, "two here, one at the demo desk");
    assert_eq!(metrics.must(&app, "parapet_pool_helpdesk_sticky"), 1);
    assert_eq!(metrics.must(&app, "parapet_pool_helpdesk_no_agent"), 2);
}
