//! One simulated user's SIP connection: a reader task that frames what arrives, completes the waiting client
//! transaction (keyed by Via branch) and answers requests sent to this user with 200, and a writer task that
//! drains an outbox so that senders never wait for the socket. Owns the user's digest state. Knows nothing of
//! scenarios or scheduling; never panics on what the peer sends (bad bytes close the connection).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_lite::future::poll_fn;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use parapet::sip::{Frame, Framer, Limits, Message};

use crate::sipc::{self, AuthState};
use crate::transport::Stream;

/// Bytes queued for a connection before further sends fail (a stalled peer must not eat all memory).
pub const OUTBOX_BYTES_MAX: usize = 8 << 20;
/// Read chunk size.
const READ_CHUNK: usize = 16 << 10;

/// Why a request got no final answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqError {
    /// The connection is closed, failed, or its outbox is full.
    Transport,
    Timeout,
}

#[derive(Default)]
struct Slot {
    value: RefCell<Option<Result<Message, ReqError>>>,
    waker: RefCell<Option<Waker>>,
}

impl Slot {
    fn complete(&self, v: Result<Message, ReqError>) {
        *self.value.borrow_mut() = Some(v);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

#[derive(Default)]
struct Outbox {
    buf: BytesMut,
    waker: Option<Waker>,
    closed: bool,
}

pub struct SipConn {
    /// Index of the simulated user in the run's user list.
    pub user: usize,
    /// "ip:port" of our end.
    pub local: String,
    /// Stable Call-ID for this user's registrations, with an increasing CSeq.
    pub reg_call_id: String,
    pub reg_cseq: Cell<u32>,
    /// Challenge state for REGISTER (Authorization) and for other requests (Proxy-Authorization).
    pub reg_auth: RefCell<Option<AuthState>>,
    pub proxy_auth: RefCell<Option<AuthState>>,
    /// Requests received and answered (this user as callee).
    pub answered: Cell<u64>,
    /// NOTIFYs received and answered (this user as a watcher).
    pub notifies: Cell<u64>,
    /// presence: the entity-tag of this user's publication (from the last 2xx to a PUBLISH).
    pub pub_etag: RefCell<Option<String>>,
    alive: Cell<bool>,
    outbox: RefCell<Outbox>,
    pending: RefCell<HashMap<Vec<u8>, Rc<Slot>>>,
}

/// A number of this loadgen process, the same for all its connections (start time and pid).
fn run_mark() -> u32 {
    static MARK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MARK.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        nanos ^ std::process::id().rotate_left(16)
    })
}

impl SipConn {
    /// Takes over `stream`: spawns its reader and writer on the current executor.
    pub fn start(stream: Stream, user: usize, local: String) -> Rc<SipConn> {
        let c = Rc::new(SipConn {
            user,
            // The run's mark: a later run reusing this local port must not look like the same registration with
            // its CSeq gone backwards (the registrar rightly answers 400 to that, RFC 3261 §10.3 step 7).
            reg_call_id: format!("reg-{user}-{local}-{:08x}", run_mark()),
            local,
            reg_cseq: Cell::new(0),
            reg_auth: RefCell::new(None),
            proxy_auth: RefCell::new(None),
            answered: Cell::new(0),
            notifies: Cell::new(0),
            pub_etag: RefCell::new(None),
            alive: Cell::new(true),
            outbox: RefCell::new(Outbox::default()),
            pending: RefCell::new(HashMap::new()),
        });
        let (r, w) = futures_lite::io::split(stream);
        glommio::spawn_local(reader(Rc::clone(&c), r)).detach();
        glommio::spawn_local(writer(Rc::clone(&c), w)).detach();
        c
    }

    pub fn is_alive(&self) -> bool {
        self.alive.get()
    }

    pub fn next_cseq(&self) -> u32 {
        let n = self.reg_cseq.get().wrapping_add(1);
        self.reg_cseq.set(n);
        n
    }

    /// Queues bytes for the writer. False when the connection is dead or its outbox is full.
    pub fn send(&self, bytes: &[u8]) -> bool {
        if !self.alive.get() {
            return false;
        }
        let mut o = self.outbox.borrow_mut();
        if o.closed || o.buf.len() + bytes.len() > OUTBOX_BYTES_MAX {
            return false;
        }
        o.buf.extend_from_slice(bytes);
        if let Some(w) = o.waker.take() {
            w.wake();
        }
        true
    }

