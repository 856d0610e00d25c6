//! Listeners: bind (one per core, SO_REUSEPORT), accept, TLS handshake under a deadline, admit mutual-TLS peers by
//! certificate name, then hand the connection to its driver.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::TlsAcceptor;
use glommio::net::TcpListener;
use rustls::ServerConfig;

use super::conn::{bump, drive, ConnKind, Handler};
use super::tls::peer_dns_names;

/// glommio binds with SO_REUSEPORT so every core can accept on the same port; the flip side is that a second
/// process on that port would silently take half the connections. A plain bind first (no SO_REUSEPORT) fails
/// when anyone already holds the port, and we refuse to start.
pub fn ensure_port_free(addr: SocketAddr, what: &str) -> io::Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(l) => {
            drop(l);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{what} {addr} is already in use by another process (refusing to share it through SO_REUSEPORT)"),
        )),
        Err(e) => Err(io::Error::new(e.kind(), format!("{what} {addr}: {e}"))),
    }
}

pub struct ListenSpec {
    pub addr: SocketAddr,
    pub tls: Arc<ServerConfig>,
    pub kind: ConnKind,
    pub handshake_timeout: Duration,
    /// For mutual TLS: the certificate names admitted (one of them must be in the peer's SAN DNS names).
    pub admit_names: Option<Vec<String>>,
    /// Most connections this core holds on this listener; beyond it new ones are closed at once.
    pub connections_max: usize,
}

/// Accepts forever on this core.
pub async fn accept_loop<H: Handler>(spec: ListenSpec, handler: Rc<H>) -> io::Result<()> {
    let listener = TcpListener::bind(spec.addr).map_err(|e| io::Error::other(format!("bind {}: {e}", spec.addr)))?;
    let spec = Rc::new(spec);
    let acceptor = TlsAcceptor::from(spec.tls.clone());
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the operator sees the log line.
                tracing::warn!(addr = %spec.addr, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        bump(&handler.stats().accepted);
        if handler.table().borrow().len() >= spec.connections_max {
            tracing::warn!(addr = %spec.addr, "connection limit reached: refusing");
            continue;
        }
        let _ = stream.set_nodelay(true);
        // A peer that stops reading must not pin its driver in a write forever (the queue then overflows).
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let Ok(peer) = stream.peer_addr() else { continue };
        let handler = handler.clone();
        let spec = spec.clone();
        let acceptor = acceptor.clone();
        glommio::spawn_local(async move {
            let hs = async { Some(acceptor.accept(stream).await) };
            let deadline = async {
                glommio::timer::sleep(spec.handshake_timeout).await;
                None
            };
            let tls = match futures_lite::future::or(hs, deadline).await {
                Some(Ok(tls)) => tls,
                Some(Err(e)) => {
                    bump(&handler.stats().handshakes_failed);
                    tracing::info!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                None => {
                    bump(&handler.stats().handshakes_failed);
                    tracing::info!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let names = peer_dns_names(tls.get_ref().1.peer_certificates());
            if let Some(admit) = &spec.admit_names {
                if !names.iter().any(|n| admit.iter().any(|a| a.eq_ignore_ascii_case(n))) {
                    bump(&handler.stats().peers_refused);
                    tracing::warn!(%peer, ?names, admitted = ?admit, "peer certificate names not admitted: closing");
                    return;
                }
            }
            let (conn, rx) = handler.table().borrow_mut().insert(spec.kind, peer, names);
            drive(tls, conn, rx, handler).await;
        })
        .detach();
    }
}
