//! Unit tests of config parsing, defaults and validation.

use super::*;

fn parse(s: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(s, Path::new("/etc/parapet"))
}

fn with_files(mut c: Config) -> Config {
    // validate() wants named files; the PKI fills them in real runs.
    let pki = devpki::DevPki {
        ca_cert: "ca.pem".into(),
        edge_cert: "edge.pem".into(),
        edge_key: "edge.key".into(),
        pool_cert: "pool.pem".into(),
        pool_key: "pool.key".into(),
    };
    c.use_dev_pki(&pki);
    c
}

#[test]
fn defaults_without_file() {
    let c = Config::default();
    assert_eq!(c.domain, "example.com");
    assert_eq!(c.log, "info");
    assert_eq!(
        c.limits,
        SipLimits { message_bytes_max: 65535, header_bytes_max: 16384, header_count_max: 64, line_bytes_max: 4096 }
    );
    assert!(c.edge.is_none() && c.pool.is_none());
    c.validate().expect("default config is valid");
    assert_eq!(parse("").expect("empty file"), c);
    assert_eq!(c.realm(), "example.com");
}

#[test]
fn role_defaults() {
    let c = parse("[edge]\n[pool]\n").expect("parse");
    let e = c.edge.as_ref().expect("edge");
    assert_eq!(e.listen, "127.0.0.1:5061".parse().expect("addr"));
    assert_eq!(e.internal_listen, "127.0.0.1:5063".parse().expect("addr"));
    assert_eq!(e.pool, Peer { name: "pool.example.com".into(), addr: "127.0.0.1:5062".parse().expect("addr") });
    assert_eq!(e.pool_names, vec!["pool.example.com".to_string()]);
    assert_eq!((e.handshake_timeout_ms, e.idle_timeout_ms, e.flow_queue_max), (5000, 300_000, 256));
    assert_eq!(e.cores, (0..online_cpus()).collect::<Vec<_>>());
    let p = c.pool.as_ref().expect("pool");
    assert_eq!(p.listen, "127.0.0.1:5062".parse().expect("addr"));
    assert_eq!(p.edges, vec![Peer { name: "edge.example.com".into(), addr: e.internal_listen }]);
    assert_eq!(
        p.registrar,
        RegistrarConfig { min_expires_s: 60, max_expires_s: 7200, default_expires_s: 3600, bindings_per_aor_max: 10 }
    );
    assert_eq!(p.auth.algorithms, vec!["MD5".to_string()], "MD5 only by default: baresip 1.0");
    assert_eq!(p.auth.nonce_ttl_s, 300);
    assert_eq!(p.transaction_timeout_ms, 32_000);
    assert_eq!(p.directory, Path::new("/etc/parapet/users.toml"));
    assert!(e.cert.as_os_str().is_empty());
    // Certificates are required, with a hint how to get them.
    let err = c.validate().expect_err("no certs");
    assert!(err.to_string().starts_with("config: [edge] cert missing"), "{err}");
    with_files(c).validate().expect("valid with certs");
}

#[test]
fn peers_follow_the_other_role_in_one_file() {
    let c = parse("domain = \"Corp.Example\"\n[edge]\ninternal_listen = \"127.0.0.1:7063\"\n[pool]\nlisten = \"127.0.0.1:7062\"\n")
        .expect("parse");
    let e = c.edge.as_ref().expect("edge");
    assert_eq!(c.domain, "corp.example");
    assert_eq!(e.pool.addr, "127.0.0.1:7062".parse().expect("addr"));
    assert_eq!(e.pool.name, "pool.corp.example");
    let p = c.pool.as_ref().expect("pool");
    assert_eq!(p.edges[0].addr, "127.0.0.1:7063".parse().expect("addr"));
}

