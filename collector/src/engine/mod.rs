//! The diagnosis engine: DESIGN.md's "What a verdict means", sans-IO.
//!
//! Nothing here reads a clock or touches a socket: every call takes the collector's
//! time `now_ms`, so `run` (driven by the wall clock) and `replay` (driven by a
//! file's clock) are the same engine. Messages go in through [`Engine::ingest`];
//! [`Engine::tick`] evaluates every window boundary up to `now_ms` and returns the
//! verdict changes and incident events.
//!
//! Time: the engine judges on *collector receive time* only. A report's `start_ms`
//! comes from a gateway clock that may be wrong (no RTC, no NTP yet); it is stored
//! in history and compared with the collector's clock only to count skew. Which
//! window is newest is decided by `(boot, seq)` and the order boots appeared in
//! ([`boots`]), never by `start_ms`: a previous boot's backlog is counted and stored
//! but never evaluated as "now".
//!
//! Evaluation: once per window. Agents publish a window just before its end (a
//! wall-clock multiple of `window_ms`), so the engine evaluates as soon as every
//! site that was on time last window has reported again ([`Engine::tick_if_complete`]),
//! and at the latest [`Engine::evaluation_delay_ms`] after the boundary
//! ([`Engine::tick`]): a report that arrives a moment after the boundary is still
//! judged in its own window instead of a window later. Each site contributes its
//! newest live window received since the previous evaluation; a site with nothing
//! new keeps its previous window until `silence_windows` evaluations pass, then it
//! is offline.

pub mod boots;
pub mod fleet;
pub mod health;
pub mod site;

use std::collections::BTreeMap;

use faultline_shared::{
    Id, Incident, Report, Scope, State, Status, StatusState, Topic, Topics, Verdict, decode,
};

pub use boots::{BootMeta, BootSeen, Boots, Seen, SeqSet};
pub use fleet::{Fleet, Output, Track};
pub use health::Thresholds;
pub use site::{OfflineWhy, Presence, SiteTrack};

use fleet::Shown;

/// Report format versions this collector understands.
pub const KNOWN_VERSIONS: &[u8] = &[1];

/// The engine's settings (from collector.toml).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub window_ms: u64,
    pub thresholds: Thresholds,
    /// Configured providers and their alternates.
    pub providers: BTreeMap<Id, Option<Id>>,
    pub max_payload_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            window_ms: crate::config::DEFAULT_WINDOW_MS,
            thresholds: Thresholds::default(),
            providers: BTreeMap::new(),
            max_payload_bytes: crate::config::DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Why a message was dropped; `as_str` is the metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("topic: {0}")]
    Topic(String),
    #[error("payload of {0} bytes over the cap")]
    Oversized(usize),
    #[error("decode: {0}")]
    Decode(&'static str, String),
    #[error("JSON: {0}")]
    Json(String),
    #[error("unknown report version {0}")]
    Version(u8),
    #[error("topic site {topic} differs from payload site {payload}")]
    SiteMismatch { topic: Id, payload: Id },
    #[error("duplicate window (site, boot, seq)")]
    Duplicate,
    #[error("the boot's record of counted windows is full (too many gaps)")]
    DedupFull,
    #[error("window_ms {0} out of range")]
    Window(u32),
}

impl Reject {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reject::Topic(_) => "topic",
            Reject::Oversized(_) => "oversized",
            Reject::Decode(r, _) => r,
            Reject::Json(_) => "malformed",
            Reject::Version(_) => "version",
            Reject::SiteMismatch { .. } => "site_mismatch",
            Reject::Duplicate => "duplicate",
            Reject::DedupFull => "dedup_full",
            Reject::Window(_) => "window",
        }
    }
}

/// What an accepted message was.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// A new window; `live` when it is now the site's newest and will be evaluated,
    /// otherwise it arrived late or belongs to an earlier boot (history only).
    /// `boot`: a boot seen for the first time, for history.
    Report {
        report: Report,
        live: bool,
        skewed: bool,
        boot: Option<BootMeta>,
    },
    /// `boot`: the boot the status announced, when that changed what is kept of it.
    Status { site: Id, boot: Option<BootMeta> },
    /// A message on a topic the collector does not ingest (its own outputs).
    Ignored,
}

