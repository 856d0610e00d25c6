//! Counters and their rendering for `/metrics` (Prometheus text format); the listener is [`super::http`].
//!
//! Each core owns its counters and is their only writer, so an increment is a relaxed load and store (no
//! read-modify-write, no lock, no shared cache line between cores). The management thread only reads them.
//! Cores register a visitor for their counters once at start; that registration is the only lock, off the hot path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A counter (or gauge) written by one core only.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram written by one core: power-of-two microsecond buckets (1 µs .. ~8 s), exported as a
/// Prometheus histogram. Recording is one bucket index and two relaxed stores.
#[derive(Debug)]
pub struct Histogram {
    buckets: [Counter; HISTOGRAM_BUCKETS],
    sum_us: Counter,
}

pub const HISTOGRAM_BUCKETS: usize = 24;

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: std::array::from_fn(|_| Counter::default()), sum_us: Counter::default() }
    }
}

impl Histogram {
    #[inline]
    pub fn record_us(&self, us: u64) {
        let i = (64 - us.leading_zeros() as usize).min(HISTOGRAM_BUCKETS - 1);
        if let Some(b) = self.buckets.get(i) {
            b.inc();
        }
        self.sum_us.add(us);
    }

    /// Lists itself as `<name>_bucket{le="..."}` (cumulative, in seconds), `<name>_sum`, `<name>_count`.
    pub fn visit(&self, name: &'static str, f: &mut dyn FnMut(&str, u64)) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.get();
            // Bucket i holds values below 2^i µs.
            let le =
                if i + 1 == HISTOGRAM_BUCKETS { "+Inf".to_string() } else { format!("{}", (1u64 << i) as f64 / 1e6) };
            f(&format!("{name}_seconds_bucket{{le=\"{le}\"}}"), cumulative);
        }
        f(&format!("{name}_seconds_sum_us"), self.sum_us.get());
        f(&format!("{name}_seconds_count"), cumulative);
    }
}

/// Declares a struct of counters that can list itself for `/metrics`. Each field's doc comment becomes its
/// `# HELP` line (registered when the struct is built); "a gauge" in it makes the family a gauge.
#[macro_export]
macro_rules! counters {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[doc = $doc:literal])* $field:ident,)* }) => {
        $(#[$m])*
        #[derive(Debug)]
        pub struct $name { $($(#[doc = $doc])* pub $field: $crate::mgmt::metrics::Counter,)* }
        impl Default for $name {
            fn default() -> Self {
                $crate::mgmt::metrics::describe(&[$((stringify!($field), concat!("" $(, $doc)*)),)*]);
                $name { $($field: $crate::mgmt::metrics::Counter::default(),)* }
            }
        }
        impl $name {
            pub fn visit(&self, f: &mut dyn FnMut(&str, u64)) {
                $(f(stringify!($field), self.$field.get());)*
            }
        }
    };
}

type Visitor = Box<dyn Fn(&mut dyn FnMut(&str, u64)) + Send + Sync>;

struct Source {
    role: &'static str,
    core: usize,
    visit: Visitor,
}

fn sources() -> &'static Mutex<Vec<Source>> {
    static SOURCES: OnceLock<Mutex<Vec<Source>>> = OnceLock::new();
    SOURCES.get_or_init(|| Mutex::new(Vec::new()))
}

/// Registers a core's counters under `parapet_<role>_<name>{core="N"}`.
pub fn register(role: &'static str, core: usize, visit: Visitor) {
    if let Ok(mut s) = sources().lock() {
        s.push(Source { role, core, visit });
    }
}

fn helps() -> &'static Mutex<std::collections::HashMap<&'static str, &'static str>> {
    static HELPS: OnceLock<Mutex<std::collections::HashMap<&'static str, &'static str>>> = OnceLock::new();
    HELPS.get_or_init(|| Mutex::new(std::collections::HashMap::new()))
}

/// Help texts of counters by field name (what [`counters!`] registers); an empty text keeps one already known.
pub fn describe(fields: &[(&'static str, &'static str)]) {
    if let Ok(mut h) = helps().lock() {
        for &(name, text) in fields {
            let text = text.trim();
            if !text.is_empty() || !h.contains_key(name) {
                h.insert(name, text);
            }
        }
    }
}

/// One sample of a labelled family (per partner, per cause...), listed by a [`register_labelled`] source.
pub struct Labelled<'a> {
    /// Full family name, `_total` included for counters.
    pub family: &'static str,
    pub help: &'static str,
    pub gauge: bool,
    pub labels: &'a [(&'static str, &'a str)],
    pub value: u64,
}

