//! Per-peer limits of federation, shared by every core: a message rate (token bucket) and a connection cap for
//! each federation peer.
//!
//! A peer's connections land on any core (SO_REUSEPORT), and a partner edge opens one per core of its own, so a
//! per-core bucket would give a peer `cores` times its rate. Instead the [`Limiter`] (built with the table, an
//! `Arc` every core holds) keeps one [`PeerState`] per peer identity: a listed peer (partner or clearinghouse) by
//! certificate name, an unknown peer by a hash of its certificate names into a fixed array of slots (two unknown
//! peers colliding share a bucket: a bounded table, and strictly more limiting, never less).
//!
//! The bucket is GCRA (the virtual-scheduling form of a token bucket): one `AtomicU64` holds the theoretical
//! arrival time on a monotonic clock, moved by compare-and-swap, so taking a token is lock-free and
//! allocation-free. The connection count is an atomic taken at admission (after the handshake) and given back
//! by the [`ConnSlot`] the listener holds while the connection lives, so it is returned to the very state it was
//! taken from, whatever reloads happened in between.
//!
//! A reload builds a new limiter but keeps the states of peers still listed (by name) and the unknown slots,
//! with their new limits: a reload neither refills nor empties a bucket, nor forgets a connection.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::super::core::{Action, ConnInfo, EdgeCore};
use crate::config::{FederationConfig, PeerLimits};
use crate::net::conn::bump;
use crate::net::ConnKind;
use crate::sip::{HeaderName, Message};

/// Slots for unknown peers' states (each 64 bytes).
const UNKNOWN_SLOTS: usize = 1024;
/// At most one log line per peer per this many milliseconds about its refusals.
const LOG_INTERVAL_MS: u64 = 10_000;
/// A peer over its rate is not read for the time until its next token, but at least this long (so that a flood
/// costs one refusal per pause, not one per token) ...
const PAUSE_MIN: std::time::Duration = std::time::Duration::from_millis(50);
/// ... and at most this long (a slow rate's interval is long; its connection must not look dead).
const PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// Retry-After is never more than this (seconds): a peer retrying later than that needs no hint from us.
const RETRY_AFTER_MAX_S: u64 = 3600;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// `at` in nanoseconds on the monotonic clock every core shares (since its first reading; 0 before it): how time
/// given to the logic as an `Instant` reads against the buckets of every core.
pub fn ns_at(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH.get_or_init(Instant::now)).as_nanos() as u64
}

/// One peer's live state, touched by every core its connections land on. Aligned to a cache line so that two
/// peers' counters never share one.
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct PeerState {
    /// GCRA's theoretical arrival time (ns, [`now_ns`]): the bucket is full when it is at or before now; each
    /// request moves it one interval later; a request is refused when that would take it past now + tolerance.
    tat_ns: AtomicU64,
    /// 1 s / rate.
    interval_ns: AtomicU64,
    /// (burst - 1) intervals: how far ahead of now the arrival time may run.
    tolerance_ns: AtomicU64,
    /// Requests refused over the rate, since start.
    refused: AtomicU64,
    /// Refusals over the rate, logged at most every [`LOG_INTERVAL_MS`].
    refused_log: LogThrottle,
    /// Connections from the peer now (0 <= connections <= connections_max, except after a reload lowered it).
    connections: AtomicU32,
    connections_max: AtomicU32,
    /// Connections refused at the cap, logged at most every [`LOG_INTERVAL_MS`].
    capped_log: LogThrottle,
    /// Requests let through by the rate, and connections refused at the cap, since start (for `/metrics`).
    requests: AtomicU64,
    capped: AtomicU64,
}

/// Lets one log line through per [`LOG_INTERVAL_MS`], whichever core asks.
#[derive(Debug, Default)]
pub struct LogThrottle {
    /// When a line was last let through (ms, [`now_ns`] / 1e6); 0: never.
    last_ms: AtomicU64,
}

impl LogThrottle {
    pub const fn new() -> LogThrottle {
        LogThrottle { last_ms: AtomicU64::new(0) }
    }

