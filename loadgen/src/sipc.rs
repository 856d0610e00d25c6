//! The SIP a simulated client speaks, as bytes: REGISTER, MESSAGE, SUBSCRIBE and PUBLISH (with a PIDF body)
//! requests, the 200 a callee answers, and digest credentials computed from a challenge (with `parapet::sip` for syntax and `parapet::pool::digest`
//! for the hashes). Pure: no I/O, no clock, no randomness (uniqueness comes from counters passed in).

use bytes::BytesMut;
use parapet::pool::digest::{self, Algorithm};
use parapet::sip::{self, DigestCredentials, HeaderName, Message};

/// What a client keeps from a digest challenge to answer it, and to reuse its nonce with nc + 1.
#[derive(Clone, Debug)]
pub struct AuthState {
    pub alg: Algorithm,
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    /// Last nonce-count used with this nonce.
    pub nc: u32,
    /// hex(H(user:realm:password)) for `alg` and `realm`.
    pub ha1: String,
}

impl AuthState {
    /// The strongest challenge we can answer among the response's `WWW-`/`Proxy-Authenticate` values
    /// (SHA-256 preferred, then MD5; qop must offer auth or be absent). None when nothing usable was offered.
    pub fn from_challenge(resp: &Message, user: &str, password: &str) -> Option<AuthState> {
        let header =
            if resp.status() == Some(401) { HeaderName::WwwAuthenticate } else { HeaderName::ProxyAuthenticate };
        let mut best: Option<AuthState> = None;
        for v in resp.header_lines(header) {
            let Ok(c) = sip::parse_challenge(v) else { continue };
            let Some(alg) = c.algorithm.map_or(Some(Algorithm::Md5), Algorithm::parse) else { continue };
            if c.qop.is_some_and(|q| !q.split(|&b| b == b',').any(|t| t.trim_ascii() == b"auth")) {
                continue;
            }
            if best.as_ref().is_some_and(|b| b.alg == Algorithm::Sha256 || alg == Algorithm::Md5) {
                continue;
            }
            let realm = String::from_utf8_lossy(&sip::unquote(c.realm)).into_owned();
            best = Some(AuthState {
                alg,
                ha1: digest::ha1(alg, user.as_bytes(), realm.as_bytes(), password.as_bytes()),
                realm,
                nonce: String::from_utf8_lossy(c.nonce).into_owned(),
                opaque: c.opaque.map(|o| String::from_utf8_lossy(o).into_owned()),
                nc: 0,
            });
        }
        best
    }

    /// The credentials header value for the next request (increments nc).
    pub fn credentials(&mut self, user: &str, method: &str, uri: &str, cnonce: u64) -> BytesMut {
        self.nc = self.nc.wrapping_add(1);
        let nc = format!("{:08x}", self.nc);
        let cnonce = format!("{cnonce:016x}");
        let response = digest::response(
            self.alg,
            self.ha1.as_bytes(),
            method.as_bytes(),
            uri.as_bytes(),
            self.nonce.as_bytes(),
            Some(nc.as_bytes()),
            Some(cnonce.as_bytes()),
            Some(b"auth"),
        );
        let mut out = BytesMut::with_capacity(256);
        sip::write_credentials(
            &mut out,
            &DigestCredentials {
                username: user.as_bytes(),
                realm: self.realm.as_bytes(),
                nonce: self.nonce.as_bytes(),
                uri: uri.as_bytes(),
                response: response.as_bytes(),
                algorithm: Some(self.alg.as_str().as_bytes()),
                cnonce: Some(cnonce.as_bytes()),
                opaque: self.opaque.as_deref().map(str::as_bytes),
                qop: Some(b"auth"),
                nc: Some(nc.as_bytes()),
            },
        );
        out
    }
}

/// Who sends: a simulated user on one connection.
pub struct Party<'a> {
    pub user: &'a str,
    pub domain: &'a str,
    /// "ip:port" of our end of the connection (for Via and Contact).
    pub local: &'a str,
    pub transport: &'a str,
}

/// What identifies one of our requests, beyond the sender.
struct Lines<'a> {
    method: &'a str,
    ruri: &'a str,
    from: &'a str,
    to: &'a str,
    call_id: &'a str,
    cseq: u32,
}

