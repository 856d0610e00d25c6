//! `parapet store migrate --from data/parapet.db --to postgres://...`: a Standard Edition's SQLite store copied
//! into the PostgreSQL store of a pool, every table (allow/block entries, contact lists, live soft state, so
//! registered users stay reachable) in one transaction: the target holds all of it or none. A target that
//! already holds data is refused unless `force`, which replaces it.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::postgres::{without_password, PgStore};
use super::sqlite::SqliteStore;
use super::Store;

/// How long the command waits for the target server.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// Copies and returns what it prints: the counts.
pub fn migrate(from: &Path, to: &str, force: bool) -> Result<String, String> {
    if !from.is_file() {
        return Err(format!("store migrate: --from {}: no such file", from.display()));
    }
    let mut src = SqliteStore::open(from).map_err(|e| format!("store migrate: --from {}: {e}", from.display()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let read = |e: super::StoreError| format!("store migrate: reading {}: {e}", from.display());
    let policies = src.policies().map_err(read)?;
    let contacts = src.all_contacts().map_err(read)?;
    let states = src.states(now).map_err(read)?;
    let shown = without_password(to);
    let mut dst =
        PgStore::open(to, Instant::now() + CONNECT_WAIT).map_err(|e| format!("store migrate: --to {shown}: {e}"))?;
    let there = dst.row_count().map_err(|e| format!("store migrate: --to {shown}: {e}"))?;
    if there > 0 && !force {
        return Err(format!(
            "store migrate: --to {shown} already holds {there} rows; refusing to mix stores \
             (--force replaces them)"
        ));
    }
    dst.replace_all(&policies, &contacts, &states)
        .map_err(|e| format!("store migrate: --to {shown}: {e} (nothing was copied)"))?;
    let archived = copy_archive(&mut src, &mut dst).map_err(|e| {
        format!("store migrate: --to {shown}: the IM archive: {e} (everything else was copied; run again with --force)")
    })?;
    Ok(format!(
        "migrated {} to {shown}: {} policy entries, {} contacts, {} soft-state rows, {archived} archived messages{}\n",
        from.display(),
        policies.len(),
        contacts.len(),
        states.len(),
        if there > 0 { format!(" ({there} rows there before were replaced)") } else { String::new() }
    ))
}

/// The IM archive, page by page (bounded memory however large it is), each page one transaction.
fn copy_archive(src: &mut SqliteStore, dst: &mut PgStore) -> Result<u64, super::StoreError> {
    let mut q = super::archive::ArchiveQuery { limit: 1000, ..Default::default() };
    let mut n = 0u64;
    loop {
        let rows = src.search_archive(&q)?;
        let Some(last) = rows.last() else { return Ok(n) };
        q.after_id = last.id;
        dst.write_archive(&rows)?;
        n += rows.len() as u64;
    }
}
