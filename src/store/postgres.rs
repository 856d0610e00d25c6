//! The [`Store`] on PostgreSQL (the blocking `postgres` client, run on the store thread like SQLite). Every
//! write is one committed transaction before the call returns (the server's `synchronous_commit` decides how far
//! a commit has travelled: local WAL by default, a synchronous standby when the operator configures one).
//!
//! The connection is made lazily and remade after a failure, no faster than [`BACKOFF_MAX`] allows: while the
//! server is away every call fails at once with "unavailable" rather than stalling the store thread on connect
//! timeouts. A libpq multi-host URL (`host=a,b ... target_session_attrs=read-write`) makes the reconnection find
//! whichever server is the primary now, so a standby promoted by the operator is picked up.
//!
//! All SQL of this store lives in this file ([`sql`]) and in `migrations/postgres/*.sql`, plain SQL with numbered
//! parameters: a new Store method is one more constant and one more short function here.

use std::str::FromStr;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use super::archive::{ArchiveQuery, ArchiveRow};
use super::{
    ContactRow, CredentialRow, DirectoryRow, DirectoryWrite, MemberRow, PolicyRow, StateRow, StateWrite, Store,
    StoreError,
};

/// Versioned schema steps, applied in order at connect (each once, recorded in `schema_version`).
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/postgres/0001_initial.sql")),
    (2, include_str!("migrations/postgres/0002_members.sql")),
    (3, include_str!("migrations/postgres/0003_archive.sql")),
    (4, include_str!("migrations/postgres/0004_directory.sql")),
    (5, include_str!("migrations/postgres/0005_rollup.sql")),
    (6, include_str!("migrations/postgres/0006_user_owner.sql")),
    (7, include_str!("migrations/postgres/0007_directory_pool.sql")),
];

/// Longest wait between two connection attempts while the server is away.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Connect timeout when the URL sets none: a dead host must not hold the store thread for the OS's minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Any number that other programs are unlikely to use as an advisory lock: serializes schema migrations of
/// several front ends starting at once.
const MIGRATION_LOCK: i64 = 0x0070_6172_6170_6574; // "parapet" in ASCII

/// The SQL, in one place.
pub mod sql {
    pub const SCHEMA_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER PRIMARY KEY,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";
    pub const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
    pub const SCHEMA_VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM schema_version";
    pub const RECORD_VERSION: &str = "INSERT INTO schema_version (version) VALUES ($1)";

