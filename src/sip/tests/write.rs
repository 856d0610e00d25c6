use super::{parse, REGISTER};
use crate::sip::*;
use bytes::BytesMut;

#[test]
fn response_copies_and_tags() {
    let m = parse(REGISTER).unwrap();
    let mut out = BytesMut::new();
    write_response(
        &mut out,
        &m,
        200,
        "OK",
        Some(b"srv1"),
        &[
            (HeaderName::Contact, b"<sip:alice@192.0.2.10:50312;transport=tcp>;expires=3600"),
            (HeaderName::Other, b"dropped"),
        ],
        None,
    );
    let r = Message::parse(out.freeze(), &Limits::default()).unwrap();
    assert_eq!(r.status(), Some(200));
    assert_eq!(r.to().tag(), Some(&b"srv1"[..]));
    assert_eq!(r.from().tag(), m.from().tag());
    assert_eq!(r.call_id(), m.call_id());
    assert_eq!(r.cseq(), m.cseq());
    assert_eq!(r.top_via().unwrap().branch(), m.top_via().unwrap().branch());
    assert_eq!(r.contacts().next().unwrap().unwrap().expires(), Some(3600));
    assert_eq!(r.header(HeaderName::ContentLength), Some(&b"0"[..]));
    assert_eq!(r.header_count(), 7);
}

#[test]
fn response_keeps_existing_tag_and_body() {
    let m = parse(b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=old\r\nCall-ID: c\r\nCSeq: 7 MESSAGE\r\n\r\n").unwrap();
    let mut out = BytesMut::new();
    write_response(&mut out, &m, 488, "Not Acceptable Here", Some(b"new"), &[], Some((b"text/plain", b"why")));
    let r = Message::parse(out.freeze(), &Limits::default()).unwrap();
    assert_eq!(r.to().tag(), Some(&b"old"[..]));
    assert_eq!(r.vias().count(), 2);
    assert_eq!(r.body(), b"why");
    assert_eq!(r.content_type(), Some(&b"text/plain"[..]));
}

#[test]
fn error_response_from_raw() {
    let raw = b"INVITE sip:a@b SIP/7.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n ;rport\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nJunk\r\n\r\n";
    let mut out = BytesMut::from(&b"keep"[..]);
    assert!(write_error_response_raw(&mut out, raw, 505, "Version Not Supported"));
    assert_eq!(&out[..4], b"keep");
    let r = Message::parse(out.split_off(4).freeze(), &Limits::default()).unwrap();
    assert_eq!(r.status(), Some(505));
    assert_eq!(r.top_via().unwrap().rport(), Some(None));
    let mut out = BytesMut::new();
    assert!(!write_error_response_raw(&mut out, b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n\r\n", 400, "Bad"));
    assert!(out.is_empty());
    let ack = b"ACK sip:a@b SIP/7.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a@x>\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 1 ACK\r\n\r\n";
    assert!(!write_error_response_raw(&mut out, ack, 400, "Bad"));
    assert!(!write_error_response_raw(&mut out, b"SIP/2.0 200 OK\r\n\r\n", 400, "Bad"));
    assert!(!write_error_response_raw(&mut out, b"", 400, "Bad"));
}

#[test]
fn request_round_trip() {
    let mut out = BytesMut::new();
    write_request(
        &mut out,
        "MESSAGE",
        b"sip:bob@example.com",
        &[
            (HeaderName::Via, b"SIP/2.0/TCP lg;branch=z9hG4bK9"),
            (HeaderName::MaxForwards, b"70"),
            (HeaderName::From, b"<sip:lg@example.com>;tag=9"),
            (HeaderName::To, b"<sip:bob@example.com>"),
            (HeaderName::CallId, b"lg-1"),
            (HeaderName::CSeq, b"1 MESSAGE"),
        ],
        Some((b"text/plain", b"hi there")),
    );
    assert_eq!(frame(&out, &Limits::default()), Ok(Frame::Message { len: out.len() }));
    let m = Message::parse(out.freeze(), &Limits::default()).unwrap();
    assert_eq!(m.method(), Some(&Method::Message));
    assert_eq!(m.body(), b"hi there");
}
