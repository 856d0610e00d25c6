//! IM archiving end to end, on a real appliance (edge + pool processes, SQLite store) with `[archive] policy =
//! "all"`, `critical = true`, `retention_days = 30`:
//! - a MESSAGE between two of our users and one from a federated partner (mutual TLS on the edge's federation
//!   port, the demo partner's certificate) are found by `parapet archive search` (by user, peer, text, time)
//!   and `archive export` (JSON lines);
//! - retention: a row older than 30 days is purged by `parapet archive purge`, the recent ones stay;
//! - critical mode: with the archive table made unwritable (renamed by another connection) IM is refused with
//!   503 "IM archive unavailable" (Retry-After), and flows again, archived, once it is writable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::federation::{exchange, message_from, mtls_config, FED_PORT};
use crate::rawsip::{text, Metrics, Ua};
use crate::support::{self, Appliance};

fn cli(app: &Appliance, args: &[&str]) -> String {
    let cfg = app.data_dir.join("pool.toml");
    let mut cmd = Command::new(support::parapet_bin());
    cmd.arg("archive").arg("-c").arg(&cfg).args(args).current_dir(&app.data_dir);
    support::run_bounded(&mut cmd, Duration::from_secs(30))
        .unwrap_or_else(|e| app.fail(&format!("parapet archive {args:?}: {e}")))
}

