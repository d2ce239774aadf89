//! The fleet stage: ISP, provider and route correlation, the bottom-up site cause,
//! hysteresis, incidents and failover advice. It reads only the site stage's
//! [`SiteSummary`] messages, so it runs beside the site stage or apart from it.
//!
//! Hysteresis counts each site's own windows (DESIGN.md rule 7): every window
//! summary steps that site's [`Latch`]es (one per layer and per provider), which
//! turn on after `open_after` consecutive bad windows and off after `close_after`
//! good ones. A verdict is then a plain function of the latches at evaluation time
//! — a site's verdict is open while any of its latches is, an ISP's, provider's or
//! route's while enough sites' latches say so — so how often the collector
//! evaluates (and how window lengths mix) changes when a verdict is published,
//! never whether. One bad 30 s window is one window, however many evaluations see it.

use std::collections::{BTreeMap, BTreeSet};

use faultline_shared::{
    Cause, Health, Id, Incident, IncidentEvent, IncidentEventKind, OfflineWhy, Recommendation,
    Scope, SiteHealth, SiteSummary, State, Subject, SummaryKind, Verdict, state::Action,
};

use super::health::Thresholds;

/// Providers seen in reports but not configured are tracked up to this many (a
/// site cannot grow the collector's verdicts and retained topics without bound);
/// one not probed by any site for [`PROVIDER_IDLE_MS`] is forgotten.
pub const MAX_UNCONFIGURED_PROVIDERS: usize = 64;
pub const PROVIDER_IDLE_MS: u64 = 3_600_000;

/// Consecutive bad / good windows of one thing at one site, and whether that makes
/// it bad (on) for correlation and verdicts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latch {
    pub on: bool,
    pub bad_run: u32,
    pub good_run: u32,
    /// The worst health of the current bad spell.
    pub worst: Health,
}

impl Latch {
    /// One window of the site's own.
    pub fn observe(&mut self, h: Health, th: &Thresholds) {
        if h.is_bad() {
            self.good_run = 0;
            self.bad_run = self.bad_run.saturating_add(1);
            self.worst = if self.bad_run == 1 && !self.on {
                h
            } else {
                self.worst.max(h)
            };
            if self.bad_run >= th.open_after {
                self.on = true;
                // The current window's severity, once the spell is established.
                self.worst = h;
            }
        } else {
            self.bad_run = 0;
            self.good_run = self.good_run.saturating_add(1);
            if self.good_run >= th.close_after {
                self.on = false;
                self.worst = Health::Ok;
            }
        }
    }

    /// The first window after the site was offline: judged at once (offline was
    /// already slow to declare).
    pub fn force(h: Health) -> Self {
        Self {
            on: h.is_bad(),
            bad_run: u32::from(h.is_bad()),
            good_run: u32::from(!h.is_bad()),
            worst: h,
        }
    }
}

/// What the fleet stage knows of one site.
#[derive(Debug, Clone, Default)]
pub struct FleetSite {
    pub isp: Option<Id>,
    pub window_ms: u32,
    /// `None`: no window yet (only a status, or restored from history).
    pub health: Option<SiteHealth>,
    pub offline: Option<(u64, OfflineWhy)>,
    pub host: Latch,
    pub lan: Latch,
    pub net: Latch,
    /// One latch per provider, sorted by id (a handful: a map costs more).
    pub providers: Vec<(Id, Latch)>,
}

