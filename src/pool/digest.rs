//! HTTP Digest authentication for SIP, server side: RFC 2617 (MD5, qop=auth), RFC 7616 (SHA-256,
//! the algorithm-generic rules) and RFC 8760 (SHA-256 in SIP). RFC 2069 responses (no qop) are still
//! computed because RFC 3261 §22.4 requires servers to accept them.
//!
//! Pure logic: no I/O, no clock. Time comes in as `now_secs`, so the same code runs on every core and in
//! tests. Only `qop=auth` is supported; `auth-int` and the `-sess` algorithms are refused (no client we
//! interoperate with needs them, see shared/interop/clients.md).
//!
//! Nonces are self-authenticating (HMAC over their own content), so a core can tell "one of ours that we
//! forgot" (answer stale=true, the client retries silently) from "forged" (answer a plain challenge).
//! The per-nonce nonce-count table is bounded: under load it forgets the oldest nonces, which only costs
//! those clients one extra round trip.

use std::collections::{HashMap, VecDeque};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// "MD5" or "SHA-256", case-insensitive (RFC 7616 §3.3 tokens). `-sess` variants and anything else
    /// give None: the caller answers with a fresh challenge rather than guessing. An absent parameter
    /// means MD5 (RFC 2617 §3.2.1) but that is the caller's call, not ours.
    pub fn parse(b: &[u8]) -> Option<Algorithm> {
        if b.eq_ignore_ascii_case(b"MD5") {
            Some(Algorithm::Md5)
        } else if b.eq_ignore_ascii_case(b"SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }
}

/// Lower-case hex of H(p0 ":" p1 ":" ...). Digest concatenates every intermediate value with ':', so one
/// helper covers A1, A2 and KD.
fn hash_hex(alg: Algorithm, parts: &[&[u8]]) -> String {
    fn feed<D: Digest>(mut d: D, parts: &[&[u8]]) -> String {
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                d.update(b":");
            }
            d.update(p);
        }
        to_hex(&d.finalize())
    }
    match alg {
        Algorithm::Md5 => feed(Md5::new(), parts),
        Algorithm::Sha256 => feed(Sha256::new(), parts),
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0x0f) as usize] as char);
    }
    s
}

/// hex(H(user:realm:password)). Stored credentials are usually this value, so a leaked user table does
/// not reveal passwords directly.
pub fn ha1(alg: Algorithm, user: &[u8], realm: &[u8], password: &[u8]) -> String {
    hash_hex(alg, &[user, realm, password])
}

/// hex(KD(HA1, nonce:nc:cnonce:qop:HA2)) with qop=auth, or hex(KD(HA1, nonce:HA2)) when qop is None
/// (RFC 2069 compat). HA2 = H(method:digest-uri), KD(s, d) = H(s:d).
/// A missing nc or cnonce alongside a qop is hashed as empty: the result then cannot match what a
/// correct client sent, which is the right outcome for a malformed request (and `verify` refuses it
/// outright).
#[allow(clippy::too_many_arguments)] // the signature is the shared contract; the digest inputs are just this many
pub fn response(
    alg: Algorithm,
    ha1_hex: &[u8],
    method: &[u8],
    digest_uri: &[u8],
    nonce: &[u8],
    nc: Option<&[u8]>,
    cnonce: Option<&[u8]>,
    qop: Option<&[u8]>,
) -> String {
    let ha2 = hash_hex(alg, &[method, digest_uri]);
    match qop {
        Some(q) => hash_hex(alg, &[ha1_hex, nonce, nc.unwrap_or(b""), cnonce.unwrap_or(b""), q, ha2.as_bytes()]),
        None => hash_hex(alg, &[ha1_hex, nonce, ha2.as_bytes()]),
    }
}

/// Constant-time comparison of the expected and the given response (hex, case-insensitive).
/// Refuses qop values other than "auth" (we cannot compute auth-int) and qop without nc/cnonce.
#[allow(clippy::too_many_arguments)] // shared contract signature
pub fn verify(
    alg: Algorithm,
    ha1_hex: &[u8],
    method: &[u8],
    digest_uri: &[u8],
    nonce: &[u8],
    nc: Option<&[u8]>,
    cnonce: Option<&[u8]>,
    qop: Option<&[u8]>,
    given_response: &[u8],
) -> bool {
    if let Some(q) = qop {
        if !q.eq_ignore_ascii_case(b"auth") || nc.is_none() || cnonce.is_none() {
            return false;
        }
    }
    let expected = response(alg, ha1_hex, method, digest_uri, nonce, nc, cnonce, qop);
    ct_eq_hex(expected.as_bytes(), given_response)
}

