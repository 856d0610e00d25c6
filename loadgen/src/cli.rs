//! The command line (the benchmark harness codes against it: see dev/contracts/loadgen.md) and its
//! validation into a `Config`. Every bad value becomes one `ConfigError` sentence; nothing here touches the
//! network.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::users::{self, User};

const ABOUT: &str = "Open-loop SIP load generator for parapet: real SIP over TLS with digest auth, \
latency from the scheduled send time (no coordinated omission), HdrHistogram percentiles.";

const SCENARIOS: &str = "\
SCENARIOS (every operation is scheduled at a fixed interval 1/--rate, whether or not earlier ones were answered;
latency runs from the scheduled time to the final answer):
  register   Each operation is one REGISTER transaction pair on a user's own TLS connection: REGISTER, 401 with
             a digest challenge, REGISTER with credentials, 200. The users load1..loadN are cycled; --count
             connections are opened before measuring.
  im         All --count users register first (not measured). Each operation: user A sends MESSAGE to user B
             (another simulated user, on its own connection, registered through the edge). The first MESSAGE on
             a connection gets 407 and is retried with credentials; later ones reuse that nonce with an
             incrementing nc (no extra round trip). B's connection receives the MESSAGE and answers 200; the
             latency ends at the 200 back at A.
  handshake  Each operation opens a new TCP connection and completes a TLS handshake, then closes it. Full
             handshakes by default; --resume resumes TLS sessions (each connection exchanges one CRLF
             keep-alive so the session ticket arrives, and the report counts resumed handshakes).
  idle       Opens --count connections and registers each (as fast as allowed, at most 64 setups in flight
             per core; these registrations are the measured operations), then holds them all for --duration
             and reports how many were still open. Meant for measuring the server's memory per connection.
  mix        A company's day in proportions of operations: 70% im (MESSAGE A->B as in `im`), 20% registration
             refresh (REGISTER on the user's connection reusing its nonce; a stale nonce costs one 401), 10%
             handshake (a new full TLS handshake). Users register first, as in `im`.
  presence   Presence with --watchers W watchers per presentity (issue 4). All --count users register first;
             the first count/(W+1) users (at least 1, and at least one per loadgen core) are presentities, and
             each is watched by W of the other users (fewer when --count is too small; a user may then watch
             several presentities): their SUBSCRIBE (Event: presence, 407 then 200, then the first NOTIFY) is
             set up before measuring, not measured. Each operation: a presentity PUBLISHes its state (PIDF,
             alternately open and busy, with a note; after the first it modifies its publication with
             SIP-If-Match); the latency ends at the 200. Every state change makes the server NOTIFY each
             watcher, which answers 200 at once; NOTIFYs received in the measured window are reported as
             notifies and notifies_per_s.
  federation Plays partner organizations' edges (issue 6) against the edge's federation port (--fed-target,
             mutual TLS: each partner presents its certificate, <--partner-pki>/<domain>.pem and .key, and trusts
             --ca for the edge's). All --count users register first through --target, as in `im`, and answer 200.
             Before measuring, each partner checks its connection with an OPTIONS (200 means: certificate trusted,
             name admitted, domain spoken for). Each operation: a partner sends MESSAGE sip:loadN@DOMAIN From
             <sip:loadgen@PARTNER> with its own Via and no credentials (its certificate vouches for its domain);
             the edge hands it to the pool, which delivers it to loadN; latency ends at the 200 back at the partner.
             --partner picks one demo partner (rate --rate); --partner-rates partner.test=2000,other.test=100 runs
             several at once, each on its own open-loop schedule and its own connection per core, and reports each
             apart (a throttled partner gets 503s, counted by code, while the others' latencies show whether they
             were spared). A partner connection the edge closes is not reopened: what follows on it counts as
             transport errors. `parapet up` makes the demo partners partner.test and other.test.

OUTPUT: a progress line per second on stderr; a table on stdout at the end; --json, --hdr-log, --plot files.
Exit code 0 after a completed run (even with SIP errors), 2 with one sentence on bad configuration.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Register,
    Im,
    Handshake,
    Idle,
    Mix,
    Presence,
    Federation,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Register => "register",
            Scenario::Im => "im",
            Scenario::Handshake => "handshake",
            Scenario::Idle => "idle",
            Scenario::Mix => "mix",
            Scenario::Presence => "presence",
            Scenario::Federation => "federation",
        }
    }

    /// Scenarios whose users must all be registered before measuring.
    pub fn registers_all(self) -> bool {
        matches!(self, Scenario::Im | Scenario::Mix | Scenario::Presence | Scenario::Federation)
    }
}

