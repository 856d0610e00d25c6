//! Local links: the edge and the pool co-located on one executor thread (one process, `parapet up`) hand each
//! other messages in memory instead of over mutual TLS on a loopback socket: no syscalls, no TLS records, no
//! copies. What one role queues for its end of the link (bytes of whole messages, by [`ConnId`] as for any
//! connection) is taken by that end's task and handed at once, as the same `Bytes`, to the other role as a message
//! received on the other end: parsed there (zero-copy, into spans of those bytes), never written, read or framed
//! from a stream.
//!
//! Each side's connection is what it would have been over TLS: the accepting side sees a [`ConnKind::PeerIn`]
//! admitted by the connecting side's certificate names (the names its own certificate would present, read from the
//! config), the connecting side a [`ConnKind::PeerOut`] to a peer whose names must include the connector's name, as
//! the TLS handshake checks. So the roles' logic is the same for both deployments.
//!
//! A listener on this thread offers itself with [`serve`] (the returned guard withdraws it); a connector asks
//! [`connect`] first and falls back to TCP and TLS when nothing on its thread serves the address (separate
//! processes, or roles on different executors).
//!
//! Bounded as any internal link: what waits is in the sending end's write queue ([`super::conn::INTERNAL_QUEUE_MAX`],
//! then [`super::conn::SendError::Busy`] and the connector's pending list); the receiving role handles each message
//! as it is handed over, holding nothing in between. Either end closing closes the other.
//!
//! [`ConnId`]: super::conn::ConnId

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Buf, Bytes};

use super::conn::{bump, Conn, ConnKind, Handler, Out};
use super::driver::dispatch;
use super::queue::OutQueue;
use crate::sip::{self, Frame};

/// Messages one end hands over before letting other tasks of the executor run.
const BATCH_MAX: usize = 64;

/// Hands one queued item's bytes to a role, as received on its end.
type Deliver = Rc<dyn Fn(Bytes)>;

/// One end, once its role has registered it: how to hand it messages, and its queue (to tell it to close).
struct End {
    deliver: Deliver,
    queue: Rc<OutQueue>,
}

/// Where the two ends meet: [`ACCEPTOR`] and [`CONNECTOR`].
#[derive(Default)]
struct Meeting {
    ends: RefCell<[Option<End>; 2]>,
}

const ACCEPTOR: usize = 0;
const CONNECTOR: usize = 1;

impl Meeting {
    fn deliver_to(&self, side: usize) -> Option<Deliver> {
        self.ends.borrow().get(side).and_then(|e| e.as_ref().map(|e| e.deliver.clone()))
    }

    /// Tells `side` to close (its task ends the connection); a Close always fits in a queue.
    fn close(&self, side: usize) {
        let queue = self.ends.borrow().get(side).and_then(|e| e.as_ref().map(|e| e.queue.clone()));
        if let Some(q) = queue {
            let _ = q.try_send(Out::Close);
        }
    }
}

/// The connecting side's end of a link made by [`connect`]: run it with [`LocalLink::run`] once its connection is
/// in the role's table. Dropped without running, it closes the accepted end.
pub struct LocalLink {
    meeting: Rc<Meeting>,
}

impl LocalLink {
    /// Runs this end until either end closes: what `conn`'s queue receives goes to the other role.
    pub async fn run<H: Handler>(self, conn: Rc<Conn>, rx: Rc<OutQueue>, h: Rc<H>) {
        let end = End { deliver: deliver_into(h.clone(), conn.clone()), queue: rx.clone() };
        if let Some(slot) = self.meeting.ends.borrow_mut().get_mut(CONNECTOR) {
            *slot = Some(end);
        }
        pump(self.meeting.clone(), CONNECTOR, conn, rx, h).await;
    }
}

impl Drop for LocalLink {
    fn drop(&mut self) {
        self.meeting.close(ACCEPTOR);
    }
}

/// What a local listener does with a new link: admits the connecting side by its names, registers and runs the
/// accepted end; returns the names this side presents, or why it refused.
type Accept = Rc<dyn Fn(&Rc<Meeting>, SocketAddr, &[String]) -> Result<Vec<String>, String>>;

thread_local! {
    /// The addresses served on this executor thread, and how.
    static SERVED: RefCell<HashMap<SocketAddr, Accept>> = RefCell::new(HashMap::new());
}

/// Who a connector is on a local link: the names its certificate carries and the address the other side sees it
/// at (its own listener's).
#[derive(Clone, Debug)]
pub struct LocalIdentity {
    pub names: Vec<String>,
    pub addr: SocketAddr,
}

/// Withdraws a [`serve`] offer when dropped (the listener closing, at drain).
pub struct Served(SocketAddr);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = SERVED.try_with(|s| s.borrow_mut().remove(&self.0));
    }
}

/// What [`serve`] needs: the listener's address, the kind its connections take, the certificate names it admits,
/// and the names it presents itself.
pub struct LocalSpec {
    pub addr: SocketAddr,
    pub kind: ConnKind,
    pub admit_names: Vec<String>,
    pub own_names: Vec<String>,
}

