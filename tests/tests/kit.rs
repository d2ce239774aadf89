//! The test kit's own checks: the broker harness really runs a broker.

use std::time::Duration;

use faultline_tests::{Mosquitto, require, wait_until};

#[test]
fn mosquitto_starts_restarts_and_carries_a_message() {
    let Some(mut broker) = Mosquitto::start() else {
        return;
    };
    let Some(sub) = require("mosquitto_sub", "mosquitto-clients") else {
        return;
    };
    let Some(publ) = require("mosquitto_pub", "mosquitto-clients") else {
        return;
    };
    broker.restart(false);
    let port = broker.port.to_string();
    let out = std::process::Command::new(&sub)
        .args(["-p", &port, "-t", "kit/t", "-C", "1", "-W", "10"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Publish retained so the subscriber gets it whenever it subscribes.
    let ok = wait_until(Duration::from_secs(5), || {
        std::process::Command::new(&publ)
            .args(["-p", &port, "-t", "kit/t", "-r", "-m", "hello"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    assert!(ok, "mosquitto_pub failed");
    let got = out.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello");
}
