//! Connections of one core: the table that names them (the task that runs each one is in [`super::driver`]).
//!
//! Every connection (remote user, internal peer, outbound connector) is a slot in its core's [`ConnTable`];
//! others refer to it by [`ConnId`] (core, slot, generation), so a stale id never reaches a reused slot.
//! The driver is the only code that touches the socket. Others hand it bytes through its bounded queue; a
//! client that does not read fills that queue and is closed (bounded memory per connection).
//!
//! Internal links (a trusted peer's connection to us, [`ConnKind::PeerIn`], and our connectors to the pool or to
//! edges) are not clients: a burst on them (hundreds of users leaving at once, each flow's end a notice to the
//! pool) is not a slow reader. Their queue has a much larger bound ([`INTERNAL_QUEUE_MAX`]), and when even that is
//! full the sender is told ([`SendError::Busy`]: nothing queued, the link stays up), counted and logged; a
//! connector then holds what it could not queue and writes it as room appears (see [`super::connector`]).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use super::queue::{OutQueue, QueueError};
use crate::sip::{Limits, Message};

/// A connection, anywhere in the process: which core owns it, its slot there, and that slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub core: u16,
    pub gen: u16,
    pub slot: u32,
}

impl ConnId {
    pub fn to_u64(self) -> u64 {
        (u64::from(self.core) << 48) | (u64::from(self.gen) << 32) | u64::from(self.slot)
    }
    pub fn from_u64(v: u64) -> ConnId {
        ConnId { core: (v >> 48) as u16, gen: (v >> 32) as u16, slot: v as u32 }
    }
}

/// What the connection is to us; decides what may arrive on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnKind {
    /// A remote user's TLS connection to the edge.
    User,
    /// A trusted peer's mutual-TLS connection to us (edge -> pool, pool -> edge internal).
    PeerIn,
    /// Our mutual-TLS connection to a trusted peer.
    PeerOut,
    /// A federated organization's (or clearinghouse's) mutual-TLS connection to our edge: authenticated by
    /// certificate, but not trusted like an internal peer.
    Partner,
}

/// Messages an internal link's write queue holds (a user's holds the role's `queue_max`, e.g. 256). Items, not
/// bytes, like the users' bound: at a notice's ~600 bytes a full queue is ~10 MB; a peer that stops reading
/// altogether is still closed by the driver's write-stall watchdog.
pub const INTERNAL_QUEUE_MAX: usize = 16_384;

pub enum Out {
    Bytes(Bytes),
    Close,
}

crate::counters! {
    /// Per-core network counters (read by the management listener).
    pub struct NetStats {
        accepted,
        handshakes_failed,
        /// Connections closed before sending a byte of TLS (port probes).
        handshakes_abandoned,
        peers_refused,
        closed,
        /// Live connections on this core (a gauge).
        connections,
        messages_in,
        bytes_in,
        bytes_out,
        parse_errors,
        too_large,
        framing_errors,
        pings,
        slow_readers_closed,
        /// Sends refused because an internal link's queue was full (back-pressure: nothing queued, link kept).
        internal_queue_full,
        /// Internal links (to or from trusted peers) that ended, for whatever reason (logged with it).
        internal_links_closed,
        /// Messages a connector held because its link's queue was full, written once room appeared.
        connector_backlogged,
        /// Messages a connector could not hold (its pending list full) and handed back as undeliverable.
        connector_backlog_full,
        /// Internal links made in memory to the other role on the same executor thread (co-located edge and
        /// pool: no TLS, no socket), accepted or connected.
        local_links,
        idle_closed,
        /// Connections closed for not finishing a message in time (slowloris).
        slow_senders_closed,
        /// Connections refused before their handshake (limits, bans).
        connections_refused,
        /// Messages waiting in this core's write queues (a gauge, refreshed every second).
        queued_messages_now,
        /// The longest write queue on this core (a gauge, refreshed every second).
        longest_queue_now,
        requests_register,
        requests_message,
        requests_subscribe,
        requests_notify,
        requests_publish,
        requests_options,
        requests_other,
        responses_1xx,
        responses_2xx,
        responses_3xx,
        responses_4xx,
        responses_5xx,
        responses_6xx,
    }
}

/// Time from a message's arrival to the end of its handling on this core (the role's whole stage: checks, edits,
/// routing), per core; with the counters above, where time goes.
#[derive(Default, Debug)]
pub struct NetTimes {
    pub handle: crate::mgmt::metrics::Histogram,
}

