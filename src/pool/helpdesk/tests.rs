//! The help desk with values: the selection alone (round robin, stickiness and its expiry, busy skipped, nobody
//! available), then pool cores (one, and two with the members' states asked across the mesh).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::config::helpdesk::Desk;
use crate::config::routing::RoutingConfig;
use crate::pool::apps::RuleSet;
use crate::pool::core::Now;
use crate::pool::presence::pidf::{self, Rich};
use crate::pool::users::Users;
use crate::pool::{CoreSettings, PoolStats};
use crate::sip::{Limits, Method};
use crate::store::directory::{Directory, User};

const DOMAIN: &str = "example.com";
const T0: u64 = 1_700_000_000;

fn desk(members: &[&str]) -> Desk {
    Desk {
        address: format!("helpdesk@{DOMAIN}"),
        members: members.iter().map(|m| format!("{m}@{DOMAIN}")).collect(),
        stick_s: 600,
        auto_reply: "Nobody is here".into(),
        unpublished_available: true,
        conversations_max: 100,
    }
}

fn aor(a: &str) -> String {
    format!("{a}@{DOMAIN}")
}

/// States from a list of (alias, state); anyone else offline.
fn states(list: &[(&str, MemberState)]) -> impl Fn(&str) -> MemberState {
    let list: Vec<(String, MemberState)> = list.iter().map(|(a, s)| (aor(a), *s)).collect();
    move |m: &str| list.iter().find(|(a, _)| a == m).map_or(MemberState::Offline, |(_, s)| *s)
}

fn assigned(agent: &str) -> Choice {
    Choice::Assigned { agent: aor(agent), evicted: 0 }
}

const AVAILABLE: MemberState = MemberState::Published(Rich::Available);

/// bob and carol, both available; alice's conversation already with bob.
fn alice_with_bob() -> (Desk, DeskState, impl Fn(&str) -> MemberState) {
    let d = desk(&["bob", "carol"]);
    let mut st = DeskState::default();
    let both = states(&[("bob", AVAILABLE), ("carol", AVAILABLE)]);
    assert_eq!(st.choose(&d, &aor("alice"), &both, T0), assigned("bob"));
    (d, st, both)
}

#[test]
fn new_conversations_go_round_robin_and_stay_with_their_member() {
    let d = desk(&["bob", "carol"]);
    let mut st = DeskState::default();
    let both = states(&[("bob", AVAILABLE), ("carol", MemberState::Unpublished)]);
    assert_eq!(st.choose(&d, &aor("alice"), &both, T0), assigned("bob"));
    assert_eq!(st.choose(&d, &aor("dave"), &both, T0), assigned("carol"), "the next conversation, the other");
    assert_eq!(st.choose(&d, &aor("erin"), &both, T0), assigned("bob"), "and round again");
    assert_eq!(st.choose(&d, &aor("alice"), &both, T0 + 10), Choice::Sticky(aor("bob")));
    assert_eq!(st.choose(&d, &aor("dave"), &both, T0 + 10), Choice::Sticky(aor("carol")));
    assert_eq!(st.len(), 3);
}

#[test]
fn stickiness_runs_from_the_last_message_and_expires() {
    let (d, mut st, both) = alice_with_bob();
    // Each message renews it: 599 s after the last one it still holds.
    assert_eq!(st.choose(&d, &aor("alice"), &both, T0 + 500), Choice::Sticky(aor("bob")));
    assert_eq!(st.choose(&d, &aor("alice"), &both, T0 + 1099), Choice::Sticky(aor("bob")));
    // 600 s of silence: a new conversation, the next member in turn.
    assert_eq!(st.choose(&d, &aor("alice"), &both, T0 + 1699), assigned("carol"));
    // The sweep forgets idle conversations.
    st.expire(d.stick_s, T0 + 2298);
    assert_eq!(st.agent_of(&aor("alice")), Some(aor("carol").as_str()));
    st.expire(d.stick_s, T0 + 2299);
    assert!(st.is_empty());
}

