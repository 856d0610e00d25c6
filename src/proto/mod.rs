//! The edge–pool protocol: what the two roles agree on beyond plain SIP, below both of them so that neither
//! imports the other (`edge` and `pool` each depend on this module, never on each other).
//!
//! It holds the names both sides must spell alike (the internal event, the internal headers), the limits each
//! side grants the other, the AOR normalisation both use to name a user, and the pool's failure reasons as typed
//! values (the edge acts on them; the reason phrase is for people and may change).
//!
//! # Internal headers
//!
//! The names live in [`crate::sip::HeaderName`] (the codec's table); who may send which is defined here. None of
//! them may reach a user or a partner, and none is believed from one:
//!
//! | header | who sends it | on what | who believes it |
//! |---|---|---|---|
//! | `P-Parapet-Federated` | the edge | a request from a federation peer that may speak for its From domain; the value is that domain | the pool. The edge removes it from every request of a user and replaces it on a partner's. |
//! | `P-Parapet-Flow` | the edge | its flow-closed notice ([`FLOW_CLOSED_EVENT`]): the Path URI it wrote in that flow's REGISTERs | the pool, only on that notice (users cannot send the event: [`is_internal_event`]) |
//! | `P-Parapet-Failure` | the pool | a final response refusing a request: [`Failure`] | the edge, only on a response from a pool connection. It removes the header from every response of a user or partner before it goes on to the pool, and from every response it sends on to a user. |
//! | `P-Parapet-Bind` | the edge | a request from a registered flow whose From the flow has not proven yet ([`BIND_MARK`]) | the pool, which authenticates the request as any other and, when the digest succeeds, sends the identity notice. The edge removes it from every request of a user and sets its own, and removes it again from the request when the pool forwards it toward a user. |
//! | `P-Parapet-Member` | the edge | a request a pool member sent to another member through it ([`MEMBER_ROUTE_USER`]); the value is the Request-URI's AOR | the pool: the request comes from a member of the pool (a contact list's back-end subscription, and the NOTIFYs in its dialog), not from a user, so it is not digest-authenticated. |
//! | `P-Parapet-Identity` | the pool | its identity notice ([`identity_proven`]): a `100 Trying` naming the AOR it just authenticated as the From of a marked request | the edge, only from a pool connection, which then lets the flow speak for that AOR; the notice is hop-by-hop and never forwarded, and the header is removed like `P-Parapet-Failure`. |
//!
//! # Identity per request
//!
//! A client with several accounts on one server shares one connection between them: an account's requests
//! may leave on a flow another account registered. Until a flow has registered, only REGISTER passes the edge.
//! Afterwards a request From an identity the flow has not proven goes on marked `P-Parapet-Bind`; the pool
//! digest-authenticates it as every request (407 first), and only a successful authentication brings the
//! notice that lets the edge add the identity to the flow (bounded by the flow's identity cap). A failed one is
//! a `Failure::Credentials` like any other, counted toward the address's lockout.

pub mod membership;

use crate::config::Config;
use crate::sip::{Editor, HeaderName, Limits, Message, Uri};

// ---------------------------------------------------------------------------------------------------------------
// The flow-closed notice

/// Events whose name starts with this are internal (edge to pool): the edge refuses them from users.
pub const INTERNAL_EVENT_PREFIX: &[u8] = b"x-parapet-";

/// The internal event by which the edge tells the pool a registered flow closed: a NOTIFY to the AOR it had
/// registered, with the flow's Path URI in `P-Parapet-Flow`; the pool drops the bindings made through that flow.
pub const FLOW_CLOSED_EVENT: &str = "x-parapet-flow-closed";

/// Whether an `Event` header value names an internal event (case-insensitive, as event packages compare).
pub fn is_internal_event(event: &[u8]) -> bool {
    event.get(..INTERNAL_EVENT_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(INTERNAL_EVENT_PREFIX))
}

