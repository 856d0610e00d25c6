//! The help desk in an enterprise pool (`up --front-ends 3`): `up`'s demo desk (`helpdesk@`, members bob and
//! carol) runs on the front end owning its address; a member owned by another front end (found by the leases in
//! the store) is watched through the edge, so once that member (pjsip) publishes open a user's MESSAGE to the desk
//! reaches it; published closed, and unregistered, the user gets the desk's auto-reply. The other member stays
//! unregistered: nobody else can take the conversation.

use std::time::{Duration, Instant};

use crate::pjsua::Agent;
use crate::presence_pjsip::publish;
use crate::support_members::Enterprise;

/// `up`'s demo desk's auto-reply (`config::helpdesk`'s default text).
const AUTO_REPLY_FROM: &str = "helpdesk@";

fn agent(pool: &Enterprise, user: &str) -> Agent {
    let u = pool.app.user(user);
    let mut a = Agent::spawn(&pool.app, user, &u.alias, &u.password);
    let ev = a.register();
    a.check(ev.int("code") == Some(200), || format!("{user} REGISTER: {ev}"));
    a
}

/// alice messages the desk until the outcome is `reach` (the member receives it) or the auto-reply (the
/// watched state may lag the member's change by a NOTIFY); fails when it is still the other one at the deadline.
fn desk_until(alice: &mut Agent, member: &mut Agent, desk: &str, reach: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        alice.discard("message");
        member.discard("message");
        let st = alice.message(desk, &format!("{what} #{n}"));
        alice.check(st.int("code") == Some(200), || format!("{what}: MESSAGE to the desk: {st}"));
        // The desk's answer is the member's 200 (diverted) or its own 200 then the auto-reply: wait for either.
        let until = Instant::now() + Duration::from_secs(5);
        let (got_member, got_auto) = loop {
            let m = !member.pending("message").is_empty();
            let a = alice.pending("message").iter().any(|e| e.str("from").is_some_and(|f| f.contains(AUTO_REPLY_FROM)));
            if m || a || Instant::now() > until {
                break (m, a);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        alice.check(!(got_member && got_auto), || format!("{what}: both the member and the auto-reply"));
        if (reach && got_member) || (!reach && got_auto) {
            return;
        }
        alice.check(Instant::now() < deadline, || {
            format!("{what}: still member={got_member} auto-reply={got_auto} after {n} messages")
        });
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn pool_helpdesk_reaches_a_member_held_by_another_front_end() {
    let pool = Enterprise::start("pool-desk", &["fe1", "fe2", "fe3"]);
    let d = pool.app.domain.clone();
    let desk = format!("sip:helpdesk@{d}");
    let Some(desk_owner) = pool.owner(&format!("helpdesk@{d}")) else { pool.app.fail("the desk has no owner") };
    let owners: Vec<(&str, Option<String>)> =
        ["bob", "carol"].iter().map(|m| (*m, pool.owner(&format!("{m}@{d}")))).collect();
    let Some((member, _)) = owners.iter().find(|(_, o)| o.as_deref() != Some(desk_owner.as_str())) else {
        pool.app.fail(&format!("the desk ({desk_owner}) and both members share a front end: {owners:?}"));
    };
    eprintln!("[pool-desk] desk on {desk_owner}; members {owners:?}; watching {member}");

    let mut alice = agent(&pool, "alice");
    let mut m = agent(&pool, member);
    publish(&mut m, "online", "at the desk");
    desk_until(&mut alice, &mut m, &desk, true, "open member");
    let got = m.received();
    m.check(got.str("from").is_some_and(|f| f.contains(&format!("alice@{d}"))), || format!("From kept: {got}"));
    m.check(got.str("to").is_some_and(|t| t.contains("helpdesk@")), || format!("To kept (the desk): {got}"));

    publish(&mut m, "offline", "gone home");
    desk_until(&mut alice, &mut m, &desk, false, "closed member");

    publish(&mut m, "online", "back");
    desk_until(&mut alice, &mut m, &desk, true, "open again");
    m.send(r#"{"cmd":"unregister"}"#);
    desk_until(&mut alice, &mut m, &desk, false, "unregistered member");
}
