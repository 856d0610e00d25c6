//! loadgen's own correctness at its boundary: runs against fake SIP servers on 127.0.0.1 (plain TCP, the
//! transport the hidden --plain flag selects): open-loop scheduling against a slow and a stalled server,
//! error accounting by status code and timeout (per partner in federation), and the one-sentence configuration
//! errors. Then the federation scenario against the real `parapet up` (over mutual TLS).
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
    /// 503 to every MESSAGE From this domain (a throttled partner), 200 to everything else.
    ThrottleFrom(&'static str),
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
                            (Policy::ThrottleFrom(d), _) => {
                                let throttled =
                                    req.method_bytes() == Some(b"MESSAGE") && req.from().uri.host == d.as_bytes();
                                Some(if throttled { 503 } else { 200 })
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
fn federation_counts_each_partner_apart() {
    // partner.test is throttled (503 to each MESSAGE), other.test is not: each partner's row says so.
    let fake = fake_server(Policy::ThrottleFrom("partner.test"));
    let cfg = config(
        "federation",
        &fake.addr,
        &[
            "--fed-target",
            &fake.addr,
            "--count",
            "4",
            "--duration",
            "1",
            "--partner-rates",
            "partner.test=60,other.test=20",
        ],
    );
    let r = run(cfg.clone());
    let step = &r.steps[0];
    assert_eq!(step.target_rate, 80.0);
    let [a, b] = &step.parts[..] else { panic!("two partners: {:?}", step.parts) };
    assert_eq!(
        (a.name.as_str(), a.target_rate, b.name.as_str(), b.target_rate),
        ("partner.test", 60.0, "other.test", 20.0)
    );
    assert_eq!((a.tally.ok, a.tally.errors.get("503"), a.tally.sent), (0, Some(&60), 60), "{:?}", a.tally);
    assert_eq!((b.tally.ok, b.tally.errors.len(), b.tally.sent), (20, 0, 20), "{:?}", b.tally);
    assert_eq!((step.tally.ok, step.tally.errors.get("503")), (20, Some(&60)), "the parts add up to the step");
    // 4 registrations, an OPTIONS per partner, then the MESSAGEs.
    assert_eq!(fake.requests.load(Ordering::SeqCst), 4 + 2 + 80);
    let json = loadgen::report::json(&cfg, &r);
    assert!(json.contains("\"partners\":[{\"partner\":\"partner.test\",\"target_rate\":60,"), "{json}");
    assert!(json.contains("\"errors\":{\"503\":60}"), "{json}");
    let table = loadgen::report::table(&cfg, &r);
    assert!(table.contains("per partner") && table.contains("503: 60"), "{table}");
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
    assert!(e(&["loadgen", "federation", "--plain", "--users", u, "--partner-rates", "x"]).contains("--partner-rates"));
    assert!(e(&["loadgen", "federation", "--users", u, "--partner-pki", "/nonexistent"])
        .contains("Cannot read the certificate of partner partner.test"));
    assert!(e(&["loadgen", "register", "--plain", "--users", u, "--rate", "0"]).contains("--rate"));
    assert!(e(&["loadgen", "handshake", "--ca", "/nonexistent/ca.pem"]).contains("Cannot read the CA file"));
    assert!(e(&["loadgen", "handshake", "--plain", "--cores", "999"]).contains("--cores"));
}

// ---------------------------------------------------------------------------------------------------------------
// Against the real appliance

/// The `parapet` binary of this build profile, built first (a no-op when fresh) so that the test never runs a
/// stale one; PARAPET_BIN overrides.
fn parapet_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PARAPET_BIN") {
        return PathBuf::from(p);
    }
    // <target>/<profile>/deps/loadgen-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "parapet", "--bin", "parapet"]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    assert!(out.status.success(), "cannot build parapet: {}", String::from_utf8_lossy(&out.stderr));
    profile_dir.join("parapet")
}