/// Runs `archive search` until its output contains every one of `want` (write-behind: within milliseconds).
fn search_until(app: &Appliance, args: &[&str], want: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = cli(app, &[&["search"], args].concat());
        if want.iter().all(|w| out.contains(w)) {
            return out;
        }
        if Instant::now() >= deadline {
            app.fail(&format!("archive search {args:?}: wanted {want:?}, got\n{out}"));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Answers every request `ua` receives with 200 until stopped; counts them.
fn answering(ua: Ua) -> (Arc<AtomicBool>, Arc<AtomicU32>, thread::JoinHandle<Ua>) {
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU32::new(0));
    let (s, g) = (stop.clone(), got.clone());
    let h = thread::spawn(move || {
        let mut ua = ua;
        while !s.load(Ordering::Relaxed) {
            if let Ok(req) = ua.next_request(Duration::from_millis(200)) {
                ua.answer_with(&req, 200, "OK", |x| x);
                g.fetch_add(1, Ordering::Relaxed);
            }
        }
        ua
    });
    (stop, got, h)
}

fn database(app: &Appliance) -> PathBuf {
    let cfg = parapet::config::Config::load(&app.data_dir.join("pool.toml"))
        .unwrap_or_else(|e| app.fail(&format!("pool.toml: {e}")));
    cfg.pool.map(|p| p.database).unwrap_or_else(|| app.fail("pool.toml has no [pool]"))
}

fn sqlite(app: &Appliance, db: &Path, sql: &str) {
    let c = rusqlite::Connection::open(db).unwrap_or_else(|e| app.fail(&format!("open {}: {e}", db.display())));
    c.busy_timeout(Duration::from_secs(5)).unwrap_or_else(|e| app.fail(&e.to_string()));
    c.execute_batch(sql).unwrap_or_else(|e| app.fail(&format!("{sql}: {e}")));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[test]
fn archive_search_retention_and_critical_mode() {
    let mut a = Appliance::prepare("archive", &[]);
    let pool_cfg = a.data_dir.join("pool.toml");
    let mut toml = std::fs::read_to_string(&pool_cfg).unwrap_or_else(|e| a.fail(&e.to_string()));
    toml.push_str("\n[archive]\npolicy = \"all\"\ncritical = true\nretention_days = 30\n");
    std::fs::write(&pool_cfg, toml).unwrap_or_else(|e| a.fail(&e.to_string()));
    a.run_roles("", &[a.port_base + FED_PORT]);
    let db = database(&a);

    let mut alice = Ua::connect_ok(&a, "alice", None);
    alice.register_ok(&a, "alice");
    let mut bob = Ua::connect_ok(&a, "bob", None);
    bob.register_ok(&a, "bob");
    let (stop, got, bob_thread) = answering(bob);

    // Between two of our users.
    let body = "quarterly numbers attached";
    match alice.message("bob", body) {
        Ok(r) if r.status() == Some(200) => {}
        other => a.fail(&format!("alice -> bob: expected 200, got {other:?}")),
    }
    // From a federated partner (its edge's certificate, as `up` issued it for the demo partner.test).
    let pki = a.data_dir.join("pki");
    let partner = mtls_config(&a.ca, &pki.join("partner.test.pem"), &pki.join("partner.test.key"));
    match exchange(
        partner,
        "edge.example.com",
        a.port_base + FED_PORT,
        &message_from("carol@partner.test", "bob@example.com"),
    ) {
        Ok(r) if r.starts_with("SIP/2.0 200") => {}
        other => a.fail(&format!("partner -> bob: expected 200, got {other:?}")),
    }
    assert!(got.load(Ordering::Relaxed) >= 2, "bob received both");

    let out =
        search_until(&a, &["--user", "bob"], &["alice@example.com -> bob@example.com", body, "carol@partner.test"]);
    assert!(out.contains("internal alice@example.com -> bob@example.com [text/plain"), "{out}");
    assert!(out.contains("federated-in carol@partner.test -> bob@example.com"), "{out}");
    assert!(out.contains("2 message(s)"), "{out}");
    let out = cli(&a, &["search", "--user", "bob", "--peer", "sip:carol@partner.test"]);
    assert!(out.contains("1 message(s)") && out.contains("hello"), "{out}");
    let out = cli(&a, &["search", "--text", "quarterly"]);
    assert!(out.contains("1 message(s)") && out.contains(body), "{out}");
    let out = cli(&a, &["search", "--until", "2000-01-01"]);
    assert!(out.contains("0 message(s)"), "nothing that old yet: {out}");
    let export = cli(&a, &["export", "--user", "alice"]);
    // stdout (JSON lines) and stderr (the count) come back together here.
    assert!(export.contains("exported 1 message(s)"), "{export}");
    let lines: Vec<serde_json::Value> = export
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| a.fail(&format!("{l}: {e}"))))
        .collect();
    assert_eq!(lines.len(), 1, "{export}");
    assert_eq!(lines[0]["sender"], "alice@example.com");
    assert_eq!(lines[0]["recipient"], "bob@example.com");
    assert_eq!(lines[0]["direction"], "internal");
    assert_eq!(lines[0]["body"], body);

    // Retention: a message from 40 days ago is purged, today's stay.
    let old = now_ms() - 40 * 86_400_000;
    sqlite(
        &a,
        &db,
        &format!(
            "INSERT INTO im_archive (at_ms, sender, recipient, direction, content_type, body, call_id) \
             VALUES ({old}, 'alice@example.com', 'bob@example.com', 'internal', 'text/plain', 'ancient', 'old-1')"
        ),
    );
    let out = cli(&a, &["search", "--text", "ancient"]);
    assert!(out.contains("1 message(s)"), "{out}");
    let out = cli(&a, &["purge"]);
    assert!(out.contains("purged 1 message(s) older than 30 day(s)"), "{out}");
    let out = cli(&a, &["search"]);
    assert!(out.contains("2 message(s)") && !out.contains("ancient"), "{out}");

    // Critical mode: the archive table made unwritable; IM is refused with the documented answer.
    sqlite(&a, &db, "ALTER TABLE im_archive RENAME TO im_archive_away");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut accepted_while_broken = 0;
    let refused = loop {
        let r = alice.message("bob", "during the outage").unwrap_or_else(|e| a.fail(&e));
        match r.status() {
            Some(503) => break r,
            Some(200) => accepted_while_broken += 1,
            s => a.fail(&format!("during the outage: expected 200 or 503, got {s:?}\n{}", text(&r))),
        }
        if Instant::now() >= deadline {
            a.fail("IM never refused while the archive was unwritable");
        }
        thread::sleep(Duration::from_millis(100));
    };
    let reason = String::from_utf8_lossy(refused.reason().unwrap_or_default()).into_owned();
    assert_eq!(reason, "Service Unavailable: IM archive unavailable", "{}", text(&refused));
    assert!(refused.header(parapet::sip::HeaderName::RetryAfter).is_some(), "{}", text(&refused));
    // Refused stays refused while the store is broken.
    let r = alice.message("bob", "still broken").unwrap_or_else(|e| a.fail(&e));
    assert_eq!(r.status(), Some(503), "{}", text(&r));
    assert!(Metrics::pool(&a).must(&a, "parapet_pool_messages_refused_archive") >= 2);

    // Writable again: IM flows and is archived, with the messages accepted just before the failure was seen.
    sqlite(&a, &db, "ALTER TABLE im_archive_away RENAME TO im_archive");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = alice.message("bob", "after the outage").unwrap_or_else(|e| a.fail(&e));
        match r.status() {
            Some(200) => break,
            Some(503) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
            s => a.fail(&format!("after the outage: expected 200 at last, got {s:?}\n{}", text(&r))),
        }
    }
    let out = search_until(&a, &["--text", "outage"], &["after the outage"]);
    let held = out.matches("during the outage").count();
    assert_eq!(held, accepted_while_broken, "every MESSAGE relayed during the outage was archived after it: {out}");
    assert!(!out.contains("still broken"), "a refused MESSAGE is not archived: {out}");

    stop.store(true, Ordering::Relaxed);
    let _bob = bob_thread.join().expect("bob thread");
}
