//! `faultline-agent`: the gateway agent. This file only parses the command line and
//! dispatches; each subcommand lives in its own module.

mod backoff;
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

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "faultline-agent", version, about = "Faultline gateway agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Measure every configured target each window and publish reports over MQTT.
    Run(run::RunArgs),
    /// Validate a config file and print the resolved plan (exit 2 when invalid).
    Check(run::CheckArgs),
    /// One measurement now, as a table or `--json` as one ProbeResult.
    Probe(cmd_probe::ProbeArgs),
    /// An RFC 8762 STAMP session-reflector.
    Reflect(reflect::ReflectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.cmd {
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
