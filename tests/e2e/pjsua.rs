//! Rust driver for tests/clients/pjsua_agent.py: one agent process = one SIP identity.
//! Commands are JSON lines on its stdin, events JSON lines on its stdout.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{self, Appliance, Tail};

/// Time for the agent to load pjsip and print `ready`.
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for one SIP transaction outcome (register, message) to be reported.
pub const SIP_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Minimal JSON (the crate has no JSON dependency, and tests must not add one)

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.get(key),
            _ => None,
        }
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Json::Str(s)) => Some(s),
            _ => None,
        }
    }
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key) {
            Some(Json::Num(n)) if n.fract() == 0.0 => Some(*n as i64),
            _ => None,
        }
    }
    pub fn event(&self) -> &str {
        self.str("event").unwrap_or("")
    }

    pub fn parse(s: &str) -> Result<Json, String> {
        let mut p = Parser { b: s.as_bytes(), i: 0 };
        let v = p.value()?;
        p.ws();
        if p.i != p.b.len() {
            return Err(format!("trailing data at {} in {s:?}", p.i));
        }
        Ok(v)
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => write!(f, "null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Num(n) => write!(f, "{n}"),
            Json::Str(s) => write!(f, "{}", quote(s)),
            Json::Arr(a) => {
                write!(f, "[")?;
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, "{v}")?;
                }
                write!(f, "]")
            }
            Json::Obj(m) => {
                write!(f, "{{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, "{}:{v}", quote(k))?;
                }
                write!(f, "}}")
            }
        }
    }
}

/// JSON string literal for `s`.
pub fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("JSON: {what} at byte {}", self.i))
    }
    fn lit(&mut self, w: &str, v: Json) -> Result<Json, String> {
        if self.b[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            self.err("bad literal")
        }
    }
    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.b.get(self.i) {
            None => self.err("unexpected end"),
            Some(b'n') => self.lit("null", Json::Null),
            Some(b't') => self.lit("true", Json::Bool(true)),
            Some(b'f') => self.lit("false", Json::Bool(false)),
            Some(b'"') => self.string().map(Json::Str),
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => return self.err("expected , or ]"),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut m = BTreeMap::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    self.ws();
                    if self.b.get(self.i) != Some(&b'"') {
                        return self.err("expected key");
                    }
                    let k = self.string()?;
                    self.ws();
                    if self.b.get(self.i) != Some(&b':') {
                        return self.err("expected :");
                    }
                    self.i += 1;
                    let v = self.value()?;
                    m.insert(k, v);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => return self.err("expected , or }"),
                    }
                }
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.b.len() && matches!(self.b[self.i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    self.i += 1;
                }
                let s = std::str::from_utf8(&self.b[start..self.i]).unwrap_or("");
                match s.parse::<f64>() {
                    Ok(n) if !s.is_empty() => Ok(Json::Num(n)),
                    _ => self.err("bad number"),
                }
            }
        }
    }
    fn hex4(&mut self) -> Result<u32, String> {
        let h = self.b.get(self.i..self.i + 4).and_then(|h| std::str::from_utf8(h).ok());
        match h.and_then(|h| u32::from_str_radix(h, 16).ok()) {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.err("bad \\u escape"),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        self.i += 1; // opening quote
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&c) = self.b.get(self.i) else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.b.get(self.i) else {
                        return self.err("unterminated escape");
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return self.err("lone surrogate");
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF)
                            } else {
                                hi
                            };
                            char::from_u32(cp).unwrap_or('\u{FFFD}')
                        }
                        _ => return self.err("bad escape"),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).or_else(|_| self.err("invalid UTF-8 in string"))
    }
}

// ---------------------------------------------------------------------------------------------
// The agent process

pub struct Agent {
    pub label: String,
    pub user: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<String>,
    /// Events received but not yet consumed by a wait.
    backlog: Vec<Json>,
    /// Every event seen, for failure messages.
    seen: Vec<String>,
    pub stderr: Tail,
    pub log_path: PathBuf,
    app_name: String,
    app_stderr: Tail,
}

impl Agent {
    /// Start an agent for `user` against `app`'s TLS listener and wait for its `ready` event.
    pub fn spawn(app: &Appliance, label: &str, user: &str, password: &str) -> Agent {
        Agent::spawn_accounts(app, label, user, password, &[])
    }

