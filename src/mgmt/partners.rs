//! The partner table of a running edge, edited through the management API (`parapet partner add/remove/list`).
//!
//! `POST /partners/add?domain=D&addr=A&cert_name=N` appends an entry to the partners file (`[edge.federation]
//! partners_file`, default `partners.toml` next to the config: `parapet up` regenerates the config, never this
//! file) and reloads through the ordinary reload path, which validates the whole config with it (every key, the
//! certificates); a refused reload puts the file back as it was and answers 422 with the reason. `POST
//! /partners/remove?domain=D` takes an entry out the same way (a partner of the config file itself is the
//! config's to remove). `GET /partners` lists the table in force with each name's DNS state. The cores apply a
//! reload within a second; nothing restarts.
//!
//! Runs on the management thread (plain thread, one request at a time), so file edits never interleave and no
//! executor waits on them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::config::partners_file::FileEntries;
use crate::config::{Config, FederationConfig};

static CONFIG: OnceLock<PathBuf> = OnceLock::new();

/// The config file the edge of this process was started from (set once by `run`).
pub fn install(config_path: &Path) {
    let _ = CONFIG.set(config_path.to_path_buf());
}

type Answer = (&'static str, &'static str, String);

fn plain(status: &'static str, body: String) -> Answer {
    (status, "text/plain", body)
}

/// The management routes under `/partners`.
pub fn route(post: bool, path: &[u8]) -> Answer {
    let Ok(path) = std::str::from_utf8(path) else { return plain("400 Bad Request", "path is not text\n".into()) };
    let Some(config) = CONFIG.get() else {
        return plain("404 Not Found", "no edge with federation in this process\n".into());
    };
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let arg = |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')).map(str::to_string);
    match (route, post) {
        ("/partners", false) => plain("200 OK", list()),
        ("/partners/add", true) => match (arg("domain"), arg("addr"), arg("cert_name")) {
            (Some(domain), Some(addr), Some(cert_name)) => {
                answer(add(config, &domain.to_ascii_lowercase(), &addr, &cert_name))
            }
            _ => plain("400 Bad Request", "use POST /partners/add?domain=D&addr=A&cert_name=N\n".into()),
        },
        ("/partners/remove", true) => match arg("domain") {
            Some(domain) => answer(remove(config, &domain.to_ascii_lowercase())),
            None => plain("400 Bad Request", "use POST /partners/remove?domain=D\n".into()),
        },
        ("/partners/block", true) => match arg("domain") {
            Some(domain) => answer(block(config, &domain.to_ascii_lowercase())),
            None => plain("400 Bad Request", "use POST /partners/block?domain=D\n".into()),
        },
        ("/partners/promote", true) => match arg("domain") {
            Some(domain) => answer(promote(config, &domain.to_ascii_lowercase())),
            None => plain("400 Bad Request", "use POST /partners/promote?domain=D\n".into()),
        },
        _ => plain(
            "405 Method Not Allowed",
            "use GET /partners, POST /partners/add?domain=D&addr=A&cert_name=N or POST /partners/remove?domain=D\n"
                .into(),
        ),
    }
}

/// Why an edit was refused.
enum Refused {
    Conflict(String),
    Missing(String),
    Invalid(String),
}

fn answer(r: Result<String, Refused>) -> Answer {
    match r {
        Ok(s) => plain("200 OK", format!("{s}\n")),
        Err(Refused::Conflict(s)) => plain("409 Conflict", format!("{s}\n")),
        Err(Refused::Missing(s)) => plain("404 Not Found", format!("{s}\n")),
        Err(Refused::Invalid(s)) => plain("422 Unprocessable Entity", format!("{s}\n")),
    }
}

fn federation(config: &Path) -> Result<(FederationConfig, PathBuf), Refused> {
    let cfg = Config::load(config).map_err(|e| Refused::Invalid(e.to_string()))?;
    let fed = cfg
        .edge
        .and_then(|e| e.federation)
        .ok_or_else(|| Refused::Invalid(format!("{}: no [edge.federation] table", config.display())))?;
    let file = fed
        .partners_file
        .clone()
        .ok_or_else(|| Refused::Invalid(format!("{}: [edge.federation] partners_file: not set", config.display())))?;
    Ok((fed, file))
}

/// A partner's addr as `partner list` shows it; an inbound-only one says so (it is admitted, never sent to).
fn shown(addr: Option<&crate::config::PeerAddr>) -> String {
    addr.map_or_else(|| "none (inbound-only: admitted, never sent to)".to_string(), ToString::to_string)
}

