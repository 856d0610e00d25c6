//! Reading an LDAP directory (OpenLDAP, Active Directory) with ldap3's blocking client. Runs on the caller's
//! thread: the CLI's, or the pool's sync thread, never an executor.
//!
//! Incremental reads: after a first full read the source's mark is the newest `modifyTimestamp` seen; the next
//! read fetches only the entries modified since (`(modifyTimestamp>=mark)`), plus the DNs alone of every entry
//! the filter matches (no attributes), which is how deletions show. Ten changes among 100,000 people move ten
//! entries and 100,000 short DNs, and the planner writes ten rows.

use std::collections::HashSet;
use std::time::Duration;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::asn1::StructureTag;
use ldap3::{LdapConn, LdapConnSettings, ResultEntry, Scope};

use super::Entry;
use crate::config::directory::{AliasFrom, Credentials, LdapConfig, Mapping};

/// Entries per page of a paged search (servers cap an unpaged result, OpenLDAP at 500 by default).
const PAGE_SIZE: i32 = 500;
/// Entries one read may return; more is a misconfigured filter, refused rather than held in memory.
pub const ENTRIES_MAX: usize = 1_000_000;

/// What one read of the server gave.
#[derive(Debug)]
pub enum Read {
    Full {
        entries: Vec<Entry>,
        mark: Option<String>,
    },
    /// Entries modified since the mark, and the DNs (lowercase) of every entry the filter matches.
    Since {
        changed: Vec<Entry>,
        present: HashSet<String>,
        mark: Option<String>,
    },
}

/// The attributes the mapping reads, plus `modifyTimestamp` for the incremental mark.
fn attributes(m: &Mapping) -> Vec<String> {
    let mut a: Vec<String> = vec!["modifyTimestamp".into()];
    match &m.alias {
        AliasFrom::LocalPart(x) | AliasFrom::Attribute(x) => a.push(x.clone()),
    }
    for x in [
        &m.display_name,
        &m.first,
        &m.last,
        &m.account,
        &m.title,
        &m.department,
        &m.phone,
        &m.office,
        &m.manager,
        &m.pool,
    ] {
        if !x.is_empty() {
            a.push(x.clone());
        }
    }
    match &m.credentials {
        Credentials::Password(x) | Credentials::Ha1(x) => a.push(x.clone()),
        Credentials::None | Credentials::Classic => {}
    }
    if let Some((x, _)) = &m.disabled {
        a.push(x.clone());
    }
    a
}

fn connect(cfg: &LdapConfig) -> Result<LdapConn, String> {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut settings = LdapConnSettings::new().set_conn_timeout(timeout).set_starttls(cfg.starttls);
    if cfg.starttls || cfg.url.starts_with("ldaps://") {
        crate::net::tls::install_provider();
        let tls = crate::net::tls::client_config(&cfg.ca, None).map_err(|e| format!("ca {}: {e}", cfg.ca.display()))?;
        settings = settings.set_config(tls);
    }
    let mut conn = LdapConn::with_settings(settings, &cfg.url).map_err(|e| format!("{}: {e}", cfg.url))?;
    conn.with_timeout(timeout);
    if !cfg.bind_dn.is_empty() {
        let pw = std::fs::read_to_string(&cfg.password_file)
            .map_err(|e| format!("password_file {}: {e}", cfg.password_file.display()))?;
        conn.with_timeout(timeout);
        conn.simple_bind(&cfg.bind_dn, pw.trim_end_matches(['\r', '\n']))
            .and_then(|r| r.success())
            .map_err(|e| format!("bind as {}: {e}", cfg.bind_dn))?;
    }
    Ok(conn)
}

fn search(conn: &mut LdapConn, cfg: &LdapConfig, filter: &str, attrs: &[String]) -> Result<Vec<Entry>, String> {
    let adapters: Vec<Box<dyn Adapter<_, _>>> =
        vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(PAGE_SIZE))];
    conn.with_timeout(Duration::from_millis(cfg.timeout_ms));
    let mut stream = conn
        .streaming_search_with(adapters, &cfg.base_dn, Scope::Subtree, filter, attrs.to_vec())
        .map_err(|e| format!("search {filter}: {e}"))?;
    let mut out = Vec::new();
    loop {
        match stream.next() {
            Ok(Some(re)) => {
                if re.is_ref() || re.is_intermediate() {
                    continue;
                }
                if out.len() >= ENTRIES_MAX {
                    return Err(format!("more than {ENTRIES_MAX} entries: narrow the filter"));
                }
                match entry(re) {
                    Some(e) => out.push(e),
                    None => return Err(format!("search {filter}: a malformed entry from the server")),
                }
            }
            Ok(None) => break,
            Err(e) => return Err(format!("search {filter}: {e}")),
        }
    }
    stream.result().success().map_err(|e| format!("search {filter}: {e}"))?;
    Ok(out)
}