impl FleetSite {
    fn window(&mut self, h: SiteHealth, th: &Thresholds) {
        let back = self.offline.take().is_some() || self.health.is_none();
        let step = |l: &mut Latch, v: Health| {
            if back {
                *l = Latch::force(v);
            } else {
                l.observe(v, th);
            }
        };
        let host = if h.host_busy && h.any_bad() {
            h.worst()
        } else {
            Health::Ok
        };
        step(&mut self.host, host);
        step(&mut self.lan, h.lan);
        step(&mut self.net, h.net);
        for p in &h.providers {
            let i = match self
                .providers
                .binary_search_by(|(id, _)| id.cmp(&p.provider))
            {
                Ok(i) => i,
                Err(i) => {
                    self.providers
                        .insert(i, (p.provider.clone(), Latch::default()));
                    i
                }
            };
            step(&mut self.providers[i].1, p.health);
        }
        // A provider no longer probed counts as a good window.
        for (p, l) in self.providers.iter_mut() {
            if h.provider(p).is_none() {
                if back {
                    *l = Latch::default();
                } else {
                    l.observe(Health::Ok, th);
                }
            }
        }
        self.providers
            .retain(|(p, l)| l.on || l.bad_run > 0 || h.provider(p).is_some());
        self.health = Some(h);
    }

    /// The site's own layers, bottom-up (DESIGN.md step 2, before providers).
    fn lower(&self) -> Lower {
        if let Some((since, why)) = self.offline {
            return Lower::Offline(why, since);
        }
        if self.health.is_none() {
            return Lower::NoData;
        }
        if self.host.on {
            return Lower::Host(self.host.worst);
        }
        if self.lan.on {
            return Lower::Lan(self.lan.worst);
        }
        if self.net.on {
            return Lower::Net(self.net.worst);
        }
        Lower::Clear
    }

    /// The provider's health here for correlation: latched bad, or (not latched)
    /// ok only when this window says so.
    fn provider_bad(&self, p: &Id) -> Option<Health> {
        self.providers
            .binary_search_by(|(id, _)| id.cmp(p))
            .ok()
            .map(|i| self.providers[i].1)
            .filter(|l| l.on)
            .map(|l| l.worst)
    }

    fn provider_healthy(&self, p: &Id) -> bool {
        self.health
            .as_ref()
            .and_then(|h| h.provider(p))
            .is_some_and(|h| !h.is_bad())
            && self.provider_bad(p).is_none()
    }
}

/// A site's lower layers in one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lower {
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

/// What a verdict shows apart from its time: compared to decide "changed".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub state: State,
    pub cause: Option<Cause>,
    pub provider: Option<Id>,
    pub sites: Vec<Id>,
    pub recommendation: Option<Recommendation>,
}

impl Shown {
    fn ok(scope: Scope) -> Self {
        Self {
            state: State::Ok,
            cause: (scope == Scope::Site).then_some(Cause::None),
            provider: None,
            sites: Vec::new(),
            recommendation: None,
        }
    }
}

/// A verdict's state and incident bookkeeping for one site, ISP, provider or route.
#[derive(Debug, Clone)]
pub struct Track {
    pub open: bool,
    pub shown: Shown,
    /// The incident this track opened itself.
    pub own_incident: Option<String>,
    /// The incident shown on the verdict (own, or the ISP's / provider's / route's
    /// that explains it).
    pub incident: Option<String>,
    /// The last verdict published.
    pub published: Option<Verdict>,
    /// Collector time it last had evidence (providers: probed by a site).
    pub seen_ms: u64,
}

impl Track {
    pub fn new(scope: Scope) -> Self {
        Self {
            open: false,
            shown: Shown::ok(scope),
            own_incident: None,
            incident: None,
            published: None,
            seen_ms: 0,
        }
    }
}

/// Incidents: stable ids `inc-000001`…, open ones kept until they close.
#[derive(Debug, Default)]
pub struct Incidents {
    pub next: u64,
    pub open: BTreeMap<String, Incident>,
}

impl Incidents {
    fn open(
        &mut self,
        now_ms: u64,
        scope: Scope,
        id: &Subject,
        shown: &Shown,
    ) -> (String, IncidentEvent) {
        self.next += 1;
        let iid = format!("inc-{:06}", self.next);
        let inc = Incident {
            id: iid.clone(),
            scope,
            target_id: id.clone(),
            cause: shown.cause,
            state: shown.state,
            opened_ms: now_ms,
            closed_ms: None,
            sites: match (scope, id.id()) {
                (Scope::Site, Some(site)) => vec![site],
                _ => shown.sites.clone(),
            },
        };
        self.open.insert(iid.clone(), inc.clone());
        let ev = IncidentEvent {
            event: IncidentEventKind::Opened,
            incident: inc,
        };
        (iid, ev)
    }

