//! HTTP Digest as SIP uses it (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760): parse and write credentials
//! (Authorization / Proxy-Authorization values) and challenges (WWW-/Proxy-Authenticate values). Zero-copy
//! on parse: quotes are removed, escapes are left raw (`unquote` decodes them). Computing or checking the
//! response hash is not done here (no crypto in the codec).

use super::error::ParseError;
use super::lex;
use bytes::{BufMut, BytesMut};
use std::borrow::Cow;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DigestCredentials<'a> {
    pub username: &'a [u8],
    pub realm: &'a [u8],
    pub nonce: &'a [u8],
    pub uri: &'a [u8],
    pub response: &'a [u8],
    pub algorithm: Option<&'a [u8]>,
    pub cnonce: Option<&'a [u8]>,
    pub opaque: Option<&'a [u8]>,
    pub qop: Option<&'a [u8]>,
    pub nc: Option<&'a [u8]>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DigestChallenge<'a> {
    pub realm: &'a [u8],
    pub nonce: &'a [u8],
    pub opaque: Option<&'a [u8]>,
    pub algorithm: Option<&'a [u8]>,
    pub qop: Option<&'a [u8]>,
    pub stale: bool,
}

/// Strips "Digest" + LWS (scheme is case-insensitive) and yields each `name = value` with quotes removed.
type AuthParam<'a> = Result<(&'a [u8], &'a [u8]), ParseError>;

fn digest_params(value: &[u8]) -> Result<impl Iterator<Item = AuthParam<'_>>, ParseError> {
    let v = lex::trim(value);
    let (scheme, rest) = lex::split_at_first(v, lex::is_ws);
    if !scheme.eq_ignore_ascii_case(b"Digest") {
        return Err(ParseError::BadAuth);
    }
    Ok(lex::CommaSplit::new(rest).map(|item| {
        let eq = lex::find(b'=', item).ok_or(ParseError::BadAuth)?;
        let name = lex::trim(item.get(..eq).unwrap_or(&[]));
        let raw = lex::trim(item.get(eq + 1..).unwrap_or(&[]));
        if !lex::is_token(name) {
            return Err(ParseError::BadAuth);
        }
        let value = if raw.first() == Some(&b'"') {
            if lex::quoted_end(raw).map_err(|_| ParseError::BadAuth)? != raw.len() {
                return Err(ParseError::BadAuth);
            }
            raw.get(1..raw.len() - 1).unwrap_or(&[])
        } else {
            if raw.is_empty() || !raw.iter().all(|&c| lex::is_token_char(c) || c == b'/' || c == b'=') {
                return Err(ParseError::BadAuth);
            }
            raw
        };
        Ok((name, value))
    }))
}

/// "Digest k=v, ..." in any order, case-insensitive keys; unknown keys are skipped.
pub fn parse_credentials(value: &[u8]) -> Result<DigestCredentials<'_>, ParseError> {
    let mut c = DigestCredentials::default();
    let mut seen = 0u8;
    for p in digest_params(value)? {
        let (k, v) = p?;
        let is = |n: &[u8]| k.eq_ignore_ascii_case(n);
        if is(b"username") {
            c.username = v;
            seen |= 1;
        } else if is(b"realm") {
            c.realm = v;
            seen |= 2;
        } else if is(b"nonce") {
            c.nonce = v;
            seen |= 4;
        } else if is(b"uri") {
            c.uri = v;
            seen |= 8;
        } else if is(b"response") {
            c.response = v;
            seen |= 16;
        } else if is(b"algorithm") {
            c.algorithm = Some(v);
        } else if is(b"cnonce") {
            c.cnonce = Some(v);
        } else if is(b"opaque") {
            c.opaque = Some(v);
        } else if is(b"qop") {
            c.qop = Some(v);
        } else if is(b"nc") {
            c.nc = Some(v);
        }
    }
    if seen != 0b1_1111 {
        return Err(ParseError::BadAuth);
    }
    Ok(c)
}

pub fn parse_challenge(value: &[u8]) -> Result<DigestChallenge<'_>, ParseError> {
    let mut c = DigestChallenge::default();
    let (mut realm, mut nonce) = (false, false);
    for p in digest_params(value)? {
        let (k, v) = p?;
        if k.eq_ignore_ascii_case(b"realm") {
            c.realm = v;
            realm = true;
        } else if k.eq_ignore_ascii_case(b"nonce") {
            c.nonce = v;
            nonce = true;
        } else if k.eq_ignore_ascii_case(b"opaque") {
            c.opaque = Some(v);
        } else if k.eq_ignore_ascii_case(b"algorithm") {
            c.algorithm = Some(v);
        } else if k.eq_ignore_ascii_case(b"qop") {
            c.qop = Some(v);
        } else if k.eq_ignore_ascii_case(b"stale") {
            c.stale = v.eq_ignore_ascii_case(b"true");
        }
    }
    if !(realm && nonce) {
        return Err(ParseError::BadAuth);
    }
    Ok(c)
}

