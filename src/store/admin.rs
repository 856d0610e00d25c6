//! The `parapet policy` and `parapet contacts` commands: allow/block entries and contact lists written straight
//! to the store named by a pool config (`[store] url`, else `[pool] database`). A running pool notices the
//! change within a second (`thread::POLL`) and applies it to live subscriptions. Runs on no executor, so it may
//! block. A write the store cannot commit (PostgreSQL away) is an error and a non-zero exit, never a success.

use std::path::Path;

use super::{ContactRow, PolicyRow, Store};
use crate::config::Config;
use crate::pool::presence::policy::{Decision, Target};

/// What `policy set` does with one right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Keep,
    Unset,
    Set(Decision),
}

impl Change {
    pub fn parse(s: Option<&str>) -> Result<Change, String> {
        match s.map(|s| s.trim().to_ascii_lowercase()) {
            None => Ok(Change::Keep),
            Some(v) if v == "unset" || v == "none" => Ok(Change::Unset),
            Some(v) => {
                Decision::parse(&v).map(Change::Set).ok_or_else(|| format!("{v:?}: expected allow, block or unset"))
            }
        }
    }
    fn apply(self, old: Option<String>) -> Option<String> {
        match self {
            Change::Keep => old,
            Change::Unset => None,
            Change::Set(d) => Some(d.as_str().to_string()),
        }
    }
}

/// The CLI waits this long for a PostgreSQL store before it reports it unavailable.
const CLI_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub(crate) fn open(config: &Path) -> Result<(Box<dyn Store>, String), String> {
    let mut cfg = Config::load(config).map_err(|e| e.to_string())?;
    let pool = cfg.pool.as_ref().ok_or_else(|| format!("{}: no [pool] section", config.display()))?;
    if let Some(s) = cfg.store.as_mut() {
        s.start_timeout_s = s.start_timeout_s.min(CLI_WAIT.as_secs());
    }
    let store = super::open(cfg.store.as_ref(), &pool.database).map_err(|e| format!("{e} (nothing was changed)"))?;
    Ok((store, cfg.domain.to_ascii_lowercase()))
}

fn not_saved(e: super::StoreError) -> String {
    format!("{e} (the change was not confirmed as saved)")
}

/// `bob`, `bob@example.com` or `sip:bob@example.com` -> `bob@example.com`.
pub fn owner_key(s: &str, domain: &str) -> Result<String, String> {
    let with_domain = if s.contains('@') { s.to_string() } else { format!("{s}@{domain}") };
    match Target::parse(&with_domain) {
        Some(Target::User(a)) => Ok(a),
        _ => Err(format!("{s:?} is not a user (alias or user@domain)")),
    }
}

/// `owner_key`, refused unless the user is in the pool's directory: an entry for a user who does not exist would
/// be accepted silently and never apply (a typo in a name must say so).
fn known_owner(config: &Path, owner: &str, domain: &str) -> Result<String, String> {
    let key = owner_key(owner, domain)?;
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let pool = cfg.pool.as_ref().ok_or_else(|| format!("{}: no [pool] section", config.display()))?;
    let dir = super::directory::Directory::load(&pool.directory).map_err(|e| e.to_string())?;
    let (alias, host) = key.split_once('@').unwrap_or((key.as_str(), ""));
    // Owner keys are lowercase (as the pool keys AORs); the directory keeps aliases as written.
    if host != domain || !dir.users.iter().any(|u| u.alias.eq_ignore_ascii_case(alias)) {
        return Err(format!("no user {key:?} in the directory {} (users of {domain} only)", pool.directory.display()));
    }
    Ok(key)
}

pub fn policy_list(config: &Path, owner: Option<&str>) -> Result<String, String> {
    let (mut store, domain) = open(config)?;
    let owner = owner.map(|o| owner_key(o, &domain)).transpose()?;
    let mut out = String::from("# owner\ttarget\tpresence\tim\n");
    for r in store.policies().map_err(|e| e.to_string())? {
        if owner.as_ref().is_some_and(|o| *o != r.owner) {
            continue;
        }
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        out.push_str(&format!("{}\t{}\t{}\t{}\n", r.owner, r.target, show(&r.presence), show(&r.im)));
    }
    Ok(out)
}

pub fn policy_set(config: &Path, owner: &str, target: &str, presence: Change, im: Change) -> Result<String, String> {
    let (mut store, domain) = open(config)?;
    let owner = known_owner(config, owner, &domain)?;
    let target =
        Target::parse(target).ok_or_else(|| format!("{target:?}: expected user@domain, @domain or *"))?.to_text();
    let old = store.policies().map_err(|e| e.to_string())?.into_iter().find(|r| r.owner == owner && r.target == target);
    let (op, oi) = old.map(|r| (r.presence, r.im)).unwrap_or((None, None));
    let row = PolicyRow { owner, target, presence: presence.apply(op), im: im.apply(oi) };
    store.put_policy(&row).map_err(not_saved)?;
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    Ok(format!("{}\t{}\t{}\t{}\n", row.owner, row.target, show(&row.presence), show(&row.im)))
}

pub fn policy_delete(config: &Path, owner: &str, target: &str) -> Result<String, String> {
    let (mut store, domain) = open(config)?;
    let owner = owner_key(owner, &domain)?;
    let target =
        Target::parse(target).ok_or_else(|| format!("{target:?}: expected user@domain, @domain or *"))?.to_text();
    let found = store.delete_policy(&owner, &target).map_err(not_saved)?;
    Ok(if found { "deleted\n".into() } else { "no such entry\n".into() })
}

pub fn contacts_list(config: &Path, owner: &str) -> Result<String, String> {
    let (mut store, domain) = open(config)?;
    let owner = owner_key(owner, &domain)?;
    let mut out = String::from("# uri\tname\tgroup\n");
    for c in store.contacts(&owner).map_err(|e| e.to_string())? {
        out.push_str(&format!("{}\t{}\t{}\n", c.uri, c.display_name, c.group));
    }
    Ok(out)
}

pub fn contacts_add(config: &Path, owner: &str, uri: &str, name: &str, group: &str) -> Result<String, String> {
    let (mut store, domain) = open(config)?;
    let owner = known_owner(config, owner, &domain)?;
    let uri = format!("sip:{}", owner_key(uri, &domain)?);
    store
        .put_contact(&ContactRow { owner, uri: uri.clone(), display_name: name.into(), group: group.into() })
        .map_err(not_saved)?;
    Ok(format!("{uri}\n"))
}

pub fn contacts_remove(config: &Path, owner: &str, uri: &str) -> Result<String, String> {
    let (mut store, domain) = open(config)?;
    let owner = owner_key(owner, &domain)?;
    let uri = format!("sip:{}", owner_key(uri, &domain)?);
    let found = store.delete_contact(&owner, &uri).map_err(not_saved)?;
    Ok(if found { "removed\n".into() } else { "no such contact\n".into() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_changes() {
        assert_eq!(owner_key("Bob", "example.com").unwrap(), "bob@example.com");
        assert_eq!(owner_key("sip:bob@Example.com", "x").unwrap(), "bob@example.com");
        assert!(owner_key("*", "x").is_err());
        assert_eq!(Change::parse(None).unwrap(), Change::Keep);
        assert_eq!(Change::parse(Some("Block")).unwrap(), Change::Set(Decision::Block));
        assert_eq!(Change::parse(Some("unset")).unwrap(), Change::Unset);
        assert!(Change::parse(Some("maybe")).is_err());
        assert_eq!(Change::Keep.apply(Some("allow".into())), Some("allow".into()));
    }
}
