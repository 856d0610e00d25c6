-- parapet store, PostgreSQL schema version 3: the IM archive (see src/store/archive.rs).
CREATE TABLE im_archive (
    id           BIGSERIAL PRIMARY KEY,
    at_ms        BIGINT NOT NULL,
    sender       TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    direction    TEXT NOT NULL CHECK (direction IN ('internal', 'federated-in', 'federated-out')),
    content_type TEXT NOT NULL,
    body         TEXT NOT NULL,
    call_id      TEXT NOT NULL
);
CREATE INDEX im_archive_at ON im_archive (at_ms);
CREATE INDEX im_archive_sender ON im_archive (sender, at_ms);
CREATE INDEX im_archive_recipient ON im_archive (recipient, at_ms);
