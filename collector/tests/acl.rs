//! The shipped Mosquitto config (`collector/deploy/mosquitto.conf` with
//! `mosquitto-agents.acl` and `mosquitto-internal.acl`) does what it says, checked
//! against a real Mosquitto running that file (paths and ports rewritten, nothing
//! else): each login speaks only for itself. An agent writes only its own site and
//! reads only its own config and verdict; no login takes over another client's id;
//! the reader cannot publish reports; strangers cannot connect; and the collector
//! itself runs behind it with its two logins.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use faultline_tests::certs::TestPki;
use faultline_tests::{
    Child, Mosquitto, TempDir, free_tcp_port, http_get, require, wait_for_tcp, wait_until,
    workspace_bin,
};

const LONG: Duration = Duration::from_secs(30);

/// Logins of the test broker: (user, password).
const COLLECTOR: (&str, &str) = ("faultline-collector", "c-secret");
const COLLECTOR_IN: (&str, &str) = ("faultline-collector-in", "c-secret");
const READER: (&str, &str) = ("faultline-reader", "r-secret");
const ACME: (&str, &str) = ("acme-hq", "a-secret");
const BOBS: (&str, &str) = ("bobs-bakery", "b-secret");

/// Which listener of the shipped config.
#[derive(Clone, Copy)]
enum On {
    /// 8883 in the shipped file: TLS, agents.
    Agents,
    /// 1883 on loopback: the collector and tools.
    Internal,
}

/// A Mosquitto running the shipped config.
struct Shipped {
    broker: Mosquitto,
    agents_port: u16,
    pki: TestPki,
    dir: TempDir,
}

impl Shipped {
    fn start() -> Option<Self> {
        let pw = require("mosquitto_passwd", "mosquitto")?;
        require("mosquitto_pub", "mosquitto-clients")?;
        require("mosquitto_sub", "mosquitto-clients")?;
        let dir = TempDir::new("acl");
        let d = dir.path();
        std::fs::create_dir_all(d.join("certs")).unwrap();
        let pki = TestPki::new(&d.join("certs"))?;
        std::fs::copy(&pki.server_cert, d.join("certs/broker.crt")).unwrap();
        std::fs::copy(&pki.server_key, d.join("certs/broker.key")).unwrap();
        std::fs::copy(&pki.ca, d.join("certs/ca.crt")).unwrap();
        let passwd = |file: &str, logins: &[(&str, &str)]| {
            for (i, (user, pass)) in logins.iter().enumerate() {
                let mut c = Command::new(&pw);
                if i == 0 {
                    c.arg("-c");
                }
                let st = c
                    .arg("-b")
                    .arg(d.join(file))
                    .args([user, pass])
                    .status()
                    .unwrap();
                assert!(st.success(), "mosquitto_passwd {user}");
            }
        };
        passwd(
            "faultline-internal.passwd",
            &[COLLECTOR, COLLECTOR_IN, READER],
        );
        passwd("faultline-agents.passwd", &[ACME, BOBS]);
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        std::fs::copy(
            deploy.join("mosquitto-agents.acl"),
            d.join("faultline-agents.acl"),
        )
        .unwrap();
        std::fs::copy(
            deploy.join("mosquitto-internal.acl"),
            d.join("faultline-internal.acl"),
        )
        .unwrap();
        let (internal_port, agents_port) = (free_tcp_port(), free_tcp_port());
        let conf = shipped_conf(d, internal_port, agents_port);
        let broker = Mosquitto::start_conf(internal_port, &conf)?;
        assert!(
            wait_for_tcp(SocketAddr::from(([127, 0, 0, 1], agents_port)), LONG),
            "the agents' listener did not come up"
        );
        Some(Self {
            broker,
            agents_port,
            pki,
            dir,
        })
    }

    fn port(&self, on: On) -> u16 {
        match on {
            On::Agents => self.agents_port,
            On::Internal => self.broker.port,
        }
    }

