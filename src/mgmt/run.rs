//! Running the roles a config names in this process, until SIGTERM or SIGINT; SIGHUP (or `POST /reload` on the
//! management listener) reloads the edge's federation table from the same file ([`crate::edge::reload`]).

use std::path::{Path, PathBuf};

use crate::config::Config;

/// Blocks the signals we wait for, in this thread and (inherited) in every executor thread started after.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the blocked signals; returns its number.
pub fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is a valid initialised set, `sig` a valid out pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// Waits for one of the blocked signals for at most `timeout` (None: no limit); its number, or None when the
/// time is up.
pub fn wait_signal_timeout(set: &libc::sigset_t, timeout: Option<std::time::Duration>) -> Option<i32> {
    let Some(t) = timeout else { return Some(wait_signal(set)) };
    let ts = libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is a valid initialised set, `ts` a valid timespec; no siginfo wanted (null is allowed).
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    // -1: EAGAIN (time is up) or EINTR (another signal handler ran): either way, nothing for the caller.
    (sig > 0).then_some(sig)
}

pub fn signals() -> libc::sigset_t {
    block_signals()
}

pub fn init_logging(filter: &str) {
    init_logging_as(filter, crate::config::ops::LogFormat::Text);
}

/// Logging to stderr, as text or (`log_format = "json"`) one JSON object per line.
pub fn init_logging_as(filter: &str, format: crate::config::ops::LogFormat) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let targets: Targets = filter.parse().unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    if format == crate::config::ops::LogFormat::Json {
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_target(false))
            .with(targets)
            .try_init();
        return;
    }
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(targets)
        .try_init();
}

/// Starts every role in `config_path` and returns only when told to stop.
pub fn run(config_path: &Path) -> Result<(), String> {
    run_many(&[config_path.to_path_buf()])
}

/// Starts every role the config files name (at most one edge and one pool in all) in this process and returns only
/// when told to stop. An edge and a pool on the same cores that point at each other run co-located
/// ([`colocated`]): one executor per core runs both, and they talk in memory instead of over mutual TLS.
pub fn run_many(paths: &[PathBuf]) -> Result<(), String> {
    let mut cfgs = Vec::with_capacity(paths.len());
    for path in paths {
        let cfg = Config::load(path).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        cfg.check_files().map_err(|e| e.to_string())?;
        cfgs.push((path.as_path(), cfg));
    }
    let Some((_, first)) = cfgs.first() else { return Err("run: no config file given (-c FILE)".into()) };
    init_logging_as(&first.log, first.log_format);
    let edges: Vec<&(&Path, Config)> = cfgs.iter().filter(|(_, c)| c.edge.is_some()).collect();
    let pools: Vec<&(&Path, Config)> = cfgs.iter().filter(|(_, c)| c.pool.is_some()).collect();
    if edges.len() > 1 || pools.len() > 1 {
        return Err("run: at most one [edge] and one [pool] in one process (across the -c files)".into());
    }
    let edge = edges.first().copied();
    let pool = pools.first().copied();
    if edge.is_none() && pool.is_none() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(format!("config {}: neither [edge] nor [pool]: nothing to run", names.join(", ")));
    }
    let together = match (edge, pool) {
        (Some((_, e)), Some((_, p))) => colocated(e, p),
        _ => Err(String::new()),
    };
    // Before any thread starts: a panic anywhere ends the process (a supervisor restarts it), see shard::watch.
    crate::shard::watch::exit_on_panic();
    crate::net::tls::install_provider();
    let set = block_signals();
    let share: usize = std::env::var("PARAPET_MEMLOCK_SHARE").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let edge_cores = edge.and_then(|(_, c)| c.edge.as_ref()).map_or(0, |e| e.cores.len());
    let pool_cores = pool.and_then(|(_, c)| c.pool.as_ref()).map_or(0, |p| p.cores.len());
    let executors = if together.is_ok() { edge_cores } else { edge_cores + pool_cores };
    let io_memory = crate::shard::io_memory_per_executor(executors, share)?;
    let mut rollups = false;
    // One management API per process (its token is process-wide): every file's [mgmt] must ask for the same one,
    // or a listener would be served with another file's token (or none).
    let mut first_token: Option<(&Path, Option<String>)> = None;
    for (path, cfg) in &cfgs {
        let Some(m) = &cfg.mgmt else { continue };
        let token = m.token().map_err(|e| e.to_string())?;
        match &first_token {
            None => first_token = Some((path, token)),
            Some((first, t)) if *t != token => {
                return Err(format!(
                    "run: {} and {} have different [mgmt] tokens: one process serves one management API token",
                    first.display(),
                    path.display()
                ))
            }
            Some(_) => {}
        }
    }
    for (_, cfg) in &cfgs {
        if let Some(m) = &cfg.mgmt {
            let token = m.token().map_err(|e| e.to_string())?;
            crate::mgmt::http::serve(m.listen, token).map_err(|e| e.to_string())?;
            crate::mgmt::ready::register_for(cfg);
            // One rollup thread per process: its snapshot holds every role's counters.
            if !rollups && crate::mgmt::rollup::database(cfg).is_some() {
                crate::mgmt::rollup::start(cfg)?;
                rollups = true;
            }
        }
    }
    let fed_edge = edge.filter(|(_, c)| c.edge.as_ref().is_some_and(|e| e.federation.is_some()));
    if let Some((path, _)) = fed_edge {
        let owned = path.to_path_buf();
        crate::mgmt::metrics::on_reload(Box::new(move || reload(&owned)));
        crate::mgmt::partners::install(path);
    }
    let mut handles = Vec::new();
    match (edge, pool, &together) {
        (Some((_, e)), Some((_, p)), Ok(())) => {
            let cores = e.edge.as_ref().map(|e| e.cores.clone()).unwrap_or_default();
            tracing::info!(?cores, "edge and pool co-located: one executor per core runs both, linked in memory");
            let pool_settings = crate::pool::prepare(p)?;
            let edge_settings = crate::edge::prepare(e)?;
            handles.extend(
                crate::shard::start_pair(
                    ("edge", "pool"),
                    &cores,
                    (crate::edge::MESH_CAPACITY, crate::pool::MESH_CAPACITY),
                    io_memory,
                    move |shard| crate::edge::run_core(shard, edge_settings.clone()),
                    move |shard| crate::pool::run_core(shard, pool_settings.clone()),
                )
                .map_err(|e| e.to_string())?,
            );
        }
        _ => {
            if let (Some(_), Some(_), Err(why)) = (edge, pool, &together) {
                tracing::info!("edge and pool in one process on executors of their own, over mutual TLS: {why}");
            }
            if let Some((_, p)) = pool {
                handles.extend(crate::pool::start(p, io_memory)?);
            }
            if let Some((_, e)) = edge {
                handles.extend(crate::edge::start(e, io_memory)?);
            }
        }
    }
    crate::shard::watch::fail_unless_started(START_DEADLINE);
    loop {
        let sig = wait_signal(&set);
        if sig == libc::SIGINT || sig == libc::SIGTERM {
            break;
        }
        if sig == libc::SIGHUP {
            if let Some((path, _)) = fed_edge {
                let _ = reload(path);
            } else {
                // The pool reads policies and contacts from the store as they change: nothing to read again.
                tracing::info!("SIGHUP: nothing to reload in this process");
            }
        }
    }
    tracing::info!("stopping: draining transactions in flight, then closing connections");
    crate::shard::request_drain();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for h in handles {
            let _ = h.join();
        }
        let _ = tx.send(());
    });
    if rx.recv_timeout(DRAIN_DEADLINE).is_err() {
        tracing::warn!("drain did not finish in {DRAIN_DEADLINE:?}: exiting anyway");
    }
    crate::pool::membership::leave();
    tracing::info!("stopped");
    Ok(())
}

