//! `[directory]`: where the pool's people come from — any number of sources (LDAP servers, LDIF, CSV or TOML
//! exports), each with its precedence and its attribute mapping — and how often and how carefully they are
//! synced into the store (`crate::directory`).
//!
//! ```toml
//! [directory]
//! interval_s = 300            # the running pool syncs this often (0: only `parapet directory sync`)
//! max_delete_share = 0.2      # a source losing more than this share of its people at once changes nothing
//! retention_s = 2592000       # a disabled person is purged after this long (30 days)
//!
//! [[directory.sources]]
//! name = "corp"
//! kind = "ldap"               # ldap, ldif, csv, toml
//! precedence = 1              # lower wins when two sources give the same alias (default: position in the list)
//! url = "ldaps://dc1.corp.example:636"   # or ldap:// with starttls = true
//! starttls = false
//! ca = "corp-ca.pem"
//! bind_dn = "cn=parapet,ou=svc,dc=corp,dc=example"
//! password_file = "corp-bind.secret"
//! base_dn = "ou=people,dc=corp,dc=example"
//! filter = "(&(objectClass=person)(mail=*))"
//! timeout_ms = 10000
//! pool = "branch"             # the home pool of this source's people (a whole forest homed on one pool);
//!                             # default: the default pool. The edge routes by it (`[edge.homes] database`)
//!
//! [directory.sources.mapping]
//! alias = "mail"              # "mail" takes the local part of the mail attribute; any other names an attribute
//! display_name = "displayName"
//! first = "givenName"
//! last = "sn"
//! account = "uid"
//! credentials = "none"        # or "password:<attribute>", "ha1:<attribute>" (MD5 HA1, 32 hex digits)
//! disabled = "employeeType=disabled"   # attribute=value marking a disabled person (optional)
//! pool = "businessCategory"   # an attribute naming the person's home pool; wins over the source's `pool`
//! ```
//!
//! File sources (`ldif`, `csv`, `toml`) take `path` instead of the LDAP keys. Mappings default per kind: LDAP
//! and LDIF to the usual inetOrgPerson attributes, CSV and TOML to the columns of the classic users file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{invalid, resolve, ConfigError};

