//! URIs as RFC 3261 §19.1 (sip, sips), RFC 3966 (tel) and, for anything else, RFC 3986's bare
//! `scheme:rest`. Zero-copy: every field is a slice of the input, escapes are left in place.
//! Does not resolve hosts or compare URIs per §19.1.4 (only host equality is offered).

use super::error::ParseError;
use super::lex;
use std::borrow::Cow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other,
}

#[derive(Clone, Copy, Debug)]
pub struct Uri<'a> {
    pub scheme: Scheme,
    /// Raw (may contain %-escapes); for tel: the number.
    pub user: Option<&'a [u8]>,
    pub password: Option<&'a [u8]>,
    /// Raw; IPv6 kept with brackets; empty for tel and other schemes.
    pub host: &'a [u8],
    pub port: Option<u16>,
    /// After the first ';' up to '?' (no leading ';'), raw.
    pub params: &'a [u8],
    /// After '?', raw.
    pub headers: &'a [u8],
}

/// A 256-entry byte class built at compile time from a predicate on `c`.
macro_rules! class {
    (|$c:ident| $pred:expr) => {{
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let $c = i as u8;
            // Indexing in const evaluation: out of bounds is a compile error, not a runtime panic.
            #[allow(clippy::indexing_slicing)]
            {
                t[i] = $pred;
            }
            i += 1;
        }
        t
    }};
}

/// Bytes allowed anywhere in a URI: printable ASCII minus the delimiters that end a URI in a header.
const URI_OK: [bool; 256] = class!(|c| c > b' ' && c < 0x7f && !matches!(c, b'<' | b'>' | b'"'));
const HOSTNAME: [bool; 256] = class!(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));

#[inline]
fn uri_char_ok(c: u8) -> bool {
    URI_OK.get(usize::from(c)).copied().unwrap_or(false)
}

#[inline]
fn is_hostname_char(c: u8) -> bool {
    HOSTNAME.get(usize::from(c)).copied().unwrap_or(false)
}

/// IPv6reference: "[" hex/colons/dots "]" (RFC 3261 §25.1); returns its length including brackets.
fn ipv6_ref_len(b: &[u8]) -> Result<usize, ParseError> {
    let close = lex::find(b']', b).ok_or(ParseError::BadUri)?;
    let inner = b.get(1..close).unwrap_or(&[]);
    if inner.is_empty()
        || !inner.iter().all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        || !inner.contains(&b':')
    {
        return Err(ParseError::BadUri);
    }
    Ok(close + 1)
}

/// host [":" port] at the start of `b`; returns (host, port, rest). Shared with Via's sent-by.
/// (host, port, rest after the port).
pub(crate) type HostPort<'a> = (&'a [u8], Option<u16>, &'a [u8]);

pub(crate) fn parse_hostport(b: &[u8]) -> Result<HostPort<'_>, ParseError> {
    let host_len = if b.first() == Some(&b'[') {
        ipv6_ref_len(b)?
    } else {
        b.iter().take_while(|&&c| is_hostname_char(c)).count()
    };
    if host_len == 0 {
        return Err(ParseError::BadUri);
    }
    let host = b.get(..host_len).unwrap_or(&[]);
    let rest = b.get(host_len..).unwrap_or(&[]);
    if let Some(after) = rest.strip_prefix(b":") {
        let n = after.iter().take_while(|c| c.is_ascii_digit()).count();
        let port = lex::parse_u16(after.get(..n).unwrap_or(&[])).ok_or(ParseError::BadUri)?;
        Ok((host, Some(port), after.get(n..).unwrap_or(&[])))
    } else {
        Ok((host, None, rest))
    }
}

fn scheme_of(b: &[u8]) -> Result<(Scheme, &[u8]), ParseError> {
    let colon = lex::find(b':', b).ok_or(ParseError::BadUri)?;
    let name = b.get(..colon).unwrap_or(&[]);
    let rest = b.get(colon + 1..).unwrap_or(&[]);
    let valid = matches!(name.first(), Some(c) if c.is_ascii_alphabetic())
        && name.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
    if !valid {
        return Err(ParseError::BadUri);
    }
    let scheme = if name.eq_ignore_ascii_case(b"sip") {
        Scheme::Sip
    } else if name.eq_ignore_ascii_case(b"sips") {
        Scheme::Sips
    } else if name.eq_ignore_ascii_case(b"tel") {
        Scheme::Tel
    } else {
        Scheme::Other
    };
    Ok((scheme, rest))
}

