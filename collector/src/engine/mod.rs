//! The diagnosis engine: DESIGN.md's "What a verdict means", sans-IO, with one owner.
//!
//! Driven in the manner of quinn-proto's `Endpoint`: [`Engine::handle_message`]
//! (an MQTT message, at collector time `now`), [`Engine::handle_link`] (the
//! collector's own broker link went down or came up), [`Engine::poll_timeout`]
//! (when it next wants [`Engine::handle_timeout`]) and [`Engine::poll_output`]
//! (verdict changes, incident events, history rows, per-probe metrics and state
//! snapshots, in order). Nothing here reads a clock or touches a socket, so `run`
//! (wall clock) and `replay` (a file's clock) drive the same engine the same way.
//!
//! Two stages with one message between them: the site stage ([`site`]: de-dup,
//! bounds, presence, baselines, health per layer) turns each site's reports into
//! one [`SiteSummary`] per site window; the fleet stage ([`fleet`]: ISP, provider
//! and route correlation, hysteresis, incidents, failover) reads only those. Here
//! they are wired directly; in a cluster the summary travels between processes.
//!
//! Time: the engine judges on *collector receive time* only. A report's `start_ms`
//! comes from a gateway clock that may be wrong (no RTC, no NTP yet); it is stored
//! in history and compared with the collector's clock only to count skew. Which
//! window is newest is decided by `(boot, seq)` and the order boots appeared in
//! ([`boots`]), never by `start_ms`.
//!
//! Evaluation: a settle time ([`Engine::evaluation_delay_ms`]) after the first new
//! summary (agents publish at their window ends, so a fleet's reports come in a
//! burst), and every collector window regardless (`window_seconds`: silence and
//! idle expiry). Hysteresis and silence count each site's own windows (rule 7), so
//! how often the collector evaluates never changes what it concludes.

pub mod boots;
pub mod fleet;
pub mod health;
pub mod site;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use faultline_shared::{
    Id, Incident, IncidentEvent, Layer, OfflineWhy, RejectReason, Report, Scope, SiteSummary,
    State, Status, StatusState, SummaryKind, Topic, Topics, Verdict, decode,
};

pub use boots::{BootMeta, BootSeen, Boots, Seen, SeqSet};
pub use fleet::{Change, Fleet, Track};
pub use health::{Health, Thresholds};
pub use site::{Presence, SiteTrack, SiteView};

use crate::snapshot::Snapshot;
use fleet::Shown;
use site::Bucket;

/// Report format versions this collector understands.
pub const KNOWN_VERSIONS: &[u8] = &[1];
/// Window lengths a report may declare: 1 s to 1 h.
pub const WINDOW_RANGE_MS: std::ops::RangeInclusive<u32> = 1_000..=3_600_000;
/// Per-probe metrics: each site may publish this many reports' worth in a burst,
/// refilled at [`METRICS_PER_WINDOW`] per its window. A backlog being drained is in
/// history; re-broadcasting it at ten QoS 0 messages a report would only slow the
/// catch-up.
const METRICS_BURST: f64 = 3.0;
/// Twice a site's own rate: a live report up to half a window late still finds a
/// token.
const METRICS_PER_WINDOW: f64 = 2.0;
/// Before its first report a site's window length is unknown: silence is counted in
/// windows of at least this (the satellite profile's).
const FIRST_WINDOW_MS: u64 = 60_000;
/// Last wills received this long before the collector's own link drops are taken
/// to be the broker shutting down (see [`Engine::handle_link`]).
const WILL_BURST_MS: u64 = 2_000;
/// A live last will counts once this long has passed without the collector's own
/// link dropping: a broker shutting down publishes every client's will before it
/// closes our connection, and on a busy machine that can take a second or more. As
/// long as the take-back window ([`WILL_BURST_MS`]), so a will is either taken back
/// or confirmed, never published and then taken back.
const WILL_CONFIRM_MS: u64 = WILL_BURST_MS;

/// Which stages an engine runs (DESIGN.md "Deployment modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Both stages wired directly: one node, `replay`.
    #[default]
    Whole,
    /// The site stage only (a cluster's site worker): each summary goes out as
    /// [`Output::Summary`]; no evaluations, no verdicts.
    Site,
    /// The fleet stage only (a cluster's correlator): summaries come in through
    /// [`Engine::handle_summary`]; no reports, no statuses.
    Fleet,
}

/// The engine's settings (from collector.toml).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Which stages run.
    pub role: Role,
    /// How often the collector evaluates at the latest (`window_seconds`).
    pub window_ms: u64,
    pub thresholds: Thresholds,
    /// Configured providers and their alternates.
    pub providers: BTreeMap<Id, Option<Id>>,
    pub max_payload_bytes: usize,
    /// After the broker link returns, silence is not counted for this long: agents
    /// reconnect with backoff and must not look like sites going dark together.
    pub reconnect_grace_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            role: Role::Whole,
            window_ms: crate::config::DEFAULT_WINDOW_MS,
            thresholds: Thresholds::default(),
            providers: BTreeMap::new(),
            max_payload_bytes: crate::config::DEFAULT_MAX_PAYLOAD,
            reconnect_grace_ms: 60_000,
        }
    }
}

/// Why a message was dropped (and counted under [`Reject::reason`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("topic: {0}")]
    Topic(String),
    #[error("payload of {0} bytes over the cap")]
    Oversized(usize),
    #[error("decode: {1}")]
    Decode(RejectReason, String),
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
    #[error("impossible value: {0}")]
    Impossible(String),
    #[error("windows faster than the site's clock allows")]
    Paced,
}

impl Reject {
    pub fn reason(&self) -> RejectReason {
        match self {
            Reject::Topic(_) => RejectReason::Topic,
            Reject::Oversized(_) => RejectReason::Oversized,
            Reject::Decode(r, _) => *r,
            Reject::Json(_) => RejectReason::Malformed,
            Reject::Version(_) => RejectReason::Version,
            Reject::SiteMismatch { .. } => RejectReason::SiteMismatch,
            Reject::Duplicate => RejectReason::Duplicate,
            Reject::DedupFull => RejectReason::DedupFull,
            Reject::Window(_) => RejectReason::Window,
            Reject::Impossible(_) => RejectReason::Impossible,
            Reject::Paced => RejectReason::Paced,
        }
    }
}

/// A report's summary for history, judged by the same rules as the verdicts.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRow {
    pub site: Id,
    pub recv_ms: u64,
    pub start_ms: u64,
    pub boot: u32,
    pub seq: u64,
    /// Probes judged bad in this window (DESIGN.md step 1, the engine's own rules).
    pub bad: u32,
    pub max_loss: f64,
    pub max_rtt_ms: Option<f64>,
    pub min_mos: Option<f64>,
    /// Providers this site probed in the window.
    pub providers: Vec<Id>,
    /// The window's length (what the site was watched for, in history's availability).
    pub window_ms: u32,
    /// Each probe's values, for per-target charts.
    pub targets: Vec<TargetPoint>,
}

/// One probe's values in one window, as history keeps them for charts.
#[derive(Debug, Clone, PartialEq)]
/// (f32: charts need no more, and thousands of rows are in flight to history
/// while a backlog drains.)
pub struct TargetPoint {
    pub target: Id,
    pub layer: Layer,
    pub provider: Option<Id>,
    pub rtt_p50_ms: Option<f32>,
    pub rtt_p95_ms: Option<f32>,
    pub jitter_ms: Option<f32>,
    pub loss: f32,
    pub mos: Option<f32>,
}

