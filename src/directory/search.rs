//! Directory search by first, last, display or account name: prefix, case- and accent-insensitive, at most
//! [`ROWS_MAX`] rows, at most [`SEARCHES_MAX`] searches at once (over that: [`SearchError::Busy`]).
//!
//! The index is four sorted arrays of (folded word, person), one per field, rebuilt whole on every sync (a
//! sync is rare; a search is a binary search and a short scan). A query's terms each narrow the result: the
//! term with the fewest candidates drives, the others are checked on the candidates.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::store::DirectoryRow;

pub const ROWS_MAX: usize = 20;
pub const SEARCHES_MAX: usize = 80;
/// Terms in one query; characters in one query.
pub const TERMS_MAX: usize = 8;
pub const QUERY_BYTES_MAX: usize = 256;
/// Candidates the driving term may scan before the search gives up looking for more matches.
const SCAN_MAX: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Any,
    First,
    Last,
    Display,
    Account,
}

const FIELDS: [Field; 4] = [Field::First, Field::Last, Field::Display, Field::Account];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchError {
    Busy,
    BadQuery(String),
}

impl std::fmt::Display for SearchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchError::Busy => write!(f, "busy: {SEARCHES_MAX} searches already running, try again"),
            SearchError::BadQuery(why) => write!(f, "bad query: {why}"),
        }
    }
}

/// `smith`, `ann lee`, `first:ann last:lee`, `account:corp\ann` (fields: first, last, name, account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub terms: Vec<(Field, String)>,
}

impl Query {
    pub fn parse(text: &str) -> Result<Query, SearchError> {
        if text.len() > QUERY_BYTES_MAX {
            return Err(SearchError::BadQuery(format!("longer than {QUERY_BYTES_MAX} bytes")));
        }
        let mut terms = Vec::new();
        for word in text.split_whitespace() {
            let (field, value) = match word.split_once(':') {
                Some((f, v)) => {
                    let field = match f.to_ascii_lowercase().as_str() {
                        "first" | "given" => Field::First,
                        "last" | "sn" | "surname" => Field::Last,
                        "name" | "display" => Field::Display,
                        "account" | "user" => Field::Account,
                        other => {
                            return Err(SearchError::BadQuery(format!(
                                "unknown field {other:?} (first, last, name, account)"
                            )))
                        }
                    };
                    (field, v)
                }
                None => (Field::Any, word),
            };
            let value = fold(value);
            if value.is_empty() {
                continue;
            }
            terms.push((field, value));
        }
        if terms.is_empty() {
            return Err(SearchError::BadQuery("no search terms (try a name, or first:ann last:lee)".into()));
        }
        if terms.len() > TERMS_MAX {
            return Err(SearchError::BadQuery(format!("more than {TERMS_MAX} terms")));
        }
        Ok(Query { terms })
    }
}

/// Lowercase without accents: "Ångström" -> "angstrom", "Łukasz" -> "lukasz", "Straße" -> "strasse".
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let plain: &str = match c {
            'À'..='Å' | 'à'..='å' | 'Ā'..='ą' => "a",
            'Æ' | 'æ' => "ae",
            'Ç' | 'ç' | 'Ć'..='č' => "c",
            'Ď'..='đ' | 'Ð' | 'ð' => "d",
            'È'..='Ë' | 'è'..='ë' | 'Ē'..='ě' => "e",
            'Ĝ'..='ģ' => "g",
            'Ĥ'..='ħ' => "h",
            'Ì'..='Ï' | 'ì'..='ï' | 'Ĩ'..='ı' => "i",
            'Ĵ' | 'ĵ' => "j",
            'Ķ' | 'ķ' => "k",
            'Ĺ'..='ł' => "l",
            'Ñ' | 'ñ' | 'Ń'..='ň' => "n",
            'Ò'..='Ö' | 'Ø' | 'ò'..='ö' | 'ø' | 'Ō'..='ő' => "o",
            'Œ' | 'œ' => "oe",
            'Ŕ'..='ř' => "r",
            'Ś'..='š' => "s",
            'ß' => "ss",
            'Ţ'..='ŧ' => "t",
            'Ù'..='Ü' | 'ù'..='ü' | 'Ũ'..='ų' => "u",
            'Ŵ' | 'ŵ' => "w",
            'Ý' | 'ý' | 'ÿ' | 'Ŷ' | 'ŷ' | 'Ÿ' => "y",
            'Ź'..='ž' => "z",
            'Þ' | 'þ' => "th",
            _ => {
                out.extend(c.to_lowercase());
                continue;
            }
        };
        out.push_str(plain);
    }
    out
}

