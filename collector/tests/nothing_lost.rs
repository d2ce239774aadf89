//! DESIGN.md "Nothing lost", against a real Mosquitto: every window reaches history
//! exactly once when the collector is killed (SIGKILL) while a backlog flushes, stops
//! cleanly mid-flush, is away or stalled while sites keep reporting through the
//! shipped broker config (`deploy/mosquitto.conf`); and when a broker does drop
//! reports (Mosquitto's default queue limit), the collector counts the windows
//! missing and takes them back when they arrive after all.
//!
//! Reports are real postcard reports of the fleet simulator (20 sites, 10 targets),
//! published with QoS 1 and acknowledged by the broker before the test goes on.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use faultline_shared::{Report, Topics};
use faultline_tests::fleet::Fleet;
use faultline_tests::{Child, Mosquitto, TempDir, free_tcp_port, wait_for_tcp, wait_until};
use rumqttc::{Event, MqttOptions, Packet, QoS};

const LONG: Duration = Duration::from_secs(120);
const SITES: usize = 20;

fn is_root() -> bool {
    faultline_tests::lab::is_root()
}

/// The shipped broker config without what binds it to a production host (listeners,
/// logins: TLS, password and ACL files, client ids tied to logins; where it keeps its
/// state): its queue, session
/// and persistence settings, as shipped.
fn shipped_broker_config() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mosquitto.conf");
    let text = std::fs::read_to_string(&path).unwrap();
    let host_bound = [
        "per_listener_settings",
        "use_username_as_clientid",
        "allow_anonymous",
        "password_file",
        "acl_file",
        "listener",
        "protocol",
        "certfile",
        "keyfile",
        "cafile",
        "tls_version",
        "persistence_location",
    ];
    let kept: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !host_bound.contains(&l.split_whitespace().next().unwrap_or("")))
        .collect();
    assert!(
        kept.iter().any(|l| l.starts_with("max_queued_messages")),
        "{kept:?}"
    );
    kept.join("\n")
}

fn broker(conf: &str) -> Option<Mosquitto> {
    // As root Mosquitto would drop to its own user, which cannot write its state here.
    let user = if is_root() { "user root\n" } else { "" };
    Mosquitto::start_with(&format!("{user}{conf}\n"))
}

/// The collector binary on `broker`, history in `dir`.
struct Collector {
    child: Option<Child>,
    config: PathBuf,
    db: PathBuf,
    http: SocketAddr,
}

