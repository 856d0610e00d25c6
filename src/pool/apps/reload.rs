//! Routing rules without a restart: a thread of its own looks at the pool's config file every second (its size
//! and modification time; never on an executor), and when it changed reads it again and publishes the new rules
//! in the [`RulesSlot`]; each core takes them on its next sweep. A file that does not parse, or whose rules are
//! invalid, changes nothing: the error is logged and counted (`rules_reload_errors`).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{RuleSet, RulesSlot};
use crate::config::Config;

/// How often the file is looked at.
pub const POLL: Duration = Duration::from_secs(1);

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The slot with the config's rules; when the config came from a file, the thread that watches it.
pub fn start(cfg: &Config, cores: usize) -> Result<Arc<RulesSlot>, String> {
    let slot = Arc::new(RulesSlot::new(RuleSet::new(&cfg.routing, 1, cores)));
    tracing::info!(rules = cfg.routing.rules.len(), "routing rules loaded");
    let Some(path) = cfg.source.clone() else { return Ok(slot) };
    let watched = Arc::downgrade(&slot);
    std::thread::Builder::new()
        .name("parapet-rules".into())
        .spawn(move || watch(&path, &watched, cores))
        .map_err(|e| format!("cannot start the routing rules thread: {e}"))?;
    Ok(slot)
}

fn watch(path: &Path, slot: &std::sync::Weak<RulesSlot>, cores: usize) {
    let mut seen = stamp(path);
    loop {
        std::thread::sleep(POLL);
        // The pool is gone (tests start and drop settings): so is the reason to watch.
        let Some(slot) = slot.upgrade() else { return };
        let now = stamp(path);
        if now == seen {
            continue;
        }
        seen = now;
        match Config::load(path) {
            Ok(cfg) => {
                let generation = slot.generation() + 1;
                let n = cfg.routing.rules.len();
                slot.publish(RuleSet::new(&cfg.routing, generation, cores));
                slot.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(path = %path.display(), rules = n, generation, "routing rules reloaded");
            }
            Err(e) => {
                slot.reload_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %path.display(), error = %e, "routing rules not reloaded; the old ones stay");
            }
        }
    }
}
