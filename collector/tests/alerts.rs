//! Alerts end to end with real processes on loopback: Mosquitto, the collector,
//! Debian's Alertmanager and a webhook receiver (a plain HTTP server in this test).
//! A provider outage driven by real reports shows in Alertmanager with its labels
//! while open, then resolved; a webhook receiver that is down when the incident
//! opens, with a collector SIGKILL in between, later receives `opened` ... `closed`
//! in order, once per event id, each signature verifying; an outage inside a
//! maintenance window alerts nobody and its verdict says `maintenance`.
//! Skips (with the reason) when Mosquitto or Alertmanager is missing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faultline_tests::certs::TestPki;
use faultline_tests::{
    Child, Collector, Mosquitto, TempDir, Watcher, free_tcp_port, http_get, metric, mqtt_client,
    require, wait_for_tcp, wait_until,
};
use rumqttc::QoS;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(90);
const SECRET: &str = "webhook-secret-for-the-tests-0123";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The collector's config: 1 s windows, three sites' worth of providers, `extra`
/// appended (the [alerts] and [[maintenance]] under test).
fn write_config(dir: &Path, broker: &str, http: SocketAddr, extra: &str) -> PathBuf {
    std::fs::write(dir.join("webhook.secret"), format!("{SECRET}\n")).unwrap();
    Collector::write_config(
        dir,
        broker,
        http,
        &format!(
            "[providers.voipco]\nalternate = \"voipco2\"\n[providers.voipco2]\n\
             [thresholds]\nsilence_windows = 15\n{extra}"
        ),
    )
}

fn start_collector(config: &Path, http: SocketAddr) -> Collector {
    Collector::start(env!("CARGO_BIN_EXE_faultline-collector"), config, http)
}

fn report(site: &str, seq: u64, voipco_down: bool) -> Value {
    let probe = |t: &str, layer: &str, prov: Option<&str>, down: bool| {
        let mut p = json!({"target": t, "layer": layer, "kind": "icmp", "sent": 10,
            "received": if down { 0 } else { 10 }});
        if let Some(pr) = prov {
            p["provider"] = json!(pr);
        }
        if !down {
            p["rtt_ms"] = json!({"min": 10.0, "p50": 11.0, "avg": 11.0, "p95": 12.0, "max": 13.0});
        }
        p
    };
    json!({"v": 1, "site": site, "boot": 1, "seq": seq, "start_ms": now_ms(), "window_ms": 1000,
    "probes": [
        probe("gw", "lan", None, false),
        probe("anchor", "internet", None, false),
        probe("voipco-media", "provider", Some("voipco"), voipco_down),
        probe("voipco2-media", "provider", Some("voipco2"), false),
    ]})
}

fn subscriber(port: u16, filters: &[&str]) -> Watcher {
    Watcher::subscribe(port, filters)
}

/// Three sites on three ISPs reporting every 500 ms; `down` fails voipco at all.
struct Fleet {
    stop: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Fleet {
    fn start(port: u16) -> Fleet {
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
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let (st, dn) = (stop.clone(), down.clone());
        let handle = std::thread::spawn(move || {
            let mut seq = 0;
            while !st.load(Ordering::SeqCst) {
                for (s, _) in sites {
                    let r = report(s, seq, dn.load(Ordering::SeqCst));
                    let _ = client.publish(
                        format!("faultline/v1/sites/{s}/report/json"),
                        QoS::AtLeastOnce,
                        false,
                        serde_json::to_vec(&r).unwrap(),
                    );
                }
                seq += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Fleet {
            stop,
            down,
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

/// One POST a webhook receiver took.
#[derive(Debug, Clone)]
struct Hook {
    signature: String,
    event_id: String,
    body: Vec<u8>,
}

/// Reads one POST from `s`, answers 200 and returns what it carried.
fn take_request(s: &mut (impl Read + Write)) -> Option<Hook> {
    let mut r = BufReader::new(&mut *s);
    let (mut len, mut sig, mut id) = (0, String::new(), String::new());
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let (k, v) = line.split_once(':').unwrap_or(("", ""));
        let v = v.trim().to_owned();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.parse().unwrap_or(0),
            "x-faultline-signature" => sig = v,
            "x-faultline-event-id" => id = v,
            _ => {}
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    drop(r);
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = s.flush();
    Some(Hook {
        signature: sig,
        event_id: id,
        body,
    })
}

/// A webhook receiver on `port`: answers 200 to every POST and records it.
fn receiver(port: u16) -> Arc<Mutex<Vec<Hook>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let g = got.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            if let Some(h) = take_request(&mut s) {
                g.lock().unwrap().push(h);
            }
        }
    });
    got
}

/// The same over TLS with the test PKI's server certificate (rustls on ring).
fn tls_receiver(port: u16, pki: &TestPki) -> Arc<Mutex<Vec<Hook>>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&pki.server_cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let g = got.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, s);
            if let Some(h) = take_request(&mut tls) {
                g.lock().unwrap().push(h);
            }
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    got
}

/// Checks `sha256=<hex>` against an HMAC-SHA256 of `body` computed here with ring.
fn signature_verifies(header: &str, body: &[u8]) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(tag) = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    ring::hmac::verify(&key, body, &tag).is_ok()
}

