-- Schema version 2: the enterprise pool's member leases (proto::membership) and pool-wide secrets (the digest
-- nonce key every front end shares). IF NOT EXISTS: front ends opening one file at once may both run this step.
CREATE TABLE IF NOT EXISTS member (
    name           TEXT NOT NULL PRIMARY KEY,
    addr           TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('active', 'draining', 'gone')),
    lease_until_ms INTEGER NOT NULL,
    users          INTEGER NOT NULL DEFAULT 0,
    load           INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pool_secret (
    name  TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
);
