//! The [`Store`] on SQLite (rusqlite, SQLite bundled): one database file, WAL journal with `synchronous=FULL`
//! so a committed write survives a power cut; the schema in `migrations/sqlite/*.sql`, its version in
//! `PRAGMA user_version`.
//! Blocking: run it on the store thread, never on an executor.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::archive::{ArchiveQuery, ArchiveRow};
use super::{
    ContactRow, CredentialRow, DirectoryRow, DirectoryWrite, MemberRow, PolicyRow, StateRow, StateWrite, Store,
    StoreError,
};

/// Versioned schema steps, applied in order at open (each once; the version is `PRAGMA user_version`).
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/sqlite/0001_initial.sql")),
    (2, include_str!("migrations/sqlite/0002_members.sql")),
    (3, include_str!("migrations/sqlite/0003_archive.sql")),
    (4, include_str!("migrations/sqlite/0004_directory.sql")),
    (5, include_str!("migrations/sqlite/0005_user_owner.sql")),
    (6, include_str!("migrations/sqlite/0006_directory_pool.sql")),
];

pub struct SqliteStore {
    conn: Connection,
    /// `PRAGMA data_version` at the last look: it moves when another connection commits.
    data_version: i64,
}

fn err(what: &str, e: rusqlite::Error) -> StoreError {
    StoreError(format!("{what}: {e}"))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn state_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StateRow> {
    let at: i64 = r.get(3)?;
    Ok(StateRow { kind: r.get(0)?, key: r.get(1)?, value: r.get(2)?, expires_at: to_u64(at) })
}

/// How long opening waits for another process that holds the file's lock (several front ends start at once).
const OPEN_BUSY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Puts the file in WAL mode. Switching the mode takes the file's lock and, unlike ordinary statements, does
/// not wait through the busy timeout: when another process (a front end starting at the same moment) holds it,
/// try again, bounded. A file already in WAL mode needs no switch.
fn wal(conn: &Connection) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + OPEN_BUSY_MAX;
    loop {
        // journal_mode answers with a row; read it rather than execute.
        let mode = conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0));
        if mode.as_deref().is_ok_and(|m| m.eq_ignore_ascii_case("wal")) {
            return Ok(());
        }
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
            Ok(_) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(err("WAL", e)),
        }
    }
}

/// Applies schema step `v` unless another process (a front end or the edge opening the same file at the same
/// moment) already did: the version is read again under the write lock, and moves in the same transaction as
/// the step, so a crash leaves either or neither.
fn migrate_step(conn: &Connection, v: i64, text: &str) -> Result<(), StoreError> {
    let what = format!("migration {v}");
    conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| err(&what, e))?;
    let step = || -> rusqlite::Result<()> {
        let now: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now < v {
            conn.execute_batch(&format!("{text}; PRAGMA user_version={v};"))?;
        }
        conn.execute_batch("COMMIT")
    };
    step().map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        err(&what, e)
    })
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
        wal(&conn)?;
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;").map_err(|e| err("pragmas", e))?;
        let version: i64 =
            conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| err("user_version", e))?;
        let newest = MIGRATIONS.last().map_or(0, |m| m.0);
        if version > newest {
            return Err(StoreError(format!(
                "{name} has schema version {version}, newer than this build understands ({newest})"
            )));
        }
        for (v, text) in MIGRATIONS.iter().filter(|m| m.0 > version) {
            migrate_step(&conn, *v, text)?;
        }
        let data_version =
            conn.query_row("PRAGMA data_version", [], |r| r.get(0)).map_err(|e| err("data_version", e))?;
        Ok(SqliteStore { conn, data_version })
    }
}

/// A user's latest claim (0: never claimed).
fn sqlite_gen(tx: &rusqlite::Transaction<'_>, aor: &str) -> Result<u64, StoreError> {
    let g: Option<i64> = tx
        .query_row("SELECT gen FROM user_owner WHERE aor = ?1", params![aor], |r| r.get(0))
        .optional()
        .map_err(|e| err("read user generation", e))?;
    Ok(g.map_or(0, |g| u64::try_from(g).unwrap_or(0)))
}

fn apply_states(tx: &rusqlite::Transaction<'_>, writes: &[StateWrite]) -> Result<(), StoreError> {
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
            StateWrite::Fenced { aor, gen, write } => {
                if sqlite_gen(tx, aor)? == *gen {
                    apply_states(tx, std::slice::from_ref(write))?;
                } else {
                    tracing::debug!(%aor, gen, "store: an old owner's soft-state write refused");
                }
            }
        }
    }
    Ok(())
}

