//! `faultline-agent probe KIND HOST`: one measurement now, for a technician on site.
//! OWNED BY THE PROBES WORK.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// icmp, stamp, sip, stun, dns or tcp
    pub kind: String,
    /// Target host (host, host:port or IP)
    pub host: String,
    /// Print one ProbeResult as JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn main(_args: ProbeArgs) -> ExitCode {
    todo!("probes work")
}
