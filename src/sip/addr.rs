//! name-addr / addr-spec with header parameters (From, To, Contact, Route, Record-Route, Path;
//! RFC 3261 §20 and §25.1). Zero-copy. Does not split multi-valued headers: callers hand in one value.

use super::error::ParseError;
use super::lex;
use super::uri::Uri;

#[derive(Clone, Copy, Debug)]
pub struct NameAddr<'a> {
    /// Display name as written: a quoted string keeps its quotes and escapes; tokens keep inner LWS.
    pub display: Option<&'a [u8]>,
    pub uri: Uri<'a>,
    /// The URI without angle brackets.
    pub uri_raw: &'a [u8],
    /// Header parameters after the URI (no leading ';'), raw.
    pub params: &'a [u8],
}

impl<'a> NameAddr<'a> {
    /// name-addr or addr-spec. Parameters after a bare addr-spec belong to the header (RFC 3261 §20).
    pub fn parse(b: &'a [u8]) -> Result<NameAddr<'a>, ParseError> {
        let b = lex::trim(b);
        let (display, after_display) = if b.first() == Some(&b'"') {
            let end = lex::quoted_end(b)?;
            let rest = lex::trim_start(b.get(end..).unwrap_or(&[]));
            if rest.first() != Some(&b'<') {
                return Err(ParseError::BadNameAddr);
            }
            (b.get(..end), rest)
        } else {
            match lex::find(b'<', b) {
                Some(lt) => {
                    let name = lex::trim_end(b.get(..lt).unwrap_or(&[]));
                    if !name.iter().all(|&c| lex::is_token_char(c) || lex::is_ws(c)) {
                        return Err(ParseError::BadNameAddr);
                    }
                    let display = if name.is_empty() { None } else { Some(name) };
                    (display, b.get(lt..).unwrap_or(&[]))
                }
                None => (None, b),
            }
        };
        let (uri_raw, params) = if let Some(inner) = after_display.strip_prefix(b"<") {
            let gt = lex::find(b'>', inner).ok_or(ParseError::BadNameAddr)?;
            let rest = lex::trim_start(inner.get(gt + 1..).unwrap_or(&[]));
            let params = match rest {
                [] => &[][..],
                [b';', p @ ..] => p,
                _ => return Err(ParseError::BadNameAddr),
            };
            // LWS inside the brackets is not allowed, but RFC 4475 §3.1.2.14 permits reading past it.
            (lex::trim(inner.get(..gt).unwrap_or(&[])), params)
        } else {
            // addr-spec: it cannot contain ';'-params, ',' or '?' (RFC 3261 §20), so the first ';' or LWS ends it.
            let end = after_display.iter().position(|&c| c == b';' || lex::is_ws(c)).unwrap_or(after_display.len());
            let rest = lex::trim_start(after_display.get(end..).unwrap_or(&[]));
            let params = match rest {
                [] => &[][..],
                [b';', p @ ..] => p,
                _ => return Err(ParseError::BadNameAddr),
            };
            (after_display.get(..end).unwrap_or(&[]), params)
        };
        let uri = Uri::parse(uri_raw)?;
        lex::validate_params(params)?;
        Ok(NameAddr { display, uri, uri_raw, params: lex::trim(params) })
    }

    pub fn param(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        lex::find_param(self.params, name)
    }

    pub fn tag(&self) -> Option<&'a [u8]> {
        self.param(b"tag").flatten()
    }

    /// Display name with surrounding quotes removed (escapes left raw).
    pub fn display_unquoted(&self) -> Option<&'a [u8]> {
        self.display.map(|d| d.strip_prefix(b"\"").and_then(|d| d.strip_suffix(b"\"")).unwrap_or(d))
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Contact<'a> {
    Star,
    Addr(NameAddr<'a>),
}

impl<'a> Contact<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Contact<'a>, ParseError> {
        if lex::trim(b) == b"*" {
            return Ok(Contact::Star);
        }
        NameAddr::parse(b).map(Contact::Addr)
    }

    /// `;expires=` param; `None` if absent or not a delta-seconds number.
    pub fn expires(&self) -> Option<u32> {
        match self {
            Contact::Star => None,
            Contact::Addr(a) => a.param(b"expires").flatten().and_then(lex::parse_u32),
        }
    }

    pub fn addr(&self) -> Option<&NameAddr<'a>> {
        match self {
            Contact::Star => None,
            Contact::Addr(a) => Some(a),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::sip::uri::Scheme;

    #[test]
    fn quoted_display_with_escapes() {
        let a = NameAddr::parse(br#""J Rosenberg \\\""       <sip:jdrosen@example.com>  ;  tag = 98asjd8"#).unwrap();
        assert_eq!(a.display, Some(&br#""J Rosenberg \\\"""#[..]));
        assert_eq!(a.uri_raw, b"sip:jdrosen@example.com");
        assert_eq!(a.tag(), Some(&b"98asjd8"[..]));
    }

    #[test]
    fn token_display_and_addr_spec() {
        let a = NameAddr::parse(b"Bob Smith <sips:bob@[::1]:5061;transport=tls>;tag=x").unwrap();
        assert_eq!(a.display, Some(&b"Bob Smith"[..]));
        assert_eq!(a.uri.scheme, Scheme::Sips);
        assert_eq!(a.uri.param(b"transport"), Some(Some(&b"tls"[..])));
        assert_eq!(a.param(b"transport"), None);
        let a = NameAddr::parse(b"sip:caller@example.net;tag=93942939o2").unwrap();
        assert_eq!(a.uri_raw, b"sip:caller@example.net");
        assert_eq!(a.uri.params, b"");
        assert_eq!(a.tag(), Some(&b"93942939o2"[..]));
        let a = NameAddr::parse(b"\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").unwrap();
        assert_eq!(a.tag(), Some(&b"1918181833n"[..]));
    }

    #[test]
    fn rejects() {
        assert!(NameAddr::parse(br#""Mr. J. User <sip:j.user@example.com>"#).is_err());
        assert!(NameAddr::parse(b"Bell, Alexander <sip:a.g.bell@bell-tel.com>").is_err());
        assert!(NameAddr::parse(b"<sip:a@b").is_err());
        assert!(NameAddr::parse(b"<sip:a@b> junk").is_err());
        assert!(NameAddr::parse(b"<sip:a@b>;bad param=1").is_err());
        assert!(NameAddr::parse(b"").is_err());
    }

    #[test]
    fn contact_star_and_expires() {
        assert!(matches!(Contact::parse(b" * "), Ok(Contact::Star)));
        let c = Contact::parse(b"<sip:a@b>;expires=3600;q=0.5").unwrap();
        assert_eq!(c.expires(), Some(3600));
        let c = Contact::parse(b"<sip:a@b>;expires=280297596632815").unwrap();
        assert_eq!(c.expires(), None);
    }
}
