//! Step 1 of DESIGN.md's rules: one probe's health in one window, judged against
//! configurable thresholds and that target's own latency baseline.

use faultline_shared::{ProbeResult, Report};
use serde::{Deserialize, Serialize};

pub use faultline_shared::Health;

/// Probe-health thresholds (`[thresholds]` in collector.toml). Defaults follow
/// DESIGN.md: loss ≥ 2 %, MOS < 3.6, latency far above the target's baseline.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Loss ratio (0..1) at or above which a probe is degraded.
    pub loss_degraded: f64,
    /// A voice probe's MOS below this is degraded.
    pub mos_degraded: f64,
    /// p50 RTT above `baseline × latency_factor + latency_margin_ms` is degraded.
    pub latency_factor: f64,
    pub latency_margin_ms: f64,
    /// Healthy windows needed before a baseline is trusted.
    pub baseline_windows: u32,
    /// EWMA weight of a new healthy window in the baseline.
    pub baseline_alpha: f64,
    /// Host CPU at or above this while probes suffer blames the measuring box.
    pub host_cpu_pct: f64,
    /// Windows of silence after which a site is offline.
    pub silence_windows: u32,
    /// Consecutive bad windows that open a verdict.
    pub open_after: u32,
    /// Consecutive good windows that close it.
    pub close_after: u32,
    /// Window start further than this from the collector's clock is counted as skew.
    pub max_skew_ms: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            loss_degraded: 0.02,
            mos_degraded: 3.6,
            latency_factor: 2.0,
            latency_margin_ms: 25.0,
            baseline_windows: 5,
            baseline_alpha: 0.1,
            host_cpu_pct: 95.0,
            silence_windows: 3,
            open_after: 2,
            close_after: 3,
            max_skew_ms: 15 * 60 * 1000,
        }
    }
}

impl Thresholds {
    /// Rejects values that would make the rules meaningless; names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |f: &'static str, v: String| Err((f, v));
        if !(0.0..=1.0).contains(&self.loss_degraded) || self.loss_degraded == 0.0 {
            return bad(
                "loss_degraded",
                format!("{} is not in (0, 1]", self.loss_degraded),
            );
        }
        if !(1.0..=4.5).contains(&self.mos_degraded) {
            return bad(
                "mos_degraded",
                format!("{} is not in 1..=4.5", self.mos_degraded),
            );
        }
        if !(self.latency_factor >= 1.0 && self.latency_factor.is_finite()) {
            return bad(
                "latency_factor",
                format!("{} must be ≥ 1", self.latency_factor),
            );
        }
        if !(self.latency_margin_ms >= 0.0 && self.latency_margin_ms.is_finite()) {
            return bad(
                "latency_margin_ms",
                format!("{} must be ≥ 0", self.latency_margin_ms),
            );
        }
        if !(self.baseline_alpha > 0.0 && self.baseline_alpha <= 1.0) {
            return bad(
                "baseline_alpha",
                format!("{} is not in (0, 1]", self.baseline_alpha),
            );
        }
        if self.silence_windows == 0 || self.open_after == 0 || self.close_after == 0 {
            return bad(
                "silence_windows",
                "silence_windows, open_after and close_after must be ≥ 1".into(),
            );
        }
        Ok(())
    }
}

/// A target's latency baseline: an EWMA of p50 RTT over its healthy windows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Baseline {
    pub rtt_ms: f32,
    pub windows: u32,
}

impl Baseline {
    /// The baseline once trusted.
    pub fn ready(&self, th: &Thresholds) -> Option<f64> {
        (self.windows >= th.baseline_windows).then_some(f64::from(self.rtt_ms))
    }

    /// Folds in a healthy window's p50.
    pub fn learn(&mut self, p50: f64, th: &Thresholds) {
        if !p50.is_finite() || p50 < 0.0 {
            return;
        }
        if self.windows == 0 {
            self.rtt_ms = p50 as f32;
        } else {
            let a = th.baseline_alpha as f32;
            self.rtt_ms = (1.0 - a) * self.rtt_ms + a * p50 as f32;
        }
        self.windows = self.windows.saturating_add(1);
    }
}

/// Judges one probe. `None` when the probe carries no evidence (nothing sent, no error).
pub fn probe_health(p: &ProbeResult, base: &Baseline, th: &Thresholds) -> Option<Health> {
    if p.error.is_some() || (p.sent > 0 && p.received == 0) {
        return Some(Health::Down);
    }
    if p.sent == 0 {
        return None;
    }
    if p.loss() >= th.loss_degraded {
        return Some(Health::Degraded);
    }
    if p.kind.is_voice() && p.mos.is_some_and(|m| m < th.mos_degraded) {
        return Some(Health::Degraded);
    }
    if let (Some(rtt), Some(b)) = (p.rtt_ms, base.ready(th))
        && rtt.p50 > b * th.latency_factor + th.latency_margin_ms
    {
        return Some(Health::Degraded);
    }
    Some(Health::Ok)
}

/// The longest RTT or jitter a probe can report: an hour (anything longer is a
/// broken or hostile agent, and would poison the target's baseline for good).
pub const MAX_RTT_MS: f64 = 3_600_000.0;

