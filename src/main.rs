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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Up { data_dir, port_base, cores, domain, load_users } => {
            let cores = cores.unwrap_or_else(parapet::config::online_cpus).max(1);
            parapet::mgmt::up::up(&parapet::mgmt::up::UpOptions { data_dir, port_base, cores, domain, load_users })
        }
        Cmd::Run { config } => parapet::mgmt::run::run(&config),
        Cmd::CheckConfig { config } => parapet::config::Config::load(&config)
            .and_then(|c| c.validate())
            .map(|()| println!("{}: ok", config.display()))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parapet: {e}");
            ExitCode::FAILURE
        }
    }
}
