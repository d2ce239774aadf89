//! A collector under test, the way the integration tests start it: `collector.toml`
//! written from the usual parts, the process, its HTTP answers; and an MQTT
//! [`Watcher`] that records what the collector publishes, and a plain
//! [`mqtt_client`] for what tests publish themselves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use crate::{Child, free_tcp_port, http_get, wait_for_tcp};

const START: Duration = Duration::from_secs(60);

/// Starts `bin run --config config` as process `name` of a cluster test, its log
/// (stderr, `info` and `async_nats` warnings) in `dir/{name}.log`.
pub fn spawn_logged(bin: impl AsRef<Path>, dir: &Path, name: &str, config: &Path) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("create the log");
    Child::spawn(
        name,
        Command::new(bin.as_ref())
            .args(["run", "--config"])
            .arg(config)
            .env("FAULTLINE_LOG", "info,async_nats=warn")
            .stdout(Stdio::null())
            .stderr(log),
    )
    .expect("spawn faultline-collector")
}

/// What process `name` of [`spawn_logged`] has logged so far.
pub fn log_of(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// A loopback TCP port that accepts (and closes) every connection: a `tcp` probe
/// target that is up.
pub fn tcp_sink() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a sink");
    let port = l.local_addr().expect("sink address").port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    port
}

/// A running `faultline-collector run`, killed when dropped.
#[derive(Debug)]
pub struct Collector {
    pub child: Child,
    pub http: SocketAddr,
    pub config: PathBuf,
}

impl Collector {
    /// A free loopback address for the collector's HTTP server.
    pub fn free_http() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], free_tcp_port()))
    }

    /// Writes `dir/collector.toml` — 1 s windows, the broker at `broker_url`, HTTP at
    /// `http`, SQLite history `dir/history.db` — then `extra` (TOML of the test's
    /// own: top-level keys are not allowed there, sections are).
    pub fn write_config(dir: &Path, broker_url: &str, http: SocketAddr, extra: &str) -> PathBuf {
        let path = dir.join("collector.toml");
        std::fs::write(
            &path,
            format!(
                "window_seconds = 1\n[mqtt]\nurl = \"{broker_url}\"\n[http]\nlisten = \"{http}\"\n\
                 [storage]\npath = \"{}\"\n{extra}",
                dir.join("history.db").display()
            ),
        )
        .expect("write collector.toml");
        path
    }

    /// Starts `bin` (the test's `env!("CARGO_BIN_EXE_faultline-collector")`) on
    /// `config` and waits for its HTTP server at `http`.
    pub fn start(bin: impl AsRef<Path>, config: &Path, http: SocketAddr) -> Self {
        let child = Child::spawn(
            "faultline-collector",
            Command::new(bin.as_ref())
                .args(["run", "--config"])
                .arg(config)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )
        .expect("spawn faultline-collector");
        assert!(wait_for_tcp(http, START), "collector HTTP did not come up");
        Self {
            child,
            http,
            config: config.to_owned(),
        }
    }

    /// A GET's body (empty when the collector cannot be reached).
    pub fn get(&self, path: &str) -> String {
        http_get(self.http, path)
    }

    /// One series' value from `/metrics` (`series` up to the value, labels
    /// included), or -1 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric(self.http, series)
    }
}

/// One series' value from `/metrics` at `addr` (`series` up to the value, labels
/// included), or -1 when absent or unreachable.
pub fn metric(addr: SocketAddr, series: &str) -> f64 {
    http_get(addr, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(-1.0)
}

/// Every message seen on some topic filters, as (topic, JSON; `Null` when not JSON),
/// in arrival order; resubscribes after each reconnect.
#[derive(Clone, Debug, Default)]
pub struct Watcher(Arc<Mutex<Vec<(String, Value)>>>);

impl Watcher {
    /// Subscribes (QoS 1) to `filters` on the broker at 127.0.0.1:`port`.
    pub fn subscribe(port: u16, filters: &[&str]) -> Self {
        let seen = Watcher::default();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("watcher-{}-{n}", std::process::id());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(opts, 100);
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        let s = seen.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &filters {
                            let _ = client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        s.0.lock().unwrap().push((p.topic.clone(), v));
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        seen
    }

    /// Everything seen so far.
    pub fn all(&self) -> Vec<(String, Value)> {
        self.0.lock().unwrap().clone()
    }

    /// The latest message on `topic`.
    pub fn latest(&self, topic: &str) -> Option<Value> {
        let g = self.0.lock().unwrap();
        g.iter()
            .rev()
            .find(|(t, _)| t == topic)
            .map(|(_, v)| v.clone())
    }

    /// Incident events of one kind (`opened`, `updated`, `closed`), in order.
    pub fn events(&self, kind: &str) -> Vec<Value> {
        let g = self.0.lock().unwrap();
        g.iter()
            .filter(|(t, v)| t.ends_with("/events/incidents") && v["event"] == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// An MQTT client on the broker at 127.0.0.1:`port`, its connection driven (and
/// re-established) on a thread of its own.
pub fn mqtt_client(port: u16, id: &str) -> Client {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(opts, 1000);
    std::thread::spawn(move || {
        for ev in conn.iter() {
            if ev.is_err() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    });
    client
}