/// A request from `p`: its Via (with `rport` for a user agent; a partner edge does without), Max-Forwards,
/// From, To, Call-ID and CSeq, then `extra`.
fn write_req(
    out: &mut BytesMut,
    p: &Party<'_>,
    branch: u64,
    rport: bool,
    l: &Lines<'_>,
    extra: &[(HeaderName, &[u8])],
    body: Option<(&[u8], &[u8])>,
) {
    let rport = if rport { ";rport" } else { "" };
    let via = format!("SIP/2.0/{} {};branch=z9hG4bK{branch:x}{rport}", p.transport, p.local);
    let cseq = format!("{} {}", l.cseq, l.method);
    let mut h: Vec<(HeaderName, &[u8])> = Vec::with_capacity(6 + extra.len());
    h.extend([
        (HeaderName::Via, via.as_bytes()),
        (HeaderName::MaxForwards, &b"70"[..]),
        (HeaderName::From, l.from.as_bytes()),
        (HeaderName::To, l.to.as_bytes()),
        (HeaderName::CallId, l.call_id.as_bytes()),
        (HeaderName::CSeq, cseq.as_bytes()),
    ]);
    h.extend_from_slice(extra);
    sip::write_request(out, l.method, l.ruri.as_bytes(), &h, body);
}

/// Our Contact: the user at our end of the connection.
fn contact_of(p: &Party<'_>) -> String {
    format!("<sip:{}@{};transport={}>", p.user, p.local, p.transport.to_ascii_lowercase())
}

/// A REGISTER for `p` (Expires 3600), with `auth` as the Authorization value when given.
pub fn register(out: &mut BytesMut, p: &Party<'_>, branch: u64, call_id: &str, cseq: u32, auth: Option<&[u8]>) {
    let aor = format!("<sip:{}@{}>", p.user, p.domain);
    let from = format!("{aor};tag=r{branch:x}");
    let contact = contact_of(p);
    let ruri = format!("sip:{}", p.domain);
    let mut extra: Vec<(HeaderName, &[u8])> =
        vec![(HeaderName::Contact, contact.as_bytes()), (HeaderName::Expires, b"3600")];
    extra.extend(auth.map(|a| (HeaderName::Authorization, a)));
    let l = Lines { method: "REGISTER", ruri: &ruri, from: &from, to: &aor, call_id, cseq };
    write_req(out, p, branch, true, &l, &extra, None);
}

/// A MESSAGE from `p` to `to_user`, with `auth` as the Proxy-Authorization value when given.
pub fn message(out: &mut BytesMut, p: &Party<'_>, to_user: &str, branch: u64, auth: Option<&[u8]>, body: &[u8]) {
    let from = format!("<sip:{}@{}>;tag=m{branch:x}", p.user, p.domain);
    let ruri = message_uri(to_user, p.domain);
    let to = format!("<{ruri}>");
    let call_id = format!("m{branch:x}@{}", p.local);
    let extra: Vec<(HeaderName, &[u8])> = auth.map(|a| (HeaderName::ProxyAuthorization, a)).into_iter().collect();
    let l = Lines { method: "MESSAGE", ruri: &ruri, from: &from, to: &to, call_id: &call_id, cseq: 1 };
    write_req(out, p, branch, true, &l, &extra, Some((b"text/plain", body)));
}

/// A presence SUBSCRIBE from `p` to `to_user` (a new dialog: no To tag), with `auth` as Proxy-Authorization.
#[allow(clippy::too_many_arguments)]
pub fn subscribe(
    out: &mut BytesMut,
    p: &Party<'_>,
    to_user: &str,
    branch: u64,
    call_id: &str,
    from_tag: &str,
    cseq: u32,
    auth: Option<&[u8]>,
) {
    let from = format!("<sip:{}@{}>;tag={from_tag}", p.user, p.domain);
    let ruri = message_uri(to_user, p.domain);
    let to = format!("<{ruri}>");
    let contact = contact_of(p);
    let mut extra: Vec<(HeaderName, &[u8])> = vec![
        (HeaderName::Contact, contact.as_bytes()),
        (HeaderName::Event, b"presence"),
        (HeaderName::Accept, b"application/pidf+xml"),
        (HeaderName::Expires, b"3600"),
    ];
    extra.extend(auth.map(|a| (HeaderName::ProxyAuthorization, a)));
    let l = Lines { method: "SUBSCRIBE", ruri: &ruri, from: &from, to: &to, call_id, cseq };
    write_req(out, p, branch, true, &l, &extra, None);
}

/// The PIDF document a presentity publishes: open, and busy (with a note) when `busy`.
pub fn pidf(user: &str, domain: &str, busy: bool, note: &str) -> String {
    let person = if busy {
        format!(
            "<dm:person id=\"p1\"><rpid:activities><rpid:busy/></rpid:activities><dm:note>{note}</dm:note></dm:person>"
        )
    } else {
        format!("<dm:person id=\"p1\"><dm:note>{note}</dm:note></dm:person>")
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" \
         entity=\"sip:{user}@{domain}\"><tuple id=\"t1\"><status><basic>open</basic></status></tuple>{person}</presence>"
    )
}

