//! The archive decisions driven with values: a federated MESSAGE (no digest needed) into a core, the row or the
//! refusal out, the store thread's gate flipped by hand.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::*;
use crate::pool::core::{CoreSettings, Now};
use crate::pool::users::Users;
use crate::pool::PoolStats;
use crate::sip::Limits;
use crate::store::directory::{Directory, User};

const DOMAIN: &str = "example.com";

fn core(config: ArchiveConfig) -> (PoolCore, Arc<ArchiveGate>) {
    let user = |alias: &str| User { alias: alias.into(), password: Some("pw".into()), ..User::default() };
    let users = Users::from_directory(&Directory { users: vec![user("bob")] }, DOMAIN, DOMAIN);
    let mut s = CoreSettings::with_defaults(
        DOMAIN,
        "127.0.0.1:5062".parse().unwrap(),
        vec!["127.0.0.1:5063".parse().unwrap()],
        users,
    );
    let gate = Arc::new(ArchiveGate::default());
    s.archive = ArchiveSettings { config: Some(config), gate: gate.clone() };
    let now = Now { secs: 1_700_000_000, mono: Instant::now() };
    (PoolCore::new(Arc::new(s), 0, 1, Arc::new(PoolStats::default()), now), gate)
}

fn federated_message(n: u32) -> Message {
    let raw = format!(
        "MESSAGE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5063;branch=z9hG4bKf{n}\r\nMax-Forwards: 70\r\n\
         From: <sip:carol@partner.test>;tag=f{n}\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: fed-{n}\r\nCSeq: 1 MESSAGE\r\n\
         P-Parapet-Federated: partner.test\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    );
    Message::parse(Bytes::from(raw), &crate::net::conn::peer_limits(&Limits::default())).unwrap()
}

fn run(c: &mut PoolCore, n: u32) -> Vec<Action> {
    let now = Now { secs: 1_700_000_000, mono: Instant::now() };
    c.on_message(ConnId { core: 0, gen: 1, slot: 3 }, federated_message(n), now);
    let mut out = Vec::new();
    c.take_actions(&mut out);
    out
}

fn rows(actions: &[Action]) -> Vec<&ArchiveRow> {
    actions.iter().filter_map(|a| if let Action::Archive(r) = a { Some(r) } else { None }).collect()
}

fn statuses(actions: &[Action]) -> Vec<(u16, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { bytes, .. } => {
                let m = Message::parse(bytes.clone(), &Limits::default()).unwrap();
                Some((m.status()?, String::from_utf8_lossy(m.reason()?).into_owned()))
            }
            _ => None,
        })
        .collect()
}

fn config(policy: ArchivePolicy, critical: bool) -> ArchiveConfig {
    ArchiveConfig { policy, critical, ..ArchiveConfig::default() }
}

#[test]
fn the_more_inclusive_party_decides() {
    let mut c = config(ArchivePolicy::None, false);
    assert!(!wanted(&c, "a@example.com", "b@example.com", Direction::Internal));
    c.domains.insert("partner.test".into(), ArchivePolicy::Federated);
    assert!(wanted(&c, "a@example.com", "x@partner.test", Direction::FederatedOut));
    assert!(!wanted(&c, "a@example.com", "b@example.com", Direction::Internal));
    c.users.insert("b@example.com".into(), ArchivePolicy::All);
    assert!(wanted(&c, "a@example.com", "b@example.com", Direction::Internal), "b's own entry asks for all");
    c.policy = ArchivePolicy::All;
    c.users.insert("b@example.com".into(), ArchivePolicy::None);
    assert!(wanted(&c, "a@example.com", "b@example.com", Direction::Internal), "a's default still asks");
}

#[test]
fn a_federated_message_becomes_a_row_with_its_direction() {
    let (mut c, _) = core(config(ArchivePolicy::Federated, false));
    let out = run(&mut c, 1);
    let r = rows(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].sender.as_str(), r[0].recipient.as_str(), r[0].direction.as_str()),
        ("carol@partner.test", "bob@example.com", "federated-in")
    );
    assert_eq!(
        (r[0].content_type.as_str(), r[0].body.as_str(), r[0].call_id.as_str()),
        ("text/plain", "hello", "fed-1")
    );
    assert_eq!(r[0].at_ms, 1_700_000_000_000);
    assert_eq!(statuses(&out), vec![(480, "Temporarily Unavailable".into())], "then routed as usual (bob offline)");
    assert_eq!(c.pstats.messages_archived.get(), 1);
}

#[test]
fn policy_none_archives_nothing() {
    let (mut c, _) = core(config(ArchivePolicy::None, true));
    assert!(rows(&run(&mut c, 1)).is_empty());
}

#[test]
fn critical_mode_refuses_while_unwritable_and_resumes() {
    let (mut c, gate) = core(config(ArchivePolicy::All, true));
    gate.failing.store(true, Ordering::Relaxed);
    let out = run(&mut c, 1);
    assert!(rows(&out).is_empty());
    assert_eq!(statuses(&out), vec![(503, REFUSED.1.into())]);
    assert_eq!(c.pstats.messages_refused_archive.get(), 1);
    gate.failing.store(false, Ordering::Relaxed);
    gate.pending.store(gate.pending_max.load(Ordering::Relaxed), Ordering::Relaxed);
    assert_eq!(statuses(&run(&mut c, 2)), vec![(503, REFUSED.1.into())], "over the bound: refused too");
    gate.pending.store(0, Ordering::Relaxed);
    let out = run(&mut c, 3);
    assert_eq!(rows(&out).len(), 1, "writable again: archived");
    assert_eq!(statuses(&out), vec![(480, "Temporarily Unavailable".into())]);
}

#[test]
fn without_critical_mode_the_loss_is_counted_and_im_flows() {
    let (mut c, gate) = core(config(ArchivePolicy::All, false));
    gate.failing.store(true, Ordering::Relaxed);
    let out = run(&mut c, 1);
    assert_eq!(rows(&out).len(), 1, "the store failing: the row waits for it (within the bound)");
    assert_eq!(statuses(&out), vec![(480, "Temporarily Unavailable".into())]);
    gate.pending.store(gate.pending_max.load(Ordering::Relaxed), Ordering::Relaxed);
    let out = run(&mut c, 2);
    assert!(rows(&out).is_empty());
    assert_eq!(statuses(&out), vec![(480, "Temporarily Unavailable".into())]);
    assert_eq!(c.pstats.archive_lost.get(), 1);
}