impl WindowRow {
    fn of(r: &Report, recv_ms: u64, judged: &[Option<Health>]) -> Self {
        let mut row = WindowRow {
            site: r.site.clone(),
            recv_ms,
            start_ms: r.start_ms,
            boot: r.boot,
            seq: r.seq,
            bad: judged
                .iter()
                .filter(|h| h.is_some_and(Health::is_bad))
                .count() as u32,
            max_loss: 0.0,
            max_rtt_ms: None,
            min_mos: None,
            providers: Vec::new(),
            window_ms: r.window_ms,
            targets: Vec::with_capacity(r.probes.len()),
        };
        for p in &r.probes {
            row.targets.push(TargetPoint {
                target: p.target.clone(),
                layer: p.layer,
                provider: p.provider.clone(),
                rtt_p50_ms: p.rtt_ms.map(|r| r.p50 as f32),
                rtt_p95_ms: p.rtt_ms.map(|r| r.p95 as f32),
                jitter_ms: p.jitter_ms.map(|v| v as f32),
                loss: p.loss() as f32,
                mos: p.mos.map(|v| v as f32),
            });
            row.max_loss = row.max_loss.max(p.loss());
            if let Some(rtt) = p.rtt_ms {
                row.max_rtt_ms = Some(row.max_rtt_ms.map_or(rtt.p50, |m: f64| m.max(rtt.p50)));
            }
            if let Some(m) = p.mos {
                row.min_mos = Some(row.min_mos.map_or(m, |x: f64| x.min(m)));
            }
            if let Some(prov) = &p.provider
                && !row.providers.contains(prov)
            {
                row.providers.push(prov.clone());
            }
        }
        row
    }
}

/// What the engine asks its driver to do, in order.
#[derive(Debug, Clone)]
pub enum Output {
    /// A verdict changed: publish it retained, record it.
    Verdict(Verdict),
    /// An incident opened, changed or closed: publish the event, record it.
    Incident(IncidentEvent),
    /// A verdict no longer tracked (an idle unconfigured provider): clear its
    /// retained topic and its current row.
    Forget(Verdict),
    /// An accepted window, for history.
    Window(WindowRow),
    /// A boot seen or announced, for history (de-dup survives a restart).
    Boot(Id, BootMeta),
    /// A site's identity, for history.
    Site {
        site: Id,
        isp: Option<Id>,
        customer: Option<String>,
    },
    /// A report whose per-probe metrics go out (paced per site).
    Metrics(Arc<Report>),
    /// The state as of the evaluation just made, for pages and APIs.
    Snapshot(Arc<Snapshot>),
    /// A site summary for the fleet stage in another process ([`Role::Site`] only).
    Summary(SiteSummary),
}

/// Counters the shell exports as metrics.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub reports: u64,
    pub statuses: u64,
    pub late: u64,
    pub skewed: u64,
    pub rejected: BTreeMap<RejectReason, u64>,
    pub evaluations: u64,
    /// Periodic evaluations skipped because the service fell behind.
    pub skipped_evaluations: u64,
    /// Windows provably missing now (see [`Engine::missing_windows`]).
    pub missing_windows: u64,
    /// Per-probe metrics not published: the site's burst was spent (a backlog).
    pub metrics_skipped: u64,
    /// Site summaries handed to the fleet stage.
    pub summaries: u64,
    /// Unconfigured providers not tracked (over the cap).
    pub providers_over_cap: u64,
}

