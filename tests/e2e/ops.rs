//! Operations, as an operator meets them: readiness that follows the pool, a management API that wants its token
//! off loopback, `doctor` and `check-config` naming what to change, administration refusing unknown users.

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::support::Appliance;
use crate::support_ops::{http, http_at, parapet, wait_for, Role};

/// Long enough for a debug build to start on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How soon `/ready` must notice the pool is gone (each check is bounded by 1 s; the test polls).
const NOTICE_TIMEOUT: Duration = Duration::from_secs(10);

/// `/ready` of the edge is 200 while the pool runs, 503 naming the pool once it is killed (while `/health` stays
/// 200: the edge itself is fine), and 200 again once the pool is back. The pool's own probes log no handshake
/// failures.
#[test]
fn ops_ready_follows_the_pool() {
    let app = Appliance::prepare("ops-ready", &[]);
    app.wait_ports_released();
    let mut pool = Role::start(&app, "pool", "pool.toml");
    let _edge = Role::start(&app, "edge", "edge.toml");
    let edge_mgmt = app.port_base + 3;
    let ready = |want: u16, needle: &'static str| {
        move || match http(edge_mgmt, "GET", "/ready", None) {
            Ok((code, body)) if code == want && body.contains(needle) => Ok(body),
            Ok((code, body)) => Err(format!("{code}\n{body}")),
            Err(e) => Err(e),
        }
    };
    let body = wait_for(&app, "edge /ready 200", START_TIMEOUT, ready(200, "ok pool reachable"));
    eprintln!("ready with the pool up:\n{body}");
    for line in ["ok cores", "ok draining", "ok edge certificate"] {
        assert!(body.contains(line), "/ready lacks {line:?}:\n{body}");
    }
    let pool_ready =
        wait_for(&app, "pool /ready 200", START_TIMEOUT, || match http(app.port_base + 4, "GET", "/ready", None) {
            Ok((200, b)) => Ok(b),
            Ok((c, b)) => Err(format!("{c}\n{b}")),
            Err(e) => Err(e),
        });
    assert!(pool_ready.contains("ok store reachable"), "pool /ready:\n{pool_ready}");

    pool.kill();
    let killed = Instant::now();
    let body = wait_for(&app, "edge /ready 503 after the pool died", NOTICE_TIMEOUT, ready(503, "FAIL pool reachable"));
    eprintln!("{:?} after the kill:\n{body}", killed.elapsed());
    match http(edge_mgmt, "GET", "/health", None) {
        Ok((200, _)) => {}
        other => app.fail(&format!("/health of the edge (alive, only not ready) answered {other:?}")),
    }

    if let Err(e) =
        parapet::net::listener::ensure_port_free(SocketAddr::from(([127, 0, 0, 1], app.port_base + 1)), "pool")
    {
        app.fail(&format!("the killed pool's port: {e}"));
    }
    let pool2 = Role::start(&app, "pool", "pool.toml");
    let body =
        wait_for(&app, "edge /ready 200 after the pool returned", START_TIMEOUT, ready(200, "ok pool reachable"));
    eprintln!("ready again:\n{body}");
    for (role, log) in [("pool", &pool.log), ("restarted pool", &pool2.log)] {
        let text = log.last(400);
        assert!(
            !text.contains("TLS handshake failed"),
            "{role} logged handshake failures for /ready's probes:\n{text}"
        );
    }
}

