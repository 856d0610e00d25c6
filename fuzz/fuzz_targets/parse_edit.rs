//! The codec on arbitrary bytes: framing, parsing, every accessor, editing and re-serialising. Invariants: no
//! panic; an edited message of a message that parsed parses again.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use parapet::sip::{self, Editor, Frame, HeaderName, Limits, Message};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = sip::frame(data, &limits);
    let Ok(msg) = Message::parse(Bytes::copy_from_slice(data), &limits) else {
        let mut out = BytesMut::new();
        let _ = sip::write_error_response_raw(&mut out, data, 400, "Bad Request");
        return;
    };
    let _ = (msg.method(), msg.request_uri(), msg.status(), msg.call_id(), msg.cseq(), msg.expires());
    let _ = (msg.from().tag(), msg.to().uri.user_unescaped(), msg.max_forwards(), msg.body().len());
    for v in msg.vias() {
        let _ = (v.branch(), v.rport(), v.received());
    }
    for c in msg.contacts().flatten() {
        let _ = c.expires();
    }
    for v in msg.header_lines(HeaderName::Authorization) {
        let _ = sip::parse_credentials(v);
    }
    for r in msg.values(HeaderName::Route) {
        if let Ok(na) = sip::NameAddr::parse(r) {
            let _ = na.uri.param(b"lr");
        }
    }
    let mut ed = Editor::new(&msg);
    ed.pop_route();
    ed.set_top_via_params(Some(b"192.0.2.1"), Some(5061));
    ed.push_via(b"SIP/2.0/TLS 192.0.2.9:5061;branch=z9hG4bKfuzz");
    ed.prepend_header(HeaderName::Path, b"<sip:f@192.0.2.9;lr>");
    ed.set_max_forwards(69);
    let mut out = BytesMut::new();
    if ed.write(&mut out).is_err() {
        panic!("five edits refused: the cap is {}", parapet::sip::EDIT_OPS_MAX);
    }
    let big = parapet::net::conn::peer_limits(&limits);
    if let Err(e) = Message::parse(out.freeze(), &big) {
        panic!("edited message no longer parses: {e:?}");
    }
    let mut resp = BytesMut::new();
    sip::write_response(&mut resp, &msg, 200, "OK", Some(b"tag"), &[], None);
    if msg.is_request() {
        let _ = matches!(sip::frame(&resp, &big), Ok(Frame::Message { .. }));
    }
});