#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about = ABOUT, after_help = SCENARIOS)]
pub struct Args {
    /// register | im | handshake | idle | mix | presence | federation
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Edge TLS address.
    #[arg(long, default_value = "127.0.0.1:5061")]
    pub target: String,
    /// TLS name to verify in the edge's certificate.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// CA certificate (PEM) to trust.
    #[arg(long, default_value = "data/pki/ca.pem")]
    pub ca: PathBuf,
    /// SIP domain.
    #[arg(long, default_value = "example.com")]
    pub domain: String,
    /// User directory with passwords (parapet's users.toml); users load1..loadN are used, else all users.
    #[arg(long, default_value = "data/users.toml")]
    pub users: PathBuf,
    /// Simulated users / connections (default: 100, or all the users there are when fewer).
    #[arg(long)]
    pub count: Option<usize>,
    /// Target operations per second, open loop.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of measurement (per step with --find-max); bounds every run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// CPUs for loadgen's executors, e.g. "1" or "1,2" (default: the last CPU).
    #[arg(long)]
    pub cores: Option<String>,
    /// Spread connections over 127.0.0.1 .. 127.0.0.N (default: ceil(count / 20000)).
    #[arg(long)]
    pub source_ips: Option<u8>,
    /// The first source address's last byte: with --source-first 5 --source-ips 2, connections come from
    /// 127.0.0.5 and 127.0.0.6 (e.g. to play an abuser from its own address).
    #[arg(long, default_value_t = 1)]
    pub source_first: u8,
    /// Write results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HdrHistogram interval log (one interval per second).
    #[arg(long)]
    pub hdr_log: Option<PathBuf>,
    /// Write an SVG of throughput and p50/p99/p99.9 over time.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Step mode: start at --rate, raise it by --step every --duration, stop when the SLO breaks.
    #[arg(long)]
    pub find_max: bool,
    /// Rate increase per --find-max step: "x1.5" multiplies, "+500" adds.
    #[arg(long, default_value = "x1.5")]
    pub step: String,
    /// --find-max SLO: p99 latency bound in ms (and no error, no timeout, no drop, >= 90% of the rate).
    #[arg(long, default_value_t = 10.0)]
    pub slo_p99_ms: f64,
    /// Per-transaction timeout; counted as "timeout".
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// handshake: resume TLS sessions.
    #[arg(long)]
    pub resume: bool,
    /// presence: watchers per presentity.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// federation: where the edge takes partners (default: the --target port + 5, as `parapet up` lays it out).
    #[arg(long)]
    pub fed_target: Option<String>,
    /// federation: TLS name to verify in the edge's certificate on the federation port (default: edge.DOMAIN).
    #[arg(long)]
    pub fed_server_name: Option<String>,
    /// federation: the partner organization to play (default: partner.test), at --rate.
    #[arg(long)]
    pub partner: Option<String>,
    /// federation: several partners at once, each at its own rate: "partner.test=2000,other.test=100".
    #[arg(long)]
    pub partner_rates: Option<String>,
    /// federation: folder of the partners' certificates and keys, <domain>.pem and <domain>.key (default: the
    /// folder of --ca, where `parapet up` puts them).
    #[arg(long)]
    pub partner_pki: Option<PathBuf>,
    /// Testing only: speak SIP over plain TCP instead of TLS (for fake servers).
    #[arg(long, hide = true)]
    pub plain: bool,
}

/// Bad configuration, in one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