    /// Connection arguments for mosquitto_pub/sub as `login` on `on`.
    fn args(&self, on: On, login: (&str, &str)) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port(on).to_string(),
            "-q".into(),
            "1".into(),
        ];
        if !login.0.is_empty() {
            a.extend(["-u".into(), login.0.into(), "-P".into(), login.1.into()]);
        }
        if let On::Agents = on {
            a.extend(["--cafile".into(), self.pki.ca.display().to_string()]);
        }
        a
    }

    /// One publish; true when mosquitto_pub connected and sent it (a publish the ACL
    /// denies is still acknowledged, then dropped, in MQTT 3.1.1).
    fn publish(&self, on: On, login: (&str, &str), extra: &[&str], topic: &str, msg: &str) -> bool {
        Command::new("mosquitto_pub")
            .args(self.args(on, login))
            .args(extra)
            .args(["-t", topic, "-m", msg])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// A subscriber printing `topic payload` lines to a file.
    fn subscribe(
        &self,
        name: &str,
        on: On,
        login: (&str, &str),
        extra: &[&str],
        topics: &[&str],
    ) -> Sub {
        let out = self.dir.path().join(format!("{name}.txt"));
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(self.args(on, login))
            .args(["-v", "-k", "5"])
            .args(extra);
        for t in topics {
            cmd.args(["-t", t]);
        }
        let child = Child::spawn(
            name,
            cmd.stdout(std::fs::File::create(&out).unwrap())
                .stderr(Stdio::null()),
        )
        .unwrap();
        Sub { child, out }
    }
}

/// The shipped mosquitto.conf with its paths under `dir` and its two listeners on
/// free loopback ports; the test harness adds only logging and `user root` (so the
/// broker can read the temporary files when the tests run as root).
fn shipped_conf(dir: &Path, internal_port: u16, agents_port: u16) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mosquitto.conf"),
    )
    .unwrap();
    let d = dir.display();
    let mut conf = String::new();
    for line in shipped.lines() {
        let line = match line {
            "listener 8883" => format!("listener {agents_port} 127.0.0.1"),
            "listener 1883 127.0.0.1" => format!("listener {internal_port} 127.0.0.1"),
            l if l.starts_with("persistence_location ") => format!("persistence_location {d}/"),
            l => l.replace("/etc/mosquitto/", &format!("{d}/")),
        };
        assert!(
            line.starts_with('#') || !line.contains("/etc/") && !line.contains("/var/"),
            "unrewritten path: {line}"
        );
        conf.push_str(&line);
        conf.push('\n');
    }
    conf.push_str("user root\nlog_dest stderr\nlog_type error\nlog_type warning\n");
    conf
}

struct Sub {
    child: Child,
    out: PathBuf,
}

