//! `[[routing.rules]]`: the pool's routing rules, evaluated in priority order on every IM and presence request
//! at the target's core. The pool re-reads them from its config file when the file changes (no restart; a bad
//! file keeps the rules in force and says why in the log).
//!
//! ```toml
//! [[routing.rules]]
//! name = "no-spam"               # names the rule's counter: parapet_pool_rule_hits_no_spam
//! priority = 10                  # lower first (default 100); ties in file order
//! method = "MESSAGE"             # optional: MESSAGE, SUBSCRIBE, PUBLISH, NOTIFY
//! from = "@evil.test"            # optional: "user@domain" exact, "@domain", or a pattern with * and ?
//! to = "*@example.com"           # optional: the target (Request-URI), same forms
//! content_type = "text/plain"    # optional: the media type, parameters ignored
//! direction = "federated-in"     # optional: internal (between our users), remote (from one of ours connected
//!                                # outside [edge] internal_networks), federated-in, federated-out, federated
//! action = "reject"              # reject | auto-reply | divert
//! code = 403                     # reject: 400..699
//! reason = "Forbidden: not accepted here"
//! # text = "Out of office"       # auto-reply: 200 to the sender, then a MESSAGE with this text From the target
//! # target = "sip:desk@example.com"  # divert: the MESSAGE goes to this address instead
//! # application = "crm"          # deliver | fork: an `[[applications]]` name (deliver: it answers instead of the
//! #                              # target; fork: it gets a copy, the MESSAGE goes on as usual)
//! # fallback = "deliver"         # deliver: when the application is down or slow: deliver (as usual, the
//! #                              # default) | reject (code, reason) | auto-reply (text)
//! ```

use serde::Deserialize;

use super::applications::Fallback;
use super::{invalid, ConfigError};

/// Who a rule's `from` / `to` matches (AOR keys `user@domain`, domain lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrMatch {
    Exact(String),
    Domain(String),
    /// `*` any run of characters, `?` one.
    Pattern(String),
}

impl AddrMatch {
    pub fn parse(s: &str) -> Option<AddrMatch> {
        let s = s.trim().trim_start_matches("sip:");
        if s.is_empty() {
            return None;
        }
        if s.contains(['*', '?']) {
            return Some(AddrMatch::Pattern(s.to_ascii_lowercase()));
        }
        if let Some(d) = s.strip_prefix('@') {
            return (!d.is_empty() && !d.contains('@')).then(|| AddrMatch::Domain(d.to_ascii_lowercase()));
        }
        let (u, d) = s.rsplit_once('@')?;
        (!u.is_empty() && !d.is_empty()).then(|| AddrMatch::Exact(format!("{u}@{}", d.to_ascii_lowercase())))
    }

    /// `aor`: an AOR key as the pool makes them (host lowercased).
    pub fn matches(&self, aor: &str) -> bool {
        match self {
            AddrMatch::Exact(a) => a == aor,
            AddrMatch::Domain(d) => aor.rsplit_once('@').is_some_and(|(_, h)| h == d),
            AddrMatch::Pattern(p) => glob(p.as_bytes(), aor.to_ascii_lowercase().as_bytes()),
        }
    }
}

/// `*` and `?` glob, iterative (no recursion, linear backtracking on the last star): bounded work on any input.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(c) if *c == b'?' || Some(c) == s.get(si) => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|rest| rest.iter().all(|c| *c == b'*'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectionMatch {
    /// Between our users (remote ones included).
    Internal,
    /// From one of our users connected outside `[edge] internal_networks`, to one of ours.
    Remote,
    FederatedIn,
    FederatedOut,
    Federated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleAction {
    Reject {
        code: u16,
        reason: String,
    },
    AutoReply {
        text: String,
    },
    Divert {
        target: String,
    },
    /// The MESSAGE goes to the application (its Request-URI kept); when it is down or slow, the fallback.
    Deliver {
        application: String,
        fallback: Fallback,
    },
    /// A copy goes to the application (its answer is not waited for); the MESSAGE is routed as usual.
    Fork {
        application: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub priority: i32,
    /// Upper case.
    pub method: Option<String>,
    pub from: Option<AddrMatch>,
    pub to: Option<AddrMatch>,
    /// Lower case, without parameters.
    pub content_type: Option<String>,
    pub direction: Option<DirectionMatch>,
    pub action: RuleAction,
}

/// Rules in evaluation order, and the help desks (`[[helpdesk]]`, `super::helpdesk`), which reload with them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingConfig {
    pub rules: Vec<Rule>,
    pub helpdesks: Vec<super::helpdesk::Desk>,
}