/// Whether a request is the edge's flow-closed notice (believed by the pool: users cannot send the event).
pub fn is_flow_closed_notice(msg: &Message) -> bool {
    msg.header(HeaderName::Event).is_some_and(|e| e.eq_ignore_ascii_case(FLOW_CLOSED_EVENT.as_bytes()))
}

// ---------------------------------------------------------------------------------------------------------------
// Requests between the members of a pool

/// The user part of the Route (`<sip:member@<edge internal>;lr>`) by which a pool member asks the edge to send a
/// request on to the member owning the request's user (REGISTER aside, the Request-URI's), as a user's request
/// would go. The edge also Record-Routes an initial SUBSCRIBE so, so that the dialog's NOTIFYs come back the same
/// way, to the member owning the subscriber's Contact (a contact list: the list's member).
pub const MEMBER_ROUTE_USER: &[u8] = b"member";

/// The user part suffix naming a user's contact list (`sip:alice+contacts@<domain>`, RFC 4662): the pool serves
/// it, the edge routes it as its owner's.
pub const LIST_SUFFIX: &str = "+contacts";

/// Whether a request came from another member of the pool, through the edge (which set [`HeaderName::ParapetMember`]
/// and removes it from every user's and partner's request).
pub fn from_member(msg: &Message) -> bool {
    msg.header(HeaderName::ParapetMember).is_some()
}

// ---------------------------------------------------------------------------------------------------------------
// Limits

/// The SIP limits of the configuration (`[limits]`): what the edge accepts from users and partners.
pub fn sip_limits(cfg: &Config) -> Limits {
    Limits {
        message_bytes_max: cfg.limits.message_bytes_max,
        header_bytes_max: cfg.limits.header_bytes_max,
        header_count_max: cfg.limits.header_count_max,
        line_bytes_max: cfg.limits.line_bytes_max,
    }
}

/// What the edge and the pool accept from each other: a user's message at the limits plus what the hops add
/// (see [`crate::net::conn::peer_limits`]).
pub fn peer_limits(cfg: &Config) -> Limits {
    crate::net::conn::peer_limits(&sip_limits(cfg))
}

// ---------------------------------------------------------------------------------------------------------------
// AOR normalisation

/// The AOR key of a URI (`user@host`, the user unescaped, the host lowercased): the name of a user in the
/// registrar, in a flow's identities at the edge, in the sharding of pool cores.
pub fn aor_of(uri: &Uri<'_>) -> String {
    aor_key(&uri.user_unescaped(), uri.host)
}

/// Normalised AOR key "user@host" (host lowercased, user %-unescaped) from a sip/sips URI's parts.
/// Without a user part the key is just the host. Malformed %-escapes are kept literally rather than
/// rejected: the key only has to be stable, and the same bytes always give the same key.
pub fn aor_key(user: &[u8], host: &[u8]) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let mut u = Vec::with_capacity(user.len());
    let mut rest = user;
    while let Some((&c, tail)) = rest.split_first() {
        if let (b'%', [h, l, more @ ..]) = (c, tail) {
            if let (Some(h), Some(l)) = (hex(*h), hex(*l)) {
                u.push(h << 4 | l);
                rest = more;
                continue;
            }
        }
        u.push(c);
        rest = tail;
    }
    let host = String::from_utf8_lossy(host).to_ascii_lowercase();
    if u.is_empty() {
        host
    } else {
        format!("{}@{}", String::from_utf8_lossy(&u), host)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Failure reasons

/// Why the pool refused a request, as the edge must know it: carried in `P-Parapet-Failure` on the pool's
/// final response, so that the edge never depends on a reason phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Digest authentication failed: unknown user or wrong response (one answer for both, so that it does not
    /// tell which users exist). The edge counts it toward the address's lockout.
    Credentials,
    /// Credentials for another identity than the one the request claims (not a guess at a password: not counted).
    OtherIdentity,
}

