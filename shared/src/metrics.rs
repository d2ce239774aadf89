//! The payload of `faultline/v1/metrics/{site}/{target}` ([`crate::Topics::metrics`]):
//! one probe of one window as flat JSON, for tools that want a row per probe and no
//! nesting (Telegraf's JSON parser, Node-RED, Grafana's MQTT source).
//!
//! The collector publishes it for every probe of every report it accepts; the fields
//! are the report's window keys (`site`, `boot`, `seq`, `start_ms`, `window_ms`), the
//! probe's own fields with `rtt_ms` flattened into `rtt_*_ms`, and `loss` as a ratio.
//! Absent measurements are left out, as in the report.

use serde::Serialize;

use crate::id::Id;
use crate::report::{Kind, Layer, ProbeResult, Report};

/// One probe's window as the flat JSON of the metrics topic (borrowed from its report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsJson<'a> {
    pub site: &'a Id,
    pub boot: u32,
    pub seq: u64,
    pub start_ms: u64,
    pub window_ms: u32,
    pub target: &'a Id,
    pub layer: Layer,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'a Id>,
    pub kind: Kind,
    pub sent: u32,
    pub received: u32,
    /// Lost share of the probes sent, in [0, 1] (0 when none were sent).
    pub loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_min_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_avg_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_p95_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_max_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mos: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

impl<'a> MetricsJson<'a> {
    /// Probe `p` of report `r`.
    pub fn new(r: &'a Report, p: &'a ProbeResult) -> Self {
        let rtt = p.rtt_ms;
        Self {
            site: &r.site,
            boot: r.boot,
            seq: r.seq,
            start_ms: r.start_ms,
            window_ms: r.window_ms,
            target: &p.target,
            layer: p.layer,
            provider: p.provider.as_ref(),
            kind: p.kind,
            sent: p.sent,
            received: p.received,
            loss: p.loss(),
            rtt_min_ms: rtt.map(|r| r.min),
            rtt_p50_ms: rtt.map(|r| r.p50),
            rtt_avg_ms: rtt.map(|r| r.avg),
            rtt_p95_ms: rtt.map(|r| r.p95),
            rtt_max_ms: rtt.map(|r| r.max),
            jitter_ms: p.jitter_ms,
            max_burst: p.max_burst,
            mos: p.mos,
            error: p.error.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DESIGN.md's example report (its three probes: measured, voice, failed).
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

    /// What the metrics topics carry for it, byte for byte.
    const METRICS: [&str; 3] = [
        concat!(
            r#"{"site":"acme-hq","boot":3735928559,"seq":42,"start_ms":1764201600000,"#,
            r#""window_ms":10000,"target":"gw","layer":"lan","kind":"icmp","sent":10,"#,
            r#""received":10,"loss":0.0,"rtt_min_ms":0.4,"rtt_p50_ms":0.5,"rtt_avg_ms":0.52,"#,
            r#""rtt_p95_ms":0.8,"rtt_max_ms":1.1,"jitter_ms":0.1}"#
        ),
        concat!(
            r#"{"site":"acme-hq","boot":3735928559,"seq":42,"start_ms":1764201600000,"#,
            r#""window_ms":10000,"target":"voipco-media","layer":"provider","provider":"voipco","#,
            r#""kind":"stamp","sent":500,"received":497,"loss":0.006,"rtt_min_ms":21.0,"#,
            r#""rtt_p50_ms":22.1,"rtt_avg_ms":22.4,"rtt_p95_ms":25.0,"rtt_max_ms":31.0,"#,
            r#""jitter_ms":2.1,"max_burst":2,"mos":4.32}"#
        ),
        concat!(
            r#"{"site":"acme-hq","boot":3735928559,"seq":42,"start_ms":1764201600000,"#,
            r#""window_ms":10000,"target":"voipco-sip","layer":"provider","provider":"voipco","#,
            r#""kind":"sip","sent":1,"received":0,"loss":1.0,"error":"timeout"}"#
        ),
    ];

    #[test]
    fn one_flat_object_per_probe() {
        let report: Report = serde_json::from_str(REPORT).unwrap();
        let got: Vec<String> = report
            .probes
            .iter()
            .map(|p| serde_json::to_string(&MetricsJson::new(&report, p)).unwrap())
            .collect();
        assert_eq!(got, METRICS);
    }
}
