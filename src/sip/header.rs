//! The header table as data: one row per known header (enum, wire name, compact form, RFC), plus
//! lookup indexes built from it at compile time. Unknown names map to `HeaderName::Other`; callers reach
//! those by raw name. Does not parse header values.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    ContentLength,
    ContentType,
    ContentEncoding,
    MaxForwards,
    Route,
    RecordRoute,
    Path,
    Expires,
    MinExpires,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    AuthenticationInfo,
    Supported,
    Require,
    ProxyRequire,
    Unsupported,
    Allow,
    AllowEvents,
    Event,
    SubscriptionState,
    Accept,
    SipETag,
    SipIfMatch,
    UserAgent,
    Server,
    Subject,
    Date,
    Warning,
    RetryAfter,
    /// Ours: set by the edge on requests from a federated peer (the value is the peer's domain); removed from
    /// anything a user sends.
    ParapetFederated,
    /// Ours: the Path URI of a flow the edge reports closed (`Event: x-parapet-flow-closed`, edge to pool only).
    ParapetFlow,
    /// Ours: on a response of the pool, why it refused the request (`proto::Failure`, pool to edge only).
    ParapetFailure,
    /// Ours: on a user's request, the edge asks the pool to prove its From identity for the flow
    /// (`proto::BIND_MARK`, edge to pool only).
    ParapetBind,
    /// Ours: on the pool's notice, the identity it proved for the flow (`proto::identity_proven`, pool to edge only).
    ParapetIdentity,
    /// Ours: on a request one pool member sent another through the edge (`proto::MEMBER_ROUTE_USER`), edge to
    /// pool only.
    ParapetMember,
    /// Ours: on a request of a user connected from outside `[edge] internal_networks` (a remote user), edge to pool
    /// only.
    ParapetRemote,
    Other,
}

/// Number of variants including `Other`; sizes per-name index arrays.
pub const HEADER_NAME_COUNT: usize = HeaderName::Other as usize + 1;

