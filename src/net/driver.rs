//! The driver: the one task per connection that touches its socket. It reads, frames, parses and hands
//! messages to the role ([`Handler::on_message`]), and writes what others queued for the connection.
//!
//! One loop waits for whichever comes first, bytes from the peer or bytes queued for it; what is queued is
//! batched into one write. Dropping the read future when a write wins costs nothing: glommio keeps the socket's
//! readiness poll in the stream, not in the future.
//!
//! While an unfinished message sits in the read buffer, a third branch joins the race: the message deadline
//! ([`Handler::message_deadline`]), measured from the read that brought its first byte, so a slow sender is
//! closed when it is due, not at the next sweep. With no partial message buffered (the common case) no timer is
//! armed.

use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::conn::{bump, Conn, Handler, Out};
use super::queue::OutQueue;
use crate::sip::{self, Frame, FrameError, Limits, Message};

/// Bytes read from a socket at once.
const READ_CHUNK: usize = 8 * 1024;
/// Most bytes the driver writes in one batch before flushing.
const WRITE_BATCH_MAX: usize = 64 * 1024;

enum Event {
    Read(std::io::Result<usize>),
    Out(Option<Out>),
    /// A pause in reading is over.
    Resume,
    /// The unfinished message in the read buffer is past its deadline.
    Deadline,
}

/// Runs a connection until it closes: reads, frames, parses and dispatches; writes what is queued for it.
pub async fn drive<S, H>(mut stream: S, conn: Rc<Conn>, rx: Rc<OutQueue>, handler: Rc<H>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let limits = handler.limits_for(&conn);
    let message_deadline = handler.message_deadline(&conn);
    // When the unfinished message in the read buffer must be complete (None: nothing unfinished, or no deadline).
    let mut partial_due: Option<Instant> = None;
    // Both buffers hold memory only while there is something in them: an idle connection owns neither.
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut closing = false;
    while !closing && !conn.kill.get() {
        let ev = {
            let out = async { Event::Out(rx.recv().await) };
            match conn.read_paused() {
                // Writes go on while reading is paused.
                Some(until) => {
                    let resume = async {
                        glommio::timer::sleep(until.saturating_duration_since(Instant::now())).await;
                        Event::Resume
                    };
                    futures_lite::future::or(out, resume).await
                }
                None => {
                    let read = async { Event::Read(read_some(&mut stream, &mut rbuf).await) };
                    match partial_due {
                        None => futures_lite::future::or(out, read).await,
                        Some(due) => {
                            let deadline = async {
                                glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
                                Event::Deadline
                            };
                            futures_lite::future::or(out, futures_lite::future::or(read, deadline)).await
                        }
                    }
                }
            }
        };
        match ev {
            Event::Resume => {
                // What was read before the pause and not handled yet.
                closing = process_input(&mut rbuf, &mut wbuf, &conn, &handler, &limits);
                // Messages held back by a pause are not a slow sender's: the unfinished-message clock restarts.
                if rbuf.is_empty() {
                    conn.partial_since_ms.set(0);
                    partial_due = None;
                    rbuf = BytesMut::new();
                } else {
                    conn.partial_since_ms.set(handler.table().borrow().now_ms().max(1));
                    partial_due = message_deadline.map(|d| Instant::now() + d);
                }
            }
            Event::Deadline => {
                // Ours to count, not the sweep's as well.
                conn.partial_since_ms.set(0);
                bump(&handler.stats().slow_senders_closed);
                tracing::info!(
                    peer = %conn.peer,
                    buffered = rbuf.len(),
                    "message not finished in time (slow sender): closed"
                );
                break;
            }
            Event::Read(Ok(0)) | Event::Read(Err(_)) => break,
            Event::Read(Ok(n)) => {
                let stats = handler.stats();
                stats.bytes_in.add(n as u64);
                let now_ms = {
                    let table = handler.table().borrow();
                    table.touch(&conn);
                    table.now_ms()
                };
                let before = rbuf.len().saturating_sub(n);
                // Not holding the table here: handlers may need it mutably.
                closing = process_input(&mut rbuf, &mut wbuf, &conn, &handler, &limits);
                // Bytes left over are the start of a message: its clock runs from the read that brought its first
                // byte until it is complete. When this read finished the one before, the leftover is a new one.
                let consumed = rbuf.len() < before + n;
                match (rbuf.is_empty(), conn.partial_since_ms.get()) {
                    (true, _) => {
                        conn.partial_since_ms.set(0);
                        partial_due = None;
                        rbuf = BytesMut::new();
                    }
                    (false, since) if since == 0 || consumed => {
                        conn.partial_since_ms.set(now_ms.max(1));
                        // The clock read only when a message is left unfinished (rare), not on every read.
                        partial_due = message_deadline.map(|d| Instant::now() + d);
                    }
                    _ => {}
                }
            }
            Event::Out(None) | Event::Out(Some(Out::Close)) => closing = true,
            Event::Out(Some(Out::Bytes(b))) => wbuf.extend_from_slice(&b),
        }
        // Batch whatever else is already queued into the same write.
        while wbuf.len() < WRITE_BATCH_MAX {
            match rx.try_recv() {
                Some(Out::Bytes(b)) => wbuf.extend_from_slice(&b),
                Some(Out::Close) => {
                    closing = true;
                    break;
                }
                None => break,
            }
        }
        if !wbuf.is_empty() {
            let written = {
                let mut write = std::pin::pin!(async {
                    stream.write_all(&wbuf).await?;
                    stream.flush().await
                });
                // Most writes finish at once; only a stalled one (the peer stopped reading) races the watchdog,
                // so the common case sets no timer.
                match futures_lite::future::poll_once(&mut write).await {
                    Some(r) => r.is_ok(),
                    None => futures_lite::future::or(async { write.await.is_ok() }, stalled(&conn)).await,
                }
            };
            if conn.kill.get() {
                bump(&handler.stats().slow_readers_closed);
                tracing::info!(peer = %conn.peer, "write queue overflowed (peer not reading): closed");
                break;
            }
            if !written {
                break;
            }
            let stats = handler.stats();
            stats.bytes_out.add(wbuf.len() as u64);
            wbuf = BytesMut::new();
        }
    }
    rx.close();
    if conn.internal {
        // Not an event of normal operation except at shutdown: the link is remade on next use, but whatever
        // was queued on it is gone.
        bump(&handler.stats().internal_links_closed);
        tracing::warn!(peer = %conn.peer, kind = ?conn.kind, names = ?conn.peer_names, "internal link closed");
    }
    let _ = stream.close().await;
    handler.table().borrow_mut().remove(conn.id);
    bump(&handler.stats().closed);
    handler.on_closed(&conn);
}