    pub const POLICIES: &str = "SELECT owner, target, presence, im FROM policy ORDER BY owner, target";
    pub const PUT_POLICY: &str = "INSERT INTO policy (owner, target, presence, im) VALUES ($1, $2, $3, $4)
        ON CONFLICT (owner, target) DO UPDATE SET presence = excluded.presence, im = excluded.im";
    pub const DELETE_POLICY: &str = "DELETE FROM policy WHERE owner = $1 AND target = $2";
    pub const CONTACTS: &str = "SELECT owner, uri, display_name, grp FROM contact WHERE owner = $1 ORDER BY grp, uri";
    pub const ALL_CONTACTS: &str = "SELECT owner, uri, display_name, grp FROM contact ORDER BY owner, grp, uri";
    pub const PUT_CONTACT: &str = "INSERT INTO contact (owner, uri, display_name, grp) VALUES ($1, $2, $3, $4)
        ON CONFLICT (owner, uri) DO UPDATE SET display_name = excluded.display_name, grp = excluded.grp";
    pub const DELETE_CONTACT: &str = "DELETE FROM contact WHERE owner = $1 AND uri = $2";
    pub const EXPIRE_STATES: &str = "DELETE FROM soft_state WHERE expires_at <= $1";
    pub const STATES: &str = "SELECT kind, key, value, expires_at FROM soft_state ORDER BY kind, key";
    pub const PUT_STATE: &str = "INSERT INTO soft_state (kind, key, value, expires_at) VALUES ($1, $2, $3, $4)
        ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at";
    pub const DELETE_STATE: &str = "DELETE FROM soft_state WHERE kind = $1 AND key = $2";
    pub const CLAIM_USER: &str = "INSERT INTO user_owner (aor, member, gen) VALUES ($1, $2, 1)
        ON CONFLICT (aor) DO UPDATE SET member = excluded.member, gen = user_owner.gen + 1 RETURNING gen";
    /// FOR UPDATE: a claim waits for this writer's commit (and a write after a claim sees it).
    pub const USER_GEN: &str = "SELECT gen FROM user_owner WHERE aor = $1 FOR UPDATE";
    pub const STATES_OF: &str = "SELECT kind, key, value, expires_at FROM soft_state
        WHERE expires_at > $1 AND (key = $2 OR substr(key, 1, length($3)) = $3) ORDER BY kind, key";
    pub const RENEW_MEMBER: &str = "INSERT INTO member (name, addr, state, lease_until_ms, users, load, in_flight)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (name) DO UPDATE SET addr = excluded.addr, lease_until_ms = excluded.lease_until_ms,
          users = excluded.users, load = excluded.load, in_flight = excluded.in_flight,
          state = CASE WHEN excluded.state = 'gone' THEN 'gone'
                       WHEN member.state = 'draining' THEN 'draining' ELSE 'active' END";
    pub const MEMBERS: &str =
        "SELECT name, addr, state, lease_until_ms, users, load, in_flight FROM member ORDER BY name";
    pub const SET_MEMBER_STATE: &str = "UPDATE member SET state = $2 WHERE name = $1";
    pub const PUT_SECRET: &str = "INSERT INTO pool_secret (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
    pub const SECRET: &str = "SELECT value FROM pool_secret WHERE name = $1";
    pub const DIRECTORY_ROWS: &str = "SELECT alias, source, source_key, display_name, first, last, account, title,
        department, phone, office, manager, ha1_md5, ha1_sha256, disabled_at, home_pool
        FROM directory_person ORDER BY alias";
    pub const PUT_PERSON: &str = "INSERT INTO directory_person (alias, source, source_key, display_name, first, last,
        account, title, department, phone, office, manager, ha1_md5, ha1_sha256, disabled_at, home_pool)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
        ON CONFLICT (alias) DO UPDATE SET source = excluded.source, source_key = excluded.source_key,
          display_name = excluded.display_name, first = excluded.first, last = excluded.last,
          account = excluded.account, title = excluded.title, department = excluded.department,
          phone = excluded.phone, office = excluded.office, manager = excluded.manager, ha1_md5 = excluded.ha1_md5,
          ha1_sha256 = excluded.ha1_sha256, disabled_at = excluded.disabled_at, home_pool = excluded.home_pool";
    pub const DELETE_PERSON: &str = "DELETE FROM directory_person WHERE alias = $1";
    pub const PUT_MARK: &str = "INSERT INTO directory_mark (source, mark) VALUES ($1, $2)
        ON CONFLICT (source) DO UPDATE SET mark = excluded.mark";
    pub const MARKS: &str = "SELECT source, mark FROM directory_mark ORDER BY source";
    pub const CREDENTIALS: &str = "SELECT alias, ha1_md5, ha1_sha256 FROM directory_credential ORDER BY alias";
    pub const PUT_CREDENTIAL: &str = "INSERT INTO directory_credential (alias, ha1_md5, ha1_sha256) VALUES ($1, $2, $3)
        ON CONFLICT (alias) DO UPDATE SET ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256";
    pub const PUT_ROLLUP: &str = "INSERT INTO rollup (minute, role, metric, labels, combine, value)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (minute, role, metric, labels) DO UPDATE SET value = CASE WHEN rollup.combine = 'max'
          THEN GREATEST(rollup.value, excluded.value) ELSE rollup.value + excluded.value END";
    pub const ROLLUPS: &str = "SELECT minute, role, metric, labels, combine, value FROM rollup WHERE minute >= $1
        ORDER BY minute, role, metric, labels";
    pub const PRUNE_ROLLUPS: &str = "DELETE FROM rollup WHERE minute < $1";
    pub const CHANGE_COUNTER: &str = "SELECT n FROM change_counter";
    pub const LOCK_CHANGE_COUNTER: &str = "SELECT n FROM change_counter FOR UPDATE";
    /// Rows in the tables `store migrate` fills (it refuses a non-empty target).
    pub const COUNT_ROWS: &str =
        "SELECT (SELECT count(*) FROM policy) + (SELECT count(*) FROM contact) + (SELECT count(*) FROM soft_state)
            + (SELECT count(*) FROM im_archive)";
    pub const PUT_ARCHIVE: &str =
        "INSERT INTO im_archive (at_ms, sender, recipient, direction, content_type, body, call_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)";
    pub const SEARCH_ARCHIVE: &str =
        "SELECT id, at_ms, sender, recipient, direction, content_type, body, call_id FROM im_archive
         WHERE ($1::text IS NULL OR sender = $1 OR recipient = $1) AND ($2::text IS NULL OR sender = $2 OR recipient = $2)
           AND at_ms >= $3 AND at_ms < $4 AND ($5::text IS NULL OR strpos(body, $5) > 0) AND id > $6
         ORDER BY id LIMIT $7";
    pub const PURGE_ARCHIVE: &str = "DELETE FROM im_archive WHERE at_ms < $1";
    pub const CLEAR_ALL: &str =
        "DELETE FROM policy; DELETE FROM contact; DELETE FROM soft_state; DELETE FROM im_archive;";
}