impl Failure {
    /// The header value.
    pub const fn token(self) -> &'static str {
        match self {
            Failure::Credentials => "credentials",
            Failure::OtherIdentity => "other-identity",
        }
    }

    pub fn parse(value: &[u8]) -> Option<Failure> {
        [Failure::Credentials, Failure::OtherIdentity]
            .into_iter()
            .find(|f| value.trim_ascii().eq_ignore_ascii_case(f.token().as_bytes()))
    }

    /// The status the pool answers with.
    pub const fn code(self) -> u16 {
        403
    }

    /// The reason phrase, for people (the edge does not read it).
    pub const fn reason(self) -> &'static str {
        match self {
            Failure::Credentials => "Forbidden: wrong credentials",
            Failure::OtherIdentity => "Forbidden: credentials are for another identity",
        }
    }

    /// The header line the pool adds to its response.
    pub const fn header(self) -> (HeaderName, &'static [u8]) {
        (HeaderName::ParapetFailure, self.token().as_bytes())
    }

    /// The failure a response reports. Only meaningful on a response from a pool connection.
    pub fn of(msg: &Message) -> Option<Failure> {
        msg.header(HeaderName::ParapetFailure).and_then(Failure::parse)
    }
}

/// Every internal header (the table above). The edge removes them from users' requests and from users' and
/// partners' responses before they reach the pool (setting its own marks where it speaks), and from every
/// response it sends on to a user; from a request toward a user it removes its own `P-Parapet-Bind`, which the
/// pool forwards with the request.
pub const INTERNAL_HEADERS: &[HeaderName] = &[
    HeaderName::ParapetFederated,
    HeaderName::ParapetFlow,
    HeaderName::ParapetFailure,
    HeaderName::ParapetBind,
    HeaderName::ParapetIdentity,
    HeaderName::ParapetMember,
    HeaderName::ParapetRemote,
];