/// A non-loopback address of this host, when it has one (the address a packet to TEST-NET would leave from; no
/// packet is sent).
fn local_non_loopback() -> Option<std::net::IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Bound to 0.0.0.0 the management listener refuses to start without a token; with one, every route but
/// /health, /ready and /metrics answers 401 without it and 403 with a wrong one, /reload and the debug routes
/// included; `parapet reload` sends the token from the config.
#[test]
fn ops_mgmt_token_required_off_loopback() {
    let app = Appliance::prepare("ops-token", &[]);
    let mgmt = app.port_base + 3;
    let edge_toml = app.data_dir.join("edge.toml");
    let text = fs::read_to_string(&edge_toml).unwrap_or_else(|e| app.fail(&format!("read edge.toml: {e}")));
    let loopback = format!("[mgmt]\nlisten = \"127.0.0.1:{mgmt}\"");
    assert!(text.contains(&loopback), "edge.toml has no {loopback:?}:\n{text}");
    let open = text.replace(&loopback, &format!("[mgmt]\nlisten = \"0.0.0.0:{mgmt}\""));
    fs::write(&edge_toml, &open).unwrap_or_else(|e| app.fail(&format!("write edge.toml: {e}")));
    let dir = app.data_dir.clone();
    let (ok, out) = parapet(&dir, &["check-config", "-c", "edge.toml"], None);
    assert!(!ok && out.contains("[mgmt] token_file") && out.contains("0.0.0.0"), "check-config:\n{out}");
    let (ok, out) = parapet(&dir, &["run", "-c", "edge.toml"], None);
    assert!(!ok && out.contains("[mgmt] token_file"), "run without a token must refuse to start:\n{out}");

    let token = "s3cret-token-of-the-ops-test-0123456789";
    fs::write(dir.join("mgmt.token"), format!("{token}\n")).unwrap_or_else(|e| app.fail(&format!("token: {e}")));
    let with_token = open.replace(
        &format!("listen = \"0.0.0.0:{mgmt}\""),
        &format!("listen = \"0.0.0.0:{mgmt}\"\ntoken_file = \"mgmt.token\""),
    );
    fs::write(&edge_toml, &with_token).unwrap_or_else(|e| app.fail(&format!("write edge.toml: {e}")));
    let (ok, out) = parapet(&dir, &["check-config", "-c", "edge.toml"], None);
    assert!(ok, "check-config with a token:\n{out}");

    app.wait_ports_released();
    let _pool = Role::start(&app, "pool", "pool.toml");
    let edge = Role::start(&app, "edge", "edge.toml");
    wait_for(&app, "edge /ready", START_TIMEOUT, || match http(mgmt, "GET", "/ready", None) {
        Ok((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let mut targets = vec![SocketAddr::from(([127, 0, 0, 1], mgmt))];
    match local_non_loopback() {
        Some(ip) => targets.push(SocketAddr::new(ip, mgmt)),
        None => eprintln!("this host has no non-loopback address: checking through 127.0.0.1 only"),
    }
    for at in targets {
        let call = |method: &str, path: &str, token: Option<&str>| {
            http_at(at, method, path, token).unwrap_or_else(|e| app.fail(&format!("{method} {path} at {at}: {e}")))
        };
        for path in ["/health", "/ready", "/metrics"] {
            assert_eq!(call("GET", path, None).0, 200, "{path} at {at} is open to probes and scrapers");
        }
        let mut refused = vec![("GET", "/bans"), ("POST", "/reload"), ("GET", "/no-such-route")];
        if cfg!(debug_assertions) {
            refused.push(("POST", "/debug/panic?core=99"));
        }
        for (method, path) in refused {
            let (code, body) = call(method, path, None);
            assert_eq!(code, 401, "{method} {path} at {at} without a token: {body}");
            let (code, body) = call(method, path, Some("wrong-token-wrong-token"));
            assert_eq!(code, 403, "{method} {path} at {at} with a wrong token: {body}");
        }
        let (code, body) = call("GET", "/bans", Some(token));
        assert_eq!(code, 200, "/bans with the token: {body}");
        let (code, body) = call("POST", "/reload", Some(token));
        assert_eq!(code, 200, "/reload with the token: {body}");
        // A browser cannot send the header: GET /report and /dashboard take ?token=, nothing else does.
        for page in ["/dashboard?token=", "/report?since=1h&token="] {
            let (code, body) = call("GET", &format!("{page}{token}"), None);
            assert!(code == 200 && body.contains("<html"), "GET {page}<token> at {at}: {code} {body}");
            let (code, body) = call("GET", &format!("{page}wrong-token-wrong-token"), None);
            assert_eq!(code, 403, "GET {page}<wrong> at {at}: {body}");
        }
        for (method, path) in [("POST", "/reload"), ("GET", "/bans"), ("POST", "/dashboard")] {
            let (code, body) = call(method, &format!("{path}?token={token}"), None);
            assert_eq!(code, 401, "{method} {path}?token=<token> at {at} must not take a token in the URL: {body}");
        }
        eprintln!("{at}: open routes 200, others 401/403 without/with a wrong token, 200 with it; ?token= only for GET of the pages");
    }
    assert!(!edge.log.last(400).contains(token), "the edge logged the token:\n{}", edge.log.last(400));
    let (ok, out) = parapet(&dir, &["reload", "-c", "edge.toml"], None);
    assert!(ok, "`parapet reload` (token from the config):\n{out}");
    eprintln!("parapet reload: {}", out.trim());
}

/// `doctor` under a lowered memlock limit names the limit and exits non-zero; the pool started under the same
/// limit fails at once with the same words instead of hanging after "directory loaded".
#[test]
fn ops_doctor_and_start_name_a_low_memlock() {
    let app = Appliance::prepare("ops-doctor", &[]);
    app.wait_ports_released();
    let dir = app.data_dir.clone();
    let (ok, out) = parapet(&dir, &["doctor", "-c", "pool.toml"], None);
    eprintln!("doctor, host as it is:\n{out}");
    assert!(out.contains("ok   memlock") && out.contains("ok   io_uring ring"), "doctor:\n{out}");
    assert!(ok, "doctor on this host with the pool's config should pass:\n{out}");

    let low: &[&str] = &["prlimit", "--memlock=262144:262144", "--"];
    let (ok, out) = parapet(&dir, &["doctor", "-c", "pool.toml"], Some(low));
    eprintln!("doctor, memlock 256 KiB:\n{out}");
    assert!(!ok, "doctor must exit non-zero:\n{out}");
    assert!(out.contains("FAIL memlock: RLIMIT_MEMLOCK is 256 KiB") && out.contains("LimitMEMLOCK="), "{out}");

    let started = Instant::now();
    let (ok, out) = parapet(&dir, &["run", "-c", "pool.toml"], Some(low));
    assert!(!ok && !out.contains("timed out after"), "the pool must fail, not hang:\n{out}");
    assert!(out.contains("RLIMIT_MEMLOCK is 256 KiB"), "the pool's start names the limit:\n{out}");
    eprintln!("pool under 256 KiB memlock failed in {:?}: {}", started.elapsed(), out.trim());
}

/// `check-config` refuses each broken config, naming the key: a missing certificate file, the certificate given
/// as the key, the key given as the certificate, a key of another certificate, no roles at all.
#[test]
fn ops_check_config_names_the_key() {
    let app = Appliance::prepare("ops-check", &[]);
    let dir = app.data_dir.clone();
    let edge = fs::read_to_string(dir.join("edge.toml")).unwrap_or_else(|e| app.fail(&format!("edge.toml: {e}")));
    let (ok, out) = parapet(&dir, &["check-config", "-c", "edge.toml"], None);
    assert!(ok && out.contains("ok"), "the generated config is good:\n{out}");
    let cert_line = "cert = \"pki/edge.pem\"";
    let key_line = "key = \"pki/edge.key\"";
    assert!(edge.contains(cert_line) && edge.contains(key_line), "edge.toml:\n{edge}");
    let cases = [
        ("missing cert", edge.replace(cert_line, "cert = \"pki/missing.pem\""), "[edge] cert", "cannot read"),
        (
            "cert as key",
            edge.replace(key_line, "key = \"pki/edge.pem\""),
            "[edge] key",
            "certificate, not a private key",
        ),
        (
            "key as cert",
            edge.replace(cert_line, "cert = \"pki/edge.key\""),
            "[edge] cert",
            "private key, not a certificate",
        ),
        ("other key", edge.replace(key_line, "key = \"pki/pool.key\""), "[edge] key", "does not belong"),
        ("no roles", "domain = \"example.com\"\n".to_string(), "[edge] / [pool]", "no role"),
    ];
    for (name, text, key, why) in cases {
        let file = format!("bad-{}.toml", name.replace(' ', "-"));
        fs::write(dir.join(&file), text).unwrap_or_else(|e| app.fail(&format!("{file}: {e}")));
        let (ok, out) = parapet(&dir, &["check-config", "-c", &file], None);
        eprintln!("{name}: {}", out.trim());
        assert!(!ok, "{name}: check-config accepted it:\n{out}");
        assert!(out.contains(key) && out.contains(why), "{name}: expected {key:?} and {why:?} in:\n{out}");
    }
}

/// Administration refuses a user the directory does not have, naming them; a real user still works.
#[test]
fn ops_policy_refuses_unknown_users() {
    let app = Appliance::prepare("ops-policy", &[]);
    let dir = app.data_dir.clone();
    let (ok, out) =
        parapet(&dir, &["policy", "-c", "pool.toml", "set", "nosuchuser", "*", "--presence", "block"], None);
    assert!(!ok && out.contains("nosuchuser@example.com") && out.contains("no user"), "policy set nosuchuser:\n{out}");
    let (ok, out) = parapet(&dir, &["contacts", "-c", "pool.toml", "add", "nosuchuser", "bob"], None);
    assert!(!ok && out.contains("nosuchuser@example.com"), "contacts add nosuchuser:\n{out}");
    let (ok, out) = parapet(&dir, &["policy", "-c", "pool.toml", "set", "alice", "*", "--presence", "block"], None);
    assert!(ok && out.contains("alice@example.com"), "policy set alice:\n{out}");
    let (ok, out) = parapet(&dir, &["policy", "-c", "pool.toml", "list", "alice"], None);
    assert!(ok && out.contains("alice@example.com\t*\tblock"), "policy list alice:\n{out}");
}

/// Metric names a text mentions (`parapet_...`), with a histogram's `_bucket`/`_sum`/`_count` taken as its family.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("parapet_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        out.insert(family.to_string());
        rest = &tail[end..];
    }
    out
}

/// `promtool check metrics` on a scrape: Ok or what it said.
fn promtool_check_metrics(promtool: &std::path::Path, scrape: &str) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("promtool stdin")?;
    let text = scrape.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().map_err(|e| format!("promtool: {e}"))?;
    let _ = writer.join();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics ({}):\n{said}", out.status))
    }
}

