//! baresip 1.0 (Debian's `baresip-core`, the libre SIP stack), untouched, against `parapet up`: the test installs
//! it when missing (apt-get; a failure is a test failure), writes its config folder, and drives it over its
//! `ctrl_tcp` module (netstring JSON commands). baresip is the strict one of the three clients the interop notes
//! describe: it presents a client certificate of its own on every TLS connection (the user port, shared with
//! partners, must take it), answers only MD5 digest (and gives up on a 401 carrying any other challenge), and
//! puts its expiry only in the Contact's `expires` parameter. pjsip (pjsua2-python) plays bob.
//!
//! Proves: baresip registers with digest through the edge; its MESSAGE reaches bob with the text; bob's MESSAGE
//! reaches baresip, whose 200 comes back to bob.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pjsua::Agent;
use crate::support::{run_bounded, signal_group, Appliance, User};

const APT_TIMEOUT: Duration = Duration::from_secs(600);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(20);

fn baresip_bin() -> Option<PathBuf> {
    ["/usr/bin/baresip", "/usr/local/bin/baresip"].iter().map(PathBuf::from).find(|p| p.exists())
}

fn ensure_baresip() -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(bin) = baresip_bin() {
        return bin;
    }
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run_bounded(&mut cmd, APT_TIMEOUT).unwrap_or_else(|e| panic!("installing baresip failed:\n{e}"))
    };
    apt(&["update"]);
    apt(&["install", "-y", "baresip-core"]);
    baresip_bin().unwrap_or_else(|| panic!("apt-get installed baresip-core, but no baresip binary was found"))
}

/// A running baresip (its own process group, stopped on drop) and its control connection.
struct Baresip {
    child: Child,
    ctrl: TcpStream,
    log: PathBuf,
    app_name: String,
}