    /// Updates state, cause and the union of affected sites; an event when changed.
    fn update(&mut self, iid: &str, shown: &Shown) -> Option<IncidentEvent> {
        let inc = self.open.get_mut(iid)?;
        let mut changed = false;
        if inc.scope != Scope::Site {
            for s in &shown.sites {
                if let Err(pos) = inc.sites.binary_search(s) {
                    inc.sites.insert(pos, s.clone());
                    changed = true;
                }
            }
        }
        if inc.state != shown.state || inc.cause != shown.cause {
            inc.state = shown.state;
            inc.cause = shown.cause;
            changed = true;
        }
        changed.then(|| IncidentEvent {
            event: IncidentEventKind::Updated,
            incident: inc.clone(),
        })
    }

    fn close(&mut self, iid: &str, now_ms: u64) -> Option<IncidentEvent> {
        let mut inc = self.open.remove(iid)?;
        inc.closed_ms = Some(now_ms);
        Some(IncidentEvent {
            event: IncidentEventKind::Closed,
            incident: inc,
        })
    }
}

/// What one evaluation says, in a deterministic order.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Verdict(Verdict),
    Incident(IncidentEvent),
    /// An unconfigured provider (or a route) no longer tracked: its retained verdict
    /// is withdrawn.
    Forgotten(Verdict),
}

/// The fleet stage's state.
#[derive(Debug, Default)]
pub struct Fleet {
    /// Configured providers and their alternates.
    pub alternates: BTreeMap<Id, Option<Id>>,
    pub th: Thresholds,
    pub sites: BTreeMap<Id, FleetSite>,
    pub site_tracks: BTreeMap<Id, Track>,
    pub isps: BTreeMap<Id, Track>,
    pub providers: BTreeMap<Id, Track>,
    pub routes: BTreeMap<Subject, Track>,
    /// Provider → until when no route of it, nor any site's path to it, opens an
    /// incident: the tail of a provider-wide verdict (see [`Fleet::evaluate`], routes).
    pub route_quiet_until: BTreeMap<Id, u64>,
    pub incidents: Incidents,
    /// Summaries that named an unconfigured provider beyond the cap.
    pub providers_over_cap: u64,
}

/// An ISP's members, and its bad members with whether each is down or offline.
type IspTally<'a> = (u32, Vec<(&'a Id, bool)>);

#[derive(Default)]
struct ProviderTally<'a> {
    eligible: u32,
    bad: Vec<(&'a Id, Health)>,
}

impl Fleet {
    pub fn new(alternates: BTreeMap<Id, Option<Id>>, th: Thresholds) -> Self {
        Self {
            alternates,
            th,
            ..Self::default()
        }
    }

    /// Takes one site summary.
    pub fn handle_summary(&mut self, s: SiteSummary) {
        let th = self.th;
        let site = self.sites.entry(s.site.clone()).or_default();
        if s.isp.is_some() {
            site.isp = s.isp;
        }
        site.window_ms = s.window_ms;
        match s.kind {
            SummaryKind::Window { health, .. } => site.window(health, &th),
            SummaryKind::Offline { since_ms, why } => {
                site.offline = Some((since_ms, why));
            }
            SummaryKind::Announce => {}
            SummaryKind::Online => site.offline = None,
        }
        self.site_tracks
            .entry(s.site)
            .or_insert_with(|| Track::new(Scope::Site));
    }

