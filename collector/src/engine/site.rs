//! The site stage: everything that needs only one site's own messages — validation
//! and bounds, de-dup and which window is live ([`super::boots`]), presence (online,
//! silent, offline, counted in the site's own windows), latency baselines and the
//! site's health by layer. It emits one [`SiteSummary`] per site window (and one when
//! a site goes offline or announces itself): all the fleet stage ever reads.
//!
//! Bounds (DESIGN.md "Nothing forged"): a site keeps at most
//! [`MAX_TARGETS_PER_SITE`] targets (the least recently seen one makes room) and
//! forgets a target idle for [`TARGET_IDLE_WINDOWS`] of its windows; it may not
//! send windows faster than its clock allows beyond a day's backlog
//! ([`Pacer`]); reports with impossible values are refused. What a site costs in
//! memory is therefore bounded whatever it sends.

use std::sync::Arc;

use faultline_shared::{
    Health, Id, Kind, Layer, OfflineWhy, ProbeResult, Report, SiteHealth, SiteSummary, SummaryKind,
    summary::ProviderHealth,
};
use serde::Serialize;

use super::boots::Boots;
use super::health::{Baseline, Thresholds, probe_health};

/// Targets one site may keep; a new one beyond this replaces the least recently seen.
pub const MAX_TARGETS_PER_SITE: usize = 64;
/// A target not reported for this many of its site's windows is forgotten.
pub const TARGET_IDLE_WINDOWS: u64 = 360;
/// How much backlog a site may send at once, in collector time: a day of windows
/// (what an agent's default outbox holds), on top of one window per window.
pub const BACKLOG_MS: u64 = 24 * 3600 * 1000;

/// Whether a site is heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "presence")]
pub enum Presence {
    Online,
    /// Offline since `since_ms` (collector time) because of `why`.
    Offline {
        since_ms: u64,
        why: OfflineWhy,
    },
}

/// One target at one site: identity, baseline and its latest window.
#[derive(Debug, Clone, Serialize)]
pub struct TargetState {
    pub target: Id,
    pub layer: Layer,
    pub provider: Option<Id>,
    pub kind: Kind,
    #[serde(skip)]
    pub baseline: Baseline,
    /// Collector time of its latest live window.
    #[serde(skip)]
    pub seen_ms: u64,
    pub health: Option<Health>,
    pub loss: f64,
    pub rtt_p50_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub mos: Option<f64>,
}

/// A token bucket over collector time. Pacing windows: a site earns one window per
/// `window_ms` and may hold a day's worth ([`BACKLOG_MS`]), so a backlog after a
/// day away flows at once while a site inventing windows is held to its clock.
/// Pacing per-probe metrics: a few reports' worth, refilled twice a window.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    /// A full bucket of `cap` tokens at `now_ms`.
    pub fn full(now_ms: u64, cap: f64) -> Self {
        Self {
            tokens: cap,
            last_ms: now_ms,
        }
    }

    /// Takes a token at `now_ms`, earning one per `every_ms` up to `cap`; `false`
    /// when none is left.
    pub fn take(&mut self, now_ms: u64, every_ms: f64, cap: f64) -> bool {
        let earned = now_ms.saturating_sub(self.last_ms) as f64 / every_ms.max(1.0);
        self.tokens = (self.tokens + earned).min(cap);
        self.last_ms = self.last_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The pacing of a site's windows: (every, cap).
    pub fn window_pace(window_ms: u32) -> (f64, f64) {
        let w = u64::from(window_ms.max(1));
        (w as f64, (BACKLOG_MS / w) as f64 + 2.0)
    }
}

/// What pages show about one site: rebuilt whenever the site changes, shared by
/// every snapshot until then.
#[derive(Debug, Clone, Serialize)]
pub struct SiteView {
    pub isp: Option<Id>,
    pub customer: Option<String>,
    #[serde(flatten)]
    pub presence: Presence,
    pub last_report_ms: u64,
    pub window_ms: u32,
    pub clock_skew_ms: i64,
    /// The latest live window: (boot, seq, start_ms by the gateway's clock).
    pub last_window: Option<(u32, u64, u64)>,
    pub boot: Option<u32>,
    pub missing_windows: u64,
    pub health: Option<SiteHealth>,
    /// Shared with the site's track until the site next changes.
    pub targets: Arc<Vec<TargetState>>,
}

/// Everything the collector tracks for one site.
#[derive(Debug, Clone)]
pub struct SiteTrack {
    pub isp: Option<Id>,
    pub customer: Option<String>,
    /// Its boots: de-dup, the live boot, missing windows.
    pub boots: Boots,
    pub presence: Presence,
    /// Collector time of the last live report.
    pub last_report_ms: u64,
    /// The site's own window length (its latest report's).
    pub window_ms: u32,
    pub health: Option<SiteHealth>,
    /// Shared with the pages' view while it is current (copied on the next change:
    /// at most once per snapshot, not once per report).
    pub targets: Arc<Vec<TargetState>>,
    /// The latest live window's identity.
    pub last_window: Option<(u32, u64, u64)>,
    pub clock_skew_ms: i64,
    /// Paces new windows (see [`Bucket`]).
    pub pacer: Option<Bucket>,
    /// Paces per-probe metrics.
    pub metrics: Option<Bucket>,
    /// Collector time of the last window summary emitted.
    pub summarized_ms: Option<u64>,
    /// A live window arrived too soon after the last summary (a backlog flowing):
    /// summarized once the site's pace allows.
    pub unsummarized: bool,
    /// The pages' view of the site, built when a snapshot asks and kept until the
    /// site changes.
    view: Option<Arc<SiteView>>,
}