/// Rules one config may hold (each is evaluated for every request: the bound keeps that cost known).
pub const RULES_MAX: usize = 1000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    rules: Option<Vec<RawRule>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    priority: Option<i32>,
    method: Option<String>,
    from: Option<String>,
    to: Option<String>,
    content_type: Option<String>,
    direction: Option<String>,
    action: Option<String>,
    code: Option<u16>,
    reason: Option<String>,
    text: Option<String>,
    target: Option<String>,
    application: Option<String>,
    fallback: Option<String>,
}

fn rule(i: usize, r: RawRule) -> Result<Rule, ConfigError> {
    let key = |k: &str| format!("[[routing.rules]] {i} ({}) {k}", r.name.as_deref().unwrap_or("unnamed"));
    let name = r.name.clone().filter(|n| !n.trim().is_empty()).ok_or_else(|| invalid(key("name"), "missing"))?;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(invalid(key("name"), format!("{name:?}: letters, digits, - and _ only (it names a metric)")));
    }
    let method = match r.method.as_deref().map(|m| m.trim().to_ascii_uppercase()) {
        None => None,
        Some(m) if ["MESSAGE", "SUBSCRIBE", "PUBLISH", "NOTIFY"].contains(&m.as_str()) => Some(m),
        Some(m) => return Err(invalid(key("method"), format!("{m:?}: MESSAGE, SUBSCRIBE, PUBLISH or NOTIFY"))),
    };
    let addr = |v: &Option<String>, k: &str| {
        v.as_deref()
            .map(|s| {
                AddrMatch::parse(s).ok_or_else(|| {
                    invalid(key(k), format!("{s:?}: expected user@domain, @domain or a pattern with * and ?"))
                })
            })
            .transpose()
    };
    let direction = match r.direction.as_deref().map(str::trim) {
        None => None,
        Some("internal") => Some(DirectionMatch::Internal),
        Some("remote") => Some(DirectionMatch::Remote),
        Some("federated-in") => Some(DirectionMatch::FederatedIn),
        Some("federated-out") => Some(DirectionMatch::FederatedOut),
        Some("federated") => Some(DirectionMatch::Federated),
        Some(d) => {
            return Err(invalid(
                key("direction"),
                format!("{d:?}: internal, remote, federated-in, federated-out or federated"),
            ))
        }
    };
    let action = match r.action.as_deref().map(str::trim) {
        Some("reject") => {
            let code = r.code.unwrap_or(403);
            if !(400..=699).contains(&code) {
                return Err(invalid(key("code"), format!("{code}: a failure code, 400 to 699")));
            }
            let reason = r.reason.clone().unwrap_or_else(|| "Forbidden".into());
            if reason.is_empty() || reason.contains(['\r', '\n']) {
                return Err(invalid(key("reason"), "one line of text"));
            }
            RuleAction::Reject { code, reason }
        }
        Some("auto-reply") => {
            let text = r.text.clone().filter(|t| !t.is_empty()).ok_or_else(|| invalid(key("text"), "missing"))?;
            RuleAction::AutoReply { text }
        }
        Some("divert") => {
            let t = r.target.as_deref().unwrap_or("");
            let Some(AddrMatch::Exact(aor)) = AddrMatch::parse(t) else {
                return Err(invalid(key("target"), format!("{t:?}: expected sip:user@domain")));
            };
            RuleAction::Divert { target: aor }
        }
        Some(a @ ("deliver" | "fork")) => {
            let application = r
                .application
                .clone()
                .filter(|n| !n.trim().is_empty())
                .ok_or_else(|| invalid(key("application"), "missing (an [[applications]] name)"))?;
            if a == "fork" {
                RuleAction::Fork { application }
            } else {
                let fallback = super::applications::fallback(
                    &key,
                    r.fallback.as_deref(),
                    Fallback::Deliver,
                    r.code,
                    r.reason.as_deref(),
                    r.text.as_deref(),
                    true,
                )?;
                RuleAction::Deliver { application, fallback }
            }
        }
        other => {
            return Err(invalid(
                key("action"),
                format!("{other:?}: expected reject, auto-reply, divert, deliver or fork"),
            ));
        }
    };
    Ok(Rule {
        name,
        priority: r.priority.unwrap_or(100),
        method,
        from: addr(&r.from, "from")?,
        to: addr(&r.to, "to")?,
        content_type: r.content_type.as_deref().map(|c| media_type(c.as_bytes())),
        direction,
        action,
    })
}

