//! `[[applications]]`: trusted applications that connect to the pool over mutual TLS (the pool's own CA, like
//! edges) and serve agent addresses. See docs/agents.md for the wire contract.
//!
//! ```toml
//! [[applications]]
//! name = "echo"                          # names its counters: parapet_pool_app_echo_delivered, ...
//! cert_name = "echo.apps.example.com"    # a DNS name its client certificate must carry
//! agents = ["sip:echo@example.com"]      # the addresses it may REGISTER and send From
//! timeout_ms = 3000                      # its answer to a MESSAGE, at most (then the fallback applies)
//! queue = 64                             # MESSAGEs awaiting its answer, at most, per pool core
//! fallback = "reject"                    # for MESSAGEs to its agents when it is down or slow: reject | auto-reply
//! code = 480                             # reject: 400..699
//! reason = "Temporarily Unavailable"
//! # text = "The bot is away"             # auto-reply
//! ```
//!
//! Applications are read at start (a new one needs a restart); routing rules naming them reload as usual.

use serde::Deserialize;

use super::routing::{AddrMatch, RoutingConfig, RuleAction};
use super::{invalid, ConfigError};

/// What happens to a MESSAGE an application did not take in time (down, queue full, no answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// Answer the sender with this failure.
    Reject { code: u16, reason: String },
    /// Answer the sender 200, then send it `text` From the address it wrote to.
    AutoReply { text: String },
    /// Route the MESSAGE as if no rule had applied (rules only).
    Deliver,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub name: String,
    pub cert_name: String,
    /// AOR keys (`user@domain`, domain lowercased).
    pub agents: Vec<String>,
    pub timeout_ms: u64,
    pub queue: usize,
    /// For MESSAGEs sent to its agent addresses.
    pub fallback: Fallback,
}

pub const TIMEOUT_MS_DEFAULT: u64 = 3000;
pub const QUEUE_DEFAULT: usize = 64;
/// Applications one config may name, and agent addresses one application may serve.
pub const APPLICATIONS_MAX: usize = 64;
pub const AGENTS_MAX: usize = 256;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApplication {
    name: Option<String>,
    cert_name: Option<String>,
    agents: Option<Vec<String>>,
    timeout_ms: Option<u64>,
    queue: Option<usize>,
    fallback: Option<String>,
    code: Option<u16>,
    reason: Option<String>,
    text: Option<String>,
}

/// The `fallback` key and the keys it reads (`code`, `reason`, `text`); `key` names them in errors.
pub(super) fn fallback(
    key: &dyn Fn(&str) -> String,
    kind: Option<&str>,
    default: Fallback,
    code: Option<u16>,
    reason: Option<&str>,
    text: Option<&str>,
    allow_deliver: bool,
) -> Result<Fallback, ConfigError> {
    match kind.map(str::trim) {
        None => Ok(default),
        Some("reject") => {
            let code = code.unwrap_or(480);
            if !(400..=699).contains(&code) {
                return Err(invalid(key("code"), format!("{code}: a failure code, 400 to 699")));
            }
            let reason = reason.unwrap_or("Temporarily Unavailable");
            if reason.is_empty() || reason.contains(['\r', '\n']) {
                return Err(invalid(key("reason"), "one line of text"));
            }
            Ok(Fallback::Reject { code, reason: reason.to_string() })
        }
        Some("auto-reply") => {
            let text = text.filter(|t| !t.is_empty()).ok_or_else(|| invalid(key("text"), "missing"))?;
            Ok(Fallback::AutoReply { text: text.to_string() })
        }
        Some("deliver") if allow_deliver => Ok(Fallback::Deliver),
        Some(other) => {
            let expected = if allow_deliver { "reject, auto-reply or deliver" } else { "reject or auto-reply" };
            Err(invalid(key("fallback"), format!("{other:?}: expected {expected}")))
        }
    }
}

