//! `Message`: a parsed, validated view of one SIP message (RFC 3261 §7). The bytes stay in one `Bytes`;
//! the start line and every header line are spans in a fixed inline table, so parsing allocates nothing.
//! Routing-relevant headers (Via, From, To, Call-ID, CSeq, Content-Length) are checked eagerly; the rest
//! are parsed on access. Does not frame streams (`frame.rs`) or edit (`edit.rs`).

use super::addr::{Contact, NameAddr};
use super::cached::{NameAddrParts, ViaParts};
use super::error::ParseError;
use super::header::{HeaderName, HEADER_NAME_COUNT};
use super::lex;
use super::limits::{Limits, HEADER_TABLE_CAP};
use super::uri::Uri;
use super::via::Via;
use bytes::Bytes;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Register,
    Invite,
    Ack,
    Cancel,
    Bye,
    Options,
    Message,
    Subscribe,
    Notify,
    Publish,
    Info,
    Prack,
    Update,
    Refer,
    Other,
}

impl Method {
    /// Case-sensitive, as RFC 3261 §7.1 makes method names.
    pub fn parse(b: &[u8]) -> Method {
        match b {
            b"REGISTER" => Method::Register,
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"CANCEL" => Method::Cancel,
            b"BYE" => Method::Bye,
            b"OPTIONS" => Method::Options,
            b"MESSAGE" => Method::Message,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"PUBLISH" => Method::Publish,
            b"INFO" => Method::Info,
            b"PRACK" => Method::Prack,
            b"UPDATE" => Method::Update,
            b"REFER" => Method::Refer,
            _ => Method::Other,
        }
    }

