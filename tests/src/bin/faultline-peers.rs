//! `faultline-peers`: the servers an agent measures at a real site, on loopback, each
//! behind its own impairment relay with a WAN-like delay — a Kamailio answering SIP
//! OPTIONS, a coturn answering STUN, the test kit's DNS server, a STAMP reflector
//! (`faultline-agent reflect`, with `--agent`) — and a TCP listener that accepts
//! and closes. For benchmarks that need every target answering for real.
//!
//! ```text
//! faultline-peers --agent target/agent/faultline-agent --sip "delay=30ms,jitter=2ms"
//! ```
//! Prints shell assignments on stdout once everything answers, then `READY=1`:
//! `SIP=127.0.0.1:P` (the relay in front of Kamailio, UDP), `STUN=`, `DNS=` (UDP; the
//! name to ask is in `DNS_NAME`), `STAMP=` (with `--agent`), `TCP=` (no relay: TCP is
//! not delayed), and `*_PATH='SPEC'` with each relay's impairment per direction. Runs
//! until a `quit` line on stdin, SIGTERM, SIGINT or its parent's exit (so a script
//! that dies leaves nothing behind; stdin at its end is not a stop: a background
//! job's stdin is /dev/null); then stops every server (Kamailio's forked workers
//! included).

use std::io::BufRead;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use faultline_tests::coturn::Coturn;
use faultline_tests::dns::DnsServer;
use faultline_tests::kamailio::Kamailio;
use faultline_tests::relay::{Impairment, Relay};
use faultline_tests::{Child, free_udp_port, wait_until};

const USAGE: &str = "usage: faultline-peers [--agent PATH] [--seed N] \
[--sip SPEC] [--stun SPEC] [--dns SPEC] [--stamp SPEC]
  SPEC (each direction): delay=30ms,jitter=2ms,loss=1%,... | none
  defaults: dns delay=20ms,jitter=2ms  stamp delay=25ms,jitter=3ms
            sip delay=30ms,jitter=2ms  stun delay=40ms,jitter=2ms
  --agent: a faultline-agent binary, run as `reflect` for the STAMP peer";

/// The name the DNS server answers with an A record (any `*.example.test` does).
const DNS_NAME: &str = "sip.voipco.example.test";

#[derive(Debug)]
struct Args {
    agent: Option<PathBuf>,
    seed: u64,
    sip: Impairment,
    stun: Impairment,
    dns: Impairment,
    stamp: Impairment,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    // The defaults parse: fixed strings checked by running the binary.
    let spec = |s: &str| s.parse::<Impairment>().unwrap();
    let mut a = Args {
        agent: None,
        seed: 1,
        sip: spec("delay=30ms,jitter=2ms"),
        stun: spec("delay=40ms,jitter=2ms"),
        dns: spec("delay=20ms,jitter=2ms"),
        stamp: spec("delay=25ms,jitter=3ms"),
    };
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--agent" => a.agent = Some(value.into()),
            "--seed" => a.seed = value.parse().map_err(|e| bad(&e))?,
            "--sip" => a.sip = value.parse().map_err(|e| bad(&e))?,
            "--stun" => a.stun = value.parse().map_err(|e| bad(&e))?,
            "--dns" => a.dns = value.parse().map_err(|e| bad(&e))?,
            "--stamp" => a.stamp = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(a)
}

/// A relay in front of `upstream` with `imp` both ways.
fn relay(upstream: SocketAddr, imp: Impairment, seed: u64) -> Result<Relay, String> {
    let r = Relay::loopback(upstream, seed).map_err(|e| format!("relay to {upstream}: {e}"))?;
    r.set_both(imp).map_err(|e| e.to_string())?;
    Ok(r)
}

/// A TCP listener on loopback that accepts every connection and closes it (what a
/// `tcp` probe's connect needs), on its own thread for the life of the process.
fn tcp_listener() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("TCP listener: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for conn in l.incoming() {
            drop(conn);
        }
    });
    Ok(addr)
}

/// `faultline-agent reflect` on a free loopback port, once it answers.
fn reflector(agent: &PathBuf) -> Result<(Child, SocketAddr), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let child = Child::spawn(
        "faultline-agent reflect",
        Command::new(agent)
            .arg("reflect")
            .arg("--listen")
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    )
    .map_err(|e| format!("{}: {e}", agent.display()))?;
    // Bound: nothing else may take the port after this.
    let bound = wait_until(Duration::from_secs(10), || UdpSocket::bind(addr).is_err());
    if !bound {
        return Err(format!("the reflector did not bind {addr}"));
    }
    Ok((child, addr))
}

/// Blocks until a `quit` line on stdin, SIGTERM, SIGINT, or the parent's exit.
fn wait_for_stop() {
    let (tx, rx) = mpsc::channel::<()>();
    let stdin_tx = tx.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "quit" => {
                    let _ = stdin_tx.send(());
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let parent_tx = tx.clone();
    std::thread::spawn(move || {
        let parent = std::os::unix::process::parent_id();
        while std::os::unix::process::parent_id() == parent {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = parent_tx.send(());
    });
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("faultline-peers: no signal handling: {e}");
                return;
            }
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                eprintln!("faultline-peers: cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = tx.send(());
        });
    });
    let _ = rx.recv();
}

fn run(args: &Args) -> Result<(), String> {
    let missing = |what: &str| format!("{what} is not installed (bash .ci/install-deps)");
    let kamailio = Kamailio::start().ok_or_else(|| missing("kamailio"))?;
    let coturn = Coturn::start().ok_or_else(|| missing("coturn (turnserver)"))?;
    let dns = DnsServer::start();
    let stamp = args.agent.as_ref().map(reflector).transpose()?;
    let tcp = tcp_listener()?;

    let mut relays = vec![
        ("SIP", relay(kamailio.addr(), args.sip, args.seed)?),
        ("STUN", relay(coturn.addr(), args.stun, args.seed + 1)?),
        ("DNS", relay(dns.addr(), args.dns, args.seed + 2)?),
    ];
    if let Some((_, addr)) = &stamp {
        relays.push(("STAMP", relay(*addr, args.stamp, args.seed + 3)?));
    }
    let path = |key: &str| match key {
        "SIP" => args.sip,
        "STUN" => args.stun,
        "DNS" => args.dns,
        _ => args.stamp,
    };
    for (key, r) in &relays {
        println!("{key}={}", r.addr());
        println!("{key}_PATH='{}'", path(key));
    }
    println!("DNS_NAME={DNS_NAME}");
    println!("TCP={tcp}");
    println!("READY=1");
    wait_for_stop();
    // Relays first (no more traffic), then the servers; all by drop.
    drop(relays);
    drop(stamp);
    drop((kamailio, coturn, dns));
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("faultline-peers: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faultline-peers: {e}");
            ExitCode::from(1)
        }
    }
}
