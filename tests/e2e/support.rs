//! Shared plumbing: starting the appliance, free ports, bounded process waits, the Python venv.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How long `parapet up` may take to print PARAPET_READY.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// pjsua2-python version the agent is written against.
pub const PJSUA2_REQ: &str = "pjsua2-python==2.15.1.post1";
/// Upper bound for creating the venv and installing the wheel.
const PIP_TIMEOUT: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------------
// Paths

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn parapet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_parapet"))
}

/// The cargo target directory (derived from where cargo put the binary: <target>/<profile>/parapet).
pub fn target_dir() -> PathBuf {
    let bin = parapet_bin();
    bin.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| repo_root().join("target"))
}

pub fn agent_script() -> PathBuf {
    repo_root().join("tests/clients/pjsua_agent.py")
}

/// A fresh, per-test scratch directory under target/e2e/.
pub fn scratch_dir(name: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let dir = target_dir().join("e2e").join(format!("{name}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

// ---------------------------------------------------------------------------------------------
// Line tails collected from child processes

/// The last lines a child wrote (shared with the reader thread), optionally mirrored to a file.
#[derive(Clone, Default)]
pub struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl Tail {
    const KEEP: usize = 400;

    pub fn push(&self, line: String) {
        let mut l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() >= Self::KEEP {
            l.pop_front();
        }
        l.push_back(line);
    }

    /// The last `n` lines, newline-joined.
    pub fn last(&self, n: usize) -> String {
        let l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let skip = l.len().saturating_sub(n);
        l.iter().skip(skip).cloned().collect::<Vec<_>>().join("\n")
    }

    /// Spawn a thread that reads `r` line by line (lossy UTF-8) into this tail and `log` (if any),
    /// and forwards every line to `tx` (if any).
    pub fn collect<R: Read + Send + 'static>(
        &self,
        r: R,
        log: Option<PathBuf>,
        tx: Option<mpsc::Sender<String>>,
    ) -> thread::JoinHandle<()> {
        let tail = self.clone();
        thread::spawn(move || {
            use std::io::Write;
            let mut file = log.and_then(|p| fs::File::create(p).ok());
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
                        if let Some(f) = file.as_mut() {
                            let _ = writeln!(f, "{line}");
                        }
                        if let Some(tx) = tx.as_ref() {
                            let _ = tx.send(line.clone());
                        }
                        tail.push(line);
                    }
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Send `sig` to the whole process group led by `pid` (children are spawned with process_group(0)).
pub fn signal_group(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a process group we created.
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

/// One apt-get at a time across the tests (apt's own lock would make a second one fail at once).
static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `apt-get update` then `apt-get install -y <packages>`; a failure fails the test with apt's output.
pub fn apt_install(packages: &[&str]) {
    let _g = APT.lock().unwrap_or_else(|p| p.into_inner());
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        // Another apt (outside the tests) may hold the lock for a while: wait for it rather than fail.
        cmd.args(["-o", "DPkg::Lock::Timeout=600"]).args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run_bounded(&mut cmd, Duration::from_secs(900))
            .unwrap_or_else(|e| panic!("installing {packages:?} failed:\n{e}"))
    };
    apt(&["update"]);
    let mut args = vec!["install", "-y"];
    args.extend_from_slice(packages);
    apt(&args);
}

/// `path` when it exists, else after [`apt_install`]ing `packages` (a test failure when that does not bring it).
pub fn apt_installed(path: &str, packages: &[&str]) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let bin = PathBuf::from(path);
    if !bin.exists() {
        apt_install(packages);
    }
    if !bin.exists() {
        panic!("apt-get installed {packages:?}, but {path} is missing");
    }
    bin
}

/// The process `cmd` starts gets SIGTERM when the thread of the test that started it dies (a failed test leaves
/// no client or server behind).
pub fn stops_with_the_test(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe, the only thing done between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// Wait for a child with a deadline; None if it is still running afterwards.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM the group, wait up to `grace`, then SIGKILL the group and reap.
pub fn terminate_group(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        signal_group(child.id(), libc::SIGKILL); // stray grandchildren
        return Some(st);
    }
    signal_group(child.id(), libc::SIGTERM);
    let st = wait_timeout(child, grace);
    signal_group(child.id(), libc::SIGKILL);
    if st.is_none() {
        let _ = child.kill();
        let _ = wait_timeout(child, Duration::from_secs(5));
    }
    st
}

/// Run a command to completion with a deadline, capturing stdout+stderr together.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<String, String> {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("cannot spawn {desc}: {e}"))?;
    let out = Tail::default();
    let h1 = out.collect(child.stdout.take().expect("stdout piped"), None, None);
    let h2 = out.collect(child.stderr.take().expect("stderr piped"), None, None);
    let st = wait_timeout(&mut child, timeout);
    if st.is_none() {
        terminate_group(&mut child, Duration::from_secs(2));
    }
    let _ = h1.join();
    let _ = h2.join();
    let text = out.last(200);
    match st {
        Some(s) if s.success() => Ok(text),
        Some(s) => Err(format!("{desc} failed ({s}):\n{text}")),
        None => Err(format!("{desc} timed out after {timeout:?}:\n{text}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Ports

/// A block of 10 consecutive loopback TCP ports that were all free a moment ago.
/// Blocks handed out within this process never overlap.
pub fn free_port_base() -> u16 {
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    // Below the kernel's ephemeral range (32768..), so no client connection takes a port between the check and
    // the appliance's bind.
    const LO: u32 = 12_000;
    const SPAN: u32 = 20_000;
    let mut base = next.unwrap_or_else(|| {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let seed = std::process::id().wrapping_mul(2_654_435_761) ^ nanos;
        (LO + (seed % (SPAN / 10)) * 10) as u16
    }) as u32;
    for _ in 0..(SPAN / 10) {
        if base + 10 >= LO + SPAN {
            base = LO;
        }
        let all_free = (base..base + 10).all(|p| TcpListener::bind(("127.0.0.1", p as u16)).is_ok());
        if all_free {
            *next = Some((base + 10) as u16);
            return base as u16;
        }
        base += 10;
    }
    panic!("no free block of 10 loopback ports between {LO} and {}", LO + SPAN);
}

// ---------------------------------------------------------------------------------------------
// users.toml

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub alias: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
struct UsersFile {
    #[serde(default)]
    user: Vec<User>,
}

pub fn parse_users(path: &Path) -> Result<Vec<User>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let f: UsersFile = toml::from_str(&text).map_err(|e| format!("parse {}: {e}\n{text}", path.display()))?;
    Ok(f.user)
}

// ---------------------------------------------------------------------------------------------
// The appliance

/// A running `parapet up`; killed (whole process group) on drop.
pub struct Appliance {
    child: Option<Child>,
    pub name: String,
    /// Per-test scratch dir (logs, data dir); removed when the test passes, kept when it fails.
    pub scratch: PathBuf,
    pub data_dir: PathBuf,
    pub port_base: u16,
    /// host:port of the remote-user TLS listener, from the READY line.
    pub edge: String,
    pub domain: String,
    pub ca: PathBuf,
    pub users_file: PathBuf,
    pub users: Vec<User>,
    pub ready_line: String,
    pub stderr: Tail,
    /// Roles started directly with `parapet run -c` (see `start_with_edge_extra`): (name, process).
    roles: Vec<(&'static str, Child)>,
}

impl Appliance {
    /// Start `parapet up --data-dir <scratch>/data --port-base <free>` and wait for PARAPET_READY.
    pub fn start(name: &str) -> Appliance {
        Appliance::start_with_args(name, &[])
    }

    /// `start` with extra arguments to `parapet up` (e.g. `--domain partner.test`).
    pub fn start_with_args(name: &str, args: &[&str]) -> Appliance {
        let scratch = scratch_dir(name);
        let data_dir = scratch.join("data");
        let port_base = free_port_base();
        let bin = parapet_bin();
        let mut child = Command::new(&bin)
            .arg("up")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--port-base")
            .arg(port_base.to_string())
            .args(args)
            .current_dir(&scratch)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()));
        let stderr = Tail::default();
        let stdout = Tail::default();
        stderr.collect(child.stderr.take().expect("piped"), Some(scratch.join("appliance.stderr")), None);
        let (tx, rx) = mpsc::channel();
        stdout.collect(child.stdout.take().expect("piped"), Some(scratch.join("appliance.stdout")), Some(tx));

        let deadline = Instant::now() + READY_TIMEOUT;
        let ready_line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) if line.starts_with("PARAPET_READY ") => break line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if Instant::now() >= deadline {
                        terminate_group(&mut child, Duration::from_secs(5));
                        panic!(
                            "[{name}] `parapet up` printed no PARAPET_READY line within {READY_TIMEOUT:?}\n\
                             --- stdout ---\n{}\n--- stderr tail ---\n{}",
                            stdout.last(40),
                            stderr.last(60)
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = wait_timeout(&mut child, Duration::from_secs(5));
                    thread::sleep(Duration::from_millis(100)); // let the stderr reader drain
                    signal_group(child.id(), libc::SIGKILL);
                    panic!(
                        "[{name}] `parapet up` closed stdout before PARAPET_READY (exit: {st:?})\n\
                         --- stdout ---\n{}\n--- stderr tail ---\n{}",
                        stdout.last(40),
                        stderr.last(60)
                    );
                }
            }
        };

        let mut app = Appliance {
            child: Some(child),
            name: name.to_string(),
            scratch: scratch.clone(),
            data_dir,
            port_base,
            edge: String::new(),
            domain: String::new(),
            ca: PathBuf::new(),
            users_file: PathBuf::new(),
            users: Vec::new(),
            ready_line: ready_line.clone(),
            stderr,
            roles: Vec::new(),
        };
        let field = |k: &str| -> Option<String> {
            ready_line
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')).map(str::to_string))
        };
        let (Some(edge), Some(domain), Some(ca), Some(users)) =
            (field("edge"), field("domain"), field("ca"), field("users"))
        else {
            app.fail(&format!("malformed READY line: {ready_line:?}"));
        };
        app.edge = edge;
        app.domain = domain;
        app.ca = PathBuf::from(ca);
        app.users_file = PathBuf::from(users);
        match parse_users(&app.users_file) {
            Ok(u) => app.users = u,
            Err(e) => app.fail(&e),
        }
        app
    }

    /// Like `start`, but with `snippet` (TOML, e.g. an `[edge.flood]` table) appended to the edge's config.
    ///
    /// `parapet up` rewrites edge.toml at every start, so: run `up` once to make the data dir (PKI, users,
    /// configs), stop it, append the snippet, then start the two roles with `parapet run -c` ourselves
    /// (pool first), each in its own process group, and wait until the three ports accept connections.
    pub fn start_with_edge_extra(name: &str, snippet: &str) -> Appliance {
        let mut app = Appliance::prepare(name, &[]);
        app.run_roles(snippet, &[]);
        app
    }

    /// The first half of `start_with_edge_extra`: `parapet up` once (data dir, PKI, users, configs), then stopped.
    pub fn prepare(name: &str, args: &[&str]) -> Appliance {
        let mut app = Appliance::start_with_args(name, args);
        if app.sigterm_and_wait(Duration::from_secs(30)).is_none() {
            app.fail("`parapet up` did not exit within 30 s of SIGTERM");
        }
        app
    }

    /// The second half: append `snippet` to edge.toml, start both roles, wait for their ports and `extra_ports`.
    pub fn run_roles(&mut self, snippet: &str, extra_ports: &[u16]) {
        let app = self;
        // `up` has just stopped: its sockets may outlive it for a moment (io_uring lets go of them after the exit),
        // and a port that still accepts would pass for the new role's.
        app.wait_ports_released();
        let edge_cfg = app.data_dir.join("edge.toml");
        let pool_cfg = app.data_dir.join("pool.toml");
        let mut text =
            fs::read_to_string(&edge_cfg).unwrap_or_else(|e| app.fail(&format!("read {}: {e}", edge_cfg.display())));
        if snippet.contains("[edge.federation]") {
            // The test brings its own partner table: it replaces the demo one `up` wrote (a table twice is invalid).
            text = without_federation(&text);
        }
        text.push_str("\n# Added by the e2e test\n");
        text.push_str(snippet);
        text.push('\n');
        if let Err(e) = fs::write(&edge_cfg, &text) {
            app.fail(&format!("write {}: {e}", edge_cfg.display()));
        }
        for (role, cfg) in [("pool", &pool_cfg), ("edge", &edge_cfg)] {
            let mut cmd = Command::new(parapet_bin());
            cmd.arg("run")
                .arg("-c")
                .arg(cfg)
                .current_dir(&app.data_dir)
                .env("PARAPET_MEMLOCK_SHARE", "2")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            stops_with_the_test(&mut cmd);
            let mut child = cmd.spawn().unwrap_or_else(|e| app.fail(&format!("cannot start the {role}: {e}")));
            app.stderr.collect(
                child.stderr.take().expect("piped"),
                Some(app.scratch.join(format!("{role}.stderr"))),
                None,
            );
            app.stderr.collect(
                child.stdout.take().expect("piped"),
                Some(app.scratch.join(format!("{role}.stdout"))),
                None,
            );
            app.roles.push((role, child));
        }
        app.ready_line = format!("parapet run pool.toml + edge.toml (+ {} bytes of edge config)", snippet.len());
        let b = app.port_base;
        let mut ports = vec![b, b + 1, b + 2, b + 3];
        ports.extend_from_slice(extra_ports);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = app.roles.iter_mut().find_map(|(r, c)| c.try_wait().ok().flatten().map(|st| (*r, st)));
            if let Some((role, st)) = exited {
                app.fail(&format!("the {role} exited during start-up ({st}); config:\n{text}"));
            }
            let up = ports.iter().all(|p| {
                std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], *p).into(), Duration::from_millis(200)).is_ok()
            });
            if up {
                break;
            }
            if Instant::now() >= deadline {
                app.fail(&format!("roles not accepting on ports {ports:?} after {READY_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until nothing listens on this appliance's ports any more (3 s at most each, then fails).
    pub fn wait_ports_released(&self) {
        for p in self.port_base..self.port_base + 8 {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p));
            if let Err(e) = parapet::net::listener::ensure_port_free(addr, "appliance port") {
                self.fail(&format!("after the stop: {e}"));
            }
        }
    }

    /// Pid of the edge process: the role we started, or the child of `parapet up` running edge.toml.
    pub fn edge_pid(&self) -> Option<u32> {
        if let Some((_, c)) = self.roles.iter().find(|(r, _)| *r == "edge") {
            return Some(c.id());
        }
        let up = self.pid();
        let tasks = fs::read_dir(format!("/proc/{up}/task")).ok()?;
        for t in tasks.flatten() {
            let children = fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for pid in children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("edge.toml") {
                    return Some(pid);
                }
            }
        }
        None
    }

    /// Panic with `msg` plus the tail of the appliance's stderr.
    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "[{}] {msg}\n--- appliance ({}) stderr tail ---\n{}\n--- end of appliance stderr ---",
            self.name,
            self.ready_line,
            self.stderr.last(60)
        )
    }

    pub fn user(&self, alias: &str) -> User {
        match self.users.iter().find(|u| u.alias == alias) {
            Some(u) => u.clone(),
            None => self.fail(&format!("user {alias:?} missing from {}", self.users_file.display())),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// `parapet up`'s exit status, if it has exited.
    pub fn up_exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for a role started by [`Appliance::run_roles`] to exit; its status.
    pub fn wait_role_exit(&mut self, role: &str, timeout: Duration) -> Option<ExitStatus> {
        let (_, child) = self.roles.iter_mut().find(|(r, _)| *r == role)?;
        wait_timeout(child, timeout)
    }

    /// SIGTERM the appliance itself (not the group) and wait; returns its exit status.
    pub fn sigterm_and_wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let st = wait_timeout(child, timeout);
        if st.is_some() {
            let _ = self.child.take();
        }
        st
    }
}

