//! One namespace from several directories: sources (LDAP servers, LDIF/CSV/TOML exports) are read into
//! snapshots ([`source`], [`ldap`], [`ldif`]), a sans-I/O planner ([`sync`]) turns the snapshots and the store's
//! current rows into a plan (created, updated, disabled, purged, conflicts, sources held back), the plan is
//! applied to the store in one transaction, and an in-memory index ([`search`]) answers searches by name.
//!
//! Not here: the pool's use of the rows (`pool::users`), the store's SQL (`store::sqlite`), the CLI's arguments
//! (`main.rs`; the commands themselves are in [`cli`]).

pub mod cli;
pub mod ldap;
pub mod ldif;
pub mod search;
pub mod source;
pub mod sync;

use std::collections::HashMap;

use md5::Digest;

use crate::config::directory::{AliasFrom, Credentials, Mapping};
use crate::store::DirectoryRow;

/// One entry as a source gives it: attribute names (lowercase) to their values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The entry's identity in its source (a DN, lowercase, for LDAP and LDIF; empty for CSV/TOML).
    pub dn: String,
    pub attrs: HashMap<String, Vec<String>>,
}

impl Entry {
    pub fn first(&self, attr: &str) -> Option<&str> {
        if attr.is_empty() {
            return None;
        }
        self.attrs.get(&attr.to_ascii_lowercase()).and_then(|v| v.first()).map(|s| s.trim()).filter(|s| !s.is_empty())
    }