/// The alert rules pass `promtool check rules`; real scrapes of an edge and a pool pass `promtool check metrics`
/// with HELP and TYPE on every family, per-partner and per-cause labels present; every metric the rules and the
/// Grafana dashboard name is one the scrapes have.
#[test]
fn ops_prometheus_rules_dashboard_and_scrape() {
    let promtool = crate::support::apt_installed("/usr/bin/promtool", &["prometheus"]);
    let rules = crate::support::repo_root().join("tuning/prometheus/parapet-alerts.yml");
    let dashboard = crate::support::repo_root().join("tuning/grafana/parapet-dashboard.json");
    let out = crate::support::run_bounded(
        std::process::Command::new(&promtool).arg("check").arg("rules").arg(&rules),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("promtool check rules:\n{e}"));
    assert!(out.contains("SUCCESS"), "promtool check rules:\n{out}");

    let app = Appliance::start("ops-prometheus");
    let scrape = |port: u16| match http(port, "GET", "/metrics", None) {
        Ok((200, body)) => body,
        other => app.fail(&format!("/metrics on {port}: {other:?}")),
    };
    // A port accepts as soon as one core listens; the others register their counters moments later.
    let (edge, pool) = wait_for(&app, "every core's counters on /metrics", START_TIMEOUT, || {
        let (edge, pool) = (scrape(app.port_base + 3), scrape(app.port_base + 4));
        let cores = |text: &str, fam: &str| {
            (0..parapet::config::online_cpus()).all(|c| text.contains(&format!("{fam}{{core=\"{c}\"")))
        };
        if cores(&edge, "parapet_edge_refused_total") && cores(&pool, "parapet_pool_messages_in_total") {
            Ok((edge, pool))
        } else {
            Err("a core's counters are not registered yet".into())
        }
    });
    // `up` waited for the roles' ports by connecting to them: no handshake failure may be logged for it.
    let log = app.stderr.last(400);
    assert!(!log.contains("TLS handshake failed"), "`up` logged handshake failures of its own probes:\n{log}");
    for (role, text) in [("edge", &edge), ("pool", &pool)] {
        if let Err(e) = promtool_check_metrics(&promtool, text) {
            app.fail(&format!("{role} scrape: {e}"));
        }
        let helped: std::collections::BTreeSet<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next()).collect();
        let typed: std::collections::BTreeSet<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        for fam in metric_names(&text.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n")) {
            assert!(helped.contains(fam.as_str()) && typed.contains(fam.as_str()), "{role}: {fam} lacks HELP or TYPE");
        }
    }
    for needle in [
        "parapet_edge_partner_requests_total{partner=\"edge.partner.test\"}",
        "parapet_edge_partner_connections{partner=\"edge.other.test\"}",
        "parapet_edge_refused_total{core=\"0\",cause=\"flood_rate\"}",
        "parapet_ready_check{check=\"pool reachable\"} 1",
        "parapet_certificate_not_after_seconds{key=\"[edge] cert\"}",
    ] {
        assert!(edge.contains(needle), "edge scrape lacks {needle}");
    }
    assert!(pool.contains("parapet_ready_check{check=\"store reachable\"} 1"), "pool scrape lacks its store check");

    let exported = metric_names(&format!("{edge}\n{pool}"));
    let rules_text = fs::read_to_string(&rules).unwrap_or_else(|e| panic!("{}: {e}", rules.display()));
    for name in metric_names(&rules_text) {
        assert!(exported.contains(&name), "alert rules name {name}, which no scrape exports");
    }
    let json: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(&dashboard).unwrap_or_else(|e| panic!("{}: {e}", dashboard.display())),
    )
    .unwrap_or_else(|e| panic!("{}: not JSON: {e}", dashboard.display()));
    assert!(json["title"].is_string() && json["schemaVersion"].is_u64(), "dashboard: title and schemaVersion");
    let panels = json["panels"].as_array().unwrap_or_else(|| panic!("dashboard: no panels"));
    let mut exprs = 0;
    for p in panels {
        let title = p["title"].as_str().unwrap_or_else(|| panic!("a panel without a title: {p}"));
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {title:?}: no targets"));
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            let names = metric_names(expr);
            assert!(!names.is_empty(), "panel {title:?}: {expr} names no parapet metric");
            for name in names {
                assert!(exported.contains(&name), "panel {title:?} queries {name}, which no scrape exports");
            }
            exprs += 1;
        }
    }
    eprintln!(
        "rules ok; edge and pool scrapes pass promtool; {} panels, {exprs} queries, all on exported metrics",
        panels.len()
    );
}

