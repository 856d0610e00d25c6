//! User directory: the accounts the pool authenticates, loaded from a .toml or .csv file.
//!
//! The file is an export of a corporate directory or a hand-written list, so every error names
//! the file, the line and the field to fix ("users.csv:4: alias missing"). A user needs either a
//! clear-text password or a precomputed digest HA1 (MD5 and/or SHA-256 of
//! "alias:realm:password"), which lets operators keep clear-text passwords out of the file.
//!
//! `write_demo` creates alice, bob and carol with random passwords so a fresh install can be
//! tried without writing a file first; on later runs it reads the same file back.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One account.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct User {
    /// User part of the AOR: `sip:<alias>@<domain>`.
    pub alias: String,
    pub display_name: String,
    pub first: String,
    pub last: String,
    /// Source directory account name, e.g. "CORP\\alice".
    pub account: String,
    pub password: Option<String>,
    /// Lowercase hex, 32 digits.
    pub ha1_md5: Option<String>,
    /// Lowercase hex, 64 digits.
    pub ha1_sha256: Option<String>,
    /// The user's home pool (`pool` column): the name of one of the edge's pools (`[[edge.pools]]`); empty for
    /// the default pool.
    pub pool: String,
}

// Hand-written so that logging a User (or a Directory) never prints a secret.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |o: &Option<String>| {
            if o.is_some() {
                "Some(<redacted>)"
            } else {
                "None"
            }
        };
        f.debug_struct("User")
            .field("alias", &self.alias)
            .field("display_name", &self.display_name)
            .field("first", &self.first)
            .field("last", &self.last)
            .field("account", &self.account)
            .field("password", &format_args!("{}", redact(&self.password)))
            .field("ha1_md5", &format_args!("{}", redact(&self.ha1_md5)))
            .field("ha1_sha256", &format_args!("{}", redact(&self.ha1_sha256)))
            .field("pool", &self.pool)
            .finish()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    pub users: Vec<User>,
}

/// Where in the file an entry starts: a line number (both formats) when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Line(usize),
    /// 1-based position among the `[[user]]` entries, when TOML gives no position.
    Entry(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(l) => write!(f, "{l}"),
            Location::Entry(i) => write!(f, "user {i}"),
        }
    }
}

#[derive(Debug)]
pub enum DirectoryError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// The file as a whole: unsupported extension, TOML syntax, bad CSV header.
    Format {
        path: PathBuf,
        message: String,
    },
    /// One entry: "users.csv:4: alias missing".
    Entry {
        path: PathBuf,
        at: Location,
        message: String,
    },
    /// "users.csv:7: duplicate alias bob (first at line 3)".
    Duplicate {
        path: PathBuf,
        at: Location,
        alias: String,
        first: Location,
    },
}

impl fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectoryError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            DirectoryError::Format { path, message } => write!(f, "{}: {message}", path.display()),
            DirectoryError::Entry { path, at, message } => {
                write!(f, "{}:{at}: {message}", path.display())
            }
            DirectoryError::Duplicate { path, at, alias, first } => {
                let first = match first {
                    Location::Line(l) => format!("line {l}"),
                    Location::Entry(i) => format!("user {i}"),
                };
                write!(f, "{}:{at}: duplicate alias {alias} (first at {first})", path.display())
            }
        }
    }
}

impl std::error::Error for DirectoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DirectoryError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Column / key names, in the order `write_demo` and the CSV header use them.
pub const FIELDS: [&str; 9] =
    ["alias", "display_name", "first", "last", "account", "password", "ha1_md5", "ha1_sha256", "pool"];

/// One entry as read, every field optional so a missing one can be reported by name.
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUser {
    #[serde(skip_serializing_if = "Option::is_none")]
    alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ha1_md5: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ha1_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTomlFile {
    #[serde(default)]
    user: Vec<toml::Spanned<RawUser>>,
}

#[derive(Serialize)]
struct DemoFile<'a> {
    user: &'a [RawUser],
}

/// Characters RFC 3261 allows unescaped in the user part of a SIP URI (`unreserved` and
/// `user-unreserved`), minus '%': aliases are compared verbatim, so escapes would create aliases.
pub(crate) fn alias_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c)
}

