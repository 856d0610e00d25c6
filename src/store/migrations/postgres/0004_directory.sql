-- Schema version 4: the namespace synced from the directory sources (src/directory/): one row per person,
-- each source's incremental mark, and digest secrets set with `parapet users set-password`.
CREATE TABLE directory_person (
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
    disabled_at  BIGINT
);
CREATE TABLE directory_mark (
    source TEXT PRIMARY KEY,
    mark   TEXT NOT NULL
);
CREATE TABLE directory_credential (
    alias      TEXT PRIMARY KEY,
    ha1_md5    TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL
);
