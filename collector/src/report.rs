//! `report`: provider availability over a period, from history, counted from
//! evidence. A site is *watched* only while it was reporting (the spans its windows
//! cover; hours known only from hourly rows count pro rata), and *affected* only
//! while it was both watched and inside a provider incident that names it.
//! Availability is 1 − affected / watched, summed over every site that probed the
//! provider. An incident still open in history (the collector stopped, or it is
//! still going on) lasts, for its duration, until the latest window history holds;
//! its sites stop counting as affected where their own windows stop. Each outage
//! shows the worst state it reached. Route faults (one ISP's path to the provider:
//! scope `route`) are listed beside the provider but do not count against it: the
//! provider was up for everyone else. A provider's maintenance windows are left out
//! of the period: inside them its sites are neither watched nor affected.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use faultline_shared::{Incident, Scope};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

use crate::maintenance::{self, Window};
use crate::store::{Coverage, Store};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Outage {
    pub incident: String,
    /// The worst state the incident reached.
    pub state: String,
    pub start_ms: u64,
    /// `None` while still open in history.
    pub end_ms: Option<u64>,
    /// From its start to its end, or (open) to where history's evidence ends.
    pub duration_ms: u64,
    pub sites: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Availability {
    pub provider: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub sites: usize,
    /// Site-milliseconds watched (the sites were reporting).
    pub site_ms: u64,
    /// Site-milliseconds watched inside provider incidents naming the site.
    pub affected_site_ms: u64,
    /// 1 − affected / watched (1 when nothing was watched).
    pub availability: f64,
    pub outages: Vec<Outage>,
    /// Route incidents `{isp}~{provider}` in the period (not counted above).
    pub routes: Vec<RouteFault>,
    /// The provider's maintenance windows within the period (left out above).
    #[serde(default)]
    pub maintenance: Vec<MaintenancePeriod>,
}

/// A maintenance window, clipped to the report's period.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MaintenancePeriod {
    pub window: String,
    pub from_ms: u64,
    pub to_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A fault between one ISP and the provider.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteFault {
    pub isp: String,
    #[serde(flatten)]
    pub outage: Outage,
}

fn outage(inc: &Incident, worst: faultline_shared::State, evidence_end: u64) -> Outage {
    let end = inc.closed_ms.unwrap_or(evidence_end.max(inc.opened_ms));
    Outage {
        incident: inc.id.clone(),
        state: worst.as_str().to_owned(),
        start_ms: inc.opened_ms,
        end_ms: inc.closed_ms,
        duration_ms: end.saturating_sub(inc.opened_ms),
        sites: inc.sites.iter().map(|s| s.to_string()).collect(),
    }
}

/// The site-milliseconds of `inc` in [from, to): each of its sites while watched
/// inside it (an open incident runs to `evidence_end`).
pub fn affected_ms(
    inc: &Incident,
    coverage: &BTreeMap<String, Coverage>,
    from_ms: u64,
    to_ms: u64,
    evidence_end: u64,
) -> u64 {
    let start = inc.opened_ms.max(from_ms);
    let end = inc.closed_ms.unwrap_or(evidence_end).min(to_ms);
    if end <= start {
        return 0;
    }
    inc.sites
        .iter()
        .filter_map(|s| coverage.get(s.as_str()))
        .map(|c| c.watched(start, end))
        .sum()
}

/// Computes availability for every provider in history (or just `only`), leaving
/// each provider's maintenance `windows` out.
pub fn availability(
    store: &Store,
    from_ms: u64,
    to_ms: u64,
    only: Option<&str>,
    windows: &[Window],
) -> anyhow::Result<Vec<Availability>> {
    let mut out = Vec::new();
    let incidents = store.incidents_worst(Some("provider"), from_ms, to_ms, u32::MAX)?;
    let routes = store.incidents_worst(Some("route"), from_ms, to_ms, u32::MAX)?;
    let evidence_end = store.evidence_end(to_ms)?.unwrap_or(from_ms);
    for provider in store.providers()? {
        if only.is_some_and(|o| o != provider) {
            continue;
        }
        let sites = store.provider_sites(&provider, from_ms, to_ms)?;
        let mut coverage = BTreeMap::new();
        for (site, _, _) in &sites {
            coverage.insert(site.clone(), store.coverage(site, from_ms, to_ms)?);
        }
        // What is counted: the period less the provider's maintenance windows.
        let counted = maintenance::outside(windows, Scope::Provider, &provider, from_ms, to_ms);
        let site_ms: u64 = counted
            .iter()
            .map(|&(a, b)| coverage.values().map(|c| c.watched(a, b)).sum::<u64>())
            .sum();
        let mut affected = 0u64;
        let mut outages = Vec::new();
        for (inc, worst) in incidents
            .iter()
            .filter(|(i, _)| i.target_id == provider.as_str())
        {
            affected += counted
                .iter()
                .map(|&(a, b)| affected_ms(inc, &coverage, a, b, evidence_end))
                .sum::<u64>();
            outages.push(outage(inc, *worst, evidence_end));
        }
        let mut maintenance: Vec<MaintenancePeriod> = windows
            .iter()
            .filter(|w| w.scope == Scope::Provider && w.id == provider.as_str())
            .filter(|w| w.to_ms > from_ms && w.from_ms < to_ms)
            .map(|w| MaintenancePeriod {
                window: w.window.clone(),
                from_ms: w.from_ms.max(from_ms),
                to_ms: w.to_ms.min(to_ms),
                note: w.note.clone(),
            })
            .collect();
        maintenance.sort_by_key(|m| m.from_ms);
        outages.sort_by_key(|o| o.start_ms);
        let mut route_faults: Vec<RouteFault> = routes
            .iter()
            .filter_map(|(inc, worst)| {
                let (isp, p) = inc.target_id.route()?;
                (p.as_str() == provider).then(|| RouteFault {
                    isp: isp.to_string(),
                    outage: outage(inc, *worst, evidence_end),
                })
            })
            .collect();
        route_faults.sort_by_key(|r| r.outage.start_ms);
        let availability = if site_ms == 0 {
            1.0
        } else {
            (1.0 - affected as f64 / site_ms as f64).clamp(0.0, 1.0)
        };
        out.push(Availability {
            provider,
            from_ms,
            to_ms,
            sites: sites.len(),
            site_ms,
            affected_site_ms: affected,
            availability,
            outages,
            routes: route_faults,
            maintenance,
        });
    }
    Ok(out)
}

/// `ms` after the epoch as `2025-11-27 00:00:00Z` (UTC, to the second); a time past
/// year 9999 is printed as its milliseconds.
pub fn utc(ms: u64) -> String {
    const FORMAT: &[BorrowedFormatItem<'_>] =
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    i64::try_from(ms / 1000)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

pub fn dur(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// A table for people.
pub fn table(rows: &[Availability]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<20} {:>6} {:>12} {:>8}  period",
        "provider", "sites", "availability", "outages"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "{:<20} {:>6} {:>11.3}% {:>8}  {} .. {}",
            r.provider,
            r.sites,
            r.availability * 100.0,
            r.outages.len(),
            utc(r.from_ms),
            utc(r.to_ms)
        );
        for x in &r.outages {
            let end = x.end_ms.map_or_else(
                || format!("(open; evidence ends {})", utc(x.start_ms + x.duration_ms)),
                utc,
            );
            let d = dur(x.duration_ms);
            let _ = writeln!(
                o,
                "    {} {:<8} {} .. {} ({d}) sites: {}",
                x.incident,
                x.state,
                utc(x.start_ms),
                end,
                x.sites.join(",")
            );
        }
        for m in &r.maintenance {
            let _ = writeln!(
                o,
                "    maintenance {} .. {} ({}) not counted{}",
                utc(m.from_ms),
                utc(m.to_ms),
                dur(m.to_ms - m.from_ms),
                m.note.as_ref().map_or(String::new(), |n| format!(": {n}"))
            );
        }
        for r in &r.routes {
            let x = &r.outage;
            let end = x.end_ms.map_or("(open)".to_owned(), utc);
            let _ = writeln!(
                o,
                "    {} {:<8} {} .. {} route from ISP {} (not counted) sites: {}",
                x.incident,
                x.state,
                utc(x.start_ms),
                end,
                r.isp,
                x.sites.join(",")
            );
        }
    }
    o
}

/// CSV: one line per outage (providers without outages get one line with empty
/// outage columns).
pub fn csv(rows: &[Availability]) -> String {
    let mut o = String::from(
        "provider,from_ms,to_ms,sites,availability,incident,state,start_ms,end_ms,duration_ms,affected_sites\n",
    );
    for r in rows {
        let head = format!(
            "{},{},{},{},{:.6}",
            r.provider, r.from_ms, r.to_ms, r.sites, r.availability
        );
        if r.outages.is_empty() {
            let _ = writeln!(o, "{head},,,,,,");
        }
        for x in &r.outages {
            let _ = writeln!(
                o,
                "{head},{},{},{},{},{},{}",
                x.incident,
                x.state,
                x.start_ms,
                x.end_ms.map(|e| e.to_string()).unwrap_or_default(),
                x.duration_ms,
                x.sites.join(";")
            );
        }
    }
    o
}

/// Parses `7d`, `24h`, `30m` or plain milliseconds.
pub fn parse_span(s: &str) -> Result<u64, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let mult = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m, h, d)")),
    };
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_and_spans() {
        assert_eq!(utc(1_764_201_600_000), "2025-11-27 00:00:00Z");
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_827_696_999), "2000-02-29 12:34:56Z");
        assert_eq!(utc(253_402_300_799_000), "9999-12-31 23:59:59Z");
        assert_eq!(utc(253_402_300_800_000), "253402300800000 ms");
        assert_eq!(parse_span("7d").unwrap(), 7 * 86_400_000);
        assert_eq!(parse_span("90m").unwrap(), 5_400_000);
        assert!(parse_span("x").is_err());
    }

    use faultline_shared::{Id, IncidentEvent, IncidentEventKind, State, Subject};

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    fn temp_store(tag: &str) -> (std::path::PathBuf, Store) {
        let dir = std::env::temp_dir().join(format!("fl-report-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("r.db")).unwrap();
        (dir, store)
    }

    /// Windows of 10 s from `site`, received at 10 s, 20 s, … up to `until_s`.
    fn windows(store: &mut Store, site: &str, until_s: u64) {
        for n in 1..=until_s / 10 {
            let row = crate::engine::WindowRow {
                site: id(site),
                recv_ms: n * 10_000,
                start_ms: (n - 1) * 10_000,
                boot: 1,
                seq: n,
                bad: 0,
                max_loss: 0.0,
                max_rtt_ms: None,
                min_mos: None,
                providers: vec![id("voipco")],
                window_ms: 10_000,
                targets: vec![],
            };
            store.window(&row).unwrap();
        }
    }

    fn incident(store: &mut Store, state: State, opened_s: u64, closed_s: Option<u64>) {
        let inc = Incident {
            id: "inc-000001".into(),
            scope: Scope::Provider,
            target_id: Subject::from(id("voipco")),
            cause: None,
            state,
            opened_ms: opened_s * 1000,
            closed_ms: closed_s.map(|c| c * 1000),
            sites: vec![id("a"), id("b")],
        };
        store
            .incident(&IncidentEvent {
                event: IncidentEventKind::Updated,
                incident: inc,
            })
            .unwrap();
    }

    #[test]
    fn an_incident_left_open_by_a_stopped_collector_ends_where_the_evidence_ends() {
        // Sites a and b report from 0 to 600 s, then the collector stops with the
        // incident (opened at 300 s as an outage, degraded since) still open. The
        // period is 1000 s. Watched: 2 × 600 s. Affected: 2 × (600 − 300) s.
        let (dir, mut store) = temp_store("open");
        store.begin().unwrap();
        windows(&mut store, "a", 600);
        windows(&mut store, "b", 600);
        incident(&mut store, State::Outage, 300, None);
        incident(&mut store, State::Degraded, 300, None);
        store.commit().unwrap();
        let r = &availability(&store, 0, 1_000_000, Some("voipco"), &[]).unwrap()[0];
        assert_eq!(r.site_ms, 1_200_000);
        assert_eq!(r.affected_site_ms, 600_000);
        assert_eq!(r.availability, 0.5);
        let o = &r.outages[0];
        assert_eq!(o.state, "outage", "the worst state, not the last");
        assert_eq!(o.end_ms, None);
        assert_eq!(o.duration_ms, 300_000);
        // Later periods change nothing: no evidence, no watching.
        let later = &availability(&store, 0, 9_000_000, Some("voipco"), &[]).unwrap()[0];
        assert_eq!(later.availability, 0.5);
        assert!(table(std::slice::from_ref(later)).contains("5m00s"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_site_counts_only_while_it_reports() {
        // a reports to 400 s, b to 600 s; the incident (300 s .. 500 s) names both.
        // Watched: 400 s + 600 s. Affected: a 300..400 (100 s), b 300..500 (200 s).
        let (dir, mut store) = temp_store("stops");
        store.begin().unwrap();
        windows(&mut store, "a", 400);
        windows(&mut store, "b", 600);
        incident(&mut store, State::Outage, 300, Some(500));
        store.commit().unwrap();
        let r = &availability(&store, 0, 1_000_000, Some("voipco"), &[]).unwrap()[0];
        assert_eq!(r.site_ms, 1_000_000);
        assert_eq!(r.affected_site_ms, 300_000);
        assert!((r.availability - 0.7).abs() < 1e-12);
        assert_eq!(r.outages[0].duration_ms, 200_000);
        // Clipped to a period: [350 s, 450 s) watches both for 50 + 100 s… of which
        // a is affected 350..400 and b 350..450.
        let r = &availability(&store, 350_000, 450_000, Some("voipco"), &[]).unwrap()[0];
        assert_eq!(r.site_ms, 50_000 + 100_000);
        assert_eq!(r.affected_site_ms, 50_000 + 100_000);
        assert_eq!(r.availability, 0.0);
        assert!(csv(std::slice::from_ref(r)).contains(",outage,300000,500000,200000,a;b"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn route_faults_are_listed_beside_the_provider_and_not_counted() {
        let dir = std::env::temp_dir().join(format!("fl-report-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("r.db");
        let _ = std::fs::remove_file(&path);
        let id = |s: &str| Id::new(s).unwrap();
        let mut store = Store::open(&path).unwrap();
        store.begin().unwrap();
        for site in ["a", "b", "c", "d"] {
            windows(&mut store, site, 100_000 / 1_000);
        }
        let route = Incident {
            id: "inc-000001".into(),
            scope: Scope::Route,
            target_id: Subject::route_of(&id("IspA"), &id("voipco")),
            cause: None,
            state: State::Outage,
            opened_ms: 10_000,
            closed_ms: Some(20_000),
            sites: vec![id("a"), id("b")],
        };
        store
            .incident(&IncidentEvent {
                event: IncidentEventKind::Closed,
                incident: route,
            })
            .unwrap();
        store.commit().unwrap();
        let rows = availability(&store, 0, 100_000, Some("voipco"), &[]).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].availability, 1.0,
            "a route fault is not the provider's"
        );
        assert_eq!(rows[0].routes.len(), 1);
        assert_eq!(rows[0].routes[0].isp, "IspA");
        assert!(table(&rows).contains("route from ISP IspA"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn maintenance_is_neither_watched_nor_affected() {
        // a and b report from 0 to 600 s; the incident (300 s .. 500 s) names both;
        // voipco is in maintenance from 400 s to 600 s. Period 0 .. 1000 s.
        // Counted: [0, 400) and [600, 1000). Watched: 2 × 400 s = 800 s (nothing
        // after 600 s). Affected: 2 × (300..400) = 200 s. Availability 1 − 200/800.
        // Without the window: 1 − 400/1200.
        let (dir, mut store) = temp_store("maintenance");
        store.begin().unwrap();
        windows(&mut store, "a", 600);
        windows(&mut store, "b", 600);
        incident(&mut store, State::Outage, 300, Some(500));
        store.commit().unwrap();
        let w = Window {
            window: "config-1".into(),
            scope: Scope::Provider,
            id: Subject::from(id("voipco")),
            from_ms: 400_000,
            to_ms: 600_000,
            note: Some("SBC upgrade".into()),
            origin: crate::maintenance::Origin::Config,
        };
        let other = Window {
            id: Subject::from(id("voipco2")),
            ..w.clone()
        };
        let r = &availability(&store, 0, 1_000_000, Some("voipco"), &[w, other]).unwrap()[0];
        assert_eq!(r.site_ms, 800_000);
        assert_eq!(r.affected_site_ms, 200_000);
        assert_eq!(r.availability, 0.75);
        assert_eq!(r.maintenance.len(), 1);
        assert_eq!(
            (r.maintenance[0].from_ms, r.maintenance[0].to_ms),
            (400_000, 600_000)
        );
        assert!(
            table(std::slice::from_ref(r)).contains("maintenance"),
            "{}",
            table(std::slice::from_ref(r))
        );
        let r = &availability(&store, 0, 1_000_000, Some("voipco"), &[]).unwrap()[0];
        assert_eq!((r.site_ms, r.affected_site_ms), (1_200_000, 400_000));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
