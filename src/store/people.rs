//! The rows of the synced directory (`crate::directory`): one per alias, the person as the winning source
//! describes them, kept after they disappear from every source (disabled, `disabled_at` set) until the
//! retention period purges them; plus the digest secrets `parapet users set-password` stores for sources that
//! carry none.

use std::fmt;

/// One person of the namespace.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DirectoryRow {
    /// User part of the AOR (lowercase).
    pub alias: String,
    /// Name of the source it came from (`[[directory.sources]] name`).
    pub source: String,
    /// The person's identity within that source: a DN (lowercase) for LDAP and LDIF, the alias for CSV/TOML.
    pub key: String,
    pub display_name: String,
    pub first: String,
    pub last: String,
    pub account: String,
    pub title: String,
    pub department: String,
    pub phone: String,
    pub office: String,
    pub manager: String,
    /// Lowercase hex, 32 digits.
    pub ha1_md5: Option<String>,
    /// Lowercase hex, 64 digits.
    pub ha1_sha256: Option<String>,
    /// Unix seconds since which the person is disabled (refused); None: enabled.
    pub disabled_at: Option<u64>,
    /// The person's home pool (`[[edge.pools]] name`, `[pool] home`): the entry's mapped `pool` attribute, else
    /// the source's `pool`; empty: the default pool.
    pub pool: String,
}

// Hand-written so that logging a row never prints a secret.
impl fmt::Debug for DirectoryRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectoryRow")
            .field("alias", &self.alias)
            .field("source", &self.source)
            .field("key", &self.key)
            .field("display_name", &self.display_name)
            .field("first", &self.first)
            .field("last", &self.last)
            .field("account", &self.account)
            .field("title", &self.title)
            .field("ha1", &(self.ha1_md5.is_some() || self.ha1_sha256.is_some()))
            .field("disabled_at", &self.disabled_at)
            .field("pool", &self.pool)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryWrite {
    Put(Box<DirectoryRow>),
    Delete { alias: String },
}

/// Secrets for one alias, set by an operator.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialRow {
    pub alias: String,
    pub ha1_md5: String,
    pub ha1_sha256: String,
}

impl fmt::Debug for CredentialRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialRow").field("alias", &self.alias).finish_non_exhaustive()
    }
}
