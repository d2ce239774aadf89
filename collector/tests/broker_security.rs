//! The collector's side of an authenticated broker: `mqtts://` with a CA, client
//! certificate and a password file against a real Mosquitto that requires them, and
//! the embedded broker, which refuses to listen beyond loopback without logins and,
//! with them, takes only its logins, each with its own client id.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use faultline_tests::certs::TestPki;
use faultline_tests::{
    Child, Mosquitto, TempDir, free_tcp_port, require, wait_for_tcp, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
}

/// A running collector whose stderr goes to a file.
struct Collector {
    child: Child,
    http: SocketAddr,
    log: PathBuf,
}

impl Collector {
    fn start(dir: &Path, config: &str) -> Self {
        let path = dir.join("collector.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("collector.log");
        let child = Child::spawn(
            "faultline-collector",
            bin()
                .args(["run", "--config"])
                .arg(&path)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        )
        .unwrap();
        let http = http_of(config);
        let mut c = Self { child, http, log };
        assert!(
            wait_until(LONG, || TcpStream::connect(c.http).is_ok()
                || !c.child.is_running()),
            "collector HTTP did not come up"
        );
        assert!(c.child.is_running(), "collector exited:\n{}", c.log());
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn reports(&self) -> u64 {
        counter(self.http, "\"reports\":")
    }
}

/// The `[http] listen` address in a config text.
fn http_of(config: &str) -> SocketAddr {
    let mut in_http = false;
    for l in config.lines() {
        if l.starts_with('[') {
            in_http = l == "[http]";
        } else if in_http && let Some(v) = l.strip_prefix("listen = ") {
            return v.trim_matches('"').parse().unwrap();
        }
    }
    panic!("no [http] listen in the test config");
}

fn counter(http: SocketAddr, key: &str) -> u64 {
    let Ok(mut s) = TcpStream::connect(http) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(LONG));
    let _ = write!(
        s,
        "GET /api/counters HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once(key)
        .and_then(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn report(site: &str, seq: u32) -> String {
    format!(
        r#"{{"v":1,"site":"{site}","boot":9,"seq":{seq},"start_ms":0,"window_ms":1000,"probes":[{{"target":"gw","layer":"lan","kind":"icmp","sent":4,"received":4}}]}}"#
    )
}

fn pub_args(port: u16, login: Option<(&str, &str)>, id: Option<&str>) -> Vec<String> {
    let mut a = vec![
        "-h".to_owned(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-q".into(),
        "1".into(),
    ];
    if let Some((u, p)) = login {
        a.extend(["-u".into(), u.into(), "-P".into(), p.into()]);
    }
    if let Some(id) = id {
        a.extend(["-i".into(), id.into()]);
    }
    a
}

fn mosquitto_pub(args: &[String], topic: &str, msg: &str) -> bool {
    Command::new("mosquitto_pub")
        .args(args)
        .args(["-t", topic, "-m", msg])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn passwd(dir: &Path, file: &str, logins: &[(&str, &str)]) {
    for (i, (u, p)) in logins.iter().enumerate() {
        let mut c = Command::new("mosquitto_passwd");
        if i == 0 {
            c.arg("-c");
        }
        assert!(
            c.arg("-b")
                .arg(dir.join(file))
                .args([u, p])
                .status()
                .unwrap()
                .success()
        );
    }
}

#[test]
fn the_collector_speaks_mqtts_with_a_client_certificate_and_a_password_file() {
    if require("mosquitto_passwd", "mosquitto").is_none()
        || require("mosquitto_pub", "mosquitto-clients").is_none()
    {
        return;
    }
    let dir = TempDir::new("collector-tls");
    let d = dir.path();
    let Some(pki) = TestPki::new(d) else { return };
    let (cert, key) = pki.client("faultline-collector");
    passwd(
        d,
        "passwd",
        &[
            ("faultline-collector", "c-secret"),
            ("faultline-collector-in", "c-secret"),
            ("acme-hq", "a-secret"),
        ],
    );
    std::fs::write(d.join("mqtt.password"), "c-secret\n").unwrap();
    let tls_port = free_tcp_port();
    // Mutual TLS and passwords on the collector's listener; agents (here: the test)
    // publish on the broker's plain one.
    let Some(broker) = Mosquitto::start_with(&format!(
        "user root\nallow_anonymous false\npassword_file {d}/passwd\n\
         listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
         require_certificate true\nuse_username_as_clientid true\n",
        d = d.display(),
        ca = pki.ca.display(),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
    )) else {
        return;
    };
    assert!(wait_for_tcp(
        SocketAddr::from(([127, 0, 0, 1], tls_port)),
        LONG
    ));
    let http = free_tcp_port();
    let config = |client_auth: &str| {
        format!(
            "window_seconds = 1\n[mqtt]\nurl = \"mqtts://localhost:{tls_port}\"\n\
             ca_file = \"ca.pem\"\n{client_auth}username = \"faultline-collector\"\n\
             password_file = \"mqtt.password\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n[storage]\npath = \"history.db\"\n"
        )
    };
    let out = bin()
        .args(["check", "--config"])
        .arg({
            let p = d.join("check.toml");
            std::fs::write(
                &p,
                config(&format!(
                    "client_cert = \"{}\"\nclient_key = \"{}\"\n",
                    cert.display(),
                    key.display()
                )),
            )
            .unwrap();
            p
        })
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("mqtts://localhost") && said.contains("client certificate"),
        "{said}"
    );

    // Without its certificate the broker refuses the collector: it says so and retries.
    let mut c = Collector::start(d, &config(""));
    assert!(
        wait_until(LONG, || c.log().contains("retrying in")),
        "no connection error logged:\n{}",
        c.log()
    );
    assert_eq!(c.reports(), 0);
    c.child.kill();

    let mut c = Collector::start(
        d,
        &config(&format!(
            "client_cert = \"{}\"\nclient_key = \"{}\"\n",
            cert.display(),
            key.display()
        )),
    );
    let plain = pub_args(broker.port, Some(("acme-hq", "a-secret")), None);
    let mut seq = 0;
    assert!(
        wait_until(LONG, || {
            seq += 1;
            mosquitto_pub(
                &plain,
                "faultline/v1/sites/acme-hq/report/json",
                &report("acme-hq", seq),
            );
            c.reports() >= 1
        }),
        "no report reached the collector over TLS:\n{}",
        c.log()
    );
    // Its publishing connection (the other login) announced it over TLS too.
    let status = Command::new("mosquitto_sub")
        .args(pub_args(broker.port, Some(("acme-hq", "a-secret")), None))
        .args(["-t", "faultline/v1/collector/status", "-C", "1", "-W", "30"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("\"online\""),
        "{status:?}"
    );
    assert!(c.child.is_running());
    assert!(!c.log().contains("retrying in"), "{}", c.log());
    c.child.signal("TERM");
    assert!(c.child.wait_timeout(LONG).is_some_and(|s| s.success()));
}

#[test]
fn the_embedded_broker_refuses_a_public_listen_without_logins() {
    let dir = TempDir::new("embedded-public");
    let d = dir.path();
    let (v4, v5, http) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let config = d.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{http}\"\n[storage]\npath = \"h.db\"\n\
             [broker]\nlisten = \"0.0.0.0:{v4}\"\nlisten_v5 = \"127.0.0.1:{v5}\"\n"
        ),
    )
    .unwrap();
    for cmd in ["check", "run"] {
        let out = bin()
            .args([cmd, "--config"])
            .arg(&config)
            .current_dir(d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains("c.toml:6: broker.listen:") && err.contains("password_file"),
            "{cmd}: {err}"
        );
    }
    // Nothing was started.
    assert!(TcpStream::connect(("127.0.0.1", v4)).is_err());
    assert!(TcpStream::connect(("127.0.0.1", http)).is_err());
}

#[test]
fn with_logins_the_embedded_broker_takes_each_login_only_as_itself() {
    if require("mosquitto_passwd", "mosquitto").is_none()
        || require("mosquitto_pub", "mosquitto-clients").is_none()
    {
        return;
    }
    let dir = TempDir::new("embedded-logins");
    let d = dir.path();
    passwd(
        d,
        "broker.passwd",
        &[("acme-hq", "a-secret"), ("bobs-bakery", "b-secret")],
    );
    let (v4, v5, http) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let config = format!(
        "window_seconds = 1\n[http]\nlisten = \"127.0.0.1:{http}\"\n[storage]\npath = \"h.db\"\n\
         [broker]\nlisten = \"0.0.0.0:{v4}\"\nlisten_v5 = \"127.0.0.1:{v5}\"\n\
         password_file = \"broker.passwd\"\n"
    );
    std::fs::write(d.join("check.toml"), &config).unwrap();
    let out = bin()
        .args(["check", "--config", "check.toml"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("logins from") && said.contains("(2)"),
        "{said}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning: "),
        "no warning about the missing TLS"
    );

    let mut c = Collector::start(d, &config);
    assert!(wait_for_tcp(SocketAddr::from(([127, 0, 0, 1], v4)), LONG));
    // It says at startup what it takes.
    assert!(
        wait_until(LONG, || c.log().contains("logins from")),
        "{}",
        c.log()
    );
    let topic = "faultline/v1/sites/acme-hq/report/json";
    // The collector's own client (with its per-run login) is connected once a
    // report from acme-hq, as itself, is counted.
    let mut seq = 0;
    assert!(
        wait_until(LONG, || {
            seq += 1;
            mosquitto_pub(
                &pub_args(v4, Some(("acme-hq", "a-secret")), Some("faultline-acme-hq")),
                topic,
                &report("acme-hq", seq),
            );
            c.reports() >= 1
        }),
        "{}",
        c.log()
    );
    let before = c.reports();
    let refused = [
        (None, Some("acme-hq")),
        (Some(("acme-hq", "wrong")), Some("acme-hq")),
        (Some(("nobody", "a-secret")), Some("nobody")),
        // Right password, someone else's id.
        (Some(("bobs-bakery", "b-secret")), Some("faultline-acme-hq")),
        (Some(("bobs-bakery", "b-secret")), Some("acme-hq")),
        (
            Some(("bobs-bakery", "b-secret")),
            Some("faultline-collector-in"),
        ),
        (
            Some(("bobs-bakery", "b-secret")),
            Some("faultline-collector"),
        ),
        // The collector's own login name is not in the file's gift.
        (
            Some(("faultline-collector", "b-secret")),
            Some("faultline-collector"),
        ),
    ];
    for (login, id) in refused {
        assert!(
            !mosquitto_pub(
                &pub_args(v4, login, id),
                topic,
                &report("acme-hq", 1_000_000)
            ),
            "connected as {login:?} with client id {id:?}"
        );
    }
    assert!(mosquitto_pub(
        &pub_args(v4, Some(("bobs-bakery", "b-secret")), Some("bobs-bakery")),
        "faultline/v1/sites/bobs-bakery/report/json",
        &report("bobs-bakery", 1)
    ));
    assert!(wait_until(LONG, || c.reports() > before));
    assert_eq!(c.reports(), before + 1, "a refused client's report counted");
    assert!(c.log().contains("login refused"), "{}", c.log());
    // The collector was never kicked off its own connection by those attempts.
    assert!(c.child.is_running());
    c.child.signal("TERM");
    assert!(c.child.wait_timeout(LONG).is_some_and(|s| s.success()));
}