    pub fn ready(&self, now_ns: u64) -> bool {
        let now_ms = (now_ns / 1_000_000).max(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        (last == 0 || now_ms.saturating_sub(last) >= LOG_INTERVAL_MS)
            && self.last_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// A connection counted against its peer's cap; dropping it gives the place back.
pub struct ConnSlot(Arc<PeerState>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PeerState {
    fn new(limits: PeerLimits) -> PeerState {
        let s = PeerState::default();
        s.set_limits(limits);
        s
    }

    fn set_limits(&self, limits: PeerLimits) {
        let interval = 1_000_000_000 / u64::from(limits.rate.max(1));
        self.interval_ns.store(interval.max(1), Ordering::Relaxed);
        self.tolerance_ns.store(interval * u64::from(limits.burst.max(1) - 1), Ordering::Relaxed);
        self.connections_max.store(limits.connections_max, Ordering::Relaxed);
    }

    /// Counts one more connection of this peer unless it is at its cap.
    pub fn connect(self: &Arc<Self>) -> Option<ConnSlot> {
        let max = self.connections_max.load(Ordering::Relaxed);
        self.connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1))
            .map_err(|_| self.capped.fetch_add(1, Ordering::Relaxed))
            .ok()
            .map(|_| ConnSlot(self.clone()))
    }

    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Takes one token at `now_ns`; Err carries how long until one is there (ns).
    pub fn take(&self, now_ns: u64) -> Result<(), u64> {
        let interval = self.interval_ns.load(Ordering::Relaxed);
        let tolerance = self.tolerance_ns.load(Ordering::Relaxed);
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now_ns);
            let ahead = start - now_ns;
            if ahead > tolerance {
                return Err(ahead - tolerance);
            }
            match self.tat_ns.compare_exchange_weak(
                tat,
                start.saturating_add(interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.requests.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(current) => tat = current,
            }
        }
    }

    /// Counts a refusal; true when this one should be logged (at most once per [`LOG_INTERVAL_MS`], any core).
    fn refused_and_log(&self, now_ns: u64) -> bool {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.refused_log.ready(now_ns)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Unknown peers' states: a fixed array indexed by a keyed hash of the peer's certificate names.
struct Strangers {
    hasher: std::collections::hash_map::RandomState,
    slots: Box<[Arc<PeerState>]>,
}

/// Every federation peer's state, for one table. Shared read-only by every core; the states inside are atomic.
pub struct Limiter {
    /// Listed peers by certificate name (a partner's `cert_name`, a clearinghouse's `name`).
    listed: HashMap<String, Arc<PeerState>>,
    strangers: Arc<Strangers>,
}

impl Limiter {
    /// The limiter for `cfg`, keeping the states of `previous` for peers still listed, and its unknown slots.
    pub fn build(cfg: &FederationConfig, previous: Option<&Limiter>) -> Limiter {
        let mut listed = HashMap::with_capacity(cfg.partners.len() + cfg.clearinghouses.len());
        let entries = cfg.partners.iter().map(|p| (&p.cert_name, p.limits));
        let entries = entries.chain(cfg.clearinghouses.iter().map(|c| (&c.name, c.limits)));
        for (name, limits) in entries {
            // A name listed twice (partner and clearinghouse) is one peer: its first entry's limits apply.
            if listed.contains_key(name) {
                continue;
            }
            let state = match previous.and_then(|p| p.listed.get(name)) {
                Some(s) => {
                    s.set_limits(limits);
                    s.clone()
                }
                None => Arc::new(PeerState::new(limits)),
            };
            listed.insert(name.clone(), state);
        }
        let strangers = match previous {
            Some(p) => {
                for s in p.strangers.slots.iter() {
                    s.set_limits(cfg.unknown_limits);
                }
                p.strangers.clone()
            }
            None => Arc::new(Strangers {
                hasher: Default::default(),
                slots: (0..UNKNOWN_SLOTS).map(|_| Arc::new(PeerState::new(cfg.unknown_limits))).collect(),
            }),
        };
        Limiter { listed, strangers }
    }

    /// The state of the peer with these certificate names: the listed entry one of them names, else its
    /// unknown slot.
    pub fn state(&self, names: &[String]) -> &Arc<PeerState> {
        if let Some(s) = names.iter().find_map(|n| self.listed.get(n.as_str())) {
            return s;
        }
        // The sum of the names' hashes: the same peer lands in the same slot whatever the order of its names.
        let h = names.iter().fold(0u64, |acc, n| acc.wrapping_add(self.strangers.hasher.hash_one(n.as_str())));
        let slots = &self.strangers.slots;
        &slots[(h % slots.len() as u64) as usize]
    }
}

impl Limiter {
    /// Per-partner samples for `/metrics` (listed peers by certificate name; unknown peers are not listed one by
    /// one: their number is unbounded).
    pub fn visit_metrics(&self, f: &mut dyn FnMut(crate::mgmt::metrics::Labelled<'_>)) {
        use crate::mgmt::metrics::Labelled;
        let mut names: Vec<&String> = self.listed.keys().collect();
        names.sort();
        for name in names {
            let Some(s) = self.listed.get(name) else { continue };
            let labels = [("partner", name.as_str())];
            for (family, help, gauge, value) in [
                (
                    "parapet_edge_partner_requests_total",
                    "federation: requests a listed peer sent within its rate",
                    false,
                    s.requests.load(Ordering::Relaxed),
                ),
                (
                    "parapet_edge_partner_rate_refused_total",
                    "federation: requests of a listed peer refused over its rate (503)",
                    false,
                    s.refused(),
                ),
                (
                    "parapet_edge_partner_connections",
                    "federation: connections from a listed peer now (a gauge)",
                    true,
                    u64::from(s.connections()),
                ),
                (
                    "parapet_edge_partner_connections_refused_total",
                    "federation: connections of a listed peer refused at its cap",
                    false,
                    s.capped.load(Ordering::Relaxed),
                ),
            ] {
                f(Labelled { family, help, gauge, labels: &labels, value });
            }
        }
    }
}

/// Seconds to announce in Retry-After for a wait of `wait_ns`: rounded up, at least 1.
fn retry_after_s(wait_ns: u64) -> u64 {
    wait_ns.div_ceil(1_000_000_000).clamp(1, RETRY_AFTER_MAX_S)
}

/// `v` in decimal into `buf`, returning the digits (no allocation).
fn decimal(v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// Refusals of certificates the table does not admit, logged at most every [`LOG_INTERVAL_MS`] (such a peer
/// has no state of its own to throttle by).
static NOT_ADMITTED_LOG: LogThrottle = LogThrottle::new();

impl EdgeCore {
    /// A peer after its handshake, on a federation connection of `kind`, by its certificate names: admitted by
    /// the table in force on this core and under its connection cap, it gets the slot the listener holds while
    /// the connection lives; otherwise it is refused (counted, logged at most every 10 s).
    pub fn admit_federation_peer(&self, kind: ConnKind, names: &[String], now: Instant) -> Option<ConnSlot> {
        let now_ns = ns_at(now);
        let admitted = self.fed_table.as_ref().is_some_and(|t| super::admits(t, names));
        let state = match (admitted, self.fed_limits.as_ref()) {
            (true, Some(l)) => l.state(names),
            _ => {
                bump(&self.estats.federation_connections_refused);
                if NOT_ADMITTED_LOG.ready(now_ns) {
                    tracing::warn!(
                        ?kind,
                        ?names,
                        "peer certificate not admitted by the federation table: closing (logged at most every 10 s)"
                    );
                }
                return None;
            }
        };
        let slot = state.connect();
        if slot.is_none() {
            bump(&self.estats.federation_connections_refused);
            if state.capped_log.ready(now_ns) {
                tracing::warn!(
                    ?names,
                    connections = state.connections(),
                    "federation peer at its connection cap: closing its new connection (logged at most every 10 s)"
                );
            }
        }
        slot
    }

    /// A federated peer's request over its rate: answered 503 with Retry-After (RFC 3261 §21.5.4), counted, and
    /// logged at most once per peer per [`LOG_INTERVAL_MS`]. True when refused (it must not go on).
    pub(in crate::edge) fn partner_over_rate(&mut self, conn: &ConnInfo<'_>, msg: &Message, now: Instant) -> bool {
        let Some(limiter) = self.fed_limits.as_ref() else { return false };
        let state = limiter.state(conn.names);
        let now = ns_at(now);
        let Err(wait_ns) = state.take(now) else { return false };
        bump(&self.estats.federation_rate_limited);
        if state.refused_and_log(now) {
            tracing::warn!(peer = %conn.peer, names = ?conn.names, refused_total = state.refused(),
                "federation peer over its message rate: answering 503 (logged at most every 10 s)");
        }
        let mut digits = [0u8; 20];
        let retry = decimal(retry_after_s(wait_ns), &mut digits);
        let extra: &[(HeaderName, &[u8])] = &[(HeaderName::RetryAfter, retry)];
        self.out.reply_with(conn.id, msg, 503, "Service Unavailable: federation rate limit", extra);
        // A peer that keeps sending while told to wait is read no faster than its rate: its next requests wait in
        // TCP, not in a refusal each (what lets one partner's flood leave the core to the others).
        let duration = std::time::Duration::from_nanos(wait_ns).clamp(PAUSE_MIN, PAUSE_MAX);
        self.out.push(Action::PauseReading { conn: conn.id, duration });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Clearinghouse, Partner, UnknownPeers};

    const S: u64 = 1_000_000_000;

    fn state(rate: u32, burst: u32) -> PeerState {
        PeerState::new(PeerLimits { rate, burst, connections_max: 2 })
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let b = state(5, 5);
        let t0 = 10 * S;
        for i in 0..5 {
            assert!(b.take(t0).is_ok(), "token {i} of the burst");
        }
        let wait = b.take(t0).expect_err("burst spent");
        assert_eq!(wait, S / 5, "one interval until the next token");
        assert_eq!(retry_after_s(wait), 1);
        // 1 s later: 5 more tokens, not more (the bucket holds `burst`).
        let t1 = t0 + S;
        for i in 0..5 {
            assert!(b.take(t1).is_ok(), "refilled token {i}");
        }
        assert!(b.take(t1).is_err());
        // A long pause refills to the burst only.
        let t2 = t1 + 60 * S;
        assert_eq!((0..20).filter(|_| b.take(t2).is_ok()).count(), 5);
    }

    #[test]
    fn rate_one_burst_one_waits_a_second() {
        let b = state(1, 1);
        assert!(b.take(S).is_ok());
        let wait = b.take(S).expect_err("one per second");
        assert_eq!(retry_after_s(wait), 1);
        assert!(b.take(S + S / 2).is_err());
        assert!(b.take(2 * S).is_ok());
        assert_eq!(retry_after_s(3 * S + 1), 4, "rounded up");
        assert_eq!(retry_after_s(u64::MAX), RETRY_AFTER_MAX_S);
    }

    #[test]
    fn shared_across_threads_grants_exactly_the_burst() {
        // Four threads race for the same bucket at the same instant: exactly `burst` tokens in all.
        let b = Arc::new(state(1, 1000));
        let now = 5 * S;
        let granted: usize = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let b = b.clone();
                    sc.spawn(move || (0..1000).filter(|_| b.take(now).is_ok()).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        assert_eq!(granted, 1000);
    }

    #[test]
    fn refusals_are_logged_at_most_every_ten_seconds() {
        let b = state(1, 1);
        assert!(b.refused_and_log(S));
        assert!(!b.refused_and_log(2 * S));
        assert!(!b.refused_and_log(10 * S));
        assert!(b.refused_and_log(11 * S + 1));
        assert_eq!(b.refused(), 4);
    }

    fn cfg(partner_rate: u32) -> FederationConfig {
        let a = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let limits = |rate| PeerLimits { rate, burst: rate, connections_max: 2 };
        FederationConfig {
            listen: Some(a),
            ca: "ca.pem".into(),
            partners: vec![Partner {
                domain: "partner.test".into(),
                cert_name: "edge.partner.test".into(),
                addr: Some(crate::config::PeerAddr::Ip(a)),
                limits: limits(partner_rate),
            }],
            clearinghouses: vec![Clearinghouse {
                name: "hub.test".into(),
                addr: crate::config::PeerAddr::Ip(a),
                domains: vec!["*".into()],
                limits: limits(100),
            }],
            blocked_domains: vec![],
            unknown: UnknownPeers::Refuse,
            unknown_limits: limits(1),
            message_bytes_max: 65_535,
            clearinghouse: false,
            dns: Default::default(),
            partners_file: None,
        }
    }

    #[test]
    fn one_state_per_identity_kept_across_rebuilds() {
        let l = Limiter::build(&cfg(2), None);
        let partner = vec!["partner.test".to_string(), "edge.partner.test".to_string()];
        let hub = vec!["hub.test".to_string()];
        assert!(!Arc::ptr_eq(l.state(&partner), l.state(&hub)));
        assert!(Arc::ptr_eq(l.state(&partner), l.state(&["edge.partner.test".to_string()])));
        // Unknown peers: the same names in any order are the same slot.
        let a = vec!["a.test".to_string(), "b.test".to_string()];
        let b = vec!["b.test".to_string(), "a.test".to_string()];
        assert!(Arc::ptr_eq(l.state(&a), l.state(&b)));
        let now = 3 * S;
        assert!(l.state(&partner).take(now).is_ok() && l.state(&partner).take(now).is_ok());
        assert!(l.state(&partner).take(now).is_err(), "rate 2, burst 2");
        // A reload with a higher rate keeps the bucket (no refill) and applies the new interval from there on.
        let l2 = Limiter::build(&cfg(100), Some(&l));
        assert!(Arc::ptr_eq(l.state(&partner), l2.state(&partner)));
        assert!(Arc::ptr_eq(l.state(&a), l2.state(&a)));
        assert!(l2.state(&partner).take(now + S / 50).is_ok());
        // A peer no longer listed gets an unknown slot.
        let mut gone = cfg(2);
        gone.partners.clear();
        let l3 = Limiter::build(&gone, Some(&l2));
        assert!(!Arc::ptr_eq(l2.state(&partner), l3.state(&partner)));
    }

    #[test]
    fn connection_cap_counted_across_threads_and_released_on_drop() {
        let s = Arc::new(PeerState::new(PeerLimits { rate: 1, burst: 1, connections_max: 16 }));
        // Eight threads each try to open 4 connections: 16 in all succeed, however they interleave.
        let slots: Vec<ConnSlot> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let s = s.clone();
                    sc.spawn(move || (0..4).filter_map(|_| s.connect()).collect::<Vec<_>>())
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("thread")).collect()
        });
        assert_eq!(slots.len(), 16);
        assert_eq!(s.connections(), 16);
        assert!(s.connect().is_none(), "at the cap");
        drop(slots);
        assert_eq!(s.connections(), 0, "every slot given back");
        // A reload lowering the cap below the connections open refuses new ones until enough have closed.
        let held: Vec<ConnSlot> = (0..3).filter_map(|_| s.connect()).collect();
        s.set_limits(PeerLimits { rate: 1, burst: 1, connections_max: 2 });
        assert!(s.connect().is_none());
        drop(held);
        assert!(s.connect().is_some());
    }

    #[test]
    fn slots_return_to_the_state_they_came_from_across_reloads() {
        let l = Limiter::build(&cfg(2), None);
        let partner = vec!["edge.partner.test".to_string()];
        let first = l.state(&partner).connect().expect("first");
        let _second = l.state(&partner).connect().expect("second");
        assert!(l.state(&partner).connect().is_none(), "cap 2");
        // Still listed after a reload: the same count, so the cap holds across it.
        let l2 = Limiter::build(&cfg(3), Some(&l));
        assert!(l2.state(&partner).connect().is_none());
        drop(first);
        assert!(l2.state(&partner).connect().is_some());
    }

    #[test]
    fn decimal_digits() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(3600, &mut buf), b"3600");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615");
    }
}
