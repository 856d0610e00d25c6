//! The appliance on PostgreSQL: `up --store postgres` with zero setup, a SQLite store migrated into
//! PostgreSQL under a running edge (a registered user stays reachable), and PostgreSQL restarted under MESSAGE
//! load (the service goes on, acknowledged writes stay, a write during the outage is refused).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use parapet::store::pgcluster::Cluster;

use crate::presence_restart::Role;
use crate::rawsip::{reason, Metrics, Ua};
use crate::support::{self, Appliance};
use crate::support_pg;

/// `parapet <args>` (bounded); Ok(stdout) on success, Err(output) on a non-zero exit.
fn cli(args: &[&str]) -> Result<String, String> {
    let mut cmd = std::process::Command::new(support::parapet_bin());
    cmd.args(args);
    support::run_bounded(&mut cmd, Duration::from_secs(30))
}

fn cli_ok(app: &Appliance, args: &[&str]) -> String {
    cli(args).unwrap_or_else(|e| app.fail(&format!("parapet {args:?}: {e}")))
}

fn pool_cfg(app: &Appliance) -> String {
    app.data_dir.join("pool.toml").display().to_string()
}

/// Appends `[store] url` to pool.toml.
fn point_pool_at(app: &Appliance, url: &str) {
    let path = app.data_dir.join("pool.toml");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| app.fail(&format!("read pool.toml: {e}")));
    text.push_str(&format!("\n# Added by the e2e test\n[store]\nurl = \"{url}\"\n"));
    std::fs::write(&path, text).unwrap_or_else(|e| app.fail(&format!("write pool.toml: {e}")));
}

