//! Central agent config end to end, with real processes on loopback: a collector
//! with `[[fleet.target]]`s, a real Mosquitto and a real agent whose agent.toml holds
//! no targets of its own but one that a central target of the same name loses to.
//!
//! - a new fleet target reaches the agent's reports after the collector's SIGHUP;
//! - a bad central config is rejected on `config/status` naming the target and key,
//!   and the previous targets keep being measured;
//! - an agent restarted while the broker is down measures with the last applied
//!   config (its spooled reports, delivered when the broker is back, show it).
//!
//! Skips (with the reason) when Mosquitto is missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faultline_tests::{
    Child, Collector, Mosquitto, TempDir, free_tcp_port, tcp_sink, wait_until, workspace_bin,
};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

/// Generous: a loaded CI machine is slow; nothing here asserts how fast.
const LONG: Duration = Duration::from_secs(90);
const SITE: &str = "acme-hq";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn topic(leaf: &str) -> String {
    format!("faultline/v1/sites/{SITE}/{leaf}")
}

/// Every message on the site's topics, in arrival order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, Value)>>>);

impl Seen {
    fn all(&self, topic: &str) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn reports(&self) -> Vec<Value> {
        self.all(&topic("report/json"))
    }

    /// Reports arrived so far (to look only at those that come after).
    fn mark(&self) -> usize {
        self.reports().len()
    }

    fn reports_since(&self, mark: usize) -> Vec<Value> {
        self.reports().split_off(mark.min(self.reports().len()))
    }
}

/// The targets a report measured.
fn targets(report: &Value) -> Vec<String> {
    report["probes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["target"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A probe of `report` by target name.
fn probe<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["probes"]
        .as_array()?
        .iter()
        .find(|p| p["target"] == name)
}

fn subscriber(port: u16) -> (Seen, Client) {
    let seen = Seen::default();
    let mut opts = MqttOptions::new("central-config-test", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    // A persistent session: what is published while it reconnects after the broker's
    // restart is queued for it, not missed.
    opts.set_clean_session(false);
    let (client, mut conn) = Client::new(opts, 100);
    let s = seen.clone();
    let c = client.clone();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ =
                        c.try_subscribe(format!("faultline/v1/sites/{SITE}/#"), QoS::AtLeastOnce);
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
    (seen, client)
}

/// `[[fleet.target]]` tables: tcp targets on loopback ports.
fn fleet_target(name: &str, port: u16, sites: &str) -> String {
    format!(
        "[[fleet.target]]\nname = \"{name}\"\nlayer = \"lan\"\nkind = \"tcp\"\n\
         host = \"127.0.0.1:{port}\"\nsites = {sites}\n"
    )
}

fn write_collector_config(
    dir: &Path,
    broker: &Mosquitto,
    http: SocketAddr,
    fleet: &str,
) -> PathBuf {
    Collector::write_config(dir, &broker.url(), http, fleet)
}

fn start_collector(config: &Path, http: SocketAddr) -> Collector {
    Collector::start(env!("CARGO_BIN_EXE_faultline-collector"), config, http)
}

/// agent.toml without central keys beyond site, isp, [mqtt] and its local `web`
/// target (which wins over the central one of the same name).
fn write_agent_config(dir: &Path, broker: &Mosquitto, local_port: u16) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "site = \"{SITE}\"\nisp = \"TestNet\"\nwindow_seconds = 1\nformat = \"json\"\n\
             state_dir = \"{}\"\n[mqtt]\nurl = \"{}\"\nreconnect_max_seconds = 1\n\
             [[target]]\nname = \"web\"\nlayer = \"internet\"\nkind = \"tcp\"\n\
             host = \"127.0.0.1:{local_port}\"\n",
            dir.join("state").display(),
            broker.url()
        ),
    )
    .unwrap();
    path
}

fn start_agent(config: &Path) -> Child {
    Child::spawn(
        "faultline-agent",
        Command::new(workspace_bin("faultline-agent"))
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    )
    .unwrap()
}

