//! The cross-site step: ISP and provider correlation over every site's latest
//! window, the bottom-up site cause, hysteresis and incidents. Reads only the
//! per-site step's output; costs O(sites × targets) per evaluation.

use std::collections::{BTreeMap, BTreeSet};

use faultline_shared::{
    Cause, Id, Incident, IncidentEvent, IncidentEventKind, Recommendation, Scope, State, Verdict,
    state::Action,
};

use super::health::{Health, Thresholds};
use super::site::{OfflineWhy, SiteRaw, SiteTrack};

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

/// Hysteresis and incident bookkeeping for one site, ISP or provider.
#[derive(Debug, Clone)]
pub struct Track {
    pub open: bool,
    pub bad_run: u32,
    pub good_run: u32,
    pub shown: Shown,
    /// The incident this track opened itself.
    pub own_incident: Option<String>,
    /// The incident shown on the verdict (own, or the ISP's / provider's that explains it).
    pub incident: Option<String>,
    /// The last verdict published.
    pub published: Option<Verdict>,
}

impl Track {
    pub fn new(scope: Scope) -> Self {
        Self {
            open: false,
            bad_run: 0,
            good_run: 0,
            shown: Shown::ok(scope),
            own_incident: None,
            incident: None,
            published: None,
        }
    }

    /// One window's raw judgement (`None` = good). Returns whether the track opened
    /// or closed in this step: `Some(true)` opened, `Some(false)` closed.
    fn step(
        &mut self,
        scope: Scope,
        raw: Option<Shown>,
        th: &Thresholds,
        force: bool,
    ) -> Option<bool> {
        match raw {
            Some(bad) => {
                self.bad_run = self.bad_run.saturating_add(1);
                self.good_run = 0;
                if self.open {
                    self.shown = bad;
                    None
                } else if force || self.bad_run >= th.open_after {
                    self.open = true;
                    self.shown = bad;
                    Some(true)
                } else {
                    None
                }
            }
            None => {
                self.good_run = self.good_run.saturating_add(1);
                self.bad_run = 0;
                if self.open && (force || self.good_run >= th.close_after) {
                    self.open = false;
                    self.shown = Shown::ok(scope);
                    Some(false)
                } else {
                    None
                }
            }
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
        id: &Id,
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
            sites: if scope == Scope::Site {
                vec![id.clone()]
            } else {
                shown.sites.clone()
            },
        };
        self.open.insert(iid.clone(), inc.clone());
        (
            iid,
            IncidentEvent {
                event: IncidentEventKind::Opened,
                incident: inc,
            },
        )
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

/// One evaluation's output, in a deterministic order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Verdict(Verdict),
    Incident(IncidentEvent),
}

/// The cross-site state.
#[derive(Debug, Default)]
pub struct Fleet {
    pub sites: BTreeMap<Id, Track>,
    pub isps: BTreeMap<Id, Track>,
    pub providers: BTreeMap<Id, Track>,
    pub incidents: Incidents,
}

type IspTally<'a> = (u32, Vec<(&'a Id, bool)>);

#[derive(Default)]
struct ProviderTally {
    eligible: u32,
    bad: Vec<(Id, Health)>,
}