/// Whether `name` may name a pool (`pool` column, `[[edge.pools]] name`, `[pool] home`); empty: the default pool.
pub fn pool_name_ok(name: &str) -> bool {
    name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn hex_field(v: Option<String>, digits: usize, field: &str) -> Result<Option<String>, String> {
    match nonempty(v) {
        None => Ok(None),
        Some(h) if h.len() == digits && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(Some(h.to_ascii_lowercase())),
        Some(h) => Err(format!("{field} must be {digits} hex digits, found {} characters", h.len())),
    }
}

fn to_user(raw: RawUser) -> Result<User, String> {
    let alias = nonempty(raw.alias).ok_or("alias missing")?;
    if let Some(c) = alias.chars().find(|c| !alias_char_ok(*c)) {
        return Err(format!("alias {alias:?} contains {c:?}, not allowed in a SIP user name"));
    }
    let first = nonempty(raw.first).unwrap_or_default();
    let last = nonempty(raw.last).unwrap_or_default();
    // Display names feed the From/To header; a quote or line break there would break the header.
    let display_name = nonempty(raw.display_name).unwrap_or_else(|| {
        let full = format!("{first} {last}");
        let full = full.trim();
        if full.is_empty() {
            alias.clone()
        } else {
            full.to_string()
        }
    });
    if display_name.contains(['"', '\r', '\n']) {
        return Err("display_name contains a quote or line break".into());
    }
    // A password is taken as written (spaces may be part of it); only an empty one means none.
    let password = raw.password.filter(|p| !p.is_empty());
    let ha1_md5 = hex_field(raw.ha1_md5, 32, "ha1_md5")?;
    let ha1_sha256 = hex_field(raw.ha1_sha256, 64, "ha1_sha256")?;
    if password.is_none() && ha1_md5.is_none() && ha1_sha256.is_none() {
        return Err(format!("user {alias}: password or ha1_md5/ha1_sha256 missing"));
    }
    let pool = nonempty(raw.pool).unwrap_or_default();
    if !pool_name_ok(&pool) {
        return Err(format!("pool {pool:?}: a pool name is letters, digits, '-', '_' and '.'"));
    }
    Ok(User {
        alias,
        display_name,
        first,
        last,
        account: nonempty(raw.account).unwrap_or_default(),
        password,
        ha1_md5,
        ha1_sha256,
        pool,
    })
}

impl Directory {
    /// Loads `.toml` (`[[user]]` tables) or `.csv` (header line naming the columns, quoted fields
    /// allowed). Errors name the file, line/entry and field.
    pub fn load(path: &Path) -> Result<Directory, DirectoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| DirectoryError::Io { path: path.into(), source })?;
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("toml") => Self::from_toml_str(&text, path),
            Some("csv") => Self::from_csv_str(&text, path),
            _ => Err(DirectoryError::Format {
                path: path.into(),
                message: "unsupported file type; name the users file *.toml or *.csv".into(),
            }),
        }
    }

    /// Parses TOML text; `path` is only used in error messages.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Directory, DirectoryError> {
        let file: RawTomlFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let message = e.message().trim().replace("unknown field", "unknown key");
            match line {
                Some(l) => DirectoryError::Entry { path: path.into(), at: Location::Line(l), message },
                None => DirectoryError::Format { path: path.into(), message },
            }
        })?;
        let entries = file.user.into_iter().map(|s| {
            let line = line_of(text, s.span().start);
            (Location::Line(line), s.into_inner())
        });
        Self::collect(path, entries)
    }

    /// Parses CSV text; `path` is only used in error messages.
    pub fn from_csv_str(text: &str, path: &Path) -> Result<Directory, DirectoryError> {
        let records = parse_csv(text).map_err(|(line, message)| DirectoryError::Entry {
            path: path.into(),
            at: Location::Line(line),
            message,
        })?;
        let mut records = records.into_iter();
        let Some((header_line, header)) = records.next() else {
            return Ok(Directory::default());
        };
        let mut columns = Vec::with_capacity(header.len());
        for name in &header {
            let name = name.trim().to_ascii_lowercase();
            if !FIELDS.contains(&name.as_str()) {
                return Err(DirectoryError::Entry {
                    path: path.into(),
                    at: Location::Line(header_line),
                    message: format!("unknown column {name:?} in header; expected {}", FIELDS.join(",")),
                });
            }
            if columns.contains(&name) {
                return Err(DirectoryError::Entry {
                    path: path.into(),
                    at: Location::Line(header_line),
                    message: format!("column {name:?} appears twice in header"),
                });
            }
            columns.push(name);
        }
        if !columns.iter().any(|c| c == "alias") {
            return Err(DirectoryError::Entry {
                path: path.into(),
                at: Location::Line(header_line),
                message: format!("header has no alias column; expected {}", FIELDS.join(",")),
            });
        }
        let mut entries = Vec::new();
        for (line, fields) in records {
            if fields.len() > columns.len() {
                return Err(DirectoryError::Entry {
                    path: path.into(),
                    at: Location::Line(line),
                    message: format!("{} fields but the header names {} columns", fields.len(), columns.len()),
                });
            }
            let mut raw = RawUser::default();
            // Short rows are allowed: trailing empty columns are often dropped by exporters.
            for (col, value) in columns.iter().zip(fields) {
                let slot = match col.as_str() {
                    "alias" => &mut raw.alias,
                    "display_name" => &mut raw.display_name,
                    "first" => &mut raw.first,
                    "last" => &mut raw.last,
                    "account" => &mut raw.account,
                    "password" => &mut raw.password,
                    "ha1_md5" => &mut raw.ha1_md5,
                    "pool" => &mut raw.pool,
                    _ => &mut raw.ha1_sha256,
                };
                *slot = Some(value);
            }
            entries.push((Location::Line(line), raw));
        }
        Self::collect(path, entries)
    }

    fn collect(
        path: &Path,
        entries: impl IntoIterator<Item = (Location, RawUser)>,
    ) -> Result<Directory, DirectoryError> {
        let mut users = Vec::new();
        let mut seen: HashMap<String, Location> = HashMap::new();
        for (at, raw) in entries {
            let user = to_user(raw).map_err(|message| DirectoryError::Entry { path: path.into(), at, message })?;
            if let Some(first) = seen.get(&user.alias) {
                return Err(DirectoryError::Duplicate { path: path.into(), at, alias: user.alias, first: *first });
            }
            seen.insert(user.alias.clone(), at);
            users.push(user);
        }
        Ok(Directory { users })
    }

    /// The user with this alias (exact match, as SIP user parts compare case-sensitively).
    pub fn get(&self, alias: &str) -> Option<&User> {
        self.users.iter().find(|u| u.alias == alias)
    }

    /// Demo users alice, bob and carol with random passwords, written once; an existing file is read instead.
    pub fn write_demo(path: &Path) -> Result<Vec<(String, String)>, io::Error> {
        Self::write_demo_with_load(path, 0)
    }

    /// Like `write_demo`, plus `load_users` users `load1`..`loadN` (for loadgen and the benchmarks). An existing
    /// file is kept when it already holds exactly that many load users; otherwise it is rewritten keeping the
    /// passwords of the users it already had.
    pub fn write_demo_with_load(path: &Path, load_users: usize) -> Result<Vec<(String, String)>, io::Error> {
        let mut known: Vec<(String, String)> = Vec::new();
        if path.exists() {
            let existing = read_demo(path)?;
            let loads = existing.iter().filter(|(a, _)| is_load_alias(a)).count();
            if loads == load_users {
                return Ok(existing);
            }
            known = existing;
            std::fs::remove_file(path)?;
        }
        let password_for = |alias: &str| -> io::Result<String> {
            match known.iter().find(|(a, _)| a == alias) {
                Some((_, p)) => Ok(p.clone()),
                None => random_password(12),
            }
        };
        let mut raws = Vec::new();
        let mut creds = Vec::new();
        let demo = [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")];
        let load = (1..=load_users).map(|i| (format!("load{i}"), format!("Load{i}")));
        for (alias, first) in demo.iter().map(|(a, f)| (a.to_string(), f.to_string())).chain(load) {
            let password = password_for(&alias)?;
            creds.push((alias.clone(), password.clone()));
            let last = if is_load_alias(&alias) { "Load" } else { "Example" };
            raws.push(RawUser {
                display_name: Some(format!("{first} {last}")),
                first: Some(first),
                last: Some(last.into()),
                account: Some(format!("EXAMPLE\\{alias}")),
                alias: Some(alias),
                password: Some(password),
                ha1_md5: None,
                ha1_sha256: None,
                pool: None,
            });
        }
        let is_csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        let text = if is_csv {
            let mut s = String::from("alias,display_name,first,last,account,password\n");
            for r in &raws {
                let row: Vec<String> = [&r.alias, &r.display_name, &r.first, &r.last, &r.account, &r.password]
                    .iter()
                    .map(|v| csv_quote(v.as_deref().unwrap_or("")))
                    .collect();
                s.push_str(&row.join(","));
                s.push('\n');
            }
            s
        } else {
            let body = toml::to_string(&DemoFile { user: &raws }).map_err(io::Error::other)?;
            format!("# parapet demo users, generated once; edit freely.\n\n{body}")
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        // create_new: if another process wrote the file meanwhile, keep its passwords.
        let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return read_demo(path),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all())?;
        Ok(creds)
    }
}

