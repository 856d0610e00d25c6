//! Connectors: this core's mutual-TLS connection to one trusted peer (edge -> pool, pool -> edge), made on first
//! use, remade after it drops. Messages sent while it connects wait in a bounded pending list; when the peer cannot
//! be reached they are handed back to the role as undeliverable, so requests get a 503 instead of vanishing.
//!
//! A link to our pool or to our edges is internal: when its write queue is full (a burst, e.g. hundreds of users
//! leaving at once, each a flow-closed notice), what is sent waits in the same pending list, oldest first, and a
//! task moves it into the queue as the driver drains it. Nothing is lost and the link is not closed; only when the
//! pending list is full too is a message handed back (counted in `connector_backlog_full`, logged). A connector to
//! a federation partner keeps the users' rule (a full queue closes the link).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use super::conn::{bump, ConnId, ConnKind, Handler, SendError};
use super::driver::drive;
use super::identity;
use super::tls::peer_dns_names;

type TlsStream = futures_rustls::client::TlsStream<TcpStream>;

/// How a connector by DNS finds its peer.
pub enum Lookup {
    /// A configured name (RFC 3263); every address must present the connector's `name`.
    Name(super::dns::Query),
    /// A discovered domain's `_sipfederationtls._tcp` SRV record; each target must present its own name.
    Srv(String),
}

/// A connection made: over TLS, or in memory to a role on this thread.
enum Link {
    Tls(Box<TlsStream>),
    Local(super::local::LocalLink),
}

/// Messages held while a connection is being made, or while an internal link's queue is full.
const PENDING_MAX: usize = 4096;

/// A role that can take back what could not be delivered.
pub trait Undeliverable: Handler {
    fn undeliverable(self: &Rc<Self>, bytes: Bytes, code: u16, reason: &'static str);
}

enum State {
    Down,
    /// A connection is being made; what is sent meanwhile waits in `pending`.
    Connecting,
    Up(ConnId),
}

/// What moving the pending list into the link's queue came to.
enum Flush {
    /// Everything is in the queue.
    Done,
    /// The queue is full again: wait for room.
    Full,
    /// The link is gone (what is left stays pending for the next one).
    Gone,
}

pub struct Connector {
    /// The peer's address; for a peer by name, the one of the last connection (unspecified before any).
    addr: Cell<SocketAddr>,
    /// A peer by name or by its domain's SRV record: looked up (cached by TTL, see [`super::dns`]) before every
    /// connection, its addresses tried in order until one answers.
    lookup: Option<(super::dns::Resolver, Lookup)>,
    pub name: String,
    /// Replaced by a hot reload ([`Connector::set_tls`]): the next connection uses the new one.
    tls: RefCell<Arc<ClientConfig>>,
    timeout: Duration,
    state: RefCell<State>,
    /// Sent but not yet in the link's queue, oldest first: while connecting, and while an internal link's queue
    /// is full. At most [`PENDING_MAX`].
    pending: RefCell<VecDeque<Bytes>>,
    /// A task is moving `pending` into the link's queue as room appears.
    flushing: Cell<bool>,
    /// The pending list overflowed and that was logged (logged again once it has drained).
    overflowing: Cell<bool>,
    /// The peer's certificate must carry `name` itself, not only a wildcard covering it (RFC 5922 §7.2, for
    /// federation; rustls alone accepts wildcards as web PKI does).
    exact_name: bool,
    /// A link to our own pool or edge (back-pressure), not to a federation partner (closed when it stops reading).
    internal: bool,
    /// Who we are on a local link ([`super::local`]): set, a peer served on this executor thread is reached in
    /// memory instead of over TLS.
    local: Option<super::local::LocalIdentity>,
}

impl Connector {
    pub fn new(addr: SocketAddr, name: &str, tls: Arc<ClientConfig>, timeout: Duration) -> Connector {
        Connector {
            addr: Cell::new(addr),
            lookup: None,
            name: name.to_string(),
            tls: RefCell::new(tls),
            timeout,
            state: RefCell::new(State::Down),
            pending: RefCell::new(VecDeque::new()),
            flushing: Cell::new(false),
            overflowing: Cell::new(false),
            exact_name: false,
            internal: true,
            local: None,
        }
    }

    /// An internal connector that reaches its peer in memory when the peer runs on this executor thread
    /// (co-located roles), presenting `me` as its certificate would.
    pub fn local_as(mut self, me: super::local::LocalIdentity) -> Connector {
        self.local = Some(me);
        self
    }

