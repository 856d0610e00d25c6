//! Applications driven with values: an application's REGISTER and answers on its connection, federated MESSAGEs
//! (no digest needed) to its agent address and through deliver/fork rules, timers fired by hand.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::*;
use crate::config::routing::{AddrMatch, Rule, RuleAction};
use crate::pool::core::Now;
use crate::pool::PoolStats;
use crate::sip::Limits;

const EDGE: ConnId = ConnId { core: 0, gen: 1, slot: 3 };
const APP: ConnId = ConnId { core: 0, gen: 1, slot: 9 };
const NOW: u64 = 1_700_000_000;

fn echo(queue: usize, fallback: Fallback) -> Application {
    Application {
        name: "echo".into(),
        cert_name: "echo.apps".into(),
        agents: vec!["echo@example.com".into()],
        timeout_ms: 500,
        queue,
        fallback,
    }
}

fn core(app: Application, rules: Vec<Rule>) -> PoolCore {
    let mut s = crate::pool::apps::tests::settings(rules);
    s.apps = table(&[app], 1);
    PoolCore::new(Arc::new(s), 0, 1, Arc::new(PoolStats::default()), now())
}

fn now() -> Now {
    Now { secs: NOW, mono: Instant::now() }
}

fn parse(raw: String) -> Message {
    Message::parse(Bytes::from(raw), &crate::net::conn::peer_limits(&Limits::default())).unwrap()
}

/// A partner's user's MESSAGE, as an edge hands it over.
fn federated(to: &str) -> Message {
    parse(format!(
        "MESSAGE sip:{to} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKf1\r\nMax-Forwards: 70\r\n\
         From: <sip:carol@partner.test>;tag=f1\r\nTo: <sip:{to}>\r\nCall-ID: fed-1\r\nCSeq: 1 MESSAGE\r\n\
         P-Parapet-Federated: partner.test\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    ))
}

fn from_app(method: &str, from: &str, to: &str) -> Message {
    parse(format!(
        "{method} sip:{to} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bKa1\r\nMax-Forwards: 70\r\n\
         From: <sip:{from}>;tag=a1\r\nTo: <sip:{to}>\r\nCall-ID: app-1\r\nCSeq: 1 {method}\r\n\
         Contact: <sip:{from}>\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn drain(c: &mut PoolCore) -> Vec<Action> {
    let mut out = Vec::new();
    c.take_actions(&mut out);
    out
}

/// Status answers sent to `to`.
fn answers(actions: &[Action], to: ConnId) -> Vec<(u16, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { bytes, conn } if *conn == to => {
                let m = Message::parse(bytes.clone(), &Limits::default()).unwrap();
                Some((m.status()?, String::from_utf8_lossy(m.reason()?).into_owned()))
            }
            _ => None,
        })
        .collect()
}

/// Requests sent to the application's connection.
fn to_app(actions: &[Action]) -> Vec<Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { bytes, conn } if *conn == APP => {
                Some(Message::parse(bytes.clone(), &Limits::default()).unwrap()).filter(Message::is_request)
            }
            _ => None,
        })
        .collect()
}

fn deadline(actions: &[Action]) -> Option<u32> {
    actions.iter().find_map(|a| match a {
        Action::Timer { timer: Timer::AppDeadline(id), .. } => Some(*id),
        _ => None,
    })
}

fn register(c: &mut PoolCore, agent: &str) -> Vec<(u16, String)> {
    c.on_app_message(APP, 0, from_app("REGISTER", agent, agent), now());
    answers(&drain(c), APP)
}

/// The application's answer to a request it received.
fn answer(req: &Message, code: u16, extra: &str) -> Message {
    let mut raw = format!("SIP/2.0 {code} Whatever\r\n");
    for v in req.header_lines(HeaderName::Via) {
        raw.push_str(&format!("Via: {}\r\n", String::from_utf8_lossy(v)));
    }
    for h in [HeaderName::From, HeaderName::To, HeaderName::CallId, HeaderName::CSeq] {
        raw.push_str(&format!("{}: {}\r\n", h.as_str(), String::from_utf8_lossy(req.header(h).unwrap())));
    }
    raw.push_str(extra);
    raw.push_str("Content-Length: 0\r\n\r\n");
    parse(raw)
}