impl<'a> Uri<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Uri<'a>, ParseError> {
        if b.is_empty() || !b.iter().all(|&c| uri_char_ok(c)) {
            return Err(ParseError::BadUri);
        }
        let (scheme, rest) = scheme_of(b)?;
        let (rest, headers) = match scheme {
            Scheme::Sip | Scheme::Sips | Scheme::Tel => match lex::find(b'?', rest) {
                // '?' is legal in a sip user part, so only look for it after the '@'.
                Some(_) => {
                    let search_from = lex::find(b'@', rest).map_or(0, |at| at + 1);
                    match lex::find(b'?', rest.get(search_from..).unwrap_or(&[])) {
                        Some(q) => {
                            (rest.get(..search_from + q).unwrap_or(&[]), rest.get(search_from + q + 1..).unwrap_or(&[]))
                        }
                        None => (rest, &[][..]),
                    }
                }
                None => (rest, &[][..]),
            },
            Scheme::Other => {
                if rest.is_empty() {
                    return Err(ParseError::BadUri);
                }
                return Ok(Uri {
                    scheme,
                    user: None,
                    password: None,
                    host: &[],
                    port: None,
                    params: &[],
                    headers: &[],
                });
            }
        };
        match scheme {
            Scheme::Tel => {
                let (number, params) = match lex::find(b';', rest) {
                    Some(i) => (rest.get(..i).unwrap_or(&[]), rest.get(i + 1..).unwrap_or(&[])),
                    None => (rest, &[][..]),
                };
                let ok = !number.is_empty()
                    && number
                        .iter()
                        .all(|&c| c.is_ascii_hexdigit() || matches!(c, b'+' | b'-' | b'.' | b'(' | b')' | b'*' | b'#'));
                if !ok {
                    return Err(ParseError::BadUri);
                }
                Ok(Uri { scheme, user: Some(number), password: None, host: &[], port: None, params, headers })
            }
            _ => {
                // '@' cannot appear unescaped in user, host or params, so the first one ends userinfo.
                let (userinfo, hostpart) = match lex::find(b'@', rest) {
                    Some(at) => (Some(rest.get(..at).unwrap_or(&[])), rest.get(at + 1..).unwrap_or(&[])),
                    None => (None, rest),
                };
                let (user, password) = match userinfo {
                    None => (None, None),
                    Some(ui) => {
                        let (u, p) = match lex::find(b':', ui) {
                            Some(c) => (ui.get(..c).unwrap_or(&[]), Some(ui.get(c + 1..).unwrap_or(&[]))),
                            None => (ui, None),
                        };
                        if u.is_empty() {
                            return Err(ParseError::BadUri);
                        }
                        (Some(u), p)
                    }
                };
                let (host, port, after) = parse_hostport(hostpart)?;
                let params = match after {
                    [] => &[][..],
                    [b';', p @ ..] => p,
                    _ => return Err(ParseError::BadUri),
                };
                Ok(Uri { scheme, user, password, host, port, params, headers })
            }
        }
    }

    /// Case-insensitive name; `Some(None)` = present without value.
    pub fn param(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        lex::find_param(self.params, name)
    }

    pub fn user_unescaped(&self) -> Cow<'a, [u8]> {
        unescape(self.user.unwrap_or(&[]))
    }

    /// Case-insensitive.
    pub fn host_eq(&self, other: &[u8]) -> bool {
        self.host.eq_ignore_ascii_case(other)
    }

    pub fn is_secure(&self) -> bool {
        self.scheme == Scheme::Sips
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes %XX escapes; borrows when there are none. A malformed escape is kept as is.
pub fn unescape(b: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr(b'%', b).is_none() {
        return Cow::Borrowed(b);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            if let (Some(h), Some(l)) = (b.get(i + 1).and_then(|&x| hex(x)), b.get(i + 2).and_then(|&x| hex(x))) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn sip_full() {
        let u = Uri::parse(b"sip:alice:secret@Example.COM:5061;transport=tcp;lr?subject=x&priority=urgent").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.password, Some(&b"secret"[..]));
        assert!(u.host_eq(b"example.com"));
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.params, b"transport=tcp;lr");
        assert_eq!(u.param(b"TRANSPORT"), Some(Some(&b"tcp"[..])));
        assert_eq!(u.param(b"lr"), Some(None));
        assert_eq!(u.headers, b"subject=x&priority=urgent");
    }

    #[test]
    fn ipv6_and_sips() {
        let u = Uri::parse(b"SIPS:[2001:db8::10]:5061").unwrap();
        assert_eq!(u.scheme, Scheme::Sips);
        assert_eq!(u.host, b"[2001:db8::10]");
        assert_eq!(u.port, Some(5061));
        let u = Uri::parse(b"sip:user@[::ffff:192.0.2.1];maddr=[::1]").unwrap();
        assert_eq!(u.host, b"[::ffff:192.0.2.1]");
        assert_eq!(u.param(b"maddr"), Some(Some(&b"[::1]"[..])));
        assert!(Uri::parse(b"sip:[2001:db8::10").is_err());
        assert!(Uri::parse(b"sip:[zz]").is_err());
    }

    #[test]
    fn user_with_semicolon_and_escapes() {
        let u = Uri::parse(b"sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user, Some(&b"user;par=u%40example.net"[..]));
        assert_eq!(u.host, b"example.com");
        let u = Uri::parse(b"sip:sips%3Auser%40example.com@example.net").unwrap();
        assert_eq!(&*u.user_unescaped(), b"sips:user@example.com");
        let u = Uri::parse(b"sip:null-%00-null@example.com").unwrap();
        assert_eq!(&*u.user_unescaped(), b"null-\0-null");
        assert_eq!(&*unescape(b"bad%4"), b"bad%4");
    }

    #[test]
    fn tel_and_other() {
        let u = Uri::parse(b"tel:+1-201-555-0123;phone-context=example.com").unwrap();
        assert_eq!(u.scheme, Scheme::Tel);
        assert_eq!(u.user, Some(&b"+1-201-555-0123"[..]));
        assert_eq!(u.host, b"");
        assert_eq!(u.param(b"phone-context"), Some(Some(&b"example.com"[..])));
        let u = Uri::parse(b"urn:uuid:f81d4fae").unwrap();
        assert_eq!(u.scheme, Scheme::Other);
        assert!(Uri::parse(b"tel:").is_err());
    }

    #[test]
    fn rejects() {
        for bad in [
            &b""[..],
            b"sip:",
            b"<sip:a@b>",
            b"sip:a@b c",
            b"sip:a@b:99999",
            b"sip:a@b:",
            b"1sip:x",
            b"sip:@host",
            b"sip:a@b>x",
        ] {
            let r = Uri::parse(bad);
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
