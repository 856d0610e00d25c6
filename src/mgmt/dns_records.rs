//! `parapet dns-records -c edge.toml`: the DNS records an operator publishes for the edge, from its config (RFC
//! 3263 for users: `_sips._tcp` and the older `_sip._tls`; `_sipfederationtls._tcp` for partners and discovery),
//! in zone-file form. The SRV target is the edge certificate's name (a partner checks the certificate against the
//! target, RFC 5922), its address the listener's.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::config::Config;

/// The records for `domain`, its edge known as `target`, users on `user`, partners on `fed` (None: no federation).
pub fn render(domain: &str, target: &str, user: SocketAddr, fed: Option<SocketAddr>) -> String {
    let d = domain.trim_end_matches('.');
    let t = target.trim_end_matches('.');
    let srv = |name: String, port: u16| format!("{name:<40} 3600 IN SRV 0 0 {port} {t}.\n");
    let mut out = format!("; DNS records for {d} (parapet dns-records)\n");
    out.push_str("; users (RFC 3263)\n");
    out.push_str(&srv(format!("_sips._tcp.{d}."), user.port()));
    out.push_str(&srv(format!("_sip._tls.{d}."), user.port()));
    if let Some(f) = fed {
        out.push_str("; federation partners and discovery (the target must be a name of the edge certificate)\n");
        out.push_str(&srv(format!("_sipfederationtls._tcp.{d}."), f.port()));
    }
    let mut ips: Vec<IpAddr> = vec![user.ip()];
    if let Some(f) = fed.filter(|f| f.ip() != user.ip()) {
        ips.push(f.ip());
    }
    for ip in ips {
        let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
        if ip.is_loopback() || ip.is_unspecified() {
            out.push_str(&format!(
                "; the edge listens on {ip}: publish the address partners and users reach instead\n"
            ));
        }
        out.push_str(&format!("{:<40} 3600 IN {kind:<4} {ip}\n", format!("{t}.")));
    }
    out
}

/// The edge certificate's name to use as SRV target: one under the domain if any, else the first that is not
/// `localhost` or the domain itself.
fn target(names: &[String], domain: &str) -> Option<String> {
    let suffix = format!(".{domain}");
    names
        .iter()
        .find(|n| n.ends_with(&suffix))
        .or_else(|| names.iter().find(|n| *n != "localhost" && *n != domain && n.contains('.')))
        .cloned()
}

pub fn run(config: &Path) -> Result<(), String> {
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let edge = cfg.edge.as_ref().ok_or_else(|| format!("{}: no [edge] section", config.display()))?;
    let certs = crate::net::tls::load_certs(&edge.cert).map_err(|e| format!("[edge] cert: {e}"))?;
    let names = crate::net::tls::peer_dns_names(Some(&certs));
    let domain = cfg.domain.to_ascii_lowercase();
    let t = target(&names, &domain).ok_or_else(|| {
        format!("[edge] cert {}: no DNS name to publish as SRV target (names: {names:?})", edge.cert.display())
    })?;
    let fed = edge.federation.as_ref().map(|f| f.listen.unwrap_or(edge.listen));
    print!("{}", render(&domain, &t, edge.listen, fed));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_for_users_and_partners() {
        let user: SocketAddr = "192.0.2.10:5061".parse().expect("addr");
        let fed: SocketAddr = "192.0.2.10:5065".parse().expect("addr");
        let r = render("example.com", "edge.example.com", user, Some(fed));
        assert!(r.contains("_sips._tcp.example.com."), "{r}");
        assert!(r.contains("_sip._tls.example.com."), "{r}");
        assert!(r.contains("IN SRV 0 0 5061 edge.example.com."), "{r}");
        assert!(r.contains("_sipfederationtls._tcp.example.com.") && r.contains("IN SRV 0 0 5065 edge.example.com."));
        assert!(r.contains("IN A    192.0.2.10"), "{r}");
        assert!(!r.contains("publish the address"), "a public address needs no note");
        let local = render("example.com", "edge.example.com", "127.0.0.1:5061".parse().expect("addr"), None);
        assert!(!local.contains("_sipfederationtls") && local.contains("publish the address"), "{local}");
        let v6 = render("example.com", "edge.example.com", "[2001:db8::1]:5061".parse().expect("addr"), None);
        assert!(v6.contains("IN AAAA 2001:db8::1"), "{v6}");
    }

    #[test]
    fn the_target_is_a_certificate_name() {
        let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            target(&n(&["localhost", "example.com", "edge.example.com"]), "example.com").as_deref(),
            Some("edge.example.com")
        );
        assert_eq!(target(&n(&["localhost", "sip.other.net"]), "example.com").as_deref(), Some("sip.other.net"));
        assert_eq!(target(&n(&["localhost", "example.com"]), "example.com"), None);
    }
}