/// Waits for a report arriving after `mark` that measured every one of `names`.
fn wait_for_targets(seen: &Seen, mark: usize, names: &[&str]) -> Value {
    let mut found = None;
    let ok = wait_until(LONG, || {
        found = seen
            .reports_since(mark)
            .into_iter()
            .find(|r| names.iter().all(|n| targets(r).iter().any(|t| t == n)));
        found.is_some()
    });
    assert!(
        ok,
        "no report with {names:?}; last: {:?}",
        seen.reports().last()
    );
    found.unwrap()
}

#[test]
fn central_targets_reach_the_agent_bad_ones_are_rejected_and_a_restart_offline_keeps_them() {
    // As root Mosquitto would drop to its own user, which cannot write its state
    // here; the state carries this test's subscription across the broker's restart.
    let user = if faultline_tests::lab::is_root() {
        "user root"
    } else {
        ""
    };
    let Some(mut broker) = Mosquitto::start_with(user) else {
        return;
    };
    let dir = TempDir::new("central-config");
    // Every target connects to a listener of this test: loopback only.
    let (port_a, port_b, port_web) = (tcp_sink(), tcp_sink(), tcp_sink());
    let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let (seen, client) = subscriber(broker.port);
    // `web` is central too, but the agent's own `web` wins.
    let fleet = format!(
        "{}{}",
        fleet_target("central-a", port_a, "[\"acme-*\"]"),
        fleet_target("web", port_a, "[\"*\"]")
    );
    let collector_toml = write_collector_config(dir.path(), &broker, http, &fleet);
    let collector = start_collector(&collector_toml, http);
    let agent_toml = write_agent_config(dir.path(), &broker, port_web);
    let mut agent = start_agent(&agent_toml);

    // The central target is measured beside the local one, and the local `web` wins.
    let r = wait_for_targets(&seen, 0, &["web", "central-a"]);
    assert_eq!(targets(&r).len(), 2, "{r}");
    assert!(probe(&r, "web").is_some());
    let applied = seen.all(&topic("config/status"));
    assert!(
        applied.iter().any(|s| s["state"] == "applied"),
        "{applied:?}"
    );

    // (a) A new fleet target, a SIGHUP: the agent measures it.
    let fleet_b = format!(
        "{fleet}{}",
        fleet_target("central-b", port_b, "[\"acme-hq\"]")
    );
    write_collector_config(dir.path(), &broker, http, &fleet_b);
    let mark = seen.mark();
    collector.child.signal("HUP");
    let r = wait_for_targets(&seen, mark, &["web", "central-a", "central-b"]);
    assert_eq!(probe(&r, "central-b").unwrap()["received"], 1, "{r}");
    let config = seen.all(&topic("config")).pop().unwrap();
    let v_b = config["version"].as_u64().unwrap();
    assert!(
        wait_until(LONG, || seen
            .all(&topic("config/status"))
            .iter()
            .any(|s| s["state"] == "applied" && s["version"] == v_b)),
        "config v{v_b} not applied: {:?}",
        seen.all(&topic("config/status"))
    );

    // A bad collector.toml on SIGHUP: logged, the running config stays, no new version.
    let bad_toml = format!("{fleet_b}{}", fleet_target("bad", 1, "[\"acme-hq\"]"))
        .replace("host = \"127.0.0.1:1\"", "host = \"127.0.0.1\"");
    write_collector_config(dir.path(), &broker, http, &bad_toml);
    collector.child.signal("HUP");

    // (b) A bad central config (published by hand, newer than the collector's): the
    // agent rejects it naming target and key, and keeps measuring what it had.
    let bad_version = v_b + 1_000_000;
    let bad = format!(
        r#"{{"version": {bad_version}, "targets": [
            {{"name": "central-a", "layer": "lan", "kind": "tcp", "host": "127.0.0.1:{port_a}"}},
            {{"name": "central-c", "layer": "lan", "kind": "stamp", "host": "127.0.0.1", "pps": 0}}]}}"#
    );
    let mark = seen.mark();
    client
        .publish(topic("config"), QoS::AtLeastOnce, true, bad.into_bytes())
        .unwrap();
    let mut rejected = None;
    assert!(
        wait_until(LONG, || {
            rejected = seen
                .all(&topic("config/status"))
                .into_iter()
                .find(|s| s["state"] == "rejected");
            rejected.is_some()
        }),
        "no rejection: {:?}",
        seen.all(&topic("config/status"))
    );
    let rejected = rejected.unwrap();
    assert_eq!(rejected["version"], bad_version);
    // The collector counts it (and logged it).
    assert!(
        wait_until(LONG, || collector
            .metric("faultline_collector_config_rejections_total")
            >= 1.0),
        "the collector did not count the rejection"
    );
    let error = rejected["error"].as_str().unwrap();
    assert!(
        error.contains("targets[1] (name \"central-c\").pps"),
        "the error names the target and key: {error}"
    );
    // The previous targets keep being measured (and central-c never is).
    let r = wait_for_targets(&seen, mark, &["web", "central-a", "central-b"]);
    assert!(!targets(&r).contains(&"central-c".to_owned()), "{r}");
    // The collector replaces the stray config with its own, newer still.
    assert!(
        wait_until(LONG, || seen
            .all(&topic("config/status"))
            .iter()
            .any(
                |s| s["state"] == "applied" && s["version"].as_u64() > Some(bad_version)
            )),
        "the collector did not restore its config: {:?}",
        seen.all(&topic("config/status"))
    );
    assert!(
        seen.all(&topic("config"))
            .iter()
            .all(|c| !c.to_string().contains("\"bad\"")),
        "a bad collector.toml must not be published"
    );

    // (c) The agent restarts while the broker is down: it measures with the stored
    // config; its spooled reports show it once the broker is back.
    let old_boot = seen.reports().last().unwrap()["boot"].clone();
    agent.signal("TERM");
    assert!(agent.wait_timeout(LONG).is_some(), "the agent did not stop");
    broker.stop();
    let agent = start_agent(&agent_toml);
    let offline_from = now_ms();
    // A few windows measured with no broker (nothing observable until it is back).
    std::thread::sleep(Duration::from_secs(4));
    let back_at = now_ms();
    broker.restart(true);
    let mut offline = None;
    assert!(
        wait_until(LONG, || {
            offline = seen.reports().into_iter().find(|r| {
                r["boot"] != old_boot
                    && r["start_ms"]
                        .as_u64()
                        .is_some_and(|s| s >= offline_from && s < back_at)
            });
            offline.is_some()
        }),
        "no report measured while the broker was down arrived"
    );
    let r = offline.unwrap();
    for t in ["web", "central-a", "central-b"] {
        assert!(targets(&r).contains(&t.to_owned()), "{t} missing from {r}");
    }
    drop(agent);
    drop(collector);
}

