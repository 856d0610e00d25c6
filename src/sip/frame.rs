//! Stream framing (RFC 3261 §18.3) and keep-alives (RFC 5626 §3.5.1): finds where one message ends in a
//! byte stream, using only the end of headers and Content-Length. Does not validate the message (that is
//! `Message::parse`). Scans at most `header_bytes_max` bytes; `Framer` makes repeated calls on a growing
//! buffer resume where the last scan stopped.

use super::lex;
use super::limits::Limits;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// buf starts with CRLFCRLF: drop `consumed` (4) and answer "\r\n".
    Ping { consumed: usize },
    /// A lone CRLF: drop it, no answer.
    Pong { consumed: usize },
    /// buf[..len] is exactly one message (headers + Content-Length body).
    Message { len: usize },
    /// Need more bytes.
    Incomplete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No end of headers within header_bytes_max: close.
    HeadersTooLarge,
    /// Headers complete, Content-Length makes the message exceed message_bytes_max: answer 513 (parsing
    /// buf[..header_len]) then close.
    TooLarge { header_len: usize, content_length: usize },
    /// Unparsable, negative, conflicting or missing Content-Length: framing is lost, close.
    BadContentLength,
}

impl FrameError {
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::HeadersTooLarge => "headers exceed header_bytes_max",
            FrameError::TooLarge { .. } => "Content-Length exceeds message_bytes_max",
            FrameError::BadContentLength => "missing or malformed Content-Length on a stream",
        }
    }
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for FrameError {}

/// Stateless framing: rescans from the start on every call (bounded by `header_bytes_max`).
pub fn frame(buf: &[u8], limits: &Limits) -> Result<Frame, FrameError> {
    Framer::new().frame(buf, limits)
}

/// Resumable framing: remembers how far the search for the end of headers got, so feeding a growing
/// buffer costs O(new bytes). Call `reset` after consuming a frame from the front of the buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Framer {
    /// Bytes of the current message already searched for CRLFCRLF without success. 0 <= scanned <= header_bytes_max.
    scanned: usize,
    /// Once the headers were found: (header_len, content_length).
    headers: Option<(usize, usize)>,
}

impl Framer {
    pub const fn new() -> Framer {
        Framer { scanned: 0, headers: None }
    }

    pub fn reset(&mut self) {
        *self = Framer::new();
    }

    /// As `frame`, resuming the previous scan. Must be called on the same buffer (grown at the end) until
    /// it returns something other than `Incomplete`; then `reset` (done here for non-Incomplete results).
    pub fn frame(&mut self, buf: &[u8], limits: &Limits) -> Result<Frame, FrameError> {
        let r = self.frame_inner(buf, limits);
        if !matches!(r, Ok(Frame::Incomplete)) {
            self.reset();
        }
        r
    }

    fn frame_inner(&mut self, buf: &[u8], limits: &Limits) -> Result<Frame, FrameError> {
        if self.headers.is_none() && self.scanned == 0 {
            match buf {
                [] | [b'\r'] | [b'\r', b'\n'] | [b'\r', b'\n', b'\r'] => return Ok(Frame::Incomplete),
                [b'\r', b'\n', b'\r', b'\n', ..] => return Ok(Frame::Ping { consumed: 4 }),
                [b'\r', b'\n', ..] => return Ok(Frame::Pong { consumed: 2 }),
                _ => {}
            }
        }
        let (header_len, content_length) = match self.headers {
            Some(h) => h,
            None => {
                let window = buf.len().min(limits.header_bytes_max);
                // Back up 3 bytes: the terminator may straddle the previous scan's end.
                let from = self.scanned.saturating_sub(3).min(window);
                let hay = buf.get(from..window).unwrap_or(&[]);
                let Some(i) = memchr::memmem::find(hay, b"\r\n\r\n") else {
                    if buf.len() >= limits.header_bytes_max {
                        return Err(FrameError::HeadersTooLarge);
                    }
                    self.scanned = window;
                    return Ok(Frame::Incomplete);
                };
                let header_len = from + i + 4;
                let cl = content_length(buf.get(..header_len).unwrap_or(&[]))?;
                self.headers = Some((header_len, cl));
                (header_len, cl)
            }
        };
        let total = header_len.checked_add(content_length);
        match total {
            Some(t) if t <= limits.message_bytes_max => {
                if buf.len() >= t {
                    Ok(Frame::Message { len: t })
                } else {
                    Ok(Frame::Incomplete)
                }
            }
            _ => Err(FrameError::TooLarge { header_len, content_length }),
        }
    }
}