    /// Sends a request whose top Via branch is `branch` and waits for its final response until `deadline`.
    pub async fn request(&self, branch: &[u8], bytes: &[u8], deadline: Instant) -> Result<Message, ReqError> {
        let slot = Rc::new(Slot::default());
        self.pending.borrow_mut().insert(branch.to_vec(), Rc::clone(&slot));
        if !self.send(bytes) {
            self.pending.borrow_mut().remove(branch);
            return Err(ReqError::Transport);
        }
        let wait = poll_fn(|cx| match slot.value.borrow_mut().take() {
            Some(v) => Poll::Ready(v),
            None => {
                *slot.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        let r = with_deadline(wait, deadline).await.unwrap_or(Err(ReqError::Timeout));
        self.pending.borrow_mut().remove(branch);
        r
    }

    /// Stops the writer (which closes our side); the reader ends when the peer closes.
    pub fn close(&self) {
        let mut o = self.outbox.borrow_mut();
        o.closed = true;
        if let Some(w) = o.waker.take() {
            w.wake();
        }
    }

    fn fail(&self) {
        self.alive.set(false);
        let pending: Vec<Rc<Slot>> = self.pending.borrow_mut().drain().map(|(_, s)| s).collect();
        for s in pending {
            s.complete(Err(ReqError::Transport));
        }
        self.close();
    }

    fn on_message(&self, m: Message) {
        if m.is_request() {
            if m.method_bytes() == Some(b"ACK") {
                return;
            }
            let mut out = BytesMut::with_capacity(512);
            let tag = format!("b{}", self.user);
            sipc::answer(&mut out, &m, 200, "OK", tag.as_bytes());
            self.answered.set(self.answered.get() + 1);
            if m.method_bytes() == Some(b"NOTIFY") {
                self.notifies.set(self.notifies.get() + 1);
            }
            self.send(&out);
            return;
        }
        if m.status().is_none_or(|s| s < 200) {
            return; // provisional: keep waiting for the final answer
        }
        let Some(branch) = sipc::branch_of(&m) else { return };
        let slot = self.pending.borrow_mut().remove(branch);
        if let Some(s) = slot {
            s.complete(Ok(m));
        }
    }
}

/// Runs `fut` until `deadline`; None when the deadline passed first.
pub async fn with_deadline<T>(fut: impl Future<Output = T>, deadline: Instant) -> Option<T> {
    let timer = async {
        let left = deadline.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            glommio::timer::sleep(left).await;
        }
        None
    };
    futures_lite::future::or(async { Some(fut.await) }, timer).await
}

/// Sleeps until `t` (returns at once when `t` has passed).
pub async fn sleep_until(t: Instant) {
    let left = t.saturating_duration_since(Instant::now());
    if left > Duration::ZERO {
        glommio::timer::sleep(left).await;
    }
}

async fn reader(c: Rc<SipConn>, mut r: futures_lite::io::ReadHalf<Stream>) {
    let limits = Limits::DEFAULT;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut framer = Framer::new();
    loop {
        loop {
            match framer.frame(&buf, &limits) {
                Ok(Frame::Message { len }) => {
                    let bytes = buf.split_to(len).freeze();
                    // A message that does not parse is skipped; framing is intact, so the stream goes on.
                    if let Ok(m) = Message::parse(bytes, &limits) {
                        c.on_message(m);
                    }
                }
                Ok(Frame::Ping { consumed }) => {
                    buf.advance(consumed);
                    c.send(b"\r\n");
                }
                Ok(Frame::Pong { consumed }) => buf.advance(consumed),
                Ok(Frame::Incomplete) => break,
                Err(_) => {
                    c.fail();
                    return;
                }
            }
        }
        match r.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
            _ => {
                c.fail();
                return;
            }
        }
    }
}

async fn writer(c: Rc<SipConn>, mut w: futures_lite::io::WriteHalf<Stream>) {
    loop {
        let next = poll_fn(|cx| {
            let mut o = c.outbox.borrow_mut();
            if !o.buf.is_empty() {
                Poll::Ready(Some(o.buf.split()))
            } else if o.closed {
                Poll::Ready(None)
            } else {
                o.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let Some(bytes) = next else {
            let _ = w.close().await;
            return;
        };
        if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
            c.fail();
            return;
        }
    }
}
