//! The store conformance suite: the same checks on the embedded SQLite store and on a real PostgreSQL server
//! (every `Store` method, durability across a reopen, `changed_elsewhere` between two connections), then what
//! only a server can do: go away and come back (refused writes, reconnection, the soft-state backlog).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use parapet::store::archive::{ArchiveQuery, ArchiveRow};
use parapet::store::postgres::PgStore;
use parapet::store::rollup::{Combine, RollupRow};
use parapet::store::sqlite::SqliteStore;
use parapet::store::thread::{Op, Reply, StoreHandle};
use parapet::store::{
    ContactRow, CredentialRow, DirectoryRow, DirectoryWrite, MemberRow, PolicyRow, StateRow, StateWrite, Store,
};

use super::{support, support_pg};

fn policy(owner: &str, target: &str, p: Option<&str>, im: Option<&str>) -> PolicyRow {
    PolicyRow { owner: owner.into(), target: target.into(), presence: p.map(Into::into), im: im.map(Into::into) }
}

fn contact(owner: &str, uri: &str, group: &str) -> ContactRow {
    ContactRow { owner: owner.into(), uri: uri.into(), display_name: format!("{uri} name"), group: group.into() }
}

fn state(kind: &str, key: &str, v: &[u8], at: u64) -> StateRow {
    StateRow { kind: kind.into(), key: key.into(), value: v.to_vec(), expires_at: at }
}

/// Every method of the trait, then a reopen (`open` makes a new connection to the same data), then two
/// connections noticing each other's writes.
fn conformance(open: &dyn Fn() -> Box<dyn Store>) {
    let mut s = open();
    assert!(s.policies().expect("store call").is_empty(), "a new store is empty");
    s.put_policy(&policy("bob@x", "carol@x", Some("block"), Some("block"))).expect("store call");
    s.put_policy(&policy("bob@x", "*", Some("allow"), None)).expect("store call");
    s.put_policy(&policy("bob@x", "carol@x", Some("block"), None)).expect("store call");
    s.put_policy(&policy("alice@x", "@y", None, Some("allow"))).expect("store call");
    assert!(s.put_policy(&policy("bob@x", "*", Some("maybe"), None)).is_err(), "bad values are refused");
    assert_eq!(
        s.policies().expect("store call"),
        vec![
            policy("alice@x", "@y", None, Some("allow")),
            policy("bob@x", "*", Some("allow"), None),
            policy("bob@x", "carol@x", Some("block"), None)
        ]
    );
    s.put_policy(&policy("alice@x", "@y", None, None)).expect("store call");
    assert_eq!(s.policies().expect("store call").len(), 2, "an entry with no right set is deleted");
    assert!(s.delete_policy("bob@x", "*").expect("store call"));
    assert!(!s.delete_policy("bob@x", "*").expect("store call"), "a second delete finds nothing");

    s.put_contact(&contact("alice@x", "sip:bob@x", "Work")).expect("store call");
    s.put_contact(&contact("alice@x", "sip:carol@x", "")).expect("store call");
    s.put_contact(&contact("dave@x", "sip:bob@x", "")).expect("store call");
    let mut renamed = contact("alice@x", "sip:bob@x", "Friends");
    renamed.display_name = "Bobby".into();
    s.put_contact(&renamed).expect("store call");
    assert_eq!(
        s.contacts("alice@x").expect("store call"),
        vec![contact("alice@x", "sip:carol@x", ""), renamed.clone()]
    );
    assert!(s.contacts("nobody@x").expect("store call").is_empty());
    assert!(s.delete_contact("dave@x", "sip:bob@x").expect("store call"));
    assert!(!s.delete_contact("dave@x", "sip:bob@x").expect("store call"));

    s.write_states(&[
        StateWrite::Put(state("reg", "a", b"\x00\xffbinary", 100)),
        StateWrite::Put(state("reg", "b", b"b", 50)),
        StateWrite::Put(state("sub", "c", b"c", 100)),
    ])
    .expect("store call");
    s.write_states(&[
        StateWrite::Delete { kind: "sub".into(), key: "c".into() },
        StateWrite::Put(state("reg", "a", b"a2", 200)),
        StateWrite::Put(state("pub", "a", b"p", u64::MAX >> 2)),
    ])
    .expect("store call");
    let live = vec![state("pub", "a", b"p", u64::MAX >> 2), state("reg", "a", b"a2", 200)];
    assert_eq!(s.states(60).expect("store call"), live, "b expired, c deleted, a replaced");
    assert_eq!(s.states(10).expect("store call"), live, "expired rows are gone for good");
    drop(s);

    // Durable: a new connection sees all of it.
    let mut a = open();
    assert_eq!(a.policies().expect("store call"), vec![policy("bob@x", "carol@x", Some("block"), None)]);
    assert_eq!(a.contacts("alice@x").expect("store call").len(), 2);
    assert_eq!(a.states(60).expect("store call"), live);

    // Another writer's change is news; our own is not.
    let mut b = open();
    a.changed_elsewhere().expect("store call");
    assert!(!a.changed_elsewhere().expect("store call"), "nothing happened");
    a.put_policy(&policy("erin@x", "*", Some("block"), None)).expect("store call");
    assert!(!a.changed_elsewhere().expect("store call"), "its own writes are not news");
    b.put_contact(&contact("erin@x", "sip:bob@x", "")).expect("store call");
    assert!(a.changed_elsewhere().expect("store call"), "a contact written elsewhere");
    assert!(!a.changed_elsewhere().expect("store call"), "reported once");
    b.delete_policy("erin@x", "*").expect("store call");
    a.put_policy(&policy("erin@x", "@z", None, Some("block"))).expect("store call");
    assert!(a.changed_elsewhere().expect("store call"), "a change elsewhere between two of ours is not hidden by ours");
    members(&mut *a, &mut *b);
    directory(&mut *a, &mut *b);
    rollups(&mut *a, &mut *b);
    fence(&mut *a, &mut *b);
    archive_conformance(open);
}

