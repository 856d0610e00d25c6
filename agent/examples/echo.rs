//! The example bot: answers every MESSAGE sent to its agent address with the same text, prefixed "echo: ";
//! `who` answers with the agent addresses it serves; `forward to sip:bob@example.com` hands the MESSAGE back to
//! the pool for bob (a 302), who gets it. Run against `parapet up` (which issues its certificate):
//!
//!     cargo run -p agent --example echo -- --pool 127.0.0.1:5062 --server-name pool.example.com \
//!         --ca data/pki/ca.pem --cert data/pki/echo-app.pem --key data/pki/echo-app.key --agent sip:echo@example.com
//!
//! It prints `AGENT READY` once registered, and one line per MESSAGE it answers. `--delay-ms N` waits N ms before
//! each answer: a slow (or, with a large N, hung) application, to watch the pool's timeout and fallback.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut cfg, mut agents) = (agent::Config::new("127.0.0.1:5062", "pool.example.com", "", "", ""), Vec::new());
    let mut delay = std::time::Duration::ZERO;
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            eprintln!("echo: {flag} needs a value");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--pool" => cfg.pool = value,
            "--server-name" => cfg.server_name = value,
            "--ca" => cfg.ca = value.into(),
            "--cert" => cfg.cert = value.into(),
            "--key" => cfg.key = value.into(),
            "--agent" => agents.push(value),
            "--delay-ms" => match value.parse() {
                Ok(ms) => delay = std::time::Duration::from_millis(ms),
                Err(_) => {
                    eprintln!("echo: --delay-ms {value}: a number of milliseconds");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("echo: unknown flag {flag} (--pool --server-name --ca --cert --key --agent --delay-ms)");
                return ExitCode::from(2);
            }
        }
    }
    match run(&cfg, &agents, delay) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: &agent::Config, agents: &[String], delay: std::time::Duration) -> std::io::Result<()> {
    let mut agent = agent::Agent::connect(cfg)?;
    for a in agents {
        agent.register(a)?;
    }
    println!("AGENT READY {}", agents.join(" "));
    loop {
        let m = agent.recv()?;
        let text = m.text();
        println!("MESSAGE from {} to {}: {text}", m.from, m.target);
        std::thread::sleep(delay);
        if let Some(target) = text.trim().strip_prefix("forward to ") {
            // Hand-back with another target: the pool delivers this MESSAGE there.
            agent.redirect(&m, target)?;
            continue;
        }
        let answer =
            if text.trim() == "who" { format!("I serve {}", agents.join(", ")) } else { format!("echo: {text}") };
        agent.reply(&m, &answer)?;
    }
}
