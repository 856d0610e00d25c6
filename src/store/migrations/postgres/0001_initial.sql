-- parapet store, PostgreSQL schema version 1: the same three tables as the SQLite store (src/store/sqlite.rs),
-- plus a change counter that every write to policy or contact bumps (statement triggers, so edits made with psql
-- count too); the store thread polls it to learn of changes made by other front ends or the CLI.
CREATE TABLE policy (
    owner    TEXT NOT NULL,
    target   TEXT NOT NULL,
    presence TEXT CHECK (presence IN ('allow', 'block')),
    im       TEXT CHECK (im IN ('allow', 'block')),
    PRIMARY KEY (owner, target)
);
CREATE TABLE contact (
    owner        TEXT NOT NULL,
    uri          TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    grp          TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (owner, uri)
);
CREATE TABLE soft_state (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE change_counter (
    id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    n  BIGINT NOT NULL
);
INSERT INTO change_counter (id, n) VALUES (TRUE, 0);
CREATE FUNCTION parapet_bump_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE change_counter SET n = n + 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER policy_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON policy
    FOR EACH STATEMENT EXECUTE FUNCTION parapet_bump_change();
CREATE TRIGGER contact_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON contact
    FOR EACH STATEMENT EXECUTE FUNCTION parapet_bump_change();