fn rollup(minute: u64, metric: &str, labels: &str, combine: Combine, value: f64) -> RollupRow {
    RollupRow { minute, role: "pool".into(), metric: metric.into(), labels: labels.into(), combine, value }
}

/// Per-minute rollups from several writers (the members of a pool): counters add up, gauges keep the peak.
fn rollups(a: &mut dyn Store, b: &mut dyn Store) {
    let m = "parapet_pool_messages_total";
    let p = r#"partner="edge.partner.test""#;
    a.write_rollups(&[rollup(60, m, "", Combine::Sum, 2.0), rollup(60, "conns", "", Combine::Max, 5.0)])
        .expect("store call");
    b.write_rollups(&[
        rollup(60, m, "", Combine::Sum, 3.0),
        rollup(60, "conns", "", Combine::Max, 4.0),
        rollup(120, m, p, Combine::Sum, 1.5),
    ])
    .expect("store call");
    let rows = a.rollups(0).expect("store call");
    assert_eq!(
        rows,
        vec![
            rollup(60, "conns", "", Combine::Max, 5.0),
            rollup(60, m, "", Combine::Sum, 5.0),
            rollup(120, m, p, Combine::Sum, 1.5)
        ]
    );
    assert_eq!(b.rollups(120).expect("store call").len(), 1, "from a minute on");
    assert_eq!(b.prune_rollups(120).expect("store call"), 2, "minutes before 120 go");
    assert_eq!(a.rollups(0).expect("store call"), vec![rollup(120, m, p, Combine::Sum, 1.5)]);
}