impl NetStats {
    pub(super) fn count_message(&self, msg: &Message) {
        use crate::sip::Method;
        let c = match (msg.method(), msg.status()) {
            (Some(Method::Register), _) => &self.requests_register,
            (Some(Method::Message), _) => &self.requests_message,
            (Some(Method::Subscribe), _) => &self.requests_subscribe,
            (Some(Method::Notify), _) => &self.requests_notify,
            (Some(Method::Publish), _) => &self.requests_publish,
            (Some(Method::Options), _) => &self.requests_options,
            (Some(_), _) => &self.requests_other,
            (None, Some(s)) if s < 200 => &self.responses_1xx,
            (None, Some(s)) if s < 300 => &self.responses_2xx,
            (None, Some(s)) if s < 400 => &self.responses_3xx,
            (None, Some(s)) if s < 500 => &self.responses_4xx,
            (None, Some(s)) if s < 600 => &self.responses_5xx,
            _ => &self.responses_6xx,
        };
        c.inc();
    }
}

pub fn bump(c: &crate::mgmt::metrics::Counter) {
    c.inc();
}

/// One connection's shared face: what others may know and use.
pub struct Conn {
    pub id: ConnId,
    pub kind: ConnKind,
    pub peer: SocketAddr,
    /// Names from the peer's certificate (mutual TLS only).
    pub peer_names: Vec<String>,
    /// A link to or from a trusted internal peer: a full queue pushes back ([`SendError::Busy`]) instead of
    /// closing it (see the module doc).
    pub internal: bool,
    /// The link's queue is full and that was logged: logged again only after it took a message again.
    backpressured: Cell<bool>,
    tx: Rc<OutQueue>,
    /// Milliseconds since the table's epoch at the last byte received (idle sweeps read it).
    last_rx_ms: Cell<u64>,
    /// Set when the connection must close although its queue is full (the Close item would not fit).
    pub(super) kill: Cell<bool>,
    /// Milliseconds since the table's epoch when the unfinished message in the read buffer began (0: none).
    pub(super) partial_since_ms: Cell<u64>,
    /// Until when the driver reads (and handles) nothing more from the peer: backpressure on a peer over its
    /// rate, whose further requests then wait in TCP instead of costing us a refusal each.
    read_paused_until: Cell<Option<Instant>>,
}

impl Conn {
    /// Stop reading (and handling what is already read) for `d`: what the peer sends meanwhile waits in TCP.
    pub fn pause_reading(&self, d: std::time::Duration) {
        self.read_paused_until.set(Some(Instant::now() + d));
    }

    /// Completes once this connection's queue has room again (drained to half), or it has closed.
    pub(super) async fn writable(&self) {
        self.tx.writable().await
    }