/// `expected` is lower-case hex. The length is public (it depends only on the algorithm), so an early
/// return on length leaks nothing; the byte comparison itself does not short-circuit.
fn ct_eq_hex(expected: &[u8], given: &[u8]) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    let mut diff = 0u8;
    for (e, g) in expected.iter().zip(given) {
        diff |= e ^ g.to_ascii_lowercase();
    }
    diff == 0
}

/// "nc" is exactly 8 hex digits (RFC 2617 §3.2.2, nc-value = 8LHEX). Anything else is malformed.
pub fn parse_nc(b: &[u8]) -> Option<u32> {
    if b.len() != 8 {
        return None;
    }
    let mut v: u32 = 0;
    for &c in b {
        let d = (c as char).to_digit(16)?;
        v = (v << 4) | d;
    }
    Some(v)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    /// Ours, unexpired, and the nc advanced: accept (if the response verified).
    Fresh,
    /// Ours but expired, forgotten (evicted, restart) or from another core: re-challenge with stale=true.
    Stale,
    /// Not ours (bad encoding or bad MAC): plain re-challenge.
    Invalid,
    /// nc not increasing, or a qop-less nonce used twice: reject.
    Replay,
}

/// Nonce layout before encoding: issued_at (u64 BE) | counter (u32 BE) | core (u16 BE) | MAC (16 bytes).
/// 30 bytes encode to exactly 40 base64url characters, no padding; base64url is safe inside a quoted
/// string and as a token.
const BODY_LEN: usize = 8 + 4 + 2;
const MAC_LEN: usize = 16; // 128-bit truncated HMAC-SHA256: forgery needs 2^128 guesses
const RAW_LEN: usize = BODY_LEN + MAC_LEN;
const NONCE_LEN: usize = RAW_LEN / 3 * 4;

/// What we remember about an issued nonce.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// Highest nc accepted so far (0 = none yet; valid nc values start at 1).
    last_nc: u32,
    /// Set once the nonce was accepted at all; a qop-less (RFC 2069) use then blocks every later use,
    /// since without nc we cannot tell a retry from a replay.
    used: bool,
}

/// Issues and tracks nonces for one core. Nonce text = base64url of (issued_at_secs, counter, core) +
/// truncated HMAC-SHA256(secret) over them: self-authenticating. Tracks the highest nc seen per nonce in
/// a bounded table (capacity; oldest evicted first; an evicted or unknown but authentic, unexpired nonce
/// checks as Stale).
///
/// Call `check` only after `verify` succeeded (use `peek` before, if needed): otherwise anybody who saw a
/// nonce could send a bogus request with a huge nc and make the real client's next nc look like a replay.
pub struct NonceKeeper {
    /// Keyed HMAC state, cloned per use so the key schedule runs once.
    mac: Hmac<Sha256>,
    core: u16,
    ttl_secs: u64,
    capacity: usize,
    /// Distinguishes nonces issued in the same second. Seeded randomly so that a restart with the same
    /// secret cannot re-issue (and so re-open the nc history of) a nonce from before the restart.
    counter: u32,
    table: HashMap<(u64, u32), Slot>,
    /// Keys in issue order, for oldest-first eviction. Holds exactly the keys of `table`.
    order: VecDeque<(u64, u32)>,
}

