//! `faultline-outbox`: pre-fills an agent's durable outbox as a gateway's flash holds
//! it after a long broker outage, or counts what one holds (format:
//! `faultline_tests::outbox`).
//!
//! ```text
//! faultline-outbox fill --state-dir DIR --count 8640 --reports reports.hex [--boot N] [--window-ms 10000]
//! faultline-outbox count --state-dir DIR
//! faultline-outbox tally --reports received.hex
//! faultline-outbox sizes --reports received.hex [--shift TARGET=MS]...
//! ```
//! Report files hold one postcard envelope per line in hex, as `mosquitto_sub -F %x`
//! prints them (anything before the last space on a line, e.g. `%U`'s timestamp, is
//! ignored). `fill` writes `--count` records from the file's reports in turn, each
//! re-encoded with one boot, seq 0, 1, 2… and consecutive windows ending now; it
//! prints `records= segments= bytes= payload_min= payload_median= payload_max=`.
//! `count` prints `records= segments= bytes=` of a spool. `tally` checks what a
//! subscriber received: `reports= distinct= duplicates=`, then per boot (in order of
//! first arrival) `boot=B count= first= last= missing=` (seqs absent between first and
//! last). `sizes` prints the reports' postcard sizes `count= min= median= max=`, after
//! adding MS milliseconds to every RTT figure of each `--shift` target (what a loopback
//! target's record would weigh at a WAN distance; its spread stays as measured).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use faultline_shared::{Report, decode, encode};
use faultline_tests::outbox::{FORMAT_POSTCARD, count, write_segments};

const USAGE: &str = "usage: faultline-outbox fill --state-dir DIR --count N --reports FILE \
[--boot N] [--window-ms MS]
       faultline-outbox count --state-dir DIR
       faultline-outbox tally --reports FILE
       faultline-outbox sizes --reports FILE [--shift TARGET=MS]...
  FILE: postcard reports, one per line in hex (mosquitto_sub -F %x or -F '%U %x')";

