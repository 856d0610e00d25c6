//! The `parapet` binary: a thin command line over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "parapet", version, about = "SIP edge appliance and presence/IM pool")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Zero-setup appliance on loopback: dev PKI, demo users, the edge and the pool co-located in one process
    /// (`--perimeter`: two processes over mutual TLS).
    Up {
        /// Where certificates, users and generated configs live.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Remote users connect here (TLS); the pool listens on +1, the edge's internal listener on +2.
        #[arg(long, default_value_t = 5061)]
        port_base: u16,
        /// Executors (cores) per role.
        #[arg(long)]
        cores: Option<usize>,
        /// SIP domain of the demo users.
        #[arg(long, default_value = "example.com")]
        domain: String,
        /// Also create users load1..loadN (for loadgen and the benchmarks).
        #[arg(long, default_value_t = 0)]
        load_users: usize,
        /// `off` lifts the edge's per-address flood limits, for benchmarks that open thousands of connections
        /// from one address; leave them `on` anywhere else.
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        flood_limits: String,
        /// `on`: a federation listener on port base + 5 with two demo partner organizations (partner.test,
        /// other.test; their certificates in <data-dir>/pki) that `loadgen federation` plays.
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        federation: String,
        /// `postgres`: the pool's store on a PostgreSQL server of its own under <data-dir>/pg (initdb + pg_ctl
        /// from Debian's `postgresql` package), stopped when `up` ends; `sqlite`: one file. Default: SQLite for
        /// one front end, PostgreSQL for an enterprise pool (--front-ends 2 or more).
        #[arg(long, value_parser = ["sqlite", "postgres"])]
        store: Option<String>,
        /// Front ends of the pool, sharing one store: more than 1 runs an enterprise pool (ports from base + 10).
        #[arg(long, default_value_t = 1)]
        front_ends: usize,
        /// The first port of front ends 2 and up (two ports each: SIP, management); default port base + 10.
        #[arg(long)]
        front_end_ports: Option<u16>,
        /// Another `parapet up` data dir (on this machine): federate with its organization (both ways).
        #[arg(long)]
        federate_with: Option<PathBuf>,
        /// Run the edge and the pool as two processes talking mutual TLS, as an edge in a DMZ would (the
        /// perimeter deployment); by default they are co-located in one process, linked in memory.
        #[arg(long)]
        perimeter: bool,
    },
    /// Run the roles ([edge], [pool] or both) that a config file describes; `-c` again for another file (e.g.
    /// `-c pool.toml -c edge.toml`: one process, the two roles co-located when they share their cores).
    Run {
        #[arg(short, long, required = true)]
        config: Vec<PathBuf>,
    },
    /// The running edge's federation partners: add, remove, list (through its management API).
    Partner {
        #[command(subcommand)]
        cmd: parapet::mgmt::partners::PartnerCmd,
    },
    /// The SRV and A records to publish for the edge of a config (users and federation).
    DnsRecords {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Check a config file and exit.
    CheckConfig {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Check this host and a config before a start: limits, io_uring, ports, clock, certificates, store.
    Doctor {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// An HTML report (SVG plots) of the rollups in the store, and optionally one CSV per table.
    Report {
        #[arg(short, long)]
        config: PathBuf,
        /// How far back: 7d, 12h, 30m.
        #[arg(long, default_value = "7d")]
        since: String,
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
        /// Also write <table>.csv files into this folder.
        #[arg(long)]
        csv: Option<PathBuf>,
    },
    /// Ask a running process (its [mgmt] listener, with the config's token) to reload its federation table.
    Reload {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Allow/block entries (presence and IM) in the pool's store; a running pool applies them within a second.
    Policy {
        /// The pool's config (its `[pool] database` is used).
        #[arg(short, long)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Federation operations.
    Federation {
        #[command(subcommand)]
        cmd: FederationCmd,
    },
    /// The pool's durable store.
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// The enterprise pool's members: status, drain, undrain (in the store of the pool's config).
    Pool {
        #[arg(short, long)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: parapet::mgmt::pool_admin::PoolCmd,
    },
    /// Users' contact lists in the pool's store.
    Contacts {
        #[arg(short, long)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: ContactsCmd,
    },
    /// The IM archive in the pool's store: search, export (JSON lines), purge.
    Archive {
        #[arg(short, long)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: parapet::store::archive_cli::ArchiveCmd,
    },
    /// The namespace synced from the [directory] sources.
    Directory {
        #[command(subcommand)]
        cmd: parapet::directory::cli::DirectoryCmd,
    },
    /// People's credentials in the pool's store.
    Users {
        #[command(subcommand)]
        cmd: parapet::directory::cli::UsersCmd,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Entries, of one owner or all.
    List {
        owner: Option<String>,
    },
    /// Sets OWNER's entry about TARGET (user@domain, @domain or *); a right not given keeps its value.
    Set {
        owner: String,
        target: String,
        /// allow, block or unset.
        #[arg(long)]
        presence: Option<String>,
        /// allow, block or unset.
        #[arg(long)]
        im: Option<String>,
    },
    Delete {
        owner: String,
        target: String,
    },
}

#[derive(Subcommand)]
enum FederationCmd {
    /// Connects to DOMAIN's partner edge as our edge would; reports certificate, trust, TLS and an OPTIONS.
    Test {
        domain: String,
        /// Our edge's config (its [edge.federation] table, certificate and key are used).
        #[arg(short, long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Copies a SQLite store (policies, contacts, soft state) into PostgreSQL in one transaction.
    Migrate {
        /// The SQLite file, e.g. data/parapet.db.
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL URL (postgres://user@host/db or "host=a,b dbname=...").
        #[arg(long)]
        to: String,
        /// Replace what the target already holds.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ContactsCmd {
    List {
        owner: String,
    },
    Add {
        owner: String,
        uri: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        group: String,
    },
    Remove {
        owner: String,
        uri: String,
    },
}

fn print(r: Result<String, String>) -> Result<(), String> {
    r.map(|s| print!("{s}"))
}

fn policy(config: &std::path::Path, cmd: PolicyCmd) -> Result<String, String> {
    use parapet::store::admin::{self, Change};
    match cmd {
        PolicyCmd::List { owner } => admin::policy_list(config, owner.as_deref()),
        PolicyCmd::Set { owner, target, presence, im } => admin::policy_set(
            config,
            &owner,
            &target,
            Change::parse(presence.as_deref()).map_err(|e| format!("--presence {e}"))?,
            Change::parse(im.as_deref()).map_err(|e| format!("--im {e}"))?,
        ),
        PolicyCmd::Delete { owner, target } => admin::policy_delete(config, &owner, &target),
    }
}

fn contacts(config: &std::path::Path, cmd: ContactsCmd) -> Result<String, String> {
    use parapet::store::admin;
    match cmd {
        ContactsCmd::List { owner } => admin::contacts_list(config, &owner),
        ContactsCmd::Add { owner, uri, name, group } => admin::contacts_add(config, &owner, &uri, &name, &group),
        ContactsCmd::Remove { owner, uri } => admin::contacts_remove(config, &owner, &uri),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Up {
            data_dir,
            port_base,
            cores,
            domain,
            load_users,
            flood_limits,
            federation,
            store,
            front_ends,
            front_end_ports,
            federate_with,
            perimeter,
        } => {
            let cores = cores.unwrap_or_else(parapet::config::online_cpus).max(1);
            parapet::mgmt::up::up(&parapet::mgmt::up::UpOptions {
                data_dir,
                port_base,
                cores,
                domain,
                load_users,
                flood_limits: flood_limits == "on",
                federation: federation == "on",
                store_postgres: store.map_or(front_ends > 1, |s| s == "postgres"),
                front_ends,
                front_end_ports,
                federate_with,
                perimeter,
            })
        }
        Cmd::Run { config } => parapet::mgmt::run::run_many(&config),
        Cmd::Partner { cmd } => parapet::mgmt::partners::cli(cmd),
        Cmd::DnsRecords { config } => parapet::mgmt::dns_records::run(&config),
        Cmd::CheckConfig { config } => parapet::config::Config::load(&config)
            .and_then(|c| c.validate().and_then(|()| c.check_files()))
            .map(|()| println!("{}: ok", config.display()))
            .map_err(|e| e.to_string()),
        Cmd::Report { config, since, out, csv } => parapet::mgmt::report::run(&config, &since, &out, csv.as_deref()),
        Cmd::Doctor { config } => parapet::mgmt::doctor::run(&config),
        Cmd::Reload { config } => parapet::config::Config::load(&config)
            .map_err(|e| e.to_string())
            .and_then(|c| parapet::mgmt::http::call(&c, "POST", "/reload", ""))
            .map(|body| print!("{body}")),
        Cmd::Policy { config, cmd } => print(policy(&config, cmd)),
        Cmd::Contacts { config, cmd } => print(contacts(&config, cmd)),
        Cmd::Archive { config, cmd } => print(cmd.run(&config)),
        Cmd::Store { cmd: StoreCmd::Migrate { from, to, force } } => {
            print(parapet::store::migrate::migrate(&from, &to, force))
        }
        Cmd::Pool { config, cmd } => print(parapet::mgmt::pool_admin::run(&config, cmd)),
        Cmd::Directory { cmd } => print(parapet::directory::cli::directory(cmd)),
        Cmd::Users { cmd } => print(parapet::directory::cli::users(cmd)),
        Cmd::Federation { cmd: FederationCmd::Test { domain, config } } => parapet::mgmt::probe::run(&config, &domain),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parapet: {e}");
            ExitCode::FAILURE
        }
    }
}
