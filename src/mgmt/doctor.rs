//! `parapet doctor -c FILE`: checks the host and the config before a start and says exactly what to change.
//!
//! One line per check, `ok`, `warn` (worth knowing, does not stop a start) or `FAIL` (the start would fail, hang
//! or serve badly); exits non-zero when any check fails. The memlock check is the one the roles themselves run
//! at start ([`crate::shard::io_memory_per_executor`]), so doctor and a start say the same thing.

use std::path::Path;

use crate::config::{certs, Config};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

pub struct Finding {
    pub level: Level,
    pub check: &'static str,
    pub text: String,
}

fn ok(check: &'static str, text: impl Into<String>) -> Finding {
    Finding { level: Level::Ok, check, text: text.into() }
}
fn warn(check: &'static str, text: impl Into<String>) -> Finding {
    Finding { level: Level::Warn, check, text: text.into() }
}
fn fail(check: &'static str, text: impl Into<String>) -> Finding {
    Finding { level: Level::Fail, check, text: text.into() }
}

/// Open files an edge should be allowed (each user connection is one descriptor); below the pool's figure it fails.
const NOFILE_EDGE_MIN: u64 = 65_536;
/// A pool holds few connections (the edges') but files and the store.
const NOFILE_POOL_MIN: u64 = 4_096;

/// Runs every check; prints them; Err when one failed.
pub fn run(config_path: &Path) -> Result<(), String> {
    let findings = check(config_path);
    let mut failed = 0;
    for f in &findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => {
                failed += 1;
                "FAIL"
            }
        };
        println!("{tag} {}: {}", f.check, f.text);
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("doctor: {failed} problem(s): change what the FAIL line(s) above say"))
    }
}

pub fn check(config_path: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    let cfg = match Config::load(config_path).and_then(|c| c.validate().map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            out.push(fail("config", e.to_string()));
            // Host checks still help: the operator fixes both in one go.
            out.push(memlock(1));
            out.extend(io_uring());
            return out;
        }
    };
    out.push(match cfg.check_files() {
        Ok(()) => ok("config", format!("{} valid, its files usable", config_path.display())),
        Err(e) => fail("config", e.to_string()),
    });
    let executors = cfg.edge.as_ref().map_or(0, |e| e.cores.len()) + cfg.pool.as_ref().map_or(0, |p| p.cores.len());
    out.push(memlock(executors));
    out.push(nofile(&cfg));
    out.extend(io_uring());
    out.extend(ports(&cfg));
    out.push(clock());
    out.extend(certificates(&cfg));
    if let Some(p) = &cfg.pool {
        out.push(store(cfg.store.as_ref(), &p.database));
    }
    out.extend(names(&cfg));
    out
}

fn memlock(executors: usize) -> Finding {
    // The same share the roles use when started side by side by `up`.
    let share: usize = std::env::var("PARAPET_MEMLOCK_SHARE").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    match crate::shard::io_memory_per_executor(executors.max(1), share) {
        Ok(per) => ok("memlock", format!("RLIMIT_MEMLOCK allows {} KiB of io memory per executor", per / 1024)),
        Err(e) => fail("memlock", e),
    }
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    (unsafe { libc::getrlimit(resource, &mut rl) } == 0).then_some((rl.rlim_cur, rl.rlim_max))
}

fn nofile(cfg: &Config) -> Finding {
    let federation: u64 = cfg
        .edge
        .as_ref()
        .and_then(|e| e.federation.as_ref())
        .map_or(0, |f| f.partners.iter().map(|p| u64::from(p.limits.connections_max)).sum());
    let (want, need) = if cfg.edge.is_some() { (NOFILE_EDGE_MIN, NOFILE_POOL_MIN) } else { (NOFILE_POOL_MIN, 1024) };
    let (want, need) = (want + federation, need + federation);
    let advice = format!("`ulimit -n {want}`, LimitNOFILE={want} in the unit");
    match rlimit(libc::RLIMIT_NOFILE) {
        Some((cur, _)) if cur == libc::RLIM_INFINITY || cur >= want => {
            ok("nofile", format!("RLIMIT_NOFILE {cur} (one descriptor per connection; {want} wanted)"))
        }
        Some((cur, max)) if cur >= need => warn(
            "nofile",
            format!("RLIMIT_NOFILE is {cur} (hard {max}): at most ~{cur} connections at once; for more: {advice}"),
        ),
        Some((cur, max)) => fail(
            "nofile",
            format!(
                "RLIMIT_NOFILE is {cur} (hard {max}): every connection takes one descriptor, so at most ~{cur} \
                 connections (at least {need} needed): raise it ({advice})"
            ),
        ),
        None => warn("nofile", "cannot read RLIMIT_NOFILE"),
    }
}