/// The collector's `check` judges a `[[fleet.target]]` by the agent's rules: the same
/// target, wrong the same way, gets the same message from both, each naming its
/// table, key and line.
#[test]
fn collector_and_agent_check_a_target_with_the_same_rules_and_message() {
    let dir = TempDir::new("central-check");
    let target = "name = \"media\"\nlayer = \"provider\"\nprovider = \"voipco\"\n\
                  kind = \"stamp\"\nhost = \"127.0.0.1\"\npps = 0\n";
    let collector_toml = dir.path().join("collector.toml");
    std::fs::write(&collector_toml, format!("[[fleet.target]]\n{target}")).unwrap();
    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "site = \"a\"\nisp = \"b\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[[target]]\n{target}"
        ),
    )
    .unwrap();
    let run = |bin: PathBuf, config: &Path| {
        let out = Command::new(bin)
            .args(["check", "--config"])
            .arg(config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    };
    let from_collector = run(
        env!("CARGO_BIN_EXE_faultline-collector").into(),
        &collector_toml,
    );
    let from_agent = run(workspace_bin("faultline-agent"), &agent_toml);
    let message = "pps: expected an integer 1-1000, got 0";
    assert!(
        from_collector.ends_with(&format!("collector.toml:7: fleet.target[0].{message}")),
        "{from_collector}"
    );
    assert!(
        from_agent.ends_with(&format!("agent.toml:11: target[0].{message}")),
        "{from_agent}"
    );

    // Valid, `check` lists the fleet targets and their sites.
    std::fs::write(
        &collector_toml,
        format!(
            "[[fleet.target]]\n{}sites = [\"acme-*\"]\n",
            target.replace("pps = 0\n", "")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_faultline-collector"))
        .args(["check", "--config"])
        .arg(&collector_toml)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("fleet:  1 central targets"), "{stdout}");
    assert!(stdout.contains("  media for sites acme-*"), "{stdout}");
}