#[test]
fn busy_away_closed_and_offline_members_get_no_new_conversation() {
    let d = desk(&["bob", "carol", "dave"]);
    let mut st = DeskState::default();
    for s in [MemberState::Offline, MemberState::Published(Rich::Offline)]
        .into_iter()
        .chain([Rich::Busy, Rich::Away, Rich::Brb, Rich::Dnd].map(MemberState::Published))
    {
        let only_dave = states(&[("bob", s), ("carol", s), ("dave", AVAILABLE)]);
        assert_eq!(st.choose(&d, &aor("alice"), &only_dave, T0), assigned("dave"), "{s:?} skipped");
        st.expire(0, T0);
    }
    // A member who never published counts only if the desk says so.
    let quiet = states(&[("bob", MemberState::Unpublished)]);
    assert_eq!(st.choose(&d, &aor("alice"), &quiet, T0), assigned("bob"));
    let strict = Desk { unpublished_available: false, ..d.clone() };
    let mut st = DeskState::default();
    assert_eq!(st.choose(&strict, &aor("alice"), &quiet, T0), Choice::NoAgent);
    assert!(st.is_empty(), "nothing remembered without a member");
}

#[test]
fn a_busy_member_keeps_their_conversation_an_absent_one_loses_it() {
    let (d, mut st, both) = alice_with_bob();
    let bob_busy = states(&[("bob", MemberState::Published(Rich::Busy)), ("carol", AVAILABLE)]);
    assert_eq!(st.choose(&d, &aor("alice"), &bob_busy, T0 + 1), Choice::Sticky(aor("bob")));
    let bob_closed = states(&[("bob", MemberState::Published(Rich::Offline)), ("carol", AVAILABLE)]);
    assert_eq!(st.choose(&d, &aor("alice"), &bob_closed, T0 + 2), assigned("carol"));
    let carol_gone = states(&[("bob", AVAILABLE)]);
    assert_eq!(st.choose(&d, &aor("alice"), &carol_gone, T0 + 3), assigned("bob"));
    // A member removed by a reload loses their conversations too.
    let only_carol = desk(&["carol"]);
    assert_eq!(st.choose(&only_carol, &aor("alice"), &both, T0 + 4), assigned("carol"));
}

#[test]
fn nobody_available_and_members_writing_to_their_own_desk() {
    let d = desk(&["bob", "carol"]);
    let mut st = DeskState::default();
    assert_eq!(st.choose(&d, &aor("alice"), states(&[]), T0), Choice::NoAgent);
    // bob writes to the desk: carol answers, never bob himself.
    let both = states(&[("bob", AVAILABLE), ("carol", AVAILABLE)]);
    assert_eq!(st.choose(&d, &aor("bob"), &both, T0), assigned("carol"));
    assert_eq!(st.choose(&d, &aor("carol"), states(&[("carol", AVAILABLE)]), T0), Choice::NoAgent);
}

#[test]
fn the_conversation_table_is_bounded_oldest_forgotten_first() {
    let d = Desk { conversations_max: 2, ..desk(&["bob"]) };
    let mut st = DeskState::default();
    let bob = states(&[("bob", AVAILABLE)]);
    assert_eq!(st.choose(&d, &aor("u1"), &bob, T0), assigned("bob"));
    assert_eq!(st.choose(&d, &aor("u2"), &bob, T0 + 1), assigned("bob"));
    assert_eq!(st.choose(&d, &aor("u1"), &bob, T0 + 2), Choice::Sticky(aor("bob")), "u1 now the most recent");
    assert_eq!(st.choose(&d, &aor("u3"), &bob, T0 + 3), Choice::Assigned { agent: aor("bob"), evicted: 1 });
    assert_eq!(st.len(), 2);
    assert!(st.agent_of(&aor("u2")).is_none(), "u2 was the least recently active");
    assert!(st.agent_of(&aor("u1")).is_some());
}

// ---- in pool cores ----

fn settings(desks: Vec<Desk>) -> Arc<CoreSettings> {
    settings_with(desks, |_| {})
}

