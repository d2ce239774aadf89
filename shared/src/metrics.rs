//! The collector's own JSON payloads besides verdicts: per-probe metrics on
//! `faultline/v1/metrics/{site}/{target}` and its status on `collector/status`.

use serde::{Deserialize, Serialize};

use crate::{Id, Report};

/// The collector's retained status (and last will): `{"state", "version"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorStatus {
    pub state: String,
    pub version: String,
}

impl CollectorStatus {
    pub fn new(state: &str, version: &str) -> Self {
        Self {
            state: state.to_owned(),
            version: version.to_owned(),
        }
    }
}

/// One probe's window as the flat JSON of the metrics topic.
#[derive(Debug, Serialize)]
pub struct MetricsJson<'a> {
    pub site: &'a Id,
    pub boot: u32,
    pub seq: u64,
    pub start_ms: u64,
    pub window_ms: u32,
    pub target: &'a Id,
    pub layer: crate::Layer,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'a Id>,
    pub kind: crate::Kind,
    pub sent: u32,
    pub received: u32,
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
    pub fn new(r: &'a Report, p: &'a crate::ProbeResult) -> Self {
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
