//! SIP domain identities of a certificate and how to compare them (RFC 5922 §7.1, §7.2).
//!
//! §7.1: the identities are the subjectAltName values of type DNS, and of type URI when the scheme is `sip` and
//! there is no user part (its host); only when the certificate has no subjectAltName extension at all, the
//! subject's Common Name when it is a valid DNS name. §7.2: identities compare as whole DNS names, ignoring case
//! (RFC 4343), with no suffix match and no wildcard of any form: `*.example.com` matches only `*.example.com`,
//! never `foo.example.com` (the RFC thereby rules wildcards out of SIP domain certificates).
//!
//! Internationalized names compare in their A-label form, the only form a certificate's DNS names (IA5String)
//! carry; a U-label From domain therefore never matches.
//!
//! The subjectAltName values come from rustls-webpki (which validates them); whether the extension is present,
//! and the Common Name, come from a minimal DER walk here, which returns nothing rather than fail on bytes it
//! does not understand.

use rustls::pki_types::{CertificateDer, DnsName};

/// Whether `name` (a configured DNS name) is among a peer's `identities`, by RFC 5922 §7.2.
pub fn matches(identities: &[String], name: &str) -> bool {
    identities.iter().any(|i| i.eq_ignore_ascii_case(name))
}

/// Whether a mutual-TLS peer presenting `names` is admitted by a listener admitting `admitted` (one in common).
pub fn admitted(names: &[String], admitted: &[String]) -> bool {
    names.iter().any(|n| matches(admitted, n))
}

/// The SIP domain identities of an end-entity certificate, lowercased, in certificate order (RFC 5922 §7.1).
pub fn of_certificate(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok(cert) = webpki::EndEntityCert::try_from(der) else { return Vec::new() };
    let mut ids: Vec<String> = cert.valid_dns_names().map(|n| n.to_ascii_lowercase()).collect();
    ids.extend(cert.valid_uri_names().filter_map(sip_uri_host));
    let Some(tbs) = tbs_fields(der.as_ref()) else { return ids };
    if !tbs.has_subject_alt_name {
        ids.extend(common_names(tbs.subject).filter(|cn| DnsName::try_from(cn.as_str()).is_ok()));
    }
    let mut seen = Vec::with_capacity(ids.len());
    for id in ids {
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    seen
}

/// The host of a `sip:` URI without a user part, lowercased (RFC 5922 §7.1); None for any other URI.
fn sip_uri_host(uri: &str) -> Option<String> {
    let scheme = uri.get(..4)?;
    if !scheme.eq_ignore_ascii_case("sip:") {
        return None;
    }
    let rest = uri.get(4..)?;
    if rest.contains('@') {
        // A user's identity, not a domain's.
        return None;
    }
    let host = rest.split([':', ';', '?']).next()?;
    DnsName::try_from(host).ok()?;
    Some(host.to_ascii_lowercase())
}

/// One DER element: (tag, contents, what follows). Only single-byte tags and definite lengths (DER has no other).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = (rest.get(..n)?, rest.get(n..)?);
        (bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)), rest)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// The elements of a constructed value's contents, stopping at the first malformed one.
fn elements(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, contents, rest) = element(input)?;
        input = rest;
        Some((tag, contents))
    })
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// tbsCertificate's `extensions [3] EXPLICIT`.
const EXTENSIONS: u8 = 0xa3;
/// id-ce-subjectAltName, 2.5.29.17.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
/// id-at-commonName, 2.5.4.3.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

struct Tbs<'a> {
    /// The subject Name's contents (its RDN SETs).
    subject: &'a [u8],
    has_subject_alt_name: bool,
}

/// The fields of a certificate's tbsCertificate this module needs (RFC 5280 §4.1).
fn tbs_fields(cert: &[u8]) -> Option<Tbs<'_>> {
    let (SEQUENCE, cert, _) = element(cert)? else { return None };
    let (SEQUENCE, tbs, _) = element(cert)? else { return None };
    let mut fields = elements(tbs).peekable();
    // version [0] EXPLICIT, absent in v1 certificates.
    if fields.peek().is_some_and(|(tag, _)| *tag == 0xa0) {
        fields.next();
    }
    // serialNumber, signature, issuer, validity, then the subject.
    let (SEQUENCE, subject) = fields.nth(4)? else { return None };
    let has_subject_alt_name = fields.any(|(tag, contents)| {
        tag == EXTENSIONS
            && element(contents).is_some_and(|(tag, list, _)| {
                tag == SEQUENCE
                    && elements(list).any(|(tag, ext)| {
                        tag == SEQUENCE && element(ext).is_some_and(|(t, oid, _)| t == OID && oid == SUBJECT_ALT_NAME)
                    })
            })
    });
    Some(Tbs { subject, has_subject_alt_name })
}