/// Offers `spec.addr` to connectors on this thread, with the admission a mutual-TLS listener applies: the address
/// ([`Handler::admit`]), then one of the connecting side's names must be admitted, then [`Handler::admit_peer`].
pub fn serve<H: Handler>(spec: LocalSpec, handler: Rc<H>) -> Served {
    let addr = spec.addr;
    let accept: Accept = Rc::new(move |meeting, peer, names| {
        // The listener's steps, in its order: admit the address, then the names; released whatever the outcome.
        if !handler.admit(peer, spec.kind) {
            bump(&handler.stats().connections_refused);
            return Err(format!("{peer} refused by the role"));
        }
        let refused = |why: String| {
            bump(&handler.stats().peers_refused);
            handler.release(peer, spec.kind);
            Err(why)
        };
        if !super::identity::admitted(names, &spec.admit_names) {
            return refused(format!("names {names:?} not admitted (admitted: {:?})", spec.admit_names));
        }
        let Some((kind, permit)) = handler.admit_peer(spec.kind, names, &[]) else {
            return refused(format!("names {names:?} refused by the role"));
        };
        bump(&handler.stats().accepted);
        bump(&handler.stats().local_links);
        let (conn, rx) = handler.table().borrow_mut().insert(kind, peer, names.to_vec());
        let end = End { deliver: deliver_into(handler.clone(), conn.clone()), queue: rx.clone() };
        if let Some(slot) = meeting.ends.borrow_mut().get_mut(ACCEPTOR) {
            *slot = Some(end);
        }
        let (h, listened_as, meeting) = (handler.clone(), spec.kind, meeting.clone());
        glommio::spawn_local(async move {
            pump(meeting, ACCEPTOR, conn, rx, h.clone()).await;
            drop(permit);
            h.release(peer, listened_as);
        })
        .detach();
        Ok(spec.own_names.clone())
    });
    SERVED.with(|s| s.borrow_mut().insert(addr, accept));
    Served(addr)
}

/// A link to `addr` when something on this thread serves it: our end and the names the other side presents, or
/// why it refused us. None: nothing here serves `addr` (connect over the network instead).
pub fn connect(addr: SocketAddr, me: &LocalIdentity) -> Option<Result<(LocalLink, Vec<String>), String>> {
    let accept = SERVED.with(|s| s.borrow().get(&addr).cloned())?;
    let meeting = Rc::new(Meeting::default());
    Some(accept(&meeting, me.addr, &me.names).map(|names| (LocalLink { meeting }, names)))
}

/// The task of one end: hands what its role queues to the other end's role until either closes, then ends the
/// connection as a driver would.
async fn pump<H: Handler>(meeting: Rc<Meeting>, side: usize, conn: Rc<Conn>, rx: Rc<OutQueue>, h: Rc<H>) {
    let other = 1 - side;
    'link: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut handed = 0;
        while let Some(item) = next.take() {
            let Out::Bytes(bytes) = item else { break 'link };
            if conn.kill.get() {
                break 'link;
            }
            // The other end gone (its connection closed): this one goes too.
            let Some(deliver) = meeting.deliver_to(other) else { break 'link };
            h.stats().bytes_out.add(bytes.len() as u64);
            deliver(bytes);
            handed += 1;
            if handed < BATCH_MAX {
                next = rx.try_recv();
            }
        }
        glommio::yield_if_needed().await;
    }
    rx.close();
    if let Some(slot) = meeting.ends.borrow_mut().get_mut(side) {
        *slot = None;
    }
    meeting.close(other);
    if conn.internal {
        bump(&h.stats().internal_links_closed);
        tracing::warn!(peer = %conn.peer, kind = ?conn.kind, names = ?conn.peer_names, "internal link closed (local)");
    }
    h.table().borrow_mut().remove(conn.id);
    bump(&h.stats().closed);
    h.on_closed(&conn);
}

/// How a role receives on `conn`: each item the other end hands over holds whole messages (one, as every sender
/// queues them), each parsed and dispatched as a driver would; a reply to a malformed request goes back on `conn`.
fn deliver_into<H: Handler>(h: Rc<H>, conn: Rc<Conn>) -> Deliver {
    let limits = h.limits_for(&conn);
    Rc::new(move |mut rest: Bytes| {
        h.stats().bytes_in.add(rest.len() as u64);
        h.table().borrow().touch(&conn);
        while !rest.is_empty() {
            match sip::frame(&rest, &limits) {
                Ok(Frame::Message { len }) if len > 0 => {
                    let raw = rest.split_to(len.min(rest.len()));
                    let mut reply = bytes::BytesMut::new();
                    dispatch(raw, &mut reply, &conn, &h, &limits);
                    if !reply.is_empty() {
                        let _ = h.table().borrow().send(conn.id, &reply.freeze());
                    }
                }
                Ok(Frame::Ping { consumed } | Frame::Pong { consumed }) if consumed > 0 => {
                    rest.advance(consumed.min(rest.len()));
                }
                // Not whole messages: a sender's bug, not a peer's; dropped, counted and logged, link kept.
                other => {
                    bump(&h.stats().framing_errors);
                    crate::info_limited!(peer = %conn.peer, framing = ?other, "local link: not a whole message");
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