/// The synced directory: people (a disabled one too), sources' marks, operator-set credentials.
fn directory(a: &mut dyn Store, b: &mut dyn Store) {
    assert!(a.directory_rows().expect("store call").is_empty());
    let ann = DirectoryRow {
        alias: "ann".into(),
        source: "corp".into(),
        key: "uid=ann,dc=corp".into(),
        display_name: "Ann Lée".into(),
        first: "Ann".into(),
        last: "Lée".into(),
        ha1_md5: Some("0".repeat(32)),
        ..Default::default()
    };
    let bob = DirectoryRow {
        alias: "bob".into(),
        disabled_at: Some(77),
        ha1_md5: None,
        pool: "branch".into(),
        ..ann.clone()
    };
    a.write_directory(
        &[DirectoryWrite::Put(Box::new(bob.clone())), DirectoryWrite::Put(Box::new(ann.clone()))],
        &[("corp".into(), "20261203120000Z".into())],
    )
    .expect("store call");
    assert_eq!(b.directory_rows().expect("store call"), vec![ann.clone(), bob], "ordered by alias, all fields");
    // A home pool set, then moved: the edge routes by it (`[edge.homes] database`).
    let ann2 = DirectoryRow { title: "CTO".into(), pool: "hq".into(), ..ann };
    b.write_directory(
        &[DirectoryWrite::Put(Box::new(ann2.clone())), DirectoryWrite::Delete { alias: "bob".into() }],
        &[("corp".into(), "20261203130000Z".into()), ("lab".into(), "1".into())],
    )
    .expect("store call");
    assert_eq!(a.directory_rows().expect("store call"), vec![ann2]);
    let marks = a.sync_marks().expect("store call");
    assert_eq!(marks, vec![("corp".to_string(), "20261203130000Z".to_string()), ("lab".to_string(), "1".to_string())]);
    let c = CredentialRow { alias: "ann".into(), ha1_md5: "a".repeat(32), ha1_sha256: "b".repeat(64) };
    a.put_credential(&c).expect("store call");
    let c2 = CredentialRow { ha1_md5: "c".repeat(32), ..c };
    b.put_credential(&c2).expect("store call");
    assert_eq!(a.credentials().expect("store call"), vec![c2], "a second set-password replaces the first");
}

fn archived(at_ms: i64, from: &str, to: &str, dir: &str, body: &str) -> ArchiveRow {
    ArchiveRow {
        id: 0,
        at_ms,
        sender: from.into(),
        recipient: to.into(),
        direction: dir.into(),
        content_type: "text/plain;charset=UTF-8".into(),
        body: body.into(),
        call_id: format!("call-{at_ms}"),
    }
}

/// The IM archive: append, every filter of the search, paging by id, purge, durability across a reopen.
fn archive_conformance(open: &dyn Fn() -> Box<dyn Store>) {
    let mut s = open();
    let all = |after_id: i64| ArchiveQuery { after_id, limit: 100, ..ArchiveQuery::default() };
    assert!(s.search_archive(&all(0)).expect("store call").is_empty());
    s.write_archive(&[
        archived(1_000, "alice@x", "bob@x", "internal", "hello bob"),
        archived(2_000, "bob@x", "alice@x", "internal", "hi alice \u{e9}t\u{e9}"),
        archived(3_000, "carol@partner.test", "bob@x", "federated-in", "from afar"),
    ])
    .expect("store call");
    s.write_archive(&[archived(4_000, "alice@x", "dave@other.test", "federated-out", "quote: 'x' 100%_")])
        .expect("store call");
    assert!(
        s.write_archive(&[archived(5_000, "a@x", "b@x", "sideways", "bad direction")]).is_err(),
        "a row the schema refuses is an error"
    );
    let rows = s.search_archive(&all(0)).expect("store call");
    assert_eq!(rows.len(), 4, "the refused batch left nothing");
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "ids grow in archive order");
    let mut first = rows[0].clone();
    first.id = 0;
    assert_eq!(first, archived(1_000, "alice@x", "bob@x", "internal", "hello bob"), "every field round-trips");
    assert_eq!(rows[1].body, "hi alice \u{e9}t\u{e9}");
    let q = |f: &dyn Fn(&mut ArchiveQuery)| {
        let mut q = all(0);
        f(&mut q);
        q
    };
    let bodies = |s: &mut Box<dyn Store>, q: ArchiveQuery| -> Vec<String> {
        s.search_archive(&q).expect("store call").into_iter().map(|r| r.body).collect()
    };
    assert_eq!(bodies(&mut s, q(&|q| q.user = Some("bob@x".into()))).len(), 3, "sender or recipient");
    assert_eq!(
        bodies(
            &mut s,
            q(&|q| {
                q.user = Some("bob@x".into());
                q.peer = Some("carol@partner.test".into());
            })
        ),
        vec!["from afar"]
    );
    assert_eq!(
        bodies(
            &mut s,
            q(&|q| {
                q.since_ms = Some(2_000);
                q.until_ms = Some(4_000);
            })
        ),
        vec!["hi alice \u{e9}t\u{e9}", "from afar"],
        "since inclusive, until exclusive"
    );
    assert_eq!(bodies(&mut s, q(&|q| q.text = Some("100%_".into()))), vec!["quote: 'x' 100%_"], "no wildcards");
    assert!(bodies(&mut s, q(&|q| q.text = Some("HELLO".into()))).is_empty(), "case-sensitive");
    let page = s.search_archive(&ArchiveQuery { limit: 2, ..all(0) }).expect("store call");
    assert_eq!(page.len(), 2);
    let next = s.search_archive(&ArchiveQuery { limit: 2, ..all(page[1].id) }).expect("store call");
    assert_eq!(next.iter().map(|r| r.at_ms).collect::<Vec<_>>(), vec![3_000, 4_000], "the next page");
    drop(s);
    let mut s = open();
    assert_eq!(s.purge_archive(3_000).expect("store call"), 2, "older than the cut");
    assert_eq!(s.purge_archive(3_000).expect("store call"), 0);
    assert_eq!(bodies(&mut s, all(0)), vec!["from afar", "quote: 'x' 100%_"]);
    s.purge_archive(i64::MAX).expect("store call");
}