fn add(config: &Path, domain: &str, addr: &str, cert_name: &str) -> Result<String, Refused> {
    let (fed, file) = federation(config)?;
    if let Some(p) = fed.partners.iter().find(|p| p.domain == domain) {
        return Err(Refused::Conflict(format!(
            "{} is already a partner (cert_name {}, addr {}): remove it first",
            p.domain,
            p.cert_name,
            shown(p.addr.as_ref())
        )));
    }
    let mut entries = FileEntries::load(&file).map_err(|e| Refused::Invalid(e.to_string()))?;
    entries.add(domain, cert_name, addr);
    let what = format!("added {domain} (addr {addr}, cert_name {cert_name})");
    rewrite(config, &file, &entries).map(|summary| format!("{what}; {summary}"))
}

/// A discovered domain into the table, as DNS finds it now: addr its domain (SRV), cert_name its first target.
fn promote(config: &Path, domain: &str) -> Result<String, Refused> {
    let resolver = crate::net::dns::published()
        .ok_or_else(|| Refused::Invalid("no DNS resolver in this process (federation not started)".into()))?;
    let targets = futures_lite::future::block_on(resolver.federation_srv(domain))
        .map_err(|e| Refused::Invalid(format!("_sipfederationtls._tcp.{domain}: {e}: nothing to promote")))?;
    let target = targets.first().ok_or_else(|| Refused::Invalid(format!("{domain}: no SRV target")))?;
    add(config, domain, domain, &target.name)
}

/// A domain refused both ways from now on (kept in the partners file).
fn block(config: &Path, domain: &str) -> Result<String, Refused> {
    let (_, file) = federation(config)?;
    let mut entries = FileEntries::load(&file).map_err(|e| Refused::Invalid(e.to_string()))?;
    if !entries.block(domain) {
        return Err(Refused::Conflict(format!("{domain} is already blocked in {}", file.display())));
    }
    rewrite(config, &file, &entries).map(|summary| format!("blocked {domain}; {summary}"))
}

fn remove(config: &Path, domain: &str) -> Result<String, Refused> {
    let (fed, file) = federation(config)?;
    let mut entries = FileEntries::load(&file).map_err(|e| Refused::Invalid(e.to_string()))?;
    if !entries.remove(domain) {
        if fed.partners.iter().any(|p| p.domain == domain) {
            return Err(Refused::Conflict(format!(
                "{domain} is a partner of {} itself, not of {}: edit the config file",
                config.display(),
                file.display()
            )));
        }
        return Err(Refused::Missing(format!("{domain} is not in {}", file.display())));
    }
    rewrite(config, &file, &entries).map(|summary| format!("removed {domain}; {summary}"))
}

/// Writes the partners file and reloads; a refused reload puts the file back as it was.
fn rewrite(config: &Path, file: &Path, entries: &FileEntries) -> Result<String, Refused> {
    let old = std::fs::read_to_string(file).ok();
    let write = |text: &str| {
        let tmp = file.with_extension("toml.new");
        std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, file))
    };
    write(&entries.render())
        .map_err(|e| Refused::Invalid(format!("[edge.federation] partners_file: {}: {e}", file.display())))?;
    match crate::edge::reload::reload(config) {
        Ok(summary) => {
            tracing::info!(file = %file.display(), "{summary}");
            Ok(summary)
        }
        Err(e) => {
            let restored = match &old {
                Some(text) => write(text),
                None => std::fs::remove_file(file),
            };
            if let Err(r) = restored {
                tracing::error!(file = %file.display(), error = %r, "cannot put the partners file back");
            }
            Err(Refused::Invalid(e.to_string()))
        }
    }
}

