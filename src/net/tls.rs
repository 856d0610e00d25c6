//! TLS configuration from PEM files: server (optionally requiring client certificates), client (optionally
//! presenting one), and reading the DNS names a peer's certificate speaks for.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Sessions kept for resumption by a server (per process; tickets need no state).
const SESSION_CACHE_MAX: usize = 16_384;

#[derive(Debug)]
pub enum TlsError {
    Pem { path: String, what: &'static str, detail: String },
    Config { what: &'static str, detail: String },
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Pem { path, what, detail } => write!(f, "tls: {path}: cannot read {what}: {detail}"),
            TlsError::Config { what, detail } => write!(f, "tls: {what}: {detail}"),
        }
    }
}
impl std::error::Error for TlsError {}

/// The process-wide crypto provider (aws-lc-rs: fewer instructions per handshake than ring, measured here).
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> =
        CertificateDer::pem_file_iter(path).map_err(|e| pem_err(path, "certificates", e))?.collect();
    let certs = certs.map_err(|e| pem_err(path, "certificates", e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "certificates",
            detail: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_err(path, "private key", e))
}

fn pem_err(path: &Path, what: &'static str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem { path: path.display().to_string(), what, detail: e.to_string() }
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in load_certs(ca)? {
        store
            .add(c)
            .map_err(|e| TlsError::Config { what: "CA certificate", detail: format!("{}: {e}", ca.display()) })?;
    }
    Ok(Arc::new(store))
}

/// A server config. With `client_ca`, every client must present a certificate chaining to it (mutual TLS);
/// which names are acceptable is checked after the handshake by the listener.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(cert, key, client_ca, true)
}

/// A server config that asks for a client certificate chaining to `client_ca` without requiring one: a client
/// that presents none (a remote user) is accepted, one that presents another CA's is refused at the handshake.
pub fn server_config_optional_client(cert: &Path, key: &Path, client_ca: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(cert, key, Some(client_ca), false)
}

fn server_config_with(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    required: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12]);
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder(roots(ca)?);
            let verifier = if required { verifier } else { verifier.allow_unauthenticated() };
            let verifier =
                verifier.build().map_err(|e| TlsError::Config { what: "client verifier", detail: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config { what: "server certificate/key", detail: format!("{}: {e}", cert.display()) })?;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_MAX);
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| TlsError::Config { what: "session tickets", detail: e.to_string() })?;
    Ok(Arc::new(cfg))
}

/// A client config trusting `ca`, presenting `identity` (cert, key) when given.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .with_root_certificates(roots(ca)?);
    let cfg = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?).map_err(|e| {
            TlsError::Config { what: "client certificate/key", detail: format!("{}: {e}", cert.display()) }
        })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// The names the end-entity certificate speaks for, lowercased: its SIP domain identities (RFC 5922 §7.1,
/// see [`super::identity`]), compared by [`super::identity::matches`].
pub fn peer_dns_names(chain: Option<&[CertificateDer<'_>]>) -> Vec<String> {
    match chain.and_then(|c| c.first()) {
        Some(ee) => super::identity::of_certificate(ee),
        None => Vec::new(),
    }
}