pub fn bad(s: impl Into<String>) -> ConfigError {
    ConfigError(s.into())
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    Times(f64),
    Plus(f64),
}

impl Step {
    pub fn next(self, rate: f64) -> f64 {
        match self {
            Step::Times(f) => rate * f,
            Step::Plus(d) => rate + d,
        }
    }
}

/// Partners one run plays at most (each has a schedule and a connection per core).
pub const PARTNERS_MAX: usize = 16;

/// federation: one partner organization loadgen plays.
#[derive(Clone)]
pub struct Partner {
    /// Its SIP domain (lowercase), the From domain of what it sends.
    pub domain: String,
    /// Its share of the rate (the shares sum to 1).
    pub share: f64,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// PEM certificate chain and private key (empty with --plain).
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Partner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the key.
        f.debug_struct("Partner")
            .field("domain", &self.domain)
            .field("share", &self.share)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// `--partner-rates`: "domain=rate,..." into (lowercase domain, rate), in the order given.
pub fn parse_partner_rates(s: &str) -> Result<Vec<(String, f64)>, ConfigError> {
    let err = |why: String| bad(format!("--partner-rates must look like partner.test=2000,other.test=100: {why}."));
    let mut out: Vec<(String, f64)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((d, r)) = part.split_once('=') else {
            return Err(err(format!("{part:?} has no \"=\"")));
        };
        let d = d.trim().to_ascii_lowercase();
        if !valid_domain(&d) {
            return Err(err(format!("{d:?} is not a domain name")));
        }
        let rate: f64 = r.trim().parse().map_err(|_| err(format!("{:?} is not a rate", r.trim())))?;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(err(format!("the rate of {d} must be positive, got {rate}")));
        }
        if out.iter().any(|(o, _)| *o == d) {
            return Err(err(format!("{d} is listed twice")));
        }
        out.push((d, rate));
    }
    if out.is_empty() {
        return Err(err("it names no partner".to_string()));
    }
    if out.len() > PARTNERS_MAX {
        return Err(err(format!("at most {PARTNERS_MAX} partners, got {}", out.len())));
    }
    Ok(out)
}

/// A DNS name we can use as a file stem and a From host: labels of letters, digits and hyphens.
fn valid_domain(d: &str) -> bool {
    d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Validated settings of one run.
#[derive(Clone, Debug)]
pub struct Config {
    pub scenario: Scenario,
    pub target: SocketAddr,
    pub server_name: String,
    pub ca_pem: Vec<u8>,
    pub ca_path: PathBuf,
    pub domain: String,
    pub users: Vec<User>,
    pub users_path: PathBuf,
    pub count: usize,
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub cores: Vec<usize>,
    pub source_ips: u8,
    pub source_first: u8,
    pub find_max: Option<Step>,
    /// Hard bound on --find-max steps, so that every run ends.
    pub steps_max: usize,
    pub slo_p99_ms: f64,
    pub timeout: Duration,
    pub resume: bool,
    /// presence: watchers per presentity (as asked; see `presence_plan` for what --count allows).
    pub watchers: usize,
    pub plain: bool,
    /// federation: the edge's federation listener, the name its certificate must carry, and the partners played.
    pub fed_target: SocketAddr,
    pub fed_server_name: String,
    pub partners: Vec<Partner>,
}

impl Config {
    /// In-flight cap across all cores (contract: --count * 4).
    pub fn in_flight_max(&self) -> usize {
        self.count.saturating_mul(4).max(4)
    }

    pub fn users_path_hint(&self) -> String {
        self.users_path.display().to_string()
    }

    /// presence: (presentities, watchers per presentity). Presentities are users 0..P, watchers users P..count.
    pub fn presence_plan(&self) -> (usize, usize) {
        let p = (self.count / (self.watchers + 1)).max(1).max(self.cores.len()).min(self.count);
        (p, self.watchers.min(self.count - p))
    }

    /// presence: the watcher (user index) of presentity `p`'s `k`-th subscription.
    pub fn watcher_of(&self, p: usize, k: usize) -> usize {
        let (n, _) = self.presence_plan();
        let others = (self.count - n).max(1);
        n + (p * self.watchers + k) % others
    }

    pub fn source_ip(&self, conn_index: usize) -> Option<Ipv4Addr> {
        if self.source_ips <= 1 && self.source_first <= 1 {
            return None;
        }
        let spread = usize::from(self.source_ips.max(1));
        let last = self.source_first.max(1).saturating_add((conn_index % spread) as u8);
        Some(Ipv4Addr::new(127, 0, 0, last))
    }
}

fn positive(v: f64, what: &str) -> Result<f64, ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(bad(format!("{what} must be a positive number, got {v}.")))
    }
}

