//! Home pools from the directory (`[directory.sources] pool`, `[directory.sources.mapping] pool`,
//! `[edge.homes] database`): one real OpenLDAP forest with two sources, `hq` (ou=people, the default pool "main")
//! and `branch` (ou=branch, the whole source homed on the Standard Edition pool "branch"); each pool syncs the
//! directory into its own store, the edge reads the homes from the default pool's store. pjsip users of both pools
//! register through the one edge (each pool refuses the other's users, so a 200 says where a REGISTER went) and
//! message each other. Then ann's entry names her home (`businessCategory: branch`): after the syncs and the
//! edge's re-read she registers on "branch" and messages still flow both ways.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::pjsua::Agent;
use crate::pool_failover::message_delivered;
use crate::pools_several::{branch_config, main_pool_config, read, write};
use crate::rawsip::{text, Ua};
use crate::support::{self, free_port_base, run_bounded, Appliance};
use crate::support_ldap::{people_ldif, person_ldif, Slapd, ROOT_PASSWORD};
use crate::support_members::spawn_role;

const CORP: &str = "dc=corp,dc=test";

fn sync(app: &Appliance, cfg: &Path) -> String {
    let mut cmd = Command::new(support::parapet_bin());
    cmd.args(["directory", "sync", "-c"]).arg(cfg);
    run_bounded(&mut cmd, Duration::from_secs(120)).unwrap_or_else(|e| app.fail(&format!("directory sync: {e}")))
}

fn pjsip_registered(app: &Appliance, label: &str, alias: &str, password: &str) -> Agent {
    let mut agent = Agent::spawn(app, label, alias, password);
    let ev = agent.register();
    agent.check(ev.int("code") == Some(200), || format!("pjsip REGISTER {alias}: expected 200, got {ev}"));
    agent
}

/// Waits until the edge's log says it read a table with `homed` people homed on other pools.
fn edge_read_homes(app: &Appliance, homed: usize) {
    let log = app.scratch.join("edge.stderr");
    let want = format!("homed={homed}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().any(|l| l.contains("home pools read") && l.contains(&want)) {
            return;
        }
        if Instant::now() >= deadline {
            app.fail(&format!("the edge did not read {want} within 20 s; its log:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pools_homes_from_ldap_and_a_move() {
    let app = Appliance::prepare("pools-directory", &["--federation", "off", "--cores", "1"]);
    app.wait_ports_released();
    let dir = app.data_dir.clone();
    let ldap_dir = app.scratch.join("ldap");
    let mut base = people_ldif(CORP, "corp", &[("ann", "Ann", "Lee", "ann.lee@corp.test", "ann-pw")]);
    base.push_str(&format!("dn: ou=branch,{CORP}\nobjectClass: organizationalUnit\nou: branch\n\n"));
    base.push_str(
        &person_ldif(CORP, "carl", "Carl", "Ng", "carl.ng@corp.test", "carl-pw").replace(",ou=people,", ",ou=branch,"),
    );
    let corp = Slapd::start(&ldap_dir.join("corp"), CORP, free_port_base(), false, &dir.join("pki"), &base);
    write(&app, &ldap_dir.join("root.secret"), ROOT_PASSWORD);
    let source = |name: &str, ou: &str, home: &str| {
        format!(
            "\n[[directory.sources]]\nname = \"{name}\"\nkind = \"ldap\"\nurl = \"{url}\"\nstarttls = true\n\
             ca = \"{ca}\"\nbind_dn = \"cn=admin,{CORP}\"\npassword_file = \"{secret}\"\nbase_dn = \"ou={ou},{CORP}\"\n\
             filter = \"(objectClass=inetOrgPerson)\"\n{home}\
             [directory.sources.mapping]\ncredentials = \"password:userPassword\"\npool = \"businessCategory\"\n",
            url = corp.url(),
            ca = corp.ca.display(),
            secret = ldap_dir.join("root.secret").display(),
        )
    };
    let mut directory = String::from("\n[directory]\ninterval_s = 0\nmax_delete_share = 1.0\n");
    directory.push_str(&source("hq", "people", ""));
    directory.push_str(&source("branch", "branch", "pool = \"branch\"\n"));

    // Both pools read the same directory into their own stores; "main" also serves people homed nowhere.
    let (main_cfg, main) = main_pool_config(&app, &directory);
    let b2 = support::free_port_base();
    let branch_cfg = branch_config(&app, &main, b2);
    let edge_cfg = dir.join("edge.toml");
    let edge = format!(
        "{}\n[[edge.pools]]\nname = \"branch\"\naddr = \"127.0.0.1:{b2}\"\n\n\
         [edge.homes]\ndatabase = \"parapet.db\"\nreload_s = 1\n",
        read(&app, &edge_cfg)
    );
    write(&app, &edge_cfg, &edge);
    for cfg in [&main_cfg, &branch_cfg] {
        let out = sync(&app, cfg);
        assert!(out.lines().any(|l| l.starts_with("create\tann.lee\thq")), "{out}");
        assert!(out.lines().any(|l| l == "create\tcarl.ng\tbranch\tCarl Ng\tpool=branch"), "{out}");
    }

    let roles = vec![
        spawn_role(&app, "main", &main_cfg, app.port_base + 1),
        spawn_role(&app, "branch", &branch_cfg, b2),
        spawn_role(&app, "edge", &edge_cfg, app.port_base),
    ];
    // The edge read the homes before it started listening.
    let d = app.domain.clone();
    let mut ann = pjsip_registered(&app, "ann", "ann.lee", "ann-pw");
    let mut carl = pjsip_registered(&app, "carl", "carl.ng", "carl-pw");
    message_delivered(&mut ann, &mut carl, &format!("sip:carl.ng@{d}"), "main to branch");
    message_delivered(&mut carl, &mut ann, &format!("sip:ann.lee@{d}"), "branch to main");
    drop(ann);

    // ann's entry names her home: after both syncs and the edge's re-read, she is the branch pool's.
    corp.modify(&format!(
        "dn: uid=ann,ou=people,{CORP}\nchangetype: modify\nadd: businessCategory\nbusinessCategory: branch\n"
    ));
    for cfg in [&branch_cfg, &main_cfg] {
        let out = sync(&app, cfg);
        assert!(out.lines().any(|l| l == "update\tann.lee\thq\tAnn Lee\tpool=branch"), "{out}");
    }
    edge_read_homes(&app, 2);
    // The branch pool takes its new view within a second or two: until then it refuses her (403).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut ua = Ua::connect_ok(&app, "ann-raw", None);
        let r = ua.register("ann.lee", "ann-pw").unwrap_or_else(|e| app.fail(&e));
        if r.status() == Some(200) {
            break;
        }
        if Instant::now() >= deadline {
            app.fail(&format!("ann's REGISTER after her move: no 200 within 20 s; last:\n{}", text(&r)));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut ann = pjsip_registered(&app, "ann-moved", "ann.lee", "ann-pw");
    message_delivered(&mut carl, &mut ann, &format!("sip:ann.lee@{d}"), "within the branch");
    message_delivered(&mut ann, &mut carl, &format!("sip:carl.ng@{d}"), "back within the branch");
    drop(roles);
}