impl Store for SqliteStore {
    fn write_rollups(&mut self, rows: &[super::rollup::RollupRow]) -> Result<(), StoreError> {
        super::rollup::sqlite_write(&mut self.conn, rows)
    }

    fn rollups(&mut self, since: u64) -> Result<Vec<super::rollup::RollupRow>, StoreError> {
        super::rollup::sqlite_read(&mut self.conn, since)
    }

    fn prune_rollups(&mut self, before: u64) -> Result<usize, StoreError> {
        super::rollup::sqlite_prune(&mut self.conn, before)
    }

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
        // IMMEDIATE: with several front ends writing one file, a deferred transaction that upgrades to a writer
        // fails with SQLITE_BUSY at once instead of waiting out the busy timeout.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| err("begin", e))?;
        apply_states(&tx, writes)?;
        tx.commit().map_err(|e| err("commit", e))
    }

    fn claim_user(&mut self, aor: &str, member: &str) -> Result<u64, StoreError> {
        let gen: i64 = self
            .conn
            .query_row(
                "INSERT INTO user_owner (aor, member, gen) VALUES (?1, ?2, 1)
                 ON CONFLICT (aor) DO UPDATE SET member = excluded.member, gen = user_owner.gen + 1 RETURNING gen",
                params![aor, member],
                |r| r.get(0),
            )
            .map_err(|e| err("claim user", e))?;
        Ok(u64::try_from(gen).unwrap_or(0))
    }

    fn write_states_fenced(&mut self, aor: &str, gen: u64, writes: &[StateWrite]) -> Result<bool, StoreError> {
        // IMMEDIATE: the generation read and the writes are one writer's, no claim comes in between.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| err("begin", e))?;
        if sqlite_gen(&tx, aor)? != gen {
            return Ok(false);
        }
        apply_states(&tx, writes)?;
        tx.commit().map_err(|e| err("commit", e))?;
        Ok(true)
    }

    fn states_of(&mut self, aor: &str, now: u64) -> Result<Vec<StateRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT kind, key, value, expires_at FROM soft_state
                 WHERE expires_at > ?1 AND (key = ?2 OR substr(key, 1, length(?3)) = ?3) ORDER BY kind, key",
            )
            .map_err(|e| err("states of a user", e))?;
        let rows = st
            .query_map(params![to_i64(now), aor, format!("{aor} ")], state_row)
            .map_err(|e| err("states of a user", e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| err("states of a user", e))
    }

    fn renew_member(&mut self, row: &MemberRow) -> Result<(), StoreError> {
        let state = if row.state == "gone" { "gone" } else { "active" };
        self.conn
            .execute(
                "INSERT INTO member (name, addr, state, lease_until_ms, users, load, in_flight)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name) DO UPDATE SET addr = excluded.addr, lease_until_ms = excluded.lease_until_ms,
                   users = excluded.users, load = excluded.load, in_flight = excluded.in_flight,
                   state = CASE WHEN excluded.state = 'gone' THEN 'gone'
                                WHEN member.state = 'draining' THEN 'draining' ELSE 'active' END",
                params![
                    row.name,
                    row.addr,
                    state,
                    to_i64(row.lease_until_ms),
                    to_i64(row.users),
                    to_i64(row.load),
                    to_i64(row.in_flight)
                ],
            )
            .map_err(|e| err("renew member lease", e))?;
        Ok(())
    }

    fn members(&mut self) -> Result<Vec<MemberRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT name, addr, state, lease_until_ms, users, load, in_flight FROM member ORDER BY name",
            )
            .map_err(|e| err("members", e))?;
        let rows = st
            .query_map([], |r| {
                Ok(MemberRow {
                    name: r.get(0)?,
                    addr: r.get(1)?,
                    state: r.get(2)?,
                    lease_until_ms: to_u64(r.get(3)?),
                    users: to_u64(r.get(4)?),
                    load: to_u64(r.get(5)?),
                    in_flight: to_u64(r.get(6)?),
                })
            })
            .map_err(|e| err("members", e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| err("members", e))
    }

    fn set_member_state(&mut self, name: &str, state: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("UPDATE member SET state = ?2 WHERE name = ?1", params![name, state])
            .map_err(|e| err("set member state", e))?;
        Ok(n > 0)
    }

    fn shared_secret(&mut self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.conn
            .execute(
                "INSERT INTO pool_secret (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, candidate],
            )
            .map_err(|e| err("store secret", e))?;
        self.conn
            .query_row("SELECT value FROM pool_secret WHERE name = ?1", [name], |r| r.get(0))
            .map_err(|e| err("read secret", e))
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
                        office, manager, ha1_md5, ha1_sha256, disabled_at, home_pool
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
                    pool: r.get(15)?,
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
                            title, department, phone, office, manager, ha1_md5, ha1_sha256, disabled_at, home_pool)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
                         ON CONFLICT (alias) DO UPDATE SET source = excluded.source,
                            source_key = excluded.source_key, display_name = excluded.display_name,
                            first = excluded.first, last = excluded.last, account = excluded.account,
                            title = excluded.title, department = excluded.department, phone = excluded.phone,
                            office = excluded.office, manager = excluded.manager, ha1_md5 = excluded.ha1_md5,
                            ha1_sha256 = excluded.ha1_sha256, disabled_at = excluded.disabled_at,
                            home_pool = excluded.home_pool",
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
                            p.disabled_at.map(|a| i64::try_from(a).unwrap_or(i64::MAX)),
                            p.pool
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

    fn write_archive(&mut self, rows: &[ArchiveRow]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(|e| err("begin", e))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO im_archive (at_ms, sender, recipient, direction, content_type, body, call_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(|e| err("archive", e))?;
            for r in rows {
                st.execute(params![r.at_ms, r.sender, r.recipient, r.direction, r.content_type, r.body, r.call_id])
                    .map_err(|e| err("archive", e))?;
            }
        }
        tx.commit().map_err(|e| err("commit archive", e))
    }

    fn search_archive(&mut self, q: &ArchiveQuery) -> Result<Vec<ArchiveRow>, StoreError> {
        let (since, until) = q.range();
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, at_ms, sender, recipient, direction, content_type, body, call_id FROM im_archive
                 WHERE (?1 IS NULL OR sender = ?1 OR recipient = ?1) AND (?2 IS NULL OR sender = ?2 OR recipient = ?2)
                   AND at_ms >= ?3 AND at_ms < ?4 AND (?5 IS NULL OR instr(body, ?5) > 0) AND id > ?6
                 ORDER BY id LIMIT ?7",
            )
            .map_err(|e| err("archive search", e))?;
        let limit = q.limit.min(super::archive::SEARCH_LIMIT_MAX);
        let rows = st
            .query_map(params![q.user, q.peer, since, until, q.text, q.after_id, limit], |r| {
                Ok(ArchiveRow {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    sender: r.get(2)?,
                    recipient: r.get(3)?,
                    direction: r.get(4)?,
                    content_type: r.get(5)?,
                    body: r.get(6)?,
                    call_id: r.get(7)?,
                })
            })
            .map_err(|e| err("archive search", e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| err("archive search", e))
    }

    fn purge_archive(&mut self, before_ms: i64) -> Result<u64, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM im_archive WHERE at_ms < ?1", [before_ms])
            .map_err(|e| err("archive purge", e))?;
        Ok(n as u64)
    }
}

