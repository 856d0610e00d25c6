//! Reports from the per-minute rollups: `parapet report --since 7d --out report.html [--csv DIR]`, and the same
//! page at `/report?since=7d` on the management listener. Hourly tables (traffic, federation per partner, edge
//! refusals by cause, capacity, latency percentiles, CPU per core thread), each with an SVG plot in the page and
//! a CSV export. Plain text building: no template engine, no script; the page works with JavaScript off.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use crate::store::rollup::RollupRow;

/// One table of the report.
pub struct Table {
    /// File name of its CSV export (without .csv), and the anchor in the page.
    pub name: &'static str,
    pub title: &'static str,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// What is plotted: series name -> (hour, value).
    pub plot: BTreeMap<String, Vec<(u64, f64)>>,
}

/// `7d`, `12h`, `30m`, `90s` -> seconds.
pub fn parse_since(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("--since {s:?}: expected a number and d, h, m or s (e.g. 7d)"))?;
    let unit = match unit {
        "d" => 86_400,
        "h" => 3600,
        "m" => 60,
        "s" | "" => 1,
        _ => return Err(format!("--since {s:?}: unit must be d, h, m or s")),
    };
    Ok(n.saturating_mul(unit))
}

fn hour_of(minute: u64) -> u64 {
    minute - minute % 3600
}

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| kv.strip_prefix(key)?.strip_prefix("=\"")?.strip_suffix('"'))
}

/// Hourly sums (or peaks) of one metric, by the value of `by` (a label; "" for none).
fn hourly(rows: &[RollupRow], metric: &str, by: &str) -> BTreeMap<(u64, String), f64> {
    let mut out: BTreeMap<(u64, String), f64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.metric == metric) {
        let key = (
            hour_of(r.minute),
            if by.is_empty() { String::new() } else { label(&r.labels, by).unwrap_or("").to_string() },
        );
        let e = out.entry(key).or_insert(0.0);
        match r.combine {
            crate::store::rollup::Combine::Sum => *e += r.value,
            crate::store::rollup::Combine::Max => *e = e.max(r.value),
        }
    }
    out
}

