//! The pool core's shell: the glommio parts around [`PoolCore`]. It owns the core (in a `RefCell` borrowed for
//! exactly one step), this core's connection table, the mesh senders, the connectors to the edges, the store
//! handle and the tasks (mesh receivers, sweep, write-behind, store replies, timers, the store's change feeds).
//! Each input runs one step of the core, then the shell performs the actions the step produced; the borrow ends
//! before any action is performed, so an action that feeds an input back (an undeliverable request, a full mesh
//! channel) starts a step of its own.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use glommio::channels::channel_mesh::Senders;

use super::core::{Action, Now, PoolCore};
use super::{persist, PoolMsg, PoolSettings, PoolStats};
use crate::net::conn::bump;
use crate::net::listener::{listen, ListenSpec};
use crate::net::local::{self, LocalIdentity, LocalSpec};
use crate::net::{Conn, ConnId, ConnKind, ConnTable, Connector, Handler, NetStats, SendError, Undeliverable};
use crate::shard::{self, Shard};
use crate::sip::{Limits, Message};
use crate::store::thread::StoreHandle;

pub struct PoolShell {
    id: usize,
    core: RefCell<PoolCore>,
    table: RefCell<ConnTable>,
    stats: Arc<NetStats>,
    times: Arc<crate::net::conn::NetTimes>,
    pstats: Arc<PoolStats>,
    mesh: Senders<PoolMsg>,
    edges: HashMap<SocketAddr, Rc<Connector>>,
    store: StoreHandle,
    limits: Limits,
    /// The roster this process reads ([`super::membership`]), and the generation this core last took.
    roster: Arc<crate::store::members::RosterSlot>,
    roster_generation: std::cell::Cell<u64>,
    /// A spare action buffer, so a step does not allocate one (a nested step finds it taken and makes its own).
    spare: RefCell<Vec<Action>>,
}

