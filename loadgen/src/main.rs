//! The `loadgen` binary: parse the command line, run, print; exit 2 with one sentence on bad configuration.

use clap::Parser;
use loadgen::cli::Args;
use loadgen::Outputs;

fn main() {
    // A panic on any of loadgen's executors ends the run at once instead of leaving a core silently missing.
    parapet::shard::watch::exit_on_panic();
    let args = Args::parse();
    let outputs = Outputs { json: args.json.clone(), hdr_log: args.hdr_log.clone(), plot: args.plot.clone() };
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => fail(&e.0),
    };
    if let Err(e) = loadgen::run_and_report(cfg, &outputs) {
        fail(&e.0);
    }
}

fn fail(sentence: &str) -> ! {
    eprintln!("loadgen: {sentence}");
    std::process::exit(2);
}