fn reject(code: u16) -> Fallback {
    Fallback::Reject { code, reason: "App Away".into() }
}

#[test]
fn registration_only_for_its_own_agents() {
    let mut c = core(echo(4, reject(480)), vec![]);
    assert_eq!(register(&mut c, "echo@example.com"), vec![(200, "OK".to_string())]);
    assert_eq!(register(&mut c, "bob@example.com")[0].0, 403);
    // A MESSAGE From an address that is not its own is refused; From its agent it is routed (bob offline: 480).
    c.on_app_message(APP, 0, from_app("MESSAGE", "bob@example.com", "bob@example.com"), now());
    assert_eq!(answers(&drain(&mut c), APP)[0].0, 403);
    c.on_app_message(APP, 0, from_app("MESSAGE", "echo@example.com", "bob@example.com"), now());
    assert_eq!(answers(&drain(&mut c), APP), vec![(480, "Temporarily Unavailable".to_string())]);
    // Internal headers are not an application's to send.
    let forged = parse(
        String::from_utf8_lossy(from_app("MESSAGE", "echo@example.com", "bob@example.com").bytes())
            .replace("Content-Length: 0", "P-Parapet-Federated: x\r\nContent-Length: 0"),
    );
    c.on_app_message(APP, 0, forged, now());
    assert_eq!(answers(&drain(&mut c), APP)[0].0, 403);
    assert_eq!(c.s.apps.counters(0, 0).unwrap().refused.get(), 3);
}

#[test]
fn a_message_to_an_agent_reaches_the_application_and_its_answer_the_sender() {
    let mut c = core(echo(4, reject(480)), vec![]);
    // Not connected: the application's fallback.
    c.on_message(EDGE, federated("echo@example.com"), now());
    assert_eq!(answers(&drain(&mut c), EDGE), vec![(480, "App Away".to_string())]);
    register(&mut c, "echo@example.com");
    c.on_message(EDGE, federated("echo@example.com"), now());
    let out = drain(&mut c);
    let sent = to_app(&out);
    assert_eq!(sent.len(), 1, "one MESSAGE to the application");
    assert!(sent[0].header(HeaderName::ParapetFederated).is_none(), "internal headers stripped");
    assert_eq!(sent[0].body(), b"hello");
    assert!(deadline(&out).is_some() && answers(&out, EDGE).is_empty());
    c.on_app_message(APP, 0, answer(&sent[0], 200, ""), now());
    let out = drain(&mut c);
    assert_eq!(answers(&out, EDGE), vec![(200, "Whatever".to_string())]);
    // Its Via popped: the edge sees its own on top.
    let Some(Action::Send { bytes, .. }) = out.first() else { panic!("no answer") };
    let m = Message::parse(bytes.clone(), &Limits::default()).unwrap();
    assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bKf1"[..]));
    // A late duplicate answer goes nowhere.
    c.on_app_message(APP, 0, answer(&sent[0], 200, ""), now());
    assert!(answers(&drain(&mut c), EDGE).is_empty());
    // Nor does an answer from another connection, or one naming a core that does not exist.
    c.on_message(EDGE, federated("echo@example.com"), now());
    let sent = to_app(&drain(&mut c));
    let other = ConnId { core: 0, gen: 1, slot: 10 };
    c.on_app_message(other, 0, answer(&sent[0], 200, ""), now());
    assert!(drain(&mut c).is_empty(), "answered by a connection it was not sent to");
    let forged = String::from_utf8_lossy(answer(&sent[0], 200, "").bytes()).replace("z9hG4bKapp0000", "z9hG4bKapp0007");
    c.on_app_message(APP, 0, parse(forged), now());
    assert!(drain(&mut c).is_empty(), "a branch naming no core");
    c.on_app_message(APP, 0, answer(&sent[0], 200, ""), now());
    assert_eq!(answers(&drain(&mut c), EDGE).len(), 1);
    assert_eq!(c.s.apps.counters(0, 0).unwrap().delivered.get(), 2);
}

