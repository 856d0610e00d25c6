//! Flood protection for one core: per source address token buckets (new connections, messages), a cap on
//! concurrent connections, failed-authentication lockout, and temporary bans.
//!
//! Connections from one address spread over the cores, so each core judges what it sees. A ban, once decided, is
//! global: the deciding core sends it to every other core by message (no shared table, no lock), and records it
//! for the management API (`/bans`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::FloodConfig;

/// Addresses tracked per core; beyond it, addresses with no connection are forgotten first.
const TRACKED_IPS_MAX: usize = 200_000;

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn full(burst: f64, now: Instant) -> Bucket {
        Bucket { tokens: burst, last: now }
    }
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct IpState {
    connections: u32,
    new_connections: Bucket,
    messages: Bucket,
    strikes: u32,
    auth_failures: u32,
    auth_window_start: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused this time (counted as a strike).
    Refuse,
    /// Refused, and the address is now banned for this reason.
    Ban(&'static str),
}

pub struct Guard {
    cfg: FloodConfig,
    ips: HashMap<IpAddr, IpState>,
    bans: HashMap<IpAddr, Instant>,
}

impl Guard {
    pub fn new(cfg: FloodConfig) -> Guard {
        Guard { cfg, ips: HashMap::new(), bans: HashMap::new() }
    }

    pub fn ban_duration(&self) -> Duration {
        Duration::from_secs(self.cfg.ban_s)
    }

    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.bans.get(&ip).is_some_and(|until| *until > now)
    }

    pub fn ban(&mut self, ip: IpAddr, until: Instant) {
        self.bans.insert(ip, until);
        if let Some(s) = self.ips.get_mut(&ip) {
            s.strikes = 0;
            s.auth_failures = 0;
        }
    }

    fn state(&mut self, ip: IpAddr, now: Instant) -> Option<&mut IpState> {
        if !self.ips.contains_key(&ip) {
            if self.ips.len() >= TRACKED_IPS_MAX {
                self.ips.retain(|_, s| s.connections > 0);
                if self.ips.len() >= TRACKED_IPS_MAX {
                    return None;
                }
            }
            let c = &self.cfg;
            self.ips.insert(
                ip,
                IpState {
                    connections: 0,
                    new_connections: Bucket::full(c.new_connections_per_ip_per_s.max(1.0) * 2.0, now),
                    messages: Bucket::full(c.messages_per_ip_burst, now),
                    strikes: 0,
                    auth_failures: 0,
                    auth_window_start: now,
                },
            );
        }
        self.ips.get_mut(&ip)
    }

    fn strike(&mut self, ip: IpAddr, reason: &'static str) -> Verdict {
        let max = self.cfg.strikes_to_ban;
        match self.ips.get_mut(&ip) {
            Some(s) => {
                s.strikes += 1;
                if s.strikes >= max {
                    Verdict::Ban(reason)
                } else {
                    Verdict::Refuse
                }
            }
            None => Verdict::Refuse,
        }
    }

    /// A new connection from `ip` (before its TLS handshake).
    pub fn admit_connection(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        if self.is_banned(ip, now) {
            return Verdict::Refuse;
        }
        let (rate, max) = (self.cfg.new_connections_per_ip_per_s, self.cfg.connections_per_ip_max);
        let Some(s) = self.state(ip, now) else { return Verdict::Refuse };
        if s.connections >= max {
            return self.strike(ip, "too many concurrent connections");
        }
        if !s.new_connections.take(rate, rate.max(1.0) * 2.0, now) {
            return self.strike(ip, "connection rate");
        }
        s.connections += 1;
        Verdict::Allow
    }

    pub fn connection_closed(&mut self, ip: IpAddr) {
        if let Some(s) = self.ips.get_mut(&ip) {
            s.connections = s.connections.saturating_sub(1);
        }
    }

    /// A message from a registered flow, judged by the flow's own bucket (users behind one NAT address must not
    /// share one budget); going over it still counts against the address.
    pub fn admit_user_message(&mut self, ip: IpAddr, bucket: &mut Bucket, now: Instant) -> Verdict {
        if self.is_banned(ip, now) {
            return Verdict::Refuse;
        }
        if bucket.take(self.cfg.messages_per_user_per_s, self.cfg.messages_per_user_burst, now) {
            return Verdict::Allow;
        }
        if self.state(ip, now).is_none() {
            return Verdict::Refuse;
        }
        self.strike(ip, "message rate of a registered user")
    }

    pub fn user_bucket(&self, now: Instant) -> Bucket {
        Bucket::full(self.cfg.messages_per_user_burst, now)
    }

    /// A message from `ip` on a connection that has not registered.
    pub fn admit_message(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        if self.is_banned(ip, now) {
            return Verdict::Refuse;
        }
        let (rate, burst) = (self.cfg.messages_per_ip_per_s, self.cfg.messages_per_ip_burst);
        let Some(s) = self.state(ip, now) else { return Verdict::Refuse };
        if s.messages.take(rate, burst, now) {
            return Verdict::Allow;
        }
        self.strike(ip, "message rate")
    }

    /// The registrar refused credentials sent from `ip`.
    pub fn auth_failed(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        let (max, window) = (self.cfg.auth_failures_max, Duration::from_secs(self.cfg.auth_failure_window_s));
        let Some(s) = self.state(ip, now) else { return Verdict::Allow };
        if now.saturating_duration_since(s.auth_window_start) > window {
            s.auth_window_start = now;
            s.auth_failures = 0;
        }
        s.auth_failures += 1;
        if s.auth_failures >= max {
            Verdict::Ban("failed authentication")
        } else {
            Verdict::Allow
        }
    }

    /// Forgets expired bans and addresses with nothing left to remember.
    pub fn sweep(&mut self, now: Instant) {
        self.bans.retain(|_, until| *until > now);
        let burst = self.cfg.messages_per_ip_burst;
        self.ips.retain(|_, s| s.connections > 0 || s.strikes > 0 || s.auth_failures > 0 || s.messages.tokens < burst);
    }

    pub fn banned_count(&self) -> usize {
        self.bans.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FloodConfig {
        FloodConfig {
            connections_per_ip_max: 2,
            new_connections_per_ip_per_s: 10.0,
            messages_per_ip_per_s: 10.0,
            messages_per_ip_burst: 5.0,
            messages_per_user_per_s: 10.0,
            messages_per_user_burst: 2.0,
            strikes_to_ban: 3,
            auth_failures_max: 2,
            auth_failure_window_s: 60,
            ban_s: 60,
        }
    }

    #[test]
    fn message_rate_then_ban() {
        let mut g = Guard::new(cfg());
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let t = Instant::now();
        for _ in 0..5 {
            assert_eq!(g.admit_message(ip, t), Verdict::Allow);
        }
        assert_eq!(g.admit_message(ip, t), Verdict::Refuse);
        assert_eq!(g.admit_message(ip, t), Verdict::Refuse);
        assert_eq!(g.admit_message(ip, t), Verdict::Ban("message rate"));
        g.ban(ip, t + Duration::from_secs(60));
        assert!(g.is_banned(ip, t));
        assert_eq!(g.admit_message(ip, t + Duration::from_secs(1)), Verdict::Refuse);
        g.sweep(t + Duration::from_secs(61));
        assert!(!g.is_banned(ip, t + Duration::from_secs(61)));
        // The bucket refilled meanwhile.
        assert_eq!(g.admit_message(ip, t + Duration::from_secs(61)), Verdict::Allow);
    }

    #[test]
    fn concurrent_connections_and_auth_lockout() {
        let mut g = Guard::new(cfg());
        let ip: IpAddr = "10.0.0.2".parse().expect("ip");
        let t = Instant::now();
        assert_eq!(g.admit_connection(ip, t), Verdict::Allow);
        assert_eq!(g.admit_connection(ip, t), Verdict::Allow);
        assert_eq!(g.admit_connection(ip, t), Verdict::Refuse);
        g.connection_closed(ip);
        assert_eq!(g.admit_connection(ip, t), Verdict::Allow);
        assert_eq!(g.auth_failed(ip, t), Verdict::Allow);
        assert_eq!(g.auth_failed(ip, t), Verdict::Ban("failed authentication"));
        // A registered user has its own bucket.
        let mut b = g.user_bucket(t);
        let user_ip: IpAddr = "10.0.0.9".parse().expect("ip");
        assert_eq!(g.admit_user_message(user_ip, &mut b, t), Verdict::Allow);
        assert_eq!(g.admit_user_message(user_ip, &mut b, t), Verdict::Allow);
        assert_eq!(g.admit_user_message(user_ip, &mut b, t), Verdict::Refuse);
        // Another address is unaffected.
        let other: IpAddr = "10.0.0.3".parse().expect("ip");
        assert_eq!(g.admit_message(other, t), Verdict::Allow);
    }
}
