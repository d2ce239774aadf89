//! `faultline-fleet`: plays N simulated sites publishing real postcard reports to a
//! broker, with scripted faults, for scale tests and ingest benchmarks.
//!
//! ```text
//! faultline-fleet --url mqtt://127.0.0.1:1883 --sites 10000 --windows 3 --window-ms 10000
//! faultline-fleet --url mqtt://127.0.0.1:1883 --sites 100 --windows 60 --window-ms 1000 \
//!     --realtime --fault provider-down:voipco@10..20 --fault isp-lossy:isp-a:20%@30..40
//! ```
//! Prints one line of figures (reports, bytes, rate) when the broker has
//! acknowledged everything.

use std::process::ExitCode;

use faultline_tests::fleet::{Fleet, PublishOptions, Script, ScriptedFault, publish};

const USAGE: &str = "usage: faultline-fleet --url mqtt://HOST:PORT [--sites N] [--windows W] \
[--window-ms MS] [--isps N] [--seed N] [--prefix P] [--realtime] [--no-status] [--fault SPEC]...
  SPEC: provider-down:P@A..B | isp-lossy:ISP:20%@A..B | lan-cut:SITE@A..B |
        path-lossy:SITE:P:15%@A..B | host-busy:SITE@A..B | silent:SITE@A..B |
        lossy:SITE:SEG@A..B | down:SITE:SEG@A..B (SEG: lan, isp, internet or P) |
        restarted:SITE:BOOT[:CLOCK_MS]@A..B   (windows A..B)
  sites are site-0000.., ISPs isp-a, isp-b.., providers voipco and its alternate voipco2";

#[derive(Debug)]
struct Args {
    sites: usize,
    isps: usize,
    window_ms: u32,
    seed: u64,
    script: Script,
    publish: PublishOptions,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        sites: 100,
        isps: 3,
        window_ms: 10_000,
        seed: 1,
        script: Script::new(),
        publish: PublishOptions {
            url: String::new(),
            prefix: faultline_shared::topic::DEFAULT_PREFIX.to_owned(),
            windows: 1,
            realtime: false,
            statuses: true,
        },
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--realtime" => {
                a.publish.realtime = true;
                continue;
            }
            "--no-status" => {
                a.publish.statuses = false;
                continue;
            }
            _ => {}
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("{flag} {v}: not a whole number"))
        };
        match flag.as_str() {
            "--url" => a.publish.url = value,
            "--prefix" => a.publish.prefix = value,
            "--sites" => a.sites = num(&value)? as usize,
            "--isps" => a.isps = (num(&value)? as usize).clamp(1, 26),
            "--windows" => a.publish.windows = num(&value)?,
            "--window-ms" => {
                a.window_ms = u32::try_from(num(&value)?)
                    .ok()
                    .filter(|&v| v > 0)
                    .ok_or_else(|| format!("--window-ms {value}: must be 1..2^32"))?;
            }
            "--seed" => a.seed = num(&value)?,
            "--fault" => {
                let f: ScriptedFault = value.parse().map_err(|e| format!("{e}"))?;
                a.script.push(f);
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if a.publish.url.is_empty() {
        return Err("--url is required".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("faultline-fleet: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let isps: Vec<_> = (0..args.isps)
        .map(|i| {
            let letter = char::from(b'a' + i as u8);
            // Always valid: `isp-` and one lowercase letter.
            faultline_shared::Id::new(format!("isp-{letter}")).unwrap()
        })
        .collect();
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut fleet =
        Fleet::new(args.sites, &isps, args.window_ms, start_ms, args.seed).with_script(args.script);
    match publish(&mut fleet, &args.publish) {
        Ok(s) => {
            println!(
                "published {} reports ({} bytes, {:.1} B/report) and {} statuses in {:.3} s: {:.0} reports/s",
                s.reports,
                s.report_bytes,
                s.mean_report_bytes(),
                s.statuses,
                s.elapsed.as_secs_f64(),
                s.reports_per_sec()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("faultline-fleet: {e:#}");
            ExitCode::from(1)
        }
    }
}
