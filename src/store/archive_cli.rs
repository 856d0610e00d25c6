//! `parapet archive search | export | purge`: the IM archive read (and purged) straight from the store a pool
//! config names, like `parapet policy`. Runs on no executor, so it may block. Export pages through the rows
//! (bounded memory whatever the archive's size) and writes one JSON object per line.

use std::io::Write;
use std::path::Path;

use super::archive::{json_line, now_ms, ArchiveQuery, ArchiveRow};
use crate::civil::{civil_from_days, days_from_civil};
use crate::config::Config;

/// `parapet archive ...` (the binary's command line embeds this).
#[derive(clap::Subcommand, Debug)]
pub enum ArchiveCmd {
    /// Archived messages, one line each (oldest first), then a count.
    Search {
        #[command(flatten)]
        filters: Filters,
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Archived messages as JSON lines on stdout (the count on stderr).
    Export {
        #[command(flatten)]
        filters: Filters,
    },
    /// Deletes messages older than the retention period now (the pool also does it every minute).
    Purge {
        /// Default: `[archive] retention_days`.
        #[arg(long)]
        older_than_days: Option<u32>,
    },
}

impl ArchiveCmd {
    pub fn run(self, config: &Path) -> Result<String, String> {
        match self {
            ArchiveCmd::Search { filters, limit } => search(config, &Filters { limit: Some(limit), ..filters }),
            ArchiveCmd::Export { filters } => export(config, &filters).map(|m| {
                eprintln!("{m}");
                String::new()
            }),
            ArchiveCmd::Purge { older_than_days } => purge(config, older_than_days).map(|m| m + "\n"),
        }
    }
}

/// Rows fetched per page.
const PAGE: u32 = 1000;

/// Filters as the command line gives them.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Filters {
    /// Messages from or to this user (`bob`, `bob@example.com`, `sip:bob@partner.test`).
    #[arg(long)]
    pub user: Option<String>,
    /// ... and from or to this one too (the other party).
    #[arg(long)]
    pub peer: Option<String>,
    /// From this time on (unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time.
    #[arg(long)]
    pub until: Option<String>,
    /// Bodies containing this text (case-sensitive).
    #[arg(long)]
    pub text: Option<String>,
    #[arg(skip)]
    pub limit: Option<u32>,
}

/// `1733232000` (unix seconds), `2026-12-03` or `2026-12-03T13:40:00Z` (UTC) -> unix milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs.saturating_mul(1000));
    }
    let bad = || format!("{s:?}: expected unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)");
    let (date, time) = s.split_once('T').map_or((s, None), |(d, t)| (d, Some(t.trim_end_matches('Z'))));
    let num = |v: Option<&str>| v.and_then(|v| v.parse::<i64>().ok()).ok_or_else(bad);
    let mut dp = date.split('-');
    let (y, m, d) = (num(dp.next())?, num(dp.next())?, num(dp.next())?);
    if dp.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let secs_of_day = match time {
        None => 0,
        Some(t) => {
            let mut tp = t.split(':');
            let (h, mi, se) = (num(tp.next())?, num(tp.next())?, num(tp.next().or(Some("0")))?);
            if tp.next().is_some() || h > 23 || mi > 59 || se > 60 {
                return Err(bad());
            }
            h * 3600 + mi * 60 + se
        }
    };
    Ok((days_from_civil(y, m, d) * 86_400 + secs_of_day) * 1000)
}

/// Unix milliseconds -> `2026-12-03T13:40:00Z`.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", t / 3600, t / 60 % 60, t % 60)
}

/// `bob` or `sip:bob@example.com` -> the AOR key the archive uses.
fn aor(s: &str, domain: &str) -> String {
    let s = s.trim().trim_start_matches("sip:");
    match s.rsplit_once('@') {
        Some((u, d)) => format!("{u}@{}", d.to_ascii_lowercase()),
        None => format!("{s}@{domain}"),
    }
}

