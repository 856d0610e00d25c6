//! IM archiving in the pool core: which MESSAGEs are archived (the `[archive]` policy of their two parties and
//! their direction), the row each becomes, and what happens while the archive cannot be written (`critical`:
//! the MESSAGE is refused with 503 "IM archive unavailable"; otherwise it is relayed, and the loss counted and
//! logged). The rows leave as [`Action::Archive`]; the store thread commits them in batches (write-behind,
//! bounded: `crate::store::archive`), so no executor waits on the disk. Whether the archive is writable comes
//! from the store thread's [`ArchiveGate`] (atomics: the core reads, never waits).

use std::sync::Arc;

use super::{aor_of, Action, PoolCore};
use crate::config::archive::{ArchiveConfig, ArchivePolicy};
use crate::net::conn::bump;
use crate::net::ConnId;
use crate::sip::{HeaderName, Message};
use crate::store::archive::{ArchiveGate, ArchiveRow};

/// The answer to a MESSAGE refused in critical mode while the archive cannot be written (documented in the
/// README): retryable, with the reason in the phrase.
pub const REFUSED: (u16, &str) = (503, "Service Unavailable: IM archive unavailable");
/// Retry-After on that answer, seconds.
pub const REFUSED_RETRY_AFTER: &[u8] = b"10";

/// The archive as one core sees it.
pub struct ArchiveSettings {
    /// None: archiving off.
    pub config: Option<ArchiveConfig>,
    pub gate: Arc<ArchiveGate>,
}

impl ArchiveSettings {
    pub fn off() -> ArchiveSettings {
        ArchiveSettings { config: None, gate: Arc::new(ArchiveGate::default()) }
    }
}

/// Per-core state: whether this core is in an outage (so it logs the start and the end of one, not every
/// MESSAGE).
#[derive(Default)]
pub struct ArchiveCoreState {
    unwritable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Internal,
    /// Between our users, from one connected outside `[edge] internal_networks` (the edge's `P-Parapet-Remote`).
    Remote,
    FederatedIn,
    FederatedOut,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Internal => "internal",
            Direction::Remote => "remote",
            Direction::FederatedIn => "federated-in",
            Direction::FederatedOut => "federated-out",
        }
    }

    /// With another organization, either way.
    pub fn is_federated(self) -> bool {
        matches!(self, Direction::FederatedIn | Direction::FederatedOut)
    }
}

/// One party's policy: its own entry, else its domain's, else the default.
fn party(c: &ArchiveConfig, aor: &str) -> ArchivePolicy {
    if let Some(p) = c.users.get(aor) {
        return *p;
    }
    let domain = aor.rsplit_once('@').map_or(aor, |(_, d)| d);
    c.domains.get(domain).copied().unwrap_or(c.policy)
}

/// Whether a MESSAGE between `sender` and `recipient` is archived: the more inclusive of the two parties'
/// policies decides ("federated" archives only IM with another organization).
pub fn wanted(c: &ArchiveConfig, sender: &str, recipient: &str, dir: Direction) -> bool {
    match party(c, sender).max(party(c, recipient)) {
        ArchivePolicy::All => true,
        ArchivePolicy::Federated => dir.is_federated(),
        ArchivePolicy::None => false,
    }
}

/// The settings from `[archive]`, and the store thread told its bound and retention.
pub fn settings(c: Option<&ArchiveConfig>, store: &crate::store::thread::StoreHandle) -> ArchiveSettings {
    use std::sync::atomic::Ordering;
    let gate = store.archive_gate();
    if let Some(c) = c {
        gate.pending_max.store(c.pending_max, Ordering::Relaxed);
        gate.retention_s.store(u64::from(c.retention_days) * 86_400, Ordering::Relaxed);
    }
    ArchiveSettings { config: c.cloned(), gate }
}

impl PoolCore {
    /// Where a request at the Route stage goes: from a partner, to another organization, or between our users (from
    /// a remote one, or not).
    pub(crate) fn direction_of(&self, msg: &Message) -> Direction {
        if msg.header(HeaderName::ParapetFederated).is_some() {
            Direction::FederatedIn
        } else if msg.request_uri_parsed().is_some_and(|u| !self.is_local_host(&u)) {
            Direction::FederatedOut
        } else if msg.header(HeaderName::ParapetRemote).is_some() {
            Direction::Remote
        } else {
            Direction::Internal
        }
    }

    /// On the target's core, before a MESSAGE is routed: archives it when the policy asks. False when it was
    /// refused instead (critical mode, the archive unwritable): the answer has been sent.
    pub(crate) fn archive_admits(&mut self, origin: ConnId, msg: &Message) -> bool {
        let Some(config) = &self.s.archive.config else { return true };
        let Some(ruri) = msg.request_uri_parsed() else { return true };
        let dir = self.direction_of(msg);
        let sender = aor_of(&msg.from().uri);
        let recipient = aor_of(&ruri);
        if !wanted(config, &sender, &recipient, dir) {
            return true;
        }
        let critical = config.critical;
        // Critical mode relays nothing the store may not take; otherwise rows wait (bounded) for the store to
        // come back, and only past the bound are they lost.
        let gate = &self.s.archive.gate;
        if !(if critical { gate.writable() } else { gate.has_room() }) {
            if !self.archive.unwritable {
                self.archive.unwritable = true;
                tracing::error!(
                    critical,
                    "archive: cannot be written ({}); {}",
                    if critical { "store failing or over its bound" } else { "over its bound" },
                    if critical { "refusing IM until it can" } else { "relaying IM unarchived (counted)" }
                );
            }
            if critical {
                bump(&self.pstats.messages_refused_archive);
                self.reply(origin, msg, REFUSED.0, REFUSED.1, &[(HeaderName::RetryAfter, REFUSED_RETRY_AFTER)]);
                return false;
            }
            bump(&self.pstats.archive_lost);
            return true;
        }
        if self.archive.unwritable {
            self.archive.unwritable = false;
            tracing::info!("archive: writable again");
        }
        let row = ArchiveRow {
            id: 0,
            at_ms: i64::try_from(self.now.secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            sender,
            recipient,
            direction: dir.as_str().to_string(),
            content_type: msg.content_type().map(|c| String::from_utf8_lossy(c).into_owned()).unwrap_or_default(),
            body: String::from_utf8_lossy(msg.body()).into_owned(),
            call_id: String::from_utf8_lossy(msg.call_id()).into_owned(),
        };
        bump(&self.pstats.messages_archived);
        self.push(Action::Archive(row));
        true
    }
}

#[cfg(test)]
mod tests;
