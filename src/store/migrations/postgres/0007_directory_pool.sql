-- Schema version 7: each synced person's home pool (the source's mapped `pool` attribute or its fixed `pool`);
-- empty: the default pool. The edge reads it (`[edge.homes] database` or `url`) to route the person to that pool.
ALTER TABLE directory_person ADD COLUMN home_pool TEXT NOT NULL DEFAULT ''