/// Whether an edge and a pool can share executors and talk in memory: the same cores, the edge's pool is this pool,
/// and this pool reaches this edge (an enterprise pool's member, or an edge with a roster or home pools, talks to
/// other processes too and keeps its own executors). Err says why not.
pub fn colocated(e: &Config, p: &Config) -> Result<(), String> {
    let (Some(edge), Some(pool)) = (e.edge.as_ref(), p.pool.as_ref()) else {
        return Err("not both roles".into());
    };
    if edge.cores != pool.cores {
        return Err(format!("[edge] cores {:?} and [pool] cores {:?} differ", edge.cores, pool.cores));
    }
    if edge.pool.addr != pool.listen {
        return Err(format!("[edge.pool] addr {} is not [pool] listen {}", edge.pool.addr, pool.listen));
    }
    if !pool.edges.iter().any(|x| x.addr == edge.internal_listen) {
        return Err(format!("[[pool.edges]] does not list [edge] internal_listen {}", edge.internal_listen));
    }
    if edge.roster.is_some() || pool.member.is_some() {
        return Err("an enterprise pool ([edge.roster], [pool.member]) runs its front ends apart".into());
    }
    Ok(())
}

/// Reloads the federation table, logging the outcome (a refused file leaves the table in force).
fn reload(config_path: &Path) -> Result<String, String> {
    match crate::edge::reload::reload(config_path) {
        Ok(summary) => {
            tracing::info!(config = %config_path.display(), "{summary}");
            Ok(summary)
        }
        Err(e) => {
            tracing::error!(config = %config_path.display(), "{e}; the table in force stays");
            Err(e.to_string())
        }
    }
}

/// Longest the cores may take to start (they take milliseconds; a debug build on a loaded machine, seconds).
const START_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest a SIGTERM waits for the cores (their own drain takes up to 5 s, closing up to 2 s more).
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(9);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(edge_cores: &str, pool_cores: &str, pool_addr: &str, edge_internal: &str) -> Config {
        let text = format!(
            "domain = \"example.com\"\n\
             [edge]\ncores = {edge_cores}\nlisten = \"127.0.0.1:5061\"\ninternal_listen = \"127.0.0.1:5063\"\n\
             cert = \"edge.pem\"\nkey = \"edge.key\"\nca = \"ca.pem\"\n\
             [edge.pool]\nname = \"pool.example.com\"\naddr = \"{pool_addr}\"\n\
             [pool]\ncores = {pool_cores}\nlisten = \"127.0.0.1:5062\"\ncert = \"pool.pem\"\nkey = \"pool.key\"\n\
             ca = \"ca.pem\"\ndirectory = \"users.toml\"\n\
             [[pool.edges]]\nname = \"edge.example.com\"\naddr = \"{edge_internal}\"\n"
        );
        Config::from_toml_str(&text, Path::new("/data")).expect("parses")
    }

    #[test]
    fn colocated_only_on_the_same_cores_pointing_at_each_other() {
        let c = config("[0, 1]", "[0, 1]", "127.0.0.1:5062", "127.0.0.1:5063");
        assert_eq!(colocated(&c, &c), Ok(()));
        let why = |c: &Config| colocated(c, c).expect_err("not co-located");
        assert!(why(&config("[0, 1]", "[0]", "127.0.0.1:5062", "127.0.0.1:5063")).contains("cores"));
        assert!(why(&config("[0]", "[0]", "127.0.0.1:6000", "127.0.0.1:5063")).contains("[edge.pool] addr"));
        assert!(why(&config("[0]", "[0]", "127.0.0.1:5062", "127.0.0.1:6000")).contains("[[pool.edges]]"));
    }
}