#[test]
fn a_slow_application_times_out_and_its_queue_is_bounded() {
    let mut c = core(echo(2, reject(504)), vec![]);
    register(&mut c, "echo@example.com");
    c.on_message(EDGE, federated("echo@example.com"), now());
    let first = deadline(&drain(&mut c)).unwrap();
    c.on_message(EDGE, federated("echo@example.com"), now());
    drain(&mut c);
    // The queue (2) is full: the third gets the fallback at once.
    c.on_message(EDGE, federated("echo@example.com"), now());
    assert_eq!(answers(&drain(&mut c), EDGE), vec![(504, "App Away".to_string())]);
    c.on_timer(Timer::AppDeadline(first), now());
    assert_eq!(answers(&drain(&mut c), EDGE), vec![(504, "App Away".to_string())]);
    // Room again.
    c.on_message(EDGE, federated("echo@example.com"), now());
    assert_eq!(to_app(&drain(&mut c)).len(), 1);
    let k = c.s.apps.counters(0, 0).unwrap();
    assert_eq!((k.timed_out.get(), k.queue_full.get()), (1, 1));
    // The connection closes: what waits for it gets the fallback, and the agent is unserved.
    c.on_app_closed(APP, now());
    assert_eq!(answers(&drain(&mut c), EDGE).len(), 2);
    c.on_message(EDGE, federated("echo@example.com"), now());
    assert_eq!(answers(&drain(&mut c), EDGE), vec![(504, "App Away".to_string())]);
}

#[test]
fn a_redirect_hands_the_message_on_to_its_contact() {
    let mut c = core(echo(4, reject(480)), vec![]);
    register(&mut c, "echo@example.com");
    c.on_message(EDGE, federated("echo@example.com"), now());
    let sent = to_app(&drain(&mut c));
    c.on_app_message(APP, 0, answer(&sent[0], 302, "Contact: <sip:nobody@example.com>\r\n"), now());
    // Routed to nobody@, who is no user of ours: the sender hears the new target's answer.
    assert_eq!(answers(&drain(&mut c), EDGE), vec![(404, "Not Found".to_string())]);
}

fn rule(action: RuleAction) -> Rule {
    Rule {
        name: "r".into(),
        priority: 1,
        method: None,
        from: None,
        to: Some(AddrMatch::parse("bob@example.com").unwrap()),
        content_type: None,
        direction: None,
        action,
    }
}

#[test]
fn deliver_and_fork_rules() {
    let deliver = RuleAction::Deliver { application: "echo".into(), fallback: Fallback::Deliver };
    let mut c = core(echo(4, reject(480)), vec![rule(deliver)]);
    // Not connected, fallback "deliver": routed as usual (bob is offline: 480 from the registrar).
    c.on_message(EDGE, federated("bob@example.com"), now());
    assert_eq!(answers(&drain(&mut c), EDGE), vec![(480, "Temporarily Unavailable".to_string())]);
    register(&mut c, "echo@example.com");
    c.on_message(EDGE, federated("bob@example.com"), now());
    let out = drain(&mut c);
    let sent = to_app(&out);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].request_uri(), Some(&b"sip:bob@example.com"[..]), "the Request-URI is kept");
    assert!(answers(&out, EDGE).is_empty(), "the application answers, not bob");
    c.on_timer(Timer::AppDeadline(deadline(&out).unwrap()), now());
    assert_eq!(answers(&drain(&mut c), EDGE), vec![(480, "Temporarily Unavailable".to_string())]);

    let mut c = core(echo(4, reject(480)), vec![rule(RuleAction::Fork { application: "echo".into() })]);
    register(&mut c, "echo@example.com");
    c.on_message(EDGE, federated("bob@example.com"), now());
    let out = drain(&mut c);
    // A copy to the application, and the MESSAGE routed as usual at once.
    assert_eq!(to_app(&out).len(), 1);
    assert_eq!(answers(&out, EDGE), vec![(480, "Temporarily Unavailable".to_string())]);
    c.on_timer(Timer::AppDeadline(deadline(&out).unwrap()), now());
    assert!(answers(&drain(&mut c), EDGE).is_empty(), "a forked copy's timeout answers nobody");
    assert_eq!(c.s.apps.counters(0, 0).unwrap().timed_out.get(), 1);
}

