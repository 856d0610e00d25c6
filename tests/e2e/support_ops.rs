//! Plumbing of the operations tests: roles started with `parapet run -c` that a test can kill and start again,
//! HTTP calls to the management listener with or without a token, bounded waits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{parapet_bin, signal_group, stops_with_the_test, wait_timeout, Appliance, Tail};

/// One role process of the appliance's data dir, started by the test.
pub struct Role {
    pub child: Child,
    pub log: Tail,
}

impl Role {
    /// `parapet run -c <data_dir>/<config>`; its stderr is collected into `log` (and `<scratch>/<name>.N.stderr`).
    pub fn start(app: &Appliance, name: &'static str, config: &str) -> Role {
        let mut cmd = Command::new(parapet_bin());
        cmd.arg("run")
            .arg("-c")
            .arg(app.data_dir.join(config))
            .current_dir(&app.data_dir)
            .env("PARAPET_MEMLOCK_SHARE", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        stops_with_the_test(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| app.fail(&format!("cannot start the {name}: {e}")));
        let log = Tail::default();
        let file = app.scratch.join(format!("{name}.{}.stderr", child.id()));
        log.collect(child.stderr.take().expect("piped"), Some(file), None);
        Role { child, log }
    }

    /// SIGKILL (no drain: the way a crash looks to the other role) and reap.
    pub fn kill(&mut self) {
        signal_group(self.child.id(), libc::SIGKILL);
        let _ = wait_timeout(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal_group(self.child.id(), libc::SIGTERM);
            if wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
                signal_group(self.child.id(), libc::SIGKILL);
                let _ = wait_timeout(&mut self.child, Duration::from_secs(5));
            }
        }
    }
}

/// `method path` on `addr` with an optional bearer token: (status code, body).
pub fn http_at(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("write {addr}: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("read {addr}{path}: {e}"))?;
    let (head, body) =
        out.split_once("\r\n\r\n").ok_or_else(|| format!("{method} {path}: no response head: {out:?}"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} {path}: bad status line {head:?}"))?;
    Ok((code, body.to_string()))
}

/// As [`http_at`], on 127.0.0.1:`port`.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    http_at(SocketAddr::from(([127, 0, 0, 1], port)), method, path, token)
}

/// Polls `probe` every 100 ms until it returns Ok, failing the test after `timeout` with `what` and the last
/// thing `probe` reported.
pub fn wait_for<T>(app: &Appliance, what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            app.fail(&format!("{what}: not within {timeout:?}; last: {last}"));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `parapet <args>` to completion (bounded); (success, stdout+stderr).
pub fn parapet(dir: &Path, args: &[&str], wrap: Option<&[&str]>) -> (bool, String) {
    let mut cmd = match wrap {
        Some(w) => {
            let mut c = Command::new(w.first().copied().unwrap_or("env"));
            c.args(w.get(1..).unwrap_or(&[])).arg(parapet_bin());
            c
        }
        None => Command::new(parapet_bin()),
    };
    cmd.args(args).current_dir(dir).env("PARAPET_MEMLOCK_SHARE", "2");
    match crate::support::run_bounded(&mut cmd, Duration::from_secs(30)) {
        Ok(out) => (true, out),
        Err(out) => (false, out),
    }
}

/// Builds the workspace's load generator (same profile as this test) and returns its path.
pub fn loadgen_bin() -> PathBuf {
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(crate::support::repo_root()).args(["build", "--quiet", "-p", "loadgen", "--bin", "loadgen"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("cargo build -p loadgen: {e}"));
    assert!(out.status.success(), "cargo build -p loadgen:\n{}", String::from_utf8_lossy(&out.stderr));
    crate::support::target_dir().join(profile).join("loadgen")
}

/// Runs `loadgen <args> --json <out>` (bounded) and returns its JSON report.
pub fn loadgen_json(dir: &Path, args: &[&str], out: &Path) -> serde_json::Value {
    let mut cmd = Command::new(loadgen_bin());
    cmd.current_dir(dir).args(args).arg("--json").arg(out);
    let log = crate::support::run_bounded(&mut cmd, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("loadgen {}: {e}", args.join(" ")));
    let text = std::fs::read_to_string(out).unwrap_or_else(|e| panic!("loadgen {}: {e}\n{log}", args.join(" ")));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("loadgen --json: {e}: {text}"))
}
