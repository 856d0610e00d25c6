-- parapet store, SQLite schema version 1 (recorded in PRAGMA user_version). IF NOT EXISTS: databases made
-- before the schema lived in files already hold these tables at version 1.
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
