//! The pool's view of its users: who exists and the digest secrets (HA1) they authenticate with.
//! Built once at start from the directory; every core holds its own read-only copy (no sharing between cores).

use std::collections::HashMap;

use super::digest::{self, Algorithm};
use crate::store::directory::Directory;
use crate::store::{CredentialRow, DirectoryRow};

#[derive(Clone, Debug)]
pub struct UserRec {
    /// AOR key, `alias@domain` (see `proto::aor_key`).
    pub aor: String,
    pub alias: String,
    pub display_name: String,
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
    /// The user's home pool (the users file's `pool` column, or the synced person's; empty: the default pool).
    pub home: String,
}

impl UserRec {
    pub fn ha1(&self, alg: Algorithm) -> Option<&str> {
        match alg {
            Algorithm::Md5 => self.ha1_md5.as_deref(),
            Algorithm::Sha256 => self.ha1_sha256.as_deref(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Users {
    by_alias: HashMap<String, UserRec>,
}

impl Users {
    pub fn from_directory(dir: &Directory, domain: &str, realm: &str) -> Users {
        let mut by_alias = HashMap::with_capacity(dir.users.len());
        for u in &dir.users {
            let alias = u.alias.to_ascii_lowercase();
            let from_pw =
                |alg| u.password.as_ref().map(|p| digest::ha1(alg, u.alias.as_bytes(), realm.as_bytes(), p.as_bytes()));
            let rec = UserRec {
                aor: crate::proto::aor_key(alias.as_bytes(), domain.as_bytes()),
                alias: alias.clone(),
                display_name: u.display_name.clone(),
                ha1_md5: u.ha1_md5.clone().or_else(|| from_pw(Algorithm::Md5)),
                ha1_sha256: u.ha1_sha256.clone().or_else(|| from_pw(Algorithm::Sha256)),
                home: u.pool.clone(),
            };
            by_alias.insert(alias, rec);
        }
        Users { by_alias }
    }

    /// The enabled people of the synced directory; a person whose source carries no credentials takes the
    /// secrets `parapet users set-password` stored (without either, they exist but cannot authenticate).
    pub fn from_rows(rows: &[DirectoryRow], creds: &[CredentialRow], domain: &str) -> Users {
        let stored: HashMap<&str, &CredentialRow> = creds.iter().map(|c| (c.alias.as_str(), c)).collect();
        let mut by_alias = HashMap::with_capacity(rows.len());
        for r in rows.iter().filter(|r| r.disabled_at.is_none()) {
            let alias = r.alias.to_ascii_lowercase();
            let (md5, sha) = match (&r.ha1_md5, &r.ha1_sha256, stored.get(alias.as_str())) {
                (None, None, Some(c)) => (Some(c.ha1_md5.clone()), Some(c.ha1_sha256.clone())),
                (m, s, _) => (m.clone(), s.clone()),
            };
            let rec = UserRec {
                aor: crate::proto::aor_key(alias.as_bytes(), domain.as_bytes()),
                alias: alias.clone(),
                display_name: r.display_name.clone(),
                ha1_md5: md5,
                ha1_sha256: sha,
                home: r.pool.clone(),
            };
            by_alias.insert(alias, rec);
        }
        Users { by_alias }
    }

    /// AOR keys of users here and not in `new` (removed or disabled).
    pub fn gone_from(&self, new: &Users) -> Vec<String> {
        self.by_alias.iter().filter(|(a, _)| !new.by_alias.contains_key(*a)).map(|(_, u)| u.aor.clone()).collect()
    }

    pub fn get(&self, alias: &[u8]) -> Option<&UserRec> {
        let a = std::str::from_utf8(alias).ok()?;
        if a.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_alias.get(&a.to_ascii_lowercase())
        } else {
            self.by_alias.get(a)
        }
    }

    pub fn len(&self) -> usize {
        self.by_alias.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_alias.is_empty()
    }
}