    pub fn as_str(&self) -> Option<&'static str> {
        Some(match self {
            Method::Register => "REGISTER",
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Cancel => "CANCEL",
            Method::Bye => "BYE",
            Method::Options => "OPTIONS",
            Method::Message => "MESSAGE",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Publish => "PUBLISH",
            Method::Info => "INFO",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Refer => "REFER",
            Method::Other => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

/// Byte range of the message; `start <= end <= buf.len()` by construction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

/// One header line (with its continuation lines). The line runs from `start` to the next entry's start
/// (or `hdr_end` for the last one): lines are contiguous.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) start: u32,
    pub(crate) name_len: u16,
    pub(crate) value_off: u16,
    pub(crate) value_len: u16,
    pub(crate) name: HeaderName,
}

const EMPTY_ENTRY: Entry = Entry { start: 0, name_len: 0, value_off: 0, value_len: 0, name: HeaderName::Other };
const ABSENT: u8 = u8::MAX;

#[derive(Clone)]
pub struct Message {
    buf: Bytes,
    request: bool,
    method: Method,
    /// Request: method; response: unused.
    method_span: Span,
    /// Request: Request-URI; response: reason phrase.
    target_span: Span,
    status: u16,
    /// Start of the start line (after leading CRLFs, RFC 3261 §7.5).
    line_start: u32,
    /// Start of the first header line (end of the start line incl. its line break).
    hdr_start: u32,
    /// Start of the empty line that ends the headers.
    hdr_end: u32,
    body_start: u32,
    cseq: CSeq,
    /// From, To and the top Via as validated, to rebuild without parsing again.
    from: NameAddrParts,
    to: NameAddrParts,
    top_via: ViaParts,
    count: u8,
    /// Index of the first line per `HeaderName`, `ABSENT` if none.
    first: [u8; HEADER_NAME_COUNT],
    headers: [Entry; HEADER_TABLE_CAP],
}

impl core::fmt::Debug for Message {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Message")
            .field("request", &self.request)
            .field("method", &self.method)
            .field("status", &self.status)
            .field("headers", &self.count)
            .field("len", &self.buf.len())
            .finish()
    }
}

#[inline]
fn sub(b: &[u8], start: usize, end: usize) -> &[u8] {
    b.get(start..end).unwrap_or(&[])
}

fn is_sp_ht(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// First and one-past-last non-SP/HT offsets of `b[start..end]`, or `(end, end)` when blank.
fn trim_range(b: &[u8], start: usize, end: usize) -> (usize, usize) {
    let s = sub(b, start, end);
    let lead = s.iter().take_while(|&&c| is_sp_ht(c)).count();
    if lead == s.len() {
        return (end, end);
    }
    let trail = s.iter().rev().take_while(|&&c| is_sp_ht(c)).count();
    (start + lead, end - trail)
}

fn to_u32(n: usize) -> u32 {
    // Callers only pass offsets into a buffer already checked to fit in u32.
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Message {
    /// Parses one complete message (as framed by `frame`). Returns the first error found.
    pub fn parse(buf: Bytes, limits: &Limits) -> Result<Message, ParseError> {
        let b: &[u8] = &buf;
        if b.len() > limits.message_bytes_max || u32::try_from(b.len()).is_err() {
            return Err(ParseError::TooLarge);
        }
        let mut pos = 0;
        while sub(b, pos, pos + 2) == b"\r\n" {
            pos += 2;
        }
        let line_start = pos;
        let hdr_limit = b.len().min(line_start.saturating_add(limits.header_bytes_max));
        let line_cap = limits.line_bytes_cap();
        // (content end without CR, start of next line)
        let next_line = |from: usize| -> Result<(usize, usize), ParseError> {
            match memchr::memchr(b'\n', sub(b, from, hdr_limit)) {
                Some(i) => {
                    let lf = from + i;
                    let ce = if lf > from && b.get(lf - 1) == Some(&b'\r') { lf - 1 } else { lf };
                    Ok((ce, lf + 1))
                }
                None if hdr_limit < b.len() => Err(ParseError::HeadersTooLarge),
                None => Err(ParseError::Truncated),
            }
        };

        let mut msg = Message {
            buf: Bytes::new(),
            request: false,
            method: Method::Other,
            method_span: Span::default(),
            target_span: Span::default(),
            status: 0,
            line_start: to_u32(line_start),
            hdr_start: 0,
            hdr_end: 0,
            body_start: 0,
            cseq: CSeq { seq: 0, method: Method::Other },
            from: NameAddrParts::EMPTY,
            to: NameAddrParts::EMPTY,
            top_via: ViaParts::EMPTY,
            count: 0,
            first: [ABSENT; HEADER_NAME_COUNT],
            headers: [EMPTY_ENTRY; HEADER_TABLE_CAP],
        };

        let (ce, next) = next_line(pos)?;
        if ce - pos > line_cap {
            return Err(ParseError::HeaderLineTooLong);
        }
        msg.parse_start_line(b, pos, ce)?;
        pos = next;
        msg.hdr_start = to_u32(pos);

        let count_cap = limits.header_count_cap();
        let mut count = 0usize;
        loop {
            let (ce, next) = next_line(pos)?;
            if ce == pos {
                msg.hdr_end = to_u32(pos);
                msg.body_start = to_u32(next);
                break;
            }
            let first = b.get(pos).copied().unwrap_or(0);
            if is_sp_ht(first) {
                let Some(e) = count.checked_sub(1).and_then(|i| msg.headers.get_mut(i)) else {
                    return Err(ParseError::BadHeaderLine);
                };
                let start = e.start as usize;
                if next - start > line_cap {
                    return Err(ParseError::HeaderLineTooLong);
                }
                let (vs, ve) = trim_range(b, pos, ce);
                if vs < ve {
                    if e.value_len == 0 {
                        e.value_off = u16::try_from(vs - start).map_err(|_| ParseError::HeaderLineTooLong)?;
                    }
                    let off = start + usize::from(e.value_off);
                    e.value_len = u16::try_from(ve - off).map_err(|_| ParseError::HeaderLineTooLong)?;
                }
            } else {
                if next - pos > line_cap {
                    return Err(ParseError::HeaderLineTooLong);
                }
                let colon = lex::find(b':', sub(b, pos, ce)).ok_or(ParseError::BadHeaderLine)?;
                let name_end =
                    pos + colon - sub(b, pos, pos + colon).iter().rev().take_while(|&&c| is_sp_ht(c)).count();
                let name = sub(b, pos, name_end);
                let h = HeaderName::parse(name);
                // A name found in the table is a token already; only unknown ones need the byte check.
                if h == HeaderName::Other && !lex::is_token(name) {
                    return Err(ParseError::BadHeaderLine);
                }
                if count >= count_cap {
                    return Err(ParseError::TooManyHeaders);
                }
                let (vs, ve) = trim_range(b, pos + colon + 1, ce);
                let too_long = |_| ParseError::HeaderLineTooLong;
                let entry = Entry {
                    start: to_u32(pos),
                    name_len: u16::try_from(name.len()).map_err(too_long)?,
                    value_off: u16::try_from(vs - pos).map_err(too_long)?,
                    value_len: u16::try_from(ve - vs).map_err(too_long)?,
                    name: h,
                };
                let Some(slot) = msg.headers.get_mut(count) else {
                    return Err(ParseError::TooManyHeaders);
                };
                *slot = entry;
                if let Some(f) = msg.first.get_mut(h.index()) {
                    if *f == ABSENT {
                        *f = count as u8;
                    }
                }
                count += 1;
            }
            pos = next;
        }
        msg.count = count as u8;
        msg.buf = buf;
        msg.validate()?;
        Ok(msg)
    }

    fn parse_start_line(&mut self, b: &[u8], start: usize, end: usize) -> Result<(), ParseError> {
        // Trailing whitespace is tolerated (RFC 4475 §3.1.2.10 allows the liberal reading).
        let (_, end) = trim_range(b, start, end);
        let line = sub(b, start, end);
        if line.len() >= 4 && sub(line, 0, 4).eq_ignore_ascii_case(b"SIP/") {
            let sp = lex::find(b' ', line).ok_or(ParseError::BadStartLine)?;
            if !sub(line, 0, sp).eq_ignore_ascii_case(b"SIP/2.0") {
                return Err(ParseError::BadVersion);
            }
            let rest = sub(line, sp + 1, line.len());
            let code = sub(rest, 0, 3);
            let after = rest.get(3..).unwrap_or(&[]);
            if code.len() != 3
                || !code.iter().all(u8::is_ascii_digit)
                || !(after.is_empty() || after.first() == Some(&b' '))
            {
                return Err(ParseError::BadStatus);
            }
            let status = lex::parse_u32(code).and_then(|n| u16::try_from(n).ok()).unwrap_or(0);
            if !(100..=699).contains(&status) {
                return Err(ParseError::BadStatus);
            }
            self.status = status;
            let reason_start = start + sp + 1 + 3 + usize::from(!after.is_empty());
            self.target_span = Span { start: to_u32(reason_start.min(end)), end: to_u32(end) };
            return Ok(());
        }
        let sp1 = lex::find(b' ', line).ok_or(ParseError::BadStartLine)?;
        let sp2 = memchr::memrchr(b' ', line).ok_or(ParseError::BadStartLine)?;
        let method = sub(line, 0, sp1);
        if !lex::is_token(method) {
            return Err(ParseError::BadMethod);
        }
        if sp2 == sp1 {
            return Err(ParseError::BadStartLine);
        }
        let version = sub(line, sp2 + 1, line.len());
        if !version.eq_ignore_ascii_case(b"SIP/2.0") {
            let sipish = version.len() >= 4 && sub(version, 0, 4).eq_ignore_ascii_case(b"SIP/");
            return Err(if sipish { ParseError::BadVersion } else { ParseError::BadStartLine });
        }
        let uri = sub(line, sp1 + 1, sp2);
        if uri.is_empty() || uri.contains(&b' ') {
            return Err(ParseError::BadRequestUri);
        }
        Uri::parse(uri).map_err(|_| ParseError::BadRequestUri)?;
        self.request = true;
        self.method = Method::parse(method);
        self.method_span = Span { start: to_u32(start), end: to_u32(start + sp1) };
        self.target_span = Span { start: to_u32(start + sp1 + 1), end: to_u32(start + sp2) };
        Ok(())
    }

    fn validate(&mut self) -> Result<(), ParseError> {
        for h in [HeaderName::Via, HeaderName::From, HeaderName::To, HeaderName::CallId, HeaderName::CSeq] {
            if self.first.get(h.index()).copied().unwrap_or(ABSENT) == ABSENT {
                return Err(ParseError::MissingHeader(h));
            }
        }
        let mut cl = None;
        for v in self.header_lines(HeaderName::ContentLength) {
            let n = lex::parse_usize(v).ok_or(ParseError::BadHeader(HeaderName::ContentLength))?;
            if cl.is_some_and(|c| c != n) {
                return Err(ParseError::DuplicateHeader(HeaderName::ContentLength));
            }
            cl = Some(n);
        }
        if cl.is_some_and(|n| n != self.body().len()) {
            return Err(ParseError::ContentLengthMismatch);
        }
        let call_id = self.call_id();
        if call_id.is_empty() || call_id.iter().any(|&c| lex::is_ws(c)) {
            return Err(ParseError::BadHeader(HeaderName::CallId));
        }
        let (cseq, cseq_method) =
            parse_cseq(self.header(HeaderName::CSeq).unwrap_or(&[])).ok_or(ParseError::BadHeader(HeaderName::CSeq))?;
        if self.request && Some(cseq_method) != self.method_bytes() {
            return Err(ParseError::CSeqMethodMismatch);
        }
        self.cseq = cseq;
        let buf = &self.buf[..];
        let from = NameAddr::parse(self.header(HeaderName::From).unwrap_or(&[]))
            .map_err(|_| ParseError::BadHeader(HeaderName::From))?;
        let to = NameAddr::parse(self.header(HeaderName::To).unwrap_or(&[]))
            .map_err(|_| ParseError::BadHeader(HeaderName::To))?;
        let top = self.values(HeaderName::Via).next().ok_or(ParseError::BadHeader(HeaderName::Via))?;
        let via = Via::parse(top).map_err(|_| ParseError::BadHeader(HeaderName::Via))?;
        let (from, to, via) = (NameAddrParts::of(buf, &from), NameAddrParts::of(buf, &to), ViaParts::of(buf, &via));
        self.from = from;
        self.to = to;
        self.top_via = via;
        Ok(())
    }

    pub fn bytes(&self) -> &Bytes {
        &self.buf
    }

    fn span(&self, s: Span) -> &[u8] {
        sub(&self.buf, s.start as usize, s.end as usize)
    }

    pub fn is_request(&self) -> bool {
        self.request
    }

    pub fn method(&self) -> Option<&Method> {
        self.request.then_some(&self.method)
    }

    pub fn method_bytes(&self) -> Option<&[u8]> {
        self.request.then(|| self.span(self.method_span))
    }

    pub fn request_uri(&self) -> Option<&[u8]> {
        self.request.then(|| self.span(self.target_span))
    }

    /// The Request-URI parsed (it was validated at parse time).
    pub fn request_uri_parsed(&self) -> Option<Uri<'_>> {
        self.request_uri().and_then(|u| Uri::parse(u).ok())
    }

    pub fn status(&self) -> Option<u16> {
        (!self.request).then_some(self.status)
    }

    pub fn reason(&self) -> Option<&[u8]> {
        (!self.request).then(|| self.span(self.target_span))
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        self.headers.get(..usize::from(self.count)).unwrap_or(&[])
    }

    pub(crate) fn entry_value(&self, e: &Entry) -> &[u8] {
        let s = e.start as usize + usize::from(e.value_off);
        sub(&self.buf, s, s + usize::from(e.value_len))
    }

    pub(crate) fn entry_name(&self, e: &Entry) -> &[u8] {
        let s = e.start as usize;
        sub(&self.buf, s, s + usize::from(e.name_len))
    }

    /// The whole line of entry `i`, continuation lines and final line break included.
    pub(crate) fn entry_line(&self, i: usize) -> &[u8] {
        let Some(e) = self.entries().get(i) else { return &[] };
        let end = self.entries().get(i + 1).map_or(self.hdr_end, |n| n.start);
        sub(&self.buf, e.start as usize, end as usize)
    }

    pub(crate) fn start_line(&self) -> &[u8] {
        sub(&self.buf, self.line_start as usize, self.hdr_start as usize)
    }

    /// From the empty line that ends the headers to the end: "\r\n" + body.
    pub(crate) fn tail(&self) -> &[u8] {
        sub(&self.buf, self.hdr_end as usize, self.buf.len())
    }

    pub(crate) fn first_index(&self, name: HeaderName) -> Option<usize> {
        match self.first.get(name.index()).copied() {
            Some(ABSENT) | None => None,
            Some(i) => Some(usize::from(i)),
        }
    }

    /// Value of the first line with that name, trimmed (folding inside is kept). For `Other`: the first
    /// unknown header.
    pub fn header(&self, name: HeaderName) -> Option<&[u8]> {
        let e = self.entries().get(self.first_index(name)?)?;
        Some(self.entry_value(e))
    }

    pub fn header_lines(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        self.entries().iter().filter(move |e| e.name == name).map(move |e| self.entry_value(e))
    }

    /// Comma-separated values across all lines, split outside quotes and `<>`. Not meaningful for
    /// headers whose grammar has commas inside one value (Date, WWW-Authenticate, Authorization).
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        self.header_lines(name).flat_map(lex::CommaSplit::new)
    }

    /// Any header by its wire name, case-insensitive; known names (and compact forms) are looked up by enum.
    pub fn header_by_raw_name(&self, name: &[u8]) -> Option<&[u8]> {
        match HeaderName::parse(name) {
            HeaderName::Other => self
                .entries()
                .iter()
                .find(|e| e.name == HeaderName::Other && self.entry_name(e).eq_ignore_ascii_case(name))
                .map(|e| self.entry_value(e)),
            h => self.header(h),
        }
    }

    /// Every header line as (raw name, value), in order.
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, &[u8], &[u8])> + '_ {
        self.entries().iter().map(move |e| (e.name, self.entry_name(e), self.entry_value(e)))
    }

    pub fn header_count(&self) -> usize {
        usize::from(self.count)
    }

    pub fn call_id(&self) -> &[u8] {
        self.header(HeaderName::CallId).unwrap_or(&[])
    }

    pub fn cseq(&self) -> CSeq {
        self.cseq
    }

    pub fn cseq_method_bytes(&self) -> &[u8] {
        parse_cseq(self.header(HeaderName::CSeq).unwrap_or(&[])).map_or(&[], |(_, m)| m)
    }

    pub fn from(&self) -> NameAddr<'_> {
        self.from.get(&self.buf)
    }

    pub fn to(&self) -> NameAddr<'_> {
        self.to.get(&self.buf)
    }

    pub fn top_via(&self) -> Option<Via<'_>> {
        Some(self.top_via.get(&self.buf))
    }

    pub fn vias(&self) -> impl Iterator<Item = Via<'_>> + '_ {
        self.values(HeaderName::Via).filter_map(|v| Via::parse(v).ok())
    }

    pub fn contacts(&self) -> impl Iterator<Item = Result<Contact<'_>, ParseError>> + '_ {
        self.values(HeaderName::Contact).map(Contact::parse)
    }

    pub fn expires(&self) -> Option<u32> {
        self.header(HeaderName::Expires).and_then(lex::parse_u32)
    }

    pub fn max_forwards(&self) -> Option<u32> {
        self.header(HeaderName::MaxForwards).and_then(lex::parse_u32)
    }

    pub fn content_type(&self) -> Option<&[u8]> {
        self.header(HeaderName::ContentType)
    }

    pub fn body(&self) -> &[u8] {
        self.buf.get(self.body_start as usize..).unwrap_or(&[])
    }
}

/// CSeq = 1*DIGIT LWS Method; returns the number and the method bytes.
fn parse_cseq(v: &[u8]) -> Option<(CSeq, &[u8])> {
    let (digits, rest) = lex::split_at_first(v, |c| !c.is_ascii_digit());
    if !rest.first().is_some_and(|&c| lex::is_ws(c)) {
        return None;
    }
    let seq = lex::parse_u32(digits)?;
    let method = lex::trim(rest);
    if !lex::is_token(method) {
        return None;
    }
    Some((CSeq { seq, method: Method::parse(method) }, method))
}
