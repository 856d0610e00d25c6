//! Certificate and key files as an operator gets them wrong: missing, unreadable, swapped (the certificate named
//! as the key or the other way round), not matching each other, expired or about to. Used by `check-config`
//! (through `Config::validate`), `parapet doctor` and `/ready`.
//!
//! Reads files only; the one DER walk here (the validity period) is bounded by the input and never panics.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::{invalid, ConfigError};
use crate::civil::days_from_civil;

/// What a good certificate file told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// End of validity of the first (end-entity) certificate, unix seconds.
    pub not_after_unix: i64,
}

impl CertInfo {
    /// Whole days left until `not_after` (negative: expired).
    pub fn days_left(&self, now_unix: i64) -> i64 {
        (self.not_after_unix - now_unix).div_euclid(86_400)
    }
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn read(key: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// The certificates of a PEM file (`key` names the config key for errors, e.g. "[edge] cert").
pub fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let text = read(key, path)?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(text.as_bytes()).filter_map(Result::ok).collect();
    if certs.is_empty() {
        let why = if text.contains("PRIVATE KEY-----") {
            "holds a private key, not a certificate (are cert and key swapped?)"
        } else {
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        };
        return Err(invalid(key, format!("{}: {why}", path.display())));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let text = read(key, path)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|_| {
        let why = if text.contains("BEGIN CERTIFICATE-----") {
            "holds a certificate, not a private key (are cert and key swapped?)"
        } else {
            "holds no PEM private key (-----BEGIN PRIVATE KEY----- or an RSA/EC key)"
        };
        invalid(key, format!("{}: {why}", path.display()))
    })
}

/// Checks a certificate file, its key file and that they belong together; `table` is e.g. "edge".
pub fn check_pair(table: &str, cert: &Path, key: &Path) -> Result<CertInfo, ConfigError> {
    let cert_key = format!("[{table}] cert");
    let key_key = format!("[{table}] key");
    let certs = load_certs(&cert_key, cert)?;
    let private = load_key(&key_key, key)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| invalid(&key_key, format!("{}: unusable private key: {e}", key.display())))?;
    let info = cert_info(&cert_key, cert, &certs)?;
    CertifiedKey::new(certs, Arc::clone(&signing)).keys_match().map_err(|e| {
        invalid(&key_key, format!("{} does not belong to the certificate in {} ({e})", key.display(), cert.display()))
    })?;
    Ok(info)
}

/// Checks a CA file holds at least one certificate.
pub fn check_ca(table: &str, ca: &Path) -> Result<(), ConfigError> {
    load_certs(&format!("[{table}] ca"), ca).map(|_| ())
}

fn cert_info(key: &str, path: &Path, certs: &[CertificateDer<'_>]) -> Result<CertInfo, ConfigError> {
    let first = certs.first().ok_or_else(|| invalid(key, format!("{}: no certificate", path.display())))?;
    let not_after_unix = not_after(first.as_ref())
        .ok_or_else(|| invalid(key, format!("{}: cannot read the certificate's validity", path.display())))?;
    Ok(CertInfo { not_after_unix })
}

/// One DER element: (tag, contents, what follows).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)), rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, after) = rest.split_at(len);
    Some((tag, content, after))
}

/// notAfter of an X.509 certificate (RFC 5280 §4.1), unix seconds.
pub fn not_after(der: &[u8]) -> Option<i64> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, cert, _) = tlv(der)? else { return None };
    let (SEQUENCE, tbs, _) = tlv(cert)? else { return None };
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    // serial, signature algorithm, issuer, then validity.
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, validity, _) = tlv(rest)? else { return None };
    let (_, _, after_before) = tlv(validity)?;
    let (tag, time, _) = tlv(after_before)?;
    parse_time(tag, std::str::from_utf8(time).ok()?)
}

/// UTCTime (0x17, YYMMDDHHMMSSZ) or GeneralizedTime (0x18, YYYYMMDDHHMMSSZ).
fn parse_time(tag: u8, s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, min, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times_and_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(parse_time(0x17, "000301000000Z"), Some(951_868_800));
        assert_eq!(parse_time(0x18, "20381231235959Z"), Some(2_177_452_799));
        assert_eq!(parse_time(0x18, "2038123123595"), None);
        assert_eq!(not_after(&[0x30, 0x82, 0xff]), None);
        assert_eq!(not_after(&[]), None);
    }

    #[test]
    fn swapped_mismatched_and_good_pairs() {
        let dir = std::env::temp_dir().join(format!("parapet-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mk = |name: &str| {
            let k = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
            let c = params.self_signed(&k).unwrap();
            let (cp, kp) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
            std::fs::write(&cp, c.pem()).unwrap();
            std::fs::write(&kp, k.serialize_pem()).unwrap();
            (cp, kp)
        };
        let (a_crt, a_key) = mk("a.test");
        let (_, b_key) = mk("b.test");
        let info = check_pair("edge", &a_crt, &a_key).unwrap();
        assert!(info.days_left(now_unix()) > 300, "rcgen's default validity runs to 4096");
        let e = check_pair("edge", &a_key, &a_key).unwrap_err().to_string();
        assert!(e.contains("[edge] cert") && e.contains("private key, not a certificate"), "{e}");
        let e = check_pair("edge", &a_crt, &a_crt).unwrap_err().to_string();
        assert!(e.contains("[edge] key") && e.contains("certificate, not a private key"), "{e}");
        let e = check_pair("edge", &a_crt, &b_key).unwrap_err().to_string();
        assert!(e.contains("[edge] key") && e.contains("does not belong"), "{e}");
        let e = check_pair("pool", &dir.join("none.crt"), &a_key).unwrap_err().to_string();
        assert!(e.contains("[pool] cert") && e.contains("cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
