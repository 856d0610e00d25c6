//! Per-minute rollups of what the roles counted (for `parapet report`, `/report`): one row per minute, role,
//! metric and label set. Written by the rollup thread of each process ([`crate::mgmt::rollup`]) through the
//! [`super::Store`] methods `write_rollups`, `rollups` and `prune_rollups`; SQLite's share of them is here so the
//! schema of reports stays in one file.

use rusqlite::{params, Connection};

use super::StoreError;

/// How rows of the same key within one minute combine: counters add up, gauges keep the peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    Sum,
    Max,
}

impl Combine {
    pub fn as_str(self) -> &'static str {
        match self {
            Combine::Sum => "sum",
            Combine::Max => "max",
        }
    }
    pub fn parse(s: &str) -> Combine {
        if s == "max" {
            Combine::Max
        } else {
            Combine::Sum
        }
    }
}

/// One rolled-up figure.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRow {
    /// Start of the minute, unix seconds (a multiple of 60).
    pub minute: u64,
    /// "edge", "pool".
    pub role: String,
    /// The metric family, e.g. `parapet_pool_messages_forked_total`.
    pub metric: String,
    /// Its labels as written on /metrics without the core (`partner="x"`), "" for none.
    pub labels: String,
    pub combine: Combine,
    pub value: f64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollup (
    minute  INTEGER NOT NULL,
    role    TEXT NOT NULL,
    metric  TEXT NOT NULL,
    labels  TEXT NOT NULL,
    combine TEXT NOT NULL CHECK (combine IN ('sum', 'max')),
    value   REAL NOT NULL,
    PRIMARY KEY (minute, role, metric, labels)
) WITHOUT ROWID;
";

fn err(what: &str, e: rusqlite::Error) -> StoreError {
    StoreError(format!("{what}: {e}"))
}

pub(super) fn sqlite_write(conn: &mut Connection, rows: &[RollupRow]) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA).map_err(|e| err("rollup schema", e))?;
    let tx = conn.transaction().map_err(|e| err("rollup transaction", e))?;
    {
        let mut st = tx
            .prepare_cached(
                "INSERT INTO rollup (minute, role, metric, labels, combine, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (minute, role, metric, labels) DO UPDATE SET value =
                   CASE WHEN combine = 'max' THEN max(value, excluded.value) ELSE value + excluded.value END",
            )
            .map_err(|e| err("write rollups", e))?;
        for r in rows {
            st.execute(params![r.minute as i64, r.role, r.metric, r.labels, r.combine.as_str(), r.value])
                .map_err(|e| err("write rollups", e))?;
        }
    }
    tx.commit().map_err(|e| err("write rollups", e))
}

pub(super) fn sqlite_read(conn: &mut Connection, since: u64) -> Result<Vec<RollupRow>, StoreError> {
    conn.execute_batch(SCHEMA).map_err(|e| err("rollup schema", e))?;
    let mut st = conn
        .prepare_cached(
            "SELECT minute, role, metric, labels, combine, value FROM rollup WHERE minute >= ?1
             ORDER BY minute, role, metric, labels",
        )
        .map_err(|e| err("rollups", e))?;
    let rows = st
        .query_map([since as i64], |r| {
            let combine: String = r.get(4)?;
            Ok(RollupRow {
                minute: r.get::<_, i64>(0)?.max(0) as u64,
                role: r.get(1)?,
                metric: r.get(2)?,
                labels: r.get(3)?,
                combine: Combine::parse(&combine),
                value: r.get(5)?,
            })
        })
        .map_err(|e| err("rollups", e))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(|e| err("rollups", e))
}

pub(super) fn sqlite_prune(conn: &mut Connection, before: u64) -> Result<usize, StoreError> {
    conn.execute_batch(SCHEMA).map_err(|e| err("rollup schema", e))?;
    conn.execute("DELETE FROM rollup WHERE minute < ?1", [before as i64]).map_err(|e| err("prune rollups", e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::Store;

    fn row(minute: u64, metric: &str, combine: Combine, value: f64) -> RollupRow {
        RollupRow { minute, role: "pool".into(), metric: metric.into(), labels: String::new(), combine, value }
    }

    #[test]
    fn rows_of_a_minute_add_up_or_keep_the_peak_and_old_ones_go() {
        let mut s = SqliteStore::in_memory().unwrap();
        s.write_rollups(&[row(60, "m_total", Combine::Sum, 2.0), row(60, "conns", Combine::Max, 5.0)]).unwrap();
        s.write_rollups(&[row(60, "m_total", Combine::Sum, 3.0), row(60, "conns", Combine::Max, 4.0)]).unwrap();
        s.write_rollups(&[row(120, "m_total", Combine::Sum, 1.0)]).unwrap();
        let rows = s.rollups(0).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows.contains(&row(60, "m_total", Combine::Sum, 5.0)));
        assert!(rows.contains(&row(60, "conns", Combine::Max, 5.0)));
        assert_eq!(s.rollups(120).unwrap().len(), 1);
        assert_eq!(s.prune_rollups(120).unwrap(), 2);
        assert_eq!(s.rollups(0).unwrap().len(), 1);
    }
}
