//! Several pools behind one edge: a user's home pool is named in the directory (the users file's `pool`
//! column, or the synced directory's people: an LDAP attribute or a source's fixed `pool`, see
//! `config::directory`), and the edge sends the user's requests to it, so a deployment can mix a Standard
//! Edition server and an enterprise pool.
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
//! [[edge.pools]]             # or an enterprise pool: its members instead of addr, as in [edge.roster]
//! name = "ent"
//! [edge.pools.roster]
//! database = "ent/parapet.db"      # or url = "postgres://...": its store, for the members' leases
//! [[edge.pools.roster.members]]
//! name = "fe1"
//! addr = "127.0.0.1:5081"
//!
//! [edge.homes]                # who is homed where, read on a thread at start and every reload_s; one of:
//! users = "users.toml"        # a users file with a `pool` column, re-read when it changes
//! # database = "parapet.db"   # the default pool's SQLite store, where `parapet directory sync` lands
//! # url = "postgres://..."    # the default pool's PostgreSQL store, likewise
//! reload_s = 10
//! ```
//!
//! On the pool side, `[pool] home = "branch"` names the pool; with it, the pool serves only the users homed on
//! it (`[pool] home_default = true`: also those with no `pool` column) and answers the others 403 (REGISTER)
//! or 404, naming their home.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::roster::{RawRoster, RosterConfig};
use super::store::{StoreConfig, DEFAULT_START_TIMEOUT_S};
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
    roster: Option<RawRoster>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHomes {
    users: Option<PathBuf>,
    database: Option<PathBuf>,
    url: Option<String>,
    reload_s: Option<u64>,
}

/// A pool users may be homed on, besides the default one.
#[derive(Debug, Clone, PartialEq)]
pub struct HomePool {
    /// Its home name (the users file's `pool` column).
    pub name: String,
    /// A single front end: where to connect, and the certificate name it must present.
    pub peer: Option<Peer>,
    /// An enterprise pool: its members, routed to by owner as the default pool's (exactly one of the two).
    pub roster: Option<RosterConfig>,
}

/// Where the edge reads homes from; either is read on a thread of its own, never on an executor.
#[derive(Debug, Clone, PartialEq)]
pub enum HomesFrom {
    /// A users file (.toml or .csv) with a `pool` column.
    Users(PathBuf),
    /// The default pool's store, where the synced directory's people are (`directory_person.home_pool`): the
    /// SQLite file `database`, or PostgreSQL when `store` has a URL.
    Store { database: PathBuf, store: Option<StoreConfig> },
}