struct Alertmanager {
    _child: Child,
    _dir: TempDir,
    addr: SocketAddr,
}

impl Alertmanager {
    fn start() -> Option<Self> {
        let bin = require("prometheus-alertmanager", "prometheus-alertmanager")?;
        let dir = TempDir::new("alertmanager");
        // resolve_timeout 1h: within the test only an explicit endsAt resolves.
        std::fs::write(
            dir.path().join("am.yml"),
            "global:\n  resolve_timeout: 1h\nroute:\n  receiver: none\nreceivers:\n  - name: none\n",
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let child = Child::spawn(
            "alertmanager",
            Command::new(bin)
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("am.yml").display()
                ))
                .arg(format!(
                    "--storage.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--cluster.listen-address=")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap();
        assert!(wait_for_tcp(addr, LONG), "alertmanager did not come up");
        Some(Self {
            _child: child,
            _dir: dir,
            addr,
        })
    }

    /// Faultline's alerts Alertmanager holds as active (resolved ones are not listed).
    fn active(&self) -> Vec<Value> {
        let body = http_get(self.addr, "/api/v2/alerts?active=true");
        let all: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
        all.into_iter()
            .filter(|a| a["labels"]["alertname"] == "FaultlineIncident")
            .collect()
    }
}

#[test]
fn alertmanager_holds_the_incident_while_open_then_resolved() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let Some(am) = Alertmanager::start() else {
        return;
    };
    let dir = TempDir::new("alerts-am");
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = write_config(
        dir.path(),
        &broker.url(),
        http_addr,
        &format!(
            "[alerts]\nalertmanager = \"http://{}\"\npublic_url = \"https://dash.msp.example\"\n",
            am.addr
        ),
    );
    let _c = start_collector(&config, http_addr);
    let seen = subscriber(broker.port, &["faultline/v1/events/incidents"]);
    let fleet = Fleet::start(broker.port);
    fleet.down.store(true, Ordering::SeqCst);
    assert!(
        wait_until(LONG, || !seen.events("opened").is_empty()),
        "no incident opened"
    );
    let incident = seen.events("opened")[0]["incident"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Active with the provider's failover advice (which reaches Alertmanager with
    // the opening or, when the verdict comes just after it, one re-post later).
    assert!(
        wait_until(LONG, || am
            .active()
            .iter()
            .any(|a| a["labels"]["incident"] == incident.as_str()
                && a["annotations"]["recommendation"] == "failover to voipco2")),
        "the alert never became active in Alertmanager with its advice: {:?}",
        am.active()
    );
    let a = am
        .active()
        .into_iter()
        .find(|a| a["labels"]["incident"] == incident.as_str())
        .unwrap();
    let l = &a["labels"];
    assert_eq!(
        (l["scope"].as_str(), l["id"].as_str(), l["cause"].as_str()),
        (Some("provider"), Some("voipco"), Some("provider")),
        "{a}"
    );
    assert!(
        matches!(l["state"].as_str(), Some("outage" | "degraded")),
        "{a}"
    );
    assert_eq!(a["status"]["state"], "active", "{a}");
    assert!(
        a["annotations"]["sites"]
            .as_str()
            .unwrap()
            .contains("acme-hq"),
        "{a}"
    );
    assert_eq!(
        a["annotations"]["recommendation"], "failover to voipco2",
        "{a}"
    );
    assert_eq!(
        a["generatorURL"],
        format!("https://dash.msp.example/incidents/{incident}")
    );

    fleet.down.store(false, Ordering::SeqCst);
    assert!(
        wait_until(LONG, || !seen.events("closed").is_empty()),
        "the incident did not close"
    );
    // resolve_timeout is an hour: gone within the test means our endsAt resolved it.
    assert!(
        wait_until(LONG, || !am
            .active()
            .iter()
            .any(|a| a["labels"]["incident"] == incident.as_str())),
        "the alert was not resolved: {:?}",
        am.active()
    );
    assert!(
        metric(
            http_addr,
            "faultline_collector_alerts_delivered_total{receiver=\"alertmanager\"}"
        ) >= 2.0
    );
}

#[test]
fn a_webhook_down_at_the_opening_gets_every_event_in_order_across_a_collector_kill() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("alerts-webhook");
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let hook_port = free_tcp_port();
    let config = write_config(
        dir.path(),
        &broker.url(),
        http_addr,
        &format!(
            "[[alerts.webhook]]\nurl = \"http://127.0.0.1:{hook_port}/hooks/faultline\"\n\
             secret_file = \"webhook.secret\"\n"
        ),
    );
    let mut c = start_collector(&config, http_addr);
    let seen = subscriber(broker.port, &["faultline/v1/events/incidents"]);
    let fleet = Fleet::start(broker.port);
    fleet.down.store(true, Ordering::SeqCst);
    assert!(
        wait_until(LONG, || !seen.events("opened").is_empty()),
        "no incident opened"
    );
    // The receiver is down: attempts fail, the event waits on disk.
    let failed = "faultline_collector_alerts_failed_total{receiver=\"webhook\"}";
    assert!(
        wait_until(LONG, || metric(http_addr, failed) >= 1.0),
        "no failed attempt counted"
    );
    assert!(
        metric(
            http_addr,
            "faultline_collector_alerts_pending{receiver=\"webhook\"}"
        ) >= 1.0
    );

