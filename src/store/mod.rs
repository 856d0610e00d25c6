//! Stored data: the user directory (read at start) and the durable store behind a narrow [`Store`] interface
//! (users' authorization entries and contact lists, and the soft state the pool restores after a restart:
//! registrations, publications, subscriptions), implemented on SQLite (`sqlite.rs`) and run on a thread of
//! its own (`thread.rs`) so no executor ever waits on the disk. PostgreSQL (`postgres.rs`, chosen by
//! `[store] url`) satisfies the same trait for a pool of several front ends; `pgcluster.rs` runs a local
//! PostgreSQL server for `up`, `migrate.rs` copies a SQLite store into PostgreSQL.

pub mod admin;
pub mod archive;
pub mod archive_cli;
pub mod backlog;
pub mod directory;
pub mod members;
pub mod migrate;
pub mod people;
pub mod pgcluster;
pub mod postgres;
pub mod rollup;
pub mod sqlite;
pub mod thread;

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::store::StoreConfig;

pub use people::{CredentialRow, DirectoryRow, DirectoryWrite};

/// One allow/block entry: `owner` (an AOR key) about `target` (`user@domain`, `@domain` or `*`), with a
/// decision per right ("allow", "block", or None for "not set here").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    pub owner: String,
    pub target: String,
    pub presence: Option<String>,
    pub im: Option<String>,
}

/// One entry of a user's contact list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRow {
    pub owner: String,
    /// `sip:user@domain`.
    pub uri: String,
    pub display_name: String,
    /// Empty: no group.
    pub group: String,
}

/// A piece of soft state: what a running pool holds in memory and restores after a restart. `value` is opaque
/// to the store (the pool's own encoding); rows past `expires_at` (unix seconds) are dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    /// "reg" (an AOR's bindings), "pub" (an AOR's publications), "sub" (one subscription).
    pub kind: String,
    pub key: String,
    pub value: Vec<u8>,
    pub expires_at: u64,
}

/// One member of the pool and its lease (see `crate::proto::membership`): renewed by the member itself,
/// read by every edge and front end, its `state` set by an operator (`pool drain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    pub name: String,
    /// `host:port` where edges reach it.
    pub addr: String,
    /// "active", "draining" or "gone".
    pub state: String,
    /// Unix milliseconds.
    pub lease_until_ms: u64,
    /// Users it owns now (as it last reported).
    pub users: u64,
    /// Requests it handled since its previous renewal.
    pub load: u64,
    /// Transactions in progress at the member (see `proto::membership::Member::in_flight`).
    pub in_flight: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateWrite {
    Put(StateRow),
    Delete {
        kind: String,
        key: String,
    },
    /// `write`, applied only while `gen` is still `aor`'s latest claim (see [`Store::claim_user`]); skipped, in
    /// the same transaction, otherwise: an old owner's write-behind that arrives after the hand-over.
    Fenced {
        aor: String,
        gen: u64,
        write: Box<StateWrite>,
    },
}