#[test]
fn full_file() {
    let c = parse(
        r#"
domain = "sip.test"
log = "parapet=debug"
[limits]
message_bytes_max = 32768
[edge]
cores = [1]
listen = "0.0.0.0:5061"
cert = "certs/edge.pem"
key = "/abs/edge.key"
ca = "../ca.pem"
pool_names = ["pool-a.sip.test", "pool-b.sip.test"]
[edge.pool]
name = "pool-a.sip.test"
addr = "10.0.0.2:5062"
[pool]
cores = 1
realm = "corp"
directory = "users.csv"
[[pool.edges]]
name = "edge1.sip.test"
addr = "10.0.0.1:5063"
[[pool.edges]]
name = "edge2.sip.test"
addr = "[::1]:5063"
[pool.registrar]
max_expires_s = 600
default_expires_s = 600
[pool.auth]
algorithms = ["MD5"]
"#,
    )
    .expect("parse");
    assert_eq!(c.limits.message_bytes_max, 32768);
    assert_eq!(c.limits.header_bytes_max, 16384);
    let e = c.edge.as_ref().expect("edge");
    assert_eq!(e.cores, vec![1]);
    assert_eq!(e.cert, Path::new("/etc/parapet/certs/edge.pem"));
    assert_eq!(e.key, Path::new("/abs/edge.key"));
    assert_eq!(e.ca, Path::new("/etc/parapet/../ca.pem"));
    assert_eq!(e.pool.addr, "10.0.0.2:5062".parse().expect("addr"));
    assert_eq!(e.pool_names.len(), 2);
    let p = c.pool.as_ref().expect("pool");
    assert_eq!(p.cores, vec![0]);
    assert_eq!(p.edges.len(), 2);
    assert_eq!(p.edges[1].addr, "[::1]:5063".parse().expect("addr"));
    assert_eq!(p.directory, Path::new("/etc/parapet/users.csv"));
    assert_eq!(c.realm(), "corp");
    assert_eq!(p.registrar.max_expires_s, 600);
    assert_eq!(p.auth.algorithms, vec!["MD5".to_string()]);
}

#[test]
fn unknown_key_is_named() {
    let err = parse("[edge]\nlisen = \"127.0.0.1:5061\"\n").expect_err("unknown key");
    let msg = err.to_string();
    assert!(msg.starts_with("config: unknown key `lisen` in [edge] (line 2"), "{msg}");
    assert!(matches!(err, ConfigError::Toml { .. }));
    let err = parse("domian = \"x\"\n").expect_err("top level");
    assert!(err.to_string().contains("unknown key `domian` at top level"), "{err}");
    let err = parse("[pool]\n[[pool.edges]]\nname = \"e\"\naddr = \"1.2.3.4:1\"\nport = 3\n").expect_err("nested");
    assert!(err.to_string().contains("unknown key `port` in [[pool.edges]]"), "{err}");
}