fn is_load_alias(a: &str) -> bool {
    a.strip_prefix("load").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn read_demo(path: &Path) -> io::Result<Vec<(String, String)>> {
    let dir = Directory::load(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(dir.users.into_iter().filter_map(|u| u.password.map(|p| (u.alias, p))).collect())
}

fn random_password(len: usize) -> io::Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::getrandom(&mut buf).map_err(|e| io::Error::other(format!("random password: {e}")))?;
        // Rejection sampling: 248 = 4 * 62, so accepted bytes map uniformly onto the alphabet.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[(*b as usize) % ALPHABET.len()] as char);
        }
    }
    Ok(out)
}

fn csv_quote(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) || v.trim() != v {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

fn line_of(text: &str, byte: usize) -> usize {
    text.as_bytes()[..byte.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

/// (line where the record starts, fields)
pub(crate) type CsvRecord = (usize, Vec<String>);

/// RFC 4180 with the usual leniencies: CRLF or LF, a UTF-8 BOM, blank lines and `#` comment
/// lines skipped, unquoted fields trimmed. Quoted fields keep their content verbatim and may
/// contain commas, doubled quotes and line breaks.
pub(crate) fn parse_csv(text: &str) -> Result<Vec<CsvRecord>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false; // this field was quoted: keep it verbatim
        let mut at_field_start = true;
        // Skip blank and comment lines between records.
        if matches!(chars.peek(), Some('\n') | Some('\r')) {
            if chars.next() == Some('\r') && chars.peek() == Some(&'\n') {
                chars.next();
            }
            line += 1;
            continue;
        }
        if chars.peek() == Some(&'#') {
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            line += 1;
            continue;
        }
        loop {
            let c = chars.next();
            match c {
                None | Some('\n') => {
                    if c.is_some() {
                        line += 1;
                    }
                    fields.push(finish(field, quoted));
                    break;
                }
                Some('\r') if chars.peek() == Some(&'\n') => {}
                Some(',') => {
                    fields.push(finish(std::mem::take(&mut field), quoted));
                    quoted = false;
                    at_field_start = true;
                    continue;
                }
                Some('"') if at_field_start && field.trim().is_empty() => {
                    field.clear();
                    quoted = true;
                    loop {
                        match chars.next() {
                            None => return Err((start, "quoted field not closed before end of file".into())),
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                field.push('"');
                            }
                            Some('"') => break,
                            Some(c) => {
                                if c == '\n' {
                                    line += 1;
                                }
                                field.push(c);
                            }
                        }
                    }
                    // Only spaces may follow the closing quote before the separator.
                    while matches!(chars.peek(), Some(' ') | Some('\t')) {
                        chars.next();
                    }
                    if !matches!(chars.peek(), None | Some(',') | Some('\n') | Some('\r')) {
                        return Err((line, "text after a closing quote (write a quote inside quotes as \"\")".into()));
                    }
                    at_field_start = false;
                    continue;
                }
                Some(c) => {
                    if quoted {
                        return Err((line, "text after a closing quote".into()));
                    }
                    if !c.is_whitespace() {
                        at_field_start = false;
                    }
                    field.push(c);
                }
            }
        }
        // A line of only spaces is blank too, not a record with an empty alias.
        if !(fields.len() == 1 && fields[0].is_empty() && !quoted) {
            records.push((start, fields));
        }
    }
    Ok(records)
}

