//! The sync planner, without I/O: the store's current rows and one snapshot per source in, a [`Plan`] out.
//!
//! Rules, in the order they apply:
//! - A source that could not be read, returned nobody while it has people in the store, or would lose more
//!   than `max_delete_share` of its enabled people at once is *held*: its people stay exactly as they are, and
//!   the plan says why. A broken LDAP server must never delete the company.
//! - Sources are merged by precedence (lower first); the same alias from a second source (or twice from one) is
//!   a conflict, reported with both sources and entries, and the first keeps the alias.
//! - A person no source gives any more is disabled (refused from then on) and purged `retention_s` later; a
//!   person a source marks disabled is kept, disabled.
//! - Only rows that differ are written: ten changes among 100,000 people are ten writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use crate::store::{DirectoryRow, DirectoryWrite};

/// What a source gave this time.
#[derive(Debug, Clone)]
pub enum Fetch {
    /// Every person it holds (persons the source marks disabled have `disabled_at: Some(_)`).
    Full(Vec<DirectoryRow>),
    /// The persons changed since the last mark, and the keys of every person it still holds.
    Incremental { changed: Vec<DirectoryRow>, present: HashSet<String> },
    /// It could not be read (the reason, for the operator).
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub source: String,
    /// Lower wins a conflict.
    pub precedence: u32,
    pub fetch: Fetch,
    /// The source's new incremental mark, stored when the source is not held.
    pub mark: Option<String>,
    /// Entries the mapping refused ("uid=x,dc=corp: no mail attribute for the alias").
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_delete_share: f64,
    pub retention_s: u64,
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub alias: String,
    /// (source, key) that keeps the alias.
    pub winner: (String, String),
    pub loser: (String, String),
    /// The two people's display names, for the operator.
    pub names: (String, String),
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub created: Vec<DirectoryRow>,
    /// New versions of existing rows (re-enabled persons included).
    pub updated: Vec<DirectoryRow>,
    /// Rows newly disabled (gone from their source, or marked disabled there).
    pub disabled: Vec<DirectoryRow>,
    /// Aliases purged: disabled for longer than the retention period.
    pub purged: Vec<String>,
    pub conflicts: Vec<Conflict>,
    /// (source, why): sources whose people were left as they were.
    pub held: Vec<(String, String)>,
    pub skipped: Vec<(String, String)>,
    /// (source, mark) to store.
    pub marks: Vec<(String, String)>,
    pub unchanged: usize,
    /// The namespace after the plan: every row, enabled or not (what the pool and the search index load).
    pub result: Vec<DirectoryRow>,
}

impl Plan {
    pub fn writes(&self) -> Vec<DirectoryWrite> {
        let puts = self
            .created
            .iter()
            .chain(&self.updated)
            .chain(&self.disabled)
            .map(|r| DirectoryWrite::Put(Box::new(r.clone())));
        puts.chain(self.purged.iter().map(|a| DirectoryWrite::Delete { alias: a.clone() })).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.disabled.is_empty() && self.purged.is_empty()
    }

    /// What `parapet directory sync` prints: one line per change, conflict, held source and skipped entry,
    /// then a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // A home pool is shown where it is set, so that a move in the directory shows in the plan.
        let home = |r: &DirectoryRow| if r.pool.is_empty() { String::new() } else { format!("\tpool={}", r.pool) };
        for r in &self.created {
            let _ = writeln!(out, "create\t{}\t{}\t{}{}", r.alias, r.source, r.display_name, home(r));
        }
        for r in &self.updated {
            let _ = writeln!(out, "update\t{}\t{}\t{}{}", r.alias, r.source, r.display_name, home(r));
        }
        for r in &self.disabled {
            let _ = writeln!(out, "disable\t{}\t{}\t{}", r.alias, r.source, r.display_name);
        }
        for a in &self.purged {
            let _ = writeln!(out, "purge\t{a}");
        }
        for c in &self.conflicts {
            let _ = writeln!(
                out,
                "conflict\t{}\t{} ({}, {}) wins over {} ({}, {})",
                c.alias, c.names.0, c.winner.0, c.winner.1, c.names.1, c.loser.0, c.loser.1
            );
        }
        for (s, why) in &self.held {
            let _ = writeln!(out, "held\t{s}\t{why}");
        }
        for (s, why) in &self.skipped {
            let _ = writeln!(out, "skipped\t{s}\t{why}");
        }
        let _ = writeln!(
            out,
            "# {} created, {} updated, {} disabled, {} purged, {} unchanged, {} conflicts, {} sources held",
            self.created.len(),
            self.updated.len(),
            self.disabled.len(),
            self.purged.len(),
            self.unchanged,
            self.conflicts.len(),
            self.held.len()
        );
        out
    }
}

/// Same person, same data: what a sync compares (the time a row was disabled is not news, its state is).
fn same(a: &DirectoryRow, b: &DirectoryRow) -> bool {
    let strip = |r: &DirectoryRow| DirectoryRow { disabled_at: r.disabled_at.map(|_| 0), ..r.clone() };
    strip(a) == strip(b)
}

