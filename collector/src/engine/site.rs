//! The per-site step: everything that needs only one site's own messages — de-dup,
//! which window is live, presence (online / silent / offline), baselines and the
//! site's health by layer. Its output, [`SiteWindow`], is all the cross-site step
//! reads, so several collectors sharing the report stream (`$share/` groups) could
//! each run this step for their share of sites and feed one correlator.

use faultline_shared::{Id, Kind, Layer, OfflineReason, Report};
use serde::Serialize;

use super::health::{Baseline, Health, Thresholds, probe_health};

/// How many recent boots per site the de-dup remembers.
const DEDUP_BOOTS: usize = 2;
/// How many seqs behind the newest one the de-dup can still tell apart.
pub const DEDUP_SPAN: u64 = 1024;

/// Remembers which (boot, seq) windows of one site were counted, in bounded memory:
/// per boot the highest seq and a bitmap of the [`DEDUP_SPAN`] seqs below it.
#[derive(Debug, Clone, Default)]
pub struct Dedup {
    boots: Vec<BootSeen>,
}

#[derive(Debug, Clone)]
struct BootSeen {
    boot: u32,
    high: u64,
    bits: Box<[u64; (DEDUP_SPAN / 64) as usize]>,
}

/// What the de-dup says about a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time seen; `newest` when it is the highest seq of its boot so far and
    /// `new_boot` when the boot was never seen before.
    Fresh {
        newest: bool,
        new_boot: bool,
    },
    Duplicate,
    /// So far behind the newest seq that it cannot be told apart: dropped.
    TooOld,
}

impl Dedup {
    pub fn check(&mut self, boot: u32, seq: u64) -> Seen {
        let Some(i) = self.boots.iter().position(|b| b.boot == boot) else {
            if self.boots.len() == DEDUP_BOOTS {
                self.boots.remove(0);
            }
            let mut b = BootSeen {
                boot,
                high: seq,
                bits: Box::new([0; (DEDUP_SPAN / 64) as usize]),
            };
            b.set(0);
            self.boots.push(b);
            return Seen::Fresh {
                newest: true,
                new_boot: true,
            };
        };
        // Most recently used boot last.
        let mut b = self.boots.remove(i);
        let seen = if seq > b.high {
            let shift = seq - b.high;
            b.shift(shift);
            b.high = seq;
            b.set(0);
            Seen::Fresh {
                newest: true,
                new_boot: false,
            }
        } else if b.high - seq >= DEDUP_SPAN {
            Seen::TooOld
        } else if b.get(b.high - seq) {
            Seen::Duplicate
        } else {
            b.set(b.high - seq);
            Seen::Fresh {
                newest: false,
                new_boot: false,
            }
        };
        self.boots.push(b);
        seen
    }
}

impl BootSeen {
    fn get(&self, back: u64) -> bool {
        self.bits[(back / 64) as usize] & (1 << (back % 64)) != 0
    }
    fn set(&mut self, back: u64) {
        self.bits[(back / 64) as usize] |= 1 << (back % 64);
    }
    /// Moves every remembered seq `n` further back.
    fn shift(&mut self, n: u64) {
        let words = self.bits.len();
        if n >= DEDUP_SPAN {
            self.bits.fill(0);
            return;
        }
        let (w, r) = ((n / 64) as usize, (n % 64) as u32);
        for i in (0..words).rev() {
            let lo = if i >= w { self.bits[i - w] } else { 0 };
            let lower = if r > 0 && i > w {
                self.bits[i - w - 1] >> (64 - r)
            } else {
                0
            };
            self.bits[i] = if r == 0 { lo } else { (lo << r) | lower };
        }
    }
}

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
    pub dedup: Dedup,
    pub boot: Option<u32>,
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
            dedup: Dedup::default(),
            boot: None,
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
        self.boot = Some(r.boot);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_counts_each_window_once_in_bounded_memory() {
        let mut d = Dedup::default();
        assert!(matches!(d.check(7, 0), Seen::Fresh { newest: true, .. }));
        assert_eq!(d.check(7, 0), Seen::Duplicate);
        assert!(matches!(d.check(7, 5), Seen::Fresh { newest: true, .. }));
        assert!(matches!(d.check(7, 3), Seen::Fresh { newest: false, .. }));
        assert_eq!(d.check(7, 3), Seen::Duplicate);
        assert_eq!(d.check(7, 5), Seen::Duplicate);
        assert!(matches!(d.check(7, 200), Seen::Fresh { .. }));
        assert_eq!(d.check(7, 5), Seen::Duplicate, "kept across a shift of 195");
        assert!(matches!(d.check(7, 6), Seen::Fresh { .. }));
        assert!(matches!(d.check(7, 5000), Seen::Fresh { .. }));
        assert_eq!(d.check(7, 200), Seen::TooOld);
        // A new boot, then a third: the oldest is forgotten.
        assert!(matches!(d.check(8, 0), Seen::Fresh { new_boot: true, .. }));
        assert_eq!(d.check(7, 5000), Seen::Duplicate);
        // Boot 7 was used last, so boot 8 is the one forgotten.
        assert!(matches!(d.check(9, 0), Seen::Fresh { new_boot: true, .. }));
        assert_eq!(d.check(7, 5000), Seen::Duplicate);
        assert!(matches!(d.check(8, 0), Seen::Fresh { new_boot: true, .. }));
    }

    #[test]
    fn dedup_shift_matches_a_naive_set() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut d = Dedup::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut high = 0u64;
        for _ in 0..20_000 {
            let seq = (high + rng.u64(0..70)).saturating_sub(rng.u64(0..200));
            let got = d.check(1, seq);
            if high >= seq + DEDUP_SPAN && !seen.is_empty() {
                assert_eq!(got, Seen::TooOld);
                continue;
            }
            let fresh = seen.insert(seq);
            assert_eq!(
                matches!(got, Seen::Fresh { .. }),
                fresh,
                "seq {seq} high {high}"
            );
            high = high.max(seq);
        }
    }
}
