//! Federation at the edge: requests from partner organizations' edges (and clearinghouses) toward our pool, and
//! our pool's requests for foreign domains toward them, both over mutual TLS.
//!
//! Inbound: the federation listener admits only peers whose certificate carries a configured name (RFC 5922:
//! the subjectAltName DNS names, matched exactly); the connection may speak for the domains the partner table
//! gives that name. With `unknown = "limited"` it also admits a peer on no list, for the domains its certificate
//! names ([`table`]). Each peer's connections count against its cap and its requests against its rate, all
//! cores together ([`limits`]). Every request is checked (rate, method, From domain spoken for, Request-URI
//! ours, hop count) before it reaches the pool, marked with `P-Parapet-Federated: <peer domain>` so that the pool
//! skips digest authentication (a header the edge removes from anything a user sends). Responses return by our
//! Via.
//!
//! Outbound: the pool sends a request for a foreign domain with `Route: <sip:fed@EDGE_INTERNAL;lr>`; the edge
//! looks the domain up in the routing table (direct partner, clearinghouse, or refuse), hides the internal hops
//! exactly as toward a user ([`super::downstream`]), and sends it through this core's connector to that peer,
//! which verifies the peer's certificate name. The response comes back on that connection, under our Via.
//!
//! Dialogs across organizations (presence): each edge Record-Routes a SUBSCRIBE as it crosses. Outbound, our
//! Record-Route carries the subscribing user's flow token at our federation address, so the partner's NOTIFYs
//! come back here and go straight to that flow ([`inbound`]); inbound, it is `<sip:fed@internal>`, so our pool's
//! NOTIFYs come back to the edge and are routed by their To domain, keeping the partner's part of the route set.
//!
//! Clearinghouse (`[edge.federation] clearinghouse = true`): the same edge as a hub between organizations. Its
//! partners are its members, checked on the way in exactly as above; a member's request for another member's
//! domain (not ours) is relayed edge to edge to the connection the routing table picks, never to the member it
//! came from (482), with the member's Vias hidden as on the way out ([`hub`]). Our pool never sees it.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::config::FederationConfig;
use crate::net::{tls, Connector};
use crate::sip::Uri;

pub mod discovery;
mod hub;
mod inbound;
mod limits;
mod outbound;
mod table;
pub mod watch;

pub use limits::Limiter;
pub use table::{
    admits, discoverable, inbound_only, inbound_only_refusal, may_send_from, may_speak, route_for, speaks_for, Target,
};

/// The user part of the Route with which the pool hands us a request for a foreign domain.
pub const FED_ROUTE_USER: &[u8] = b"fed";

/// Federation settings shared by every core, read-only.
pub struct FedSettings {
    pub cfg: FederationConfig,
    /// Our SIP domain (lowercase).
    pub domain: String,
    /// Where partners reach us (the federation listener, or the user port it shares), for our Vias toward them.
    pub listen_text: String,
    /// Our Record-Route on dialogs a partner opens, as the pool sees it (`<sip:fed@internal;...>`), and as the
    /// partner sees it (at `listen_text`); and a hub's own on the dialogs it relays. Written once, compared and
    /// copied per request.
    pub internal_rr: String,
    pub public_rr: String,
    pub hub_rr: String,
    pub tls: FedTls,
    /// The DNS resolver thread for partners by name ([`FedSettings::start_resolver`]; None in a reload's copy).
    pub resolver: Option<crate::net::dns::Resolver>,
}

/// The TLS configurations federation uses, built from our certificate and the partners' CA; a reload builds them
/// again from the files (a renewed certificate, a CA bundle with a new partner's CA) and every core swaps them in
/// for the connections it makes or accepts from then on.
#[derive(Clone)]
pub struct FedTls {
    /// The federation listener's (mutual TLS).
    pub server: Arc<rustls::ServerConfig>,
    /// Toward partners (our certificate as client certificate; their CA trusted).
    pub client: Arc<rustls::ClientConfig>,
    /// When partners share the user port: that port's (a client certificate asked for, any taken).
    pub shared_user: Option<Arc<rustls::ServerConfig>>,
    /// Whether a certificate presented on the shared port chains to the partners' CA (checked after the handshake).
    pub partner_verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl FedSettings {
    /// `user_listen` is `[edge] listen`, which partners share when the federation has no listener of its own;
    /// `internal` is `[edge] internal_listen`, where the pool reaches us.
    pub fn new(
        cfg: &FederationConfig,
        domain: &str,
        user_listen: std::net::SocketAddr,
        internal: std::net::SocketAddr,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Self, String> {
        let at = |e: crate::net::tls::TlsError| format!("[edge.federation] {e}");
        let server = tls::server_config(cert, key, Some(&cfg.ca)).map_err(at)?;
        let client = tls::client_config(&cfg.ca, Some((cert, key))).map_err(at)?;
        let partner_verifier = tls::partner_verifier(&cfg.ca).map_err(at)?;
        let shared_user = match cfg.listen {
            None => Some(tls::server_config_optional_client(cert, key, &cfg.ca).map_err(at)?),
            Some(_) => None,
        };
        let listen_text = cfg.listen.unwrap_or(user_listen).to_string();
        Ok(FedSettings {
            cfg: cfg.clone(),
            domain: domain.to_ascii_lowercase(),
            internal_rr: format!(
                "<sip:{}@{internal};transport=tls;lr>",
                std::str::from_utf8(FED_ROUTE_USER).unwrap_or("fed")
            ),
            public_rr: format!("<sip:fed@{listen_text};transport=tls;lr>"),
            hub_rr: format!("<sip:{}@{listen_text};transport=tls;lr>", hub::HUB_ROUTE_USER),
            listen_text,
            tls: FedTls { server, client, shared_user, partner_verifier },
            resolver: None,
        })
    }

    /// Starts the resolver thread with `[edge.federation]`'s DNS settings (the resolver address and bounds need a
    /// restart to change; a reload keeps this one).
    pub fn start_resolver(&mut self) -> Result<(), String> {
        let d = self.cfg.dns;
        let secs = std::time::Duration::from_secs;
        let settings = crate::net::dns::Settings {
            server: d.resolver,
            bounds: crate::net::dns::Bounds {
                ttl_min: secs(d.ttl_min_secs),
                ttl_max: secs(d.ttl_max_secs),
                grace: secs(d.grace_secs),
            },
            timeout: std::time::Duration::from_secs(2),
        };
        let r = crate::net::dns::start(settings)?;
        crate::net::dns::publish(&r);
        self.resolver = Some(r);
        Ok(())
    }
}

/// A URI's host in lowercase, written into `buf` (no allocation on the per-request path); empty when it is longer
/// than a DNS name may be or not text, which then matches no domain.
fn host_lower<'b>(uri: &Uri<'_>, buf: &'b mut [u8; 256]) -> &'b str {
    let Some(dst) = buf.get_mut(..uri.host.len()) else { return "" };
    for (d, s) in dst.iter_mut().zip(uri.host) {
        *d = s.to_ascii_lowercase();
    }
    std::str::from_utf8(dst).unwrap_or("")
}

/// Per-core connectors to federation peers, by certificate name.
pub type PartnerConnectors = std::cell::RefCell<HashMap<String, Rc<Connector>>>;
