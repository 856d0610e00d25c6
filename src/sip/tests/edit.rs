use super::{parse, REGISTER};
use crate::sip::*;
use bytes::BytesMut;

fn edited(m: &Message, f: impl FnOnce(&mut Editor<'_>)) -> Message {
    let mut e = Editor::new(m);
    f(&mut e);
    let mut out = BytesMut::new();
    e.write(&mut out).unwrap();
    Message::parse(out.freeze(), &Limits::default()).unwrap()
}

const ROUTED: &[u8] = b"MESSAGE sip:bob@example.com SIP/2.0\r\n\
v: SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKa;rport;received=9.9.9.9, SIP/2.0/TCP p1;branch=z9hG4bKb\r\n\
Via: SIP/2.0/TCP p0;branch=z9hG4bKc\r\n\
Max-Forwards: 70\r\n\
Route: <sip:edge.example.com;lr>, <sip:pool.example.com;lr>\r\n\
Route: <sip:last.example.com;lr>\r\n\
From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: x\r\nCSeq: 1 MESSAGE\r\n\
Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn untouched_is_identical() {
    let m = parse(ROUTED).unwrap();
    let mut out = BytesMut::new();
    Editor::new(&m).write(&mut out).unwrap();
    assert_eq!(&out[..], ROUTED);
}

#[test]
fn too_many_edits_is_an_error_not_a_panic() {
    let m = parse(ROUTED).unwrap();
    let mut e = Editor::new(&m);
    for _ in 0..EDIT_OPS_MAX {
        e.append_header(HeaderName::Route, b"<sip:x;lr>");
    }
    let mut out = BytesMut::new();
    assert!(e.write(&mut out).is_ok(), "the cap itself fits");
    e.append_header(HeaderName::Route, b"<sip:one-too-many;lr>");
    out.clear();
    assert_eq!(e.write(&mut out), Err(TooManyEdits));
    assert!(out.is_empty(), "nothing written");
}

#[test]
fn proxy_forward_round_trip() {
    let m = parse(ROUTED).unwrap();
    let m2 = edited(&m, |e| {
        e.set_top_via_params(Some(b"[2001:db8::1]"), Some(40000));
        e.push_via(b"SIP/2.0/TCP edge.example.com;branch=z9hG4bKnew");
        e.pop_route();
        e.prepend_header(HeaderName::RecordRoute, b"<sip:edge.example.com;lr>");
        e.set_max_forwards(69);
        e.set_request_uri(b"sip:bob@10.0.0.7:5060;transport=tcp");
    });
    assert_eq!(m2.request_uri(), Some(&b"sip:bob@10.0.0.7:5060;transport=tcp"[..]));
    let vias: Vec<_> = m2.vias().collect();
    assert_eq!(vias.len(), 4);
    assert_eq!(vias[0].host, b"edge.example.com");
    assert_eq!(vias[1].received(), Some(&b"[2001:db8::1]"[..]));
    assert_eq!(vias[1].rport(), Some(Some(40000)));
    assert_eq!(vias[1].branch(), Some(&b"z9hG4bKa"[..]));
    assert_eq!(vias[2].host, b"p1");
    let routes: Vec<_> = m2.values(HeaderName::Route).collect();
    assert_eq!(routes, vec![&b"<sip:pool.example.com;lr>"[..], b"<sip:last.example.com;lr>"]);
    assert_eq!(m2.header(HeaderName::RecordRoute), Some(&b"<sip:edge.example.com;lr>"[..]));
    assert_eq!(m2.max_forwards(), Some(69));
    assert_eq!(m2.header_lines(HeaderName::MaxForwards).count(), 1);
    assert_eq!(m2.body(), b"hello");
    // Record-Route had no line: it goes before the first non-Via line.
    let names: Vec<_> = m2.headers().map(|h| h.0).collect();
    assert_eq!(&names[..4], &[HeaderName::Via, HeaderName::Via, HeaderName::Via, HeaderName::RecordRoute]);
}

#[test]
fn pop_via_and_routes_fully() {
    let m = parse(ROUTED).unwrap();
    let m2 = edited(&m, |e| e.pop_via());
    assert_eq!(m2.top_via().unwrap().host, b"p1");
    assert_eq!(m2.vias().count(), 2);
    let m3 = edited(&m2, |e| e.pop_via());
    assert_eq!(m3.top_via().unwrap().host, b"p0");
    assert_eq!(m3.header_lines(HeaderName::Via).count(), 1);
    let m4 = edited(&m, |e| {
        e.remove_headers(HeaderName::Route);
        e.append_header(HeaderName::Path, b"<sip:a;lr>");
        e.prepend_header(HeaderName::Path, b"<sip:b;lr>");
    });
    assert_eq!(m4.values(HeaderName::Route).count(), 0);
    assert_eq!(m4.values(HeaderName::Path).collect::<Vec<_>>(), vec![&b"<sip:b;lr>"[..], b"<sip:a;lr>"]);
}

#[test]
fn register_path_and_no_rport() {
    let m = parse(REGISTER).unwrap();
    let m2 = edited(&m, |e| {
        e.set_top_via_params(Some(b"203.0.113.9"), Some(61000));
        e.prepend_header(HeaderName::Path, b"<sip:edge;lr;ob>");
        e.remove_headers(HeaderName::MaxForwards);
        e.set_max_forwards(10);
    });
    let v = m2.top_via().unwrap();
    assert_eq!(v.received(), Some(&b"203.0.113.9"[..]));
    assert_eq!(v.rport(), Some(Some(61000)));
    assert!(v.alias());
    assert_eq!(m2.max_forwards(), Some(10));
    assert_eq!(m2.header(HeaderName::Path), Some(&b"<sip:edge;lr;ob>"[..]));
    assert_eq!(m2.header(HeaderName::Authorization), m.header(HeaderName::Authorization));

    let no_rport = parse(&ROUTED.to_vec().replace_str(";rport", "")).unwrap();
    let m3 = edited(&no_rport, |e| e.set_top_via_params(None, Some(1)));
    assert_eq!(m3.top_via().unwrap().rport(), None);
    assert_eq!(m3.top_via().unwrap().received(), Some(&b"9.9.9.9"[..]));
}

trait ReplaceStr {
    fn replace_str(&self, from: &str, to: &str) -> Vec<u8>;
}
impl ReplaceStr for Vec<u8> {
    fn replace_str(&self, from: &str, to: &str) -> Vec<u8> {
        String::from_utf8(self.clone()).unwrap().replace(from, to).into_bytes()
    }
}
