//! `faultline-agent`: the gateway agent. This file only parses the command line and
//! dispatches; each subcommand lives in its own module.

mod backoff;
mod cli;
mod cmd_probe;
mod config;
mod config_error;
mod gateway;
mod host;
mod mqtt;
mod outbox;
mod probe;
mod reflect;
mod run;
mod window;

use std::io::Write;
use std::process::ExitCode;

use cli::{Cmd, Parsed};

fn main() -> ExitCode {
    let cmd = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Parsed::Cmd(c)) => c,
        Ok(Parsed::Print(text)) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(cli::Error(msg)) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    match cmd {
        Cmd::Run(args) => run::run(args),
        Cmd::Check(args) => run::check(args),
        Cmd::Probe(args) => cmd_probe::main(args),
        Cmd::Reflect(args) => reflect::main(args),
    }
}

/// Logs to stderr, one line per event, filtered by `RUST_LOG` (default `info`; the
/// `target=level,level` form, without regexes); rumqttc's `log` records are bridged in.
fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Fails only when a logger is already set, which nothing else here does.
    let _ = tracing_log::LogTracer::init();
    let default = Targets::new().with_default(LevelFilter::INFO);
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) => spec.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("ignoring RUST_LOG={spec:?}: {e}");
            default
        }),
        Err(_) => default,
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .try_init();
}
