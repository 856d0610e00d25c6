//! One namespace from two real OpenLDAP forests (StartTLS and LDAPS) and a CSV export: `parapet directory sync`
//! creates it, users of both forests register and message each other, the search service answers over SIP and
//! the management API, changes in LDAP (added, renamed, disabled, deleted) reach the running pool after the next
//! sync, a duplicate alias is reported as a conflict, and a stopped LDAP server changes nothing.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::pjsua::Agent;
use crate::rawsip::{http_get, text, Metrics, Ua, ANSWER_TIMEOUT};
use crate::support::{free_port_base, run_bounded, Appliance};
use crate::support_ldap::{people_ldif, person_ldif, Slapd, ROOT_PASSWORD};

const CORP: &str = "dc=corp,dc=test";
const LAB: &str = "dc=lab,dc=test";

fn sync(app: &Appliance, args: &[&str]) -> String {
    let mut cmd = Command::new(crate::support::parapet_bin());
    cmd.args(["directory", "sync", "-c"]).arg(app.data_dir.join("pool.toml")).args(args);
    run_bounded(&mut cmd, Duration::from_secs(120)).unwrap_or_else(|e| app.fail(&format!("directory sync: {e}")))
}

fn has_line(out: &str, prefix: &str) -> bool {
    out.lines().any(|l| l.starts_with(prefix))
}

