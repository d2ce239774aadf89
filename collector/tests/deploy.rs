//! What ships in `collector/deploy/` for Prometheus and Grafana works against the
//! collector as it is: the alert rules pass `promtool check rules` and their own unit
//! tests (`promtool test rules`), a running collector's `/metrics` passes `promtool
//! check metrics`, and every metric the rules and the Grafana dashboard query is one
//! the collector exports.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use faultline_tests::{Collector, TempDir, free_tcp_port, require, wait_for_tcp, wait_until};

const LONG: Duration = Duration::from_secs(60);

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn promtool(args: &[&str], dir: &Path, stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Metric names a PromQL text refers to (the collector's own: `faultline_…`).
fn faultline_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = promql;
    while let Some(i) = rest.find("faultline_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every PromQL expression in a Grafana dashboard: panel targets (rows included)
/// and templating queries.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    if require("promtool", "prometheus").is_none() {
        return;
    }
    let dir = deploy().join("prometheus");
    let (ok, out) = promtool(&["check", "rules", "faultline-rules.yml"], &dir, None);
    assert!(ok, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "faultline-rules.test.yml"], &dir, None);
    assert!(ok, "promtool test rules:\n{out}");
}

#[test]
fn rules_and_dashboard_query_only_what_the_collector_exports() {
    if require("promtool", "prometheus").is_none()
        || require("mosquitto_pub", "mosquitto-clients").is_none()
    {
        return;
    }
    // A collector (embedded broker) that has seen one site's report, so the probe
    // and verdict series carry samples, not only their TYPE lines.
    let dir = TempDir::new("deploy");
    let (v4, v5, http) = (free_tcp_port(), free_tcp_port(), Collector::free_http());
    // The embedded broker: no [mqtt] url.
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "window_seconds = 1\n[http]\nlisten = \"{http}\"\n[storage]\npath = \"h.db\"\n\
             [broker]\nlisten = \"127.0.0.1:{v4}\"\nlisten_v5 = \"127.0.0.1:{v5}\"\n"
        ),
    )
    .unwrap();
    let collector = Collector::start(env!("CARGO_BIN_EXE_faultline-collector"), &config, http);
    assert!(wait_for_tcp(SocketAddr::from(([127, 0, 0, 1], v4)), LONG));
    // Reports until one shows (the collector subscribes a moment after its broker
    // listens, and a QoS 1 message with no subscriber yet is dropped).
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut seq = 0u64;
    let mut metrics = String::new();
    let shown = wait_until(LONG, || {
        let report = serde_json::json!({
            "v": 1, "site": "deploy-site", "boot": 7, "seq": seq,
            "start_ms": start_ms + seq * 1000, "window_ms": 1000,
            "probes": [
                {"target": "gw", "layer": "lan", "kind": "icmp", "sent": 10, "received": 10,
                 "rtt_ms": {"min": 0.4, "p50": 0.5, "avg": 0.5, "p95": 0.8, "max": 1.0}, "jitter_ms": 0.1},
                {"target": "voipco-media", "layer": "provider", "provider": "voipco", "kind": "stamp",
                 "sent": 50, "received": 50, "rtt_ms": {"min": 20.0, "p50": 21.0, "avg": 21.0, "p95": 24.0, "max": 25.0},
                 "jitter_ms": 1.0, "max_burst": 0, "mos": 4.3}]
        });
        seq += 1;
        let st = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &v4.to_string(), "-q", "1"])
            .args(["-t", "faultline/v1/sites/deploy-site/report/json"])
            .args(["-m", &report.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        std::thread::sleep(Duration::from_millis(500));
        metrics = collector.get("/metrics");
        metrics.contains("faultline_probe_mos{site=\"deploy-site\"")
            && metrics.contains("faultline_verdict_state{scope=\"site\",id=\"deploy-site\"")
    });
    assert!(shown, "the reports never showed in /metrics:\n{metrics}");

    // The exposition itself passes Prometheus's own linter.
    let (ok, out) = promtool(&["check", "metrics"], dir.path(), Some(&metrics));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}"
    );

    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(exported.len() >= 20, "{exported:?}");

    let rules = std::fs::read_to_string(deploy().join("prometheus/faultline-rules.yml")).unwrap();
    let in_rules = faultline_names(&rules);
    assert!(in_rules.len() >= 8, "{in_rules:?}");
    let unknown: Vec<_> = in_rules.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the rules query metrics the collector does not export: {unknown:?}"
    );

    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/faultline.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dash, &mut queries);
    assert!(queries.len() >= 15, "{queries:?}");
    let in_dash: BTreeSet<String> = queries.iter().flat_map(|q| faultline_names(q)).collect();
    assert!(in_dash.len() >= 12, "{in_dash:?}");
    let unknown: Vec<_> = in_dash.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the collector does not export: {unknown:?}"
    );
}
