//! Authorization of watchers and senders: each user's allow/block entries for one user, a whole domain or
//! everyone, with separate rights for seeing presence and for sending instant messages; what is not decided
//! by an entry falls to the deployment's default. Pure and per core: a core holds the entries of the users it
//! owns, so the check runs where the presentity (or the IM recipient) lives.
//!
//! Precedence: the most specific entry that sets the right wins (user > domain > everyone); at the same
//! level block beats allow. A user always sees their own presence and may message themselves.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow,
    Block,
}

impl Decision {
    pub fn parse(s: &str) -> Option<Decision> {
        match s.trim().to_ascii_lowercase().as_str() {
            "allow" => Some(Decision::Allow),
            "block" => Some(Decision::Block),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Block => "block",
        }
    }
}

/// Who an entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An AOR key (`alias@domain`).
    User(String),
    /// Every user of a domain.
    Domain(String),
    Everyone,
}

impl Target {
    /// `*`, `@domain` (or `*@domain`), or `user@domain` / `sip:user@domain`.
    pub fn parse(s: &str) -> Option<Target> {
        let s = s.trim();
        let s = s.strip_prefix("sip:").or_else(|| s.strip_prefix("sips:")).unwrap_or(s);
        if s == "*" {
            return Some(Target::Everyone);
        }
        if let Some(d) = s.strip_prefix("*@").or_else(|| s.strip_prefix('@')) {
            return (!d.is_empty() && !d.contains('@')).then(|| Target::Domain(d.to_ascii_lowercase()));
        }
        let (u, d) = s.split_once('@')?;
        if u.is_empty() || d.is_empty() || d.contains('@') {
            return None;
        }
        Some(Target::User(format!("{}@{}", u.to_ascii_lowercase(), d.to_ascii_lowercase())))
    }

    pub fn to_text(&self) -> String {
        match self {
            Target::User(a) => a.clone(),
            Target::Domain(d) => format!("@{d}"),
            Target::Everyone => "*".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub target: Target,
    /// None: this entry says nothing about presence.
    pub presence: Option<Decision>,
    pub im: Option<Decision>,
}

/// What happens to a watcher the entries say nothing about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceDefault {
    Allow,
    Block,
    /// The watcher is pending until the presentity decides (RFC 3857 watcher information).
    Confirm,
}

impl PresenceDefault {
    pub fn parse(s: &str) -> Option<PresenceDefault> {
        match s.trim().to_ascii_lowercase().as_str() {
            "allow" => Some(PresenceDefault::Allow),
            "block" => Some(PresenceDefault::Block),
            "confirm" | "pending" => Some(PresenceDefault::Confirm),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub presence: PresenceDefault,
    pub im: Decision,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults { presence: PresenceDefault::Allow, im: Decision::Allow }
    }
}

/// The answer for a watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    Allow,
    /// Sees the presentity as offline, and cannot tell.
    Block,
    Pending,
}

#[derive(Debug, Default, Clone)]
pub struct Policy {
    defaults: Defaults,
    rules: HashMap<String, Vec<Rule>>,
}

fn domain_of(aor: &str) -> &str {
    aor.rsplit_once('@').map_or("", |(_, d)| d)
}

impl Policy {
    pub fn new(defaults: Defaults) -> Policy {
        Policy { defaults, rules: HashMap::new() }
    }

    /// Sets (replaces) `owner`'s entry for `rule.target`; an entry with neither right set is removed.
    pub fn set(&mut self, owner: &str, rule: Rule) {
        let list = self.rules.entry(owner.to_string()).or_default();
        list.retain(|r| r.target != rule.target);
        if rule.presence.is_some() || rule.im.is_some() {
            list.push(rule);
        }
        if list.is_empty() {
            self.rules.remove(owner);
        }
    }

    pub fn rules(&self, owner: &str) -> &[Rule] {
        self.rules.get(owner).map_or(&[], Vec::as_slice)
    }

    fn decide(&self, owner: &str, other: &str, right: impl Fn(&Rule) -> Option<Decision>) -> Option<Decision> {
        let rules = self.rules(owner);
        let other_domain = domain_of(other);
        let level = |want: &dyn Fn(&Target) -> bool| {
            let mut found = None;
            for r in rules.iter().filter(|r| want(&r.target)) {
                match right(r) {
                    Some(Decision::Block) => return Some(Decision::Block),
                    Some(Decision::Allow) => found = Some(Decision::Allow),
                    None => {}
                }
            }
            found
        };
        level(&|t| matches!(t, Target::User(a) if a == other))
            .or_else(|| level(&|t| matches!(t, Target::Domain(d) if d == other_domain)))
            .or_else(|| level(&|t| *t == Target::Everyone))
    }

    /// May `watcher` see `owner`'s presence?
    pub fn watch(&self, owner: &str, watcher: &str) -> Watch {
        if owner == watcher {
            return Watch::Allow;
        }
        match self.decide(owner, watcher, |r| r.presence) {
            Some(Decision::Allow) => Watch::Allow,
            Some(Decision::Block) => Watch::Block,
            None => match self.defaults.presence {
                PresenceDefault::Allow => Watch::Allow,
                PresenceDefault::Block => Watch::Block,
                PresenceDefault::Confirm => Watch::Pending,
            },
        }
    }