/// An entry from its BER form. ldap3's `SearchEntry::construct` panics on a malformed entry, and a server's bytes
/// must never end the pool: this reads the same structure and answers None instead. Values that are not UTF-8
/// (photos, certificates) are skipped: no mapped field uses them.
fn entry(re: ResultEntry) -> Option<Entry> {
    let mut tags = re.0.match_id(4)?.expect_constructed()?.into_iter();
    let dn = String::from_utf8(tags.next()?.expect_primitive()?).ok()?;
    let mut e = Entry { dn: dn.to_ascii_lowercase(), ..Default::default() };
    for a_v in tags.next()?.expect_constructed()? {
        let mut part: std::vec::IntoIter<StructureTag> = a_v.expect_constructed()?.into_iter();
        let name = String::from_utf8(part.next()?.expect_primitive()?).ok()?;
        for v in part.next()?.expect_constructed()? {
            if let Ok(text) = String::from_utf8(v.expect_primitive()?) {
                e.push(&name, text);
            }
        }
    }
    Some(e)
}

/// The newest `modifyTimestamp` among the entries (GeneralizedTime sorts as text when written the same way).
fn newest(entries: &[Entry], old: Option<&str>) -> Option<String> {
    entries.iter().filter_map(|e| e.first("modifyTimestamp")).chain(old).max().map(str::to_string)
}

/// Reads the server: everything when `mark` is None, else what changed since.
pub fn read(cfg: &LdapConfig, mapping: &Mapping, mark: Option<&str>) -> Result<Read, String> {
    let mut conn = connect(cfg)?;
    let attrs = attributes(mapping);
    let result = match mark {
        None => {
            let entries = search(&mut conn, cfg, &cfg.filter, &attrs)?;
            let mark = newest(&entries, None);
            Ok(Read::Full { entries, mark })
        }
        Some(m) => {
            let since = format!("(&{}(modifyTimestamp>={}))", cfg.filter, ldap3::ldap_escape(m));
            let changed = search(&mut conn, cfg, &since, &attrs)?;
            // "1.1": no attributes, the DNs alone.
            let present =
                search(&mut conn, cfg, &cfg.filter, &["1.1".to_string()])?.into_iter().map(|e| e.dn).collect();
            let mark = newest(&changed, Some(m));
            Ok(Read::Since { changed, present, mark })
        }
    };
    let _ = conn.unbind();
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ldap3::asn1::{TagClass, PL};

    use super::*;

    fn prim(s: &[u8]) -> StructureTag {
        StructureTag { class: TagClass::Universal, id: 4, payload: PL::P(s.to_vec()) }
    }
    fn cons(id: u64, v: Vec<StructureTag>) -> StructureTag {
        StructureTag { class: TagClass::Universal, id, payload: PL::C(v) }
    }

    #[test]
    fn entries_from_ber_and_malformed_ones_refused() {
        let attr = cons(16, vec![prim(b"mail"), cons(17, vec![prim(b"ann@x"), prim(&[0xff, 0xfe])])]);
        let good = cons(4, vec![prim(b"UID=ann,dc=x"), cons(16, vec![attr])]);
        let e = entry(ResultEntry::new(good)).unwrap();
        assert_eq!(e.dn, "uid=ann,dc=x");
        assert_eq!(e.attrs.get("mail"), Some(&vec!["ann@x".to_string()]), "binary values skipped");
        // No attribute list; a DN that is not a string; not an entry at all.
        assert!(entry(ResultEntry::new(cons(4, vec![prim(b"uid=a")]))).is_none());
        assert!(entry(ResultEntry::new(cons(4, vec![cons(16, vec![]), cons(16, vec![])]))).is_none());
        assert!(entry(ResultEntry::new(prim(b"x"))).is_none());
    }
}
