//! Opening connections to the target: TCP (optionally bound to a source address, so that connection counts
//! are not capped by one address's ephemeral ports), then TLS (rustls, aws-lc-rs) or, for tests against fake
//! servers, plain TCP. Owns the client TLS configurations (a played partner's edge presents its certificate) and
//! the wording of connection failures; knows nothing of SIP.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::FromRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::client::TlsStream;
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;

use crate::cli::{bad, Config, ConfigError, Partner};

/// A connection to the target, TLS or plain.
pub enum Stream {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl Stream {
    /// True when the TLS session was resumed (always false for plain TCP).
    pub fn resumed(&self) -> bool {
        match self {
            Stream::Tls(s) => s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            Stream::Plain(_) => false,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
        }
    }
}

/// Why a connection could not be opened; `sentence` words it for a person.
#[derive(Debug)]
pub enum ConnectError {
    Tcp(io::Error),
    Tls(io::Error),
    Timeout,
}

impl ConnectError {
    pub fn sentence(&self, cfg: &Config) -> ConfigError {
        let t = cfg.target;
        match self {
            ConnectError::Tcp(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                bad(format!("Cannot reach the target {t}: connection refused (is parapet running on that port?)."))
            }
            ConnectError::Tcp(e) if e.raw_os_error() == Some(libc::EMFILE) => bad(format!(
                "Cannot open more connections to {t}: too many open files (raise `ulimit -n` above --count {}).",
                cfg.count
            )),
            ConnectError::Tcp(e) => bad(format!("Cannot connect to the target {t}: {e}.")),
            ConnectError::Tls(e) => {
                let inner = e.get_ref().map(|i| i.to_string()).unwrap_or_else(|| e.to_string());
                if inner.contains("certificate") || inner.contains("Certificate") {
                    bad(format!(
                        "The target {t} presented a certificate that CA {} does not validate for {:?} ({inner}).",
                        cfg.ca_path.display(),
                        cfg.server_name
                    ))
                } else {
                    bad(format!("The TLS handshake with {t} failed: {inner}."))
                }
            }
            ConnectError::Timeout => bad(format!(
                "The target {t} did not complete a connection within --timeout-ms {}.",
                cfg.timeout.as_millis()
            )),
        }
    }
}

impl ConnectError {
    /// federation: the sentence for partner `p`'s connection to the edge's federation listener.
    pub fn partner_sentence(&self, cfg: &Config, p: &Partner) -> ConfigError {
        let t = cfg.fed_target;
        match self {
            ConnectError::Tcp(e) if e.kind() == io::ErrorKind::ConnectionRefused => bad(format!(
                "Cannot reach the edge's federation listener {t}: connection refused (does the edge have an \
                 [edge.federation] listen there? `parapet up` puts it at its port base + 5; see --fed-target)."
            )),
            ConnectError::Tcp(e) => bad(format!("Cannot connect to the edge's federation listener {t}: {e}.")),
            ConnectError::Tls(e) => {
                let inner = inner_text(e);
                if inner.contains("alert") {
                    partner_refused(cfg, p, &inner)
                } else if inner.contains("certificate") || inner.contains("Certificate") {
                    bad(format!(
                        "The edge's federation listener {t} presented a certificate that CA {} does not validate \
                         for {:?} ({inner}).",
                        cfg.ca_path.display(),
                        cfg.fed_server_name
                    ))
                } else {
                    bad(format!("The TLS handshake of partner {} with {t} failed: {inner}.", p.domain))
                }
            }
            ConnectError::Timeout => bad(format!(
                "The edge's federation listener {t} did not complete a connection within --timeout-ms {}.",
                cfg.timeout.as_millis()
            )),
        }
    }
}

/// What an I/O error from rustls says (the TLS error inside, else the error itself).
pub fn inner_text(e: &io::Error) -> String {
    e.get_ref().map(|i| i.to_string()).unwrap_or_else(|| e.to_string())
}

/// The edge refused partner `p`'s certificate (a TLS alert: in TLS 1.3 it arrives on the first read).
pub fn partner_refused(cfg: &Config, p: &Partner, why: &str) -> ConfigError {
    bad(format!(
        "The edge's federation listener {} refused the certificate of partner {}, {} ({why}): its [edge.federation] \
         ca must hold the CA that issued it.",
        cfg.fed_target,
        p.domain,
        p.cert_path.display()
    ))
}

/// Opens connections for one core. Cheap to clone (shared TLS configuration).
#[derive(Clone)]
pub struct Connector {
    target: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

fn tls_config(cfg: &Config, resume: bool, client: Option<&Partner>) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = io::BufReader::new(cfg.ca_pem.as_slice());
    let mut n = 0;
    for cert in rustls_pemfile_certs(&mut reader) {
        roots
            .add(cert)
            .map_err(|e| bad(format!("The CA file {} holds an unusable certificate: {e}.", cfg.ca_path.display())))?;
        n += 1;
    }
    if n == 0 {
        return Err(bad(format!("The CA file {} holds no PEM certificate.", cfg.ca_path.display())));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("The TLS provider refused the default protocol versions: {e}.")))?;
    let builder = builder.with_root_certificates(roots);
    let mut c = match client {
        None => builder.with_no_client_auth(),
        Some(p) => {
            let chain: Vec<_> = rustls_pemfile_certs(&mut io::BufReader::new(p.cert_pem.as_slice()));
            if chain.is_empty() {
                return Err(bad(format!(
                    "The certificate file of partner {}, {}, holds no PEM certificate.",
                    p.domain,
                    p.cert_path.display()
                )));
            }
            use rustls::pki_types::pem::PemObject;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&p.key_pem).map_err(|e| {
                bad(format!(
                    "The key file of partner {}, {}, holds no usable key: {e}.",
                    p.domain,
                    p.key_path.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                bad(format!(
                    "The certificate {} and key {} of partner {} do not go together: {e}.",
                    p.cert_path.display(),
                    p.key_path.display(),
                    p.domain
                ))
            })?
        }
    };
    if !resume {
        c.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(c))
}

/// Minimal PEM reader for CERTIFICATE blocks (avoids another dependency).
fn rustls_pemfile_certs(r: &mut impl io::BufRead) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    let mut text = Vec::new();
    if r.read_to_end(&mut text).is_err() {
        return Vec::new();
    }
    rustls::pki_types::CertificateDer::pem_slice_iter(&text).filter_map(Result::ok).collect()
}

