//! `/health` (liveness: restart me if this fails) and `/ready` (readiness: send me traffic only if this holds),
//! each with its reasons in the body, one line per check: `ok <check>: <detail>` or `FAIL <check>: <why>`.
//!
//! Liveness is every core of the process running and beating ([`crate::shard::watch::health`]). Readiness adds
//! what the role needs from outside itself, checked when asked (on the management thread, each check bounded by
//! a short timeout): the edge — its pool accepting connections; the pool — its store answering and at least one
//! of its edges accepting connections; both — their own listeners accepting, not
//! draining, certificates not expiring within `[mgmt] cert_min_days`.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::http::Response;
use crate::config::certs;
use crate::config::Config;

/// How long one readiness check may take (a load balancer's probe times out after a few seconds).
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A readiness check: Ok(detail) or Err(why not).
pub type Check = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

fn checks() -> &'static Mutex<Vec<(String, Check)>> {
    static CHECKS: Mutex<Vec<(String, Check)>> = Mutex::new(Vec::new());
    &CHECKS
}

/// Adds a readiness check of this process.
pub fn add(name: impl Into<String>, check: Check) {
    if let Ok(mut c) = checks().lock() {
        c.push((name.into(), check));
    }
}

pub fn health_response() -> Response {
    match crate::shard::watch::health() {
        Ok(()) => Response::ok("ok\n"),
        Err(why) => Response::text("503 Service Unavailable", format!("{why}\n")),
    }
}

/// Runs every check; the body lists them all (not only the first failure: an operator fixes them in one go).
pub fn ready_response() -> Response {
    let mut lines = Vec::new();
    let mut ready = true;
    let mut line = |name: &str, r: Result<String, String>| match r {
        Ok(detail) => lines.push(format!("ok {name}: {detail}")),
        Err(why) => {
            ready = false;
            lines.push(format!("FAIL {name}: {why}"));
        }
    };
    line("cores", crate::shard::watch::health().map(|()| "every core running".to_string()));
    line("draining", if crate::shard::draining() { Err("stopping: draining".into()) } else { Ok("no".into()) });
    if let Ok(c) = checks().lock() {
        for (name, check) in c.iter() {
            line(name, check());
        }
    }
    let body = lines.join("\n") + "\n";
    if ready {
        Response::ok(body)
    } else {
        Response::text("503 Service Unavailable", body)
    }
}

/// Registers the checks the roles of `cfg` need, and their outcome as `/metrics` families (run at each scrape):
/// `parapet_ready_check{check}` (1 ok, 0 failing) and `parapet_certificate_not_after_seconds{key}`, what the
/// alert rules in `tuning/prometheus/` watch.
pub fn register_for(cfg: &Config) {
    register_checks(cfg);
    let mut certs_of_roles = Vec::new();
    if let Some(e) = &cfg.edge {
        certs_of_roles.push(("[edge] cert", e.cert.clone()));
    }
    if let Some(p) = &cfg.pool {
        certs_of_roles.push(("[pool] cert", p.cert.clone()));
    }
    crate::mgmt::metrics::register_labelled(
        "readiness",
        Box::new(move |f| {
            use crate::mgmt::metrics::Labelled;
            let mut one = |check: &str, ok: bool| {
                f(Labelled {
                    family: "parapet_ready_check",
                    help: "1 while a readiness check of this process passes, 0 while it fails (a gauge; see /ready)",
                    gauge: true,
                    labels: &[("check", check)],
                    value: u64::from(ok),
                })
            };
            one("cores", crate::shard::watch::health().is_ok());
            one("draining", !crate::shard::draining());
            if let Ok(c) = checks().lock() {
                for (name, check) in c.iter() {
                    one(name, check().is_ok());
                }
            }
            for (key, path) in &certs_of_roles {
                let not_after = certs::load_certs(key, path)
                    .ok()
                    .and_then(|c| c.first().and_then(|d| certs::not_after(d.as_ref())))
                    .unwrap_or(0);
                f(Labelled {
                    family: "parapet_certificate_not_after_seconds",
                    help: "End of validity of a certificate this process serves with, unix seconds (a gauge)",
                    gauge: true,
                    labels: &[("key", key)],
                    value: u64::try_from(not_after).unwrap_or(0),
                });
            }
        }),
    );
}

