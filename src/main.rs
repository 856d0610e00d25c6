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
    /// Zero-setup appliance on loopback: dev PKI, demo users, one edge and one pool process.
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
    },
    /// Run the roles ([edge], [pool] or both) that a config file describes.
    Run {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Check a config file and exit.
    CheckConfig {
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
    /// Users' contact lists in the pool's store.
    Contacts {
        #[arg(short, long)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: ContactsCmd,
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
        Cmd::Up { data_dir, port_base, cores, domain, load_users, flood_limits, federation } => {
            let cores = cores.unwrap_or_else(parapet::config::online_cpus).max(1);
            parapet::mgmt::up::up(&parapet::mgmt::up::UpOptions {
                data_dir,
                port_base,
                cores,
                domain,
                load_users,
                flood_limits: flood_limits == "on",
                federation: federation == "on",
            })
        }
        Cmd::Run { config } => parapet::mgmt::run::run(&config),
        Cmd::CheckConfig { config } => parapet::config::Config::load(&config)
            .and_then(|c| c.validate())
            .map(|()| println!("{}: ok", config.display()))
            .map_err(|e| e.to_string()),
        Cmd::Policy { config, cmd } => print(policy(&config, cmd)),
        Cmd::Contacts { config, cmd } => print(contacts(&config, cmd)),
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
