//! Discovery (`[edge.federation] discovery = true`): organizations in no table entry, found and checked by DNS.
//!
//! Outbound, a request for a domain no entry routes goes to the edge its `_sipfederationtls._tcp` SRV record
//! names; the connector looks the record up and requires each target's certificate to carry that target's name
//! (`crate::net::connector`). Inbound, a peer on no list may speak for a domain only when its certificate names
//! one of that domain's SRV targets, as DNS says, not as the peer says (RFC 5922 identity against DNS). Until the
//! answer is in, the peer's requests for that domain wait here (bounded); the shell does the lookup
//! ([`Action::Discover`]) and hands the targets back ([`EdgeCore::discovery_answer`]), which replays them.
//!
//! Discovered peers are limited as unknown peers are (`unknown_rate`, 20/s by default with discovery, then 503
//! with Retry-After, [`super::limits`]). Verdicts are kept for [`VERDICT_TTL`] per core (the resolver caches by the
//! record's TTL underneath), at most [`DOMAINS_MAX`] domains.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::super::core::{Action, ConnInfo, EdgeCore};
use crate::net::{ConnId, ConnKind};
use crate::sip::Message;

/// How long a domain's SRV targets (or their absence) are trusted before being looked up again.
pub const VERDICT_TTL: Duration = Duration::from_secs(30);
/// Domains with a verdict or a lookup in progress, per core.
pub const DOMAINS_MAX: usize = 4096;
/// Requests waiting for one domain's lookup.
pub const HELD_PER_DOMAIN_MAX: usize = 32;

struct Held {
    conn: ConnId,
    kind: ConnKind,
    peer: SocketAddr,
    names: Vec<String>,
    msg: Message,
}

enum Verdict {
    /// The SRV targets' names (lowercase).
    Targets(Vec<String>),
    /// No usable record; the reason.
    None(String),
}

#[derive(Default)]
pub struct Discovery {
    verdicts: HashMap<String, (Verdict, Instant)>,
    pending: HashMap<String, Vec<Held>>,
    /// The domain each connection of this core spoke for as a discovered peer (for the watch's failure count).
    conn_domain: HashMap<ConnId, String>,
}

/// What the verdicts say about a peer speaking for a domain.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    Admitted,
    Refused(String),
    /// Not known yet: look it up.
    Unknown,
}

impl Discovery {
    /// Whether a peer with certificate `names` may speak for `domain`, by the verdict in force.
    pub fn check(&mut self, domain: &str, names: &[String], now: Instant) -> Check {
        let Some((verdict, until)) = self.verdicts.get(domain) else { return Check::Unknown };
        if now >= *until {
            self.verdicts.remove(domain);
            return Check::Unknown;
        }
        match verdict {
            Verdict::Targets(t) if t.iter().any(|t| crate::net::identity::matches(names, t)) => Check::Admitted,
            Verdict::Targets(t) => Check::Refused(format!(
                "its certificate names {names:?}, none of the _sipfederationtls._tcp.{domain} SRV targets {t:?}"
            )),
            Verdict::None(why) => Check::Refused(format!("{domain} publishes no federation SRV record ({why})")),
        }
    }

    fn record(&mut self, domain: &str, verdict: Verdict, now: Instant) {
        if self.verdicts.len() >= DOMAINS_MAX {
            self.verdicts.retain(|_, (_, until)| now < *until);
            if self.verdicts.len() >= DOMAINS_MAX {
                return;
            }
        }
        self.verdicts.insert(domain.to_string(), (verdict, now + VERDICT_TTL));
    }
}

impl EdgeCore {
    /// A request from a peer on no list, From `domain`, with discovery on: on, refused (403, counted), or held
    /// until the domain's SRV record is known. True when it may go on now.
    pub(in crate::edge) fn discovered_may_send(
        &mut self,
        conn: &ConnInfo<'_>,
        msg: &Message,
        domain: &str,
        now: Instant,
    ) -> bool {
        match self.discovery.check(domain, conn.names, now) {
            Check::Admitted => self.watched_may_send(conn, msg, domain, now),
            Check::Refused(why) => {
                crate::net::conn::bump(&self.estats.federation_spoofed_from);
                tracing::warn!(peer = %conn.peer, %domain, %why, "discovered peer refused");
                self.out.reply(conn.id, msg, 403, "Forbidden: certificate does not match the domain's SRV target");
                false
            }
            Check::Unknown => {
                let d = &mut self.discovery;
                let first = !d.pending.contains_key(domain);
                let room = d.pending.len() < DOMAINS_MAX
                    && d.pending.get(domain).is_none_or(|h| h.len() < HELD_PER_DOMAIN_MAX);
                if !room {
                    self.out.reply(conn.id, msg, 503, "Service Unavailable: discovery in progress");
                    return false;
                }
                let held = Held {
                    conn: conn.id,
                    kind: conn.kind,
                    peer: conn.peer,
                    names: conn.names.to_vec(),
                    msg: msg.clone(),
                };
                d.pending.entry(domain.to_string()).or_default().push(held);
                if first {
                    self.out.push(Action::Discover { domain: domain.to_string() });
                }
                false
            }
        }
    }