impl SqliteStore {
    /// Every contact of every owner (for `store migrate`).
    pub fn all_contacts(&mut self) -> Result<Vec<ContactRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT owner, uri, display_name, grp FROM contact ORDER BY owner, grp, uri")
            .map_err(|e| err("contacts", e))?;
        let rows = st
            .query_map([], |r| {
                Ok(ContactRow { owner: r.get(0)?, uri: r.get(1)?, display_name: r.get(2)?, group: r.get(3)? })
            })
            .map_err(|e| err("contacts", e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| err("contacts", e))
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
    fn schema_versioned_and_newer_refused() {
        let dir = std::env::temp_dir().join(format!("parapet-store-ver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("v.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, MIGRATIONS.last().unwrap().0);
        conn.execute_batch("PRAGMA user_version=999").unwrap();
        drop(conn);
        let e = SqliteStore::open(&path).err().unwrap().to_string();
        assert!(e.contains("schema version 999, newer than this build"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_users_state_by_key() {
        let mut s = SqliteStore::in_memory().unwrap();
        let row = |kind: &str, k: &str, at: u64| StateRow {
            kind: kind.into(),
            key: k.into(),
            value: b"v".to_vec(),
            expires_at: at,
        };
        s.write_states(&[
            StateWrite::Put(row("reg", "bob@x", 100)),
            StateWrite::Put(row("pub", "bob@x", 100)),
            StateWrite::Put(row("sub", "bob@x call tag", 100)),
            StateWrite::Put(row("sub", "bob@x old tag", 10)),
            StateWrite::Put(row("reg", "bob@xy", 100)),
            StateWrite::Put(row("reg", "b_b@x", 100)),
            StateWrite::Put(row("sub", "alice@x c bob@x", 100)),
        ])
        .unwrap();
        let keys: Vec<_> = s.states_of("bob@x", 50).unwrap().into_iter().map(|r| (r.kind, r.key)).collect();
        assert_eq!(
            keys,
            vec![
                ("pub".into(), "bob@x".into()),
                ("reg".into(), "bob@x".into()),
                ("sub".into(), "bob@x call tag".into())
            ]
        );
        assert!(s.states_of("BOB@x", 50).unwrap().is_empty(), "keys compare exactly");
        assert_eq!(s.states_of("b_b@x", 50).unwrap().len(), 1);
    }

    #[test]
    fn member_leases_and_drain() {
        let mut s = SqliteStore::in_memory().unwrap();
        let m = |name: &str, state: &str, until: u64| MemberRow {
            name: name.into(),
            addr: "127.0.0.1:5071".into(),
            state: state.into(),
            lease_until_ms: until,
            users: 3,
            load: 7,
            in_flight: 0,
        };
        s.renew_member(&m("fe2", "active", 10)).unwrap();
        s.renew_member(&m("fe1", "active", 10)).unwrap();
        assert!(s.set_member_state("fe1", "draining").unwrap());
        assert!(!s.set_member_state("fe9", "draining").unwrap());
        assert!(s.set_member_state("fe1", "sideways").is_err(), "the schema refuses unknown states");
        s.renew_member(&m("fe1", "active", 20)).unwrap();
        let rows = s.members().unwrap();
        assert_eq!(rows[0], m("fe1", "draining", 20), "a renewal keeps the operator's drain");
        assert_eq!(rows[1], m("fe2", "active", 10));
        s.renew_member(&m("fe2", "gone", 0)).unwrap();
        assert_eq!(s.members().unwrap()[1].state, "gone");
        s.renew_member(&m("fe2", "active", 30)).unwrap();
        assert_eq!(s.members().unwrap()[1].state, "active", "a member coming back is active again");
    }

    #[test]
    fn several_processes_write_one_file() {
        // Front ends on one host share the file: each has its own connection, and no write may fail as busy.
        let dir = std::env::temp_dir().join(format!("parapet-store-mw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("p.db");
        SqliteStore::open(&path).unwrap();
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut s = SqliteStore::open(&path).unwrap();
                    for i in 0..100u64 {
                        let key = format!("u{w}-{i}@x");
                        let row = StateRow { kind: "reg".into(), key, value: vec![1], expires_at: 100 };
                        s.write_states(&[StateWrite::Put(row)]).unwrap();
                        let m = MemberRow {
                            name: format!("fe{w}"),
                            addr: "127.0.0.1:1".into(),
                            state: "active".into(),
                            lease_until_ms: i,
                            users: 0,
                            load: 0,
                            in_flight: 0,
                        };
                        s.renew_member(&m).unwrap();
                        s.members().unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.states(0).unwrap().len(), 300);
        assert_eq!(s.members().unwrap().len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn several_processes_open_a_new_file_at_once() {
        // The edge (rollups) and the pool, or several front ends, may create one file at the same moment: each
        // schema step runs once, and no open fails because another ran it first.
        let dir = std::env::temp_dir().join(format!("parapet-store-mo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("p.db");
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || SqliteStore::open(&path).map(drop))
            })
            .collect();
        for o in openers {
            o.join().unwrap().unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, MIGRATIONS.last().unwrap().0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_first_secret_wins() {
        let mut s = SqliteStore::in_memory().unwrap();
        assert_eq!(s.shared_secret("nonce", b"first").unwrap(), b"first");
        assert_eq!(s.shared_secret("nonce", b"second").unwrap(), b"first");
        assert_eq!(s.shared_secret("other", b"second").unwrap(), b"second");
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
        let bob = DirectoryRow { alias: "bob".into(), disabled_at: Some(77), pool: "branch".into(), ..ann.clone() };
        s.write_directory(
            &[DirectoryWrite::Put(Box::new(bob.clone())), DirectoryWrite::Put(Box::new(ann.clone()))],
            &[("corp".into(), "20261203120000Z".into())],
        )
        .unwrap();
        assert_eq!(s.directory_rows().unwrap(), vec![ann.clone(), bob]);
        let ann2 = DirectoryRow { title: "CTO".into(), pool: "hq".into(), ..ann };
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