pub(super) async fn run_core(shard: Shard<PoolMsg>, s: Arc<PoolSettings>) {
    let Shard { id, count, senders, mut receivers } = shard;
    let edges = s
        .edges
        .iter()
        .map(|e| {
            // An edge co-located on this thread is reached in memory ([`crate::net::local`]), as the pool it admits.
            let me = LocalIdentity { names: s.own_names.clone(), addr: s.core.listen };
            let c = Connector::new(e.addr, &e.name, s.client_tls.clone(), s.handshake_timeout).local_as(me);
            (e.addr, Rc::new(c))
        })
        .collect();
    let stats = Arc::new(NetStats::default());
    let times = Arc::new(crate::net::conn::NetTimes::default());
    let pstats = Arc::new(PoolStats::default());
    {
        let (n, p, t) = (stats.clone(), pstats.clone(), times.clone());
        crate::mgmt::metrics::register(
            "pool",
            id,
            Box::new(move |f| {
                n.visit(f);
                p.visit(f);
                t.handle.visit("handle", f);
            }),
        );
    }
    if id == 0 {
        // One store thread per process: its counters once, under core 0.
        let (st, archive) = (s.store.stats(), s.store.archive_gate());
        crate::mgmt::metrics::register(
            "pool",
            0,
            Box::new(move |f| {
                st.visit(f);
                archive.visit(f);
            }),
        );
        let rules = s.core.rules.clone();
        crate::mgmt::metrics::register("pool", 0, Box::new(move |f| rules.visit(f)));
        let apps = s.core.apps.clone();
        crate::mgmt::metrics::register("pool", 0, Box::new(move |f| apps.visit(f)));
    }
    let pool = Rc::new(PoolShell {
        id,
        core: RefCell::new(PoolCore::new(s.core.clone(), id, count, pstats.clone(), Now::current())),
        table: RefCell::new(ConnTable::new(id, 4096, stats.clone())),
        stats,
        times,
        pstats,
        mesh: senders,
        edges,
        store: s.store.clone(),
        limits: s.core.limits,
        roster: s.membership.roster.clone(),
        roster_generation: std::cell::Cell::new(0),
        spare: RefCell::default(),
    });
    for (_, rx) in receivers.streams() {
        let pool = pool.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                pool.on_mesh(msg);
            }
        })
        .detach();
    }
    let saved = s.restore.get(id).and_then(|m| m.lock().ok().map(|mut v| std::mem::take(&mut *v))).unwrap_or_default();
    pool.step(|c, now| c.on_restore(saved, now));
    if let Some(rx) = s.directory.receivers.get(id).and_then(|m| m.lock().ok().and_then(|mut r| r.take())) {
        let pool = pool.clone();
        glommio::spawn_local(async move {
            while let Ok(view) = rx.recv_async().await {
                pool.step(|c, now| c.on_directory(view, now));
            }
        })
        .detach();
    }
    if let Ok(rx) = s.store.watch_contacts() {
        let pool = pool.clone();
        glommio::spawn_local(async move {
            while rx.recv_async().await.is_ok() {
                pool.step(PoolCore::on_contacts_changed);
            }
        })
        .detach();
    }
    match s.store.watch_policies() {
        Ok(rx) => {
            let pool = pool.clone();
            glommio::spawn_local(async move {
                while let Ok(rows) = rx.recv_async().await {
                    pool.step(|c, now| c.on_policies(&rows, now));
                }
            })
            .detach();
        }
        Err(e) => tracing::warn!(core = id, error = %e, "allow/block changes will not reach this core until restart"),
    }
    {
        let pool = pool.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(500)).await;
                pool.take_roster();
                pool.step(PoolCore::on_tick);
                // New routing rules (the config file changed): this core swaps its copy.
                let rules = pool.core.borrow().settings().rules.clone();
                if rules.generation() != pool.core.borrow().rules_generation() {
                    if let Some(set) = rules.current() {
                        pool.step(|c, now| c.on_rules(set, now));
                    }
                }
            }
        })
        .detach();
    }
    {
        let pool = pool.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(persist::WRITE_BEHIND).await;
                pool.step(PoolCore::on_write_behind);
            }
        })
        .detach();
    }
    let spec = ListenSpec {
        addr: s.core.listen,
        tls: crate::net::listener::tls_slot(s.server_tls.clone()),
        kind: ConnKind::PeerIn,
        handshake_timeout: s.handshake_timeout,
        // Edges, and the applications (`admit_peer` tells them apart).
        admit_names: Some(
            s.edges.iter().map(|e| e.name.clone()).chain(s.core.apps.cert_names().map(str::to_string)).collect(),
        ),
        connections_max: 10_000,
    };
    tracing::info!(core = id, listen = %s.core.listen, "pool core ready");
    let listener = match listen(spec, pool.clone()) {
        Ok(task) => task,
        Err(e) => {
            tracing::error!(core = id, error = %e, "pool listener failed");
            std::process::exit(1);
        }
    };
    // The edge co-located on this thread (if any) reaches the pool in memory.
    let local = local::serve(
        LocalSpec {
            addr: s.core.listen,
            kind: ConnKind::PeerIn,
            admit_names: s.edges.iter().map(|e| e.name.clone()).collect(),
            own_names: s.own_names.clone(),
        },
        pool.clone(),
    );
    shard::drain_requested().await;
    // Stop accepting: dropping the task closes the listener.
    drop(listener);
    drop(local);
    let done = shard::wait_until(Duration::from_secs(5), || pool.core.borrow().transactions_in_flight() == 0).await;
    tracing::info!(core = id, finished = done, "pool draining: closing connections");
    pool.step(PoolCore::on_drain);
    pool.table.borrow().close_all();
    shard::wait_until(Duration::from_secs(2), || pool.table.borrow().is_empty()).await;
}

impl PoolShell {
    /// One step of the core, then its actions. The core's borrow ends before the first action is performed.
    /// Hands the core the roster when a newer one was read (members only: nothing is published otherwise).
    fn take_roster(self: &Rc<Self>) {
        let generation = self.roster.generation();
        if generation == self.roster_generation.get() {
            return;
        }
        self.roster_generation.set(generation);
        let roster = self.roster.get();
        let wall = crate::store::members::now_ms();
        self.step(|c, now| c.on_roster(roster, wall, now));
    }

    fn step(self: &Rc<Self>, input: impl FnOnce(&mut PoolCore, Now)) {
        let mut actions = std::mem::take(&mut *self.spare.borrow_mut());
        {
            let mut core = self.core.borrow_mut();
            input(&mut core, Now::current());
            core.take_actions(&mut actions);
        }
        for a in actions.drain(..) {
            self.perform(a);
        }
        *self.spare.borrow_mut() = actions;
    }