impl NonceKeeper {
    /// `ttl_secs` and `capacity` are raised to at least 1: a zero would make every nonce stale at once
    /// and clients would loop on challenges.
    pub fn new(secret: [u8; 32], core: u16, ttl_secs: u64, capacity: usize) -> NonceKeeper {
        // HMAC pads short keys with zeros to the block size (RFC 2104 §2), so this is HMAC keyed with
        // `secret`; building the 64-byte block ourselves avoids a fallible constructor.
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&secret);
        let mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&key.into());
        let mut seed = [0u8; 4];
        // No entropy is not fatal: the counter only has to differ across restarts within one second.
        let counter = match getrandom::getrandom(&mut seed) {
            Ok(()) => u32::from_be_bytes(seed),
            Err(_) => 0,
        };
        NonceKeeper {
            mac,
            core,
            ttl_secs: ttl_secs.max(1),
            capacity: capacity.max(1),
            counter,
            table: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn tag(&self, body: &[u8]) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(body);
        m.finalize().into_bytes().into()
    }

    fn expired(&self, issued_at: u64, now_secs: u64) -> bool {
        // saturating: a clock that stepped back makes a nonce look young, never a panic.
        now_secs.saturating_sub(issued_at) >= self.ttl_secs
    }

    pub fn issue(&mut self, now_secs: u64) -> String {
        // Drop expired nonces from the old end first so that live ones are not evicted needlessly.
        while let Some(&(t, c)) = self.order.front() {
            if !self.expired(t, now_secs) && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            self.table.remove(&(t, c));
        }
        let counter = self.counter;
        self.counter = self.counter.wrapping_add(1);
        let mut raw = [0u8; RAW_LEN];
        raw[0..8].copy_from_slice(&now_secs.to_be_bytes());
        raw[8..12].copy_from_slice(&counter.to_be_bytes());
        raw[12..14].copy_from_slice(&self.core.to_be_bytes());
        let tag = self.tag(&raw[..BODY_LEN]);
        raw[BODY_LEN..].copy_from_slice(&tag[..MAC_LEN]);
        let key = (now_secs, counter);
        self.table.insert(key, Slot { last_nc: 0, used: false });
        self.order.push_back(key);
        b64url_encode(&raw)
    }

    /// Decodes and authenticates; Err is the verdict when the nonce is not usable.
    fn classify(&self, nonce: &[u8], now_secs: u64) -> Result<(u64, u32), NonceCheck> {
        let raw = b64url_decode(nonce).ok_or(NonceCheck::Invalid)?;
        let tag = self.tag(&raw[..BODY_LEN]);
        if !ct_eq_bytes(&tag[..MAC_LEN], &raw[BODY_LEN..]) {
            return Err(NonceCheck::Invalid);
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&raw[0..8]);
        let mut c = [0u8; 4];
        c.copy_from_slice(&raw[8..12]);
        let core = u16::from_be_bytes([raw[12], raw[13]]);
        let key = (u64::from_be_bytes(t), u32::from_be_bytes(c));
        // Another core's nonce (shared secret) is authentic but untracked here: stale, not forged.
        if core != self.core || self.expired(key.0, now_secs) {
            return Err(NonceCheck::Stale);
        }
        Ok(key)
    }

    fn judge(slot: &Slot, nc: Option<u32>) -> NonceCheck {
        match nc {
            Some(n) if n > slot.last_nc && !(slot.used && slot.last_nc == 0) => NonceCheck::Fresh,
            None if !slot.used => NonceCheck::Fresh,
            _ => NonceCheck::Replay,
        }
    }

    /// Same verdict as `check` without recording anything: lets the caller pick stale/invalid challenges
    /// before spending a hash on `verify`, and commit with `check` only once the response verified.
    pub fn peek(&self, nonce: &[u8], nc: Option<u32>, now_secs: u64) -> NonceCheck {
        match self.classify(nonce, now_secs) {
            Err(v) => v,
            Ok(key) => match self.table.get(&key) {
                None => NonceCheck::Stale,
                Some(slot) => Self::judge(slot, nc),
            },
        }
    }

    /// nc: the parsed nc value (8 hex digits in the request; caller parses; None when the client sent no
    /// qop). Accepts nc strictly greater than the last one seen for this nonce (baresip reuses nonces with
    /// nc 2, 3, ...). Without qop (nc None) a nonce may be used once.
    pub fn check(&mut self, nonce: &[u8], nc: Option<u32>, now_secs: u64) -> NonceCheck {
        let key = match self.classify(nonce, now_secs) {
            Err(v) => return v,
            Ok(k) => k,
        };
        let Some(slot) = self.table.get_mut(&key) else {
            return NonceCheck::Stale;
        };
        let verdict = Self::judge(slot, nc);
        if verdict == NonceCheck::Fresh {
            slot.used = true;
            // A qop-less use leaves last_nc at 0 with used=true, which `judge` reads as "spent".
            slot.last_nc = nc.unwrap_or(0);
        }
        verdict
    }

    /// Number of tracked nonces (never above capacity).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

