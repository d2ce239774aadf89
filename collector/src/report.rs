//! `report`: provider availability over a period, from history. Availability is the
//! share of site-time the provider was healthy: each provider incident costs its
//! duration (clipped to the period) times the sites it affected, against the time
//! every site that probed the provider was being watched in the period. Route
//! faults (one ISP's path to the provider: scope `route`) are listed beside the
//! provider but do not count against it: the provider was up for everyone else.

use std::fmt::Write as _;

use faultline_shared::Incident;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

use crate::store::Store;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Outage {
    pub incident: String,
    pub state: String,
    pub start_ms: u64,
    /// `None` while still open.
    pub end_ms: Option<u64>,
    pub sites: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Availability {
    pub provider: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub sites: usize,
    /// Site-milliseconds observed.
    pub site_ms: u64,
    /// Site-milliseconds inside provider incidents.
    pub affected_site_ms: u64,
    /// 1 − affected / observed (1 when nothing was observed).
    pub availability: f64,
    pub outages: Vec<Outage>,
    /// Route incidents `{isp}~{provider}` in the period (not counted above).
    pub routes: Vec<RouteFault>,
}

/// A fault between one ISP and the provider.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteFault {
    pub isp: String,
    #[serde(flatten)]
    pub outage: Outage,
}

/// Computes availability for every provider in history (or just `only`).
pub fn availability(
    store: &Store,
    from_ms: u64,
    to_ms: u64,
    only: Option<&str>,
) -> anyhow::Result<Vec<Availability>> {
    let mut out = Vec::new();
    let incidents: Vec<Incident> = store.incidents(Some("provider"), from_ms, to_ms, u32::MAX)?;
    let routes: Vec<Incident> = store.incidents(Some("route"), from_ms, to_ms, u32::MAX)?;
    for provider in store.providers()? {
        if only.is_some_and(|o| o != provider) {
            continue;
        }
        let sites = store.provider_sites(&provider, from_ms, to_ms)?;
        // A site is watched from its first window in the period to the end of it.
        let site_ms: u64 = sites
            .iter()
            .map(|(_, first, _)| to_ms.saturating_sub((*first).max(from_ms)))
            .sum();
        let mut affected = 0u64;
        let mut outages = Vec::new();
        for inc in incidents
            .iter()
            .filter(|i| i.target_id == provider.as_str())
        {
            let start = inc.opened_ms.max(from_ms);
            let end = inc.closed_ms.unwrap_or(to_ms).min(to_ms);
            affected += end.saturating_sub(start) * inc.sites.len() as u64;
            outages.push(Outage {
                incident: inc.id.clone(),
                state: inc.state.as_str().to_owned(),
                start_ms: inc.opened_ms,
                end_ms: inc.closed_ms,
                sites: inc.sites.iter().map(|s| s.to_string()).collect(),
            });
        }
        outages.sort_by_key(|o| o.start_ms);
        let mut route_faults: Vec<RouteFault> = routes
            .iter()
            .filter_map(|inc| {
                let (isp, p) = inc.target_id.route()?;
                (p.as_str() == provider).then(|| RouteFault {
                    isp: isp.to_string(),
                    outage: Outage {
                        incident: inc.id.clone(),
                        state: inc.state.as_str().to_owned(),
                        start_ms: inc.opened_ms,
                        end_ms: inc.closed_ms,
                        sites: inc.sites.iter().map(|s| s.to_string()).collect(),
                    },
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
        });
    }
    Ok(out)
}

/// `ms` after the epoch as `2025-11-27 00:00:00Z` (UTC, to the second); a time past
/// year 9999 is printed as its milliseconds.
fn utc(ms: u64) -> String {
    const FORMAT: &[BorrowedFormatItem<'_>] =
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    i64::try_from(ms / 1000)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

fn dur(ms: u64) -> String {
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
            let end = x.end_ms.map_or("(open)".to_owned(), utc);
            let d = dur(x.end_ms.unwrap_or(r.to_ms).saturating_sub(x.start_ms));
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
        "provider,from_ms,to_ms,sites,availability,incident,state,start_ms,end_ms,affected_sites\n",
    );
    for r in rows {
        let head = format!(
            "{},{},{},{},{:.6}",
            r.provider, r.from_ms, r.to_ms, r.sites, r.availability
        );
        if r.outages.is_empty() {
            let _ = writeln!(o, "{head},,,,,");
        }
        for x in &r.outages {
            let _ = writeln!(
                o,
                "{head},{},{},{},{},{}",
                x.incident,
                x.state,
                x.start_ms,
                x.end_ms.map(|e| e.to_string()).unwrap_or_default(),
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

    #[test]
    fn route_faults_are_listed_beside_the_provider_and_not_counted() {
        use faultline_shared::{Id, IncidentEvent, IncidentEventKind, Scope, State, Subject};
        let dir = std::env::temp_dir().join(format!("fl-report-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("r.db");
        let _ = std::fs::remove_file(&path);
        let id = |s: &str| Id::new(s).unwrap();
        let mut store = Store::open(&path).unwrap();
        store.begin().unwrap();
        for (i, site) in ["a", "b", "c", "d"].iter().enumerate() {
            let row = crate::engine::WindowRow {
                site: id(site),
                recv_ms: 1_000 + i as u64,
                start_ms: 0,
                boot: 1,
                seq: 0,
                bad: 0,
                max_loss: 0.0,
                max_rtt_ms: None,
                min_mos: None,
                providers: vec![id("voipco")],
            };
            store.window(&row).unwrap();
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
        let rows = availability(&store, 0, 100_000, Some("voipco")).unwrap();
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
}
