//! The I/O half of several pools ([`super::homes`] is the logic): the users file naming each user's home pool,
//! read on a thread of its own (at start, then whenever its modification time moves, checked every
//! `[edge.homes] reload_s`) and published for the cores. A file that cannot be read or parsed keeps the table
//! in force (logged).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::homes::{HomeTable, HomesSlot};
use crate::config::pools::HomesConfig;
use crate::store::directory::Directory;

fn read(path: &Path, pools: &[String], domain: &str) -> Result<HomeTable, String> {
    let dir = Directory::load(path).map_err(|e| e.to_string())?;
    let (table, unknown) = HomeTable::build(&dir, pools, domain);
    if !unknown.is_empty() {
        tracing::warn!(file = %path.display(), homes = ?unknown, "users homed on pools no [[edge.pools]] names: they go to the default pool");
    }
    tracing::info!(file = %path.display(), homed = table.len(), "home pools read");
    Ok(table)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads the file once now (an error stops the start: the operator named a file that is not usable), publishes
/// it, then starts the thread that follows its changes.
pub fn start(cfg: &HomesConfig, pools: Vec<String>, domain: &str, slot: Arc<HomesSlot>) -> Result<(), String> {
    let path = cfg.users.clone();
    let table = read(&path, &pools, domain).map_err(|e| format!("[edge.homes] users: {e}"))?;
    slot.publish(table);
    let every = Duration::from_secs(cfg.reload_s);
    let domain = domain.to_string();
    std::thread::Builder::new()
        .name("edge-homes".into())
        .spawn(move || {
            let mut seen = modified(&path);
            loop {
                std::thread::sleep(every);
                let now = modified(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                match read(&path, &pools, &domain) {
                    Ok(t) => slot.publish(t),
                    Err(e) => tracing::warn!(error = %e, "[edge.homes] users unreadable: the home pools in force stay"),
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the home pools reader: {e}"))
}