impl Collector {
    fn new(dir: &Path, broker: &Mosquitto) -> Self {
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let db = dir.join("history.db");
        let config = dir.join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "[mqtt]\nurl = \"{}\"\n[http]\nlisten = \"{http}\"\n[storage]\npath = \"{}\"\n",
                broker.url(),
                db.display()
            ),
        )
        .unwrap();
        Self {
            child: None,
            config,
            db,
            http,
        }
    }

    /// Starts it and waits until its HTTP side answers.
    fn start(&mut self) {
        let child = Child::spawn(
            "faultline-collector",
            Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
                .args(["run", "--config"])
                .arg(&self.config)
                .env(
                    "FAULTLINE_LOG",
                    std::env::var("FAULTLINE_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )
        .unwrap();
        self.child = Some(child);
        assert!(
            wait_for_tcp(self.http, LONG),
            "collector HTTP did not come up"
        );
    }

    fn signal(&self, sig: &str) {
        self.child.as_ref().unwrap().signal(sig);
    }

    /// SIGKILL, and reaped.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// SIGTERM; returns whether it exited with success.
    fn stop(&mut self) -> bool {
        let mut c = self.child.take().unwrap();
        c.signal("TERM");
        c.wait_timeout(LONG).is_some_and(|s| s.success())
    }

    fn get(&self, path: &str) -> String {
        faultline_tests::http_get(self.http, path)
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/api/counters")).unwrap_or_default()
    }

    /// One series' value from `/metrics`.
    fn metric(&self, series: &str) -> Option<f64> {
        self.get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    /// Windows in history: (rows, distinct (site, boot, seq)).
    fn stored(&self) -> (u64, u64) {
        if !self.db.exists() {
            return (0, 0);
        }
        let db = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        db.query_row(
            "SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT site, boot, seq FROM windows))
             FROM windows",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .unwrap_or((0, 0))
    }

    /// Every (site, boot, seq) in history.
    fn windows(&self) -> BTreeSet<(String, u32, u64)> {
        let db = rusqlite::Connection::open(&self.db).unwrap();
        let mut st = db.prepare("SELECT site, boot, seq FROM windows").unwrap();
        st.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// Waits until history holds `n` rows; fails naming what it holds.
    fn wait_stored(&self, n: u64) {
        assert!(
            wait_until(LONG, || self.stored().0 >= n),
            "history holds {:?} (rows, distinct), want {n}",
            self.stored()
        );
        assert_eq!(self.stored(), (n, n), "rows, distinct");
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Twenty simulated agents publishing through one MQTT connection, each message
/// acknowledged by the broker before `publish` returns.
struct Agents {
    fleet: Fleet,
    topics: Topics,
    client: rumqttc::Client,
    acked: Arc<AtomicU64>,
    sent: u64,
}

impl Agents {
    fn connect(broker: &Mosquitto) -> Self {
        let mut opts = MqttOptions::new(
            format!("agents-{}", free_tcp_port()),
            "127.0.0.1",
            broker.port,
        );
        opts.set_keep_alive(Duration::from_secs(30))
            .set_inflight(200)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = rumqttc::Client::new(opts, 1000);
        let acked = Arc::new(AtomicU64::new(0));
        let a = acked.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        Self {
            fleet: Fleet::new(SITES, &Fleet::default_isps(), 10_000, start, 11),
            topics: Topics::default(),
            client,
            acked,
            sent: 0,
        }
    }

    fn send(&mut self, topic: String, retain: bool, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .unwrap();
        self.sent += 1;
    }

    /// Every site's retained online status (naming its boot).
    fn statuses(&mut self) {
        let sites = self.fleet.sites().to_vec();
        for s in &sites {
            let json = serde_json::to_vec(&self.fleet.status(s)).unwrap();
            self.send(self.topics.status(&s.id), true, json);
        }
        self.wait_acked();
    }

    /// Windows `seqs` of the sites `sites` (indexes), window by window.
    fn windows(&mut self, sites: std::ops::Range<usize>, seqs: std::ops::Range<u64>) {
        for seq in seqs {
            for i in sites.clone() {
                let r: Report = self.fleet.report(i, seq).unwrap();
                let bytes = faultline_shared::encode(&r).unwrap();
                self.send(self.topics.report(&r.site), false, bytes);
            }
        }
        self.wait_acked();
    }

    fn wait_acked(&self) {
        assert!(
            wait_until(LONG, || self.acked.load(Ordering::SeqCst) >= self.sent),
            "broker acknowledged {} of {}",
            self.acked.load(Ordering::SeqCst),
            self.sent
        );
    }
}

/// Starts the collector, waits until its reading session has subscribed and
/// acknowledged every site's status, and stops it cleanly (so the broker has read
/// those acknowledgements: nothing is left in flight): from now on the broker queues
/// reports for it while it is away.
fn register_session(c: &mut Collector, agents: &mut Agents) {
    c.start();
    agents.statuses();
    assert!(
        wait_until(LONG, || c.counters()["acked"].as_u64()
            >= Some(SITES as u64)),
        "{}",
        c.counters()
    );
    assert!(c.stop(), "SIGTERM: the collector did not exit cleanly");
}

#[test]
fn a_collector_away_or_stalled_loses_nothing_through_the_shipped_broker_config() {
    let Some(broker) = broker(&shipped_broker_config()) else {
        return;
    };
    let dir = TempDir::new("nothing-lost-away");
    let mut c = Collector::new(dir.path(), &broker);
    let mut agents = Agents::connect(&broker);
    register_session(&mut c, &mut agents);

    // Away while 20 sites report 100 windows: twice Mosquitto's default queue.
    agents.windows(0..SITES, 0..100);
    c.start();
    c.wait_stored(2_000);

    // Stalled (SIGSTOP) while 19 sites report 100 more and one flushes a 1,000-window
    // spool at once.
    c.signal("STOP");
    agents.windows(0..SITES, 100..200);
    agents.windows(0..1, 200..1_100);
    c.signal("CONT");
    c.wait_stored(2_000 + 2_000 + 900);
    let counters = c.counters();
    assert_eq!(counters["missing_windows"], 0, "{counters}");
    assert_eq!(c.metric("faultline_collector_missing_windows"), Some(0.0));
    c.kill();
}

#[test]
fn a_broker_that_drops_reports_shows_as_missing_windows_until_they_come() {
    // Mosquitto's default limit: 1,000 queued messages per session.
    let Some(broker) = broker("max_queued_messages 1000") else {
        return;
    };
    let dir = TempDir::new("nothing-lost-default");
    let mut c = Collector::new(dir.path(), &broker);
    let mut agents = Agents::connect(&broker);
    register_session(&mut c, &mut agents);
    // 2,000 reports while the collector is away: the broker keeps windows 0..50 of
    // every site and drops 50..100, after acknowledging them to the agents.
    agents.windows(0..SITES, 0..100);
    c.start();
    c.wait_stored(1_000);
    // The sites' next window proves the hole.
    agents.windows(0..SITES, 100..101);
    c.wait_stored(1_020);
    assert!(
        wait_until(LONG, || c.metric("faultline_collector_missing_windows")
            == Some(1_000.0)),
        "{:?}",
        c.metric("faultline_collector_missing_windows")
    );
    // Pages read the state as of the latest evaluation (at most a window behind).
    let per_site = || {
        let state: serde_json::Value =
            serde_json::from_str(&c.get("/api/state")).unwrap_or_default();
        state["sites"].as_array().cloned().unwrap_or_default()
    };
    assert!(
        wait_until(LONG, || {
            let sites = per_site();
            sites.len() == SITES && sites.iter().all(|s| s["missing_windows"] == 50)
        }),
        "{:?}",
        per_site()
    );
    // The missing windows arrive after all (a spool that still had them): taken back.
    agents.windows(0..SITES, 50..100);
    c.wait_stored(2_020);
    assert_eq!(c.metric("faultline_collector_missing_windows"), Some(0.0));
    c.kill();
}

#[test]
fn sigkill_while_a_backlog_flushes_stores_every_window_once() {
    let Some(broker) = broker(&shipped_broker_config()) else {
        return;
    };
    let dir = TempDir::new("nothing-lost-kill");
    let mut c = Collector::new(dir.path(), &broker);
    let mut agents = Agents::connect(&broker);
    register_session(&mut c, &mut agents);
    const TOTAL: u64 = SITES as u64 * 250;
    agents.windows(0..SITES, 0..250);
    // Killed three times while history fills.
    for round in 1..=3u64 {
        c.start();
        let want = (c.stored().0 + 600).min(TOTAL);
        assert!(
            wait_until(LONG, || c.stored().0 >= want),
            "round {round}: {:?}",
            c.stored()
        );
        c.kill();
        let (rows, distinct) = c.stored();
        eprintln!("round {round}: killed with {rows} of {TOTAL} windows stored");
        assert_eq!(rows, distinct, "round {round}: a window stored twice");
    }
    c.start();
    c.wait_stored(TOTAL);
    // Nothing is left queued or in flight: the next window of every site is all that
    // arrives.
    agents.windows(0..SITES, 250..251);
    c.wait_stored(TOTAL + SITES as u64);
    let counters = c.counters();
    assert_eq!(counters["missing_windows"], 0, "{counters}");
    c.kill();
}

#[test]
fn a_clean_stop_acknowledges_exactly_what_it_stored() {
    let Some(broker) = broker(&shipped_broker_config()) else {
        return;
    };
    let dir = TempDir::new("nothing-lost-stop");
    let mut c = Collector::new(dir.path(), &broker);
    let mut agents = Agents::connect(&broker);
    register_session(&mut c, &mut agents);
    const TOTAL: usize = SITES * 500;
    agents.windows(0..SITES, 0..500);
    c.start();
    assert!(
        wait_until(LONG, || c.stored().0 >= 1_000),
        "{:?}",
        c.stored()
    );
    assert!(c.stop(), "SIGTERM: the collector did not exit cleanly");
    let stored = c.windows();
    assert!(
        stored.len() < TOTAL,
        "stopped after everything was stored: no test"
    );

    // What the broker still holds for the collector's session: take it over.
    let mut opts =
        rumqttc::v5::MqttOptions::new("faultline-collector-in", "127.0.0.1", broker.port);
    opts.set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(1 << 20));
    let (_client, mut conn) = rumqttc::v5::Client::new(opts, 100);
    let remaining = Arc::new(std::sync::Mutex::new(Vec::<(String, u32, u64)>::new()));
    let r = remaining.clone();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(
                    p,
                ))) => {
                    if let Ok(rep) = faultline_shared::decode(&p.payload) {
                        r.lock()
                            .unwrap()
                            .push((rep.site.to_string(), rep.boot, rep.seq));
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let union = || {
        let mut all = stored.clone();
        all.extend(remaining.lock().unwrap().iter().cloned());
        all.len()
    };
    assert!(
        wait_until(LONG, || union() == TOTAL),
        "stored {} + still queued {} cover {} of {TOTAL} windows: acknowledged but not stored",
        stored.len(),
        remaining.lock().unwrap().len(),
        union()
    );
    let again: Vec<_> = remaining
        .lock()
        .unwrap()
        .iter()
        .filter(|w| stored.contains(*w))
        .cloned()
        .collect();
    let rem = remaining.lock().unwrap().len();
    assert!(
        again.is_empty(),
        "{} of {} stored, {rem} still queued: {} stored but not acknowledged at a clean stop: {:?}…",
        stored.len(),
        TOTAL,
        again.len(),
        &again[..again.len().min(5)]
    );
}
