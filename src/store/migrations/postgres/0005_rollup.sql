-- Schema version 5: per-minute rollups for reports (src/store/rollup.rs): every member and edge of an enterprise
-- pool writes its figures here, so one report covers the pool.
CREATE TABLE rollup (
    minute  BIGINT NOT NULL,
    role    TEXT NOT NULL,
    metric  TEXT NOT NULL,
    labels  TEXT NOT NULL,
    combine TEXT NOT NULL CHECK (combine IN ('sum', 'max')),
    value   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (minute, role, metric, labels)
);