/// A PUBLISH (Event: presence) of `p`'s own state, modifying the publication `if_match` when given.
pub fn publish(
    out: &mut BytesMut,
    p: &Party<'_>,
    branch: u64,
    if_match: Option<&str>,
    auth: Option<&[u8]>,
    body: &[u8],
) {
    let ruri = message_uri(p.user, p.domain);
    let from = format!("<{ruri}>;tag=p{branch:x}");
    let to = format!("<{ruri}>");
    let call_id = format!("p{branch:x}@{}", p.local);
    let mut extra: Vec<(HeaderName, &[u8])> = vec![(HeaderName::Event, b"presence"), (HeaderName::Expires, b"3600")];
    extra.extend(if_match.map(|t| (HeaderName::SipIfMatch, t.as_bytes())));
    extra.extend(auth.map(|a| (HeaderName::ProxyAuthorization, a)));
    let l = Lines { method: "PUBLISH", ruri: &ruri, from: &from, to: &to, call_id: &call_id, cseq: 1 };
    write_req(out, p, branch, true, &l, &extra, Some((b"application/pidf+xml", body)));
}

/// The user part of what a played partner sends From.
pub const PARTNER_SENDER: &str = "loadgen";

/// A MESSAGE a partner organization's edge relays to `to_user`@`to_domain`: From `p`'s own domain, its own Via
/// (sent-by = its end of the connection), no credentials (its certificate vouches for its domain).
pub fn partner_message(out: &mut BytesMut, p: &Party<'_>, to_user: &str, to_domain: &str, branch: u64, body: &[u8]) {
    let ruri = message_uri(to_user, to_domain);
    partner_request(out, p, "MESSAGE", &ruri, 'f', branch, Some((b"text/plain", body)));
}

/// The OPTIONS with which a partner checks its connection to `to_domain`'s edge (answered by the edge itself).
pub fn partner_options(out: &mut BytesMut, p: &Party<'_>, to_domain: &str, branch: u64) {
    partner_request(out, p, "OPTIONS", &register_uri(to_domain), 'o', branch, None);
}

/// An out-of-dialog request from a played partner edge; `mark` keeps its tags and Call-IDs apart by kind.
fn partner_request(
    out: &mut BytesMut,
    p: &Party<'_>,
    method: &str,
    ruri: &str,
    mark: char,
    branch: u64,
    body: Option<(&[u8], &[u8])>,
) {
    let from = format!("<sip:{}@{}>;tag={mark}{branch:x}", p.user, p.domain);
    let to = format!("<{ruri}>");
    let call_id = format!("{mark}{branch:x}@{}", p.domain);
    let l = Lines { method, ruri, from: &from, to: &to, call_id: &call_id, cseq: 1 };
    write_req(out, p, branch, false, &l, &[], body);
}

pub fn message_uri(to_user: &str, domain: &str) -> String {
    format!("sip:{to_user}@{domain}")
}

pub fn register_uri(domain: &str) -> String {
    format!("sip:{domain}")
}

/// The 200 (or other final answer) a simulated callee sends to a request it received.
pub fn answer(out: &mut BytesMut, req: &Message, code: u16, reason: &str, tag: &[u8]) {
    sip::write_response(out, req, code, reason, Some(tag), &[], None);
}

/// The transaction key of a response or request: the top Via branch.
pub fn branch_of(m: &Message) -> Option<&[u8]> {
    m.top_via()?.branch()
}

