//! One Via value (RFC 3261 §20.42 / §25.1 via-parm) with the parameters the edge needs: branch,
//! received, rport (RFC 3581), alias (RFC 5923). Callers split multi-valued lines first.

use super::error::ParseError;
use super::lex;
use super::uri::parse_hostport;

#[derive(Clone, Copy, Debug)]
pub struct Via<'a> {
    /// The whole value, trimmed.
    pub raw: &'a [u8],
    /// As written ("UDP", "tcp", "TLS", "WS", ...).
    pub transport: &'a [u8],
    /// Raw; IPv6 kept with brackets.
    pub host: &'a [u8],
    pub port: Option<u16>,
    /// After the first ';' (no leading ';'), raw.
    pub params: &'a [u8],
}

/// Reads `token SWS`; returns (token, rest).
fn token_then_sws(b: &[u8]) -> (&[u8], &[u8]) {
    let (tok, rest) = lex::split_at_first(b, |c| !lex::is_token_char(c));
    (tok, lex::trim_start(rest))
}

fn slash(b: &[u8]) -> Result<&[u8], ParseError> {
    b.strip_prefix(b"/").map(lex::trim_start).ok_or(ParseError::BadVia)
}

impl<'a> Via<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Via<'a>, ParseError> {
        let raw = lex::trim(b);
        // sent-protocol = protocol-name SLASH protocol-version SLASH transport; SLASH allows LWS around it.
        let (name, rest) = token_then_sws(raw);
        let (version, rest) = token_then_sws(slash(rest)?);
        let (transport, rest) = lex::split_at_first(slash(rest)?, |c| !lex::is_token_char(c));
        if !name.eq_ignore_ascii_case(b"SIP") || version != b"2.0" || transport.is_empty() {
            return Err(ParseError::BadVia);
        }
        if !rest.first().is_some_and(|&c| lex::is_ws(c)) {
            return Err(ParseError::BadVia);
        }
        let (host, port, rest) = parse_hostport(lex::trim_start(rest)).map_err(|_| ParseError::BadVia)?;
        let params = match lex::trim_start(rest) {
            [] => &[][..],
            [b';', p @ ..] => p,
            _ => return Err(ParseError::BadVia),
        };
        lex::validate_params(params).map_err(|_| ParseError::BadVia)?;
        Ok(Via { raw, transport, host, port, params })
    }

    pub fn param(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        lex::find_param(self.params, name)
    }

    pub fn branch(&self) -> Option<&'a [u8]> {
        self.param(b"branch").flatten()
    }

    /// `Some(None)`: rport requested without a value (or with one that is not a port).
    pub fn rport(&self) -> Option<Option<u16>> {
        self.param(b"rport").map(|v| v.and_then(lex::parse_u16))
    }

    pub fn received(&self) -> Option<&'a [u8]> {
        self.param(b"received").flatten()
    }

    /// RFC 5923 connection reuse.
    pub fn alias(&self) -> bool {
        self.param(b"alias").is_some()
    }

    /// RFC 3261 §8.1.1.7 magic cookie: the branch is globally unique.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with(b"z9hG4bK"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn simple() {
        let v = Via::parse(b"SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK776;rport;alias").unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, b"192.0.2.2");
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.branch(), Some(&b"z9hG4bK776"[..]));
        assert_eq!(v.rport(), Some(None));
        assert!(v.alias());
        assert!(v.has_rfc3261_branch());
        assert_eq!(v.received(), None);
    }

    #[test]
    fn folded_and_spaced() {
        let v = Via::parse(b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, b"192.0.2.2");
        let v = Via::parse(b"SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239").unwrap();
        assert_eq!(v.branch(), Some(&b"z9hG4bK30239"[..]));
    }

    #[test]
    fn ipv6_received_rport() {
        let v = Via::parse(b"SIP/2.0/TLS [2001:db8::9:1]:5061;received=[2001:db8::9:255];rport=5070;branch=z9hG4bKx")
            .unwrap();
        assert_eq!(v.host, b"[2001:db8::9:1]");
        assert_eq!(v.port, Some(5061));
        assert_eq!(v.received(), Some(&b"[2001:db8::9:255]"[..]));
        assert_eq!(v.rport(), Some(Some(5070)));
    }

    #[test]
    fn rejects() {
        for bad in [
            &b"SIP/2.0/UDP"[..],
            b"SIP/3.0/UDP h",
            b"SIP/2.0 h",
            b"SIP/2.0/UDPh",
            b"SIP/2.0/UDP h:x",
            b"SIP/2.0/UDP h junk",
            b"SIP/2.0/UDP h;b=\"x",
        ] {
            assert!(Via::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
