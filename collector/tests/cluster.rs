//! Cluster mode end to end, on real processes: a three-node NATS cluster
//! (JetStream, MQTT listeners, partition mapping), two site workers, a correlator
//! and its standby, the fleet simulator's sites publishing over MQTT to the NATS
//! nodes. During a provider outage one site worker, then one NATS node, then the
//! active correlator are SIGKILLed. History must hold every window exactly once,
//! no verdict may be false, and the verdicts must be those of a one-node `replay`
//! of the same reports (the same sequence of states for each verdict).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use faultline_shared::{Id, Topics};
use faultline_tests::fleet::{Fault, Fleet, Script};
use faultline_tests::nats::NatsCluster;
use faultline_tests::{Child, TempDir, free_tcp_port, http_get, log_of, spawn_logged, wait_until};

const SITES: usize = 500;
const WINDOW_MS: u32 = 3_000;
const WINDOWS: u64 = 30;
const OUTAGE: std::ops::Range<u64> = 6..20;
const PARTITIONS: u32 = 16;
const LEASE_MS: u64 = 4_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A collector's config in the cluster: its role, the NATS nodes, the shared
/// PostgreSQL; HTTP (the pages and API) on `http`.
fn config(
    dir: &Path,
    nats: &NatsCluster,
    db: &str,
    (name, role): (&str, &str),
    http: u16,
) -> PathBuf {
    let urls = |v: Vec<String>| {
        v.iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "window_seconds = {}\n[http]\nlisten = \"127.0.0.1:{http}\"\n[storage]\nurl = \"{db}\"\n\
         [providers.voipco]\nalternate = \"voipco2\"\n[providers.voipco2]\n\
         [cluster]\nrole = \"{role}\"\nname = \"{name}\"\nnats = [{}]\nmqtt = [{}]\n\
         partitions = {PARTITIONS}\nlease_ms = {LEASE_MS}\n",
        WINDOW_MS / 1000,
        urls(nats.urls()),
        urls(nats.mqtt_urls()),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(dir: &Path, name: &str, cfg: &Path) -> Child {
    spawn_logged(env!("CARGO_BIN_EXE_faultline-collector"), dir, name, cfg)
}

fn log(dir: &Path, name: &str) -> String {
    log_of(dir, name)
}

/// One recorded message, as `replay` reads it.
fn record(out: &Mutex<Vec<String>>, topic: &str, payload: serde_json::Value) {
    let line = serde_json::json!({"at_ms": now_ms(), "topic": topic, "payload": payload});
    out.lock().unwrap().push(line.to_string());
}

/// The agents: each site on one NATS node's MQTT listener (round-robin), its
/// retained status first, then one report a window in real time. A site whose node
/// is dead moves to the next live node and sends its last two windows again (an
/// agent's outbox resends what was not acknowledged).
fn agents(
    fleet: Fleet,
    mqtt: Vec<u16>,
    dead: Arc<Mutex<Vec<bool>>>,
    progress: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    rec: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use rumqttc::{AsyncClient, MqttOptions, QoS};
            let mut fleet = fleet;
            let topics = Topics::default();
            let mut clients = Vec::new();
            for (i, port) in mqtt.iter().enumerate() {
                let mut o = MqttOptions::new(format!("agents-{i}"), "127.0.0.1", *port);
                // A kept session: what the listener did not acknowledge before it
                // dropped the connection is sent again (as an agent's outbox does).
                o.set_keep_alive(Duration::from_secs(5))
                    .set_clean_session(false)
                    .set_inflight(2000)
                    .set_max_packet_size(64 * 1024, 64 * 1024);
                let (c, mut el) = AsyncClient::new(o, 20_000);
                tokio::spawn(async move {
                    loop {
                        if el.poll().await.is_err() {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                });
                clients.push(c);
            }
            let n = clients.len();
            let node_of =
                |i: usize, dead: &[bool]| (0..n).map(|k| (i + k) % n).find(|&k| !dead[k]).unwrap();
            let sites = fleet.sites().to_vec();
            for (i, s) in sites.iter().enumerate() {
                let st = fleet.status(s);
                let topic = topics.status(&s.id);
                record(&rec, &topic, serde_json::to_value(&st).unwrap());
                clients[i % n]
                    .publish(
                        topic,
                        QoS::AtLeastOnce,
                        true,
                        serde_json::to_vec(&st).unwrap(),
                    )
                    .await
                    .unwrap();
            }
            let t0 = tokio::time::Instant::now() + Duration::from_millis(500);
            let mut was_dead = vec![false; n];
            let mut history: Vec<Vec<faultline_shared::Report>> = Vec::new();
            // WINDOWS windows, then healthy ones until told to stop (the collectors
            // are stopped first: sites going quiet at the end are not news).
            for seq in 0.. {
                if seq >= WINDOWS && stop.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep_until(t0 + Duration::from_millis(u64::from(WINDOW_MS) * seq))
                    .await;
                let dead_now = dead.lock().unwrap().clone();
                let reports = fleet.window(seq);
                // Sites of a node that died since the last window resend its last two.
                let mut resend = Vec::new();
                for k in 0..n {
                    if dead_now[k] && !was_dead[k] {
                        for w in history.iter().rev().take(2).rev() {
                            resend.extend(
                                w.iter()
                                    .filter(|r| {
                                        sites.iter().position(|s| s.id == r.site).unwrap() % n == k
                                    })
                                    .cloned(),
                            );
                        }
                    }
                }
                was_dead = dead_now.clone();
                for r in resend.iter().chain(reports.iter()) {
                    let i = sites.iter().position(|s| s.id == r.site).unwrap();
                    let topic = topics.report(&r.site);
                    record(&rec, &topic, serde_json::to_value(r).unwrap());
                    let bytes = faultline_shared::encode(r).unwrap();
                    let _ = clients[node_of(i % n, &dead_now)]
                        .publish(topic, QoS::AtLeastOnce, false, bytes)
                        .await;
                }
                history.push(reports);
                progress.store(seq + 1, Ordering::SeqCst);
            }
            // Let the last publishes drain.
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
    })
}

fn db(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
}

/// One number from a query.
fn count(url: &str, sql: &str) -> i64 {
    db(url)
        .query_one(sql, &[])
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0)
}

/// (scope, id) → the sequence of states, from verdicts in order.
fn sequences(verdicts: &[serde_json::Value]) -> BTreeMap<(String, String), Vec<String>> {
    let mut m: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for v in verdicts {
        let key = (
            v["scope"].as_str().unwrap().to_owned(),
            v["id"].as_str().unwrap().to_owned(),
        );
        let state = v["state"].as_str().unwrap().to_owned();
        let seq = m.entry(key).or_default();
        if seq.last() != Some(&state) {
            seq.push(state);
        }
    }
    m
}

#[test]
fn a_cluster_survives_a_worker_a_node_and_the_correlator_dying_during_an_outage() {
    let Some(mut nats) = NatsCluster::start(3, PARTITIONS) else {
        return;
    };
    let Some(pg) = faultline_tests::postgres::Postgres::start() else {
        return;
    };
    let url = pg.database();
    let tmp = TempDir::new("cluster");
    let dir = tmp.path().to_path_buf();
    let http: BTreeMap<&str, u16> = ["fleet-a", "fleet-b", "worker-a", "worker-b"]
        .into_iter()
        .map(|n| (n, free_tcp_port()))
        .collect();
    let cfgs: Vec<(String, PathBuf)> = [
        ("fleet-a", "fleet"),
        ("fleet-b", "fleet"),
        ("worker-a", "site"),
        ("worker-b", "site"),
    ]
    .iter()
    .map(|(n, r)| (n.to_string(), config(&dir, &nats, &url, (n, r), http[n])))
    .collect();
    let mut procs: BTreeMap<String, Child> = BTreeMap::new();
    for (name, cfg) in &cfgs {
        procs.insert(name.clone(), spawn(&dir, name, cfg));
        if name == "fleet-a" {
            // fleet-a is the active one at first.
            assert!(
                wait_until(Duration::from_secs(60), || log(&dir, "fleet-a")
                    .contains("lease taken")),
                "fleet-a never took the lease:\n{}\n{}",
                log(&dir, "fleet-a"),
                nats.log(0)
            );
        }
    }
    assert!(
        wait_until(Duration::from_secs(60), || {
            // The consumers exist before any report is sent (the listener's stream
            // keeps a message only while a consumer wants it), and both hold some.
            log(&dir, "worker-a").contains("partition consumers ready")
                && log(&dir, "worker-a").contains("partition taken")
                && log(&dir, "worker-b").contains("partition taken")
        }),
        "workers took no partitions:\n{}\n{}",
        log(&dir, "worker-a"),
        log(&dir, "worker-b")
    );

    let voipco = Id::new("voipco").unwrap();
    let script = Script::new().with(
        Fault::ProviderDown { provider: voipco },
        OUTAGE.start,
        OUTAGE.end,
    );
    let start = now_ms();
    let fleet = Fleet::new(SITES, &Fleet::default_isps(), WINDOW_MS, start, 14).with_script(script);
    let dead = Arc::new(Mutex::new(vec![false; 3]));
    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rec = Arc::new(Mutex::new(Vec::new()));
    let mqtt: Vec<u16> = nats.nodes.iter().map(|n| n.mqtt).collect();
    let publisher = agents(
        fleet,
        mqtt,
        dead.clone(),
        progress.clone(),
        stop.clone(),
        rec.clone(),
    );

    let at = |w: u64| {
        assert!(wait_until(Duration::from_secs(120), || progress
            .load(Ordering::SeqCst)
            >= w));
    };
    // Two windows into the outage: a site worker dies.
    at(OUTAGE.start + 2);
    let taken = |d: &Path| log(d, "worker-b").matches("partition taken").count();
    let before = taken(&dir);
    procs.get_mut("worker-a").unwrap().signal("KILL");
    procs.get_mut("worker-a").unwrap().kill();
    let killed_worker = Instant::now();
    // Measured, not asserted (this machine is shared and noisy).
    wait_until(Duration::from_secs(60), || taken(&dir) > before);
    let worker_handover = killed_worker.elapsed();
    // Then a NATS node (its agents move to the others).
    at(OUTAGE.start + 5);
    dead.lock().unwrap()[2] = true;
    nats.kill(2);
    // Then the active correlator.
    at(OUTAGE.start + 8);
    procs.get_mut("fleet-a").unwrap().signal("KILL");
    procs.get_mut("fleet-a").unwrap().kill();
    let killed_fleet = Instant::now();
    wait_until(Duration::from_secs(60), || {
        log(&dir, "fleet-b").contains("lease taken")
    });
    let fleet_handover = killed_fleet.elapsed();
    at(WINDOWS);

    // Every window reaches history (the survivors take over what the dead held).
    let want = (SITES as u64 * WINDOWS) as i64;
    let below = format!("FROM windows WHERE seq < {WINDOWS}");
    let stored = || count(&url, &format!("SELECT count(*) {below}"));
    let all_in = wait_until(Duration::from_secs(90), || stored() >= want);
    // Let the correlator evaluate the last windows.
    std::thread::sleep(Duration::from_millis(u64::from(WINDOW_MS) * 2));
    // What an MQTT dashboard sees on a surviving node: the retained verdict.
    let retained = faultline_tests::require("mosquitto_sub", "mosquitto-clients").map(|sub| {
        let port = nats.nodes[0].mqtt.to_string();
        let out = Command::new(sub)
            .args(["-h", "127.0.0.1", "-p", &port, "-C", "1", "-W", "20"])
            .args(["-t", "faultline/v1/state/providers/voipco"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    });
    // The active correlator's pages and API show the same verdict.
    let api = http_get(
        std::net::SocketAddr::from(([127, 0, 0, 1], http["fleet-b"])),
        "/api/state",
    );
    let metrics = http_get(
        std::net::SocketAddr::from(([127, 0, 0, 1], http["fleet-b"])),
        "/metrics",
    );
    // The surviving worker (every partition now) serves its sites' probe series.
    let worker_metrics = http_get(
        std::net::SocketAddr::from(([127, 0, 0, 1], http["worker-b"])),
        "/metrics",
    );
    for name in ["worker-b", "fleet-b"] {
        let p = procs.get_mut(name).unwrap();
        p.signal("TERM");
        p.wait_timeout(Duration::from_secs(30));
    }
    stop.store(true, Ordering::SeqCst);
    publisher.join().unwrap();
    let wb = log(&dir, "worker-b");
    let fb = log(&dir, "fleet-b");
    // Every check below is made; all failures are reported together.
    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    check(
        all_in,
        format!("history holds {} of {want} windows", stored()),
    );
    let state: serde_json::Value = serde_json::from_str(&api).unwrap_or_default();
    let voipco_api = state["providers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["id"] == "voipco")
        .cloned();
    check(
        voipco_api.as_ref().is_some_and(|v| v["state"] == "ok"),
        format!("the active correlator's /api/state: voipco {voipco_api:?} in {api:.400}"),
    );
    check(
        metrics
            .contains("faultline_verdict_state{scope=\"provider\",id=\"voipco\",state=\"ok\"} 1"),
        format!("the active correlator's /metrics lacks voipco ok:\n{metrics:.2000}"),
    );
    let probe_series = worker_metrics
        .lines()
        .filter(|l| l.starts_with("faultline_probe_loss_ratio{site="))
        .count();
    check(
        probe_series >= SITES
            && worker_metrics.contains("faultline_collector_mqtt_connected 1")
            && !worker_metrics.contains("faultline_verdict_state{"),
        format!(
            "worker-b's /metrics: {probe_series} loss series for {SITES} sites:\n{worker_metrics:.2000}"
        ),
    );
    if let Some(r) = &retained {
        let v: serde_json::Value = serde_json::from_str(r).unwrap_or_default();
        check(
            v["state"] == "ok" && v["scope"] == "provider",
            format!("retained voipco verdict on a surviving node: {r:?}"),
        );
    }

    // PostgreSQL's key on (site, boot, seq) refuses a second copy; counted anyway.
    let rows = count(&url, &format!("SELECT count(*) {below}"));
    let distinct = count(
        &url,
        &format!("SELECT count(*) FROM (SELECT DISTINCT site, boot, seq {below}) d"),
    );
    check(
        rows == want && distinct == want,
        format!("{rows} window rows, {distinct} distinct windows, {want} sent: each exactly once"),
    );

    // Handover times (reported, not asserted: this machine is shared and noisy).
    check(
        fb.contains("lease taken"),
        "the standby never took over".into(),
    );
    eprintln!(
        "handover: a worker's partitions taken {worker_handover:?} after its SIGKILL, \
         the standby active {fleet_handover:?} after the correlator's ({WINDOW_MS} ms windows, \
         {LEASE_MS} ms leases)"
    );

    // The verdicts the cluster committed, in order.
    let cluster: Vec<serde_json::Value> = db(&url)
        .query("SELECT json FROM verdict_changes ORDER BY n", &[])
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .collect();

    // One node, the same reports: `replay` of what the agents sent.
    let lines = rec.lock().unwrap().clone();
    let mut sorted: Vec<(u64, String)> = lines
        .into_iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            (v["at_ms"].as_u64().unwrap(), l)
        })
        .collect();
    sorted.sort_by_key(|(t, _)| *t);
    let input = dir.join("sent.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for (_, l) in &sorted {
        writeln!(f, "{l}").unwrap();
    }
    drop(f);
    let one = dir.join("one-node.toml");
    std::fs::write(
        &one,
        format!(
            "window_seconds = {}\n[providers.voipco]\nalternate = \"voipco2\"\n[providers.voipco2]\n",
            WINDOW_MS / 1000
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--config")
        .arg(&one)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    // No false verdict: only voipco and the sites that probe it, for the outage.
    for v in &cluster {
        let (scope, id, state) = (
            v["scope"].as_str().unwrap(),
            v["id"].as_str().unwrap(),
            v["state"].as_str().unwrap(),
        );
        if state == "ok" {
            continue;
        }
        // Only voipco, and sites that see voipco bad: `provider`, or `path` where
        // the fleet does not (yet, or any more) call it an outage — as one node does.
        let fine = match scope {
            "provider" => id == "voipco",
            "site" => {
                (v["cause"] == "provider" || v["cause"] == "path") && v["provider"] == "voipco"
            }
            _ => false,
        };
        check(fine, format!("false verdict {v}"));
    }
    let (cs, rs) = (sequences(&cluster), sequences(&replayed));
    let voipco = cs.get(&("provider".into(), "voipco".into()));
    check(
        voipco == Some(&vec!["ok".to_owned(), "outage".into(), "ok".into()]),
        format!("voipco went {voipco:?}"),
    );
    let differ: Vec<_> = rs
        .iter()
        .filter(|(k, v)| cs.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone(), cs.get(k).cloned()))
        .collect();
    let extra: Vec<_> = cs.keys().filter(|k| !rs.contains_key(*k)).collect();
    check(
        differ.is_empty() && extra.is_empty(),
        format!(
            "cluster and one-node replay differ: {} verdicts ({:?}…), {} only in the cluster ({:?}…)",
            differ.len(),
            differ.iter().take(5).collect::<Vec<_>>(),
            extra.len(),
            extra.iter().take(5).collect::<Vec<_>>()
        ),
    );

    // One incident for the outage, never repeated or forked across the takeover.
    let ids: std::collections::BTreeSet<&str> = cluster
        .iter()
        .filter(|v| v["scope"] == "provider")
        .filter_map(|v| v["incident"].as_str())
        .collect();
    check(
        ids.len() == 1,
        format!("voipco's verdicts name incidents {ids:?}"),
    );
    let n = count(
        &url,
        "SELECT count(*) FROM incidents WHERE scope = 'provider'",
    );
    let distinct_ids = count(
        &url,
        "SELECT count(DISTINCT id) FROM incidents WHERE scope = 'provider'",
    );
    check(
        (n, distinct_ids) == (1, 1),
        format!("{n} provider incidents in history ({distinct_ids} ids)"),
    );
    assert!(
        failures.is_empty(),
        "{}\n--- worker-b\n{}\n--- fleet-b\n{}",
        failures.join("\n"),
        tail(&wb),
        tail(&fb)
    );
}

/// The last lines of a log, for a failure message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