/// Random interleavings (a fixed-seed generator) of MESSAGEs from an edge, the application's REGISTERs, answers
/// (duplicates, redirects, provisional), timers and closes: every MESSAGE from the edge gets exactly one final
/// answer in the end, and no more than `queue` wait for the application at any time.
#[test]
fn any_interleaving_answers_each_message_once() {
    for seed in 1..=40u64 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let fork = rule(RuleAction::Fork { application: "echo".into() });
        let mut c = core(echo(2, reject(480)), vec![fork]);
        let (mut at_app, mut timers, mut finals) = (Vec::<Message>::new(), Vec::<u32>::new(), Vec::<u32>::new());
        let mut sent = 0usize;
        let absorb = |out: Vec<Action>, at_app: &mut Vec<Message>, timers: &mut Vec<u32>, finals: &mut Vec<u32>| {
            for a in out {
                match a {
                    Action::Send { conn, bytes } if conn == EDGE => {
                        let m = Message::parse(bytes, &Limits::default()).unwrap();
                        let b = m.top_via().unwrap().branch().unwrap().to_vec();
                        let k: usize = String::from_utf8_lossy(b.strip_prefix(b"z9hG4bKe").unwrap()).parse().unwrap();
                        if m.status().unwrap() >= 200 {
                            finals[k] += 1;
                            assert!(finals[k] <= 1, "seed {seed}: two final answers to MESSAGE {k}");
                        }
                    }
                    Action::Send { conn, bytes } if conn == APP => {
                        let m = Message::parse(bytes, &Limits::default()).unwrap();
                        if m.is_request() {
                            at_app.push(m);
                        }
                    }
                    Action::Timer { timer: Timer::AppDeadline(id), .. } => timers.push(id),
                    _ => {}
                }
            }
        };
        for _ in 0..300 {
            match next(6) {
                0 => {
                    let to = ["echo@example.com", "bob@example.com"][next(2)];
                    let raw =
                        String::from_utf8_lossy(federated(to).bytes()).replace("z9hG4bKf1", &format!("z9hG4bKe{sent}"));
                    finals.push(0);
                    sent += 1;
                    c.on_message(EDGE, parse(raw), now());
                }
                1 => {
                    let expires = ["600", "0"][next(2)];
                    let raw =
                        String::from_utf8_lossy(from_app("REGISTER", "echo@example.com", "echo@example.com").bytes())
                            .replace("Content-Length: 0", &format!("Expires: {expires}\r\nContent-Length: 0"));
                    c.on_app_message(APP, 0, parse(raw), now());
                }
                2 if !at_app.is_empty() => {
                    let k = next(at_app.len());
                    let req = if next(3) == 0 { at_app[k].clone() } else { at_app.swap_remove(k) };
                    let extra =
                        ["", "", "Contact: <sip:nobody@example.com>\r\n", "Contact: <sip:echo@example.com>\r\n"];
                    let (code, extra) =
                        [(200, extra[0]), (486, extra[1]), (302, extra[2]), (302, extra[3]), (180, "")][next(5)];
                    c.on_app_message(APP, 0, answer(&req, code, extra), now());
                }
                3 if !timers.is_empty() => {
                    let id = timers.swap_remove(next(timers.len()));
                    c.on_timer(Timer::AppDeadline(id), now());
                }
                4 => c.on_app_closed(APP, now()),
                _ => {
                    let to = ["bob@example.com", "echo@example.com", "nobody@example.com"][next(3)];
                    c.on_app_message(APP, 0, from_app("MESSAGE", "echo@example.com", to), now());
                }
            }
            absorb(drain(&mut c), &mut at_app, &mut timers, &mut finals);
            assert!(c.agents.waiting() <= 2, "seed {seed}: the queue bound");
        }
        // Every timer fired (redirects may deliver again, arming new ones): each MESSAGE has its one answer.
        while let Some(id) = timers.pop() {
            c.on_timer(Timer::AppDeadline(id), now());
            absorb(drain(&mut c), &mut at_app, &mut timers, &mut finals);
        }
        assert_eq!(c.agents.waiting(), 0);
        assert!(finals.iter().all(|n| *n == 1), "seed {seed}: answers per MESSAGE {finals:?}");
    }
}