    /// The watch's say on an admitted discovered request (watch list, strict rate): true when it may go on.
    fn watched_may_send(&mut self, conn: &ConnInfo<'_>, msg: &Message, domain: &str, now: Instant) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        msg.to().uri.user.unwrap_or_default().hash(&mut h);
        msg.to().uri.host.hash(&mut h);
        let verdict = super::watch::with(|w| w.request(domain, h.finish(), now));
        if self.discovery.conn_domain.len() < DOMAINS_MAX || self.discovery.conn_domain.contains_key(&conn.id) {
            self.discovery.conn_domain.insert(conn.id, domain.to_string());
        }
        match verdict {
            super::watch::Verdict::Pass => true,
            super::watch::Verdict::NowWatched => {
                crate::net::conn::bump(&self.estats.federation_discovered_watched);
                tracing::warn!(%domain, users = super::watch::USERS_WATCH,
                    "discovered domain on the watch list: more distinct local users within an hour than allowed; \
                     `parapet partner promote` or `partner block` it");
                true
            }
            super::watch::Verdict::Strict => {
                crate::net::conn::bump(&self.estats.federation_discovered_strict);
                let extra: &[(crate::sip::HeaderName, &[u8])] = &[(crate::sip::HeaderName::RetryAfter, b"1")];
                self.out.reply_with(conn.id, msg, 503, "Service Unavailable: most requests of this domain fail", extra);
                false
            }
        }
    }

    /// A final response of ours to a request that came on `conn`: counted for its discovered domain, if any.
    pub(in crate::edge) fn discovered_answered(&mut self, conn: ConnId, status: u16, now: Instant) {
        if let Some(d) = self.discovery.conn_domain.get(&conn) {
            super::watch::with(|w| w.answered(d, status >= 400, now));
        }
    }

    /// A connection is gone.
    pub(in crate::edge) fn discovered_closed(&mut self, conn: ConnId) {
        self.discovery.conn_domain.remove(&conn);
    }

    /// The shell's answer for `domain`: its SRV targets' names, or why there are none. Replays what waited.
    pub fn discovery_answer(&mut self, domain: &str, targets: Result<Vec<String>, String>, now: Instant) {
        let verdict = match targets {
            Ok(t) if !t.is_empty() => Verdict::Targets(t),
            Ok(_) => Verdict::None("no target".into()),
            Err(e) => Verdict::None(e),
        };
        self.discovery.record(domain, verdict, now);
        for h in self.discovery.pending.remove(domain).unwrap_or_default() {
            let info = ConnInfo { id: h.conn, kind: h.kind, peer: h.peer, names: &h.names };
            self.from_partner_checked(&info, &h.msg, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn verdicts_by_srv_target_and_expiry() {
        let t0 = Instant::now();
        let mut d = Discovery::default();
        assert_eq!(d.check("third.test", &names(&["edge.third.test"]), t0), Check::Unknown);
        d.record("third.test", Verdict::Targets(names(&["edge.third.test"])), t0);
        assert_eq!(d.check("third.test", &names(&["third.test", "EDGE.third.test"]), t0), Check::Admitted);
        // A certificate of another organization, however trusted its CA: not the target DNS names.
        assert!(matches!(d.check("third.test", &names(&["edge.partner.test", "third.test"]), t0), Check::Refused(_)));
        d.record("nosrv.test", Verdict::None("NXDOMAIN".into()), t0);
        assert!(matches!(d.check("nosrv.test", &names(&["nosrv.test"]), t0), Check::Refused(_)));
        assert_eq!(d.check("third.test", &names(&["edge.third.test"]), t0 + VERDICT_TTL), Check::Unknown);
    }
}
