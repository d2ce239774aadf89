//! `faultline-collector demo` end to end: real agents, reflectors and relays, a short
//! scripted voipco outage. The demo must report the outage with failover to voipco2,
//! then the recovery, stop on SIGINT with exit 0, and leave no child process behind.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use faultline_tests::{Child, TempDir, free_tcp_port, workspace_bin};

#[test]
fn demo_runs_real_agents_through_an_outage_and_stops_cleanly() {
    // Both binaries in the same target directory: the demo finds the agent beside it.
    let _agent = workspace_bin("faultline-agent");
    let collector = workspace_bin("faultline-collector");
    let dir = TempDir::new("demo");
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "window_seconds = 2\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n\
             [storage]\npath = \"{db}\"\n\
             [broker]\nlisten = \"127.0.0.1:{v4}\"\nlisten_v5 = \"127.0.0.1:{v5}\"\n\
             [thresholds]\nlatency_margin_ms = 250.0\nhost_cpu_pct = 101.0\n\
             [providers.voipco]\nalternate = \"voipco2\"\n[providers.voipco2]\n",
            http = free_tcp_port(),
            db = dir.path().join("history.db").display(),
            v4 = free_tcp_port(),
            v5 = free_tcp_port(),
        ),
    )
    .expect("write collector.toml");
    let mut demo = Child::spawn(
        "faultline-collector demo",
        Command::new(&collector)
            .args([
                "demo",
                "--outage-after",
                "4",
                "--outage-for",
                "6",
                "--config",
            ])
            .arg(&config)
            .env("FAULTLINE_LOG", "warn,rumqttd=off")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("spawn the demo");
    let stdout = demo
        .inner_mut()
        .and_then(|c| c.stdout.take())
        .expect("demo stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut pids: Vec<i32> = Vec::new();
    let mut seen = Vec::new();
    let (mut outage, mut recovered) = (false, false);
    let end = Instant::now() + Duration::from_secs(120);
    while !recovered && Instant::now() < end {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if let Some(p) = line.strip_prefix("demo: pids ") {
            pids = p
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
        }
        if line.contains("provider voipco OUTAGE") && line.contains("failover to voipco2") {
            outage = true;
        }
        if outage && line.ends_with("provider voipco ok") {
            recovered = true;
        }
        assert!(
            !line.contains("provider voipco2 OUTAGE"),
            "the alternate must stay up: {line}"
        );
        seen.push(line);
    }
    assert!(
        outage && recovered,
        "no voipco outage with failover and recovery in:\n{}",
        seen.join("\n")
    );
    // The outage names the pages to look at.
    assert!(
        seen.iter().any(|l| l.contains("see http://")
            && l.contains("/sites/")
            && l.contains("/incidents/inc-")),
        "no page links printed with the outage:\n{}",
        seen.join("\n")
    );
    assert_eq!(pids.len(), 12, "6 agents and 6 reflectors: {seen:?}");
    assert!(
        pids.iter().all(|&p| alive(p)),
        "children running before SIGINT"
    );

    demo.signal("INT");
    let status = demo
        .wait_timeout(Duration::from_secs(20))
        .expect("the demo stops within 20 s of SIGINT");
    assert!(status.success(), "demo exit status {status:?}");
    let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "children outlived the demo: {left:?}");
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
