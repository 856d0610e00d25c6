//! Sync benchmark against a real OpenLDAP (`cargo bench --bench directory_ldap`): 100,000 generated people
//! loaded into a slapd of our own (Debian's `slapd`, installed when missing) on a loopback port with StartTLS;
//! then a full sync into a fresh SQLite store, ten changes made in LDAP, an incremental sync, and the p99 of
//! searches by name over the synced namespace. Prints one line per measurement.
//!
//! `PARAPET_BENCH_PEOPLE` sets another size (the default is the acceptance's 100,000).

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parapet::config::directory::{DirectoryConfig, LdapConfig, Mapping, SourceConfig, SourceKind};
use parapet::directory::cli::sync_once;
use parapet::directory::search::{Index, Query};
use parapet::store::sqlite::SqliteStore;
use parapet::store::Store;

const SUFFIX: &str = "dc=bench,dc=test";
const PASSWORD: &str = "bench-secret";

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        panic!("{cmd:?} failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}

fn ensure_slapd() {
    if Path::new("/usr/sbin/slapd").exists() && Path::new("/usr/bin/ldapmodify").exists() {
        return;
    }
    for args in [&["update"][..], &["install", "-y", "slapd", "ldap-utils"][..]] {
        run(Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn person(i: usize) -> String {
    const FIRST: [&str; 8] = ["Ann", "Bob", "Carl", "Dana", "Erin", "Fay", "Gus", "Hal"];
    const LAST: [&str; 8] = ["Lee", "Smith", "Park", "Ray", "Moe", "Ng", "Leeds", "Ortiz"];
    let (f, l) = (FIRST[i % 8], LAST[(i / 8) % 8]);
    format!(
        "dn: uid=u{i},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: u{i}\ncn: {f} {l}{i}\ngivenName: {f}\n\
         sn: {l}{i}\ndisplayName: {f} {l}{i}\nmail: u{i}@bench.test\ntitle: Engineer\n\n"
    )
}

fn main() {
    let people: usize = std::env::var("PARAPET_BENCH_PEOPLE").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    ensure_slapd();
    parapet::net::tls::install_provider();
    let dir = std::env::temp_dir().join(format!("parapet-bench-ldap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("db")).expect("mkdir");
    let (cert, key) =
        parapet::config::devpki::issue_leaf(&dir.join("pki"), "slapd", &["127.0.0.1".into()]).expect("certificate");
    let ca = dir.join("pki").join("ca.pem");
    let conf = format!(
        "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
         include /etc/ldap/schema/inetorgperson.schema\npidfile {d}/slapd.pid\nmodulepath /usr/lib/ldap\n\
         moduleload back_mdb\nsizelimit unlimited\nTLSCACertificateFile {ca}\nTLSCertificateFile {cert}\n\
         TLSCertificateKeyFile {key}\ndatabase mdb\nmaxsize 4294967296\nsuffix \"{SUFFIX}\"\n\
         rootdn \"cn=admin,{SUFFIX}\"\nrootpw {PASSWORD}\ndirectory {d}/db\nindex objectClass eq\n",
        d = dir.display(),
        ca = ca.display(),
        cert = cert.display(),
        key = key.display()
    );
    std::fs::write(dir.join("slapd.conf"), conf).expect("slapd.conf");
    let mut ldif = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: bench\no: bench\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n"
    );
    for i in 0..people {
        ldif.push_str(&person(i));
    }
    std::fs::write(dir.join("people.ldif"), ldif).expect("ldif");
    let t = Instant::now();
    run(Command::new("/usr/sbin/slapadd")
        .arg("-q")
        .arg("-f")
        .arg(dir.join("slapd.conf"))
        .arg("-l")
        .arg(dir.join("people.ldif")));
    println!("slapadd of {people} people: {:.1} s", t.elapsed().as_secs_f64());
    let port = free_port();
    let url = format!("ldap://127.0.0.1:{port}");
    let mut slapd = Command::new("/usr/sbin/slapd")
        .arg("-f")
        .arg(dir.join("slapd.conf"))
        .arg("-h")
        .arg(format!("{url}/"))
        .args(["-d", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("slapd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "slapd does not accept connections");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(dir.join("root.secret"), PASSWORD).expect("secret");
    let cfg = DirectoryConfig {
        sources: vec![SourceConfig {
            name: "bench".into(),
            kind: SourceKind::Ldap,
            precedence: 1,
            path: Default::default(),
            ldap: Some(LdapConfig {
                url: url.clone(),
                starttls: true,
                ca: ca.clone(),
                bind_dn: format!("cn=admin,{SUFFIX}"),
                password_file: dir.join("root.secret"),
                base_dn: format!("ou=people,{SUFFIX}"),
                filter: "(objectClass=inetOrgPerson)".into(),
                timeout_ms: 120_000,
            }),
            mapping: Mapping::default_for(SourceKind::Ldap),
        }],
        interval_s: 0,
        max_delete_share: 0.2,
        retention_s: 86_400,
    };
    let mut store = SqliteStore::open(&dir.join("parapet.db")).expect("store");
    let t = Instant::now();
    let plan = sync_once(&cfg, "bench.test", &mut store, false, false, 1_000).expect("full sync");
    println!("full sync: {} created in {:.2} s", plan.created.len(), t.elapsed().as_secs_f64());
    assert_eq!(plan.created.len(), people, "{}", plan.render());
    // modifyTimestamp has a resolution of one second, and slapadd stamps every entry with the second of the load:
    // the first incremental read after a bulk load fetches the load's second again (the filter is >=, so that a
    // change in the mark's own second is never missed); later ones fetch only what changed since.
    for round in 1..=2 {
        std::thread::sleep(Duration::from_millis(1100));
        let mut changes = String::new();
        for i in (0..10).map(|k| k * (people / 10) + round) {
            let _ = write!(
                changes,
                "dn: uid=u{i},ou=people,{SUFFIX}\nchangetype: modify\nreplace: title\ntitle: Changed {round}\n\n"
            );
        }
        std::fs::write(dir.join("changes.ldif"), changes).expect("changes");
        run(Command::new("/usr/bin/ldapmodify")
            .args(["-x", "-ZZ", "-H", &url, "-D", &format!("cn=admin,{SUFFIX}"), "-w", PASSWORD, "-f"])
            .arg(dir.join("changes.ldif"))
            .env("LDAPTLS_CACERT", &ca));
        let t = Instant::now();
        let plan = sync_once(&cfg, "bench.test", &mut store, false, false, 2_000).expect("incremental sync");
        println!(
            "incremental sync {round} (ten changes): {} updated, {} rows written, {} unchanged, in {:.2} s",
            plan.updated.len(),
            plan.writes().len(),
            plan.unchanged,
            t.elapsed().as_secs_f64()
        );
        assert_eq!(plan.updated.len(), 10, "{}", plan.render());
    }
    let rows = store.directory_rows().expect("rows");
    let t = Instant::now();
    let index = Index::build(&rows, "bench.test");
    println!("index of {} people built in {:.0} ms", index.len(), t.elapsed().as_secs_f64() * 1e3);
    let queries = ["lee", "first:ann last:lee1", "smith12", "u1234", "ortiz9", "fay"];
    let mut times: Vec<Duration> = Vec::new();
    for k in 0..20_000 {
        let q = Query::parse(queries[k % queries.len()]).expect("query");
        let t = Instant::now();
        std::hint::black_box(index.search(&q));
        times.push(t.elapsed());
    }
    times.sort_unstable();
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)].as_secs_f64() * 1e6;
    println!("search over {} people: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs", index.len(), p(0.5), p(0.99), p(1.0));
    let _ = slapd.kill();
    let _ = slapd.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
