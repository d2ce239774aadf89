//! The payload examples of DESIGN.md, copied verbatim, parse into our types and
//! serialise back to the same JSON, field for field.

use faultline_shared::{
    Cause, CollectorStatus, IncidentEvent, IncidentEventKind, Kind, Layer, OfflineReason, Report,
    Scope, State, Status, StatusState, Verdict,
};
use serde_json::Value;

const REPORT: &str = r#"{"v": 1, "site": "acme-hq", "boot": 3735928559, "seq": 42,
 "start_ms": 1764201600000, "window_ms": 10000,
 "host": {"cpu_pct": 12.0, "mem_pct": 41.5, "load1": 0.2},
 "probes": [
  {"target": "gw", "layer": "lan", "kind": "icmp", "sent": 10, "received": 10,
   "rtt_ms": {"min": 0.4, "p50": 0.5, "avg": 0.52, "p95": 0.8, "max": 1.1}, "jitter_ms": 0.1},
  {"target": "voipco-media", "layer": "provider", "provider": "voipco", "kind": "stamp",
   "sent": 500, "received": 497, "rtt_ms": {"min": 21.0, "p50": 22.1, "avg": 22.4, "p95": 25.0, "max": 31.0},
   "jitter_ms": 2.1, "max_burst": 2, "mos": 4.32},
  {"target": "voipco-sip", "layer": "provider", "provider": "voipco", "kind": "sip",
   "sent": 1, "received": 0, "error": "timeout"}]}"#;

const STATUS_ONLINE: &str = r#"{"state": "online", "boot": 3735928559, "version": "0.1.0", "isp": "Comcast", "customer": "Acme"}"#;
const STATUS_OFFLINE: &str = r#"{"state": "offline", "reason": "lost"}"#;

const VERDICT: &str = r#"{"at_ms": 1764201630000, "scope": "provider", "id": "voipco", "state": "outage",
 "cause": "provider", "sites": ["acme-hq", "bobs-bakery", "city-dental"],
 "incident": "inc-000007", "recommendation": {"action": "failover", "to": "voipco2"}}"#;

/// DESIGN.md gives the incident event's shape with field names only; this is it filled in.
const INCIDENT_EVENT: &str = r#"{"event": "opened", "incident": {"id": "inc-000007", "scope": "provider",
 "target_id": "voipco", "cause": "provider", "state": "outage", "opened_ms": 1764201630000,
 "closed_ms": null, "sites": ["acme-hq", "bobs-bakery"]}}"#;

fn same_json<T: serde::Serialize>(value: &T, original: &str) {
    let ours = serde_json::to_value(value).unwrap();
    let theirs: Value = serde_json::from_str(original).unwrap();
    assert_eq!(ours, theirs, "re-serialised JSON differs from DESIGN.md");
}

#[test]
fn report_example_parses_and_round_trips() {
    let r: Report = serde_json::from_str(REPORT).unwrap();
    assert_eq!(r.site, "acme-hq");
    assert_eq!((r.boot, r.seq, r.window_ms), (3_735_928_559, 42, 10_000));
    assert_eq!(r.probes.len(), 3);
    assert_eq!(r.probes[0].layer, Layer::Lan);
    assert_eq!(r.probes[1].kind, Kind::Stamp);
    assert_eq!(r.probes[1].provider.as_ref().unwrap(), "voipco");
    assert_eq!(r.probes[1].mos, Some(4.32));
    assert_eq!(r.probes[2].error.as_deref(), Some("timeout"));
    assert_eq!(r.probes[2].rtt_ms, None);
    same_json(&r, REPORT);
}

#[test]
fn status_examples_parse_and_round_trip() {
    let on: Status = serde_json::from_str(STATUS_ONLINE).unwrap();
    assert_eq!(on.state, StatusState::Online);
    assert_eq!(on.isp.as_ref().unwrap(), "Comcast");
    same_json(&on, STATUS_ONLINE);
    let off: Status = serde_json::from_str(STATUS_OFFLINE).unwrap();
    assert_eq!(off, Status::offline(OfflineReason::Lost));
    same_json(&off, STATUS_OFFLINE);
}

/// DESIGN.md: `{"state":"online"|"offline", "version": ...}`, retained, the offline
/// form as the collector's last will. Byte for byte what the collector publishes.
#[test]
fn collector_status_bytes() {
    let on = br#"{"state":"online","version":"0.1.0"}"#;
    let off = br#"{"state":"offline","version":"0.1.0"}"#;
    let online = CollectorStatus::online("0.1.0");
    let offline = CollectorStatus::offline("0.1.0");
    assert_eq!(serde_json::to_vec(&online).unwrap(), on);
    assert_eq!(serde_json::to_vec(&offline).unwrap(), off);
    assert_eq!(
        serde_json::from_slice::<CollectorStatus>(on).unwrap(),
        online
    );
    let newer: CollectorStatus =
        serde_json::from_str(r#"{"version": "9.0.0", "state": "offline", "since_ms": 1}"#).unwrap();
    assert_eq!(newer, CollectorStatus::offline("9.0.0"));
    assert!(serde_json::from_str::<CollectorStatus>(r#"{"state":"away","version":"1"}"#).is_err());
}

#[test]
fn verdict_example_parses_and_round_trips() {
    let v: Verdict = serde_json::from_str(VERDICT).unwrap();
    assert_eq!(
        (v.scope, v.state, v.cause),
        (Scope::Provider, State::Outage, Some(Cause::Provider))
    );
    assert_eq!(v.sites.len(), 3);
    assert_eq!(v.recommendation.as_ref().unwrap().to, "voipco2");
    same_json(&v, VERDICT);
}

#[test]
fn incident_event_parses_and_round_trips() {
    let e: IncidentEvent = serde_json::from_str(INCIDENT_EVENT).unwrap();
    assert_eq!(e.event, IncidentEventKind::Opened);
    assert_eq!(e.incident.closed_ms, None);
    same_json(&e, INCIDENT_EVENT);
}

#[test]
fn optional_fields_may_be_null_and_unknown_fields_are_ignored() {
    let json = r#"{"v": 1, "site": "s1", "boot": 1, "seq": 0, "start_ms": 0, "window_ms": 1000,
        "host": null, "future_field": {"x": 1},
        "probes": [{"target": "t", "layer": "isp", "kind": "dns", "sent": 1, "received": 1,
                    "rtt_ms": null, "jitter_ms": null, "max_burst": null, "mos": null,
                    "error": null, "provider": null, "newer": true}]}"#;
    let r: Report = serde_json::from_str(json).unwrap();
    assert_eq!(r.host, None);
    assert_eq!(r.probes[0].provider, None);
    // Absent optionals stay absent when written.
    let out = serde_json::to_string(&r).unwrap();
    assert!(!out.contains("null") && !out.contains("host"), "{out}");
}

#[test]
fn invalid_ids_in_json_are_rejected() {
    let bad = REPORT.replace("\"acme-hq\"", "\"acme hq\"");
    assert!(serde_json::from_str::<Report>(&bad).is_err());
}

/// DESIGN.md itself, when the checkout has it beside the repo, still holds these
/// examples: if the contract changes, this test says which example to update.
#[test]
fn design_md_still_contains_these_examples() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/DESIGN.md");
    let Ok(design) = std::fs::read_to_string(path) else {
        eprintln!("skipped: {path} is not beside this checkout (CI and sessions have it)");
        return;
    };
    for example in [REPORT, STATUS_ONLINE, STATUS_OFFLINE, VERDICT] {
        assert!(
            design.contains(example),
            "DESIGN.md no longer contains:\n{example}"
        );
    }
}