    /// When a pause is in force, its end.
    pub(super) fn read_paused(&self) -> Option<Instant> {
        match self.read_paused_until.get() {
            Some(t) if t > Instant::now() => Some(t),
            Some(_) => {
                self.read_paused_until.set(None);
                None
            }
            None => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The connection is gone (closed, or the id is stale).
    Gone,
    /// Its write queue is full: it has been told to close.
    Full,
    /// An internal link's write queue is full: nothing was queued and the link stays up; send again later
    /// (counted in `internal_queue_full`).
    Busy,
}

/// The connections owned by one core.
pub struct ConnTable {
    core: u16,
    epoch: Instant,
    slots: Vec<Option<Rc<Conn>>>,
    gens: Vec<u16>,
    free: Vec<u32>,
    queue_max: usize,
    live: usize,
    stats: std::sync::Arc<NetStats>,
}

impl ConnTable {
    pub fn new(core: usize, queue_max: usize, stats: std::sync::Arc<NetStats>) -> ConnTable {
        ConnTable {
            core: core as u16,
            epoch: Instant::now(),
            slots: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            queue_max: queue_max.max(1),
            live: 0,
            stats,
        }
    }

    pub fn core(&self) -> usize {
        usize::from(self.core)
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a new connection; the receiver goes to its driver. A trusted peer's connection to us
    /// ([`ConnKind::PeerIn`]: the pool's to an edge's internal listener, an edge's to the pool) is an internal link.
    pub fn insert(&mut self, kind: ConnKind, peer: SocketAddr, peer_names: Vec<String>) -> (Rc<Conn>, Rc<OutQueue>) {
        self.insert_link(kind, peer, peer_names, kind == ConnKind::PeerIn)
    }

    /// [`ConnTable::insert`], saying whether the connection is an internal link (a connector knows: its peer is
    /// our pool or edge, or a federation partner).
    pub fn insert_link(
        &mut self,
        kind: ConnKind,
        peer: SocketAddr,
        peer_names: Vec<String>,
        internal: bool,
    ) -> (Rc<Conn>, Rc<OutQueue>) {
        let bound = if internal { INTERNAL_QUEUE_MAX.max(self.queue_max) } else { self.queue_max };
        let tx = Rc::new(OutQueue::new(bound));
        let rx = tx.clone();
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.gens.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let i = slot as usize;
        let gen = self.gens.get(i).copied().unwrap_or(0);
        let id = ConnId { core: self.core, gen, slot };
        let conn = Rc::new(Conn {
            id,
            kind,
            peer,
            peer_names,
            internal,
            backpressured: Cell::new(false),
            tx,
            last_rx_ms: Cell::new(self.now_ms()),
            kill: Cell::new(false),
            partial_since_ms: Cell::new(0),
            read_paused_until: Cell::new(None),
        });
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some(conn.clone());
        }
        self.live += 1;
        self.stats.connections.set(self.live as u64);
        (conn, rx)
    }

    pub fn get(&self, id: ConnId) -> Option<&Rc<Conn>> {
        if id.core != self.core {
            return None;
        }
        self.slots.get(id.slot as usize)?.as_ref().filter(|c| c.id.gen == id.gen)
    }

    pub fn remove(&mut self, id: ConnId) {
        let i = id.slot as usize;
        let matches = self.get(id).is_some();
        if matches {
            if let Some(s) = self.slots.get_mut(i) {
                *s = None;
            }
            if let Some(g) = self.gens.get_mut(i) {
                *g = g.wrapping_add(1);
            }
            self.free.push(id.slot);
            self.live -= 1;
            self.stats.connections.set(self.live as u64);
        }
    }

    /// Queues bytes for a connection of this core.
    pub fn send(&self, id: ConnId, bytes: &Bytes) -> Result<(), SendError> {
        let conn = self.get(id).ok_or(SendError::Gone)?;
        match conn.tx.try_send(Out::Bytes(bytes.clone())) {
            Ok(()) => {
                if conn.backpressured.get() {
                    conn.backpressured.set(false);
                    tracing::info!(peer = %conn.peer, "internal link takes messages again");
                }
                Ok(())
            }
            Err(QueueError::Closed) => Err(SendError::Gone),
            Err(QueueError::Full) if conn.internal => {
                // A trusted peer behind a burst: push back on the sender, keep the link.
                bump(&self.stats.internal_queue_full);
                if !conn.backpressured.replace(true) {
                    tracing::warn!(
                        peer = %conn.peer,
                        queued = conn.tx.len(),
                        "internal link's write queue full: senders pushed back (link kept)"
                    );
                }
                Err(SendError::Busy)
            }
            Err(QueueError::Full) => {
                // The peer stopped reading: holding more for it would be unbounded memory.
                conn.kill.set(true);
                Err(SendError::Full)
            }
        }
    }

    pub fn close(&self, id: ConnId) {
        if let Some(c) = self.get(id) {
            let _ = c.tx.try_send(Out::Close);
        }
    }

    /// Tells every connection idle for longer than `idle_ms`, or that started a message more than `message_ms`
    /// ago without finishing it (slowloris), to close; returns (idle, slow) counts.
    pub fn close_stale(&self, idle_ms: u64, message_ms: u64) -> (usize, usize) {
        let now = self.now_ms();
        let (mut idle, mut slow) = (0, 0);
        let (mut queued, mut longest) = (0, 0);
        for c in self.slots.iter().flatten() {
            let len = c.tx.len();
            queued += len;
            longest = longest.max(len);
            let partial = c.partial_since_ms.get();
            if partial != 0 && now.saturating_sub(partial) > message_ms {
                c.kill.set(true);
                let _ = c.tx.try_send(Out::Close);
                slow += 1;
            } else if now.saturating_sub(c.last_rx_ms.get()) > idle_ms {
                let _ = c.tx.try_send(Out::Close);
                idle += 1;
            }
        }
        self.stats.queued_messages_now.set(queued as u64);
        self.stats.longest_queue_now.set(longest as u64);
        (idle, slow)
    }

    /// Tells every connection to close (shutdown).
    pub fn close_all(&self) {
        for c in self.slots.iter().flatten() {
            let _ = c.tx.try_send(Out::Close);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rc<Conn>> {
        self.slots.iter().flatten()
    }

    pub(super) fn touch(&self, conn: &Conn) {
        conn.last_rx_ms.set(self.now_ms());
    }
}

/// Limits for trusted peers: every hop adds a few headers (Via, Path, Record-Route) and parameters to a message
/// that a user may have sent right at the limits, so the next hop must accept a little more than the edge accepts
/// from users.
pub fn peer_limits(user: &Limits) -> Limits {
    Limits {
        message_bytes_max: user.message_bytes_max + 4096,
        header_bytes_max: user.header_bytes_max + 4096,
        header_count_max: user.header_count_max + 16,
        // received=/rport= added to a Via line that was already at the limit.
        line_bytes_max: user.line_bytes_max + 256,
    }
}

/// What a handler holds for an admitted connection while it lives (dropped when the connection ends): e.g. its
/// place in a per-peer connection count.
pub type Permit = Option<Box<dyn std::any::Any>>;

/// What the role running on a core does with what connections receive.
pub trait Handler: 'static {
    fn table(&self) -> &RefCell<ConnTable>;
    fn stats(&self) -> &NetStats;
    fn times(&self) -> &NetTimes;
    fn limits(&self) -> &Limits;
    /// The limits a connection's messages are parsed under, chosen when its driver starts: by default the role's
    /// own for users and partners, and a little more for trusted peers ([`peer_limits`]).
    fn limits_for(&self, conn: &Conn) -> Limits {
        match conn.kind {
            ConnKind::User | ConnKind::Partner => *self.limits(),
            ConnKind::PeerIn | ConnKind::PeerOut => peer_limits(self.limits()),
        }
    }
    /// How long a connection may take to finish a message once its first byte has arrived (slowloris): its driver
    /// closes it when that has passed, on a timer of its own armed only while a message is unfinished (counted in
    /// `slow_senders_closed`). None: no deadline.
    fn message_deadline(&self, _conn: &Conn) -> Option<std::time::Duration> {
        None
    }
    /// A complete message that parsed.
    fn on_message(self: &Rc<Self>, conn: &Rc<Conn>, msg: Message);
    /// The connection is gone (after removal from the table).
    fn on_closed(self: &Rc<Self>, _conn: &Rc<Conn>) {}
    /// A new connection on a listener, before its TLS handshake: false closes it at once.
    fn admit(&self, _peer: SocketAddr, _kind: ConnKind) -> bool {
        true
    }
    /// A TLS peer after its handshake (and the listener's own name check), by its certificate names and chain
    /// (empty when it presented none; verified by the handshake unless the listener takes any certificate, see
    /// [`super::tls::server_config_optional_client`]): the kind the connection takes (a listener may serve more
    /// than one) and what to hold while it lives, or None to close it (the handler logs why).
    fn admit_peer(
        &self,
        kind: ConnKind,
        _names: &[String],
        _chain: &[rustls::pki_types::CertificateDer<'_>],
    ) -> Option<(ConnKind, Permit)> {
        Some((kind, None))
    }
    /// An admitted connection has ended, whether or not its handshake completed.
    fn release(&self, _peer: SocketAddr, _kind: ConnKind) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 5060))
    }

    #[test]
    fn a_full_user_queue_closes_a_full_internal_queue_pushes_back() {
        let stats = std::sync::Arc::new(NetStats::default());
        let mut t = ConnTable::new(0, 2, stats.clone());
        let b = Bytes::from_static(b"x");
        let (user, _urx) = t.insert(ConnKind::User, addr(), Vec::new());
        assert!(!user.internal);
        assert_eq!(t.send(user.id, &b), Ok(()));
        assert_eq!(t.send(user.id, &b), Ok(()));
        assert_eq!(t.send(user.id, &b), Err(SendError::Full));
        assert!(user.kill.get(), "a user that does not read is closed");

        let (peer, rx) = t.insert(ConnKind::PeerIn, addr(), vec!["pool.example.com".into()]);
        assert!(peer.internal, "a trusted peer's connection to us is an internal link");
        for _ in 0..INTERNAL_QUEUE_MAX {
            assert_eq!(t.send(peer.id, &b), Ok(()));
        }
        assert_eq!(t.send(peer.id, &b), Err(SendError::Busy));
        assert_eq!(t.send(peer.id, &b), Err(SendError::Busy));
        assert!(!peer.kill.get(), "an internal link is pushed back on, not closed");
        assert_eq!(stats.internal_queue_full.get(), 2);
        assert!(rx.try_recv().is_some());
        assert_eq!(t.send(peer.id, &b), Ok(()), "room again: taken");

        let (out, _orx) = t.insert_link(ConnKind::PeerOut, addr(), Vec::new(), false);
        assert!(!out.internal, "a federation partner's link keeps the users' rule");
        let (out, _orx) = t.insert_link(ConnKind::PeerOut, addr(), Vec::new(), true);
        assert!(out.internal);
    }
}