/// Decodes quoted-pair escapes (`\"` -> `"`); borrows when there are none.
pub fn unquote(b: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr(b'\\', b).is_none() {
        return Cow::Borrowed(b);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut it = b.iter();
    while let Some(&c) = it.next() {
        if c == b'\\' {
            if let Some(&n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Writes `"value"`, escaping `"` and `\` so a value taken raw from a peer cannot break the quoting.
fn put_quoted(out: &mut BytesMut, v: &[u8]) {
    out.put_u8(b'"');
    for &c in v {
        if c == b'"' || c == b'\\' {
            out.put_u8(b'\\');
        }
        if c != b'\r' && c != b'\n' {
            out.put_u8(c);
        }
    }
    out.put_u8(b'"');
}

fn put_param(out: &mut BytesMut, first: &mut bool, name: &str, v: &[u8], quoted: bool) {
    out.put_slice(if *first { b" " } else { b", " });
    *first = false;
    out.put_slice(name.as_bytes());
    out.put_u8(b'=');
    if quoted {
        put_quoted(out, v);
    } else {
        out.put_slice(v);
    }
}

/// The header VALUE: `Digest realm="..", nonce="..", ...` (algorithm and stale unquoted, qop quoted).
pub fn write_challenge(out: &mut BytesMut, c: &DigestChallenge<'_>) {
    let mut first = true;
    out.put_slice(b"Digest");
    put_param(out, &mut first, "realm", c.realm, true);
    put_param(out, &mut first, "nonce", c.nonce, true);
    if let Some(v) = c.opaque {
        put_param(out, &mut first, "opaque", v, true);
    }
    if let Some(v) = c.algorithm {
        put_param(out, &mut first, "algorithm", v, false);
    }
    if let Some(v) = c.qop {
        put_param(out, &mut first, "qop", v, true);
    }
    if c.stale {
        put_param(out, &mut first, "stale", b"true", false);
    }
}

/// The header VALUE (RFC 2617 §3.2.2: qop, nc and algorithm unquoted).
pub fn write_credentials(out: &mut BytesMut, c: &DigestCredentials<'_>) {
    let mut first = true;
    out.put_slice(b"Digest");
    put_param(out, &mut first, "username", c.username, true);
    put_param(out, &mut first, "realm", c.realm, true);
    put_param(out, &mut first, "nonce", c.nonce, true);
    put_param(out, &mut first, "uri", c.uri, true);
    put_param(out, &mut first, "response", c.response, true);
    if let Some(v) = c.algorithm {
        put_param(out, &mut first, "algorithm", v, false);
    }
    if let Some(v) = c.cnonce {
        put_param(out, &mut first, "cnonce", v, true);
    }
    if let Some(v) = c.opaque {
        put_param(out, &mut first, "opaque", v, true);
    }
    if let Some(v) = c.qop {
        put_param(out, &mut first, "qop", v, false);
    }
    if let Some(v) = c.nc {
        put_param(out, &mut first, "nc", v, false);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn credentials_any_order_and_case() {
        let v = br#"digest REALM="example.com",username="al\"ice" ,  nonce="abc", uri="sip:example.com",
 response="0123456789abcdef0123456789abcdef", algorithm=MD5, qop=auth, nc=00000001, cnonce="xyz", opaque="o""#;
        let c = parse_credentials(v).unwrap();
        assert_eq!(c.username, br#"al\"ice"#);
        assert_eq!(&*unquote(c.username), b"al\"ice");
        assert_eq!(c.realm, b"example.com");
        assert_eq!(c.uri, b"sip:example.com");
        assert_eq!(c.algorithm, Some(&b"MD5"[..]));
        assert_eq!(c.qop, Some(&b"auth"[..]));
        assert_eq!(c.nc, Some(&b"00000001"[..]));
        assert_eq!(c.cnonce, Some(&b"xyz"[..]));
        assert_eq!(c.opaque, Some(&b"o"[..]));
    }

    #[test]
    fn credentials_round_trip() {
        let c = DigestCredentials {
            username: b"bob",
            realm: b"r",
            nonce: b"n",
            uri: b"sip:r",
            response: b"00",
            algorithm: Some(b"SHA-256"),
            cnonce: Some(b"c"),
            opaque: None,
            qop: Some(b"auth"),
            nc: Some(b"00000001"),
        };
        let mut out = BytesMut::new();
        write_credentials(&mut out, &c);
        assert_eq!(parse_credentials(&out).unwrap(), c);
    }

    #[test]
    fn challenge_round_trip() {
        let c = DigestChallenge {
            realm: b"example.com",
            nonce: b"n1",
            opaque: Some(b"op"),
            algorithm: Some(b"MD5"),
            qop: Some(b"auth"),
            stale: true,
        };
        let mut out = BytesMut::new();
        write_challenge(&mut out, &c);
        assert_eq!(
            &out[..],
            br#"Digest realm="example.com", nonce="n1", opaque="op", algorithm=MD5, qop="auth", stale=true"#
        );
        assert_eq!(parse_challenge(&out).unwrap(), c);
    }

    #[test]
    fn rejects() {
        assert!(parse_credentials(b"Basic dXNlcjpwYXNz").is_err());
        assert!(parse_credentials(br#"Digest username="a", realm="b""#).is_err());
        assert!(parse_credentials(br#"Digest username="a, realm="b", nonce="c", uri="d", response="e""#).is_err());
        assert!(parse_challenge(br#"Digest nonce="x""#).is_err());
        assert!(parse_challenge(b"Digest").is_err());
        assert!(parse_challenge(br#"Digest realm=a b, nonce="x""#).is_err());
    }
}
