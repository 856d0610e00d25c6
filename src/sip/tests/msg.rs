use super::{parse, REGISTER};
use crate::sip::*;
use bytes::Bytes;

#[test]
fn typical_register() {
    let m = parse(REGISTER).unwrap();
    assert!(m.is_request());
    assert_eq!(m.method(), Some(&Method::Register));
    assert_eq!(m.method_bytes(), Some(&b"REGISTER"[..]));
    assert_eq!(m.request_uri(), Some(&b"sip:example.com"[..]));
    assert_eq!(m.status(), None);
    assert_eq!(m.header_count(), 11);
    assert_eq!(m.call_id(), b"a84b4c76e66710@pc33.example.com");
    assert_eq!(m.cseq(), CSeq { seq: 314159, method: Method::Register });
    assert_eq!(m.from().tag(), Some(&b"1928301774"[..]));
    assert_eq!(m.to().tag(), None);
    assert_eq!(m.to().uri.user, Some(&b"alice"[..]));
    let v = m.top_via().unwrap();
    assert_eq!(v.transport, b"TCP");
    assert_eq!(v.port, Some(50312));
    assert_eq!(v.rport(), Some(None));
    assert!(v.alias());
    let c: Vec<_> = m.contacts().collect();
    assert_eq!(c.len(), 1);
    let c = c[0].unwrap();
    assert_eq!(c.expires(), Some(3600));
    assert_eq!(
        c.addr().unwrap().param(b"+sip.instance"),
        Some(Some(&b"\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\""[..]))
    );
    assert_eq!(m.expires(), Some(3600));
    assert_eq!(m.max_forwards(), Some(70));
    assert_eq!(m.content_type(), None);
    assert_eq!(m.body(), b"");
    let cred = parse_credentials(m.header(HeaderName::Authorization).unwrap()).unwrap();
    assert_eq!(cred.username, b"alice");
    assert_eq!(cred.nc, Some(&b"00000001"[..]));
    assert_eq!(m.header_by_raw_name(b"user-agent"), Some(&b"parapet-test/1.0"[..]));
    assert_eq!(m.header_by_raw_name(b"i"), Some(m.call_id()));
}

#[test]
fn compact_forms_and_folding() {
    let m = parse(
        b"MESSAGE sip:bob@example.com SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1,\r\n SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bK2\r\n\
f: <sip:alice@example.com>\r\n ;tag=a\r\n\
t:\r\n\t<sip:bob@example.com>\r\n\
i: cid1\r\n\
CSeq:\r\n  1\r\n  MESSAGE\r\n\
c: text/plain\r\n\
X-Thing:   spaced value  \r\n continued\r\n\
l: 5\r\n\
\r\nhello",
    )
    .unwrap();
    assert_eq!(m.from().tag(), Some(&b"a"[..]));
    assert_eq!(m.to().uri_raw, b"sip:bob@example.com");
    assert_eq!(m.cseq().seq, 1);
    assert_eq!(m.content_type(), Some(&b"text/plain"[..]));
    assert_eq!(m.header_by_raw_name(b"x-thing"), Some(&b"spaced value  \r\n continued"[..]));
    assert_eq!(m.body(), b"hello");
    let vias: Vec<_> = m.vias().collect();
    assert_eq!(vias.len(), 2);
    assert_eq!(vias[1].host, b"[2001:db8::1]");
    assert_eq!(vias[1].port, Some(5062));
    assert_eq!(m.header_lines(HeaderName::Via).count(), 1);
}

#[test]
fn multi_valued_across_lines() {
    let m = parse(
        b"INVITE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\n\
Call-ID: c\r\nCSeq: 2 INVITE\r\nRoute: <sip:p1;lr>, \"Quoted, name\" <sip:p2;lr>\r\nRoute: <sip:p3;lr>\r\n\
Supported: path, outbound\r\n\r\n",
    )
    .unwrap();
    let routes: Vec<_> = m.values(HeaderName::Route).collect();
    assert_eq!(routes, vec![&b"<sip:p1;lr>"[..], b"\"Quoted, name\" <sip:p2;lr>", b"<sip:p3;lr>"]);
    assert_eq!(m.values(HeaderName::Supported).collect::<Vec<_>>(), vec![&b"path"[..], b"outbound"]);
    assert_eq!(m.header_lines(HeaderName::Route).count(), 2);
}

