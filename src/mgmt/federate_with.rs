//! `parapet up --federate-with <other data dir>`: two `up` organizations on one machine federate in two commands.
//!
//! The second `up` reads the first's config (its domain, federation port, edge certificate, CAs), lists it as a
//! partner and trusts its CA (a bundle of our demo partners' CA and its CA, `pki/federation-ca.pem`); then it
//! tells the first about itself without touching the config `up` regenerates there: our CA appended to its
//! federation CA file, our entry in its partners file (which repoints a demo partner of the same domain), and a
//! reload through its management API when it runs (at its next start otherwise).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::partners_file::FileEntries;
use crate::config::Config;

/// The other organization, as its data dir says.
pub struct Peer {
    pub domain: String,
    /// The name its edge certificate carries for partners to check.
    pub cert_name: String,
    pub fed_addr: SocketAddr,
    /// The CA that issued its edge certificate (ours to trust).
    pub ca: PathBuf,
    /// Its federation CA file (where our CA goes).
    fed_ca: PathBuf,
    partners_file: PathBuf,
    mgmt: Option<SocketAddr>,
}

impl Peer {
    pub fn read(dir: &Path) -> Result<Peer, String> {
        let cfg_path = dir.join("edge.toml");
        let at = |e: String| format!("up: --federate-with {}: {e}", dir.display());
        let cfg = Config::load(&cfg_path).map_err(|e| at(e.to_string()))?;
        let edge =
            cfg.edge.as_ref().ok_or_else(|| at("no [edge] in edge.toml (not a `parapet up` data dir?)".into()))?;
        let fed = edge
            .federation
            .as_ref()
            .ok_or_else(|| at("its edge has no [edge.federation] (started with --federation off?)".to_string()))?;
        let domain = cfg.domain.to_ascii_lowercase();
        let certs = crate::net::tls::load_certs(&edge.cert).map_err(|e| at(format!("[edge] cert: {e}")))?;
        let names = crate::net::tls::peer_dns_names(Some(&certs));
        let preferred = format!("edge.{domain}");
        let cert_name = if names.contains(&preferred) {
            preferred
        } else {
            names.iter().find(|n| n.ends_with(&format!(".{domain}"))).cloned().ok_or_else(|| {
                at(format!("its edge certificate names {names:?}: none under {domain} for partners to check"))
            })?
        };
        Ok(Peer {
            domain,
            cert_name,
            fed_addr: fed.listen.unwrap_or(edge.listen),
            ca: edge.ca.clone(),
            fed_ca: fed.ca.clone(),
            partners_file: fed.partners_file.clone().unwrap_or_else(|| dir.join("partners.toml")),
            mgmt: cfg.mgmt.map(|m| m.listen),
        })
    }

    /// Our `[[edge.federation.partners]]` entry for it.
    pub fn partner_toml(&self) -> String {
        format!(
            "\n# --federate-with: the organization of the other data dir.\n[[edge.federation.partners]]\n\
             domain = \"{}\"\ncert_name = \"{}\"\naddr = \"{}\"\n",
            self.domain, self.cert_name, self.fed_addr
        )
    }

    /// Our federation CA bundle: `ours` (the demo partners' CA) and its CA, written to `bundle`.
    pub fn write_bundle(&self, ours: &Path, bundle: &Path) -> Result<(), String> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("up: {}: {e}", p.display()));
        let text = format!("{}\n{}", read(ours)?, read(&self.ca)?);
        std::fs::write(bundle, text).map_err(|e| format!("up: {}: {e}", bundle.display()))
    }

    /// Tells it about us: our CA trusted, our entry in its partners file, a reload if it runs. Returns what was
    /// done, for the output.
    pub fn tell(
        &self,
        our_domain: &str,
        our_cert_name: &str,
        our_fed: SocketAddr,
        our_ca: &Path,
    ) -> Result<String, String> {
        let ca = std::fs::read_to_string(our_ca).map_err(|e| format!("up: {}: {e}", our_ca.display()))?;
        let theirs =
            std::fs::read_to_string(&self.fed_ca).map_err(|e| format!("up: {}: {e}", self.fed_ca.display()))?;
        if !theirs.contains(ca.trim()) {
            // Appended after its first certificate: the demo PKI reads only that one as its partners' CA.
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.fed_ca)
                .map_err(|e| format!("up: {}: {e}", self.fed_ca.display()))?;
            f.write_all(format!("\n{ca}").as_bytes()).map_err(|e| format!("up: {}: {e}", self.fed_ca.display()))?;
        }
        let mut entries = FileEntries::load(&self.partners_file).map_err(|e| format!("up: {e}"))?;
        entries.remove(our_domain);
        entries.add(our_domain, our_cert_name, &our_fed.to_string());
        std::fs::write(&self.partners_file, entries.render())
            .map_err(|e| format!("up: {}: {e}", self.partners_file.display()))?;
        let applied = match self.mgmt.map(reload) {
            Some(Ok(())) => "reloaded".to_string(),
            Some(Err(e)) => format!("not reloaded ({e}): applies at its next start"),
            None => "applies at its next start (no management port)".to_string(),
        };
        Ok(format!("{} lists {our_domain} at {our_fed} and trusts our CA; {applied}", self.domain))
    }
}

/// `POST /reload` on a management port.
fn reload(addr: SocketAddr) -> Result<(), String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    s.write_all(b"POST /reload HTTP/1.0\r\nHost: parapet\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if out.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(out.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_string()).unwrap_or(out))
    }
}
