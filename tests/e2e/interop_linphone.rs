//! linphone's console client (Debian's `linphone-cli` 5.1, the belle-sip stack), untouched, against `parapet up`:
//! the test installs it when missing (apt-get; a failure is a test failure), writes its rc file in a scratch HOME
//! and drives it through stdin. pjsip (pjsua2-python) plays bob.
//!
//! Proves: linphone verifies the edge's certificate (by name: its TLS library does not match IP addresses, so it
//! connects to `localhost`), registers with digest, its MESSAGE reaches bob with the text, and bob's MESSAGE
//! reaches linphone, whose 200 comes back to bob.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::interop_pjsip::{messages_with_bob, registered_bob};
use crate::support::{apt_installed, stops_with_the_test, terminate_group, Appliance, User};

const REGISTER_TIMEOUT: Duration = Duration::from_secs(20);

/// A running linphonec (its own process group, stopped on drop), its stdin and its debug log.
struct Linphone {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    app_name: String,
}

impl Linphone {
    fn start(app: &Appliance, user: &User) -> Linphone {
        let bin = apt_installed("/usr/bin/linphonec", &["linphone-cli"]);
        let home = app.scratch.join(format!("linphone-{}", user.alias));
        std::fs::create_dir_all(home.join(".local/share/linphone"))
            .unwrap_or_else(|e| app.fail(&format!("linphone home: {e}")));
        let port = app.edge.rsplit(':').next().unwrap_or("5061");
        let rc = home.join("linphonerc");
        let text = format!(
            "[sip]\nsip_port=-1\nsip_tcp_port=-1\nsip_tls_port=-1\nroot_ca={ca}\nverify_server_certs=1\n\
             verify_server_cn=1\ndefault_proxy=0\n\n[rtp]\naudio_rtp_port=0\n\n\
             [sound]\nplayback_dev_id=null\ncapture_dev_id=null\n\n\
             [proxy_0]\nreg_proxy=<sip:localhost:{port};transport=tls>\n\
             reg_route=<sip:localhost:{port};transport=tls;lr>\nreg_identity=sip:{alias}@{domain}\n\
             reg_expires=600\nreg_sendregister=1\npublish=0\n\n\
             [auth_info_0]\nusername={alias}\npasswd={password}\nrealm={domain}\ndomain={domain}\n",
            ca = app.ca.display(),
            alias = user.alias,
            password = user.password,
            domain = app.domain,
        );
        std::fs::write(&rc, text).unwrap_or_else(|e| app.fail(&format!("linphone rc: {e}")));
        let log = home.join("linphone.log");
        let out = std::fs::File::create(home.join("linphonec.out")).unwrap_or_else(|e| app.fail(&format!("{e}")));
        let err = out.try_clone().unwrap_or_else(|e| app.fail(&format!("{e}")));
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&rc)
            .args(["-d", "6", "-l"])
            .arg(&log)
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        stops_with_the_test(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| app.fail(&format!("cannot start {}: {e}", bin.display())));
        let stdin = child.stdin.take();
        Linphone { child, stdin, log, app_name: app.name.clone() }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn fail(&self, msg: &str) -> ! {
        let log = self.log_text();
        let sip: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("SIP/2.0") || l.contains("Registration") || l.contains("handshake"))
            .collect();
        panic!(
            "[{} / linphone] {msg}\n--- SIP status lines and states in {} ---\n{}",
            self.app_name,
            self.log.display(),
            sip.join("\n")
        )
    }

    fn send(&mut self, line: &str) {
        let Some(stdin) = self.stdin.as_mut() else { self.fail("stdin closed") };
        if let Err(e) = stdin.write_all(format!("{line}\n").as_bytes()).and_then(|_| stdin.flush()) {
            self.fail(&format!("writing {line:?}: {e}"));
        }
    }

    /// Waits until its log shows `needle`.
    fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log_text().contains(needle) {
            if Instant::now() >= deadline {
                self.fail(&format!("no {needle:?} in its log after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"quit\n");
        }
        terminate_group(&mut self.child, Duration::from_secs(3));
    }
}

#[test]
fn linphone_registers_and_exchanges_messages_with_pjsip() {
    let app = Appliance::start("linphone-interop");
    let mut bob = registered_bob(&app);
    let alice = std::cell::RefCell::new(Linphone::start(&app, &app.user("alice")));
    alice.borrow().wait_log("LinphoneRegistrationOk", REGISTER_TIMEOUT);
    let to = format!("sip:bob@{}", app.domain);
    messages_with_bob(
        &app,
        &mut bob,
        "linphone",
        |text| alice.borrow_mut().send(&format!("chat {to} {text}")),
        |reply| alice.borrow().wait_log(reply, Duration::from_secs(5)),
    );
}
