//! `[pool.member]`: this front end as a member of an enterprise pool (several front ends sharing one store).
//! Absent: a Standard Edition pool that owns every user and keeps no lease.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{parse_addr, ConfigError};

/// Lease bounds: below the minimum a busy store would expire healthy members; above the maximum a dead
/// member's users wait too long for a new owner.
pub const LEASE_MS_MIN: u64 = 500;
pub const LEASE_MS_MAX: u64 = 60_000;
/// The failure-detection time by default: a dead member's users move within this.
pub const DEFAULT_LEASE_MS: u64 = 3_000;
pub const DEFAULT_RENEW_MS: u64 = 1_000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMember {
    name: Option<String>,
    addr: Option<String>,
    lease_ms: Option<u64>,
    renew_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// Unique in the pool: its lease row, and what `pool drain` names.
    pub name: String,
    /// Where edges reach this front end; default its `[pool] listen`.
    pub addr: SocketAddr,
    /// How long a renewal keeps it in the roster: the failure-detection time.
    pub lease_ms: u64,
    /// How often it renews (and reads the roster).
    pub renew_ms: u64,
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: format!("[pool.member] {key}"), reason: reason.into() }
}

pub(super) fn build(raw: RawMember, listen: SocketAddr) -> Result<MemberConfig, ConfigError> {
    let name = raw.name.map(|n| n.trim().to_string()).unwrap_or_default();
    if name.is_empty() {
        return Err(invalid("name", "missing (a name unique in the pool, e.g. \"fe1\")"));
    }
    if name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(invalid("name", format!("{name:?}: use at most 64 letters, digits, '-', '_' or '.'")));
    }
    let addr = raw.addr.as_deref().map(|s| parse_addr("pool.member", "addr", s)).transpose()?.unwrap_or(listen);
    let lease_ms = raw.lease_ms.unwrap_or(DEFAULT_LEASE_MS);
    if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms) {
        return Err(invalid("lease_ms", format!("{lease_ms}: expected {LEASE_MS_MIN} to {LEASE_MS_MAX}")));
    }
    let renew_ms = raw.renew_ms.unwrap_or(DEFAULT_RENEW_MS.min(lease_ms / 3));
    if renew_ms == 0 || renew_ms * 2 > lease_ms {
        return Err(invalid("renew_ms", format!("{renew_ms}: must be above 0 and at most half of lease_ms")));
    }
    Ok(MemberConfig { name, addr, lease_ms, renew_ms })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(name: Option<&str>, lease: Option<u64>, renew: Option<u64>) -> RawMember {
        RawMember { name: name.map(Into::into), addr: None, lease_ms: lease, renew_ms: renew }
    }

    #[test]
    fn defaults_and_errors() {
        let listen: SocketAddr = "127.0.0.1:5071".parse().unwrap();
        let c = build(raw(Some("fe1"), None, None), listen).unwrap();
        assert_eq!((c.addr, c.lease_ms, c.renew_ms), (listen, 3_000, 1_000));
        assert_eq!(build(raw(Some("fe1"), Some(900), None), listen).unwrap().renew_ms, 300);
        let e = build(raw(None, None, None), listen).unwrap_err().to_string();
        assert!(e.contains("[pool.member] name"), "{e}");
        assert!(build(raw(Some("a b"), None, None), listen).is_err());
        assert!(build(raw(Some("fe1"), Some(100), None), listen).is_err());
        assert!(build(raw(Some("fe1"), Some(3_000), Some(2_000)), listen).is_err());
    }
}
