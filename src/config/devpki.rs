//! Development PKI: a private CA plus edge and pool leaf certificates, made once and reused; and, apart, a
//! second CA standing for other organizations, with demo partner edges' certificates (`ensure_partners`).
//!
//! Lets parapet run TLS, the internal mutual TLS and federation out of the box. Existing files are never
//! replaced while they are still usable, so a CA a user has already imported into a softphone
//! stays valid across restarts. A leaf is re-issued only when it no longer fits: it lacks a
//! requested name, or it was not issued by the CA now on disk (someone replaced the CA).
//!
//! rcgen is built without x509-parser, so the CA certificate cannot be parsed back into an
//! issuer. Instead the issuer is rebuilt from the fixed CA parameters below plus `ca.key`; the
//! subject name is encoded deterministically, so leaves issued later chain to the old `ca.pem`.
//! A few byte-level checks confirm `ca.pem` and `ca.key` belong together before that is trusted.
//!
//! Edge and pool processes may call `ensure` on the same folder at the same time; an flock on
//! `.devpki.lock` serialises them and every file is written to a temporary name and renamed, so
//! nobody reads a half-written file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Paths of the development PKI files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    pub ca_cert: PathBuf,
    pub edge_cert: PathBuf,
    pub edge_key: PathBuf,
    pub pool_cert: PathBuf,
    pub pool_key: PathBuf,
}

/// Subject of the CA. Must never change: leaves issued later carry it as their issuer name and
/// would stop chaining to an already distributed `ca.pem`.
const CA_COMMON_NAME: &str = "parapet development CA";
/// The demo partners' CA (`partners-ca.pem`): other organizations, so not our CA. Must never change either.
const PARTNERS_CA_COMMON_NAME: &str = "parapet demo partners CA";
const PARTNERS_CA_STEM: &str = "partners-ca";
const CA_ORGANIZATION: &str = "parapet";
const LEAF_DAYS: u64 = 825;
const CA_DAYS: u64 = 3650;
const DAY: Duration = Duration::from_secs(86_400);

/// Creates (if missing) under `dir`: ca.pem/ca.key (ECDSA P-256, CA:true), edge.pem/edge.key with
/// DNS SANs `edge_names` + IP SAN 127.0.0.1, pool.pem/pool.key with `pool_names` + 127.0.0.1.
/// Leaf certificates carry serverAuth + clientAuth (both sides of mutual TLS) and last 825 days.
/// Files that exist and fit are kept. Keys are written 0600.
pub fn ensure(dir: &Path, edge_names: &[String], pool_names: &[String]) -> io::Result<DevPki> {
    let _lock = DirLock::acquire(dir)?;
    let (issuer, ca_key_id, ca_new) = ensure_ca(dir, "ca", CA_COMMON_NAME)?;
    let (edge_cert, edge_key) = ensure_leaf(dir, "edge", &with_loopback(edge_names), &issuer, &ca_key_id, ca_new)?;
    let (pool_cert, pool_key) = ensure_leaf(dir, "pool", &with_loopback(pool_names), &issuer, &ca_key_id, ca_new)?;
    Ok(DevPki { ca_cert: dir.join("ca.pem"), edge_cert, edge_key, pool_cert, pool_key })
}

/// Issues `<file_stem>.pem`/`<file_stem>.key` for `names` from the dev CA in `dir` (creating the
/// CA if missing). Names that parse as IP addresses become IP SANs. An existing pair is kept
/// when it already carries all `names` and comes from this CA. Returns (cert, key) paths.
pub fn issue_leaf(dir: &Path, file_stem: &str, names: &[String]) -> io::Result<(PathBuf, PathBuf)> {
    if file_stem.is_empty() || file_stem.contains(['/', '\\']) || file_stem == "ca" || file_stem == PARTNERS_CA_STEM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("devpki: file stem {file_stem:?} must be a plain file name other than a CA's"),
        ));
    }
    let _lock = DirLock::acquire(dir)?;
    let (issuer, ca_key_id, ca_new) = ensure_ca(dir, "ca", CA_COMMON_NAME)?;
    ensure_leaf(dir, file_stem, names, &issuer, &ca_key_id, ca_new)
}

