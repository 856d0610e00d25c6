//! `[edge] internal_networks`: the source networks of *internal* users. A user whose connection comes from any
//! other address is a *remote* user (LCS's remote user: outside the organization's network, through the access
//! proxy); the edge marks that user's requests to the pool (`P-Parapet-Remote`), so routing rules can match
//! `direction = "remote"` and the IM archive records it.
//!
//! ```toml
//! [edge]
//! internal_networks = ["10.0.0.0/8", "192.168.0.0/16"]   # default: loopback and the private ranges
//! ```

use std::net::IpAddr;

use super::{invalid, ConfigError};

/// One network, `address/prefix` (an address alone: the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(s: &str) -> Option<Network> {
        let s = s.trim();
        let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Network { addr, prefix })
    }

    /// IPv4-mapped IPv6 sources (a dual-stack listener) count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(n: &[u8], a: &[u8], prefix: u8) -> bool {
    let (bytes, bits) = (usize::from(prefix / 8), prefix % 8);
    if n.get(..bytes) != a.get(..bytes) {
        return false;
    }
    if bits == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - bits);
    matches!((n.get(bytes), a.get(bytes)), (Some(x), Some(y)) if x & mask == y & mask)
}

/// Loopback, RFC 1918, IPv6 loopback and unique local addresses (RFC 4193).
pub const DEFAULT_INTERNAL: &[&str] =
    &["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7"];

/// Whether `ip` is in any of `nets`.
pub fn any_contains(nets: &[Network], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

pub fn build(raw: Option<Vec<String>>) -> Result<Vec<Network>, ConfigError> {
    let list = raw.unwrap_or_else(|| DEFAULT_INTERNAL.iter().map(|s| s.to_string()).collect());
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            Network::parse(s).ok_or_else(|| {
                invalid(
                    format!("edge.internal_networks.{i}"),
                    format!("{s:?}: expected address/prefix, e.g. 10.0.0.0/8"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_match_as_written() {
        let nets = build(None).unwrap();
        for inside in ["127.0.0.2", "10.1.2.3", "172.31.255.1", "192.168.0.9", "::1", "fd00::5", "::ffff:10.0.0.1"] {
            assert!(any_contains(&nets, ip(inside)), "{inside}");
        }
        for outside in ["172.32.0.1", "8.8.8.8", "192.169.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!any_contains(&nets, ip(outside)), "{outside}");
        }
        let host = Network::parse("127.0.0.1").unwrap();
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        assert!(Network::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.7")));
    }

    #[test]
    fn bad_networks_name_the_key() {
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129", ""] {
            let e = build(Some(vec!["10.0.0.0/8".into(), bad.into()])).unwrap_err().to_string();
            assert!(e.contains("edge.internal_networks.1"), "{bad}: {e}");
        }
    }
}