/// (name, canonical wire name, compact form, defining RFC). Row order must follow the enum (asserted below).
pub const TABLE: &[(HeaderName, &str, Option<u8>, &str)] = &[
    (HeaderName::Via, "Via", Some(b'v'), "RFC 3261"),
    (HeaderName::From, "From", Some(b'f'), "RFC 3261"),
    (HeaderName::To, "To", Some(b't'), "RFC 3261"),
    (HeaderName::CallId, "Call-ID", Some(b'i'), "RFC 3261"),
    (HeaderName::CSeq, "CSeq", None, "RFC 3261"),
    (HeaderName::Contact, "Contact", Some(b'm'), "RFC 3261"),
    (HeaderName::ContentLength, "Content-Length", Some(b'l'), "RFC 3261"),
    (HeaderName::ContentType, "Content-Type", Some(b'c'), "RFC 3261"),
    (HeaderName::ContentEncoding, "Content-Encoding", Some(b'e'), "RFC 3261"),
    (HeaderName::MaxForwards, "Max-Forwards", None, "RFC 3261"),
    (HeaderName::Route, "Route", None, "RFC 3261"),
    (HeaderName::RecordRoute, "Record-Route", None, "RFC 3261"),
    (HeaderName::Path, "Path", None, "RFC 3327"),
    (HeaderName::Expires, "Expires", None, "RFC 3261"),
    (HeaderName::MinExpires, "Min-Expires", None, "RFC 3261"),
    (HeaderName::Authorization, "Authorization", None, "RFC 3261"),
    (HeaderName::ProxyAuthorization, "Proxy-Authorization", None, "RFC 3261"),
    (HeaderName::WwwAuthenticate, "WWW-Authenticate", None, "RFC 3261"),
    (HeaderName::ProxyAuthenticate, "Proxy-Authenticate", None, "RFC 3261"),
    (HeaderName::AuthenticationInfo, "Authentication-Info", None, "RFC 3261"),
    (HeaderName::Supported, "Supported", Some(b'k'), "RFC 3261"),
    (HeaderName::Require, "Require", None, "RFC 3261"),
    (HeaderName::ProxyRequire, "Proxy-Require", None, "RFC 3261"),
    (HeaderName::Unsupported, "Unsupported", None, "RFC 3261"),
    (HeaderName::Allow, "Allow", None, "RFC 3261"),
    (HeaderName::AllowEvents, "Allow-Events", Some(b'u'), "RFC 6665"),
    (HeaderName::Event, "Event", Some(b'o'), "RFC 6665"),
    (HeaderName::SubscriptionState, "Subscription-State", None, "RFC 6665"),
    (HeaderName::Accept, "Accept", None, "RFC 3261"),
    (HeaderName::SipETag, "SIP-ETag", None, "RFC 3903"),
    (HeaderName::SipIfMatch, "SIP-If-Match", None, "RFC 3903"),
    (HeaderName::UserAgent, "User-Agent", None, "RFC 3261"),
    (HeaderName::Server, "Server", None, "RFC 3261"),
    (HeaderName::Subject, "Subject", Some(b's'), "RFC 3261"),
    (HeaderName::Date, "Date", None, "RFC 3261"),
    (HeaderName::Warning, "Warning", None, "RFC 3261"),
    (HeaderName::RetryAfter, "Retry-After", None, "RFC 3261"),
    (HeaderName::ParapetFederated, "P-Parapet-Federated", None, "parapet"),
    (HeaderName::ParapetFlow, "P-Parapet-Flow", None, "parapet"),
    (HeaderName::ParapetFailure, "P-Parapet-Failure", None, "parapet"),
    (HeaderName::ParapetBind, "P-Parapet-Bind", None, "parapet"),
    (HeaderName::ParapetIdentity, "P-Parapet-Identity", None, "parapet"),
    (HeaderName::ParapetMember, "P-Parapet-Member", None, "parapet"),
    (HeaderName::ParapetRemote, "P-Parapet-Remote", None, "parapet"),
];

// Indexing in const evaluation: out of bounds is a compile error, not a runtime panic.
#[allow(clippy::indexing_slicing)]
const fn table_in_enum_order() -> bool {
    let mut i = 0;
    while i < TABLE.len() {
        if TABLE[i].0 as usize != i {
            return false;
        }
        i += 1;
    }
    TABLE.len() == HeaderName::Other as usize
}
const _: () = assert!(table_in_enum_order());

/// Longest wire name in the table; longer names are `Other` without comparing.
const NAME_LEN_MAX: usize = 20;
/// Rows per name length; the table has at most this many names of one length (asserted by construction).
const BUCKET_CAP: usize = 8;
const NONE: u8 = u8::MAX;

/// Table rows grouped by wire-name length, so a lookup compares against a handful of names at most.
// Indexing in const evaluation: out of bounds is a compile error, not a runtime panic.
#[allow(clippy::indexing_slicing)]
const BY_LEN: [[u8; BUCKET_CAP]; NAME_LEN_MAX + 1] = {
    let mut out = [[NONE; BUCKET_CAP]; NAME_LEN_MAX + 1];
    let mut i = 0;
    while i < TABLE.len() {
        let len = TABLE[i].1.len();
        assert!(len <= NAME_LEN_MAX);
        let mut j = 0;
        while out[len][j] != NONE {
            j += 1;
        }
        out[len][j] = i as u8;
        i += 1;
    }
    out
};

/// Wire names lower-cased, per table row, so a lookup lower-cases only the input.
// Indexing in const evaluation: out of bounds is a compile error, not a runtime panic.
#[allow(clippy::indexing_slicing)]
const LOWER: [[u8; NAME_LEN_MAX]; HeaderName::Other as usize] = {
    let mut out = [[0u8; NAME_LEN_MAX]; HeaderName::Other as usize];
    let mut i = 0;
    while i < TABLE.len() {
        let w = TABLE[i].1.as_bytes();
        let mut j = 0;
        while j < w.len() {
            out[i][j] = w[j].to_ascii_lowercase();
            j += 1;
        }
        i += 1;
    }
    out
};