impl Fleet {
    /// Evaluates one window over every site. `alternates` maps configured
    /// providers to their alternate; providers seen in reports are added.
    pub fn evaluate(
        &mut self,
        now_ms: u64,
        window_ms: u64,
        sites: &BTreeMap<Id, SiteTrack>,
        alternates: &BTreeMap<Id, Option<Id>>,
        th: &Thresholds,
        out: &mut Vec<Output>,
    ) {
        // Offline sites count for an ISP when they went offline recently ("together").
        let recent_ms = now_ms.saturating_sub(window_ms * u64::from(th.silence_windows + 3));
        let raws: Vec<(&Id, &SiteTrack, SiteRaw)> =
            sites.iter().map(|(id, s)| (id, s, s.raw())).collect();

        // Step 3: ISPs.
        // ISP → (members, bad members with "down or offline").
        let mut isp_tally: BTreeMap<&Id, IspTally<'_>> = BTreeMap::new();
        let mut fleet_isps: BTreeSet<&Id> = BTreeSet::new();
        for (id, s, raw) in &raws {
            let Some(isp) = &s.isp else { continue };
            let e = isp_tally.entry(isp).or_default();
            match raw {
                SiteRaw::Offline(OfflineWhy::Shutdown, _) => {}
                SiteRaw::Offline(_, since) if *since < recent_ms => {}
                SiteRaw::Offline(_, _) => {
                    e.0 += 1;
                    e.1.push((id, true));
                }
                SiteRaw::Net(h) => {
                    fleet_isps.insert(isp);
                    e.0 += 1;
                    e.1.push((id, *h == Health::Down));
                }
                _ => {
                    fleet_isps.insert(isp);
                    e.0 += 1;
                }
            }
        }
        let mut isp_raw: BTreeMap<Id, (Option<Shown>, bool)> = BTreeMap::new();
        for (isp, (members, bad)) in &isp_tally {
            let n = bad.len() as u32;
            // Sites that all dropped off together: offline was slow to declare
            // already, so the ISP verdict needs no second window.
            let all_offline = n > 0
                && bad
                    .iter()
                    .all(|(s, _)| sites.get(*s).is_some_and(SiteTrack::is_offline));
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
            isp_raw.insert((*isp).clone(), (shown, all_offline));
        }

        // Step 4: providers, among sites whose lower layers are healthy.
        let mut tally: BTreeMap<&Id, ProviderTally> = BTreeMap::new();
        for p in alternates.keys() {
            tally.entry(p).or_default();
        }
        for (id, s, raw) in &raws {
            if *raw != SiteRaw::Clear {
                for (p, _) in &s.layers.providers {
                    tally.entry(p).or_default();
                }
                continue;
            }
            for (p, h) in &s.layers.providers {
                let t = tally.entry(p).or_default();
                t.eligible += 1;
                if h.is_bad() {
                    t.bad.push(((*id).clone(), *h));
                }
            }
        }
        let mut prov_raw: BTreeMap<Id, Option<Shown>> = BTreeMap::new();
        for (p, t) in &tally {
            let n = t.bad.len() as u32;
            let isps: BTreeSet<Option<&Id>> = t
                .bad
                .iter()
                .map(|(s, _)| sites.get(s).and_then(|s| s.isp.as_ref()))
                .filter(Option::is_some)
                .collect();
            let spans = fleet_isps.len() < 2 || isps.len() >= 2;
            let shown = (n >= 2 && n * 2 >= t.eligible && spans).then(|| {
                let down = t.bad.iter().filter(|(_, h)| *h == Health::Down).count() as u32;
                let affected: Vec<Id> = t.bad.iter().map(|(s, _)| s.clone()).collect();
                let recommendation = alternates.get(*p).cloned().flatten().and_then(|alt| {
                    affected
                        .iter()
                        .all(|s| {
                            sites
                                .get(s)
                                .and_then(|s| s.layers.provider(&alt))
                                .is_some_and(|h| !h.is_bad())
                        })
                        .then_some(Recommendation {
                            action: Action::Failover,
                            to: alt,
                        })
                });
                Shown {
                    state: if down * 2 > n {
                        State::Outage
                    } else {
                        State::Degraded
                    },
                    cause: Some(Cause::Provider),
                    provider: None,
                    sites: affected,
                    recommendation,
                }
            });
            prov_raw.insert((*p).clone(), shown);
        }

        // Hysteresis for providers and ISPs, then sites (whose incident may be theirs).
        for (p, raw) in prov_raw {
            let track = self
                .providers
                .entry(p.clone())
                .or_insert_with(|| Track::new(Scope::Provider));
            step_track(
                &mut self.incidents,
                track,
                Scope::Provider,
                &p,
                raw,
                th,
                false,
                now_ms,
                out,
            );
        }
        for (isp, (raw, force)) in isp_raw {
            let track = self
                .isps
                .entry(isp.clone())
                .or_insert_with(|| Track::new(Scope::Isp));
            let force = force && raw.is_some();
            step_track(
                &mut self.incidents,
                track,
                Scope::Isp,
                &isp,
                raw,
                th,
                force,
                now_ms,
                out,
            );
        }
        for (id, s, raw) in &raws {
            if *raw == SiteRaw::NoData {
                self.sites
                    .entry((*id).clone())
                    .or_insert_with(|| Track::new(Scope::Site));
                continue;
            }
            let (shown, force) = self.site_shown(s, *raw);
            let quiet = matches!(raw, SiteRaw::Offline(OfflineWhy::Shutdown, _));
            let covering = shown.as_ref().and_then(|sh| match sh.cause {
                Some(Cause::Provider) => sh
                    .provider
                    .as_ref()
                    .and_then(|p| self.providers.get(p))
                    .filter(|t| t.open)
                    .and_then(|t| t.own_incident.clone()),
                Some(Cause::Isp) => s
                    .isp
                    .as_ref()
                    .and_then(|i| self.isps.get(i))
                    .filter(|t| t.open && t.shown.sites.contains(id))
                    .and_then(|t| t.own_incident.clone()),
                _ => None,
            });
            let track = self
                .sites
                .entry((*id).clone())
                .or_insert_with(|| Track::new(Scope::Site));
            let force = force || track.shown.state == State::Offline;
            let site = SiteStep {
                id,
                covering,
                quiet,
                force,
            };
            step_site(&mut self.incidents, track, site, shown, th, now_ms, out);
        }

        // Publish what changed: providers, ISPs, sites.
        for (scope, map) in [
            (Scope::Provider, &mut self.providers),
            (Scope::Isp, &mut self.isps),
            (Scope::Site, &mut self.sites),
        ] {
            for (id, t) in map.iter_mut() {
                let v = Verdict {
                    at_ms: now_ms,
                    scope,
                    id: id.clone(),
                    state: t.shown.state,
                    cause: t.shown.cause,
                    provider: t.shown.provider.clone(),
                    sites: t.shown.sites.clone(),
                    incident: t.incident.clone(),
                    recommendation: t.shown.recommendation.clone(),
                };
                let changed = t.published.as_ref().is_none_or(|p| {
                    let mut p = p.clone();
                    p.at_ms = now_ms;
                    p != v
                });
                if changed {
                    t.published = Some(v.clone());
                    out.push(Output::Verdict(v));
                }
            }
        }
    }