/// The API search's answer once it satisfies `ok` (the running pool reloads within a second or two of a sync).
fn api_until(app: &Appliance, q: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = http_get(app.port_base + 4, &format!("/directory/search?q={q}")).unwrap_or_default();
        if ok(&body) {
            return body;
        }
        if Instant::now() >= deadline {
            app.fail(&format!("API search {q:?}: {what} not seen within 15 s; last answer: {body}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn registered(app: &Appliance, label: &str, alias: &str, password: &str) -> Ua {
    let mut ua = Ua::connect_ok(app, label, None);
    match ua.register(alias, password) {
        Ok(r) if r.status() == Some(200) => ua,
        Ok(r) => app.fail(&format!("REGISTER {alias}: expected 200, got\n{}", text(&r))),
        Err(e) => app.fail(&e),
    }
}

/// A MESSAGE with credentials (a probe answers the proxy challenge first); returns the final status.
fn send_message(app: &Appliance, ua: &mut Ua, to_user: &str, body: &str) -> u16 {
    let d = app.domain.clone();
    let target = format!("sip:{to_user}@{d}");
    if ua.nonce.is_none() {
        let sent = ua.send_request("MESSAGE", &target, &ua.user(), &target, &[], b"probe");
        let r = ua.final_response(&sent, ANSWER_TIMEOUT).unwrap_or_else(|e| app.fail(&format!("probe: {e:?}")));
        if r.status() != Some(407) || !ua.take_challenge(&r) {
            app.fail(&format!("expected 407 with a challenge, got\n{}", text(&r)));
        }
    }
    let sent = ua.send_request("MESSAGE", &target, &ua.user(), &target, &[], body.as_bytes());
    let r = ua.final_response(&sent, ANSWER_TIMEOUT).unwrap_or_else(|e| app.fail(&format!("MESSAGE: {e:?}")));
    r.status().unwrap_or(0)
}

/// A pjsip agent for a directory user, registered (200).
fn pjsip_registered(app: &Appliance, label: &str, alias: &str, password: &str) -> Agent {
    let mut agent = Agent::spawn(app, label, alias, password);
    let ev = agent.register();
    agent.check(ev.int("code") == Some(200), || format!("pjsip REGISTER {alias}: expected 200, got {ev}"));
    agent
}

/// `from` sends `text` to `to_alias` with pjsip; `to` receives it and `from` sees 200.
fn pjsip_says(app: &Appliance, from: &mut Agent, to: &mut Agent, to_alias: &str, text: &str) {
    let st = from.message(&format!("sip:{to_alias}@{}", app.domain), text);
    from.check(st.int("code") == Some(200), || format!("MESSAGE to {to_alias}: expected 200, got {st}"));
    let m = to.received();
    to.check(m.str("text") == Some(text), || format!("{to_alias} received: {m}"));
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Appends `cfg` (the `[directory]` tables) to the pool's config; its path.
fn add_to_pool_config(app: &Appliance, cfg: &str) -> std::path::PathBuf {
    let pool_toml = app.data_dir.join("pool.toml");
    let mut text = fs::read_to_string(&pool_toml).unwrap_or_else(|e| app.fail(&format!("pool.toml: {e}")));
    text.push_str(cfg);
    write(&pool_toml, &text);
    pool_toml
}

#[test]
fn two_forests_and_a_csv_make_one_namespace() {
    let mut app = Appliance::prepare("directory-ldap", &[]);
    let pki = app.data_dir.join("pki");
    let ports = free_port_base();
    let ldap_dir = app.scratch.join("ldap");
    let corp_people = [
        ("ann", "Ann", "Lee", "ann.lee@corp.test", "ann-pw"),
        ("bob", "Bob", "Smith", "bob.smith@corp.test", "bob-pw"),
        ("kim", "Kim", "Park", "kim@corp.test", "kim-corp"),
        ("gus", "Gus", "Moe", "gus@corp.test", "gus-pw"),
    ];
    let lab_people = [
        ("carl", "Carl", "Lee", "carl.lee@lab.test", "unused"),
        ("dana", "Dana", "Ray", "dana.ray@lab.test", "unused"),
        ("kim", "Kim", "Lab", "kim@lab.test", "unused"),
        ("hal", "Hal", "Ng", "hal@lab.test", "unused"),
    ];
    let mut corp =
        Slapd::start(&ldap_dir.join("corp"), CORP, ports, false, &pki, &people_ldif(CORP, "corp", &corp_people));
    let mut lab =
        Slapd::start(&ldap_dir.join("lab"), LAB, ports + 1, true, &pki, &people_ldif(LAB, "lab", &lab_people));
    write(&ldap_dir.join("root.secret"), &format!("{ROOT_PASSWORD}\n"));
    write(&ldap_dir.join("hr.csv"), "alias,display_name,first,last,password\nerin.lee,Erin Lee,Erin,Lee,erin-pw\n");
    let source = |name: &str, s: &Slapd, extra: &str| {
        format!(
            "\n[[directory.sources]]\nname = \"{name}\"\nkind = \"ldap\"\nurl = \"{url}\"\nstarttls = {tls}\n\
             ca = \"{ca}\"\nbind_dn = \"cn=admin,{suffix}\"\npassword_file = \"{secret}\"\n\
             base_dn = \"ou=people,{suffix}\"\nfilter = \"(&(objectClass=inetOrgPerson)(mail=*))\"\ntimeout_ms = 5000\n\
             [directory.sources.mapping]\ndisabled = \"employeeType=disabled\"\n{extra}",
            url = s.url(),
            tls = !s.ldaps,
            ca = s.ca.display(),
            suffix = s.suffix,
            secret = ldap_dir.join("root.secret").display(),
        )
    };
    let mut cfg = String::from("\n[directory]\ninterval_s = 0\nmax_delete_share = 0.5\nretention_s = 3600\n");
    cfg.push_str(&source("corp", &corp, "credentials = \"password:userPassword\"\n"));
    cfg.push_str(&source("lab", &lab, "credentials = \"none\"\n"));
    cfg.push_str(&format!(
        "\n[[directory.sources]]\nname = \"hr\"\nkind = \"csv\"\npath = \"{}\"\n",
        ldap_dir.join("hr.csv").display()
    ));
    let pool_toml = add_to_pool_config(&app, &cfg);

    // A dry run writes nothing; the real sync creates the namespace and reports the conflict.
    let dry = sync(&app, &["--dry-run"]);
    assert!(dry.contains("# dry run: nothing written") && has_line(&dry, "create\tann.lee\tcorp"), "{dry}");
    let out = sync(&app, &[]);
    for alias in ["ann.lee\tcorp", "bob.smith\tcorp", "kim\tcorp", "carl.lee\tlab", "dana.ray\tlab", "erin.lee\thr"] {
        assert!(has_line(&out, &format!("create\t{alias}")), "no `create {alias}` in:\n{out}");
    }
    assert!(
        has_line(
            &out,
            "conflict\tkim\tKim Park (corp, uid=kim,ou=people,dc=corp,dc=test) wins over Kim Lab (lab, uid=kim,ou=people,dc=lab,dc=test)"
        ),
        "{out}"
    );
    assert!(has_line(&out, "# 8 created, 0 updated, 0 disabled, 0 purged, 0 unchanged, 1 conflicts"), "{out}");
    // The lab forest carries no credentials: an operator sets carl's.
    write(&ldap_dir.join("carl.pw"), "carl-pw\n");
    let mut cmd = Command::new(crate::support::parapet_bin());
    cmd.args(["users", "set-password", "-c"])
        .arg(&pool_toml)
        .args(["carl.lee", "--password-file"])
        .arg(ldap_dir.join("carl.pw"));
    let said = run_bounded(&mut cmd, Duration::from_secs(30)).unwrap_or_else(|e| app.fail(&e));
    assert!(said.contains("carl.lee: password stored"), "{said}");

    app.run_roles("", &[]);
    // pjsip users of both forests (and the CSV) register and message each other.
    let mut ann = pjsip_registered(&app, "ann", "ann.lee", "ann-pw");
    let mut carl = pjsip_registered(&app, "carl", "carl.lee", "carl-pw");
    let _erin = pjsip_registered(&app, "erin", "erin.lee", "erin-pw");
    pjsip_says(&app, &mut ann, &mut carl, "carl.lee", "hello lab");
    pjsip_says(&app, &mut carl, &mut ann, "ann.lee", "hello corp");

    // Search over SIP from pjsip: 200, then a MESSAGE back from the service with the matches.
    let st = ann.message(&format!("sip:{}@{}", "directory", app.domain), "lee");
    ann.check(st.int("code") == Some(200), || format!("ann -> directory: expected 200, got {st}"));
    let answer = ann.received();
    let body = answer.str("text").unwrap_or("").to_string();
    ann.check(answer.str("from").is_some_and(|f| f.contains(&format!("sip:directory@{}", app.domain))), || {
        format!("the answer comes from the service: {answer}")
    });
    ann.check(body.starts_with("3 found for \"lee\""), || format!("answer: {body}"));
    ann.check(
        body.contains(&format!("Carl Lee <sip:carl.lee@{}>, Engineer, +1 555 0100 [online]", app.domain)),
        || format!("carl, online: {body}"),
    );
    ann.check(body.contains("Ann Lee <sip:ann.lee@") && body.contains("Erin Lee <sip:erin.lee@"), || body.clone());
    // The API returns the same people.
    let api = api_until(&app, "lee", "three people", |b| b.matches("\"uri\"").count() == 3);
    for a in ["ann.lee", "carl.lee", "erin.lee"] {
        assert!(api.contains(&format!("\"uri\":\"sip:{a}@{}\"", app.domain)), "{api}");
    }
    let m = Metrics::pool(&app);
    assert_eq!(m.get("parapet_pool_directory_searches"), Some(1), "one SIP search");
    assert!(m.get("parapet_directory_api_searches").is_some_and(|n| n >= 1), "API searches counted");

    // Changes in LDAP: fay added, dana renamed, bob disabled, carl deleted.
    corp.modify(&format!(
        "dn: uid=fay,ou=people,{CORP}\nchangetype: add\n{}",
        person_ldif(CORP, "fay", "Fay", "Lee", "fay.lee@corp.test", "fay-pw")
            .split_once('\n')
            .map(|(_, r)| r)
            .unwrap_or("")
    ));
    lab.modify(&format!("dn: uid=dana,ou=people,{LAB}\nchangetype: modify\nreplace: sn\nsn: Leeming\n-\nreplace: displayName\ndisplayName: Dana Leeming\n"));
    corp.modify(&format!(
        "dn: uid=bob,ou=people,{CORP}\nchangetype: modify\nadd: employeeType\nemployeeType: disabled\n"
    ));
    lab.delete(&format!("uid=carl,ou=people,{LAB}"));
    let out = sync(&app, &[]);
    assert!(has_line(&out, "create\tfay.lee\tcorp\tFay Lee"), "{out}");
    assert!(has_line(&out, "update\tdana.ray\tlab\tDana Leeming"), "{out}");
    assert!(has_line(&out, "disable\tbob.smith\tcorp"), "{out}");
    assert!(has_line(&out, "disable\tcarl.lee\tlab"), "{out}");
    assert!(has_line(&out, "# 1 created, 1 updated, 2 disabled, 0 purged"), "incremental: only the changes\n{out}");
    let api = api_until(&app, "lee", "fay and dana in, carl out", |b| {
        b.contains("fay.lee") && b.contains("dana.ray") && !b.contains("carl.lee")
    });
    assert_eq!(api.matches("\"uri\"").count(), 4, "{api}");
    // The deleted person is refused at the next request and unreachable; the disabled one cannot register.
    let mut ann_raw = registered(&app, "ann-raw", "ann.lee", "ann-pw");
    assert_eq!(send_message(&app, &mut ann_raw, "carl.lee", "still there?"), 404);
    let mut bob = Ua::connect_ok(&app, "bob", None);
    let r = bob.register("bob.smith", "bob-pw").unwrap_or_else(|e| app.fail(&e));
    assert_eq!(r.status(), Some(403), "{}", text(&r));
    let mut carl_raw = Ua::connect_ok(&app, "carl-raw", None);
    let r = carl_raw.register("carl.lee", "carl-pw").unwrap_or_else(|e| app.fail(&e));
    assert_eq!(r.status(), Some(403), "{}", text(&r));
    let _fay = registered(&app, "fay", "fay.lee", "fay-pw");

    // A forest that stops answering changes nothing, and the plan says so.
    lab.stop();
    let out = sync(&app, &["--full"]);
    assert!(out.lines().any(|l| l.starts_with("held\tlab\tunreachable")), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("disable") || l.starts_with("purge")), "{out}");
    let api = api_until(&app, "dana", "dana kept", |b| b.contains("dana.ray"));
    assert!(api.contains("Dana Leeming"), "{api}");
    lab.run();
    corp.stop();
}

/// The running pool syncs on its own (`interval_s`): from an empty store at start, and again after a change.
#[test]
fn the_pool_syncs_on_its_interval() {
    let mut app = Appliance::prepare("directory-interval", &[]);
    let pki = app.data_dir.join("pki");
    let ports = free_port_base();
    let ldap_dir = app.scratch.join("ldap");
    let people =
        [("ann", "Ann", "Lee", "ann.lee@corp.test", "ann-pw"), ("bob", "Bob", "Smith", "bob@corp.test", "bob-pw")];
    let corp = Slapd::start(&ldap_dir.join("corp"), CORP, ports, false, &pki, &people_ldif(CORP, "corp", &people));
    write(&ldap_dir.join("root.secret"), ROOT_PASSWORD);
    let cfg = format!(
        "\n[directory]\ninterval_s = 1\n\n[[directory.sources]]\nname = \"corp\"\nkind = \"ldap\"\nurl = \"{}\"\n\
         starttls = true\nca = \"{}\"\nbind_dn = \"cn=admin,{CORP}\"\npassword_file = \"{}\"\nbase_dn = \"{CORP}\"\n\
         filter = \"(objectClass=inetOrgPerson)\"\n[directory.sources.mapping]\ncredentials = \"password:userPassword\"\n",
        corp.url(),
        corp.ca.display(),
        ldap_dir.join("root.secret").display()
    );
    add_to_pool_config(&app, &cfg);
    app.run_roles("", &[]);
    api_until(&app, "lee", "ann after the pool's first sync", |b| b.contains("ann.lee"));
    let _ann = registered(&app, "ann", "ann.lee", "ann-pw");
    corp.modify(&format!(
        "dn: uid=cy,ou=people,{CORP}\nchangetype: add\n{}",
        person_ldif(CORP, "cy", "Cy", "Leeds", "cy.leeds@corp.test", "cy-pw")
            .split_once('\n')
            .map(|(_, r)| r)
            .unwrap_or("")
    ));
    api_until(&app, "leeds", "cy after a later sync", |b| b.contains("cy.leeds"));
    let _cy = registered(&app, "cy", "cy.leeds", "cy-pw");
    let m = Metrics::pool(&app);
    assert!(m.get("parapet_directory_syncs").is_some_and(|n| n >= 2), "the pool's own syncs are counted");
    assert_eq!(m.get("parapet_directory_people"), Some(3));
}

/// `POST path` on a management port; the whole answer (status line, headers, body).
fn http_post(port: u16, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    // One write: the management server reads the request with a single read(2).
    s.write_all(format!("POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .map_err(|e| format!("write {addr}: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("read {addr}{path}: {e}"))?;
    Ok(out)
}

/// The cap end to end: 81 SIP searches in flight at once (their presence gathers held open by the debug build's
/// `POST /debug/directory-hold`) get 80 × 200 and one `503 Service Unavailable: directory busy` with
/// Retry-After, and an API search meanwhile is busy too (503, the cap is the process's); once released, the 80
/// answers arrive as MESSAGEs; the pool counts 80 searches and one busy. Three users on three connections send
/// 27 each: the edge lets a flow have at most 32 requests in flight.
#[test]
fn eighty_one_sip_searches_get_eighty_answers_and_one_busy() {
    let mut app = Appliance::prepare("directory-busy", &[]);
    let dir = app.scratch.join("hr");
    let senders = ["ann.lee", "bo.lee", "cy.lee"];
    // Enough Lees to live on every core: each sender's search needs other cores' presence (a gather to hold).
    let mut lees: Vec<String> = (0..12).map(|i| format!("lee{i}")).collect();
    lees.extend(senders.iter().map(|s| s.to_string()));
    let mut csv = String::from("alias,display_name,first,last,password\n");
    for a in &lees {
        csv.push_str(&format!("{a},Pat {a},Pat,Lee,{a}-pw\n"));
    }
    fs::create_dir_all(&dir).unwrap_or_else(|e| app.fail(&format!("mkdir: {e}")));
    write(&dir.join("hr.csv"), &csv);
    add_to_pool_config(
        &app,
        &format!(
            "\n[directory]\ninterval_s = 0\n\n[[directory.sources]]\nname = \"hr\"\nkind = \"csv\"\npath = \"{}\"\n",
            dir.join("hr.csv").display()
        ),
    );
    let out = sync(&app, &[]);
    assert!(has_line(&out, "# 15 created"), "{out}");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let homes: std::collections::HashSet<usize> =
        lees.iter().map(|a| parapet::shard::shard_for(format!("{a}@{}", app.domain).as_bytes(), cores)).collect();
    assert!(homes.len() > 1, "every Lee on one core ({cores} cores): no gather to hold");
    app.run_roles("", &[]);
    let pool_mgmt = app.port_base + 4;
    let target = format!("sip:directory@{}", app.domain);
    let mut uas: Vec<Ua> = senders.iter().map(|a| registered(&app, a, a, &format!("{a}-pw"))).collect();
    for ua in &mut uas {
        let probe = ua.send_request("MESSAGE", &target, &ua.user(), &target, &[], b"probe");
        let r = ua.final_response(&probe, ANSWER_TIMEOUT).unwrap_or_else(|e| app.fail(&format!("probe: {e:?}")));
        assert!(r.status() == Some(407) && ua.take_challenge(&r), "expected 407 with a challenge, got\n{}", text(&r));
    }
    let held = http_post(pool_mgmt, "/debug/directory-hold?on=1").unwrap_or_else(|e| app.fail(&e));
    assert!(held.starts_with("HTTP/1.") && held.contains(" 200 ") && held.contains("held"), "{held}");

    // Back to back, without waiting: every search is in flight until the hold ends.
    let mut sent: Vec<Vec<String>> = vec![Vec::new(); uas.len()];
    for n in 0..81 {
        let k = n % uas.len();
        let ua = &mut uas[k];
        sent[k].push(ua.send_request("MESSAGE", &target, &ua.user(), &target, &[], b"lee").call_id);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut accepted = vec![0usize; uas.len()];
    let mut refused = Vec::new();
    for (k, ua) in uas.iter_mut().enumerate() {
        let mut finals = std::collections::HashSet::new();
        while finals.len() < sent[k].len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                app.fail(&format!(
                    "{}: only {} of {} final responses within 30 s",
                    senders[k],
                    finals.len(),
                    sent[k].len()
                ));
            }
            let m = ua.next_message(left).unwrap_or_else(|e| app.fail(&format!("waiting for responses: {e:?}")));
            if m.is_request() {
                app.fail(&format!("an answer arrived while the searches were held:\n{}", text(&m)));
            }
            let id = String::from_utf8_lossy(m.call_id()).into_owned();
            if m.status().unwrap_or(0) >= 200 && sent[k].contains(&id) && finals.insert(id) {
                if m.status() == Some(200) {
                    accepted[k] += 1;
                } else {
                    refused.push(m);
                }
            }
        }
    }
    let others: Vec<String> = refused.iter().take(3).map(text).collect();
    assert_eq!(
        accepted.iter().sum::<usize>(),
        80,
        "80 searches accepted; {} refused, such as\n{}",
        refused.len(),
        others.join("\n")
    );
    assert_eq!(refused.len(), 1, "one busy");
    let b = &refused[0];
    assert_eq!(b.status(), Some(503), "{}", text(b));
    assert!(text(b).contains("503 Service Unavailable: directory busy"), "{}", text(b));
    assert!(b.header(parapet::sip::HeaderName::RetryAfter).is_some(), "{}", text(b));
    let m = Metrics::pool(&app);
    assert_eq!(m.get("parapet_pool_directory_searches"), Some(80), "searches counted");
    assert_eq!(m.get("parapet_pool_directory_searches_busy"), Some(1), "busy counted");
    // The cap is the process's, whichever way a search comes: with 80 SIP searches in flight the API is busy too.
    let api = http_get(pool_mgmt, "/directory/search?q=lee");
    assert!(api.as_ref().is_err_and(|e| e.contains("503")), "API search at the cap: {api:?}");
    assert_eq!(Metrics::pool(&app).get("parapet_directory_api_busy"), Some(1), "API busy counted");

    // Released: the 80 held searches answer (each sender gets one per accepted search), each with the 15 Lees.
    let released = http_post(pool_mgmt, "/debug/directory-hold?on=0").unwrap_or_else(|e| app.fail(&e));
    assert!(released.contains(" 200 ") && released.contains("released"), "{released}");
    for (k, ua) in uas.iter_mut().enumerate() {
        for n in 0..accepted[k] {
            let req = ua
                .next_request(ANSWER_TIMEOUT)
                .unwrap_or_else(|e| app.fail(&format!("{} answer {n}: {e:?}", senders[k])));
            let body = String::from_utf8_lossy(req.body()).into_owned();
            ua.answer_with(&req, 200, "OK", |s| s);
            assert!(body.starts_with("15 found for \"lee\""), "{} answer {n}: {body}", senders[k]);
        }
    }
    // The permits were given back: searches after the burst are accepted again, over the API and SIP.
    let api = api_until(&app, "lee", "fifteen people once released", |b| b.matches("\"uri\"").count() == 15);
    assert!(api.contains("bo.lee"), "{api}");
    assert_eq!(send_message(&app, &mut uas[0], "directory", "lee"), 200);
}
