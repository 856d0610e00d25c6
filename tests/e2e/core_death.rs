//! No process goes on with a dead core: one core of a role is killed on purpose (`POST /debug/panic?core=1` on
//! the management listener, which only debug builds have: the tests run debug binaries) by a panic inside one of
//! its spawned tasks. `parapet run` must exit non-zero at once; under `parapet up` the role is restarted and
//! serves again.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::rawsip::{text, Ua};
use crate::support::Appliance;

/// How long a panicking core may take to end its process (it panics at its next beat, within a second).
const DEATH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `up` may take to have a restarted role serving again (back-off, ports released, start-up).
const BACK_TIMEOUT: Duration = Duration::from_secs(45);

/// `POST path` on the management port; the status line and body.
fn http_post(port: u16, path: &str) -> Result<String, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    // One write: the management server reads the request with a single read(2).
    s.write_all(format!("POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .map_err(|e| format!("write {addr}: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("read {addr}{path}: {e}"))?;
    Ok(out)
}

fn kill_core(app: &Appliance, mgmt_port: u16, core: usize) {
    let path = format!("/debug/panic?core={core}");
    match http_post(mgmt_port, &path) {
        Ok(r) if r.starts_with("HTTP/1.1 200") => {}
        Ok(r) => app.fail(&format!("POST {path} on {mgmt_port}: expected 200, got\n{r}")),
        Err(e) => app.fail(&format!("POST {path} on {mgmt_port}: {e}")),
    }
}

/// Waits until `needle` has appeared `n` times in the appliance's stderr.
fn wait_log(app: &Appliance, needle: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while app.stderr.last(400).matches(needle).count() < n {
        if Instant::now() >= deadline {
            app.fail(&format!("{needle:?} not logged {n} time(s) within {timeout:?}"));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// REGISTERs alice on a fresh connection until it gets 200 (the role just restarted may still be starting).
fn register_until_ok(app: &Appliance, label: &str, timeout: Duration) {
    let u = app.user("alice");
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match Ua::connect(app, label, None).and_then(|mut ua| ua.register(&u.alias, &u.password)) {
            Ok(r) if r.status() == Some(200) => return,
            Ok(r) => last = text(&r),
            Err(e) => last = e,
        }
        thread::sleep(Duration::from_millis(300));
    }
    app.fail(&format!("{label}: no REGISTER 200 within {timeout:?} after the restart; last answer:\n{last}"));
}

#[test]
fn a_dead_core_ends_the_process() {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: only debug builds can kill a core on purpose");
        return;
    }
    let mut app = Appliance::prepare("core-death-run", &["--cores", "2"]);
    app.run_roles("", &[]);
    let edge_mgmt = app.port_base + 3;
    if let Err(e) = crate::rawsip::http_get(edge_mgmt, "/health") {
        app.fail(&format!("/health before the panic: {e}"));
    }
    kill_core(&app, edge_mgmt, 1);
    let started = Instant::now();
    match app.wait_role_exit("edge", DEATH_TIMEOUT) {
        None => app.fail(&format!("the edge still runs {DEATH_TIMEOUT:?} after its core 1 panicked")),
        Some(st) if st.success() => app.fail(&format!("the edge exited with {st} after a core panicked")),
        Some(st) if st.code() != Some(101) => app.fail(&format!("the edge exited with {st}, expected 101")),
        Some(_) => {}
    }
    eprintln!("edge exited {:?} after the panic request", started.elapsed());
    if !app.stderr.last(400).contains("edge core 1 panicked") {
        app.fail("the edge's log does not say which core panicked");
    }
    // The other role is untouched: a dead core ends its own process only.
    if app.wait_role_exit("pool", Duration::ZERO).is_some() {
        app.fail("the pool exited too");
    }
}

#[test]
fn up_restarts_a_role_whose_core_died() {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: only debug builds can kill a core on purpose");
        return;
    }
    // Two processes (the perimeter deployment), so that each role's death and restart can be told apart.
    let mut app = Appliance::start_with_args("core-death-up", &["--cores", "2", "--perimeter"]);
    let mut ua = Ua::connect_ok(&app, "alice-before", None);
    ua.register_ok(&app, "alice");

    // The pool: the edge stays up and reconnects to the restarted pool.
    kill_core(&app, app.port_base + 4, 1);
    wait_log(&app, "pool core 1 panicked", 1, DEATH_TIMEOUT);
    wait_log(&app, "restarted the pool process", 1, DEATH_TIMEOUT);
    register_until_ok(&app, "alice-after-pool", BACK_TIMEOUT);

    // The edge: clients connect again to the restarted one.
    kill_core(&app, app.port_base + 3, 1);
    wait_log(&app, "edge core 1 panicked", 1, DEATH_TIMEOUT);
    wait_log(&app, "restarted the edge process", 1, DEATH_TIMEOUT);
    register_until_ok(&app, "alice-after-edge", BACK_TIMEOUT);

    if let Some(st) = app.up_exited() {
        app.fail(&format!("`parapet up` exited ({st}) instead of restarting its roles"));
    }
    // Still stops cleanly.
    match app.sigterm_and_wait(Duration::from_secs(20)) {
        Some(st) if st.code() == Some(0) => {}
        Some(st) => app.fail(&format!("after SIGTERM `parapet up` exited with {st}, expected 0")),
        None => app.fail("`parapet up` still running 20 s after SIGTERM"),
    }
}
