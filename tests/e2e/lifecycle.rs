//! `parapet up` itself: generated files, READY line, clean shutdown on SIGTERM.

use std::time::Duration;

use crate::support::Appliance;

#[test]
fn up_creates_data_dir_and_stops_on_sigterm() {
    let mut app = Appliance::start("lifecycle");
    let expect_edge = format!("127.0.0.1:{}", app.port_base);
    if app.edge != expect_edge || app.domain != "example.com" {
        app.fail(&format!("READY line: expected edge={expect_edge} domain=example.com, got {:?}", app.ready_line));
    }
    for f in ["ca.pem", "ca.key", "edge.pem", "edge.key", "pool.pem", "pool.key"] {
        let p = app.data_dir.join("pki").join(f);
        if !p.is_file() {
            app.fail(&format!("missing {}", p.display()));
        }
    }
    for f in ["users.toml", "edge.toml", "pool.toml"] {
        if !app.data_dir.join(f).is_file() {
            app.fail(&format!("missing {}", app.data_dir.join(f).display()));
        }
    }
    if app.ca.canonicalize().ok() != app.data_dir.join("pki/ca.pem").canonicalize().ok() || !app.ca.is_absolute() {
        app.fail(&format!("ca= in READY line is not the absolute path of DIR/pki/ca.pem: {}", app.ca.display()));
    }
    let mut names: Vec<&str> = app.users.iter().map(|u| u.alias.as_str()).collect();
    names.sort_unstable();
    if names != ["alice", "bob", "carol"] {
        app.fail(&format!("users.toml: expected alice, bob, carol; got {names:?}"));
    }
    let mut pws: Vec<&str> = app.users.iter().map(|u| u.password.as_str()).collect();
    pws.sort_unstable();
    pws.dedup();
    if pws.len() != 3 || pws.iter().any(|p| p.trim().is_empty()) {
        app.fail("users.toml: the demo passwords are not three distinct non-empty (random) strings");
    }
    let pid = app.pid();
    match app.sigterm_and_wait(Duration::from_secs(15)) {
        Some(st) if st.code() == Some(0) => {}
        Some(st) => app.fail(&format!("after SIGTERM `parapet up` exited with {st}, expected 0")),
        None => app.fail("`parapet up` still running 15 s after SIGTERM"),
    }
    // Its children (edge, pool) must be gone too: nothing left in its process group.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let alive = loop {
        let alive = live_group_members(pid);
        if alive.is_empty() || std::time::Instant::now() >= deadline {
            break alive;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !alive.is_empty() {
        app.fail(&format!("processes of `parapet up`'s group still running after it exited: {alive:?}"));
    }
    // Nothing listens on the edge port any more.
    if std::net::TcpStream::connect_timeout(&app.edge.parse().expect("addr"), Duration::from_secs(2)).is_ok() {
        app.fail(&format!("{} still accepts connections after shutdown", app.edge));
    }
}

/// Non-zombie processes whose process group is `pgid` ("pid comm" strings), from /proc.
fn live_group_members(pgid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // "pid (comm) state ppid pgrp ..." — comm may contain spaces and parentheses.
        let Some(close) = stat.rfind(')') else { continue };
        let comm = stat.get(stat.find('(').map_or(0, |i| i + 1)..close).unwrap_or("");
        let mut f = stat[close + 1..].split_whitespace();
        let state = f.next().unwrap_or("");
        let _ppid = f.next();
        let pgrp: u32 = f.next().and_then(|g| g.parse().ok()).unwrap_or(0);
        if pgrp == pgid && state != "Z" && state != "X" {
            out.push(format!("{pid} {comm} ({state})"));
        }
    }
    out
}
