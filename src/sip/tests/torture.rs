//! RFC 4475 torture messages, checked against the expectation column of tests/torture/INDEX.md.

use crate::sip::*;
use bytes::{Bytes, BytesMut};

macro_rules! cases {
    ($($name:ident $exp:literal),* $(,)?) => {
        &[$((stringify!($name), $exp, include_bytes!(concat!("../../../tests/torture/", stringify!($name), ".dat")))),*]
    };
}

const CASES: &[(&str, char, &[u8])] = cases![
    wsinv 'V', intmeth 'V', esc01 'V', escnull 'V', esc02 'V', lwsdisp 'V', longreq 'V', dblreq 'V',
    semiuri 'V', transports 'V', mpart01 'V', unreason 'R', noreason 'R', badinv01 'E', clerr 'C', ncl 'E',
    scalar02 'E', scalarlg 'R', quotbal 'E', ltgtruri 'E', lwsruri 'E', lwsstart 'L', trws 'L', escruri 'L',
    baddate 'L', regbadct 'L', badaspec 'L', baddn 'L', badvers 'E', mismatch01 'E', mismatch02 'E', bigcode 'R',
];

/// What a stream server does with the bytes: (frame results, parse results of framed messages).
fn run_stream(data: &[u8]) -> Vec<Result<Result<Message, ParseError>, Option<FrameError>>> {
    let limits = Limits::default();
    let mut out = Vec::new();
    let mut rest = data;
    let mut framer = Framer::new();
    while !rest.is_empty() {
        match framer.frame(rest, &limits) {
            Ok(Frame::Ping { consumed } | Frame::Pong { consumed }) => rest = &rest[consumed..],
            Ok(Frame::Message { len }) => {
                out.push(Ok(Message::parse(Bytes::copy_from_slice(&rest[..len]), &limits)));
                rest = &rest[len..];
            }
            Ok(Frame::Incomplete) => {
                out.push(Err(None));
                break;
            }
            Err(e) => {
                out.push(Err(Some(e)));
                break;
            }
        }
    }
    out
}

#[test]
fn all_32_present() {
    assert_eq!(CASES.len(), 32);
    let index = include_str!("../../../tests/torture/INDEX.md");
    for (name, exp, data) in CASES {
        let row = index.lines().find(|l| l.starts_with(&format!("| {name} |"))).unwrap();
        assert!(row.contains(&format!("| {exp} |")), "{name}: {row}");
        assert!(row.ends_with(&format!("| {} |", data.len())), "{name}: {row}");
    }
}

#[test]
fn expectations() {
    for (name, exp, data) in CASES {
        let results = run_stream(data);
        let first = results.first().unwrap_or_else(|| panic!("{name}: nothing framed"));
        match exp {
            'V' => {
                for (i, r) in results.iter().enumerate() {
                    match r {
                        Ok(Ok(m)) => assert!(m.is_request(), "{name}"),
                        // dblreq's trailing octets (RFC 4475 §3.1.1.8) are cut short on a stream: wait.
                        Err(None) if i > 0 => {}
                        other => panic!("{name}: expected valid, got {other:?}"),
                    }
                }
            }
            'R' => {
                if let Ok(Ok(m)) = first {
                    assert!(!m.is_request(), "{name}");
                }
            }
            'E' => assert!(!matches!(first, Ok(Ok(_))), "{name}: expected rejection"),
            'C' => assert!(first.is_err(), "{name}: expected incomplete or frame error, got {first:?}"),
            _ => {}
        }
        // As a datagram (no framing): must not panic, and V messages (but dblreq's trailing bytes) parse.
        let dgram = Message::parse(Bytes::from_static(data), &Limits::default());
        if *exp == 'V' && *name != "dblreq" {
            assert!(dgram.is_ok(), "{name}: {dgram:?}");
        }
        let _ = write_error_response_raw(&mut BytesMut::new(), data, 400, "Bad Request");
    }
}

#[test]
fn specific_rejections() {
    let find = |n: &str| CASES.iter().find(|c| c.0 == n).unwrap().2;
    let parse = |n: &str| Message::parse(Bytes::from_static(find(n)), &Limits::default());
    assert_eq!(parse("badvers").err().map(|e| e.status()), Some(505));
    assert_eq!(parse("mismatch01").err(), Some(ParseError::CSeqMethodMismatch));
    assert_eq!(parse("mismatch02").err(), Some(ParseError::CSeqMethodMismatch));
    assert_eq!(parse("scalar02").err(), Some(ParseError::BadHeader(HeaderName::CSeq)));
    assert_eq!(parse("quotbal").err(), Some(ParseError::BadHeader(HeaderName::To)));
    assert_eq!(parse("ltgtruri").err(), Some(ParseError::BadRequestUri));
    assert_eq!(frame(find("ncl"), &Limits::default()), Err(FrameError::BadContentLength));
    assert_eq!(frame(find("clerr"), &Limits::default()), Ok(Frame::Incomplete));
}

#[test]
fn wsinv_fields() {
    let m = Message::parse(Bytes::from_static(CASES[0].2), &Limits::default()).unwrap();
    assert_eq!(m.to().tag(), Some(&b"1918181833n"[..]));
    assert_eq!(m.from().display, Some(&br#""J Rosenberg \\\"""#[..]));
    assert_eq!(m.from().tag(), Some(&b"98asjd8"[..]));
    assert_eq!(m.max_forwards(), Some(68));
    assert_eq!(m.cseq(), CSeq { seq: 9, method: Method::Invite });
    let vias: Vec<_> = m.vias().collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[1].transport, b"TCP");
    assert_eq!(vias[1].host, b"spindle.example.com");
    assert_eq!(vias[2].branch(), Some(&b"z9hG4bK30239"[..]));
    let c = m.contacts().next().unwrap().unwrap();
    assert_eq!(c.addr().unwrap().param(b"newparam"), Some(Some(&b"newvalue"[..])));
    assert_eq!(c.addr().unwrap().param(b"q"), Some(Some(&b"0.33"[..])));
    assert_eq!(
        m.header_by_raw_name(b"newfangledheader"),
        Some(&b"newfangled value\r\n continued newfangled value"[..])
    );
    assert_eq!(m.body().len(), 150);
}