/// Counters the shell exports as metrics.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub reports: u64,
    pub statuses: u64,
    pub late: u64,
    pub skewed: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub evaluations: u64,
    /// Window boundaries skipped because the service fell behind.
    pub skipped_evaluations: u64,
    /// Windows provably missing now (see [`Engine::missing_windows`]); filled in by
    /// readers that copy the counters, not kept up to date by the engine.
    pub missing_windows: u64,
}

/// Last wills received this long before the collector's own link drops are taken
/// to be the broker shutting down (see [`Engine::link_lost`]).
const WILL_BURST_MS: u64 = 2_000;
/// A live last will counts once this long has passed without the collector's own
/// link dropping (a shutting-down broker closes it within milliseconds of its wills).
const WILL_CONFIRM_MS: u64 = 500;

/// The whole engine: per-site step + cross-site step.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    sites: BTreeMap<Id, SiteTrack>,
    fleet: Fleet,
    next_tick: Option<u64>,
    counters: Counters,
    /// Until this collector time, silence is not counted: the collector itself could
    /// not hear (its broker link was down, or came back moments ago).
    hold_presence_until_ms: u64,
    /// The broker link has been lost at least once (so retained wills may be stale).
    link_was_lost: bool,
    /// Live last wills received, by site, not yet confirmed (see `on_status`).
    pending_wills: BTreeMap<Id, u64>,
    /// Sites that were on time at the last evaluation and have not reported since
    /// (the window is complete at 0), and how many were on time.
    awaited: usize,
    on_time: usize,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        Self {
            cfg,
            sites: BTreeMap::new(),
            fleet: Fleet::default(),
            next_tick: None,
            counters: Counters::default(),
            hold_presence_until_ms: 0,
            link_was_lost: false,
            pending_wills: BTreeMap::new(),
            awaited: 0,
            on_time: 0,
        }
    }

    /// The collector's broker link went down at `now_ms`: until [`Engine::link_up`],
    /// silence says nothing about the sites. A broker that shuts down publishes every
    /// client's last will just before it closes the collector's connection, so the
    /// wills received in the moments before are taken back: that was the broker
    /// going away, not every site at once (which would read as ISP outages).
    pub fn link_lost(&mut self, now_ms: u64) {
        if self.hold_presence_until_ms == u64::MAX {
            return;
        }
        self.hold_presence_until_ms = u64::MAX;
        self.link_was_lost = true;
        self.pending_wills.clear();
        for s in self.sites.values_mut() {
            if let Presence::Offline {
                since_ms,
                why: OfflineWhy::Lost,
            } = s.presence
                && since_ms.saturating_add(WILL_BURST_MS) >= now_ms
            {
                s.presence = Presence::Online;
            }
        }
    }

    /// The broker link is (back) up at `now_ms`. For `grace_ms` silence does not
    /// count (agents reconnect with backoff after a broker restart), and after a
    /// lost link the retained wills the broker replays are ignored (it published
    /// them as it shut down). A live last will always counts; a site that is really
    /// gone shows as offline by silence once the grace ends.
    pub fn link_up(&mut self, now_ms: u64, grace_ms: u64) {
        self.hold_presence_until_ms = now_ms.saturating_add(grace_ms);
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn sites(&self) -> &BTreeMap<Id, SiteTrack> {
        &self.sites
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Open incidents.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.fleet.incidents.open.values()
    }

    /// Every verdict as last published.
    pub fn verdicts(&self) -> impl Iterator<Item = &Verdict> {
        self.fleet
            .providers
            .values()
            .chain(self.fleet.isps.values())
            .chain(self.fleet.sites.values())
            .filter_map(|t| t.published.as_ref())
    }

    /// Validates and applies one MQTT message; rejected ones are counted by reason.
    pub fn ingest(
        &mut self,
        topics: &Topics,
        now_ms: u64,
        topic: &str,
        payload: &[u8],
        retained: bool,
    ) -> Result<Accepted, Reject> {
        let r = self.ingest_inner(topics, now_ms, topic, payload, retained);
        match &r {
            Err(e) => *self.counters.rejected.entry(e.as_str()).or_default() += 1,
            Ok(Accepted::Report { live, skewed, .. }) => {
                self.counters.reports += 1;
                self.counters.late += u64::from(!live);
                self.counters.skewed += u64::from(*skewed);
            }
            Ok(Accepted::Status { .. }) => self.counters.statuses += 1,
            Ok(Accepted::Ignored) => {}
        }
        r
    }

    fn ingest_inner(
        &mut self,
        topics: &Topics,
        now_ms: u64,
        topic: &str,
        payload: &[u8],
        retained: bool,
    ) -> Result<Accepted, Reject> {
        if payload.len() > self.cfg.max_payload_bytes {
            return Err(Reject::Oversized(payload.len()));
        }
        match topics.parse(topic) {
            Ok(Topic::Report { site }) => {
                let report =
                    decode(payload).map_err(|e| Reject::Decode(e.reason(), e.to_string()))?;
                self.on_report(now_ms, &site, report)
            }
            Ok(Topic::ReportJson { site }) => {
                let report: Report =
                    serde_json::from_slice(payload).map_err(|e| Reject::Json(e.to_string()))?;
                self.on_report(now_ms, &site, report)
            }
            Ok(Topic::Status { site }) => {
                if payload.is_empty() {
                    // A cleared retained status: nothing to say.
                    return Ok(Accepted::Ignored);
                }
                let status: Status =
                    serde_json::from_slice(payload).map_err(|e| Reject::Json(e.to_string()))?;
                // After our link came back, the broker replays the retained wills it
                // published as it shut down: not news about the sites.
                if retained
                    && self.link_was_lost
                    && now_ms < self.hold_presence_until_ms
                    && status.state == StatusState::Offline
                    && status.reason != Some(faultline_shared::OfflineReason::Shutdown)
                {
                    return Ok(Accepted::Ignored);
                }
                // A retained offline status tells of an old departure, not a new one.
                let since = if retained { 0 } else { now_ms };
                let boot = self.on_status(since, &site, status);
                Ok(Accepted::Status { site, boot })
            }
            Ok(_) => Ok(Accepted::Ignored),
            Err(e) => Err(Reject::Topic(e.to_string())),
        }
    }

    /// A decoded report from `topic_site`.
    pub fn on_report(
        &mut self,
        now_ms: u64,
        topic_site: &Id,
        report: Report,
    ) -> Result<Accepted, Reject> {
        if !KNOWN_VERSIONS.contains(&report.v) {
            return Err(Reject::Version(report.v));
        }
        if &report.site != topic_site {
            return Err(Reject::SiteMismatch {
                topic: topic_site.clone(),
                payload: report.site,
            });
        }
        if report.window_ms == 0 || report.window_ms > 3_600_000 {
            return Err(Reject::Window(report.window_ms));
        }
        if report.probes.len() > faultline_shared::wire::MAX_PROBES {
            return Err(Reject::Decode("malformed", "too many probes".into()));
        }
        let th = self.cfg.thresholds;
        let site = self
            .sites
            .entry(report.site.clone())
            .or_insert_with(|| SiteTrack::new(now_ms));
        let (seen, boot) = site.boots.window(now_ms, report.boot, report.seq);
        let end = report.start_ms.saturating_add(u64::from(report.window_ms));
        let skew = end as i128 - now_ms as i128;
        let skewed = skew.unsigned_abs() > u128::from(th.max_skew_ms);
        site.clock_skew_ms = skew.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        let live = match seen {
            Seen::Duplicate => return Err(Reject::Duplicate),
            Seen::Full => return Err(Reject::DedupFull),
            Seen::Fresh { live } => live,
        };
        if live {
            if site.awaited() {
                self.awaited = self.awaited.saturating_sub(1);
            }
            site.apply_live(&report, now_ms, &th);
            // A live window outranks a will still waiting to be confirmed.
            self.pending_wills.remove(&report.site);
        }
        Ok(Accepted::Report {
            report,
            live,
            skewed,
            boot,
        })
    }

    /// An agent's retained status (or last will). Returns what changed about the boot
    /// an online status names (see [`boots`]).
    pub fn on_status(&mut self, now_ms: u64, site: &Id, status: Status) -> Option<BootMeta> {
        let s = self
            .sites
            .entry(site.clone())
            .or_insert_with(|| SiteTrack::new(now_ms));
        match status.state {
            StatusState::Online => {
                if status.isp.is_some() {
                    s.isp = status.isp;
                }
                if status.customer.is_some() {
                    s.customer = status.customer;
                }
                s.boots.announce(now_ms, status.boot)
            }
            StatusState::Offline => {
                let why = status.reason.map_or(OfflineWhy::Lost, OfflineWhy::from);
                // A live last will waits a moment before it counts: when the broker
                // itself is shutting down, our link drops right after and
                // `link_lost` takes it back. (`now_ms` 0 is a retained, old departure.)
                if why == OfflineWhy::Lost && now_ms != 0 && !s.is_offline() {
                    self.pending_wills.entry(site.clone()).or_insert(now_ms);
                    return None;
                }
                if !s.is_offline() {
                    if s.awaited() {
                        self.awaited = self.awaited.saturating_sub(1);
                    }
                    s.presence = Presence::Offline {
                        since_ms: now_ms,
                        why,
                    };
                }
                None
            }
        }
    }

    /// Windows provably missing across every site (gaps in a boot's seqs; see
    /// [`boots`]), less those a backlog has filled since.
    pub fn missing_windows(&self) -> u64 {
        self.sites.values().map(|s| s.boots.missing()).sum()
    }

    /// How long after a window boundary the evaluation waits for reports still on
    /// their way: a tenth of the window, at most 1 s.
    pub fn evaluation_delay_ms(&self) -> u64 {
        (self.cfg.window_ms / 10).min(1_000)
    }

    /// When the next evaluation is due at the latest (collector time): a window
    /// boundary plus [`Engine::evaluation_delay_ms`], strictly after `now_ms`.
    pub fn next_tick_ms(&self, now_ms: u64) -> u64 {
        let (w, delay) = (self.cfg.window_ms, self.evaluation_delay_ms());
        self.next_tick
            .unwrap_or_else(|| (now_ms.saturating_sub(delay) / w + 1) * w + delay)
    }

    /// True when every site that reported in time for the last evaluation has
    /// reported again (and there is at least one).
    pub fn window_complete(&self) -> bool {
        self.on_time > 0 && self.awaited == 0
    }

    /// Evaluates at `now_ms`, ahead of the scheduled tick, when the window ending at
    /// the next boundary is complete and `now_ms` is in its last quarter (or in the
    /// delay after it); the scheduled tick then moves to the following window.
    pub fn tick_if_complete(&mut self, now_ms: u64) -> Vec<Output> {
        let w = self.cfg.window_ms;
        let due = self.next_tick_ms(now_ms);
        let boundary = due - self.evaluation_delay_ms();
        let mut out = Vec::new();
        if self.window_complete() && now_ms + w / 4 >= boundary && now_ms < due {
            self.evaluate(now_ms, &mut out);
            self.next_tick = Some(due + w);
        }
        out
    }

    /// Runs every evaluation due at or before `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let mut at = self.next_tick_ms(now_ms);
        while at <= now_ms {
            self.evaluate(at, &mut out);
            at += self.cfg.window_ms;
        }
        self.next_tick = Some(at);
        out
    }

    /// Like [`Engine::tick`], but when several window boundaries are due at once
    /// (the service stalled) only the latest is evaluated: reports still queued in
    /// the socket must not be mistaken for silence. `run` uses this; `replay`, whose
    /// clock never stalls, evaluates every boundary.
    pub fn tick_latest(&mut self, now_ms: u64) -> Vec<Output> {
        let (w, delay) = (self.cfg.window_ms, self.evaluation_delay_ms());
        let due = self.next_tick_ms(now_ms);
        if due <= now_ms {
            let latest = (now_ms - delay) / w * w + delay;
            self.counters.skipped_evaluations += (latest - due) / w;
            self.next_tick = Some(latest);
        }
        self.tick(now_ms)
    }

    /// One evaluation at `at_ms`: presence, then the cross-site step.
    pub fn evaluate(&mut self, at_ms: u64, out: &mut Vec<Output>) {
        self.counters.evaluations += 1;
        let th = self.cfg.thresholds;
        let holding = at_ms < self.hold_presence_until_ms;
        // Wills that survived a moment without our link dropping are real departures.
        let confirm_ms = self.cfg.window_ms.min(WILL_CONFIRM_MS);
        let sites = &mut self.sites;
        self.pending_wills.retain(|site, &mut since_ms| {
            if at_ms < since_ms.saturating_add(confirm_ms) {
                return true;
            }
            if let Some(s) = sites.get_mut(site)
                && !s.is_offline()
            {
                s.presence = Presence::Offline {
                    since_ms,
                    why: OfflineWhy::Lost,
                };
            }
            false
        });
        for s in self.sites.values_mut() {
            if s.fresh {
                s.fresh = false;
                continue;
            }
            if holding {
                continue;
            }
            s.silent_ticks = s.silent_ticks.saturating_add(1);
            if s.silent_ticks >= th.silence_windows && !s.is_offline() {
                // A site never heard from since this collector started (a stale
                // retained status, a restored site) did not just go dark: its
                // silence is no evidence against its ISP.
                let since_ms = if s.has_window { at_ms } else { 0 };
                s.presence = Presence::Offline {
                    since_ms,
                    why: OfflineWhy::Silence,
                };
            }
        }
        self.on_time = self.sites.values().filter(|s| s.awaited()).count();
        self.awaited = self.on_time;
        self.fleet.evaluate(
            at_ms,
            self.cfg.window_ms,
            &self.sites,
            &self.cfg.providers,
            &th,
            out,
        );
    }

    /// Restores what a previous run persisted: the verdicts last published, open
    /// incidents, the next incident number and each site's ISP. A restart neither
    /// re-opens nor forgets an incident: open verdicts come back open.
    pub fn restore(&mut self, now_ms: u64, restored: Restored) {
        self.fleet.incidents.next = self.fleet.incidents.next.max(restored.next_incident);
        let mut boots: BTreeMap<Id, Vec<BootSeen>> = BTreeMap::new();
        for (site, b) in restored.boots {
            boots.entry(site).or_default().push(b);
        }
        for (site, b) in boots {
            self.sites
                .entry(site)
                .or_insert_with(|| SiteTrack::new(now_ms))
                .boots = Boots::restore(b);
        }
        for inc in restored.open_incidents {
            self.fleet.incidents.open.insert(inc.id.clone(), inc);
        }
        for (site, isp, customer) in restored.sites {
            let s = self
                .sites
                .entry(site)
                .or_insert_with(|| SiteTrack::new(now_ms));
            s.isp = isp;
            s.customer = customer;
        }
        for v in restored.verdicts {
            let map = match v.scope {
                Scope::Site => &mut self.fleet.sites,
                Scope::Isp => &mut self.fleet.isps,
                Scope::Provider => &mut self.fleet.providers,
            };
            let mut t = Track::new(v.scope);
            let open = v.state != State::Ok;
            if open {
                t.open = true;
                t.bad_run = self.cfg.thresholds.open_after;
                t.shown = Shown {
                    state: v.state,
                    cause: v.cause,
                    provider: v.provider.clone(),
                    sites: v.sites.clone(),
                    recommendation: v.recommendation.clone(),
                };
                t.incident = v.incident.clone();
                t.own_incident = v.incident.clone().filter(|iid| {
                    self.fleet
                        .incidents
                        .open
                        .get(iid)
                        .is_some_and(|i| i.scope == v.scope && i.target_id == v.id)
                });
            }
            if v.scope == Scope::Site {
                let s = self
                    .sites
                    .entry(v.id.clone())
                    .or_insert_with(|| SiteTrack::new(now_ms));
                if v.state == State::Offline {
                    s.presence = Presence::Offline {
                        since_ms: v.at_ms,
                        why: OfflineWhy::Lost,
                    };
                }
            }
            t.published = Some(v.clone());
            map.insert(v.id.clone(), t);
        }
    }
}

