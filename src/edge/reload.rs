//! Hot reload of the federation table (SIGHUP, `POST /reload`): the edge config file is read again and validated
//! in full (TOML, every key, the CA and our certificate); a bad file is rejected with the reason and the table in
//! force stays. A good one is published here, behind a mutex and a generation number.
//!
//! Each core owns its own copy of the table (an `Arc`, read without locking on the data path). Its once-a-second
//! sweep compares the generation with the one it applied; only when it moved does it take the mutex, swap its
//! copy, drop connectors to peers no longer routed to, and close the federation connections whose certificate
//! names the new table no longer admits (counted in `federation_peers_cut`). Other connections stay up.
//!
//! The per-peer limits ([`Limiter`]) are published with the table: one `Arc` for every core, built from the
//! previous one so that peers still listed keep their buckets and connection counts, with their new limits. A new
//! `message_bytes_max` applies to federation connections made after the reload.
//!
//! Certificates are read again too: our edge certificate and key and the partners' CA file (same paths), so a
//! renewed certificate or a bundle with a new partner's CA applies to every handshake from then on (on the user
//! port too when partners share it); established connections keep the session they have.
//!
//! The partners' CA may also move to another file (`[edge.federation] ca`): the new bundle is loaded and checked
//! like the old one. What cannot change without a restart (the federation listener's address or its absence,
//! turning federation on or off, the DNS resolver's settings) is refused with the key named.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::core::EdgeCore;
use super::federation::{FedTls, Limiter};
use crate::config::{Config, ConfigError, FederationConfig};
use crate::net::conn::bump;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static TABLE: Mutex<Option<(Arc<FederationConfig>, Arc<Limiter>)>> = Mutex::new(None);
/// The TLS configurations built by the last reload (None: those of the start are in force).
static TLS: Mutex<Option<FedTls>> = Mutex::new(None);

/// Why a reload was refused; the table in force stays.
#[derive(Debug)]
pub enum ReloadError {
    /// The file does not parse or validate.
    Config(ConfigError),
    /// A key whose change needs a restart, or a file it names that cannot be used.
    Key { key: &'static str, detail: String },
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Config(e) => write!(f, "reload refused: {e}"),
            ReloadError::Key { key, detail } => write!(f, "reload refused: config: {key}: {detail}"),
        }
    }
}
impl std::error::Error for ReloadError {}

/// The table the edge starts with (before the cores start).
pub fn install(initial: &FederationConfig) {
    let mut t = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    *t = Some((Arc::new(initial.clone()), Arc::new(Limiter::build(initial, None))));
    // Per-partner families on /metrics, from whichever limiter is in force at the scrape.
    crate::mgmt::metrics::register_labelled(
        "federation_peers",
        Box::new(|f| {
            if let Some(l) = current_limits() {
                l.visit_metrics(f);
            }
        }),
    );
}

/// Moves on each successful reload.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// The table last published.
pub fn current() -> Option<Arc<FederationConfig>> {
    TABLE.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(t, _)| t.clone())
}

/// The per-peer limits last published (with [`current`]).
pub fn current_limits() -> Option<Arc<Limiter>> {
    TABLE.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, l)| l.clone())
}