/// Compact forms by lower-case letter (RFC 3261 §7.3.3 and extensions).
// Indexing in const evaluation: out of bounds is a compile error, not a runtime panic.
#[allow(clippy::indexing_slicing)]
const COMPACT: [u8; 26] = {
    let mut out = [NONE; 26];
    let mut i = 0;
    while i < TABLE.len() {
        if let Some(c) = TABLE[i].2 {
            out[(c - b'a') as usize] = i as u8;
        }
        i += 1;
    }
    out
};

impl HeaderName {
    /// Case-insensitive; compact forms included. Never fails: unknown names are `Other`.
    pub fn parse(name: &[u8]) -> HeaderName {
        if let [c] = name {
            let lc = c.to_ascii_lowercase();
            if lc.is_ascii_lowercase() {
                let row = COMPACT.get(usize::from(lc - b'a')).copied().unwrap_or(NONE);
                return Self::from_row(row);
            }
            return HeaderName::Other;
        }
        let Some(bucket) = BY_LEN.get(name.len()) else {
            return HeaderName::Other;
        };
        let first = name.first().map_or(0, u8::to_ascii_lowercase);
        for &row in bucket.iter().take_while(|&&r| r != NONE) {
            let Some(lower) = LOWER.get(usize::from(row)) else { continue };
            // Cheap reject on the first byte before comparing the whole name.
            if lower.first() == Some(&first) && name.iter().zip(lower).all(|(c, l)| c.to_ascii_lowercase() == *l) {
                return Self::from_row(row);
            }
        }
        HeaderName::Other
    }

    fn from_row(row: u8) -> HeaderName {
        TABLE.get(usize::from(row)).map_or(HeaderName::Other, |r| r.0)
    }

    /// Canonical wire name; empty for `Other` (its raw name lives in the message).
    pub fn as_str(&self) -> &'static str {
        TABLE.get(*self as usize).map_or("", |r| r.1)
    }

    pub fn compact(&self) -> Option<u8> {
        TABLE.get(*self as usize).and_then(|r| r.2)
    }

    pub fn rfc(&self) -> &'static str {
        TABLE.get(*self as usize).map_or("", |r| r.3)
    }

    pub fn index(&self) -> usize {
        *self as usize
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn every_row_round_trips() {
        for (h, wire, compact, _) in TABLE {
            assert_eq!(HeaderName::parse(wire.as_bytes()), *h);
            assert_eq!(HeaderName::parse(wire.to_ascii_lowercase().as_bytes()), *h);
            assert_eq!(HeaderName::parse(wire.to_ascii_uppercase().as_bytes()), *h);
            assert_eq!(h.as_str(), *wire);
            if let Some(c) = compact {
                assert_eq!(HeaderName::parse(&[*c]), *h);
                assert_eq!(HeaderName::parse(&[c.to_ascii_uppercase()]), *h);
            }
        }
    }

    #[test]
    fn unknown_and_odd_names() {
        assert_eq!(HeaderName::parse(b""), HeaderName::Other);
        assert_eq!(HeaderName::parse(b"x"), HeaderName::Other);
        assert_eq!(HeaderName::parse(b"1"), HeaderName::Other);
        assert_eq!(HeaderName::parse(b"NewFangledHeader"), HeaderName::Other);
        assert_eq!(HeaderName::parse(&[0xff; 40]), HeaderName::Other);
        assert_eq!(HeaderName::parse(b"MaX-fOrWaRdS"), HeaderName::MaxForwards);
        assert_eq!(HeaderName::parse(b"call-id"), HeaderName::CallId);
        assert_eq!(HeaderName::Other.as_str(), "");
    }
}
