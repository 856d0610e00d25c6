//! `[store]`: where the pool's durable data lives. Absent (or without `url`): the embedded SQLite file at
//! `[pool] database`, right for one front end. With `url`: PostgreSQL, shared by every front end of a pool.
//!
//! ```toml
//! [store]
//! url = "postgres://parapet@db1.example.com/parapet"
//! # A primary and its standby: whichever accepts writes is used, so a promoted standby is found.
//! # url = "host=db1,db2 port=5432 user=parapet dbname=parapet target_session_attrs=read-write"
//! start_timeout_s = 30   # how long a starting front end waits for the database
//! ```

use serde::Deserialize;

use super::{invalid, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// A PostgreSQL URL or libpq key/value string; None: SQLite at `[pool] database`.
    pub url: Option<String>,
    /// How long a starting pool retries connecting before it gives up.
    pub start_timeout_s: u64,
}

pub const DEFAULT_START_TIMEOUT_S: u64 = 30;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { url: None, start_timeout_s: DEFAULT_START_TIMEOUT_S }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    url: Option<String>,
    start_timeout_s: Option<u64>,
}

pub(super) fn build(raw: RawStore) -> Result<StoreConfig, ConfigError> {
    let url = match raw.url.map(|u| u.trim().to_string()) {
        None => None,
        Some(u) if u.is_empty() => {
            return Err(invalid("[store] url", "empty (omit it to use the embedded SQLite store)"));
        }
        Some(u) => {
            let is_url = u.starts_with("postgres://") || u.starts_with("postgresql://");
            if !is_url && !u.contains('=') {
                return Err(invalid(
                    "[store] url",
                    format!(
                        "{:?} is not a PostgreSQL URL (expected postgres://user@host/db or \"host=a,b dbname=...\")",
                        crate::store::postgres::without_password(&u)
                    ),
                ));
            }
            crate::store::postgres::check_url(&u).map_err(|e| {
                invalid("[store] url", format!("{}: {e}", crate::store::postgres::without_password(&u)))
            })?;
            Some(u)
        }
    };
    let start_timeout_s = raw.start_timeout_s.unwrap_or(DEFAULT_START_TIMEOUT_S);
    if start_timeout_s == 0 {
        return Err(invalid("[store] start_timeout_s", "must be at least 1"));
    }
    Ok(StoreConfig { url, start_timeout_s })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml_str(text, Path::new("/data")).map_err(|e| e.to_string())
    }

    #[test]
    fn store_table() {
        assert_eq!(load("").unwrap().store, None, "absent: SQLite");
        let c = load("[store]\nurl = \"postgres://p@127.0.0.1:5432/parapet\"\n").unwrap();
        assert_eq!(c.store.unwrap().url.as_deref(), Some("postgres://p@127.0.0.1:5432/parapet"));
        let multi = "[store]\nurl = \"host=a,b dbname=p target_session_attrs=read-write\"\n";
        assert!(load(multi).is_ok());
        let e = load("[store]\nurl = \"mysql://x\"\n").unwrap_err();
        assert!(e.starts_with("config: [store] url: \"mysql://x\" is not a PostgreSQL URL"), "{e}");
        let e = load("[store]\nurl = \"postgres://u:pw@h/db?nonsense=1\"\n").unwrap_err();
        assert!(e.starts_with("config: [store] url: postgres://u:***@h/db?nonsense=1: "), "{e}");
        assert!(!e.contains("pw"), "no password in messages: {e}");
        let e = load("[store]\nurl = \"\"\n").unwrap_err();
        assert!(e.contains("[store] url: empty"), "{e}");
        let e = load("[store]\nurll = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown key `urll` in [store]"), "{e}");
    }
}