impl Connector {
    pub fn new(cfg: &Config, resume: bool) -> Result<Connector, ConfigError> {
        let tls = if cfg.plain {
            None
        } else {
            let name = ServerName::try_from(cfg.server_name.clone()).map_err(|_| {
                bad(format!("--server-name {:?} is not a valid DNS name or IP address.", cfg.server_name))
            })?;
            Some((TlsConnector::from(tls_config(cfg, resume, None)?), name))
        };
        Ok(Connector { target: cfg.target, tls })
    }

    /// federation: to the edge's federation listener as partner `p`'s edge (presenting its certificate).
    pub fn partner(cfg: &Config, p: &Partner) -> Result<Connector, ConfigError> {
        let tls = if cfg.plain {
            None
        } else {
            let name = ServerName::try_from(cfg.fed_server_name.clone()).map_err(|_| {
                bad(format!("--fed-server-name {:?} is not a valid DNS name or IP address.", cfg.fed_server_name))
            })?;
            Some((TlsConnector::from(tls_config(cfg, false, Some(p))?), name))
        };
        Ok(Connector { target: cfg.fed_target, tls })
    }

    /// TCP connect (+ TLS handshake), bounded by `timeout`.
    pub async fn connect(&self, source: Option<Ipv4Addr>, timeout: Duration) -> Result<Stream, ConnectError> {
        let work = async {
            let tcp = match source {
                None => TcpStream::connect(self.target).await.map_err(|e| ConnectError::Tcp(e.into()))?,
                Some(ip) => connect_from(ip, self.target).await.map_err(ConnectError::Tcp)?,
            };
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok(Stream::Plain(tcp)),
                Some((c, name)) => {
                    let s = c.connect(name.clone(), tcp).await.map_err(ConnectError::Tls)?;
                    Ok(Stream::Tls(Box::new(s)))
                }
            }
        };
        let timer = async {
            glommio::timer::sleep(timeout).await;
            Err(ConnectError::Timeout)
        };
        futures_lite::future::or(work, timer).await
    }
}

/// A non-blocking connect from a chosen source address, handed to glommio once connected. The port is picked
/// at connect time (IP_BIND_ADDRESS_NO_PORT), so one source address serves many destinations.
async fn connect_from(source: Ipv4Addr, target: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(t) = target else {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "source spreading needs an IPv4 target"));
    };
    // SAFETY: plain socket syscalls on a descriptor we own; every result is checked; on error it is closed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fail = |fd| {
            let e = io::Error::last_os_error();
            libc::close(fd);
            Err(e)
        };
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let src = sa(source, 0);
        if libc::bind(fd, (&src as *const libc::sockaddr_in).cast(), len) != 0 {
            return fail(fd);
        }
        let dst = sa(*t.ip(), t.port());
        if libc::connect(fd, (&dst as *const libc::sockaddr_in).cast(), len) != 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS)
        {
            return fail(fd);
        }
        // Wait for the connect to finish without blocking the executor (on loopback it is nearly immediate).
        let mut wait = Duration::from_micros(50);
        loop {
            let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
            if libc::poll(&mut p, 1, 0) < 0 {
                return fail(fd);
            }
            if p.revents != 0 {
                break;
            }
            glommio::timer::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(10));
        }
        let mut err: libc::c_int = 0;
        let mut elen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&mut err as *mut libc::c_int).cast(), &mut elen) != 0
        {
            return fail(fd);
        }
        if err != 0 {
            libc::close(fd);
            return Err(io::Error::from_raw_os_error(err));
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}