/// A source's people as they are now, or why they are held as they were.
fn resolve(snap: &Snapshot, before: &[&DirectoryRow], s: &Settings) -> Result<Vec<DirectoryRow>, String> {
    let now_rows: Vec<DirectoryRow> = match &snap.fetch {
        Fetch::Failed(why) => {
            return Err(format!("unreachable: {why}; its {} people are left as they were", before.len()))
        }
        Fetch::Full(rows) => rows.clone(),
        Fetch::Incremental { changed, present } => {
            let changed_keys: HashMap<&str, &DirectoryRow> = changed.iter().map(|r| (r.key.as_str(), r)).collect();
            let mut rows: Vec<DirectoryRow> = before
                .iter()
                .filter(|r| present.contains(&r.key) && !changed_keys.contains_key(r.key.as_str()))
                // A person the store holds disabled only because the source lost them comes back when present.
                .map(|r| (*r).clone())
                .collect();
            rows.extend(changed.iter().cloned());
            rows
        }
    };
    let enabled_before: Vec<&&DirectoryRow> = before.iter().filter(|r| r.disabled_at.is_none()).collect();
    if now_rows.is_empty() && !enabled_before.is_empty() {
        return Err(format!("returned nobody; its {} people are left as they were", enabled_before.len()));
    }
    let keys: HashSet<&str> = now_rows.iter().map(|r| r.key.as_str()).collect();
    let gone = enabled_before.iter().filter(|r| !keys.contains(r.key.as_str())).count();
    if !enabled_before.is_empty() && gone as f64 > s.max_delete_share * enabled_before.len() as f64 {
        return Err(format!(
            "would remove {gone} of its {} people, more than max_delete_share {}; nothing changed",
            enabled_before.len(),
            s.max_delete_share
        ));
    }
    Ok(now_rows)
}

pub fn plan(current: &[DirectoryRow], mut snapshots: Vec<Snapshot>, s: &Settings) -> Plan {
    let mut p = Plan::default();
    snapshots.sort_by_key(|x| x.precedence);
    let mut by_source: HashMap<&str, Vec<&DirectoryRow>> = HashMap::new();
    for r in current {
        by_source.entry(r.source.as_str()).or_default().push(r);
    }
    let known: HashSet<&str> = snapshots.iter().map(|x| x.source.as_str()).collect();
    // alias -> (row, from a held source, its source's key)
    let mut desired: BTreeMap<String, (DirectoryRow, bool)> = BTreeMap::new();
    let mut take = |row: DirectoryRow, held: bool, p: &mut Plan| match desired.get(&row.alias) {
        Some((w, _)) => p.conflicts.push(Conflict {
            alias: row.alias.clone(),
            winner: (w.source.clone(), w.key.clone()),
            loser: (row.source.clone(), row.key.clone()),
            names: (w.display_name.clone(), row.display_name.clone()),
        }),
        None => {
            desired.insert(row.alias.clone(), (row, held));
        }
    };
    for snap in &snapshots {
        let before = by_source.get(snap.source.as_str()).cloned().unwrap_or_default();
        p.skipped.extend(snap.skipped.iter().map(|w| (snap.source.clone(), w.clone())));
        match resolve(snap, &before, s) {
            Ok(rows) => {
                if let Some(m) = &snap.mark {
                    p.marks.push((snap.source.clone(), m.clone()));
                }
                for r in rows {
                    take(r, false, &mut p);
                }
            }
            Err(why) => {
                p.held.push((snap.source.clone(), why));
                for r in before {
                    take(r.clone(), true, &mut p);
                }
            }
        }
    }
    // People of a source no longer configured are kept: removing a source from the config by mistake must
    // not remove its people. They are reported so the operator can tell.
    let mut orphans: BTreeMap<&str, usize> = BTreeMap::new();
    for r in current.iter().filter(|r| !known.contains(r.source.as_str())) {
        *orphans.entry(r.source.as_str()).or_default() += 1;
        take(r.clone(), true, &mut p);
    }
    for (src, n) in orphans {
        p.held.push((src.to_string(), format!("no longer configured; its {n} people are left as they were")));
    }
    let current_by_alias: HashMap<&str, &DirectoryRow> = current.iter().map(|r| (r.alias.as_str(), r)).collect();
    for (alias, (mut row, held)) in desired {
        let old = current_by_alias.get(alias.as_str()).copied();
        if held {
            p.unchanged += 1;
            p.result.push(row);
            continue;
        }
        if row.disabled_at.is_some() {
            // Disabled in the source: since when we first saw it so.
            row.disabled_at = Some(old.and_then(|o| o.disabled_at).unwrap_or(s.now));
        }
        match old {
            None => p.created.push(row.clone()),
            Some(o) if same(o, &row) => p.unchanged += 1,
            Some(o) if o.disabled_at.is_none() && row.disabled_at.is_some() => p.disabled.push(row.clone()),
            Some(_) => p.updated.push(row.clone()),
        }
        p.result.push(row);
    }
    let kept: HashSet<String> = p.result.iter().map(|r| r.alias.clone()).collect();
    for r in current.iter().filter(|r| !kept.contains(r.alias.as_str())) {
        match r.disabled_at {
            None => {
                let row = DirectoryRow { disabled_at: Some(s.now), ..r.clone() };
                p.disabled.push(row.clone());
                p.result.push(row);
            }
            Some(at) if at.saturating_add(s.retention_s) <= s.now => p.purged.push(r.alias.clone()),
            Some(_) => {
                p.unchanged += 1;
                p.result.push(r.clone());
            }
        }
    }
    p.result.sort_by(|a, b| a.alias.cmp(&b.alias));
    p
}

#[cfg(test)]
mod tests;