thread_local! {
    /// Where every connection of this core reads into, one poll at a time; what arrived is then appended to the
    /// connection's own buffer. A pending read holds no buffer of its own.
    static READ_SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
}

/// Reads what is available into `rbuf` (appending); Ok(0) at end of stream.
async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, rbuf: &mut BytesMut) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        READ_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
                std::task::Poll::Ready(Ok(n)) => {
                    rbuf.extend_from_slice(scratch.get(..n).unwrap_or(&[]));
                    std::task::Poll::Ready(Ok(n))
                }
                other => other,
            }
        })
    })
    .await
}

/// A write that has not finished this long means the peer is not reading.
const WRITE_STALL_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Completes (as a failed write) once the connection's queue has overflowed or the write has stalled too long.
async fn stalled(conn: &Conn) -> bool {
    let start = Instant::now();
    while !conn.kill.get() && start.elapsed() < WRITE_STALL_MAX {
        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Parses one whole message and hands it to the role; a malformed request's error response goes into `wbuf` (for
/// the same connection). Also how a local link delivers ([`super::local`]).
pub(super) fn dispatch<H: Handler>(
    raw: bytes::Bytes,
    wbuf: &mut BytesMut,
    conn: &Rc<Conn>,
    h: &Rc<H>,
    limits: &Limits,
) {
    let stats = h.stats();
    bump(&stats.messages_in);
    match Message::parse(raw.clone(), limits) {
        Ok(msg) => {
            stats.count_message(&msg);
            let start = Instant::now();
            h.on_message(conn, msg);
            h.times().handle.record_us(start.elapsed().as_micros() as u64);
        }
        Err(e) => {
            bump(&stats.parse_errors);
            crate::info_limited!(peer = %conn.peer, error = %e, "malformed SIP message");
            if !raw.starts_with(b"SIP/") {
                let _ = sip::write_error_response_raw(wbuf, &raw, e.status(), e.reason());
            }
        }
    }
}

/// Frames and dispatches every complete message in `rbuf`. Returns true when the connection must close.
fn process_input<H: Handler>(
    rbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    conn: &Rc<Conn>,
    h: &Rc<H>,
    limits: &Limits,
) -> bool {
    let stats = h.stats();
    loop {
        if conn.read_paused().is_some() {
            // The handler paused this peer: the rest waits in the buffer (and behind it, in TCP).
            return false;
        }
        match sip::frame(rbuf, limits) {
            Ok(Frame::Incomplete) => return false,
            Ok(Frame::Ping { consumed }) => {
                bump(&stats.pings);
                let _ = rbuf.split_to(consumed.min(rbuf.len()));
                // RFC 5626 §3.5.1: a double-CRLF ping gets a single-CRLF pong.
                wbuf.extend_from_slice(b"\r\n");
            }
            Ok(Frame::Pong { consumed }) => {
                let _ = rbuf.split_to(consumed.min(rbuf.len()));
            }
            Ok(Frame::Message { len }) => {
                let raw = rbuf.split_to(len.min(rbuf.len())).freeze();
                dispatch(raw, wbuf, conn, h, limits);
            }
            Err(FrameError::TooLarge { header_len, content_length }) => {
                bump(&stats.too_large);
                crate::info_limited!(peer = %conn.peer, content_length, "message over the size limit: 513, closing");
                let head = rbuf.get(..header_len).unwrap_or(&rbuf[..]);
                let _ = sip::write_error_response_raw(wbuf, head, 513, "Message Too Large");
                return true;
            }
            Err(e) => {
                bump(&stats.framing_errors);
                crate::info_limited!(peer = %conn.peer, error = ?e, "framing lost: closing");
                return true;
            }
        }
    }
}
