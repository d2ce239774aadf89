//! The real agent binary publishing through a real Mosquitto: reports and status arrive,
//! the last will and the clean-stop status behave, and no window is lost across a broker
//! outage, with the broker's state kept and without.
//!
//! Nothing here sleeps to guess at timing: the tests wait for observed events. The only
//! fixed sleep is the outage itself, whose length is the point of the test.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faultline_shared::{Kind, OfflineReason, Report, Status, StatusState};
use faultline_tests::{
    Child, Mosquitto, TempDir, free_tcp_port, require, wait_until, workspace_bin,
};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

const SITE: &str = "lab-1";
const REPORT: &str = "faultline/v1/sites/lab-1/report";
const REPORT_JSON: &str = "faultline/v1/sites/lab-1/report/json";
const STATUS: &str = "faultline/v1/sites/lab-1/status";
/// Mosquitto started as root drops to the `mosquitto` user, which cannot write its
/// persistence file into our temporary folder; keep it root so `restart(true)` really
/// keeps the broker's state (sessions and queued messages).
const KEEP_STATE_AS_ROOT: &str = "user root";
/// Generous: these tests must pass on a slow, shared machine.
const LONG: Duration = Duration::from_secs(90);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One message as the subscriber saw it.
#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// A rumqttc subscriber with a persistent session that reconnects quickly and
/// resubscribes after every connect.
struct Subscriber {
    msgs: Arc<Mutex<Vec<Msg>>>,
    subacks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    client: Client,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    fn start(port: u16, id: &str, persistent: bool, filters: &[&str]) -> Self {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(!persistent);
        Self::start_with(opts, filters)
    }

