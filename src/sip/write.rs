//! Writers for messages this server originates: responses to a parsed request (RFC 3261 §8.2.6), a
//! best-effort error response to bytes that did not parse, and requests. Output goes to a caller-owned
//! `BytesMut` (reused buffers, no allocation here beyond its growth). Values are written as given.

use super::header::HeaderName;
use super::lex;
use super::msg::Message;
use bytes::{BufMut, BytesMut};

/// Decimal without allocating.
pub fn put_uint(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.put_slice(digits.get(i..).unwrap_or(&[]));
}

/// `Name: value\r\n`. An empty name (`HeaderName::Other.as_str()`) writes nothing: use a raw name.
pub fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    if name.is_empty() {
        return;
    }
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

fn put_status_line(out: &mut BytesMut, code: u16, reason: &str) {
    out.put_slice(b"SIP/2.0 ");
    put_uint(out, u64::from(code));
    out.put_u8(b' ');
    out.put_slice(reason.as_bytes());
    out.put_slice(b"\r\n");
}

fn put_body(out: &mut BytesMut, body: Option<(&[u8], &[u8])>) {
    if let Some((ct, b)) = body {
        put_header(out, b"Content-Type", ct);
        out.put_slice(b"Content-Length: ");
        put_uint(out, b.len() as u64);
        out.put_slice(b"\r\n\r\n");
        out.put_slice(b);
    } else {
        out.put_slice(b"Content-Length: 0\r\n\r\n");
    }
}

/// Writes a response to `req` (RFC 3261 §8.2.6): all Via lines, From, To (adds ;tag=to_tag when To has
/// no tag and to_tag is Some), Call-ID, CSeq copied; then `extra` header lines in order; then
/// Content-Type (if body) and Content-Length.
pub fn write_response(
    out: &mut BytesMut,
    req: &Message,
    code: u16,
    reason: &str,
    to_tag: Option<&[u8]>,
    extra: &[(HeaderName, &[u8])],
    body: Option<(&[u8], &[u8])>,
) {
    out.reserve(256 + req.header(HeaderName::Via).map_or(0, <[u8]>::len) * 2);
    put_status_line(out, code, reason);
    let entries = req.entries();
    for (i, e) in entries.iter().enumerate() {
        if e.name == HeaderName::Via {
            out.put_slice(req.entry_line(i));
        }
    }
    for h in [HeaderName::From, HeaderName::To, HeaderName::CallId, HeaderName::CSeq] {
        let Some(i) = req.first_index(h) else { continue };
        let line = req.entry_line(i);
        match (h, to_tag) {
            (HeaderName::To, Some(tag)) if req.to().tag().is_none() => {
                let Some(e) = entries.get(i) else { continue };
                let value_end = usize::from(e.value_off) + usize::from(e.value_len);
                out.put_slice(line.get(..value_end).unwrap_or(line));
                out.put_slice(b";tag=");
                out.put_slice(tag);
                out.put_slice(b"\r\n");
            }
            _ => out.put_slice(line),
        }
    }
    for (name, value) in extra {
        put_header(out, name.as_str().as_bytes(), value);
    }
    put_body(out, body);
}

/// Best effort for a request that did not parse: copies whichever Via/From/To/Call-ID/CSeq lines it can
/// find (by a lenient line scan), returns false when there is not enough to answer (then the caller just
/// counts/closes). Never answers a response or an ACK. Writes nothing when it returns false.
pub fn write_error_response_raw(out: &mut BytesMut, raw: &[u8], code: u16, reason: &str) -> bool {
    let mut lines = raw.split(|&c| c == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let start = loop {
        match lines.next() {
            Some([]) => continue, // leading CRLFs (RFC 3261 §7.5)
            Some(l) => break l,
            None => return false,
        }
    };
    let method = start.split(|&c| c == b' ').next().unwrap_or(&[]);
    if start.len() >= 4 && start.get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/")) || method == b"ACK" {
        return false;
    }
    let mark = out.len();
    put_status_line(out, code, reason);
    let mut seen = 0u8;
    let mut copying = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if copying {
                out.put_slice(line);
                out.put_slice(b"\r\n");
            }
            continue;
        }
        let name = lex::trim(line.get(..memchr::memchr(b':', line).unwrap_or(0)).unwrap_or(&[]));
        let bit = match HeaderName::parse(name) {
            _ if name.is_empty() => 0,
            HeaderName::Via => 1,
            HeaderName::From => 2,
            HeaderName::To => 4,
            HeaderName::CallId => 8,
            HeaderName::CSeq => {
                let v = lex::trim(line.get(name.len()..).unwrap_or(&[]));
                if v.ends_with(b" ACK") {
                    out.truncate(mark);
                    return false;
                }
                16
            }
            _ => 0,
        };
        copying = bit != 0;
        if copying {
            seen |= bit;
            out.put_slice(line);
            out.put_slice(b"\r\n");
        }
    }
    if seen != 0b1_1111 {
        out.truncate(mark);
        return false;
    }
    out.put_slice(b"Content-Length: 0\r\n\r\n");
    true
}

/// Builds a request: start line, then headers in the order given, then Content-Length (+ Content-Type if
/// body). `HeaderName::Other` entries are skipped (no name to write): use `write_request_raw`.
pub fn write_request(
    out: &mut BytesMut,
    method: &str,
    ruri: &[u8],
    headers: &[(HeaderName, &[u8])],
    body: Option<(&[u8], &[u8])>,
) {
    out.put_slice(method.as_bytes());
    out.put_u8(b' ');
    out.put_slice(ruri);
    out.put_slice(b" SIP/2.0\r\n");
    for (name, value) in headers {
        put_header(out, name.as_str().as_bytes(), value);
    }
    put_body(out, body);
}

/// As `write_request`, with raw header names (for headers outside the table).
pub fn write_request_raw(
    out: &mut BytesMut,
    method: &str,
    ruri: &[u8],
    headers: &[(&[u8], &[u8])],
    body: Option<(&[u8], &[u8])>,
) {
    out.put_slice(method.as_bytes());
    out.put_u8(b' ');
    out.put_slice(ruri);
    out.put_slice(b" SIP/2.0\r\n");
    for (name, value) in headers {
        put_header(out, name, value);
    }
    put_body(out, body);
}