fn settings_with(desks: Vec<Desk>, f: impl FnOnce(&mut CoreSettings)) -> Arc<CoreSettings> {
    let user = |alias: &str| User { alias: alias.into(), password: Some("pw".into()), ..User::default() };
    let people = ["alice", "bob", "carol", "dave", "erin", "frank", "gina", "hal"];
    let users = Users::from_directory(&Directory { users: people.map(user).to_vec() }, DOMAIN, DOMAIN);
    let edge = crate::pool::core::tests::EDGE.parse().unwrap();
    let mut s = CoreSettings::with_defaults(DOMAIN, "127.0.0.1:5062".parse().unwrap(), vec![edge], users);
    let routing = RoutingConfig { helpdesks: desks, ..Default::default() };
    s.rules = Arc::new(crate::pool::apps::RulesSlot::new(RuleSet::new(&routing, 1, 1)));
    f(&mut s);
    Arc::new(s)
}

fn now(secs: u64) -> Now {
    Now { secs, mono: Instant::now() }
}

fn register(c: &mut PoolCore, alias: &str) {
    assert!(c.registrar.restore(&aor(alias), vec![crate::pool::core::tests::binding(alias, T0 + 3600)], T0));
}

fn publish(c: &mut PoolCore, alias: &str, busy: bool) {
    let activity =
        if busy { "<dm:person id=\"p\"><rpid:activities><rpid:busy/></rpid:activities></dm:person>" } else { "" };
    let doc = format!(
        "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" \
         entity=\"sip:{alias}@{DOMAIN}\"><tuple id=\"t\"><status><basic>open</basic></status></tuple>{activity}</presence>"
    );
    let summary = pidf::summarize(doc.as_bytes()).unwrap();
    // One device each: the new state replaces the old (several would show the most available).
    c.presence.pubs.remove_aor(&aor(alias));
    let body = Some((Bytes::from(doc), crate::pool::presence::PIDF.to_string(), summary));
    c.presence.pubs.publish(&aor(alias), None, Some(600), body, T0).unwrap();
}

/// A MESSAGE to the desk as it reaches the desk's core after authentication (`Stage::Route`).
fn to_desk(c: &mut PoolCore, from: &str, n: u32, at: Now) {
    let raw = format!(
        "MESSAGE sip:helpdesk@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKh{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{from}@{DOMAIN}>;tag=h{n}\r\nTo: <sip:helpdesk@{DOMAIN}>\r\n\
         Call-ID: h-{n}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nhelp"
    );
    let msg = Message::parse(Bytes::from(raw), &Limits::default()).unwrap();
    c.now = at;
    c.resume_stage(crate::pool::Stage::Route, crate::pool::core::tests::conn(), msg);
}

fn take(c: &mut PoolCore) -> Vec<Action> {
    let mut out = Vec::new();
    c.take_actions(&mut out);
    out
}

/// Where the MESSAGE went: the Request-URI's user of each one sent to an edge, and each response's status.
fn outcome(actions: &[Action]) -> (Vec<String>, Vec<u16>) {
    let mut to = Vec::new();
    let mut codes = Vec::new();
    for a in actions {
        match a {
            Action::ToEdge { bytes, .. } => {
                let m = Message::parse(bytes.clone(), &Limits::default()).unwrap();
                assert_eq!(m.method(), Some(&Method::Message));
                assert!(m.to().uri.user_unescaped().starts_with(b"helpdesk"), "To kept: the member sees the desk");
                let u = m.request_uri_parsed().unwrap();
                to.push(String::from_utf8_lossy(&u.user_unescaped()).to_string());
            }
            Action::Send { bytes, .. } => {
                let m = Message::parse(bytes.clone(), &Limits::default()).unwrap();
                codes.extend(m.status());
            }
            _ => {}
        }
    }
    (to, codes)
}

