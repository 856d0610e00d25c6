//! A real PostgreSQL server for a test: Debian's `postgresql` package (installed when missing), a cluster of
//! the test's own under its scratch folder on a free loopback port (`parapet::store::pgcluster`), stopped when
//! the returned [`Cluster`] is dropped.

use parapet::store::pgcluster::{self, Cluster};

use super::support;

/// Makes sure `initdb` and `pg_ctl` are there (installing the package once when they are not).
pub fn ensure_binaries() {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if pgcluster::bin_dir().is_err() {
        support::apt_install(&[pgcluster::PACKAGE]);
    }
    if let Err(e) = pgcluster::bin_dir() {
        panic!("apt-get installed {}, yet: {e}", pgcluster::PACKAGE);
    }
}

/// A running server with an empty `parapet` database, its cluster under `<scratch>/pg`.
pub fn start(name: &str) -> Cluster {
    ensure_binaries();
    let dir = support::scratch_dir(name).join("pg");
    Cluster::start(&dir).unwrap_or_else(|e| panic!("[{name}] cannot start PostgreSQL: {e}"))
}

/// A streaming-replication standby of `primary`, its cluster under `<scratch>/pg`.
pub fn standby(name: &str, primary: &Cluster) -> Cluster {
    let dir = support::scratch_dir(name).join("pg");
    Cluster::start_standby(primary, &dir).unwrap_or_else(|e| panic!("[{name}] cannot start a standby: {e}"))
}