/// The whole engine: the site stage wired to the fleet stage.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    /// The site stage's state.
    /// By site (hashed: looked up on every report; ordered where output order
    /// matters, in snapshots).
    sites: HashMap<Id, SiteTrack>,
    /// The fleet stage.
    fleet: Fleet,
    out: VecDeque<Output>,
    counters: Counters,
    /// The next periodic evaluation (set by the first call).
    next_periodic: Option<u64>,
    /// An evaluation a settle time after new summaries.
    eval_due: Option<u64>,
    /// Until this collector time silence is not counted: the collector itself could
    /// not hear (its broker link was down, or came back moments ago).
    hold_until_ms: u64,
    /// The broker link has been lost at least once (so retained wills may be stale).
    link_was_lost: bool,
    /// Live last wills received, by site, not yet confirmed.
    pending_wills: BTreeMap<Id, u64>,
    /// Something changed since the last snapshot.
    dirty: bool,
    /// [`Engine::missing_windows`], kept up to date as boots change.
    missing: u64,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        let fleet = Fleet::new(cfg.providers.clone(), cfg.thresholds);
        Self {
            cfg,
            sites: HashMap::new(),
            fleet,
            out: VecDeque::new(),
            counters: Counters::default(),
            next_periodic: None,
            eval_due: None,
            hold_until_ms: 0,
            link_was_lost: false,
            pending_wills: BTreeMap::new(),
            dirty: true,
            missing: 0,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        c.missing_windows = self.missing_windows();
        c.providers_over_cap = self.fleet.providers_over_cap;
        c
    }

    pub fn sites(&self) -> &HashMap<Id, SiteTrack> {
        &self.sites
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Open incidents.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.fleet.incidents.open.values()
    }

    /// Every verdict as last published: providers, ISPs, routes, sites.
    pub fn verdicts(&self) -> impl Iterator<Item = &Verdict> {
        let f = &self.fleet;
        f.providers
            .values()
            .chain(f.isps.values())
            .chain(f.routes.values())
            .chain(f.site_tracks.values())
            .filter_map(|t| t.published.as_ref())
    }

    /// Windows provably missing across every site (gaps in a boot's seqs; see
    /// [`boots`]), less those a backlog has filled since.
    pub fn missing_windows(&self) -> u64 {
        self.missing
    }

    /// How long after new summaries (and after a window boundary) the evaluation
    /// waits for reports still on their way: a tenth of the window, at most 1 s.
    pub fn evaluation_delay_ms(&self) -> u64 {
        (self.cfg.window_ms / 10).min(1_000)
    }

    /// The next output, in the order produced.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Engine::handle_timeout`] is next due (collector time); `None` before
    /// the first call of any `handle_*`.
    pub fn poll_timeout(&self) -> Option<u64> {
        let wills = self
            .pending_wills
            .values()
            .map(|&t| t.saturating_add(WILL_CONFIRM_MS))
            .min();
        [self.next_periodic, self.eval_due, wills]
            .into_iter()
            .flatten()
            .min()
    }

    /// Starts the periodic clock at the first call: the first evaluation is at the
    /// next collector window boundary (plus the settle time).
    fn start(&mut self, now_ms: u64) {
        if self.next_periodic.is_none() {
            let (w, d) = (self.cfg.window_ms, self.evaluation_delay_ms());
            self.next_periodic = Some((now_ms.saturating_sub(d) / w + 1) * w + d);
        }
    }

    /// Runs whatever is due at `now_ms`: confirmed last wills, then an evaluation
    /// (periodic, or a settle time after new summaries). A driver that fell behind
    /// evaluates once for every periodic evaluation it missed.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.start(now_ms);
        self.confirm_wills(now_ms);
        let periodic = self.next_periodic.is_some_and(|t| t <= now_ms);
        if periodic {
            let (w, d) = (self.cfg.window_ms, self.evaluation_delay_ms());
            let due = self.next_periodic.unwrap_or(now_ms);
            let latest = (now_ms.saturating_sub(d) / w) * w + d;
            self.counters.skipped_evaluations += latest.saturating_sub(due) / w;
            self.next_periodic = Some(latest.max(due) + w);
            self.silence(now_ms);
        }
        if periodic || self.eval_due.is_some_and(|t| t <= now_ms) {
            self.evaluate(now_ms);
        }
    }

    /// The collector's broker link went down (`up` false) or is back. While down,
    /// silence says nothing about the sites; a broker that shuts down publishes
    /// every client's last will just before it closes our connection, so the wills
    /// received in the moments before are taken back. Once back, silence does not
    /// count for the reconnect grace (agents reconnect with backoff), and the
    /// retained wills the broker replays are ignored.
    /// Counts silence only from `until_ms` on (a site is then offline after its
    /// usual silence past it): sites this engine has just taken over (a cluster
    /// partition changing hands) are heard again only once their unacknowledged
    /// reports are delivered again. A held link (`u64::MAX`) stays held.
    pub fn hold_silence_until(&mut self, until_ms: u64) {
        if self.hold_until_ms != u64::MAX {
            self.hold_until_ms = self.hold_until_ms.max(until_ms);
        }
    }

    pub fn handle_link(&mut self, now_ms: u64, up: bool) {
        self.start(now_ms);
        if up {
            self.hold_until_ms = now_ms.saturating_add(self.cfg.reconnect_grace_ms);
            return;
        }
        if self.hold_until_ms == u64::MAX {
            return;
        }
        self.hold_until_ms = u64::MAX;
        self.link_was_lost = true;
        self.pending_wills.clear();
        let mut back = Vec::new();
        for (id, s) in self.sites.iter_mut() {
            if let Presence::Offline {
                since_ms,
                why: OfflineWhy::Lost,
            } = s.presence
                && since_ms.saturating_add(WILL_BURST_MS) >= now_ms
            {
                s.presence = Presence::Online;
                s.refresh_view();
                back.push(s.summary(id, now_ms, SummaryKind::Online));
            }
        }
        for summary in back {
            self.summarize(now_ms, summary);
        }
    }

    /// Validates and applies one MQTT message; a rejected one is counted by reason.
    pub fn handle_message(
        &mut self,
        topics: &Topics,
        now_ms: u64,
        topic: &str,
        payload: &[u8],
        retained: bool,
    ) -> Result<(), Reject> {
        self.start(now_ms);
        let r = self.message(topics, now_ms, topic, payload, retained);
        if let Err(e) = &r {
            *self.counters.rejected.entry(e.reason()).or_default() += 1;
        }
        r
    }

    fn message(
        &mut self,
        topics: &Topics,
        now_ms: u64,
        topic: &str,
        payload: &[u8],
        retained: bool,
    ) -> Result<(), Reject> {
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
                    return Ok(());
                }
                let status: Status =
                    serde_json::from_slice(payload).map_err(|e| Reject::Json(e.to_string()))?;
                // After our link came back, the broker replays the retained wills it
                // published as it shut down: not news about the sites.
                if retained
                    && self.link_was_lost
                    && now_ms < self.hold_until_ms
                    && status.state == StatusState::Offline
                    && status.reason != Some(faultline_shared::OfflineReason::Shutdown)
                {
                    return Ok(());
                }
                self.counters.statuses += 1;
                // A retained offline status tells of an old departure, not a new one.
                let since = if retained { 0 } else { now_ms };
                self.on_status(now_ms, since, &site, status);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(Reject::Topic(e.to_string())),
        }
    }

    /// A decoded report from `topic_site`.
    fn on_report(&mut self, now_ms: u64, topic_site: &Id, report: Report) -> Result<(), Reject> {
        if !KNOWN_VERSIONS.contains(&report.v) {
            return Err(Reject::Version(report.v));
        }
        if &report.site != topic_site {
            return Err(Reject::SiteMismatch {
                topic: topic_site.clone(),
                payload: report.site,
            });
        }
        if !WINDOW_RANGE_MS.contains(&report.window_ms) {
            return Err(Reject::Window(report.window_ms));
        }
        if report.probes.len() > faultline_shared::wire::MAX_PROBES {
            return Err(Reject::Decode(
                RejectReason::Malformed,
                "too many probes".into(),
            ));
        }
        if let Some(why) = health::impossible(&report) {
            return Err(Reject::Impossible(why));
        }
        let th = self.cfg.thresholds;
        let site = self
            .sites
            .entry(report.site.clone())
            .or_insert_with(|| SiteTrack::new(now_ms, report.window_ms));
        if !site
            .boots
            .plausible(now_ms, report.boot, report.seq, report.window_ms)
        {
            return Err(Reject::Impossible(format!(
                "seq {} of boot {} runs ahead of the site's clock",
                report.seq, report.boot
            )));
        }
        let before = site.boots.missing();
        let (seen, boot) = site.boots.window(now_ms, report.boot, report.seq);
        self.missing = (self.missing + site.boots.missing()).saturating_sub(before);
        let live = match seen {
            Seen::Duplicate => return Err(Reject::Duplicate),
            Seen::Full => return Err(Reject::DedupFull),
            Seen::Fresh { live } => live,
        };
        let (every, cap) = Bucket::window_pace(report.window_ms);
        if !site
            .pacer
            .get_or_insert_with(|| Bucket::full(now_ms, cap))
            .take(now_ms, every, cap)
        {
            return Err(Reject::Paced);
        }
        let end = report.start_ms.saturating_add(u64::from(report.window_ms));
        let skew = end as i128 - now_ms as i128;
        let skewed = skew.unsigned_abs() > u128::from(th.max_skew_ms);
        site.clock_skew_ms = skew.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        // The cached page view shares the targets: let go of it before they change.
        site.refresh_view();
        let judged = site.judge(&report, now_ms, live, &th);
        if let Some(meta) = boot {
            self.out.push_back(Output::Boot(report.site.clone(), meta));
        }
        self.out
            .push_back(Output::Window(WindowRow::of(&report, now_ms, &judged)));
        let every = f64::from(report.window_ms) / METRICS_PER_WINDOW;
        if site
            .metrics
            .get_or_insert_with(|| Bucket::full(now_ms, METRICS_BURST))
            .take(now_ms, every, METRICS_BURST)
        {
            self.out
                .push_back(Output::Metrics(Arc::new(report.clone())));
        } else {
            self.counters.metrics_skipped += report.probes.len() as u64;
        }
        self.counters.reports += 1;
        self.counters.late += u64::from(!live);
        self.counters.skewed += u64::from(skewed);
        if live {
            site.apply_live(&report, &judged, now_ms, &th);
            // A live window outranks a will still waiting to be confirmed.
            self.pending_wills.remove(&report.site);
            // One summary per site window: windows of a backlog arriving together
            // are summarized as one, the newest (see `flush_backlogs`).
            let half = u64::from(report.window_ms / 2);
            let due = site
                .summarized_ms
                .is_none_or(|t| now_ms >= t.saturating_add(half));
            site.unsummarized = !due;
            let summary = due.then(|| site.window_summary(&report.site, now_ms));
            if due {
                site.summarized_ms = Some(now_ms);
            }
            site.refresh_view();
            if let Some(Some(s)) = summary {
                self.summarize(now_ms, s);
            }
        } else {
            site.refresh_view();
        }
        self.dirty = true;
        Ok(())
    }

    /// An agent's retained status (or last will). `since_ms` 0 is an old departure.
    fn on_status(&mut self, now_ms: u64, since_ms: u64, id: &Id, status: Status) {
        let window_ms = self.cfg.window_ms as u32;
        let s = self
            .sites
            .entry(id.clone())
            .or_insert_with(|| SiteTrack::new(now_ms, window_ms));
        let summary = match status.state {
            StatusState::Online => {
                // Back: a will still waiting to be confirmed was the old connection's
                // (a broker that restarts publishes the wills of the sessions it
                // restored as their clients reconnect).
                self.pending_wills.remove(id);
                let changed = (status.isp.is_some() && status.isp != s.isp)
                    || (status.customer.is_some() && status.customer != s.customer);
                if status.isp.is_some() {
                    s.isp = status.isp;
                }
                if status.customer.is_some() {
                    s.customer = status.customer;
                }
                let before = s.boots.missing();
                let announced = s.boots.announce(now_ms, status.boot);
                self.missing = (self.missing + s.boots.missing()).saturating_sub(before);
                if let Some(meta) = announced {
                    self.out.push_back(Output::Boot(id.clone(), meta));
                }
                self.out.push_back(Output::Site {
                    site: id.clone(),
                    isp: s.isp.clone(),
                    customer: s.customer.clone(),
                });
                changed.then(|| s.summary(id, now_ms, SummaryKind::Announce))
            }
            StatusState::Offline => {
                let why = status.reason.map_or(OfflineWhy::Lost, OfflineWhy::from);
                // A live last will waits a moment before it counts: when the broker
                // itself is shutting down, our link drops right after and
                // `handle_link` takes it back.
                if why == OfflineWhy::Lost && since_ms != 0 && !s.is_offline() {
                    self.pending_wills.entry(id.clone()).or_insert(now_ms);
                    return;
                }
                if s.is_offline() {
                    return;
                }
                s.presence = Presence::Offline { since_ms, why };
                Some(s.summary(id, now_ms, SummaryKind::Offline { since_ms, why }))
            }
        };
        s.refresh_view();
        self.dirty = true;
        if let Some(summary) = summary {
            self.summarize(now_ms, summary);
        }
    }

    /// Hands a summary to the fleet stage and schedules an evaluation; in the
    /// site role, hands it out instead.
    fn summarize(&mut self, now_ms: u64, summary: SiteSummary) {
        self.counters.summaries += 1;
        if self.cfg.role == Role::Site {
            self.out.push_back(Output::Summary(summary));
            return;
        }
        self.fleet.handle_summary(summary);
        if self.eval_due.is_none() {
            self.eval_due = Some(now_ms + self.evaluation_delay_ms());
        }
    }

    /// A site summary from a site worker ([`Role::Fleet`]): fed to the fleet stage,
    /// evaluated a settle time later as a summary of this process's own would be.
    pub fn handle_summary(&mut self, now_ms: u64, summary: SiteSummary) {
        self.start(now_ms);
        self.dirty = true;
        self.summarize(now_ms, summary);
    }

    /// Drops every site `keep` says no to from the site stage (a site worker that
    /// lost the partition holding them): its state is rebuilt by the next owner.
    pub fn retain_sites(&mut self, keep: impl Fn(&Id) -> bool) {
        self.sites.retain(|id, _| keep(id));
        self.pending_wills.retain(|id, _| keep(id));
        self.missing = self.sites.values().map(|s| s.boots.missing()).sum();
        self.dirty = true;
    }

    /// A standby correlator becomes the active one: the verdicts, open incidents
    /// and incident counter are those history holds (what the previous leader
    /// published), so ids neither repeat nor fork; the per-site latches this
    /// process kept warm from the same summaries stay.
    pub fn take_over(&mut self, now_ms: u64, restored: Restored) {
        let latches = std::mem::take(&mut self.fleet.sites);
        let next = self.fleet.incidents.next;
        self.fleet = Fleet::new(self.cfg.providers.clone(), self.cfg.thresholds);
        self.restore(now_ms, restored);
        // Never below what this process issued itself (it published none of them,
        // but a number is never worth reusing).
        self.fleet.incidents.next = self.fleet.incidents.next.max(next);
        self.fleet.sites = latches;
    }

    /// Last wills that survived a moment without our link dropping: departures.
    fn confirm_wills(&mut self, now_ms: u64) {
        let confirm = WILL_CONFIRM_MS;
        let due: Vec<(Id, u64)> = self
            .pending_wills
            .iter()
            .filter(|(_, t)| now_ms >= t.saturating_add(confirm))
            .map(|(id, t)| (id.clone(), *t))
            .collect();
        for (id, since_ms) in due {
            self.pending_wills.remove(&id);
            let Some(s) = self.sites.get_mut(&id) else {
                continue;
            };
            if s.is_offline() {
                continue;
            }
            let why = OfflineWhy::Lost;
            s.presence = Presence::Offline { since_ms, why };
            s.refresh_view();
            let summary = s.summary(&id, now_ms, SummaryKind::Offline { since_ms, why });
            self.summarize(now_ms, summary);
        }
    }

    /// Sites silent for `silence_windows` of their own windows (plus half a window:
    /// a report a few seconds late is not silence) go offline; backlogs that came in
    /// faster than one window per half window are summarized by their newest.
    fn silence(&mut self, now_ms: u64) {
        if now_ms < self.hold_until_ms || self.cfg.role == Role::Fleet {
            return;
        }
        let th = self.cfg.thresholds;
        let mut summaries = Vec::new();
        for (id, s) in self.sites.iter_mut() {
            if s.is_offline() {
                continue;
            }
            // A site not heard from yet may be on long windows (its first report
            // can come a minute after its status): given the longest usual window.
            let w = if s.has_window() {
                u64::from(s.window_ms)
            } else {
                u64::from(s.window_ms).max(FIRST_WINDOW_MS)
            };
            let since = s.last_report_ms.max(self.hold_until_ms);
            let deadline = since + u64::from(th.silence_windows) * w + w / 2;
            if now_ms < deadline {
                continue;
            }
            // A site never heard from since this collector started (a stale
            // retained status, a restored site) did not just go dark: its silence
            // is no evidence against its ISP.
            let since_ms = if s.has_window() { now_ms } else { 0 };
            let why = OfflineWhy::Silence;
            s.presence = Presence::Offline { since_ms, why };
            s.unsummarized = false;
            s.refresh_view();
            summaries.push(s.summary(id, now_ms, SummaryKind::Offline { since_ms, why }));
        }
        for summary in summaries {
            self.summarize(now_ms, summary);
        }
    }

    /// Summarizes the newest window of each backlog that came in too fast to be
    /// summarized window by window.
    fn flush_backlogs(&mut self, now_ms: u64) {
        let mut summaries = Vec::new();
        for (id, s) in self.sites.iter_mut() {
            if !s.unsummarized || s.is_offline() {
                continue;
            }
            let half = u64::from(s.window_ms / 2);
            if s.summarized_ms
                .is_some_and(|t| now_ms < t.saturating_add(half))
            {
                continue;
            }
            s.unsummarized = false;
            s.summarized_ms = Some(now_ms);
            summaries.extend(s.window_summary(id, now_ms));
        }
        for summary in summaries {
            self.counters.summaries += 1;
            if self.cfg.role == Role::Site {
                self.out.push_back(Output::Summary(summary));
            } else {
                self.fleet.handle_summary(summary);
            }
        }
    }

    /// One evaluation at `now_ms`: the fleet stage over every site's latest summary.
    fn evaluate(&mut self, now_ms: u64) {
        self.flush_backlogs(now_ms);
        self.eval_due = None;
        self.counters.evaluations += 1;
        let mut changes = Vec::new();
        if self.cfg.role != Role::Site {
            self.fleet.evaluate(now_ms, &mut changes);
        }
        self.dirty |= !changes.is_empty();
        for c in changes {
            self.out.push_back(match c {
                Change::Verdict(v) => Output::Verdict(v),
                Change::Incident(e) => Output::Incident(e),
                Change::Forgotten(v) => Output::Forget(v),
            });
        }
        if std::mem::take(&mut self.dirty) {
            let snapshot = Arc::new(self.snapshot());
            self.out.push_back(Output::Snapshot(snapshot));
        }
    }

    /// The state pages read, as of now.
    pub fn snapshot(&mut self) -> Snapshot {
        let f = &self.fleet;
        let published = |m: &BTreeMap<Id, Track>| {
            m.values()
                .filter_map(|t| t.published.clone())
                .collect::<Vec<_>>()
        };
        Snapshot {
            evaluations: self.counters.evaluations,
            window_ms: self.cfg.window_ms,
            sites: self
                .sites
                .iter_mut()
                .map(|(id, s)| (id.clone(), s.view()))
                .collect(),
            site_verdicts: f
                .site_tracks
                .iter()
                .filter_map(|(id, t)| Some((id.clone(), t.published.clone()?)))
                .collect(),
            providers: published(&f.providers),
            isps: published(&f.isps),
            routes: f
                .routes
                .values()
                .filter_map(|t| t.published.clone())
                .collect(),
            open_incidents: self.open_incidents().cloned().collect(),
        }
    }

    /// Restores what a previous run persisted: the verdicts last published, open
    /// incidents, the next incident number, each site's ISP and its boots. A
    /// restart neither re-opens nor forgets an incident: open verdicts come back
    /// open, and each site is judged afresh on its first window.
    pub fn restore(&mut self, now_ms: u64, restored: Restored) {
        let window_ms = self.cfg.window_ms as u32;
        let fleet = &mut self.fleet;
        fleet.incidents.next = fleet.incidents.next.max(restored.next_incident);
        let mut boots: BTreeMap<Id, Vec<BootSeen>> = BTreeMap::new();
        for (site, b) in restored.boots {
            boots.entry(site).or_default().push(b);
        }
        for (site, b) in boots {
            self.sites
                .entry(site)
                .or_insert_with(|| SiteTrack::new(now_ms, window_ms))
                .boots = Boots::restore(b);
        }
        for inc in restored.open_incidents {
            fleet.incidents.open.insert(inc.id.clone(), inc);
        }
        for (site, isp, customer) in restored.sites {
            let s = self
                .sites
                .entry(site.clone())
                .or_insert_with(|| SiteTrack::new(now_ms, window_ms));
            s.isp = isp;
            s.customer = customer;
            let summary = s.summary(&site, now_ms, SummaryKind::Announce);
            fleet.handle_summary(summary);
        }
        for v in restored.verdicts {
            let mut t = Track::new(v.scope);
            if v.state != State::Ok {
                t.open = true;
                t.shown = Shown {
                    state: v.state,
                    cause: v.cause,
                    provider: if v.scope == Scope::Route {
                        None
                    } else {
                        v.provider.clone()
                    },
                    sites: v.sites.clone(),
                    recommendation: v.recommendation.clone(),
                };
                t.incident = v.incident.clone();
                t.own_incident = v.incident.clone().filter(|iid| {
                    fleet
                        .incidents
                        .open
                        .get(iid)
                        .is_some_and(|i| i.scope == v.scope && i.target_id == v.id)
                });
            }
            t.seen_ms = now_ms;
            t.published = Some(v.clone());
            match (v.scope, v.id.id()) {
                (Scope::Route, _) => {
                    if t.open {
                        fleet.routes.insert(v.id.clone(), t);
                    }
                }
                (_, None) => {}
                (Scope::Site, Some(id)) => {
                    let s = self
                        .sites
                        .entry(id.clone())
                        .or_insert_with(|| SiteTrack::new(now_ms, window_ms));
                    if v.state == State::Offline {
                        let (since_ms, why) = (v.at_ms, OfflineWhy::Lost);
                        s.presence = Presence::Offline { since_ms, why };
                        let summary =
                            s.summary(&id, now_ms, SummaryKind::Offline { since_ms, why });
                        fleet.handle_summary(summary);
                    }
                    s.refresh_view();
                    fleet.site_tracks.insert(id, t);
                }
                (Scope::Isp, Some(id)) => {
                    fleet.isps.insert(id, t);
                }
                (Scope::Provider, Some(id)) => {
                    fleet.providers.insert(id, t);
                }
            }
        }
        match self.cfg.role {
            // Each stage keeps only its own state.
            Role::Fleet => self.sites.clear(),
            Role::Site => self.fleet = Fleet::new(BTreeMap::new(), self.cfg.thresholds),
            Role::Whole => {}
        }
        for s in self.sites.values_mut() {
            s.refresh_view();
        }
        self.missing = self.sites.values().map(|s| s.boots.missing()).sum();
        self.dirty = true;
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

/// A driver's step: runs every timeout due up to `now_ms`, in time order. `run`
/// and `replay` both advance the engine this way before each message.
pub fn advance(engine: &mut Engine, now_ms: u64) {
    while let Some(t) = engine.poll_timeout() {
        if t > now_ms {
            break;
        }
        engine.handle_timeout(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_shared::{
        Cause, HostHealth, IncidentEventKind, Kind, Layer, OfflineReason, ProbeResult, RttStats,
    };

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    fn probe(t: &str, layer: Layer, prov: Option<&str>, down: bool) -> ProbeResult {
        let mut p = ProbeResult::new(id(t), layer, prov.map(id), Kind::Icmp);
        p.sent = 10;
        p.received = if down { 0 } else { 10 };
        p
    }

    fn report_w(site: &str, seq: u64, window_ms: u32, voipco_down: bool) -> Report {
        Report {
            v: 1,
            site: id(site),
            boot: 1,
            seq,
            start_ms: 0,
            window_ms,
            host: None,
            probes: vec![
                probe("gw", Layer::Lan, None, false),
                probe("voipco", Layer::Provider, Some("voipco"), voipco_down),
            ],
        }
    }

    fn report(site: &str, seq: u64, voipco_down: bool) -> Report {
        report_w(site, seq, 1000, voipco_down)
    }

    fn topics() -> Topics {
        Topics::default()
    }

    /// Advances to `now`, then hands `r` in as its site's JSON report.
    fn send(e: &mut Engine, now: u64, r: &Report) -> Result<(), Reject> {
        advance(e, now);
        let t = topics();
        let body = serde_json::to_vec(r).unwrap();
        e.handle_message(&t, now, &t.report_json(&r.site), &body, false)
    }

    fn status(e: &mut Engine, now: u64, site: &str, st: &Status, retained: bool) {
        advance(e, now);
        let t = topics();
        let body = serde_json::to_vec(st).unwrap();
        e.handle_message(&t, now, &t.status(&id(site)), &body, retained)
            .unwrap();
    }

    fn drain(e: &mut Engine) -> Vec<Output> {
        std::iter::from_fn(|| e.poll_output()).collect()
    }

    fn verdicts(out: &[Output]) -> Vec<&Verdict> {
        out.iter()
            .filter_map(|o| match o {
                Output::Verdict(v) => Some(v),
                _ => None,
            })
            .collect()
    }

    /// Feeds windows `seqs` of three sites on three ISPs (reports half-way through
    /// each window); returns the outputs.
    fn feed(e: &mut Engine, seqs: std::ops::Range<u64>, down: bool) -> Vec<Output> {
        let mut out = Vec::new();
        for w in seqs {
            for (s, isp) in [("a", "A"), ("b", "B"), ("c", "C")] {
                if w == 0 {
                    status(e, 0, s, &Status::online(1, "t", id(isp), None), false);
                }
                send(e, w * 1000 + 500, &report(s, w, down)).unwrap();
            }
            advance(e, (w + 1) * 1000 + e.evaluation_delay_ms());
            out.extend(drain(e));
        }
        out
    }

    fn cfg() -> EngineConfig {
        EngineConfig {
            window_ms: 1000,
            reconnect_grace_ms: 1000,
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

    fn offline(out: &[Output], site: &str) -> bool {
        verdicts(out)
            .iter()
            .any(|v| v.id == site && v.state == State::Offline)
    }

    #[test]
    fn a_provider_outage_opens_on_the_second_bad_window_and_closes_on_the_third_good() {
        let mut e = Engine::new(cfg());
        feed(&mut e, 0..3, false);
        let out = feed(&mut e, 3..4, true);
        assert!(
            events(&out, IncidentEventKind::Opened).is_empty(),
            "{out:?}"
        );
        let out = feed(&mut e, 4..5, true);
        let v = verdicts(&out);
        assert!(
            v.iter()
                .any(|v| v.scope == Scope::Provider && v.state == State::Outage),
            "{v:?}"
        );
        // Evaluated a settle time after the burst, not at the next boundary.
        assert!(
            v.iter().all(|v| v.at_ms == 4_500 + e.evaluation_delay_ms()),
            "{v:?}"
        );
        let out = feed(&mut e, 5..7, false);
        assert!(events(&out, IncidentEventKind::Closed).is_empty());
        let out = feed(&mut e, 7..8, false);
        assert_eq!(events(&out, IncidentEventKind::Closed), ["inc-000001"]);
    }

    /// The same reports through a site-role engine, its summaries handed to a
    /// fleet-role engine at the same times: the verdicts of the whole engine.
    #[test]
    fn the_site_and_fleet_roles_together_give_the_whole_engines_verdicts() {
        let mut whole = Engine::new(cfg());
        let mut site = Engine::new(EngineConfig {
            role: Role::Site,
            ..cfg()
        });
        let mut fleet = Engine::new(EngineConfig {
            role: Role::Fleet,
            ..cfg()
        });
        let (mut want, mut got) = (Vec::new(), Vec::new());
        let step = |site: &mut Engine, fleet: &mut Engine, got: &mut Vec<Verdict>, now| {
            advance(site, now);
            advance(fleet, now);
            for o in drain(site) {
                match o {
                    Output::Summary(s) => fleet.handle_summary(now, s),
                    Output::Verdict(_) | Output::Incident(_) => panic!("site role: {o:?}"),
                    _ => {}
                }
            }
            advance(fleet, now);
            got.extend(verdicts(&drain(fleet)).into_iter().cloned());
        };
        for w in 0..14u64 {
            let down = (4..8).contains(&w);
            for (s, isp) in [("a", "A"), ("b", "B"), ("c", "C")] {
                if w == 0 {
                    let st = Status::online(1, "t", id(isp), None);
                    status(&mut whole, 0, s, &st, false);
                    status(&mut site, 0, s, &st, false);
                    step(&mut site, &mut fleet, &mut got, 0);
                }
                let now = w * 1000 + 500;
                send(&mut whole, now, &report(s, w, down)).unwrap();
                send(&mut site, now, &report(s, w, down)).unwrap();
                step(&mut site, &mut fleet, &mut got, now);
            }
            let end = (w + 1) * 1000 + whole.evaluation_delay_ms();
            advance(&mut whole, end);
            want.extend(verdicts(&drain(&mut whole)).into_iter().cloned());
            step(&mut site, &mut fleet, &mut got, end);
        }
        assert!(
            want.iter()
                .any(|v| v.scope == Scope::Provider && v.state == State::Outage),
            "{want:?}"
        );
        assert_eq!(got, want);
    }

    /// A standby that takes over adopts history's incidents and counter: the
    /// outage it kept warm closes under the id the old leader opened.
    #[test]
    fn a_standby_taking_over_keeps_the_leaders_incident() {
        let fleet_cfg = || EngineConfig {
            role: Role::Fleet,
            ..cfg()
        };
        let mut site = Engine::new(EngineConfig {
            role: Role::Site,
            ..cfg()
        });
        let (mut leader, mut standby) = (Engine::new(fleet_cfg()), Engine::new(fleet_cfg()));
        let mut published = Vec::new();
        for w in 0..16u64 {
            let down = (3..8).contains(&w);
            for (s, isp) in [("a", "A"), ("b", "B"), ("c", "C")] {
                if w == 0 {
                    status(
                        &mut site,
                        0,
                        s,
                        &Status::online(1, "t", id(isp), None),
                        false,
                    );
                }
                send(&mut site, w * 1000 + 500, &report(s, w, down)).unwrap();
            }
            let end = (w + 1) * 1000 + 100;
            advance(&mut site, end);
            for o in drain(&mut site) {
                if let Output::Summary(s) = o {
                    leader.handle_summary(end, s.clone());
                    standby.handle_summary(end, s);
                }
            }
            advance(&mut leader, end);
            advance(&mut standby, end);
            published.extend(drain(&mut leader));
            drain(&mut standby);
            if w == 5 {
                // The leader dies with the outage open; history holds what it published.
                let restored = Restored {
                    verdicts: leader.verdicts().cloned().collect(),
                    open_incidents: leader.open_incidents().cloned().collect(),
                    next_incident: 1,
                    ..Restored::default()
                };
                standby.take_over(end, restored);
                leader = std::mem::replace(&mut standby, Engine::new(fleet_cfg()));
            }
        }
        assert_eq!(
            events(&published, IncidentEventKind::Opened),
            ["inc-000001"]
        );
        assert_eq!(
            events(&published, IncidentEventKind::Closed),
            ["inc-000001"]
        );
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
        e2.handle_timeout(5000);
        drain(&mut e2);
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
    fn one_bad_window_at_a_long_window_site_is_one_window_however_often_we_evaluate() {
        // Collector every 1 s; sites a, b, c on 3 s windows; one bad window each.
        let mut e = Engine::new(cfg());
        let mut out = Vec::new();
        for w in 0..12u64 {
            for (s, isp) in [("a", "A"), ("b", "B"), ("c", "C")] {
                if w == 0 {
                    status(&mut e, 0, s, &Status::online(1, "t", id(isp), None), false);
                }
                // Reports arrive up to 1.5 s after their window ends: not silence.
                let late = if w % 2 == 0 { 200 } else { 1_500 };
                send(&mut e, (w + 1) * 3000 + late, &report_w(s, w, 3000, w == 5)).unwrap();
            }
            advance(&mut e, (w + 1) * 3000 + 2_000);
            out.extend(drain(&mut e));
        }
        assert!(
            verdicts(&out).iter().all(|v| v.state == State::Ok),
            "{:?}",
            verdicts(&out)
        );
        // Two bad windows in a row do open it.
        let mut out = Vec::new();
        for w in 12..16u64 {
            for s in ["a", "b", "c"] {
                send(
                    &mut e,
                    (w + 1) * 3000 + 300,
                    &report_w(s, w, 3000, (13..15).contains(&w)),
                )
                .unwrap();
            }
            advance(&mut e, (w + 1) * 3000 + 2_000);
            out.extend(drain(&mut e));
        }
        assert!(
            verdicts(&out)
                .iter()
                .any(|v| v.scope == Scope::Provider && v.state == State::Outage)
        );
    }

    #[test]
    fn silence_counts_the_sites_own_windows() {
        let mut e = Engine::new(cfg());
        status(
            &mut e,
            0,
            "slow",
            &Status::online(1, "t", id("A"), None),
            false,
        );
        send(&mut e, 60_200, &report_w("slow", 0, 60_000, false)).unwrap();
        // 3 of its 60 s windows and a half: ~210 s. Not after 30 s, nor 150 s.
        advance(&mut e, 60_200 + 150_000);
        assert!(!offline(&drain(&mut e), "slow"));
        advance(&mut e, 60_200 + 212_000);
        assert!(offline(&drain(&mut e), "slow"));
    }

    #[test]
    fn silence_is_not_counted_while_the_collector_cannot_hear() {
        let mut e = Engine::new(cfg());
        feed(&mut e, 0..3, false);
        // The broker shuts down: it publishes site a's last will, then our link drops;
        // ten windows pass with evaluations but no reports.
        status(
            &mut e,
            3_200,
            "a",
            &Status::offline(OfflineReason::Lost),
            false,
        );
        e.handle_link(3_300, false);
        advance(&mut e, 13_500);
        let out = drain(&mut e);
        assert!(verdicts(&out).iter().all(|v| v.state.is_ok()), "{out:?}");
        // Back, with a grace period in which the replayed retained will is ignored:
        // still nothing; after it, silence counts again.
        e.handle_link(14_000, true);
        status(
            &mut e,
            14_100,
            "a",
            &Status::offline(OfflineReason::Lost),
            true,
        );
        advance(&mut e, 14_500);
        assert!(verdicts(&drain(&mut e)).is_empty());
        advance(&mut e, 19_500);
        assert!(offline(&drain(&mut e), "a"));
    }

    #[test]
    fn a_stalled_service_handles_queued_reports_before_judging_silence() {
        let mut e = Engine::new(cfg());
        feed(&mut e, 0..3, false);
        // Five windows pass with no evaluation; the reports were queued meanwhile and
        // are handled first (the owner reads messages before timeouts).
        for s in ["a", "b", "c"] {
            let body = serde_json::to_vec(&report(s, 3, false)).unwrap();
            let t = topics();
            e.handle_message(&t, 8_400, &t.report_json(&id(s)), &body, false)
                .unwrap();
        }
        e.handle_timeout(8_500);
        let out = drain(&mut e);
        assert!(e.counters().skipped_evaluations >= 3);
        assert!(!["a", "b", "c"].iter().any(|s| offline(&out, s)), "{out:?}");
    }

    #[test]
    fn a_will_followed_by_the_sites_own_online_status_is_no_departure() {
        let mut e = Engine::new(cfg());
        feed(&mut e, 0..3, false);
        // A restarted broker publishes the will of a's restored session as a
        // reconnects; a's online status follows within moments.
        status(
            &mut e,
            3_200,
            "a",
            &Status::offline(OfflineReason::Lost),
            false,
        );
        status(
            &mut e,
            3_300,
            "a",
            &Status::online(1, "t", id("A"), None),
            false,
        );
        let out = feed(&mut e, 3..6, false);
        assert!(!offline(&out, "a"), "{out:?}");
        // A will that stands is a departure.
        status(
            &mut e,
            6_200,
            "b",
            &Status::offline(OfflineReason::Lost),
            false,
        );
        advance(&mut e, 8_300);
        assert!(offline(&drain(&mut e), "b"));
    }

    /// Site `a`'s report for `(boot, seq)` with its own clock reading `start_ms`.
    fn report_of(boot: u32, seq: u64, start_ms: u64) -> Report {
        Report {
            boot,
            start_ms,
            ..report("a", seq, false)
        }
    }

    fn live(e: &Engine, site: &str) -> Option<(u32, u64)> {
        e.sites()[&id(site)].last_window.map(|w| (w.0, w.1))
    }

    #[test]
    fn an_rtc_less_reboot_with_a_spooled_backlog_keeps_the_site_live() {
        let mut e = Engine::new(cfg());
        let now0 = 1_764_201_600_000;
        let mut out = Vec::new();
        for w in 0..30u64 {
            let at = now0 + w * 1000;
            for (s, isp) in [("b", "B"), ("c", "C")] {
                if w == 0 {
                    status(&mut e, at, s, &Status::online(1, "t", id(isp), None), false);
                }
                send(&mut e, at + 500, &report(s, w, false)).unwrap();
            }
            match w {
                0 => status(
                    &mut e,
                    at,
                    "a",
                    &Status::online(1, "t", id("A"), None),
                    false,
                ),
                // Windows 5 and 6 of boot 1 are measured but not sent (the uplink is
                // down), then the gateway reboots without an RTC: boot 2's clock reads 1970.
                7 => status(
                    &mut e,
                    at,
                    "a",
                    &Status::online(2, "t", id("A"), None),
                    false,
                ),
                _ => {}
            }
            if w < 5 {
                send(&mut e, at + 500, &report_of(1, w, at)).unwrap();
            } else if w >= 7 {
                send(&mut e, at + 500, &report_of(2, w - 7, (w - 7) * 1000)).unwrap();
                assert_eq!(live(&e, "a"), Some((2, w - 7)));
                // The spool sends boot 1's windows after the new boot's, one a window,
                // and some of them twice.
                if (7..9).contains(&w) {
                    let old = report_of(1, w - 2, now0 + (w - 2) * 1000);
                    send(&mut e, at + 600, &old).unwrap();
                    assert_eq!(live(&e, "a"), Some((2, w - 7)), "an old boot is never live");
                    assert_eq!(send(&mut e, at + 700, &old), Err(Reject::Duplicate));
                }
            }
            advance(&mut e, at + 1100);
            out.extend(drain(&mut e));
        }
        assert!(!offline(&out, "a"), "{out:?}");
        let a = &e.sites()[&id("a")];
        assert_eq!(a.boots.live().map(|b| b.meta.boot), Some(2));
        assert_eq!(e.missing_windows(), 0, "the backlog filled boot 1's gap");
    }

    #[test]
    fn de_dup_and_the_live_boot_survive_a_restart() {
        let mut e = Engine::new(cfg());
        feed(&mut e, 0..4, false);
        // Site a rebooted as boot 9; its window 2 is missing so far.
        status(
            &mut e,
            4_000,
            "a",
            &Status::online(9, "t", id("A"), None),
            false,
        );
        for seq in [0, 1, 3] {
            send(&mut e, 4_100, &report_of(9, seq, 0)).unwrap();
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
            send(&mut e2, 5_100, &report_of(9, 3, 0)),
            Err(Reject::Duplicate)
        );
        assert_eq!(
            send(&mut e2, 5_100, &report("b", 3, false)),
            Err(Reject::Duplicate)
        );
        // Boot 1's last window, late: stored, not live; boot 9's next one is.
        send(&mut e2, 5_200, &report_of(1, 4, 0)).unwrap();
        assert_eq!(live(&e2, "a"), None);
        send(&mut e2, 5_300, &report_of(9, 4, 0)).unwrap();
        assert_eq!(live(&e2, "a"), Some((9, 4)));
        send(&mut e2, 5_400, &report_of(9, 2, 0)).unwrap();
        assert_eq!(live(&e2, "a"), Some((9, 4)));
        assert_eq!(e2.missing_windows(), 0);
    }

    /// Four sites: a, b on ISP A; c, d on ISP B; voipco fails for ISP A only.
    #[test]
    fn the_tail_of_a_provider_outage_on_one_isp_is_no_route_fault() {
        // Every site loses voipco; ISP A's sites come back two windows after the
        // others (a slow recovery, or their reports arriving late): once the
        // provider's verdict closes, "bad on A, fine elsewhere" is the outage's tail.
        let mut e = Engine::new(cfg());
        let fleet = [
            ("a", "A"),
            ("b", "A"),
            ("c", "B"),
            ("d", "B"),
            ("e", "C"),
            ("f", "C"),
        ];
        let mut out = Vec::new();
        for w in 0..20u64 {
            for (s, isp) in fleet {
                if w == 0 {
                    status(&mut e, 0, s, &Status::online(1, "t", id(isp), None), false);
                }
                let end = if isp == "A" { 10 } else { 8 };
                let bad = (3..end).contains(&w);
                send(&mut e, w * 1000 + 500, &report(s, w, bad)).unwrap();
            }
            advance(&mut e, (w + 1) * 1000 + 200);
            out.extend(drain(&mut e));
        }
        let v = verdicts(&out);
        assert!(
            v.iter()
                .any(|v| v.scope == Scope::Provider && v.state == State::Outage),
            "{v:?}"
        );
        assert!(
            !v.iter().any(|v| v.scope == Scope::Route),
            "no route verdict: {v:?}"
        );
        // Nor a site incident for a and b: one incident, the provider's, opened and
        // closed.
        assert_eq!(events(&out, IncidentEventKind::Opened).len(), 1, "{out:?}");
        assert_eq!(events(&out, IncidentEventKind::Closed).len(), 1, "{out:?}");
    }

    #[test]
    fn a_site_still_bad_after_a_provider_outages_tail_has_an_incident_of_its_own() {
        // As above, but site a never recovers: once the tail is over (close_after +
        // open_after windows after the provider's verdict closed), its bad path to
        // voipco is its own fault.
        let mut e = Engine::new(cfg());
        let fleet = [("a", "A"), ("b", "A"), ("c", "B"), ("d", "B")];
        let mut out = Vec::new();
        for w in 0..20u64 {
            for (s, isp) in fleet {
                if w == 0 {
                    status(&mut e, 0, s, &Status::online(1, "t", id(isp), None), false);
                }
                let bad = w >= 3 && (s == "a" || w < 8);
                send(&mut e, w * 1000 + 500, &report(s, w, bad)).unwrap();
            }
            advance(&mut e, (w + 1) * 1000 + 200);
            out.extend(drain(&mut e));
        }
        let opened: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Incident(ev) if ev.event == IncidentEventKind::Opened => Some(&ev.incident),
                _ => None,
            })
            .collect();
        assert_eq!(opened.len(), 2, "{out:?}");
        assert_eq!(
            (opened[1].scope, opened[1].target_id.as_str()),
            (Scope::Site, "a")
        );
        let v = verdicts(&out);
        let last_a = v.iter().rev().find(|v| v.id == "a").unwrap();
        assert_eq!(
            (last_a.cause, last_a.incident.as_ref()),
            (Some(Cause::Path), Some(&opened[1].id))
        );
    }

    #[test]
    fn a_fault_between_one_isp_and_one_provider_is_one_route_incident() {
        let mut e = Engine::new(cfg());
        let fleet = [("a", "A"), ("b", "A"), ("c", "B"), ("d", "B")];
        let mut out = Vec::new();
        for w in 0..10u64 {
            for (s, isp) in fleet {
                if w == 0 {
                    status(&mut e, 0, s, &Status::online(1, "t", id(isp), None), false);
                }
                let bad = isp == "A" && (3..6).contains(&w);
                send(&mut e, w * 1000 + 500, &report(s, w, bad)).unwrap();
            }
            advance(&mut e, (w + 1) * 1000 + 200);
            out.extend(drain(&mut e));
        }
        let v = verdicts(&out);
        assert!(
            !v.iter()
                .any(|v| v.scope == Scope::Provider && !v.state.is_ok()),
            "{v:?}"
        );
        let route = v
            .iter()
            .find(|v| v.scope == Scope::Route && v.state == State::Outage)
            .expect("a route verdict");
        assert_eq!(route.id.as_str(), "A~voipco");
        assert_eq!(route.isp, Some(id("A")));
        assert_eq!(route.provider, Some(id("voipco")));
        assert_eq!(route.sites, [id("a"), id("b")]);
        for s in ["a", "b"] {
            let sv = v
                .iter()
                .find(|v| v.id == s && v.state == State::Down)
                .expect("site down");
            assert_eq!(sv.cause, Some(Cause::Path));
            assert_eq!(
                sv.incident, route.incident,
                "{s} points at the route's incident"
            );
        }
        assert_eq!(events(&out, IncidentEventKind::Opened).len(), 1, "{out:?}");
        assert_eq!(
            topics().verdict(route),
            "faultline/v1/state/routes/A/voipco"
        );
        // It clears like any verdict.
        assert!(v.iter().any(|v| v.scope == Scope::Route && v.state.is_ok()));
    }

    #[test]
    fn impossible_values_and_invented_windows_are_refused_and_counted() {
        let mut e = Engine::new(cfg());
        let mut r = report("a", 0, false);
        r.probes[0].received = 11;
        assert!(matches!(send(&mut e, 100, &r), Err(Reject::Impossible(_))));
        let mut r = report("a", 0, false);
        r.host = Some(HostHealth {
            cpu_pct: 1e308,
            mem_pct: 1.0,
            load1: 0.0,
        });
        assert!(matches!(send(&mut e, 100, &r), Err(Reject::Impossible(_))));
        let mut r = report("a", 0, false);
        r.probes[1].rtt_ms = Some(RttStats {
            min: 1.0,
            p50: 1e308,
            avg: 1.0,
            p95: 1.0,
            max: 1.0,
        });
        assert!(matches!(send(&mut e, 100, &r), Err(Reject::Impossible(_))));
        assert_eq!(e.counters().rejected[&RejectReason::Impossible], 3);
        // A seq far ahead of the boot's last window: cannot have been measured yet,
        // and would count a quadrillion missing windows.
        send(&mut e, 100, &report("c", 0, false)).unwrap();
        assert!(matches!(
            send(&mut e, 1_100, &report("c", 1_000_000_000_000_000, false)),
            Err(Reject::Impossible(_))
        ));
        assert_eq!(e.missing_windows(), 0);
        // A site inventing windows: a day's worth at once, then one a window.
        let day = site::BACKLOG_MS / 1000;
        let mut paced = 0;
        for seq in 0..day + 100 {
            if send(&mut e, 200, &report("b", seq, false)) == Err(Reject::Paced) {
                paced += 1;
            }
        }
        assert!((95..=100).contains(&paced), "{paced}");
        assert_eq!(e.counters().rejected[&RejectReason::Paced], paced);
    }

    #[test]
    fn history_rows_judge_by_the_engines_rules() {
        let mut e = Engine::new(cfg());
        let mut r = report("a", 0, false);
        let mut voice = ProbeResult::new(
            id("media"),
            Layer::Provider,
            Some(id("voipco")),
            Kind::Stamp,
        );
        voice.sent = 100;
        voice.received = 100;
        voice.mos = Some(3.0);
        r.probes.push(voice);
        send(&mut e, 500, &r).unwrap();
        let row = drain(&mut e)
            .into_iter()
            .find_map(|o| match o {
                Output::Window(w) => Some(w),
                _ => None,
            })
            .unwrap();
        assert_eq!(row.bad, 1, "a poor MOS is a bad probe, as for verdicts");
    }
}