fn fmt_hour(h: u64) -> String {
    let (y, m, d) = crate::civil::civil_from_days((h / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:00", (h % 86_400) / 3600)
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// Hourly columns of several metrics side by side.
fn wide(name: &'static str, title: &'static str, rows: &[RollupRow], cols: &[(&str, &str)]) -> Table {
    wide_by("hour (UTC)", name, title, rows, cols)
}

/// As [`wide`], per day: the rows' minutes moved to their day's start (peaks stay peaks, sums add up).
fn daily(name: &'static str, title: &'static str, rows: &[RollupRow], cols: &[(&str, &str)]) -> Table {
    let days: Vec<RollupRow> =
        rows.iter().map(|r| RollupRow { minute: r.minute - r.minute % 86_400, ..r.clone() }).collect();
    wide_by("day (UTC)", name, title, &days, cols)
}

fn wide_by(first: &str, name: &'static str, title: &'static str, rows: &[RollupRow], cols: &[(&str, &str)]) -> Table {
    let per: Vec<BTreeMap<(u64, String), f64>> = cols.iter().map(|(m, _)| hourly(rows, m, "")).collect();
    let hours: BTreeSet<u64> = per.iter().flat_map(|m| m.keys().map(|(h, _)| *h)).collect();
    let mut t = Table {
        name,
        title,
        columns: std::iter::once(first.to_string()).chain(cols.iter().map(|(_, c)| c.to_string())).collect(),
        rows: Vec::new(),
        plot: BTreeMap::new(),
    };
    for h in hours {
        let mut row = vec![fmt_hour(h)];
        for (i, m) in per.iter().enumerate() {
            let v = m.get(&(h, String::new())).copied().unwrap_or(0.0);
            row.push(num(v));
            if let Some((_, col)) = cols.get(i) {
                t.plot.entry(col.to_string()).or_default().push((h, v));
            }
        }
        t.rows.push(row);
    }
    t
}

/// Hourly values of one metric split by a label, one row per (hour, label value).
fn long(name: &'static str, title: &'static str, rows: &[RollupRow], metrics: &[(&str, &str)], by: &str) -> Table {
    let per: Vec<BTreeMap<(u64, String), f64>> = metrics.iter().map(|(m, _)| hourly(rows, m, by)).collect();
    let keys: BTreeSet<(u64, String)> = per.iter().flat_map(|m| m.keys().cloned()).collect();
    let mut t = Table {
        name,
        title,
        columns: ["hour (UTC)".to_string(), by.to_string()]
            .into_iter()
            .chain(metrics.iter().map(|(_, c)| c.to_string()))
            .collect(),
        rows: Vec::new(),
        plot: BTreeMap::new(),
    };
    for (h, who) in keys {
        let mut row = vec![fmt_hour(h), who.clone()];
        for (i, m) in per.iter().enumerate() {
            let v = m.get(&(h, who.clone())).copied().unwrap_or(0.0);
            row.push(num(v));
            if i == 0 {
                t.plot.entry(who.clone()).or_default().push((h, v));
            }
        }
        t.rows.push(row);
    }
    t
}

/// The users who sent the most MESSAGEs over the whole period, most first (ties by name): what an operator means
/// by "top talkers"; the hourly table beside it shows when.
fn top_talkers(rows: &[RollupRow]) -> Table {
    const SHOWN: usize = 10;
    let mut by_user: BTreeMap<String, f64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.metric == super::talkers::METRIC) {
        if let Some(user) = label(&r.labels, "user") {
            *by_user.entry(user.to_string()).or_insert(0.0) += r.value;
        }
    }
    let mut ranked: Vec<(String, f64)> = by_user.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Table {
        name: "top_talkers",
        title: "Top talkers over the period: the users who sent the most MESSAGEs",
        columns: ["rank", "user", "messages"].map(String::from).to_vec(),
        rows: ranked
            .into_iter()
            .take(SHOWN)
            .enumerate()
            .map(|(i, (user, n))| vec![(i + 1).to_string(), user, num(n)])
            .collect(),
        plot: BTreeMap::new(),
    }
}

/// Latency percentiles per hour and role from the histograms' bucket growth.
fn latency(rows: &[RollupRow]) -> Table {
    let mut t = Table {
        name: "latency",
        title: "Time to handle one message (ms), percentiles per hour",
        columns: ["hour (UTC)", "role", "messages", "p50", "p90", "p99"].map(String::from).to_vec(),
        rows: Vec::new(),
        plot: BTreeMap::new(),
    };
    for role in ["edge", "pool"] {
        let metric = format!("parapet_{role}_handle_seconds_bucket");
        // hour -> le -> cumulative count
        let mut by_hour: BTreeMap<u64, BTreeMap<String, f64>> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.metric == metric) {
            let le = label(&r.labels, "le").unwrap_or("+Inf").to_string();
            *by_hour.entry(hour_of(r.minute)).or_default().entry(le).or_insert(0.0) += r.value;
        }
        for (h, buckets) in by_hour {
            let mut b: Vec<(f64, f64)> =
                buckets.iter().map(|(le, c)| (le.parse::<f64>().unwrap_or(f64::INFINITY), *c)).collect();
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
            let total = b.last().map_or(0.0, |x| x.1);
            if total <= 0.0 {
                continue;
            }
            let q = |p: f64| {
                let want = total * p;
                b.iter().find(|(_, c)| *c >= want).map_or(f64::INFINITY, |(le, _)| *le) * 1000.0
            };
            let (p50, p90, p99) = (q(0.5), q(0.9), q(0.99));
            t.rows.push(vec![fmt_hour(h), role.to_string(), num(total), num(p50), num(p90), num(p99)]);
            t.plot.entry(format!("{role} p99")).or_default().push((h, if p99.is_finite() { p99 } else { 0.0 }));
        }
    }
    t
}

/// What the traffic tables show, per hour and per day.
const TRAFFIC: &[(&str, &str)] = &[
    // Every user comes through an edge, so there is no separate "remote" path: internal means From and target
    // both ours, federated in/out a partner's user on one side (by direction).
    ("parapet_pool_messages_forked_total", "messages (all delivered to our users)"),
    ("parapet_pool_messages_internal_total", "messages internal (both users ours)"),
    ("parapet_pool_messages_delivered_total", "messages delivered"),
    ("parapet_pool_messages_offline_total", "messages to offline users"),
    ("parapet_pool_federated_requests_total", "federated in"),
    ("parapet_pool_federated_out_total", "federated out"),
    ("parapet_pool_registrations_total", "registrations"),
    ("parapet_pool_auth_failures_total", "auth failures (REGISTER and other requests)"),
    ("parapet_pool_publications_total", "presence updates"),
    ("parapet_edge_flows_authenticated_connections", "peak users online (registered flows)"),
];

/// Registrations and why the refused ones were refused (authentication: any request, REGISTER the most).
const REGISTRATIONS: &[(&str, &str)] = &[
    ("parapet_pool_registrations_total", "registrations"),
    ("parapet_pool_auth_failures_total", "auth failures"),
    ("parapet_pool_register_refused_interval_total", "expiry too brief (423)"),
    ("parapet_pool_register_refused_bad_contact_total", "bad Contact (400)"),
    ("parapet_pool_register_refused_out_of_order_total", "out of order (400)"),
    ("parapet_pool_register_refused_devices_total", "too many devices (403)"),
    ("parapet_pool_register_refused_full_total", "registrar full (503)"),
];

/// Every table of the report.
pub fn tables(rows: &[RollupRow]) -> Vec<Table> {
    vec![
        daily("traffic_daily", "Messages, registrations, presence and peak users per day", rows, TRAFFIC),
        wide("traffic", "Messages, registrations, presence and peak users per hour", rows, TRAFFIC),
        wide("registrations", "Registrations and their failures by reason per hour", rows, REGISTRATIONS),
        top_talkers(rows),
        long(
            "talkers",
            "Top talkers: MESSAGEs our users sent, per hour (the top 10 of each minute)",
            rows,
            &[(super::talkers::METRIC, "messages")],
            "user",
        ),
        long(
            "partners",
            "Federation per partner per hour",
            rows,
            &[
                ("parapet_edge_partner_requests_total", "requests"),
                ("parapet_edge_partner_rate_refused_total", "refused over rate"),
                ("parapet_edge_partner_connections_refused_total", "connections refused"),
                ("parapet_edge_partner_connections", "peak connections"),
            ],
            "partner",
        ),
        long(
            "refusals",
            "Edge refusals by cause per hour",
            rows,
            &[("parapet_edge_refused_total", "refused")],
            "cause",
        ),
        wide(
            "capacity",
            "Capacity per hour (peaks)",
            rows,
            &[
                ("parapet_edge_connections", "edge connections"),
                ("parapet_edge_flows_authenticated_connections", "registered flows (users online)"),
                ("parapet_pool_bindings_now", "registrations held (bindings)"),
                ("parapet_pool_connections", "pool connections"),
                ("parapet_process_resident_bytes", "resident memory (bytes, largest process)"),
            ],
        ),
        latency(rows),
        long(
            "cpu",
            "CPU seconds per core thread per hour",
            rows,
            &[("parapet_process_cpu_seconds_total", "cpu s")],
            "thread",
        ),
    ]
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// A line plot (points when a series has one) with its axes' extremes and a legend.
fn svg(plot: &BTreeMap<String, Vec<(u64, f64)>>) -> String {
    let (w, h, pad) = (640.0, 220.0, 40.0);
    let xs: Vec<u64> = plot.values().flatten().map(|p| p.0).collect();
    let (x0, x1) = (xs.iter().min().copied().unwrap_or(0), xs.iter().max().copied().unwrap_or(0));
    let ymax = plot.values().flatten().map(|p| p.1).fold(0.0, f64::max).max(1.0);
    let x = |t: u64| {
        pad + if x1 > x0 { (t - x0) as f64 / (x1 - x0) as f64 * (w - 2.0 * pad) } else { (w - 2.0 * pad) / 2.0 }
    };
    let y = |v: f64| h - pad - v / ymax * (h - 2.0 * pad);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\">\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/>\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"#888\"/>\
         <text x=\"2\" y=\"{}\" font-size=\"11\">{}</text><text x=\"2\" y=\"{}\" font-size=\"11\">0</text>",
        h + 20.0 * plot.len() as f64,
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        pad,
        num(ymax),
        h - pad
    );
    for (i, (name, pts)) in plot.iter().enumerate() {
        let color = COLORS.get(i % COLORS.len()).copied().unwrap_or("#000");
        let path: Vec<String> = pts.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
        let _ =
            write!(s, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>", path.join(" "));
        for (t, v) in pts {
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"><title>{}: {}</title></circle>",
                x(*t),
                y(*v),
                esc(name),
                num(*v)
            );
        }
        let _ = write!(
            s,
            "<rect x=\"{pad}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>",
            h + 20.0 * i as f64,
            pad + 16.0,
            h + 20.0 * i as f64 + 10.0,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

/// The report page; `refresh_s` adds a self-refresh (the live dashboard).
pub fn html(tables: &[Table], since: u64, until: u64, refresh_s: Option<u32>, live: &str) -> String {
    let mut s =
        String::from("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\"><title>parapet report</title>");
    if let Some(r) = refresh_s {
        let _ = write!(s, "<meta http-equiv=\"refresh\" content=\"{r}\">");
    }
    s.push_str(
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0 2em}\
         td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#eee}</style></head><body>",
    );
    let _ = write!(
        s,
        "<h1>parapet {}</h1><p id=\"period\">From {} to {} (UTC), hourly, from the per-minute rollups.</p><ul>",
        if refresh_s.is_some() { "dashboard" } else { "report" },
        fmt_hour(hour_of(since)),
        fmt_hour(hour_of(until))
    );
    s.push_str(live);
    for t in tables {
        let _ = write!(s, "<li><a href=\"#{}\">{}</a> ({} rows)</li>", t.name, esc(t.title), t.rows.len());
    }
    s.push_str("</ul>");
    for t in tables {
        let _ = write!(s, "<h2 id=\"{}\">{}</h2>", t.name, esc(t.title));
        if t.rows.is_empty() {
            s.push_str("<p>No data in this period.</p>");
            continue;
        }
        s.push_str(&svg(&t.plot));
        let _ = write!(s, "<table class=\"{}\"><tr>", t.name);
        for c in &t.columns {
            let _ = write!(s, "<th>{}</th>", esc(c));
        }
        s.push_str("</tr>");
        for r in &t.rows {
            s.push_str("<tr>");
            for c in r {
                let _ = write!(s, "<td>{}</td>", esc(c));
            }
            s.push_str("</tr>");
        }
        s.push_str("</table>");
    }
    s.push_str("</body></html>\n");
    s
}

/// RFC 4180 CSV of a table.
pub fn csv(t: &Table) -> String {
    let field = |f: &str| {
        if f.contains([',', '"', '\n']) {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.to_string()
        }
    };
    let mut out = String::new();
    for r in std::iter::once(&t.columns).chain(&t.rows) {
        out.push_str(&r.iter().map(|f| field(f)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The rollups of the last `since_s` seconds from `db`.
pub fn load(db: &super::rollup::RollupDb, since_s: u64) -> Result<(Vec<RollupRow>, u64, u64), String> {
    let now = unix_now();
    let since = now.saturating_sub(since_s);
    let mut store = db.open()?;
    let rows = store.rollups(since - since % 60).map_err(|e| e.to_string())?;
    Ok((rows, since, now))
}

/// `parapet report`.
pub fn run(config: &Path, since: &str, out: &Path, csv_dir: Option<&Path>) -> Result<(), String> {
    let cfg = crate::config::Config::load(config).map_err(|e| e.to_string())?;
    let db = super::rollup::database(&cfg)
        .ok_or("config: [mgmt] rollup_database: missing (and no [pool] database to default to)")?;
    let (rows, from, until) = load(&db, parse_since(since)?)?;
    let tables = tables(&rows);
    std::fs::write(out, html(&tables, from, until, None, "")).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut written = vec![out.display().to_string()];
    if let Some(dir) = csv_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for t in &tables {
            let p = dir.join(format!("{}.csv", t.name));
            std::fs::write(&p, csv(t)).map_err(|e| format!("{}: {e}", p.display()))?;
            written.push(p.display().to_string());
        }
    }
    println!("{} rollup rows since {}: wrote {}", rows.len(), fmt_hour(hour_of(from)), written.join(", "));
    Ok(())
}

static DB: std::sync::OnceLock<super::rollup::RollupDb> = std::sync::OnceLock::new();

/// Makes `/report` and `/dashboard` read this database (set by the process lifecycle when rollups are on).
pub fn serve_from(db: super::rollup::RollupDb) {
    let _ = DB.set(db);
}

/// Families the dashboard shows as they are now (this process), per core and per partner.
const LIVE: &[&str] = &[
    "parapet_ready_check",
    "parapet_edge_connections",
    "parapet_edge_flows_authenticated_connections",
    "parapet_pool_connections",
    "parapet_pool_bindings_now",
    "parapet_edge_messages_in_total",
    "parapet_pool_messages_in_total",
    "parapet_edge_partner_connections",
    "parapet_edge_partner_requests_total",
    "parapet_edge_partner_rate_refused_total",
    "parapet_edge_banned_now",
];

/// The dashboard's "now" table: this process's live figures, from its own exposition.
fn live() -> String {
    let mut s = String::from("<h2 id=\"now\">Now (this process)</h2><table class=\"now\"><tr><th>figure</th><th>labels</th><th>value</th></tr>");
    for line in super::metrics::render().lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (metric, labels) = series.split_once('{').unwrap_or((series, "}"));
        if LIVE.contains(&metric) {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(metric),
                esc(labels.trim_end_matches('}')),
                esc(value)
            );
        }
    }
    s.push_str("</table>");
    s
}

/// `/report?since=7d` (and `/dashboard`: the last hour, refreshing itself every 10 s).
pub fn page(since: Option<&str>, refresh_s: Option<u32>) -> super::http::Response {
    use super::http::Response;
    let Some(db) = DB.get() else {
        return Response::text("404 Not Found", "no rollups in this process ([mgmt] rollup_database)\n");
    };
    let since = match parse_since(since.unwrap_or("1d")) {
        Ok(s) => s,
        Err(e) => return Response::text("400 Bad Request", format!("{e}\n")),
    };
    match load(db, since) {
        Ok((rows, from, until)) => Response {
            status: "200 OK",
            content_type: "text/html; charset=utf-8",
            body: html(
                &tables(&rows),
                from,
                until,
                refresh_s,
                &if refresh_s.is_some() { live() } else { String::new() },
            ),
        },
        Err(e) => Response::text("503 Service Unavailable", format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rollup::Combine;

    fn row(minute: u64, metric: &str, labels: &str, combine: Combine, value: f64) -> RollupRow {
        RollupRow { minute, role: "edge".into(), metric: metric.into(), labels: labels.into(), combine, value }
    }

    #[test]
    fn hourly_tables_csv_and_page() {
        assert_eq!(parse_since("7d"), Ok(7 * 86_400));
        assert!(parse_since("7w").is_err());
        assert_eq!(fmt_hour(0), "1970-01-01 00:00");
        assert_eq!(fmt_hour(951_868_800 + 7200), "2000-03-01 02:00");
        let rows = vec![
            row(3600, "parapet_edge_partner_requests_total", "partner=\"edge.partner.test\"", Combine::Sum, 3.0),
            row(3660, "parapet_edge_partner_requests_total", "partner=\"edge.partner.test\"", Combine::Sum, 4.0),
            row(7200, "parapet_edge_refused_total", "cause=\"flood_rate\"", Combine::Sum, 9.0),
            row(3600, "parapet_edge_connections", "", Combine::Max, 5.0),
            row(3660, "parapet_edge_connections", "", Combine::Max, 2.0),
            row(3600, "parapet_edge_handle_seconds_bucket", "le=\"0.001\"", Combine::Sum, 90.0),
            row(3600, "parapet_edge_handle_seconds_bucket", "le=\"0.01\"", Combine::Sum, 99.0),
            row(3600, "parapet_edge_handle_seconds_bucket", "le=\"+Inf\"", Combine::Sum, 100.0),
            row(3600, "parapet_pool_registrations_total", "", Combine::Sum, 2.0),
            row(7200, "parapet_pool_registrations_total", "", Combine::Sum, 1.0),
            row(90_000, "parapet_pool_registrations_total", "", Combine::Sum, 3.0),
        ];
        let t = tables(&rows);
        let find = |n: &str| t.iter().find(|t| t.name == n).map(|t| t.rows.clone()).unwrap_or_default();
        assert_eq!(find("partners"), vec![vec!["1970-01-01 01:00", "edge.partner.test", "7", "0", "0", "0"]]);
        assert_eq!(find("refusals"), vec![vec!["1970-01-01 02:00", "flood_rate", "9"]]);
        assert_eq!(find("capacity").first().and_then(|r| r.get(1)).map(String::as_str), Some("5"));
        let daily = find("traffic_daily");
        assert_eq!(daily.len(), 2, "two days: {daily:?}");
        assert_eq!((daily[0][0].as_str(), daily[0][7].as_str(), daily[1][7].as_str()), ("1970-01-01 00:00", "3", "3"));
        assert_eq!(find("traffic").len(), 3, "three hours");
        let regs = find("registrations");
        assert_eq!(regs.len(), 3, "three hours: {regs:?}");
        assert_eq!((regs[0][1].as_str(), regs[0][3].as_str()), ("2", "0"), "{regs:?}");
        assert_eq!(find("latency"), vec![vec!["1970-01-01 01:00", "edge", "100", "1", "1", "10"]]);
        let page = html(&t, 0, 7200, None, "");
        assert!(page.contains("<svg") && page.contains("edge.partner.test") && !page.contains("<script"));
        let c = t.iter().find(|t| t.name == "partners").map(csv).unwrap_or_default();
        assert!(c.starts_with("hour (UTC),partner,requests,"), "{c}");
    }
}
