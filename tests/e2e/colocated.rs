//! Co-located roles (issue 12): `parapet up` runs the edge and the pool in one process, one executor per core
//! running both, linked in memory. pjsip clients register, message each other and watch presence through it, and
//! no TLS connection between the edge and the pool exists on loopback; `up --perimeter` keeps the two processes
//! over mutual TLS (the other measured configuration), where that connection does exist.

use std::time::{Duration, Instant};

use crate::pjsua::quote;
use crate::presence_pjsip::{publish, registered, wait_state};
use crate::rawsip::{Metrics, Ua};
use crate::support::Appliance;

/// Established TCP connections on loopback with `port` at either end (from `ss`, all processes).
fn connections_on(port: u16) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-Htn", "state", "established"])
        .output()
        .unwrap_or_else(|e| panic!("ss: {e} (iproute2 is needed)"));
    let at = format!("127.0.0.1:{port}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().any(|f| f == at))
        .map(str::to_string)
        .collect()
}

/// The pids of `up`'s children, with their command lines.
fn role_processes(app: &Appliance) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", app.pid())) else { return found };
    for t in tasks.flatten() {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

/// Polls until `done` holds (bounded); whether it did.
fn eventually(timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

#[test]
fn up_colocated_serves_pjsip_without_tls_between_edge_and_pool() {
    let app = Appliance::start("colocated-pjsip");
    let (pool_port, internal_port) = (app.port_base + 1, app.port_base + 2);
    let roles = role_processes(&app);
    if roles.len() != 1 || !roles.iter().all(|(_, c)| c.contains("pool.toml") && c.contains("edge.toml")) {
        app.fail(&format!("expected one process running pool.toml and edge.toml, found {roles:?}"));
    }

    let mut alice = registered(&app, "alice", "alice");
    let mut bob = registered(&app, "bob", "bob");
    let (alice_uri, bob_uri) = (format!("sip:alice@{}", app.domain), format!("sip:bob@{}", app.domain));

    // A MESSAGE each way.
    let st = alice.message(&bob_uri, "over the core mesh, not loopback TLS");
    alice.check(st.int("code") == Some(200), || format!("alice -> bob MESSAGE: {st}"));
    let m = bob.received();
    bob.check(m.str("text") == Some("over the core mesh, not loopback TLS"), || format!("bob received: {m}"));
    let st = bob.message(&alice_uri, "and back");
    bob.check(st.int("code") == Some(200), || format!("bob -> alice MESSAGE: {st}"));
    let m = alice.received();
    alice.check(m.str("text") == Some("and back"), || format!("alice received: {m}"));

    // Presence: bob watches alice, alice publishes.
    bob.send(&format!(r#"{{"cmd":"subscribe","uri":{}}}"#, quote(&alice_uri)));
    wait_state(&mut bob, &alice_uri, "offline", "", None);
    publish(&mut alice, "busy", "co-located");
    wait_state(&mut bob, &alice_uri, "online", "busy", Some("co-located"));

    // Both directions went through in-memory links: the edge's to the pool, the pool's to the edge's internal
    // listener (each counted once per side).
    let (edge, pool) = (Metrics::edge(&app), Metrics::pool(&app));
    let (edge_links, pool_links) =
        (edge.must(&app, "parapet_edge_local_links"), pool.must(&app, "parapet_pool_local_links"));
    if edge_links < 2 || pool_links < 2 {
        app.fail(&format!("local links: edge {edge_links}, pool {pool_links}; expected both ways on both sides"));
    }
    // And no TLS connection between them: nothing is connected to the pool's port or the edge's internal one.
    for port in [pool_port, internal_port] {
        let conns = connections_on(port);
        if !conns.is_empty() {
            app.fail(&format!("loopback connections on port {port} between edge and pool: {conns:?}"));
        }
    }
    alice.quit();
    bob.quit();
}

/// The other measured configuration: `--perimeter` runs two processes, and the edge reaches the pool over a TLS
/// connection on loopback (what the co-located test asserts is absent).
#[test]
fn up_perimeter_keeps_two_processes_over_mutual_tls() {
    let app = Appliance::start_with_args("perimeter-tls", &["--perimeter"]);
    let roles = role_processes(&app);
    let edge = roles.iter().filter(|(_, c)| c.contains("edge.toml") && !c.contains("pool.toml")).count();
    let pool = roles.iter().filter(|(_, c)| c.contains("pool.toml") && !c.contains("edge.toml")).count();
    if (edge, pool) != (1, 1) {
        app.fail(&format!("expected an edge process and a pool process, found {roles:?}"));
    }
    let alice = app.user("alice");
    let mut ua = Ua::connect_ok(&app, "alice", None);
    ua.register_ok(&app, &alice.alias);
    let pool_port = app.port_base + 1;
    if !eventually(Duration::from_secs(10), || !connections_on(pool_port).is_empty()) {
        app.fail(&format!("no TLS connection to the pool's port {pool_port} in the perimeter deployment"));
    }
    let links = Metrics::edge(&app).get("parapet_edge_local_links").unwrap_or(0);
    if links != 0 {
        app.fail(&format!("{links} in-memory links in a two-process deployment"));
    }
}