/// The hand-over fence through two connections (two front ends): once the new owner has claimed a user, the
/// old owner's late soft-state write is refused and leaves the new owner's state alone.
fn fence(old: &mut dyn Store, new: &mut dyn Store) {
    let bob = "bob@fence";
    let row = |v: &[u8]| state("reg", &format!("{bob} c1"), v, u64::MAX >> 2);
    assert!(old.write_states_fenced("nobody@fence", 0, &[]).expect("store call"), "never claimed: generation 0");
    assert!(!old.write_states_fenced("nobody@fence", 1, &[]).expect("store call"), "no such claim");
    let g1 = old.claim_user(bob, "fe1").expect("store call");
    assert_eq!(g1, 1, "a first claim");
    assert!(old.write_states_fenced(bob, g1, &[StateWrite::Put(row(b"old"))]).expect("store call"));
    let g2 = new.claim_user(bob, "fe2").expect("store call");
    assert_eq!(g2, 2, "a claim raises the generation");
    assert_eq!(new.states_of(bob, 0).expect("store call"), vec![row(b"old")], "the new owner loads the flushed state");
    assert!(new.write_states_fenced(bob, g2, &[StateWrite::Put(row(b"new"))]).expect("store call"));
    // The old owner's write-behind, late: refused, nothing of it written (not even its delete).
    let late = [StateWrite::Put(row(b"stale")), StateWrite::Delete { kind: "reg".into(), key: format!("{bob} c1") }];
    assert!(!old.write_states_fenced(bob, g1, &late).expect("store call"), "a stale generation is refused");
    assert_eq!(new.states_of(bob, 0).expect("store call"), vec![row(b"new")]);
    // The same through the write-behind batch: a fenced write among others is skipped alone.
    let fenced = |gen, v: &[u8]| StateWrite::Fenced { aor: bob.into(), gen, write: Box::new(StateWrite::Put(row(v))) };
    let other = state("reg", "carol@fence", b"c", u64::MAX >> 2);
    old.write_states(&[fenced(g1, b"stale"), StateWrite::Put(other.clone())]).expect("store call");
    assert_eq!(new.states_of(bob, 0).expect("store call"), vec![row(b"new")], "the stale one skipped");
    assert_eq!(new.states_of("carol@fence", 0).expect("store call"), vec![other], "the others written");
    new.write_states(&[fenced(g2, b"newer")]).expect("store call");
    assert_eq!(old.states_of(bob, 0).expect("store call"), vec![row(b"newer")]);
    assert_eq!(old.claim_user(bob, "fe1").expect("store call"), 3, "claimed back: the generation goes on");
}

fn member(name: &str, state: &str, until: u64) -> MemberRow {
    MemberRow {
        name: name.into(),
        addr: "127.0.0.1:5071".into(),
        state: state.into(),
        lease_until_ms: until,
        users: 3,
        load: 7,
        in_flight: 3,
    }
}

