//! A connection's write queue: single producer side (this core's code, through the table), single consumer (the
//! driver). Bounded in items, but it holds memory only for what is queued: an idle connection's queue is empty and
//! unallocated (glommio's bounded channel preallocates its whole capacity, 8 KiB per connection at our bound).
//!
//! A producer that must not lose what it sends (a connector to a trusted peer) can wait for room
//! ([`OutQueue::writable`]) instead of failing: the consumer wakes it once the queue has drained to half.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use super::conn::Out;

/// Capacity kept after the queue drains; a burst's larger buffer is given back.
const KEEP_CAPACITY: usize = 8;

#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    Full,
    Closed,
}

pub struct OutQueue {
    items: RefCell<VecDeque<Out>>,
    waker: RefCell<Option<Waker>>,
    /// A producer waiting for room (see [`OutQueue::writable`]).
    room_waker: RefCell<Option<Waker>>,
    max: usize,
    closed: Cell<bool>,
}

impl OutQueue {
    pub fn new(max: usize) -> OutQueue {
        OutQueue {
            items: RefCell::new(VecDeque::new()),
            waker: RefCell::new(None),
            room_waker: RefCell::new(None),
            max: max.max(1),
            closed: Cell::new(false),
        }
    }

    pub fn try_send(&self, item: Out) -> Result<(), QueueError> {
        if self.closed.get() {
            return Err(QueueError::Closed);
        }
        let mut items = self.items.borrow_mut();
        // A Close always fits: it is how a full queue's connection gets told to go.
        if items.len() >= self.max && !matches!(item, Out::Close) {
            return Err(QueueError::Full);
        }
        items.push_back(item);
        drop(items);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
        Ok(())
    }

    /// The next item, or None once closed and drained.
    pub async fn recv(&self) -> Option<Out> {
        poll_fn(|cx| match self.try_recv() {
            Some(item) => Poll::Ready(Some(item)),
            None if self.closed.get() => Poll::Ready(None),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    pub fn try_recv(&self) -> Option<Out> {
        let mut items = self.items.borrow_mut();
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > KEEP_CAPACITY {
            items.shrink_to(KEEP_CAPACITY);
        }
        let roomy = items.len() <= self.max / 2;
        drop(items);
        if roomy {
            if let Some(w) = self.room_waker.borrow_mut().take() {
                w.wake();
            }
        }
        item
    }

    /// Completes once the queue has drained to half its bound, or is closed (a send then tells which).
    pub async fn writable(&self) {
        poll_fn(|cx| {
            if self.closed.get() || self.items.borrow().len() <= self.max / 2 {
                Poll::Ready(())
            } else {
                *self.room_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    pub fn len(&self) -> usize {
        self.items.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.borrow().is_empty()
    }

    /// The consumer is gone: further sends fail.
    pub fn close(&self) {
        self.closed.set(true);
        self.items.borrow_mut().clear();
        if let Some(w) = self.room_waker.borrow_mut().take() {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn bounded_but_close_always_fits() {
        let q = OutQueue::new(2);
        assert!(q.try_send(Out::Bytes(Bytes::from_static(b"a"))).is_ok());
        assert!(q.try_send(Out::Bytes(Bytes::from_static(b"b"))).is_ok());
        assert_eq!(q.try_send(Out::Bytes(Bytes::from_static(b"c"))).err(), Some(QueueError::Full));
        assert!(q.try_send(Out::Close).is_ok());
        assert!(matches!(q.try_recv(), Some(Out::Bytes(_))));
        q.close();
        assert_eq!(q.try_send(Out::Close).err(), Some(QueueError::Closed));
        assert!(q.try_recv().is_none());
    }

    #[test]
    fn a_waiting_producer_is_woken_at_half_and_on_close() {
        use std::future::Future;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::task::{Context, Wake};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let q = OutQueue::new(4);
        for _ in 0..4 {
            assert!(q.try_send(Out::Bytes(Bytes::from_static(b"x"))).is_ok());
        }
        let mut w = std::pin::pin!(q.writable());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        assert!(q.try_recv().is_some());
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "3 of 4: not yet");
        assert!(q.try_recv().is_some());
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "2 of 4: woken");
        assert!(w.as_mut().poll(&mut cx).is_ready());
        let q = OutQueue::new(2);
        assert!(q.try_send(Out::Bytes(Bytes::from_static(b"x"))).is_ok());
        assert!(q.try_send(Out::Bytes(Bytes::from_static(b"x"))).is_ok());
        let mut w = std::pin::pin!(q.writable());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        q.close();
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "closing wakes the producer");
        assert!(w.as_mut().poll(&mut cx).is_ready());
    }
}