/// Demo partner organizations' edges: `partners-ca.pem`/`.key` (a CA of its own, so that trusting it for
/// federation trusts none of our users' or internal certificates) and, for each (domain, names), the pair
/// `<domain>.pem`/`<domain>.key` with DNS SANs `names` only. Kept when present and fitting, as in `ensure`.
/// Returns the CA's path and each partner's (cert, key), in order.
pub fn ensure_partners(
    dir: &Path,
    partners: &[(String, Vec<String>)],
) -> io::Result<(PathBuf, Vec<(PathBuf, PathBuf)>)> {
    let _lock = DirLock::acquire(dir)?;
    let (issuer, ca_key_id, ca_new) = ensure_ca(dir, PARTNERS_CA_STEM, PARTNERS_CA_COMMON_NAME)?;
    let mut pairs = Vec::with_capacity(partners.len());
    for (domain, names) in partners {
        if domain.is_empty() || domain.contains(['/', '\\']) || domain == "ca" || domain == PARTNERS_CA_STEM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("devpki: partner {domain:?} cannot name a certificate file"),
            ));
        }
        pairs.push(ensure_leaf(dir, domain, names, &issuer, &ca_key_id, ca_new)?);
    }
    Ok((dir.join(format!("{PARTNERS_CA_STEM}.pem")), pairs))
}

fn with_loopback(names: &[String]) -> Vec<String> {
    let mut v = names.to_vec();
    if !v.iter().any(|n| n == "127.0.0.1") {
        v.push("127.0.0.1".into());
    }
    v
}

fn ctx(path: &Path, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("devpki: {}: {what}: {e}", path.display()))
}

/// Keeps the error kind (callers may match on NotFound etc.) and adds the path.
fn io_ctx(path: &Path, what: &str) -> impl FnOnce(io::Error) -> io::Error {
    let prefix = format!("devpki: {}: {what}", path.display());
    move |e| io::Error::new(e.kind(), format!("{prefix}: {e}"))
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, CA_ORGANIZATION);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

/// Validity from a day ago (clock skew between hosts) to `days` from now.
fn set_validity(p: &mut CertificateParams, days: u64) -> io::Result<()> {
    let now =
        SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| io::Error::other(format!("devpki: clock: {e}")))?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    p.not_before = epoch + now.saturating_sub(DAY);
    p.not_after = epoch + now + DAY * days as u32;
    Ok(())
}

fn random_serial() -> io::Result<SerialNumber> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| io::Error::other(format!("devpki: random serial: {e}")))?;
    b[0] &= 0x7f; // DER INTEGER stays positive
    b[0] |= 0x01; // and minimal-length encodings stay 16 bytes
    Ok(SerialNumber::from_slice(&b))
}

/// The CA `<stem>.pem`/`<stem>.key` named `common_name`. Returns the issuer, the CA key identifier (what
/// leaves carry as authority key id) and whether the CA was created just now.
fn ensure_ca(dir: &Path, stem: &str, common_name: &str) -> io::Result<(Issuer<'static, KeyPair>, Vec<u8>, bool)> {
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    let params = ca_params(common_name);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let key_pem = fs::read_to_string(&key_path).map_err(io_ctx(&key_path, "read"))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| ctx(&key_path, "not a usable private key", e))?;
            let der = read_cert(&cert_path)?;
            // Without an X.509 parser: the certificate must contain this key's public key and
            // our CA name, otherwise leaves issued now would not chain to it.
            if !contains(der.as_ref(), key.public_key_raw()) || !contains(der.as_ref(), common_name.as_bytes()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "devpki: {} does not belong to {} (or was not made by parapet); restore the matching pair \
                         or delete both to create a new CA",
                        cert_path.display(),
                        key_path.display()
                    ),
                ));
            }
            let key_id = params.key_identifier(&key);
            Ok((Issuer::new(params, key), key_id, false))
        }
        (false, false) => {
            fs::create_dir_all(dir).map_err(io_ctx(dir, "create folder"))?;
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| ctx(&key_path, "generate key", e))?;
            let mut p = params;
            set_validity(&mut p, CA_DAYS)?;
            p.serial_number = Some(random_serial()?);
            let cert = p.self_signed(&key).map_err(|e| ctx(&cert_path, "self-sign CA", e))?;
            write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
            let key_id = p.key_identifier(&key);
            Ok((Issuer::new(p, key), key_id, true))
        }
        (has_cert, _) => {
            let (present, missing) = if has_cert { (&cert_path, &key_path) } else { (&key_path, &cert_path) };
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "devpki: {} exists but {} is missing; restore it, or delete {} to create a new CA \
                     (clients must then trust the new ca.pem)",
                    present.display(),
                    missing.display(),
                    present.display()
                ),
            ))
        }
    }
}

