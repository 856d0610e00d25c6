//! Several pools behind one edge (`[[edge.pools]]`, `[edge.homes]`): the users file's `pool` column homes bob on
//! a second Standard Edition pool ("branch", its own SQLite store), alice on the default one ("main"); pjsip
//! clients register through the one edge, each at their own home, and message across the pools; alice's contact
//! list shows bob's presence. carol, homed on a pool no edge entry names, goes to the default pool, which refuses
//! her naming her home.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pjsua::Agent;
use crate::pool_failover::{message_delivered, registered_at};
use crate::support::{self, Appliance};
use crate::support_members::{spawn_role, Proc};

/// Adds `line` to the `[[user]]` table of `alias` in a users file `parapet up` wrote.
pub(crate) fn home_user(app: &Appliance, file: &Path, alias: &str, pool: &str) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| app.fail(&format!("read {}: {e}", file.display())));
    let key = format!("alias = \"{alias}\"\n");
    if !text.contains(&key) {
        app.fail(&format!("no {key:?} in {}:\n{text}", file.display()));
    }
    let text = text.replacen(&key, &format!("{key}pool = \"{pool}\"\n"), 1);
    std::fs::write(file, text).unwrap_or_else(|e| app.fail(&format!("write {}: {e}", file.display())));
}

pub(crate) fn write(app: &Appliance, path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| app.fail(&format!("mkdir {}: {e}", dir.display())));
    }
    std::fs::write(path, text).unwrap_or_else(|e| app.fail(&format!("write {}: {e}", path.display())));
}

pub(crate) fn read(app: &Appliance, path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| app.fail(&format!("read {}: {e}", path.display())))
}

/// The default pool "main": data/pool.toml with `home = "main"`, also serving users homed nowhere in particular,
/// and `extra` appended; written. Its path and text.
pub(crate) fn main_pool_config(app: &Appliance, extra: &str) -> (PathBuf, String) {
    let path = app.data_dir.join("pool.toml");
    let text = read(app, &path).replacen(
        "directory = \"users.toml\"\n",
        "directory = \"users.toml\"\nhome = \"main\"\nhome_default = true\n",
        1,
    ) + extra;
    write(app, &path, &text);
    (path, text)
}

/// `main`'s pool config (the text of data/pool.toml with `home = "main"`) made into the "branch" pool's, in a
/// folder of its own (its own store) on ports from `b2`; written, its path returned.
pub(crate) fn branch_config(app: &Appliance, main: &str, b2: u16) -> PathBuf {
    other_pool_config(app, main, &app.data_dir.join("branch").join("pool.toml"), b2, b2 + 1, "home = \"branch\"\n")
}

/// `main`'s pool config made into another pool's at `path` (a folder under the data folder: its own store),
/// listening on `listen`, its management on `mgmt`, `home` (lines) instead of main's home; written.
pub(crate) fn other_pool_config(
    app: &Appliance,
    main: &str,
    path: &Path,
    listen: u16,
    mgmt: u16,
    home: &str,
) -> PathBuf {
    let text = main
        .replace("\"pki/", "\"../pki/")
        .replace("directory = \"users.toml\"", "directory = \"../users.toml\"")
        .replace(&format!("127.0.0.1:{}\"\ncert", app.port_base + 1), &format!("127.0.0.1:{listen}\"\ncert"))
        .replace(&format!("127.0.0.1:{}", app.port_base + 4), &format!("127.0.0.1:{mgmt}"))
        .replace("home = \"main\"\nhome_default = true\n", home);
    if !text.contains(&format!("listen = \"127.0.0.1:{listen}\"")) {
        app.fail(&format!("{}: the pool's config did not take its port:\n{text}", path.display()));
    }
    write(app, path, &text);
    path.to_path_buf()
}

#[test]
fn pools_users_homed_on_two_pools_register_and_message_across() {
    let mut app = Appliance::start_with_args("pools-several", &["--federation", "off", "--cores", "1"]);
    if app.sigterm_and_wait(Duration::from_secs(30)).is_none() {
        app.fail("`parapet up` did not exit within 30 s of SIGTERM");
    }
    app.wait_ports_released();
    let dir = app.data_dir.clone();
    let users = dir.join("users.toml");
    home_user(&app, &users, "bob", "branch");
    home_user(&app, &users, "carol", "nowhere");

    // The default pool: "main", also serving users homed nowhere in particular (alice).
    let (main_cfg, main) = main_pool_config(&app, "");
    // A second Standard Edition pool in a folder of its own (its own store), on ports of its own.
    let b2 = support::free_port_base();
    let branch_cfg = branch_config(&app, &main, b2);
    let edge_cfg = dir.join("edge.toml");
    let edge = format!(
        "{}\n[[edge.pools]]\nname = \"branch\"\naddr = \"127.0.0.1:{b2}\"\n\n[edge.homes]\nusers = \"users.toml\"\n",
        read(&app, &edge_cfg)
    );
    write(&app, &edge_cfg, &edge);

    let roles: Vec<Proc> = vec![
        spawn_role(&app, "main", &main_cfg, app.port_base + 1),
        spawn_role(&app, "branch", &branch_cfg, b2),
        spawn_role(&app, "edge", &edge_cfg, app.port_base),
    ];

    // Each pool refuses the other's users: alice registering at all means she reached "main", bob "branch".
    let mut alice = registered_at(&app, "alice", "alice");
    let mut bob = registered_at(&app, "bob", "bob");
    let d = app.domain.clone();
    message_delivered(&mut alice, &mut bob, &format!("sip:bob@{d}"), "main to branch");
    message_delivered(&mut bob, &mut alice, &format!("sip:alice@{d}"), "branch to main");

    // alice's contact list (on "main") shows bob's presence (on "branch"): watched through the edge.
    crate::presence_raw::contacts(&app, &["add", "alice", "bob", "--name", "Bob"]);
    bob.send(r#"{"cmd":"publish","status":"busy","note":"At the branch"}"#);
    let me = app.user("alice");
    let mut raw = crate::malformed::Raw::connect(&app);
    crate::challenges::raw_register(&app, &mut raw, &me.alias, &me.password);
    let call_id = format!("pools-rls-{}", crate::malformed::uniq());
    let first = crate::presence_raw::subscribe_list(&mut raw, &me, &call_id, 1, "Supported: eventlist\r\n");
    let mut seen = Vec::new();
    if first.status_line().starts_with("NOTIFY ") {
        raw.send_ok(crate::presence_raw::ok_to(&first).as_bytes(), "200 to NOTIFY");
    } else {
        seen.push(first);
    }
    crate::pool_presence::wait_list_note(&mut raw, &mut seen, "At the branch");

    let carol = app.user("carol");
    let mut c = Agent::spawn(&app, "carol", &carol.alias, &carol.password);
    let ev = c.register();
    c.check(ev.int("code") == Some(403), || format!("carol (homed on an unknown pool) REGISTER: {ev}"));
    c.check(ev.str("reason").is_some_and(|r| r.contains("nowhere")), || format!("403 without her home: {ev}"));
    drop(roles);
}
