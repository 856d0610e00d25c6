//! `parapet directory sync|search` and `parapet users set-password`: run on no executor, so they may block.
//! [`sync_once`] is also what the running pool's directory thread calls on its interval.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::sync::{self, Plan, Settings};
use crate::config::directory::DirectoryConfig;
use crate::config::Config;
use crate::store::{CredentialRow, Store};

#[derive(clap::Subcommand)]
pub enum DirectoryCmd {
    /// Reads every source of [directory], prints what changes (created, updated, disabled, purged, conflicts,
    /// sources held back) and applies it to the pool's store; a running pool picks it up within a second.
    Sync {
        #[arg(short, long)]
        config: PathBuf,
        /// Print the plan, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Read LDAP sources whole, ignoring their incremental marks.
        #[arg(long)]
        full: bool,
    },
    /// Searches the synced namespace by first, last, display or account name (as the pool answers).
    Search {
        #[arg(short, long)]
        config: PathBuf,
        query: String,
    },
}

#[derive(clap::Subcommand)]
pub enum UsersCmd {
    /// Stores a digest secret (HA1) for ALIAS, for sources that carry no credentials. The password is read
    /// from the first line of standard input, or of --password-file.
    SetPassword {
        #[arg(short, long)]
        config: PathBuf,
        alias: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

fn open(config: &Path) -> Result<(Config, Box<dyn Store>), String> {
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let pool = cfg
        .pool
        .as_ref()
        .ok_or_else(|| format!("{}: no [pool] section (its database holds the directory)", config.display()))?;
    let store = crate::store::open(cfg.store.as_ref(), &pool.database).map_err(|e| e.to_string())?;
    Ok((cfg, store))
}

/// The mark every write to the directory moves, so a running pool (which polls the marks) reloads its view.
/// Not a source name: those cannot start with '#'.
pub const GENERATION: &str = "#generation";

fn generation() -> (String, String) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (GENERATION.to_string(), nanos.to_string())
}

/// Reads every source (incrementally unless `full`), plans, and applies the plan unless `dry_run`.
pub fn sync_once(
    dir: &DirectoryConfig,
    realm: &str,
    store: &mut dyn Store,
    dry_run: bool,
    full: bool,
    now: u64,
) -> Result<Plan, String> {
    let current = store.directory_rows().map_err(|e| e.to_string())?;
    let marks = if full { Vec::new() } else { store.sync_marks().map_err(|e| e.to_string())? };
    // Sources are read one at a time: each is a network round trip or a file, and a sync is not latency-bound.
    let snapshots = dir
        .sources
        .iter()
        .map(|s| {
            let mark = marks.iter().find(|(n, _)| *n == s.name).map(|(_, m)| m.as_str());
            // An incremental read needs the source's people in the store to build on.
            let mark = mark.filter(|_| current.iter().any(|r| r.source == s.name));
            super::source::read(s, realm, mark)
        })
        .collect();
    let settings = Settings { max_delete_share: dir.max_delete_share, retention_s: dir.retention_s, now };
    let plan = sync::plan(&current, snapshots, &settings);
    for (source, why) in &plan.held {
        tracing::warn!(source = %source, reason = %why, "directory: source held back, its people unchanged");
    }
    for c in &plan.conflicts {
        tracing::warn!(alias = %c.alias, winner = %c.winner.0, loser = %c.loser.0, "directory: alias conflict");
    }
    if !dry_run && (!plan.is_empty() || !plan.marks.is_empty()) {
        let mut marks = plan.marks.clone();
        marks.push(generation());
        store.write_directory(&plan.writes(), &marks).map_err(|e| e.to_string())?;
    }
    Ok(plan)
}

pub fn directory(cmd: DirectoryCmd) -> Result<String, String> {
    match cmd {
        DirectoryCmd::Sync { config, dry_run, full } => {
            let (cfg, mut store) = open(&config)?;
            let dir = cfg.directory.as_ref().ok_or_else(|| format!("{}: no [directory] section", config.display()))?;
            let plan = sync_once(dir, cfg.realm(), &mut *store, dry_run, full, crate::pool::now_secs())?;
            let mut out = plan.render();
            if dry_run {
                out.push_str("# dry run: nothing written\n");
            }
            Ok(out)
        }
        DirectoryCmd::Search { config, query } => {
            let (cfg, mut store) = open(&config)?;
            let rows = store.directory_rows().map_err(|e| e.to_string())?;
            let index = super::search::Index::build(&rows, &cfg.domain);
            let q = super::search::Query::parse(&query).map_err(|e| e.to_string())?;
            let mut out = String::new();
            for h in index.search(&q) {
                out.push_str(&format!("{}\t{}\t{}\t{}\n", h.display_name, h.uri, h.title, h.phone));
            }
            Ok(out)
        }
    }
}

pub fn users(cmd: UsersCmd) -> Result<String, String> {
    match cmd {
        UsersCmd::SetPassword { config, alias, password_file } => {
            let (cfg, mut store) = open(&config)?;
            let password = match password_file {
                Some(p) => std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?,
                None => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("standard input: {e}"))?;
                    line
                }
            };
            let password = password.lines().next().unwrap_or("").to_string();
            if password.is_empty() {
                return Err("empty password (give it on standard input or with --password-file)".into());
            }
            let alias = alias.trim().to_ascii_lowercase();
            let rows = store.directory_rows().map_err(|e| e.to_string())?;
            let Some(row) = rows.iter().find(|r| r.alias == alias) else {
                return Err(format!("{alias}: no such person in the synced directory (run `parapet directory sync`)"));
            };
            let (ha1_md5, ha1_sha256) = super::ha1_pair(&alias, cfg.realm(), &password);
            store
                .put_credential(&CredentialRow { alias: alias.clone(), ha1_md5, ha1_sha256 })
                .map_err(|e| e.to_string())?;
            let note = if row.ha1_md5.is_some() || row.ha1_sha256.is_some() {
                format!(" (source {} also carries credentials: those are used first)", row.source)
            } else {
                String::new()
            };
            Ok(format!("{alias}: password stored{note}\n"))
        }
    }
}
