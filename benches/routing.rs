//! Routing-table microbenchmarks: what every request looks up on its way (`cargo bench --bench routing`).
//!
//! - the registrar: bindings of one AOR among 100,000 registered ones (the pool's lookup for each MESSAGE);
//! - the shard of an AOR (which core owns it: every request crosses the mesh by it);
//! - a flow token in a Route (the edge's lookup for every request toward a user);
//! - the federation table: the From check on every inbound federated request and the route of every outbound
//!   one, with 200 partners and a clearinghouse.

use std::net::SocketAddr;

use divan::{black_box, Bencher};
use parapet::config::{Clearinghouse, FederationConfig, Partner, PeerLimits, UnknownPeers};
use parapet::edge::federation::{may_send_from, route_for};
use parapet::edge::token::{parse_flow, write_flow, TokenKey};
use parapet::net::ConnId;
use parapet::pool::registrar::{ContactReq, RegisterReq, Registrar, RegistrarLimits};
use parapet::shard::shard_for;

fn main() {
    divan::main();
}

const AORS: usize = 100_000;

fn registrar() -> Registrar {
    let mut r = Registrar::new(RegistrarLimits { aors_max: AORS * 2, ..RegistrarLimits::default() });
    for i in 0..AORS {
        let aor = format!("user{i}@example.com");
        let uri = format!("sip:user{i}@192.0.2.1:{};transport=tls", 40_000 + i % 20_000);
        let contacts =
            [ContactReq { uri: uri.as_bytes(), params: b"", expires: None, instance: None, reg_id: None, q: None }];
        let call_id = format!("c{i}");
        let path: [&[u8]; 1] = [b"<sip:f0@127.0.0.1:5063;transport=tls;lr>"];
        let req = RegisterReq {
            aor: &aor,
            contacts: &contacts,
            star: false,
            header_expires: Some(3600),
            call_id: call_id.as_bytes(),
            cseq: 1,
            path: &path,
            flow: Some(i as u64),
        };
        let _ = r.register(&req, 1_000);
    }
    r
}

#[divan::bench]
fn registrar_lookup_among_100k(b: Bencher) {
    let mut r = registrar();
    let mut i = 0usize;
    b.bench_local(|| {
        i = (i + 7919) % AORS;
        let aor = format!("user{i}@example.com");
        black_box(r.lookup(black_box(&aor), 1_001))
    });
}

#[divan::bench]
fn shard_of_an_aor(b: Bencher) {
    b.bench(|| shard_for(black_box(b"alice@example.com"), black_box(16)));
}

#[divan::bench]
fn flow_token_from_a_route(b: Bencher) {
    let key = TokenKey::random().unwrap_or_else(|e| panic!("{e}"));
    let mut token = Vec::new();
    write_flow(&key, &mut token, ConnId { core: 3, gen: 17, slot: 40_000 });
    b.bench(|| parse_flow(&key, black_box(&token)));
}

fn federation_table() -> FederationConfig {
    let a = |p: u16| parapet::config::PeerAddr::Ip(SocketAddr::from(([192, 0, 2, 1], p)));
    let limits = PeerLimits { rate: 500, burst: 1000, connections_max: 16 };
    FederationConfig {
        listen: None,
        ca: "partners-ca.pem".into(),
        partners: (0..200)
            .map(|i| Partner {
                domain: format!("partner{i}.test"),
                cert_name: format!("edge.partner{i}.test"),
                addr: Some(a(5061)),
                limits,
            })
            .collect(),
        clearinghouses: vec![Clearinghouse {
            name: "hub.test".into(),
            addr: a(5062),
            domains: vec!["*".into()],
            limits,
        }],
        blocked_domains: vec!["evil.test".into()],
        unknown: UnknownPeers::Refuse,
        unknown_limits: limits,
        message_bytes_max: 65_535,
        clearinghouse: false,
        dns: Default::default(),
        partners_file: None,
    }
}

#[divan::bench]
fn federation_from_check_200_partners(b: Bencher) {
    let t = federation_table();
    let names = vec!["edge.partner150.test".to_string(), "partner150.test".to_string()];
    b.bench(|| may_send_from(&t, "example.com", black_box(&names), black_box("partner150.test")));
}

#[divan::bench]
fn federation_route_200_partners(b: Bencher) {
    let t = federation_table();
    b.bench(|| route_for(&t, black_box("partner150.test")).map(|r| r.addr));
}
