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

use super::conn::{bump, ConnKind, Handler};
use super::driver::drive;
use super::tls::peer_dns_names;

/// glommio binds with SO_REUSEPORT so every core can accept on the same port; the flip side is that a second
/// process on that port would silently take half the connections. We refuse to start when anything already
/// listens there. A trial bind cannot tell: it also fails on the TIME_WAIT sockets our own previous run left
/// (they inherit SO_REUSEPORT), which must not stop a restart. So we read the kernel's socket tables.
///
/// A process that has just exited can hold its listening sockets a little longer: io_uring releases the files
/// it registered after the process is gone, from a kernel worker. So a port still taken is looked at again for
/// up to [`RELEASE_WAIT`] before we give up (a restart right after a stop must not fail).
pub fn ensure_port_free(addr: SocketAddr, what: &str) -> io::Result<()> {
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    while listening_on(addr)? {
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{what} {addr} is already in use by another process (refusing to share it through SO_REUSEPORT)"
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// How long a port held by a process that is going away may take to be released.
const RELEASE_WAIT: Duration = Duration::from_secs(3);

/// Whether a socket in LISTEN state holds `addr`'s port on its address or on the wildcard address.
fn listening_on(addr: SocketAddr) -> io::Result<bool> {
    const LISTEN: &str = "0A";
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let mut cols = line.split_whitespace();
            let (Some(local), Some(_remote), Some(state)) = (cols.nth(1), cols.next(), cols.next()) else { continue };
            if state != LISTEN {
                continue;
            }
            let Some((ip_hex, port_hex)) = local.split_once(':') else { continue };
            if u16::from_str_radix(port_hex, 16).ok() != Some(addr.port()) {
                continue;
            }
            // Wildcard (all zeros) or the same address: either takes our connections.
            let ip_matches = ip_hex.bytes().all(|b| b == b'0') || hex_ip_matches(ip_hex, addr.ip());
            if ip_matches {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// /proc/net/tcp writes IPv4 as one little-endian u32 and IPv6 as four of them.
fn hex_ip_matches(hex: &str, ip: std::net::IpAddr) -> bool {
    let words: Vec<u32> = (0..hex.len() / 8)
        .filter_map(|i| hex.get(i * 8..i * 8 + 8))
        .filter_map(|w| u32::from_str_radix(w, 16).ok())
        .collect();
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    match ip {
        std::net::IpAddr::V4(v4) => {
            bytes == v4.octets()
                || (bytes.len() == 16 && bytes[12..] == v4.octets() && bytes[..10].iter().all(|b| *b == 0))
        }
        std::net::IpAddr::V6(v6) => bytes == v6.octets(),
    }
}

/// A listener's TLS configuration, which a hot reload may replace: each accept takes the one in force, and
/// established connections keep theirs.
pub type TlsSlot = Rc<std::cell::RefCell<Arc<ServerConfig>>>;

/// A slot holding `cfg` (for listeners whose configuration never changes).
pub fn tls_slot(cfg: Arc<ServerConfig>) -> TlsSlot {
    Rc::new(std::cell::RefCell::new(cfg))
}

pub struct ListenSpec {
    pub addr: SocketAddr,
    pub tls: TlsSlot,
    /// What its connections are, unless the handler decides otherwise after the handshake
    /// ([`Handler::admit_peer`]).
    pub kind: ConnKind,
    pub handshake_timeout: Duration,
    /// For mutual TLS: the certificate names admitted (one of them must be in the peer's SAN DNS names).
    pub admit_names: Option<Vec<String>>,
    /// Most connections this core holds on this listener; beyond it new ones are closed at once.
    pub connections_max: usize,
}

/// Accepts forever on this core.
/// Binds on this core and starts accepting in a task of its own; dropping the returned task stops accepting and
/// closes the listener.
///
/// Its own task, not a branch of a bigger future: glommio's accept registers a new waker clone every time its
/// future is polled while pending, so a pending accept polled along with anything busier (another listener, a
/// timer) piles up clones until the task's 16-bit reference count overflows and the executor panics (seen at
/// ~2,500 handshakes/s within seconds). Alone in its task, an accept is polled only when it completes.
pub fn listen<H: Handler>(spec: ListenSpec, handler: Rc<H>) -> io::Result<glommio::Task<()>> {
    let listener = TcpListener::bind(spec.addr).map_err(|e| io::Error::other(format!("bind {}: {e}", spec.addr)))?;
    Ok(glommio::spawn_local(accept_loop(listener, spec, handler)))
}

async fn accept_loop<H: Handler>(listener: TcpListener, spec: ListenSpec, handler: Rc<H>) {
    let spec = Rc::new(spec);
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
            crate::warn_limited!(addr = %spec.addr, "connection limit reached: refusing");
            continue;
        }
        let _ = stream.set_nodelay(true);
        // No socket write timeout: a peer that stops reading is caught by the driver's stall watchdog (one
        // mechanism, counted and logged), and the handshake has its own deadline.
        let Ok(peer) = stream.peer_addr() else { continue };
        if !handler.admit(peer, spec.kind) {
            bump(&handler.stats().connections_refused);
            continue;
        }
        let handler = handler.clone();
        let spec = spec.clone();
        let acceptor = TlsAcceptor::from(spec.tls.borrow().clone());
        glommio::spawn_local(async move {
            handshake_and_drive(stream, peer, &spec, acceptor, handler.clone()).await;
            handler.release(peer, spec.kind);
        })
        .detach();
    }
}

async fn handshake_and_drive<H: Handler>(
    stream: glommio::net::TcpStream,
    peer: SocketAddr,
    spec: &ListenSpec,
    acceptor: TlsAcceptor,
    handler: Rc<H>,
) {
    let hs = async { Some(acceptor.accept(stream).await) };
    let deadline = async {
        glommio::timer::sleep(spec.handshake_timeout).await;
        None
    };
    let tls = match futures_lite::future::or(hs, deadline).await {
        Some(Ok(tls)) => tls,
        // Closed before a byte of TLS: a port probe (a load balancer's TCP check, `up` waiting for the port,
        // `/ready` of the edge), not a client that failed: counted apart and not logged at info.
        Some(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            bump(&handler.stats().handshakes_abandoned);
            tracing::debug!(%peer, "connection closed before its TLS handshake");
            return;
        }
        Some(Err(e)) => {
            bump(&handler.stats().handshakes_failed);
            crate::info_limited!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        None => {
            bump(&handler.stats().handshakes_failed);
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let chain = tls.get_ref().1.peer_certificates();
    let names = peer_dns_names(chain);
    if let Some(admit) = &spec.admit_names {
        if !super::identity::admitted(&names, admit) {
            bump(&handler.stats().peers_refused);
            tracing::warn!(%peer, ?names, admitted = ?admit, "peer certificate names not admitted: closing");
            return;
        }
    }
    let Some((kind, permit)) = handler.admit_peer(spec.kind, &names, chain.unwrap_or(&[])) else {
        bump(&handler.stats().peers_refused);
        tracing::debug!(%peer, ?names, "peer refused by the handler: closing");
        return;
    };
    // A user's own certificate (on a port shared with partners) says nothing we use.
    let names = if kind == ConnKind::User { Vec::new() } else { names };
    let (conn, rx) = handler.table().borrow_mut().insert(kind, peer, names);
    drive(tls, conn, rx, handler).await;
    // Held until here: what the handler counted for this connection is given back now that it has ended.
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_listener_and_ignores_free_ports() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        assert!(ensure_port_free(addr, "test").is_err());
        drop(l);
        assert!(ensure_port_free(addr, "test").is_ok());
        // Released while we look (a process going away): not an error.
        let l = std::net::TcpListener::bind(addr).expect("bind again");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(l);
        });
        assert!(ensure_port_free(addr, "test").is_ok());
        let _ = t.join();
    }
}
