//! The rollup thread: every `[mgmt] rollup_interval_s` (a minute), what this process counted since the last time
//! (the counters' growth, the gauges' current value, summed over cores) is written to the store as per-minute
//! rows ([`crate::store::rollup`]), with the process's memory and CPU time per thread; rows older than
//! `rollup_retention_days` are deleted once an hour. A plain thread: it blocks on the disk, never on a core.
//!
//! The figures are read from this process's own `/metrics` exposition, so a report shows exactly what Prometheus
//! would have scraped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::store::rollup::{Combine, RollupRow};
use crate::store::Store;

/// Families that go into reports (all labels kept but the core). Everything else stays on /metrics only.
const REPORTED: &[&str] = &[
    "parapet_pool_registrations_total",
    "parapet_pool_auth_failures_total",
    "parapet_pool_register_refused_interval_total",
    "parapet_pool_register_refused_bad_contact_total",
    "parapet_pool_register_refused_out_of_order_total",
    "parapet_pool_register_refused_devices_total",
    "parapet_pool_register_refused_full_total",
    "parapet_pool_challenges_total",
    "parapet_pool_messages_forked_total",
    "parapet_pool_messages_internal_total",
    "parapet_pool_messages_delivered_total",
    "parapet_pool_messages_offline_total",
    "parapet_pool_messages_refused_policy_total",
    "parapet_pool_federated_requests_total",
    "parapet_pool_federated_out_total",
    "parapet_pool_publications_total",
    "parapet_pool_notifies_sent_total",
    "parapet_pool_bindings_now",
    "parapet_pool_connections",
    "parapet_pool_handle_seconds_bucket",
    "parapet_edge_connections",
    "parapet_edge_flows_authenticated_connections",
    "parapet_edge_messages_in_total",
    "parapet_edge_requests_from_partners_total",
    "parapet_edge_requests_to_partners_total",
    "parapet_edge_refused_total",
    "parapet_edge_bans_total",
    "parapet_edge_partner_requests_total",
    "parapet_edge_partner_rate_refused_total",
    "parapet_edge_partner_connections_refused_total",
    "parapet_edge_partner_connections",
    "parapet_edge_handle_seconds_bucket",
];

const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Where this process's rollups go: `[mgmt] rollup_database` (a SQLite file) when named; else the pool's
/// PostgreSQL store when the config has `[store] url` (the enterprise pool and its edge: one place for every
/// member's figures); else `reports.db` next to the pool's database. A file of its own on SQLite: writes into the
/// pool's own file would make its store thread see a change from elsewhere every minute and read every policy
/// again (PostgreSQL counts only policy and contact writes as such changes).
#[derive(Debug, Clone)]
pub struct RollupDb {
    pub store: Option<crate::config::store::StoreConfig>,
    pub file: PathBuf,
}

impl RollupDb {
    pub fn open(&self) -> Result<Box<dyn Store>, String> {
        crate::store::open(self.store.as_ref(), &self.file).map_err(|e| format!("[mgmt] rollup_database: {e}"))
    }
}

impl std::fmt::Display for RollupDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::store::describe(self.store.as_ref(), &self.file))
    }
}

pub fn database(cfg: &Config) -> Option<RollupDb> {
    let m = cfg.mgmt.as_ref()?;
    if let Some(file) = &m.rollup_database {
        return Some(RollupDb { store: None, file: file.clone() });
    }
    if let Some(store) = cfg.store.as_ref().filter(|s| s.url.is_some()) {
        return Some(RollupDb { store: Some(store.clone()), file: PathBuf::new() });
    }
    let file = cfg.pool.as_ref().map(|p| p.database.with_file_name(DEFAULT_FILE))?;
    Some(RollupDb { store: None, file })
}

/// The rollups' file when none is named.
pub const DEFAULT_FILE: &str = "reports.db";

/// Starts the thread when the config names a database for rollups.
pub fn start(cfg: &Config) -> Result<(), String> {
    let Some(db) = database(cfg) else { return Ok(()) };
    let Some(m) = cfg.mgmt.as_ref() else { return Ok(()) };
    super::report::serve_from(db.clone());
    let (interval, retention) = (Duration::from_secs(m.rollup_interval_s), u64::from(m.rollup_retention_days) * 86_400);
    let mut store = db.open()?;
    std::thread::Builder::new()
        .name("rollup".into())
        .spawn(move || run(&mut *store, &db, interval, retention))
        .map_err(|e| format!("rollup thread: {e}"))?;
    Ok(())
}

