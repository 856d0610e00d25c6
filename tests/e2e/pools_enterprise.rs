//! An enterprise pool as an extra pool (`[[edge.pools]]` with `[edge.pools.roster]`): the default pool "main" is
//! a Standard Edition server; "ent" is an enterprise pool of two front ends sharing a SQLite store of its own.
//! bob and carol are homed on "ent", alice on "main"; pjsip clients register through the one edge and message
//! across the pools. kill -9 of the front end owning bob: the edge routes his requests to the survivor, which
//! took him over from the store (he does not register again), and messages reach him and carol.

use std::time::{Duration, Instant};

use parapet::proto::membership::owner;
use parapet::store::members::{now_ms, roster_of};

use crate::pool_failover::{message_delivered, registered_at};
use crate::pools_several::{home_user, main_pool_config, other_pool_config, read, write};
use crate::support::{self, Appliance};
use crate::support_members::{spawn_role, Proc};

/// The member of "ent" owning `aor` now, by the leases in its store.
fn ent_owner(app: &Appliance, db: &std::path::Path, aor: &str) -> Option<String> {
    let mut store = parapet::store::open(None, db).unwrap_or_else(|e| app.fail(&format!("{}: {e}", db.display())));
    let rows = store.members().unwrap_or_else(|e| app.fail(&e.to_string()));
    owner(aor, &roster_of(rows), now_ms()).map(|m| m.name.clone())
}

#[test]
fn pools_enterprise_extra_pool_survives_a_member_kill() {
    let app = Appliance::prepare("pools-enterprise", &["--federation", "off", "--cores", "1"]);
    app.wait_ports_released();
    let dir = app.data_dir.clone();
    let users = dir.join("users.toml");
    home_user(&app, &users, "bob", "ent");
    home_user(&app, &users, "carol", "ent");

    let (main_cfg, main) = main_pool_config(&app, "");
    // Two front ends of "ent" in one folder: one store (ent/parapet.db), ports of their own.
    let b2 = support::free_port_base();
    let member = |name: &str, listen: u16| {
        let cfg = other_pool_config(
            &app,
            &main,
            &dir.join("ent").join(format!("{name}.toml")),
            listen,
            listen + 1,
            "home = \"ent\"\n",
        );
        let text = format!("{}\n[pool.member]\nname = \"{name}\"\n", read(&app, &cfg));
        write(&app, &cfg, &text);
        cfg
    };
    let fe = [("fe1", b2, member("fe1", b2)), ("fe2", b2 + 2, member("fe2", b2 + 2))];
    let edge_cfg = dir.join("edge.toml");
    let edge = format!(
        "{}\n[[edge.pools]]\nname = \"ent\"\n[edge.pools.roster]\ndatabase = \"ent/parapet.db\"\nread_ms = 200\n\
         [[edge.pools.roster.members]]\nname = \"fe1\"\naddr = \"127.0.0.1:{b2}\"\n\
         [[edge.pools.roster.members]]\nname = \"fe2\"\naddr = \"127.0.0.1:{}\"\n\n\
         [edge.homes]\nusers = \"users.toml\"\n",
        read(&app, &edge_cfg),
        b2 + 2
    );
    write(&app, &edge_cfg, &edge);

    let _main = spawn_role(&app, "main", &main_cfg, app.port_base + 1);
    let mut members: Vec<(&str, Proc)> =
        fe.iter().map(|(n, port, cfg)| (*n, spawn_role(&app, n, cfg, *port))).collect();
    let _edge = spawn_role(&app, "edge", &edge_cfg, app.port_base);

    // Each pool refuses the other's users: a 200 says where a REGISTER went.
    let d = app.domain.clone();
    let bob_aor = format!("bob@{d}");
    let db = dir.join("ent").join("parapet.db");
    // Both members' leases are in the store before anyone registers (else the first owner is the fallback's).
    let deadline = Instant::now() + Duration::from_secs(20);
    while parapet::store::open(None, &db).ok().and_then(|mut s| s.members().ok()).map_or(0, |m| m.len()) < 2 {
        if Instant::now() >= deadline {
            app.fail("ent's two members did not take their leases within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut alice = registered_at(&app, "alice", "alice");
    let mut bob = registered_at(&app, "bob", "bob");
    let mut carol = registered_at(&app, "carol", "carol");
    message_delivered(&mut alice, &mut bob, &format!("sip:{bob_aor}"), "main to ent");
    message_delivered(&mut bob, &mut alice, &format!("sip:alice@{d}"), "ent to main");
    message_delivered(&mut bob, &mut carol, &format!("sip:carol@{d}"), "within ent");

    // bob's binding is written behind to ent's store; then kill -9 of his owner. The survivor takes him over
    // when the dead member's lease runs out, loading his binding: he does not register again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !parapet::store::open(None, &db)
        .ok()
        .and_then(|mut s| s.states_of(&bob_aor, now_ms() / 1000).ok())
        .is_some_and(|rows| rows.iter().any(|r| r.kind == "reg"))
    {
        if Instant::now() >= deadline {
            app.fail("bob's registration not written to ent's store within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(old) = ent_owner(&app, &db, &bob_aor) else { app.fail("no owner of bob in ent's store") };
    let i = members.iter().position(|(n, _)| *n == old).unwrap_or_else(|| app.fail(&format!("owner {old}?")));
    let (_, dead) = members.remove(i);
    dead.kill9();
    let survivor = members[0].0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ent_owner(&app, &db, &bob_aor).as_deref() != Some(survivor) {
        if Instant::now() >= deadline {
            app.fail(&format!("bob not owned by {survivor} within 10 s of {old}'s kill -9"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    message_delivered(&mut alice, &mut bob, &format!("sip:{bob_aor}"), "after the kill");
    message_delivered(&mut bob, &mut alice, &format!("sip:alice@{d}"), "back after the kill");
    message_delivered(&mut alice, &mut carol, &format!("sip:carol@{d}"), "carol after the kill");
}