/// `[edge.homes]`: where the edge learns each user's home pool.
#[derive(Debug, Clone, PartialEq)]
pub struct HomesConfig {
    pub from: HomesFrom,
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
        let cert = p.cert_name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
        let cert = cert.unwrap_or_else(|| default_cert.to_string());
        let (peer, roster) = match (p.addr, p.roster) {
            (Some(addr), None) => (Some(Peer { name: cert, addr: parse_addr(&bare, "addr", &addr)? }), None),
            (None, Some(r)) => (None, Some(super::roster::build(r, &format!("{bare}.roster"), base_dir, &cert)?)),
            (None, None) => {
                return Err(invalid(format!("{table} addr"), "missing (or its members: [edge.pools.roster])"))
            }
            (Some(_), Some(_)) => {
                return Err(invalid(format!("{table} addr"), "and [edge.pools.roster]: a pool is one or the other"))
            }
        };
        out.push(HomePool { name, peer, roster });
    }
    let homes = match homes {
        None if out.is_empty() => None,
        None => {
            return Err(invalid(
                "[edge.homes] users",
                "missing (who is homed on which of [[edge.pools]]: users, database or url)",
            ))
        }
        Some(h) => {
            let users = resolve(base_dir, h.users);
            let database = resolve(base_dir, h.database);
            let url = h.url.map(|u| u.trim().to_string()).filter(|u| !u.is_empty());
            let from = match (users.as_os_str().is_empty(), database.as_os_str().is_empty(), url) {
                (false, true, None) => HomesFrom::Users(users),
                (true, false, None) => HomesFrom::Store { database, store: None },
                (true, true, Some(url)) => HomesFrom::Store {
                    database,
                    store: Some(StoreConfig { url: Some(url), start_timeout_s: DEFAULT_START_TIMEOUT_S }),
                },
                (true, true, None) => {
                    return Err(invalid(
                        "[edge.homes] users",
                        "missing: a users file with a `pool` column, or the default pool's store (database or url)",
                    ))
                }
                _ => return Err(invalid("[edge.homes] users", "users, database and url: give exactly one")),
            };
            let reload_s = h.reload_s.unwrap_or(DEFAULT_RELOAD_S);
            if !(1..=3600).contains(&reload_s) {
                return Err(invalid("[edge.homes] reload_s", format!("{reload_s}: expected 1 to 3600")));
            }
            Some(HomesConfig { from, reload_s })
        }
    };
    Ok((out, homes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(name: &str, addr: &str) -> RawHomePool {
        RawHomePool { name: Some(name.into()), addr: Some(addr.into()), ..RawHomePool::default() }
    }

    fn homes() -> Option<RawHomes> {
        Some(RawHomes { users: Some("users.toml".into()), ..RawHomes::default() })
    }

    #[test]
    fn pools_with_their_homes_file() {
        let (pools, h) = build(vec![raw("branch", "127.0.0.1:5071")], homes(), Path::new("/etc/p"), "pool.x").unwrap();
        assert_eq!(pools[0].name, "branch");
        assert_eq!(pools[0].peer.as_ref().map(|p| p.name.as_str()), Some("pool.x"), "the default certificate name");
        let h = h.unwrap();
        assert_eq!(h.from, HomesFrom::Users(PathBuf::from("/etc/p/users.toml")));
        assert_eq!(h.reload_s, DEFAULT_RELOAD_S);
        assert_eq!(build(vec![], None, Path::new("."), "p").unwrap(), (vec![], None));
    }

    #[test]
    fn homes_from_the_default_pools_store() {
        let b = |h: RawHomes| build(vec![raw("b", "127.0.0.1:1")], Some(h), Path::new("/d"), "p").map(|(_, h)| h);
        let db = RawHomes { database: Some("parapet.db".into()), reload_s: Some(2), ..RawHomes::default() };
        let h = b(db).unwrap().unwrap();
        assert_eq!(h.from, HomesFrom::Store { database: PathBuf::from("/d/parapet.db"), store: None });
        assert_eq!(h.reload_s, 2);
        let pg = RawHomes { url: Some("postgres://db/parapet".into()), ..RawHomes::default() };
        let HomesFrom::Store { store: Some(s), .. } = b(pg).unwrap().unwrap().from else { panic!("a store") };
        assert_eq!(s.url.as_deref(), Some("postgres://db/parapet"));
        let both = RawHomes { users: Some("u.toml".into()), database: Some("p.db".into()), ..RawHomes::default() };
        assert!(b(both).unwrap_err().to_string().contains("exactly one"));
        let none = RawHomes { reload_s: Some(5), ..RawHomes::default() };
        assert!(b(none).unwrap_err().to_string().contains("[edge.homes] users missing"));
    }

    #[test]
    fn errors_name_the_key() {
        let e = |pools, homes| build(pools, homes, Path::new("."), "p").unwrap_err().to_string();
        assert!(e(vec![raw("a", "127.0.0.1:1")], None).contains("[edge.homes] users"));
        assert!(e(vec![raw("a b", "127.0.0.1:1")], homes()).contains("[edge.pools.0] name"));
        assert!(e(vec![raw("a", "127.0.0.1:1"), raw("a", "127.0.0.1:2")], homes()).contains("named twice"));
        assert!(e(vec![raw("a", "nowhere")], homes()).contains("addr"));
        let slow = Some(RawHomes { users: Some("u.toml".into()), reload_s: Some(0), ..RawHomes::default() });
        assert!(e(vec![raw("a", "127.0.0.1:1")], slow).contains("reload_s"));
    }

    #[test]
    fn an_enterprise_pool_as_an_extra_pool() {
        let text = "domain = \"x.test\"\n[edge]\ncert = \"e.pem\"\nkey = \"e.key\"\nca = \"ca.pem\"\n\
                    [edge.pool]\nname = \"pool.x.test\"\naddr = \"127.0.0.1:5061\"\n\
                    [[edge.pools]]\nname = \"ent\"\ncert_name = \"ent.x.test\"\n\
                    [edge.pools.roster]\ndatabase = \"ent/parapet.db\"\n\
                    [[edge.pools.roster.members]]\nname = \"fe1\"\naddr = \"127.0.0.1:5081\"\n\
                    [[edge.pools.roster.members]]\nname = \"fe2\"\naddr = \"127.0.0.1:5082\"\n\
                    [edge.homes]\ndatabase = \"parapet.db\"\n";
        let c = crate::config::Config::from_toml_str(text, Path::new("/d")).unwrap();
        let e = c.edge.unwrap();
        let r = e.pools[0].roster.as_ref().unwrap();
        assert!(e.pools[0].peer.is_none());
        assert_eq!(r.database, PathBuf::from("/d/ent/parapet.db"));
        assert_eq!(r.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["fe1", "fe2"]);
        assert_eq!(r.members[1].peer.name, "ent.x.test", "the pool's certificate name");
        assert!(e.pool_names.iter().any(|n| n == "ent.x.test"), "its members may connect: {:?}", e.pool_names);
        let both = text.replace("cert_name = \"ent.x.test\"\n", "addr = \"127.0.0.1:1\"\n");
        let err = crate::config::Config::from_toml_str(&both, Path::new("/d")).unwrap_err().to_string();
        assert!(err.contains("[edge.pools.0] addr") && err.contains("one or the other"), "{err}");
        let empty = text.replace("[[edge.pools.roster.members]]", "[[edge.pools.roster.x]]");
        let err = crate::config::Config::from_toml_str(&empty, Path::new("/d")).unwrap_err().to_string();
        assert!(err.contains("edge.pools"), "{err}");
    }
}