/// The table in force, one line per peer, with its DNS state when it is known by name.
fn list() -> String {
    let Some(table) = crate::edge::reload::current() else { return "no federation table in force\n".into() };
    let dns = crate::net::dns::published().map(|r| r.stats()).unwrap_or_default();
    let state = |addr: &crate::config::PeerAddr| -> String {
        if matches!(addr, crate::config::PeerAddr::Ip(_)) {
            return String::new();
        }
        let key = addr.to_string();
        match dns.iter().find(|s| s.name == key) {
            None => "  dns: not looked up yet".into(),
            Some(s) => {
                let addrs: Vec<String> =
                    s.targets.iter().flat_map(|t| t.addrs.iter().map(|a| format!("{}={a}", t.name))).collect();
                let health = if s.failing {
                    format!("dns failing ({}), keeping {:?}", s.last_error, addrs)
                } else {
                    format!("dns ok {addrs:?}")
                };
                format!("  {health}; dns_errors={} stale_answers={}", s.errors, s.stale_answers)
            }
        }
    };
    // The per-peer counters the limiter keeps (all cores together), by certificate name.
    let limits = crate::edge::reload::current_limits();
    let usage = |name: &str| -> String {
        let Some(l) = &limits else { return String::new() };
        let s = l.state(std::slice::from_ref(&name.to_string())).clone();
        format!("  connections={} refused_over_rate={}", s.connections(), s.refused())
    };
    let mut out = String::new();
    for p in &table.partners {
        out.push_str(&format!(
            "partner {}  cert_name={}  addr={}  rate={}/s{}{}\n",
            p.domain,
            p.cert_name,
            shown(p.addr.as_ref()),
            p.limits.rate,
            usage(&p.cert_name),
            p.addr.as_ref().map(state).unwrap_or_default()
        ));
    }
    for c in &table.clearinghouses {
        out.push_str(&format!(
            "clearinghouse {}  domains={}  addr={}{}{}\n",
            c.name,
            c.domains.join(","),
            c.addr,
            usage(&c.name),
            state(&c.addr)
        ));
    }
    for b in &table.blocked_domains {
        out.push_str(&format!("blocked {b}\n"));
    }
    for line in crate::edge::federation::watch::with(|w| w.report()) {
        out.push_str(&line);
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("no partners\n");
    }
    out
}

/// `parapet partner ...`: talks to the running edge's management API (`[mgmt] listen` of its config).
#[derive(clap::Subcommand)]
pub enum PartnerCmd {
    /// Adds a partner to the running edge's table (persisted in the partners file, applied without a restart).
    Add {
        /// The partner's SIP domain.
        domain: String,
        /// Its edge: a DNS name (SRV, then A/AAAA), name:port or ip:port.
        #[arg(long)]
        addr: String,
        /// The name its certificate must carry.
        #[arg(long)]
        cert_name: String,
        /// The edge's config.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Removes a partner added with `partner add` (or `promote`), or lifts a `partner block`.
    Remove {
        domain: String,
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Puts a discovered domain in the table (addr: its domain, by SRV; cert_name: its SRV target now).
    Promote {
        domain: String,
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Refuses a domain both ways from now on (discovered or not).
    Block {
        domain: String,
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Lists the table in force, with each name's DNS state.
    List {
        #[arg(short, long)]
        config: PathBuf,
    },
}

/// Runs a `parapet partner` command; prints the edge's answer.
pub fn cli(cmd: PartnerCmd) -> Result<(), String> {
    let (config, method, path) = match cmd {
        PartnerCmd::Add { domain, addr, cert_name, config } => {
            for (key, v) in [("domain", &domain), ("--addr", &addr), ("--cert-name", &cert_name)] {
                let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:_[]".contains(&b));
                if !ok {
                    return Err(format!("{key} {v:?}: expected a DNS name, name:port or ip:port (addr)"));
                }
            }
            (config, "POST", format!("/partners/add?domain={domain}&addr={addr}&cert_name={cert_name}"))
        }
        PartnerCmd::Remove { domain, config } => (config, "POST", one_domain("remove", &domain)?),
        PartnerCmd::Promote { domain, config } => (config, "POST", one_domain("promote", &domain)?),
        PartnerCmd::Block { domain, config } => (config, "POST", one_domain("block", &domain)?),
        PartnerCmd::List { config } => (config, "GET", "/partners".to_string()),
    };
    let cfg = Config::load(&config).map_err(|e| e.to_string())?;
    let mgmt = cfg.mgmt.as_ref().ok_or_else(|| {
        format!("{}: no [mgmt] listen: the running edge's management API is how partners are edited", config.display())
    })?;
    let token = mgmt.token().map_err(|e| e.to_string())?;
    let (status, body) = http(mgmt.listen, token.as_deref(), method, &path).map_err(|e| {
        format!("cannot reach the edge's management API at {}: {e} (is the edge running?)", mgmt.listen)
    })?;
    if status == 200 {
        print!("{body}");
        Ok(())
    } else {
        Err(body.trim_end().to_string())
    }
}

/// The route of a command on one domain.
fn one_domain(verb: &str, domain: &str) -> Result<String, String> {
    if domain.is_empty() || !domain.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
        return Err(format!("domain {domain:?}: expected a DNS name"));
    }
    Ok(format!("/partners/{verb}?domain={domain}"))
}

/// One request to the management API, with the config's token when it has one.
fn http(addr: std::net::SocketAddr, token: Option<&str>, method: &str, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    // One write: the request whole.
    s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: parapet\r\n{auth}\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
