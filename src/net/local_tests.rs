use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;

use super::*;
use crate::net::conn::{SendError, INTERNAL_QUEUE_MAX};
use crate::net::connector::tests::{settle, Role};

fn options(n: usize) -> Bytes {
    Bytes::from(format!(
        "OPTIONS sip:pool.example.com SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5062;branch=z9hG4bK{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:edge.example.com>;tag=1\r\nTo: <sip:pool.example.com>\r\n\
         Call-ID: c{n}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn ok(n: usize) -> Bytes {
    Bytes::from(format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 127.0.0.1:5062;branch=z9hG4bK{n}\r\n\
         From: <sip:edge.example.com>;tag=1\r\nTo: <sip:pool.example.com>;tag=2\r\n\
         Call-ID: c{n}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn run<F: std::future::Future<Output = ()> + 'static>(f: F) {
    let ex =
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(512 * 1024).make().expect("executor");
    ex.run(f);
}

const POOL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5062);
const EDGE: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5063);

fn pool_spec() -> LocalSpec {
    LocalSpec {
        addr: POOL,
        kind: ConnKind::PeerIn,
        admit_names: vec!["edge.example.com".into()],
        own_names: vec!["pool.example.com".into()],
    }
}

fn edge_me() -> LocalIdentity {
    LocalIdentity { names: vec!["edge.example.com".into()], addr: EDGE }
}

/// The edge's end, linked and running: its connection.
fn link(edge: &Rc<Role>) -> Rc<Conn> {
    let (l, names) = match connect(POOL, &edge_me()) {
        Some(Ok(v)) => v,
        _ => panic!("the pool serves on this thread"),
    };
    assert_eq!(names, ["pool.example.com"], "the pool presents its names");
    let (conn, rx) = edge.table().borrow_mut().insert_link(ConnKind::PeerOut, POOL, names, true);
    glommio::spawn_local(l.run(conn.clone(), rx, edge.clone())).detach();
    conn
}

/// Runs `test` with an edge and a pool role, the pool serving on this thread and the edge linked to it.
fn linked<F, Fut>(test: F)
where
    F: FnOnce(Rc<Role>, Rc<Role>, Rc<Conn>) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    run(async move {
        let (edge, pool) = (Role::new(0), Role::new(0));
        let _served = serve(pool_spec(), pool.clone());
        let out = link(&edge);
        test(edge, pool, out).await;
    });
}

#[test]
fn messages_cross_both_ways_as_the_same_bytes_on_connections_like_mutual_tls_ones() {
    linked(|edge, pool, out| async move {
        edge.table().borrow().send(out.id, &options(1)).expect("queued");
        settle(|| !pool.got.borrow().is_empty()).await;
        let (inbound, bytes) = pool.got.borrow().first().cloned().expect("the pool received it");
        assert_eq!(bytes, options(1));
        let conn = pool.table().borrow().get(inbound).cloned().expect("the pool's connection");
        assert_eq!((conn.kind, conn.peer, conn.internal), (ConnKind::PeerIn, EDGE, true));
        assert_eq!(conn.peer_names, ["edge.example.com"], "admitted by the names its certificate would carry");
        pool.table().borrow().send(inbound, &ok(1)).expect("queued");
        settle(|| !edge.got.borrow().is_empty()).await;
        assert_eq!(edge.got.borrow().first().cloned(), Some((out.id, ok(1))), "the answer, on the edge's end");
        assert_eq!((edge.stats.local_links.get(), pool.stats.local_links.get()), (0, 1), "counted by the acceptor");
    });
}

#[test]
fn a_burst_past_the_bound_is_pushed_back_then_delivered_in_order() {
    linked(|edge, pool, out| async move {
        // Nothing runs between these sends: the edge's queue takes its bound, then says Busy (nothing queued).
        for i in 0..INTERNAL_QUEUE_MAX {
            assert_eq!(edge.table().borrow().send(out.id, &options(i)), Ok(()));
        }
        assert_eq!(edge.table().borrow().send(out.id, &options(0)), Err(SendError::Busy), "bounded, link kept");
        assert!(!out.kill.get());
        settle(|| pool.got.borrow().len() == INTERNAL_QUEUE_MAX).await;
        let got: Vec<Bytes> = pool.got.borrow().iter().map(|(_, b)| b.clone()).collect();
        assert!(got == (0..INTERNAL_QUEUE_MAX).map(options).collect::<Vec<_>>(), "every message once, in order");
        assert_eq!(edge.table().borrow().send(out.id, &options(1)), Ok(()), "room again");
    });
}

#[test]
fn closing_either_end_closes_both_connections() {
    linked(|edge, pool, out| async move {
        // The edge closes its end.
        settle(|| pool.table().borrow().len() == 1).await;
        edge.table().borrow().close(out.id);
        settle(|| pool.table().borrow().is_empty() && edge.table().borrow().is_empty()).await;
        assert!(pool.table().borrow().is_empty() && edge.table().borrow().is_empty(), "both connections gone");
        assert_eq!((edge.closed.borrow().len(), pool.closed.borrow().len()), (1, 1), "each role told");
        assert_eq!(edge.table().borrow().send(out.id, &options(1)), Err(SendError::Gone));
        // The pool closes its end.
        let out = link(&edge);
        settle(|| pool.table().borrow().len() == 1).await;
        let inbound = pool.table().borrow().iter().next().map(|c| c.id).expect("accepted");
        pool.table().borrow().close(inbound);
        settle(|| edge.table().borrow().get(out.id).is_none()).await;
        assert!(edge.table().borrow().get(out.id).is_none(), "the edge's end closed with it");
        assert_eq!(edge.closed.borrow().len(), 2);
        // A link made and never run (the connector gave up on it) closes the accepted end.
        let Some(Ok((unrun, _))) = connect(POOL, &edge_me()) else { panic!("served") };
        assert_eq!(pool.table().borrow().len(), 1);
        drop(unrun);
        settle(|| pool.table().borrow().is_empty()).await;
        assert!(pool.table().borrow().is_empty(), "nothing left behind");
    });
}

#[test]
fn only_admitted_names_only_on_this_thread_and_never_once_withdrawn() {
    run(async {
        let pool = Role::new(0);
        assert!(connect(POOL, &edge_me()).is_none(), "nothing served: connect over the network");
        let served = serve(pool_spec(), pool.clone());
        let stranger = LocalIdentity { names: vec!["mallory.example.com".into()], addr: EDGE };
        assert!(matches!(connect(POOL, &stranger), Some(Err(_))), "admitted by name, as over mutual TLS");
        assert!(pool.table().borrow().is_empty());
        assert_eq!(pool.stats.peers_refused.get(), 1);
        let elsewhere = std::thread::spawn(|| SERVED.with(|s| s.borrow().contains_key(&POOL)));
        assert!(!elsewhere.join().expect("thread"), "another thread (another executor) does not see it");
        drop(served);
        assert!(connect(POOL, &edge_me()).is_none(), "withdrawn");
    });
}
