//! Tests of the codec on bytes alone: message parsing, editing, writing, and the RFC 4475 torture set.

mod edit;
mod msg;
mod torture;
mod write;

use super::{Limits, Message};
use bytes::Bytes;

pub(super) fn parse(s: &[u8]) -> Result<Message, super::ParseError> {
    Message::parse(Bytes::copy_from_slice(s), &Limits::default())
}

pub(super) const REGISTER: &[u8] = b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP 192.0.2.10:50312;branch=z9hG4bK776asdhds;rport;alias\r\n\
Max-Forwards: 70\r\n\
To: \"Alice\" <sip:alice@example.com>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 REGISTER\r\n\
Contact: <sip:alice@192.0.2.10:50312;transport=tcp>;expires=3600;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\"\r\n\
Authorization: Digest username=\"alice\", realm=\"example.com\", nonce=\"ea9c8e88df84f1cec4341ae6cbe5a359\", uri=\"sip:example.com\", response=\"dfe56131d1958046689d83306477ecc\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\"\r\n\
User-Agent: parapet-test/1.0\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\
\r\n";
