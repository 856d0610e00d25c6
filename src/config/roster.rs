//! `[edge.roster]`: the members of an enterprise pool the edge routes to, and where it reads their leases.
//! Absent: the single `[edge.pool]` gets every request, as before. An `[[edge.pools]]` entry may carry the same
//! table (`[edge.pools.roster]`, `config::pools`): an enterprise pool users are homed on.
//!
//! ```toml
//! [edge.roster]
//! database = "parapet.db"   # the pool's store (its `[pool] database`), read for the members' leases
//! # url = "postgres://..."  # or its PostgreSQL (default for [edge.roster]: the edge config's [store] url)
//! read_ms = 500
//! [[edge.roster.members]]
//! name = "fe1"              # the member's `[pool.member] name`
//! addr = "127.0.0.1:5171"
//! cert_name = "pool.example.com"   # default: [edge.pool] name
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::store::{StoreConfig, DEFAULT_START_TIMEOUT_S};
use super::{parse_addr, resolve, ConfigError, Peer};

pub const DEFAULT_READ_MS: u64 = 500;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoster {
    database: Option<PathBuf>,
    url: Option<String>,
    read_ms: Option<u64>,
    members: Option<Vec<RawRosterMember>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRosterMember {
    name: Option<String>,
    addr: Option<String>,
    cert_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RosterMember {
    /// The member's name in the roster (its lease row).
    pub name: String,
    /// Where to connect, and the certificate name it must present.
    pub peer: Peer,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RosterConfig {
    pub database: PathBuf,
    /// `url`: the pool's PostgreSQL; None: SQLite `database` (or, for `[edge.roster]`, the edge's `[store] url`).
    pub store: Option<StoreConfig>,
    pub read_ms: u64,
    pub members: Vec<RosterMember>,
}

fn invalid(key: String, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.into() }
}

/// `pool_name` is `[edge.pool] name`, the default certificate name of every member; `table` names the table in
/// errors (`edge.roster`, `edge.pools.0.roster`).
pub(super) fn build(
    raw: RawRoster,
    table: &str,
    base_dir: &Path,
    pool_name: &str,
) -> Result<RosterConfig, ConfigError> {
    let database = resolve(base_dir, raw.database);
    let url = raw.url.map(|u| u.trim().to_string()).filter(|u| !u.is_empty());
    if database.as_os_str().is_empty() && url.is_none() {
        return Err(invalid(format!("[{table}] database"), "missing (the pool's store, its [pool] database)"));
    }
    let store = url.map(|url| StoreConfig { url: Some(url), start_timeout_s: DEFAULT_START_TIMEOUT_S });
    let read_ms = raw.read_ms.unwrap_or(DEFAULT_READ_MS);
    if !(50..=10_000).contains(&read_ms) {
        return Err(invalid(format!("[{table}] read_ms"), format!("{read_ms}: expected 50 to 10000")));
    }
    let mut members: Vec<RosterMember> = Vec::new();
    for (i, m) in raw.members.unwrap_or_default().into_iter().enumerate() {
        let table = format!("{table}.members.{i}");
        let name = m.name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
        let name = name.ok_or_else(|| invalid(format!("[{table}] name"), "missing"))?;
        if members.iter().any(|x| x.name == name) {
            return Err(invalid(format!("[{table}] name"), format!("{name:?} is listed twice")));
        }
        let addr = m.addr.ok_or_else(|| invalid(format!("[{table}] addr"), "missing"))?;
        let addr = parse_addr(&table, "addr", &addr)?;
        let cert_name = m.cert_name.map(|n| n.trim().to_string()).unwrap_or_else(|| pool_name.to_string());
        members.push(RosterMember { name, peer: Peer { name: cert_name, addr } });
    }
    if members.is_empty() {
        return Err(invalid(format!("[{table}] members"), "empty: list the pool's members"));
    }
    if members.len() > crate::proto::membership::MEMBERS_MAX {
        return Err(invalid(format!("[{table}] members"), "more than the pool's member limit"));
    }
    Ok(RosterConfig { database, store, read_ms, members })
}
