//! `[archive]`: IM archiving by the pool (every MESSAGE it accepts for delivery, into the store).
//!
//! ```toml
//! [archive]
//! policy = "federated"     # default for everyone: "all", "none" (the default) or "federated" (only IM with
//!                          # another organization)
//! critical = true          # refuse IM (503 "IM archive unavailable") while the archive cannot be written
//! retention_days = 365     # rows older than this are purged (0: kept for ever)
//! pending_max = 2048       # rows accepted but not yet committed before the archive counts as unwritable (max)
//! [archive.domains]        # a party's domain decides when no user entry does
//! "example.com" = "all"
//! [archive.users]          # a user's own entry decides first
//! "ceo@example.com" = "all"
//! ```
//!
//! A MESSAGE is archived when the most inclusive decision of its two parties (sender and recipient) asks for it.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// What is archived for a party.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ArchivePolicy {
    None,
    Federated,
    All,
}

impl ArchivePolicy {
    pub fn parse(s: &str) -> Option<ArchivePolicy> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Some(ArchivePolicy::None),
            "federated" => Some(ArchivePolicy::Federated),
            "all" => Some(ArchivePolicy::All),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    pub policy: ArchivePolicy,
    /// Keys lowercased.
    pub domains: BTreeMap<String, ArchivePolicy>,
    /// Keys `user@domain`, domain lowercased.
    pub users: BTreeMap<String, ArchivePolicy>,
    pub critical: bool,
    pub retention_days: u32,
    pub pending_max: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            policy: ArchivePolicy::None,
            domains: BTreeMap::new(),
            users: BTreeMap::new(),
            critical: false,
            retention_days: 0,
            pending_max: crate::store::archive::PENDING_MAX_DEFAULT,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArchive {
    policy: Option<String>,
    domains: Option<BTreeMap<String, String>>,
    users: Option<BTreeMap<String, String>>,
    critical: Option<bool>,
    retention_days: Option<u32>,
    pending_max: Option<u64>,
}

fn policy(key: &str, v: &str) -> Result<ArchivePolicy, ConfigError> {
    ArchivePolicy::parse(v).ok_or_else(|| invalid(key, format!("{v:?}: expected \"all\", \"none\" or \"federated\"")))
}

/// `user@Domain` -> `user@domain` (the pool's AOR keys have the host lowercased).
fn user_key(k: &str) -> Option<String> {
    let (user, domain) = k.trim().trim_start_matches("sip:").rsplit_once('@')?;
    (!user.is_empty() && !domain.is_empty()).then(|| format!("{user}@{}", domain.to_ascii_lowercase()))
}

pub(super) fn build(raw: RawArchive) -> Result<ArchiveConfig, ConfigError> {
    let d = ArchiveConfig::default();
    let mut c = ArchiveConfig {
        policy: raw.policy.as_deref().map(|p| policy("[archive] policy", p)).transpose()?.unwrap_or(d.policy),
        critical: raw.critical.unwrap_or(d.critical),
        retention_days: raw.retention_days.unwrap_or(d.retention_days),
        pending_max: raw.pending_max.unwrap_or(d.pending_max),
        ..d
    };
    let most = crate::store::archive::PENDING_MAX_DEFAULT;
    if c.pending_max == 0 || c.pending_max > most {
        return Err(invalid("[archive] pending_max", format!("{}: 1 to {most} (half the store queue)", c.pending_max)));
    }
    for (k, v) in raw.domains.unwrap_or_default() {
        let p = policy(&format!("[archive.domains] {k:?}"), &v)?;
        c.domains.insert(k.trim().to_ascii_lowercase(), p);
    }
    for (k, v) in raw.users.unwrap_or_default() {
        let key = user_key(&k).ok_or_else(|| invalid("[archive.users]", format!("{k:?}: expected user@domain")))?;
        c.users.insert(key, policy(&format!("[archive.users] {k:?}"), &v)?);
    }
    Ok(c)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_keys() {
        let raw: RawArchive = toml::from_str(
            "policy = \"federated\"\ncritical = true\nretention_days = 30\n[domains]\n\"Example.com\" = \"all\"\n[users]\n\"Ceo@Example.com\" = \"none\"\n",
        )
        .unwrap();
        let c = build(raw).unwrap();
        assert_eq!(c.policy, ArchivePolicy::Federated);
        assert_eq!(c.domains.get("example.com"), Some(&ArchivePolicy::All));
        assert_eq!(c.users.get("Ceo@example.com"), Some(&ArchivePolicy::None));
        let raw: RawArchive = toml::from_str("policy = \"some\"").unwrap();
        let e = build(raw).err().unwrap().to_string();
        assert!(e.contains("[archive] policy") && e.contains("\"some\""), "{e}");
        let raw: RawArchive = toml::from_str("[users]\n\"nobody\" = \"all\"").unwrap();
        assert!(build(raw).err().unwrap().to_string().contains("[archive.users]"));
    }
}