    /// Evaluates every verdict at `now_ms` from the sites' latches.
    pub fn evaluate(&mut self, now_ms: u64, out: &mut Vec<Change>) {
        let lowers: Vec<(&Id, &FleetSite, Lower)> = self
            .sites
            .iter()
            .map(|(id, s)| (id, s, s.lower()))
            .collect();

        // Step 3: ISPs. Offline sites count when they went offline recently
        // ("together", within a few of their own windows).
        let mut isp_tally: BTreeMap<&Id, IspTally<'_>> = BTreeMap::new();
        let mut no_data: BTreeMap<&Id, u32> = BTreeMap::new();
        let mut fleet_isps: BTreeSet<&Id> = BTreeSet::new();
        for (id, s, low) in &lowers {
            let Some(isp) = &s.isp else { continue };
            let recent_ms = now_ms
                .saturating_sub(u64::from(s.window_ms) * u64::from(self.th.silence_windows + 3));
            // ...or while the outage they went dark in is still open.
            let in_outage = self
                .isps
                .get(isp)
                .is_some_and(|t| t.open && t.shown.sites.contains(id));
            let e = isp_tally.entry(isp).or_default();
            match low {
                Lower::Offline(OfflineWhy::Shutdown, _) => {}
                Lower::Offline(_, since) if (*since < recent_ms || *since == 0) && !in_outage => {}
                Lower::Offline(..) => {
                    e.0 += 1;
                    e.1.push((id, true));
                }
                Lower::Net(h) => {
                    fleet_isps.insert(isp);
                    e.0 += 1;
                    e.1.push((id, *h == Health::Down));
                }
                Lower::NoData => {
                    fleet_isps.insert(isp);
                    e.0 += 1;
                    *no_data.entry(isp).or_default() += 1;
                }
                _ => {
                    fleet_isps.insert(isp);
                    e.0 += 1;
                }
            }
        }
        let mut isp_raw: BTreeMap<Id, Option<Shown>> = BTreeMap::new();
        for (isp, (members, bad)) in &isp_tally {
            let n = bad.len() as u32;
            // Without evidence either way (a restart: sites not heard from yet), an
            // open verdict holds.
            let with_data = members - no_data.get(isp).copied().unwrap_or(0);
            if n < 2 && with_data < 2 && self.isps.get(*isp).is_some_and(|t| t.open) {
                continue;
            }
            let shown = (n >= 2 && n * 2 >= *members).then(|| {
                let severe = bad.iter().filter(|(_, d)| *d).count() as u32;
                Shown {
                    state: if severe * 2 > n {
                        State::Outage
                    } else {
                        State::Degraded
                    },
                    cause: Some(Cause::Isp),
                    provider: None,
                    sites: bad.iter().map(|(s, _)| (*s).clone()).collect(),
                    recommendation: None,
                }
            });
            isp_raw.insert((*isp).clone(), shown);
        }

        // Step 4: providers and routes, among sites whose lower layers are healthy.
        let mut tally: BTreeMap<&Id, ProviderTally<'_>> = BTreeMap::new();
        for p in self.alternates.keys() {
            tally.entry(p).or_default();
        }
        for (id, s, low) in &lowers {
            if *low != Lower::Clear {
                continue;
            }
            let Some(h) = &s.health else { continue };
            for p in &h.providers {
                let t = tally.entry(&p.provider).or_default();
                t.eligible += 1;
                if let Some(bad) = s.provider_bad(&p.provider) {
                    t.bad.push((id, bad));
                }
            }
            for (p, l) in &s.providers {
                if l.on && h.provider(p).is_none() {
                    let t = tally.entry(p).or_default();
                    t.eligible += 1;
                    t.bad.push((id, l.worst));
                }
            }
        }
        let isp_of = |s: &Id| self.sites.get(s).and_then(|s| s.isp.as_ref());
        let mut prov_raw: BTreeMap<Id, Option<Shown>> = BTreeMap::new();
        let mut route_raw: BTreeMap<Subject, Option<Shown>> = BTreeMap::new();
        for (p, t) in &tally {
            let n = t.bad.len() as u32;
            let isps: BTreeSet<&Id> = t.bad.iter().filter_map(|(s, _)| isp_of(s)).collect();
            let spans = fleet_isps.len() < 2 || isps.len() >= 2;
            let severity = |bad: &[(&Id, Health)]| {
                let down = bad.iter().filter(|(_, h)| *h == Health::Down).count();
                if down * 2 > bad.len() {
                    State::Outage
                } else {
                    State::Degraded
                }
            };
            let shown = (n >= 2 && n * 2 >= t.eligible && spans).then(|| {
                let affected: Vec<Id> = t.bad.iter().map(|(s, _)| (*s).clone()).collect();
                let recommendation = self.alternates.get(*p).cloned().flatten().and_then(|alt| {
                    affected
                        .iter()
                        .all(|s| self.sites.get(s).is_some_and(|s| s.provider_healthy(&alt)))
                        .then_some(Recommendation {
                            action: Action::Failover,
                            to: alt,
                        })
                });
                Shown {
                    state: severity(&t.bad),
                    cause: Some(Cause::Provider),
                    provider: None,
                    sites: affected,
                    recommendation,
                }
            });
            let provider_open = shown.is_some();
            let hold =
                !provider_open && t.eligible < 2 && self.providers.get(*p).is_some_and(|t| t.open);
            if !hold {
                prov_raw.insert((*p).clone(), shown);
            }
            // Routes: the provider bad at enough of one ISP's sites while healthy
            // at two or more sites on other ISPs. Not while the provider itself is
            // degraded or out, nor for `close_after` + `open_after` of its sites'
            // windows after: sites recover from a provider-wide fault one by one
            // (each latch needs `close_after` good windows, and a site whose reports
            // come late — a backlog, a cluster partition changing hands — later
            // still), and "bad on this ISP, fine on the others" is then the tail of
            // that fault, not a fault of its own.
            if provider_open {
                let longest = t
                    .bad
                    .iter()
                    .filter_map(|(s, _)| self.sites.get(*s))
                    .map(|s| u64::from(s.window_ms))
                    .max()
                    .unwrap_or(0);
                let quiet = longest * u64::from(self.th.close_after + self.th.open_after);
                self.route_quiet_until
                    .insert((*p).clone(), now_ms.saturating_add(quiet));
            }
            let quiet = self
                .route_quiet_until
                .get(*p)
                .is_some_and(|&until| now_ms < until);
            for isp in &isps {
                let route = Subject::route_of(isp, p);
                if provider_open || quiet {
                    route_raw.insert(route, None);
                    continue;
                }
                let on_isp: Vec<(&Id, Health)> = t
                    .bad
                    .iter()
                    .filter(|(s, _)| isp_of(s) == Some(*isp))
                    .map(|(s, h)| (*s, *h))
                    .collect();
                let (mut eligible_here, mut healthy_elsewhere) = (0u32, 0u32);
                for (id, s, low) in &lowers {
                    if *low != Lower::Clear
                        || s.health.as_ref().is_none_or(|h| h.provider(p).is_none())
                    {
                        continue;
                    }
                    if isp_of(id) == Some(*isp) {
                        eligible_here += 1;
                    } else if s.provider_healthy(p) {
                        healthy_elsewhere += 1;
                    }
                }
                let k = on_isp.len() as u32;
                let shown =
                    (k >= 2 && k * 2 >= eligible_here && healthy_elsewhere >= 2).then(|| Shown {
                        state: severity(&on_isp),
                        cause: Some(Cause::Path),
                        provider: Some((*p).clone()),
                        sites: on_isp.iter().map(|(s, _)| (*s).clone()).collect(),
                        recommendation: None,
                    });
                route_raw.insert(route, shown);
            }
        }
        // Routes open before and no longer named close, unless their ISP's sites
        // have not been heard from (a restart): no evidence either way.
        for r in self.routes.keys() {
            if route_raw.contains_key(r) {
                continue;
            }
            let Some((isp, p)) = r.route() else { continue };
            let heard = lowers
                .iter()
                .filter(|(id, s, low)| {
                    *low == Lower::Clear
                        && isp_of(id) == Some(isp)
                        && s.health.as_ref().is_some_and(|h| h.provider(p).is_some())
                })
                .count();
            if heard >= 2 {
                route_raw.insert(r.clone(), None);
            }
        }
        // Unconfigured providers are tracked up to the cap.
        let mut unconfigured = self
            .providers
            .keys()
            .filter(|p| !self.alternates.contains_key(*p))
            .count();
        for (p, raw) in prov_raw {
            if !self.providers.contains_key(&p) && !self.alternates.contains_key(&p) {
                if unconfigured >= MAX_UNCONFIGURED_PROVIDERS {
                    self.providers_over_cap += 1;
                    continue;
                }
                unconfigured += 1;
            }
            let track = self
                .providers
                .entry(p.clone())
                .or_insert_with(|| Track::new(Scope::Provider));
            track.seen_ms = now_ms;
            step(
                &mut self.incidents,
                track,
                Scope::Provider,
                &Subject::from(&p),
                raw,
                now_ms,
                out,
            );
        }
        for (isp, raw) in isp_raw {
            let track = self
                .isps
                .entry(isp.clone())
                .or_insert_with(|| Track::new(Scope::Isp));
            step(
                &mut self.incidents,
                track,
                Scope::Isp,
                &Subject::from(&isp),
                raw,
                now_ms,
                out,
            );
        }
        for (route, raw) in route_raw {
            if raw.is_none() && !self.routes.contains_key(&route) {
                continue;
            }
            let track = self
                .routes
                .entry(route.clone())
                .or_insert_with(|| Track::new(Scope::Route));
            step(
                &mut self.incidents,
                track,
                Scope::Route,
                &route,
                raw,
                now_ms,
                out,
            );
        }

        // Sites: bottom-up cause; an open ISP, provider or route incident explains it.
        let ids: Vec<Id> = self.sites.keys().cloned().collect();
        for id in ids {
            let s = &self.sites[&id];
            let low = s.lower();
            if low == Lower::NoData {
                continue;
            }
            let shown = self.site_shown(&id, s, low);
            let covering = shown.as_ref().and_then(|sh| match sh.cause {
                Some(Cause::Provider) => sh
                    .provider
                    .as_ref()
                    .and_then(|p| self.providers.get(p))
                    .filter(|t| t.open)
                    .and_then(|t| t.own_incident.clone()),
                Some(Cause::Path) => {
                    let (isp, p) = (s.isp.as_ref()?, sh.provider.as_ref()?);
                    self.routes
                        .get(&Subject::route_of(isp, p))
                        .filter(|t| t.open && t.shown.sites.contains(&id))
                        .and_then(|t| t.own_incident.clone())
                }
                Some(Cause::Isp) => s
                    .isp
                    .as_ref()
                    .and_then(|i| self.isps.get(i))
                    .filter(|t| t.open && t.shown.sites.contains(&id))
                    .and_then(|t| t.own_incident.clone()),
                _ => None,
            });
            // A site still bad toward a provider in the tail of that provider's
            // fleet-wide verdict opens no incident of its own (see routes, above);
            // one still bad once the tail is over does.
            let tail = covering.is_none()
                && shown.as_ref().is_some_and(|sh| {
                    sh.cause == Some(Cause::Path)
                        && sh
                            .provider
                            .as_ref()
                            .and_then(|p| self.route_quiet_until.get(p))
                            .is_some_and(|&until| now_ms < until)
                });
            let quiet = tail || matches!(low, Lower::Offline(OfflineWhy::Shutdown, _));
            let track = self
                .site_tracks
                .entry(id.clone())
                .or_insert_with(|| Track::new(Scope::Site));
            step_site(
                &mut self.incidents,
                track,
                &id,
                covering,
                quiet,
                shown,
                now_ms,
                out,
            );
        }

        // Forget unconfigured providers nobody has probed for a while, and routes
        // that closed.
        let idle = now_ms.saturating_sub(PROVIDER_IDLE_MS);
        let alternates = &self.alternates;
        let mut forget = |t: &Track| {
            if let Some(v) = &t.published {
                out.push(Change::Forgotten(v.clone()));
            }
        };
        self.providers.retain(|p, t| {
            let keep = alternates.contains_key(p) || t.open || t.seen_ms >= idle;
            if !keep {
                forget(t);
            }
            keep
        });
        let mut closed_routes = Vec::new();
        for (r, t) in &self.routes {
            if !t.open {
                closed_routes.push(r.clone());
            }
        }

        // Publish what changed: providers, ISPs, routes, sites.
        let id = |k: &Id| Subject::from(k);
        publish(Scope::Provider, self.providers.iter_mut(), id, now_ms, out);
        publish(Scope::Isp, self.isps.iter_mut(), id, now_ms, out);
        publish(
            Scope::Route,
            self.routes.iter_mut(),
            Subject::clone,
            now_ms,
            out,
        );
        publish(Scope::Site, self.site_tracks.iter_mut(), id, now_ms, out);
        // A closed route has published its `ok`: it is not kept.
        for r in closed_routes {
            self.routes.remove(&r);
        }
    }

