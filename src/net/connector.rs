//! Connectors: this core's mutual-TLS connection to one trusted peer (edge -> pool, pool -> edge), made on first
//! use, remade after it drops. Messages sent while it connects wait in a bounded queue; when the peer cannot be
//! reached they are handed back to the role as undeliverable, so requests get a 503 instead of vanishing.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use super::conn::{ConnId, ConnKind, Handler, SendError};
use super::driver::drive;
use super::identity;
use super::tls::peer_dns_names;

/// Messages held while a connection is being made.
const PENDING_MAX: usize = 4096;

/// A role that can take back what could not be delivered.
pub trait Undeliverable: Handler {
    fn undeliverable(self: &Rc<Self>, bytes: Bytes, code: u16, reason: &'static str);
}

enum State {
    Down,
    Connecting(Vec<Bytes>),
    Up(ConnId),
}

pub struct Connector {
    pub addr: SocketAddr,
    pub name: String,
    /// Replaced by a hot reload ([`Connector::set_tls`]): the next connection uses the new one.
    tls: RefCell<Arc<ClientConfig>>,
    timeout: Duration,
    state: RefCell<State>,
    /// The peer's certificate must carry `name` itself, not only a wildcard covering it (RFC 5922 §7.2, for
    /// federation; rustls alone accepts wildcards as web PKI does).
    exact_name: bool,
}

impl Connector {
    pub fn new(addr: SocketAddr, name: &str, tls: Arc<ClientConfig>, timeout: Duration) -> Connector {
        Connector {
            addr,
            name: name.to_string(),
            tls: RefCell::new(tls),
            timeout,
            state: RefCell::new(State::Down),
            exact_name: false,
        }
    }

    /// New certificates or trust (hot reload), for the connections made from now on; the current one stays.
    pub fn set_tls(&self, tls: Arc<ClientConfig>) {
        *self.tls.borrow_mut() = tls;
    }

    /// A connector to a SIP federation peer: its certificate must name it exactly (RFC 5922 §7.3).
    pub fn federated(addr: SocketAddr, name: &str, tls: Arc<ClientConfig>, timeout: Duration) -> Connector {
        Connector { exact_name: true, ..Connector::new(addr, name, tls, timeout) }
    }

    pub fn send<H: Undeliverable>(self: &Rc<Self>, h: &Rc<H>, bytes: Bytes) {
        let up = match &*self.state.borrow() {
            State::Up(id) => Some(*id),
            _ => None,
        };
        if let Some(id) = up {
            match h.table().borrow().send(id, &bytes) {
                Ok(()) => return,
                Err(SendError::Full) => {
                    h.undeliverable(bytes, 503, "Service Unavailable");
                    return;
                }
                Err(SendError::Gone) => *self.state.borrow_mut() = State::Down,
            }
        }
        let mut st = self.state.borrow_mut();
        match &mut *st {
            State::Connecting(q) if q.len() < PENDING_MAX => q.push(bytes),
            State::Connecting(_) => {
                drop(st);
                h.undeliverable(bytes, 503, "Service Unavailable");
            }
            State::Down | State::Up(_) => {
                *st = State::Connecting(vec![bytes]);
                drop(st);
                let me = self.clone();
                let h = h.clone();
                glommio::spawn_local(async move { me.connect(h).await }).detach();
            }
        }
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
        let queued = match std::mem::replace(&mut *self.state.borrow_mut(), State::Down) {
            State::Connecting(q) => q,
            _ => Vec::new(),
        };
        match result {
            Ok((tls, names)) => {
                let (conn, rx) = h.table().borrow_mut().insert(ConnKind::PeerOut, self.addr, names);
                *self.state.borrow_mut() = State::Up(conn.id);
                tracing::info!(peer = %self.addr, name = %self.name, "connected");
                for b in queued {
                    if h.table().borrow().send(conn.id, &b).is_err() {
                        h.undeliverable(b, 503, "Service Unavailable");
                    }
                }
                drive(tls, conn, rx, h).await;
            }
            Err(e) => {
                tracing::warn!(peer = %self.addr, name = %self.name, error = %e, "cannot reach peer");
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
