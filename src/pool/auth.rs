//! Digest authentication of requests (RFC 3261 §22, RFC 7616, RFC 8760): REGISTER is challenged with 401, every
//! other request with 407. Runs on the core owning the authenticating user, where its nonces live.

use bytes::BytesMut;

use super::digest::{self, Algorithm, NonceCheck};
use super::users::UserRec;
use super::{aor_of, PoolCore};
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::proto::Failure;
use crate::sip::{self, DigestChallenge, HeaderName, Message, Method};

impl PoolCore {
    /// The authenticated user, or None once the request has been answered (challenge or refusal).
    pub(crate) fn authenticate(&mut self, origin: ConnId, msg: &Message) -> Option<UserRec> {
        let register = msg.method() == Some(&Method::Register);
        let (header, claimed) = if register {
            (HeaderName::Authorization, aor_of(&msg.to().uri))
        } else {
            (HeaderName::ProxyAuthorization, aor_of(&msg.from().uri))
        };
        let realm = self.s.realm.as_bytes();
        let creds = msg
            .header_lines(header)
            .filter_map(|v| sip::parse_credentials(v).ok())
            .find(|c| c.realm.eq_ignore_ascii_case(realm));
        let Some(c) = creds else {
            self.challenge(origin, msg, &claimed, false);
            return None;
        };
        let Some(user) = self.dir.view.users.get(c.username) else {
            return self.refuse(origin, msg, Failure::Credentials);
        };
        if user.aor != claimed {
            return self.refuse(origin, msg, Failure::OtherIdentity);
        }
        let alg = match c.algorithm {
            None => Some(Algorithm::Md5),
            Some(a) => Algorithm::parse(a),
        };
        let Some(alg) = alg.filter(|a| self.s.algorithms.contains(a)) else {
            self.challenge(origin, msg, &claimed, false);
            return None;
        };
        let Some(ha1) = user.ha1(alg) else {
            self.challenge(origin, msg, &claimed, false);
            return None;
        };
        let nc = c.nc.and_then(digest::parse_nc);
        let now = self.now.secs;
        // peek before verify, check after: a forged request must not advance the nonce's count.
        // The verdict first, then the answer: a challenge issues a nonce, which needs the table again.
        let peeked = self.nonces.peek(c.nonce, nc, now);
        match peeked {
            NonceCheck::Fresh => {}
            NonceCheck::Invalid => {
                self.challenge(origin, msg, &claimed, false);
                return None;
            }
            NonceCheck::Stale | NonceCheck::Replay => {
                self.challenge(origin, msg, &claimed, true);
                return None;
            }
        }
        let method = msg.method_bytes().unwrap_or(b"");
        if !digest::verify(alg, ha1.as_bytes(), method, c.uri, c.nonce, c.nc, c.cnonce, c.qop, c.response) {
            tracing::info!(user = %user.alias, "digest response does not match: refused");
            return self.refuse(origin, msg, Failure::Credentials);
        }
        let checked = self.nonces.check(c.nonce, nc, now);
        match checked {
            NonceCheck::Fresh => Some(user.clone()),
            _ => {
                self.challenge(origin, msg, &claimed, true);
                None
            }
        }
    }

    /// Refused, the failure typed for the edge (`P-Parapet-Failure`): it counts `Credentials` toward the lockout.
    fn refuse(&mut self, origin: ConnId, msg: &Message, failure: Failure) -> Option<UserRec> {
        bump(&self.pstats.auth_failures);
        self.reply(origin, msg, failure.code(), failure.reason(), &[failure.header()]);
        None
    }

    /// One challenge per algorithm this user can answer, in configured order (RFC 8760 §2.4: preferred first).
    fn challenge(&mut self, origin: ConnId, msg: &Message, claimed: &str, stale: bool) {
        bump(&self.pstats.challenges);
        let register = msg.method() == Some(&Method::Register);
        let user = claimed.split('@').next().map(str::as_bytes).and_then(|a| self.dir.view.users.get(a));
        let nonce = self.nonces.issue(self.now.secs);
        let mut values: Vec<BytesMut> = Vec::with_capacity(self.s.algorithms.len());
        for alg in &self.s.algorithms {
            if user.is_some_and(|u| u.ha1(*alg).is_none()) {
                continue;
            }
            let mut v = BytesMut::with_capacity(160);
            sip::write_challenge(
                &mut v,
                &DigestChallenge {
                    realm: self.s.realm.as_bytes(),
                    nonce: nonce.as_bytes(),
                    opaque: None,
                    algorithm: Some(alg.as_str().as_bytes()),
                    qop: Some(b"auth"),
                    stale,
                },
            );
            values.push(v);
        }
        let name = if register { HeaderName::WwwAuthenticate } else { HeaderName::ProxyAuthenticate };
        let extra: Vec<(HeaderName, &[u8])> = values.iter().map(|v| (name, &v[..])).collect();
        if register {
            self.reply(origin, msg, 401, "Unauthorized", &extra);
        } else {
            self.reply(origin, msg, 407, "Proxy Authentication Required", &extra);
        }
    }
}