/// Removes the internal headers ([`INTERNAL_HEADERS`]) from a message being forwarded. An edit only for a header
/// present, so that the common message costs none of the editor's bounded edits.
pub fn strip_internal(msg: &Message, ed: &mut Editor<'_>) {
    for name in INTERNAL_HEADERS {
        if msg.header(*name).is_some() {
            ed.remove_headers(*name);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Identity per request

/// The edge's mark on a request whose From its flow has not proven: "tell me if you authenticate it".
pub const BIND_MARK: (HeaderName, &[u8]) = (HeaderName::ParapetBind, b"from");

/// Whether a request from the edge asks for the identity notice.
pub fn wants_identity_notice(msg: &Message) -> bool {
    msg.header(HeaderName::ParapetBind).is_some()
}

/// Status and reason of the pool's identity notice: a provisional response, hop-by-hop (RFC 3261 §16.7: a
/// proxy never forwards a 100), sent back along the request's Vias before the request goes on.
pub const IDENTITY_NOTICE: (u16, &str) = (100, "Trying");

/// The header line of the identity notice, naming the AOR the pool authenticated.
pub fn identity_header(aor: &str) -> (HeaderName, &[u8]) {
    (HeaderName::ParapetIdentity, aor.as_bytes())
}

/// On the edge, for a response from a pool connection: the AOR the pool proved, when this is its identity
/// notice. The pool proves only a request's From, so the notice must name the From's AOR, or it is not one.
pub fn identity_proven(msg: &Message) -> Option<String> {
    if msg.status() != Some(IDENTITY_NOTICE.0) {
        return None;
    }
    let named = msg.header(HeaderName::ParapetIdentity)?.trim_ascii();
    let from = aor_of(&msg.from().uri);
    (named == from.as_bytes()).then_some(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aor_keys() {
        assert_eq!(aor_key(b"alice", b"Example.COM"), "alice@example.com");
        assert_eq!(aor_key(b"al%69ce", b"example.com"), "alice@example.com");
        assert_eq!(aor_key(b"Alice", b"example.com"), "Alice@example.com");
        assert_eq!(aor_key(b"a%2", b"h"), "a%2@h");
        assert_eq!(aor_key(b"a%", b"h"), "a%@h");
        assert_eq!(aor_key(b"a%zz", b"h"), "a%zz@h");
        assert_eq!(aor_key(b"%41%42", b"h"), "AB@h");
        assert_eq!(aor_key(b"", b"Example.com"), "example.com");
        let uri = Uri::parse(b"sip:b%6Fb@Example.COM;transport=tls").expect("uri");
        assert_eq!(aor_of(&uri), "bob@example.com");
    }

    #[test]
    fn internal_events() {
        assert!(is_internal_event(FLOW_CLOSED_EVENT.as_bytes()));
        assert!(is_internal_event(b"X-Parapet-anything"));
        assert!(!is_internal_event(b"presence"));
        assert!(!is_internal_event(b"x-parapet"));
        assert!(!is_internal_event(b""));
    }

    #[test]
    fn failures_round_trip_and_are_read_from_the_header_only() {
        for f in [Failure::Credentials, Failure::OtherIdentity] {
            assert_eq!(Failure::parse(f.token().as_bytes()), Some(f));
            assert_eq!(Failure::parse(f.token().to_ascii_uppercase().as_bytes()), Some(f));
        }
        assert_eq!(Failure::parse(b"forbidden"), None);
        let resp = |extra: &str| {
            let text = format!(
                "SIP/2.0 403 Forbidden: wrong credentials\r\nVia: SIP/2.0/TLS 192.0.2.5;branch=z9hG4bK1\r\n\
                 From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>;tag=2\r\nCall-ID: c1\r\n\
                 CSeq: 1 REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
            );
            Message::parse(bytes::Bytes::from(text), &Limits::default()).expect("parses")
        };
        // The phrase alone says nothing to the edge.
        assert_eq!(Failure::of(&resp("")), None);
        let marked = resp("P-Parapet-Failure: credentials\r\n");
        assert_eq!(Failure::of(&marked), Some(Failure::Credentials));
        // Forwarded on, the mark is gone and the rest is untouched.
        let mut ed = Editor::new(&marked);
        strip_internal(&marked, &mut ed);
        let mut out = bytes::BytesMut::new();
        ed.write(&mut out).expect("fits");
        let fwd = Message::parse(out.freeze(), &Limits::default()).expect("parses");
        assert_eq!(Failure::of(&fwd), None);
        assert_eq!(fwd.bytes(), resp("").bytes());
    }

    #[test]
    fn the_identity_notice_names_the_from_of_a_100() {
        let resp = |status: &str, identity: &str| {
            let text = format!(
                "SIP/2.0 {status}\r\nVia: SIP/2.0/TLS 192.0.2.5;branch=z9hG4bK1\r\n\
                 From: <sip:b%6Fb@Example.com>;tag=1\r\nTo: <sip:carol@example.com>\r\nCall-ID: c1\r\n\
                 CSeq: 2 MESSAGE\r\n{identity}Content-Length: 0\r\n\r\n"
            );
            Message::parse(bytes::Bytes::from(text), &Limits::default()).expect("parses")
        };
        let (code, reason) = IDENTITY_NOTICE;
        let (name, value) = identity_header("bob@example.com");
        let line = format!("{}: {}\r\n", name.as_str(), String::from_utf8_lossy(value));
        assert_eq!(identity_proven(&resp(&format!("{code} {reason}"), &line)).as_deref(), Some("bob@example.com"));
        // Not a 100, no header, or another AOR than the From's: not a notice.
        assert_eq!(identity_proven(&resp("200 OK", &line)), None);
        assert_eq!(identity_proven(&resp("100 Trying", "")), None);
        assert_eq!(identity_proven(&resp("100 Trying", "P-Parapet-Identity: carol@example.com\r\n")), None);
    }
}
