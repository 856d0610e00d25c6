//! Several pools behind one edge (`[[edge.pools]]`, `config::pools`): each user's home pool, as the directory
//! names it (the users file's `pool` column, or the synced people's home in the default pool's store), and the
//! pool each request goes to. A user homed on one of
//! `[[edge.pools]]` goes there; everyone else (no home, or a home the edge does not know) goes to the default
//! pool (`[edge.pool]`, or the enterprise pool of `[edge.roster]`), which refuses, naming the home, a user it does
//! not serve.
//!
//! Which user a request concerns is the same as for an enterprise pool's owner (`members::routing_aor`): REGISTER
//! its To, everything else its Request-URI; a contact list's URI (`alice+contacts`) is its owner's.
//!
//! The table is built on a thread of its own from the file or the store (`homes_reader`), never on an executor,
//! and handed to each core on its tick; until the first read every user goes to the default pool.

use std::collections::HashMap;

use crate::store::directory::Directory;
use crate::store::DirectoryRow;

/// Who is homed on which of `[[edge.pools]]` (by index); users of the default pool are not in it.
#[derive(Debug, Default)]
pub struct HomeTable {
    /// Our domain (lowercase): AORs of other domains have no home here.
    domain: String,
    by_alias: HashMap<String, usize>,
}

impl HomeTable {
    /// From a users file, `pools` being `[[edge.pools]]`' names in order. Also returns the home names no pool
    /// has (their users go to the default pool), for a log line.
    pub fn build(dir: &Directory, pools: &[String], domain: &str) -> (HomeTable, Vec<String>) {
        Self::from_homes(dir.users.iter().map(|u| (u.alias.as_str(), u.pool.as_str())), pools, domain)
    }

    /// From the synced directory's people (the default pool's store). A disabled person keeps no home: the
    /// default pool refuses them as it refuses anyone it does not know.
    pub fn from_rows(rows: &[DirectoryRow], pools: &[String], domain: &str) -> (HomeTable, Vec<String>) {
        let homes = rows.iter().filter(|r| r.disabled_at.is_none()).map(|r| (r.alias.as_str(), r.pool.as_str()));
        Self::from_homes(homes, pools, domain)
    }

    fn from_homes<'a>(
        homes: impl Iterator<Item = (&'a str, &'a str)>,
        pools: &[String],
        domain: &str,
    ) -> (HomeTable, Vec<String>) {
        let mut by_alias = HashMap::new();
        let mut unknown: Vec<String> = Vec::new();
        for (alias, pool) in homes.filter(|(_, p)| !p.is_empty()) {
            match pools.iter().position(|p| p == pool) {
                Some(i) => {
                    by_alias.insert(alias.to_ascii_lowercase(), i);
                }
                None if !unknown.iter().any(|u| u == pool) => unknown.push(pool.to_string()),
                None => {}
            }
        }
        (HomeTable { domain: domain.to_ascii_lowercase(), by_alias }, unknown)
    }

    /// The pool of `[[edge.pools]]` the user of `aor` (an AOR key, `alias@host`) is homed on; None: the default.
    pub fn pool_of(&self, aor: &str) -> Option<usize> {
        if self.by_alias.is_empty() {
            return None;
        }
        let (user, host) = aor.rsplit_once('@')?;
        if host != self.domain {
            return None;
        }
        let alias = user.strip_suffix(crate::proto::LIST_SUFFIX).filter(|a| !a.is_empty()).unwrap_or(user);
        if alias.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.by_alias.get(&alias.to_ascii_lowercase()).copied();
        }
        self.by_alias.get(alias).copied()
    }

    pub fn len(&self) -> usize {
        self.by_alias.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_alias.is_empty()
    }
}

/// The latest table, shared by the cores of the edge.
pub type HomesSlot = crate::shard::published::Published<HomeTable>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::directory::User;

    fn dir(users: &[(&str, &str)]) -> Directory {
        let user = |(a, p): &(&str, &str)| User { alias: a.to_string(), pool: p.to_string(), ..User::default() };
        Directory { users: users.iter().map(user).collect() }
    }

    #[test]
    fn users_go_to_their_home_pool_else_the_default() {
        let d = dir(&[("alice", ""), ("bob", "branch"), ("carol", "nowhere"), ("Dave", "hq")]);
        let pools = ["hq".to_string(), "branch".to_string()];
        let (t, unknown) = HomeTable::build(&d, &pools, "Example.com");
        assert_eq!(unknown, vec!["nowhere".to_string()]);
        assert_eq!(t.pool_of("bob@example.com"), Some(1));
        assert_eq!(t.pool_of("dave@example.com"), Some(0), "aliases compare as the pool stores them");
        assert_eq!(t.pool_of("DAVE@example.com"), Some(0));
        assert_eq!(t.pool_of("bob+contacts@example.com"), Some(1), "a contact list is its owner's");
        assert_eq!(t.pool_of("alice@example.com"), None, "no home: the default pool");
        assert_eq!(t.pool_of("carol@example.com"), None, "an unknown home: the default pool");
        assert_eq!(t.pool_of("bob@partner.test"), None, "another domain's bob");
        assert_eq!(t.pool_of("example.com"), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn synced_people_go_to_their_home_pool_unless_disabled() {
        let row = |a: &str, p: &str, off: Option<u64>| DirectoryRow {
            alias: a.into(),
            pool: p.into(),
            disabled_at: off,
            ..DirectoryRow::default()
        };
        let rows =
            [row("ann", "branch", None), row("bo", "", None), row("cy", "branch", Some(9)), row("di", "x", None)];
        let (t, unknown) = HomeTable::from_rows(&rows, &["branch".to_string()], "example.com");
        assert_eq!(t.pool_of("ann@example.com"), Some(0));
        assert_eq!(t.pool_of("bo@example.com"), None, "no home: the default pool");
        assert_eq!(t.pool_of("cy@example.com"), None, "disabled: the default pool, which refuses them");
        assert_eq!(unknown, vec!["x".to_string()]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn the_slot_hands_over_new_tables() {
        let slot = HomesSlot::default();
        assert!(slot.get().is_empty());
        let g = slot.generation();
        let (t, _) = HomeTable::build(&dir(&[("bob", "b")]), &["b".to_string()], "x");
        slot.publish(t);
        assert_ne!(slot.generation(), g);
        assert_eq!(slot.get().pool_of("bob@x"), Some(0));
    }
}