    /// May `sender` send `owner` instant messages?
    pub fn may_message(&self, owner: &str, sender: &str) -> bool {
        owner == sender || self.decide(owner, sender, |r| r.im).unwrap_or(self.defaults.im) == Decision::Allow
    }
}

/// Entries as the store keeps them, turned into (owner, rule); unusable rows are skipped with a warning.
pub fn rules_from_rows(rows: &[crate::store::PolicyRow]) -> Vec<(String, Rule)> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let Some(target) = Target::parse(&r.target) else {
            tracing::warn!(owner = %r.owner, target = %r.target, "store: unusable policy target skipped");
            continue;
        };
        let presence = r.presence.as_deref().and_then(Decision::parse);
        let im = r.im.as_deref().and_then(Decision::parse);
        out.push((r.owner.to_ascii_lowercase(), Rule { target, presence, im }));
    }
    out
}

impl Policy {
    /// Replaces every entry of the owners `keep` selects; returns the owners whose entries changed.
    pub fn replace(&mut self, rules: &[(String, Rule)], keep: impl Fn(&str) -> bool) -> Vec<String> {
        let mut next: HashMap<String, Vec<Rule>> = HashMap::new();
        for (owner, rule) in rules.iter().filter(|(o, _)| keep(o)) {
            let list = next.entry(owner.clone()).or_default();
            list.retain(|r| r.target != rule.target);
            list.push(rule.clone());
        }
        let mut changed: Vec<String> = Vec::new();
        for (owner, list) in &next {
            if self.rules.get(owner) != Some(list) {
                changed.push(owner.clone());
            }
        }
        for owner in self.rules.keys() {
            if !next.contains_key(owner) {
                changed.push(owner.clone());
            }
        }
        self.rules = next;
        changed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(t: &str, p: Option<Decision>, im: Option<Decision>) -> Rule {
        Rule { target: Target::parse(t).unwrap(), presence: p, im }
    }

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("*"), Some(Target::Everyone));
        assert_eq!(Target::parse("@Example.com"), Some(Target::Domain("example.com".into())));
        assert_eq!(Target::parse("*@example.com"), Some(Target::Domain("example.com".into())));
        assert_eq!(Target::parse("sip:Carol@Example.com"), Some(Target::User("carol@example.com".into())));
        assert_eq!(Target::parse("nobody"), None);
        assert_eq!(Target::parse("a@b@c"), None);
        assert_eq!(Target::parse("@"), None);
    }

    #[test]
    fn user_beats_domain_beats_everyone_block_beats_allow() {
        let mut p = Policy::new(Defaults::default());
        p.set("bob@x", rule("*", Some(Decision::Block), None));
        p.set("bob@x", rule("@x", Some(Decision::Allow), None));
        p.set("bob@x", rule("carol@x", Some(Decision::Block), Some(Decision::Block)));
        assert_eq!(p.watch("bob@x", "alice@x"), Watch::Allow, "domain entry");
        assert_eq!(p.watch("bob@x", "carol@x"), Watch::Block, "user entry beats the domain's allow");
        assert_eq!(p.watch("bob@x", "eve@elsewhere"), Watch::Block, "everyone");
        assert_eq!(p.watch("bob@x", "bob@x"), Watch::Allow, "oneself, always");
        assert!(p.may_message("bob@x", "alice@x"), "presence entries do not touch IM");
        assert!(!p.may_message("bob@x", "carol@x"));
        assert!(p.may_message("bob@x", "eve@elsewhere"), "IM default allow");
    }

    #[test]
    fn rights_are_separate() {
        let mut p = Policy::new(Defaults::default());
        p.set("bob@x", rule("carol@x", None, Some(Decision::Block)));
        assert_eq!(p.watch("bob@x", "carol@x"), Watch::Allow);
        assert!(!p.may_message("bob@x", "carol@x"));
        p.set("bob@x", rule("carol@x", Some(Decision::Block), None));
        assert_eq!(p.watch("bob@x", "carol@x"), Watch::Block);
        assert!(p.may_message("bob@x", "carol@x"), "the entry was replaced, IM no longer blocked");
        p.set("bob@x", rule("carol@x", None, None));
        assert!(p.rules("bob@x").is_empty(), "an empty entry is removed");
    }

    #[test]
    fn replace_reports_changed_owners() {
        let mut p = Policy::new(Defaults::default());
        p.set("bob@x", rule("carol@x", Some(Decision::Block), None));
        p.set("dave@x", rule("*", Some(Decision::Allow), None));
        let rules = vec![
            ("dave@x".to_string(), rule("*", Some(Decision::Allow), None)),
            ("erin@x".to_string(), rule("@y", Some(Decision::Block), None)),
            ("other-core@x".to_string(), rule("*", Some(Decision::Block), None)),
        ];
        let mut changed = p.replace(&rules, |o| o != "other-core@x");
        changed.sort();
        assert_eq!(changed, vec!["bob@x".to_string(), "erin@x".to_string()]);
        assert_eq!(p.watch("bob@x", "carol@x"), Watch::Allow);
        assert_eq!(p.watch("erin@x", "z@y"), Watch::Block);
        assert!(p.rules("other-core@x").is_empty());
    }

    #[test]
    fn defaults_and_pending() {
        let mut p = Policy::new(Defaults { presence: PresenceDefault::Confirm, im: Decision::Block });
        assert_eq!(p.watch("bob@x", "alice@x"), Watch::Pending);
        assert!(!p.may_message("bob@x", "alice@x"));
        p.set("bob@x", rule("alice@x", Some(Decision::Allow), Some(Decision::Allow)));
        assert_eq!(p.watch("bob@x", "alice@x"), Watch::Allow);
        assert!(p.may_message("bob@x", "alice@x"));
        // "@y" and "*@y" name the same target: the second entry replaces the first.
        p.set("bob@x", rule("@y", Some(Decision::Allow), None));
        p.set("bob@x", rule("*@y", Some(Decision::Block), None));
        assert_eq!(p.rules("bob@x").len(), 2, "alice's entry and one for @y");
        assert_eq!(p.watch("bob@x", "z@y"), Watch::Block);
    }
}