/// What [`Engine::restore`] takes from storage.
#[derive(Debug, Default, Clone)]
pub struct Restored {
    pub verdicts: Vec<Verdict>,
    pub open_incidents: Vec<Incident>,
    pub next_incident: u64,
    pub sites: Vec<(Id, Option<Id>, Option<String>)>,
    /// Every site's boots and the windows counted of each: de-dup survives a restart.
    pub boots: Vec<(Id, BootSeen)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_shared::{IncidentEventKind, Kind, Layer, ProbeResult};

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    fn report(site: &str, seq: u64, voipco_down: bool) -> Report {
        let probe = |t: &str, layer, prov: Option<&str>, down: bool| {
            let mut p = ProbeResult::new(id(t), layer, prov.map(id), Kind::Icmp);
            p.sent = 10;
            p.received = if down { 0 } else { 10 };
            p
        };
        Report {
            v: 1,
            site: id(site),
            boot: 1,
            seq,
            start_ms: 0,
            window_ms: 1000,
            host: None,
            probes: vec![
                probe("gw", Layer::Lan, None, false),
                probe("voipco", Layer::Provider, Some("voipco"), voipco_down),
            ],
        }
    }

    /// Feeds windows 0..n of three sites on three ISPs; returns the outputs.
    fn feed(e: &mut Engine, seqs: std::ops::Range<u64>, down: bool) -> Vec<Output> {
        let mut out = Vec::new();
        for w in seqs {
            for (s, isp) in [("a", "A"), ("b", "B"), ("c", "C")] {
                if w == 0 {
                    let st = Status::online(1, "t", id(isp), None);
                    e.on_status(w * 1000, &id(s), st);
                }
                e.on_report(w * 1000 + 500, &id(s), report(s, w, down))
                    .unwrap();
            }
            let due = (w + 1) * 1000 + e.evaluation_delay_ms();
            out.extend(e.tick(due));
        }
        out
    }

