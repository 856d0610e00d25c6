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

use crate::interop_pjsip::{messages_with_bob, registered_bob};
use crate::support::{apt_installed, stops_with_the_test, terminate_group, Appliance, User};

const REGISTER_TIMEOUT: Duration = Duration::from_secs(20);

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
        let bin = apt_installed("/usr/bin/baresip", &["baresip-core"]);
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
        stops_with_the_test(&mut cmd);
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

    /// Waits (5 s at most) until its SIP trace shows `needle`.
    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(needle)) {
            if Instant::now() >= deadline {
                self.fail(&format!("{needle:?} does not show in its SIP trace"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        terminate_group(&mut self.child, Duration::from_secs(3));
    }
}

#[test]
fn baresip_registers_and_exchanges_messages_with_pjsip() {
    let app = Appliance::start("baresip-interop");
    let mut bob = registered_bob(&app);
    let alice = Baresip::start(&app, &app.user("alice"), &format!("sip:bob@{}", app.domain), app.port_base + 8);
    let alice = std::cell::RefCell::new(alice);
    alice.borrow_mut().wait_registered();
    // Its current contact is bob; what it receives shows in its SIP trace.
    messages_with_bob(
        &app,
        &mut bob,
        "baresip",
        |text| {
            alice.borrow_mut().command("message", text);
        },
        |reply| alice.borrow().wait_log(reply),
    );
}