    /// DESIGN.md steps 2 and 5: a site's verdict now (`None` = good).
    fn site_shown(&self, id: &Id, s: &FleetSite, low: Lower) -> Option<Shown> {
        let mk = |state, cause, provider| Shown {
            state,
            cause: Some(cause),
            provider,
            sites: Vec::new(),
            recommendation: None,
        };
        let state_of = |h: Health| {
            if h == Health::Down {
                State::Down
            } else {
                State::Degraded
            }
        };
        match low {
            Lower::Offline(why, _) => {
                let isp_out = s
                    .isp
                    .as_ref()
                    .and_then(|i| self.isps.get(i))
                    .is_some_and(|t| t.open && t.shown.sites.contains(id));
                let cause = if why != OfflineWhy::Shutdown && isp_out {
                    Cause::Isp
                } else {
                    Cause::None
                };
                Some(mk(State::Offline, cause, None))
            }
            Lower::NoData => None,
            Lower::Host(h) => Some(mk(state_of(h), Cause::Host, None)),
            Lower::Lan(h) => Some(mk(state_of(h), Cause::Lan, None)),
            Lower::Net(h) => Some(mk(state_of(h), Cause::Isp, None)),
            Lower::Clear => {
                // The worst bad provider; one with a fleet-wide verdict explains it.
                let mut best: Option<(bool, Health, &Id)> = None;
                for (p, l) in &s.providers {
                    if !l.on {
                        continue;
                    }
                    let fleet = self.providers.get(p).is_some_and(|t| t.open);
                    let cand = (fleet, l.worst, p);
                    if best.is_none_or(|b| (cand.0, cand.1) > (b.0, b.1)) {
                        best = Some(cand);
                    }
                }
                let (fleet, h, p) = best?;
                let cause = if fleet { Cause::Provider } else { Cause::Path };
                Some(mk(state_of(h), cause, Some(p.clone())))
            }
        }
    }
}

