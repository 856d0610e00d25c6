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

/// What an incremental mark was taken under: the source's server, filter and mapping. A mark taken under other
/// settings is not used (an entry unchanged since would keep its old mapping): the next read is a full one.
fn fingerprint(src: &SourceConfig, realm: &str) -> String {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x7061_7261_7065_7421, 0x6469_7265_6374_6f72);
    h.write(format!("{:?}|{:?}|{realm}", src.ldap, src.mapping).as_bytes());
    format!("{:016x}", h.finish())
}

/// Reads `src`: incrementally from `mark` where the source allows it.
pub fn read(src: &SourceConfig, realm: &str, mark: Option<&str>) -> Snapshot {
    let mut skipped = Vec::new();
    let fp = fingerprint(src, realm);
    let mark = mark.and_then(|m| m.strip_prefix(fp.as_str())).and_then(|m| m.strip_prefix('|'));
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
    let mark = mark.map(|m| format!("{fp}|{m}"));
    Snapshot { source: src.name.clone(), precedence: src.precedence, fetch, mark, skipped }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::directory::{Credentials, Mapping};

    fn source(kind: SourceKind, path: &Path) -> SourceConfig {
        SourceConfig {
            name: "files".into(),
            kind,
            precedence: 1,
            path: path.into(),
            ldap: None,
            mapping: Mapping::default_for(kind),
        }
    }

    fn people(s: &Snapshot) -> Vec<(String, String)> {
        match &s.fetch {
            Fetch::Full(rows) => rows.iter().map(|r| (r.alias.clone(), r.display_name.clone())).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_sources_read_through_their_mapping() {
        let dir = std::env::temp_dir().join(format!("parapet-dir-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml = dir.join("u.toml");
        std::fs::write(&toml, "[[user]]\nalias = \"Ann\"\nfirst = \"Ann\"\nlast = \"Lee\"\npassword = \"x\"\n\n[[user]]\nfirst = \"No alias\"\n").unwrap();
        let s = read(&source(SourceKind::Toml, &toml), "r", None);
        assert_eq!(people(&s), vec![("ann".to_string(), "Ann Lee".to_string())]);
        assert_eq!(s.skipped, vec!["entry 2: no alias attribute for the alias".to_string()]);
        let ldif = dir.join("u.ldif");
        std::fs::write(&ldif, "dn: uid=bo,dc=x\nmail: bo@x.test\ndisplayName: Bo Ek\n").unwrap();
        assert_eq!(people(&read(&source(SourceKind::Ldif, &ldif), "r", None)), vec![("bo".into(), "Bo Ek".into())]);
        let csv = dir.join("u.csv");
        std::fs::write(&csv, "alias,display_name\ncy,Cy Ng\n").unwrap();
        let mut src = source(SourceKind::Csv, &csv);
        src.mapping.credentials = Credentials::None;
        assert_eq!(people(&read(&src, "r", None)), vec![("cy".into(), "Cy Ng".into())]);
        let gone = read(&source(SourceKind::Csv, &dir.join("missing.csv")), "r", None);
        assert!(matches!(gone.fetch, Fetch::Failed(ref e) if e.contains("missing.csv")), "{:?}", gone.fetch);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_mark_is_only_used_under_the_settings_it_was_taken_with() {
        let a = source(SourceKind::Ldap, Path::new(""));
        let mut b = a.clone();
        b.mapping.title = "description".into();
        assert_ne!(fingerprint(&a, "r"), fingerprint(&b, "r"));
        assert_eq!(fingerprint(&a, "r"), fingerprint(&a.clone(), "r"));
        assert_ne!(fingerprint(&a, "r"), fingerprint(&a, "other realm"), "HA1s depend on the realm");
    }
}