fn ct_eq_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Fixed-size encoder: RAW_LEN is a multiple of 3, so there is never padding.
fn b64url_encode(raw: &[u8; RAW_LEN]) -> String {
    let mut s = String::with_capacity(NONCE_LEN);
    for ch in raw.chunks_exact(3) {
        let v = (u32::from(ch[0]) << 16) | (u32::from(ch[1]) << 8) | u32::from(ch[2]);
        for shift in [18u32, 12, 6, 0] {
            s.push(B64URL[((v >> shift) & 0x3f) as usize] as char);
        }
    }
    s
}

/// Strict decoder for exactly our nonce length; any other input is not one of ours.
fn b64url_decode(s: &[u8]) -> Option<[u8; RAW_LEN]> {
    if s.len() != NONCE_LEN {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    };
    let mut out = [0u8; RAW_LEN];
    for (i, quad) in s.chunks_exact(4).enumerate() {
        let mut v = 0u32;
        for &c in quad {
            v = (v << 6) | val(c)?;
        }
        out[i * 3] = (v >> 16) as u8;
        out[i * 3 + 1] = (v >> 8) as u8;
        out[i * 3 + 2] = v as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 2617 §3.5: the digest-uri is "/dir/index.html", method GET, qop=auth.
    #[test]
    fn rfc2617_md5_vector() {
        let h1 = ha1(Algorithm::Md5, b"Mufasa", b"testrealm@host.com", b"Circle Of Life");
        let r = response(
            Algorithm::Md5,
            h1.as_bytes(),
            b"GET",
            b"/dir/index.html",
            b"dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(b"00000001"),
            Some(b"0a4f113b"),
            Some(b"auth"),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
        assert!(verify(
            Algorithm::Md5,
            h1.as_bytes(),
            b"GET",
            b"/dir/index.html",
            b"dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(b"00000001"),
            Some(b"0a4f113b"),
            Some(b"auth"),
            b"6629FAE49393A05397450978507C4EF1",
        ));
    }

    const R7616_NONCE: &[u8] = b"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const R7616_CNONCE: &[u8] = b"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    fn r7616(alg: Algorithm) -> String {
        let h1 = ha1(alg, b"Mufasa", b"http-auth@example.org", b"Circle of Life");
        response(
            alg,
            h1.as_bytes(),
            b"GET",
            b"/dir/index.html",
            R7616_NONCE,
            Some(b"00000001"),
            Some(R7616_CNONCE),
            Some(b"auth"),
        )
    }

    #[test]
    fn rfc7616_md5_vector() {
        assert_eq!(r7616(Algorithm::Md5), "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn rfc7616_sha256_vector() {
        assert_eq!(r7616(Algorithm::Sha256), "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1");
        let h1 = ha1(Algorithm::Sha256, b"Mufasa", b"http-auth@example.org", b"Circle of Life");
        let args = |resp: &[u8]| {
            verify(
                Algorithm::Sha256,
                h1.as_bytes(),
                b"GET",
                b"/dir/index.html",
                R7616_NONCE,
                Some(b"00000001"),
                Some(R7616_CNONCE),
                Some(b"auth"),
                resp,
            )
        };
        assert!(args(b"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"));
        assert!(!args(b"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c0"));
        assert!(!args(b"753927fa"));
        assert!(!args(b""));
    }

    #[test]
    fn verify_refuses_auth_int_and_missing_fields() {
        let h1 = ha1(Algorithm::Md5, b"u", b"r", b"p");
        let good = response(
            Algorithm::Md5,
            h1.as_bytes(),
            b"REGISTER",
            b"sip:r",
            b"n",
            Some(b"00000001"),
            Some(b"c"),
            Some(b"auth-int"),
        );
        assert!(!verify(
            Algorithm::Md5,
            h1.as_bytes(),
            b"REGISTER",
            b"sip:r",
            b"n",
            Some(b"00000001"),
            Some(b"c"),
            Some(b"auth-int"),
            good.as_bytes()
        ));
        let r = response(Algorithm::Md5, h1.as_bytes(), b"REGISTER", b"sip:r", b"n", None, Some(b"c"), Some(b"auth"));
        assert!(!verify(
            Algorithm::Md5,
            h1.as_bytes(),
            b"REGISTER",
            b"sip:r",
            b"n",
            None,
            Some(b"c"),
            Some(b"auth"),
            r.as_bytes()
        ));
    }

    #[test]
    fn rfc2069_no_qop() {
        let h1 = ha1(Algorithm::Md5, b"u", b"r", b"p");
        let ha2 = hash_hex(Algorithm::Md5, &[b"REGISTER", b"sip:r"]);
        let want = hash_hex(Algorithm::Md5, &[h1.as_bytes(), b"n", ha2.as_bytes()]);
        let got = response(Algorithm::Md5, h1.as_bytes(), b"REGISTER", b"sip:r", b"n", None, None, None);
        assert_eq!(got, want);
        assert!(verify(Algorithm::Md5, h1.as_bytes(), b"REGISTER", b"sip:r", b"n", None, None, None, got.as_bytes()));
    }

    #[test]
    fn algorithm_parse() {
        assert_eq!(Algorithm::parse(b"md5"), Some(Algorithm::Md5));
        assert_eq!(Algorithm::parse(b"SHA-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::parse(b"sha-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::parse(b"MD5-sess"), None);
        assert_eq!(Algorithm::parse(b""), None);
        assert_eq!(Algorithm::Sha256.as_str(), "SHA-256");
        assert_eq!(Algorithm::Md5.as_str(), "MD5");
    }

    #[test]
    fn nc_parsing() {
        assert_eq!(parse_nc(b"00000001"), Some(1));
        assert_eq!(parse_nc(b"0000000a"), Some(10));
        assert_eq!(parse_nc(b"FFFFFFFF"), Some(u32::MAX));
        assert_eq!(parse_nc(b"0000001"), None);
        assert_eq!(parse_nc(b"000000001"), None);
        assert_eq!(parse_nc(b"0000000g"), None);
        assert_eq!(parse_nc(b"+0000001"), None);
        assert_eq!(parse_nc("0000000é".as_bytes()), None);
    }

    fn keeper() -> NonceKeeper {
        NonceKeeper::new([7u8; 32], 3, 300, 4)
    }

    #[test]
    fn nonce_shape() {
        let mut k = keeper();
        let n = k.issue(1000);
        assert_eq!(n.len(), NONCE_LEN);
        assert!(n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(n, k.issue(1000));
    }

    #[test]
    fn nc_must_increase_baresip_style() {
        let mut k = keeper();
        let n = k.issue(1000);
        assert_eq!(k.peek(n.as_bytes(), Some(1), 1001), NonceCheck::Fresh);
        assert_eq!(k.check(n.as_bytes(), Some(1), 1001), NonceCheck::Fresh);
        assert_eq!(k.check(n.as_bytes(), Some(1), 1002), NonceCheck::Replay);
        assert_eq!(k.check(n.as_bytes(), Some(2), 1002), NonceCheck::Fresh);
        assert_eq!(k.check(n.as_bytes(), Some(3), 1003), NonceCheck::Fresh);
        assert_eq!(k.check(n.as_bytes(), Some(2), 1003), NonceCheck::Replay);
        assert_eq!(k.peek(n.as_bytes(), Some(3), 1003), NonceCheck::Replay);
        // gaps are fine (a request may have been lost)
        assert_eq!(k.check(n.as_bytes(), Some(9), 1003), NonceCheck::Fresh);
        // a qop-less use after qop uses is a replay
        assert_eq!(k.check(n.as_bytes(), None, 1003), NonceCheck::Replay);
    }

    #[test]
    fn nc_zero_is_never_fresh() {
        let mut k = keeper();
        let n = k.issue(1000);
        assert_eq!(k.check(n.as_bytes(), Some(0), 1000), NonceCheck::Replay);
        assert_eq!(k.check(n.as_bytes(), Some(1), 1000), NonceCheck::Fresh);
    }

    #[test]
    fn no_qop_nonce_is_single_use() {
        let mut k = keeper();
        let n = k.issue(1000);
        assert_eq!(k.check(n.as_bytes(), None, 1000), NonceCheck::Fresh);
        assert_eq!(k.check(n.as_bytes(), None, 1000), NonceCheck::Replay);
        assert_eq!(k.check(n.as_bytes(), Some(1), 1000), NonceCheck::Replay);
        assert_eq!(k.check(n.as_bytes(), Some(5), 1000), NonceCheck::Replay);
    }

    #[test]
    fn expiry_is_stale() {
        let mut k = keeper();
        let n = k.issue(1000);
        assert_eq!(k.check(n.as_bytes(), Some(1), 1299), NonceCheck::Fresh);
        assert_eq!(k.check(n.as_bytes(), Some(2), 1300), NonceCheck::Stale);
        // clock stepped back: authentic and tracked, still usable
        let m = k.issue(2000);
        assert_eq!(k.check(m.as_bytes(), Some(1), 1990), NonceCheck::Fresh);
    }

    #[test]
    fn forgery_is_invalid() {
        let mut k = keeper();
        let n = k.issue(1000);
        let mut b = n.clone().into_bytes();
        // flip one character of the issued_at part
        b[0] = if b[0] == b'A' { b'B' } else { b'A' };
        assert_eq!(k.check(&b, Some(1), 1000), NonceCheck::Invalid);
        let mut b = n.clone().into_bytes();
        let last = b.len() - 1;
        b[last] = if b[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(k.check(&b, Some(1), 1000), NonceCheck::Invalid);
        assert_eq!(k.check(b"", Some(1), 1000), NonceCheck::Invalid);
        assert_eq!(k.check(R7616_NONCE, Some(1), 1000), NonceCheck::Invalid);
        assert_eq!(k.check(&[0xff; NONCE_LEN], Some(1), 1000), NonceCheck::Invalid);
        assert_eq!(k.check(&n.as_bytes()[..NONCE_LEN - 1], Some(1), 1000), NonceCheck::Invalid);
        // a nonce from a keeper with another secret
        let mut other = NonceKeeper::new([8u8; 32], 3, 300, 4);
        let o = other.issue(1000);
        assert_eq!(k.check(o.as_bytes(), Some(1), 1000), NonceCheck::Invalid);
        // the genuine one still works
        assert_eq!(k.check(n.as_bytes(), Some(1), 1000), NonceCheck::Fresh);
    }

    #[test]
    fn eviction_and_unknown_authentic_are_stale() {
        let mut k = keeper(); // capacity 4
        let first = k.issue(1000);
        for _ in 0..4 {
            k.issue(1001);
        }
        assert_eq!(k.len(), 4);
        assert_eq!(k.check(first.as_bytes(), Some(1), 1002), NonceCheck::Stale);
        // restart with the same secret: authentic but untracked
        let mut k2 = keeper();
        let n = k.issue(1003);
        assert_eq!(k2.check(n.as_bytes(), Some(1), 1003), NonceCheck::Stale);
        // same secret, another core: stale, not forged
        let mut k3 = NonceKeeper::new([7u8; 32], 4, 300, 4);
        assert_eq!(k3.check(n.as_bytes(), Some(1), 1003), NonceCheck::Stale);
    }

    #[test]
    fn expired_entries_are_purged_on_issue() {
        let mut k = keeper();
        k.issue(1000);
        k.issue(1000);
        assert_eq!(k.len(), 2);
        k.issue(1400);
        assert_eq!(k.len(), 1);
        assert!(!k.is_empty());
    }

    #[test]
    fn zero_capacity_and_ttl_are_clamped() {
        let mut k = NonceKeeper::new([1u8; 32], 0, 0, 0);
        let n = k.issue(5);
        assert_eq!(k.len(), 1);
        assert_eq!(k.check(n.as_bytes(), Some(1), 5), NonceCheck::Fresh);
        assert_eq!(k.check(n.as_bytes(), Some(2), 6), NonceCheck::Stale);
    }

    #[test]
    fn b64_roundtrip() {
        let mut raw = [0u8; RAW_LEN];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(200);
        }
        let s = b64url_encode(&raw);
        assert_eq!(b64url_decode(s.as_bytes()), Some(raw));
    }
}
