//! `parapet up`: everything a first run needs, with zero setup. Makes (once) a development PKI and demo users
//! under the data folder, writes one config per role, starts the edge and the pool co-located in one process
//! (`parapet run -c pool.toml -c edge.toml`: one executor per core runs both roles, linked in memory), or with
//! `--perimeter` as two processes that talk over mutual TLS exactly as two hosts would; waits until every port
//! accepts connections, and says where to connect; then keeps them running: a process that dies is restarted
//! ([`super::supervise`]). An enterprise pool (`--front-ends N`) always runs each front end and the edge apart.
//!
//! Ports, from `--port-base` B: B users (TLS), B+1 pool, B+2 edge internal, B+3 and B+4 management (edge, pool),
//! B+5 federation (mutual TLS; two demo partner organizations whose edges `loadgen federation` plays present
//! certificates from a CA of their own). The demo partners are inbound-only (`addr = "none"`): they only ever
//! send to us, so a user's request for them gets a final 403 saying so, never a connection to nowhere.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::supervise::{self, Role};
use crate::config::devpki;
use crate::store::directory::Directory;

pub struct UpOptions {
    pub data_dir: PathBuf,
    pub port_base: u16,
    pub cores: usize,
    pub domain: String,
    /// Extra users load1..loadN for loadgen and the benchmarks.
    pub load_users: usize,
    /// false: per-address flood limits lifted (a benchmark from one address), said loudly in the output.
    pub flood_limits: bool,
    /// true: an `[edge.federation]` listener with the demo partners (`DEMO_PARTNERS`).
    pub federation: bool,
    /// true: the pool's store on a PostgreSQL server of its own under `<data_dir>/pg` (`store::pgcluster`).
    pub store_postgres: bool,
    /// Front ends of the pool (1: the single pool; more: an enterprise pool, see [`super::up_pool`]).
    pub front_ends: usize,
    /// The first port of front ends 2 and up (None: port base + 10).
    pub front_end_ports: Option<u16>,
    /// Another `up` data dir to federate with ([`super::federate_with`]).
    pub federate_with: Option<PathBuf>,
    /// true: the edge and the pool as two processes over mutual TLS (the perimeter deployment); false: one
    /// process, co-located (a single pool only).
    pub perimeter: bool,
}

/// Demo partner organizations (domain, the name their edge's certificate carries), issued by a CA of their own
/// (`pki/partners-ca.pem`); certificate and key for each are `pki/<domain>.pem` and `.key`.
pub const DEMO_PARTNERS: [(&str, &str); 2] = [("partner.test", "edge.partner.test"), ("other.test", "edge.other.test")];
/// Offset from the port base where partners connect. A port
/// of its own rather than the users' one (which `[edge.federation]` without `listen` would share): on a shared
/// port the TLS handshake asks every client for a certificate, and linphone's console client then stops to
/// prompt for one — not what a first run should show. 0 here would make `up` share the users' port.
pub const FEDERATION_PORT_OFFSET: u16 = 5;
/// The highest offset `up` uses.
const PORT_OFFSET_MAX: u16 = FEDERATION_PORT_OFFSET;
// The end-to-end tests give each appliance a block of 10 ports.
const _: () = assert!(PORT_OFFSET_MAX < 10);

/// Flood limits a benchmark cannot reach from one address (message size, in-flight and queue limits stay).
const NO_FLOOD_LIMITS: &str = "\n[edge.flood]\nconnections_per_ip_max = 4000000000\n\
    new_connections_per_ip_per_s = 1000000000.0\nmessages_per_ip_per_s = 1000000000.0\n\
    messages_per_ip_burst = 1000000000.0\nmessages_per_user_per_s = 1000000000.0\n\
    messages_per_user_burst = 1000000000.0\n";