    /// Step 2 and 5: a site's raw verdict for this window (`None` = good) and
    /// whether it bypasses hysteresis (offline is already slow to declare).
    fn site_shown(&self, s: &SiteTrack, raw: SiteRaw) -> (Option<Shown>, bool) {
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
        match raw {
            SiteRaw::Offline(why, _) => {
                let isp_out = s
                    .isp
                    .as_ref()
                    .and_then(|i| self.isps.get(i))
                    .is_some_and(|t| t.open);
                let cause = if why != OfflineWhy::Shutdown && isp_out {
                    Cause::Isp
                } else {
                    Cause::None
                };
                (Some(mk(State::Offline, cause, None)), true)
            }
            SiteRaw::NoData => (None, false),
            SiteRaw::Host(h) => (Some(mk(state_of(h), Cause::Host, None)), false),
            SiteRaw::Lan(h) => (Some(mk(state_of(h), Cause::Lan, None)), false),
            SiteRaw::Net(h) => (Some(mk(state_of(h), Cause::Isp, None)), false),
            SiteRaw::Clear => {
                // The worst bad provider; one with a fleet-wide verdict explains it.
                let mut best: Option<(bool, Health, &Id)> = None;
                for (p, h) in &s.layers.providers {
                    if !h.is_bad() {
                        continue;
                    }
                    // Provider tracks step first: a bad run now means correlated now.
                    let fleet = self
                        .providers
                        .get(p)
                        .is_some_and(|t| t.bad_run > 0 || t.open);
                    let cand = (fleet, *h, p);
                    if best.is_none_or(|b| (cand.0, cand.1) > (b.0, b.1)) {
                        best = Some(cand);
                    }
                }
                match best {
                    None => (None, false),
                    Some((fleet, h, p)) => {
                        let cause = if fleet { Cause::Provider } else { Cause::Path };
                        (Some(mk(state_of(h), cause, Some(p.clone()))), false)
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn step_track(
    incidents: &mut Incidents,
    track: &mut Track,
    scope: Scope,
    id: &Id,
    raw: Option<Shown>,
    th: &Thresholds,
    force: bool,
    now_ms: u64,
    out: &mut Vec<Output>,
) {
    let bad_now = raw.is_some();
    match track.step(scope, raw, th, force) {
        Some(true) => {
            let (iid, ev) = incidents.open(now_ms, scope, id, &track.shown);
            track.own_incident = Some(iid.clone());
            track.incident = Some(iid);
            out.push(Output::Incident(ev));
        }
        Some(false) => {
            if let Some(iid) = track.own_incident.take()
                && let Some(ev) = incidents.close(&iid, now_ms)
            {
                out.push(Output::Incident(ev));
            }
            track.incident = None;
        }
        None => {
            if track.open
                && bad_now
                && let Some(iid) = &track.own_incident
                && let Some(ev) = incidents.update(iid, &track.shown)
            {
                out.push(Output::Incident(ev));
            }
        }
    }
}

/// Like [`step_track`] for a site, whose verdict points at the ISP's or provider's
/// incident when that explains it instead of opening its own.
struct SiteStep<'a> {
    id: &'a Id,
    /// The open ISP or provider incident that explains this site's fault.
    covering: Option<String>,
    /// A clean shutdown: shown offline, but no incident of its own.
    quiet: bool,
    /// Bypass hysteresis (offline, or back from offline).
    force: bool,
}

fn step_site(
    incidents: &mut Incidents,
    track: &mut Track,
    site: SiteStep<'_>,
    raw: Option<Shown>,
    th: &Thresholds,
    now_ms: u64,
    pending: &mut Vec<Output>,
) {
    let SiteStep {
        id,
        covering,
        quiet,
        force,
    } = site;
    let bad_now = raw.is_some();
    match track.step(Scope::Site, raw, th, force) {
        Some(false) => {
            if let Some(iid) = track.own_incident.take()
                && let Some(ev) = incidents.close(&iid, now_ms)
            {
                pending.push(Output::Incident(ev));
            }
            track.incident = None;
        }
        _ if track.open => {
            if let Some(iid) = &track.own_incident {
                if bad_now && let Some(ev) = incidents.update(iid, &track.shown) {
                    pending.push(Output::Incident(ev));
                }
            } else if covering.is_some() || quiet {
                track.incident = covering;
            } else if bad_now || track.incident.is_none() {
                let (iid, ev) = incidents.open(now_ms, Scope::Site, id, &track.shown);
                track.own_incident = Some(iid.clone());
                track.incident = Some(iid);
                pending.push(Output::Incident(ev));
            }
        }
        _ => {}
    }
}
