//! Running the roles a config names in this process, until SIGTERM or SIGINT; SIGHUP (or `POST /reload` on the
//! management listener) reloads the edge's federation table from the same file ([`crate::edge::reload`]).

use std::path::Path;

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
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let targets: Targets = filter.parse().unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
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
    let cfg = Config::load(config_path).map_err(|e| e.to_string())?;
    cfg.validate().map_err(|e| e.to_string())?;
    init_logging(&cfg.log);
    // Before any thread starts: a panic anywhere ends the process (a supervisor restarts it), see shard::watch.
    crate::shard::watch::exit_on_panic();
    crate::net::tls::install_provider();
    let set = block_signals();
    let share: usize = std::env::var("PARAPET_MEMLOCK_SHARE").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let executors = cfg.edge.as_ref().map_or(0, |e| e.cores.len()) + cfg.pool.as_ref().map_or(0, |p| p.cores.len());
    let io_memory = crate::shard::io_memory_per_executor(executors, share)?;
    if let Some(m) = &cfg.mgmt {
        crate::mgmt::metrics::serve(m.listen).map_err(|e| e.to_string())?;
    }
    if cfg.edge.as_ref().is_some_and(|e| e.federation.is_some()) {
        let path = config_path.to_path_buf();
        crate::mgmt::metrics::on_reload(Box::new(move || reload(&path)));
    }
    let mut handles = Vec::new();
    if cfg.pool.is_some() {
        handles.extend(crate::pool::start(&cfg, io_memory)?);
    }
    if cfg.edge.is_some() {
        handles.extend(crate::edge::start(&cfg, io_memory)?);
    }
    if handles.is_empty() {
        return Err(format!("config {}: neither [edge] nor [pool]: nothing to run", config_path.display()));
    }
    loop {
        let sig = wait_signal(&set);
        if sig == libc::SIGINT || sig == libc::SIGTERM {
            break;
        }
        if sig == libc::SIGHUP {
            let _ = reload(config_path);
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

/// Longest a SIGTERM waits for the cores (their own drain takes up to 5 s, closing up to 2 s more).
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(9);
