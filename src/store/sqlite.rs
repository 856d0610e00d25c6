//! The [`Store`] on SQLite (rusqlite, SQLite bundled): one database file, WAL journal with `synchronous=FULL`
//! so a committed write survives a power cut, a schema version in `user_version` for later migrations.
//! Blocking: run it on the store thread, never on an executor.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    ContactRow, CredentialRow, DirectoryRow, DirectoryWrite, PolicyRow, StateRow, StateWrite, Store, StoreError,
};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS policy (
    owner    TEXT NOT NULL,
    target   TEXT NOT NULL,
    presence TEXT CHECK (presence IN ('allow', 'block')),
    im       TEXT CHECK (im IN ('allow', 'block')),
    PRIMARY KEY (owner, target)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS soft_state (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contact (
    owner        TEXT NOT NULL,
    uri          TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    grp          TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (owner, uri)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS directory_person (
    alias        TEXT PRIMARY KEY,
    source       TEXT NOT NULL,
    source_key   TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    first        TEXT NOT NULL DEFAULT '',
    last         TEXT NOT NULL DEFAULT '',
    account      TEXT NOT NULL DEFAULT '',
    title        TEXT NOT NULL DEFAULT '',
    department   TEXT NOT NULL DEFAULT '',
    phone        TEXT NOT NULL DEFAULT '',
    office       TEXT NOT NULL DEFAULT '',
    manager      TEXT NOT NULL DEFAULT '',
    ha1_md5      TEXT,
    ha1_sha256   TEXT,
    disabled_at  INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS directory_mark (
    source TEXT PRIMARY KEY,
    mark   TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS directory_credential (
    alias      TEXT PRIMARY KEY,
    ha1_md5    TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL
) WITHOUT ROWID;
";

pub struct SqliteStore {
    conn: Connection,
    /// `PRAGMA data_version` at the last look: it moves when another connection commits.
    data_version: i64,
}

fn err(what: &str, e: rusqlite::Error) -> StoreError {
    StoreError(format!("{what}: {e}"))
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(|e| err(&format!("cannot open {}", path.display()), e))?;
        Self::init(conn, &path.display().to_string())
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory().map_err(|e| err("cannot open an in-memory database", e))?;
        Self::init(conn, ":memory:")
    }

    fn init(conn: Connection, name: &str) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| err("busy_timeout", e))?;
        // journal_mode answers with a row; read it rather than execute.
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(|e| err("WAL", e))?;
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;").map_err(|e| err("pragmas", e))?;
        let version: i64 =
            conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| err("user_version", e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError(format!(
                "{name} has schema version {version}, newer than this build understands ({SCHEMA_VERSION})"
            )));
        }
        conn.execute_batch(SCHEMA).map_err(|e| err("schema", e))?;
        conn.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION}")).map_err(|e| err("user_version", e))?;
        let data_version =
            conn.query_row("PRAGMA data_version", [], |r| r.get(0)).map_err(|e| err("data_version", e))?;
        Ok(SqliteStore { conn, data_version })
    }
}

impl Store for SqliteStore {
    fn policies(&mut self) -> Result<Vec<PolicyRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT owner, target, presence, im FROM policy ORDER BY owner, target")
            .map_err(|e| err("policies", e))?;
        let rows = st
            .query_map([], |r| {
                Ok(PolicyRow { owner: r.get(0)?, target: r.get(1)?, presence: r.get(2)?, im: r.get(3)? })
            })
            .map_err(|e| err("policies", e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| err("policies", e))
    }

    fn put_policy(&mut self, row: &PolicyRow) -> Result<(), StoreError> {
        if row.presence.is_none() && row.im.is_none() {
            self.delete_policy(&row.owner, &row.target)?;
            return Ok(());
        }
        self.conn
            .execute(
                "INSERT INTO policy (owner, target, presence, im) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (owner, target) DO UPDATE SET presence = excluded.presence, im = excluded.im",
                params![row.owner, row.target, row.presence, row.im],
            )
            .map_err(|e| err("put policy", e))?;
        Ok(())
    }

    fn delete_policy(&mut self, owner: &str, target: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM policy WHERE owner = ?1 AND target = ?2", params![owner, target])
            .map_err(|e| err("delete policy", e))?;
        Ok(n > 0)
    }