pub fn parse_cores(s: Option<&str>) -> Result<Vec<usize>, ConfigError> {
    // Online CPUs, not `available_parallelism` (that is the affinity mask: under `taskset -c 1` it is 1, and CPU 1
    // would be refused).
    // SAFETY: sysconf only reads a system value.
    let online = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1).max(1);
    let Some(s) = s else {
        return Ok(vec![online - 1]);
    };
    let mut cores = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let c: usize = part.parse().map_err(|_| bad(format!("--cores must list CPU numbers like 1,2; got {s:?}.")))?;
        if c >= online {
            return Err(bad(format!("--cores names CPU {c} but this machine has CPUs 0..{}.", online - 1)));
        }
        if !cores.contains(&c) {
            cores.push(c);
        }
    }
    if cores.is_empty() {
        return Err(bad("--cores must name at least one CPU."));
    }
    Ok(cores)
}

fn parse_step(s: &str) -> Result<Step, ConfigError> {
    let err = || bad(format!("--step must look like x1.5 (multiply) or +500 (add); got {s:?}."));
    let t = s.trim();
    if let Some(f) = t.strip_prefix('x').or_else(|| t.strip_prefix('*')) {
        let f: f64 = f.parse().map_err(|_| err())?;
        return if f > 1.0 && f.is_finite() { Ok(Step::Times(f)) } else { Err(err()) };
    }
    let d: f64 = t.strip_prefix('+').unwrap_or(t).parse().map_err(|_| err())?;
    if d > 0.0 && d.is_finite() {
        Ok(Step::Plus(d))
    } else {
        Err(err())
    }
}

