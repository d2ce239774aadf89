//! End to end with a real Mosquitto: JSON reports in, retained verdicts and incident
//! events out; a restart keeps the incident; bad messages are counted and dropped
//! while good traffic flows. Skips (with the reason) when Mosquitto is missing.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faultline_tests::{
    Collector, Mosquitto, TempDir, Watcher, free_tcp_port, http_get, metric, mqtt_client,
    wait_until,
};
use rumqttc::QoS;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn write_config(dir: &Path, broker: &str, http: SocketAddr) -> std::path::PathBuf {
    Collector::write_config(
        dir,
        broker,
        http,
        "[providers.voipco]\nalternate = \"voipco2\"\n[providers.voipco2]\n\
         # Silence is not under test: a loaded CI box must not fake it.\n\
         [thresholds]\nsilence_windows = 15\n",
    )
}

fn start_collector(config: &Path, http: SocketAddr) -> Collector {
    Collector::start(env!("CARGO_BIN_EXE_faultline-collector"), config, http)
}

/// Incident events of one kind about one target.
fn events(seen: &Watcher, kind: &str, target: &str) -> Vec<Value> {
    seen.events(kind)
        .into_iter()
        .filter(|v| v["incident"]["target_id"] == target)
        .collect()
}

fn report(site: &str, boot: u32, seq: u64, voipco_down: bool) -> Value {
    let probe = |t: &str, layer: &str, prov: Option<&str>, kind: &str, down: bool| {
        let mut p = json!({"target": t, "layer": layer, "kind": kind, "sent": 10,
            "received": if down { 0 } else { 10 }});
        if let Some(pr) = prov {
            p["provider"] = json!(pr);
        }
        if !down {
            p["rtt_ms"] = json!({"min": 10.0, "p50": 11.0, "avg": 11.0, "p95": 12.0, "max": 13.0});
        }
        p
    };
    json!({"v": 1, "site": site, "boot": boot, "seq": seq, "start_ms": now_ms(), "window_ms": 1000,
    "probes": [
        probe("gw", "lan", None, "icmp", false),
        probe("anchor", "internet", None, "icmp", false),
        probe("voipco-media", "provider", Some("voipco"), "icmp", voipco_down),
        probe("voipco2-media", "provider", Some("voipco2"), "icmp", false),
    ]})
}