/// Both, as published together.
fn current_both() -> Option<(Arc<FederationConfig>, Arc<Limiter>)> {
    TABLE.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Reads `config_path` again and, when it is valid, publishes its federation table. Returns a summary.
pub fn reload(config_path: &Path) -> Result<String, ReloadError> {
    let cfg = Config::load(config_path).map_err(ReloadError::Config)?;
    cfg.validate().map_err(ReloadError::Config)?;
    let edge = cfg
        .edge
        .as_ref()
        .ok_or(ReloadError::Key { key: "[edge]", detail: "missing (the edge cannot be removed by a reload)".into() })?;
    let new = edge.federation.as_ref().ok_or(ReloadError::Key {
        key: "[edge.federation]",
        detail: "missing (turning federation off needs a restart)".into(),
    })?;
    let mut table = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let (old, old_limits) = table.as_ref().ok_or(ReloadError::Key {
        key: "[edge.federation]",
        detail: "not configured at start (turning federation on needs a restart)".into(),
    })?;
    if (crate::config::partners_file::DnsConfig { discovery: old.dns.discovery, ..new.dns }) != old.dns {
        let detail = "resolver, dns_ttl_min_secs, dns_ttl_max_secs and dns_grace_secs need a restart".to_string();
        return Err(ReloadError::Key { key: "[edge.federation] resolver", detail });
    }
    if new.listen != old.listen {
        let show = |l: Option<SocketAddr>| l.map_or_else(|| "the user port (omitted)".to_string(), |a| a.to_string());
        let detail = format!("changed from {} to {} (needs a restart)", show(old.listen), show(new.listen));
        return Err(ReloadError::Key { key: "[edge.federation] listen", detail });
    }
    // The certificates and the CA are read again (a renewed certificate, a new partner's CA in the bundle) and
    // must load, exactly as at start; what they build is published with the table.
    let fed =
        super::federation::FedSettings::new(new, &cfg.domain, edge.listen, edge.internal_listen, &edge.cert, &edge.key)
            .map_err(|detail| ReloadError::Key { key: "[edge.federation]", detail })?;
    let summary = summarize(old, new);
    let limits = Arc::new(Limiter::build(new, Some(old_limits)));
    *table = Some((Arc::new(new.clone()), limits));
    *TLS.lock().unwrap_or_else(|p| p.into_inner()) = Some(fed.tls);
    GENERATION.fetch_add(1, Ordering::AcqRel);
    Ok(summary)
}

fn summarize(old: &FederationConfig, new: &FederationConfig) -> String {
    let names = |c: &FederationConfig| -> Vec<String> {
        let mut v: Vec<String> = c.partners.iter().map(|p| p.domain.clone()).collect();
        v.extend(c.clearinghouses.iter().map(|h| h.name.clone()));
        v
    };
    let (before, after) = (names(old), names(new));
    let added: Vec<&String> = after.iter().filter(|n| !before.contains(n)).collect();
    let removed: Vec<&String> = before.iter().filter(|n| !after.contains(n)).collect();
    format!(
        "federation table reloaded: {} partners, {} clearinghouses, {} blocked domains; added {added:?}, removed {removed:?}",
        new.partners.len(),
        new.clearinghouses.len(),
        new.blocked_domains.len()
    )
}

/// A table published by a reload, for the cores to apply.
pub struct Published {
    pub generation: u64,
    pub table: Arc<FederationConfig>,
    pub limits: Arc<Limiter>,
    /// The TLS configurations rebuilt from the files (None: those of the start stay in force).
    pub tls: Option<FedTls>,
}

/// What a reload published after `applied`, if anything moved since.
pub fn published_since(applied: u64) -> Option<Published> {
    let generation = generation();
    if generation == applied {
        return None;
    }
    let (table, limits) = current_both()?;
    let tls = TLS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Some(Published { generation, table, limits, tls })
}

impl EdgeCore {
    /// A reload's table and per-peer limits, from then on (the shell swaps the TLS configurations, forgets the
    /// connectors and closes the connections the table no longer admits). False when federation is not configured
    /// here (nothing to apply).
    pub fn apply_federation_table(&mut self, table: Arc<FederationConfig>, limits: Arc<Limiter>) -> bool {
        if self.s.fed.is_none() {
            return false;
        }
        self.fed_table = Some(table);
        self.fed_limits = Some(limits);
        bump(&self.estats.federation_reloads);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_refused_naming_it() {
        let e = reload(Path::new("/nonexistent/parapet-edge.toml")).expect_err("no file");
        assert!(e.to_string().contains("/nonexistent/parapet-edge.toml"), "{e}");
    }
}