    fn perform(self: &Rc<Self>, a: Action) {
        match a {
            Action::Send { conn, bytes } => self.deliver(conn, bytes),
            Action::Mesh { core, msg } => {
                // A request kept (a reference, not a copy) to be answered if the channel is full.
                let request = match &msg {
                    PoolMsg::Request { origin, bytes, .. } => Some((*origin, bytes.clone())),
                    PoolMsg::Write { .. }
                    | PoolMsg::Presence(_)
                    | PoolMsg::Directory(_)
                    | PoolMsg::Helpdesk(_)
                    | PoolMsg::Apps(_) => None,
                };
                if self.mesh.try_send_to(core, msg).is_err() {
                    match request {
                        // Overload: the core answers 503.
                        Some((origin, bytes)) => self.step(|c, now| c.on_mesh_full(origin, bytes, now)),
                        None => bump(&self.pstats.mesh_full),
                    }
                }
            }
            Action::ToEdge { addr, bytes } => match self.edges.get(&addr) {
                Some(connector) => connector.clone().send(self, bytes),
                None => tracing::debug!(%addr, "no connector for this edge: dropped"),
            },
            Action::StoreWrite(w) => {
                if !self.store.write_state(w) {
                    bump(&self.pstats.store_queue_full);
                }
            }
            Action::Archive(row) => {
                if !self.store.archive(row) {
                    bump(&self.pstats.archive_lost);
                }
            }
            Action::StoreCall { op, then } => {
                let pool = self.clone();
                glommio::spawn_local(async move {
                    let reply = pool.store.call(op).await;
                    pool.step(|c, now| c.on_store_reply(then, reply, now));
                })
                .detach();
            }
            Action::Timer { after, timer } => {
                let pool = self.clone();
                glommio::spawn_local(async move {
                    glommio::timer::sleep(after).await;
                    pool.step(|c, now| c.on_timer(timer, now));
                })
                .detach();
            }
        }
    }

    /// Sends bytes to a connection of any core.
    fn deliver(&self, conn: ConnId, bytes: Bytes) {
        if usize::from(conn.core) == self.id {
            if let Err(SendError::Full) = self.table.borrow().send(conn, &bytes) {
                tracing::warn!(?conn, "connection queue full (an edge or an application not reading): closed");
            }
            return;
        }
        if self.mesh.try_send_to(usize::from(conn.core), PoolMsg::Write { conn, bytes }).is_err() {
            bump(&self.pstats.mesh_full);
        }
    }

    fn on_mesh(self: &Rc<Self>, msg: PoolMsg) {
        match msg {
            PoolMsg::Write { conn, bytes } => self.deliver(conn, bytes),
            msg => self.step(|c, now| c.on_mesh(msg, now)),
        }
    }
}

impl Handler for PoolShell {
    fn table(&self) -> &RefCell<ConnTable> {
        &self.table
    }
    fn stats(&self) -> &NetStats {
        &self.stats
    }
    fn times(&self) -> &crate::net::conn::NetTimes {
        &self.times
    }
    fn limits(&self) -> &Limits {
        &self.limits
    }
    fn on_message(self: &Rc<Self>, conn: &Rc<Conn>, msg: Message) {
        let origin = conn.id;
        if conn.kind == ConnKind::Partner {
            // An application's connection (`admit_peer`): its certificate says which.
            let app = self.core.borrow().settings().apps.by_cert(&conn.peer_names);
            if let Some(app) = app {
                self.step(|c, now| c.on_app_message(origin, app, msg, now));
            }
            return;
        }
        self.step(|c, now| c.on_message(origin, msg, now));
    }
    fn on_closed(self: &Rc<Self>, conn: &Rc<Conn>) {
        if conn.kind == ConnKind::Partner {
            let id = conn.id;
            self.step(|c, now| c.on_app_closed(id, now));
        }
    }
    /// An application's certificate makes its connection a `Partner` one: authenticated, not an internal link
    /// (the user-sized write queue: an application that stops reading is closed, never waited for).
    fn admit_peer(
        &self,
        kind: ConnKind,
        names: &[String],
        _chain: &[rustls::pki_types::CertificateDer<'_>],
    ) -> Option<(ConnKind, crate::net::conn::Permit)> {
        let s = self.core.borrow();
        match s.settings().apps.by_cert(names) {
            Some(app) => {
                let name = s.settings().apps.apps.get(app).map(|a| a.name.clone()).unwrap_or_default();
                tracing::info!(application = %name, ?names, "application connected");
                Some((ConnKind::Partner, None))
            }
            None => Some((kind, None)),
        }
    }
}

impl Undeliverable for PoolShell {
    /// A forked request that could not reach its edge: the core answers it, as that branch's response.
    fn undeliverable(self: &Rc<Self>, bytes: Bytes, code: u16, reason: &'static str) {
        self.step(|c, now| c.on_undeliverable(bytes, code, reason, now));
    }
}
