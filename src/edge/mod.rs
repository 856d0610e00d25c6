//! The edge (access proxy): terminates remote users' TLS, forwards their requests to the pool over mutual TLS,
//! and brings requests from the pool back to the right user's own connection.
//!
//! Owns, per core: the remote-user flows (this core's [`ConnTable`]), the connector to the pool, and the internal
//! listener on which the pool reaches users. Stateless per transaction: return paths travel in our Via branch and
//! in the flow token of the Path we add to REGISTERs (see [`token`]).
//!
//! Data path: user --TLS--> edge core (accepting) --mTLS--> pool; pool --mTLS--> edge internal listener (any core)
//! --mesh--> core owning the user's flow --TLS--> user. Responses retrace Via.

pub mod token;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use glommio::channels::channel_mesh::Senders;

use crate::config::Config;
use crate::net::conn::bump;
use crate::net::listener::{accept_loop, ensure_port_free, ListenSpec};
use crate::net::{tls, Conn, ConnId, ConnKind, ConnTable, Connector, Handler, NetStats, SendError, Undeliverable};
use crate::shard::{self, Shard};
use crate::sip::{self, Editor, HeaderName, Limits, Message, Method, Uri};

crate::counters! {
    /// Per-core counters of the edge's own decisions (network counters are in [`NetStats`]).
    pub struct EdgeStats {
        requests_from_users,
        requests_to_users,
        responses_routed,
        responses_unroutable,
        flows_failed,
        too_many_hops,
        mesh_full,
    }
}

/// Cross-core messages of the edge.
pub enum EdgeMsg {
    /// Write to a connection owned by the receiving core; `request` says whether a failure needs an answer.
    Write { conn: ConnId, bytes: Bytes, request: bool },
}

/// What every core of the edge shares, read-only (built once from config).
pub struct EdgeSettings {
    pub listen: SocketAddr,
    pub internal: SocketAddr,
    /// Host names (lowercase) a Route may carry and still mean this edge.
    pub myself: Vec<String>,
    pub limits: Limits,
    pub user_tls: Arc<rustls::ServerConfig>,
    pub internal_tls: Arc<rustls::ServerConfig>,
    pub pool_tls: Arc<rustls::ClientConfig>,
    pub pool_addr: SocketAddr,
    pub pool_name: String,
    pub pool_names: Vec<String>,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub queue_max: usize,
    pub connections_max: usize,
}

impl EdgeSettings {
    pub fn from_config(cfg: &Config) -> Result<EdgeSettings, String> {
        let e = cfg.edge.as_ref().ok_or("config: no [edge] section")?;
        let user_tls = tls::server_config(&e.cert, &e.key, None).map_err(|e| e.to_string())?;
        let internal_tls = tls::server_config(&e.cert, &e.key, Some(&e.ca)).map_err(|e| e.to_string())?;
        let pool_tls = tls::client_config(&e.ca, Some((&e.cert, &e.key))).map_err(|e| e.to_string())?;
        let mut myself = vec!["localhost".to_string(), e.listen.ip().to_string(), cfg.domain.to_ascii_lowercase()];
        myself.extend(tls::peer_dns_names(Some(&tls::load_certs(&e.cert).map_err(|e| e.to_string())?)));
        Ok(EdgeSettings {
            listen: e.listen,
            internal: e.internal_listen,
            myself,
            limits: sip_limits(cfg),
            user_tls,
            internal_tls,
            pool_tls,
            pool_addr: e.pool.addr,
            pool_name: e.pool.name.clone(),
            pool_names: if e.pool_names.is_empty() { vec![e.pool.name.clone()] } else { e.pool_names.clone() },
            handshake_timeout: Duration::from_millis(e.handshake_timeout_ms),
            idle_timeout: Duration::from_millis(e.idle_timeout_ms),
            queue_max: e.flow_queue_max,
            connections_max: 200_000,
        })
    }
}

pub fn sip_limits(cfg: &Config) -> Limits {
    Limits {
        message_bytes_max: cfg.limits.message_bytes_max,
        header_bytes_max: cfg.limits.header_bytes_max,
        header_count_max: cfg.limits.header_count_max,
        line_bytes_max: cfg.limits.line_bytes_max,
    }
}

/// Starts the edge on its cores. Returns once every executor is running.
pub fn start(cfg: &Config, io_memory: usize) -> Result<Vec<glommio::ExecutorJoinHandle<()>>, String> {
    let e = cfg.edge.as_ref().ok_or("config: no [edge] section")?;
    ensure_port_free(e.listen, "[edge] listen").map_err(|e| e.to_string())?;
    ensure_port_free(e.internal_listen, "[edge] internal_listen").map_err(|e| e.to_string())?;
    let settings = Arc::new(EdgeSettings::from_config(cfg)?);
    shard::start("edge", &e.cores, 4096, io_memory, move |shard: Shard<EdgeMsg>| {
        let settings = settings.clone();
        async move { run_core(shard, settings).await }
    })
    .map_err(|e| e.to_string())
}