/// `Text/Plain; charset=UTF-8` -> `text/plain`.
pub fn media_type(v: &[u8]) -> String {
    let v = v.split(|b| *b == b';').next().unwrap_or_default();
    String::from_utf8_lossy(v).trim().to_ascii_lowercase()
}

pub(super) fn build(raw: RawRouting) -> Result<RoutingConfig, ConfigError> {
    let raws = raw.rules.unwrap_or_default();
    if raws.len() > RULES_MAX {
        return Err(invalid("[[routing.rules]]", format!("{} rules; at most {RULES_MAX}", raws.len())));
    }
    let mut rules = raws.into_iter().enumerate().map(|(i, r)| rule(i, r)).collect::<Result<Vec<_>, _>>()?;
    for (i, r) in rules.iter().enumerate() {
        if rules[..i].iter().any(|o| o.name == r.name) {
            return Err(invalid(format!("[[routing.rules]] {i} name"), format!("{:?} used twice", r.name)));
        }
    }
    // Stable: equal priorities keep file order.
    rules.sort_by_key(|r| r.priority);
    Ok(RoutingConfig { rules, helpdesks: Vec::new() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        let m = |s: &str| AddrMatch::parse(s).unwrap();
        assert!(m("sip:Bob@Example.com").matches("Bob@example.com"));
        assert!(!m("bob@example.com").matches("bobby@example.com"));
        assert!(m("@partner.test").matches("carol@partner.test"));
        assert!(!m("@partner.test").matches("carol@sub.partner.test"));
        assert!(m("bot*@example.com").matches("bot-7@example.com"));
        assert!(m("*@*.test").matches("x@partner.test"));
        assert!(!m("b?b@example.com").matches("bob@example.org"));
        assert!(AddrMatch::parse("nobody").is_none());
        assert!(glob(b"a*b*c", b"aXbYbZc") && !glob(b"a*b*c", b"aXbYbZ"));
        let long = "a".repeat(5000);
        assert!(!glob(b"*a*a*a*b", long.as_bytes()), "bounded even when hopeless");
    }

    #[test]
    fn rules_sort_by_priority_and_bad_ones_are_named() {
        let raw: RawRouting = toml::from_str(
            "[[rules]]\nname = \"b\"\naction = \"reject\"\ncode = 488\nreason = \"Not Here\"\n\
             [[rules]]\nname = \"a\"\npriority = 5\nto = \"helpdesk@example.com\"\naction = \"divert\"\ntarget = \"sip:bob@example.com\"\n",
        )
        .unwrap();
        let c = build(raw).unwrap();
        assert_eq!(c.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(c.rules[1].action, RuleAction::Reject { code: 488, reason: "Not Here".into() });
        let bad: RawRouting = toml::from_str("[[rules]]\nname = \"x\"\naction = \"reject\"\ncode = 200\n").unwrap();
        let e = build(bad).err().unwrap().to_string();
        assert!(e.contains("(x) code") && e.contains("400 to 699"), "{e}");
        let bad: RawRouting = toml::from_str("[[rules]]\nname = \"x\"\naction = \"explode\"\n").unwrap();
        assert!(build(bad).err().unwrap().to_string().contains("reject, auto-reply, divert, deliver or fork"));
        let app: RawRouting = toml::from_str(
            "[[rules]]\nname = \"d\"\naction = \"deliver\"\napplication = \"crm\"\n\
             [[rules]]\nname = \"f\"\naction = \"fork\"\napplication = \"crm\"\n\
             [[rules]]\nname = \"r\"\naction = \"deliver\"\napplication = \"crm\"\nfallback = \"reject\"\ncode = 503\n",
        )
        .unwrap();
        let c = build(app).unwrap();
        assert_eq!(c.rules[0].action, RuleAction::Deliver { application: "crm".into(), fallback: Fallback::Deliver });
        assert_eq!(c.rules[1].action, RuleAction::Fork { application: "crm".into() });
        assert!(matches!(&c.rules[2].action, RuleAction::Deliver { fallback: Fallback::Reject { code: 503, .. }, .. }));
        let bad: RawRouting = toml::from_str("[[rules]]\nname = \"x\"\naction = \"fork\"\n").unwrap();
        assert!(build(bad).err().unwrap().to_string().contains("(x) application"));
    }
}