impl SiteTrack {
    pub fn new(now_ms: u64, window_ms: u32) -> Self {
        Self {
            isp: None,
            customer: None,
            boots: Boots::new(),
            presence: Presence::Online,
            last_report_ms: now_ms,
            window_ms,
            health: None,
            targets: Arc::default(),
            last_window: None,
            clock_skew_ms: 0,
            pacer: None,
            metrics: None,
            summarized_ms: None,
            unsummarized: false,
            view: None,
        }
    }

    pub fn is_offline(&self) -> bool {
        matches!(self.presence, Presence::Offline { .. })
    }

    /// A live window has been seen since this track was created (or restored).
    pub fn has_window(&self) -> bool {
        self.health.is_some()
    }

    /// The site changed: its view is rebuilt when next asked for.
    pub fn refresh_view(&mut self) {
        self.view = None;
    }

    /// The pages' view of the site as it is now.
    pub fn view(&mut self) -> Arc<SiteView> {
        if let Some(v) = &self.view {
            return v.clone();
        }
        let v = Arc::new(SiteView {
            isp: self.isp.clone(),
            customer: self.customer.clone(),
            presence: self.presence,
            last_report_ms: self.last_report_ms,
            window_ms: self.window_ms,
            clock_skew_ms: self.clock_skew_ms,
            last_window: self.last_window,
            boot: self.boots.live().map(|b| b.meta.boot),
            missing_windows: self.boots.missing(),
            health: self.health.clone(),
            targets: self.targets.clone(),
        });
        self.view = Some(v.clone());
        v
    }

    /// The summary of what the site is now, as of `now_ms`.
    pub fn summary(&self, site: &Id, now_ms: u64, kind: SummaryKind) -> SiteSummary {
        SiteSummary {
            site: site.clone(),
            at_ms: now_ms,
            window_ms: self.window_ms,
            isp: self.isp.clone(),
            customer: self.customer.clone(),
            kind,
        }
    }

    /// The window summary of the latest live window, if any.
    pub fn window_summary(&self, site: &Id, now_ms: u64) -> Option<SiteSummary> {
        let (boot, seq, _) = self.last_window?;
        let health = self.health.clone()?;
        Some(self.summary(site, now_ms, SummaryKind::Window { boot, seq, health }))
    }

    /// Judges every probe of a report against its target's baseline: the health per
    /// probe (`None`: no evidence), learning baselines only when `live`.
    pub fn judge(
        &mut self,
        r: &Report,
        now_ms: u64,
        live: bool,
        th: &Thresholds,
    ) -> Vec<Option<Health>> {
        let mut out = Vec::with_capacity(r.probes.len());
        for (k, p) in r.probes.iter().enumerate() {
            if !live {
                // A late window is judged against what is known, and changes nothing.
                let base = self
                    .targets
                    .iter()
                    .find(|t| t.target == p.target)
                    .map_or_else(Baseline::default, |t| t.baseline);
                out.push(probe_health(p, &base, th));
                continue;
            }
            let t = self.target(k, p, now_ms);
            let h = probe_health(p, &t.baseline, th);
            t.health = h;
            t.loss = p.loss();
            t.rtt_p50_ms = p.rtt_ms.map(|s| s.p50);
            t.jitter_ms = p.jitter_ms;
            t.mos = p.mos;
            if h == Some(Health::Ok)
                && let Some(rtt) = p.rtt_ms
            {
                t.baseline.learn(rtt.p50, th);
            }
            out.push(h);
        }
        out
    }

    /// The target a live window's probe is about, created (within the cap) and
    /// marked seen.
    fn target(&mut self, k: usize, p: &ProbeResult, now_ms: u64) -> &mut TargetState {
        let targets = Arc::make_mut(&mut self.targets);
        // Reports list their targets in the same order: the same place first.
        let found = match targets.get(k) {
            Some(t) if t.target == p.target => Some(k),
            _ => targets.iter().position(|t| t.target == p.target),
        };
        let i = match found {
            Some(i) => i,
            None => {
                if targets.len() >= MAX_TARGETS_PER_SITE
                    && let Some((oldest, _)) =
                        targets.iter().enumerate().min_by_key(|(_, t)| t.seen_ms)
                {
                    targets.swap_remove(oldest);
                }
                targets.push(TargetState {
                    target: p.target.clone(),
                    layer: p.layer,
                    provider: p.provider.clone(),
                    kind: p.kind,
                    baseline: Baseline::default(),
                    seen_ms: now_ms,
                    health: None,
                    loss: 0.0,
                    rtt_p50_ms: None,
                    jitter_ms: None,
                    mos: None,
                });
                targets.len() - 1
            }
        };
        let t = &mut targets[i];
        t.seen_ms = now_ms;
        t.layer = p.layer;
        t.kind = p.kind;
        if t.provider != p.provider {
            t.provider.clone_from(&p.provider);
        }
        t
    }