impl Sub {
    fn seen(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
    fn wait_for(&self, what: &str) {
        assert!(
            wait_until(LONG, || self.seen().contains(what)),
            "{} never saw {what:?}; saw:\n{}",
            self.child.name(),
            self.seen()
        );
    }
    fn running(&mut self) -> bool {
        self.child.is_running()
    }
}

/// Waits until `sub` (a subscriber to `faultline/v1/#` as a collector login) is
/// subscribed: it sees the collector's own marker.
fn ready(b: &Shipped, sub: &Sub, marker: &str) {
    assert!(
        wait_until(LONG, || {
            b.publish(
                On::Internal,
                COLLECTOR,
                &[],
                "faultline/v1/collector/status",
                marker,
            );
            sub.seen().contains(marker)
        }),
        "{} never subscribed",
        sub.child.name()
    );
}

#[test]
fn each_agent_writes_only_its_own_site() {
    let Some(b) = Shipped::start() else { return };
    let all = b.subscribe(
        "ingest",
        On::Internal,
        COLLECTOR_IN,
        &[],
        &["faultline/v1/#"],
    );
    ready(&b, &all, "ready");

    let own = [
        ("faultline/v1/sites/acme-hq/report/json", "own-report"),
        ("faultline/v1/sites/acme-hq/report", "own-postcard"),
        ("faultline/v1/sites/acme-hq/status", "own-status"),
        (
            "faultline/v1/sites/acme-hq/config/status",
            "own-config-status",
        ),
    ];
    for (topic, msg) in own {
        assert!(b.publish(On::Agents, ACME, &[], topic, msg), "{topic}");
    }
    // Denied publishes are acknowledged and dropped (MQTT 3.1.1).
    let forged = [
        (
            "faultline/v1/sites/bobs-bakery/report/json",
            "forged-report",
        ),
        ("faultline/v1/sites/bobs-bakery/status", "forged-status"),
        ("faultline/v1/sites/acme-hq/config", "forged-own-config"),
        ("faultline/v1/state/providers/voipco", "forged-verdict"),
        ("faultline/v1/state/sites/acme-hq", "forged-own-verdict"),
        ("faultline/v1/events/incidents", "forged-event"),
        ("faultline/v1/collector/status", "forged-collector"),
    ];
    for (topic, msg) in forged {
        b.publish(On::Agents, ACME, &[], topic, msg);
    }
    assert!(!b.publish(
        On::Agents,
        (ACME.0, "wrong"),
        &[],
        "faultline/v1/sites/acme-hq/report/json",
        "bad-password"
    ));
    assert!(!b.publish(
        On::Agents,
        ("", ""),
        &[],
        "faultline/v1/sites/acme-hq/report/json",
        "anonymous"
    ));
    // Agents' logins do not exist on the collector's listener.
    assert!(!b.publish(
        On::Internal,
        ACME,
        &[],
        "faultline/v1/sites/acme-hq/report/json",
        "agent-on-internal"
    ));
    assert!(!b.publish(
        On::Internal,
        ("", ""),
        &[],
        "faultline/v1/sites/x/report/json",
        "anonymous-internal"
    ));
    // mosquitto_pub returns after the broker acknowledged each publish, so
    // everything above was handled before this.
    assert!(b.publish(
        On::Agents,
        BOBS,
        &[],
        "faultline/v1/sites/bobs-bakery/report/json",
        "bobs-own"
    ));
    all.wait_for("bobs-own");
    let text = all.seen();
    for (_, msg) in own {
        assert!(text.contains(msg), "{msg} missing:\n{text}");
    }
    for msg in forged.iter().map(|(_, m)| *m).chain([
        "bad-password",
        "anonymous",
        "agent-on-internal",
        "anonymous-internal",
    ]) {
        assert!(!text.contains(msg), "{msg} got through:\n{text}");
    }
}

#[test]
fn the_reader_reads_but_cannot_publish_reports() {
    let Some(b) = Shipped::start() else { return };
    let all = b.subscribe(
        "ingest",
        On::Internal,
        COLLECTOR_IN,
        &[],
        &["faultline/v1/#"],
    );
    ready(&b, &all, "ready");
    assert!(b.publish(
        On::Internal,
        COLLECTOR,
        &["-r"],
        "faultline/v1/state/providers/voipco",
        "a-verdict"
    ));
    let reader = b.subscribe(
        "reader",
        On::Internal,
        READER,
        &[],
        &["faultline/v1/state/#"],
    );
    reader.wait_for("a-verdict");
    // One connection per login: the subscriber would fight the publishes below.
    drop(reader);
    // Its own "site" (what the %u patterns leaked before), another site, a verdict.
    for (topic, msg) in [
        (
            "faultline/v1/sites/faultline-reader/report/json",
            "reader-own-site",
        ),
        (
            "faultline/v1/sites/faultline-reader/report",
            "reader-own-postcard",
        ),
        ("faultline/v1/sites/acme-hq/report/json", "reader-as-acme"),
        ("faultline/v1/sites/acme-hq/status", "reader-status"),
        ("faultline/v1/state/providers/voipco", "reader-verdict"),
    ] {
        b.publish(On::Internal, READER, &[], topic, msg);
    }
    // The reader's login does not exist on the agents' listener.
    assert!(!b.publish(
        On::Agents,
        READER,
        &[],
        "faultline/v1/sites/faultline-reader/report/json",
        "reader-on-agents"
    ));
    assert!(!b.publish(
        On::Agents,
        COLLECTOR,
        &[],
        "faultline/v1/state/providers/voipco",
        "collector-on-agents"
    ));
    assert!(b.publish(
        On::Agents,
        ACME,
        &[],
        "faultline/v1/sites/acme-hq/report/json",
        "acme-marker"
    ));
    all.wait_for("acme-marker");
    let text = all.seen();
    for msg in [
        "reader-own-site",
        "reader-own-postcard",
        "reader-as-acme",
        "reader-status",
        "reader-verdict",
        "reader-on-agents",
        "collector-on-agents",
    ] {
        assert!(!text.contains(msg), "{msg} got through:\n{text}");
    }
}

#[test]
fn agents_read_only_their_own_config_and_verdict() {
    let Some(b) = Shipped::start() else { return };
    let retained = [
        ("faultline/v1/state/sites/acme-hq", "acme-verdict"),
        ("faultline/v1/state/sites/bobs-bakery", "bobs-verdict"),
        ("faultline/v1/state/providers/voipco", "provider-verdict"),
        ("faultline/v1/state/isps/Comcast", "isp-verdict"),
        ("faultline/v1/sites/acme-hq/config", "acme-config-1"),
        ("faultline/v1/sites/bobs-bakery/config", "bobs-config"),
        ("faultline/v1/collector/status", "collector-online"),
    ];
    for (topic, msg) in retained {
        assert!(
            b.publish(On::Internal, COLLECTOR, &["-r"], topic, msg),
            "{topic}"
        );
    }
    // Everything is there (a reader sees it all).
    let reader = b.subscribe("reader", On::Internal, READER, &[], &["faultline/v1/#"]);
    for (_, msg) in retained {
        reader.wait_for(msg);
    }
    // acme-hq asks for everything, and for other customers' verdicts by name.
    let acme = b.subscribe(
        "acme",
        On::Agents,
        ACME,
        &[],
        &[
            "faultline/v1/#",
            "faultline/v1/state/#",
            "faultline/v1/state/sites/bobs-bakery",
            "faultline/v1/sites/acme-hq/config",
            "faultline/v1/state/sites/acme-hq",
        ],
    );
    acme.wait_for("acme-verdict");
    acme.wait_for("acme-config-1");
    // New messages after the retained ones: once acme sees its own config change,
    // anything else it could read has arrived too.
    b.publish(
        On::Internal,
        COLLECTOR,
        &[],
        "faultline/v1/events/incidents",
        "an-event",
    );
    b.publish(
        On::Agents,
        BOBS,
        &[],
        "faultline/v1/sites/bobs-bakery/report/json",
        "bobs-report",
    );
    // The collector's reading login writes nothing (here, where no subscriber
    // shares its login and client id).
    for (topic, msg) in [
        (
            "faultline/v1/sites/collector-in/report/json",
            "ingest-login-report",
        ),
        ("faultline/v1/state/sites/acme-hq", "ingest-login-verdict"),
    ] {
        b.publish(On::Internal, COLLECTOR_IN, &[], topic, msg);
    }
    assert!(b.publish(
        On::Internal,
        COLLECTOR,
        &["-r"],
        "faultline/v1/sites/acme-hq/config",
        "acme-config-2"
    ));
    acme.wait_for("acme-config-2");
    reader.wait_for("acme-config-2");
    let text = reader.seen();
    for msg in ["ingest-login-report", "ingest-login-verdict"] {
        assert!(!text.contains(msg), "{msg} got through:\n{text}");
    }
    let text = acme.seen();
    for msg in [
        "bobs-verdict",
        "provider-verdict",
        "isp-verdict",
        "bobs-config",
        "collector-online",
        "an-event",
        "bobs-report",
    ] {
        assert!(!text.contains(msg), "acme-hq read {msg}:\n{text}");
    }
}

#[test]
fn no_login_takes_over_another_clients_id() {
    let Some(b) = Shipped::start() else { return };
    // Every connection of a login has that login as client id, so the collector's
    // login publishes only before its victim connection exists and after it is gone.
    let all = b.subscribe(
        "ingest",
        On::Internal,
        COLLECTOR_IN,
        &["-i", "faultline-collector-in", "-c"],
        &["faultline/v1/#"],
    );
    ready(&b, &all, "ready");
    assert!(b.publish(
        On::Internal,
        COLLECTOR,
        &["-r"],
        "faultline/v1/sites/acme-hq/config",
        "config-1"
    ));
    // Two victims with last wills: an agent, and the collector's publishing login.
    let will = |topic: &'static str, payload: &'static str| {
        [
            "--will-topic",
            topic,
            "--will-payload",
            payload,
            "--will-qos",
            "1",
        ]
    };
    let mut acme_args = vec!["-i", "faultline-acme-hq", "-c"];
    acme_args.extend(will("faultline/v1/sites/acme-hq/status", "acme-will-fired"));
    let mut acme = b.subscribe(
        "acme",
        On::Agents,
        ACME,
        &acme_args,
        &["faultline/v1/sites/acme-hq/config"],
    );
    acme.wait_for("config-1");
    let mut coll_args = vec!["-i", "faultline-collector"];
    coll_args.extend(will(
        "faultline/v1/collector/status",
        "collector-will-fired",
    ));
    let mut coll = b.subscribe(
        "collector",
        On::Internal,
        COLLECTOR,
        &coll_args,
        &["faultline/v1/sites/bobs-bakery/#"],
    );
    assert!(
        wait_until(LONG, || {
            b.publish(
                On::Agents,
                BOBS,
                &[],
                "faultline/v1/sites/bobs-bakery/report/json",
                "hello",
            );
            coll.seen().contains("hello")
        }),
        "the collector-login victim never subscribed"
    );

    // Every other login tries every victim's id.
    let ids = [
        "faultline-acme-hq",
        "acme-hq",
        "faultline-collector",
        "faultline-collector-in",
    ];
    for id in ids {
        assert!(
            b.publish(
                On::Agents,
                BOBS,
                &["-i", id],
                "faultline/v1/sites/bobs-bakery/report/json",
                &format!("bobs-as-{id}")
            ),
            "bobs-bakery could not connect at all with client id {id}"
        );
        assert!(b.publish(
            On::Internal,
            READER,
            &["-i", id],
            "faultline/v1/state/x",
            "reader-denied"
        ));
    }
    // A takeover fires the victim's will while the attacker connects, before the
    // attacker's own publish: once the last of those is here, so would a will be.
    assert!(b.publish(
        On::Agents,
        BOBS,
        &[],
        "faultline/v1/sites/bobs-bakery/report/json",
        "after"
    ));
    all.wait_for("after");
    coll.wait_for("after");
    let text = all.seen();
    for id in ids {
        assert!(text.contains(&format!("bobs-as-{id}")), "{id}:\n{text}");
    }
    assert!(
        !text.contains("acme-will-fired"),
        "acme-hq was kicked off:\n{text}"
    );
    assert!(
        !text.contains("collector-will-fired"),
        "the collector was kicked off:\n{text}"
    );
    assert!(acme.running() && coll.running());
    // The wills are real: ending a victim fires its will.
    coll.child.kill();
    all.wait_for("collector-will-fired");
    // And acme-hq's session is still the one receiving its config.
    assert!(b.publish(
        On::Internal,
        COLLECTOR,
        &["-r"],
        "faultline/v1/sites/acme-hq/config",
        "config-2"
    ));
    acme.wait_for("config-2");
    acme.child.kill();
    all.wait_for("acme-will-fired");
}

/// The collector behind the shipped config: its two logins connect, an agent's
/// report counts, a report sent with the reader's login or for another site does not.
#[test]
fn the_collector_runs_behind_the_shipped_config() {
    let Some(b) = Shipped::start() else { return };
    let dir = TempDir::new("acl-collector");
    let d = dir.path();
    std::fs::write(d.join("mqtt.password"), format!("{}\n", COLLECTOR.1)).unwrap();
    let http = free_tcp_port();
    let config = d.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "window_seconds = 1\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n\
             username = \"faultline-collector\"\npassword_file = \"mqtt.password\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n[storage]\npath = \"history.db\"\n",
            port = b.broker.port,
        ),
    )
    .unwrap();
    let _collector = Child::spawn(
        "faultline-collector",
        Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
            .args(["run", "--config"])
            .arg(&config)
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    )
    .unwrap();
    let http = SocketAddr::from(([127, 0, 0, 1], http));
    assert!(wait_for_tcp(http, LONG));
    // Its publishing login announces it (retained, so a late subscriber sees it).
    let watch = b.subscribe(
        "watch",
        On::Internal,
        READER,
        &[],
        &["faultline/v1/collector/status"],
    );
    watch.wait_for("\"online\"");
    drop(watch);
    let report = |site: &str, seq: u32| {
        format!(
            r#"{{"v":1,"site":"{site}","boot":7,"seq":{seq},"start_ms":0,"window_ms":1000,"probes":[{{"target":"gw","layer":"lan","kind":"icmp","sent":4,"received":4}}]}}"#
        )
    };
    // Its reading login (a second session, not the first kicked off) receives; the
    // report is re-sent until the ingest subscription is up.
    let mut seq = 0;
    assert!(
        wait_until(LONG, || {
            seq += 1;
            b.publish(
                On::Agents,
                ACME,
                &[],
                "faultline/v1/sites/acme-hq/report/json",
                &report("acme-hq", seq),
            );
            counter(http, "\"reports\":") >= 1
        }),
        "the collector never counted acme-hq's report"
    );
    let before = counter(http, "\"reports\":");
    // Forged: the reader's "site" and acme writing for bobs-bakery. Then one more
    // real report: once it is counted, the forged ones would have been too.
    b.publish(
        On::Internal,
        READER,
        &[],
        "faultline/v1/sites/faultline-reader/report/json",
        &report("faultline-reader", 1),
    );
    b.publish(
        On::Agents,
        ACME,
        &[],
        "faultline/v1/sites/bobs-bakery/report/json",
        &report("bobs-bakery", 1),
    );
    assert!(b.publish(
        On::Agents,
        ACME,
        &[],
        "faultline/v1/sites/acme-hq/report/json",
        // Past every seq the loop above may have sent (it stops at its first
        // counted report, within LONG), yet plausibly close behind them.
        &report("acme-hq", seq + 1_000)
    ));
    assert!(wait_until(LONG, || counter(http, "\"reports\":") > before));
    assert_eq!(counter(http, "\"reports\":"), before + 1);
    let counters = http_get(http, "/api/counters");
    assert_eq!(counter(http, "\"rejected\":"), 0, "{counters}");
}

