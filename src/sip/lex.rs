//! Lexical helpers shared by the value parsers (RFC 3261 §25.1): token and whitespace classes, trimming,
//! quoted strings, splitting outside quotes and angle brackets, `;name=value` parameter lists, numbers.
//! Values handed in may still contain folding (CRLF followed by SP/HT): it is treated as whitespace,
//! which is what RFC 3261 §7.3.1 makes it equivalent to. Nothing here allocates or panics.

use super::error::ParseError;

/// token chars: alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~"
// Indexing in const evaluation: out of bounds is a compile error, not a runtime panic.
#[allow(clippy::indexing_slicing)]
const TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~');
        i += 1;
    }
    t
};

#[inline]
pub fn is_token_char(c: u8) -> bool {
    TOKEN.get(usize::from(c)).copied().unwrap_or(false)
}

pub fn is_token(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(|&c| is_token_char(c))
}

/// Whitespace inside an already-unfolded-by-validation header value.
#[inline]
pub fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

#[inline]
pub fn trim(b: &[u8]) -> &[u8] {
    trim_end(trim_start(b))
}

#[inline]
pub fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&c| is_ws(c)).count();
    b.get(n..).unwrap_or(&[])
}

#[inline]
pub fn trim_end(b: &[u8]) -> &[u8] {
    let n = b.iter().rev().take_while(|&&c| is_ws(c)).count();
    b.get(..b.len() - n).unwrap_or(&[])
}

/// `b` starts at an opening quote; returns the index just past the closing quote. Backslash escapes
/// any byte except CR and LF (quoted-pair, RFC 3261 §25.1).
pub fn quoted_end(b: &[u8]) -> Result<usize, ParseError> {
    let mut i = 1;
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => return Ok(i + 1),
            b'\\' => match b.get(i + 1) {
                Some(b'\r' | b'\n') | None => return Err(ParseError::BadQuotedString),
                Some(_) => i += 2,
            },
            _ => i += 1,
        }
    }
    Err(ParseError::BadQuotedString)
}

/// Index of the first `sep` outside quoted strings and `<...>`; `Err` on an unterminated quote.
/// An unclosed `<` hides the rest (no separator found), as a URI cannot hold `>`.
pub fn find_outside(b: &[u8], sep: u8) -> Result<Option<usize>, ParseError> {
    let mut i = 0;
    loop {
        let rest = b.get(i..).unwrap_or(&[]);
        let Some(j) = memchr::memchr3(sep, b'"', b'<', rest) else { return Ok(None) };
        let at = i + j;
        match rest.get(j) {
            Some(&c) if c == sep => return Ok(Some(at)),
            Some(b'"') => i = at + quoted_end(b.get(at..).unwrap_or(&[]))?,
            _ => match find(b'>', b.get(at..).unwrap_or(&[])) {
                Some(k) => i = at + k + 1,
                None => return Ok(None),
            },
        }
    }
}

/// Index of the first `c`; a plain loop beats `memchr`'s setup on the short slices (names, URIs,
/// params) it is used on.
#[inline]
pub fn find(c: u8, b: &[u8]) -> Option<usize> {
    b.iter().position(|&x| x == c)
}

/// Comma-separated values (outside quotes and `<>`), trimmed, empty ones skipped. An unterminated quote
/// ends the iteration with the rest as one value (the caller's value parser then reports it).
#[derive(Clone, Debug)]
pub struct CommaSplit<'a> {
    rest: &'a [u8],
}

impl<'a> CommaSplit<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        CommaSplit { rest: b }
    }
}

impl<'a> Iterator for CommaSplit<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (item, rest) = match find_outside(self.rest, b',') {
                Ok(Some(i)) => (self.rest.get(..i).unwrap_or(&[]), self.rest.get(i + 1..).unwrap_or(&[])),
                _ => (self.rest, &[][..]),
            };
            self.rest = rest;
            let item = trim(item);
            if !item.is_empty() {
                return Some(item);
            }
        }
    }
}

/// `name[=value]` items of a `;`-separated list given without its leading `;`. Names and values are
/// trimmed (SEMI and EQUAL allow LWS around them); quoted values keep their quotes.
#[derive(Clone, Debug)]
pub struct Params<'a> {
    rest: &'a [u8],
}

impl<'a> Params<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Params { rest: b }
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (item, rest) = match find_outside(self.rest, b';') {
                Ok(Some(i)) => (self.rest.get(..i).unwrap_or(&[]), self.rest.get(i + 1..).unwrap_or(&[])),
                _ => (self.rest, &[][..]),
            };
            self.rest = rest;
            let item = trim(item);
            if item.is_empty() {
                continue;
            }
            return Some(match find(b'=', item) {
                Some(eq) => {
                    (trim_end(item.get(..eq).unwrap_or(&[])), Some(trim_start(item.get(eq + 1..).unwrap_or(&[]))))
                }
                None => (item, None),
            });
        }
    }
}