/// The systemd units in tuning/systemd/ carry reload, hardening and limits, and `systemd-analyze verify` accepts
/// them without a warning (their ExecStart pointed at the binary under test); a broken copy is reported, so the
/// check does check.
#[test]
fn ops_systemd_units_verify() {
    let analyze = crate::support::apt_installed("/usr/bin/systemd-analyze", &["systemd"]);
    let dir = crate::support::scratch_dir("ops-systemd");
    let bin = crate::support::parapet_bin();
    let mut units = Vec::new();
    for role in ["edge", "pool"] {
        let src = crate::support::repo_root().join(format!("tuning/systemd/parapet-{role}.service"));
        let text = fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        for directive in [
            "ExecReload=",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "CapabilityBoundingSet=",
            "LimitMEMLOCK=",
            "LimitNOFILE=",
            "Restart=on-failure",
        ] {
            assert!(text.lines().any(|l| l.starts_with(directive)), "{role} unit lacks {directive}");
        }
        let unit = dir.join(format!("parapet-{role}.service"));
        fs::write(&unit, text.replace("/usr/local/bin/parapet", &bin.display().to_string()))
            .unwrap_or_else(|e| panic!("{}: {e}", unit.display()));
        units.push(unit);
    }
    let out = crate::support::run_bounded(
        std::process::Command::new(&analyze).arg("verify").arg("--man=no").args(&units),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("systemd-analyze verify refused the units:\n{e}"));
    assert!(out.trim().is_empty(), "systemd-analyze verify warned:\n{out}");

    let broken = dir.join("parapet-broken.service");
    let text = fs::read_to_string(&units[0]).unwrap_or_default().replace("LimitMEMLOCK=128M", "LimitMEMLOCK=lots");
    fs::write(&broken, text).unwrap_or_else(|e| panic!("{}: {e}", broken.display()));
    let said = match crate::support::run_bounded(
        std::process::Command::new(&analyze).arg("verify").arg("--man=no").arg(&broken),
        Duration::from_secs(60),
    ) {
        Ok(out) | Err(out) => out,
    };
    assert!(said.contains("LimitMEMLOCK") || said.contains("lots"), "a broken unit passed unnoticed:\n{said}");
}

