//! Codec throughput: parse a typical REGISTER (with Authorization) and MESSAGE, and a proxy's
//! parse + edit (push_via, pop_route, prepend Path) + write. divan prints ns/op and items/s (parses/s).

use bytes::{Bytes, BytesMut};
use divan::counter::{BytesCount, ItemsCount};
use divan::{black_box, Bencher};
use parapet::sip::{frame, Editor, HeaderName, Limits, Message};

fn main() {
    divan::main();
}

const REGISTER: &[u8] = b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP 192.0.2.10:50312;branch=z9hG4bK776asdhds;rport;alias\r\n\
Max-Forwards: 70\r\n\
To: \"Alice\" <sip:alice@example.com>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 REGISTER\r\n\
Contact: <sip:alice@192.0.2.10:50312;transport=tcp>;expires=3600;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\"\r\n\
Authorization: Digest username=\"alice\", realm=\"example.com\", nonce=\"ea9c8e88df84f1cec4341ae6cbe5a359\", uri=\"sip:example.com\", response=\"dfe56131d1958046689d83306477ecc\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\"\r\n\
Supported: path, outbound, gruu\r\n\
User-Agent: parapet-loadgen/1.0\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\
\r\n";

const MESSAGE: &[u8] = b"MESSAGE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/TLS 198.51.100.7:41234;branch=z9hG4bKnashds8;rport\r\n\
Max-Forwards: 70\r\n\
Route: <sip:edge.example.com;lr>\r\n\
Route: <sip:pool3.example.com;lr>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=49583\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: asd88asd77a@1.2.3.4\r\n\
CSeq: 1 MESSAGE\r\n\
Content-Type: text/plain\r\n\
Content-Length: 18\r\n\
\r\n\
Watson, come here.";

fn parse_one(b: Bencher, msg: &'static [u8]) {
    let limits = Limits::default();
    let bytes = Bytes::from_static(msg);
    b.counter(ItemsCount::new(1usize))
        .bench(|| Message::parse(black_box(bytes.clone()), &limits).map(|m| m.header_count()));
}

#[divan::bench]
fn parse_register(b: Bencher) {
    parse_one(b, REGISTER);
}

#[divan::bench]
fn parse_message(b: Bencher) {
    parse_one(b, MESSAGE);
}

#[divan::bench]
fn frame_register(b: Bencher) {
    let limits = Limits::default();
    b.counter(BytesCount::new(REGISTER.len())).bench(|| frame(black_box(REGISTER), &limits));
}

#[divan::bench]
fn parse_edit_write_message(b: Bencher) {
    let limits = Limits::default();
    let bytes = Bytes::from_static(MESSAGE);
    let mut out = BytesMut::with_capacity(4096);
    b.counter(ItemsCount::new(1usize)).bench_local(|| {
        out.clear();
        if let Ok(m) = Message::parse(black_box(bytes.clone()), &limits) {
            let mut e = Editor::new(&m);
            e.push_via(b"SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKedge0001");
            e.pop_route();
            e.prepend_header(HeaderName::Path, b"<sip:edge.example.com;lr;ob>");
            let _ = black_box(e.write(&mut out));
        }
        black_box(out.len())
    });
}
