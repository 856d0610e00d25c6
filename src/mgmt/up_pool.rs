//! `parapet up --front-ends N`: an enterprise pool on one machine. The first front end is the usual pool
//! (port base + 1, management + 4); front end i ≥ 2 listens on E + 2(i-2) and serves management on the port
//! after, E being `--front-end-ports` (default: port base + 10). All share the store file under the data folder (SQLite, WAL, several writers); the edge reads
//! their leases from it (`[edge.roster]`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Names of the front ends (`[pool.member] name`); their count bounds `--front-ends`.
pub const FRONT_END_NAMES: [&str; 8] = ["fe1", "fe2", "fe3", "fe4", "fe5", "fe6", "fe7", "fe8"];
/// The first port of front ends 2 and up, by default: this far past the port base.
pub const EXTRA_PORT_OFFSET: u16 = 10;

/// One front end of the pool `up` runs.
pub struct FrontEnd {
    pub name: &'static str,
    pub listen: SocketAddr,
    pub mgmt: SocketAddr,
    pub config: PathBuf,
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The front ends' ports and config paths (`extra_base`: the first port of front ends 2 and up, None for the
/// default); an error when `n` is out of range or the ports overflow.
pub fn plan(dir: &Path, port_base: u16, extra_base: Option<u16>, n: usize) -> Result<Vec<FrontEnd>, String> {
    let extra = match extra_base {
        Some(e) => Some(e),
        None => port_base.checked_add(EXTRA_PORT_OFFSET),
    };
    if n == 0 || n > FRONT_END_NAMES.len() {
        return Err(format!("up: --front-ends {n}: expected 1 to {}", FRONT_END_NAMES.len()));
    }
    let mut out = Vec::with_capacity(n);
    for (i, name) in FRONT_END_NAMES.iter().take(n).enumerate() {
        let (listen, mgmt) = if i == 0 {
            (port_base.checked_add(1), port_base.checked_add(4))
        } else {
            let off = u16::try_from(2 * (i - 1)).unwrap_or(u16::MAX);
            let first = extra.and_then(|e| e.checked_add(off));
            (first, first.and_then(|p| p.checked_add(1)))
        };
        let (Some(l), Some(m)) = (listen, mgmt) else {
            return Err(format!("up: --port-base {port_base} leaves no room for {n} front ends"));
        };
        out.push(FrontEnd { name, listen: addr(l), mgmt: addr(m), config: dir.join(format!("{name}.toml")) });
    }
    Ok(out)
}

/// A front end's config: the single pool's, with its own ports and its member table.
pub fn front_end_toml(pool_toml: &str, first: &FrontEnd, fe: &FrontEnd) -> String {
    let mut t = pool_toml
        .replace(&format!("listen = \"{}\"\n\ncert", first.listen), &format!("listen = \"{}\"\ncert", fe.listen))
        .replace(&format!("listen = \"{}\"\ncert", first.listen), &format!("listen = \"{}\"\ncert", fe.listen))
        .replace(&format!("[mgmt]\nlisten = \"{}\"", first.mgmt), &format!("[mgmt]\nlisten = \"{}\"", fe.mgmt));
    t.push_str(&format!("\n[pool.member]\nname = \"{}\"\n", fe.name));
    t
}

/// The edge's `[edge.roster]` for these front ends (their certificate is the pool's).
pub fn edge_roster_toml(front_ends: &[FrontEnd]) -> String {
    let mut t = String::from("\n[edge.roster]\ndatabase = \"parapet.db\"\n");
    for fe in front_ends {
        t.push_str(&format!("\n[[edge.roster.members]]\nname = \"{}\"\naddr = \"{}\"\n", fe.name, fe.listen));
    }
    t
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn three_front_ends_make_configs_that_load() {
        let dir = std::env::temp_dir().join(format!("parapet-up-pool-{}", std::process::id()));
        let fes = plan(&dir, 20000, None, 3).unwrap();
        let moved = plan(&dir, 20000, Some(30000), 3).unwrap();
        assert_eq!(moved.iter().map(|f| f.mgmt.port()).collect::<Vec<_>>(), vec![20004, 30001, 30003]);
        assert_eq!(fes.iter().map(|f| f.listen.port()).collect::<Vec<_>>(), vec![20001, 20010, 20012]);
        let pool = "domain = \"example.com\"\n\n[pool]\ncores = 1\nlisten = \"127.0.0.1:20001\"\n\
                    cert = \"pki/pool.pem\"\nkey = \"pki/pool.key\"\nca = \"pki/ca.pem\"\n\n\
                    [mgmt]\nlisten = \"127.0.0.1:20004\"\n";
        let t = front_end_toml(pool, &fes[0], &fes[2]);
        let c = Config::from_toml_str(&t, &dir).unwrap();
        let p = c.pool.unwrap();
        assert_eq!(p.listen.port(), 20012);
        assert_eq!(p.member.unwrap().name, "fe3");
        assert_eq!(c.mgmt.unwrap().listen.port(), 20013);
        let edge = format!(
            "domain = \"example.com\"\n[edge]\ncert = \"e.pem\"\nkey = \"e.key\"\nca = \"ca.pem\"\n{}",
            edge_roster_toml(&fes)
        );
        let r = Config::from_toml_str(&edge, &dir).unwrap().edge.unwrap().roster.unwrap();
        assert_eq!(r.members.len(), 3);
        assert_eq!(r.members[1].peer.addr.port(), 20010);
        assert_eq!(r.members[1].peer.name, "pool.example.com");
        assert!(plan(&dir, 20000, None, 9).is_err());
        assert!(plan(&dir, 65530, None, 3).is_err());
    }
}
