//! An enterprise pool for the end-to-end tests: `parapet up --front-ends 3` writes the configs (one edge, three
//! front ends sharing one PostgreSQL store, the server `up` made under the data folder), then the test starts
//! that server again and runs each role as its own `parapet run -c` process, so that a test can kill -9 one
//! front end, drain one, or start only some.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use parapet::proto::membership::owner;
use parapet::store::members::{now_ms, roster_of};
use parapet::store::pgcluster::Cluster;
use parapet::store::Store;

use crate::support::{self, Appliance, Tail};
use crate::support_pg;

/// The front ends `up --front-ends 3` names.
pub const FRONT_ENDS: [&str; 3] = ["fe1", "fe2", "fe3"];

/// One role process, killed with its group on drop.
pub struct Proc {
    child: Option<Child>,
}

/// `parapet run -c <config>` in the appliance's data folder, its stderr kept as `<log>.stderr` in the scratch
/// folder; returns once it listens on `port` and a core is ready (or the test fails).
pub fn spawn_role(app: &Appliance, log: &str, config: &Path, port: u16) -> Proc {
    let mut cmd = Command::new(support::parapet_bin());
    cmd.arg("run")
        .arg("-c")
        .arg(config)
        .current_dir(&app.data_dir)
        .env("PARAPET_MEMLOCK_SHARE", "4")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    support::stops_with_the_test(&mut cmd);
    let mut child = cmd.spawn().unwrap_or_else(|e| app.fail(&format!("cannot start {}: {e}", config.display())));
    let stderr = Tail::default();
    let path = app.scratch.join(format!("{log}.stderr"));
    stderr.collect(child.stderr.take().expect("piped"), Some(path), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() || !stderr.last(400).contains("core ready") {
        if Instant::now() >= deadline || matches!(child.try_wait(), Ok(Some(_))) {
            app.fail(&format!("{} not listening on {port}:\n{}", config.display(), stderr.last(40)));
        }
        thread::sleep(Duration::from_millis(50));
    }
    Proc { child: Some(child) }
}

impl Proc {
    /// kill -9 of its process group.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            support::signal_group(c.id(), libc::SIGKILL);
            let _ = support::wait_timeout(&mut c, Duration::from_secs(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            support::terminate_group(&mut c, Duration::from_secs(5));
        }
    }
}

pub struct Enterprise {
    pub app: Appliance,
    /// (name, config, pool port), in `FRONT_ENDS` order.
    pub front_ends: Vec<(&'static str, PathBuf, u16)>,
    /// Behind a RefCell so that a test holding a client borrowed from `app` can still kill a role.
    running: std::cell::RefCell<Vec<(&'static str, Proc)>>,
    /// The pool's PostgreSQL server (last: it stops after the roles).
    pg: Cluster,
}

impl Enterprise {
    /// Writes the configs and starts the edge and the front ends named in `start` (the others stay down).
    pub fn start(name: &str, start: &[&str]) -> Enterprise {
        // Front ends 2 and 3 need ports past the appliance's block of 10: a block of their own.
        let b2 = support::free_port_base();
        let args = ["--front-ends", "3", "--front-end-ports", &b2.to_string(), "--federation", "off", "--cores", "1"];
        support_pg::ensure_binaries();
        let mut app = Appliance::start_with_args(name, &args);
        if app.sigterm_and_wait(Duration::from_secs(30)).is_none() {
            app.fail("`parapet up --front-ends 3` did not exit within 30 s of SIGTERM");
        }
        app.wait_ports_released();
        // `up` stopped its server when it ended; the same cluster, on the port the configs name.
        let pg = parapet::store::pgcluster::ensure_cluster(&app.data_dir).unwrap_or_else(|e| app.fail(&e));
        let ports = [app.port_base + 1, b2, b2 + 2];
        let front_ends: Vec<_> =
            FRONT_ENDS.iter().zip(ports).map(|(n, p)| (*n, app.data_dir.join(format!("{n}.toml")), p)).collect();
        let mut e = Enterprise { app, front_ends, running: Default::default(), pg };
        for n in start {
            e.start_front_end(n);
        }
        let edge_cfg = e.app.data_dir.join("edge.toml");
        let p = e.spawn("edge", &edge_cfg, e.app.port_base);
        e.running.get_mut().push(("edge", p));
        e
    }

    fn spawn(&self, log: &str, config: &Path, port: u16) -> Proc {
        spawn_role(&self.app, log, config, port)
    }

    pub fn start_front_end(&mut self, name: &str) {
        let Some((n, cfg, port)) = self.front_ends.iter().find(|(n, _, _)| *n == name).cloned() else {
            self.app.fail(&format!("no front end {name}"));
        };
        let p = self.spawn(n, &cfg, port);
        self.running.get_mut().push((n, p));
    }

    /// kill -9 of one role's process group.
    pub fn kill9(&self, name: &str) {
        let mut running = self.running.borrow_mut();
        let Some(i) = running.iter().position(|(n, _)| *n == name) else {
            self.app.fail(&format!("{name} is not running"));
        };
        let (_, mut p) = running.remove(i);
        if let Some(mut c) = p.child.take() {
            support::signal_group(c.id(), libc::SIGKILL);
            let _ = support::wait_timeout(&mut c, Duration::from_secs(5));
        }
    }

    pub fn pool_config(&self) -> PathBuf {
        self.app.data_dir.join("pool.toml")
    }

    fn store(&self) -> Box<dyn Store> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let store = parapet::store::postgres::PgStore::open(&self.pg.url(), deadline);
        Box::new(store.unwrap_or_else(|e| self.app.fail(&e.to_string())))
    }

    /// The member owning `aor` now by the leases in the store (None: no member may own).
    pub fn owner(&self, aor: &str) -> Option<String> {
        let rows = self.store().members().unwrap_or_else(|e| self.app.fail(&e.to_string()));
        owner(aor, &roster_of(rows), now_ms()).map(|m| m.name.clone())
    }

    /// Waits until `aor`'s owner is no longer `old`; the new owner and how long it took.
    pub fn wait_new_owner(&self, aor: &str, old: &str, timeout: Duration) -> (String, Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(o) = self.owner(aor).filter(|o| o != old) {
                return (o, t0.elapsed());
            }
            if t0.elapsed() > timeout {
                self.app.fail(&format!("{aor} still owned by {old} after {timeout:?}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the store holds soft-state rows of these kinds for `aor` (the write-behind committed).
    pub fn wait_saved(&self, aor: &str, kinds: &[&str], timeout: Duration) {
        let t0 = Instant::now();
        loop {
            let rows = self.store().states_of(aor, now_ms() / 1000).unwrap_or_else(|e| self.app.fail(&e.to_string()));
            if kinds.iter().all(|k| rows.iter().any(|r| r.kind == *k)) {
                return;
            }
            if t0.elapsed() > timeout {
                self.app.fail(&format!("{aor}: no {kinds:?} rows in the store after {timeout:?}: {rows:?}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `parapet <args>` against the pool's config; its stdout, or the test fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(support::parapet_bin());
        cmd.args(args).current_dir(&self.app.data_dir);
        support::run_bounded(&mut cmd, Duration::from_secs(30)).unwrap_or_else(|e| self.app.fail(&e))
    }
}
