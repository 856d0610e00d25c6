//! Counters and the management HTTP listener (`/metrics` in Prometheus text format, `/health`).
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

/// Declares a struct of counters that can list itself for `/metrics`.
#[macro_export]
macro_rules! counters {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident,)* }) => {
        $(#[$m])*
        #[derive(Default, Debug)]
        pub struct $name { $($(#[$fm])* pub $field: $crate::mgmt::metrics::Counter,)* }
        impl $name {
            pub fn visit(&self, f: &mut dyn FnMut(&'static str, u64)) {
                $(f(stringify!($field), self.$field.get());)*
            }
        }
    };
}

type Visitor = Box<dyn Fn(&mut dyn FnMut(&'static str, u64)) + Send + Sync>;

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
    samples.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut out = String::with_capacity(samples.len() * 48);
    let mut last = "";
    for (name, core, v) in &samples {
        if name != last {
            // Gauges are named by what they hold now; everything else only grows.
            let kind = if name.ends_with("connections") || name.ends_with("_now") { "gauge" } else { "counter" };
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            last = name;
        }
        out.push_str(&format!("{name}{{core=\"{core}\"}} {v}\n"));
    }
    out
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

fn handle(mut stream: std::net::TcpStream) {
    let mut buf = [0u8; 2048];
    let n = stream.read(&mut buf).unwrap_or(0);
    let head = buf.get(..n).unwrap_or(&[]);
    let path = head.split(|b| *b == b' ').nth(1).unwrap_or(b"");
    let (status, ctype, body) = match path {
        b"/metrics" => ("200 OK", "text/plain; version=0.0.4", render()),
        b"/health" => ("200 OK", "text/plain", "ok\n".to_string()),
        b"/bans" => ("200 OK", "text/plain", render_bans()),
        _ => ("404 Not Found", "text/plain", "try /metrics, /health or /bans\n".to_string()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
