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
    pub addr: SocketAddr,
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
}

impl Connector {
    pub fn new(addr: SocketAddr, name: &str, tls: Arc<ClientConfig>, timeout: Duration) -> Connector {
        Connector {
            addr,
            name: name.to_string(),
            tls: RefCell::new(tls),
            timeout,
            state: RefCell::new(State::Down),
            pending: RefCell::new(VecDeque::new()),
            flushing: Cell::new(false),
            overflowing: Cell::new(false),
            exact_name: false,
            internal: true,
        }
    }

    /// New certificates or trust (hot reload), for the connections made from now on; the current one stays.
    pub fn set_tls(&self, tls: Arc<ClientConfig>) {
        *self.tls.borrow_mut() = tls;
    }

    /// A connector to a SIP federation peer: its certificate must name it exactly (RFC 5922 §7.3).
    pub fn federated(addr: SocketAddr, name: &str, tls: Arc<ClientConfig>, timeout: Duration) -> Connector {
        Connector { exact_name: true, internal: false, ..Connector::new(addr, name, tls, timeout) }
    }

    pub fn send<H: Undeliverable>(self: &Rc<Self>, h: &Rc<H>, bytes: Bytes) {
        let up = match &*self.state.borrow() {
            State::Up(id) => Some(*id),
            _ => None,
        };
        if let Some(id) = up {
            if !self.pending.borrow().is_empty() {
                // Behind what already waits for room: order kept.
                self.hold(h, bytes);
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
                    bump(&h.stats().connector_backlogged);
                    self.hold(h, bytes);
                    self.start_flush(h, id);
                    return;
                }
                Err(SendError::Gone) => *self.state.borrow_mut() = State::Down,
            }
        }
        self.hold(h, bytes);
        self.ensure_connecting(h);
    }

    /// Keeps a message for later, or hands it back when the pending list is full.
    fn hold<H: Undeliverable>(&self, h: &Rc<H>, bytes: Bytes) {
        let mut pending = self.pending.borrow_mut();
        if pending.len() < PENDING_MAX {
            pending.push_back(bytes);
            return;
        }
        drop(pending);
        bump(&h.stats().connector_backlog_full);
        if !self.overflowing.replace(true) {
            tracing::warn!(
                peer = %self.addr,
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

    /// A task that writes the pending list into link `id` as its driver makes room; if the link goes, the pending
    /// messages go to the next connection.
    fn start_flush<H: Undeliverable>(self: &Rc<Self>, h: &Rc<H>, id: ConnId) {
        if self.flushing.replace(true) {
            return;
        }
        let me = self.clone();
        let h = h.clone();
        glommio::spawn_local(async move {
            let gone = loop {
                let conn = h.table().borrow().get(id).cloned();
                let Some(conn) = conn else { break true };
                conn.writable().await;
                match me.flush(&h, id) {
                    Flush::Done => break false,
                    Flush::Full => continue,
                    Flush::Gone => break true,
                }
            };
            me.flushing.set(false);
            if gone && !me.pending.borrow().is_empty() {
                let same = matches!(*me.state.borrow(), State::Up(up) if up == id);
                if same {
                    *me.state.borrow_mut() = State::Down;
                }
                me.ensure_connecting(&h);
            }
        })
        .detach();
    }

    async fn connect<H: Undeliverable>(self: Rc<Self>, h: Rc<H>) {
        let result = futures_lite::future::or(self.handshake(), async {
            glommio::timer::sleep(self.timeout).await;
            Err("timed out".to_string())
        })
        .await
        .and_then(|tls| {
            let names = peer_dns_names(tls.get_ref().1.peer_certificates());
            if self.exact_name && !identity::matches(&names, &self.name) {
                return Err(format!(
                    "its certificate names {names:?}, not {} itself (RFC 5922: no wildcard matches)",
                    self.name
                ));
            }
            Ok((tls, names))
        });
        match result {
            Ok((tls, names)) => {
                let (conn, rx) = h.table().borrow_mut().insert_link(ConnKind::PeerOut, self.addr, names, self.internal);
                *self.state.borrow_mut() = State::Up(conn.id);
                tracing::info!(peer = %self.addr, name = %self.name, "connected");
                // What waited while connecting: into the new link, as much as fits; the rest as room appears.
                if let Flush::Full = self.flush(&h, conn.id) {
                    self.start_flush(&h, conn.id);
                }
                drive(tls, conn, rx, h).await;
            }
            Err(e) => {
                tracing::warn!(peer = %self.addr, name = %self.name, error = %e, "cannot reach peer");
                *self.state.borrow_mut() = State::Down;
                let queued = std::mem::take(&mut *self.pending.borrow_mut());
                self.overflowing.set(false);
                for b in queued {
                    h.undeliverable(b, 503, "Service Unavailable");
                }
            }
        }
    }

    async fn handshake(&self) -> Result<futures_rustls::client::TlsStream<TcpStream>, String> {
        let tcp = TcpStream::connect(self.addr).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from(self.name.clone()).map_err(|e| format!("bad server name {}: {e}", self.name))?;
        let tls = self.tls.borrow().clone();
        TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| e.to_string())
    }
}
