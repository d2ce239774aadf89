//! `faultline-relay`: the test kit's UDP impairment relay as a standalone program,
//! for trying an agent against a bad path by hand.
//!
//! ```text
//! faultline-relay --listen 127.0.0.1:8862 --upstream 127.0.0.1:862 \
//!     --up "delay=20ms,jitter=5ms" --down "loss=2%" --seed 7 --stats 5
//! ```
//! While it runs, lines on stdin change it: `up SPEC`, `down SPEC`, `both SPEC`,
//! `cut`, `restore`, `stats`, `quit`. SPEC is `delay=20ms,jitter=5ms,loss=2%,
//! ge=P:R[:LOSS_BAD],dup=1%,reorder=5%[:GAP]` or `none`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use faultline_tests::relay::{Direction, Impairment, Relay, RelayHandle};

const USAGE: &str = "usage: faultline-relay --listen ADDR --upstream ADDR [--seed N] \
[--both SPEC] [--up SPEC] [--down SPEC] [--stats SECS]
  SPEC: delay=20ms,jitter=5ms,loss=2%,ge=P:R[:LOSS_BAD],dup=1%,reorder=5%[:GAP] | none
  stdin while running: up SPEC | down SPEC | both SPEC | cut | restore | stats | quit";

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    seed: u64,
    up: Impairment,
    down: Impairment,
    stats_every: Option<Duration>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = None;
    let mut upstream = None;
    let mut seed = 1;
    let mut up = Impairment::default();
    let mut down = Impairment::default();
    let mut stats_every = None;
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| bad(&e))?),
            "--upstream" => upstream = Some(value.parse().map_err(|e| bad(&e))?),
            "--seed" => seed = value.parse().map_err(|e| bad(&e))?,
            "--up" => up = value.parse().map_err(|e| bad(&e))?,
            "--down" => down = value.parse().map_err(|e| bad(&e))?,
            "--both" => {
                up = value.parse().map_err(|e| bad(&e))?;
                down = up;
            }
            "--stats" => {
                let secs: f64 = value.parse().map_err(|e| bad(&e))?;
                if !(secs.is_finite() && secs > 0.0) {
                    return Err(bad(&"must be a positive number of seconds"));
                }
                stats_every = Some(Duration::from_secs_f64(secs));
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        upstream: upstream.ok_or("--upstream is required")?,
        seed,
        up,
        down,
        stats_every,
    })
}

fn print_stats(h: &RelayHandle) {
    for (name, dir) in [("up", Direction::Up), ("down", Direction::Down)] {
        let s = h.stats(dir);
        println!(
            "{name:>4}: received {} forwarded {} dropped {} duplicated {} queued {} [{}]{}",
            s.received,
            s.forwarded,
            s.dropped,
            s.duplicated,
            s.queued,
            h.impairment(dir),
            if h.is_down() { " CUT" } else { "" }
        );
    }
}

/// Applies one stdin command; `false` means quit.
fn command(h: &RelayHandle, line: &str) -> bool {
    let line = line.trim();
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let set = |dirs: &[Direction]| match rest.parse::<Impairment>() {
        Ok(imp) => {
            for &d in dirs {
                // Parsing validated it already.
                h.set_impairment(d, imp).unwrap();
            }
            println!("ok: {imp}");
        }
        Err(e) => println!("error: {e}"),
    };
    match cmd {
        "" => {}
        "up" => set(&[Direction::Up]),
        "down" => set(&[Direction::Down]),
        "both" => set(&[Direction::Up, Direction::Down]),
        "cut" => {
            h.set_down(true);
            println!("ok: link cut");
        }
        "restore" => {
            h.set_down(false);
            println!("ok: link restored");
        }
        "stats" => print_stats(h),
        "quit" | "exit" => return false,
        _ => println!("error: unknown command `{cmd}`\n{USAGE}"),
    }
    true
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("faultline-relay: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let relay = match Relay::start(args.listen, args.upstream, args.seed) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("faultline-relay: listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let h = relay.handle();
    // Parsing validated both.
    h.set_impairment(Direction::Up, args.up).unwrap();
    h.set_impairment(Direction::Down, args.down).unwrap();
    println!(
        "relaying {} -> {} (seed {}); up [{}], down [{}]",
        relay.addr(),
        relay.upstream(),
        args.seed,
        args.up,
        args.down
    );
    if let Some(every) = args.stats_every {
        let h = h.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(every);
                print_stats(&h);
            }
        });
    }
    let mut line = String::new();
    loop {
        line.clear();
        match std::io::stdin().read_line(&mut line) {
            // End of input (e.g. started with </dev/null): keep relaying until killed.
            Ok(0) => loop {
                std::thread::park();
            },
            Ok(_) => {
                if !command(&h, &line) {
                    break;
                }
            }
            Err(e) => {
                eprintln!("faultline-relay: stdin: {e}");
                break;
            }
        }
    }
    print_stats(&h);
    ExitCode::SUCCESS
}