fn ensure_leaf(
    dir: &Path,
    stem: &str,
    names: &[String],
    issuer: &Issuer<'static, KeyPair>,
    ca_key_id: &[u8],
    force: bool,
) -> io::Result<(PathBuf, PathBuf)> {
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    if names.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("devpki: {}: no names given for the certificate", cert_path.display()),
        ));
    }
    if !force && cert_path.exists() && key_path.exists() {
        let der = read_cert(&cert_path)?;
        if contains(der.as_ref(), ca_key_id) && names.iter().all(|n| carries_name(der.as_ref(), n)) {
            return Ok((cert_path, key_path));
        }
    }
    let mut p = CertificateParams::new(names.to_vec()).map_err(|e| ctx(&cert_path, "certificate names", e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names[0].as_str());
    dn.push(DnType::OrganizationName, CA_ORGANIZATION);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(random_serial()?);
    set_validity(&mut p, LEAF_DAYS)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| ctx(&key_path, "generate key", e))?;
    let cert = p.signed_by(&key, issuer).map_err(|e| ctx(&cert_path, "sign", e))?;
    write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

fn read_cert(path: &Path) -> io::Result<CertificateDer<'static>> {
    CertificateDer::from_pem_file(path).map_err(|e| ctx(path, "not a PEM certificate", e))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether the DER certificate has `name` as a SAN: looks for the exact GeneralName encoding
/// (dNSName [2] or iPAddress [7], short-form length), which does not match a mere substring of
/// a longer name.
fn carries_name(der: &[u8], name: &str) -> bool {
    let (tag, bytes): (u8, Vec<u8>) = match name.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => (0x87, ip.octets().to_vec()),
        Ok(std::net::IpAddr::V6(ip)) => (0x87, ip.octets().to_vec()),
        Err(_) => (0x82, name.as_bytes().to_vec()),
    };
    let Ok(len) = u8::try_from(bytes.len()) else {
        return false;
    };
    if len > 127 {
        return false;
    }
    let mut needle = vec![tag, len];
    needle.extend_from_slice(&bytes);
    contains(der, &needle)
}

/// Writes through a temporary file and a rename, so a concurrent reader sees the old file or the
/// complete new one. `mode` is applied at creation: a key is never readable by others, not even
/// for a moment.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io_ctx(&tmp, "create"))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(io_ctx(&tmp, "write"))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_ctx(path, "rename into place"))
}