    /// New certificates or trust (hot reload), for the connections made from now on; the current one stays.
    pub fn set_tls(&self, tls: Arc<ClientConfig>) {
        *self.tls.borrow_mut() = tls;
    }

    /// A connector to a SIP federation peer: its certificate must name it exactly (RFC 5922 §7.3).
    pub fn federated(addr: SocketAddr, name: &str, tls: Arc<ClientConfig>, timeout: Duration) -> Connector {
        Connector { exact_name: true, internal: false, local: None, ..Connector::new(addr, name, tls, timeout) }
    }

    /// Whether the last connection attempt failed or the connection closed (not merely never used yet).
    pub fn is_down(&self) -> bool {
        matches!(*self.state.borrow(), State::Down)
    }

    pub fn is_up(&self) -> bool {
        matches!(*self.state.borrow(), State::Up(_))
    }

    /// A connector to a SIP federation peer known by a DNS name (RFC 3263): every connection it makes looks the
    /// name up first, so the connection after a changed record goes to the new address.
    pub fn federated_by_name(
        query: super::dns::Query,
        resolver: super::dns::Resolver,
        name: &str,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Connector {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], query.port.unwrap_or(super::dns::SIPS_PORT)));
        Connector {
            lookup: Some((resolver, Lookup::Name(query))),
            ..Connector::federated(unspecified, name, tls, timeout)
        }
    }

    /// A connector to the edge of a discovered `domain` (its federation SRV record, RFC 5922 by target name).
    pub fn discovered(
        domain: &str,
        resolver: super::dns::Resolver,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Connector {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], super::dns::SIPS_PORT));
        let lookup = Some((resolver, Lookup::Srv(domain.to_string())));
        Connector { lookup, ..Connector::federated(unspecified, domain, tls, timeout) }
    }

    /// Whether a connection is up or being made (an idle connector may be forgotten).
    pub fn is_busy(&self) -> bool {
        !matches!(*self.state.borrow(), State::Down) || !self.pending.borrow().is_empty()
    }

    /// The peer's address (for a peer by name: where the last connection went).
    pub fn addr(&self) -> SocketAddr {
        self.addr.get()
    }

    /// The name a peer by name is looked up by.
    pub fn query(&self) -> Option<&super::dns::Query> {
        match &self.lookup {
            Some((_, Lookup::Name(q))) => Some(q),
            _ => None,
        }
    }

    pub fn send<H: Undeliverable>(self: &Rc<Self>, h: &Rc<H>, bytes: Bytes) {
        let up = match &*self.state.borrow() {
            State::Up(id) => Some(*id),
            _ => None,
        };
        if let Some(id) = up {
            if !self.pending.borrow().is_empty() {
                // Behind what already waits for room: order kept.
                self.hold(h, bytes, true);
                self.start_flush(h);
                return;
            }
            let sent = h.table().borrow().send(id, &bytes);
            match sent {
                Ok(()) => return,
                Err(SendError::Full) => {
                    h.undeliverable(bytes, 503, "Service Unavailable");
                    return;
                }
                Err(SendError::Busy) => {
                    self.hold(h, bytes, true);
                    self.start_flush(h);
                    return;
                }
                Err(SendError::Gone) => *self.state.borrow_mut() = State::Down,
            }
        }
        self.hold(h, bytes, false);
        self.ensure_connecting(h);
    }

    /// Keeps a message for later (`backlog`: because the link's queue is full, counted), or hands it back when
    /// the pending list is full.
    fn hold<H: Undeliverable>(&self, h: &Rc<H>, bytes: Bytes, backlog: bool) {
        let mut pending = self.pending.borrow_mut();
        if pending.len() < PENDING_MAX {
            pending.push_back(bytes);
            if backlog {
                bump(&h.stats().connector_backlogged);
            }
            return;
        }
        drop(pending);
        bump(&h.stats().connector_backlog_full);
        if !self.overflowing.replace(true) {
            tracing::warn!(
                peer = %self.addr.get(),
                name = %self.name,
                held = PENDING_MAX,
                "connector's pending list full: messages handed back as undeliverable"
            );
        }
        h.undeliverable(bytes, 503, "Service Unavailable");
    }

    /// Starts making a connection unless one is up or being made.
    fn ensure_connecting<H: Undeliverable>(self: &Rc<Self>, h: &Rc<H>) {
        let mut st = self.state.borrow_mut();
        if matches!(*st, State::Connecting | State::Up(_)) {
            return;
        }
        *st = State::Connecting;
        drop(st);
        let me = self.clone();
        let h = h.clone();
        glommio::spawn_local(async move { me.connect(h).await }).detach();
    }

    /// Moves pending messages into the link's queue while it has room.
    fn flush<H: Undeliverable>(&self, h: &Rc<H>, id: ConnId) -> Flush {
        loop {
            let Some(b) = self.pending.borrow_mut().pop_front() else {
                self.overflowing.set(false);
                return Flush::Done;
            };
            let sent = h.table().borrow().send(id, &b);
            match sent {
                Ok(()) => {}
                Err(SendError::Busy) => {
                    self.pending.borrow_mut().push_front(b);
                    return Flush::Full;
                }
                // A partner's link that stopped reading has been told to close: the rest goes back.
                Err(SendError::Full) => h.undeliverable(b, 503, "Service Unavailable"),
                Err(SendError::Gone) => {
                    self.pending.borrow_mut().push_front(b);
                    return Flush::Gone;
                }
            }
        }
    }

    /// A task that writes the pending list into the link as its driver makes room. It follows the link in force:
    /// if the link goes, the pending messages wait for the next connection (whose making flushes them, and whose
    /// queue this task then serves if it is full too); it ends when nothing is pending or no link is up.
    fn start_flush<H: Undeliverable>(self: &Rc<Self>, h: &Rc<H>) {
        if self.flushing.replace(true) {
            return;
        }
        let me = self.clone();
        let h = h.clone();
        glommio::spawn_local(async move {
            loop {
                let up = match &*me.state.borrow() {
                    State::Up(id) => Some(*id),
                    _ => None,
                };
                // Down or connecting: `connect` flushes once the new link is up.
                let Some(id) = up else { break };
                let conn = h.table().borrow().get(id).cloned();
                if let Some(conn) = conn {
                    conn.writable().await;
                }
                match me.flush(&h, id) {
                    Flush::Done => break,
                    Flush::Full => {}
                    Flush::Gone => {
                        if matches!(*me.state.borrow(), State::Up(up) if up == id) {
                            *me.state.borrow_mut() = State::Down;
                        }
                        me.ensure_connecting(&h);
                    }
                }
            }
            me.flushing.set(false);
        })
        .detach();
    }

    async fn connect<H: Undeliverable>(self: Rc<Self>, h: Rc<H>) {
        let local = match (&self.local, &self.lookup) {
            (Some(me), None) if self.internal => super::local::connect(self.addr.get(), me),
            _ => None,
        };
        match local {
            // Checked as the TLS handshake checks the server's certificate: it must carry the name we connect to.
            Some(Ok((link, names))) if presents(&names, &self.name) => {
                bump(&h.stats().local_links);
                return self.run_link(h, Link::Local(link), names).await;
            }
            Some(Ok((_, names))) => {
                tracing::warn!(name = %self.name, ?names, "local peer does not present the name connected to");
                return self.give_back(&h);
            }
            Some(Err(e)) => {
                tracing::warn!(peer = %self.addr.get(), name = %self.name, error = %e, "local peer refused us");
                return self.give_back(&h);
            }
            None => {}
        }
        let addrs: Result<Vec<(SocketAddr, String)>, String> = match &self.lookup {
            None => Ok(vec![(self.addr.get(), self.name.clone())]),
            Some((resolver, Lookup::Name(q))) => match resolver.resolve(q).await {
                Ok(v) => Ok(v.into_iter().map(|a| (a, self.name.clone())).collect()),
                Err(e) => Err(format!("DNS {q}: {e}")),
            },
            Some((resolver, Lookup::Srv(domain))) => match resolver.federation_srv(domain).await {
                Ok(targets) => Ok(targets
                    .into_iter()
                    .flat_map(|t| t.addrs.into_iter().map(move |a| (a, t.name.clone())))
                    .collect()),
                Err(e) => Err(format!("DNS _sipfederationtls._tcp.{domain}: {e}")),
            },
        };
        let mut result = Err("no address".to_string());
        for (addr, name) in addrs.as_deref().unwrap_or_default() {
            result = self.attempt(*addr, name).await;
            match &result {
                Ok(_) => {
                    self.addr.set(*addr);
                    break;
                }
                // The next SRV target (or address) when this one is down (RFC 3263 §4.3).
                Err(e) if self.lookup.is_some() => {
                    tracing::info!(peer = %addr, name = %self.name, error = %e, "peer address down: trying the next")
                }
                Err(_) => {}
            }
        }
        let dns_failed = addrs.is_err();
        if let Err(e) = addrs {
            result = Err(e);
        }
        match result {
            Ok((tls, names)) => self.run_link(h, Link::Tls(Box::new(tls)), names).await,
            // A name that does not resolve is logged once by the resolver, not at every attempt.
            Err(e) if dns_failed => {
                tracing::debug!(name = %self.name, error = %e, "cannot reach peer");
                self.give_back(&h);
            }
            Err(e) => {
                tracing::warn!(peer = %self.addr.get(), name = %self.name, error = %e, "cannot reach peer");
                self.give_back(&h);
            }
        }
    }

    /// The link is made (over TLS or in memory): registers it, sends what waited, and drives it until it ends.
    async fn run_link<H: Undeliverable>(self: Rc<Self>, h: Rc<H>, link: Link, names: Vec<String>) {
        let (conn, rx) = h.table().borrow_mut().insert_link(ConnKind::PeerOut, self.addr.get(), names, self.internal);
        *self.state.borrow_mut() = State::Up(conn.id);
        let how = if matches!(link, Link::Local(_)) { "in memory" } else { "TLS" };
        tracing::info!(peer = %self.addr.get(), name = %self.name, link = how, "connected");
        // What waited while connecting: into the new link, as much as fits; the rest as room appears.
        if let Flush::Full = self.flush(&h, conn.id) {
            self.start_flush(&h);
        }
        match link {
            Link::Tls(tls) => drive(tls, conn, rx, h).await,
            Link::Local(local) => local.run(conn, rx, h).await,
        }
    }

    /// The connection could not be made: what waited for it is handed back as undeliverable.
    fn give_back<H: Undeliverable>(&self, h: &Rc<H>) {
        *self.state.borrow_mut() = State::Down;
        let queued = std::mem::take(&mut *self.pending.borrow_mut());
        self.overflowing.set(false);
        for b in queued {
            h.undeliverable(b, 503, "Service Unavailable");
        }
    }

    /// One connection attempt to `addr`, within the handshake timeout, with the peer's name checked.
    async fn attempt(&self, addr: SocketAddr, name: &str) -> Result<(TlsStream, Vec<String>), String> {
        futures_lite::future::or(self.handshake(addr, name), async {
            glommio::timer::sleep(self.timeout).await;
            Err("timed out".to_string())
        })
        .await
        .and_then(|tls| {
            let names = peer_dns_names(tls.get_ref().1.peer_certificates());
            if self.exact_name && !identity::matches(&names, name) {
                return Err(format!(
                    "its certificate names {names:?}, not {name} itself (RFC 5922: no wildcard matches)"
                ));
            }
            Ok((tls, names))
        })
    }

    async fn handshake(&self, addr: SocketAddr, name: &str) -> Result<TlsStream, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(name.to_string()).map_err(|e| format!("bad server name {name}: {e}"))?;
        let tls = self.tls.borrow().clone();
        TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| e.to_string())
    }
}