#[test]
fn one_core_assigns_sticks_and_auto_replies() {
    let stats = Arc::new(PoolStats::default());
    let mut c = PoolCore::new(settings(vec![desk(&["bob", "carol"])]), 0, 1, stats.clone(), now(T0));
    register(&mut c, "bob");
    register(&mut c, "carol");
    register(&mut c, "alice");
    publish(&mut c, "carol", false);
    to_desk(&mut c, "alice", 1, now(T0));
    assert_eq!(outcome(&take(&mut c)), (vec!["bob".to_string()], vec![]), "forked to bob's device");
    to_desk(&mut c, "dave", 2, now(T0 + 1));
    assert_eq!(outcome(&take(&mut c)).0, vec!["carol"]);
    to_desk(&mut c, "alice", 3, now(T0 + 2));
    assert_eq!(outcome(&take(&mut c)).0, vec!["bob"]);
    assert_eq!((stats.helpdesk_assigned.get(), stats.helpdesk_sticky.get()), (2, 1));
    // Carol busy, bob gone: dave's conversation stays with carol, a new one finds nobody.
    publish(&mut c, "carol", true);
    c.registrar.remove_aor(&aor("bob"));
    to_desk(&mut c, "dave", 4, now(T0 + 3));
    assert_eq!(outcome(&take(&mut c)).0, vec!["carol"]);
    to_desk(&mut c, "erin", 5, now(T0 + 4));
    let out = take(&mut c);
    assert_eq!(outcome(&out), (vec![], vec![200]), "200 at once; erin is not registered: no auto-reply device");
    assert_eq!(stats.helpdesk_no_agent.get(), 1);
    // alice (registered) finds nobody either: 200, then the auto-reply to her device, From the desk.
    to_desk(&mut c, "alice", 6, now(T0 + 5));
    let out = take(&mut c);
    let replies = crate::pool::core::tests::to_edge(&out);
    assert_eq!(replies.len(), 1, "the auto-reply");
    let reply = &replies[0].1;
    assert_eq!(reply.request_uri(), Some(&b"sip:alice@192.0.2.1:5000;transport=tls"[..]));
    assert!(reply.from().uri.user_unescaped().starts_with(b"helpdesk"));
    assert_eq!(reply.body(), b"Nobody is here");
    assert_eq!(stats.helpdesk_no_agent.get(), 2);
    // Idle conversations are forgotten by the sweep.
    c.on_tick(now(T0 + 10_000));
    assert!(c.hd.desk(&aor("helpdesk")).is_some_and(DeskState::is_empty));
}

#[test]
fn members_on_other_cores_are_asked_through_the_mesh() {
    let s = settings(vec![desk(&["bob", "carol", "dave", "erin", "frank", "gina", "hal"])]);
    let desk_core = shard_for(aor("helpdesk").as_bytes(), 2);
    let stats = Arc::new(PoolStats::default());
    let mut cores = [0, 1].map(|i| PoolCore::new(s.clone(), i, 2, stats.clone(), now(T0)));
    // The first member of another core is the only one registered.
    let remote = ["bob", "carol", "dave", "erin", "frank", "gina", "hal"]
        .into_iter()
        .find(|m| shard_for(aor(m).as_bytes(), 2) != desk_core)
        .unwrap();
    register(&mut cores[1 - desk_core], remote);
    for round in 0..2 {
        to_desk(&mut cores[desk_core], "alice", round, now(T0));
        let out = take(&mut cores[desk_core]);
        assert_eq!(outcome(&out), (vec![], vec![]), "nothing decided before the other core answers");
        let ask = out.into_iter().find_map(|a| match a {
            Action::Mesh { msg: PoolMsg::Helpdesk(m), .. } => Some(m),
            _ => None,
        });
        let ask = ask.expect("a question to the other core");
        if round == 1 {
            // The other core never answers: after the timeout its members count as offline.
            cores[desk_core].on_tick(Now { secs: T0 + 2, mono: Instant::now() + Duration::from_secs(2) });
            let out = take(&mut cores[desk_core]);
            assert_eq!(outcome(&out).1, vec![200], "nobody: 200 and the auto-reply");
            assert_eq!(stats.helpdesk_no_agent.get(), 1);
            break;
        }
        cores[1 - desk_core].on_mesh(PoolMsg::Helpdesk(ask), now(T0));
        let back = take(&mut cores[1 - desk_core]).into_iter().find_map(|a| match a {
            Action::Mesh { core, msg } if core == desk_core => Some(msg),
            _ => None,
        });
        cores[desk_core].on_mesh(back.expect("states back"), now(T0));
        let out = take(&mut cores[desk_core]);
        // Diverted to the member's core, which forks it.
        let fwd = out.into_iter().find_map(|a| match a {
            Action::Mesh { msg: PoolMsg::Request { stage, origin, bytes }, .. } => Some((stage, origin, bytes)),
            _ => None,
        });
        let (stage, origin, bytes) = fwd.expect("the MESSAGE handed to the member's core");
        let m = Message::parse(bytes.clone(), &Limits::default()).unwrap();
        assert_eq!(m.request_uri(), Some(format!("sip:{remote}@{DOMAIN}").as_bytes()));
        cores[1 - desk_core].on_mesh(PoolMsg::Request { stage, origin, bytes }, now(T0));
        assert_eq!(outcome(&take(&mut cores[1 - desk_core])).0, vec![remote.to_string()]);
        assert_eq!(stats.helpdesk_assigned.get(), 1);
    }
}