#[test]
fn responses() {
    let m = parse(b"SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c\r\nCSeq: 2 REGISTER\r\nWWW-Authenticate: Digest realm=\"x\", nonce=\"n\", qop=\"auth\"\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert_eq!(m.status(), Some(401));
    assert_eq!(m.reason(), Some(&b"Unauthorized"[..]));
    assert_eq!(m.method(), None);
    assert_eq!(m.cseq().method, Method::Register);
    let ch = parse_challenge(m.header(HeaderName::WwwAuthenticate).unwrap()).unwrap();
    assert_eq!(ch.qop, Some(&b"auth"[..]));
    let m = parse(b"SIP/2.0 100\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a@x>\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 2 INVITE\r\n\r\n").unwrap();
    assert_eq!(m.reason(), Some(&b""[..]));
}

#[test]
fn errors_map_to_status() {
    let base = "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 2 OPTIONS\r\n";
    let cases: &[(String, ParseError)] = &[
        (format!("OPTIONS sip:a@b SIP/3.0\r\n{base}\r\n"), ParseError::BadVersion),
        (format!("OPTIONS <sip:a@b> SIP/2.0\r\n{base}\r\n"), ParseError::BadRequestUri),
        (format!("OPTIONS  sip:a@b SIP/2.0\r\n{base}\r\n"), ParseError::BadRequestUri),
        (format!("OPT(ONS sip:a@b SIP/2.0\r\n{base}\r\n"), ParseError::BadMethod),
        (format!("OPTIONS\r\n{base}\r\n"), ParseError::BadStartLine),
        (format!("SIP/2.0 2000 OK\r\n{base}\r\n"), ParseError::BadStatus),
        (format!("SIP/2.0 099 OK\r\n{base}\r\n"), ParseError::BadStatus),
        (format!("INVITE sip:a@b SIP/2.0\r\n{base}\r\n"), ParseError::CSeqMethodMismatch),
        (format!("OPTIONS sip:a@b SIP/2.0\r\n{base}Content-Length: 3\r\n\r\nab"), ParseError::ContentLengthMismatch),
        (
            format!("OPTIONS sip:a@b SIP/2.0\r\n{base}Content-Length: 2\r\nl: 3\r\n\r\nab"),
            ParseError::DuplicateHeader(HeaderName::ContentLength),
        ),
        (
            format!("OPTIONS sip:a@b SIP/2.0\r\n{base}Content-Length: x\r\n\r\n"),
            ParseError::BadHeader(HeaderName::ContentLength),
        ),
        (format!("OPTIONS sip:a@b SIP/2.0\r\n{base}bad line\r\n\r\n"), ParseError::BadHeaderLine),
        (format!("OPTIONS sip:a@b SIP/2.0\r\n folded start\r\n{base}\r\n"), ParseError::BadHeaderLine),
        (format!("OPTIONS sip:a@b SIP/2.0\r\n{base}"), ParseError::Truncated),
        (
            format!("OPTIONS sip:a@b SIP/2.0\r\n{}\r\n", base.replace("Call-ID: c\r\n", "")),
            ParseError::MissingHeader(HeaderName::CallId),
        ),
        (
            format!("OPTIONS sip:a@b SIP/2.0\r\n{}\r\n", base.replace("2 OPTIONS", "99999999999 OPTIONS")),
            ParseError::BadHeader(HeaderName::CSeq),
        ),
        (
            format!("OPTIONS sip:a@b SIP/2.0\r\n{}\r\n", base.replace("To: <sip:b@y>", "To: \"b <sip:b@y>")),
            ParseError::BadHeader(HeaderName::To),
        ),
        (
            format!("OPTIONS sip:a@b SIP/2.0\r\n{}\r\n", base.replace("SIP/2.0/UDP h", "SIP/2.0/UDP")),
            ParseError::BadHeader(HeaderName::Via),
        ),
    ];
    for (msg, want) in cases {
        assert_eq!(parse(msg.as_bytes()).err(), Some(*want), "{msg:?}");
    }
    assert_eq!(ParseError::BadVersion.status(), 505);
    assert_eq!(ParseError::TooLarge.status(), 513);
    assert_eq!(ParseError::CSeqMethodMismatch.reason(), "Bad Request: CSeq method does not match");
    assert_eq!(ParseError::TooManyHeaders.status(), 400);
}

#[test]
fn limits_enforced() {
    let mut big = REGISTER.to_vec();
    let tight = Limits { message_bytes_max: 100, ..Limits::default() };
    assert_eq!(Message::parse(Bytes::from(big.clone()), &tight).err(), Some(ParseError::TooLarge));
    let tight = Limits { header_bytes_max: 100, ..Limits::default() };
    assert_eq!(Message::parse(Bytes::from(big.clone()), &tight).err(), Some(ParseError::HeadersTooLarge));
    let tight = Limits { header_count_max: 5, ..Limits::default() };
    assert_eq!(Message::parse(Bytes::from(big.clone()), &tight).err(), Some(ParseError::TooManyHeaders));
    let tight = Limits { line_bytes_max: 100, ..Limits::default() };
    assert_eq!(Message::parse(Bytes::from(big.clone()), &tight).err(), Some(ParseError::HeaderLineTooLong));
    // Hard cap of the inline table holds even when configured higher.
    let loose = Limits { header_count_max: 10_000, ..Limits::default() };
    let at = big.len() - 2;
    let extra: Vec<u8> = (0..200).flat_map(|i| format!("X-{i}: y\r\n").into_bytes()).collect();
    big.splice(at..at, extra);
    assert_eq!(Message::parse(Bytes::from(big), &loose).err(), Some(ParseError::TooManyHeaders));
}

#[test]
fn leading_crlf_and_bare_lf() {
    let m = parse(b"\r\n\r\nOPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h\nFrom: <sip:a@x>\nTo: <sip:b@y>\nCall-ID: c\nCSeq: 2 OPTIONS\n\n").unwrap();
    assert_eq!(m.request_uri(), Some(&b"sip:a@b"[..]));
    assert_eq!(m.call_id(), b"c");
}

#[test]
fn every_prefix_and_byte_flip_is_safe() {
    for n in 0..REGISTER.len() {
        let _ = parse(&REGISTER[..n]);
        let _ = frame(&REGISTER[..n], &Limits::default());
    }
    let mut m = REGISTER.to_vec();
    for i in 0..m.len() {
        for b in [0u8, b'\r', b'\n', b'"', b'<', b',', b';', b':', b' ', 0xff] {
            let old = m[i];
            m[i] = b;
            if let Ok(msg) = parse(&m) {
                let _ = (msg.from(), msg.to(), msg.top_via(), msg.contacts().count(), msg.vias().count());
                let mut out = bytes::BytesMut::new();
                let mut e = Editor::new(&msg);
                e.pop_via();
                e.pop_route();
                e.set_top_via_params(Some(b"1.2.3.4"), Some(5));
                let _ = e.write(&mut out);
            }
            let _ = write_error_response_raw(&mut bytes::BytesMut::new(), &m, 400, "Bad");
            m[i] = old;
        }
    }
}