/// A real agent behind the shipped config: over TLS on the agents' listener, with the
/// default client id (which the broker replaces by its login), its reports reach the
/// collector and its status (and last will) topic is its own.
#[test]
fn a_real_agent_and_the_collector_work_behind_the_shipped_config() {
    let Some(b) = Shipped::start() else { return };
    let agent_bin = workspace_bin("faultline-agent");
    let dir = TempDir::new("acl-agent");
    let d = dir.path();
    std::fs::write(d.join("mqtt.password"), format!("{}\n", COLLECTOR.1)).unwrap();
    std::fs::write(d.join("agent.password"), format!("{}\n", ACME.1)).unwrap();
    let http = free_tcp_port();
    std::fs::write(
        d.join("collector.toml"),
        format!(
            "window_seconds = 1\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n\
             username = \"faultline-collector\"\npassword_file = \"mqtt.password\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n[storage]\npath = \"history.db\"\n",
            port = b.broker.port,
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "site = \"acme-hq\"\nisp = \"LoopNet\"\nwindow_seconds = 1\nformat = \"json\"\n\
             state_dir = \"state\"\n[mqtt]\nurl = \"mqtts://localhost:{port}\"\n\
             username = \"acme-hq\"\npassword_file = \"agent.password\"\nca_file = \"{ca}\"\n\
             reconnect_max_seconds = 2\n\
             [[target]]\nname = \"broker\"\nlayer = \"isp\"\nkind = \"tcp\"\nhost = \"127.0.0.1:{port}\"\n",
            port = b.agents_port,
            ca = b.pki.ca.display(),
        ),
    )
    .unwrap();
    let _collector = Child::spawn(
        "faultline-collector",
        Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
            .args(["run", "--config", "collector.toml"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    )
    .unwrap();
    let http = SocketAddr::from(([127, 0, 0, 1], http));
    assert!(wait_for_tcp(http, LONG));
    let all = b.subscribe(
        "watch",
        On::Internal,
        READER,
        &[],
        &["faultline/v1/sites/#"],
    );
    let mut agent = Child::spawn(
        "faultline-agent",
        Command::new(&agent_bin)
            .args(["run", "--config", "agent.toml"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    )
    .unwrap();
    all.wait_for("faultline/v1/sites/acme-hq/status {\"state\":\"online\"");
    assert!(
        wait_until(LONG, || counter(http, "\"reports\":") >= 3),
        "the agent's reports did not reach the collector"
    );
    assert_eq!(counter(http, "\"rejected\":"), 0);
    // Sites show in /api/state as of the latest evaluation.
    assert!(wait_until(LONG, || http_get(http, "/api/state")
        .contains("\"acme-hq\"")));
    // A clean stop publishes its own offline status.
    agent.signal("TERM");
    assert!(agent.wait_timeout(LONG).is_some_and(|s| s.success()));
    all.wait_for("\"shutdown\"");
}

/// A number after `key` in `/api/counters`.
fn counter(http: SocketAddr, key: &str) -> u64 {
    let body = http_get(http, "/api/counters");
    body.split_once(key)
        .and_then(|(_, rest)| {
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}