    fn start_with(mut opts: MqttOptions, filters: &[&str]) -> Self {
        let id = opts.client_id();
        opts.set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(opts, 64);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let subacks = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let thread = {
            let (msgs, subacks, stop, client) =
                (msgs.clone(), subacks.clone(), stop.clone(), client.clone());
            std::thread::spawn(move || {
                for ev in conn.iter() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            for f in &filters {
                                let _ = client.try_subscribe(f.as_str(), QoS::AtLeastOnce);
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subacks.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            msgs.lock().unwrap().push(Msg {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            });
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
        };
        let sub = Self {
            msgs,
            subacks,
            stop,
            client,
            thread: Some(thread),
        };
        assert!(
            wait_until(LONG, || sub.subacks() > 0),
            "subscriber {id} did not subscribe"
        );
        sub
    }

    fn subacks(&self) -> usize {
        self.subacks.load(Ordering::SeqCst)
    }

    fn messages(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    fn on(&self, topic: &str) -> Vec<Msg> {
        self.messages()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    fn reports(&self) -> Vec<Report> {
        self.on(REPORT)
            .iter()
            .map(|m| faultline_shared::decode(&m.payload).expect("a valid postcard report"))
            .collect()
    }

    fn statuses(&self) -> Vec<(Status, bool)> {
        self.on(STATUS)
            .iter()
            .map(|m| {
                (
                    serde_json::from_slice(&m.payload).expect("a valid status"),
                    m.retain,
                )
            })
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP gate in front of the broker for the agent: closed, it refuses the agent's
/// connections; open, it relays them. It lets a test decide that the subscriber is
/// back before the agent can reconnect, instead of racing them. Silenced, it keeps
/// the connections it relays open but drops every byte both ways (a broker or a NAT
/// that stopped answering without closing anything).
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Gate {
    fn new(broker_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(false));
        let silent = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Vec::new()));
        {
            let (open, silent, live) = (open.clone(), silent.clone(), live.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if !open.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let mut l = live.lock().unwrap();
                    l.push(client.try_clone().unwrap());
                    l.push(broker.try_clone().unwrap());
                    pipe(
                        client.try_clone().unwrap(),
                        broker.try_clone().unwrap(),
                        silent.clone(),
                    );
                    pipe(broker, client, silent.clone());
                }
            });
        }
        Self {
            port,
            open,
            silent,
            live,
        }
    }

    fn open(&self) {
        self.silent.store(false, Ordering::SeqCst);
        self.open.store(true, Ordering::SeqCst);
    }

    /// Refuses new connections; the ones relayed now stay open and carry nothing.
    fn silence(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.silent.store(true, Ordering::SeqCst);
    }

    /// Refuses new connections and cuts the ones relayed now.
    fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` → `to` until either side closes, then closes both; while `silent`,
/// what it reads is dropped.
fn pipe(mut from: TcpStream, mut to: TcpStream, silent: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if silent.load(Ordering::SeqCst) => {}
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// Writes an agent config with 1 s windows and no targets (reports carry host health
/// only: the outage tests are about delivery, not probes).
fn config(dir: &Path, port: u16, extra_top: &str) -> PathBuf {
    config_with_targets(dir, port, extra_top, "")
}

fn config_with_targets(dir: &Path, port: u16, extra_top: &str, targets: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "site = \"{SITE}\"\ncustomer = \"Lab\"\nisp = \"LoopNet\"\nwindow_seconds = 1\nstate_dir = \"state\"\n{extra_top}\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nreconnect_max_seconds = 2\n{targets}"
        ),
    )
    .unwrap();
    path
}

fn spawn_agent(dir: &Path, config: &Path) -> Child {
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    Child::spawn(
        "faultline-agent",
        Command::new(workspace_bin("faultline-agent"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log),
    )
    .expect("spawn faultline-agent")
}

fn agent_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
}

/// A fresh, clean-session subscriber's view of the retained status.
fn retained_status(port: u16, id: &str) -> Status {
    let sub = Subscriber::start(port, id, false, &[STATUS]);
    assert!(
        wait_until(LONG, || !sub.statuses().is_empty()),
        "no retained status"
    );
    let (status, retained) = sub.statuses().remove(0);
    assert!(retained, "status must be retained");
    status
}

#[test]
fn reports_arrive_with_status_last_will_and_clean_stop() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("agent-delivery");
    // One real probe, so reports carry a measured target through the run loop: TCP
    // connect time to the broker's own port.
    let target = format!(
        "[[target]]\nname = \"broker-tcp\"\nlayer = \"lan\"\nkind = \"tcp\"\nhost = \"127.0.0.1:{}\"\n",
        broker.port
    );
    let cfg = config_with_targets(dir.path(), broker.port, "", &target);
    let sub = Subscriber::start(broker.port, "test-watch", false, &[REPORT, STATUS]);

    let mut agent = spawn_agent(dir.path(), &cfg);
    assert!(
        wait_until(LONG, || sub.reports().len() >= 3),
        "no reports; agent log:\n{}",
        agent_log(dir.path())
    );
    let reports = sub.reports();
    let boot = reports[0].boot;
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r.site, SITE);
        assert_eq!(r.boot, boot);
        assert_eq!(r.seq, i as u64, "seq counts windows from 0");
        assert_eq!(r.window_ms, 1_000);
        assert_eq!(
            r.start_ms % 1_000,
            0,
            "windows are aligned to the wall clock"
        );
        assert_eq!(r.probes.len(), 1);
        let p = &r.probes[0];
        assert_eq!((p.target.as_str(), p.kind), ("broker-tcp", Kind::Tcp));
        assert!(p.sent >= 1 && p.received == p.sent, "{p:?}");
        assert!(p.error.is_none() && p.rtt_ms.is_some(), "{p:?}");
        let host = r.host.expect("host health");
        assert!((0.0..=100.0).contains(&host.cpu_pct));
        assert!(host.mem_pct > 0.0 && host.mem_pct <= 100.0);
    }
    // Consecutive windows, unless the machine stalled the agent for seconds.
    assert!(reports.windows(2).all(|w| w[1].start_ms > w[0].start_ms));

    let online = retained_status(broker.port, "test-retained-1");
    assert_eq!(online.state, StatusState::Online);
    assert_eq!(online.boot, Some(boot));
    assert_eq!(online.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(online.isp.as_ref().map(|i| i.as_str()), Some("LoopNet"));
    assert_eq!(online.customer.as_deref(), Some("Lab"));

    // SIGKILL: the broker publishes the last will, offline/lost.
    agent.signal("KILL");
    assert!(agent.wait_timeout(LONG).is_some());
    let lost = Status::offline(OfflineReason::Lost);
    assert!(
        wait_until(LONG, || sub.statuses().iter().any(|(s, _)| *s == lost)),
        "no last will; statuses: {:?}",
        sub.statuses()
    );
    assert_eq!(retained_status(broker.port, "test-retained-2"), lost);

    // A new start has a new boot; SIGTERM publishes offline/shutdown and exits 0.
    let mut agent = spawn_agent(dir.path(), &cfg);
    assert!(
        wait_until(LONG, || sub.reports().iter().any(|r| r.boot != boot)),
        "no reports after restart; agent log:\n{}",
        agent_log(dir.path())
    );
    assert!(wait_until(LONG, || {
        retained_status(broker.port, "test-retained-3").state == StatusState::Online
    }));
    agent.signal("TERM");
    let status = agent.wait_timeout(LONG).expect("agent stops on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let shutdown = Status::offline(OfflineReason::Shutdown);
    assert!(
        wait_until(LONG, || sub.statuses().iter().any(|(s, _)| *s == shutdown)),
        "no offline/shutdown; statuses: {:?}",
        sub.statuses()
    );
    assert_eq!(retained_status(broker.port, "test-retained-4"), shutdown);
    let log = agent_log(dir.path());
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(!log.contains("offline/lost"), "{log}");
}

#[test]
fn json_format_publishes_reports_on_report_json() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("agent-json");
    let cfg = config(dir.path(), broker.port, "format = \"json\"");
    let sub = Subscriber::start(broker.port, "test-json", false, &[REPORT, REPORT_JSON]);
    let mut agent = spawn_agent(dir.path(), &cfg);
    assert!(
        wait_until(LONG, || sub.on(REPORT_JSON).len() >= 2),
        "no JSON reports; agent log:\n{}",
        agent_log(dir.path())
    );
    for (i, m) in sub.on(REPORT_JSON).iter().enumerate() {
        let r: Report = serde_json::from_slice(&m.payload).expect("Report JSON");
        assert_eq!((r.site.as_str(), r.seq), (SITE, i as u64));
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["v"], 1);
        assert!(v["host"]["cpu_pct"].is_number());
    }
    assert!(sub.on(REPORT).is_empty(), "JSON format sends no postcard");
    agent.signal("TERM");
    assert!(agent.wait_timeout(LONG).expect("stops").success());
}

/// Windows per (boot, seq), counting duplicates.
fn seen(sub: &Subscriber) -> BTreeMap<(u32, u64), usize> {
    let mut m = BTreeMap::new();
    for r in sub.reports() {
        *m.entry((r.boot, r.seq)).or_insert(0) += 1;
    }
    m
}

/// True when the seqs of `boot` run 0..=max without a gap.
fn contiguous(seen: &BTreeMap<(u32, u64), usize>, boot: u32) -> bool {
    seen.keys()
        .filter(|(b, _)| *b == boot)
        .enumerate()
        .all(|(i, &(_, seq))| seq == i as u64)
}

fn no_window_lost_across_a_broker_outage(keep_state: bool) {
    let Some(mut broker) = Mosquitto::start_with(KEEP_STATE_AS_ROOT) else {
        return;
    };
    let tag = if keep_state { "kept" } else { "wiped" };
    let dir = TempDir::new(&format!("agent-outage-{tag}"));
    let gate = Gate::new(broker.port);
    let sub = Subscriber::start(broker.port, &format!("test-outage-{tag}"), true, &[REPORT]);
    gate.open();
    let cfg = config(dir.path(), gate.port, "");
    let mut agent = spawn_agent(dir.path(), &cfg);

    assert!(
        wait_until(LONG, || seen(&sub).len() >= 3),
        "no reports before the outage; agent log:\n{}",
        agent_log(dir.path())
    );
    let boot = seen(&sub).keys().next().unwrap().0;

    // The outage: the broker goes away for 15 s while the agent keeps measuring.
    gate.close();
    broker.stop();
    let outage_start = now_ms();
    std::thread::sleep(Duration::from_secs(15));
    assert!(agent.is_running(), "the agent must ride out the outage");
    let subacks = sub.subacks();
    broker.restart(keep_state);
    // The subscriber resubscribes first (without kept state the broker forgot its
    // session), then the agent may reconnect and resend.
    assert!(
        wait_until(LONG, || sub.subacks() > subacks),
        "subscriber did not resubscribe"
    );
    gate.open();
    let reopened = now_ms();

    // Wait for a window that began after the agent could reconnect, and for every
    // window before it.
    assert!(
        wait_until(LONG, || {
            let s = seen(&sub);
            let late = sub.reports().iter().any(|r| r.start_ms >= reopened + 2_000);
            late && contiguous(&s, boot)
        }),
        "windows missing after the outage: seen {:?}\nagent log:\n{}",
        seen(&sub).keys().map(|k| k.1).collect::<Vec<_>>(),
        agent_log(dir.path())
    );
    let s = seen(&sub);
    let reports = sub.reports();
    let during = reports
        .iter()
        .filter(|r| r.start_ms >= outage_start && r.start_ms + 1_000 <= reopened)
        .count();
    assert!(
        during >= 10,
        "{during} windows measured during the outage arrived"
    );
    let dups: usize = s.values().map(|n| n - 1).sum();
    let last = s.keys().next_back().unwrap().1;
    eprintln!(
        "broker state {tag}: windows 0..={last} all arrived ({during} from the outage), {dups} duplicates"
    );
    assert!(s.keys().all(|(b, _)| *b == boot));

    agent.signal("TERM");
    assert!(agent.wait_timeout(LONG).expect("stops").success());
    let log = agent_log(dir.path());
    let present = format!("(session present: {keep_state})");
    assert!(
        log.lines()
            .any(|l| l.contains("reconnected to") && l.contains(&present)),
        "the broker's state was {tag}: want a reconnect with {present}\n{log}"
    );
}

#[test]
fn no_window_lost_when_the_broker_restarts_with_its_state() {
    no_window_lost_across_a_broker_outage(true);
}

#[test]
fn no_window_lost_when_the_broker_restarts_without_its_state() {
    no_window_lost_across_a_broker_outage(false);
}

/// Runs `cmd` in `dir`, panicking with its output when it fails.
/// The broker stops answering without closing the connection: the agent notices
/// within its keepalive (nothing it sent was answered), drops the connection,
/// reconnects when it can, and every window still arrives.
#[test]
fn a_broker_that_stops_answering_is_left_and_nothing_is_lost() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("agent-silent");
    let gate = Gate::new(broker.port);
    let sub = Subscriber::start(broker.port, "test-silent", true, &[REPORT]);
    gate.open();
    let cfg = config_with_targets(dir.path(), gate.port, "", "keepalive_seconds = 5\n");
    let mut agent = spawn_agent(dir.path(), &cfg);
    assert!(
        wait_until(LONG, || seen(&sub).len() >= 2),
        "no reports; agent log:\n{}",
        agent_log(dir.path())
    );
    let boot = seen(&sub).keys().next().unwrap().0;

    gate.silence();
    assert!(
        wait_until(LONG, || agent_log(dir.path())
            .contains("timed out waiting for the broker to answer")),
        "the agent did not notice the silent broker; agent log:\n{}",
        agent_log(dir.path())
    );
    let reopened = now_ms();
    gate.open();
    assert!(
        wait_until(LONG, || {
            let late = sub.reports().iter().any(|r| r.start_ms >= reopened + 2_000);
            late && contiguous(&seen(&sub), boot)
        }),
        "windows missing after the silence: seen {:?}\nagent log:\n{}",
        seen(&sub).keys().map(|k| k.1).collect::<Vec<_>>(),
        agent_log(dir.path())
    );
    agent.signal("TERM");
    assert!(agent.wait_timeout(LONG).expect("stops").success());
}

fn sh(dir: &Path, cmd: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mutual_tls_with_username_and_password() {
    if require("openssl", "openssl").is_none() || require("mosquitto_passwd", "mosquitto").is_none()
    {
        return;
    }
    let dir = TempDir::new("agent-tls");
    let d = dir.path();
    // A test CA, a server certificate for localhost and a client certificate for
    // mutual TLS (client.pem / client.key).
    let pki = faultline_tests::certs::TestPki::new(d).expect("openssl is there");
    pki.client("client");
    sh(
        d,
        "mosquitto_passwd -b -c passwd lab-1 'correct horse' && mosquitto_passwd -b passwd watcher w",
    );
    std::fs::write(d.join("password"), "correct horse\n").unwrap();
    std::fs::write(d.join("wrong"), "battery staple\n").unwrap();
    let tls_port = free_tcp_port();
    let Some(broker) = Mosquitto::start_with(&format!(
        "user root\nallow_anonymous false\npassword_file {dir}/passwd\n\
         listener {tls_port} 127.0.0.1\ncafile {dir}/ca.pem\ncertfile {dir}/server.pem\n\
         keyfile {dir}/server.key\nrequire_certificate true\n",
        dir = d.display()
    )) else {
        return;
    };
    assert!(faultline_tests::wait_for_tcp(
        std::net::SocketAddr::from(([127, 0, 0, 1], tls_port)),
        LONG
    ));
    let mut opts = MqttOptions::new("test-tls-watch", "127.0.0.1", broker.port);
    opts.set_credentials("watcher", "w");
    let sub = Subscriber::start_with(opts, &[REPORT, STATUS]);

    let cfg = |name: &str, password: &str| {
        let path = d.join(name);
        std::fs::write(
            &path,
            format!(
                "site = \"{SITE}\"\nisp = \"LoopNet\"\nwindow_seconds = 1\nstate_dir = \"state\"\n[mqtt]\n\
                 url = \"mqtts://localhost:{tls_port}\"\nusername = \"{SITE}\"\n\
                 password_file = \"{password}\"\nca_file = \"ca.pem\"\n\
                 client_cert = \"client.pem\"\nclient_key = \"client.key\"\nreconnect_max_seconds = 2\n"
            ),
        )
        .unwrap();
        path
    };

    // A wrong password: the agent says why, keeps measuring and retrying, sends nothing.
    let wrong = cfg("wrong.toml", "wrong");
    let mut agent = spawn_agent(d, &wrong);
    assert!(
        wait_until(LONG, || agent_log(d).contains("refused the connection")),
        "{}",
        agent_log(d)
    );
    assert!(agent.is_running());
    assert!(sub.reports().is_empty());
    agent.kill();

    // No client certificate: the broker requires one, so nothing gets through.
    let no_cert = d.join("no-cert.toml");
    let text = std::fs::read_to_string(cfg("tmp.toml", "password")).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("client_"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&no_cert, text).unwrap();
    let mut agent = spawn_agent(d, &no_cert);
    assert!(
        wait_until(LONG, || agent_log(d).contains("retrying in")),
        "{}",
        agent_log(d)
    );
    assert!(sub.reports().is_empty(), "{}", agent_log(d));
    agent.kill();

    let good = cfg("agent.toml", "password");
    let mut agent = spawn_agent(d, &good);
    assert!(
        wait_until(LONG, || sub.reports().len() >= 2),
        "no reports over TLS; agent log:\n{}",
        agent_log(d)
    );
    assert!(
        sub.statuses()
            .iter()
            .any(|(s, _)| s.state == StatusState::Online)
    );
    agent.signal("TERM");
    assert!(agent.wait_timeout(LONG).expect("stops").success());
}

#[test]
fn stops_cleanly_while_the_broker_is_unreachable() {
    let dir = TempDir::new("agent-offline-stop");
    // Nothing listens on this port: the agent keeps measuring and retrying.
    let cfg = config(dir.path(), free_tcp_port(), "");
    let mut agent = spawn_agent(dir.path(), &cfg);
    assert!(
        wait_until(LONG, || agent_log(dir.path()).contains("cannot connect to")),
        "{}",
        agent_log(dir.path())
    );
    assert!(wait_until(LONG, || agent_log(dir.path()).contains("report queued")));
    agent.signal("TERM");
    let status = agent.wait_timeout(LONG).expect("stops on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(agent_log(dir.path()).contains("were not delivered"));
}

// ------------------------------------------------------------ the durable outbox

/// The seqs the agent logged as durably stored ("report stored seq=N").
fn stored_seqs(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("report stored"))
        .filter_map(|l| {
            let rest = &l[l.find("seq=")? + 4..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The boot id from the agent's start line ("…, boot N, …").
fn boot_of(log: &str) -> u32 {
    log.lines()
        .find_map(|l| {
            let rest = &l[l.find(", boot ")? + 7..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no boot in the agent's log:\n{log}"))
}

/// The outbox's segment files, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("state/outbox"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "seg"));
    v.sort();
    v
}

/// Runs the agent with the broker unreachable until it has stored at least `n`
/// windows, then SIGKILLs it (a crash or power cut: no clean stop). Returns its boot
/// and the seqs it had stored; its log is kept as `agent-1.log`.
fn crash_while_offline(dir: &Path, cfg: &Path, n: usize) -> (u32, Vec<u64>) {
    let mut agent = spawn_agent(dir, cfg);
    assert!(
        wait_until(LONG, || stored_seqs(&agent_log(dir)).len() >= n),
        "the agent stored nothing; log:\n{}",
        agent_log(dir)
    );
    agent.kill();
    let log = agent_log(dir);
    std::fs::rename(dir.join("agent.log"), dir.join("agent-1.log")).unwrap();
    (boot_of(&log), stored_seqs(&log))
}

/// The agent is SIGKILLed while the broker is unreachable and started again: once the
/// broker is reachable, every window either boot stored arrives, the first boot's with
/// its own boot and seq.
#[test]
fn every_window_of_both_boots_arrives_after_a_sigkill_while_offline() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("agent-sigkill");
    let d = dir.path();
    let gate = Gate::new(broker.port);
    let sub = Subscriber::start(broker.port, "test-sigkill", true, &[REPORT]);
    let cfg = config(d, gate.port, "");
    let (boot1, stored1) = crash_while_offline(d, &cfg, 4);

    let mut agent = spawn_agent(d, &cfg);
    assert!(
        wait_until(LONG, || stored_seqs(&agent_log(d)).len() >= 2),
        "{}",
        agent_log(d)
    );
    let log2 = agent_log(d);
    assert!(
        log2.contains(&format!(
            "undelivered reports from earlier runs (boots [{boot1}])"
        )),
        "the restarted agent must say what it found:\n{log2}"
    );
    let boot2 = boot_of(&log2);
    assert_ne!(boot1, boot2);
    assert!(wait_until(LONG, || sub.subacks() > 0));
    gate.open();
    let reopened = now_ms();
    assert!(
        wait_until(LONG, || {
            let s = seen(&sub);
            let late = sub
                .reports()
                .iter()
                .any(|r| r.boot == boot2 && r.start_ms >= reopened + 2_000);
            late && contiguous(&s, boot2) && stored1.iter().all(|q| s.contains_key(&(boot1, *q)))
        }),
        "windows missing: boot {boot1} stored {stored1:?}, seen {:?}\nagent log:\n{}",
        seen(&sub).keys().collect::<Vec<_>>(),
        agent_log(d)
    );
    let s = seen(&sub);
    assert!(contiguous(&s, boot1), "boot {boot1}: {:?}", s.keys());
    eprintln!(
        "boot {boot1}: {} windows stored before SIGKILL, all arrived; boot {boot2}: seqs 0..={} arrived",
        stored1.len(),
        s.keys()
            .filter(|k| k.0 == boot2)
            .map(|k| k.1)
            .max()
            .unwrap()
    );
    agent.signal("TERM");
    assert!(agent.wait_timeout(LONG).expect("stops").success());
    assert!(
        agent_log(d).contains("every report delivered"),
        "{}",
        agent_log(d)
    );
}

/// A power cut mid-write leaves half a record at the end of a segment, and a record
/// damaged on flash fails its checksum: the agent starts anyway, says what it skipped,
/// and sends every intact window.
#[test]
fn a_torn_tail_and_a_corrupt_record_are_skipped_and_the_rest_delivered() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("agent-torn");
    let d = dir.path();
    let gate = Gate::new(broker.port);
    let sub = Subscriber::start(broker.port, "test-torn", true, &[REPORT]);
    let cfg = config(d, gate.port, "");
    let (boot1, stored1) = crash_while_offline(d, &cfg, 4);

    let seg = segments(d).pop().expect("a segment file");
    let mut bytes = std::fs::read(&seg).unwrap();
    // Record 1 (seq 1): flip its last payload byte. Records are length-prefixed after
    // an 8-byte magic: [len u32][crc u32][body: format, boot, seq, payload].
    let len0 = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let start1 = 8 + 8 + len0;
    let len1 = u32::from_le_bytes(bytes[start1..start1 + 4].try_into().unwrap()) as usize;
    bytes[start1 + 8 + len1 - 1] ^= 0x55;
    // And half a record at the end, as a cut-short append leaves it.
    bytes.extend_from_slice(&200u32.to_le_bytes());
    bytes.extend_from_slice(&[0xAB; 40]);
    std::fs::write(&seg, &bytes).unwrap();

    assert!(wait_until(LONG, || sub.subacks() > 0));
    gate.open();
    let mut agent = spawn_agent(d, &cfg);
    assert!(
        wait_until(LONG, || {
            let s = seen(&sub);
            stored1
                .iter()
                .filter(|&&q| q != 1)
                .all(|q| s.contains_key(&(boot1, *q)))
        }),
        "intact windows of boot {boot1} missing: stored {stored1:?}, seen {:?}\n{}",
        seen(&sub).keys().collect::<Vec<_>>(),
        agent_log(d)
    );
    assert!(
        agent_log(d).contains("skipped 1 damaged records and 1 cut-short writes"),
        "{}",
        agent_log(d)
    );
    assert!(
        !seen(&sub).contains_key(&(boot1, 1)),
        "a damaged record must not be sent"
    );
    agent.signal("TERM");
    assert!(agent.wait_timeout(LONG).expect("stops").success());
}

/// With the broker unreachable longer than the outbox holds, the oldest windows are
/// dropped (and said so); the newest are kept and delivered without a gap.
#[test]
fn a_full_outbox_drops_the_oldest_and_delivers_the_rest() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("agent-full");
    let d = dir.path();
    let gate = Gate::new(broker.port);
    let sub = Subscriber::start(broker.port, "test-full", true, &[REPORT]);
    let cfg = config(d, gate.port, "outbox_capacity = 3");
    let mut agent = spawn_agent(d, &cfg);
    assert!(
        wait_until(LONG, || stored_seqs(&agent_log(d)).len() >= 6),
        "{}",
        agent_log(d)
    );
    assert!(
        agent_log(d).contains("outbox full (3 reports): dropped the oldest"),
        "{}",
        agent_log(d)
    );
    let boot = boot_of(&agent_log(d));
    assert!(wait_until(LONG, || sub.subacks() > 0));
    gate.open();
    let reopened = now_ms();
    assert!(
        wait_until(LONG, || sub
            .reports()
            .iter()
            .any(|r| r.start_ms >= reopened + 2_000)),
        "{}",
        agent_log(d)
    );
    let s = seen(&sub);
    let got: Vec<u64> = s.keys().filter(|k| k.0 == boot).map(|k| k.1).collect();
    assert!(
        !got.contains(&0) && !got.contains(&1) && !got.contains(&2),
        "the oldest were dropped: {got:?}"
    );
    let first = got[0];
    assert!(
        got.iter().enumerate().all(|(i, &q)| q == first + i as u64),
        "what was kept arrives without a gap: {got:?}"
    );
    agent.signal("TERM");
    assert!(agent.wait_timeout(LONG).expect("stops").success());
}
