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

/// Logs to stderr, one line per event, filtered by `RUST_LOG` (default `info`);
/// rumqttc's `log` records are bridged in.
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // Fails only when a logger is already set, which nothing else here does.
    let _ = tracing_log::LogTracer::init();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
