//! `parapet federation test <domain>`: connects to a federation partner's edge exactly as our edge would (the
//! partner's `addr` and `cert_name` from our `[edge.federation]` table, our edge certificate as the client
//! certificate, the federation CA as the only trust anchor), then reports the peer certificate's DNS names,
//! whether it is trusted (chain to our federation CA and name match), the TLS version and cipher suite, and a
//! round-trip OPTIONS (status line and time).
//!
//! Plain blocking code on the calling thread: std sockets and a rustls `ClientConnection`. A verifier wrapping
//! the usual WebPKI one records the peer's chain and the verdict, so an untrusted certificate is still described.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme, StreamOwned};

use crate::config::Config;
use crate::net::tls;

/// How long the probe waits for the connection, the handshake and the OPTIONS response, each.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the probe found; `Err` of [`probe`] is one sentence saying what failed.
pub struct Report {
    pub lines: Vec<String>,
}

/// The peer certificate's DNS names and the WebPKI verdict on its chain (Err: why it is not trusted).
type Seen = (Vec<String>, Result<(), String>);

/// Records what the peer presented, then answers as the WebPKI verifier does.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<Seen>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let names = tls::peer_dns_names(Some(std::slice::from_ref(end_entity)));
        let verdict = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        let mut summary = verdict.as_ref().map(|_| ()).map_err(describe);
        // WebPKI accepts a wildcard for the name; our edge does not (RFC 5922 §7.2), so neither does the probe.
        if let (Ok(()), ServerName::DnsName(want)) = (&summary, server_name) {
            if !crate::net::identity::matches(&names, want.as_ref()) {
                summary =
                    Err(format!("it covers {} only by a wildcard, which RFC 5922 does not accept", want.as_ref()));
            }
        }
        if let Ok(mut s) = self.seen.lock() {
            *s = Some((names, summary));
        }
        verdict
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        // Development CAs may share a subject name: a foreign one then shows up as a bad signature.
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "it does not chain to our federation CA".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "it does not carry the configured cert_name".into()
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "it has expired".into(),
        other => other.to_string(),
    }
}

