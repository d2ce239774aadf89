//! The fleet simulator against a real Mosquitto: every report it publishes arrives
//! on the right topic and decodes to what the pure model produced.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use faultline_tests::fleet::{Fault, Fleet, PublishOptions, Script, publish};
use faultline_tests::{Child, Mosquitto, require, wait_until};

#[test]
fn fleet_reports_reach_the_broker_and_decode() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let Some(sub) = require("mosquitto_sub", "mosquitto-clients") else {
        return;
    };
    let sites = 20;
    let windows = 3;
    let script = Script::new().with(
        Fault::ProviderDown {
            provider: faultline_shared::Id::new("voipco").unwrap(),
        },
        1,
        2,
    );
    let mut fleet = Fleet::new(sites, &Fleet::default_isps(), 1000, 1_764_201_600_000, 9)
        .with_script(script.clone());
    let mut expected = fleet.clone();

    // A persistent QoS 1 session subscribed before anything is published (-E: exit
    // once subscribed), so the broker queues every report for it: no race with a
    // subscriber that is still connecting.
    let port = broker.port.to_string();
    let session = [
        "-p",
        &port,
        "-q",
        "1",
        "-c",
        "-i",
        "fleet-test",
        "-t",
        "faultline/v1/sites/+/report",
    ];
    let st = Command::new(&sub).args(session).arg("-E").status().unwrap();
    assert!(st.success(), "mosquitto_sub -E failed");

    let stats = publish(
        &mut fleet,
        &PublishOptions {
            url: broker.url(),
            prefix: "faultline".into(),
            windows: windows as u64,
            realtime: false,
            statuses: true,
        },
    )
    .unwrap();
    assert_eq!(stats.reports, (sites * windows) as u64);
    assert_eq!(stats.statuses, sites as u64);
    assert!(stats.mean_report_bytes() <= 400.0, "{stats:?}");

    // `%t %x`: topic, then the payload in hex, one message a line.
    let count = (sites * windows).to_string();
    let mut child = Child::spawn(
        "mosquitto_sub",
        Command::new(&sub)
            .args(session)
            .args(["-F", "%t %x", "-C", &count, "-W", "30"])
            .stdout(Stdio::piped()),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(40), || !child.is_running()));
    let mut out = String::new();
    child
        .inner_mut()
        .and_then(|c| c.stdout.take())
        .map(|mut s| s.read_to_string(&mut out));
    let mut got = Vec::new();
    for line in out.lines() {
        let (topic, hex) = line.split_once(' ').unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let report = faultline_shared::decode(&bytes).unwrap();
        assert_eq!(topic, format!("faultline/v1/sites/{}/report", report.site));
        got.push(report);
    }
    assert_eq!(got.len(), sites * windows);
    let mut want = Vec::new();
    for seq in 0..windows as u64 {
        want.extend(expected.window(seq));
    }
    assert_eq!(got, want);
    // In window 1 the provider is down everywhere.
    assert!(got.iter().filter(|r| r.seq == 1).all(|r| {
        r.probes
            .iter()
            .any(|p| p.target.as_str() == "voipco-media" && p.received == 0)
    }));
}

#[test]
fn fleet_binary_reports_figures() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let bin = faultline_tests::workspace_bin("faultline-fleet");
    let out = Command::new(bin)
        .args(["--url", &broker.url(), "--sites", "200", "--windows", "2"])
        .args(["--fault", "isp-lossy:isp-a:20%@1..2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("published 400 reports"), "{stdout}");
    let bad = Command::new(faultline_tests::workspace_bin("faultline-fleet"))
        .args(["--url", &broker.url(), "--fault", "meteor@1..2"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
