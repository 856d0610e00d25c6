//! Routing rules driven with values: federated MESSAGEs (no digest needed) into a one-core pool, answers and
//! forwarded requests out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::*;
use crate::config::routing::{AddrMatch, RoutingConfig, Rule, RuleAction};
use crate::pool::core::{Action, CoreSettings, Now};
use crate::pool::users::Users;
use crate::pool::PoolStats;
use crate::sip::Limits;
use crate::store::directory::{Directory, User};

const DOMAIN: &str = "example.com";

fn rule(name: &str, priority: i32, to: Option<&str>, action: RuleAction) -> Rule {
    Rule {
        name: name.into(),
        priority,
        method: None,
        from: None,
        to: to.map(|t| AddrMatch::parse(t).unwrap()),
        content_type: None,
        direction: None,
        action,
    }
}

fn core(rules: Vec<Rule>) -> PoolCore {
    let now = Now { secs: 1_700_000_000, mono: Instant::now() };
    PoolCore::new(Arc::new(settings(rules)), 0, 1, Arc::new(PoolStats::default()), now)
}

/// One core's settings: users bob and desk, these rules (the applications' tests too).
pub(super) fn settings(mut rules: Vec<Rule>) -> CoreSettings {
    rules.sort_by_key(|r| r.priority);
    let user = |alias: &str| User { alias: alias.into(), password: Some("pw".into()), ..User::default() };
    let users = Users::from_directory(&Directory { users: vec![user("bob"), user("desk")] }, DOMAIN, DOMAIN);
    let mut s = CoreSettings::with_defaults(
        DOMAIN,
        "127.0.0.1:5062".parse().unwrap(),
        vec!["127.0.0.1:5063".parse().unwrap()],
        users,
    );
    s.rules = Arc::new(RulesSlot::new(RuleSet::new(&RoutingConfig { rules, ..Default::default() }, 1, 1)));
    s
}

fn request(method: &str, to: &str, max_forwards: u32) -> Message {
    let event = if method == "SUBSCRIBE" { "Event: presence\r\n" } else { "" };
    let raw = format!(
        "{method} sip:{to} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKf1\r\nMax-Forwards: {max_forwards}\r\n\
         From: <sip:carol@partner.test>;tag=f1\r\nTo: <sip:{to}>\r\nCall-ID: fed-1\r\nCSeq: 1 {method}\r\n{event}\
         P-Parapet-Federated: partner.test\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    );
    Message::parse(Bytes::from(raw), &crate::net::conn::peer_limits(&Limits::default())).unwrap()
}

fn run(c: &mut PoolCore, msg: Message) -> Vec<Action> {
    let now = Now { secs: 1_700_000_000, mono: Instant::now() };
    c.on_message(ConnId { core: 0, gen: 1, slot: 3 }, msg, now);
    let mut out = Vec::new();
    c.take_actions(&mut out);
    out
}

fn answers(actions: &[Action]) -> Vec<(u16, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { bytes, conn } if *conn != NO_ORIGIN => {
                let m = Message::parse(bytes.clone(), &Limits::default()).unwrap();
                Some((m.status()?, String::from_utf8_lossy(m.reason()?).into_owned()))
            }
            _ => None,
        })
        .collect()
}

fn hits(c: &PoolCore) -> Vec<(String, u64)> {
    c.rules.set.hits().into_iter().map(|(n, h)| (n.to_string(), h)).collect()
}

#[test]
fn the_first_matching_rule_by_priority_rejects() {
    let reject = |code| RuleAction::Reject { code, reason: format!("Rule {code}") };
    let mut c = core(vec![rule("late", 50, None, reject(488)), rule("early", 5, Some("bob@example.com"), reject(403))]);
    assert_eq!(answers(&run(&mut c, request("MESSAGE", "bob@example.com", 70))), vec![(403, "Rule 403".into())]);
    assert_eq!(answers(&run(&mut c, request("MESSAGE", "desk@example.com", 70))), vec![(488, "Rule 488".into())]);
    assert_eq!(hits(&c), vec![("early".into(), 1), ("late".into(), 1)]);
}

#[test]
fn no_rule_routes_as_usual() {
    let mut c =
        core(vec![rule("other", 1, Some("@elsewhere.test"), RuleAction::Reject { code: 403, reason: "x".into() })]);
    assert_eq!(
        answers(&run(&mut c, request("MESSAGE", "bob@example.com", 70))),
        vec![(480, "Temporarily Unavailable".into())]
    );
    assert_eq!(hits(&c), vec![("other".into(), 0)]);
}

