//! Trusted applications end to end: the example bot (`agent/examples/echo.rs`, built here and run as a process
//! of its own) connects to the pool over mutual TLS with the certificate `parapet up` issued for the demo
//! application, registers `sip:echo@example.com`, and pjsip users talk to it: a MESSAGE to it is answered and its
//! reply reaches the user, or it hands the MESSAGE on to another user (a 302); a `deliver` rule hands it a MESSAGE
//! for another address, a `fork` rule a copy of one between two users (who still get it). A second bot, hung (it
//! never answers), gets its timeout and fallback while other users' IM goes on; with the bot gone the rule's and
//! the application's fallbacks apply. Clients with a certificate from another CA, or with a name no application
//! has, are refused and counted.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::pjsua::Agent;
use crate::rawsip::Metrics;
use crate::support::{self, Appliance, Tail};

const EXTRA: &str = r#"
[[applications]]
name = "slow"
cert_name = "slow.apps.example.com"
agents = ["sip:slow@example.com"]
timeout_ms = 3000
fallback = "reject"
code = 504
reason = "Slow Bot Timeout"

[[routing.rules]]
name = "sales"
to = "sales@example.com"
action = "deliver"
application = "echo"
fallback = "reject"
code = 503
reason = "Sales Bot Down"

[[routing.rules]]
name = "tap"
from = "alice@example.com"
to = "bob@example.com"
action = "fork"
application = "echo"
"#;

/// `cargo build -p agent --example echo` (the test's profile), and where it put the binary.
fn echo_bin() -> PathBuf {
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(support::repo_root()).args(["build", "--quiet", "-p", "agent", "--example", "echo"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    if let Err(e) = support::run_bounded(&mut cmd, Duration::from_secs(600)) {
        panic!("cargo build -p agent --example echo: {e}");
    }
    support::target_dir().join(profile).join("examples").join("echo")
}

/// A bot process; killed (its group) on drop.
struct Bot {
    child: Child,
    out: Tail,
    lines: mpsc::Receiver<String>,
}

impl Drop for Bot {
    fn drop(&mut self) {
        support::terminate_group(&mut self.child, Duration::from_secs(2));
    }
}

fn bot_command(app: &Appliance, cert: &str, agent: &str, extra: &[&str]) -> Command {
    let pki = app.data_dir.join("pki");
    let mut cmd = Command::new(echo_bin());
    cmd.arg("--pool")
        .arg(format!("127.0.0.1:{}", app.port_base + 1))
        .args(["--server-name", &format!("pool.{}", app.domain)])
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join(format!("{cert}.pem")))
        .arg("--key")
        .arg(pki.join(format!("{cert}.key")))
        .args(["--agent", agent])
        .args(extra);
    cmd
}

/// Starts a bot and waits (bounded) for its `AGENT READY` line.
fn start_bot(app: &Appliance, cert: &str, agent: &str, extra: &[&str]) -> Bot {
    let mut cmd = bot_command(app, cert, agent, extra);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    support::stops_with_the_test(&mut cmd);
    let mut child = cmd.spawn().unwrap_or_else(|e| app.fail(&format!("cannot start the bot: {e}")));
    let (out, (tx, lines)) = (Tail::default(), mpsc::channel());
    let log = app.scratch.join(format!("bot-{cert}.log"));
    out.collect(child.stdout.take().expect("piped"), Some(log), Some(tx.clone()));
    out.collect(child.stderr.take().expect("piped"), None, Some(tx));
    let bot = Bot { child, out, lines };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match bot.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) if l.starts_with("AGENT READY") => return bot,
            Ok(_) => {}
            Err(_) => app.fail(&format!("bot {cert} not ready within 20 s:\n{}", bot.out.last(50))),
        }
    }
}

fn code(ev: &crate::pjsua::Json) -> i64 {
    ev.int("code").unwrap_or(0)
}

fn issue(app: &Appliance, stem: &str, name: &str) -> (PathBuf, PathBuf) {
    parapet::config::devpki::issue_leaf(&app.data_dir.join("pki"), stem, &[name.to_string()])
        .unwrap_or_else(|e| app.fail(&format!("issue {stem}: {e}")))
}