/// Exclusive flock on `<dir>/.devpki.lock`, released when dropped (the file closes).
struct DirLock(#[allow(dead_code)] fs::File);

impl DirLock {
    fn acquire(dir: &Path) -> io::Result<DirLock> {
        fs::create_dir_all(dir).map_err(io_ctx(dir, "create folder"))?;
        let path = dir.join(".devpki.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_ctx(&path, "open lock"))?;
        loop {
            // SAFETY: flock on a descriptor we own; it stays open for the lock's lifetime.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(DirLock(f));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(io_ctx(&path, "lock")(err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir(tag: &str) -> PathBuf {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).expect("random");
        let d = std::env::temp_dir().join(format!("parapet-devpki-{tag}-{}", u64::from_le_bytes(b)));
        fs::create_dir_all(&d).expect("mkdir");
        d
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ensure_twice_keeps_ca_and_leaves() {
        let d = tmpdir("twice");
        let edge = names(&["localhost", "example.com", "edge.example.com"]);
        let pool = names(&["pool.example.com"]);
        let a = ensure(&d, &edge, &pool).expect("first");
        let ca1 = fs::read(&a.ca_cert).expect("ca");
        let edge1 = fs::read(&a.edge_cert).expect("edge");
        let b = ensure(&d, &edge, &pool).expect("second");
        assert_eq!(a, b);
        assert_eq!(ca1, fs::read(&b.ca_cert).expect("ca"));
        assert_eq!(edge1, fs::read(&b.edge_cert).expect("edge"));
        for k in [&a.edge_key, &a.pool_key, &d.join("ca.key")] {
            assert_eq!(fs::metadata(k).expect("key").permissions().mode() & 0o777, 0o600, "{}", k.display());
        }
        // A new name re-issues the leaf but keeps the CA a user may already trust.
        let edge2 = names(&["localhost", "example.com", "edge.example.com", "sip.example.org"]);
        let c = ensure(&d, &edge2, &pool).expect("third");
        assert_eq!(ca1, fs::read(&c.ca_cert).expect("ca"));
        assert_ne!(edge1, fs::read(&c.edge_cert).expect("edge"));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn half_a_ca_is_an_actionable_error() {
        let d = tmpdir("half");
        ensure(&d, &names(&["localhost"]), &names(&["pool.example.com"])).expect("ensure");
        fs::remove_file(d.join("ca.key")).expect("rm");
        let e = ensure(&d, &names(&["localhost"]), &names(&["pool.example.com"])).expect_err("must fail");
        assert!(e.to_string().contains("ca.key is missing"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn san_matching_is_exact() {
        let d = tmpdir("san");
        let (cert, _) = issue_leaf(&d, "fed", &names(&["edge.example.com", "10.1.2.3"])).expect("leaf");
        let der = read_cert(&cert).expect("read");
        assert!(carries_name(der.as_ref(), "edge.example.com"));
        assert!(carries_name(der.as_ref(), "10.1.2.3"));
        assert!(!carries_name(der.as_ref(), "example.com"));
        assert!(!carries_name(der.as_ref(), "127.0.0.1"));
        let _ = fs::remove_dir_all(&d);
    }

    fn verify_leaf(ca: &Path, cert: &Path, name: &str) -> Result<(), webpki::Error> {
        let ca_der = read_cert(ca).expect("ca");
        let leaf_der = read_cert(cert).expect("leaf");
        let anchor = webpki::anchor_from_trusted_cert(&ca_der).expect("anchor").to_owned();
        let ee = webpki::EndEntityCert::try_from(&leaf_der).expect("parse leaf");
        let now = rustls_pki_types::UnixTime::now();
        for usage in [webpki::KeyUsage::server_auth(), webpki::KeyUsage::client_auth()] {
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&anchor),
                &[],
                now,
                usage,
                None,
                None,
            )?;
        }
        let sn = rustls_pki_types::ServerName::try_from(name.to_string()).expect("name");
        ee.verify_is_valid_for_subject_name(&sn)
    }

    #[test]
    fn leaves_verify_against_the_ca() {
        let d = tmpdir("verify");
        let pki =
            ensure(&d, &names(&["localhost", "edge.example.com"]), &names(&["pool.example.com"])).expect("ensure");
        verify_leaf(&pki.ca_cert, &pki.edge_cert, "edge.example.com").expect("edge verifies");
        verify_leaf(&pki.ca_cert, &pki.edge_cert, "127.0.0.1").expect("edge IP SAN");
        verify_leaf(&pki.ca_cert, &pki.pool_cert, "pool.example.com").expect("pool verifies");
        assert!(verify_leaf(&pki.ca_cert, &pki.pool_cert, "edge.example.com").is_err());
        // An extra leaf issued in a later call (CA rebuilt from ca.key) still chains to ca.pem.
        let (fed, _) = issue_leaf(&d, "federation", &names(&["fed.example.net"])).expect("issue");
        verify_leaf(&pki.ca_cert, &fed, "fed.example.net").expect("extra leaf verifies");
        // A different CA does not accept it.
        let other = tmpdir("other");
        let pki2 = ensure(&other, &names(&["localhost"]), &names(&["pool.example.com"])).expect("other");
        assert!(verify_leaf(&pki2.ca_cert, &pki.edge_cert, "localhost").is_err());
        let _ = fs::remove_dir_all(&d);
        let _ = fs::remove_dir_all(&other);
    }

    #[test]
    fn rustls_mutual_tls_configs_accept_the_pki() {
        use rustls::pki_types::PrivateKeyDer;
        let d = tmpdir("rustls");
        let pki = ensure(&d, &names(&["edge.example.com"]), &names(&["pool.example.com"])).expect("ensure");
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(read_cert(&pki.ca_cert).expect("ca")).expect("add root");
        let roots = std::sync::Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .expect("client verifier");
        let chain = vec![read_cert(&pki.edge_cert).expect("cert")];
        let key = PrivateKeyDer::from_pem_file(&pki.edge_key).expect("key");
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config takes the edge cert");
        let chain = vec![read_cert(&pki.pool_cert).expect("cert")];
        let key = PrivateKeyDer::from_pem_file(&pki.pool_key).expect("key");
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client config takes the pool cert");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn partners_have_a_ca_of_their_own() {
        let d = tmpdir("partners");
        let pki = ensure(&d, &names(&["localhost", "edge.example.com"]), &names(&["pool.example.com"])).expect("ours");
        let want = vec![
            ("partner.test".to_string(), names(&["edge.partner.test", "partner.test"])),
            ("other.test".to_string(), names(&["edge.other.test", "other.test"])),
        ];
        let (ca, pairs) = ensure_partners(&d, &want).expect("partners");
        assert_eq!(ca, d.join("partners-ca.pem"));
        assert_eq!(pairs[0], (d.join("partner.test.pem"), d.join("partner.test.key")));
        verify_leaf(&ca, &pairs[0].0, "edge.partner.test").expect("partner verifies");
        verify_leaf(&ca, &pairs[1].0, "other.test").expect("other verifies");
        assert!(verify_leaf(&ca, &pairs[0].0, "edge.other.test").is_err());
        // Trusting the partners' CA trusts none of ours, and the other way round.
        assert!(verify_leaf(&ca, &pki.edge_cert, "edge.example.com").is_err());
        assert!(verify_leaf(&pki.ca_cert, &pairs[0].0, "edge.partner.test").is_err());
        assert_eq!(fs::metadata(&pairs[0].1).expect("key").permissions().mode() & 0o777, 0o600);
        // Made once: a second call keeps every file, and our own CA is untouched.
        let before = fs::read(&pairs[0].0).expect("cert");
        let ours = fs::read(&pki.ca_cert).expect("ca");
        let (_, again) = ensure_partners(&d, &want).expect("again");
        assert_eq!(before, fs::read(&again[0].0).expect("cert"));
        assert_eq!(ours, fs::read(&pki.ca_cert).expect("ca"));
        assert!(issue_leaf(&d, "partners-ca", &names(&["x.test"])).is_err(), "a leaf never overwrites a CA");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn concurrent_ensure_agrees_on_one_ca() {
        let d = tmpdir("race");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || {
                    ensure(&d, &names(&["localhost"]), &names(&["pool.example.com"])).expect("ensure");
                    fs::read(d.join("ca.pem")).expect("ca")
                })
            })
            .collect();
        let cas: Vec<_> = threads.into_iter().map(|t| t.join().expect("join")).collect();
        assert!(cas.windows(2).all(|w| w[0] == w[1]));
        verify_leaf(&d.join("ca.pem"), &d.join("edge.pem"), "localhost").expect("verifies");
        let _ = fs::remove_dir_all(&d);
    }
}
