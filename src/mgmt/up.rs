//! `parapet up`: everything a first run needs, with zero setup. Makes (once) a development PKI and demo users
//! under the data folder, writes one config per role, starts the edge and the pool as two processes that talk
//! over mutual TLS exactly as two hosts would, waits until both accept connections, and says where to connect.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::devpki;
use crate::store::directory::Directory;

pub struct UpOptions {
    pub data_dir: PathBuf,
    pub port_base: u16,
    pub cores: usize,
    pub domain: String,
    /// Extra users load1..loadN for loadgen and the benchmarks.
    pub load_users: usize,
    /// false: per-address flood limits lifted (a benchmark from one address), said loudly in the output.
    pub flood_limits: bool,
}

/// Flood limits a benchmark cannot reach from one address (message size, in-flight and queue limits stay).
const NO_FLOOD_LIMITS: &str = "\n[edge.flood]\nconnections_per_ip_max = 4000000000\n\
    new_connections_per_ip_per_s = 1000000000.0\nmessages_per_ip_per_s = 1000000000.0\n\
    messages_per_ip_burst = 1000000000.0\nmessages_per_user_per_s = 1000000000.0\n\
    messages_per_user_burst = 1000000000.0\n";

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longer than a role's own drain deadline, so children exit by themselves.
const STOP_GRACE: Duration = Duration::from_secs(12);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn up(o: &UpOptions) -> Result<(), String> {
    super::run::init_logging("info");
    let ctx = |what: &str, p: &Path, e: std::io::Error| format!("up: {what} {}: {e}", p.display());
    std::fs::create_dir_all(&o.data_dir).map_err(|e| ctx("cannot create", &o.data_dir, e))?;
    let dir = o.data_dir.canonicalize().map_err(|e| ctx("cannot resolve", &o.data_dir, e))?;
    let d = &o.domain;
    let edge_name = format!("edge.{d}");
    let pool_name = format!("pool.{d}");
    let pki = devpki::ensure(
        &dir.join("pki"),
        &["localhost".to_string(), d.clone(), edge_name.clone()],
        std::slice::from_ref(&pool_name),
    )
    .map_err(|e| ctx("cannot make the development PKI in", &dir.join("pki"), e))?;
    let users_file = dir.join("users.toml");
    let users = Directory::write_demo_with_load(&users_file, o.load_users)
        .map_err(|e| ctx("cannot write demo users", &users_file, e))?;

    let (user_port, pool_port, internal_port) = (o.port_base, o.port_base + 1, o.port_base + 2);
    for (what, port) in
        [("remote users' TLS port", user_port), ("pool port", pool_port), ("edge internal port", internal_port)]
    {
        crate::net::listener::ensure_port_free(addr(port), what)
            .map_err(|e| format!("up: {e} (choose another --port-base)"))?;
    }
    let edge_toml = format!(
        "# Written by `parapet up` at every start; copy it elsewhere to customise.\n\
         domain = \"{d}\"\n\n[edge]\ncores = {cores}\nlisten = \"{user}\"\ninternal_listen = \"{internal}\"\n\
         cert = \"pki/edge.pem\"\nkey = \"pki/edge.key\"\nca = \"pki/ca.pem\"\n\n\
         [edge.pool]\nname = \"{pool_name}\"\naddr = \"{pool}\"\n\n[mgmt]\nlisten = \"{mgmt}\"\n",
        mgmt = addr(o.port_base + 3),
        cores = o.cores,
        user = addr(user_port),
        internal = addr(internal_port),
        pool = addr(pool_port),
    );
    let pool_toml = format!(
        "# Written by `parapet up` at every start; copy it elsewhere to customise.\n\
         domain = \"{d}\"\n\n[pool]\ncores = {cores}\nlisten = \"{pool}\"\n\
         cert = \"pki/pool.pem\"\nkey = \"pki/pool.key\"\nca = \"pki/ca.pem\"\ndirectory = \"users.toml\"\n\n\
         [[pool.edges]]\nname = \"{edge_name}\"\naddr = \"{internal}\"\n\n[mgmt]\nlisten = \"{mgmt}\"\n",
        mgmt = addr(o.port_base + 4),
        cores = o.cores,
        pool = addr(pool_port),
        internal = addr(internal_port),
    );
    let edge_toml = if o.flood_limits { edge_toml } else { format!("{edge_toml}{NO_FLOOD_LIMITS}") };
    let edge_cfg = dir.join("edge.toml");
    let pool_cfg = dir.join("pool.toml");
    std::fs::write(&edge_cfg, edge_toml).map_err(|e| ctx("cannot write", &edge_cfg, e))?;
    std::fs::write(&pool_cfg, pool_toml).map_err(|e| ctx("cannot write", &pool_cfg, e))?;

    let set = super::run::signals();
    let mut children = vec![("pool", spawn_role(&pool_cfg)?), ("edge", spawn_role(&edge_cfg)?)];
    if let Err(e) = wait_ready(&mut children, &[addr(user_port), addr(pool_port), addr(internal_port)]) {
        stop(&mut children);
        return Err(e);
    }

    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "PARAPET_READY edge={} domain={d} ca={} users={}",
        addr(user_port),
        pki.ca_cert.display(),
        users_file.display()
    );
    let _ = writeln!(out, "parapet is up.");
    let _ = writeln!(out, "  SIP domain     {d}");
    let _ = writeln!(
        out,
        "  connect to     sip:{};transport=tls  (names in its certificate: localhost, {d}, {edge_name}, 127.0.0.1)",
        addr(user_port)
    );
    let _ = writeln!(out, "  trust this CA  {}", pki.ca_cert.display());
    let _ = writeln!(out, "  demo users     (digest realm {d})");
    for (alias, pw) in users.iter().filter(|(a, _)| !a.starts_with("load")) {
        let _ = writeln!(out, "    sip:{alias}@{d}  password {pw}");
    }
    if o.load_users > 0 {
        let _ = writeln!(
            out,
            "    and {} load users load1..load{} (passwords in {})",
            o.load_users,
            o.load_users,
            users_file.display()
        );
    }
    let _ = writeln!(
        out,
        "  metrics        http://{}/metrics (edge), http://{}/metrics (pool)",
        addr(o.port_base + 3),
        addr(o.port_base + 4)
    );
    let _ = writeln!(out, "  configs        {} and {}", edge_cfg.display(), pool_cfg.display());
    if !o.flood_limits {
        let _ = writeln!(
            out,
            "  WARNING        per-address flood limits are OFF (--flood-limits off): for benchmarks only"
        );
    }
    let _ = writeln!(out, "Stop with Ctrl-C.");
    drop(out);

    loop {
        let sig = super::run::wait_signal(&set);
        if sig == libc::SIGCHLD {
            if let Some(name) = exited(&mut children) {
                stop(&mut children);
                return Err(format!("up: the {name} process stopped unexpectedly (see its log above)"));
            }
            continue;
        }
        stop(&mut children);
        return Ok(());
    }
}

fn spawn_role(config: &Path) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("up: cannot find my own binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg("-c").arg(config).env("PARAPET_MEMLOCK_SHARE", "2").stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe; it makes the child stop when `up` dies, even by SIGKILL.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| format!("up: cannot start {}: {e}", config.display()))
}

fn exited(children: &mut [(&'static str, Child)]) -> Option<&'static str> {
    for (name, c) in children.iter_mut() {
        if matches!(c.try_wait(), Ok(Some(_))) {
            return Some(name);
        }
    }
    None
}

fn wait_ready(children: &mut [(&'static str, Child)], addrs: &[SocketAddr]) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Some(name) = exited(children) {
            return Err(format!("up: the {name} process failed to start (see its log above)"));
        }
        if addrs.iter().all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok()) {
            return Ok(());
        }
        if start.elapsed() > READY_TIMEOUT {
            return Err(format!("up: edge and pool not accepting on {addrs:?} after {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(children: &mut [(&'static str, Child)]) {
    for (_, c) in children.iter() {
        // SAFETY: sending a signal to our own child by pid.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_GRACE;
    for (_, c) in children.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}