    /// Folds a de-duplicated live report (already judged) into the site's layers.
    pub fn apply_live(
        &mut self,
        r: &Report,
        judged: &[Option<Health>],
        now_ms: u64,
        th: &Thresholds,
    ) {
        self.last_report_ms = now_ms;
        self.window_ms = r.window_ms;
        self.presence = Presence::Online;
        self.last_window = Some((r.boot, r.seq, r.start_ms));
        let idle_ms = TARGET_IDLE_WINDOWS.saturating_mul(u64::from(r.window_ms));
        Arc::make_mut(&mut self.targets).retain(|t| now_ms.saturating_sub(t.seen_ms) < idle_ms);
        self.health = Some(layers(r, judged, th));
    }
}

/// A site's health by layer from one window's judged probes. ISP/internet: bad when
/// at least half of its probes are (one flaky anchor among several does not blame
/// the ISP); down when all of them are down. A provider: its worst target.
pub fn layers(r: &Report, judged: &[Option<Health>], th: &Thresholds) -> SiteHealth {
    let mut lan = Health::Ok;
    let (mut net_bad, mut net_n, mut net_down) = (0u32, 0u32, 0u32);
    // A handful of providers: a sorted Vec, not a map.
    let mut providers: Vec<ProviderHealth> = Vec::new();
    for (p, h) in r.probes.iter().zip(judged) {
        let Some(h) = *h else { continue };
        match p.layer {
            Layer::Lan => lan = lan.max(h),
            Layer::Isp | Layer::Internet => {
                net_n += 1;
                net_bad += u32::from(h.is_bad());
                net_down += u32::from(h == Health::Down);
            }
            Layer::Provider => {
                if let Some(prov) = &p.provider {
                    match providers.binary_search_by(|x| x.provider.cmp(prov)) {
                        Ok(i) => providers[i].health = providers[i].health.max(h),
                        Err(i) => providers.insert(
                            i,
                            ProviderHealth {
                                provider: prov.clone(),
                                health: h,
                            },
                        ),
                    }
                }
            }
            Layer::Unknown(_) => {}
        }
    }
    let net = if net_n > 0 && net_down == net_n {
        Health::Down
    } else if net_bad > 0 && net_bad * 2 >= net_n {
        Health::Degraded
    } else {
        Health::Ok
    };
    SiteHealth {
        host_busy: r.host.is_some_and(|h| h.cpu_pct >= th.host_cpu_pct),
        lan,
        net,
        providers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_lets_a_days_backlog_through_then_holds_a_site_to_its_clock() {
        let (every, cap) = Bucket::window_pace(10_000);
        let mut p = Bucket::full(0, cap);
        let day = (BACKLOG_MS / 10_000) as usize;
        assert!(
            (0..day).all(|_| p.take(0, every, cap)),
            "a day's backlog at once"
        );
        // Spent: one more window every window, no faster.
        let mut taken = 0;
        for i in 0..100 {
            taken += usize::from(p.take(i * 1_000, every, cap));
        }
        assert!((9..=13).contains(&taken), "{taken} windows in 100 s");
    }

    #[test]
    fn targets_are_capped_and_idle_ones_expire() {
        let th = Thresholds::default();
        let mut s = SiteTrack::new(0, 10_000);
        let probe = |n: usize| {
            let mut p = ProbeResult::new(
                Id::new(format!("t{n}")).unwrap(),
                Layer::Internet,
                None,
                Kind::Icmp,
            );
            p.sent = 1;
            p.received = 1;
            p
        };
        // A hostile agent invents 128 new targets a window for 20 windows.
        for w in 0..20u64 {
            let r = Report {
                v: 1,
                site: Id::new("s").unwrap(),
                boot: 1,
                seq: w,
                start_ms: 0,
                window_ms: 10_000,
                host: None,
                probes: (0..128).map(|i| probe(w as usize * 128 + i)).collect(),
            };
            let j = s.judge(&r, w * 10_000, true, &th);
            s.apply_live(&r, &j, w * 10_000, &th);
            assert!(s.targets.len() <= MAX_TARGETS_PER_SITE);
        }
        // Then an honest window of one target, an hour later: the rest expired.
        let now = 20 * 10_000 + TARGET_IDLE_WINDOWS * 10_000;
        let r = Report {
            v: 1,
            site: Id::new("s").unwrap(),
            boot: 1,
            seq: 99,
            start_ms: 0,
            window_ms: 10_000,
            host: None,
            probes: vec![probe(0)],
        };
        let j = s.judge(&r, now, true, &th);
        s.apply_live(&r, &j, now, &th);
        assert_eq!(s.targets.len(), 1);
    }
}