/// What an enterprise pool keeps in the store: one user's soft state, member leases, the shared nonce key.
fn members(a: &mut dyn Store, b: &mut dyn Store) {
    a.write_states(&[
        StateWrite::Put(state("reg", "bob@x", b"r", 100)),
        StateWrite::Put(state("sub", "bob@x call tag", b"s", 100)),
        StateWrite::Put(state("sub", "bob@x old tag", b"s", 10)),
        StateWrite::Put(state("reg", "bob@xy", b"r", 100)),
        StateWrite::Put(state("reg", "b_b@x", b"r", 100)),
        StateWrite::Put(state("reg", "b%b@x", b"r", 100)),
    ])
    .expect("store call");
    let keys: Vec<_> = a.states_of("bob@x", 50).expect("store call").into_iter().map(|r| r.key).collect();
    assert_eq!(keys, vec!["bob@x", "bob@x call tag"], "exactly bob's live rows (no LIKE wildcards, no bob@xy)");
    assert!(a.states_of("BOB@x", 50).expect("store call").is_empty(), "keys compare exactly");
    assert_eq!(b.states_of("b_b@x", 50).expect("store call").len(), 1);

    a.renew_member(&member("fe2", "active", 10)).expect("store call");
    b.renew_member(&member("fe1", "active", 10)).expect("store call");
    assert!(a.set_member_state("fe1", "draining").expect("store call"));
    assert!(!a.set_member_state("fe9", "draining").expect("store call"), "no such member");
    assert!(a.set_member_state("fe1", "sideways").is_err(), "unknown states are refused");
    b.renew_member(&member("fe1", "active", 20)).expect("store call");
    let rows = a.members().expect("store call");
    assert_eq!(rows, vec![member("fe1", "draining", 20), member("fe2", "active", 10)], "a renewal keeps a drain");
    a.renew_member(&member("fe2", "gone", 0)).expect("store call");
    assert_eq!(b.members().expect("store call")[1].state, "gone");
    a.renew_member(&member("fe2", "active", 30)).expect("store call");
    assert_eq!(b.members().expect("store call")[1].state, "active", "a member coming back is active again");

    assert_eq!(a.shared_secret("nonce", b"first").expect("store call"), b"first");
    assert_eq!(b.shared_secret("nonce", b"second").expect("store call"), b"first", "the first one wins");
    assert_eq!(b.shared_secret("other", b"second").expect("store call"), b"second");
}

fn sqlite_path(dir: &std::path::Path) -> PathBuf {
    dir.join("parapet.db")
}

#[test]
fn store_conformance_sqlite() {
    let dir = support::scratch_dir("conformance-sqlite");
    let path = sqlite_path(&dir);
    conformance(&|| Box::new(SqliteStore::open(&path).expect("store call")));
}

#[test]
fn store_conformance_postgres() {
    let pg = support_pg::start("conformance-pg");
    let url = pg.url();
    let open = || PgStore::open(&url, Instant::now() + Duration::from_secs(10)).expect("store call");
    conformance(&|| Box::new(open()));
    // On PostgreSQL (several front ends writing soft state all the time) only administrative changes are news.
    let (mut a, mut b) = (open(), open());
    a.changed_elsewhere().expect("store call");
    b.write_states(&[StateWrite::Put(state("reg", "z", b"z", 500))]).expect("store call");
    assert!(!a.changed_elsewhere().expect("store call"), "soft state is not an administrative change");
    // Schema versioned: the table records every migration once, however often the store opens.
    let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("store call");
    let versions: Vec<i32> = c
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .expect("store call")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let want: Vec<i32> = parapet::store::postgres::MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(versions, want);
    // Several front ends starting at once: the migration lock lets exactly one apply the schema.
    c.batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;").expect("reset");
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgStore::open(&url, Instant::now() + Duration::from_secs(10)).map(|_| ()))
        })
        .collect();
    for o in opened {
        o.join().expect("thread").expect("concurrent opens all succeed");
    }
    let n: i64 = c.query_one("SELECT count(*) FROM schema_version", &[]).expect("count").get(0);
    assert_eq!(n, want.len() as i64, "each migration recorded once");
    // A database newer than this build is refused, not used.
    c.execute("INSERT INTO schema_version (version) VALUES (999)", &[]).expect("bump");
    let t = Instant::now();
    let e = PgStore::open(&url, Instant::now() + Duration::from_secs(20)).err().expect("refused").to_string();
    assert!(e.contains("unusable") && e.contains("schema version 999, newer than this build"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "refused at once, not retried until the deadline");
}