fn finish(field: String, quoted: bool) -> String {
    if quoted {
        field
    } else {
        field.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> PathBuf {
        PathBuf::from(name)
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).expect("random");
        let d = std::env::temp_dir().join(format!("parapet-dir-{tag}-{}", u64::from_le_bytes(b)));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn toml_users() {
        let text = r#"
[[user]]
alias = "alice"
display_name = "Alice Example"
first = "Alice"
last = "Example"
account = "CORP\\alice"
password = "s3cret"

[[user]]
alias = "bob"
first = "Bob"
last = "Builder"
ha1_md5 = "0123456789ABCDEF0123456789abcdef"
"#;
        let d = Directory::from_toml_str(text, &p("users.toml")).expect("parse");
        assert_eq!(d.users.len(), 2);
        assert_eq!(d.users[0].account, "CORP\\alice");
        assert_eq!(d.users[0].password.as_deref(), Some("s3cret"));
        let bob = d.get("bob").expect("bob");
        assert_eq!(bob.display_name, "Bob Builder");
        assert_eq!(bob.ha1_md5.as_deref(), Some("0123456789abcdef0123456789abcdef"));
        assert!(bob.password.is_none());
        assert!(!format!("{d:?}").contains("s3cret"), "Debug must not print secrets");
    }

    #[test]
    fn toml_errors_name_line_and_field() {
        let text = "[[user]]\nalias = \"a\"\npassword = \"x\"\n\n[[user]]\nfirst = \"No\"\npassword = \"y\"\n";
        let e = Directory::from_toml_str(text, &p("users.toml")).expect_err("alias missing");
        assert_eq!(e.to_string(), "users.toml:5: alias missing");
        let e = Directory::from_toml_str("[[user]]\nalias = \"a\"\npasword = \"x\"\n", &p("users.toml"))
            .expect_err("unknown key");
        assert!(e.to_string().contains("pasword") && e.to_string().starts_with("users.toml:3:"), "{e}");
        let e = Directory::from_toml_str("[[user]]\nalias = \"a\"\n", &p("users.toml")).expect_err("no secret");
        assert!(e.to_string().contains("password or ha1"), "{e}");
        let e = Directory::from_toml_str("[[user]]\nalias = \"a\"\nha1_sha256 = \"abc\"\n", &p("u.toml"))
            .expect_err("short ha1");
        assert!(e.to_string().contains("ha1_sha256 must be 64 hex digits"), "{e}");
        let e =
            Directory::from_toml_str("[[user]]\nalias = \"a b\"\npassword = \"x\"\n", &p("u.toml")).expect_err("space");
        assert!(e.to_string().contains("not allowed in a SIP user name"), "{e}");
    }

    #[test]
    fn home_pool_column() {
        let text =
            "[[user]]\nalias = \"a\"\npassword = \"x\"\npool = \"ent\"\n\n[[user]]\nalias = \"b\"\npassword = \"y\"\n";
        let d = Directory::from_toml_str(text, &p("users.toml")).expect("parse");
        assert_eq!(d.get("a").map(|u| u.pool.as_str()), Some("ent"));
        assert_eq!(d.get("b").map(|u| u.pool.as_str()), Some(""), "no column: the default pool");
        let d = Directory::from_csv_str("alias,password,pool\na,x,se\nb,y,\n", &p("u.csv")).expect("parse");
        assert_eq!(d.get("a").map(|u| u.pool.as_str()), Some("se"));
        assert_eq!(d.get("b").map(|u| u.pool.as_str()), Some(""));
        let e = Directory::from_csv_str("alias,password,pool\na,x,s e\n", &p("u.csv")).expect_err("bad name");
        assert!(e.to_string().contains("a pool name is"), "{e}");
    }

    #[test]
    fn csv_with_quotes() {
        let text = "\u{feff}alias,display_name,first,last,account,password,ha1_md5,ha1_sha256\r\n\
                    alice,\"Example, Alice\",Alice,Example,\"CORP\\alice\",\"pa\"\"ss,word\",,\r\n\
                    \r\n\
                    # comment line\n\
                    bob,\"Bob\nThe Second\",Bob,Example,CORP\\bob,,,\n\
                    carol , Carol Example ,Carol,Example,CORP\\carol,\" spaced \"\n";
        let e = Directory::from_csv_str(text, &p("users.csv")).expect_err("bob has no secret, and a newline");
        assert_eq!(e.to_string(), "users.csv:5: display_name contains a quote or line break");
        let text = text.replace("Bob\nThe Second", "Bob The Second").replace("CORP\\bob,,,", "CORP\\bob,pw,,");
        let d = Directory::from_csv_str(&text, &p("users.csv")).expect("parse");
        assert_eq!(d.users.len(), 3);
        assert_eq!(d.users[0].display_name, "Example, Alice");
        assert_eq!(d.users[0].account, "CORP\\alice");
        assert_eq!(d.users[0].password.as_deref(), Some("pa\"ss,word"));
        assert_eq!(d.users[1].display_name, "Bob The Second");
        assert_eq!(d.users[2].alias, "carol");
        assert_eq!(d.users[2].display_name, "Carol Example");
        assert_eq!(d.users[2].password.as_deref(), Some(" spaced "));
    }

    #[test]
    fn csv_errors_name_line() {
        let text = "alias,password\nalice,a\nbob,b\n\n,c\n";
        let e = Directory::from_csv_str(text, &p("users.csv")).expect_err("alias missing");
        assert_eq!(e.to_string(), "users.csv:5: alias missing");
        let e = Directory::from_csv_str("alias,pasword\n", &p("users.csv")).expect_err("bad header");
        assert!(e.to_string().contains("unknown column \"pasword\""), "{e}");
        let e = Directory::from_csv_str("alias,password\nalice,\"open\n", &p("users.csv")).expect_err("unclosed");
        assert!(e.to_string().starts_with("users.csv:2: quoted field not closed"), "{e}");
        let e = Directory::from_csv_str("alias,password\na,b,c\n", &p("users.csv")).expect_err("too many");
        assert!(e.to_string().contains("3 fields but the header names 2"), "{e}");
    }

    #[test]
    fn duplicate_alias() {
        let text = "alias,password\nalice,a\nbob,b\nbob,c\n";
        let e = Directory::from_csv_str(text, &p("users.csv")).expect_err("dup");
        assert!(matches!(e, DirectoryError::Duplicate { .. }));
        assert_eq!(e.to_string(), "users.csv:4: duplicate alias bob (first at line 3)");
        let text = "[[user]]\nalias = \"bob\"\npassword = \"a\"\n[[user]]\nalias = \"bob\"\npassword = \"b\"\n";
        let e = Directory::from_toml_str(text, &p("users.toml")).expect_err("dup");
        assert!(e.to_string().contains("duplicate alias bob"), "{e}");
    }

    #[test]
    fn load_by_extension() {
        let d = tmpdir("ext");
        let csv = d.join("users.csv");
        std::fs::write(&csv, "alias,password\nalice,x\n").expect("write");
        assert_eq!(Directory::load(&csv).expect("csv").users[0].alias, "alice");
        let txt = d.join("users.txt");
        std::fs::write(&txt, "").expect("write");
        assert!(Directory::load(&txt).expect_err("ext").to_string().contains("*.toml or *.csv"));
        let missing = d.join("nope.toml");
        assert!(matches!(Directory::load(&missing), Err(DirectoryError::Io { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn write_demo_then_reuse() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmpdir("demo");
        for name in ["users.toml", "users.csv"] {
            let path = d.join("sub").join(name);
            let creds = Directory::write_demo(&path).expect("write");
            let aliases: Vec<_> = creds.iter().map(|(a, _)| a.as_str()).collect();
            assert_eq!(aliases, ["alice", "bob", "carol"]);
            for (_, pw) in &creds {
                assert_eq!(pw.len(), 12);
                assert!(pw.bytes().all(|b| b.is_ascii_alphanumeric()));
            }
            assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
            let dir = Directory::load(&path).expect("load");
            assert_eq!(dir.users[0].display_name, "Alice Example");
            assert_eq!(dir.users[2].account, "EXAMPLE\\carol");
            assert_eq!(Directory::write_demo(&path).expect("again"), creds, "second run reads the file");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn passwords_differ() {
        let a = random_password(12).expect("a");
        let b = random_password(12).expect("b");
        assert_ne!(a, b);
    }
}
