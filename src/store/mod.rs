//! Stored data: the user directory (read at start) and the durable store behind a narrow [`Store`] interface
//! (users' authorization entries and contact lists, and the soft state the pool restores after a restart:
//! registrations, publications, subscriptions), implemented on SQLite (`sqlite.rs`) and run on a thread of
//! its own (`thread.rs`) so no executor ever waits on the disk. A PostgreSQL implementation satisfies the same
//! trait.

pub mod admin;
pub mod directory;
pub mod people;
pub mod sqlite;
pub mod thread;

use std::fmt;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateWrite {
    Put(StateRow),
    Delete { kind: String, key: String },
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
    /// Whether another process (the CLI, another pool) changed the data since the last call, so that the
    /// running pool can pick up entries written behind its back. Polled by the store thread.
    fn changed_elsewhere(&mut self) -> Result<bool, StoreError> {
        Ok(false)
    }
    // The synced directory ([`people`]). Defaults refuse, so a store without them still builds; SQLite has them.
    /// Every person the directory sync wrote (enabled and disabled), ordered by alias.
    fn directory_rows(&mut self) -> Result<Vec<DirectoryRow>, StoreError> {
        Err(StoreError("directory: not supported by this store".into()))
    }
    /// Applies a sync's writes and its sources' new incremental marks in one transaction.
    fn write_directory(&mut self, writes: &[DirectoryWrite], marks: &[(String, String)]) -> Result<(), StoreError> {
        let _ = (writes, marks);
        Err(StoreError("directory: not supported by this store".into()))
    }
    /// Each source's incremental mark (for LDAP: the newest modifyTimestamp seen), as (source, mark).
    fn sync_marks(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        Err(StoreError("directory: not supported by this store".into()))
    }
    /// Digest secrets set with `parapet users set-password` (for sources without credentials).
    fn credentials(&mut self) -> Result<Vec<CredentialRow>, StoreError> {
        Err(StoreError("directory: not supported by this store".into()))
    }
    fn put_credential(&mut self, row: &CredentialRow) -> Result<(), StoreError> {
        let _ = row;
        Err(StoreError("directory: not supported by this store".into()))
    }
}
