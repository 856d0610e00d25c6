//! loadgen's own correctness at its boundary: runs against fake SIP servers on 127.0.0.1 (plain TCP, the
//! transport the hidden --plain flag selects): open-loop scheduling against a slow and a stalled server,
//! error accounting by status code and timeout, and the one-sentence configuration errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Parser;
use loadgen::cli::{Args, Config};
use loadgen::engine::{self, RunResult};
use parapet::sip::{self, Frame, Limits, Message};

/// What the fake server does with request number n (0-based, across connections).
#[derive(Clone, Copy)]
enum Policy {
    /// Answer every request 200 after `service_ms`, one request at a time (a server with fixed capacity).
    Serial { service_ms: u64 },
    /// Answer the first request 200, then never again.
    StallAfterFirst,
    /// First request 200; then by (n - 1) % 4: 200, 480, 503, no answer.
    Mixed,
}

struct Fake {
    addr: String,
    requests: Arc<AtomicUsize>,
}

fn answer(req: &Message, code: u16) -> Vec<u8> {
    let mut out = BytesMut::new();
    let reason = match code {
        200 => "OK",
        480 => "Temporarily Unavailable",
        _ => "Service Unavailable",
    };
    sip::write_response(&mut out, req, code, reason, Some(b"fake"), &[], None);
    out.to_vec()
}

fn fake_server(policy: Policy) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let requests = Arc::new(AtomicUsize::new(0));
    // The serial worker: one queue for all connections, so capacity is 1000 / service_ms per second.
    let (work_tx, work_rx) = mpsc::channel::<(Message, TcpStream)>();
    if let Policy::Serial { service_ms } = policy {
        thread::spawn(move || {
            for (req, mut s) in work_rx {
                thread::sleep(Duration::from_millis(service_ms));
                let _ = s.write_all(&answer(&req, 200));
            }
        });
    }
    let counter = Arc::clone(&requests);
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let (counter, work_tx) = (Arc::clone(&counter), work_tx.clone());
            thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Ok(Frame::Message { len }) = sip::frame(&buf, &Limits::DEFAULT) {
                        let bytes = Bytes::copy_from_slice(&buf[..len]);
                        buf.drain(..len);
                        let req = Message::parse(bytes, &Limits::DEFAULT).unwrap();
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let code = match (policy, n) {
                            (Policy::Serial { .. }, _) => {
                                work_tx.send((req, s.try_clone().unwrap())).unwrap();
                                continue;
                            }
                            (_, 0) => Some(200),
                            (Policy::StallAfterFirst, _) => None,
                            (Policy::Mixed, n) => [Some(200), Some(480), Some(503), None][(n - 1) % 4],
                        };
                        if let Some(code) = code {
                            let _ = s.write_all(&answer(&req, code));
                        }
                    }
                }
            });
        }
    });
    Fake { addr, requests }
}

fn users_file(n: usize) -> PathBuf {
    let p = std::env::temp_dir().join(format!("loadgen-test-users-{}-{n}.toml", std::process::id()));
    let mut t = String::new();
    for i in 1..=n {
        t.push_str(&format!("[[user]]\nalias = \"load{i}\"\npassword = \"pw{i}\"\n"));
    }
    std::fs::write(&p, t).unwrap();
    p
}

fn config(scenario: &str, target: &str, extra: &[&str]) -> Config {
    let users = users_file(400);
    let mut argv = vec!["loadgen", scenario, "--plain", "--target", target, "--users", users.to_str().unwrap()];
    argv.extend_from_slice(&["--warmup", "0", "--cores", "0"]);
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).unwrap().into_config().unwrap()
}

fn run(cfg: Config) -> RunResult {
    engine::run(cfg).unwrap()
}