#[derive(Debug)]
enum Cmd {
    Fill {
        state_dir: PathBuf,
        count: u64,
        reports: PathBuf,
        boot: u32,
        window_ms: u32,
    },
    Count {
        state_dir: PathBuf,
    },
    Tally {
        reports: PathBuf,
    },
    Sizes {
        reports: PathBuf,
        shifts: Vec<(String, f64)>,
    },
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Cmd, String> {
    let cmd = it.next().ok_or("a command is required")?;
    let (mut state_dir, mut n, mut reports) = (None, None, None);
    let (mut boot, mut window_ms) = (0x00B0_0700, 10_000);
    let mut shifts = Vec::new();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--state-dir" => state_dir = Some(PathBuf::from(&value)),
            "--count" => n = Some(value.parse().map_err(|e| bad(&e))?),
            "--reports" => reports = Some(PathBuf::from(&value)),
            "--boot" => boot = value.parse().map_err(|e| bad(&e))?,
            "--window-ms" => window_ms = value.parse().map_err(|e| bad(&e))?,
            "--shift" => {
                let (target, ms) = value.split_once('=').ok_or_else(|| bad(&"not TARGET=MS"))?;
                let ms: f64 = ms.parse().map_err(|e| bad(&e))?;
                shifts.push((target.to_owned(), ms));
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    match cmd.as_str() {
        "tally" => {
            let reports = reports.ok_or("--reports is required")?;
            return Ok(Cmd::Tally { reports });
        }
        "sizes" => {
            let reports = reports.ok_or("--reports is required")?;
            return Ok(Cmd::Sizes { reports, shifts });
        }
        _ => {}
    }
    let state_dir = state_dir.ok_or("--state-dir is required")?;
    match cmd.as_str() {
        "fill" => Ok(Cmd::Fill {
            state_dir,
            count: n.ok_or("--count is required")?,
            reports: reports.ok_or("--reports is required")?,
            boot,
            window_ms,
        }),
        "count" => Ok(Cmd::Count { state_dir }),
        _ => Err(format!("unknown command {cmd}")),
    }
}

fn unhex(line: &str) -> Result<Vec<u8>, String> {
    let line = line.trim();
    if !line.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// The reports in `path`, one hex postcard envelope per line (its last field).
fn read_reports(path: &PathBuf) -> Result<Vec<Report>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reports = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let at = || format!("{}:{}", path.display(), i + 1);
            let hex = l.split_whitespace().last().unwrap_or_default();
            let bytes = unhex(hex).map_err(|e| format!("{}: {e}", at()))?;
            decode(&bytes).map_err(|e| format!("{}: {e}", at()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(reports)
}

fn fill(
    state_dir: &std::path::Path,
    n: u64,
    reports: &[Report],
    boot: u32,
    window_ms: u32,
) -> Result<(), String> {
    if reports.is_empty() {
        return Err("no reports to fill from".into());
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let first_ms = now_ms.saturating_sub(n * u64::from(window_ms));
    let payloads = (0..n)
        .map(|seq| {
            let mut r = reports[(seq % reports.len() as u64) as usize].clone();
            r.boot = boot;
            r.seq = seq;
            r.start_ms = first_ms + seq * u64::from(window_ms);
            r.window_ms = window_ms;
            encode(&r).map_err(|e| format!("encode seq {seq}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dir = state_dir.join("outbox");
    let files = write_segments(
        &dir,
        payloads
            .iter()
            .enumerate()
            .map(|(seq, p)| (FORMAT_POSTCARD, boot, seq as u64, p.as_slice())),
    )
    .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut sizes: Vec<usize> = payloads.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    println!(
        "records={} segments={} bytes={} payload_min={} payload_median={} payload_max={}",
        payloads.len(),
        files.len(),
        bytes,
        sizes.first().copied().unwrap_or(0),
        sizes
            .get(sizes.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0),
        sizes.last().copied().unwrap_or(0),
    );
    Ok(())
}

/// Per boot, in order of first arrival: the distinct seqs received.
fn tally(reports: &[Report]) {
    let mut boots: Vec<(u32, BTreeSet<u64>)> = Vec::new();
    let mut duplicates = 0;
    for r in reports {
        let i = match boots.iter().position(|(b, _)| *b == r.boot) {
            Some(i) => i,
            None => {
                boots.push((r.boot, BTreeSet::new()));
                boots.len() - 1
            }
        };
        duplicates += usize::from(!boots[i].1.insert(r.seq));
    }
    println!(
        "reports={} distinct={} duplicates={duplicates}",
        reports.len(),
        reports.len() - duplicates
    );
    for (boot, seqs) in &boots {
        // Not empty: a boot is listed once a report of it arrived.
        let (first, last) = (*seqs.first().unwrap(), *seqs.last().unwrap());
        let missing = last - first + 1 - seqs.len() as u64;
        println!(
            "boot={boot} count={} first={first} last={last} missing={missing}",
            seqs.len()
        );
    }
}

/// `count= min= median= max=` of the reports' postcard sizes after the shifts.
fn sizes(reports: &[Report], shifts: &[(String, f64)]) -> Result<(), String> {
    let mut sizes = reports
        .iter()
        .map(|r| {
            let mut r = r.clone();
            for p in &mut r.probes {
                let shift = shifts.iter().find(|(t, _)| *t == p.target.as_str());
                if let (Some((_, ms)), Some(rtt)) = (shift, p.rtt_ms.as_mut()) {
                    for v in [
                        &mut rtt.min,
                        &mut rtt.p50,
                        &mut rtt.avg,
                        &mut rtt.p95,
                        &mut rtt.max,
                    ] {
                        *v += ms;
                    }
                }
            }
            encode(&r).map(|b| b.len()).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    sizes.sort_unstable();
    match (sizes.first(), sizes.last()) {
        (Some(min), Some(max)) => println!(
            "count={} min={min} median={} max={max}",
            sizes.len(),
            sizes[(sizes.len() - 1) / 2]
        ),
        _ => println!("count=0 min= median= max="),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cmd = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("faultline-outbox: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd {
        Cmd::Fill {
            state_dir,
            count: n,
            reports,
            boot,
            window_ms,
        } => read_reports(&reports).and_then(|r| fill(&state_dir, n, &r, boot, window_ms)),
        Cmd::Tally { reports } => read_reports(&reports).map(|r| tally(&r)),
        Cmd::Sizes { reports, shifts } => read_reports(&reports).and_then(|r| sizes(&r, &shifts)),
        Cmd::Count { state_dir } => {
            let dir = state_dir.join("outbox");
            count(&dir)
                .map(|c| {
                    println!(
                        "records={} segments={} bytes={}",
                        c.records, c.segments, c.bytes
                    )
                })
                .map_err(|e| format!("{}: {e}", dir.display()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faultline-outbox: {e}");
            ExitCode::from(1)
        }
    }
}
