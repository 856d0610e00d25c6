//! Several pools behind one edge: a user's home pool is named in the directory (the users file's `pool`
//! column), and the edge sends the user's requests to it, so a deployment can mix a Standard Edition server and
//! an enterprise pool.
//!
//! ```toml
//! [edge.pool]                # the default pool (single address, or the enterprise pool of [edge.roster])
//! name = "pool.example.com"
//! addr = "127.0.0.1:5061"
//!
//! [[edge.pools]]             # another pool, a single front end (Standard Edition)
//! name = "branch"            # the home name the users file's `pool` column gives
//! addr = "127.0.0.1:5071"
//! cert_name = "pool.example.com"   # the certificate name it presents; default: [edge.pool] name
//!
//! [edge.homes]
//! users = "users.toml"       # who is homed where; read on a thread at start and when it changes
//! reload_s = 10
//! ```
//!
//! On the pool side, `[pool] home = "branch"` names the pool; with it, the pool serves only the users homed on
//! it (`[pool] home_default = true`: also those with no `pool` column) and answers the others 403 (REGISTER)
//! or 404, naming their home.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{parse_addr, resolve, ConfigError, Peer};
use crate::store::directory::pool_name_ok;

pub const DEFAULT_RELOAD_S: u64 = 10;
/// Pools one edge routes to besides its default one.
pub const POOLS_MAX: usize = 16;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHomePool {
    name: Option<String>,
    addr: Option<String>,
    cert_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHomes {
    users: Option<PathBuf>,
    reload_s: Option<u64>,
}

/// A pool users may be homed on, besides the default one.
#[derive(Debug, Clone, PartialEq)]
pub struct HomePool {
    /// Its home name (the users file's `pool` column).
    pub name: String,
    /// Where to connect, and the certificate name it must present.
    pub peer: Peer,
}

/// `[edge.homes]`: where the edge learns each user's home pool.
#[derive(Debug, Clone, PartialEq)]
pub struct HomesConfig {
    /// A users file (.toml or .csv) with a `pool` column; read on a thread of its own, never on an executor.
    pub users: PathBuf,
    pub reload_s: u64,
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// `default_cert` is `[edge.pool] name`, the default certificate name of every pool.
pub(super) fn build(
    pools: Vec<RawHomePool>,
    homes: Option<RawHomes>,
    base_dir: &Path,
    default_cert: &str,
) -> Result<(Vec<HomePool>, Option<HomesConfig>), ConfigError> {
    if pools.len() > POOLS_MAX {
        return Err(invalid("[[edge.pools]]", format!("{} pools: at most {POOLS_MAX}", pools.len())));
    }
    let mut out: Vec<HomePool> = Vec::with_capacity(pools.len());
    for (i, p) in pools.into_iter().enumerate() {
        let bare = format!("edge.pools.{i}");
        let table = format!("[{bare}]");
        let name = p.name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
        let Some(name) = name else { return Err(invalid(format!("{table} name"), "missing")) };
        if !pool_name_ok(&name) {
            return Err(invalid(format!("{table} name"), format!("{name:?}: letters, digits, '-', '_' and '.'")));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(invalid(format!("{table} name"), format!("{name:?} is named twice")));
        }
        let Some(addr) = p.addr else { return Err(invalid(format!("{table} addr"), "missing")) };
        let addr = parse_addr(&bare, "addr", &addr)?;
        let cert = p.cert_name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
        out.push(HomePool { name, peer: Peer { name: cert.unwrap_or_else(|| default_cert.to_string()), addr } });
    }
    let homes = match homes {
        None if out.is_empty() => None,
        None => return Err(invalid("[edge.homes] users", "missing (who is homed on which of [[edge.pools]])")),
        Some(h) => {
            let users = resolve(base_dir, h.users);
            if users.as_os_str().is_empty() {
                return Err(invalid("[edge.homes] users", "missing (a users file with a `pool` column)"));
            }
            let reload_s = h.reload_s.unwrap_or(DEFAULT_RELOAD_S);
            if !(1..=3600).contains(&reload_s) {
                return Err(invalid("[edge.homes] reload_s", format!("{reload_s}: expected 1 to 3600")));
            }
            Some(HomesConfig { users, reload_s })
        }
    };
    Ok((out, homes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(name: &str, addr: &str) -> RawHomePool {
        RawHomePool { name: Some(name.into()), addr: Some(addr.into()), cert_name: None }
    }

    fn homes() -> Option<RawHomes> {
        Some(RawHomes { users: Some("users.toml".into()), reload_s: None })
    }

    #[test]
    fn pools_with_their_homes_file() {
        let (pools, h) = build(vec![raw("branch", "127.0.0.1:5071")], homes(), Path::new("/etc/p"), "pool.x").unwrap();
        assert_eq!(pools[0].name, "branch");
        assert_eq!(pools[0].peer.name, "pool.x", "the default certificate name");
        let h = h.unwrap();
        assert_eq!(h.users, PathBuf::from("/etc/p/users.toml"));
        assert_eq!(h.reload_s, DEFAULT_RELOAD_S);
        assert_eq!(build(vec![], None, Path::new("."), "p").unwrap(), (vec![], None));
    }

    #[test]
    fn errors_name_the_key() {
        let e = |pools, homes| build(pools, homes, Path::new("."), "p").unwrap_err().to_string();
        assert!(e(vec![raw("a", "127.0.0.1:1")], None).contains("[edge.homes] users"));
        assert!(e(vec![raw("a b", "127.0.0.1:1")], homes()).contains("[edge.pools.0] name"));
        assert!(e(vec![raw("a", "127.0.0.1:1"), raw("a", "127.0.0.1:2")], homes()).contains("named twice"));
        assert!(e(vec![raw("a", "nowhere")], homes()).contains("addr"));
        let slow = Some(RawHomes { users: Some("u.toml".into()), reload_s: Some(0) });
        assert!(e(vec![raw("a", "127.0.0.1:1")], slow).contains("reload_s"));
    }
}