    fn cfg() -> EngineConfig {
        EngineConfig {
            window_ms: 1000,
            ..EngineConfig::default()
        }
    }

    fn events(out: &[Output], kind: IncidentEventKind) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Incident(ev) if ev.event == kind => Some(ev.incident.id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_restart_neither_reopens_nor_forgets_an_incident() {
        let mut e = Engine::new(cfg());
        let out = feed(&mut e, 0..5, true);
        assert_eq!(events(&out, IncidentEventKind::Opened), ["inc-000001"]);
        let restored = Restored {
            verdicts: e.verdicts().cloned().collect(),
            open_incidents: e.open_incidents().cloned().collect(),
            next_incident: 1,
            sites: e
                .sites()
                .iter()
                .map(|(s, t)| (s.clone(), t.isp.clone(), None))
                .collect(),
            boots: Vec::new(),
        };
        let mut e2 = Engine::new(cfg());
        e2.restore(5000, restored);
        e2.tick(5000);
        let out = feed(&mut e2, 5..10, true);
        assert!(
            events(&out, IncidentEventKind::Opened).is_empty(),
            "{out:?}"
        );
        assert!(events(&out, IncidentEventKind::Closed).is_empty());
        let out = feed(&mut e2, 10..14, false);
        assert_eq!(events(&out, IncidentEventKind::Closed), ["inc-000001"]);
        // The next incident continues the numbering.
        let out = feed(&mut e2, 14..17, true);
        assert_eq!(events(&out, IncidentEventKind::Opened), ["inc-000002"]);
    }

    #[test]
    fn a_complete_window_is_evaluated_when_its_last_report_arrives() {
        let mut e = Engine::new(cfg());
        feed(&mut e, 0..3, false); // evaluated at 3_100; next due at 4_100
        let before = e.counters().evaluations;
        e.on_report(3_940, &id("a"), report("a", 3, false)).unwrap();
        e.on_report(3_950, &id("b"), report("b", 3, false)).unwrap();
        assert!(!e.window_complete());
        assert!(e.tick_if_complete(3_950).is_empty());
        // c is 60 ms past the boundary, inside the evaluation delay: still its window.
        e.on_report(4_060, &id("c"), report("c", 3, false)).unwrap();
        assert!(e.window_complete());
        e.tick_if_complete(4_060);
        assert_eq!(e.counters().evaluations, before + 1);
        assert!(e.sites().values().all(|s| s.silent_ticks == 0));
        // The scheduled tick moved on to the next window.
        assert_eq!(e.next_tick_ms(4_060), 5_100);
        e.tick(4_100);
        assert_eq!(e.counters().evaluations, before + 1);
    }

    #[test]
    fn an_early_or_a_lagging_report_does_not_trigger_an_early_evaluation() {
        let mut e = Engine::new(cfg());
        feed(&mut e, 0..3, false);
        let before = e.counters().evaluations;
        // Complete, but in the first three quarters of the window: wait for the tick.
        for s in ["a", "b", "c"] {
            e.on_report(3_500, &id(s), report(s, 3, false)).unwrap();
        }
        assert!(e.window_complete());
        assert!(e.tick_if_complete(3_500).is_empty());
        assert_eq!(e.counters().evaluations, before);
        e.tick(4_100);
        // c misses window 4 altogether; a and b alone complete window 5's evaluation
        // (a site already behind is not waited for).
        for s in ["a", "b"] {
            e.on_report(4_950, &id(s), report(s, 4, false)).unwrap();
        }
        assert!(!e.window_complete(), "c was on time last window");
        e.tick(5_100);
        assert_eq!(e.sites()[&id("c")].silent_ticks, 1);
        for s in ["a", "b"] {
            e.on_report(5_950, &id(s), report(s, 5, false)).unwrap();
        }
        assert!(e.window_complete());
        e.tick_if_complete(5_950);
        assert_eq!(e.counters().evaluations, before + 3);
    }

    #[test]
    fn a_stalled_service_evaluates_once_instead_of_declaring_silence() {
        let mut e = Engine::new(cfg());
        feed(&mut e, 0..3, false);
        // Five windows pass with no evaluation; the reports were queued meanwhile.
        for (s, seq) in [("a", 3), ("b", 3), ("c", 3)] {
            e.on_report(8_400, &id(s), report(s, seq, false)).unwrap();
        }
        let out = e.tick_latest(8_500);
        assert_eq!(e.counters().skipped_evaluations, 4);
        assert!(
            out.iter()
                .all(|o| !matches!(o, Output::Verdict(v) if v.state == State::Offline)),
            "{out:?}"
        );
        // `tick` (replay) evaluates every boundary: silence shows.
        let mut r = Engine::new(cfg());
        feed(&mut r, 0..3, false);
        let out = r.tick(8_500);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Verdict(v) if v.state == State::Offline))
        );
    }

    #[test]
    fn silence_is_not_counted_while_the_collector_cannot_hear() {
        let mut e = Engine::new(cfg());
        feed(&mut e, 0..3, false);
        // The broker shuts down: it publishes site a's last will, then our link drops;
        // ten windows pass with evaluations but no reports.
        e.on_status(
            3_200,
            &id("a"),
            faultline_shared::Status::offline(faultline_shared::OfflineReason::Lost),
        );
        e.link_lost(3_300);
        let out = e.tick(13_500);
        assert!(
            out.iter()
                .all(|o| !matches!(o, Output::Verdict(v) if !v.state.is_ok())),
            "{out:?}"
        );
        // Back, with a grace period in which the replayed retained will is ignored:
        // still nothing; after it, silence counts again.
        e.link_up(14_000, 1_000);
        let topics = faultline_shared::Topics::default();
        let will = serde_json::to_vec(&faultline_shared::Status::offline(
            faultline_shared::OfflineReason::Lost,
        ))
        .unwrap();
        let replay = e.ingest(&topics, 14_100, "faultline/v1/sites/a/status", &will, true);
        assert!(matches!(replay, Ok(Accepted::Ignored)), "{replay:?}");
        assert!(e.tick(14_500).is_empty());
        let out = e.tick(19_500);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Verdict(v) if v.state == State::Offline)),
            "{out:?}"
        );
    }

    /// Site `a`'s report for `(boot, seq)` with its own clock reading `start_ms`.
    fn report_of(boot: u32, seq: u64, start_ms: u64) -> Report {
        Report {
            boot,
            start_ms,
            ..report("a", seq, false)
        }
    }

    #[test]
    fn an_rtc_less_reboot_with_a_spooled_backlog_keeps_the_site_live() {
        let mut e = Engine::new(cfg());
        let now0 = 1_764_201_600_000;
        let offline = |out: &[Output]| {
            out.iter().any(|o| {
                matches!(o, Output::Verdict(v) if v.id.as_str() == "a" && v.state == State::Offline)
            })
        };
        let mut out = Vec::new();
        for w in 0..30u64 {
            let at = now0 + w * 1000;
            for (s, isp) in [("b", "B"), ("c", "C")] {
                if w == 0 {
                    e.on_status(at, &id(s), Status::online(1, "t", id(isp), None));
                }
                e.on_report(at + 500, &id(s), report(s, w, false)).unwrap();
            }
            match w {
                0 => {
                    e.on_status(at, &id("a"), Status::online(1, "t", id("A"), None));
                }
                // Windows 5 and 6 of boot 1 are measured but not sent (the uplink is
                // down), then the gateway reboots without an RTC: boot 2's clock reads 1970.
                7 => {
                    e.on_status(at, &id("a"), Status::online(2, "t", id("A"), None));
                }
                _ => {}
            }
            if w < 5 {
                e.on_report(at + 500, &id("a"), report_of(1, w, at))
                    .unwrap();
            } else if w >= 7 {
                let r = e.on_report(at + 500, &id("a"), report_of(2, w - 7, (w - 7) * 1000));
                assert!(
                    matches!(r, Ok(Accepted::Report { live: true, .. })),
                    "{r:?}"
                );
                // The spool sends boot 1's windows after the new boot's, one a window,
                // and some of them twice.
                if (7..9).contains(&w) {
                    let old = report_of(1, w - 2, now0 + (w - 2) * 1000);
                    let r = e.on_report(at + 600, &id("a"), old.clone());
                    assert!(
                        matches!(r, Ok(Accepted::Report { live: false, .. })),
                        "{r:?}"
                    );
                    let again = e.on_report(at + 700, &id("a"), old);
                    assert_eq!(again, Err(Reject::Duplicate));
                }
            }
            out.extend(e.tick(at + 1000 + e.evaluation_delay_ms()));
        }
        assert!(!offline(&out), "{out:?}");
        let a = &e.sites()[&id("a")];
        assert_eq!(a.last_window.map(|w| w.0), Some(2));
        assert_eq!(a.boots.live().map(|b| b.meta.boot), Some(2));
        assert_eq!(e.missing_windows(), 0, "the backlog filled boot 1's gap");
    }

    #[test]
    fn de_dup_and_the_live_boot_survive_a_restart() {
        let mut e = Engine::new(cfg());
        feed(&mut e, 0..4, false);
        // Site a rebooted as boot 9; its window 2 is missing so far.
        e.on_status(4_000, &id("a"), Status::online(9, "t", id("a"), None));
        for seq in [0, 1, 3] {
            e.on_report(4_100, &id("a"), report_of(9, seq, 0)).unwrap();
        }
        assert_eq!(e.missing_windows(), 1);
        let restored = Restored {
            boots: e
                .sites()
                .iter()
                .flat_map(|(s, t)| t.boots.iter().map(|b| (s.clone(), b.clone())))
                .collect(),
            ..Restored::default()
        };
        let mut e2 = Engine::new(cfg());
        e2.restore(5_000, restored);
        assert_eq!(e2.missing_windows(), 1);
        // Delivered again after the restart: counted once, before and after.
        assert_eq!(
            e2.on_report(5_100, &id("a"), report_of(9, 3, 0)),
            Err(Reject::Duplicate)
        );
        assert_eq!(
            e2.on_report(5_100, &id("b"), report("b", 3, false)),
            Err(Reject::Duplicate)
        );
        // Boot 1's last window, late: stored, not live; boot 9's next one is.
        let late = e2.on_report(5_200, &id("a"), report_of(1, 4, 0));
        assert!(
            matches!(late, Ok(Accepted::Report { live: false, .. })),
            "{late:?}"
        );
        let next = e2.on_report(5_300, &id("a"), report_of(9, 4, 0));
        assert!(
            matches!(next, Ok(Accepted::Report { live: true, .. })),
            "{next:?}"
        );
        let fill = e2.on_report(5_400, &id("a"), report_of(9, 2, 0));
        assert!(
            matches!(fill, Ok(Accepted::Report { live: false, .. })),
            "{fill:?}"
        );
        assert_eq!(e2.missing_windows(), 0);
    }
}