#[test]
fn desks_come_and_go_with_the_rules_generation() {
    let stats = Arc::new(PoolStats::default());
    let mut c = PoolCore::new(settings(vec![]), 0, 1, stats.clone(), now(T0));
    register(&mut c, "bob");
    // No desk: an unknown address, as for any MESSAGE.
    to_desk(&mut c, "alice", 1, now(T0));
    assert_eq!(outcome(&take(&mut c)), (vec![], vec![404]));
    let with_desk = RoutingConfig { helpdesks: vec![desk(&["bob"])], ..Default::default() };
    c.on_rules(Arc::new(RuleSet::new(&with_desk, 2, 1)), now(T0));
    to_desk(&mut c, "alice", 2, now(T0));
    assert_eq!(outcome(&take(&mut c)).0, vec!["bob"]);
    assert_eq!(c.sizes().helpdesk_conversations, 1);
    // The desk removed: its conversations are forgotten at the next sweep, its address is nobody's again.
    c.on_rules(Arc::new(RuleSet::new(&RoutingConfig::default(), 3, 1)), now(T0 + 1));
    c.on_tick(now(T0 + 1));
    assert_eq!(c.sizes().helpdesk_conversations, 0);
    to_desk(&mut c, "alice", 3, now(T0 + 2));
    assert_eq!(outcome(&take(&mut c)), (vec![], vec![404]));
    assert_eq!(stats.helpdesk_assigned.get(), 1);
}