fn application(i: usize, r: RawApplication) -> Result<Application, ConfigError> {
    let key = |k: &str| format!("[[applications]] {i} ({}) {k}", r.name.as_deref().unwrap_or("unnamed"));
    let name = r.name.clone().filter(|n| !n.trim().is_empty()).ok_or_else(|| invalid(key("name"), "missing"))?;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(invalid(key("name"), format!("{name:?}: letters, digits, - and _ only (it names metrics)")));
    }
    let cert_name = r
        .cert_name
        .as_deref()
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| invalid(key("cert_name"), "missing (a DNS name of its client certificate)"))?;
    let raw_agents = r.agents.clone().unwrap_or_default();
    if raw_agents.is_empty() || raw_agents.len() > AGENTS_MAX {
        return Err(invalid(key("agents"), format!("1 to {AGENTS_MAX} addresses, e.g. [\"sip:echo@example.com\"]")));
    }
    let mut agents = Vec::with_capacity(raw_agents.len());
    for a in &raw_agents {
        let Some(AddrMatch::Exact(aor)) = AddrMatch::parse(a) else {
            return Err(invalid(key("agents"), format!("{a:?}: expected sip:user@domain")));
        };
        if !agents.contains(&aor) {
            agents.push(aor);
        }
    }
    let timeout_ms = r.timeout_ms.unwrap_or(TIMEOUT_MS_DEFAULT);
    if !(50..=60_000).contains(&timeout_ms) {
        return Err(invalid(key("timeout_ms"), format!("{timeout_ms}: 50 to 60000")));
    }
    let queue = r.queue.unwrap_or(QUEUE_DEFAULT);
    if !(1..=10_000).contains(&queue) {
        return Err(invalid(key("queue"), format!("{queue}: 1 to 10000")));
    }
    let default = Fallback::Reject { code: 480, reason: "Temporarily Unavailable".into() };
    let fallback =
        fallback(&key, r.fallback.as_deref(), default, r.code, r.reason.as_deref(), r.text.as_deref(), false)?;
    Ok(Application { name, cert_name, agents, timeout_ms, queue, fallback })
}

pub(super) fn build(raw: Option<Vec<RawApplication>>) -> Result<Vec<Application>, ConfigError> {
    let raws = raw.unwrap_or_default();
    if raws.len() > APPLICATIONS_MAX {
        return Err(invalid("[[applications]]", format!("{} applications; at most {APPLICATIONS_MAX}", raws.len())));
    }
    let apps = raws.into_iter().enumerate().map(|(i, r)| application(i, r)).collect::<Result<Vec<_>, _>>()?;
    for (i, a) in apps.iter().enumerate() {
        let earlier = apps.get(..i).unwrap_or_default();
        if earlier.iter().any(|o| o.name == a.name) {
            return Err(invalid(format!("[[applications]] {i} name"), format!("{:?} used twice", a.name)));
        }
        if let Some(o) = earlier.iter().find(|o| o.cert_name == a.cert_name) {
            return Err(invalid(
                format!("[[applications]] {i} ({}) cert_name", a.name),
                format!("{:?} is also {}'s: each application needs a certificate name of its own", a.cert_name, o.name),
            ));
        }
        for agent in &a.agents {
            if let Some(o) = earlier.iter().find(|o| o.agents.contains(agent)) {
                return Err(invalid(
                    format!("[[applications]] {i} ({}) agents", a.name),
                    format!("{agent:?} is also served by {}", o.name),
                ));
            }
        }
    }
    Ok(apps)
}

