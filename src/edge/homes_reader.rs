//! The I/O half of several pools ([`super::homes`] is the logic): where each user's home pool is read, on a thread
//! of its own (at start, then every `[edge.homes] reload_s`), and published for the cores. Either a users file
//! (re-read when its modification time moves) or the default pool's store, where `parapet directory sync` writes
//! the people with their home (re-read when the sync marks move: every sync that writes moves one). A source that
//! cannot be read keeps the table in force (logged).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::homes::{HomeTable, HomesSlot};
use crate::config::pools::{HomesConfig, HomesFrom};
use crate::store::directory::Directory;
use crate::store::Store;

/// A source of homes and what was last seen of it.
enum Source {
    File { path: PathBuf, seen: Option<SystemTime> },
    Store { store: Box<dyn Store>, what: String, seen: Option<Vec<(String, String)>> },
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Source {
    fn open(from: &HomesFrom) -> Result<Source, String> {
        match from {
            HomesFrom::Users(path) => Ok(Source::File { path: path.clone(), seen: None }),
            HomesFrom::Store { database, store } => {
                let what = crate::store::describe(store.as_ref(), database);
                let opened = crate::store::open(store.as_ref(), database).map_err(|e| format!("{what}: {e}"))?;
                Ok(Source::Store { store: opened, what, seen: None })
            }
        }
    }

    fn what(&self) -> String {
        match self {
            Source::File { path, .. } => path.display().to_string(),
            Source::Store { what, .. } => what.clone(),
        }
    }

    /// A new table when the source moved since the last look (always at the first); None: unchanged.
    fn read_if_changed(&mut self, pools: &[String], domain: &str) -> Result<Option<HomeTable>, String> {
        let (table, unknown) = match self {
            Source::File { path, seen } => {
                let now = modified(path);
                if seen.is_some() && now == *seen {
                    return Ok(None);
                }
                let dir = Directory::load(path).map_err(|e| e.to_string())?;
                *seen = now;
                HomeTable::build(&dir, pools, domain)
            }
            Source::Store { store, seen, .. } => {
                let marks = store.sync_marks().map_err(|e| e.to_string())?;
                if seen.as_ref() == Some(&marks) {
                    return Ok(None);
                }
                let rows = store.directory_rows().map_err(|e| e.to_string())?;
                *seen = Some(marks);
                HomeTable::from_rows(&rows, pools, domain)
            }
        };
        let what = self.what();
        if !unknown.is_empty() {
            tracing::warn!(from = %what, homes = ?unknown, "users homed on pools no [[edge.pools]] names: they go to the default pool");
        }
        tracing::info!(from = %what, homed = table.len(), "home pools read");
        Ok(Some(table))
    }
}

/// Reads the homes once now (an error stops the start: the operator named a source that is not usable),
/// publishes them, then starts the thread that follows their changes.
pub fn start(cfg: &HomesConfig, pools: Vec<String>, domain: &str, slot: Arc<HomesSlot>) -> Result<(), String> {
    let key = match cfg.from {
        HomesFrom::Users(_) => "[edge.homes] users",
        HomesFrom::Store { store: None, .. } => "[edge.homes] database",
        HomesFrom::Store { store: Some(_), .. } => "[edge.homes] url",
    };
    let mut source = Source::open(&cfg.from).map_err(|e| format!("{key}: {e}"))?;
    match source.read_if_changed(&pools, domain) {
        Ok(Some(table)) => slot.publish(table),
        Ok(None) => {}
        Err(e) => return Err(format!("{key}: {}: {e}", source.what())),
    }
    let every = Duration::from_secs(cfg.reload_s);
    let domain = domain.to_string();
    std::thread::Builder::new()
        .name("edge-homes".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            match source.read_if_changed(&pools, &domain) {
                Ok(Some(t)) => slot.publish(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(from = %source.what(), error = %e, "home pools unreadable: the ones in force stay")
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the home pools reader: {e}"))
}
