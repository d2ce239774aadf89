//! Central agent config and maintenance windows in cluster mode, on real processes:
//! a three-node NATS cluster, a site worker, a correlator and its standby with
//! `[[fleet.target]]`s, PostgreSQL, and a real agent on a NATS node's MQTT listener.
//!
//! - the active correlator publishes the site's config (retained) and the agent
//!   applies it and measures the central target (its windows reach history, its
//!   per-probe metrics topics reach MQTT subscribers through the site worker);
//! - a SIGHUP to both correlators adds a target: the active one publishes it;
//! - a maintenance window added over HTTP at the standby is in force at the active
//!   correlator;
//! - the active correlator is SIGKILLed: the standby takes over with the targets of
//!   its own latest SIGHUP, publishes nothing new for an unchanged config, and
//!   publishes its next reload.
//!
//! Skips (with the reason) when nats-server or PostgreSQL is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faultline_tests::nats::NatsCluster;
use faultline_tests::{
    Child, TempDir, free_tcp_port, http_request, log_of, spawn_logged, tcp_sink, wait_until,
    workspace_bin,
};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);
const SITE: &str = "acme-hq";
const PARTITIONS: u32 = 16;
const TOKEN: &str = "s3cret-token-for-the-cluster-test";

/// A collector's config in the cluster, HTTP on `http` (with the token), with
/// `fleet` (`[[fleet.target]]` tables).
fn write_config(
    dir: &Path,
    nats: &NatsCluster,
    db: &str,
    (name, role, http): (&str, &str, u16),
    fleet: &str,
) -> PathBuf {
    let list = |v: Vec<String>| {
        v.iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(dir.join("http.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        &path,
        format!(
            "window_seconds = 1\n[http]\nlisten = \"127.0.0.1:{http}\"\ntoken_file = \"http.token\"\n\
             [storage]\nurl = \"{db}\"\n\
             [cluster]\nrole = \"{role}\"\nname = \"{name}\"\nnats = [{}]\nmqtt = [{}]\n\
             partitions = {PARTITIONS}\nlease_ms = 3000\n{fleet}",
            list(nats.urls()),
            list(nats.mqtt_urls()),
        ),
    )
    .unwrap();
    path
}

fn fleet_target(name: &str, port: u16) -> String {
    format!(
        "[[fleet.target]]\nname = \"{name}\"\nlayer = \"lan\"\nkind = \"tcp\"\n\
         host = \"127.0.0.1:{port}\"\nsites = [\"acme-*\"]\n"
    )
}

fn spawn(dir: &Path, name: &str, cfg: &Path) -> Child {
    spawn_logged(env!("CARGO_BIN_EXE_faultline-collector"), dir, name, cfg)
}

fn log(dir: &Path, name: &str) -> String {
    log_of(dir, name)
}

/// Everything on the site's topics and its per-probe metrics topics at the MQTT
/// listener on `port`, in arrival order.
fn watch(port: u16) -> Arc<Mutex<Vec<(String, Value)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut opts = MqttOptions::new("cluster-config-test", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 100);
    let s = seen.clone();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for f in [
                        format!("faultline/v1/sites/{SITE}/#"),
                        format!("faultline/v1/metrics/{SITE}/#"),
                    ] {
                        let _ = client.try_subscribe(f, QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    s.lock().unwrap().push((p.topic.clone(), v));
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    seen
}

fn all(seen: &Mutex<Vec<(String, Value)>>, leaf: &str) -> Vec<Value> {
    let topic = format!("faultline/v1/sites/{SITE}/{leaf}");
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t == topic)
        .map(|(_, v)| v.clone())
        .collect()
}

/// The target names of the newest config seen carrying every one of `names`; its
/// version once the agent says it applied it.
fn applied_with(seen: &Mutex<Vec<(String, Value)>>, names: &[&str]) -> Option<u64> {
    let config = all(seen, "config").into_iter().rev().find(|c| {
        let have: Vec<&str> = c["targets"]
            .as_array()
            .map(|ts| ts.iter().filter_map(|t| t["name"].as_str()).collect())
            .unwrap_or_default();
        names.iter().all(|n| have.contains(n))
    })?;
    let v = config["version"].as_u64()?;
    all(seen, "config/status")
        .iter()
        .any(|s| s["state"] == "applied" && s["version"] == v)
        .then_some(v)
}

/// Windows history holds in which the site measured `target`.
fn measured(db: &str, target: &str) -> i64 {
    let Ok(mut c) = postgres::Client::connect(db, postgres::NoTls) else {
        return 0;
    };
    c.query_one(
        "SELECT count(*) FROM site_targets WHERE site = $1 AND target = $2",
        &[&SITE, &target],
    )
    .map_or(0, |r| r.get(0))
}

#[test]
fn central_configs_and_maintenance_windows_span_both_correlators() {
    let Some(nats) = NatsCluster::start(3, PARTITIONS) else {
        return;
    };
    let Some(pg) = faultline_tests::postgres::Postgres::start() else {
        return;
    };
    let db = pg.database();
    let tmp = TempDir::new("cluster-config");
    let dir = tmp.path();
    let (port_a, port_b, port_c, port_web) = (tcp_sink(), tcp_sink(), tcp_sink(), tcp_sink());
    let (port_http_a, port_http_b) = (free_tcp_port(), free_tcp_port());
    let fleet_ab = format!(
        "{}{}",
        fleet_target("central-a", port_a),
        fleet_target("central-b", port_b)
    );

    let http = |name: &str| {
        let port = match name {
            "fleet-a" => port_http_a,
            _ => port_http_b,
        };
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    };
    let fleet_cfg = |name: &str, fleet: &str| {
        write_config(dir, &nats, &db, (name, "fleet", http(name).port()), fleet)
    };
    let worker = spawn(
        dir,
        "worker",
        &write_config(dir, &nats, &db, ("worker", "site", free_tcp_port()), ""),
    );
    let mut fleet_a = spawn(
        dir,
        "fleet-a",
        &fleet_cfg("fleet-a", &fleet_target("central-a", port_a)),
    );
    assert!(
        wait_until(LONG, || log(dir, "fleet-a").contains("lease taken")),
        "fleet-a never took the lease:\n{}",
        log(dir, "fleet-a")
    );
    let fleet_b = spawn(
        dir,
        "fleet-b",
        &fleet_cfg("fleet-b", &fleet_target("central-a", port_a)),
    );
    assert!(wait_until(LONG, || log(dir, "worker").contains("partition taken")));

    // A real agent on a NATS node's MQTT listener, its own target `web` only.
    let mqtt = nats.nodes[0].mqtt;
    let seen = watch(mqtt);
    let agent_toml = dir.join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "site = \"{SITE}\"\nisp = \"TestNet\"\nwindow_seconds = 1\nstate_dir = \"{}\"\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt}\"\nreconnect_max_seconds = 1\n\
             [[target]]\nname = \"web\"\nlayer = \"internet\"\nkind = \"tcp\"\n\
             host = \"127.0.0.1:{port_web}\"\n",
            dir.join("agent-state").display()
        ),
    )
    .unwrap();
    let _agent = Child::spawn(
        "faultline-agent",
        Command::new(workspace_bin("faultline-agent"))
            .args(["run", "--config"])
            .arg(&agent_toml)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    )
    .unwrap();

    // The active correlator publishes the site's config; the agent applies it and
    // measures the central target (the site worker stores its windows).
    let v_a = wait_until(LONG, || applied_with(&seen, &["central-a"]).is_some());
    assert!(
        v_a,
        "no applied config with central-a: {:?} / {:?}\n{}",
        all(&seen, "config"),
        all(&seen, "config/status"),
        log(dir, "fleet-a")
    );
    assert!(
        wait_until(LONG, || measured(&db, "central-a") > 0),
        "central-a never measured"
    );
    // The site worker publishes its per-probe metrics topics (on core NATS).
    let metrics_topic = format!("faultline/v1/metrics/{SITE}/central-a");
    assert!(
        wait_until(LONG, || seen
            .lock()
            .unwrap()
            .iter()
            .any(|(t, v)| *t == metrics_topic
                && v["site"] == SITE
                && v["sent"].is_u64())),
        "no metrics on {metrics_topic}"
    );

    // A SIGHUP to both correlators adds central-b: the active one publishes it.
    fleet_cfg("fleet-a", &fleet_ab);
    fleet_cfg("fleet-b", &fleet_ab);
    fleet_a.signal("HUP");
    fleet_b.signal("HUP");
    assert!(
        wait_until(LONG, || applied_with(&seen, &["central-a", "central-b"])
            .is_some()),
        "central-b not applied: {:?}",
        all(&seen, "config")
    );
    let v_ab = applied_with(&seen, &["central-a", "central-b"]).unwrap();
    assert!(wait_until(LONG, || measured(&db, "central-b") > 0));

    // A maintenance window added at the standby is in force at the active one.
    let auth = [format!("Authorization: Bearer {TOKEN}")];
    let added = http_request(
        http("fleet-b"),
        "POST",
        "/api/maintenance",
        &auth,
        r#"{"scope": "provider", "id": "voipco", "from": "2026-01-01T00:00:00Z", "to": "2099-12-01T04:00:00Z"}"#,
    );
    assert_eq!(added.status, 201, "{}", added.body);
    let listed = |name: &str| {
        http_request(http(name), "GET", "/api/maintenance", &auth, "")
            .body
            .contains("\"voipco\"")
    };
    assert!(listed("fleet-b"));
    assert!(
        wait_until(LONG, || listed("fleet-a")),
        "the window never reached fleet-a: {}",
        http_request(http("fleet-a"), "GET", "/api/maintenance", &auth, "").body
    );

    // The active correlator dies: the standby takes over with its own reloaded
    // targets, so the config stays as it is.
    fleet_a.signal("KILL");
    fleet_a.kill();
    assert!(
        wait_until(LONG, || log(dir, "fleet-b").contains("lease taken")),
        "fleet-b never took over:\n{}",
        log(dir, "fleet-b")
    );
    std::thread::sleep(Duration::from_secs(4));
    let versions: Vec<u64> = all(&seen, "config")
        .iter()
        .filter_map(|c| c["version"].as_u64())
        .collect();
    assert_eq!(
        versions.last(),
        Some(&v_ab),
        "a takeover changed nothing: {versions:?}"
    );

    // Its next reload is published.
    fleet_cfg(
        "fleet-b",
        &format!("{fleet_ab}{}", fleet_target("central-c", port_c)),
    );
    fleet_b.signal("HUP");
    assert!(
        wait_until(LONG, || applied_with(
            &seen,
            &["central-a", "central-b", "central-c"]
        )
        .is_some()),
        "central-c not applied after the takeover: {:?}\n{}",
        all(&seen, "config"),
        log(dir, "fleet-b")
    );
    assert!(wait_until(LONG, || measured(&db, "central-c") > 0));
    drop(worker);
}