const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn up(o: &UpOptions) -> Result<(), String> {
    super::run::init_logging("info");
    let ctx = |what: &str, p: &Path, e: std::io::Error| format!("up: {what} {}: {e}", p.display());
    std::fs::create_dir_all(&o.data_dir).map_err(|e| ctx("cannot create", &o.data_dir, e))?;
    let dir = o.data_dir.canonicalize().map_err(|e| ctx("cannot resolve", &o.data_dir, e))?;
    let d = &o.domain;
    let edge_name = format!("edge.{d}");
    let pool_name = format!("pool.{d}");
    let pki = devpki::ensure(
        &dir.join("pki"),
        &["localhost".to_string(), d.clone(), edge_name.clone()],
        std::slice::from_ref(&pool_name),
    )
    .map_err(|e| ctx("cannot make the development PKI in", &dir.join("pki"), e))?;
    // The demo application (`cargo run -p agent --example echo`, printed below) and its client certificate.
    let echo_name = format!("echo.apps.{d}");
    let (echo_cert, echo_key) = devpki::issue_leaf(&dir.join("pki"), "echo-app", std::slice::from_ref(&echo_name))
        .map_err(|e| ctx("cannot make the demo application's certificate in", &dir.join("pki"), e))?;
    let peer = o.federate_with.as_deref().map(super::federate_with::Peer::read).transpose()?;
    let peer_domain = peer.as_ref().map_or("", |p| p.domain.as_str());
    // A partner cannot have our own domain (`up --domain partner.test` makes the partner's appliance), nor the
    // organization we federate with (listed as it really runs instead).
    let partners: Vec<(&str, &str)> = if o.federation {
        DEMO_PARTNERS
            .iter()
            .copied()
            .filter(|(p, _)| !p.eq_ignore_ascii_case(d) && !p.eq_ignore_ascii_case(peer_domain))
            .collect()
    } else {
        Vec::new()
    };
    let partners_ca = if partners.is_empty() {
        None
    } else {
        let want: Vec<(String, Vec<String>)> =
            partners.iter().map(|(p, name)| (p.to_string(), vec![name.to_string(), p.to_string()])).collect();
        let (ca, _) = devpki::ensure_partners(&dir.join("pki"), &want)
            .map_err(|e| ctx("cannot make the demo partners' certificates in", &dir.join("pki"), e))?;
        Some(ca)
    };
    let users_file = dir.join("users.toml");
    let users = Directory::write_demo_with_load(&users_file, o.load_users)
        .map_err(|e| ctx("cannot write demo users", &users_file, e))?;

    if o.port_base.checked_add(PORT_OFFSET_MAX).is_none() {
        return Err(format!(
            "up: --port-base {} leaves no room for the {} ports up uses",
            o.port_base,
            PORT_OFFSET_MAX + 1
        ));
    }
    let (user_port, pool_port, internal_port) = (o.port_base, o.port_base + 1, o.port_base + 2);
    let fed_port = o.port_base + FEDERATION_PORT_OFFSET;
    let mut listeners =
        vec![("remote users' TLS port", user_port), ("pool port", pool_port), ("edge internal port", internal_port)];
    if partners_ca.is_some() && fed_port != user_port {
        listeners.push(("federation port", fed_port));
    }
    for &(what, port) in &listeners {
        crate::net::listener::ensure_port_free(addr(port), what)
            .map_err(|e| format!("up: {e} (choose another --port-base, or --federation off)"))?;
    }
    let edge_toml = format!(
        "# Written by `parapet up` at every start; copy it elsewhere to customise.\n\
         domain = \"{d}\"\n\n[edge]\ncores = {cores}\nlisten = \"{user}\"\ninternal_listen = \"{internal}\"\n\
         cert = \"pki/edge.pem\"\nkey = \"pki/edge.key\"\nca = \"pki/ca.pem\"\n\n\
         [edge.pool]\nname = \"{pool_name}\"\naddr = \"{pool}\"\n\n[mgmt]\nlisten = \"{mgmt}\"\nrollup_database = \"reports.db\"\n",
        mgmt = addr(o.port_base + 3),
        cores = o.cores,
        user = addr(user_port),
        internal = addr(internal_port),
        pool = addr(pool_port),
    );
    let pool_toml = format!(
        "# Written by `parapet up` at every start; copy it elsewhere to customise.\n\
         domain = \"{d}\"\n\n[pool]\ncores = {cores}\nlisten = \"{pool}\"\n\
         cert = \"pki/pool.pem\"\nkey = \"pki/pool.key\"\nca = \"pki/ca.pem\"\ndirectory = \"users.toml\"\n\n\
         [[pool.edges]]\nname = \"{edge_name}\"\naddr = \"{internal}\"\n\n\
         # A demo help desk (README): a MESSAGE to it reaches bob or carol, whoever is available.\n\
         [[helpdesk]]\naddress = \"sip:helpdesk@{d}\"\nmembers = [\"sip:bob@{d}\", \"sip:carol@{d}\"]\n\n\
         [mgmt]\nlisten = \"{mgmt}\"\n",
        mgmt = addr(o.port_base + 4),
        cores = o.cores,
        pool = addr(pool_port),
        internal = addr(internal_port),
    );
    let pool_toml = format!(
        "{pool_toml}\n# The demo application: `cargo run -p agent --example echo` (see docs/agents.md).\n\
         [[applications]]\nname = \"echo\"\ncert_name = \"{echo_name}\"\nagents = [\"sip:echo@{d}\"]\n"
    );
    // Dropped (the server stopped) when `up` returns, after the roles.
    let pg = if o.store_postgres {
        Some(crate::store::pgcluster::ensure_cluster(&dir).map_err(|e| format!("up: {e}"))?)
    } else {
        None
    };
    let pool_toml = match &pg {
        Some(c) => format!(
            "{pool_toml}
[store]
url = \"{}\"\n",
            c.url()
        ),
        None => pool_toml,
    };
    let mut edge_toml = if o.flood_limits { edge_toml } else { format!("{edge_toml}{NO_FLOOD_LIMITS}") };
    if let Some(partners_ca) = &partners_ca {
        let listen = (fed_port != user_port).then_some(fed_port);
        let mut fed = federation_toml(listen, &partners);
        if let Some(peer) = &peer {
            let bundle = dir.join("pki").join("federation-ca.pem");
            peer.write_bundle(partners_ca, &bundle)?;
            fed = fed.replace("ca = \"pki/partners-ca.pem\"", "ca = \"pki/federation-ca.pem\"");
            fed.push_str(&peer.partner_toml());
        }
        edge_toml.push_str(&fed);
    } else if peer.is_some() {
        return Err("up: --federate-with needs federation (--federation on, and a demo partner left)".into());
    }
    let front_ends = super::up_pool::plan(&dir, o.port_base, o.front_end_ports, o.front_ends)?;
    let enterprise = front_ends.len() > 1;
    if enterprise {
        edge_toml.push_str(&super::up_pool::edge_roster_toml(&front_ends));
        if let Some(c) = &pg {
            // The edge reads the members' leases from the pool's store.
            edge_toml.push_str(&format!("\n[store]\nurl = \"{}\"\n", c.url()));
        }
    }
    let edge_cfg = dir.join("edge.toml");
    let pool_cfg = dir.join("pool.toml");
    std::fs::write(&edge_cfg, edge_toml).map_err(|e| ctx("cannot write", &edge_cfg, e))?;
    for fe in front_ends.iter().filter(|_| enterprise) {
        let Some(first) = front_ends.first() else { break };
        let toml = super::up_pool::front_end_toml(&pool_toml, first, fe);
        std::fs::write(&fe.config, toml).map_err(|e| ctx("cannot write", &fe.config, e))?;
        if fe.name != first.name {
            crate::net::listener::ensure_port_free(fe.listen, fe.name).map_err(|e| format!("up: {e}"))?;
            listeners.push(("front end", fe.listen.port()));
        }
    }
    std::fs::write(&pool_cfg, pool_toml).map_err(|e| ctx("cannot write", &pool_cfg, e))?;

    let set = super::run::signals();
    let colocated = !enterprise && !o.perimeter;
    let mut roles = if enterprise {
        front_ends.iter().map(|fe| Role::start(fe.name, &fe.config)).collect::<Result<Vec<_>, _>>()?
    } else if colocated {
        vec![Role::start_many("edge+pool", &[pool_cfg.clone(), edge_cfg.clone()])?]
    } else {
        vec![Role::start("pool", &pool_cfg)?]
    };
    if !colocated {
        match Role::start("edge", &edge_cfg) {
            Ok(edge) => roles.push(edge),
            Err(e) => {
                supervise::stop(&mut roles);
                return Err(e);
            }
        }
    }
    let ready: Vec<SocketAddr> = listeners.iter().map(|&(_, p)| addr(p)).collect();
    if let Err(e) = supervise::wait_ready(&mut roles, &ready, READY_TIMEOUT) {
        supervise::stop(&mut roles);
        return Err(e);
    }

    let told = match &peer {
        Some(p) => match p.tell(d, &edge_name, addr(fed_port), &pki.ca_cert) {
            Ok(s) => Some(s),
            Err(e) => {
                supervise::stop(&mut roles);
                return Err(e);
            }
        },
        None => None,
    };
    let mut out = std::io::stdout().lock();
    let fed_field = if partners_ca.is_some() { format!(" federation={}", addr(fed_port)) } else { String::new() };
    let _ = writeln!(
        out,
        "PARAPET_READY edge={} domain={d} ca={} users={}{fed_field}",
        addr(user_port),
        pki.ca_cert.display(),
        users_file.display()
    );
    let _ = writeln!(out, "parapet is up.");
    let _ = writeln!(out, "  SIP domain     {d}");
    let _ = writeln!(
        out,
        "  connect to     sip:{};transport=tls  (names in its certificate: localhost, {d}, {edge_name}, 127.0.0.1)",
        addr(user_port)
    );
    let _ = writeln!(out, "  trust this CA  {}", pki.ca_cert.display());
    let _ = writeln!(out, "  demo users     (digest realm {d})");
    for (alias, pw) in users.iter().filter(|(a, _)| !a.starts_with("load")) {
        let _ = writeln!(out, "    sip:{alias}@{d}  password {pw}");
    }
    if o.load_users > 0 {
        let _ = writeln!(
            out,
            "    and {} load users load1..load{} (passwords in {})",
            o.load_users,
            o.load_users,
            users_file.display()
        );
    }
    let _ = writeln!(
        out,
        "  metrics        http://{}/metrics (edge), http://{}/metrics (pool)",
        addr(o.port_base + 3),
        addr(o.port_base + 4)
    );
    if let Some(ca) = &partners_ca {
        let names: Vec<&str> = partners.iter().map(|(p, _)| *p).collect();
        let _ = writeln!(
            out,
            "  federation     {} (mutual TLS; partners' certificates must chain to {})",
            addr(fed_port),
            ca.display()
        );
        let _ = writeln!(
            out,
            "    demo partners {}: certificate and key in {}/<domain>.pem and .key (`loadgen federation` plays them)",
            names.join(", "),
            dir.join("pki").display()
        );
    }
    let _ = writeln!(
        out,
        "  application    sip:echo@{d}: cargo run -p agent --example echo -- --pool {} --server-name {pool_name} \
         --ca {} --cert {} --key {} --agent sip:echo@{d}",
        addr(pool_port),
        pki.ca_cert.display(),
        echo_cert.display(),
        echo_key.display()
    );
    if let Some(t) = &told {
        let _ = writeln!(out, "  federated with {t}");
    }
    let _ = writeln!(out, "  configs        {} and {}", edge_cfg.display(), pool_cfg.display());
    let processes = if colocated {
        "one: edge and pool co-located, linked in memory (--perimeter: two, over mutual TLS)"
    } else if enterprise {
        "one per front end and one edge, over mutual TLS"
    } else {
        "two: edge and pool over mutual TLS (perimeter)"
    };
    let _ = writeln!(out, "  processes      {processes}");
    if let Some(c) = &pg {
        let _ = writeln!(out, "  store          PostgreSQL {} (cluster in {})", c.url(), c.root().display());
    }
    if enterprise {
        let names: Vec<String> = front_ends.iter().map(|f| format!("{} ({})", f.name, f.listen)).collect();
        let _ =
            writeln!(out, "  front ends     {} (`parapet pool -c {} status`)", names.join(", "), pool_cfg.display());
    }
    if !o.flood_limits {
        let _ = writeln!(
            out,
            "  WARNING        per-address flood limits are OFF (--flood-limits off): for benchmarks only"
        );
    }
    let _ = writeln!(out, "Stop with Ctrl-C.");
    drop(out);

    // From here on a role that dies is restarted (supervise); Ctrl-C or SIGTERM stops both.
    supervise::supervise(&mut roles, &set)
}

