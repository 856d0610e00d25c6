//! The SIP codec (RFC 3261 message syntax): framing, zero-copy parsing, editing and writing of SIP
//! messages. Pure: no I/O, no clocks, no allocation per parsed message, no panics on peer input — every
//! slice access goes through `get`, every cap lives in `limits.rs`. Transactions, dialogs, routing and
//! authentication decisions live elsewhere; this module only turns bytes into views and back.
//!
//! Grammar assumptions: lines end in CRLF (a bare LF is tolerated inside `Message::parse`, not by stream
//! framing); folding (CRLF + SP/HT) is kept inside values and treated as whitespace by value parsers;
//! header names are tokens; values are split on commas only outside quoted strings and `<...>`.

mod addr;
mod auth;
mod cached;
mod edit;
mod error;
mod frame;
mod header;
mod lex;
mod limits;
mod msg;
mod uri;
mod via;
mod write;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests;

pub use addr::{Contact, NameAddr};
pub use auth::{
    parse_challenge, parse_credentials, unquote, write_challenge, write_credentials, DigestChallenge, DigestCredentials,
};
pub use edit::{Editor, TooManyEdits, EDIT_OPS_MAX};
pub use error::ParseError;
pub use frame::{frame, Frame, FrameError, Framer};
pub use header::{HeaderName, TABLE as HEADER_TABLE};
pub use lex::{CommaSplit, Params};
pub use limits::{Limits, HEADER_TABLE_CAP};
pub use msg::{CSeq, Message, Method};
pub use uri::{unescape, Scheme, Uri};
pub use via::Via;
pub use write::{put_header, write_error_response_raw, write_request, write_request_raw, write_response};
