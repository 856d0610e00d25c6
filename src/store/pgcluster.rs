//! A PostgreSQL server of our own for zero-setup runs (`parapet up --store postgres`) and the tests: `initdb` a
//! cluster under a folder once, start it with `pg_ctl` on a free loopback port (its Unix socket inside the
//! folder, so two clusters never meet), create the `parapet` database, and stop it when the [`Cluster`] is
//! dropped. The binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/<version>/bin`, not on
//! PATH). PostgreSQL refuses to run as root: as root, every step runs as the `postgres` user (`runuser`).
//!
//! Authentication is `trust` on loopback only: a development cluster. A production pool points `[store] url`
//! at a server its operator runs (README).
//!
//! Blocking (processes, waits): call it off the executors.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The Debian package that brings `initdb` and `pg_ctl`.
pub const PACKAGE: &str = "postgresql";
/// The database `up` and the tests use.
pub const DATABASE: &str = "parapet";
/// The superuser `initdb` creates.
pub const SUPERUSER: &str = "postgres";
/// How long `pg_ctl` may take to start or stop the server.
const PG_CTL_WAIT: Duration = Duration::from_secs(60);

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` and `pg_ctl`; the error names the package.
pub fn bin_dir() -> Result<PathBuf, String> {
    bin_dir_in(Path::new("/usr/lib/postgresql"))
}

fn bin_dir_in(root: &Path) -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().split('.').next()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        format!(
            "PostgreSQL server programs (initdb, pg_ctl) not found under {}/<version>/bin: \
             install Debian's `{PACKAGE}` package (apt-get install {PACKAGE})",
            root.display()
        )
    })
}

/// A running local server; stopped on drop.
pub struct Cluster {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Some("postgres") when we are root.
    run_as: Option<&'static str>,
    running: bool,
}

/// `<data_dir>/pg`, made and started when needed; the cluster a previous run left running is reused.
pub fn ensure_cluster(data_dir: &Path) -> Result<Cluster, String> {
    Cluster::start(&data_dir.join("pg"))
}

fn is_root() -> bool {
    // SAFETY: geteuid only reads the process's credentials.
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("postgres: no free loopback port: {e}"))
}

impl Cluster {
    /// Makes (`initdb`) and starts the cluster under `root` (data in `root/data`, socket in `root/run`, log in
    /// `root/server.log`).
    pub fn start(root: &Path) -> Result<Cluster, String> {
        let mut c = Cluster::prepare(root)?;
        if !c.data().join("PG_VERSION").is_file() {
            c.tool("initdb")
                .arg("-D")
                .arg(c.data())
                .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-locale"])
                .output()
                .map_err(|e| format!("postgres: initdb: {e}"))
                .and_then(|o| check(o, "initdb"))?;
        }
        c.port = match c.running_port() {
            Some(port) => port,
            None => {
                // The port of the last run when it is free: the URL in configs written then stays right.
                let last = std::fs::read_to_string(c.root.join("port")).ok().and_then(|p| p.trim().parse::<u16>().ok());
                let port = match last.filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok()) {
                    Some(p) => p,
                    None => free_port()?,
                };
                c.port = port;
                c.pg_ctl_start()?;
                let _ = std::fs::write(c.root.join("port"), format!("{port}\n"));
                port
            }
        };
        c.running = true;
        c.create_database()?;
        Ok(c)
    }

    /// A streaming-replication standby of `primary` under `root` (`pg_basebackup -R`: a copy of the primary that
    /// follows its WAL, read-only until promoted), started on a port of its own. What the README tells an
    /// operator to do, on one machine.
    pub fn start_standby(primary: &Cluster, root: &Path) -> Result<Cluster, String> {
        let mut c = Cluster::prepare(root)?;
        if !c.data().join("PG_VERSION").is_file() {
            let mut cmd = c.tool("pg_basebackup");
            cmd.args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", SUPERUSER, "-D"])
                .arg(c.data())
                // A fast checkpoint: the default spreads it over minutes before the copy starts.
                .args(["-R", "-X", "stream", "-c", "fast"]);
            run(&mut cmd, "pg_basebackup")?;
        }
        c.port = free_port()?;
        c.pg_ctl_start()?;
        c.running = true;
        Ok(c)
    }

    /// Turns a standby into a primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self) -> Result<(), String> {
        let wait = PG_CTL_WAIT.as_secs().to_string();
        self.pg_ctl(&["-w", "-t", &wait, "promote"])
    }

    /// The folder, owned by the server's user when we are root; nothing started yet.
    fn prepare(root: &Path) -> Result<Cluster, String> {
        let bin = bin_dir()?;
        let ctx = |what: &str, p: &Path, e: std::io::Error| format!("postgres: {what} {}: {e}", p.display());
        std::fs::create_dir_all(root.join("run")).map_err(|e| ctx("cannot create", root, e))?;
        let root = root.canonicalize().map_err(|e| ctx("cannot resolve", root, e))?;
        let run_as = is_root().then_some(SUPERUSER);
        if run_as.is_some() {
            make_traversable(&root)?;
            let mut chown = Command::new("chown");
            chown.arg("-R").arg(format!("{SUPERUSER}:")).arg(&root);
            run(&mut chown, "chown")?;
        }
        Ok(Cluster { root, bin, port: 0, run_as, running: false })
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file.
    pub fn log(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// `postgres://postgres@127.0.0.1:<port>/parapet`.
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// A command for one of the server programs, as the server's user when we are root.
    fn tool(&self, name: &str) -> Command {
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.bin.join(name));
                c
            }
            None => Command::new(self.bin.join(name)),
        };
        // The server's user may not be able to enter our working directory; initdb fails in one it cannot.
        cmd.current_dir(&self.root);
        cmd
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D").arg(self.data()).args(args);
        run(&mut cmd, "pg_ctl")
    }

    /// The port of a server already running on this cluster (a previous `up` that was killed).
    fn running_port(&self) -> Option<u16> {
        let mut status = self.tool("pg_ctl");
        status.arg("-D").arg(self.data()).arg("status");
        if !status.output().ok()?.status.success() {
            return None;
        }
        // postmaster.pid, line 4: the port.
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        pid.lines().nth(3)?.trim().parse().ok()
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let opts = format!("-p {} -k '{}' -c listen_addresses=127.0.0.1", self.port, self.root.join("run").display());
        let log = self.log();
        let wait = PG_CTL_WAIT.as_secs().to_string();
        self.pg_ctl(&["-l", &log.to_string_lossy(), "-w", "-t", &wait, "-o", &opts, "start"])
            .map_err(|e| format!("{e}\n(server log: {})", log.display()))
    }

    /// Stops the server (fast shutdown: connections cut, committed data kept).
    pub fn stop(&mut self) -> Result<(), String> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let wait = PG_CTL_WAIT.as_secs().to_string();
        self.pg_ctl(&["-w", "-t", &wait, "-m", "fast", "stop"])
    }

    /// Starts a stopped server again on its port.
    pub fn start_again(&mut self) -> Result<(), String> {
        if self.running {
            return Ok(());
        }
        self.pg_ctl_start()?;
        self.running = true;
        Ok(())
    }

    fn create_database(&self) -> Result<(), String> {
        let url = format!("host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres connect_timeout=10", self.port);
        let mut c = postgres::Client::connect(&url, postgres::NoTls).map_err(|e| format!("postgres: {e}"))?;
        let exists = c
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
            .map_err(|e| format!("postgres: {e}"))?
            .is_some();
        if !exists {
            c.batch_execute(&format!("CREATE DATABASE {DATABASE}")).map_err(|e| format!("postgres: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "postgres: the local server did not stop");
        }
    }
}

fn check(o: std::process::Output, what: &str) -> Result<(), String> {
    if o.status.success() {
        return Ok(());
    }
    Err(format!(
        "postgres: {what} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    ))
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    cmd.output().map_err(|e| format!("postgres: {what}: {e}")).and_then(|o| check(o, what))
}

/// The server's user must be able to walk down to `dir`: add the others' search (x) bit where it is missing.
fn make_traversable(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for a in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(a) else { continue };
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(a, std::fs::Permissions::from_mode(mode | 0o001))
                .map_err(|e| format!("postgres: cannot let the {SUPERUSER} user through {}: {e}", a.display()))?;
            tracing::info!(dir = %a.display(), "postgres: others may now traverse (x) this folder");
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_name_the_package() {
        let dir = std::env::temp_dir().join(format!("parapet-pgbin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let e = bin_dir_in(&dir).unwrap_err();
        assert!(e.contains("install Debian's `postgresql` package (apt-get install postgresql)"), "{e}");
        // Versions compare as numbers, and a folder without both programs does not count.
        for (v, both) in [("9", true), ("15", true), ("16", false)] {
            let bin = dir.join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("initdb"), "").unwrap();
            if both {
                std::fs::write(bin.join("pg_ctl"), "").unwrap();
            }
        }
        assert_eq!(bin_dir_in(&dir).unwrap(), dir.join("15").join("bin"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