pub struct PgStore {
    config: postgres::Config,
    /// The URL without its password, for messages.
    shown: String,
    client: Option<Client>,
    /// No connection attempt before this instant (backoff after a failure).
    retry_at: Instant,
    backoff: Duration,
    /// `change_counter` as of our last look or our last write.
    seen: i64,
    /// Another writer's change was noticed while committing one of ours: report it at the next poll.
    pending_change: bool,
    /// The last connection attempt reached a server whose database this build cannot use (a newer schema).
    unusable: bool,
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`, `password=x` -> `password=***`.
pub fn without_password(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")) {
        let scheme = &url[..url.len() - rest.len()];
        if let Some((auth, host)) = rest.split_once('@') {
            if let Some((user, _)) = auth.split_once(':') {
                return format!("{scheme}{user}:***@{host}");
            }
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|kv| if kv.starts_with("password=") { "password=***".to_string() } else { kv.to_string() })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a URL (or libpq key/value string) is one this client accepts; the error says why not.
pub fn check_url(url: &str) -> Result<(), String> {
    let config = postgres::Config::from_str(url).map_err(|e| e.to_string())?;
    if config.get_hosts().is_empty() {
        return Err("names no host (host=... or postgres://host/...)".into());
    }
    Ok(())
}

fn pg_err(what: &str, e: &postgres::Error) -> StoreError {
    // The server's own message (e.g. a constraint's name) says more than the client's summary.
    match e.as_db_error() {
        Some(db) => StoreError(format!("{what}: {} ({})", db.message(), db.code().code())),
        None => StoreError(format!("{what}: {e}")),
    }
}

/// Errors after which the connection is not worth keeping: it is gone, or the server is shutting down or
/// recovering (class 08 connection exception, 57 operator intervention, 53 insufficient resources), or a
/// failed-over server is read-only now (25006).
fn connection_lost(e: &postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(c) => {
            let c = c.code();
            c.starts_with("08") || c.starts_with("57") || c.starts_with("53") || c == "25006"
        }
    }
}

impl PgStore {
    /// Connects (retrying until `deadline`: a front end started beside its database waits for it) and brings
    /// the schema up to date.
    pub fn open(url: &str, deadline: Instant) -> Result<PgStore, StoreError> {
        let mut config =
            postgres::Config::from_str(url).map_err(|e| StoreError(format!("url {}: {e}", without_password(url))))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("parapet");
        }
        let mut store = PgStore {
            config,
            shown: without_password(url),
            client: None,
            retry_at: Instant::now(),
            backoff: BACKOFF_MIN,
            seen: 0,
            pending_change: false,
            unusable: false,
        };
        loop {
            match store.connect() {
                Ok(()) => break,
                Err(e) if store.unusable || Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(store.retry_at.saturating_duration_since(Instant::now())),
            }
        }
        Ok(store)
    }

    /// A connection, made now when there is none and the backoff allows.
    fn connect(&mut self) -> Result<(), StoreError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.client = None;
        let now = Instant::now();
        if now < self.retry_at {
            return Err(StoreError(format!("PostgreSQL at {} unavailable (reconnecting)", self.shown)));
        }
        // Err(true, ..): the server answered, but this database cannot be used (its schema); waiting won't help.
        let attempt = self.config.connect(NoTls).map_err(|e| (false, e.to_string())).and_then(|mut c| {
            migrate(&mut c).map_err(|e| (true, e.0))?;
            let n: i64 = c.query_one(sql::CHANGE_COUNTER, &[]).map_err(|e| (false, e.to_string()))?.get(0);
            Ok((c, n))
        });
        match attempt {
            Ok((c, n)) => {
                if self.backoff > BACKOFF_MIN {
                    tracing::info!(url = %self.shown, "store: PostgreSQL connection restored");
                    // Changes made while we were away are news.
                    self.pending_change |= n != self.seen;
                }
                self.seen = n;
                self.client = Some(c);
                self.backoff = BACKOFF_MIN;
                Ok(())
            }
            Err((unusable, e)) => {
                self.retry_at = now + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                self.unusable = unusable;
                let state = if unusable { "unusable" } else { "unavailable" };
                Err(StoreError(format!("PostgreSQL at {} {state}: {e}", self.shown)))
            }
        }
    }

    /// Runs `f` on the connection; a failure that means the connection is gone drops it (the next call
    /// reconnects).
    fn with<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        self.connect()?;
        let Some(client) = self.client.as_mut() else {
            return Err(StoreError(format!("PostgreSQL at {} unavailable", self.shown)));
        };
        match f(client) {
            Ok(v) => Ok(v),
            Err(e) => {
                if !connection_lost(&e) {
                    return Err(pg_err(what, &e));
                }
                tracing::warn!(url = %self.shown, error = %e, "store: PostgreSQL connection lost");
                self.client = None;
                self.backoff = BACKOFF_MIN * 2;
                self.retry_at = Instant::now();
                Err(pg_err(&format!("PostgreSQL at {} unavailable: {what}", self.shown), &e))
            }
        }
    }

    /// A write to policy or contact. The change counter is locked first, so that its value before our write is
    /// exact: one that moved since our last look means another writer was there (an upsert fires both the
    /// insert and the update trigger, so the bump of our own write is not always one).
    fn admin_write(
        &mut self,
        what: &str,
        stmt: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let (n, before, after) = self.with(what, |c| {
            let mut tx = c.transaction()?;
            let before: i64 = tx.query_one(sql::LOCK_CHANGE_COUNTER, &[])?.get(0);
            let n = tx.execute(stmt, params)?;
            let after: i64 = tx.query_one(sql::CHANGE_COUNTER, &[])?.get(0);
            tx.commit()?;
            Ok((n, before, after))
        })?;
        self.pending_change |= before != self.seen;
        self.seen = after;
        Ok(n)
    }

    /// Every contact of every owner (for `store migrate`).
    pub fn all_contacts(&mut self) -> Result<Vec<ContactRow>, StoreError> {
        let rows = self.with("contacts", |c| c.query(sql::ALL_CONTACTS, &[]))?;
        Ok(rows.iter().map(contact_of).collect())
    }

    /// Rows in policy, contact and soft_state together.
    pub fn row_count(&mut self) -> Result<i64, StoreError> {
        self.with("count", |c| c.query_one(sql::COUNT_ROWS, &[]).map(|r| r.get(0)))
    }

    /// Replaces everything with `policies`, `contacts` and `states` in one transaction (`store migrate`).
    pub fn replace_all(
        &mut self,
        policies: &[PolicyRow],
        contacts: &[ContactRow],
        states: &[StateRow],
    ) -> Result<(), StoreError> {
        self.with("migrate", |c| {
            let mut tx = c.transaction()?;
            tx.batch_execute(sql::CLEAR_ALL)?;
            for p in policies {
                tx.execute(sql::PUT_POLICY, &[&p.owner, &p.target, &p.presence, &p.im])?;
            }
            for r in contacts {
                tx.execute(sql::PUT_CONTACT, &[&r.owner, &r.uri, &r.display_name, &r.group])?;
            }
            for s in states {
                tx.execute(sql::PUT_STATE, &[&s.kind, &s.key, &s.value, &to_i64(s.expires_at)])?;
            }
            tx.commit()
        })
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn state_of(r: &postgres::Row) -> StateRow {
    let at: i64 = r.get(3);
    StateRow { kind: r.get(0), key: r.get(1), value: r.get(2), expires_at: u64::try_from(at).unwrap_or(0) }
}

fn contact_of(r: &postgres::Row) -> ContactRow {
    ContactRow { owner: r.get(0), uri: r.get(1), display_name: r.get(2), group: r.get(3) }
}

/// Brings the schema to the newest version this build knows, under an advisory lock (several front ends may
/// start at once); refuses a database newer than this build.
pub fn migrate(c: &mut Client) -> Result<i32, StoreError> {
    let fail = |what: &str, e: postgres::Error| pg_err(what, &e);
    let mut tx = c.transaction().map_err(|e| fail("begin", e))?;
    tx.execute(sql::MIGRATION_LOCK, &[&MIGRATION_LOCK]).map_err(|e| fail("migration lock", e))?;
    // Under the lock: two front ends creating the same table at once would race in the catalog.
    tx.batch_execute(sql::SCHEMA_VERSION_TABLE).map_err(|e| fail("schema_version", e))?;
    let current: i32 = tx.query_one(sql::SCHEMA_VERSION, &[]).map_err(|e| fail("schema_version", e))?.get(0);
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > newest {
        return Err(StoreError(format!(
            "the database has schema version {current}, newer than this build understands ({newest})"
        )));
    }
    for (version, text) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(text).map_err(|e| fail(&format!("migration {version}"), e))?;
        tx.execute(sql::RECORD_VERSION, &[version]).map_err(|e| fail("schema_version", e))?;
    }
    tx.commit().map_err(|e| fail("commit migrations", e))?;
    Ok(newest)
}

/// A user's latest claim (0: never claimed), locked until the commit.
fn pg_gen(tx: &mut postgres::Transaction<'_>, aor: &str) -> Result<u64, postgres::Error> {
    let g = tx.query_opt(sql::USER_GEN, &[&aor])?.map_or(0, |r| r.get::<_, i64>(0));
    Ok(u64::try_from(g).unwrap_or(0))
}

fn apply_states(tx: &mut postgres::Transaction<'_>, writes: &[StateWrite]) -> Result<(), postgres::Error> {
    for w in writes {
        match w {
            StateWrite::Put(r) => {
                tx.execute(sql::PUT_STATE, &[&r.kind, &r.key, &r.value, &to_i64(r.expires_at)])?;
            }
            StateWrite::Delete { kind, key } => {
                tx.execute(sql::DELETE_STATE, &[kind, key])?;
            }
            StateWrite::Fenced { aor, gen, write } => {
                if pg_gen(tx, aor)? == *gen {
                    apply_states(tx, std::slice::from_ref(write))?;
                } else {
                    tracing::debug!(%aor, gen, "store: an old owner's soft-state write refused");
                }
            }
        }
    }
    Ok(())
}

impl Store for PgStore {
    fn policies(&mut self) -> Result<Vec<PolicyRow>, StoreError> {
        let rows = self.with("policies", |c| c.query(sql::POLICIES, &[]))?;
        Ok(rows
            .iter()
            .map(|r| PolicyRow { owner: r.get(0), target: r.get(1), presence: r.get(2), im: r.get(3) })
            .collect())
    }

    fn put_policy(&mut self, row: &PolicyRow) -> Result<(), StoreError> {
        if row.presence.is_none() && row.im.is_none() {
            self.delete_policy(&row.owner, &row.target)?;
            return Ok(());
        }
        self.admin_write("put policy", sql::PUT_POLICY, &[&row.owner, &row.target, &row.presence, &row.im])?;
        Ok(())
    }

    fn delete_policy(&mut self, owner: &str, target: &str) -> Result<bool, StoreError> {
        Ok(self.admin_write("delete policy", sql::DELETE_POLICY, &[&owner, &target])? > 0)
    }

    fn contacts(&mut self, owner: &str) -> Result<Vec<ContactRow>, StoreError> {
        let rows = self.with("contacts", |c| c.query(sql::CONTACTS, &[&owner]))?;
        Ok(rows.iter().map(contact_of).collect())
    }

    fn put_contact(&mut self, row: &ContactRow) -> Result<(), StoreError> {
        self.admin_write("put contact", sql::PUT_CONTACT, &[&row.owner, &row.uri, &row.display_name, &row.group])?;
        Ok(())
    }

    fn delete_contact(&mut self, owner: &str, uri: &str) -> Result<bool, StoreError> {
        Ok(self.admin_write("delete contact", sql::DELETE_CONTACT, &[&owner, &uri])? > 0)
    }

    fn states(&mut self, now: u64) -> Result<Vec<StateRow>, StoreError> {
        let rows = self.with("states", |c| {
            c.execute(sql::EXPIRE_STATES, &[&to_i64(now)])?;
            c.query(sql::STATES, &[])
        })?;
        Ok(rows.iter().map(state_of).collect())
    }

    fn write_states(&mut self, writes: &[StateWrite]) -> Result<(), StoreError> {
        self.with("write state", |c| {
            let mut tx = c.transaction()?;
            apply_states(&mut tx, writes)?;
            tx.commit()
        })
    }

    fn claim_user(&mut self, aor: &str, member: &str) -> Result<u64, StoreError> {
        let row = self.with("claim user", |c| c.query_one(sql::CLAIM_USER, &[&aor, &member]))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    fn write_states_fenced(&mut self, aor: &str, gen: u64, writes: &[StateWrite]) -> Result<bool, StoreError> {
        self.with("fenced state write", |c| {
            let mut tx = c.transaction()?;
            if pg_gen(&mut tx, aor)? != gen {
                return Ok(false);
            }
            apply_states(&mut tx, writes)?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn states_of(&mut self, aor: &str, now: u64) -> Result<Vec<StateRow>, StoreError> {
        let prefix = format!("{aor} ");
        let rows = self.with("states of a user", |c| c.query(sql::STATES_OF, &[&to_i64(now), &aor, &prefix]))?;
        Ok(rows.iter().map(state_of).collect())
    }

    fn renew_member(&mut self, row: &MemberRow) -> Result<(), StoreError> {
        let state = if row.state == "gone" { "gone" } else { "active" };
        let (until, users, load) = (to_i64(row.lease_until_ms), to_i64(row.users), to_i64(row.load));
        let in_flight = to_i64(row.in_flight);
        self.with("renew member lease", |c| {
            c.execute(sql::RENEW_MEMBER, &[&row.name, &row.addr, &state, &until, &users, &load, &in_flight])
        })?;
        Ok(())
    }

    fn members(&mut self) -> Result<Vec<MemberRow>, StoreError> {
        let rows = self.with("members", |c| c.query(sql::MEMBERS, &[]))?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(rows
            .iter()
            .map(|r| MemberRow {
                name: r.get(0),
                addr: r.get(1),
                state: r.get(2),
                lease_until_ms: n(r.get(3)),
                users: n(r.get(4)),
                load: n(r.get(5)),
                in_flight: n(r.get(6)),
            })
            .collect())
    }

    fn set_member_state(&mut self, name: &str, state: &str) -> Result<bool, StoreError> {
        Ok(self.with("set member state", |c| c.execute(sql::SET_MEMBER_STATE, &[&name, &state]))? > 0)
    }

    fn shared_secret(&mut self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.with("shared secret", |c| {
            c.execute(sql::PUT_SECRET, &[&name, &candidate])?;
            c.query_one(sql::SECRET, &[&name]).map(|r| r.get(0))
        })
    }

    fn changed_elsewhere(&mut self) -> Result<bool, StoreError> {
        let n: i64 = self.with("change counter", |c| c.query_one(sql::CHANGE_COUNTER, &[]).map(|r| r.get(0)))?;
        let changed = n != self.seen || self.pending_change;
        self.seen = n;
        self.pending_change = false;
        Ok(changed)
    }

    fn write_archive(&mut self, rows: &[ArchiveRow]) -> Result<(), StoreError> {
        self.with("archive", |c| {
            let mut tx = c.transaction()?;
            let st = tx.prepare(sql::PUT_ARCHIVE)?;
            for r in rows {
                tx.execute(
                    &st,
                    &[&r.at_ms, &r.sender, &r.recipient, &r.direction, &r.content_type, &r.body, &r.call_id],
                )?;
            }
            tx.commit()
        })
    }

    fn search_archive(&mut self, q: &ArchiveQuery) -> Result<Vec<ArchiveRow>, StoreError> {
        let (since, until) = q.range();
        let limit = i64::from(q.limit.min(super::archive::SEARCH_LIMIT_MAX));
        let rows = self.with("archive search", |c| {
            c.query(sql::SEARCH_ARCHIVE, &[&q.user, &q.peer, &since, &until, &q.text, &q.after_id, &limit])
        })?;
        Ok(rows
            .iter()
            .map(|r| ArchiveRow {
                id: r.get(0),
                at_ms: r.get(1),
                sender: r.get(2),
                recipient: r.get(3),
                direction: r.get(4),
                content_type: r.get(5),
                body: r.get(6),
                call_id: r.get(7),
            })
            .collect())
    }

    fn purge_archive(&mut self, before_ms: i64) -> Result<u64, StoreError> {
        self.with("archive purge", |c| c.execute(sql::PURGE_ARCHIVE, &[&before_ms]))
    }

    fn write_rollups(&mut self, rows: &[super::rollup::RollupRow]) -> Result<(), StoreError> {
        self.with("write rollups", |c| {
            let mut tx = c.transaction()?;
            for r in rows {
                let minute = to_i64(r.minute);
                tx.execute(sql::PUT_ROLLUP, &[&minute, &r.role, &r.metric, &r.labels, &r.combine.as_str(), &r.value])?;
            }
            tx.commit()
        })
    }

    fn rollups(&mut self, since: u64) -> Result<Vec<super::rollup::RollupRow>, StoreError> {
        let rows = self.with("rollups", |c| c.query(sql::ROLLUPS, &[&to_i64(since)]))?;
        Ok(rows
            .iter()
            .map(|r| {
                let minute: i64 = r.get(0);
                let combine: String = r.get(4);
                super::rollup::RollupRow {
                    minute: u64::try_from(minute).unwrap_or(0),
                    role: r.get(1),
                    metric: r.get(2),
                    labels: r.get(3),
                    combine: super::rollup::Combine::parse(&combine),
                    value: r.get(5),
                }
            })
            .collect())
    }

    fn prune_rollups(&mut self, before: u64) -> Result<usize, StoreError> {
        let n = self.with("prune rollups", |c| c.execute(sql::PRUNE_ROLLUPS, &[&to_i64(before)]))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn directory_rows(&mut self) -> Result<Vec<DirectoryRow>, StoreError> {
        let rows = self.with("directory", |c| c.query(sql::DIRECTORY_ROWS, &[]))?;
        Ok(rows
            .iter()
            .map(|r| {
                let at: Option<i64> = r.get(14);
                DirectoryRow {
                    alias: r.get(0),
                    source: r.get(1),
                    key: r.get(2),
                    display_name: r.get(3),
                    first: r.get(4),
                    last: r.get(5),
                    account: r.get(6),
                    title: r.get(7),
                    department: r.get(8),
                    phone: r.get(9),
                    office: r.get(10),
                    manager: r.get(11),
                    ha1_md5: r.get(12),
                    ha1_sha256: r.get(13),
                    disabled_at: at.map(|a| u64::try_from(a).unwrap_or(0)),
                    pool: r.get(15),
                }
            })
            .collect())
    }

    fn write_directory(&mut self, writes: &[DirectoryWrite], marks: &[(String, String)]) -> Result<(), StoreError> {
        self.with("directory write", |c| {
            let mut tx = c.transaction()?;
            for w in writes {
                match w {
                    DirectoryWrite::Put(p) => {
                        let at = p.disabled_at.map(to_i64);
                        tx.execute(
                            sql::PUT_PERSON,
                            &[
                                &p.alias,
                                &p.source,
                                &p.key,
                                &p.display_name,
                                &p.first,
                                &p.last,
                                &p.account,
                                &p.title,
                                &p.department,
                                &p.phone,
                                &p.office,
                                &p.manager,
                                &p.ha1_md5,
                                &p.ha1_sha256,
                                &at,
                                &p.pool,
                            ],
                        )?;
                    }
                    DirectoryWrite::Delete { alias } => {
                        tx.execute(sql::DELETE_PERSON, &[alias])?;
                    }
                }
            }
            for (source, mark) in marks {
                tx.execute(sql::PUT_MARK, &[source, mark])?;
            }
            tx.commit()
        })
    }

    fn sync_marks(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.with("sync marks", |c| c.query(sql::MARKS, &[]))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn credentials(&mut self) -> Result<Vec<CredentialRow>, StoreError> {
        let rows = self.with("credentials", |c| c.query(sql::CREDENTIALS, &[]))?;
        Ok(rows.iter().map(|r| CredentialRow { alias: r.get(0), ha1_md5: r.get(1), ha1_sha256: r.get(2) }).collect())
    }

    fn put_credential(&mut self, row: &CredentialRow) -> Result<(), StoreError> {
        self.with("put credential", |c| c.execute(sql::PUT_CREDENTIAL, &[&row.alias, &row.ha1_md5, &row.ha1_sha256]))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(without_password("postgres://u:s3cret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(without_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(without_password("host=a,b password=x dbname=p"), "host=a,b password=*** dbname=p");
    }

    #[test]
    fn urls_single_and_multi_host() {
        assert!(check_url("postgres://parapet@127.0.0.1:5432/parapet").is_ok());
        assert!(check_url("host=10.0.0.1,10.0.0.2 port=5432 dbname=parapet target_session_attrs=read-write").is_ok());
        assert!(check_url("postgres://a:5432,b:5433/parapet?target_session_attrs=read-write").is_ok());
        assert!(check_url("postgres://h/db?bogus_option=1").is_err());
        assert!(check_url("dbname=parapet").is_err(), "no host");
    }
}