/// Content-Length from a complete header block (start line included). All occurrences must agree.
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    let mut found: Option<usize> = None;
    let mut pos = 0;
    // Skip the start line: it may contain ':' (in the Request-URI).
    if let Some(i) = memchr::memchr(b'\n', head) {
        pos = i + 1;
    }
    while pos < head.len() {
        let rest = head.get(pos..).unwrap_or(&[]);
        let line_end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let line = rest.get(..line_end).unwrap_or(&[]);
        pos += line_end;
        let Some(colon) = memchr::memchr(b':', line) else { continue };
        let name = lex::trim(line.get(..colon).unwrap_or(&[]));
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        // The value runs on over continuation lines (folding).
        let mut end = pos;
        while matches!(head.get(end), Some(b' ' | b'\t')) {
            let more = head.get(end..).unwrap_or(&[]);
            end += memchr::memchr(b'\n', more).map_or(more.len(), |i| i + 1);
        }
        let value = lex::trim(head.get(pos - line_end + colon + 1..end).unwrap_or(&[]));
        let n = lex::parse_usize(value).ok_or(FrameError::BadContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(FrameError::BadContentLength);
        }
        found = Some(n);
        pos = end;
    }
    found.ok_or(FrameError::BadContentLength)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    const L: Limits = Limits::DEFAULT;

    #[test]
    fn keepalives() {
        assert_eq!(frame(b"", &L), Ok(Frame::Incomplete));
        assert_eq!(frame(b"\r\n", &L), Ok(Frame::Incomplete));
        assert_eq!(frame(b"\r\n\r", &L), Ok(Frame::Incomplete));
        assert_eq!(frame(b"\r\n\r\n", &L), Ok(Frame::Ping { consumed: 4 }));
        assert_eq!(frame(b"\r\nINVITE", &L), Ok(Frame::Pong { consumed: 2 }));
    }

    #[test]
    fn message_with_body_and_compact_cl() {
        let m = b"MESSAGE sip:a@b SIP/2.0\r\nl :\r\n 5\r\nVia: x\r\n\r\nhelloNEXT";
        assert_eq!(frame(m, &L), Ok(Frame::Message { len: m.len() - 4 }));
        assert_eq!(frame(&m[..m.len() - 6], &L), Ok(Frame::Incomplete));
    }

    #[test]
    fn errors() {
        assert_eq!(frame(b"A sip:a SIP/2.0\r\nX: y\r\n\r\n", &L), Err(FrameError::BadContentLength));
        assert_eq!(frame(b"A sip:a SIP/2.0\r\nContent-Length: -999\r\n\r\n", &L), Err(FrameError::BadContentLength));
        assert_eq!(
            frame(b"A sip:a SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\n", &L),
            Err(FrameError::BadContentLength)
        );
        assert_eq!(
            frame(b"A sip:a SIP/2.0\r\nContent-Length: 99999999999999999999999\r\n\r\n", &L),
            Err(FrameError::BadContentLength)
        );
        let h = b"A sip:a SIP/2.0\r\nContent-Length: 70000\r\n\r\n";
        assert_eq!(frame(h, &L), Err(FrameError::TooLarge { header_len: h.len(), content_length: 70000 }));
        let big = vec![b'a'; L.header_bytes_max];
        assert_eq!(frame(&big, &L), Err(FrameError::HeadersTooLarge));
        assert_eq!(frame(&big[..100], &L), Ok(Frame::Incomplete));
    }

    #[test]
    fn resumable_byte_by_byte() {
        let m = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabcOPTIONS";
        let mut f = Framer::new();
        let mut got = None;
        for n in 1..=m.len() {
            match f.frame(&m[..n], &L) {
                Ok(Frame::Incomplete) => continue,
                other => {
                    got = Some((n, other));
                    break;
                }
            }
        }
        assert_eq!(got, Some((m.len() - 7, Ok(Frame::Message { len: m.len() - 7 }))));
    }
}