#[derive(Debug)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// What the pool needs from durable storage. Every write is durable when the call returns (SQLite: the
/// transaction committed, WAL synced). Implementations may block: callers run them off the executors
/// ([`thread::StoreThread`]).
pub trait Store: Send {
    fn policies(&mut self) -> Result<Vec<PolicyRow>, StoreError>;
    /// Inserts or replaces the entry for (owner, target); an entry with neither right set is deleted.
    fn put_policy(&mut self, row: &PolicyRow) -> Result<(), StoreError>;
    fn delete_policy(&mut self, owner: &str, target: &str) -> Result<bool, StoreError>;
    fn contacts(&mut self, owner: &str) -> Result<Vec<ContactRow>, StoreError>;
    fn put_contact(&mut self, row: &ContactRow) -> Result<(), StoreError>;
    fn delete_contact(&mut self, owner: &str, uri: &str) -> Result<bool, StoreError>;
    /// Every live soft-state row (expires_at > now); dead ones are deleted on the way.
    fn states(&mut self, now: u64) -> Result<Vec<StateRow>, StoreError>;
    /// Applies the writes in one transaction (the store thread batches what the cores queue).
    fn write_states(&mut self, writes: &[StateWrite]) -> Result<(), StoreError>;
    /// One user's soft state: the live rows whose key is `aor` or starts with `aor` and a space (its
    /// registrations, publications and the subscriptions to it), for the front end that takes the user over.
    fn states_of(&mut self, aor: &str, now: u64) -> Result<Vec<StateRow>, StoreError>;
    /// The hand-over fence: `member` claims `aor` (before loading its soft state), raising the user's ownership
    /// generation by one; returns the new generation (1 for a first claim).
    fn claim_user(&mut self, aor: &str, member: &str) -> Result<u64, StoreError>;
    /// Applies `writes` (soft state of `aor`) in one transaction only while `gen` is still the user's latest claim
    /// (0: never claimed); Ok(false), nothing written, when a newer claim exists: the writer is an old owner and
    /// its write must not overwrite what the new owner loaded or wrote.
    fn write_states_fenced(&mut self, aor: &str, gen: u64, writes: &[StateWrite]) -> Result<bool, StoreError>;
    /// Renews a member's lease: inserts the row (state "active") or updates its address, lease, users and load,
    /// keeping the stored state (a drained member stays draining while it renews). A row whose `state` is
    /// "gone" sets that state too (a member stopping cleanly gives up its lease at once).
    fn renew_member(&mut self, row: &MemberRow) -> Result<(), StoreError>;
    /// Every member row, ordered by name (expired leases included: the reader decides what they mean).
    fn members(&mut self) -> Result<Vec<MemberRow>, StoreError>;
    /// Sets a member's state ("active" or "draining"); false when no such member.
    fn set_member_state(&mut self, name: &str, state: &str) -> Result<bool, StoreError>;
    /// The pool-wide secret called `name`: `candidate` is stored when there is none yet, and whatever is stored
    /// is returned, so every front end of a pool ends up with the first one's (the digest nonce key: a nonce
    /// one front end issued must be authentic at all of them).
    fn shared_secret(&mut self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;
    /// Whether another process (the CLI, another pool) changed the data since the last call, so that the
    /// running pool can pick up entries written behind its back. Polled by the store thread. At least the
    /// allow/block entries and contact lists count (PostgreSQL: only those; SQLite: any write).
    fn changed_elsewhere(&mut self) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Adds per-minute rollups (rows of the same minute and key combine: counters add, gauges keep the peak).
    fn write_rollups(&mut self, _rows: &[rollup::RollupRow]) -> Result<(), StoreError> {
        Err(StoreError("this store keeps no rollups".into()))
    }
    /// Rollups of minutes at or after `since` (unix seconds), oldest first.
    fn rollups(&mut self, _since: u64) -> Result<Vec<rollup::RollupRow>, StoreError> {
        Err(StoreError("this store keeps no rollups".into()))
    }
    /// Deletes rollups of minutes before `before`; how many rows went.
    fn prune_rollups(&mut self, _before: u64) -> Result<usize, StoreError> {
        Ok(0)
    }
    /// Appends archived MESSAGEs in one transaction (their `id` is assigned by the store).
    fn write_archive(&mut self, rows: &[archive::ArchiveRow]) -> Result<(), StoreError>;
    /// Archived MESSAGEs matching `q`, in the order they were archived (id).
    fn search_archive(&mut self, q: &archive::ArchiveQuery) -> Result<Vec<archive::ArchiveRow>, StoreError>;
    /// Deletes archived MESSAGEs older than `before_ms`; how many.
    fn purge_archive(&mut self, before_ms: i64) -> Result<u64, StoreError>;
    /// Every person the directory sync wrote (enabled and disabled), ordered by alias ([`people`]).
    fn directory_rows(&mut self) -> Result<Vec<DirectoryRow>, StoreError>;
    /// Applies a sync's writes and its sources' new incremental marks in one transaction.
    fn write_directory(&mut self, writes: &[DirectoryWrite], marks: &[(String, String)]) -> Result<(), StoreError>;
    /// Each source's incremental mark (for LDAP: the newest modifyTimestamp seen), as (source, mark).
    fn sync_marks(&mut self) -> Result<Vec<(String, String)>, StoreError>;
    /// Digest secrets set with `parapet users set-password` (for sources without credentials).
    fn credentials(&mut self) -> Result<Vec<CredentialRow>, StoreError>;
    fn put_credential(&mut self, row: &CredentialRow) -> Result<(), StoreError>;
}

/// The store a config names: PostgreSQL when `[store] url` is set (waiting up to its `start_timeout_s` for the
/// server), else the SQLite file at `database`. Blocking: call it off the executors.
pub fn open(store: Option<&StoreConfig>, database: &Path) -> Result<Box<dyn Store>, StoreError> {
    match store.and_then(|s| s.url.as_deref().map(|u| (u, s.start_timeout_s))) {
        Some((url, wait_s)) => {
            let deadline = Instant::now() + Duration::from_secs(wait_s);
            Ok(Box::new(postgres::PgStore::open(url, deadline)?))
        }
        None => Ok(Box::new(sqlite::SqliteStore::open(database)?)),
    }
}

/// Where [`open`] puts the data, for logs and messages (no password).
pub fn describe(store: Option<&StoreConfig>, database: &Path) -> String {
    match store.and_then(|s| s.url.as_deref()) {
        Some(url) => format!("PostgreSQL {}", postgres::without_password(url)),
        None => format!("SQLite {}", database.display()),
    }
}
