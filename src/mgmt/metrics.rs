//! Counters and the management HTTP listener (`/metrics` in Prometheus text format, `/health`: 200 "ok" only while
//! every core of the process runs).
//!
//! Each core owns its counters and is their only writer, so an increment is a relaxed load and store (no
//! read-modify-write, no lock, no shared cache line between cores). The management thread only reads them.
//! Cores register a visitor for their counters once at start; that registration is the only lock, off the hot path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
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

/// Declares a struct of counters that can list itself for `/metrics`.
#[macro_export]
macro_rules! counters {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident,)* }) => {
        $(#[$m])*
        #[derive(Default, Debug)]
        pub struct $name { $($(#[$fm])* pub $field: $crate::mgmt::metrics::Counter,)* }
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

/// Prometheus text exposition of every registered counter, grouped by metric name.
pub fn render() -> String {
    let mut samples: Vec<(String, usize, u64)> = Vec::new();
    if let Ok(s) = sources().lock() {
        for src in s.iter() {
            (src.visit)(&mut |name, v| samples.push((format!("parapet_{}_{}", src.role, name), src.core, v)));
        }
    }
    // Stable: within a family and core, samples keep the order they were listed in (histogram buckets ascending).
    samples.sort_by(|a, b| family(&a.0).cmp(family(&b.0)).then(a.1.cmp(&b.1)));
    let mut out = String::with_capacity(samples.len() * 48);
    let mut last = String::new();
    for (name, core, v) in &samples {
        let fam = family(name);
        if fam != last {
            // Gauges are named by what they hold now; histograms by their suffixes; everything else only grows.
            let kind = if name.contains("_seconds_") {
                "histogram"
            } else if name.ends_with("connections") || name.ends_with("_now") {
                "gauge"
            } else {
                "counter"
            };
            out.push_str(&format!("# TYPE {fam} {kind}\n"));
            last = fam.to_string();
        }
        // A histogram's sum is kept in µs (integers); Prometheus wants seconds.
        if let Some(base) = name.strip_suffix("_seconds_sum_us") {
            out.push_str(&format!("{base}_seconds_sum{{core=\"{core}\"}} {}\n", *v as f64 / 1e6));
            continue;
        }
        match name.split_once('{') {
            Some((base, labels)) => out.push_str(&format!("{base}{{core=\"{core}\",{labels} {v}\n")),
            None => out.push_str(&format!("{name}{{core=\"{core}\"}} {v}\n")),
        }
    }
    out
}

/// The metric family a sample belongs to (a histogram's buckets, sum and count are one family).
fn family(name: &str) -> &str {
    let base = name.split('{').next().unwrap_or(name);
    match base.find("_seconds_") {
        Some(i) => base.get(..i + "_seconds".len()).unwrap_or(base),
        None => base,
    }
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

/// Serves `/metrics` and `/health` on a plain thread (never on an executor: scraping must not steal a core's time
/// slice, and a slow scraper must not hold anything the data path needs).
pub fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener =
        TcpListener::bind(addr).map_err(|e| std::io::Error::new(e.kind(), format!("[mgmt] listen {addr}: {e}")))?;
    std::thread::Builder::new().name("mgmt".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
            handle(stream);
        }
    })?;
    Ok(())
}

type ReloadHook = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

static RELOAD: std::sync::OnceLock<ReloadHook> = std::sync::OnceLock::new();

/// What `POST /reload` runs (set once by the process that has something to reload).
pub fn on_reload(hook: ReloadHook) {
    let _ = RELOAD.set(hook);
}

fn reload() -> (&'static str, &'static str, String) {
    match RELOAD.get().map(|f| f()) {
        Some(Ok(summary)) => ("200 OK", "text/plain", format!("{summary}\n")),
        Some(Err(e)) => ("422 Unprocessable Entity", "text/plain", format!("{e}\n")),
        None => ("404 Not Found", "text/plain", "nothing to reload in this process\n".to_string()),
    }
}

fn handle(mut stream: std::net::TcpStream) {
    let mut buf = [0u8; 2048];
    let n = stream.read(&mut buf).unwrap_or(0);
    let head = buf.get(..n).unwrap_or(&[]);
    let path = head.split(|b| *b == b' ').nth(1).unwrap_or(b"");
    let post = head.starts_with(b"POST ");
    let (status, ctype, body) = match path {
        b"/reload" if post => reload(),
        b"/reload" => ("405 Method Not Allowed", "text/plain", "use POST /reload\n".to_string()),
        b"/metrics" => ("200 OK", "text/plain; version=0.0.4", render()),
        // 503 when a core of this process stopped or stopped beating: an orchestrator's probe must see it.
        b"/health" => match crate::shard::watch::health() {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        b"/bans" => ("200 OK", "text/plain", render_bans()),
        p if p.starts_with(b"/directory/search") => crate::directory::search::http_search(p),
        #[cfg(debug_assertions)]
        p if post && p.starts_with(b"/debug/panic?core=") => debug_panic(p),
        _ => ("404 Not Found", "text/plain", "try /metrics, /health, /bans or POST /reload\n".to_string()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Debug builds only: `POST /debug/panic?core=N` kills core N (see [`crate::shard::watch::request_panic`]).
#[cfg(debug_assertions)]
fn debug_panic(path: &[u8]) -> (&'static str, &'static str, String) {
    let core = path.strip_prefix(b"/debug/panic?core=").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
    match core {
        Some(id) => {
            crate::shard::watch::request_panic(id);
            ("200 OK", "text/plain", format!("core {id} will panic within a second (debug build)\n"))
        }
        None => ("400 Bad Request", "text/plain", "use POST /debug/panic?core=N\n".to_string()),
    }
}

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
        assert_eq!(family("x_handle_seconds_bucket{le=\"1\"}"), "x_handle_seconds");
    }
}
