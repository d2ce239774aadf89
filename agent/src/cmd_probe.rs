//! `faultline-agent probe KIND HOST`: one measurement now, for a technician on site.
//!
//! The arguments become a target's key/value data and go through the same builder as
//! the config file (`config::target`), so the command measures exactly what `run` would.

use std::process::ExitCode;
use std::time::Duration;

use faultline_shared::ProbeResult;

use crate::config::target::{self, Fields, Target, Value};
use crate::probe::{MAX_GRACE, Prober};

#[derive(Debug, Default, clap::Args)]
pub struct ProbeArgs {
    /// icmp, stamp, sip, stun, dns or tcp
    pub kind: String,
    /// Target: host, host:port or IP (for dns: the name to resolve)
    pub host: String,
    /// stamp: packets per second (default 50)
    #[arg(long)]
    pub pps: Option<u32>,
    /// How long to measure: stamp stream length, or the timeout of sip/stun/dns/tcp (default 5)
    #[arg(long)]
    pub seconds: Option<f64>,
    /// stamp: g711, g711-noplc or g729a (default g711)
    #[arg(long)]
    pub codec: Option<String>,
    /// stamp: pad test packets to the codec's frame size
    #[arg(long)]
    pub pad: bool,
    /// icmp: number of echoes (default --seconds, one per second)
    #[arg(long)]
    pub count: Option<u32>,
    /// icmp: milliseconds between echoes (default 1000)
    #[arg(long)]
    pub interval_ms: Option<u32>,
    /// sip: udp or tcp (default udp)
    #[arg(long)]
    pub transport: Option<String>,
    /// dns: a, aaaa or srv (default a; srv for names starting with _)
    #[arg(long)]
    pub record: Option<String>,
    /// dns: server IP or IP:port (default: first nameserver of /etc/resolv.conf)
    #[arg(long)]
    pub server: Option<String>,
    /// Print one ProbeResult as JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Default measuring time of `probe`, seconds.
pub const DEFAULT_SECONDS: f64 = 5.0;

/// The target and window the arguments describe, or the message for a bad argument.
pub fn plan(args: &ProbeArgs) -> Result<(Target, Duration), String> {
    let seconds = args.seconds.unwrap_or(DEFAULT_SECONDS);
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err(format!(
            "--seconds {seconds}: expected more than 0, at most 3600"
        ));
    }
    let mut fields = Fields::new();
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            fields.insert(k, v);
        }
    };
    let int = |v: Option<u32>| v.map(|n| Value::Integer(i64::from(n)));
    let text = |v: &Option<String>| v.clone().map(Value::String);
    let kind = args.kind.to_ascii_lowercase();
    set("name", Some(Value::String("probe".into())));
    set("layer", Some(Value::String("internet".into())));
    set("kind", Some(Value::String(kind.clone())));
    set("host", Some(Value::String(args.host.clone())));
    // Every flag given becomes an option, so one that does not apply to KIND is
    // rejected by the same check as a typo in the config file.
    set("pps", int(args.pps));
    set("codec", text(&args.codec));
    set("pad", args.pad.then_some(Value::Boolean(true)));
    set("transport", text(&args.transport));
    set("record", text(&args.record));
    set("server", text(&args.server));
    set("count", int(args.count));
    set("interval_ms", int(args.interval_ms));
    let window = match kind.as_str() {
        "stamp" => {
            set("stamp_seconds", Some(Value::Float(seconds)));
            Duration::from_secs_f64(seconds) + MAX_GRACE
        }
        "icmp" => {
            let count = args.count.unwrap_or((seconds.ceil() as u32).max(1));
            let interval = args.interval_ms.unwrap_or(1000);
            set("count", int(Some(count)));
            set("interval_ms", int(Some(interval)));
            Duration::from_millis(u64::from(interval) * u64::from(count)) + MAX_GRACE
        }
        _ => Duration::from_secs_f64(seconds),
    };
    let target = target::build(&fields).map_err(|e| {
        let flag = match e.field.as_str() {
            "kind" | "host" => e.field.to_uppercase(),
            "stamp_seconds" => "--seconds".into(),
            f => format!("--{}", f.replace('_', "-")),
        };
        format!("{flag}: {}", e.message)
    })?;
    Ok((target, window))
}