impl Args {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let target: SocketAddr = self.target.parse().map_err(|_| {
            bad(format!("--target must be an IP:port address like 127.0.0.1:5066; got {:?}.", self.target))
        })?;
        let mut rate = positive(self.rate, "--rate")?;
        let fed_target = match &self.fed_target {
            Some(t) => t
                .parse()
                .map_err(|_| bad(format!("--fed-target must be an IP:port address like 127.0.0.1:5066; got {t:?}.")))?,
            None => SocketAddr::new(target.ip(), target.port().saturating_add(FEDERATION_PORT_OFFSET)),
        };
        let fed_server_name = self.fed_server_name.clone().unwrap_or_else(|| format!("edge.{}", self.domain));
        let partners = if self.scenario == Scenario::Federation {
            let (list, total) = self.partner_list(rate)?;
            rate = total;
            list
        } else {
            Vec::new()
        };
        let duration = positive(self.duration, "--duration")?;
        if !(self.warmup.is_finite() && self.warmup >= 0.0) {
            return Err(bad(format!("--warmup must be zero or more seconds, got {}.", self.warmup)));
        }
        let slo_p99_ms = positive(self.slo_p99_ms, "--slo-p99-ms")?;
        if self.count == Some(0) {
            return Err(bad("--count must be at least 1."));
        }
        if self.timeout_ms == 0 {
            return Err(bad("--timeout-ms must be at least 1."));
        }
        let cores = parse_cores(self.cores.as_deref())?;
        let step = parse_step(&self.step)?;
        let source_ips = match self.source_ips {
            Some(0) => return Err(bad("--source-ips must be between 1 and 255.")),
            Some(n) => n,
            None => u8::try_from(self.count.unwrap_or(100).div_ceil(20_000)).unwrap_or(u8::MAX).max(1),
        };
        let ca_pem = if self.plain {
            Vec::new()
        } else {
            std::fs::read(&self.ca).map_err(|e| bad(format!("Cannot read the CA file {}: {e}.", self.ca.display())))?
        };
        let needs_users = self.scenario != Scenario::Handshake;
        let mut users = if needs_users { users::load(&self.users)? } else { Vec::new() };
        // Without --count: 100, or as many users as there are (so that `parapet up`'s three demo users work).
        let count = self.count.unwrap_or_else(|| if needs_users { users.len().clamp(2, 100) } else { 100 });
        if needs_users {
            let need = if self.scenario.registers_all() { count.max(2) } else { count };
            if users.len() < need {
                return Err(bad(format!(
                    "--count {} needs {need} users but {} has only {} (start parapet with --load-users {need}).",
                    count,
                    self.users.display(),
                    users.len()
                )));
            }
            users.truncate(need);
        }
        let count = if self.scenario.registers_all() { count.max(2) } else { count };
        Ok(Config {
            scenario: self.scenario,
            target,
            server_name: self.server_name,
            ca_pem,
            ca_path: self.ca,
            domain: self.domain,
            users,
            users_path: self.users,
            count,
            rate,
            duration: Duration::from_secs_f64(duration),
            warmup: Duration::from_secs_f64(self.warmup),
            cores,
            source_ips,
            source_first: self.source_first,
            find_max: self.find_max.then_some(step),
            steps_max: 30,
            slo_p99_ms,
            timeout: Duration::from_millis(self.timeout_ms),
            resume: self.resume,
            watchers: self.watchers,
            plain: self.plain,
            fed_target,
            fed_server_name,
            partners,
        })
    }

    /// federation: the partners to play (certificates read now, so that a missing file is a sentence before any
    /// connection) and the total rate.
    fn partner_list(&self, rate: f64) -> Result<(Vec<Partner>, f64), ConfigError> {
        let rates = match (&self.partner, &self.partner_rates) {
            (Some(_), Some(_)) => {
                return Err(bad("Give either --partner (at --rate) or --partner-rates, not both."));
            }
            (_, Some(list)) => parse_partner_rates(list)?,
            (p, None) => {
                let d = p.as_deref().unwrap_or(DEFAULT_PARTNER).trim().to_ascii_lowercase();
                if !valid_domain(&d) {
                    return Err(bad(format!("--partner must be a domain name like partner.test; got {d:?}.")));
                }
                vec![(d, rate)]
            }
        };
        if rates.iter().any(|(d, _)| d.eq_ignore_ascii_case(&self.domain)) {
            return Err(bad(format!("A partner cannot have our own domain {}.", self.domain)));
        }
        let total: f64 = rates.iter().map(|(_, r)| r).sum();
        let dir = match &self.partner_pki {
            Some(d) => d.clone(),
            None => self.ca.parent().map(PathBuf::from).unwrap_or_default(),
        };
        let mut out = Vec::with_capacity(rates.len());
        for (domain, r) in rates {
            let cert_path = dir.join(format!("{domain}.pem"));
            let key_path = dir.join(format!("{domain}.key"));
            let (cert_pem, key_pem) = if self.plain {
                (Vec::new(), Vec::new())
            } else {
                let read = |p: &PathBuf, what: &str| {
                    std::fs::read(p).map_err(|e| {
                        bad(format!(
                            "Cannot read the {what} of partner {domain}, {}: {e} (`parapet up` makes partner.test and \
                             other.test; see --partner-pki).",
                            p.display()
                        ))
                    })
                };
                (read(&cert_path, "certificate")?, read(&key_path, "key")?)
            };
            out.push(Partner { domain, share: r / total, cert_path, key_path, cert_pem, key_pem });
        }
        Ok((out, total))
    }
}