/// Soft-state rows of `kind` whose key contains `needle`, straight from PostgreSQL.
fn pg_state_rows(url: &str, kind: &str, needle: &str) -> i64 {
    let Ok(mut c) = postgres::Client::connect(url, postgres::NoTls) else { return -1 };
    c.query_one("SELECT count(*) FROM soft_state WHERE kind = $1 AND strpos(key, $2) > 0", &[&kind, &needle])
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

fn wait_until(app: &Appliance, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() >= deadline {
            app.fail(&format!("{what}: not within {timeout:?}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// bob, on his own thread: answers every MESSAGE 200 and counts them, until `stop`.
fn answering(mut ua: Ua, stop: Arc<AtomicBool>, got: Arc<AtomicU64>) -> thread::JoinHandle<Ua> {
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(req) = ua.next_request(Duration::from_millis(200)) {
                if req.method_bytes() == Some(b"MESSAGE".as_slice()) {
                    got.fetch_add(1, Ordering::Relaxed);
                }
                ua.answer_with(&req, 200, "OK", |s| s);
            }
        }
        ua
    })
}

#[test]
fn up_store_postgres_runs_with_zero_setup() {
    support_pg::ensure_binaries();
    let mut app = Appliance::start_with_args("pg-up", &["--store", "postgres"]);
    let pool_toml = std::fs::read_to_string(app.data_dir.join("pool.toml")).unwrap_or_default();
    let Some(url) = pool_toml.lines().find_map(|l| l.strip_prefix("url = \"").and_then(|u| u.strip_suffix('"'))) else {
        app.fail(&format!("up --store postgres wrote no [store] url:\n{pool_toml}"))
    };
    let url = url.to_string();
    let mut alice = Ua::connect_ok(&app, "alice", None);
    alice.register_ok(&app, "alice");
    let mut bob = Ua::connect_ok(&app, "bob", None);
    bob.register_ok(&app, "bob");
    // The registration is written behind into PostgreSQL.
    wait_until(&app, "bob's binding in PostgreSQL", Duration::from_secs(10), || pg_state_rows(&url, "reg", "bob") > 0);
    cli_ok(&app, &["policy", "--config", &pool_cfg(&app), "set", "bob", "carol@example.com", "--im", "block"]);
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap_or_else(|e| app.fail(&e.to_string()));
    let n: i64 = c
        .query_one("SELECT count(*) FROM policy WHERE owner = 'bob@example.com' AND im = 'block'", &[])
        .map(|r| r.get(0))
        .unwrap_or_else(|e| app.fail(&e.to_string()));
    assert_eq!(n, 1, "the CLI wrote to PostgreSQL");
    drop(c);
    if app.sigterm_and_wait(Duration::from_secs(60)).is_none() {
        app.fail("up did not stop");
    }
    // `up` stopped its server with it.
    let port: u16 = url.rsplit(':').next().and_then(|p| p.split('/').next()).and_then(|p| p.parse().ok()).unwrap_or(0);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "PostgreSQL still runs after up ended");
}

#[test]
fn store_migrate_sqlite_into_postgres_keeps_everything() {
    let app = Appliance::prepare("pg-migrate", &[]);
    app.wait_ports_released();
    let (pool_path, edge_path) = (app.data_dir.join("pool.toml"), app.data_dir.join("edge.toml"));
    let mut pool = Role::start(&app, &pool_path, app.port_base + 1, "pool-sqlite.stderr");
    let _edge = Role::start(&app, &edge_path, app.port_base, "edge.stderr");
    let cfg = pool_cfg(&app);
    let mut bob = Ua::connect_ok(&app, "bob", None);
    bob.register_ok(&app, "bob");
    cli_ok(&app, &["policy", "--config", &cfg, "set", "bob", "carol@example.com", "--im", "block"]);
    cli_ok(&app, &["contacts", "--config", &cfg, "add", "alice", "bob", "--name", "Bob", "--group", "Work"]);
    let db = app.data_dir.join("parapet.db");
    wait_until(&app, "bob's binding in SQLite", Duration::from_secs(10), || sqlite_has_reg(&db, "bob"));
    pool.kill9();
    archive_one(&db);

    let pg = support_pg::start("pg-migrate-db");
    let url = pg.url();
    let out = cli_ok(&app, &["store", "migrate", "--from", &db.display().to_string(), "--to", &url]);
    assert!(out.contains("1 policy entries, 1 contacts,") && out.contains("1 archived messages"), "counts: {out}");
    let again = cli(&["store", "migrate", "--from", &db.display().to_string(), "--to", &url]);
    let e = again.expect_err("a second migrate into a non-empty store must be refused");
    assert!(e.contains("already holds") && e.contains("--force"), "{e}");
    cli_ok(&app, &["store", "migrate", "--from", &db.display().to_string(), "--to", &url, "--force"]);

    point_pool_at(&app, &url);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", app.port_base + 1)).is_ok() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let pool = Role::start(&app, &pool_path, app.port_base + 1, "pool-pg.stderr");
    let log = pool.stderr.last(200);
    assert!(log.contains("PostgreSQL"), "the pool says it runs on PostgreSQL:\n{log}");
    let list = cli_ok(&app, &["policy", "--config", &cfg, "list", "bob"]);
    assert!(list.contains("bob@example.com\tcarol@example.com\t-\tblock"), "policy after migrate:\n{list}");
    let contacts = cli_ok(&app, &["contacts", "--config", &cfg, "list", "alice"]);
    assert!(contacts.contains("sip:bob@example.com\tBob\tWork"), "contacts after migrate:\n{contacts}");
    let archived = cli_ok(&app, &["archive", "--config", &cfg, "search", "--user", "bob"]);
    assert!(archived.contains("before the migration") && archived.contains("1 message(s)"), "{archived}");
    // bob never registered with the PostgreSQL pool: his binding came through the migration.
    let (stop, got) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let bob_thread = answering(bob, stop.clone(), got.clone());
    let mut alice = Ua::connect_ok(&app, "alice", None);
    alice.register_ok(&app, "alice");
    let r = alice.message("bob", "after the migration").unwrap_or_else(|e| app.fail(&e));
    stop.store(true, Ordering::Relaxed);
    let _ = bob_thread.join();
    assert_eq!(r.status(), Some(200), "alice -> bob after the migration: {}", reason(&r));
    assert_eq!(got.load(Ordering::Relaxed), 1);
    // And the migrated policy acts: carol's MESSAGE to bob is refused as if bob were offline.
    let mut carol = Ua::connect_ok(&app, "carol", None);
    carol.register_ok(&app, "carol");
    let r = carol.message("bob", "blocked?").unwrap_or_else(|e| app.fail(&e));
    assert_eq!(r.status(), Some(480), "carol is IM-blocked by bob: {}", reason(&r));
}

/// One archived MESSAGE in the SQLite store, for the migration to carry over.
fn archive_one(db: &Path) {
    use parapet::store::Store;
    let mut s = parapet::store::sqlite::SqliteStore::open(db).expect("open the SQLite store");
    let row = parapet::store::archive::ArchiveRow {
        id: 0,
        at_ms: 1_700_000_000_000,
        sender: "alice@example.com".into(),
        recipient: "bob@example.com".into(),
        direction: "internal".into(),
        content_type: "text/plain".into(),
        body: "before the migration".into(),
        call_id: "m-1".into(),
    };
    s.write_archive(&[row]).expect("archive a row");
}

fn sqlite_has_reg(db: &Path, needle: &str) -> bool {
    use parapet::store::Store;
    let Ok(mut s) = parapet::store::sqlite::SqliteStore::open(db) else { return false };
    s.states(0).map(|rows| rows.iter().any(|r| r.kind == "reg" && r.key.contains(needle))).unwrap_or(false)
}

/// PostgreSQL restarted (`pg_ctl` fast shutdown, then start) while alice messages bob without pause: messages
/// keep flowing, a policy write during the outage is refused (non-zero exit), every acknowledged write is there
/// afterwards, and a registration made during the outage reaches the database once it is back.
#[test]
fn postgres_restart_under_message_load() {
    let mut pg: Cluster = support_pg::start("pg-restart-db");
    let url = pg.url();
    let app = Appliance::prepare("pg-restart", &[]);
    app.wait_ports_released();
    point_pool_at(&app, &url);
    let (pool_path, edge_path) = (app.data_dir.join("pool.toml"), app.data_dir.join("edge.toml"));
    let pool = Role::start(&app, &pool_path, app.port_base + 1, "pool.stderr");
    let _edge = Role::start(&app, &edge_path, app.port_base, "edge.stderr");
    let cfg = pool_cfg(&app);

    let mut bob = Ua::connect_ok(&app, "bob", None);
    bob.register_ok(&app, "bob");
    let mut alice = Ua::connect_ok(&app, "alice", None);
    alice.register_ok(&app, "alice");
    cli_ok(&app, &["policy", "--config", &cfg, "set", "bob", "dave@example.com", "--presence", "block"]);
    cli_ok(&app, &["contacts", "--config", &cfg, "add", "alice", "bob", "--name", "Bob"]);

    let (stop, got) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let bob_thread = answering(bob, stop.clone(), got.clone());
    let load_stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (load_stop, sent, failed) = (load_stop.clone(), sent.clone(), failed.clone());
        thread::spawn(move || {
            let mut failures = Vec::new();
            let mut i = 0u64;
            while !load_stop.load(Ordering::Relaxed) {
                i += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                match alice.message("bob", &format!("m{i}")) {
                    Ok(r) if r.status() == Some(200) => {}
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{:?} {}", r.status(), reason(&r)));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(e);
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
            failures
        })
    };
    wait_until(&app, "messages flowing", Duration::from_secs(10), || got.load(Ordering::Relaxed) >= 20);

    // The outage: the server stops (fast: every connection cut), an admin write is refused, carol registers.
    pg.stop().unwrap_or_else(|e| app.fail(&e));
    let before_outage = sent.load(Ordering::Relaxed);
    let refused = cli(&["policy", "--config", &cfg, "set", "bob", "erin@example.com", "--im", "block"]);
    let e = refused.expect_err("a policy write with PostgreSQL down must not be acknowledged");
    assert!(e.contains("exit status: 1"), "refused with a non-zero exit, not timed out: {e}");
    assert!(e.contains("unavailable") && e.contains("nothing was changed"), "the refusal says why: {e}");
    let mut carol = Ua::connect_ok(&app, "carol", None);
    carol.register_ok(&app, "carol");
    thread::sleep(Duration::from_secs(1)); // the outage lasts a while, under load
    pg.start_again().unwrap_or_else(|e| app.fail(&e));
    let during = sent.load(Ordering::Relaxed) - before_outage;
    let after = sent.load(Ordering::Relaxed);
    wait_until(&app, "messages after the restart", Duration::from_secs(10), || {
        sent.load(Ordering::Relaxed) >= after + 20
    });
    load_stop.store(true, Ordering::Relaxed);
    let failures = load.join().unwrap_or_default();
    stop.store(true, Ordering::Relaxed);
    let _ = bob_thread.join();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("pg restart under load: {sent} MESSAGEs sent, {during} during the outage, {failed} failed: {failures:?}");
    // MESSAGE between registered users never waits on the store: not one may fail.
    assert_eq!(failed, 0, "MESSAGEs failed across the PostgreSQL restart: {failures:?}");
    assert!(during >= 10, "the load went on during the outage ({during} sent)");

    // Soft state queued during the outage is written once the server is back.
    wait_until(&app, "carol's binding (registered during the outage) in PostgreSQL", Duration::from_secs(20), || {
        pg_state_rows(&url, "reg", "carol") > 0
    });
    let m = Metrics::pool(&app);
    assert!(m.must(&app, "parapet_pool_store_soft_commit_failures") > 0, "carol's write first failed:\n{}", m.0);
    assert_eq!(m.must(&app, "parapet_pool_store_backlog_now"), 0, "the backlog is empty again");
    assert_eq!(m.must(&app, "parapet_pool_store_soft_writes_dropped"), 0);
    let list = cli_ok(&app, &["policy", "--config", &cfg, "list", "bob"]);
    assert!(list.contains("bob@example.com\tdave@example.com\tblock\t-"), "acknowledged policy kept:\n{list}");
    assert!(!list.contains("erin@example.com"), "the refused write is absent:\n{list}");
    let contacts = cli_ok(&app, &["contacts", "--config", &cfg, "list", "alice"]);
    assert!(contacts.contains("sip:bob@example.com\tBob"), "acknowledged contact kept:\n{contacts}");
    // Writes work again without restarting anything.
    cli_ok(&app, &["policy", "--config", &cfg, "set", "bob", "erin@example.com", "--im", "block"]);
    let log = pool.stderr.last(400);
    assert!(log.contains("connection restored"), "the pool reconnected:\n{log}");
}