/// The `[edge.federation]` tables: partners on our users' port (or on `listen`), trusting the demo partners' CA,
/// and each partner, inbound-only (`addr = "none"`): only `loadgen federation` plays them, toward us.
fn federation_toml(listen: Option<u16>, partners: &[(&str, &str)]) -> String {
    let listen = match listen {
        Some(port) => format!("listen = \"{}\"\n", addr(port)),
        None => "# No `listen`: partners connect to [edge] listen, like users (they present a certificate).\n".into(),
    };
    let mut s = format!(
        "\n# Demo federation: partner organizations whose edges `loadgen federation` plays with pki/<domain>.pem.\n\
         # Inbound-only (addr = \"none\"): our users' requests for them get 403. Replace with real partners (README).\n\
         [edge.federation]\n{listen}ca = \"pki/partners-ca.pem\"\n"
    );
    for (domain, cert_name) in partners {
        s.push_str(&format!(
            "\n[[edge.federation.partners]]\ndomain = \"{domain}\"\ncert_name = \"{cert_name}\"\naddr = \"{}\"\n",
            crate::config::federation::INBOUND_ONLY
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_federation_section_is_a_valid_partner_table() {
        let text = format!("domain = \"example.com\"\n[edge]\n{}", federation_toml(Some(5066), &DEMO_PARTNERS));
        let c = crate::config::Config::from_toml_str(&text, Path::new("/data")).expect("parses");
        let f = c.edge.and_then(|e| e.federation).expect("federation");
        assert_eq!(f.listen, Some(addr(5066)), "a federation port of its own");
        let shared = format!("domain = \"example.com\"\n[edge]\n{}", federation_toml(None, &DEMO_PARTNERS));
        let c = crate::config::Config::from_toml_str(&shared, Path::new("/data")).expect("parses");
        assert_eq!(c.edge.and_then(|e| e.federation).and_then(|f| f.listen), None, "or the users' port, shared");
        assert_eq!(f.ca, PathBuf::from("/data/pki/partners-ca.pem"));
        let p: Vec<(&str, &str, bool)> =
            f.partners.iter().map(|p| (p.domain.as_str(), p.cert_name.as_str(), p.addr.is_none())).collect();
        assert_eq!(p, [("partner.test", "edge.partner.test", true), ("other.test", "edge.other.test", true)]);
    }
}
