//! Routing rules with a real SIP stack (pjsip agents) against a real appliance whose pool config carries
//! `[[routing.rules]]`: a rejecting rule (the client sees the rule's code and reason), a diverting rule (a
//! MESSAGE to `helpdesk@` reaches bob), an auto-reply (the sender gets the text back From the address it wrote
//! to), and a reload without restart (the file edited, the new rule in force within seconds, counted).

use std::time::{Duration, Instant};

use crate::pjsua::Agent;
use crate::rawsip::Metrics;
use crate::support::Appliance;

fn aor(app: &Appliance, user: &str) -> String {
    format!("sip:{user}@{}", app.domain)
}

const RULES: &str = r#"
[[routing.rules]]
name = "no-carol"
to = "carol@example.com"
method = "MESSAGE"
action = "reject"
code = 403
reason = "Forbidden: carol takes no IM"

[[routing.rules]]
name = "desk"
priority = 10
to = "helpdesk@example.com"
content_type = "text/plain"
action = "divert"
target = "sip:bob@example.com"

[[routing.rules]]
name = "away"
to = "away@example.com"
action = "auto-reply"
text = "I am away until Monday"
"#;

fn code(ev: &crate::pjsua::Json) -> i64 {
    ev.int("code").unwrap_or(0)
}

#[test]
fn routing_rules_reject_divert_autoreply_and_reload_with_pjsip() {
    let mut app = Appliance::prepare("routing-rules", &[]);
    let pool_cfg = app.data_dir.join("pool.toml");
    let base = std::fs::read_to_string(&pool_cfg).unwrap_or_else(|e| app.fail(&e.to_string()));
    std::fs::write(&pool_cfg, format!("{base}\n{RULES}")).unwrap_or_else(|e| app.fail(&e.to_string()));
    app.run_roles("", &[]);

    let (alice_u, bob_u) = (app.user("alice"), app.user("bob"));
    let mut alice = Agent::spawn(&app, "alice", &alice_u.alias, &alice_u.password);
    let mut bob = Agent::spawn(&app, "bob", &bob_u.alias, &bob_u.password);
    let ev = alice.register();
    alice.check(code(&ev) == 200, || format!("alice REGISTER: {ev}"));
    let ev = bob.register();
    bob.check(code(&ev) == 200, || format!("bob REGISTER: {ev}"));

    // Rejecting rule.
    let st = alice.message(&aor(&app, "carol"), "hello carol");
    alice.check(code(&st) == 403, || format!("alice -> carol: expected the rule's 403, got {st}"));
    alice.check(st.str("reason") == Some("Forbidden: carol takes no IM"), || format!("reason phrase: {st}"));

    // Diverting rule: helpdesk is nobody's account; bob gets the conversation.
    let st = alice.message(&aor(&app, "helpdesk"), "my printer is on fire");
    alice.check(code(&st) == 200, || format!("alice -> helpdesk: expected 200 from bob, got {st}"));
    let m = bob.received();
    bob.check(m.str("text") == Some("my printer is on fire"), || format!("bob received: {m}"));
    bob.check(m.str("from").is_some_and(|f| f.contains("alice@example.com")), || format!("From kept: {m}"));

    // Auto-reply: 200 at once, then the text From the address alice wrote to.
    let st = alice.message(&aor(&app, "away"), "are you there?");
    alice.check(code(&st) == 200, || format!("alice -> away: expected 200, got {st}"));
    let m = alice.received();
    alice.check(m.str("text") == Some("I am away until Monday"), || format!("auto-reply text: {m}"));
    alice.check(m.str("from").is_some_and(|f| f.contains("away@example.com")), || format!("auto-reply From: {m}"));

    let metrics = Metrics::pool(&app);
    assert_eq!(metrics.must(&app, "parapet_pool_rule_hits_no_carol"), 1);
    assert_eq!(metrics.must(&app, "parapet_pool_rule_hits_desk"), 1);
    assert_eq!(metrics.must(&app, "parapet_pool_rule_hits_away"), 1);

    // Reload without a restart: a broken edit changes nothing, a good one replaces the rules.
    std::fs::write(&pool_cfg, format!("{base}\n{RULES}\n[[routing.rules]]\nname = \"broken\"\naction = \"explode\"\n"))
        .unwrap_or_else(|e| app.fail(&e.to_string()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Metrics::pool(&app).must(&app, "parapet_pool_rules_reload_errors") == 0 {
        if Instant::now() >= deadline {
            app.fail("the broken rules file was not noticed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = alice.message(&aor(&app, "carol"), "still no?");
    alice.check(code(&st) == 403, || format!("the old rules stay after a bad edit: {st}"));
    let edited = RULES.replace("code = 403", "code = 488").replace("carol takes no IM", "reloaded");
    std::fs::write(&pool_cfg, format!("{base}\n{edited}")).unwrap_or_else(|e| app.fail(&e.to_string()));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = alice.message(&aor(&app, "carol"), "and now?");
        if code(&st) == 488 {
            alice.check(st.str("reason") == Some("Forbidden: reloaded"), || format!("reloaded reason: {st}"));
            break;
        }
        alice.check(code(&st) == 403 && Instant::now() < deadline, || format!("after the reload: {st}"));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(Metrics::pool(&app).must(&app, "parapet_pool_rules_reloads") >= 1);
}

/// `direction = "remote"`: with `[edge] internal_networks = ["127.0.0.1/32"]`, a user connecting from 127.0.0.2 is
/// remote (the edge marks its requests) and the rule refuses its MESSAGE to bob; the same MESSAGE from a user on
/// 127.0.0.1 (internal) is delivered, and bob never sees the edge's mark.
#[test]
fn routing_rule_matches_remote_users_only() {
    use crate::rawsip::Ua;
    use std::net::Ipv4Addr;
    let mut app = Appliance::prepare("routing-remote", &[]);
    let pool_cfg = app.data_dir.join("pool.toml");
    let base = std::fs::read_to_string(&pool_cfg).unwrap_or_else(|e| app.fail(&e.to_string()));
    let rule = "\n[[routing.rules]]\nname = \"no-remote-to-bob\"\nto = \"bob@example.com\"\ndirection = \"remote\"\n\
                action = \"reject\"\ncode = 403\nreason = \"Forbidden: not from outside\"\n";
    std::fs::write(&pool_cfg, format!("{base}{rule}")).unwrap_or_else(|e| app.fail(&e.to_string()));
    let edge_cfg = app.data_dir.join("edge.toml");
    let edge = std::fs::read_to_string(&edge_cfg).unwrap_or_else(|e| app.fail(&e.to_string()));
    if !edge.contains("[edge]\n") {
        app.fail(&format!("edge.toml has no [edge] table:\n{edge}"));
    }
    let edge = edge.replacen("[edge]\n", "[edge]\ninternal_networks = [\"127.0.0.1/32\"]\n", 1);
    std::fs::write(&edge_cfg, edge).unwrap_or_else(|e| app.fail(&e.to_string()));
    app.run_roles("", &[]);

    let mut bob = Ua::connect_ok(&app, "bob", None);
    bob.register_ok(&app, "bob");
    let mut outside = Ua::connect_ok(&app, "alice-outside", Some(Ipv4Addr::new(127, 0, 0, 2)));
    outside.register_ok(&app, "alice");
    let r = outside.message("bob", "from outside").unwrap_or_else(|e| app.fail(&e));
    assert_eq!(r.status(), Some(403), "remote alice → bob: {}", String::from_utf8_lossy(r.bytes()));
    assert_eq!(r.reason(), Some(&b"Forbidden: not from outside"[..]));

    let mut inside = Ua::connect_ok(&app, "carol-inside", None);
    inside.register_ok(&app, "carol");
    let delivered = std::thread::scope(|s| {
        let answering = s.spawn(|| {
            let req =
                bob.next_request(Duration::from_secs(10)).map_err(|e| format!("no MESSAGE reached bob: {e:?}"))?;
            let leaked = req.header(parapet::sip::HeaderName::ParapetRemote).is_some();
            let _ = bob.answer_with(&req, 200, "OK", |b| b);
            Ok::<_, String>((req.body() == b"from inside", leaked))
        });
        let r = inside.message("bob", "from inside");
        (answering.join(), r)
    });
    match delivered {
        (Ok(Ok((true, false))), Ok(r)) if r.status() == Some(200) => {}
        other => app.fail(&format!("internal carol → bob: expected delivery and 200, got {other:?}")),
    }
    assert_eq!(Metrics::pool(&app).must(&app, "parapet_pool_rule_hits_no_remote_to_bob"), 1);
}