#[test]
fn load_names_the_file_and_resolves_relative_paths() {
    let dir = std::env::temp_dir().join(format!("parapet-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("parapet.toml");
    std::fs::write(&path, "[pool]\ndirectory = \"people.toml\"\ncert = \"pki/pool.pem\"\n").expect("write");
    let c = Config::load(&path).expect("load");
    let p = c.pool.expect("pool");
    assert_eq!(p.directory, dir.join("people.toml"));
    assert_eq!(p.cert, dir.join("pki/pool.pem"));
    std::fs::write(&path, "[edge]\nlisen = 1\n").expect("write");
    let err = Config::load(&path).expect_err("unknown");
    assert!(err.to_string().starts_with(&format!("config {}: unknown key `lisen` in [edge]", path.display())), "{err}");
    let err = Config::load(&dir.join("missing.toml")).expect_err("io");
    assert!(matches!(err, ConfigError::Io { .. }) && err.to_string().contains("missing.toml"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_socket_address() {
    let err = parse("[edge]\nlisten = \"x\"\n").expect_err("bad addr");
    assert!(err.to_string().starts_with("config: [edge] listen: invalid socket address \"x\""), "{err}");
    let err = parse("[edge]\n[edge.pool]\naddr = \"pool:5062\"\n").expect_err("hostname");
    assert!(err.to_string().starts_with("config: [edge.pool] addr: invalid socket address"), "{err}");
    let err = parse("[edge]\nlisten = 5061\n").expect_err("wrong type");
    assert!(err.to_string().starts_with("config: [edge] listen: invalid type"), "{err}");
    assert!(err.to_string().ends_with("(line 2)"), "{err}");
}

#[test]
fn pool_edges_need_name_and_addr() {
    let err = parse("[pool]\n[[pool.edges]]\naddr = \"127.0.0.1:5063\"\n").expect_err("name");
    assert_eq!(err.to_string(), "config: [pool.edges.0] name missing");
    let err = parse("[pool]\n[[pool.edges]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n[[pool.edges]]\nname = \"b\"\n")
        .expect_err("addr");
    assert_eq!(err.to_string(), "config: [pool.edges.1] addr missing");
}

#[test]
fn cores_as_count_and_list() {
    let c = parse("[edge]\ncores = 2\n[pool]\ncores = [1, 0]\n").expect("parse");
    assert_eq!(c.edge.as_ref().expect("edge").cores, vec![0, 1]);
    assert_eq!(c.pool.as_ref().expect("pool").cores, vec![1, 0]);
    let err = parse("[edge]\ncores = 0\n").expect_err("zero");
    assert!(err.to_string().contains("[edge] cores: count must be at least 1"), "{err}");
    let err = parse("[edge]\ncores = \"all\"\n").expect_err("string");
    assert!(err.to_string().contains("[edge] cores: expected a count"), "{err}");
    let err = parse("[edge]\ncores = [-1]\n").expect_err("negative");
    assert!(err.to_string().contains("negative"), "{err}");

    let cpus = online_cpus();
    let c = with_files(parse(&format!("[edge]\ncores = [{cpus}]\n")).expect("parse"));
    let err = c.validate().expect_err("no such CPU");
    assert!(err.to_string().contains(&format!("CPU {cpus} does not exist")), "{err}");
    let c = with_files(parse("[edge]\ncores = [0, 0]\n").expect("parse"));
    assert!(c.validate().expect_err("dup").to_string().contains("CPU 0 listed twice"));
    let c = with_files(parse(&format!("[edge]\ncores = {}\n", cpus + 1)).expect("parse"));
    assert!(c.validate().is_err(), "count beyond the machine");
}

#[test]
fn validate_limits_and_registrar() {
    let c = with_files(parse("[limits]\nheader_bytes_max = 70000\n").expect("parse"));
    assert!(c.validate().expect_err("order").to_string().contains("exceeds message_bytes_max"));
    let c = with_files(parse("[pool]\n[pool.registrar]\nmin_expires_s = 4000\n").expect("parse"));
    let err = c.validate().expect_err("min > default");
    assert!(
        err.to_string().starts_with("config: [pool.registrar]: expected min_expires_s <= default_expires_s"),
        "{err}"
    );
    let c = with_files(parse("[pool]\n[pool.auth]\nalgorithms = [\"SHA-512\"]\n").expect("parse"));
    assert!(c.validate().expect_err("alg").to_string().contains("unsupported algorithm \"SHA-512\""));
    let c = with_files(parse("[edge]\nlisten = \"127.0.0.1:5063\"\n").expect("parse"));
    assert!(c.validate().expect_err("same addr").to_string().contains("same address as listen"));
    let c = with_files(parse("[pool]\ndirectory = \"\"\n").expect("parse"));
    assert!(c.validate().expect_err("dir").to_string().starts_with("config: [pool] directory missing"));
}

#[test]
fn use_dev_pki_keeps_named_files() {
    let mut c = parse("[edge]\ncert = \"mine.pem\"\n[pool]\n").expect("parse");
    let pki = devpki::DevPki {
        ca_cert: "/d/ca.pem".into(),
        edge_cert: "/d/edge.pem".into(),
        edge_key: "/d/edge.key".into(),
        pool_cert: "/d/pool.pem".into(),
        pool_key: "/d/pool.key".into(),
    };
    c.use_dev_pki(&pki);
    let e = c.edge.as_ref().expect("edge");
    assert_eq!(e.cert, Path::new("/etc/parapet/mine.pem"));
    assert_eq!(e.key, Path::new("/d/edge.key"));
    assert_eq!(c.pool.as_ref().expect("pool").ca, Path::new("/d/ca.pem"));
}

#[test]
fn pool_database_and_presence() {
    let c = parse("[pool]\n").expect("parse");
    let p = c.pool.as_ref().expect("pool");
    assert_eq!(p.database, Path::new("/etc/parapet/parapet.db"), "next to the config, like the directory");
    assert_eq!(p.presence, PresenceConfig::default());
    let c = parse(
        "[pool]\ndatabase = \"/var/lib/parapet/p.db\"\n[pool.presence]\ndefault_policy = \"confirm\"\n\
         im_default_policy = \"block\"\npublish_default_expires_s = 600\nsubscriptions_per_user_max = 5\n",
    )
    .expect("parse");
    let p = c.pool.as_ref().expect("pool");
    assert_eq!(p.database, Path::new("/var/lib/parapet/p.db"));
    assert_eq!(p.presence.default_policy, "confirm");
    assert_eq!(p.presence.publish_default_expires_s, 600);
    assert_eq!(p.presence.subscriptions_per_user_max, 5);
    with_files(c).validate().expect("valid");

    let bad = |toml: &str| with_files(parse(toml).expect("parse")).validate().expect_err("invalid").to_string();
    assert!(bad("[pool.presence]\ndefault_policy = \"maybe\"\n").contains("[pool.presence] default_policy"));
    assert!(bad("[pool.presence]\nim_default_policy = \"confirm\"\n").contains("[pool.presence] im_default_policy"));
    assert!(bad("[pool.presence]\npublish_default_expires_s = 10\n").contains("publish_default_expires_s"));
    assert!(bad("[pool.presence]\nsubscriptions_per_user_max = 0\n").contains("subscriptions_per_user_max"));
    assert!(parse("[pool.presence]\nbogus = 1\n").expect_err("unknown key").to_string().contains("bogus"));
}