/// The server goes away (a fast shutdown, as `pg_ctl restart -m fast` does) and comes back: administrative
/// writes fail while it is away (never a false success), the store reconnects by itself, and soft-state
/// writes queued meanwhile reach it, in order, once it is back.
#[test]
fn store_postgres_outage_and_return() {
    let mut pg = support_pg::start("conformance-pg-outage");
    let url = pg.url();
    let store = PgStore::open(&url, Instant::now() + Duration::from_secs(10)).expect("store call");
    let h = StoreHandle::start(Box::new(store)).expect("store call");
    let acked = policy("bob@x", "*", Some("block"), None);
    assert_eq!(h.call_blocking(Op::PutPolicy(acked.clone())).expect("store call"), Reply::Done(true));

    pg.stop().expect("store call");
    let t = Instant::now();
    let refused = h.call_blocking(Op::PutPolicy(policy("bob@x", "carol@x", Some("allow"), None)));
    let e = refused.expect_err("a write with the database away must not be acknowledged");
    assert!(e.to_string().contains("PostgreSQL"), "the error names the store: {e}");
    assert!(t.elapsed() < Duration::from_secs(10), "refused promptly, took {:?}", t.elapsed());
    // Soft state written during the outage: the same row twice (the later wins) and a delete, in order.
    assert!(h.write_state(StateWrite::Put(state("reg", "alice@x", b"1", u64::MAX >> 2))));
    assert!(h.write_state(StateWrite::Put(state("reg", "carol@x", b"1", u64::MAX >> 2))));
    std::thread::sleep(Duration::from_millis(300)); // a separate batch, so that order across batches counts
    assert!(h.write_state(StateWrite::Put(state("reg", "alice@x", b"2", u64::MAX >> 2))));
    assert!(h.write_state(StateWrite::Delete { kind: "reg".into(), key: "carol@x".into() }));

    pg.start_again().expect("store call");
    let deadline = Instant::now() + Duration::from_secs(30);
    let states = loop {
        match h.call_blocking(Op::States { now: 0 }) {
            Ok(Reply::States(rows)) if !rows.is_empty() => break rows,
            other if Instant::now() >= deadline => panic!("the backlog never arrived: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert_eq!(states, vec![state("reg", "alice@x", b"2", u64::MAX >> 2)], "queued writes applied in order");
    assert_eq!(
        h.call_blocking(Op::Policies).expect("store call"),
        Reply::Policies(vec![acked]),
        "the refused write is absent"
    );
    let later = policy("dave@x", "*", Some("allow"), None);
    assert_eq!(h.call_blocking(Op::PutPolicy(later)).expect("store call"), Reply::Done(true), "writes work again");
}

/// Failover to a standby: a primary and its streaming-replication standby behind one multi-host URL with
/// `target_session_attrs=read-write`. The primary dies; writes are refused until the operator promotes the
/// standby; then the store finds it by itself, with what was committed before (replicated) and new writes.
#[test]
fn store_postgres_fails_over_to_a_promoted_standby() {
    let mut primary = support_pg::start("failover-primary");
    let standby = support_pg::standby("failover-standby", &primary);
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=parapet target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let mut s = PgStore::open(&url, Instant::now() + Duration::from_secs(10)).expect("open");
    let before = policy("bob@x", "*", Some("block"), None);
    s.put_policy(&before).expect("a write on the primary");
    // Asynchronous replication: wait until the standby has it (the README says how to make it synchronous).
    let on_standby = format!("host=127.0.0.1 port={} user=postgres dbname=parapet", standby.port());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = postgres::Client::connect(&on_standby, postgres::NoTls)
            .and_then(|mut c| c.query_one("SELECT count(*) FROM policy", &[]))
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the standby never received the write");
        std::thread::sleep(Duration::from_millis(100));
    }

    primary.stop().expect("stop the primary");
    let after = policy("carol@x", "*", Some("allow"), None);
    assert!(s.put_policy(&after).is_err(), "no primary: the write is refused (the standby is read-only)");
    standby.promote().expect("promote");
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = s.put_policy(&after) {
        assert!(Instant::now() < deadline, "the store never found the promoted standby: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.policies().expect("policies"), vec![before, after]);
}

/// A pool starting before its database waits for it (until the deadline), and says so clearly when it gives up.
#[test]
fn store_postgres_open_waits_for_the_server() {
    let mut pg = support_pg::start("conformance-pg-late");
    let url = pg.url();
    pg.stop().expect("stop");
    let t = Instant::now();
    let e = PgStore::open(&url, Instant::now() + Duration::from_secs(1)).err().expect("no server: no store");
    assert!(t.elapsed() < Duration::from_secs(8), "gave up near its deadline, took {:?}", t.elapsed());
    let msg = e.to_string();
    assert!(msg.contains("PostgreSQL at postgres://postgres@127.0.0.1:") && msg.contains("unavailable"), "{msg}");
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        pg.start_again().expect("start");
        pg
    });
    let mut s = PgStore::open(&url, Instant::now() + Duration::from_secs(30)).expect("the server came up in time");
    assert!(s.policies().expect("policies").is_empty());
    drop(late.join());
}

/// Waits for `what` until `deadline_s` seconds have passed; panics with `msg` if it never holds.
fn wait_for(deadline_s: u64, msg: &str, what: &mut dyn FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(deadline_s);
    while !what() {
        assert!(Instant::now() < deadline, "timed out: {msg}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Through the store thread: archived rows are committed behind the caller's back; while the table cannot be
/// written the gate says so (the pool refuses IM in critical mode) and the rows wait; once it can, they are
/// committed and the gate opens again.
fn archive_write_behind(store: Box<dyn Store>, break_it: &dyn Fn(), fix_it: &dyn Fn()) {
    use std::sync::atomic::Ordering;
    let h = StoreHandle::start(store).expect("store thread");
    let gate = h.archive_gate();
    assert!(h.archive(archived(1_000, "alice@x", "bob@x", "internal", "one")));
    wait_for(10, "the first row committed", &mut || gate.committed.load(Ordering::Relaxed) == 1);
    assert!(gate.writable());
    break_it();
    assert!(h.archive(archived(2_000, "alice@x", "bob@x", "internal", "two")));
    wait_for(10, "the gate reports the failure", &mut || gate.failing.load(Ordering::Relaxed));
    assert!(!gate.writable());
    assert_eq!(gate.pending.load(Ordering::Relaxed), 1, "the row waits");
    fix_it();
    wait_for(10, "the waiting row committed", &mut || gate.committed.load(Ordering::Relaxed) == 2);
    assert!(gate.writable(), "writable again");
    let Reply::Archive(rows) =
        h.call_blocking(Op::SearchArchive(ArchiveQuery { limit: 10, ..ArchiveQuery::default() })).expect("search")
    else {
        panic!("unexpected reply")
    };
    assert_eq!(rows.iter().map(|r| r.body.as_str()).collect::<Vec<_>>(), vec!["one", "two"]);
    assert_eq!(h.call_blocking(Op::PurgeArchive { before_ms: 1_500 }).expect("purge"), Reply::Count(1));
}

#[test]
fn store_archive_write_behind_sqlite() {
    let dir = support::scratch_dir("archive-sqlite");
    let path = sqlite_path(&dir);
    let other = || rusqlite::Connection::open(&path).expect("second connection");
    archive_write_behind(
        Box::new(SqliteStore::open(&path).expect("store call")),
        &|| other().execute_batch("ALTER TABLE im_archive RENAME TO im_archive_away").expect("rename"),
        &|| other().execute_batch("ALTER TABLE im_archive_away RENAME TO im_archive").expect("rename back"),
    );
}

#[test]
fn store_archive_write_behind_postgres() {
    let pg = support_pg::start("archive-pg");
    let url = pg.url();
    let sql = |q: &str| postgres::Client::connect(&url, postgres::NoTls).expect("connect").batch_execute(q).expect(q);
    archive_write_behind(
        Box::new(PgStore::open(&url, Instant::now() + Duration::from_secs(10)).expect("store call")),
        &|| sql("ALTER TABLE im_archive RENAME TO im_archive_away"),
        &|| sql("ALTER TABLE im_archive_away RENAME TO im_archive"),
    );
}