fn run(store: &mut dyn Store, db: &RollupDb, interval: Duration, retention_s: u64) {
    let mut last = Snapshot::default();
    let mut pruned = std::time::Instant::now() - PRUNE_EVERY;
    loop {
        std::thread::sleep(interval);
        let now = Snapshot::take();
        let mut rows = now.rows_since(&last, unix_now());
        let minute = unix_now() / 60 * 60;
        // Drained now: if the write fails these are lost (a ranking, not a counter to catch up on).
        rows.extend(super::talkers::drain_top(super::talkers::TOP_N).into_iter().map(|(user, n)| RollupRow {
            minute,
            role: "pool".into(),
            metric: super::talkers::METRIC.into(),
            labels: format!("user=\"{user}\""),
            combine: Combine::Sum,
            value: n as f64,
        }));
        match store.write_rollups(&rows) {
            Ok(()) => last = now,
            // Kept: the next write carries this interval's growth too.
            Err(e) => tracing::warn!(database = %db, "rollups not written: {e}"),
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = std::time::Instant::now();
            if let Err(e) = store.prune_rollups(unix_now().saturating_sub(retention_s)) {
                tracing::warn!(database = %db, "old rollups not pruned: {e}");
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Figures of the process at one moment, by (role, metric, labels without the core).
#[derive(Default)]
struct Snapshot {
    values: HashMap<(String, String, String), (Combine, f64)>,
}

impl Snapshot {
    fn take() -> Snapshot {
        let mut s = Snapshot::from_exposition(&super::metrics::render());
        s.add_process();
        s
    }

    fn from_exposition(text: &str) -> Snapshot {
        let mut gauges = std::collections::HashSet::new();
        let mut values = HashMap::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                if let Some((fam, "gauge")) = t.split_once(' ') {
                    gauges.insert(fam.to_string());
                }
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let (metric, labels) = series.split_once('{').unwrap_or((series, "}"));
            if !REPORTED.contains(&metric) {
                continue;
            }
            let Ok(v) = value.parse::<f64>() else { continue };
            let labels: Vec<&str> =
                labels.trim_end_matches('}').split(',').filter(|l| !l.is_empty() && !l.starts_with("core=")).collect();
            let role = metric.strip_prefix("parapet_").and_then(|r| r.split('_').next()).unwrap_or("process");
            let combine = if gauges.contains(metric) { Combine::Max } else { Combine::Sum };
            let e = values.entry((role.to_string(), metric.to_string(), labels.join(","))).or_insert((combine, 0.0));
            e.1 += v;
        }
        Snapshot { values }
    }

    /// Resident memory and CPU time per thread of this process (executors are named `<role>-<cpu>`).
    fn add_process(&mut self) {
        if let Some(rss) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<f64>().ok()))
        {
            // SAFETY: sysconf only reads a system value.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
            self.put("process", "parapet_process_resident_bytes", "", Combine::Max, rss * page);
        }
        // SAFETY: as above.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
        for t in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
            // comm is in parentheses and may hold spaces; the fields after it are plain.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
            let name = stat.get(open + 1..close).unwrap_or("");
            if !(name.starts_with("edge-") || name.starts_with("pool-")) {
                continue;
            }
            let rest: Vec<&str> = stat.get(close + 2..).unwrap_or("").split(' ').collect();
            // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
            let cpu: f64 = [11, 12].iter().filter_map(|i| rest.get(*i)?.parse::<f64>().ok()).sum();
            self.put(
                "process",
                "parapet_process_cpu_seconds_total",
                &format!("thread=\"{name}\""),
                Combine::Sum,
                cpu / ticks,
            );
        }
    }

    fn put(&mut self, role: &str, metric: &str, labels: &str, combine: Combine, v: f64) {
        self.values.insert((role.into(), metric.into(), labels.into()), (combine, v));
    }

    /// Rows for the minute of `now`: a counter's growth since `last` (its whole value after a restart: counters
    /// start at zero), a gauge's value.
    fn rows_since(&self, last: &Snapshot, now: u64) -> Vec<RollupRow> {
        let minute = now - now % 60;
        let mut rows = Vec::with_capacity(self.values.len());
        for ((role, metric, labels), (combine, v)) in &self.values {
            let value = match combine {
                Combine::Max => *v,
                Combine::Sum => match last.values.get(&(role.clone(), metric.clone(), labels.clone())) {
                    Some((_, before)) if before <= v => v - before,
                    _ => *v,
                },
            };
            if value == 0.0 && *combine == Combine::Sum {
                continue;
            }
            rows.push(RollupRow {
                minute,
                role: role.clone(),
                metric: metric.clone(),
                labels: labels.clone(),
                combine: *combine,
                value,
            });
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_sum_cores_drop_the_core_label_and_give_growth() {
        let text = "# TYPE parapet_pool_connections gauge\nparapet_pool_connections{core=\"0\"} 2\n\
                    parapet_pool_connections{core=\"1\"} 3\n\
                    # TYPE parapet_edge_refused_total counter\n\
                    parapet_edge_refused_total{core=\"0\",cause=\"flood_rate\"} 4\n\
                    parapet_edge_refused_total{core=\"1\",cause=\"flood_rate\"} 1\n\
                    parapet_pool_pings_total{core=\"0\"} 9\n";
        let a = Snapshot::from_exposition(text);
        let rows = a.rows_since(&Snapshot::default(), 130);
        assert_eq!(rows.len(), 2, "pings are not reported: {rows:?}");
        let refused = rows.iter().find(|r| r.metric == "parapet_edge_refused_total").map(|r| (r.minute, r.value));
        assert_eq!(refused, Some((120, 5.0)));
        assert!(rows
            .iter()
            .any(|r| r.metric == "parapet_pool_connections" && r.value == 5.0 && r.combine == Combine::Max));
        let b = Snapshot::from_exposition(&text.replace("} 4\n", "} 6\n"));
        let rows = b.rows_since(&a, 200);
        let refused: Vec<f64> =
            rows.iter().filter(|r| r.metric == "parapet_edge_refused_total").map(|r| r.value).collect();
        assert_eq!(refused, vec![2.0]);
        assert!(rows.iter().all(|r| r.labels.is_empty() || r.labels == "cause=\"flood_rate\""));
    }
}