    pub fn push(&mut self, attr: &str, value: String) {
        self.attrs.entry(attr.to_ascii_lowercase()).or_default().push(value);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest secrets of `alias:realm:password` (RFC 7616 HA1), MD5 and SHA-256.
pub fn ha1_pair(alias: &str, realm: &str, password: &str) -> (String, String) {
    let input = format!("{alias}:{realm}:{password}");
    (hex(&md5::Md5::digest(input.as_bytes())), hex(&sha2::Sha256::digest(input.as_bytes())))
}

fn is_hex(s: &str, digits: usize) -> bool {
    s.len() == digits && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A person from an entry, through the source's mapping. Errors say what is wrong with the entry (the caller
/// adds the source and entry). `disabled_at` is `Some(0)` for a person the source marks disabled (the planner
/// puts the time in).
pub fn map_entry(e: &Entry, m: &Mapping, source: &str, realm: &str) -> Result<DirectoryRow, String> {
    let alias = match &m.alias {
        AliasFrom::LocalPart(attr) => {
            let v = e.first(attr).ok_or_else(|| format!("no {attr} attribute for the alias"))?;
            v.split('@').next().unwrap_or(v).to_string()
        }
        AliasFrom::Attribute(attr) => {
            e.first(attr).ok_or_else(|| format!("no {attr} attribute for the alias"))?.to_string()
        }
    }
    .to_ascii_lowercase();
    if alias.is_empty() {
        return Err("empty alias".into());
    }
    if let Some(c) = alias.chars().find(|c| !crate::store::directory::alias_char_ok(*c)) {
        return Err(format!("alias {alias:?} contains {c:?}, not allowed in a SIP user name"));
    }
    let get = |attr: &str| e.first(attr).unwrap_or("").to_string();
    let first = get(&m.first);
    let last = get(&m.last);
    let display_name = match e.first(&m.display_name) {
        Some(d) => d.to_string(),
        None if !first.is_empty() || !last.is_empty() => format!("{first} {last}").trim().to_string(),
        None => alias.clone(),
    };
    // Display names end up in From/To headers and in search answers: no quotes or line breaks.
    let display_name = display_name.replace(['"', '\r', '\n'], " ");
    let (ha1_md5, ha1_sha256) = match &m.credentials {
        Credentials::None => (None, None),
        Credentials::Password(attr) => match e.first(attr) {
            Some(pw) => {
                let (a, b) = ha1_pair(&alias, realm, pw);
                (Some(a), Some(b))
            }
            None => (None, None),
        },
        Credentials::Ha1(attr) => match e.first(attr) {
            Some(h) if is_hex(h, 32) => (Some(h.to_ascii_lowercase()), None),
            Some(_) => return Err(format!("{attr} must be 32 hex digits (an MD5 HA1)")),
            None => (None, None),
        },
        Credentials::Classic => {
            let md5 = e.first("ha1_md5").map(str::to_ascii_lowercase);
            let sha = e.first("ha1_sha256").map(str::to_ascii_lowercase);
            if md5.as_deref().is_some_and(|h| !is_hex(h, 32)) {
                return Err("ha1_md5 must be 32 hex digits".into());
            }
            if sha.as_deref().is_some_and(|h| !is_hex(h, 64)) {
                return Err("ha1_sha256 must be 64 hex digits".into());
            }
            // Passwords are taken as written (spaces may be part of them).
            match e.attrs.get("password").and_then(|v| v.first()).filter(|p| !p.is_empty()) {
                Some(pw) if md5.is_none() && sha.is_none() => {
                    let (a, b) = ha1_pair(&alias, realm, pw);
                    (Some(a), Some(b))
                }
                _ => (md5, sha),
            }
        }
    };
    let pool = e.first(&m.pool).unwrap_or(&m.home).to_string();
    if !crate::store::directory::pool_name_ok(&pool) {
        return Err(format!("{} {pool:?}: a pool name is letters, digits, '-', '_' and '.'", m.pool));
    }
    let disabled = m.disabled.as_ref().is_some_and(|(attr, value)| {
        e.attrs
            .get(&attr.to_ascii_lowercase())
            .is_some_and(|vs| vs.iter().any(|v| v.trim().eq_ignore_ascii_case(value)))
    });
    Ok(DirectoryRow {
        key: if e.dn.is_empty() { alias.clone() } else { e.dn.to_ascii_lowercase() },
        alias,
        source: source.to_string(),
        display_name,
        first,
        last,
        account: get(&m.account),
        title: get(&m.title),
        department: get(&m.department),
        phone: get(&m.phone),
        office: get(&m.office),
        manager: get(&m.manager),
        ha1_md5,
        ha1_sha256,
        disabled_at: disabled.then_some(0),
        pool,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::directory::SourceKind;

    fn entry(dn: &str, kv: &[(&str, &str)]) -> Entry {
        let mut e = Entry { dn: dn.into(), ..Default::default() };
        for (k, v) in kv {
            e.push(k, v.to_string());
        }
        e
    }

    #[test]
    fn ldap_mapping_takes_the_mail_local_part() {
        let mut m = Mapping::default_for(SourceKind::Ldap);
        m.disabled = Some(("employeeType".into(), "disabled".into()));
        m.credentials = Credentials::Password("userPassword".into());
        let e = entry(
            "uid=ann,ou=People,dc=corp",
            &[
                ("mail", "Ann.Lee@corp.example"),
                ("givenName", "Ann"),
                ("sn", "Lee"),
                ("title", "Engineer"),
                ("userPassword", "pw"),
                ("employeeType", "Disabled"),
            ],
        );
        let r = map_entry(&e, &m, "corp", "example.com").unwrap();
        assert_eq!(r.alias, "ann.lee");
        assert_eq!(r.key, "uid=ann,ou=people,dc=corp");
        assert_eq!(r.display_name, "Ann Lee");
        assert_eq!(r.title, "Engineer");
        assert_eq!(r.disabled_at, Some(0));
        assert_eq!(r.ha1_md5.as_deref(), Some(ha1_pair("ann.lee", "example.com", "pw").0.as_str()));
        assert!(map_entry(&entry("uid=x", &[("cn", "X")]), &m, "corp", "r").unwrap_err().contains("no mail"));
        let bad = entry("uid=y", &[("mail", "a b@x")]);
        assert!(map_entry(&bad, &m, "corp", "r").unwrap_err().contains("not allowed"));
    }

    #[test]
    fn the_home_pool_is_the_entrys_else_the_sources() {
        let mut m = Mapping::default_for(SourceKind::Ldap);
        let ann = entry("uid=ann", &[("mail", "ann@x"), ("businessCategory", "hq")]);
        assert_eq!(map_entry(&ann, &m, "corp", "r").unwrap().pool, "", "not mapped: the default pool");
        m.home = "branch".into();
        assert_eq!(map_entry(&ann, &m, "corp", "r").unwrap().pool, "branch", "the source's home");
        m.pool = "businessCategory".into();
        assert_eq!(map_entry(&ann, &m, "corp", "r").unwrap().pool, "hq", "the entry's own wins");
        let bo = entry("uid=bo", &[("mail", "bo@x")]);
        assert_eq!(map_entry(&bo, &m, "corp", "r").unwrap().pool, "branch", "none of its own");
        let bad = entry("uid=cy", &[("mail", "cy@x"), ("businessCategory", "Sales team")]);
        assert!(map_entry(&bad, &m, "corp", "r").unwrap_err().contains("businessCategory \"Sales team\""));
        let csv = Mapping::default_for(SourceKind::Csv);
        let r = map_entry(&entry("", &[("alias", "dee"), ("pool", "se1")]), &csv, "hr", "r").unwrap();
        assert_eq!(r.pool, "se1", "the users file's column");
    }

    #[test]
    fn classic_mapping_reads_the_users_file_columns() {
        let m = Mapping::default_for(SourceKind::Csv);
        let r = map_entry(&entry("", &[("alias", "Bob"), ("password", "x")]), &m, "hr", "r").unwrap();
        assert_eq!((r.alias.as_str(), r.key.as_str(), r.display_name.as_str()), ("bob", "bob", "bob"));
        assert!(r.ha1_sha256.is_some());
        let e = entry("", &[("alias", "c"), ("ha1_md5", "xyz")]);
        assert!(map_entry(&e, &m, "hr", "r").unwrap_err().contains("32 hex"));
    }
}
