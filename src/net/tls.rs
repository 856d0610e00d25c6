//! TLS configuration from PEM files: server (optionally requiring client certificates), client (optionally
//! presenting one), and reading the DNS names a peer's certificate speaks for.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

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

/// The process-wide crypto provider (aws-lc-rs: fewer instructions per handshake than ring, measured here), with
/// the AES-128-GCM suites first: TLS 1.3's SHA-256 suite runs its key schedule and transcript on SHA-256, which
/// CPUs accelerate (SHA-NI), where the AES-256 suite's SHA-384 ran in software and cost 9 % of a full handshake
/// here. Every TLS 1.3 client must implement TLS_AES_128_GCM_SHA256 (RFC 8446 §9.1); our servers choose by this
/// order ([`finish_server_config`]).
pub fn install_provider() {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|s| aes_256(s.suite()));
    let _ = provider.install_default();
}

fn aes_256(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as C;
    matches!(
        suite,
        C::TLS13_AES_256_GCM_SHA384
            | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
    )
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
    server_config_with(cert, key, client_ca)
}

/// A server config for a port users and partners share: it asks for a client certificate (naming `client_ca`
/// as acceptable issuers) and takes whatever comes, none included. Users' clients may present a certificate of
/// their own (baresip cannot speak TLS without one): refusing the handshake would lock them out. Whether a
/// certificate chains to the partners' CA is decided after the handshake ([`chains_to`]); the possession proof
/// (the CertificateVerify signature) is still checked here.
pub fn server_config_optional_client(cert: &Path, key: &Path, client_ca: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(AnyClientCert(partner_verifier(client_ca)?));
    let builder = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .with_client_cert_verifier(verifier);
    finish_server_config(builder, cert, key)
}

/// The verifier of partners' certificates: their chain must lead to `ca`.
pub fn partner_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder(roots(ca)?)
        .build()
        .map_err(|e| TlsError::Config { what: "client verifier", detail: e.to_string() })
}

/// Whether a peer's certificate chain (end entity first) leads to a root of `verifier`.
pub fn chains_to(verifier: &dyn ClientCertVerifier, chain: &[CertificateDer<'_>]) -> bool {
    let Some((ee, intermediates)) = chain.split_first() else { return false };
    verifier.verify_client_cert(ee, intermediates, UnixTime::now()).is_ok()
}

/// Takes any client certificate at the handshake (see [`server_config_optional_client`]), with the inner
/// verifier's issuer hints and signature checks.
#[derive(Debug)]
struct AnyClientCert(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn server_config_with(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12]);
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(partner_verifier(ca)?),
        None => builder.with_no_client_auth(),
    };
    finish_server_config(builder, cert, key)
}

fn finish_server_config(
    builder: rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>,
    cert: &Path,
    key: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config { what: "server certificate/key", detail: format!("{}: {e}", cert.display()) })?;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_MAX);
    // Our order (see `install_provider`), not the client's: clients list AES-256 first by habit.
    cfg.ignore_client_order = true;
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

#[cfg(test)]
mod tests {
    #[test]
    fn aes_128_suites_come_first() {
        super::install_provider();
        let provider = rustls::crypto::CryptoProvider::get_default().expect("installed");
        let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites.first(), Some(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256), "{suites:?}");
        let first_256 = suites.iter().position(|s| super::aes_256(*s)).expect("AES-256 still offered");
        let last_128 = suites.iter().rposition(|s| format!("{s:?}").contains("AES_128")).expect("AES-128 offered");
        assert!(last_128 < first_256, "{suites:?}");
    }
}