/// Why a report carries values no probe can measure (DESIGN.md "Nothing forged"):
/// NaN or infinite numbers, received > sent, RTT or jitter negative or ≥ 1 h, MOS
/// outside 1–5, host CPU or memory outside 0–100 %, a negative load. `None`: plausible.
pub fn impossible(r: &Report) -> Option<String> {
    let ms = |v: f64| v.is_finite() && (0.0..MAX_RTT_MS).contains(&v);
    let pct = |v: f64| v.is_finite() && (0.0..=100.0).contains(&v);
    if let Some(h) = &r.host {
        if !pct(h.cpu_pct) {
            return Some(format!("host cpu_pct {}", h.cpu_pct));
        }
        if !pct(h.mem_pct) {
            return Some(format!("host mem_pct {}", h.mem_pct));
        }
        if !(h.load1.is_finite() && h.load1 >= 0.0) {
            return Some(format!("host load1 {}", h.load1));
        }
    }
    for p in &r.probes {
        let t = &p.target;
        if p.received > p.sent {
            return Some(format!("{t}: received {} > sent {}", p.received, p.sent));
        }
        if let Some(s) = p.rtt_ms
            && ![s.min, s.p50, s.avg, s.p95, s.max].into_iter().all(ms)
        {
            return Some(format!("{t}: rtt_ms {s:?}"));
        }
        if let Some(j) = p.jitter_ms
            && !ms(j)
        {
            return Some(format!("{t}: jitter_ms {j}"));
        }
        if let Some(m) = p.mos
            && !(m.is_finite() && (1.0..=5.0).contains(&m))
        {
            return Some(format!("{t}: mos {m}"));
        }
        if let Some(b) = p.max_burst
            && b > p.sent
        {
            return Some(format!("{t}: max_burst {b} > sent {}", p.sent));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_shared::{Id, Kind, Layer, RttStats};

    fn probe(kind: Kind, sent: u32, received: u32) -> ProbeResult {
        let mut p = ProbeResult::new(Id::new("t").unwrap(), Layer::Provider, None, kind);
        p.sent = sent;
        p.received = received;
        p
    }

    #[test]
    fn down_degraded_ok_by_the_documented_defaults() {
        let th = Thresholds::default();
        let b = Baseline::default();
        assert_eq!(
            probe_health(&probe(Kind::Icmp, 10, 0), &b, &th),
            Some(Health::Down)
        );
        let mut e = probe(Kind::Sip, 1, 1);
        e.error = Some("503".into());
        assert_eq!(probe_health(&e, &b, &th), Some(Health::Down));
        assert_eq!(
            probe_health(&probe(Kind::Icmp, 100, 98), &b, &th),
            Some(Health::Degraded)
        );
        assert_eq!(
            probe_health(&probe(Kind::Icmp, 100, 99), &b, &th),
            Some(Health::Ok)
        );
        let mut v = probe(Kind::Stamp, 500, 500);
        v.mos = Some(3.5);
        assert_eq!(probe_health(&v, &b, &th), Some(Health::Degraded));
        v.mos = Some(4.3);
        assert_eq!(probe_health(&v, &b, &th), Some(Health::Ok));
        assert_eq!(probe_health(&probe(Kind::Icmp, 0, 0), &b, &th), None);
    }

    #[test]
    fn latency_far_above_baseline_is_degraded_once_trusted() {
        let th = Thresholds::default();
        let mut b = Baseline::default();
        let mut p = probe(Kind::Icmp, 10, 10);
        let rtt = |v: f64| RttStats {
            min: v,
            p50: v,
            avg: v,
            p95: v,
            max: v,
        };
        p.rtt_ms = Some(rtt(200.0));
        assert_eq!(
            probe_health(&p, &b, &th),
            Some(Health::Ok),
            "no baseline yet"
        );
        for _ in 0..5 {
            b.learn(20.0, &th);
        }
        assert_eq!(probe_health(&p, &b, &th), Some(Health::Degraded));
        p.rtt_ms = Some(rtt(60.0));
        assert_eq!(probe_health(&p, &b, &th), Some(Health::Ok));
    }

    #[test]
    fn impossible_values_are_named() {
        let ok = |p: ProbeResult| Report {
            v: 1,
            site: Id::new("s").unwrap(),
            boot: 1,
            seq: 0,
            start_ms: 0,
            window_ms: 10_000,
            host: None,
            probes: vec![p],
        };
        let mut p = probe(Kind::Stamp, 10, 10);
        p.rtt_ms = Some(RttStats {
            min: 1.0,
            p50: 2.0,
            avg: 2.0,
            p95: 3.0,
            max: 4.0,
        });
        p.mos = Some(4.3);
        assert_eq!(impossible(&ok(p.clone())), None);
        let mut more = p.clone();
        more.received = 11;
        assert!(
            impossible(&ok(more))
                .unwrap()
                .contains("received 11 > sent 10")
        );
        let mut huge = p.clone();
        huge.rtt_ms.as_mut().unwrap().p50 = 1e308;
        assert!(impossible(&ok(huge)).is_some());
        let mut nan = p.clone();
        nan.jitter_ms = Some(f64::NAN);
        assert!(impossible(&ok(nan)).is_some());
        let mut mos = p.clone();
        mos.mos = Some(-5.0);
        assert!(impossible(&ok(mos)).unwrap().contains("mos -5"));
        let mut r = ok(p);
        r.host = Some(faultline_shared::HostHealth {
            cpu_pct: 1e308,
            mem_pct: 10.0,
            load1: 0.1,
        });
        assert!(impossible(&r).unwrap().contains("cpu_pct"));
    }
}