fn query(f: &Filters, domain: &str) -> Result<ArchiveQuery, String> {
    let time = |v: &Option<String>, what: &str| {
        v.as_deref().map(parse_time).transpose().map_err(|e| format!("archive: --{what}: {e}"))
    };
    Ok(ArchiveQuery {
        user: f.user.as_deref().map(|u| aor(u, domain)),
        peer: f.peer.as_deref().map(|u| aor(u, domain)),
        since_ms: time(&f.since, "since")?,
        until_ms: time(&f.until, "until")?,
        text: f.text.clone(),
        after_id: 0,
        limit: PAGE,
    })
}

/// Calls `each` on every matching row, page by page; stops after `max` rows.
fn pages(
    config: &Path,
    f: &Filters,
    max: u64,
    each: &mut dyn FnMut(&ArchiveRow) -> Result<(), String>,
) -> Result<u64, String> {
    let (mut store, domain) = super::admin::open(config)?;
    let mut q = query(f, &domain)?;
    let mut n = 0u64;
    loop {
        let rows = store.search_archive(&q).map_err(|e| e.to_string())?;
        let last = rows.len() < q.limit as usize;
        for r in &rows {
            if n >= max {
                return Ok(n);
            }
            each(r)?;
            n += 1;
            q.after_id = q.after_id.max(r.id);
        }
        if last || rows.is_empty() {
            return Ok(n);
        }
    }
}

/// `archive search`: one readable line per row, then a count.
pub fn search(config: &Path, f: &Filters) -> Result<String, String> {
    let mut out = String::new();
    let n = pages(config, f, u64::from(f.limit.unwrap_or(100)), &mut |r| {
        let body: String = r.body.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        out.push_str(&format!(
            "{} {} {} -> {} [{}] {}\n",
            format_time(r.at_ms),
            r.direction,
            r.sender,
            r.recipient,
            r.content_type,
            body
        ));
        Ok(())
    })?;
    out.push_str(&format!("{n} message(s)\n"));
    Ok(out)
}

/// `archive export`: JSON lines to stdout; the count to the returned message.
pub fn export(config: &Path, f: &Filters) -> Result<String, String> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let n = pages(config, f, u64::MAX, &mut |r| {
        let line = json_line(r).map_err(|e| e.to_string())?;
        writeln!(w, "{line}").map_err(|e| format!("archive export: {e}"))
    })?;
    w.flush().map_err(|e| format!("archive export: {e}"))?;
    Ok(format!("exported {n} message(s)"))
}

/// `archive purge`: rows older than `older_than_days` (default: the config's `retention_days`) are deleted now.
pub fn purge(config: &Path, older_than_days: Option<u32>) -> Result<String, String> {
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let days = older_than_days
        .or_else(|| cfg.archive.as_ref().map(|a| a.retention_days).filter(|d| *d > 0))
        .ok_or("archive purge: no --older-than-days and no [archive] retention_days in the config")?;
    let (mut store, _) = super::admin::open(config)?;
    let before = now_ms().saturating_sub(i64::from(days) * 86_400_000);
    let n = store.purge_archive(before).map_err(|e| e.to_string())?;
    Ok(format!("purged {n} message(s) older than {days} day(s) (before {})", format_time(before)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_print_in_utc() {
        assert_eq!(parse_time("0").unwrap(), 0);
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000);
        let t = parse_time("2026-12-03T13:40:05Z").unwrap();
        assert_eq!(format_time(t), "2026-12-03T13:40:05Z");
        assert_eq!(format_time(parse_time("2024-02-29").unwrap()), "2024-02-29T00:00:00Z");
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-13-01").is_err());
    }

    #[test]
    fn users_become_aor_keys() {
        assert_eq!(aor("bob", "example.com"), "bob@example.com");
        assert_eq!(aor("sip:Carol@Partner.Test", "example.com"), "Carol@partner.test");
    }
}
