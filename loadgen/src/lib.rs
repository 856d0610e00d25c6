//! loadgen: an open-loop SIP load generator for parapet (real SIP over TLS, digest auth as a client does it,
//! latency from the scheduled send time, HdrHistogram percentiles). The binary is a thin shell over `cli`
//! (arguments -> `Config`), `engine` (executors, schedule, steps) and `report` (table, JSON, log, SVG).
//!
//! Map: `cli` validates; `users` reads the user directory; `transport` opens TCP/TLS connections; `sipc`
//! builds client SIP bytes and digest credentials; `conn` runs one user's connection; `scenario` says what
//! one operation does; `engine` schedules and measures; `stats` counts; `report` writes.

pub mod cli;
pub mod conn;
pub mod engine;
pub mod report;
pub mod scenario;
pub mod sipc;
pub mod stats;
pub mod transport;
pub mod users;

use std::time::SystemTime;

/// Runs a validated configuration and writes every requested output. Err: one sentence for the user.
pub fn run_and_report(cfg: cli::Config, outputs: &Outputs) -> Result<engine::RunResult, cli::ConfigError> {
    let started = SystemTime::now() + cfg.warmup;
    let result = engine::run(cfg.clone())?;
    print!("{}", report::table(&cfg, &result));
    let write = |path: &std::path::Path, bytes: &[u8]| {
        std::fs::write(path, bytes).map_err(|e| cli::bad(format!("Cannot write {}: {e}.", path.display())))
    };
    if let Some(p) = &outputs.json {
        write(p, report::json(&cfg, &result).as_bytes())?;
    }
    if let Some(p) = &outputs.hdr_log {
        let log = report::hdr_log(&result.seconds, started)
            .map_err(|e| cli::bad(format!("Cannot encode the HdrHistogram log: {e}.")))?;
        write(p, &log)?;
    }
    if let Some(p) = &outputs.plot {
        let title = format!("loadgen {} — target {} /s", cfg.scenario.name(), cfg.rate);
        write(p, report::svg(&title, &result.seconds).as_bytes())?;
    }
    Ok(result)
}

/// Files to write after a run.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    pub json: Option<std::path::PathBuf>,
    pub hdr_log: Option<std::path::PathBuf>,
    pub plot: Option<std::path::PathBuf>,
}
