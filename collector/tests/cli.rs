//! The command line: `check` exit codes and messages, `replay` on bad input,
//! `report` over a history, and `run` with the embedded broker.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use faultline_tests::{Child, TempDir, free_tcp_port, wait_for_tcp, wait_until};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
}

#[test]
fn check_accepts_the_example_and_names_field_and_line_when_bad() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/collector.toml");
    let out = bin().args(["check", "--config", example]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = TempDir::new("check");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[http]\nlisten = \"127.0.0.1:8080\"\n\n[providers.voipco]\nalternate = \"nobody\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:5: providers.voipco.alternate:"),
        "{err}"
    );

    std::fs::write(&bad, "window_seconds = \"ten\"\n").unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml:1"));
}

#[test]
fn replay_refuses_lines_that_go_back_in_time_and_names_the_line() {
    let dir = TempDir::new("replay");
    let f = dir.path().join("in.jsonl");
    std::fs::write(
        &f,
        "{\"at_ms\": 20000, \"topic\": \"faultline/v1/sites/a/status\", \"payload\": {\"state\": \"online\"}}\n\
         {\"at_ms\": 10000, \"topic\": \"faultline/v1/sites/a/status\", \"payload\": {\"state\": \"online\"}}\n",
    )
    .unwrap();
    let out = bin().args(["replay", "--input"]).arg(&f).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}

#[test]
fn embedded_broker_serves_agents_and_the_collector() {
    let dir = TempDir::new("embedded");
    let (v4, v5, http) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "window_seconds = 1\n[http]\nlisten = \"127.0.0.1:{http}\"\n[storage]\npath = \"{}\"\n\
             [broker]\nlisten = \"127.0.0.1:{v4}\"\nlisten_v5 = \"127.0.0.1:{v5}\"\n",
            dir.path().join("h.db").display()
        ),
    )
    .unwrap();
    let mut c = Child::spawn(
        "faultline-collector",
        bin()
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    )
    .unwrap();
    let http: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    assert!(wait_for_tcp(http, Duration::from_secs(60)));
    assert!(wait_for_tcp(
        format!("127.0.0.1:{v4}").parse().unwrap(),
        Duration::from_secs(60)
    ));

    // An MQTT 3.1.1 client (as agents and mosquitto_pub are) publishes a status and
    // a report, then reads the retained verdict back.
    let mut opts = MqttOptions::new("agent-like", "127.0.0.1", v4);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 100);
    client
        .subscribe("faultline/v1/state/sites/+", QoS::AtLeastOnce)
        .unwrap();
    let report = r#"{"v":1,"site":"solo","boot":1,"seq":0,"start_ms":0,"window_ms":1000,
        "probes":[{"target":"gw","layer":"lan","kind":"icmp","sent":4,"received":4}]}"#;
    let got = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    *g.lock().unwrap() = String::from_utf8_lossy(&p.payload).into_owned();
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    let ok = wait_until(Duration::from_secs(60), || {
        let _ = client.publish(
            "faultline/v1/sites/solo/report/json",
            QoS::AtLeastOnce,
            false,
            report.replace("\"seq\":0", &format!("\"seq\":{}", fastrand::u32(..))),
        );
        std::thread::sleep(Duration::from_millis(300));
        got.lock().unwrap().contains("\"id\":\"solo\"")
    });
    assert!(ok, "no verdict through the embedded broker");
    assert!(c.is_running());
    c.signal("TERM");
    assert!(
        c.wait_timeout(Duration::from_secs(30)).is_some(),
        "did not stop on SIGTERM"
    );
}