/// Whether a local peer's certificate names cover `name` as web PKI verification would (an exact name, or a
/// wildcard for its first label).
fn presents(names: &[String], name: &str) -> bool {
    let wildcard = |n: &str| {
        n.strip_prefix("*.")
            .is_some_and(|suffix| name.split_once('.').is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(suffix)))
    };
    super::identity::matches(names, name) || names.iter().any(|n| wildcard(n))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::net::conn::{Conn, ConnId, ConnTable, NetStats, NetTimes, INTERNAL_QUEUE_MAX};
    use crate::sip::{Limits, Message};

    /// A role that records what it receives, which of its connections ended, and what is handed back (also the
    /// local links' tests' role).
    pub(in crate::net) struct Role {
        table: RefCell<ConnTable>,
        pub(in crate::net) stats: Arc<NetStats>,
        times: NetTimes,
        limits: Limits,
        handed_back: RefCell<Vec<Bytes>>,
        pub(in crate::net) got: RefCell<Vec<(ConnId, Bytes)>>,
        pub(in crate::net) closed: RefCell<Vec<ConnId>>,
    }

    impl Role {
        pub(in crate::net) fn new(core: usize) -> Rc<Role> {
            let stats = Arc::new(NetStats::default());
            Rc::new(Role {
                table: RefCell::new(ConnTable::new(core, 256, stats.clone())),
                stats,
                times: NetTimes::default(),
                limits: Limits::DEFAULT,
                handed_back: RefCell::default(),
                got: RefCell::default(),
                closed: RefCell::default(),
            })
        }
    }

    impl Handler for Role {
        fn table(&self) -> &RefCell<ConnTable> {
            &self.table
        }
        fn stats(&self) -> &NetStats {
            &self.stats
        }
        fn times(&self) -> &NetTimes {
            &self.times
        }
        fn limits(&self) -> &Limits {
            &self.limits
        }
        fn on_message(self: &Rc<Self>, conn: &Rc<Conn>, msg: Message) {
            self.got.borrow_mut().push((conn.id, msg.bytes().clone()));
        }
        fn on_closed(self: &Rc<Self>, conn: &Rc<Conn>) {
            self.closed.borrow_mut().push(conn.id);
        }
    }

    impl Undeliverable for Role {
        fn undeliverable(self: &Rc<Self>, bytes: Bytes, _code: u16, _reason: &'static str) {
            self.handed_back.borrow_mut().push(bytes);
        }
    }

    fn msg(i: usize) -> Bytes {
        Bytes::from(format!("m{i}"))
    }

    /// Lets the tasks under test run until `until` holds (bounded).
    pub(in crate::net) async fn settle(until: impl Fn() -> bool) {
        for _ in 0..500 {
            if until() {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
    }

    #[test]
    fn a_full_internal_link_holds_messages_in_order_writes_them_as_room_appears_and_never_closes() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(512 * 1024)
            .make()
            .expect("executor");
        ex.run(async {
            let role = Role::new(0);
            let stats = role.stats.clone();
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let tls = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            // Nothing listens on port 1: once the link is gone, reconnecting fails at once.
            let addr = SocketAddr::from(([127, 0, 0, 1], 1));
            let c = Rc::new(Connector::new(addr, "pool.example.com", Arc::new(tls), Duration::from_secs(2)));
            let (conn, rx) = role.table.borrow_mut().insert_link(ConnKind::PeerOut, addr, Vec::new(), true);
            *c.state.borrow_mut() = State::Up(conn.id);

            // A burst past the link's bound: the rest waits in the connector, nothing is lost or closed.
            for i in 0..INTERNAL_QUEUE_MAX + 10 {
                c.send(&role, msg(i));
            }
            assert_eq!(rx.len(), INTERNAL_QUEUE_MAX);
            assert_eq!(c.pending.borrow().len(), 10);
            assert!(!conn.kill.get(), "an internal link is not closed for a burst");
            assert_eq!(stats.connector_backlogged.get(), 10);
            assert_eq!(stats.internal_queue_full.get(), 1);
            assert!(role.handed_back.borrow().is_empty());

            // The driver drains the queue to half: the held messages follow, in order.
            let mut got = Vec::new();
            for _ in 0..INTERNAL_QUEUE_MAX / 2 {
                if let Some(crate::net::conn::Out::Bytes(b)) = rx.try_recv() {
                    got.push(b);
                }
            }
            settle(|| c.pending.borrow().is_empty()).await;
            assert!(c.pending.borrow().is_empty(), "held messages written once there is room");
            while let Some(item) = rx.try_recv() {
                if let crate::net::conn::Out::Bytes(b) = item {
                    got.push(b);
                }
            }
            let expected: Vec<Bytes> = (0..INTERNAL_QUEUE_MAX + 10).map(msg).collect();
            assert!(got == expected, "every message once, in the order sent");

            // Link full and pending list full: the next one is handed back (counted), not dropped silently.
            for i in 0..INTERNAL_QUEUE_MAX + PENDING_MAX + 1 {
                c.send(&role, msg(i));
            }
            assert_eq!(c.pending.borrow().len(), PENDING_MAX);
            assert_eq!(role.handed_back.borrow().len(), 1);
            assert_eq!(stats.connector_backlog_full.get(), 1);

            // The link goes (its driver ended): what was held goes to the next connection, here unreachable, so
            // it is handed back.
            rx.close();
            settle(|| role.handed_back.borrow().len() == 1 + PENDING_MAX).await;
            assert_eq!(role.handed_back.borrow().len(), 1 + PENDING_MAX);
            assert!(c.pending.borrow().is_empty());
        });
    }
}
