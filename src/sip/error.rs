//! The codec's one error type: a flat `Copy` enum, and the single `match` that maps each variant to the
//! status code and reason phrase a server puts on the wire. Framing errors (which close a connection)
//! live in `frame.rs`.

use super::header::HeaderName;
use core::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    BadStartLine,
    BadVersion,
    BadMethod,
    BadRequestUri,
    BadStatus,
    BadHeaderLine,
    HeaderLineTooLong,
    TooManyHeaders,
    /// Whole message over `message_bytes_max`.
    TooLarge,
    /// Start line + headers over `header_bytes_max`.
    HeadersTooLarge,
    /// No empty line ends the headers.
    Truncated,
    MissingHeader(HeaderName),
    BadHeader(HeaderName),
    /// Two Content-Length (or other single-valued) headers disagree.
    DuplicateHeader(HeaderName),
    CSeqMethodMismatch,
    ContentLengthMismatch,
    BadUri,
    BadNameAddr,
    BadVia,
    BadQuotedString,
    BadAuth,
    BadParam,
}

impl ParseError {
    pub fn status(&self) -> u16 {
        match self {
            ParseError::BadVersion => 505,
            ParseError::TooLarge | ParseError::HeadersTooLarge => 513,
            ParseError::BadRequestUri => 400,
            _ => 400,
        }
    }

    pub fn reason(&self) -> &'static str {
        use HeaderName as H;
        match self {
            ParseError::BadStartLine => "Bad Request: malformed start line",
            ParseError::BadVersion => "Version Not Supported: only SIP/2.0",
            ParseError::BadMethod => "Bad Request: malformed method",
            ParseError::BadRequestUri => "Bad Request: malformed Request-URI",
            ParseError::BadStatus => "Bad Request: malformed status code",
            ParseError::BadHeaderLine => "Bad Request: malformed header line",
            ParseError::HeaderLineTooLong => "Bad Request: Header Line Too Long",
            ParseError::TooManyHeaders => "Bad Request: Too Many Headers",
            ParseError::TooLarge => "Message Too Large",
            ParseError::HeadersTooLarge => "Message Too Large: headers too large",
            ParseError::Truncated => "Bad Request: message ends inside the headers",
            ParseError::MissingHeader(h) => match h {
                H::Via => "Bad Request: missing Via",
                H::From => "Bad Request: missing From",
                H::To => "Bad Request: missing To",
                H::CallId => "Bad Request: missing Call-ID",
                H::CSeq => "Bad Request: missing CSeq",
                H::ContentLength => "Bad Request: missing Content-Length",
                _ => "Bad Request: missing mandatory header",
            },
            ParseError::BadHeader(h) => match h {
                H::Via => "Bad Request: malformed Via",
                H::From => "Bad Request: malformed From",
                H::To => "Bad Request: malformed To",
                H::CallId => "Bad Request: malformed Call-ID",
                H::CSeq => "Bad Request: malformed CSeq",
                H::ContentLength => "Bad Request: malformed Content-Length",
                H::Contact => "Bad Request: malformed Contact",
                H::MaxForwards => "Bad Request: malformed Max-Forwards",
                H::Expires => "Bad Request: malformed Expires",
                H::Authorization | H::ProxyAuthorization => "Bad Request: malformed credentials",
                _ => "Bad Request: malformed header",
            },
            ParseError::DuplicateHeader(h) => match h {
                H::ContentLength => "Bad Request: conflicting Content-Length",
                _ => "Bad Request: conflicting duplicate header",
            },
            ParseError::CSeqMethodMismatch => "Bad Request: CSeq method does not match",
            ParseError::ContentLengthMismatch => "Bad Request: Content-Length does not match body",
            ParseError::BadUri => "Bad Request: malformed URI",
            ParseError::BadNameAddr => "Bad Request: malformed name-addr",
            ParseError::BadVia => "Bad Request: malformed Via",
            ParseError::BadQuotedString => "Bad Request: unterminated quoted string",
            ParseError::BadAuth => "Bad Request: malformed Digest credentials",
            ParseError::BadParam => "Bad Request: malformed parameter",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for ParseError {}