fn io_uring() -> Vec<Finding> {
    let mut out = Vec::new();
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map(|s| s.trim().to_string()) {
        Ok(v) if v == "0" => out.push(ok("io_uring sysctl", "kernel.io_uring_disabled = 0")),
        Ok(v) => out.push(fail(
            "io_uring sysctl",
            format!("kernel.io_uring_disabled = {v}: set it to 0 (`sysctl -w kernel.io_uring_disabled=0`)"),
        )),
        // Kernels before 6.6 have no such switch.
        Err(_) => out.push(ok("io_uring sysctl", "no kernel.io_uring_disabled (kernel before 6.6)")),
    }
    out.push(match probe_ring() {
        Ok(()) => ok("io_uring ring", "a probe ring could be set up"),
        Err(e) => fail(
            "io_uring ring",
            format!(
                "io_uring_setup failed: {e}; a kernel of 5.8 or later is needed, and in a container a seccomp \
                 profile that allows io_uring_setup, io_uring_enter and io_uring_register (Docker's default \
                 blocks them; see tuning/README.md)"
            ),
        ),
    });
    out
}

/// Sets up (and closes) a small io_uring: what each executor does first.
fn probe_ring() -> Result<(), std::io::Error> {
    // struct io_uring_params is 120 bytes; all zero asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes the params buffer we own, of the size the kernel expects.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 8u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: closing the descriptor we were just given.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

fn ports(cfg: &Config) -> Vec<Finding> {
    let mut addrs = Vec::new();
    if let Some(e) = &cfg.edge {
        addrs.push(("[edge] listen", e.listen));
        addrs.push(("[edge] internal_listen", e.internal_listen));
        if let Some(l) = e.federation.as_ref().and_then(|f| f.listen) {
            addrs.push(("[edge.federation] listen", l));
        }
    }
    if let Some(p) = &cfg.pool {
        addrs.push(("[pool] listen", p.listen));
    }
    if let Some(m) = &cfg.mgmt {
        addrs.push(("[mgmt] listen", m.listen));
    }
    addrs
        .into_iter()
        .map(|(key, a)| match std::net::TcpListener::bind(a) {
            Ok(_) => ok("port", format!("{key} {a} free")),
            Err(e) => fail("port", format!("{key} {a}: {e} (another process, or parapet already running?)")),
        })
        .collect()
}

fn clock() -> Finding {
    // SAFETY: adjtimex with modes 0 only reads the kernel's clock state into the struct we own.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let state = unsafe { libc::adjtimex(&mut tx) };
    match state {
        s if s < 0 => warn("clock", format!("adjtimex failed: {}", std::io::Error::last_os_error())),
        libc::TIME_ERROR => warn(
            "clock",
            "the kernel says the clock is not synchronized: run an NTP client (chrony, systemd-timesyncd); \
             digest nonces, certificates and reports depend on the time",
        ),
        _ => ok("clock", format!("synchronized (estimated error {} µs)", tx.esterror)),
    }
}

fn certificates(cfg: &Config) -> Vec<Finding> {
    let min_days = cfg.mgmt.as_ref().map_or(crate::config::ops::DEFAULT_CERT_MIN_DAYS, |m| m.cert_min_days);
    let now = certs::now_unix();
    let mut out = Vec::new();
    let mut one = |table: &str, cert: &Path, key: &Path| match certs::check_pair(table, cert, key) {
        Ok(info) => {
            let names = certs::load_certs("", cert)
                .map(|c| crate::net::tls::peer_dns_names(Some(&c)).join(", "))
                .unwrap_or_default();
            let days = info.days_left(now);
            out.push(if days < i64::from(min_days) {
                fail(
                    "certificate",
                    format!("[{table}] cert {}: expires in {days} day(s) (under {min_days}): renew it", cert.display()),
                )
            } else {
                ok(
                    "certificate",
                    format!("[{table}] cert {} ({names}): matches its key, {days} days left", cert.display()),
                )
            });
        }
        Err(e) => out.push(fail("certificate", e.to_string())),
    };
    if let Some(e) = &cfg.edge {
        one("edge", &e.cert, &e.key);
    }
    if let Some(p) = &cfg.pool {
        one("pool", &p.cert, &p.key);
    }
    out
}

fn store(cfg: Option<&crate::config::store::StoreConfig>, database: &Path) -> Finding {
    // Doctor waits a few seconds for a database, not a start's whole `start_timeout_s`.
    let mut cfg = cfg.cloned();
    if let Some(s) = cfg.as_mut() {
        s.start_timeout_s = s.start_timeout_s.min(5);
    }
    let what = crate::store::describe(cfg.as_ref(), database);
    match crate::store::open(cfg.as_ref(), database).and_then(|mut s| s.changed_elsewhere()) {
        Ok(_) => ok("store", format!("{what} opens and answers")),
        Err(e) => fail("store", format!("{what}: {e}")),
    }
}

/// The peer names the roles connect to resolve, or are addresses (names that do not resolve make connections
/// fail later, at the worst time).
fn names(cfg: &Config) -> Vec<Finding> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    let mut domains = vec![cfg.domain.clone()];
    if let Some(f) = cfg.edge.as_ref().and_then(|e| e.federation.as_ref()) {
        domains.extend(f.partners.iter().map(|p| p.domain.clone()));
    }
    for d in domains {
        out.push(match (d.as_str(), 5061).to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => ok("dns", format!("{d} resolves ({})", a.ip())),
            // Our own domain and partners' domains are routed by config, not DNS: worth knowing only.
            _ => {
                warn("dns", format!("{d} does not resolve (fine when every peer is reached by its configured address)"))
            }
        });
    }
    out
}