/// Three sites on three ISPs reporting every 500 ms (faster than the 1 s window, so
/// a slow machine never starves the collector into declaring silence).
struct Fleet {
    stop: Arc<AtomicBool>,
    pub down: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Fleet {
    fn start(port: u16) -> Fleet {
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let client = mqtt_client(port, "fleet");
        let sites = [
            ("acme-hq", "IspA"),
            ("bobs-bakery", "IspB"),
            ("city-dental", "IspC"),
        ];
        for (s, isp) in sites {
            client
                .publish(
                    format!("faultline/v1/sites/{s}/status"),
                    QoS::AtLeastOnce,
                    true,
                    serde_json::to_vec(&json!({"state": "online", "boot": 1, "isp": isp})).unwrap(),
                )
                .unwrap();
        }
        let (st, dn, se) = (stop.clone(), down.clone(), sent.clone());
        let handle = std::thread::spawn(move || {
            let mut seq = 0;
            while !st.load(Ordering::SeqCst) {
                for (s, _) in sites {
                    let r = report(s, 1, seq, dn.load(Ordering::SeqCst));
                    let _ = client.publish(
                        format!("faultline/v1/sites/{s}/report/json"),
                        QoS::AtLeastOnce,
                        false,
                        serde_json::to_vec(&r).unwrap(),
                    );
                }
                se.fetch_add(3, Ordering::SeqCst);
                seq += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Fleet {
            stop,
            down,
            sent,
            handle: Some(handle),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn verdicts_and_incidents_out_and_a_restart_keeps_the_incident() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("collector-e2e");
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = write_config(dir.path(), &broker.url(), http);
    let seen = Watcher::subscribe(
        broker.port,
        &[
            "faultline/v1/state/#",
            "faultline/v1/events/incidents",
            "faultline/v1/collector/status",
        ],
    );
    let mut c = start_collector(&config, http);
    let fleet = Fleet::start(broker.port);
    let prov = "faultline/v1/state/providers/voipco";
    assert!(
        wait_until(LONG, || seen
            .latest(prov)
            .is_some_and(|v| v["state"] == "ok")
            && seen.latest("faultline/v1/state/sites/acme-hq").is_some()),
        "no initial verdicts"
    );
    assert_eq!(
        seen.latest("faultline/v1/collector/status").unwrap()["state"],
        "online"
    );
    fleet.down.store(true, Ordering::SeqCst);
    assert!(
        wait_until(LONG, || seen
            .latest(prov)
            .is_some_and(|v| v["state"] == "outage")),
        "provider outage not published: {:?}",
        seen.latest(prov)
    );
    let v = seen.latest(prov).unwrap();
    assert_eq!(v["recommendation"]["to"], "voipco2");
    assert_eq!(v["sites"], json!(["acme-hq", "bobs-bakery", "city-dental"]));
    let incident = v["incident"].as_str().unwrap().to_owned();
    assert!(wait_until(LONG, || events(&seen, "opened", "voipco").len() == 1));
    let site = seen.latest("faultline/v1/state/sites/acme-hq").unwrap();
    assert_eq!(site["cause"], "provider");
    assert_eq!(site["incident"], incident.as_str());
    // Retained: a newcomer sees the verdict at once.
    let late = Watcher::subscribe(broker.port, &[prov]);
    assert!(wait_until(LONG, || late
        .latest(prov)
        .is_some_and(|v| v["state"] == "outage")));
    let api = http_get(http, "/api/incidents");
    assert!(api.contains(&incident), "{api}");

    // Restart the collector while the outage goes on.
    c.child.signal("TERM");
    assert!(
        c.child.wait_timeout(LONG).is_some(),
        "collector did not stop on SIGTERM"
    );
    assert!(wait_until(LONG, || seen
        .latest("faultline/v1/collector/status")
        .is_some_and(|v| v["state"] == "offline")));
    let c = start_collector(&config, http);
    // Several windows of the still-failing provider after the restart.
    let sent_at_restart = fleet.sent.load(Ordering::SeqCst);
    assert!(wait_until(LONG, || fleet.sent.load(Ordering::SeqCst)
        >= sent_at_restart + 18));
    assert!(wait_until(LONG, || metric(
        c.http,
        "faultline_collector_evaluations_total"
    ) >= 5.0));
    assert_eq!(
        events(&seen, "opened", "voipco").len(),
        1,
        "re-opened after restart"
    );
    assert!(
        events(&seen, "closed", "voipco").is_empty(),
        "forgotten after restart"
    );
    let api = http_get(c.http, "/api/incidents");
    let open: Value = serde_json::from_str(&api).unwrap();
    assert!(
        open["open"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == incident.as_str()),
        "{api}"
    );
    assert!(
        http_get(c.http, "/api/state").contains(&incident),
        "restored verdict lost its incident"
    );

    // The fault ends: the same incident closes.
    fleet.down.store(false, Ordering::SeqCst);
    assert!(
        wait_until(LONG, || seen
            .latest(prov)
            .is_some_and(|v| v["state"] == "ok")),
        "outage did not clear"
    );
    let closed = events(&seen, "closed", "voipco");
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["incident"]["id"], incident.as_str());

    // History: `report` shows the outage with its start, end and sites.
    let db = dir.path().join("history.db");
    let report = || {
        let out = Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
            .args([
                "report",
                "--json",
                "--since",
                "1h",
                "--provider",
                "voipco",
                "--db",
            ])
            .arg(&db)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert!(
        wait_until(LONG, || !report()[0]["outages"][0]["end_ms"].is_null()),
        "{}",
        report()
    );
    let r = report();
    let outage = &r[0]["outages"][0];
    assert_eq!(outage["incident"], incident.as_str());
    assert_eq!(
        outage["sites"],
        json!(["acme-hq", "bobs-bakery", "city-dental"])
    );
    let a = r[0]["availability"].as_f64().unwrap();
    assert!(a > 0.0 && a < 1.0, "availability {a}");
    let csv = Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
        .args(["report", "--csv", "--since", "1h", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert!(
        csv.starts_with("provider,") && csv.contains(&incident),
        "{csv}"
    );
    let mut c = c;
    c.child.kill();
}

#[test]
fn bad_messages_are_counted_and_dropped_while_good_traffic_flows() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("collector-bad");
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = write_config(dir.path(), &broker.url(), http);
    let seen = Watcher::subscribe(broker.port, &["faultline/v1/metrics/#"]);
    let c = start_collector(&config, http);
    let fleet = Fleet::start(broker.port);
    assert!(wait_until(LONG, || metric(
        c.http,
        "faultline_collector_messages_total{kind=\"report\"}"
    ) >= 3.0));

    let p = mqtt_client(broker.port, "stranger");
    let q = QoS::AtLeastOnce;
    let site_topic = "faultline/v1/sites/acme-hq/report/json";
    p.publish(site_topic, q, false, b"{not json".to_vec())
        .unwrap();
    p.publish(site_topic, q, false, vec![b' '; 100 * 1024])
        .unwrap();
    let other = serde_json::to_vec(&report("bobs-bakery", 9, 0, false)).unwrap();
    p.publish(site_topic, q, false, other).unwrap();
    let dup = serde_json::to_vec(&report("acme-hq", 77, 5, false)).unwrap();
    p.publish(site_topic, q, false, dup.clone()).unwrap();
    p.publish(site_topic, q, false, dup).unwrap();
    p.publish(
        "faultline/v1/sites/bad!id/report/json",
        q,
        false,
        b"{}".to_vec(),
    )
    .unwrap();
    p.publish(
        "faultline/v1/sites/acme-hq/report",
        q,
        false,
        vec![1, 0xff, 0xff],
    )
    .unwrap();
    p.publish("faultline/v1/sites/acme-hq/report", q, false, vec![9, 1, 2])
        .unwrap();

    for (reason, want) in [
        ("malformed", 1.0),
        ("oversized", 1.0),
        ("site_mismatch", 1.0),
        ("duplicate", 1.0),
        ("topic", 1.0),
        ("version", 1.0),
    ] {
        let series = format!("faultline_collector_rejected_total{{reason=\"{reason}\"}}");
        assert!(
            wait_until(LONG, || metric(c.http, &series) >= want),
            "{series} = {} (want {want})",
            metric(c.http, &series)
        );
    }
    // Good traffic still flows and the collector still runs.
    let before = metric(
        c.http,
        "faultline_collector_messages_total{kind=\"report\"}",
    );
    assert!(wait_until(LONG, || metric(
        c.http,
        "faultline_collector_messages_total{kind=\"report\"}"
    ) >= before + 6.0));
    let mut c = c;
    assert!(c.child.is_running());
    // Per-probe metrics JSON carries the window identity.
    let m = seen
        .latest("faultline/v1/metrics/acme-hq/voipco-media")
        .expect("metrics topic");
    for k in ["site", "boot", "seq", "start_ms", "target", "loss"] {
        assert!(!m[k].is_null(), "metrics JSON lacks {k}: {m}");
    }
    // Probe values are as of the latest evaluation (HTTP reads a snapshot).
    let probe = "faultline_probe_rtt_p50_seconds{site=\"acme-hq\",target=\"gw\"";
    assert!(
        wait_until(LONG, || http_get(c.http, "/metrics").contains(probe)),
        "{}",
        http_get(c.http, "/metrics")
    );
    let ok = "faultline_verdict_state{scope=\"provider\",id=\"voipco\",state=\"ok\"} 1";
    assert!(
        wait_until(LONG, || http_get(c.http, "/metrics").contains(ok)),
        "{}",
        http_get(c.http, "/metrics")
    );
    let page = http_get(c.http, "/");
    assert!(page.contains("Sites × providers"));
    drop(fleet);
    c.child.kill();
}