/// `log_format = "json"` makes every line a JSON object; a burst of refused connections (300 non-TLS clients)
/// logs at most a few lines a second, the next line saying how many were held back, while the counter counts
/// them all.
#[test]
fn ops_json_logs_and_rate_limited_refusals() {
    use std::io::Write;
    let app = Appliance::prepare("ops-logs", &["--flood-limits", "off"]);
    let edge_toml = app.data_dir.join("edge.toml");
    let text = fs::read_to_string(&edge_toml).unwrap_or_else(|e| app.fail(&format!("edge.toml: {e}")));
    fs::write(&edge_toml, format!("log_format = \"json\"\n{text}")).unwrap_or_else(|e| app.fail(&format!("{e}")));
    app.wait_ports_released();
    let _pool = Role::start(&app, "pool", "pool.toml");
    let edge = Role::start(&app, "edge", "edge.toml");
    let mgmt = app.port_base + 3;
    wait_for(&app, "edge /ready", START_TIMEOUT, || match http(mgmt, "GET", "/ready", None) {
        Ok((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let failed = || -> Result<u64, String> {
        let (_, body) = http(mgmt, "GET", "/metrics", None)?;
        Ok(crate::rawsip::Metrics(body).get("parapet_edge_handshakes_failed").unwrap_or(0))
    };
    let before = failed().unwrap_or_else(|e| app.fail(&e));
    const CLIENTS: u64 = 300;
    let started = Instant::now();
    for _ in 0..CLIENTS {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", app.port_base))
            .unwrap_or_else(|e| app.fail(&format!("connect: {e}")));
        let _ = s.write_all(b"OPTIONS sip:x SIP/2.0\r\n\r\n");
    }
    wait_for(&app, "every refused handshake counted", Duration::from_secs(30), || match failed() {
        Ok(n) if n >= before + CLIENTS => Ok(()),
        Ok(n) => Err(format!("{} of {CLIENTS} counted", n - before)),
        Err(e) => Err(e),
    });
    let burst = started.elapsed();
    // After the burst's second is over, one more: its line carries how many were held back.
    std::thread::sleep(Duration::from_millis(1100));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", app.port_base)).unwrap_or_else(|e| app.fail(&e.to_string()));
    let _ = s.write_all(b"OPTIONS sip:x SIP/2.0\r\n\r\n");
    let log = wait_for(&app, "a line reporting held-back refusals", Duration::from_secs(10), || {
        let log = edge.log.last(2000);
        let summary = log.lines().any(|l| {
            l.contains("TLS handshake failed")
                && serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["fields"]["held_back"].as_u64())
                    .is_some_and(|n| n > 0)
        });
        if summary {
            Ok(log)
        } else {
            Err(format!("no such line yet; log tail:\n{}", edge.log.last(5)))
        }
    });
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| app.fail(&format!("a log line is not JSON ({e}): {l}")));
        assert!(v["level"].is_string() && v["fields"].is_object() && v["timestamp"].is_string(), "{l}");
    }
    let logged = lines.iter().filter(|l| l.contains("TLS handshake failed")).count() as u64;
    let seconds = burst.as_secs() + 3;
    eprintln!(
        "{CLIENTS} refused in {burst:?}: {logged} lines logged ({} lines in the whole log, all JSON)",
        lines.len()
    );
    assert!(logged <= 10 * seconds, "{logged} handshake-failure lines for a burst of {burst:?}: not rate-limited");
    assert!(logged < CLIENTS / 2, "{logged} lines for {CLIENTS} refusals");
}

/// A federation peer over mutual TLS on the federation port, sending `n` MESSAGEs from `from` (not waiting for
/// answers: the counters say what the edge took).
fn partner_messages(app: &Appliance, domain: &str, from: &str, n: usize) {
    use std::io::Write;
    let pki = app.data_dir.join("pki");
    let cfg =
        crate::federation::mtls_config(&app.ca, &pki.join(format!("{domain}.pem")), &pki.join(format!("{domain}.key")));
    let addr = SocketAddr::from(([127, 0, 0, 1], app.port_base + 5));
    let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|e| app.fail(&format!("federation port: {e}")));
    let name = rustls::pki_types::ServerName::try_from("edge.example.com").unwrap_or_else(|e| app.fail(&e.to_string()));
    let conn = rustls::ClientConnection::new(cfg, name).unwrap_or_else(|e| app.fail(&e.to_string()));
    let mut s = rustls::StreamOwned::new(conn, tcp);
    for i in 0..n {
        let m = format!(
            "MESSAGE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKrep{domain}{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{from}>;tag=r{i}\r\nTo: <sip:alice@example.com>\r\n\
             Call-ID: report-{domain}-{i}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        );
        s.write_all(m.as_bytes()).and_then(|()| s.flush()).unwrap_or_else(|e| app.fail(&format!("send: {e}")));
    }
    // Kept open until the edge has counted them (the caller waits on the counter).
    std::mem::forget(s);
}

/// Headless Chromium on `url` (flags from /work/shared/notes/crates.md, console messages on stderr) with `extra`
/// flags; its output.
fn chromium_run(
    chromium: &std::path::Path,
    profile: &std::path::Path,
    extra: &[&str],
    url: &str,
) -> Result<String, String> {
    let mut cmd = std::process::Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url);
    crate::support::run_bounded(&mut cmd, Duration::from_secs(120))
}