/// A running `parapet up` (its whole process group is killed on drop; the data folder is removed after a pass).
struct Up {
    child: std::process::Child,
    dir: PathBuf,
    port_base: u16,
    ready: String,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Up {
    /// `parapet up` with `args` on a free block of ports, waiting (at most 60 s) for its PARAPET_READY line.
    fn start(name: &str, args: &[&str]) -> Up {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let bin = parapet_bin();
        let dir = bin.parent().unwrap().join("loadgen-e2e").join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port_base = free_port_block();
        let mut child = std::process::Command::new(&bin)
            .arg("up")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--port-base", &port_base.to_string()])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (r, tx) in [(Box::new(out) as Box<dyn Read + Send>, Some(tx)), (Box::new(err), None)] {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                    if let Some(tx) = &tx {
                        let _ = tx.send(line.clone());
                    }
                    let mut l = log.lock().unwrap();
                    if l.len() < 2000 {
                        l.push(line);
                    }
                }
            });
        }
        let mut up = Up { child, dir, port_base, ready: String::new(), log };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while up.ready.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("PARAPET_READY ") => up.ready = line,
                Ok(_) => {}
                Err(_) => up.fail("`parapet up` printed no PARAPET_READY line within 60 s"),
            }
        }
        up
    }

    fn data(&self, file: &str) -> String {
        self.dir.join("data").join(file).to_str().unwrap().to_string()
    }

    fn fail(&self, msg: &str) -> ! {
        let log = self.log.lock().unwrap();
        let tail = log.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n");
        panic!("{msg}\n--- parapet up (ready: {:?}) log tail ---\n{tail}", self.ready)
    }

    /// The sum of a counter over every label set on the edge's /metrics.
    fn edge_metric(&self, name: &str) -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.port_base + 3)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.lines()
            // Counters are exposed as `<name>_total`.
            .filter(|l| {
                l.strip_prefix(name)
                    .map(|r| r.strip_prefix("_total").unwrap_or(r))
                    .is_some_and(|r| r.starts_with(['{', ' ']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above; whatever is left of the group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A block of 10 loopback ports (parapet up uses base .. base + 7) that were free a moment ago.
fn free_port_block() -> u16 {
    let seed = std::process::id() as u32
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    for k in 0..2000u32 {
        // Below the ephemeral range, away from the e2e tests' usual spread.
        let base = 12_000 + ((seed / 7 + k * 10) % 20_000 / 10 * 10) as u16;
        if (base..base + 10).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no free block of 10 loopback ports");
}

#[test]
fn federation_against_parapet_up_gets_200s_per_partner() {
    let up = Up::start("federation", &["--cores", "1", "--load-users", "20"]);
    let fed_port = up.port_base + parapet::mgmt::up::FEDERATION_PORT_OFFSET;
    assert!(up.ready.contains(&format!("federation=127.0.0.1:{fed_port}")), "{}", up.ready);
    let (ca, users) = (up.data("pki/ca.pem"), up.data("users.toml"));
    let target = format!("127.0.0.1:{}", up.port_base);
    let base = ["loadgen", "federation", "--target", &target, "--ca", &ca, "--users", &users, "--cores", "0"];
    let config = |extra: &[&str]| {
        let mut argv = base.to_vec();
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap().into_config().unwrap_or_else(|e| up.fail(&e.0))
    };
    let before = up.edge_metric("parapet_edge_requests_from_partners");

    // Two demo partners at once, over mutual TLS to the federation port that `up` opened by itself.
    let cfg = config(&[
        "--count",
        "10",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--partner-rates",
        "partner.test=40,other.test=10",
    ]);
    assert_eq!(cfg.fed_target.port(), fed_port);
    let r = engine::run(cfg).unwrap_or_else(|e| up.fail(&e.0));
    let step = &r.steps[0];
    assert_eq!(step.parts.len(), 2);
    for (p, want) in step.parts.iter().zip([80, 20]) {
        let t = &p.tally;
        let seen = format!("ok {}, errors {:?}, timeouts {}, dropped {}", t.ok, t.errors, t.timeouts, t.dropped);
        assert!(t.ok.abs_diff(want) <= 1, "{}: ~{want} MESSAGEs should get 200: {seen}", p.name);
        assert!(t.errors.is_empty() && t.timeouts == 0 && t.dropped == 0, "{}: {seen}", p.name);
    }
    // They came through the federation listener (the warm-up's too), not the users' port.
    let through = up.edge_metric("parapet_edge_requests_from_partners") - before;
    assert!(through >= step.tally.ok + 2, "edge counted {through} requests from partners for {} ok", step.tally.ok);

    // A certificate the partners' CA did not issue (our own edge's): refused by the edge, in one sentence.
    let rogue = up.dir.join("rogue");
    std::fs::create_dir_all(&rogue).unwrap();
    std::fs::copy(up.data("pki/edge.pem"), rogue.join("partner.test.pem")).unwrap();
    std::fs::copy(up.data("pki/edge.key"), rogue.join("partner.test.key")).unwrap();
    let cfg = config(&["--count", "2", "--duration", "1", "--partner-pki", rogue.to_str().unwrap()]);
    let e = engine::run(cfg).map(|_| ()).unwrap_err().0;
    assert!(e.contains("refused the certificate of partner partner.test") && !e.contains('\n'), "{e}");
}