/// `toml` without its `[edge.federation]` table and sub-tables (`[[edge.federation.partners]]`, ...).
pub fn without_federation(toml: &str) -> String {
    let mut out = String::with_capacity(toml.len());
    let mut skip = false;
    for line in toml.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t.trim_matches(|c| c == '[' || c == ']').trim();
            skip = name == "edge.federation" || name.starts_with("edge.federation.");
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate_group(&mut child, Duration::from_secs(5));
        }
        for (_, child) in self.roles.iter_mut() {
            terminate_group(child, Duration::from_secs(5));
        }
        if thread::panicking() {
            eprintln!("[{}] logs kept in {}", self.name, self.scratch.display());
        } else {
            let _ = fs::remove_dir_all(&self.scratch);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Python venv with pjsua2-python

/// Path of the venv's python, creating target/pyenv (once, under a file lock) when needed.
/// Any failure is a test failure carrying the tool output.
pub fn python() -> PathBuf {
    static DONE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = done.as_ref() {
        return p.clone();
    }
    let p = ensure_pyenv().unwrap_or_else(|e| panic!("cannot prepare the pjsua2 Python venv:\n{e}"));
    *done = Some(p.clone());
    p
}

fn ensure_pyenv() -> Result<PathBuf, String> {
    let target = target_dir();
    fs::create_dir_all(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
    let venv = target.join("pyenv");
    let py = venv.join("bin/python");
    let marker = venv.join(".parapet-e2e-ok");

    let lock_path = target.join("pyenv.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    lock.lock().map_err(|e| format!("lock {}: {e}", lock_path.display()))?;

    let ok = fs::read_to_string(&marker).map(|m| m.trim() == PJSUA2_REQ).unwrap_or(false) && py.exists();
    if !ok {
        let _ = fs::remove_dir_all(&venv);
        let mut log = String::new();
        let python3 = std::env::var("PYTHON3").unwrap_or_else(|_| "python3".to_string());
        log += &run_bounded(Command::new(&python3).arg("-m").arg("venv").arg(&venv), Duration::from_secs(120))?;
        log += &run_bounded(
            Command::new(&py)
                .args(["-m", "pip", "install", "--no-input", "--disable-pip-version-check", PJSUA2_REQ])
                .env("PIP_NO_INPUT", "1"),
            PIP_TIMEOUT,
        )
        .map_err(|e| format!("{log}\n{e}"))?;
        run_bounded(Command::new(&py).args(["-c", "import pjsua2; pjsua2.Endpoint()"]), Duration::from_secs(60))
            .map_err(|e| format!("{log}\npjsua2 installed but does not import:\n{e}"))?;
        fs::write(&marker, PJSUA2_REQ).map_err(|e| format!("write {}: {e}", marker.display()))?;
    }
    let _ = lock.unlock();
    Ok(py)
}
