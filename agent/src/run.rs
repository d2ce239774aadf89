//! `run` and `check`. OWNED BY THE DELIVERY WORK.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[arg(long)]
    pub config: PathBuf,
}

pub fn run(_args: RunArgs) -> ExitCode {
    todo!("delivery work")
}

pub fn check(_args: CheckArgs) -> ExitCode {
    todo!("delivery work")
}