async fn run_core(shard: Shard<EdgeMsg>, s: Arc<EdgeSettings>) {
    let Shard { id, senders, mut receivers, .. } = shard;
    let pool = Rc::new(Connector::new(s.pool_addr, &s.pool_name, s.pool_tls.clone(), s.handshake_timeout));
    let stats = Arc::new(NetStats::default());
    let estats = Arc::new(EdgeStats::default());
    {
        let (n, e) = (stats.clone(), estats.clone());
        crate::mgmt::metrics::register(
            "edge",
            id,
            Box::new(move |f| {
                n.visit(f);
                e.visit(f);
            }),
        );
    }
    let edge = Rc::new(Edge {
        id,
        table: RefCell::new(ConnTable::new(id, s.queue_max, stats.clone())),
        stats,
        estats,
        mesh: senders,
        pool,
        s: s.clone(),
        scratch: RefCell::new(Vec::with_capacity(256)),
    });
    for (_, rx) in receivers.streams() {
        let edge = edge.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                edge.on_mesh(msg);
            }
        })
        .detach();
    }
    {
        let edge = edge.clone();
        let idle_ms = s.idle_timeout.as_millis() as u64;
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_secs(1)).await;
                let n = edge.table.borrow().close_idle(idle_ms);
                edge.stats.idle_closed.add(n as u64);
            }
        })
        .detach();
    }
    let users = ListenSpec {
        addr: s.listen,
        tls: s.user_tls.clone(),
        kind: ConnKind::User,
        handshake_timeout: s.handshake_timeout,
        admit_names: None,
        connections_max: s.connections_max,
    };
    let internal = ListenSpec {
        addr: s.internal,
        tls: s.internal_tls.clone(),
        kind: ConnKind::PeerIn,
        handshake_timeout: s.handshake_timeout,
        admit_names: Some(s.pool_names.clone()),
        connections_max: s.connections_max,
    };
    tracing::info!(core = id, listen = %s.listen, internal = %s.internal, "edge core ready");
    let a = accept_loop(users, edge.clone());
    let b = accept_loop(internal, edge.clone());
    if let Err(e) = futures_lite::future::or(a, b).await {
        tracing::error!(core = id, error = %e, "edge listener failed");
        std::process::exit(1);
    }
}

pub struct Edge {
    id: usize,
    table: RefCell<ConnTable>,
    stats: Arc<NetStats>,
    estats: Arc<EdgeStats>,
    mesh: Senders<EdgeMsg>,
    pool: Rc<Connector>,
    s: Arc<EdgeSettings>,
    scratch: RefCell<Vec<u8>>,
}

impl Handler for Edge {
    fn table(&self) -> &RefCell<ConnTable> {
        &self.table
    }
    fn stats(&self) -> &NetStats {
        &self.stats
    }
    fn limits(&self) -> &Limits {
        &self.s.limits
    }

    fn on_message(self: &Rc<Self>, conn: &Rc<Conn>, msg: Message) {
        if !msg.is_request() {
            self.route_response(&msg);
            return;
        }
        match conn.kind {
            ConnKind::User => self.from_user(conn, &msg),
            ConnKind::PeerIn | ConnKind::PeerOut => self.to_user(conn, &msg),
        }
    }
}

impl Undeliverable for Edge {
    /// A request we could not pass on: answer it back along its Via (ours is on top).
    fn undeliverable(self: &Rc<Self>, bytes: Bytes, code: u16, reason: &'static str) {
        let Ok(req) = Message::parse(bytes, &self.s.limits) else { return };
        if !req.is_request() || req.method() == Some(&Method::Ack) {
            return;
        }
        let mut out = BytesMut::with_capacity(512);
        sip::write_response(&mut out, &req, code, reason, Some(b"edge"), &[], None);
        if let Ok(resp) = Message::parse(out.freeze(), &self.s.limits) {
            self.route_response(&resp);
        }
    }
}

impl Edge {
    fn on_mesh(self: &Rc<Self>, msg: EdgeMsg) {
        match msg {
            EdgeMsg::Write { conn, bytes, request } => self.deliver(conn, bytes, request),
        }
    }

    /// Writes to a connection on whichever core owns it.
    fn deliver(self: &Rc<Self>, conn: ConnId, bytes: Bytes, request: bool) {
        if usize::from(conn.core) == self.id {
            match self.table.borrow().send(conn, &bytes) {
                Ok(()) => return,
                Err(SendError::Gone) | Err(SendError::Full) => bump(&self.estats.flows_failed),
            }
            if request {
                // RFC 5626 §5.3: the flow is gone.
                self.undeliverable(bytes, 430, "Flow Failed");
            }
            return;
        }
        if self
            .mesh
            .try_send_to(usize::from(conn.core), EdgeMsg::Write { conn, bytes: bytes.clone(), request })
            .is_err()
        {
            bump(&self.estats.mesh_full);
            if request {
                self.undeliverable(bytes, 503, "Service Unavailable");
            }
        }
    }

    fn reply(self: &Rc<Self>, conn: &Conn, req: &Message, code: u16, reason: &str) {
        let mut out = BytesMut::with_capacity(512);
        sip::write_response(&mut out, req, code, reason, Some(b"edge"), &[], None);
        self.deliver(conn.id, out.freeze(), false);
    }