/// One answer row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub alias: String,
    pub display_name: String,
    /// `sip:alias@domain`.
    pub uri: String,
    pub title: String,
    pub phone: String,
    pub department: String,
}

struct Person {
    hit: Hit,
    /// Folded words per field, in [`FIELDS`] order.
    words: [Vec<String>; 4],
}

fn words(s: &str) -> Vec<String> {
    fold(s)
        .split(|c: char| c.is_whitespace() || c == ',' || c == '\\' || c == '@')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

#[derive(Default)]
pub struct Index {
    people: Vec<Person>,
    /// Per field: (folded word, person), sorted.
    keys: [Vec<(String, u32)>; 4],
}

fn slot(f: Field) -> usize {
    match f {
        Field::First => 0,
        Field::Last => 1,
        Field::Display => 2,
        Field::Account | Field::Any => 3,
    }
}

impl Index {
    /// Enabled people only: a disabled person is not found.
    pub fn build(rows: &[DirectoryRow], domain: &str) -> Index {
        let mut ix = Index::default();
        for r in rows.iter().filter(|r| r.disabled_at.is_none()) {
            let Ok(id) = u32::try_from(ix.people.len()) else { break };
            let mut account = words(&r.account);
            let folded_account = fold(&r.account);
            if !folded_account.is_empty() && !account.contains(&folded_account) {
                account.push(folded_account);
            }
            account.push(fold(&r.alias));
            let p = Person {
                hit: Hit {
                    alias: r.alias.clone(),
                    display_name: r.display_name.clone(),
                    uri: format!("sip:{}@{domain}", r.alias),
                    title: r.title.clone(),
                    phone: r.phone.clone(),
                    department: r.department.clone(),
                },
                words: [words(&r.first), words(&r.last), words(&r.display_name), account],
            };
            for (i, ws) in p.words.iter().enumerate() {
                for w in ws {
                    ix.keys[i].push((w.clone(), id));
                }
            }
            ix.people.push(p);
        }
        for k in &mut ix.keys {
            k.sort_unstable();
            k.dedup();
        }
        ix
    }

    pub fn len(&self) -> usize {
        self.people.len()
    }

    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }

    fn range(&self, field: usize, prefix: &str) -> &[(String, u32)] {
        let keys = &self.keys[field];
        let start = keys.partition_point(|(k, _)| k.as_str() < prefix);
        let len = keys[start..].partition_point(|(k, _)| k.starts_with(prefix));
        &keys[start..start + len]
    }

    fn ranges(&self, field: Field, prefix: &str) -> Vec<&[(String, u32)]> {
        match field {
            Field::Any => FIELDS.iter().map(|f| self.range(slot(*f), prefix)).collect(),
            f => vec![self.range(slot(f), prefix)],
        }
    }

    fn matches(&self, id: u32, field: Field, prefix: &str) -> bool {
        let Some(p) = self.people.get(id as usize) else { return false };
        let in_field = |i: usize| p.words[i].iter().any(|w| w.starts_with(prefix));
        match field {
            Field::Any => (0..4).any(in_field),
            f => in_field(slot(f)),
        }
    }

    /// At most [`ROWS_MAX`] people matching every term.
    pub fn search(&self, q: &Query) -> Vec<Hit> {
        let Some((driver, _)) = q
            .terms
            .iter()
            .enumerate()
            .map(|(i, (f, v))| (i, self.ranges(*f, v).iter().map(|r| r.len()).sum::<usize>()))
            .min_by_key(|(_, n)| *n)
        else {
            return Vec::new();
        };
        let (df, dv) = &q.terms[driver];
        let mut seen: HashSet<u32> = HashSet::new();
        let mut out = Vec::new();
        let mut scanned = 0;
        'outer: for range in self.ranges(*df, dv) {
            for (_, id) in range {
                scanned += 1;
                if scanned > SCAN_MAX || out.len() >= ROWS_MAX {
                    break 'outer;
                }
                if !seen.insert(*id) {
                    continue;
                }
                let all = q.terms.iter().enumerate().all(|(i, (f, v))| i == driver || self.matches(*id, *f, v));
                if let (true, Some(p)) = (all, self.people.get(*id as usize)) {
                    out.push(p.hit.clone());
                }
            }
        }
        out
    }
}

/// Counts searches in progress; a permit ends one.
pub struct Limiter {
    active: AtomicUsize,
    max: usize,
}

