//! Test plumbing for federation by DNS: a real DNS server (Debian's dnsmasq, installed when missing) on loopback
//! serving the test's SRV and A records, restartable with changed records; and a TCP forwarder that stands for
//! "another address of the partner" (a second port that reaches the same edge, counted, stoppable).

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{apt_installed, stops_with_the_test, terminate_group, Tail};

/// A dnsmasq answering only from the records it is given (no upstream, no /etc/hosts), TTL 1 s.
pub(crate) struct Dnsmasq {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: PathBuf,
    pub(crate) log: Tail,
    /// Starts so far (each restart writes a fresh conf).
    starts: usize,
}

/// An SRV record line: `_service._tcp.domain` -> `target:port`, priority, weight.
pub(crate) fn srv(service_domain: &str, target: &str, port: u16, priority: u16, weight: u16) -> String {
    format!("srv-host={service_domain},{target},{port},{priority},{weight}")
}

/// An A record line for `name` at 127.0.0.1.
pub(crate) fn a(name: &str) -> String {
    format!("host-record={name},127.0.0.1")
}

impl Dnsmasq {
    /// Starts dnsmasq on `port` (UDP and TCP, 127.0.0.1) authoritative for `zones` with `records` (conf lines).
    pub(crate) fn start(dir: PathBuf, port: u16, zones: &[&str], records: &[String]) -> Dnsmasq {
        let mut d = Dnsmasq { child: None, port, dir, log: Tail::default(), starts: 0 };
        d.run(zones, records);
        d
    }

    fn run(&mut self, zones: &[&str], records: &[String]) {
        let bin = apt_installed("/usr/sbin/dnsmasq", &["dnsmasq-base"]);
        fs::create_dir_all(&self.dir).expect("dns dir");
        self.starts += 1;
        let conf = self.dir.join(format!("dnsmasq-{}.conf", self.starts));
        let mut text = String::new();
        // Names of these zones that no record gives answer NXDOMAIN here instead of going upstream (there is none).
        for z in zones {
            text.push_str(&format!("local=/{z}/\n"));
        }
        for r in records {
            text.push_str(r);
            text.push('\n');
        }
        fs::write(&conf, &text).expect("write dnsmasq conf");
        let mut cmd = Command::new(bin);
        cmd.args(["--no-daemon", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts"])
            .arg(format!("--port={}", self.port))
            .arg("--local-ttl=1")
            .arg("--log-queries")
            .arg("--log-facility=-")
            .arg("--user=root")
            .arg(format!("--pid-file={}", self.dir.join("dnsmasq.pid").display()))
            .arg(format!("--conf-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        stops_with_the_test(&mut cmd);
        let mut child = cmd.spawn().expect("spawn dnsmasq");
        self.log.collect(child.stderr.take().expect("piped"), Some(self.dir.join("dnsmasq.log")), None);
        self.log.collect(child.stdout.take().expect("piped"), None, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("dnsmasq exited at start ({st}):\n{}\nconf:\n{text}", self.log.last(30));
            }
            assert!(Instant::now() < deadline, "dnsmasq not listening on {addr}:\n{}", self.log.last(30));
            thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// Stops the server (lookups then time out or are refused).
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate_group_or_kill(&mut c);
        }
    }

    /// Restarts it with new records (same port).
    pub(crate) fn restart(&mut self, zones: &[&str], records: &[String]) {
        self.stop();
        self.run(zones, records);
    }
}

fn terminate_group_or_kill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = terminate_group(&mut c, Duration::from_secs(1));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Forwards TCP from a port of its own to `to` (127.0.0.1), counting connections; `stop` closes the listener and
/// every connection through it (the address "goes down").
pub(crate) struct Forwarder {
    pub(crate) port: u16,
    pub(crate) accepted: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Forwarder {
    pub(crate) fn start(port: u16, to: u16) -> Forwarder {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind forwarder");
        listener.set_nonblocking(true).expect("nonblocking");
        let f = Forwarder {
            port,
            accepted: Arc::new(AtomicUsize::new(0)),
            stopped: Arc::new(AtomicBool::new(false)),
            live: Arc::new(Mutex::new(Vec::new())),
        };
        let (accepted, stopped, live) = (f.accepted.clone(), f.stopped.clone(), f.live.clone());
        thread::spawn(move || {
            while !stopped.load(Ordering::Acquire) {
                let (inbound, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = inbound.set_nonblocking(false);
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", to)) else { continue };
                accepted.fetch_add(1, Ordering::AcqRel);
                let mut l = live.lock().unwrap_or_else(|p| p.into_inner());
                for s in [&inbound, &outbound] {
                    if let Ok(c) = s.try_clone() {
                        l.push(c);
                    }
                }
                drop(l);
                for (mut from, mut into) in
                    [(inbound.try_clone().expect("clone"), outbound.try_clone().expect("clone")), (outbound, inbound)]
                {
                    thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if into.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = into.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        f
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }

    /// Closes every connection through it; new ones are still accepted (the address stays up).
    pub(crate) fn cut(&self) {
        for s in self.live.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Closes the listener (new connections refused) and every connection through it.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        for s in self.live.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // The accept loop notices within 10 ms and drops the listener; wait until the port refuses.
        let deadline = Instant::now() + Duration::from_secs(3);
        while TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], self.port)), Duration::from_millis(100))
            .is_ok()
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}
