//! The shipped Mosquitto ACL (`collector/deploy/mosquitto.acl`) does what it says,
//! checked against a real Mosquitto with a password file: an agent writes only its
//! own site's topics, cannot forge verdicts, and strangers cannot connect.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use faultline_tests::{Child, Mosquitto, TempDir, require, wait_until};

const LONG: Duration = Duration::from_secs(30);

fn passwd(tool: &Path, file: &Path, user: &str, pass: &str, create: bool) {
    let mut c = Command::new(tool);
    if create {
        c.arg("-c");
    }
    let st = c.arg("-b").arg(file).arg(user).arg(pass).status().unwrap();
    assert!(st.success(), "mosquitto_passwd {user}");
}

fn publish(port: u16, user: &str, pass: &str, topic: &str, msg: &str) -> bool {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-u", user, "-P", pass, "-t", topic, "-m", msg])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn each_agent_may_write_only_its_own_site() {
    let (Some(pw), Some(_), Some(_)) = (
        require("mosquitto_passwd", "mosquitto"),
        require("mosquitto_pub", "mosquitto-clients"),
        require("mosquitto_sub", "mosquitto-clients"),
    ) else {
        return;
    };
    let dir = TempDir::new("acl");
    let pwfile = dir.path().join("passwd");
    passwd(&pw, &pwfile, "faultline-collector", "c-secret", true);
    passwd(&pw, &pwfile, "acme-hq", "a-secret", false);
    passwd(&pw, &pwfile, "bobs-bakery", "b-secret", false);
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mosquitto.acl");
    let Some(broker) = Mosquitto::start_with(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\n",
        pwfile.display(),
        acl.display()
    )) else {
        return;
    };
    let port = broker.port.to_string();
    let out = dir.path().join("seen.txt");
    let _sub = Child::spawn(
        "mosquitto_sub",
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-v"])
            .args(["-u", "faultline-collector", "-P", "c-secret"])
            .args(["-t", "faultline/v1/#"])
            .stdout(std::fs::File::create(&out).unwrap()),
    )
    .unwrap();
    let seen = || std::fs::read_to_string(&out).unwrap_or_default();
    // The subscription is up once the collector sees its own marker.
    assert!(
        wait_until(LONG, || {
            publish(
                broker.port,
                "faultline-collector",
                "c-secret",
                "faultline/v1/collector/status",
                "ready",
            );
            seen().contains("ready")
        }),
        "collector subscription never saw its marker"
    );

    assert!(publish(
        broker.port,
        "acme-hq",
        "a-secret",
        "faultline/v1/sites/acme-hq/report/json",
        "own-report"
    ));
    assert!(publish(
        broker.port,
        "acme-hq",
        "a-secret",
        "faultline/v1/sites/acme-hq/status",
        "own-status"
    ));
    // Denied publishes are dropped silently by the broker (MQTT 3.1.1).
    publish(
        broker.port,
        "acme-hq",
        "a-secret",
        "faultline/v1/sites/bobs-bakery/report/json",
        "forged-report",
    );
    publish(
        broker.port,
        "acme-hq",
        "a-secret",
        "faultline/v1/state/providers/voipco",
        "forged-verdict",
    );
    publish(
        broker.port,
        "acme-hq",
        "a-secret",
        "faultline/v1/events/incidents",
        "forged-event",
    );
    assert!(!publish(
        broker.port,
        "acme-hq",
        "wrong",
        "faultline/v1/sites/acme-hq/report/json",
        "bad-password"
    ));
    assert!(!publish(
        broker.port,
        "",
        "",
        "faultline/v1/sites/acme-hq/report/json",
        "anonymous"
    ));
    let anon = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "faultline/v1/sites/x/report/json",
            "-m",
            "anon2",
        ])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!anon.success(), "anonymous clients must be refused");
    assert!(publish(
        broker.port,
        "bobs-bakery",
        "b-secret",
        "faultline/v1/sites/bobs-bakery/report/json",
        "bobs-own"
    ));
    // Messages from one connection arrive in order, so once the last one is here the
    // denied ones would have been too.
    assert!(
        wait_until(LONG, || seen().contains("bobs-own")),
        "{}",
        seen()
    );
    let text = seen();
    assert!(
        text.contains("own-report") && text.contains("own-status"),
        "{text}"
    );
    for forged in [
        "forged-report",
        "forged-verdict",
        "forged-event",
        "bad-password",
        "anonymous",
        "anon2",
    ] {
        assert!(!text.contains(forged), "{forged} got through:\n{text}");
    }
}