/// Case-insensitive lookup in a raw parameter list; `Some(None)` = present without a value.
pub fn find_param<'a>(params: &'a [u8], name: &[u8]) -> Option<Option<&'a [u8]>> {
    Params::new(params).find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

/// Checks a generic-param list: token names, values token / host / quoted-string (RFC 3261 §25.1).
pub fn validate_params(params: &[u8]) -> Result<(), ParseError> {
    let mut rest = params;
    while !rest.is_empty() {
        let (item, next) = match find_outside(rest, b';')? {
            Some(i) => (rest.get(..i).unwrap_or(&[]), rest.get(i + 1..).unwrap_or(&[])),
            None => (rest, &[][..]),
        };
        rest = next;
        let item = trim(item);
        let (name, value) = match find(b'=', item) {
            Some(eq) => (trim_end(item.get(..eq).unwrap_or(&[])), Some(trim_start(item.get(eq + 1..).unwrap_or(&[])))),
            None => (item, None),
        };
        if !is_token(name) {
            return Err(ParseError::BadParam);
        }
        match value {
            None => {}
            Some(v) if v.first() == Some(&b'"') && quoted_end(v)? != v.len() => return Err(ParseError::BadParam),
            Some(v) if v.first() == Some(&b'"') => {}
            Some(v) if v.is_empty() || !v.iter().all(|&c| is_token_char(c) || matches!(c, b'[' | b']' | b':')) => {
                return Err(ParseError::BadParam);
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// 1*DIGIT into u32; `None` when empty, not all digits, or overflowing.
pub fn parse_u32(b: &[u8]) -> Option<u32> {
    if b.is_empty() {
        return None;
    }
    let mut n: u32 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u32::from(c - b'0'))?;
    }
    Some(n)
}

pub fn parse_u16(b: &[u8]) -> Option<u16> {
    parse_u32(b).and_then(|n| u16::try_from(n).ok())
}

/// 1*DIGIT into usize (Content-Length); `None` when empty, not all digits, or overflowing.
pub fn parse_usize(b: &[u8]) -> Option<usize> {
    if b.is_empty() {
        return None;
    }
    let mut n: usize = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(usize::from(c - b'0'))?;
    }
    Some(n)
}

/// Splits at the first byte matching `f`: (before, from-it-on).
#[inline]
pub fn split_at_first(b: &[u8], f: impl Fn(u8) -> bool) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| f(c)) {
        Some(i) => (b.get(..i).unwrap_or(&[]), b.get(i..).unwrap_or(&[])),
        None => (b, &[]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings_with_escapes() {
        assert_eq!(quoted_end(br#""abc""#), Ok(5));
        assert_eq!(quoted_end(br#""a\"b" x"#), Ok(6));
        assert_eq!(quoted_end(br#""J Rosenberg \\\"""#), Ok(18));
        assert_eq!(quoted_end(br#""abc"#), Err(ParseError::BadQuotedString));
        assert_eq!(quoted_end(b"\"a\\"), Err(ParseError::BadQuotedString));
    }

    #[test]
    fn comma_split_respects_quotes_and_angles() {
        let v: Vec<&[u8]> = CommaSplit::new(br#""a,b" <sip:x;p=1,2>;q=1 , <sip:y> ,, "#).collect();
        assert_eq!(v, vec![&br#""a,b" <sip:x;p=1,2>;q=1"#[..], b"<sip:y>"]);
        assert_eq!(CommaSplit::new(b" ;;,,;;,;").count(), 3);
    }

    #[test]
    fn params_trim_and_case() {
        let p = b" tag    = 1918181833n ; lr;q = 0.33;x=\"a;b\"";
        assert_eq!(find_param(p, b"TAG"), Some(Some(&b"1918181833n"[..])));
        assert_eq!(find_param(p, b"lr"), Some(None));
        assert_eq!(find_param(p, b"q"), Some(Some(&b"0.33"[..])));
        assert_eq!(find_param(p, b"x"), Some(Some(&b"\"a;b\""[..])));
        assert_eq!(find_param(p, b"y"), None);
        assert!(validate_params(p).is_ok());
        assert!(validate_params(b"a=b c").is_err());
        assert!(validate_params(b"a=\"b").is_err());
        assert!(validate_params(b"=b").is_err());
        assert!(validate_params(b"maddr=[::1]").is_ok());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u32(b"0009"), Some(9));
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u32(b"-1"), None);
        assert_eq!(parse_u32(b""), None);
        assert_eq!(parse_u16(b"65536"), None);
        assert_eq!(parse_usize(b"36893488147419103232"), None);
    }
}