    // Killed with the event undelivered; started again, the outage ends meanwhile.
    c.child.kill();
    let _c = start_collector(&config, http_addr);
    fleet.down.store(false, Ordering::SeqCst);
    assert!(
        wait_until(LONG, || !seen.events("closed").is_empty()),
        "the incident did not close"
    );
    let incident = seen.events("opened")[0]["incident"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The receiver comes up: everything arrives, in order, signed.
    let got = receiver(hook_port);
    assert!(
        wait_until(LONG, || got
            .lock()
            .unwrap()
            .iter()
            .any(
                |h| h.event_id.ends_with(":closed:") || h.event_id.contains(":closed:")
            )),
        "closed never arrived: {:?}",
        got.lock().unwrap()
    );
    let hooks = got.lock().unwrap().clone();
    let events: Vec<Value> = hooks
        .iter()
        .map(|h| serde_json::from_slice(&h.body).unwrap())
        .collect();
    for (h, e) in hooks.iter().zip(&events) {
        assert!(
            signature_verifies(&h.signature, &h.body),
            "bad signature on {}",
            h.event_id
        );
        assert_eq!(e["incident"]["id"], incident.as_str(), "{e}");
        let kind = e["event"].as_str().unwrap();
        assert!(
            h.event_id.starts_with(&format!("{incident}:{kind}:")),
            "{}",
            h.event_id
        );
    }
    let ids: std::collections::BTreeSet<&str> = hooks.iter().map(|h| h.event_id.as_str()).collect();
    assert_eq!(ids.len(), hooks.len(), "an id arrived twice: {hooks:?}");
    assert_eq!(events.first().unwrap()["event"], "opened", "{events:?}");
    assert_eq!(events.last().unwrap()["event"], "closed", "{events:?}");
    assert_eq!(
        events.iter().filter(|e| e["event"] == "opened").count(),
        1,
        "{events:?}"
    );
    // Nothing left behind.
    assert!(wait_until(LONG, || metric(
        http_addr,
        "faultline_collector_alerts_pending{receiver=\"webhook\"}"
    ) == 0.0));
}

#[test]
fn an_outage_inside_a_maintenance_window_alerts_nobody_and_says_maintenance() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("alerts-maintenance");
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let hook_port = free_tcp_port();
    let got = receiver(hook_port);
    let t = |ms: u64| {
        time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let (from, to) = (t(now_ms() - 3_600_000), t(now_ms() + 3_600_000));
    let config = write_config(
        dir.path(),
        &broker.url(),
        http_addr,
        &format!(
            "[[alerts.webhook]]\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n\
             secret_file = \"webhook.secret\"\n\
             [[maintenance]]\nscope = \"provider\"\nid = \"voipco\"\nfrom = \"{from}\"\nto = \"{to}\"\n"
        ),
    );
    let _c = start_collector(&config, http_addr);
    let seen = subscriber(
        broker.port,
        &["faultline/v1/events/incidents", "faultline/v1/state/#"],
    );
    let fleet = Fleet::start(broker.port);
    fleet.down.store(true, Ordering::SeqCst);
    let prov = "faultline/v1/state/providers/voipco";
    assert!(
        wait_until(LONG, || seen
            .latest(prov)
            .is_some_and(|v| v["state"] != "ok")),
        "no provider verdict"
    );
    let v = seen.latest(prov).unwrap();
    assert!(v["maintenance"]["until_ms"].as_u64().is_some(), "{v}");
    // A site whose cause is the provider in maintenance is in maintenance too.
    assert!(wait_until(LONG, || seen
        .latest("faultline/v1/state/sites/acme-hq")
        .is_some_and(
            |s| s["cause"] == "provider" && s["maintenance"].is_object()
        )));
    assert!(wait_until(LONG, || !seen.events("opened").is_empty()));
    // Pages and the API show it as the state topics do.
    let state: Value = serde_json::from_str(&http_get(http_addr, "/api/state")).unwrap();
    let p = state["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "voipco")
        .unwrap();
    assert!(p["maintenance"]["until_ms"].as_u64().is_some(), "{p}");
    let page = http_get(http_addr, "/providers/voipco");
    assert!(page.contains("in maintenance until"), "{page}");
    fleet.down.store(false, Ordering::SeqCst);
    assert!(
        wait_until(LONG, || !seen.events("closed").is_empty()),
        "the incident did not close"
    );
    assert!(metric(http_addr, "faultline_collector_alerts_held_total") >= 1.0);
    assert_eq!(
        metric(
            http_addr,
            "faultline_collector_alerts_pending{receiver=\"webhook\"}"
        ),
        0.0
    );
    assert!(
        got.lock().unwrap().is_empty(),
        "alerted in maintenance: {:?}",
        got.lock().unwrap()
    );
    // `report` lists the outage but leaves the window out of availability: all of
    // the evidence is inside it, so nothing was watched and nothing counts.
    let out = Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
        .args(["report", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["provider"] == "voipco")
        .unwrap();
    assert_eq!(r["outages"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["maintenance"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(
        (r["site_ms"].as_u64(), r["availability"].as_f64()),
        (Some(0), Some(1.0)),
        "{r}"
    );
}

#[test]
fn an_incident_still_open_when_its_window_ends_is_alerted_then() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("alerts-window-ends");
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let hook_port = free_tcp_port();
    let got = receiver(hook_port);
    let t = |ms: u64| {
        time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    // The window ends 30 s from now: the outage opens inside it and outlasts it.
    let (from, to) = (t(now_ms() - 3_600_000), t(now_ms() + 30_000));
    let config = write_config(
        dir.path(),
        &broker.url(),
        http_addr,
        &format!(
            "[[alerts.webhook]]\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n\
             secret_file = \"webhook.secret\"\n\
             [[maintenance]]\nscope = \"provider\"\nid = \"voipco\"\nfrom = \"{from}\"\nto = \"{to}\"\n"
        ),
    );
    let _c = start_collector(&config, http_addr);
    let seen = subscriber(broker.port, &["faultline/v1/events/incidents"]);
    let fleet = Fleet::start(broker.port);
    fleet.down.store(true, Ordering::SeqCst);
    assert!(
        wait_until(LONG, || metric(
            http_addr,
            "faultline_collector_alerts_held_total"
        ) >= 1.0),
        "the incident was not held back by the window"
    );
    assert!(got.lock().unwrap().is_empty(), "alerted inside the window");
    // Once the window is over, the still-open incident is alerted as opened.
    assert!(
        wait_until(LONG, || !got.lock().unwrap().is_empty()),
        "not alerted after the window"
    );
    fleet.down.store(false, Ordering::SeqCst);
    assert!(wait_until(LONG, || !seen.events("closed").is_empty()));
    assert!(wait_until(LONG, || got
        .lock()
        .unwrap()
        .iter()
        .any(|h| h.event_id.contains(":closed:"))));
    let hooks = got.lock().unwrap().clone();
    let events: Vec<Value> = hooks
        .iter()
        .map(|h| serde_json::from_slice(&h.body).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "opened", "{events:?}");
    assert_eq!(events.last().unwrap()["event"], "closed", "{events:?}");
    assert!(
        hooks
            .iter()
            .all(|h| signature_verifies(&h.signature, &h.body))
    );
}

#[test]
fn an_https_webhook_behind_a_private_ca_gets_signed_events() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = TempDir::new("alerts-https");
    let Some(pki) = TestPki::new(dir.path()) else {
        return;
    };
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let hook_port = free_tcp_port();
    let got = tls_receiver(hook_port, &pki);
    let config = write_config(
        dir.path(),
        &broker.url(),
        http_addr,
        &format!(
            "[[alerts.webhook]]\nurl = \"https://127.0.0.1:{hook_port}/hook\"\n\
             secret_file = \"webhook.secret\"\nca_file = \"{}\"\n",
            pki.ca.display()
        ),
    );
    let _c = start_collector(&config, http_addr);
    let fleet = Fleet::start(broker.port);
    fleet.down.store(true, Ordering::SeqCst);
    assert!(
        wait_until(LONG, || !got.lock().unwrap().is_empty()),
        "nothing arrived over https"
    );
    let h = got.lock().unwrap()[0].clone();
    assert!(signature_verifies(&h.signature, &h.body));
    assert!(h.event_id.contains(":opened:1"), "{}", h.event_id);
}