#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryConfig {
    pub sources: Vec<SourceConfig>,
    pub interval_s: u64,
    pub max_delete_share: f64,
    pub retention_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Ldap,
    Ldif,
    Csv,
    Toml,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Ldap => "ldap",
            SourceKind::Ldif => "ldif",
            SourceKind::Csv => "csv",
            SourceKind::Toml => "toml",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapConfig {
    pub url: String,
    pub starttls: bool,
    /// CA certificates (PEM) trusted for the server; empty: the system's roots are not used, so required for TLS.
    pub ca: PathBuf,
    /// Empty: anonymous bind.
    pub bind_dn: String,
    pub password_file: PathBuf,
    pub base_dn: String,
    pub filter: String,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliasFrom {
    /// The local part of this attribute (`mail`: alice@corp.example -> alice).
    LocalPart(String),
    /// This attribute as it is (`sAMAccountName`, `uid`, `alias`).
    Attribute(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    /// A clear-text password attribute.
    Password(String),
    /// An MD5 HA1 attribute (32 hex digits).
    Ha1(String),
    /// The classic users file: `password`, `ha1_md5`, `ha1_sha256` columns.
    Classic,
}

/// Attribute names (compared case-insensitively) for each field of a person; empty: not mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub alias: AliasFrom,
    pub display_name: String,
    pub first: String,
    pub last: String,
    pub account: String,
    pub title: String,
    pub department: String,
    pub phone: String,
    pub office: String,
    pub manager: String,
    pub credentials: Credentials,
    /// `(attribute, value)`: a person whose attribute holds the value (case-insensitive) is disabled.
    pub disabled: Option<(String, String)>,
    /// An attribute naming the person's home pool (`[[edge.pools]] name`); empty: not mapped.
    pub pool: String,
    /// The home pool of a person whose entry names none: the source's `pool` (empty: the default pool). Here
    /// rather than on the source so that an incremental mark taken under another home is not used.
    pub home: String,
}

impl Mapping {
    pub fn default_for(kind: SourceKind) -> Mapping {
        match kind {
            SourceKind::Ldap | SourceKind::Ldif => Mapping {
                alias: AliasFrom::LocalPart("mail".into()),
                display_name: "displayName".into(),
                first: "givenName".into(),
                last: "sn".into(),
                account: "uid".into(),
                title: "title".into(),
                department: "departmentNumber".into(),
                phone: "telephoneNumber".into(),
                office: "roomNumber".into(),
                manager: "manager".into(),
                credentials: Credentials::None,
                disabled: None,
                pool: String::new(),
                home: String::new(),
            },
            SourceKind::Csv | SourceKind::Toml => Mapping {
                alias: AliasFrom::Attribute("alias".into()),
                display_name: "display_name".into(),
                first: "first".into(),
                last: "last".into(),
                account: "account".into(),
                title: "title".into(),
                department: "department".into(),
                phone: "phone".into(),
                office: "office".into(),
                manager: "manager".into(),
                credentials: Credentials::Classic,
                disabled: None,
                pool: "pool".into(),
                home: String::new(),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    /// Lower wins a conflict.
    pub precedence: u32,
    /// File sources.
    pub path: PathBuf,
    pub ldap: Option<LdapConfig>,
    pub mapping: Mapping,
}

pub const DEFAULT_INTERVAL_S: u64 = 300;
pub const DEFAULT_MAX_DELETE_SHARE: f64 = 0.2;
pub const DEFAULT_RETENTION_S: u64 = 30 * 86_400;
pub const DEFAULT_LDAP_TIMEOUT_MS: u64 = 10_000;
/// Sources one config may name (each is read on every sync).
pub const SOURCES_MAX: usize = 64;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDirectory {
    sources: Option<Vec<RawSource>>,
    interval_s: Option<u64>,
    max_delete_share: Option<f64>,
    retention_s: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Option<String>,
    kind: Option<String>,
    precedence: Option<u32>,
    path: Option<PathBuf>,
    url: Option<String>,
    starttls: Option<bool>,
    ca: Option<PathBuf>,
    bind_dn: Option<String>,
    password_file: Option<PathBuf>,
    base_dn: Option<String>,
    filter: Option<String>,
    timeout_ms: Option<u64>,
    pool: Option<String>,
    mapping: Option<RawMapping>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    alias: Option<String>,
    display_name: Option<String>,
    first: Option<String>,
    last: Option<String>,
    account: Option<String>,
    title: Option<String>,
    department: Option<String>,
    phone: Option<String>,
    office: Option<String>,
    manager: Option<String>,
    credentials: Option<String>,
    disabled: Option<String>,
    pool: Option<String>,
}

fn mapping(key: &str, kind: SourceKind, raw: Option<RawMapping>) -> Result<Mapping, ConfigError> {
    let mut m = Mapping::default_for(kind);
    let Some(r) = raw else { return Ok(m) };
    if let Some(a) = r.alias {
        let a = a.trim();
        m.alias = match a {
            "" => return Err(invalid(format!("{key}.mapping] alias"), "empty: name an attribute, e.g. \"mail\"")),
            _ if a.eq_ignore_ascii_case("mail") => AliasFrom::LocalPart(a.into()),
            _ => match a.strip_prefix("localpart:") {
                Some(attr) => AliasFrom::LocalPart(attr.trim().into()),
                None => AliasFrom::Attribute(a.into()),
            },
        };
    }
    for (slot, v) in [
        (&mut m.display_name, r.display_name),
        (&mut m.first, r.first),
        (&mut m.last, r.last),
        (&mut m.account, r.account),
        (&mut m.title, r.title),
        (&mut m.department, r.department),
        (&mut m.phone, r.phone),
        (&mut m.office, r.office),
        (&mut m.manager, r.manager),
        (&mut m.pool, r.pool),
    ] {
        if let Some(v) = v {
            *slot = v.trim().to_string();
        }
    }
    if let Some(c) = r.credentials {
        let c = c.trim();
        m.credentials = if c == "none" {
            Credentials::None
        } else if c == "classic" {
            Credentials::Classic
        } else if let Some(a) = c.strip_prefix("password:").filter(|a| !a.trim().is_empty()) {
            Credentials::Password(a.trim().into())
        } else if let Some(a) = c.strip_prefix("ha1:").filter(|a| !a.trim().is_empty()) {
            Credentials::Ha1(a.trim().into())
        } else {
            return Err(invalid(
                format!("{key}.mapping] credentials"),
                format!("{c:?}: expected \"none\", \"classic\", \"password:<attribute>\" or \"ha1:<attribute>\""),
            ));
        };
    }
    if let Some(d) = r.disabled {
        let Some((a, v)) = d.split_once('=').filter(|(a, v)| !a.trim().is_empty() && !v.trim().is_empty()) else {
            return Err(invalid(format!("{key}.mapping] disabled"), format!("{d:?}: expected attribute=value")));
        };
        m.disabled = Some((a.trim().into(), v.trim().into()));
    }
    Ok(m)
}

fn source(i: usize, r: RawSource, base_dir: &Path) -> Result<SourceConfig, ConfigError> {
    let key = format!("[directory.sources.{i}");
    let k = |field: &str| format!("{key}] {field}");
    let name =
        r.name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).ok_or_else(|| invalid(k("name"), "missing"))?;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(invalid(k("name"), format!("{name:?}: letters, digits, '-', '_' and '.' only")));
    }
    let kind = match r.kind.as_deref().map(str::trim) {
        Some("ldap") => SourceKind::Ldap,
        Some("ldif") => SourceKind::Ldif,
        Some("csv") => SourceKind::Csv,
        Some("toml") => SourceKind::Toml,
        Some(other) => return Err(invalid(k("kind"), format!("{other:?}: expected ldap, ldif, csv or toml"))),
        None => return Err(invalid(k("kind"), "missing (ldap, ldif, csv or toml)")),
    };
    let ldap_keys = [r.url.is_some(), r.bind_dn.is_some(), r.base_dn.is_some(), r.filter.is_some()];
    let ldap = if kind == SourceKind::Ldap {
        let url = r.url.map(|u| u.trim().to_string()).ok_or_else(|| invalid(k("url"), "missing"))?;
        let tls_url = url.starts_with("ldaps://");
        if !tls_url && !url.starts_with("ldap://") {
            return Err(invalid(k("url"), format!("{url:?}: expected ldap://host:port or ldaps://host:port")));
        }
        let starttls = r.starttls.unwrap_or(false);
        if tls_url && starttls {
            return Err(invalid(k("starttls"), "true with an ldaps:// url: choose one"));
        }
        let ca = resolve(base_dir, r.ca);
        if (tls_url || starttls) && ca.as_os_str().is_empty() {
            return Err(invalid(k("ca"), "missing: TLS to the directory needs the CA that signed its certificate"));
        }
        let bind_dn = r.bind_dn.unwrap_or_default().trim().to_string();
        let password_file = resolve(base_dir, r.password_file);
        if !bind_dn.is_empty() && password_file.as_os_str().is_empty() {
            return Err(invalid(k("password_file"), "missing (bind_dn is set)"));
        }
        let base_dn = r.base_dn.map(|b| b.trim().to_string()).ok_or_else(|| invalid(k("base_dn"), "missing"))?;
        let filter = r.filter.unwrap_or_else(|| "(objectClass=person)".into()).trim().to_string();
        if !(filter.starts_with('(') && filter.ends_with(')')) {
            return Err(invalid(k("filter"), format!("{filter:?}: an LDAP filter is written in parentheses")));
        }
        Some(LdapConfig {
            url,
            starttls,
            ca,
            bind_dn,
            password_file,
            base_dn,
            filter,
            timeout_ms: r.timeout_ms.unwrap_or(DEFAULT_LDAP_TIMEOUT_MS).max(1),
        })
    } else {
        if ldap_keys.iter().any(|b| *b) {
            return Err(invalid(k("url"), format!("LDAP keys in a {} source: use kind = \"ldap\"", kind.as_str())));
        }
        None
    };
    let path = resolve(base_dir, r.path);
    if kind != SourceKind::Ldap && path.as_os_str().is_empty() {
        return Err(invalid(k("path"), "missing"));
    }
    let home = r.pool.unwrap_or_default().trim().to_string();
    if !crate::store::directory::pool_name_ok(&home) {
        return Err(invalid(k("pool"), format!("{home:?}: a pool name is letters, digits, '-', '_' and '.'")));
    }
    let mut mapping = mapping(&key, kind, r.mapping)?;
    mapping.home = home;
    Ok(SourceConfig { name, kind, precedence: r.precedence.unwrap_or(i as u32 + 1), path, ldap, mapping })
}

impl DirectoryConfig {
    /// The files the sources name exist (a sync would fail on each of them otherwise, one source at a time).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, s) in self.sources.iter().enumerate() {
            let mut files: Vec<(&str, &Path)> = Vec::new();
            if s.kind != SourceKind::Ldap {
                files.push(("path", &s.path));
            }
            if let Some(l) = &s.ldap {
                if !l.ca.as_os_str().is_empty() {
                    files.push(("ca", &l.ca));
                }
                if !l.password_file.as_os_str().is_empty() {
                    files.push(("password_file", &l.password_file));
                }
            }
            for (key, f) in files {
                if let Err(e) = std::fs::metadata(f) {
                    return Err(invalid(format!("[directory.sources.{i}] {key}"), format!("{}: {e}", f.display())));
                }
            }
        }
        Ok(())
    }
}

