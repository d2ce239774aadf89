//! `faultline-agent`: the gateway agent. This file only parses the command line and
//! dispatches; each subcommand lives in its own module.

mod cmd_probe;
mod config;
mod config_error;
mod probe;
mod reflect;
mod run;

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
    match cli.cmd {
        Cmd::Run(args) => run::run(args),
        Cmd::Check(args) => run::check(args),
        Cmd::Probe(args) => cmd_probe::main(args),
        Cmd::Reflect(args) => reflect::main(args),
    }
}