/// An enterprise front end running the desk watches a member another front end owns (a back-end SUBSCRIBE
/// through the edge, From and Contact the desk) and reads it as the owner's NOTIFYs say: none yet or closed,
/// offline; open, available.
#[test]
fn a_member_held_by_another_front_end_is_watched_through_the_edge() {
    use crate::proto::membership::{owner, Member, MemberState as Lease, Roster};
    let wall = T0 * 1000;
    let m = |n: &str| Member {
        name: n.into(),
        addr: String::new(),
        state: Lease::Active,
        lease_until_ms: wall + 60_000,
        load: 0,
        in_flight: 0,
        users: 0,
    };
    let roster = Arc::new(Roster::new(vec![m("fe1"), m("fe2")]));
    let owner_of = |a: &str| owner(&aor(a), &roster, wall).map(|m| m.name.clone()).unwrap();
    let me = owner_of("helpdesk");
    let people = ["bob", "carol", "dave", "erin", "frank", "gina", "hal"];
    let remote = people.into_iter().find(|p| owner_of(p) != me).unwrap();
    let s = settings_with(vec![desk(&[remote])], |s| s.member = Some(me));
    let stats = Arc::new(PoolStats::default());
    let mut c = PoolCore::new(s, 0, 1, stats.clone(), now(T0));
    c.on_roster(roster, wall, now(T0));
    take(&mut c);
    c.on_tick(now(T0));
    let subs: Vec<Message> = crate::pool::core::tests::to_edge(&take(&mut c)).into_iter().map(|(_, m)| m).collect();
    assert_eq!(subs.len(), 1, "one watch: {subs:?}");
    let sub = &subs[0];
    assert_eq!(sub.method(), Some(&Method::Subscribe));
    assert_eq!(sub.request_uri(), Some(format!("sip:{}", aor(remote)).as_bytes()));
    assert_eq!(aor_of(&sub.from().uri), aor("helpdesk"), "the desk is the watcher");
    assert_eq!(c.hd.watched(), 1);
    c.on_tick(now(T0 + 1));
    assert!(crate::pool::core::tests::to_edge(&take(&mut c)).is_empty(), "not again before its refresh");

    // No NOTIFY yet: offline.
    to_desk(&mut c, "alice", 1, now(T0 + 1));
    take(&mut c);
    assert_eq!(stats.helpdesk_no_agent.get(), 1);

    let notify = |c: &mut PoolCore, n: u32, basic: &str| {
        let body = format!(
            "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:{}\">\
             <tuple id=\"t\"><status><basic>{basic}</basic></status></tuple></presence>",
            aor(remote)
        );
        let raw = format!(
            "NOTIFY sip:helpdesk@{DOMAIN};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKn{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{}>;tag=owner\r\nTo: <sip:helpdesk@{DOMAIN}>;tag={}\r\n\
             Call-ID: {}\r\nCSeq: {n} NOTIFY\r\nEvent: presence\r\nSubscription-State: active;expires=600\r\n\
             Content-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{body}",
            aor(remote),
            String::from_utf8_lossy(sub.from().tag().unwrap()),
            String::from_utf8_lossy(sub.call_id()),
            body.len()
        );
        let msg = Message::parse(Bytes::from(raw), &Limits::default()).unwrap();
        c.resume_stage(crate::pool::Stage::Route, crate::pool::core::tests::conn(), msg);
        outcome(&take(c)).1
    };
    assert_eq!(notify(&mut c, 1, "open"), vec![200]);
    assert_eq!(stats.helpdesk_member_notifies.get(), 1);
    to_desk(&mut c, "alice", 2, now(T0 + 2));
    let sent = crate::pool::core::tests::to_edge(&take(&mut c));
    assert_eq!(stats.helpdesk_assigned.get(), 1, "open: the conversation is the member's");
    assert_eq!(sent.len(), 1, "{sent:?}");
    let fwd = &sent[0].1;
    assert_eq!(fwd.method(), Some(&Method::Message));
    assert_eq!(fwd.request_uri(), Some(format!("sip:{}", aor(remote)).as_bytes()));
    let route = fwd.header(crate::sip::HeaderName::Route).unwrap();
    assert!(route.starts_with(b"<sip:member@"), "through the edge to the member's owner, not loaded here");
    assert!(!c.holds_user(&aor(remote)), "the member stays with its owner");

    assert_eq!(notify(&mut c, 2, "closed"), vec![200]);
    to_desk(&mut c, "dave", 3, now(T0 + 3));
    take(&mut c);
    assert_eq!((stats.helpdesk_assigned.get(), stats.helpdesk_no_agent.get()), (1, 2), "closed: nobody");

    // The owner grants 60 s of the 600 asked: refreshed after 30.
    let h = |n| String::from_utf8_lossy(sub.header(n).unwrap()).to_string();
    use crate::sip::HeaderName as H;
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=owner\r\nCall-ID: {}\r\nCSeq: 1 SUBSCRIBE\r\n\
         Expires: 60\r\nContent-Length: 0\r\n\r\n",
        h(H::Via),
        h(H::From),
        h(H::To),
        h(H::CallId)
    );
    c.on_response(Message::parse(Bytes::from(ok), &Limits::default()).unwrap());
    c.on_tick(now(T0 + 32));
    assert!(crate::pool::core::tests::to_edge(&take(&mut c)).is_empty(), "not yet");
    c.on_tick(now(T0 + 33));
    let refresh = crate::pool::core::tests::to_edge(&take(&mut c));
    assert_eq!(refresh.len(), 1, "refreshed at half of what was granted");
    assert_eq!(refresh[0].1.call_id(), sub.call_id(), "in its dialog");

    // The desk removed: its watch ends (an unsubscribe).
    c.on_rules(Arc::new(RuleSet::new(&RoutingConfig::default(), 3, 1)), now(T0 + 40));
    c.on_tick(now(T0 + 40));
    let out = crate::pool::core::tests::to_edge(&take(&mut c));
    assert!(out.iter().any(|(_, m)| m.header(crate::sip::HeaderName::Expires) == Some(&b"0"[..])), "unsubscribed");
    assert_eq!(c.hd.watched(), 0);
}