    /// An agent with more accounts in the same process (`also`: user, password), sharing its TLS transport as a
    /// softphone with several accounts does. Commands act for `user` unless they say `"as": "<user>"`; events
    /// carry `"account"`.
    pub fn spawn_accounts(app: &Appliance, label: &str, user: &str, password: &str, also: &[(&str, &str)]) -> Agent {
        let py = support::python();
        let log_path = app.data_dir.parent().unwrap_or(&app.data_dir).join(format!("agent-{label}.log"));
        let mut cmd = Command::new(&py);
        cmd.arg("-u").arg(support::agent_script()).args([
            "--user",
            user,
            "--password",
            password,
            "--domain",
            &app.domain,
            "--proxy",
            &app.edge,
        ]);
        for (u, p) in also {
            cmd.arg("--also").arg(format!("{u}:{p}"));
        }
        let mut child = cmd
            .arg("--ca")
            .arg(&app.ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn the pjsua agent with {}: {e}", py.display()));
        let stderr = Tail::default();
        stderr.collect(child.stderr.take().expect("piped"), Some(log_path.clone()), None);
        let (tx, rx) = mpsc::channel();
        Tail::default().collect(child.stdout.take().expect("piped"), None, Some(tx));
        let mut agent = Agent {
            label: label.to_string(),
            user: user.to_string(),
            stdin: child.stdin.take(),
            child: Some(child),
            events: rx,
            backlog: Vec::new(),
            seen: Vec::new(),
            stderr,
            log_path,
            app_name: app.name.clone(),
            app_stderr: app.stderr.clone(),
        };
        agent.wait_event("ready", AGENT_READY_TIMEOUT);
        agent
    }

    fn fail(&self, msg: &str) -> ! {
        panic!(
            "[{} / agent {} ({})] {msg}\n--- agent events ---\n{}\n--- agent stderr tail (full log: {}) ---\n{}\n\
             --- appliance stderr tail ---\n{}\n--- end ---",
            self.app_name,
            self.label,
            self.user,
            self.seen.join("\n"),
            self.log_path.display(),
            self.stderr.last(80),
            self.app_stderr.last(60)
        )
    }

    /// The agent's process id (0 once it has ended).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn send(&mut self, cmd: &str) {
        let Some(stdin) = self.stdin.as_mut() else {
            self.fail("agent stdin already closed");
        };
        if let Err(e) = stdin.write_all(cmd.as_bytes()).and_then(|_| stdin.write_all(b"\n")).and_then(|_| stdin.flush())
        {
            self.fail(&format!("cannot write command {cmd}: {e}"));
        }
    }

    /// Wait (bounded) for the first event satisfying `pred`; other events stay queued.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Json) -> bool) -> Json {
        if let Some(pos) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(pos);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.fail(&format!("no {what} within {timeout:?}"));
            }
            match self.events.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    let ev = match Json::parse(&line) {
                        Ok(ev) => ev,
                        Err(e) => self.fail(&format!("agent wrote a non-JSON stdout line {line:?}: {e}")),
                    };
                    if pred(&ev) {
                        return ev;
                    }
                    self.backlog.push(ev);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.as_mut().and_then(|c| support::wait_timeout(c, Duration::from_secs(2)));
                    std::thread::sleep(Duration::from_millis(100));
                    self.fail(&format!("agent exited ({st:?}) while waiting for {what}"));
                }
            }
        }
    }

    pub fn wait_event(&mut self, kind: &str, timeout: Duration) -> Json {
        self.wait_for(&format!("`{kind}` event"), timeout, |e| e.event() == kind)
    }

    /// Events of `kind` received so far and not consumed (does not wait).
    pub fn pending(&mut self, kind: &str) -> Vec<Json> {
        while let Ok(line) = self.events.try_recv() {
            self.seen.push(line.clone());
            if let Ok(ev) = Json::parse(&line) {
                self.backlog.push(ev);
            }
        }
        self.backlog.iter().filter(|e| e.event() == kind).cloned().collect()
    }

    /// Drops every event of `kind` received so far, so that later waits only see what comes after.
    pub fn discard(&mut self, kind: &str) {
        let _ = self.pending(kind);
        self.backlog.retain(|e| e.event() != kind);
    }

    /// Send REGISTER and return the final `reg` event.
    pub fn register(&mut self) -> Json {
        self.send(r#"{"cmd":"register"}"#);
        self.wait_event("reg", SIP_TIMEOUT)
    }

    /// Send a MESSAGE and return its `message_status` event (final response code at the sender).
    pub fn message(&mut self, to: &str, text: &str) -> Json {
        self.send(&format!(r#"{{"cmd":"message","to":{},"text":{}}}"#, quote(to), quote(text)));
        let want = to.to_string();
        self.wait_for(&format!("message_status for {to}"), SIP_TIMEOUT, move |e| {
            e.event() == "message_status" && e.str("to").is_some_and(|t| t.contains(&want))
        })
    }

    /// Wait for an incoming MESSAGE.
    pub fn received(&mut self) -> Json {
        self.wait_event("message", SIP_TIMEOUT)
    }

    /// Assert helper carrying the agent's and the appliance's logs.
    pub fn check(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.fail(&msg());
        }
    }

    /// Kill the agent's process at once (a crashed client: no unregister, no unpublish, its TCP connection reset).
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.stdin.take();
            support::signal_group(child.id(), libc::SIGKILL);
            let _ = support::wait_timeout(&mut child, Duration::from_secs(5));
        }
    }

    /// Ask the agent to quit; bounded, then kill.
    pub fn quit(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(mut stdin) = self.stdin.take() {
                let _ = stdin.write_all(b"{\"cmd\":\"quit\"}\n");
                let _ = stdin.flush();
            }
            if support::wait_timeout(&mut child, Duration::from_secs(8)).is_none() {
                support::terminate_group(&mut child, Duration::from_secs(2));
            } else {
                support::signal_group(child.id(), libc::SIGKILL);
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Do not wait for a clean unregister while unwinding.
            if let Some(mut child) = self.child.take() {
                support::terminate_group(&mut child, Duration::from_secs(1));
            }
        } else {
            self.quit();
        }
    }
}

#[test]
fn json_roundtrip() {
    let v = Json::parse(
        r#"{"event": "message", "text": "h\u00e9 \"x\" \ud83d\ude00\n", "code": 200, "l": [true, null, -1.5e2]}"#,
    )
    .expect("parse");
    assert_eq!(v.event(), "message");
    assert_eq!(v.str("text"), Some("hé \"x\" 😀\n"));
    assert_eq!(v.int("code"), Some(200));
    assert_eq!(Json::parse(&v.to_string()).expect("reparse"), v);
    assert!(Json::parse("{\"a\":}").is_err());
}
