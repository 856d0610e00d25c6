//! Checks of a parsed configuration that need the machine (CPU ids, files) or several keys at once (limit
//! ordering, names, federation tables); parsing itself only checks each key on its own.

use std::path::PathBuf;

use super::{invalid, online_cpus, Config, ConfigError, AUTH_ALGORITHMS};

impl Config {
    /// Checks that need the machine or several keys at once: CPU ids exist and repeat not,
    /// limits are ordered, certificate/key/CA/directory files are named, names are plausible.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_name("domain", &self.domain)?;
        if self.log.trim().is_empty() {
            return Err(invalid("log", "empty (use e.g. \"info\" or \"parapet=debug\")"));
        }
        let l = &self.limits;
        for (key, v) in [
            ("message_bytes_max", l.message_bytes_max),
            ("header_bytes_max", l.header_bytes_max),
            ("header_count_max", l.header_count_max),
            ("line_bytes_max", l.line_bytes_max),
        ] {
            if v == 0 {
                return Err(invalid(format!("[limits] {key}"), "must be at least 1"));
            }
        }
        if l.header_bytes_max > l.message_bytes_max {
            return Err(invalid(
                "[limits] header_bytes_max",
                format!("{} exceeds message_bytes_max {}", l.header_bytes_max, l.message_bytes_max),
            ));
        }
        if l.line_bytes_max > l.header_bytes_max {
            return Err(invalid(
                "[limits] line_bytes_max",
                format!("{} exceeds header_bytes_max {}", l.line_bytes_max, l.header_bytes_max),
            ));
        }
        if let Some(d) = &self.directory {
            d.validate()?;
        }
        let cpus = online_cpus();
        if let Some(e) = &self.edge {
            validate_cores("edge", &e.cores, cpus)?;
            validate_files("edge", &[("cert", &e.cert), ("key", &e.key), ("ca", &e.ca)])?;
            validate_name("[edge.pool] name", &e.pool.name)?;
            if e.pool_names.is_empty() {
                return Err(invalid("[edge] pool_names", "empty: no pool could connect to the internal listener"));
            }
            for (i, n) in e.pool_names.iter().enumerate() {
                validate_name(&format!("[edge] pool_names.{i}"), n)?;
            }
            if e.listen == e.internal_listen {
                return Err(invalid("[edge] internal_listen", format!("same address as listen ({})", e.listen)));
            }
            if let Some(l) = e.federation.as_ref().and_then(|f| f.listen) {
                if l == e.listen || l == e.internal_listen {
                    return Err(invalid(
                        "[edge.federation] listen",
                        format!("{l} is already another edge listener (omit listen to share the user port)"),
                    ));
                }
            }
            positive("[edge] handshake_timeout_ms", e.handshake_timeout_ms)?;
            positive("[edge] idle_timeout_ms", e.idle_timeout_ms)?;
            positive("[edge] flow_queue_max", e.flow_queue_max as u64)?;
        }
        if let Some(p) = &self.pool {
            validate_cores("pool", &p.cores, cpus)?;
            validate_files("pool", &[("cert", &p.cert), ("key", &p.key), ("ca", &p.ca), ("directory", &p.directory)])?;
            if p.edges.is_empty() {
                return Err(invalid("[pool] edges", "empty: add at least one [[pool.edges]] with name and addr"));
            }
            for (i, e) in p.edges.iter().enumerate() {
                validate_name(&format!("[pool.edges.{i}] name"), &e.name)?;
            }
            if let Some(r) = &p.realm {
                if r.trim().is_empty() || r.contains('"') {
                    return Err(invalid("[pool] realm", format!("{r:?} is not usable as a digest realm")));
                }
            }
            let r = &p.registrar;
            if !(r.min_expires_s <= r.default_expires_s && r.default_expires_s <= r.max_expires_s) {
                return Err(invalid(
                    "[pool.registrar]",
                    format!(
                        "expected min_expires_s <= default_expires_s <= max_expires_s, got {} / {} / {}",
                        r.min_expires_s, r.default_expires_s, r.max_expires_s
                    ),
                ));
            }
            positive("[pool.registrar] max_expires_s", r.max_expires_s as u64)?;
            positive("[pool.registrar] bindings_per_aor_max", r.bindings_per_aor_max as u64)?;
            if p.auth.algorithms.is_empty() {
                return Err(invalid("[pool.auth] algorithms", format!("empty; supported: {AUTH_ALGORITHMS:?}")));
            }
            for a in &p.auth.algorithms {
                if !AUTH_ALGORITHMS.contains(&a.as_str()) {
                    return Err(invalid(
                        "[pool.auth] algorithms",
                        format!("unsupported algorithm {a:?}; supported: {AUTH_ALGORITHMS:?}"),
                    ));
                }
            }
            positive("[pool.auth] nonce_ttl_s", p.auth.nonce_ttl_s)?;
            positive("[pool] transaction_timeout_ms", p.transaction_timeout_ms)?;
            positive("[pool] handshake_timeout_ms", p.handshake_timeout_ms)?;
            if p.database.as_os_str().is_empty() {
                return Err(invalid("[pool] database", "missing: name the SQLite file (e.g. \"parapet.db\")"));
            }
            let pr = &p.presence;
            if !matches!(pr.default_policy.trim().to_ascii_lowercase().as_str(), "allow" | "block" | "confirm") {
                return Err(invalid(
                    "[pool.presence] default_policy",
                    format!("{:?}: expected \"allow\", \"block\" or \"confirm\"", pr.default_policy),
                ));
            }
            if !matches!(pr.im_default_policy.trim().to_ascii_lowercase().as_str(), "allow" | "block") {
                return Err(invalid(
                    "[pool.presence] im_default_policy",
                    format!("{:?}: expected \"allow\" or \"block\"", pr.im_default_policy),
                ));
            }
            for (what, min, default, max) in [
                ("publish", pr.publish_min_expires_s, pr.publish_default_expires_s, pr.publish_max_expires_s),
                ("subscribe", pr.subscribe_min_expires_s, pr.subscribe_default_expires_s, pr.subscribe_max_expires_s),
            ] {
                positive(&format!("[pool.presence] {what}_min_expires_s"), u64::from(min))?;
                if !(min <= default && default <= max) {
                    return Err(invalid(
                        format!("[pool.presence] {what}_default_expires_s"),
                        format!("{default} must lie between {what}_min_expires_s {min} and {what}_max_expires_s {max}"),
                    ));
                }
            }
            positive("[pool.presence] subscriptions_per_user_max", pr.subscriptions_per_user_max as u64)?;
            positive("[pool.presence] watchers_per_presentity_max", pr.watchers_per_presentity_max as u64)?;
            positive("[pool.presence] publications_per_presentity_max", pr.publications_per_presentity_max as u64)?;
        }
        Ok(())
    }
}

fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        Err(invalid(key, "must be at least 1"))
    } else {
        Ok(())
    }
}

fn validate_cores(table: &str, cores: &[usize], cpus: usize) -> Result<(), ConfigError> {
    let key = format!("[{table}] cores");
    if cores.is_empty() {
        return Err(invalid(key, "empty: name at least one CPU"));
    }
    for (i, &c) in cores.iter().enumerate() {
        if c >= cpus {
            return Err(invalid(key, format!("CPU {c} does not exist (this machine has {cpus} online: 0..{cpus})")));
        }
        if cores[..i].contains(&c) {
            return Err(invalid(key, format!("CPU {c} listed twice")));
        }
    }
    Ok(())
}

fn validate_files(table: &str, files: &[(&str, &PathBuf)]) -> Result<(), ConfigError> {
    for (key, p) in files {
        if p.as_os_str().is_empty() {
            let hint = if *key == "directory" {
                "missing (name a users file, .toml or .csv)"
            } else {
                "missing (name a PEM file, or leave cert, key and ca out to use the development PKI)"
            };
            return Err(invalid(format!("[{table}] {key}"), hint));
        }
    }
    Ok(())
}

/// A DNS-ish name: what certificates carry and what SIP URIs use as host.
pub(super) fn validate_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(key, format!("{name:?} is not a valid DNS name")))
    }
}
