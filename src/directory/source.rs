//! Reading one configured source into a [`Snapshot`] (blocking: the CLI's thread or the pool's sync thread).

use std::path::Path;

use super::sync::{Fetch, Snapshot};
use super::{ldap, ldif, map_entry, Entry};
use crate::config::directory::{SourceConfig, SourceKind};
use crate::store::DirectoryRow;

/// Entries refused by the mapping listed by name at most; the rest are counted.
const SKIPPED_LISTED_MAX: usize = 20;

fn file_entries(kind: SourceKind, path: &Path) -> Result<Vec<Entry>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let at = |m: String| format!("{}: {m}", path.display());
    match kind {
        SourceKind::Ldif => ldif::parse(&text).map_err(at),
        SourceKind::Csv => {
            let records = crate::store::directory::parse_csv(&text).map_err(|(l, m)| at(format!("line {l}: {m}")))?;
            let mut records = records.into_iter();
            let Some((_, header)) = records.next() else { return Ok(Vec::new()) };
            let header: Vec<String> = header.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
            Ok(records
                .map(|(_, fields)| {
                    let mut e = Entry::default();
                    for (h, v) in header.iter().zip(fields) {
                        e.push(h, v);
                    }
                    e
                })
                .collect())
        }
        SourceKind::Toml => {
            let v: toml::Table = toml::from_str(&text).map_err(|e| at(e.message().trim().to_string()))?;
            let users = match v.get("user") {
                None => return Ok(Vec::new()),
                Some(toml::Value::Array(a)) => a,
                Some(_) => return Err(at("`user` must be [[user]] tables".into())),
            };
            let mut out = Vec::with_capacity(users.len());
            for (i, u) in users.iter().enumerate() {
                let t = u.as_table().ok_or_else(|| at(format!("user {}: not a table", i + 1)))?;
                let mut e = Entry::default();
                for (k, v) in t {
                    let s = match v {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    e.push(k, s);
                }
                out.push(e);
            }
            Ok(out)
        }
        SourceKind::Ldap => Err("not a file source".into()),
    }
}

fn map_all(src: &SourceConfig, entries: &[Entry], realm: &str, skipped: &mut Vec<String>) -> Vec<DirectoryRow> {
    let mut out = Vec::with_capacity(entries.len());
    let mut refused = 0usize;
    for (i, e) in entries.iter().enumerate() {
        match map_entry(e, &src.mapping, &src.name, realm) {
            Ok(r) => out.push(r),
            Err(why) => {
                refused += 1;
                if skipped.len() < SKIPPED_LISTED_MAX {
                    let at = if e.dn.is_empty() { format!("entry {}", i + 1) } else { e.dn.clone() };
                    skipped.push(format!("{at}: {why}"));
                }
            }
        }
    }
    if refused > skipped.len() {
        skipped.push(format!("... {} entries refused in all", refused));
    }
    out
}

/// Reads `src`: incrementally from `mark` where the source allows it.
pub fn read(src: &SourceConfig, realm: &str, mark: Option<&str>) -> Snapshot {
    let mut skipped = Vec::new();
    let (fetch, mark) = match (src.kind, &src.ldap) {
        (SourceKind::Ldap, Some(cfg)) => match ldap::read(cfg, &src.mapping, mark) {
            Ok(ldap::Read::Full { entries, mark }) => (Fetch::Full(map_all(src, &entries, realm, &mut skipped)), mark),
            Ok(ldap::Read::Since { changed, present, mark }) => {
                (Fetch::Incremental { changed: map_all(src, &changed, realm, &mut skipped), present }, mark)
            }
            Err(e) => (Fetch::Failed(e), None),
        },
        (SourceKind::Ldap, None) => (Fetch::Failed("no LDAP settings".into()), None),
        (kind, _) => match file_entries(kind, &src.path) {
            Ok(entries) => (Fetch::Full(map_all(src, &entries, realm, &mut skipped)), None),
            Err(e) => (Fetch::Failed(e), None),
        },
    };
    Snapshot { source: src.name.clone(), precedence: src.precedence, fetch, mark, skipped }
}