#[test]
fn divert_retargets_and_a_circle_ends_in_483() {
    let divert = |t: &str| RuleAction::Divert { target: t.into() };
    let mut c = core(vec![rule("to-nobody", 1, Some("bob@example.com"), divert("nobody@example.com"))]);
    assert_eq!(
        answers(&run(&mut c, request("MESSAGE", "bob@example.com", 70))),
        vec![(404, "Not Found".into())],
        "routed to the new target (unknown here), not bob (offline: 480)"
    );
    let mut c = core(vec![
        rule("a", 1, Some("bob@example.com"), divert("desk@example.com")),
        rule("b", 2, Some("desk@example.com"), divert("bob@example.com")),
    ]);
    assert_eq!(answers(&run(&mut c, request("MESSAGE", "bob@example.com", 5))), vec![(483, "Too Many Hops".into())]);
}

#[test]
fn auto_reply_answers_and_sends_the_text_from_the_target() {
    let mut c =
        core(vec![rule("ooo", 1, Some("bob@example.com"), RuleAction::AutoReply { text: "Out of office".into() })]);
    let out = run(&mut c, request("MESSAGE", "bob@example.com", 70));
    assert_eq!(answers(&out), vec![(200, "OK".into())]);
    let sent: Vec<Message> = out
        .iter()
        .filter_map(|a| match a {
            Action::ToEdge { bytes, .. } => Some(Message::parse(bytes.clone(), &Limits::default()).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1, "the reply goes to the partner through the edge");
    assert_eq!(sent[0].request_uri(), Some(&b"sip:carol@partner.test"[..]));
    assert_eq!(aor_of(&sent[0].from().uri), "bob@example.com");
    assert_eq!(sent[0].body(), b"Out of office");
    // A SUBSCRIBE is not a conversation: the rule does not apply and the request goes on as usual.
    let out = run(&mut c, request("SUBSCRIBE", "bob@example.com", 70));
    assert!(answers(&out)
        .iter()
        .all(|(code, _)| *code != 200 || out.iter().all(|a| !matches!(a, Action::ToEdge { .. }))));
    assert_eq!(hits(&c), vec![("ooo".into(), 1)]);
}

#[test]
fn a_new_rule_set_replaces_the_old_on_the_core() {
    let mut c = core(vec![]);
    assert_eq!(
        answers(&run(&mut c, request("MESSAGE", "bob@example.com", 70))),
        vec![(480, "Temporarily Unavailable".into())]
    );
    let cfg = RoutingConfig {
        rules: vec![rule("now", 1, None, RuleAction::Reject { code: 410, reason: "Gone".into() })],
        ..Default::default()
    };
    c.on_rules(Arc::new(RuleSet::new(&cfg, 2, 1)), Now { secs: 1_700_000_001, mono: Instant::now() });
    assert_eq!(c.rules_generation(), 2);
    assert_eq!(answers(&run(&mut c, request("MESSAGE", "bob@example.com", 70))), vec![(410, "Gone".into())]);
}

#[test]
fn remote_users_requests_match_remote_and_internal() {
    use super::super::archive::Direction;
    use crate::config::routing::DirectionMatch;
    let c = core(Vec::new());
    let msg = |to: &str, remote: bool| {
        let mark = if remote { "P-Parapet-Remote: 1\r\n" } else { "" };
        let raw = format!(
            "MESSAGE sip:{to} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKr1\r\nMax-Forwards: 70\r\n\
             From: <sip:bob@example.com>;tag=r1\r\nTo: <sip:{to}>\r\nCall-ID: r-1\r\nCSeq: 1 MESSAGE\r\n{mark}\
             Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(raw), &Limits::default()).unwrap()
    };
    assert_eq!(c.direction_of(&msg("desk@example.com", true)), Direction::Remote);
    assert_eq!(c.direction_of(&msg("desk@example.com", false)), Direction::Internal);
    assert_eq!(c.direction_of(&msg("x@partner.test", true)), Direction::FederatedOut, "to a partner: federated");
    let m = |want, dir| super::direction_matches(want, dir);
    assert!(m(DirectionMatch::Remote, Direction::Remote) && m(DirectionMatch::Internal, Direction::Remote));
    assert!(!m(DirectionMatch::Remote, Direction::Internal) && !m(DirectionMatch::Federated, Direction::Remote));
    assert_eq!(Direction::Remote.as_str(), "remote", "the archive's direction column");
}