fn register_checks(cfg: &Config) {
    // Cores beat before their listeners are bound: ready means the ports accept.
    let mut own = Vec::new();
    if let Some(e) = &cfg.edge {
        own.extend([e.listen, e.internal_listen]);
        own.extend(e.federation.as_ref().and_then(|f| f.listen));
    }
    if let Some(p) = &cfg.pool {
        own.push(p.listen);
    }
    add("listening", Box::new(move || listening(&own)));
    let min_days = cfg.mgmt.as_ref().map_or(crate::config::ops::DEFAULT_CERT_MIN_DAYS, |m| m.cert_min_days);
    if let Some(e) = &cfg.edge {
        let (name, addr) = (e.pool.name.clone(), e.pool.addr);
        add("pool reachable", Box::new(move || reachable(&name, addr)));
        let cert = e.cert.clone();
        add("edge certificate", Box::new(move || cert_fresh("[edge] cert", &cert, min_days)));
    }
    if let Some(p) = &cfg.pool {
        let database = p.database.clone();
        // A readiness probe must answer within seconds: no long wait for a database that is away.
        let mut store_cfg = cfg.store.clone();
        if let Some(s) = store_cfg.as_mut() {
            s.start_timeout_s = s.start_timeout_s.min(1);
        }
        let store: Mutex<Option<Box<dyn crate::store::Store>>> = Mutex::new(None);
        add("store reachable", Box::new(move || store_answers(&store, store_cfg.as_ref(), &database)));
        let edges: Vec<(String, SocketAddr)> = p.edges.iter().map(|e| (e.name.clone(), e.addr)).collect();
        add("edges reachable", Box::new(move || edges_reachable(&edges)));
        let cert = p.cert.clone();
        add("pool certificate", Box::new(move || cert_fresh("[pool] cert", &cert, min_days)));
    }
}

/// Every listener of this process accepts connections (a wildcard address is tried on loopback).
fn listening(addrs: &[SocketAddr]) -> Result<String, String> {
    for a in addrs {
        let mut to = *a;
        if to.ip().is_unspecified() {
            to.set_ip(if to.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        TcpStream::connect_timeout(&to, CHECK_TIMEOUT).map_err(|e| format!("{a} does not accept connections: {e}"))?;
    }
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    Ok(list.join(", "))
}

/// At least one edge accepts connections (the pool serves through any of them); the detail names those that
/// do not.
fn edges_reachable(edges: &[(String, SocketAddr)]) -> Result<String, String> {
    let (up, down): (Vec<_>, Vec<_>) = edges.iter().map(|(n, a)| reachable(n, *a)).partition(Result::is_ok);
    let down: Vec<String> = down.into_iter().filter_map(Result::err).collect();
    if up.is_empty() {
        return Err(down.join("; "));
    }
    let mut detail = format!("{} of {} accept connections", up.len(), edges.len());
    if !down.is_empty() {
        detail.push_str(&format!(" ({})", down.join("; ")));
    }
    Ok(detail)
}

/// The pool accepts connections at its address. A plain TCP connect, closed at once: the listener counts such a
/// connection as abandoned before its handshake and logs nothing at info level.
fn reachable(name: &str, addr: SocketAddr) -> Result<String, String> {
    match TcpStream::connect_timeout(&addr, CHECK_TIMEOUT) {
        Ok(_) => Ok(format!("{name} at {addr} accepts connections")),
        Err(e) => Err(format!("{name} at {addr} unreachable: {e}")),
    }
}

fn cert_fresh(key: &str, path: &Path, min_days: u32) -> Result<String, String> {
    let certs = certs::load_certs(key, path).map_err(|e| e.to_string())?;
    let der = certs.first().ok_or_else(|| format!("{key}: {} holds no certificate", path.display()))?;
    let not_after =
        certs::not_after(der.as_ref()).ok_or_else(|| format!("{key}: {}: cannot read its validity", path.display()))?;
    let days = certs::CertInfo { not_after_unix: not_after }.days_left(certs::now_unix());
    if days < i64::from(min_days) {
        Err(format!("{} expires in {days} day(s), under [mgmt] cert_min_days = {min_days}: renew it", path.display()))
    } else {
        Ok(format!("{days} days left"))
    }
}

/// The store answers a query (through the [`crate::store::Store`] interface, on a connection of this thread's
/// own, reopened after a failure).
fn store_answers(
    store: &Mutex<Option<Box<dyn crate::store::Store>>>,
    cfg: Option<&crate::config::store::StoreConfig>,
    database: &Path,
) -> Result<String, String> {
    let mut guard = store.lock().map_err(|_| "store check unavailable".to_string())?;
    let what = crate::store::describe(cfg, database);
    if guard.is_none() {
        if cfg.and_then(|c| c.url.as_ref()).is_none() && !database.exists() {
            return Err(format!("{what}: the file does not exist"));
        }
        *guard = Some(crate::store::open(cfg, database).map_err(|e| e.to_string())?);
    }
    let result = guard.as_mut().map(|s| s.changed_elsewhere());
    match result {
        Some(Ok(_)) => Ok(format!("{what} answers")),
        Some(Err(e)) => {
            *guard = None;
            Err(e.to_string())
        }
        None => Err("store not open".into()),
    }
}
