//! `[mgmt]`: the management listener (address, access token, readiness thresholds) and its checks.
//!
//! Parsed here rather than in `mod.rs` so operations keys grow in one file of their own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{invalid, parse_addr, resolve, ConfigError, DEFAULT_MGMT_LISTEN};

/// Days of validity a certificate must have left for `/ready` to say ready (and `doctor` to say ok).
pub const DEFAULT_CERT_MIN_DAYS: u32 = 14;

/// How log lines are written (top-level `log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    Text,
    /// One JSON object per line: timestamp, level, fields, message.
    Json,
}

pub(super) fn log_format(raw: Option<&str>) -> Result<LogFormat, ConfigError> {
    match raw.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(invalid("log_format", format!("{other:?}: expected \"text\" or \"json\""))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MgmtConfig {
    pub listen: SocketAddr,
    /// A file holding the bearer token every route but `/health`, `/ready` and `/metrics` requires; mandatory
    /// when `listen` is not a loopback address.
    pub token_file: Option<PathBuf>,
    /// `/ready` answers 503 when a certificate of this process expires within this many days.
    pub cert_min_days: u32,
    /// Where this process writes its per-minute rollups for reports (SQLite file); default: `reports.db` next to
    /// `[pool] database` in a process running a pool, none otherwise (an edge names the pool's, or its own).
    pub rollup_database: Option<PathBuf>,
    /// Seconds between two rollup writes (60 in production; tests use 1).
    pub rollup_interval_s: u64,
    /// Days rollups are kept.
    pub rollup_retention_days: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMgmt {
    listen: Option<String>,
    token_file: Option<PathBuf>,
    cert_min_days: Option<u32>,
    rollup_database: Option<PathBuf>,
    rollup_interval_s: Option<u64>,
    rollup_retention_days: Option<u32>,
}

pub(super) fn build(raw: Option<RawMgmt>, base_dir: &Path) -> Result<Option<MgmtConfig>, ConfigError> {
    let Some(m) = raw else { return Ok(None) };
    Ok(Some(MgmtConfig {
        listen: parse_addr("mgmt", "listen", m.listen.as_deref().unwrap_or(DEFAULT_MGMT_LISTEN))?,
        token_file: m.token_file.map(|p| resolve(base_dir, Some(p))).filter(|p| !p.as_os_str().is_empty()),
        cert_min_days: m.cert_min_days.unwrap_or(DEFAULT_CERT_MIN_DAYS),
        rollup_database: m.rollup_database.map(|p| resolve(base_dir, Some(p))).filter(|p| !p.as_os_str().is_empty()),
        rollup_interval_s: match m.rollup_interval_s {
            Some(0) => return Err(invalid("[mgmt] rollup_interval_s", "must be at least 1")),
            Some(s) => s,
            None => 60,
        },
        rollup_retention_days: m.rollup_retention_days.unwrap_or(30),
    }))
}

impl MgmtConfig {
    /// The token the listener requires (None: loopback without a token file, every route open to local users).
    /// Errors name the key: off loopback a token is mandatory, and a named file must hold one.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.token_file else {
            if self.listen.ip().is_loopback() {
                return Ok(None);
            }
            return Err(invalid(
                "[mgmt] token_file",
                format!(
                    "missing: listen {} is not a loopback address, so the management API needs a token \
                     (name a file holding one, e.g. `head -c 32 /dev/urandom | base64 > mgmt.token`), \
                     or listen on 127.0.0.1",
                    self.listen
                ),
            ));
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid("[mgmt] token_file", format!("cannot read {}: {e}", path.display())))?;
        let token = text.trim();
        if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "[mgmt] token_file",
                format!("{}: expected one token of at least 16 characters, no spaces", path.display()),
            ));
        }
        Ok(Some(token.to_string()))
    }
}

impl super::Config {
    /// The checks `check-config` and every start run after [`Config::validate`](super::Config::validate): at
    /// least one role, and the files named are there and usable (certificates and keys readable, not swapped,
    /// matching; CA files hold certificates; the directory is readable; the management token when one is
    /// needed). Kept apart from `validate` because they read files, which unit tests of the parser do not have.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        if self.edge.is_none() && self.pool.is_none() {
            return Err(invalid("[edge] / [pool]", "neither table is present: this config runs no role"));
        }
        if let Some(e) = &self.edge {
            super::certs::check_pair("edge", &e.cert, &e.key)?;
            super::certs::check_ca("edge", &e.ca)?;
        }
        if let Some(p) = &self.pool {
            super::certs::check_pair("pool", &p.cert, &p.key)?;
            super::certs::check_ca("pool", &p.ca)?;
            std::fs::metadata(&p.directory)
                .map_err(|e| invalid("[pool] directory", format!("cannot read {}: {e}", p.directory.display())))?;
        }
        if let Some(m) = &self.mgmt {
            m.token()?;
        }
        Ok(())
    }
}