impl Baresip {
    /// baresip as `user`, with `contact` as its one (current) contact, controlled on `ctrl_port`.
    fn start(app: &Appliance, user: &User, contact: &str, ctrl_port: u16) -> Baresip {
        let bin = ensure_baresip();
        let dir = app.scratch.join(format!("baresip-{}", user.alias));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| app.fail(&format!("baresip dir: {e}")));
        // Its own client certificate (baresip needs one for TLS), from a CA of its own: one PEM, cert and key.
        let (cert, key) = parapet::config::devpki::issue_leaf(&dir, "client", &[format!("{}.client.test", user.alias)])
            .unwrap_or_else(|e| app.fail(&format!("baresip's certificate: {e}")));
        let pem =
            std::fs::read_to_string(&cert).unwrap_or_default() + &std::fs::read_to_string(&key).unwrap_or_default();
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).unwrap_or_else(|e| app.fail(&format!("baresip {name}: {e}")));
        };
        write("client-bundle.pem", &pem);
        write(
            "config",
            &format!(
                "module_path /usr/lib/baresip/modules\nmodule ctrl_tcp.so\nmodule menu.so\nmodule_app account.so\n\
                 module_app contact.so\nctrl_tcp_listen 127.0.0.1:{ctrl_port}\nsip_listen 127.0.0.1:0\n\
                 sip_cafile {}\nsip_certificate {}\naudio_player aubridge,nil\naudio_source aubridge,nil\n",
                app.ca.display(),
                dir.join("client-bundle.pem").display()
            ),
        );
        write(
            "accounts",
            &format!(
                "<sip:{}@{};transport=tls>;auth_pass={};outbound=\"sip:{};transport=tls\";regint=600\n",
                user.alias, app.domain, user.password, app.edge
            ),
        );
        write("contacts", &format!("\"Peer\" <{contact}>\n"));
        let log = dir.join("baresip.log");
        let out = std::fs::File::create(&log).unwrap_or_else(|e| app.fail(&format!("baresip log: {e}")));
        let err = out.try_clone().unwrap_or_else(|e| app.fail(&format!("baresip log: {e}")));
        let mut cmd = Command::new(&bin);
        // -s: SIP trace into the log, for a failing test's reader.
        cmd.arg("-f").arg(&dir).arg("-s").stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        // SAFETY: prctl is async-signal-safe; baresip stops if the test thread that started it dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| app.fail(&format!("cannot start {}: {e}", bin.display())));
        let deadline = Instant::now() + Duration::from_secs(10);
        let ctrl = loop {
            match TcpStream::connect(("127.0.0.1", ctrl_port)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => app.fail(&format!("baresip's control port {ctrl_port}: {e}")),
            }
        };
        let _ = ctrl.set_read_timeout(Some(Duration::from_secs(5)));
        Baresip { child, ctrl, log, app_name: app.name.clone() }
    }

    fn fail(&self, msg: &str) -> ! {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "[{} / baresip] {msg}\n--- baresip log tail ({}) ---\n{}",
            self.app_name,
            self.log.display(),
            tail.join("\n")
        )
    }

    /// One command (netstring JSON); returns the `data` of its response.
    fn command(&mut self, command: &str, params: &str) -> String {
        let body = format!(
            "{{\"command\":\"{command}\",\"params\":\"{}\",\"token\":\"t\"}}",
            params.replace('\\', "\\\\").replace('"', "\\\"")
        );
        if let Err(e) = self.ctrl.write_all(format!("{}:{body},", body.len()).as_bytes()) {
            self.fail(&format!("control command {command}: {e}"));
        }
        // Responses and events arrive as netstrings; the one with "response":true answers us.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = Vec::new();
        while Instant::now() < deadline {
            let mut chunk = [0u8; 4096];
            match self.ctrl.read(&mut chunk) {
                Ok(0) => self.fail("baresip closed its control connection"),
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
                Err(_) => {}
            }
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(at) = text.find("\"response\":true") {
                return text.get(at..).unwrap_or("").to_string();
            }
        }
        self.fail(&format!("no answer to control command {command}"));
    }

    /// Waits until its account shows registered (`reginfo`: OK).
    fn wait_registered(&mut self) {
        let deadline = Instant::now() + REGISTER_TIMEOUT;
        loop {
            let info = self.command("reginfo", "");
            if info.contains("OK ") {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("not registered after {REGISTER_TIMEOUT:?}: {info}"));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Whether its SIP trace shows `needle`.
    fn log_contains(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(needle))
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        signal_group(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

#[test]
fn baresip_registers_and_exchanges_messages_with_pjsip() {
    let app = Appliance::start("baresip-interop");
    let (alice_u, bob_u) = (app.user("alice"), app.user("bob"));
    let mut bob = Agent::spawn(&app, "bob", &bob_u.alias, &bob_u.password);
    let ev = bob.register();
    bob.check(ev.int("code") == Some(200), || format!("bob REGISTER: {ev}"));

    let bob_aor = format!("sip:bob@{}", app.domain);
    let mut alice = Baresip::start(&app, &alice_u, &bob_aor, app.port_base + 8);
    alice.wait_registered();

    // baresip -> pjsip (its current contact is bob).
    let text = "hello bob, from baresip";
    alice.command("message", text);
    let m = bob.received();
    bob.check(m.str("text") == Some(text), || format!("bob received a different text: {m}"));
    bob.check(m.str("from").is_some_and(|f| f.contains(&format!("sip:alice@{}", app.domain))), || {
        format!("bob's message does not come from alice: {m}")
    });

    // pjsip -> baresip: the final response bob sees is baresip's own 200.
    let reply = "hello baresip, from pjsip";
    let st = bob.message(&format!("sip:alice@{}", app.domain), reply);
    bob.check(st.int("code") == Some(200), || format!("bob -> baresip MESSAGE: {st}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alice.log_contains(reply) {
        if Instant::now() >= deadline {
            alice.fail("bob's MESSAGE does not show in baresip's SIP trace");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