/// What no single `[[applications]]` entry can tell: an application's certificate name is no edge's (the pool tells
/// the two roles apart by it), and every rule that hands MESSAGEs to an application names one.
pub fn check(
    applications: &[Application],
    pool: Option<&super::PoolConfig>,
    routing: &RoutingConfig,
) -> Result<(), ConfigError> {
    if let Some(p) = pool {
        // The pool tells an application's connection from an edge's by the certificate name: one name, one role.
        for (i, a) in applications.iter().enumerate() {
            if p.edges.iter().any(|e| e.name.eq_ignore_ascii_case(&a.cert_name)) {
                return Err(invalid(
                    format!("[[applications]] {i} ({}) cert_name", a.name),
                    format!("{:?} is also an edge's ([[pool.edges]] name)", a.cert_name),
                ));
            }
        }
    }
    for (i, r) in routing.rules.iter().enumerate() {
        if let RuleAction::Deliver { application, .. } | RuleAction::Fork { application } = &r.action {
            if !applications.iter().any(|a| &a.name == application) {
                return Err(invalid(
                    format!("[[routing.rules]] {i} ({}) application", r.name),
                    format!("{application:?} is no [[applications]] name"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        applications: Vec<RawApplication>,
    }

    fn parse(s: &str) -> Result<Vec<Application>, ConfigError> {
        build(Some(toml::from_str::<Doc>(s).unwrap().applications))
    }

    #[test]
    fn defaults_and_errors_name_the_key() {
        let a = parse(
            "[[applications]]\nname = \"echo\"\ncert_name = \"Echo.Apps\"\nagents = [\"sip:echo@Example.com\"]\n",
        )
        .unwrap();
        let a = a.first().unwrap();
        assert_eq!((a.cert_name.as_str(), a.agents.clone()), ("echo.apps", vec!["echo@example.com".to_string()]));
        assert_eq!((a.timeout_ms, a.queue), (TIMEOUT_MS_DEFAULT, QUEUE_DEFAULT));
        assert!(matches!(a.fallback, Fallback::Reject { code: 480, .. }));
        let e = parse("[[applications]]\nname = \"x\"\nagents = [\"sip:x@example.com\"]\n").err().unwrap().to_string();
        assert!(e.contains("(x) cert_name"), "{e}");
        let e = parse("[[applications]]\nname = \"x\"\ncert_name = \"c\"\nagents = [\"nobody\"]\n").err().unwrap();
        assert!(e.to_string().contains("(x) agents"), "{e}");
        let e = parse(
            "[[applications]]\nname = \"x\"\ncert_name = \"c\"\nagents = [\"sip:x@e.com\"]\nfallback = \"deliver\"\n",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("(x) fallback") && e.to_string().contains("reject or auto-reply"), "{e}");
        let two = "[[applications]]\nname = \"a\"\ncert_name = \"c1\"\nagents = [\"sip:x@e.com\"]\n\
                   [[applications]]\nname = \"b\"\ncert_name = \"c2\"\nagents = [\"sip:x@e.com\"]\n";
        assert!(parse(two).err().unwrap().to_string().contains("also served by a"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod with_rules {
    use crate::config::Config;

    #[test]
    fn a_rule_must_name_a_configured_application() {
        let apps = "[[applications]]\nname = \"crm\"\ncert_name = \"crm.apps\"\nagents = [\"sip:crm@example.com\"]\n";
        let rule = "[[routing.rules]]\nname = \"r\"\naction = \"fork\"\napplication = \"crm\"\n";
        let c = Config::from_toml_str(&format!("{apps}{rule}"), std::path::Path::new("/")).unwrap();
        assert_eq!(c.applications.len(), 1);
        let e = Config::from_toml_str(rule, std::path::Path::new("/")).err().unwrap().to_string();
        assert!(e.contains("(r) application") && e.contains("no [[applications]] name"), "{e}");
        let edge = "[pool]\n[[pool.edges]]\nname = \"crm.apps\"\naddr = \"127.0.0.1:5063\"\n";
        let e = Config::from_toml_str(&format!("{edge}{apps}"), std::path::Path::new("/")).err().unwrap().to_string();
        assert!(e.contains("(crm) cert_name") && e.contains("also an edge's"), "{e}");
    }
}