/// Traffic the test causes (MESSAGEs from two federation partners, refused unregistered requests) shows in the
/// rollups: `parapet report` writes an HTML page with SVG plots and CSVs holding those counts per partner and per
/// cause, `/report` serves the same page, and `/dashboard` loads in headless Chromium without console errors
/// showing them.
#[test]
fn ops_report_and_dashboard_show_the_traffic() {
    let app = Appliance::prepare("ops-report", &[]);
    rollups_every_second(&app);
    app.wait_ports_released();
    let _pool = Role::start(&app, "pool", "pool.toml");
    let _edge = Role::start(&app, "edge", "edge.toml");
    let mgmt = app.port_base + 3;
    wait_for(&app, "edge /ready", START_TIMEOUT, || match http(mgmt, "GET", "/ready", None) {
        Ok((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    partner_messages(&app, "partner.test", "bob@partner.test", 7);
    partner_messages(&app, "other.test", "carol@other.test", 3);
    let mut ua = crate::rawsip::Ua::connect_ok(&app, "unregistered", None);
    for i in 0..4 {
        let m = format!(
            "MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKunreg{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=u{i}\r\nTo: <sip:bob@example.com>\r\n\
             Call-ID: unreg-{i}\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
        );
        ua.send(m.as_bytes()).unwrap_or_else(|e| app.fail(&format!("send: {e}")));
    }
    let metric = |needle: &str| -> Result<u64, String> {
        let (_, body) = http(mgmt, "GET", "/metrics", None)?;
        body.lines()
            .find_map(|l| l.strip_prefix(needle)?.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no {needle}"))
    };
    wait_for(&app, "the edge counted the partners' and the refused requests", Duration::from_secs(20), || {
        let (p, o) = (
            metric("parapet_edge_partner_requests_total{partner=\"edge.partner.test\"}")?,
            metric("parapet_edge_partner_requests_total{partner=\"edge.other.test\"}")?,
        );
        let refused: u64 = (0..2)
            .filter_map(|c| {
                metric(&format!("parapet_edge_refused_total{{core=\"{c}\",cause=\"unauthenticated\"}}")).ok()
            })
            .sum();
        if p >= 7 && o >= 3 && refused >= 4 {
            Ok(())
        } else {
            Err(format!("partner.test {p}, other.test {o}, unauthenticated {refused}"))
        }
    });

    let dir = app.data_dir.clone();
    let csv_dir = app.scratch.join("csv");
    let csv_arg = csv_dir.display().to_string();
    let (partners, refusals) = wait_for(&app, "the rollups hold the traffic", Duration::from_secs(20), || {
        let [partners, refusals] = report_csvs(&dir, "report.html", &csv_arg, ["partners", "refusals"])?;
        let sum = |csv: &str, who: &str| -> u64 {
            csv.lines()
                .filter(|l| l.split(',').nth(1) == Some(who))
                .filter_map(|l| l.split(',').nth(2)?.parse::<u64>().ok())
                .sum()
        };
        if sum(&partners, "edge.partner.test") == 7
            && sum(&partners, "edge.other.test") == 3
            && sum(&refusals, "unauthenticated") >= 4
        {
            Ok((partners, refusals))
        } else {
            Err(format!("partners.csv:\n{partners}\nrefusals.csv:\n{refusals}"))
        }
    });
    eprintln!("partners.csv:\n{partners}refusals.csv:\n{refusals}");
    let page = fs::read_to_string(dir.join("report.html")).unwrap_or_else(|e| app.fail(&format!("report.html: {e}")));
    assert!(
        page.contains("<svg") && page.contains("edge.partner.test") && page.contains("unauthenticated"),
        "report.html"
    );
    for t in ["traffic", "traffic_daily", "capacity", "latency", "cpu"] {
        assert!(csv_dir.join(format!("{t}.csv")).exists(), "{t}.csv written");
    }
    match http(app.port_base + 4, "GET", "/report?since=1h", None) {
        Ok((200, body)) if body.contains("edge.partner.test") && body.contains("<svg") => {}
        other => app.fail(&format!("/report on the pool: {other:?}")),
    }

    // The dashboard in headless Chromium: the DOM after load shows the partners' figures; no console error.
    let chromium = crate::support::apt_installed("/usr/bin/chromium", &["chromium"]);
    let profile = app.scratch.join("chromium-profile");
    let _ = fs::create_dir_all(&profile);
    let url = format!("http://127.0.0.1:{mgmt}/dashboard");
    let shot = app.scratch.join("dashboard.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    let shot_out = chromium_run(&chromium, &profile, &[&shot_arg, "--window-size=1280,4000"], &url)
        .unwrap_or_else(|e| app.fail(&format!("chromium screenshot: {e}")));
    assert!(shot.exists(), "no screenshot:\n{shot_out}");
    let dom = chromium_run(&chromium, &profile, &["--dump-dom"], &url)
        .unwrap_or_else(|e| app.fail(&format!("chromium --dump-dom: {e}")));
    let console: Vec<&str> = dom.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught")).collect();
    assert!(console.is_empty(), "console messages on the dashboard:\n{}", console.join("\n"));
    assert!(
        dom.contains("edge.partner.test") && dom.contains("edge.other.test"),
        "dashboard DOM lacks the partners:\n{dom}"
    );
    assert!(dom.contains("<td>7</td>") && dom.contains("<td>3</td>"), "dashboard DOM lacks the partners' counts");
    assert!(
        dom.contains("Now (this process)") && dom.contains("parapet_edge_partner_requests_total"),
        "dashboard DOM lacks the live figures"
    );
    eprintln!("dashboard: screenshot {} ({} bytes)", shot.display(), fs::metadata(&shot).map(|m| m.len()).unwrap_or(0));
}

/// `up` has the edge write its rollups into the pool's database already; the tests only shorten the interval.
fn rollups_every_second(app: &Appliance) {
    for (file, port) in [("pool.toml", 4), ("edge.toml", 3)] {
        let path = app.data_dir.join(file);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| app.fail(&format!("{file}: {e}")));
        let listen = format!("[mgmt]\nlisten = \"127.0.0.1:{}\"\n", app.port_base + port);
        assert!(text.contains(&listen), "{file} has no {listen:?}");
        fs::write(&path, text.replace(&listen, &format!("{listen}rollup_interval_s = 1\n")))
            .unwrap_or_else(|e| app.fail(&format!("{file}: {e}")));
    }
}

/// `parapet report -c pool.toml --since 1h --out <page> --csv <csv_dir>` in `dir`, then the named CSVs.
fn report_csvs<const N: usize>(
    dir: &std::path::Path,
    page: &str,
    csv_dir: &str,
    names: [&str; N],
) -> Result<[String; N], String> {
    let (ok, out) =
        parapet(dir, &["report", "-c", "pool.toml", "--since", "1h", "--out", page, "--csv", csv_dir], None);
    if !ok {
        return Err(out);
    }
    let mut texts = names.map(|_| String::new());
    for (text, name) in texts.iter_mut().zip(names) {
        let p = std::path::Path::new(csv_dir).join(format!("{name}.csv"));
        *text = fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(texts)
}

/// Per-hour rows of a report CSV (`hour,key,value...`): the value in column `col` for rows whose column 1 is `key`
/// (every row when `key` is None).
fn csv_column(csv: &str, key: Option<&str>, col: usize) -> Vec<(String, u64)> {
    csv.lines()
        .skip(1)
        .filter(|l| key.is_none_or(|k| l.split(',').nth(1) == Some(k)))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f.first()?.to_string(), f.get(col)?.parse::<u64>().ok()?))
        })
        .collect()
}

/// A compressed day: `loadgen mix` (registrations, MESSAGEs between our users, new handshakes) and `loadgen
/// federation` (the two demo partners at known rates over mutual TLS) against the appliance; then `parapet report`
/// shows, per partner and per hour, the MESSAGEs loadgen saw answered 200 (plus each partner connection's one
/// OPTIONS check, which the edge counts as a partner request); the pool's "federated in" equals the partners' 200s,
/// its internal messages the mix's MESSAGEs, all messages both, its registrations both scenarios' plus the
/// mix's refreshes.
#[test]
fn ops_report_counts_a_loadgen_day() {
    let app = Appliance::prepare("ops-loadgen", &["--load-users", "20"]);
    rollups_every_second(&app);
    app.wait_ports_released();
    let _pool = Role::start(&app, "pool", "pool.toml");
    let _edge = Role::start(&app, "edge", "edge.toml");
    wait_for(&app, "edge /ready", START_TIMEOUT, || match http(app.port_base + 3, "GET", "/ready", None) {
        Ok((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let dir = app.data_dir.clone();
    let target = format!("127.0.0.1:{}", app.port_base);
    let common = ["--target", &target, "--ca", "pki/ca.pem", "--users", "users.toml", "--cores", "0", "--warmup", "0"];
    let run = |scenario: &str, extra: &[&str]| {
        let mut args = vec![scenario];
        args.extend_from_slice(&common);
        args.extend_from_slice(extra);
        crate::support_ops::loadgen_json(&dir, &args, &app.scratch.join(format!("{scenario}.json")))
    };
    let mix = run("mix", &["--count", "10", "--rate", "10", "--duration", "2"]);
    eprintln!("loadgen mix: ok {} errors {} timeouts {}", mix["ok"], mix["errors"], mix["timeouts"]);
    let clean = |r: &serde_json::Value| r["errors"].as_object().is_some_and(|e| e.is_empty()) && r["timeouts"] == 0;
    assert!(clean(&mix) && mix["dropped"] == 0, "loadgen mix had failures: {mix}");
    // Operation i of the mix is a MESSAGE when i % 10 < 7 and a registration refresh when it is 7 or 8 (see
    // loadgen's engine); every operation answered, so these are the counts it produced.
    let mix_ops = mix["ok"].as_u64().unwrap_or(0);
    let mix_messages = (0..mix_ops).filter(|i| i % 10 < 7).count() as u64;
    let mix_refreshes = (0..mix_ops).filter(|i| matches!(i % 10, 7 | 8)).count() as u64;
    let fed =
        run("federation", &["--count", "10", "--duration", "2", "--partner-rates", "partner.test=6,other.test=3"]);
    let parts = fed["partners"].as_array().cloned().unwrap_or_default();
    assert_eq!(parts.len(), 2, "loadgen federation reports two partners: {fed}");
    let sent: Vec<(String, u64)> = parts
        .iter()
        .map(|p| (format!("edge.{}", p["partner"].as_str().unwrap_or("?")), p["ok"].as_u64().unwrap_or(0)))
        .collect();
    for p in &parts {
        assert!(p["ok"].as_u64().unwrap_or(0) > 0, "a partner got no 200 at all: {p}");
    }
    eprintln!("loadgen federation: answered 200 per partner {sent:?}");

    let csv_dir = app.scratch.join("csv");
    let csv_arg = csv_dir.display().to_string();
    let (partners, traffic) = wait_for(&app, "the report shows loadgen's counts", Duration::from_secs(30), || {
        let [partners, traffic] = report_csvs(&dir, "day.html", &csv_arg, ["partners", "traffic"])?;
        let total: u64 = sent.iter().map(|(_, ok)| ok).sum();
        let column = |name: &str| -> u64 {
            let col = traffic.lines().next().unwrap_or("").split(',').position(|h| h.starts_with(name));
            col.map_or(0, |c| csv_column(&traffic, None, c).iter().map(|(_, v)| v).sum())
        };
        let (fed_in, forked, internal, registrations) =
            (column("federated in"), column("messages (all"), column("messages internal"), column("registrations"));
        let all_there = sent.iter().all(|(name, ok)| {
            let rows = csv_column(&partners, Some(name), 2);
            rows.len() <= 2 && rows.iter().map(|(_, v)| v).sum::<u64>() == ok + 1
        });
        // Registrations: each scenario registers its --count users first (10 + 10), then the mix's refreshes.
        if all_there
            && fed_in == total
            && internal == mix_messages
            && forked == fed_in + internal
            && registrations == 20 + mix_refreshes
        {
            Ok((partners, traffic))
        } else {
            Err(format!(
                "loadgen: partners {sent:?}, mix MESSAGEs {mix_messages}, refreshes {mix_refreshes}; report: federated \
                 in {fed_in}, messages {forked} (internal {internal}), registrations {registrations}\npartners.csv:\n{partners}\ntraffic.csv:\n{traffic}"
            ))
        }
    });
    eprintln!("loadgen mix: {mix_messages} MESSAGEs, {mix_refreshes} refreshes\npartners.csv:\n{partners}traffic.csv:\n{traffic}");
    // Registrations and their failures by reason: every registration of the day succeeded.
    let regs = fs::read_to_string(csv_dir.join("registrations.csv")).unwrap_or_else(|e| app.fail(&format!("{e}")));
    let sums: Vec<u64> = (2..=regs.lines().next().unwrap_or("").split(',').count())
        .map(|c| csv_column(&regs, None, c - 1).iter().map(|(_, v)| v).sum())
        .collect();
    assert!(sums.len() == 7 && sums[0] == 20 + mix_refreshes && sums[1..].iter().all(|&v| v == 0), "{sums:?}\n{regs}");
    eprintln!("registrations.csv:\n{regs}");
    // Top talkers: the mix's senders (10 users, within the top 10 of every minute) sent all its MESSAGEs.
    let talkers = fs::read_to_string(csv_dir.join("talkers.csv")).unwrap_or_else(|e| app.fail(&format!("{e}")));
    let by_user = csv_column(&talkers, None, 2);
    assert_eq!(by_user.iter().map(|(_, v)| v).sum::<u64>(), mix_messages, "talkers.csv:\n{talkers}");
    assert!(talkers.contains("@example.com") && !talkers.contains("loadgen@"), "only our users:\n{talkers}");
    eprintln!("talkers.csv:\n{talkers}");
    // The period's ranking: most first, the same total (every mix sender is in it: 10 users, 10 shown).
    let top = fs::read_to_string(csv_dir.join("top_talkers.csv")).unwrap_or_else(|e| app.fail(&format!("{e}")));
    let ranked: Vec<u64> = top.lines().skip(1).filter_map(|l| l.rsplit(',').next()?.trim().parse().ok()).collect();
    assert!(ranked.windows(2).all(|w| w[0] >= w[1]), "top_talkers.csv ranked, most first:\n{top}");
    assert_eq!(ranked.iter().sum::<u64>(), mix_messages, "top_talkers.csv:\n{top}");
    for port in [app.port_base + 3, app.port_base + 4] {
        let (_, metrics) = http(port, "GET", "/metrics", None).unwrap_or_else(|e| app.fail(&e));
        assert!(!metrics.contains("top_talker") && !metrics.contains("load1@"), "no per-user family on /metrics");
    }
}
