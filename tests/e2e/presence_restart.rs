//! Restart: the pool is killed (-9) while clients are registered, subscribed and published; when it comes back,
//! its store gives back the registrations, publications and subscriptions, watchers get the current state again
//! without doing anything, and messages reach the registered users.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::pjsua::{quote, Agent, SIP_TIMEOUT};
use crate::support::{self, Appliance, Tail};

/// One role (`parapet run -c <config>`), killed with its group on drop.
pub(crate) struct Role {
    child: Option<Child>,
    pub(crate) stderr: Tail,
}

impl Role {
    pub(crate) fn start(app: &Appliance, config: &Path, port: u16, log: &str) -> Role {
        let mut child = Command::new(support::parapet_bin())
            .arg("run")
            .arg("-c")
            .arg(config)
            .env("PARAPET_MEMLOCK_SHARE", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| app.fail(&format!("cannot start {}: {e}", config.display())));
        let stderr = Tail::default();
        stderr.collect(child.stderr.take().expect("piped"), Some(app.scratch.join(log)), None);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Its own "core ready" too: right after a stop, the old process's socket may still accept for a moment.
        while TcpStream::connect(("127.0.0.1", port)).is_err() || !stderr.last(200).contains("core ready") {
            if Instant::now() >= deadline || matches!(child.try_wait(), Ok(Some(_))) {
                app.fail(&format!("{} not listening on {port}:\n{}", config.display(), stderr.last(40)));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Role { child: Some(child), stderr }
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            support::signal_group(c.id(), libc::SIGKILL);
            let _ = support::wait_timeout(&mut c, Duration::from_secs(5));
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            support::terminate_group(&mut c, Duration::from_secs(5));
        }
    }
}

fn wait_state(agent: &mut Agent, uri: &str, status: &str, activity: &str, note: &str, timeout: Duration) {
    let (uri, status, activity, note) = (uri.to_string(), status.to_string(), activity.to_string(), note.to_string());
    let what = format!("buddy_state {uri} {status}/{activity}/{note}");
    agent.wait_for(&what, timeout, move |e| {
        e.event() == "buddy_state"
            && e.str("uri").is_some_and(|u| u.contains(&uri))
            && e.str("sub_state") == Some("ACTIVE")
            && e.str("status") == Some(status.as_str())
            && e.str("activity") == Some(activity.as_str())
            && e.str("note") == Some(note.as_str())
    });
}

#[test]
fn pool_restart_restores_registrations_presence_and_subscriptions() {
    let mut app = Appliance::start("presence-restart");
    // `up` wrote the configs and the PKI; run the roles ourselves so the pool can die alone.
    if app.sigterm_and_wait(Duration::from_secs(15)).is_none() {
        app.fail("parapet up did not stop");
    }
    app.wait_ports_released();
    let (pool_cfg, edge_cfg) = (app.data_dir.join("pool.toml"), app.data_dir.join("edge.toml"));
    let (user_port, pool_port) = (app.port_base, app.port_base + 1);
    let mut pool = Role::start(&app, &pool_cfg, pool_port, "pool-1.stderr");
    let _edge = Role::start(&app, &edge_cfg, user_port, "edge.stderr");

    let (alice_u, bob_u) = (app.user("alice"), app.user("bob"));
    let mut alice = Agent::spawn(&app, "alice", &alice_u.alias, &alice_u.password);
    let mut bob = Agent::spawn(&app, "bob", &bob_u.alias, &bob_u.password);
    for a in [&mut alice, &mut bob] {
        let ev = a.register();
        a.check(ev.int("code") == Some(200), || format!("REGISTER: {ev}"));
    }
    let bob_uri = format!("sip:bob@{}", app.domain);
    alice.send(&format!(r#"{{"cmd":"subscribe","uri":{}}}"#, quote(&bob_uri)));
    bob.send(r#"{"cmd":"publish","status":"busy","note":"Before the crash"}"#);
    wait_state(&mut alice, &bob_uri, "online", "busy", "Before the crash", Duration::from_secs(10));
    // Write-behind: give the store thread a moment to commit (it commits within milliseconds).
    thread::sleep(Duration::from_millis(700));

    pool.kill9();
    // The kernel may hold a dead io_uring process's sockets for a moment after it is reaped.
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", pool_port)).is_ok() {
        if Instant::now() >= deadline {
            app.fail("the killed pool's port is still accepting");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _pool = Role::start(&app, &pool_cfg, pool_port, "pool-2.stderr");

    // Nobody did anything: the restored subscription gets the restored state.
    wait_state(&mut alice, &bob_uri, "online", "busy", "Before the crash", Duration::from_secs(15));
    // bob's restored binding takes a MESSAGE without him registering again.
    let st = alice.message(&bob_uri, "still there after the restart?");
    alice.check(st.int("code") == Some(200), || format!("alice -> bob after the restart: {st}"));
    let m = bob.received();
    bob.check(m.str("text") == Some("still there after the restart?"), || format!("bob got {m}"));
    // bob's publication (and its entity-tag) survived: his modification is accepted and reaches alice.
    bob.send(r#"{"cmd":"publish","status":"online","note":"After the restart"}"#);
    wait_state(&mut alice, &bob_uri, "online", "", "After the restart", SIP_TIMEOUT);
    let _ = pool.stderr.last(1);
}
