//! `faultline-agent`: the gateway agent. This file only parses the command line and
//! dispatches; each subcommand lives in its own module.

mod central;
mod cli;
mod cmd_probe;
mod config;
mod host;
mod logging;
mod net;
mod probe;
mod reflect;
mod run;
mod window;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Cmd};

fn main() -> ExitCode {
    // On a usage error clap prints it and exits 2; help and version exit 0.
    let cli = Cli::parse();
    logging::init();
    match cli.cmd {
        Cmd::Run(args) => run::run(args),
        Cmd::Check(args) => run::check(args),
        Cmd::Probe(args) => cmd_probe::main(args),
        Cmd::Reflect(args) => reflect::main(args),
    }
}

/// The agent's single-threaded tokio runtime (small footprint); on failure the
/// reason is printed and the exit code to return is given back.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}
