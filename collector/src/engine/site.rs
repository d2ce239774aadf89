//! The per-site step: everything that needs only one site's own messages — de-dup
//! and which window is live (`boots.rs`), presence (online / silent / offline), baselines and the
//! site's health by layer. Its output, [`SiteWindow`], is all the cross-site step
//! reads, so several collectors sharing the report stream (`$share/` groups) could
//! each run this step for their share of sites and feed one correlator.

use faultline_shared::{Id, Kind, Layer, OfflineReason, Report};
use serde::Serialize;

use super::boots::Boots;
use super::health::{Baseline, Health, Thresholds, probe_health};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflineWhy {
    /// The last will: the agent vanished.
    Lost,
    /// The agent said it was stopping.
    Shutdown,
    /// No report for `silence_windows` windows.
    Silence,
}

impl From<OfflineReason> for OfflineWhy {
    fn from(r: OfflineReason) -> Self {
        match r {
            OfflineReason::Lost => OfflineWhy::Lost,
            OfflineReason::Shutdown => OfflineWhy::Shutdown,
        }
    }
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
    pub health: Option<Health>,
    pub loss: f64,
    pub rtt_p50_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub mos: Option<f64>,
}

/// A site's health by layer in its latest live window: the per-site step's output.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Layers {
    /// Host CPU at or above the threshold.
    pub host_busy: bool,
    pub lan: Health,
    /// ISP and internet layers together.
    pub net: Health,
    /// Each provider probed, with the worst health among its targets.
    pub providers: Vec<(Id, Health)>,
    /// Whether any probe was bad.
    pub any_bad: bool,
}

impl Layers {
    pub fn provider(&self, p: &Id) -> Option<Health> {
        self.providers
            .iter()
            .find(|(id, _)| id == p)
            .map(|(_, h)| *h)
    }
}

/// Everything the collector tracks for one site.
#[derive(Debug, Clone)]
pub struct SiteTrack {
    pub isp: Option<Id>,
    pub customer: Option<String>,
    /// Its boots: de-dup, the live boot, missing windows.
    pub boots: Boots,
    pub presence: Presence,
    /// Collector time of the last accepted report.
    pub last_report_ms: u64,
    /// Ticks since the last live report.
    pub silent_ticks: u32,
    /// A live report arrived since the last tick.
    pub fresh: bool,
    pub layers: Layers,
    pub targets: Vec<TargetState>,
    /// The latest window's identity.
    pub last_window: Option<(u32, u64, u64)>,
    pub clock_skew_ms: i64,
    /// A live window has been seen since this track was created (or restored).
    pub has_window: bool,
}

impl SiteTrack {
    pub fn new(now_ms: u64) -> Self {
        Self {
            isp: None,
            customer: None,
            boots: Boots::new(),
            presence: Presence::Online,
            last_report_ms: now_ms,
            silent_ticks: 0,
            fresh: false,
            layers: Layers::default(),
            targets: Vec::new(),
            last_window: None,
            clock_skew_ms: 0,
            has_window: false,
        }
    }

    /// Reported in time for the last evaluation, online, and nothing since: the
    /// window being built is not complete without it.
    pub fn awaited(&self) -> bool {
        !self.fresh && self.silent_ticks == 0 && self.has_window && !self.is_offline()
    }

    /// Folds a de-duplicated live report into the site's layers and baselines.
    pub fn apply_live(&mut self, r: &Report, now_ms: u64, th: &Thresholds) {
        self.last_report_ms = now_ms;
        self.fresh = true;
        self.has_window = true;
        self.silent_ticks = 0;
        self.presence = Presence::Online;
        self.last_window = Some((r.boot, r.seq, r.start_ms));
        let mut lan = Health::Ok;
        let (mut net_bad, mut net_n, mut net_down) = (0u32, 0u32, 0u32);
        let mut providers: Vec<(Id, Health)> = Vec::new();
        let mut any_bad = false;
        for p in &r.probes {
            let i = match self.targets.iter().position(|t| t.target == p.target) {
                Some(i) => i,
                None => {
                    self.targets.push(TargetState {
                        target: p.target.clone(),
                        layer: p.layer,
                        provider: p.provider.clone(),
                        kind: p.kind,
                        baseline: Baseline::default(),
                        health: None,
                        loss: 0.0,
                        rtt_p50_ms: None,
                        jitter_ms: None,
                        mos: None,
                    });
                    self.targets.len() - 1
                }
            };
            let t = &mut self.targets[i];
            t.layer = p.layer;
            t.kind = p.kind;
            if t.provider != p.provider {
                t.provider = p.provider.clone();
            }
            let h = probe_health(p, &t.baseline, th);
            t.health = h;
            t.loss = p.loss();
            t.rtt_p50_ms = p.rtt_ms.map(|s| s.p50);
            t.jitter_ms = p.jitter_ms;
            t.mos = p.mos;
            let Some(h) = h else { continue };
            if h == Health::Ok
                && let Some(rtt) = p.rtt_ms
            {
                t.baseline.learn(rtt.p50, th);
            }
            any_bad |= h.is_bad();
            match p.layer {
                Layer::Lan => lan = lan.max(h),
                Layer::Isp | Layer::Internet => {
                    net_n += 1;
                    net_bad += u32::from(h.is_bad());
                    net_down += u32::from(h == Health::Down);
                }
                Layer::Provider => {
                    let Some(prov) = &p.provider else { continue };
                    match providers.iter_mut().find(|(id, _)| id == prov) {
                        Some((_, ph)) => *ph = (*ph).max(h),
                        None => providers.push((prov.clone(), h)),
                    }
                }
                Layer::Unknown(_) => {}
            }
        }
        // ISP/internet: bad when at least half of its probes are (one flaky anchor
        // among several does not blame the ISP); down when all of them are down.
        let net = if net_n > 0 && net_down == net_n {
            Health::Down
        } else if net_bad > 0 && net_bad * 2 >= net_n {
            Health::Degraded
        } else {
            Health::Ok
        };
        providers.sort();
        self.layers = Layers {
            host_busy: r.host.is_some_and(|h| h.cpu_pct >= th.host_cpu_pct),
            lan,
            net,
            providers,
            any_bad,
        };
    }

    pub fn is_offline(&self) -> bool {
        matches!(self.presence, Presence::Offline { .. })
    }
}

/// A site's state in the evaluation of one window, before correlation: what the
/// cross-site step consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteRaw {
    Offline(OfflineWhy, u64),
    /// The measuring box is overloaded and its probes suffer.
    Host(Health),
    Lan(Health),
    Net(Health),
    /// Healthy below the provider layer (providers judged per provider).
    Clear,
    /// No window yet (just restored or only a status seen): holds its verdict.
    NoData,
}

impl SiteTrack {
    pub fn raw(&self) -> SiteRaw {
        if let Presence::Offline { since_ms, why } = self.presence {
            return SiteRaw::Offline(why, since_ms);
        }
        if !self.has_window {
            return SiteRaw::NoData;
        }
        let l = &self.layers;
        if l.host_busy && l.any_bad {
            let worst = l
                .providers
                .iter()
                .map(|(_, h)| *h)
                .fold(l.lan.max(l.net), Health::max);
            return SiteRaw::Host(worst);
        }
        if l.lan.is_bad() {
            return SiteRaw::Lan(l.lan);
        }
        if l.net.is_bad() {
            return SiteRaw::Net(l.net);
        }
        SiteRaw::Clear
    }
}
