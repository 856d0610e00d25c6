//! Internal links under bursts (issue 10): the edge's link to the pool is pushed back on, never closed as a slow
//! reader, and the notices it carries are not lost.
//!
//! 1,000 registered users (each its own TLS connection, digest-registered) disconnect within one second: the edge
//! sends one flow-closed notice per AOR, far more than a user's write-queue bound (256) at once on each core. The
//! pool link must stay up and the pool must drop every binding made through those flows.

use std::thread;
use std::time::{Duration, Instant};

use crate::rawsip::*;
use crate::support::Appliance;

const USERS: usize = 1000;
/// Registering threads (each registers its share of the users, one after the other).
const REGISTRARS: usize = 8;

/// Polls a pool metric until `done` holds for it (bounded); returns the last value.
fn wait_pool_metric(app: &Appliance, name: &str, timeout: Duration, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = Metrics::pool(app).must(app, name);
        if done(v) || Instant::now() >= deadline {
            return v;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_thousand_users_leaving_at_once_keep_the_pool_link_and_drop_their_bindings() {
    let app = Appliance::start_with_args(
        "internal-links-mass-leave",
        &["--load-users", &USERS.to_string(), "--flood-limits", "off"],
    );
    // Let the sweeps publish their gauges once.
    thread::sleep(Duration::from_millis(1200));
    let (e0, p0) = (Metrics::edge(&app), Metrics::pool(&app));
    let slow0 = e0.must(&app, "parapet_edge_slow_readers_closed");
    let links0 = e0.get("parapet_edge_internal_links_closed").unwrap_or(0);
    let closed0 = p0.must(&app, "parapet_pool_bindings_of_closed_flows");
    let bindings0 = p0.must(&app, "parapet_pool_bindings_now");

    // 1,000 users, each on its own connection, registered with digest.
    let t_reg = Instant::now();
    let shares: Vec<Vec<usize>> =
        (0..REGISTRARS).map(|t| (1..=USERS).filter(|i| i % REGISTRARS == t).collect()).collect();
    let mut uas: Vec<Ua> = Vec::with_capacity(USERS);
    thread::scope(|s| {
        let handles: Vec<_> = shares
            .iter()
            .map(|share| {
                let app = &app;
                s.spawn(move || -> Result<Vec<Ua>, String> {
                    let mut mine = Vec::with_capacity(share.len());
                    for i in share {
                        let alias = format!("load{i}");
                        let mut ua = Ua::connect(app, &alias, None)?;
                        let u = app.user(&alias);
                        match ua.register(&u.alias, &u.password)? {
                            r if r.status() == Some(200) => mine.push(ua),
                            r => return Err(format!("REGISTER {alias}: expected 200, got\n{}", text(&r))),
                        }
                    }
                    Ok(mine)
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(Ok(mine)) => uas.extend(mine),
                Ok(Err(e)) => app.fail(&e),
                Err(_) => app.fail("a registering thread panicked"),
            }
        }
    });
    let registered =
        wait_pool_metric(&app, "parapet_pool_bindings_now", Duration::from_secs(10), |v| v >= bindings0 + USERS as u64);
    eprintln!("{USERS} users registered in {:?}; pool bindings_now {bindings0} -> {registered}", t_reg.elapsed());
    if registered < bindings0 + USERS as u64 {
        app.fail(&format!(
            "pool bindings_now {registered}, expected {} after {USERS} registrations",
            bindings0 + USERS as u64
        ));
    }

    // All of them leave at once: every socket shut down in one tight loop (a few milliseconds), so each edge core
    // sees hundreds of flows end together, as when a NAT or a network drops its users.
    let t_leave = Instant::now();
    for ua in &uas {
        let _ = ua.s.sock.shutdown(std::net::Shutdown::Both);
    }
    let leave_time = t_leave.elapsed();
    drop(uas);
    if leave_time >= Duration::from_secs(1) {
        app.fail(&format!("closing {USERS} connections took {leave_time:?}: not a burst"));
    }

    // The pool drops every binding made through them, and no more.
    let closed = wait_pool_metric(&app, "parapet_pool_bindings_of_closed_flows", Duration::from_secs(20), |v| {
        v >= closed0 + USERS as u64
    });
    let after = wait_pool_metric(&app, "parapet_pool_bindings_now", Duration::from_secs(5), |v| v <= bindings0);
    let (e1, p1) = (Metrics::edge(&app), Metrics::pool(&app));
    let slow1 = e1.must(&app, "parapet_edge_slow_readers_closed");
    let links1 = e1.get("parapet_edge_internal_links_closed").unwrap_or(0);
    let pushed_back = e1.get("parapet_edge_internal_queue_full").unwrap_or(0);
    let backlogged = e1.get("parapet_edge_connector_backlogged").unwrap_or(0);
    let dropped = e1.get("parapet_edge_connector_backlog_full").unwrap_or(0);
    eprintln!(
        "{USERS} connections closed in {leave_time:?}: pool bindings_of_closed_flows {closed0} -> {closed}, \
         bindings_now -> {after}; edge slow_readers_closed {slow0} -> {slow1}, internal_links_closed {links0} -> \
         {links1}, internal_queue_full {pushed_back}, connector_backlogged {backlogged}, connector_backlog_full {dropped}; \
         pool slow_readers_closed {}",
        p1.must(&app, "parapet_pool_slow_readers_closed"),
    );
    if slow1 != slow0 || links1 != links0 {
        app.fail(&format!(
            "the edge closed internal links during the burst (slow_readers_closed {slow0} -> {slow1}, \
             internal_links_closed {links0} -> {links1})"
        ));
    }
    if closed != closed0 + USERS as u64 {
        app.fail(&format!(
            "the pool dropped {} bindings of closed flows, expected {USERS} (notices lost?)",
            closed - closed0
        ));
    }
    if after != bindings0 {
        app.fail(&format!("pool bindings_now {after} after the burst, expected {bindings0} as before it"));
    }
    if dropped != 0 {
        app.fail(&format!("the edge's connector dropped {dropped} messages"));
    }

    // The link still carries traffic: a new REGISTER and a MESSAGE.
    let mut bob = Ua::connect_ok(&app, "bob", None);
    bob.register_ok(&app, "bob");
    let mut alice = Ua::connect_ok(&app, "alice", None);
    alice.register_ok(&app, "alice");
    let answer = thread::spawn(move || -> Result<(), String> {
        let req = bob.next_request(ANSWER_TIMEOUT).map_err(|e| format!("bob got no MESSAGE: {e:?}"))?;
        bob.answer_with(&req, 200, "OK", |s| s);
        Ok(())
    });
    match alice.message("bob", "after the burst") {
        Ok(r) if r.status() == Some(200) => {}
        Ok(r) => app.fail(&format!("MESSAGE after the burst: expected 200, got\n{}", text(&r))),
        Err(e) => app.fail(&e),
    }
    match answer.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => app.fail(&e),
        Err(_) => app.fail("bob's thread panicked"),
    }
}