pub fn main(args: ProbeArgs) -> ExitCode {
    let (target, window) = match plan(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let (result, notes) = rt.block_on(async {
        let mut prober = match Prober::new(target.clone()).await {
            Ok(p) => p,
            Err(e) => {
                let mut r = target.result();
                r.error = Some(format!("{e:#}"));
                return (r, Vec::new());
            }
        };
        let r = prober.measure(window).await;
        (r, prober.notes().to_vec())
    });
    // A name lookup the window gave up on may still wait in the C library (a silent
    // DNS server: resolv.conf's 5 s × 2 attempts); it must not hold the exit.
    rt.shutdown_background();
    if args.json {
        match serde_json::to_string(&result) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", table(&target, &result, &notes));
    }
    if result.error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The human-readable form of one result.
pub fn table(target: &Target, r: &ProbeResult, notes: &[(&'static str, String)]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "  {k:<14} {v}");
    };
    let desc = target.to_string();
    let desc = desc.split_once(" kind=").map_or(desc.as_str(), |(_, d)| d);
    let head = format!("probe {desc}");
    row("sent", r.sent.to_string());
    row("received", r.received.to_string());
    if r.sent > 0 {
        row("loss", format!("{:.2} %", r.loss() * 100.0));
    }
    if let Some(t) = r.rtt_ms {
        row(
            "rtt ms",
            format!(
                "min {:.3}  p50 {:.3}  avg {:.3}  p95 {:.3}  max {:.3}",
                t.min, t.p50, t.avg, t.p95, t.max
            ),
        );
    }
    if let Some(j) = r.jitter_ms {
        row("jitter ms", format!("{j:.3}"));
    }
    if let Some(b) = r.max_burst {
        row("max burst", b.to_string());
    }
    if let Some(m) = r.mos {
        row("mos", format!("{m:.2}"));
    }
    for (k, v) in notes {
        if *k != "loss_pct" {
            row(&k.replace('_', " "), v.clone());
        }
    }
    row(
        "result",
        match &r.error {
            None => "ok".into(),
            Some(e) => format!("FAILED: {e}"),
        },
    );
    format!("{head}\n{s}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Cmd};
    use clap::Parser;

    fn args(line: &[&str]) -> ProbeArgs {
        let mut v = vec!["faultline-agent", "probe"];
        v.extend_from_slice(line);
        match Cli::try_parse_from(v).map(|c| c.cmd) {
            Ok(Cmd::Probe(a)) => a,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn plans_a_stamp_stream_with_its_grace() {
        let (t, w) = plan(&args(&[
            "stamp",
            "127.0.0.1:9",
            "--pps",
            "20",
            "--seconds",
            "2",
        ]))
        .unwrap();
        assert_eq!(w, Duration::from_secs(3));
        assert!(t.to_string().contains("pps=20 stamp_seconds=2"), "{t}");
    }

    #[test]
    fn bad_arguments_name_the_flag() {
        let e = plan(&args(&["stamp", "x", "--codec", "opus"])).unwrap_err();
        assert!(e.starts_with("--codec:"), "{e}");
        let e = plan(&args(&["warp", "x"])).unwrap_err();
        assert!(e.starts_with("KIND:"), "{e}");
        let e = plan(&args(&["tcp", "x"])).unwrap_err();
        assert!(e.starts_with("HOST:") && e.contains("port"), "{e}");
        let e = plan(&args(&["icmp", "x", "--pps", "3"])).unwrap_err();
        assert!(e.starts_with("--pps:"), "{e}");
        assert!(plan(&args(&["sip", "x", "--seconds", "0"])).is_err());
    }
}