/// The branch we put in requests, as text (the key `branch_of` returns for their responses).
pub fn branch_text(branch: u64) -> String {
    format!("z9hG4bK{branch:x}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use parapet::sip::Limits;

    #[test]
    fn register_parses_and_credentials_verify() {
        let p = Party { user: "load1", domain: "example.com", local: "127.0.0.1:4000", transport: "TLS" };
        let mut out = BytesMut::new();
        register(&mut out, &p, 0xabc, "cid", 1, None);
        let m = Message::parse(out.freeze(), &Limits::DEFAULT).unwrap();
        assert_eq!(branch_of(&m), Some(&b"z9hG4bKabc"[..]));
        assert_eq!(branch_text(0xabc).as_bytes(), b"z9hG4bKabc");

        let chal = "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/TLS 127.0.0.1:4000;branch=z9hG4bKabc\r\n\
            From: <sip:load1@example.com>;tag=x\r\nTo: <sip:load1@example.com>;tag=y\r\nCall-ID: cid\r\n\
            CSeq: 1 REGISTER\r\nWWW-Authenticate: Digest realm=\"example.com\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"\r\n\
            WWW-Authenticate: Digest realm=\"example.com\", nonce=\"n1\", algorithm=SHA-256, qop=\"auth\"\r\n\
            Content-Length: 0\r\n\r\n";
        let r = Message::parse(Bytes::from(chal), &Limits::DEFAULT).unwrap();
        let mut a = AuthState::from_challenge(&r, "load1", "pw").unwrap();
        assert_eq!(a.alg, Algorithm::Sha256);
        let v = a.credentials("load1", "REGISTER", "sip:example.com", 7);
        let c = sip::parse_credentials(&v).unwrap();
        let ha1 = digest::ha1(Algorithm::Sha256, b"load1", b"example.com", b"pw");
        assert!(digest::verify(
            Algorithm::Sha256,
            ha1.as_bytes(),
            b"REGISTER",
            c.uri,
            c.nonce,
            c.nc,
            c.cnonce,
            c.qop,
            c.response
        ));
        assert_eq!(c.nc, Some(&b"00000001"[..]));
        let v2 = a.credentials("load1", "REGISTER", "sip:example.com", 8);
        assert_eq!(sip::parse_credentials(&v2).unwrap().nc, Some(&b"00000002"[..]));
    }

    #[test]
    fn a_partner_message_speaks_for_its_own_domain_without_credentials() {
        let p = Party { user: PARTNER_SENDER, domain: "partner.test", local: "127.0.0.1:4000", transport: "TLS" };
        let mut out = BytesMut::new();
        partner_message(&mut out, &p, "load7", "example.com", 0x1f, b"hi");
        let m = Message::parse(out.freeze(), &Limits::DEFAULT).unwrap();
        assert_eq!(m.method_bytes(), Some(&b"MESSAGE"[..]));
        assert_eq!(m.request_uri_parsed().map(|u| (u.user, u.host)), Some((Some(&b"load7"[..]), &b"example.com"[..])));
        assert_eq!(m.from().uri.host, b"partner.test");
        assert_eq!(m.from().uri.user, Some(&b"loadgen"[..]));
        assert_eq!(m.to().uri.host, b"example.com");
        let via = m.top_via().unwrap();
        assert_eq!(via.branch(), Some(&b"z9hG4bK1f"[..]));
        assert_eq!((via.transport, via.host, via.port), (&b"TLS"[..], &b"127.0.0.1"[..], Some(4000)));
        assert_eq!(m.header(HeaderName::MaxForwards), Some(&b"70"[..]));
        assert_eq!(m.header(HeaderName::CSeq), Some(&b"1 MESSAGE"[..]));
        assert_eq!(m.header(HeaderName::ContentType), Some(&b"text/plain"[..]));
        assert_eq!(m.body(), b"hi");
        assert!(m.header(HeaderName::Authorization).is_none() && m.header(HeaderName::ProxyAuthorization).is_none());
        // Unique per operation: the branch and the Call-ID come from the operation's id.
        let mut other = BytesMut::new();
        partner_message(&mut other, &p, "load7", "example.com", 0x20, b"hi");
        let o = Message::parse(other.freeze(), &Limits::DEFAULT).unwrap();
        assert_ne!(o.header(HeaderName::CallId), m.header(HeaderName::CallId));
        assert_ne!(branch_of(&o), branch_of(&m));

        let mut out = BytesMut::new();
        partner_options(&mut out, &p, "example.com", 0x21);
        let m = Message::parse(out.freeze(), &Limits::DEFAULT).unwrap();
        assert_eq!(m.method_bytes(), Some(&b"OPTIONS"[..]));
        assert_eq!(m.request_uri_parsed().map(|u| u.user), Some(None), "no user: the edge itself answers");
        assert_eq!(m.from().uri.host, b"partner.test");
    }

    #[test]
    fn presence_requests_parse_and_the_pidf_reads_as_published() {
        use parapet::pool::presence::pidf::{summarize, Rich};
        let p = Party { user: "load1", domain: "example.com", local: "127.0.0.1:4000", transport: "TLS" };
        let mut out = BytesMut::new();
        subscribe(&mut out, &p, "load2", 0xa, "cid", "tg", 2, None);
        let m = Message::parse(out.freeze(), &Limits::DEFAULT).unwrap();
        assert_eq!(m.method_bytes(), Some(&b"SUBSCRIBE"[..]));
        assert_eq!(m.header(HeaderName::Event), Some(&b"presence"[..]));
        let busy = pidf("load1", "example.com", true, "In a meeting (1)");
        let mut out = BytesMut::new();
        publish(&mut out, &p, 0xb, Some("etag1"), None, busy.as_bytes());
        let m = Message::parse(out.freeze(), &Limits::DEFAULT).unwrap();
        assert_eq!(m.header(HeaderName::SipIfMatch), Some(&b"etag1"[..]));
        assert_eq!(summarize(m.body()).unwrap().rich, Rich::Busy);
        assert_eq!(summarize(pidf("load1", "example.com", false, "x").as_bytes()).unwrap().rich, Rich::Available);
    }
}