pub struct Permit<'a>(&'a Limiter);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limiter {
    pub const fn new(max: usize) -> Limiter {
        Limiter { active: AtomicUsize::new(0), max }
    }

    pub fn try_enter(&self) -> Result<Permit<'_>, SearchError> {
        let mut n = self.active.load(Ordering::Acquire);
        loop {
            if n >= self.max {
                return Err(SearchError::Busy);
            }
            match self.active.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(Permit(self)),
                Err(now) => n = now,
            }
        }
    }
}

/// Debug builds only (`POST /debug/directory-hold?on=1` on the management listener, `on=0` to release): SIP
/// searches waiting for other cores' presence stay in flight, answers and gather timeout held, so that an
/// end-to-end test can have more than [`SEARCHES_MAX`] searches in flight at once without racing the mesh.
static GATHER_HOLD: AtomicBool = AtomicBool::new(false);

/// Sets or releases the gather hold (debug builds; release builds never hold).
pub fn hold_gathers(on: bool) {
    GATHER_HOLD.store(on && cfg!(debug_assertions), Ordering::Release);
}

/// Whether SIP searches must keep waiting (see [`hold_gathers`]).
pub fn gathers_held() -> bool {
    cfg!(debug_assertions) && GATHER_HOLD.load(Ordering::Acquire)
}

/// The process's searches in progress, whichever way they came (API, SIP on any core).
pub static LIMITER: Limiter = Limiter::new(SEARCHES_MAX);

fn current_slot() -> &'static RwLock<Arc<Index>> {
    static CURRENT: OnceLock<RwLock<Arc<Index>>> = OnceLock::new();
    CURRENT.get_or_init(|| RwLock::new(Arc::new(Index::default())))
}

/// The index the management API searches (installed by the pool after every load or sync).
pub fn install(index: Arc<Index>) {
    if let Ok(mut g) = current_slot().write() {
        *g = index;
    }
}

pub fn current() -> Arc<Index> {
    current_slot().read().map(|g| g.clone()).unwrap_or_default()
}

/// A search under the process's cap.
pub fn search_capped(index: &Index, text: &str) -> Result<Vec<Hit>, SearchError> {
    let q = Query::parse(text)?;
    let _permit = LIMITER.try_enter()?;
    Ok(index.search(&q))
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

crate::counters! {
    /// Searches over the management API (written by the management thread only).
    pub struct ApiStats {
        searches,
        busy,
        bad_queries,
    }
}

fn api_stats() -> &'static ApiStats {
    static STATS: OnceLock<&'static ApiStats> = OnceLock::new();
    STATS.get_or_init(|| {
        let s: &'static ApiStats = Box::leak(Box::default());
        crate::mgmt::metrics::register("directory_api", 0, Box::new(move |f| s.visit(f)));
        s
    })
}

/// `GET /directory/search?q=...` for the management listener: (status, content type, body).
pub fn http_search(path_and_query: &[u8]) -> (&'static str, &'static str, String) {
    let stats = api_stats();
    let query = std::str::from_utf8(path_and_query)
        .ok()
        .and_then(|p| p.split_once('?'))
        .and_then(|(_, qs)| qs.split('&').find_map(|kv| kv.strip_prefix("q=")))
        .map(percent_decode);
    let Some(Some(q)) = query else {
        stats.bad_queries.inc();
        return ("400 Bad Request", "application/json", "{\"error\":\"use /directory/search?q=name\"}\n".into());
    };
    match search_capped(&current(), &q) {
        Ok(hits) => {
            stats.searches.inc();
            let rows: Vec<String> = hits
                .iter()
                .map(|h| {
                    format!(
                        "{{\"alias\":{},\"name\":{},\"uri\":{},\"title\":{},\"phone\":{},\"department\":{}}}",
                        json_str(&h.alias),
                        json_str(&h.display_name),
                        json_str(&h.uri),
                        json_str(&h.title),
                        json_str(&h.phone),
                        json_str(&h.department)
                    )
                })
                .collect();
            ("200 OK", "application/json", format!("{{\"results\":[{}]}}\n", rows.join(",")))
        }
        Err(SearchError::Busy) => {
            stats.busy.inc();
            let body = format!("{{\"error\":{}}}\n", json_str(&SearchError::Busy.to_string()));
            ("503 Service Unavailable", "application/json", body)
        }
        Err(e) => {
            stats.bad_queries.inc();
            ("400 Bad Request", "application/json", format!("{{\"error\":{}}}\n", json_str(&e.to_string())))
        }
    }
}

/// `%XX` and `+` decoding of a query-string value; None for malformed escapes or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
pub(crate) mod tests;