type LabelledSource = Box<dyn Fn(&mut dyn FnMut(Labelled<'_>)) + Send + Sync>;

fn labelled_sources() -> &'static Mutex<Vec<(&'static str, LabelledSource)>> {
    static L: Mutex<Vec<(&'static str, LabelledSource)>> = Mutex::new(Vec::new());
    &L
}

/// Registers (or, same `key`, replaces) a source of labelled samples read at each scrape.
pub fn register_labelled(key: &'static str, source: LabelledSource) {
    if let Ok(mut l) = labelled_sources().lock() {
        l.retain(|(k, _)| *k != key);
        l.push((key, source));
    }
}

/// Edge refusals by cause: the per-core counters that count a refused request or connection, and the cause
/// label they get in `parapet_edge_refused_total` (one family an alert or a dashboard can sum and split).
const EDGE_REFUSAL_CAUSES: &[(&str, &str)] = &[
    ("unauthenticated_refused", "unauthenticated"),
    ("spoofed_from_refused", "spoofed_from"),
    ("tokens_refused", "bad_token"),
    ("flow_busy", "flow_busy"),
    ("draining_refused", "draining"),
    ("rate_limited", "flood_rate"),
    ("connections_refused", "flood_connections_or_ban"),
    ("too_many_hops", "too_many_hops"),
    ("parse_errors", "bad_input"),
    ("too_large", "too_large"),
    ("framing_errors", "bad_framing"),
    ("federation_spoofed_from", "federation_spoofed_from"),
    ("federation_refused", "federation_policy"),
    ("federation_rate_limited", "federation_rate"),
    ("federation_connections_refused", "federation_connections"),
];

/// One line of the exposition before formatting: family, labels (already formatted, without braces), value.
struct Line {
    family: String,
    /// Sorting key within the family: the core, then the order listed.
    core: usize,
    sample: String,
}

/// Prometheus text exposition: every family with `# HELP` and `# TYPE`, counters named `..._total`.
pub fn render() -> String {
    let mut raw: Vec<(&'static str, String, usize, u64)> = Vec::new();
    if let Ok(s) = sources().lock() {
        for src in s.iter() {
            (src.visit)(&mut |name, v| raw.push((src.role, name.to_string(), src.core, v)));
        }
    }
    let helps = helps().lock().map(|h| h.clone()).unwrap_or_default();
    let mut kinds: std::collections::BTreeMap<String, (&'static str, String)> = Default::default();
    let mut lines: Vec<Line> = Vec::with_capacity(raw.len() + 32);
    for (role, name, core, v) in &raw {
        let field = name.split('{').next().unwrap_or(name);
        let help = helps.get(field).copied().unwrap_or("");
        if let Some(i) = field.find("_seconds_") {
            // Histogram parts: bucket{le}, sum (kept in µs: integers), count.
            let base = format!("parapet_{role}_{}", field.get(..i + "_seconds".len()).unwrap_or(field));
            let suffix = field.get(i + "_seconds".len()..).unwrap_or("");
            let sample = match suffix {
                "_sum_us" => format!("{base}_sum{{core=\"{core}\"}} {}", *v as f64 / 1e6),
                _ => match name.split_once('{') {
                    Some((_, labels)) => format!("{base}{suffix}{{core=\"{core}\",{labels} {v}"),
                    None => format!("{base}{suffix}{{core=\"{core}\"}} {v}"),
                },
            };
            let what = field.get(..i).unwrap_or(field).replace('_', " ");
            kinds.entry(base.clone()).or_insert(("histogram", format!("{role}: time to {what} one message")));
            lines.push(Line { family: base, core: *core, sample });
            continue;
        }
        let gauge = help.contains("a gauge") || field.ends_with("_now") || field.ends_with("connections");
        let family = if gauge { format!("parapet_{role}_{field}") } else { format!("parapet_{role}_{field}_total") };
        let help = if help.is_empty() { format!("{role}: {}", field.replace('_', " ")) } else { help.to_string() };
        kinds.entry(family.clone()).or_insert((if gauge { "gauge" } else { "counter" }, help));
        lines.push(Line { family: family.clone(), core: *core, sample: format!("{family}{{core=\"{core}\"}} {v}") });
        if *role == "edge" {
            if let Some((_, cause)) = EDGE_REFUSAL_CAUSES.iter().find(|(f, _)| *f == field) {
                let fam = "parapet_edge_refused_total";
                kinds
                    .entry(fam.into())
                    .or_insert(("counter", "edge: requests and connections refused, by cause".into()));
                let sample = format!("{fam}{{core=\"{core}\",cause=\"{cause}\"}} {v}");
                lines.push(Line { family: fam.into(), core: *core, sample });
            }
        }
    }
    if let Ok(l) = labelled_sources().lock() {
        for (_, source) in l.iter() {
            source(&mut |s: Labelled<'_>| {
                kinds
                    .entry(s.family.to_string())
                    .or_insert((if s.gauge { "gauge" } else { "counter" }, s.help.to_string()));
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
                let sample = format!("{}{{{}}} {}", s.family, labels.join(","), s.value);
                lines.push(Line { family: s.family.to_string(), core: 0, sample });
            });
        }
    }
    // Stable: within a family and core, samples keep the order they were listed in (histogram buckets ascending).
    lines.sort_by(|a, b| a.family.cmp(&b.family).then(a.core.cmp(&b.core)));
    let mut out = String::with_capacity(lines.len() * 64 + kinds.len() * 96);
    let mut last = "";
    for l in &lines {
        if l.family != last {
            if let Some((kind, help)) = kinds.get(&l.family) {
                out.push_str(&format!("# HELP {} {}\n# TYPE {} {kind}\n", l.family, escape_help(help), l.family));
            }
            last = &l.family;
        }
        out.push_str(&l.sample);
        out.push('\n');
    }
    out
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A ban decided by a core, for `/bans` (the cores enforce their own replicas; this list is for people).
struct BanRecord {
    role: &'static str,
    ip: std::net::IpAddr,
    reason: &'static str,
    until_unix_s: u64,
}

fn bans() -> &'static Mutex<Vec<BanRecord>> {
    static BANS: OnceLock<Mutex<Vec<BanRecord>>> = OnceLock::new();
    BANS.get_or_init(|| Mutex::new(Vec::new()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Records a ban (rare: off the data path).
pub fn record_ban(role: &'static str, ip: std::net::IpAddr, reason: &'static str, duration: Duration) {
    if let Ok(mut b) = bans().lock() {
        let now = unix_now();
        b.retain(|r| r.until_unix_s > now && r.ip != ip);
        b.push(BanRecord { role, ip, reason, until_unix_s: now + duration.as_secs() });
    }
}

/// `/bans`: one line per active ban: address, reason, seconds left, until (unix time).
pub fn render_bans() -> String {
    let now = unix_now();
    let mut out = String::from("# address\trole\treason\tseconds_left\tuntil_unix\n");
    if let Ok(b) = bans().lock() {
        for r in b.iter().filter(|r| r.until_unix_s > now) {
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\n",
                r.ip,
                r.role,
                r.reason,
                r.until_unix_s - now,
                r.until_unix_s
            ));
        }
    }
    out
}

pub use super::http::on_reload;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_ascending() {
        let h = Histogram::default();
        for us in [0, 1, 3, 900, 5_000_000] {
            h.record_us(us);
        }
        let mut seen = Vec::new();
        h.visit("t", &mut |name, v| seen.push((name.to_string(), v)));
        let buckets: Vec<u64> = seen.iter().filter(|(n, _)| n.contains("_bucket")).map(|(_, v)| *v).collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative");
        assert_eq!(buckets.last(), Some(&5));
        assert!(seen.last().is_some_and(|(n, v)| n == "t_seconds_count" && *v == 5));
    }
}