    fn contacts(&mut self, owner: &str) -> Result<Vec<ContactRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT owner, uri, display_name, grp FROM contact WHERE owner = ?1 ORDER BY grp, uri")
            .map_err(|e| err("contacts", e))?;
        let rows = st
            .query_map([owner], |r| {
                Ok(ContactRow { owner: r.get(0)?, uri: r.get(1)?, display_name: r.get(2)?, group: r.get(3)? })
            })
            .map_err(|e| err("contacts", e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| err("contacts", e))
    }

    fn put_contact(&mut self, row: &ContactRow) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO contact (owner, uri, display_name, grp) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (owner, uri) DO UPDATE SET display_name = excluded.display_name, grp = excluded.grp",
                params![row.owner, row.uri, row.display_name, row.group],
            )
            .map_err(|e| err("put contact", e))?;
        Ok(())
    }

    fn delete_contact(&mut self, owner: &str, uri: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM contact WHERE owner = ?1 AND uri = ?2", params![owner, uri])
            .map_err(|e| err("delete contact", e))?;
        Ok(n > 0)
    }

    fn states(&mut self, now: u64) -> Result<Vec<StateRow>, StoreError> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        self.conn
            .execute("DELETE FROM soft_state WHERE expires_at <= ?1", [now])
            .map_err(|e| err("expire state", e))?;
        let mut st = self
            .conn
            .prepare_cached("SELECT kind, key, value, expires_at FROM soft_state ORDER BY kind, key")
            .map_err(|e| err("states", e))?;
        let rows = st
            .query_map([], |r| {
                let at: i64 = r.get(3)?;
                Ok(StateRow {
                    kind: r.get(0)?,
                    key: r.get(1)?,
                    value: r.get(2)?,
                    expires_at: u64::try_from(at).unwrap_or(0),
                })
            })
            .map_err(|e| err("states", e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| err("states", e))
    }

    fn write_states(&mut self, writes: &[StateWrite]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(|e| err("begin", e))?;
        for w in writes {
            match w {
                StateWrite::Put(r) => {
                    tx.execute(
                        "INSERT INTO soft_state (kind, key, value, expires_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                        params![r.kind, r.key, r.value, i64::try_from(r.expires_at).unwrap_or(i64::MAX)],
                    )
                    .map_err(|e| err("put state", e))?;
                }
                StateWrite::Delete { kind, key } => {
                    tx.execute("DELETE FROM soft_state WHERE kind = ?1 AND key = ?2", params![kind, key])
                        .map_err(|e| err("delete state", e))?;
                }
            }
        }
        tx.commit().map_err(|e| err("commit", e))
    }

    fn changed_elsewhere(&mut self) -> Result<bool, StoreError> {
        let v: i64 =
            self.conn.query_row("PRAGMA data_version", [], |r| r.get(0)).map_err(|e| err("data_version", e))?;
        let changed = v != self.data_version;
        self.data_version = v;
        Ok(changed)
    }

    fn directory_rows(&mut self) -> Result<Vec<DirectoryRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT alias, source, source_key, display_name, first, last, account, title, department, phone,
                        office, manager, ha1_md5, ha1_sha256, disabled_at
                 FROM directory_person ORDER BY alias",
            )
            .map_err(|e| err("directory", e))?;
        let rows = st
            .query_map([], |r| {
                let at: Option<i64> = r.get(14)?;
                Ok(DirectoryRow {
                    alias: r.get(0)?,
                    source: r.get(1)?,
                    key: r.get(2)?,
                    display_name: r.get(3)?,
                    first: r.get(4)?,
                    last: r.get(5)?,
                    account: r.get(6)?,
                    title: r.get(7)?,
                    department: r.get(8)?,
                    phone: r.get(9)?,
                    office: r.get(10)?,
                    manager: r.get(11)?,
                    ha1_md5: r.get(12)?,
                    ha1_sha256: r.get(13)?,
                    disabled_at: at.map(|a| u64::try_from(a).unwrap_or(0)),
                })
            })
            .map_err(|e| err("directory", e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| err("directory", e))
    }

    fn write_directory(&mut self, writes: &[DirectoryWrite], marks: &[(String, String)]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(|e| err("begin", e))?;
        for w in writes {
            match w {
                DirectoryWrite::Put(p) => {
                    tx.execute(
                        "INSERT INTO directory_person (alias, source, source_key, display_name, first, last, account,
                            title, department, phone, office, manager, ha1_md5, ha1_sha256, disabled_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                         ON CONFLICT (alias) DO UPDATE SET source = excluded.source,
                            source_key = excluded.source_key, display_name = excluded.display_name,
                            first = excluded.first, last = excluded.last, account = excluded.account,
                            title = excluded.title, department = excluded.department, phone = excluded.phone,
                            office = excluded.office, manager = excluded.manager, ha1_md5 = excluded.ha1_md5,
                            ha1_sha256 = excluded.ha1_sha256, disabled_at = excluded.disabled_at",
                        params![
                            p.alias,
                            p.source,
                            p.key,
                            p.display_name,
                            p.first,
                            p.last,
                            p.account,
                            p.title,
                            p.department,
                            p.phone,
                            p.office,
                            p.manager,
                            p.ha1_md5,
                            p.ha1_sha256,
                            p.disabled_at.map(|a| i64::try_from(a).unwrap_or(i64::MAX))
                        ],
                    )
                    .map_err(|e| err("put person", e))?;
                }
                DirectoryWrite::Delete { alias } => {
                    tx.execute("DELETE FROM directory_person WHERE alias = ?1", [alias])
                        .map_err(|e| err("delete person", e))?;
                }
            }
        }
        for (source, mark) in marks {
            tx.execute(
                "INSERT INTO directory_mark (source, mark) VALUES (?1, ?2)
                 ON CONFLICT (source) DO UPDATE SET mark = excluded.mark",
                params![source, mark],
            )
            .map_err(|e| err("put sync mark", e))?;
        }
        tx.commit().map_err(|e| err("commit", e))
    }

    fn sync_marks(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT source, mark FROM directory_mark ORDER BY source")
            .map_err(|e| err("sync marks", e))?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| err("sync marks", e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| err("sync marks", e))
    }

    fn credentials(&mut self) -> Result<Vec<CredentialRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT alias, ha1_md5, ha1_sha256 FROM directory_credential ORDER BY alias")
            .map_err(|e| err("credentials", e))?;
        let rows = st
            .query_map([], |r| Ok(CredentialRow { alias: r.get(0)?, ha1_md5: r.get(1)?, ha1_sha256: r.get(2)? }))
            .map_err(|e| err("credentials", e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| err("credentials", e))
    }

    fn put_credential(&mut self, row: &CredentialRow) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO directory_credential (alias, ha1_md5, ha1_sha256) VALUES (?1, ?2, ?3)
                 ON CONFLICT (alias) DO UPDATE SET ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256",
                params![row.alias, row.ha1_md5, row.ha1_sha256],
            )
            .map_err(|e| err("put credential", e))?;
        Ok(())
    }
}

