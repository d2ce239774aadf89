//! `faultline-agent reflect`: an RFC 8762 STAMP session-reflector. OWNED BY THE PROBES WORK.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ReflectArgs {
    /// Address to listen on (default port 862)
    #[arg(long, default_value = "0.0.0.0:862")]
    pub listen: String,
}

pub fn main(_args: ReflectArgs) -> ExitCode {
    todo!("probes work")
}