/// The Common Name values of a subject Name's contents, as text (UTF8String, PrintableString, IA5String).
fn common_names(subject: &[u8]) -> impl Iterator<Item = String> + '_ {
    elements(subject).filter(|(tag, _)| *tag == SET).flat_map(|(_, rdn)| {
        elements(rdn).filter_map(|(tag, attr)| {
            if tag != SEQUENCE {
                return None;
            }
            let (OID, oid, rest) = element(attr)? else { return None };
            let (kind, value, _) = element(rest)?;
            let text = matches!(kind, 0x0c | 0x13 | 0x16).then(|| std::str::from_utf8(value).ok()).flatten()?;
            (oid == COMMON_NAME).then(|| text.to_ascii_lowercase())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.subject_alt_names = sans;
        let key = KeyPair::generate().expect("key");
        p.self_signed(&key).expect("certificate").der().clone()
    }

    fn dns(n: &str) -> SanType {
        SanType::DnsName(n.to_string().try_into().expect("ia5"))
    }

    fn uri(u: &str) -> SanType {
        SanType::URI(u.to_string().try_into().expect("ia5"))
    }

    #[test]
    fn subject_alt_name_dns_names_and_not_the_common_name() {
        let c = cert(Some("cn.partner.test"), vec![dns("Edge.Partner.Test"), dns("partner.test")]);
        assert_eq!(of_certificate(&c), vec!["edge.partner.test", "partner.test"]);
    }

    #[test]
    fn common_name_only_without_a_subject_alt_name() {
        let c = cert(Some("Edge.Partner.Test"), vec![]);
        assert_eq!(of_certificate(&c), vec!["edge.partner.test"]);
        // A subjectAltName with no DNS name still rules the Common Name out ("if and only if ... does not appear").
        let ip = cert(Some("edge.partner.test"), vec![SanType::IpAddress([127, 0, 0, 1].into())]);
        assert!(of_certificate(&ip).is_empty());
        // A Common Name that is no DNS name is no identity.
        assert!(of_certificate(&cert(Some("Partner Org Ltd"), vec![])).is_empty());
        assert!(of_certificate(&cert(None, vec![])).is_empty());
    }

    #[test]
    fn sip_uris_without_a_user_part() {
        let c = cert(
            None,
            vec![
                uri("sip:partner.test"),
                uri("SIP:Other.Test;transport=tls"),
                uri("sip:alice@partner.test"),
                uri("sips:secure.test"),
                uri("https://web.test/"),
                uri("sip:[::1]"),
            ],
        );
        assert_eq!(of_certificate(&c), vec!["partner.test", "other.test"]);
    }

    #[test]
    fn comparison_is_exact_case_insensitive_without_wildcards_or_suffixes() {
        let c = cert(None, vec![dns("*.partner.test"), dns("edge.partner.test")]);
        let ids = of_certificate(&c);
        assert_eq!(ids, vec!["*.partner.test", "edge.partner.test"]);
        assert!(matches(&ids, "EDGE.partner.test"));
        assert!(matches(&ids, "*.partner.test"), "a wildcard matches only itself");
        assert!(!matches(&ids, "other.partner.test"), "never another label");
        assert!(!matches(&ids, "partner.test"), "no suffix match");
        assert!(!matches(&ids, "x.edge.partner.test"));
        let dot = vec![".partner.test".to_string()];
        assert!(!matches(&dot, "edge.partner.test"), "a leading dot is no wildcard either");
    }

    #[test]
    fn bad_bytes_give_nothing_and_never_panic() {
        assert!(of_certificate(&CertificateDer::from(vec![0x30, 0x82, 0xff])).is_empty());
        let good = cert(Some("a.test"), vec![]);
        let bytes = good.as_ref();
        for n in 0..bytes.len() {
            let _ = tbs_fields(&bytes[..n]);
            let _ = of_certificate(&CertificateDer::from(bytes[..n].to_vec()));
        }
        for flip in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[flip] ^= 0xff;
            let _ = tbs_fields(&b).map(|t| common_names(t.subject).count());
        }
        assert!(element(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none(), "lengths beyond 4 bytes refused");
    }
}