/// A bot with this certificate must be turned away: it exits with an error, never registered.
fn refused(app: &Appliance, cert: &str) -> String {
    let mut cmd = bot_command(app, cert, "sip:echo@example.com", &[]);
    match support::run_bounded(&mut cmd, Duration::from_secs(30)) {
        Ok(out) => app.fail(&format!("a bot with certificate {cert} was admitted:\n{out}")),
        Err(e) => {
            assert!(!e.contains("AGENT READY"), "registered with {cert}: {e}");
            e
        }
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
}

#[test]
fn applications_over_mutual_tls_with_pjsip() {
    let mut app = Appliance::prepare("apps-agents", &[]);
    let pool_cfg = app.data_dir.join("pool.toml");
    let base = std::fs::read_to_string(&pool_cfg).unwrap_or_else(|e| app.fail(&e.to_string()));
    assert!(base.contains("[[applications]]"), "`up` configures the demo application:\n{base}");
    std::fs::write(&pool_cfg, format!("{base}\n{EXTRA}")).unwrap_or_else(|e| app.fail(&e.to_string()));
    issue(&app, "slow-app", "slow.apps.example.com");
    // Our CA, a name no application has.
    issue(&app, "stranger-app", "stranger.apps.example.com");
    // Another CA (the demo partners'), the echo application's name.
    let pki = app.data_dir.join("pki");
    copy(&pki.join("partner.test.pem"), &pki.join("foreign-app.pem"));
    copy(&pki.join("partner.test.key"), &pki.join("foreign-app.key"));
    app.run_roles("", &[]);

    let echo = start_bot(&app, "echo-app", "sip:echo@example.com", &[]);
    let hung = start_bot(&app, "slow-app", "sip:slow@example.com", &["--delay-ms", "600000"]);

    let (alice_u, bob_u, carol_u) = (app.user("alice"), app.user("bob"), app.user("carol"));
    let mut alice = Agent::spawn(&app, "alice", &alice_u.alias, &alice_u.password);
    let mut bob = Agent::spawn(&app, "bob", &bob_u.alias, &bob_u.password);
    let mut carol = Agent::spawn(&app, "carol", &carol_u.alias, &carol_u.password);
    for a in [&mut alice, &mut bob, &mut carol] {
        let ev = a.register();
        a.check(code(&ev) == 200, || format!("REGISTER: {ev}"));
    }

    // To the agent address: the bot answers, and its reply (From the agent address) reaches alice.
    let st = alice.message("sip:echo@example.com", "hello bot");
    alice.check(code(&st) == 200, || format!("alice -> echo: {st}"));
    let m = alice.received();
    alice.check(m.str("text") == Some("echo: hello bot"), || format!("the bot's reply: {m}\n{}", echo.out.last(20)));
    alice.check(m.str("from").is_some_and(|f| f.contains("echo@example.com")), || format!("reply From: {m}"));

    // Hand-back with another target: the bot answers 302 with bob as Contact, the pool delivers it to bob.
    let st = alice.message("sip:echo@example.com", "forward to sip:bob@example.com");
    alice.check(code(&st) == 200, || format!("alice -> echo -> bob: {st}"));
    let m = bob.received();
    bob.check(m.str("text") == Some("forward to sip:bob@example.com"), || format!("bob received: {m}"));
    bob.check(m.str("from").is_some_and(|f| f.contains("alice@example.com")), || format!("From kept: {m}"));

    // A `deliver` rule: a MESSAGE to sales@ (nobody's account) goes to the bot.
    let st = alice.message("sip:sales@example.com", "a quote please");
    alice.check(code(&st) == 200, || format!("alice -> sales (deliver rule): {st}"));
    let m = alice.received();
    alice.check(m.str("text") == Some("echo: a quote please"), || format!("delivered to the bot: {m}"));

    // A `fork` rule: bob gets alice's MESSAGE, and the bot a copy (it echoes it back to alice).
    let st = alice.message("sip:bob@example.com", "hi bob");
    alice.check(code(&st) == 200, || format!("alice -> bob (fork rule): {st}"));
    let m = bob.received();
    bob.check(m.str("text") == Some("hi bob"), || format!("bob received: {m}"));
    let m = alice.received();
    alice.check(m.str("text") == Some("echo: hi bob"), || format!("the forked copy reached the bot: {m}"));

    // The hung bot: alice's MESSAGE to it waits; meanwhile carol's IM to bob goes through, and only then (its
    // timeout, 3 s) does alice get the application's fallback.
    let sent = Instant::now();
    alice.send(r#"{"cmd":"message","to":"sip:slow@example.com","text":"anyone?"}"#);
    let st = carol.message("sip:bob@example.com", "quick one");
    carol.check(code(&st) == 200, || format!("carol -> bob while the bot hangs: {st}"));
    let m = bob.received();
    bob.check(m.str("text") == Some("quick one"), || format!("bob received: {m}"));
    let early = alice.pending("message_status");
    alice.check(early.is_empty(), || format!("alice's MESSAGE to the hung bot answered before its timeout: {early:?}"));
    let st = alice.wait_for("the hung bot's fallback", Duration::from_secs(20), |e| {
        e.event() == "message_status" && e.str("to").is_some_and(|t| t.contains("slow@"))
    });
    let waited = sent.elapsed();
    alice.check(code(&st) == 504 && st.str("reason") == Some("Slow Bot Timeout"), || format!("fallback: {st}"));
    alice.check(waited >= Duration::from_millis(2900), || format!("answered after {waited:?}, before the timeout"));

    // The bot gone: the rule's fallback for sales@, the application's (480 by default) for echo@.
    drop(echo);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = alice.message("sip:sales@example.com", "still there?");
        if code(&st) == 503 {
            alice.check(st.str("reason") == Some("Sales Bot Down"), || format!("rule fallback: {st}"));
            break;
        }
        alice.check(Instant::now() < deadline, || format!("the rule's fallback never applied: {st}"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = alice.message("sip:echo@example.com", "hello?");
    alice.check(code(&st) == 480, || format!("alice -> echo with the bot gone: {st}"));

    // Wrong certificates: refused at the handshake (another CA), or after it (a name no application has).
    let before = Metrics::pool(&app);
    let (failed0, refused0) =
        (before.must(&app, "parapet_pool_handshakes_failed"), before.must(&app, "parapet_pool_peers_refused"));
    let e = refused(&app, "foreign-app");
    eprintln!("foreign CA: {}", e.lines().last().unwrap_or(""));
    let e = refused(&app, "stranger-app");
    eprintln!("unknown name: {}", e.lines().last().unwrap_or(""));
    let after = Metrics::pool(&app);
    assert!(after.must(&app, "parapet_pool_handshakes_failed") > failed0, "the foreign CA's handshake is counted");
    assert!(after.must(&app, "parapet_pool_peers_refused") > refused0, "the unknown name is counted");

    assert!(after.must(&app, "parapet_pool_app_echo_delivered") >= 3);
    assert!(after.must(&app, "parapet_pool_app_echo_unavailable") >= 2);
    assert_eq!(after.must(&app, "parapet_pool_app_slow_timed_out"), 1);
    assert!(after.must(&app, "parapet_pool_rule_hits_tap") >= 1);
    drop(hung);
}