/// Publishes every track whose verdict differs from the one last published. The
/// subject is built only for a verdict that changed (there is one track per site).
fn publish<'a, K: 'a>(
    scope: Scope,
    tracks: impl Iterator<Item = (&'a K, &'a mut Track)>,
    subject: impl Fn(&K) -> Subject,
    now_ms: u64,
    out: &mut Vec<Change>,
) {
    for (k, t) in tracks {
        // A route names its provider also once it is ok again.
        let provider = t.shown.provider.clone().or_else(|| {
            (scope == Scope::Route)
                .then(|| subject(k).route().map(|(_, p)| p.clone()))
                .flatten()
        });
        let same = t.published.as_ref().is_some_and(|p| {
            p.state == t.shown.state
                && p.cause == t.shown.cause
                && p.provider == provider
                && p.sites == t.shown.sites
                && p.incident == t.incident
                && p.recommendation == t.shown.recommendation
        });
        if same {
            continue;
        }
        let id = subject(k);
        let v = Verdict {
            at_ms: now_ms,
            scope,
            isp: id.route().map(|(i, _)| i.clone()),
            id,
            state: t.shown.state,
            cause: t.shown.cause,
            provider,
            sites: t.shown.sites.clone(),
            incident: t.incident.clone(),
            recommendation: t.shown.recommendation.clone(),
            maintenance: None,
        };
        t.published = Some(v.clone());
        out.push(Change::Verdict(v));
    }
}

