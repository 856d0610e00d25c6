//! Real OpenLDAP servers for the directory tests: Debian's `slapd` (installed when missing), each from a config
//! of the test's own (`slapd -f`, mdb backend, loaded offline with `slapadd`), on a loopback port, with StartTLS
//! or LDAPS from a certificate of the test's dev PKI. Any slapd the package's postinst started is left alone:
//! ours listen on ports of their own. Edits go through `ldapmodify`/`ldapdelete` (ldap-utils).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{apt_installed, run_bounded, stops_with_the_test, terminate_group, Tail};

pub const ROOT_PASSWORD: &str = "ldap-root-secret";

/// One running slapd; stopped (process group) on drop.
pub struct Slapd {
    pub suffix: String,
    pub port: u16,
    /// `ldaps://` when true, else `ldap://` with StartTLS.
    pub ldaps: bool,
    pub dir: PathBuf,
    pub ca: PathBuf,
    child: Option<Child>,
    pub log: Tail,
}

pub fn install() {
    apt_installed("/usr/sbin/slapd", &["slapd", "ldap-utils"]);
    apt_installed("/usr/bin/ldapmodify", &["ldap-utils"]);
}

impl Slapd {
    /// Writes the config and database under `dir`, loads `base` (LDIF text: the suffix entry and people), starts.
    pub fn start(dir: &Path, suffix: &str, port: u16, ldaps: bool, pki: &Path, base: &str) -> Slapd {
        install();
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir.join("db")).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let stem = format!("slapd-{port}");
        let (cert, key) = parapet::config::devpki::issue_leaf(pki, &stem, &["localhost".into(), "127.0.0.1".into()])
            .unwrap_or_else(|e| panic!("issue a certificate for slapd: {e}"));
        let ca = pki.join("ca.pem");
        let conf = format!(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\ninclude /etc/ldap/schema/nis.schema\n\
             pidfile {d}/slapd.pid\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\n\
             sizelimit unlimited\n\
             TLSCACertificateFile {ca}\nTLSCertificateFile {cert}\nTLSCertificateKeyFile {key}\n\
             database mdb\nmaxsize 1073741824\nsuffix \"{suffix}\"\nrootdn \"cn=admin,{suffix}\"\n\
             rootpw {ROOT_PASSWORD}\ndirectory {d}/db\nindex objectClass eq\n",
            d = dir.display(),
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
        );
        fs::write(dir.join("slapd.conf"), conf).unwrap_or_else(|e| panic!("write slapd.conf: {e}"));
        fs::write(dir.join("base.ldif"), base).unwrap_or_else(|e| panic!("write base.ldif: {e}"));
        let mut add = Command::new("/usr/sbin/slapadd");
        add.arg("-f").arg(dir.join("slapd.conf")).arg("-l").arg(dir.join("base.ldif"));
        run_bounded(&mut add, Duration::from_secs(120)).unwrap_or_else(|e| panic!("slapadd {suffix}: {e}"));
        let mut s =
            Slapd { suffix: suffix.into(), port, ldaps, dir: dir.into(), ca, child: None, log: Tail::default() };
        s.run();
        s
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.ldaps { "ldaps" } else { "ldap" }, self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn run(&mut self) {
        let mut cmd = Command::new("/usr/sbin/slapd");
        // -d 0: in the foreground (a child we can stop), logging nothing but errors.
        cmd.arg("-f").arg(self.dir.join("slapd.conf")).arg("-h").arg(format!("{}/", self.url())).args(["-d", "0"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        stops_with_the_test(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start slapd: {e}"));
        self.log.collect(child.stderr.take().expect("piped"), Some(self.dir.join("slapd.stderr")), None);
        self.log.collect(child.stdout.take().expect("piped"), None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("slapd for {} exited at start ({st}):\n{}", self.suffix, self.log.last(30));
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                panic!("slapd for {} not accepting on {} after 30 s:\n{}", self.suffix, self.port, self.log.last(30));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate_group(&mut c, Duration::from_secs(10));
        }
        // Stopped means refusing connections: wait for the port to close.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            if Instant::now() >= deadline {
                panic!("slapd for {} still accepts on {} after its stop", self.suffix, self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn tool(&self, bin: &str) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("-x").arg("-H").arg(self.url()).arg("-D").arg(format!("cn=admin,{}", self.suffix));
        cmd.arg("-w").arg(ROOT_PASSWORD);
        if !self.ldaps {
            cmd.arg("-ZZ");
        }
        cmd.env("LDAPTLS_CACERT", &self.ca);
        cmd
    }

    /// Applies LDIF change records (`changetype: add/modify/...`).
    pub fn modify(&self, ldif: &str) {
        let path = self.dir.join("change.ldif");
        fs::write(&path, ldif).unwrap_or_else(|e| panic!("write change.ldif: {e}"));
        let mut cmd = self.tool("/usr/bin/ldapmodify");
        cmd.arg("-f").arg(&path);
        run_bounded(&mut cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("ldapmodify on {}: {e}", self.suffix));
    }

    pub fn delete(&self, dn: &str) {
        let mut cmd = self.tool("/usr/bin/ldapdelete");
        cmd.arg(dn);
        run_bounded(&mut cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("ldapdelete {dn}: {e}"));
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate_group(&mut c, Duration::from_secs(5));
        }
    }
}

/// The suffix entry, `ou=people`, and one inetOrgPerson per (uid, given name, surname, mail, password).
pub fn people_ldif(suffix: &str, dc: &str, people: &[(&str, &str, &str, &str, &str)]) -> String {
    let mut out = format!(
        "dn: {suffix}\nobjectClass: dcObject\nobjectClass: organization\ndc: {dc}\no: {dc}\n\n\
         dn: ou=people,{suffix}\nobjectClass: organizationalUnit\nou: people\n\n"
    );
    for (uid, given, sn, mail, pw) in people {
        out.push_str(&person_ldif(suffix, uid, given, sn, mail, pw));
        out.push('\n');
    }
    out
}

pub fn person_ldif(suffix: &str, uid: &str, given: &str, sn: &str, mail: &str, pw: &str) -> String {
    format!(
        "dn: uid={uid},ou=people,{suffix}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {given} {sn}\n\
         givenName: {given}\nsn: {sn}\ndisplayName: {given} {sn}\nmail: {mail}\ntitle: Engineer\n\
         telephoneNumber: +1 555 0100\nuserPassword: {pw}\n"
    )
}