/// Where `parapet up` has partners connect, from its users' port.
const FEDERATION_PORT_OFFSET: u16 = parapet::mgmt::up::FEDERATION_PORT_OFFSET;
/// The demo partner `--partner` defaults to (one `parapet up` makes).
const DEFAULT_PARTNER: &str = parapet::mgmt::up::DEMO_PARTNERS[0].0;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn partner_rates_parse_in_order_and_refuse_what_is_not_a_rate() {
        let r = parse_partner_rates("Partner.test=2000, other.test = 100.5").unwrap();
        assert_eq!(r, vec![("partner.test".to_string(), 2000.0), ("other.test".to_string(), 100.5)]);
        for (bad_list, why) in [
            ("", "names no partner"),
            ("partner.test", "has no \"=\""),
            ("partner.test=fast", "is not a rate"),
            ("partner.test=0", "must be positive"),
            ("partner.test=-5", "must be positive"),
            ("partner.test=inf", "must be positive"),
            ("partner.test=1,PARTNER.test=2", "listed twice"),
            ("../etc=1", "not a domain name"),
            ("a b=1", "not a domain name"),
        ] {
            let e = parse_partner_rates(bad_list).unwrap_err().0;
            assert!(e.contains(why) && e.starts_with("--partner-rates") && e.ends_with('.'), "{bad_list:?}: {e}");
        }
        let many: Vec<String> = (0..=PARTNERS_MAX).map(|i| format!("p{i}.test=1")).collect();
        assert!(parse_partner_rates(&many.join(",")).unwrap_err().0.contains("at most"));
    }

    fn users() -> PathBuf {
        let p = std::env::temp_dir().join(format!("loadgen-cli-users-{}.toml", std::process::id()));
        std::fs::write(
            &p,
            "[[user]]\nalias = \"load1\"\npassword = \"a\"\n[[user]]\nalias = \"load2\"\npassword = \"b\"\n",
        )
        .unwrap();
        p
    }

    fn federation(extra: &[&str]) -> Result<Config, ConfigError> {
        let u = users();
        let mut argv = vec!["loadgen", "federation", "--plain", "--target", "127.0.0.1:15061", "--cores", "0"];
        argv.extend_from_slice(&["--users", u.to_str().unwrap()]);
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap().into_config()
    }

    #[test]
    fn federation_partners_share_the_rate_and_default_to_up_s_layout() {
        let c = federation(&["--partner-rates", "partner.test=300,other.test=100"]).unwrap();
        assert_eq!(c.rate, 400.0);
        let p: Vec<(&str, f64)> = c.partners.iter().map(|p| (p.domain.as_str(), p.share)).collect();
        assert_eq!(p, [("partner.test", 0.75), ("other.test", 0.25)]);
        assert_eq!(c.fed_target, "127.0.0.1:15066".parse().unwrap(), "up's federation port");
        assert_eq!(c.fed_server_name, "edge.example.com");
        assert_eq!(c.partners[0].cert_path, PathBuf::from("data/pki/partner.test.pem"), "next to --ca");

        let c = federation(&["--rate", "50", "--fed-target", "127.0.0.2:7000", "--partner-pki", "/p"]).unwrap();
        assert_eq!((c.rate, c.partners.len(), c.partners[0].domain.as_str()), (50.0, 1, "partner.test"));
        assert_eq!(c.partners[0].key_path, PathBuf::from("/p/partner.test.key"));
        assert_eq!(c.fed_target, "127.0.0.2:7000".parse().unwrap());
        assert!(federation(&["--partner", "a.test", "--partner-rates", "b.test=1"])
            .unwrap_err()
            .0
            .contains("not both"));
        assert!(federation(&["--partner", "example.com"]).unwrap_err().0.contains("our own domain"));
        assert!(federation(&["--fed-target", "nowhere"]).unwrap_err().0.contains("--fed-target"));
        // Other scenarios play no partner.
        let u = users();
        let argv = ["loadgen", "im", "--plain", "--cores", "0", "--users", u.to_str().unwrap()];
        assert!(Args::try_parse_from(argv).unwrap().into_config().unwrap().partners.is_empty());
    }
}