/// Probes the partner (or clearinghouse) for `domain` named in the edge config at `config_path`.
pub fn probe(config_path: &Path, domain: &str) -> Result<Report, String> {
    let cfg = Config::load(config_path).map_err(|e| e.to_string())?;
    cfg.validate().map_err(|e| e.to_string())?;
    let edge = cfg.edge.as_ref().ok_or_else(|| format!("{}: no [edge] section.", config_path.display()))?;
    let fed =
        edge.federation.as_ref().ok_or_else(|| format!("{}: no [edge.federation] table.", config_path.display()))?;
    let domain = domain.trim().to_ascii_lowercase();
    if crate::edge::federation::inbound_only(fed, &domain) {
        return Err(format!(
            "{domain} is an inbound-only partner in {} (addr = \"none\"): we never connect to it, so there is \
             nothing to test from here; its edge connects to ours. Give it an addr to federate both ways.",
            config_path.display()
        ));
    }
    let target = crate::edge::federation::route_for(fed, &domain).ok_or_else(|| {
        format!("{domain} is not a partner (nor served by a clearinghouse) in {}.", config_path.display())
    })?;
    tls::install_provider();
    let roots = {
        let mut store = RootCertStore::empty();
        for c in tls::load_certs(&fed.ca).map_err(|e| format!("[edge.federation] ca: {e}"))? {
            store.add(c).map_err(|e| format!("[edge.federation] ca: {}: {e}", fed.ca.display()))?;
        }
        Arc::new(store)
    };
    let inner = WebPkiServerVerifier::builder(roots).build().map_err(|e| format!("[edge.federation] ca: {e}"))?;
    let verifier = Arc::new(Recording { inner, seen: Mutex::new(None) });
    let certs = tls::load_certs(&edge.cert).map_err(|e| format!("[edge] cert: {e}"))?;
    let key = tls::load_key(&edge.key).map_err(|e| format!("[edge] key: {e}"))?;
    let client = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("[edge] cert/key: {e}"))?;
    let mut lines = vec![format!("partner: {domain} via {} at {}", target.name, target.addr)];
    let addr = match target.addr {
        crate::config::PeerAddr::Ip(a) => *a,
        crate::config::PeerAddr::Name { host, port } => {
            let q = crate::net::dns::Query { host: host.clone(), port: *port };
            let found = crate::net::dns::resolve_blocking(fed.dns.resolver, &q)?;
            *found.first().ok_or_else(|| format!("DNS {q}: no address"))?
        }
    };
    let tcp = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
        .map_err(|e| format!("Cannot connect to {} ({}): {e}.", target.addr, target.name))?;
    tcp.set_read_timeout(Some(STEP_TIMEOUT)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(STEP_TIMEOUT)).map_err(|e| e.to_string())?;
    let name =
        ServerName::try_from(target.name.to_string()).map_err(|e| format!("cert_name {:?}: {e}", target.name))?;
    let conn = ClientConnection::new(Arc::new(client), name).map_err(|e| e.to_string())?;
    let mut s = StreamOwned::new(conn, tcp);
    let handshake = (|| {
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok::<(), std::io::Error>(())
    })();
    let seen = verifier.seen.lock().ok().and_then(|mut g| g.take());
    if let Some((names, verdict)) = &seen {
        lines.push(format!("certificate DNS names: {}", names.join(", ")));
        match verdict {
            Ok(()) => lines.push(format!("trusted: yes (chains to our federation CA, carries {})", target.name)),
            Err(why) => {
                lines.push(format!("trusted: no ({why})"));
                print_lines(&lines);
                return Err(format!("The certificate of {} at {} is not trusted: {why}.", target.name, target.addr));
            }
        }
    }
    if let Err(e) = handshake {
        print_lines(&lines);
        return Err(format!("The TLS handshake with {} at {} failed: {e}.", target.name, target.addr));
    }
    let version = s.conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_else(|| "unknown".into());
    let suite = s.conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default();
    lines.push(format!("tls: {version} {suite}"));
    let started = Instant::now();
    let options = options_request(&cfg.domain, &domain, &fed.listen.unwrap_or(edge.listen).to_string());
    let status = round_trip(&mut s, &options).map_err(|e| {
        print_lines(&lines);
        format!("OPTIONS to {domain} through {} got no answer: {e}.", target.name)
    })?;
    let took = started.elapsed();
    lines.push(format!("OPTIONS sip:{domain}: {status} ({:.1} ms)", took.as_secs_f64() * 1000.0));
    if !status.starts_with("SIP/2.0 2") {
        print_lines(&lines);
        return Err(format!("OPTIONS to {domain} through {} was answered {status:?}.", target.name));
    }
    Ok(Report { lines })
}

fn print_lines(lines: &[String]) {
    for l in lines {
        println!("{l}");
    }
}

fn options_request(own: &str, domain: &str, via_host: &str) -> String {
    let n: u64 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!(
        "OPTIONS sip:{domain} SIP/2.0\r\nVia: SIP/2.0/TLS {via_host};branch=z9hG4bKprobe{n:x}\r\nMax-Forwards: 70\r\n\
         From: <sip:probe@{own}>;tag=p{n:x}\r\nTo: <sip:{domain}>\r\nCall-ID: probe-{n:x}@{own}\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Writes `req` and reads until a complete response head; returns its status line.
fn round_trip(s: &mut StreamOwned<ClientConnection, TcpStream>, req: &str) -> Result<String, String> {
    s.write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;
    s.flush().map_err(|e| format!("write: {e}"))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && got.len() < 65_536 {
        match s.read(&mut buf) {
            Ok(0) => return Err("the connection was closed".into()),
            Ok(n) => {
                got.extend_from_slice(buf.get(..n).unwrap_or(&[]));
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let text = String::from_utf8_lossy(&got);
                    return Ok(text.lines().next().unwrap_or("").trim().to_string());
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err("timed out".into())
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Err("timed out".into())
}

/// Runs the probe and prints the report; Err is the one-sentence reason (exit status 1).
pub fn run(config_path: &Path, domain: &str) -> Result<(), String> {
    let report = probe(config_path, domain)?;
    print_lines(&report.lines);
    println!("ok");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_is_addressed_to_the_domain() {
        let r = options_request("example.com", "partner.test", "127.0.0.1:5065");
        assert!(r.starts_with("OPTIONS sip:partner.test SIP/2.0\r\n"));
        assert!(r.contains("From: <sip:probe@example.com>"));
    }

    #[test]
    fn missing_config_is_one_sentence() {
        let e = probe(Path::new("/nonexistent/edge.toml"), "x.test").err().unwrap_or_default();
        assert!(e.contains("/nonexistent/edge.toml"), "{e}");
    }
}
