-- Schema version 2: the enterprise pool's member leases (proto::membership) and pool-wide secrets (the digest
-- nonce key every front end shares).
CREATE TABLE member (
    name           TEXT NOT NULL PRIMARY KEY,
    addr           TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('active', 'draining', 'gone')),
    lease_until_ms BIGINT NOT NULL,
    users          BIGINT NOT NULL DEFAULT 0,
    load           BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE pool_secret (
    name  TEXT NOT NULL PRIMARY KEY,
    value BYTEA NOT NULL
);