    fn is_myself(&self, uri: &Uri<'_>) -> bool {
        let host = uri.host;
        let named = self.s.myself.iter().any(|m| uri.host_eq(m.as_bytes()));
        let port_ok = match uri.port {
            None => true,
            Some(p) => p == self.s.listen.port(),
        };
        named && port_ok && !host.is_empty()
    }

    /// A remote user's request: on to the pool, with our Via (and for REGISTER a Path naming this flow).
    fn from_user(self: &Rc<Self>, conn: &Rc<Conn>, msg: &Message) {
        bump(&self.estats.requests_from_users);
        let max_forwards = msg.max_forwards().unwrap_or(70);
        if max_forwards == 0 {
            bump(&self.estats.too_many_hops);
            self.reply(conn, msg, 483, "Too Many Hops");
            return;
        }
        if msg.method() == Some(&Method::Ack) && msg.header(HeaderName::Route).is_none() {
            // An ACK for a final response we relayed statelessly: nothing downstream waits for it.
        }
        let Some(top) = msg.top_via() else {
            self.reply(conn, msg, 400, "Bad Request: no Via");
            return;
        };
        let salt = token::hash(top.branch().unwrap_or(top.raw));
        let own_routes = msg
            .values(HeaderName::Route)
            .take_while(|r| sip::NameAddr::parse(r).map(|na| self.is_myself(&na.uri)).unwrap_or(false))
            .count();

        let mut scratch = self.scratch.borrow_mut();
        scratch.clear();
        scratch.extend_from_slice(b"SIP/2.0/TLS ");
        scratch.extend_from_slice(self.s.internal.to_string().as_bytes());
        scratch.extend_from_slice(b";branch=");
        token::write_branch(&mut scratch, conn.id, salt);
        let via_end = scratch.len();
        if msg.method() == Some(&Method::Register) {
            scratch.extend_from_slice(b"<sip:");
            token::write_flow(&mut scratch, conn.id);
            scratch.push(b'@');
            scratch.extend_from_slice(self.s.internal.to_string().as_bytes());
            scratch.extend_from_slice(b";transport=tls;lr>");
        }
        let path_end = scratch.len();
        let received = conn.peer.ip().to_string();
        let (via, path) = scratch.split_at(via_end);
        let path = path.get(..path_end - via_end).unwrap_or(&[]);

        let mut ed = Editor::new(msg);
        for _ in 0..own_routes {
            ed.pop_route();
        }
        ed.set_top_via_params(Some(received.as_bytes()), Some(conn.peer.port()));
        ed.push_via(via);
        if !path.is_empty() {
            ed.prepend_header(HeaderName::Path, path);
        }
        ed.set_max_forwards(max_forwards - 1);
        let mut out = BytesMut::with_capacity(msg.bytes().len() + 256);
        ed.write(&mut out);
        drop(scratch);
        self.pool.send(self, out.freeze());
    }

    /// A request from the pool for a remote user: the first Route carries the flow token we put in Path.
    fn to_user(self: &Rc<Self>, conn: &Rc<Conn>, msg: &Message) {
        bump(&self.estats.requests_to_users);
        let flow = msg
            .values(HeaderName::Route)
            .next()
            .and_then(|r| sip::NameAddr::parse(r).ok())
            .and_then(|na| na.uri.user.and_then(token::parse_flow));
        let Some(flow) = flow else {
            self.reply(conn, msg, 404, "Not Found: no flow token");
            return;
        };
        let max_forwards = msg.max_forwards().unwrap_or(70);
        if max_forwards == 0 {
            self.reply(conn, msg, 483, "Too Many Hops");
            return;
        }
        let salt = token::hash(msg.top_via().and_then(|v| v.branch()).unwrap_or(b""));
        let mut via = Vec::with_capacity(96);
        via.extend_from_slice(b"SIP/2.0/TLS ");
        via.extend_from_slice(self.s.listen.to_string().as_bytes());
        via.extend_from_slice(b";branch=");
        token::write_branch(&mut via, conn.id, salt);
        let mut ed = Editor::new(msg);
        ed.pop_route();
        ed.push_via(&via);
        ed.set_max_forwards(max_forwards - 1);
        let mut out = BytesMut::with_capacity(msg.bytes().len() + 128);
        ed.write(&mut out);
        self.deliver(flow, out.freeze(), true);
    }

    /// Any response: the top Via is ours and names the connection it returns on.
    fn route_response(self: &Rc<Self>, msg: &Message) {
        let back = msg.top_via().and_then(|v| v.branch()).and_then(token::parse_branch);
        let Some(back) = back else {
            bump(&self.estats.responses_unroutable);
            tracing::debug!("response without our Via branch: dropped");
            return;
        };
        bump(&self.estats.responses_routed);
        let mut ed = Editor::new(msg);
        ed.pop_via();
        let mut out = BytesMut::with_capacity(msg.bytes().len());
        ed.write(&mut out);
        self.deliver(back, out.freeze(), false);
    }
}