/// Opens, updates or closes a cross-site track's verdict and incident.
fn step(
    incidents: &mut Incidents,
    track: &mut Track,
    scope: Scope,
    id: &Subject,
    raw: Option<Shown>,
    now_ms: u64,
    out: &mut Vec<Change>,
) {
    match raw {
        Some(bad) if !track.open => {
            track.open = true;
            track.shown = bad;
            let (iid, ev) = incidents.open(now_ms, scope, id, &track.shown);
            track.own_incident = Some(iid.clone());
            track.incident = Some(iid);
            out.push(Change::Incident(ev));
        }
        Some(bad) => {
            track.shown = bad;
            if let Some(iid) = &track.own_incident
                && let Some(ev) = incidents.update(iid, &track.shown)
            {
                out.push(Change::Incident(ev));
            }
        }
        None if track.open => {
            track.open = false;
            track.shown = Shown::ok(scope);
            if let Some(iid) = track.own_incident.take()
                && let Some(ev) = incidents.close(&iid, now_ms)
            {
                out.push(Change::Incident(ev));
            }
            track.incident = None;
        }
        None => {}
    }
}

/// Like [`step`] for a site, whose verdict points at the ISP's, provider's or
/// route's incident when that explains it instead of opening its own; a clean
/// shutdown (`quiet`) is shown offline with no incident.
#[allow(clippy::too_many_arguments)]
fn step_site(
    incidents: &mut Incidents,
    track: &mut Track,
    id: &Id,
    covering: Option<String>,
    quiet: bool,
    raw: Option<Shown>,
    now_ms: u64,
    out: &mut Vec<Change>,
) {
    let Some(bad) = raw else {
        if track.open {
            track.open = false;
            track.shown = Shown::ok(Scope::Site);
            if let Some(iid) = track.own_incident.take()
                && let Some(ev) = incidents.close(&iid, now_ms)
            {
                out.push(Change::Incident(ev));
            }
            track.incident = None;
        }
        return;
    };
    track.open = true;
    track.shown = bad;
    if let Some(iid) = &track.own_incident {
        if let Some(ev) = incidents.update(iid, &track.shown) {
            out.push(Change::Incident(ev));
        }
    } else if covering.is_some() || quiet {
        track.incident = covering;
    } else {
        let (iid, ev) = incidents.open(now_ms, Scope::Site, &Subject::from(id), &track.shown);
        track.own_incident = Some(iid.clone());
        track.incident = Some(iid);
        out.push(Change::Incident(ev));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latch_opens_after_two_bad_windows_and_closes_after_three_good() {
        let th = Thresholds::default();
        let mut l = Latch::default();
        l.observe(Health::Down, &th);
        assert!(!l.on, "one bad window is not a fault");
        l.observe(Health::Ok, &th);
        l.observe(Health::Down, &th);
        assert!(!l.on);
        l.observe(Health::Degraded, &th);
        assert!(l.on);
        assert_eq!(l.worst, Health::Degraded);
        l.observe(Health::Ok, &th);
        l.observe(Health::Ok, &th);
        assert!(l.on);
        l.observe(Health::Ok, &th);
        assert!(!l.on);
    }
}
