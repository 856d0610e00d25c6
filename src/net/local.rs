//! Local links: the edge and the pool co-located on one executor thread (one process, `parapet up`) talk through
//! an in-memory byte pipe instead of mutual TLS over a loopback socket: no syscalls, no TLS records, no kernel
//! buffers; a write wakes the reading task directly.
//!
//! Each side still runs the ordinary [`super::driver::drive`] on its end, and each side's connection is what it
//! would have been over TLS: the accepting side sees a [`ConnKind::PeerIn`] admitted by the connecting side's
//! certificate names (the names its own certificate would present, read from the config), the connecting side a
//! [`ConnKind::PeerOut`] to a peer whose names must include the connector's name, as the TLS handshake checks. So
//! the roles' logic is the same for both deployments.
//!
//! A listener on this thread offers itself with [`serve`] (the returned guard withdraws it); a connector asks
//! [`connect`] first and falls back to TCP and TLS when nothing on its thread serves the address (separate
//! processes, or roles on different executors).
//!
//! Bounded: each direction holds at most [`PIPE_BYTES`]; a writer past that waits for the reader (the driver's
//! write then stalls, and its watchdog closes a link whose reader stopped, as with a socket).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite};

use super::conn::{bump, ConnKind, Handler};
use super::driver::drive;

/// Bytes one direction of a local link holds before its writer waits (a socket's send buffer, roughly).
pub const PIPE_BYTES: usize = 256 * 1024;

/// One direction of a link.
struct Pipe {
    buf: BytesMut,
    cap: usize,
    /// The reading task, waiting for bytes or for the end.
    reader: Option<Waker>,
    /// The writing task, waiting for room.
    writer: Option<Waker>,
    /// The writer closed or dropped its end: the reader sees the end once the buffer is drained.
    write_closed: bool,
    /// The reader dropped its end: writes fail.
    read_closed: bool,
}

impl Pipe {
    fn new(cap: usize) -> Rc<RefCell<Pipe>> {
        Rc::new(RefCell::new(Pipe {
            buf: BytesMut::new(),
            cap: cap.max(1),
            reader: None,
            writer: None,
            write_closed: false,
            read_closed: false,
        }))
    }

    fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

/// One end of a local link: reads what the other end writes, and the other way round.
pub struct LocalStream {
    rx: Rc<RefCell<Pipe>>,
    tx: Rc<RefCell<Pipe>>,
}

/// Two connected ends, each direction bounded by `cap` bytes.
pub fn pair(cap: usize) -> (LocalStream, LocalStream) {
    let (a, b) = (Pipe::new(cap), Pipe::new(cap));
    (LocalStream { rx: a.clone(), tx: b.clone() }, LocalStream { rx: b, tx: a })
}

impl LocalStream {
    /// Bytes written by this end that the other has not read yet.
    pub fn unread(&self) -> usize {
        self.tx.borrow().buf.len()
    }
}

impl AsyncRead for LocalStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<std::io::Result<usize>> {
        let mut p = self.rx.borrow_mut();
        if p.buf.is_empty() {
            if p.write_closed || out.is_empty() {
                return Poll::Ready(Ok(0));
            }
            p.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = out.len().min(p.buf.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), p.buf.get(..n)) {
            dst.copy_from_slice(src);
        }
        p.buf.advance(n);
        if p.buf.is_empty() {
            // A burst's buffer is given back once read, like the write queues' (an idle link holds nothing).
            p.buf = BytesMut::new();
        }
        p.wake_writer();
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for LocalStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut p = self.tx.borrow_mut();
        if p.read_closed || p.write_closed {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let room = p.cap.saturating_sub(p.buf.len());
        if room == 0 {
            p.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        p.buf.extend_from_slice(data.get(..n).unwrap_or_default());
        p.wake_reader();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut p = self.tx.borrow_mut();
        p.write_closed = true;
        p.wake_reader();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LocalStream {
    fn drop(&mut self) {
        let mut tx = self.tx.borrow_mut();
        tx.write_closed = true;
        tx.wake_reader();
        drop(tx);
        let mut rx = self.rx.borrow_mut();
        rx.read_closed = true;
        rx.buf = BytesMut::new();
        rx.wake_writer();
    }
}

/// What a local listener does with a new link: admits the connecting side by its names and drives the accepted
/// end; returns the names this side presents, or why it refused.
type Accept = Rc<dyn Fn(LocalStream, SocketAddr, &[String]) -> Result<Vec<String>, String>>;

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

/// Offers `spec.addr` to connectors on this thread, with the admission a mutual-TLS listener applies: one of the
/// connecting side's names must be admitted, then [`Handler::admit_peer`] decides.
pub fn serve<H: Handler>(spec: LocalSpec, handler: Rc<H>) -> Served {
    let addr = spec.addr;
    let accept: Accept = Rc::new(move |stream, peer, names| {
        if !names.iter().any(|n| spec.admit_names.iter().any(|a| a.eq_ignore_ascii_case(n))) {
            bump(&handler.stats().peers_refused);
            return Err(format!("names {names:?} not admitted (admitted: {:?})", spec.admit_names));
        }
        let Some((kind, permit)) = handler.admit_peer(spec.kind, names, &[]) else {
            bump(&handler.stats().peers_refused);
            return Err(format!("names {names:?} refused by the role"));
        };
        bump(&handler.stats().accepted);
        bump(&handler.stats().local_links);
        let (conn, rx) = handler.table().borrow_mut().insert(kind, peer, names.to_vec());
        let h = handler.clone();
        glommio::spawn_local(async move {
            drive(stream, conn, rx, h.clone()).await;
            drop(permit);
            h.release(peer, kind);
        })
        .detach();
        Ok(spec.own_names.clone())
    });
    SERVED.with(|s| s.borrow_mut().insert(addr, accept));
    Served(addr)
}

/// A link to `addr` when something on this thread serves it: our end and the names the other side presents, or
/// why it refused us. None: nothing here serves `addr` (connect over the network instead).
pub fn connect(addr: SocketAddr, me: &LocalIdentity) -> Option<Result<(LocalStream, Vec<String>), String>> {
    let accept = SERVED.with(|s| s.borrow().get(&addr).cloned())?;
    let (ours, theirs) = pair(PIPE_BYTES);
    Some(accept(theirs, me.addr, &me.names).map(|names| (ours, names)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

    fn run<F: std::future::Future<Output = ()> + 'static>(f: F) {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(512 * 1024)
            .make()
            .expect("executor");
        ex.run(f);
    }

    #[test]
    fn bytes_cross_both_ways_in_order() {
        run(async {
            let (mut a, mut b) = pair(64);
            a.write_all(b"REGISTER").await.expect("write");
            b.write_all(b"200 OK").await.expect("write");
            let mut got = [0u8; 8];
            b.read_exact(&mut got).await.expect("read");
            assert_eq!(&got, b"REGISTER");
            let mut got = [0u8; 6];
            a.read_exact(&mut got).await.expect("read");
            assert_eq!(&got, b"200 OK");
        });
    }

    #[test]
    fn a_full_pipe_makes_the_writer_wait_until_the_reader_reads() {
        run(async {
            let (mut a, mut b) = pair(16);
            let data: Vec<u8> = (0..40u8).collect();
            let writer = glommio::spawn_local(async move {
                a.write_all(&data).await.expect("write");
                a
            });
            // The writer has filled the pipe and waits: nothing past the bound is held.
            glommio::yield_if_needed().await;
            futures_lite::future::yield_now().await;
            assert_eq!(b.rx.borrow().buf.len(), 16, "the pipe holds its bound and no more");
            assert!(b.rx.borrow().writer.is_some(), "the writer waits for room");
            let mut got = vec![0u8; 40];
            b.read_exact(&mut got).await.expect("read");
            assert_eq!(got, (0..40u8).collect::<Vec<_>>(), "everything, in order, once read");
            let a = writer.await;
            assert_eq!(a.unread(), 0);
        });
    }

    #[test]
    fn closing_one_end_ends_the_other_reader_and_fails_its_writer() {
        run(async {
            let (mut a, mut b) = pair(64);
            a.write_all(b"last words").await.expect("write");
            a.close().await.expect("close");
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.expect("read to the end");
            assert_eq!(got, b"last words", "what was written before the close is still read");
            drop(a);
            let e = b.write_all(b"anyone?").await.expect_err("the other end is gone");
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);

            // A writer waiting for room is woken by the reader going away, and fails.
            let (mut a, b) = pair(4);
            let writer = glommio::spawn_local(async move { a.write_all(b"0123456789").await });
            futures_lite::future::yield_now().await;
            drop(b);
            let r = writer.await;
            assert!(r.is_err(), "a writer blocked on a vanished reader fails instead of waiting forever");
        });
    }

    #[test]
    fn connect_finds_only_what_this_thread_serves_and_forgets_it_when_withdrawn() {
        run(async {
            let addr = SocketAddr::from(([127, 0, 0, 1], 9));
            let me = LocalIdentity { names: vec!["edge.example.com".into()], addr };
            assert!(connect(addr, &me).is_none(), "nothing served: connect over the network");
            let accept: Accept = Rc::new(|_s, _peer, names| {
                if names.iter().any(|n| n == "edge.example.com") {
                    Ok(vec!["pool.example.com".into()])
                } else {
                    Err("not admitted".into())
                }
            });
            SERVED.with(|s| s.borrow_mut().insert(addr, accept));
            let served = Served(addr);
            match connect(addr, &me) {
                Some(Ok((_, names))) => assert_eq!(names, ["pool.example.com"]),
                _ => panic!("served on this thread: a local link"),
            }
            let stranger = LocalIdentity { names: vec!["mallory.example.com".into()], addr };
            assert!(matches!(connect(addr, &stranger), Some(Err(_))), "admitted by name, as over mutual TLS");
            let elsewhere = std::thread::spawn(move || SERVED.with(|s| s.borrow().contains_key(&addr)));
            assert!(!elsewhere.join().expect("thread"), "another thread (another executor) does not see it");
            drop(served);
            assert!(connect(addr, &me).is_none(), "withdrawn");
        });
    }
}