/// Whether a schema row exists (used by tests to check the file really is ours).
pub fn has_table(path: &Path, table: &str) -> Result<bool, StoreError> {
    let conn = Connection::open(path).map_err(|e| err("open", e))?;
    conn.query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", [table], |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
        .map_err(|e| err("sqlite_master", e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(owner: &str, target: &str, p: Option<&str>, im: Option<&str>) -> PolicyRow {
        PolicyRow { owner: owner.into(), target: target.into(), presence: p.map(Into::into), im: im.map(Into::into) }
    }

    #[test]
    fn policies_round_trip_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!(
            "parapet-store-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("parapet.db");
        {
            let mut s = SqliteStore::open(&path).unwrap();
            s.put_policy(&row("bob@x", "carol@x", Some("block"), Some("block"))).unwrap();
            s.put_policy(&row("bob@x", "*", Some("allow"), None)).unwrap();
            s.put_policy(&row("bob@x", "carol@x", Some("block"), None)).unwrap();
            s.put_contact(&ContactRow {
                owner: "alice@x".into(),
                uri: "sip:bob@x".into(),
                display_name: "Bob".into(),
                group: "Work".into(),
            })
            .unwrap();
        }
        assert!(has_table(&path, "policy").unwrap());
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(
            s.policies().unwrap(),
            vec![row("bob@x", "*", Some("allow"), None), row("bob@x", "carol@x", Some("block"), None)]
        );
        assert_eq!(s.contacts("alice@x").unwrap().len(), 1);
        assert_eq!(s.contacts("alice@x").unwrap()[0].group, "Work");
        assert!(s.delete_policy("bob@x", "*").unwrap());
        assert!(!s.delete_policy("bob@x", "*").unwrap());
        s.put_policy(&row("bob@x", "carol@x", None, None)).unwrap();
        assert!(s.policies().unwrap().is_empty(), "an entry with no right set is deleted");
        assert!(s.delete_contact("alice@x", "sip:bob@x").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn notices_writes_from_another_connection() {
        let dir = std::env::temp_dir().join(format!("parapet-store-dv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("p.db");
        let mut pool = SqliteStore::open(&path).unwrap();
        let mut cli = SqliteStore::open(&path).unwrap();
        pool.changed_elsewhere().unwrap(); // the second open wrote its schema version
        assert!(!pool.changed_elsewhere().unwrap());
        pool.put_policy(&row("bob@x", "*", Some("allow"), None)).unwrap();
        assert!(!pool.changed_elsewhere().unwrap(), "its own writes are not news");
        cli.put_policy(&row("bob@x", "carol@x", Some("block"), None)).unwrap();
        assert!(pool.changed_elsewhere().unwrap());
        assert!(!pool.changed_elsewhere().unwrap());
        assert_eq!(pool.policies().unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn soft_state_batches_and_expiry() {
        let mut s = SqliteStore::in_memory().unwrap();
        let row =
            |k: &str, at: u64| StateRow { kind: "reg".into(), key: k.into(), value: b"v".to_vec(), expires_at: at };
        s.write_states(&[
            StateWrite::Put(row("a", 100)),
            StateWrite::Put(row("b", 50)),
            StateWrite::Put(row("c", 100)),
        ])
        .unwrap();
        s.write_states(&[StateWrite::Delete { kind: "reg".into(), key: "c".into() }, StateWrite::Put(row("a", 200))])
            .unwrap();
        assert_eq!(s.states(60).unwrap(), vec![row("a", 200)], "b expired, c deleted, a replaced");
        assert_eq!(s.states(10).unwrap(), vec![row("a", 200)], "expired rows are gone for good");
    }

    #[test]
    fn directory_rows_marks_and_credentials() {
        let mut s = SqliteStore::in_memory().unwrap();
        let ann = DirectoryRow {
            alias: "ann".into(),
            source: "corp".into(),
            key: "uid=ann,dc=corp".into(),
            display_name: "Ann Lee".into(),
            ha1_md5: Some("0".repeat(32)),
            ..Default::default()
        };
        let bob = DirectoryRow { alias: "bob".into(), disabled_at: Some(77), ..ann.clone() };
        s.write_directory(
            &[DirectoryWrite::Put(Box::new(bob.clone())), DirectoryWrite::Put(Box::new(ann.clone()))],
            &[("corp".into(), "20261203120000Z".into())],
        )
        .unwrap();
        assert_eq!(s.directory_rows().unwrap(), vec![ann.clone(), bob]);
        let ann2 = DirectoryRow { title: "CTO".into(), ..ann };
        s.write_directory(
            &[DirectoryWrite::Put(Box::new(ann2.clone())), DirectoryWrite::Delete { alias: "bob".into() }],
            &[],
        )
        .unwrap();
        assert_eq!(s.directory_rows().unwrap(), vec![ann2]);
        assert_eq!(s.sync_marks().unwrap(), vec![("corp".to_string(), "20261203120000Z".to_string())]);
        let c = CredentialRow { alias: "ann".into(), ha1_md5: "a".repeat(32), ha1_sha256: "b".repeat(64) };
        s.put_credential(&c).unwrap();
        s.put_credential(&c).unwrap();
        assert_eq!(s.credentials().unwrap(), vec![c]);
    }

    #[test]
    fn refuses_bad_values() {
        let mut s = SqliteStore::in_memory().unwrap();
        assert!(s.put_policy(&row("bob@x", "*", Some("maybe"), None)).is_err());
    }
}