pub(super) fn build(raw: RawDirectory, base_dir: &Path) -> Result<DirectoryConfig, ConfigError> {
    let raws = raw.sources.unwrap_or_default();
    if raws.len() > SOURCES_MAX {
        return Err(invalid("[directory] sources", format!("{} sources, at most {SOURCES_MAX}", raws.len())));
    }
    let mut sources: Vec<SourceConfig> = Vec::with_capacity(raws.len());
    for (i, r) in raws.into_iter().enumerate() {
        let s = source(i, r, base_dir)?;
        if let Some(other) = sources.iter().find(|o| o.name == s.name) {
            return Err(invalid(
                format!("[directory.sources.{i}] name"),
                format!("{:?} names two sources", other.name),
            ));
        }
        if let Some(other) = sources.iter().find(|o| o.precedence == s.precedence) {
            return Err(invalid(
                format!("[directory.sources.{i}] precedence"),
                format!("{} is also the precedence of {:?}: a conflict needs a winner", s.precedence, other.name),
            ));
        }
        sources.push(s);
    }
    let share = raw.max_delete_share.unwrap_or(DEFAULT_MAX_DELETE_SHARE);
    if !(0.0..=1.0).contains(&share) {
        return Err(invalid("[directory] max_delete_share", format!("{share}: expected a share from 0.0 to 1.0")));
    }
    Ok(DirectoryConfig {
        sources,
        interval_s: raw.interval_s.unwrap_or(DEFAULT_INTERVAL_S),
        max_delete_share: share,
        retention_s: raw.retention_s.unwrap_or(DEFAULT_RETENTION_S),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::Config;

    use super::*;

    #[test]
    fn sources_parse_with_defaults_and_mapping() {
        let text = r#"
[directory]
interval_s = 60
[[directory.sources]]
name = "corp"
kind = "ldap"
url = "ldap://127.0.0.1:3890"
starttls = true
ca = "ca.pem"
bind_dn = "cn=admin,dc=corp"
password_file = "bind.secret"
base_dn = "dc=corp"
filter = "(mail=*)"
pool = "branch"
[directory.sources.mapping]
alias = "sAMAccountName"
credentials = "ha1:parapetHA1"
disabled = "employeeType=disabled"
pool = "businessCategory"
[[directory.sources]]
name = "hr"
kind = "csv"
path = "hr.csv"
"#;
        let c = Config::from_toml_str(text, Path::new("/etc/p")).unwrap();
        let d = c.directory.unwrap();
        assert_eq!(d.interval_s, 60);
        assert_eq!(d.max_delete_share, DEFAULT_MAX_DELETE_SHARE);
        let corp = &d.sources[0];
        assert_eq!(corp.precedence, 1);
        assert_eq!(corp.mapping.alias, AliasFrom::Attribute("sAMAccountName".into()));
        assert_eq!(corp.mapping.credentials, Credentials::Ha1("parapetHA1".into()));
        assert_eq!(corp.mapping.first, "givenName");
        assert_eq!(corp.mapping.disabled, Some(("employeeType".into(), "disabled".into())));
        assert_eq!((corp.mapping.pool.as_str(), corp.mapping.home.as_str()), ("businessCategory", "branch"));
        assert_eq!((d.sources[1].mapping.pool.as_str(), d.sources[1].mapping.home.as_str()), ("pool", ""));
        let l = corp.ldap.as_ref().unwrap();
        assert_eq!(l.ca, PathBuf::from("/etc/p/ca.pem"));
        assert!(l.starttls);
        assert_eq!(d.sources[1].path, PathBuf::from("/etc/p/hr.csv"));
        assert_eq!(d.sources[1].precedence, 2);
        assert_eq!(d.sources[1].mapping.credentials, Credentials::Classic);
        assert!(Config::from_toml_str("domain = \"x\"\n", Path::new("")).unwrap().directory.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let e = |t: &str| Config::from_toml_str(t, Path::new("")).unwrap_err().to_string();
        assert_eq!(
            e("[[directory.sources]]\nname = \"a\"\nkind = \"ldap\"\n"),
            "config: [directory.sources.0] url missing"
        );
        assert!(e("[[directory.sources]]\nname = \"a\"\nkind = \"x500\"\n").contains("expected ldap, ldif"));
        let t = "[[directory.sources]]\nname = \"a\"\nkind = \"ldap\"\nurl = \"ldaps://h:636\"\nbase_dn = \"dc=x\"\n";
        assert!(e(t).contains("[directory.sources.0] ca missing"), "{}", e(t));
        let t = "[[directory.sources]]\nname = \"a\"\nkind = \"csv\"\npath = \"a.csv\"\n\
                 [[directory.sources]]\nname = \"a\"\nkind = \"csv\"\npath = \"b.csv\"\n";
        assert!(e(t).contains("names two sources"), "{}", e(t));
        let t = "[[directory.sources]]\nname = \"a\"\nkind = \"csv\"\npath = \"a.csv\"\n\
                 [directory.sources.mapping]\ncredentials = \"plain\"\n";
        assert!(e(t).contains("[directory.sources.0.mapping] credentials"), "{}", e(t));
        assert!(e("[directory]\nmax_delete_share = 2.0\n").contains("max_delete_share"));
        let t = "[[directory.sources]]\nname = \"a\"\nkind = \"csv\"\npath = \"a.csv\"\npool = \"a b\"\n";
        assert!(e(t).contains("[directory.sources.0] pool"), "{}", e(t));
        let c = Config::from_toml_str(
            "[[directory.sources]]\nname = \"a\"\nkind = \"csv\"\npath = \"/nonexistent/a.csv\"\n",
            Path::new(""),
        )
        .unwrap();
        let v = c.validate().unwrap_err().to_string();
        assert!(v.starts_with("config: [directory.sources.0] path: /nonexistent/a.csv:"), "{v}");
    }
}
