//! Settings for driving an [`super::core::EdgeCore`] with values, without a running edge: unit tests and the
//! `edge_core` fuzz target. A development PKI (ours and a partners' CA) is made under a directory, and the config
//! is the default one for `example.com` with one federation partner (`partner.test`, certificate name
//! `edge.partner.test`) sharing the user port.

use std::path::Path;

use super::EdgeSettings;
use crate::config::{devpki, Config};

/// The federation partner of [`settings`]: its domain and certificate name.
pub const PARTNER_DOMAIN: &str = "partner.test";
pub const PARTNER_CERT_NAME: &str = "edge.partner.test";

/// Edge settings for `example.com` (pool `pool.example.com`), their certificates made (or reused) under `dir`.
pub fn settings(dir: &Path) -> Result<EdgeSettings, String> {
    devpki::ensure(dir, &["edge.example.com".to_string()], &["pool.example.com".to_string()])
        .map_err(|e| format!("devpki: {e}"))?;
    devpki::ensure_partners(dir, &[]).map_err(|e| format!("devpki: {e}"))?;
    let toml = format!(
        "domain = \"example.com\"\n[edge]\ncert = \"edge.pem\"\nkey = \"edge.key\"\nca = \"ca.pem\"\n\
         [edge.federation]\nca = \"partners-ca.pem\"\n\
         [[edge.federation.partners]]\ndomain = \"{PARTNER_DOMAIN}\"\ncert_name = \"{PARTNER_CERT_NAME}\"\n\
         addr = \"127.0.0.1:6000\"\n"
    );
    let cfg = Config::from_toml_str(&toml, dir).map_err(|e| e.to_string())?;
    crate::net::tls::install_provider();
    EdgeSettings::from_config(&cfg)
}