#[test]
fn open_loop_latency_grows_against_a_slow_server_instead_of_slowing_the_sender() {
    // Capacity 100/s, offered 200/s for 2 s: a closed loop would see ~10 ms; an open loop sees a queue.
    let fake = fake_server(Policy::Serial { service_ms: 10 });
    let cfg = config(
        "register",
        &fake.addr,
        &["--count", "200", "--rate", "200", "--duration", "2", "--timeout-ms", "10000"],
    );
    let r = run(cfg);
    let step = &r.steps[0];
    let t = &step.tally;
    assert_eq!(t.sent + t.dropped, 400, "sends attempted must be rate * duration");
    assert_eq!((t.dropped, t.timeouts, t.ok), (0, 0, 400));
    let l = t.latency();
    assert!(l.p99 > 1000.0, "latency from the scheduled time must include the queue: p99 {} ms", l.p99);
    let first = r.seconds.first().unwrap().latency().p50;
    let last = r.seconds.iter().rev().find(|s| s.completed() > 0).unwrap().latency().p50;
    assert!(last > first + 500.0, "latency must grow with time: first second p50 {first} ms, last {last} ms");
    // Setup registration + 400 operations reached the server.
    assert_eq!(fake.requests.load(Ordering::SeqCst), 401);
}

#[test]
fn a_stalled_server_gets_every_scheduled_send_and_all_time_out() {
    let fake = fake_server(Policy::StallAfterFirst);
    let cfg = config(
        "register",
        &fake.addr,
        &["--count", "100", "--rate", "100", "--duration", "1.5", "--timeout-ms", "400"],
    );
    let r = run(cfg);
    let t = &r.steps[0].tally;
    assert_eq!((t.sent, t.timeouts, t.ok, t.dropped), (150, 150, 0, 0));
    assert_eq!(fake.requests.load(Ordering::SeqCst), 151);
}

#[test]
fn in_flight_cap_counts_drops_instead_of_skipping() {
    // cap = count * 4 = 20 in flight; nothing is answered, so everything past 20 is dropped and counted.
    let fake = fake_server(Policy::StallAfterFirst);
    let cfg =
        config("register", &fake.addr, &["--count", "5", "--rate", "100", "--duration", "1", "--timeout-ms", "2000"]);
    let t = run(cfg).steps[0].tally.clone();
    assert_eq!(t.sent + t.dropped, 100);
    assert_eq!((t.sent, t.dropped, t.timeouts), (20, 80, 20));
}

#[test]
fn errors_are_counted_by_code_and_timeouts_apart() {
    let fake = fake_server(Policy::Mixed);
    let cfg =
        config("register", &fake.addr, &["--count", "50", "--rate", "100", "--duration", "2", "--timeout-ms", "300"]);
    let r = run(cfg);
    let t = &r.steps[0].tally;
    assert_eq!(t.ok, 50);
    assert_eq!(t.errors.get("480"), Some(&50));
    assert_eq!(t.errors.get("503"), Some(&50));
    assert_eq!(t.errors.len(), 2, "{:?}", t.errors);
    assert_eq!(t.timeouts, 50);
    // Answered operations (ok and SIP errors) have latencies; timeouts do not.
    assert_eq!(t.latency_us.len(), 150);
    let json = loadgen::report::json(&config("register", &fake.addr, &[]), &r);
    assert!(json.contains("\"errors\":{\"480\":50,\"503\":50}"), "{json}");
    assert!(json.contains("\"timeouts\":50"), "{json}");
}

#[test]
fn unreachable_target_is_one_sentence() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = config("register", &format!("127.0.0.1:{port}"), &["--count", "2", "--duration", "1"]);
    let e = engine::run(cfg).unwrap_err().0;
    assert!(e.contains("connection refused") && e.ends_with('.') && !e.contains('\n'), "{e}");
}

#[test]
fn bad_values_are_one_sentence() {
    let users = users_file(3);
    let u = users.to_str().unwrap();
    let e = |argv: &[&str]| Args::try_parse_from(argv).unwrap().into_config().unwrap_err().0;
    assert!(e(&["loadgen", "im", "--plain", "--users", u, "--count", "10"]).contains("needs 10 users"));
    assert!(e(&["loadgen", "federation", "--plain"]).contains("not yet available"));
    assert!(e(&["loadgen", "register", "--plain", "--users", u, "--rate", "0"]).contains("--rate"));
    assert!(e(&["loadgen", "handshake", "--ca", "/nonexistent/ca.pem"]).contains("Cannot read the CA file"));
    assert!(e(&["loadgen", "handshake", "--plain", "--cores", "999"]).contains("--cores"));
}
