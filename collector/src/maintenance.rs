//! Maintenance windows: planned work on a site, ISP, provider or route between two
//! instants. Inside a window verdicts are still computed and published (marked
//! `maintenance`), incidents are not alerted, and `report` leaves the period out of
//! availability. Windows come from `[[maintenance]]` in collector.toml and from the
//! HTTP API (`/api/maintenance`, token required). This module holds the windows
//! and answers "is this covered, until when" — pure, time passed in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use faultline_shared::{Cause, Id, Incident, Maintenance, Scope, Subject, Verdict};
use serde::{Deserialize, Serialize};

/// Where a window was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `[[maintenance]]` in collector.toml (changed by editing the file).
    Config,
    /// `POST /api/maintenance` (kept in history, removable over HTTP).
    Http,
}

/// One window, `from_ms` inclusive to `to_ms` exclusive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// The window's own handle: `config-{n}` or `mw-{from}-{random}`.
    pub window: String,
    pub scope: Scope,
    /// The site, ISP or provider id; a route's `"{isp}~{provider}"`.
    pub id: Subject,
    pub from_ms: u64,
    pub to_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub origin: Origin,
}

impl Window {
    pub fn covers(&self, now_ms: u64) -> bool {
        (self.from_ms..self.to_ms).contains(&now_ms)
    }
}

/// Parses a scope name as collector.toml and the API spell it.
pub fn parse_scope(s: &str) -> Result<Scope, String> {
    match s {
        "site" => Ok(Scope::Site),
        "isp" => Ok(Scope::Isp),
        "provider" => Ok(Scope::Provider),
        "route" => Ok(Scope::Route),
        _ => Err(format!("{s:?}: expected site, isp, provider or route")),
    }
}

/// Parses the subject for `scope`: an id, or `"{isp}~{provider}"` for a route.
pub fn parse_subject(scope: Scope, s: &str) -> Result<Subject, String> {
    match scope {
        Scope::Route => {
            if !s.contains('~') {
                return Err(format!("{s:?}: a route is \"{{isp}}~{{provider}}\""));
            }
            s.parse().map_err(|e| format!("{s:?}: {e}"))
        }
        _ => Id::new(s)
            .map(Subject::from)
            .map_err(|e| format!("{s:?}: {e}")),
    }
}

/// Parses an RFC 3339 instant (any offset) to epoch milliseconds.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time (2026-12-01T02:00:00Z): {e}"))?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).map_err(|_| format!("{s:?} is before 1970"))
}

/// Checks a window's bounds.
pub fn check_bounds(from_ms: u64, to_ms: u64) -> Result<(), String> {
    if to_ms <= from_ms {
        return Err("`to` must be after `from`".into());
    }
    Ok(())
}

/// The end of the latest-ending window on (`scope`, `id`) that covers `now_ms`.
pub fn until(windows: &[Window], scope: Scope, id: &str, now_ms: u64) -> Option<u64> {
    windows
        .iter()
        .filter(|w| w.scope == scope && w.id == id && w.covers(now_ms))
        .map(|w| w.to_ms)
        .max()
}

/// Until when `v` is in maintenance: its own subject, a route's ISP or provider, or
/// the provider a site's `path`/`provider` cause points at.
pub fn verdict_until(windows: &[Window], v: &Verdict, now_ms: u64) -> Option<u64> {
    if windows.is_empty() {
        return None;
    }
    let mut found = until(windows, v.scope, &v.id.to_string(), now_ms);
    let mut also = |scope, id: &Id| {
        found = found.max(until(windows, scope, id.as_str(), now_ms));
    };
    if v.scope == Scope::Route
        && let Some(isp) = &v.isp
    {
        also(Scope::Isp, isp);
    }
    let points_at_provider = matches!(v.cause, Some(Cause::Path | Cause::Provider));
    if (v.scope == Scope::Route || (v.scope == Scope::Site && points_at_provider))
        && let Some(p) = &v.provider
    {
        also(Scope::Provider, p);
    }
    found
}

/// Until when `inc` is in maintenance, judged by its own subject and, when known,
/// the verdict it belongs to.
pub fn incident_until(
    windows: &[Window],
    inc: &Incident,
    verdict: Option<&Verdict>,
    now_ms: u64,
) -> Option<u64> {
    let own = until(windows, inc.scope, &inc.target_id.to_string(), now_ms);
    own.max(verdict.and_then(|v| verdict_until(windows, v, now_ms)))
}

/// The parts of [`from_ms`, `to_ms`) outside every window on (`scope`, `id`), in
/// time order: what `report` counts (a maintenance period is neither watched nor
/// affected).
pub fn outside(
    windows: &[Window],
    scope: Scope,
    id: &str,
    from_ms: u64,
    to_ms: u64,
) -> Vec<(u64, u64)> {
    let mut cuts: Vec<(u64, u64)> = windows
        .iter()
        .filter(|w| w.scope == scope && w.id == id && w.to_ms > from_ms && w.from_ms < to_ms)
        .map(|w| (w.from_ms.max(from_ms), w.to_ms.min(to_ms)))
        .collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = from_ms;
    for (a, b) in cuts {
        if a > at {
            out.push((at, a));
        }
        at = at.max(b);
    }
    if at < to_ms {
        out.push((at, to_ms));
    }
    out
}

/// Which published verdicts carry a maintenance mark: the engine's owner marks each
/// verdict it publishes, and re-publishes those whose mark changes when a window
/// starts or ends (the engine itself knows nothing of maintenance).
#[derive(Debug, Default)]
pub struct Marks {
    marked: HashMap<(Scope, String), u64>,
}

impl Marks {
    /// Sets `v.maintenance` as of `now_ms` and remembers it.
    pub fn mark(&mut self, windows: &[Window], v: &mut Verdict, now_ms: u64) {
        let until = verdict_until(windows, v, now_ms);
        v.maintenance = until.map(|until_ms| Maintenance { until_ms });
        let key = (v.scope, v.id.to_string());
        match until {
            Some(u) => {
                self.marked.insert(key, u);
            }
            None => {
                self.marked.remove(&key);
            }
        }
    }

    /// True when no verdict is marked.
    pub fn is_empty(&self) -> bool {
        self.marked.is_empty()
    }

    /// Hands the pages `s` with the maintenance marks on its verdicts (as
    /// published), copying it only when a mark is to be shown.
    pub fn set_snapshot(
        &self,
        cell: &crate::snapshot::SnapshotCell,
        s: Arc<crate::snapshot::Snapshot>,
    ) {
        if self.is_empty() && s.verdicts().all(|v| v.maintenance.is_none()) {
            cell.set(s);
            return;
        }
        let mut s = (*s).clone();
        self.annotate(&mut s);
        cell.set(Arc::new(s));
    }

    /// Marks the snapshot's verdicts as they were published (pages show the same).
    pub fn annotate(&self, s: &mut crate::snapshot::Snapshot) {
        let mark = |v: &mut Verdict| {
            v.maintenance = self
                .marked
                .get(&(v.scope, v.id.to_string()))
                .map(|&until_ms| Maintenance { until_ms });
        };
        s.providers
            .iter_mut()
            .chain(s.isps.iter_mut())
            .chain(s.routes.iter_mut())
            .chain(s.site_verdicts.values_mut())
            .for_each(mark);
    }

    /// The `verdicts` (as last published) whose mark is no longer right, marked anew.
    pub fn changed<'a>(
        &mut self,
        windows: &[Window],
        verdicts: impl Iterator<Item = &'a Verdict>,
        now_ms: u64,
    ) -> Vec<Verdict> {
        // Only windows in force matter; with none and nothing marked there is no
        // need to look at the (possibly 100,000) verdicts.
        let active: Vec<Window> = windows
            .iter()
            .filter(|w| w.covers(now_ms))
            .cloned()
            .collect();
        if active.is_empty() && self.marked.is_empty() {
            return Vec::new();
        }
        let windows = &active[..];
        let mut out = Vec::new();
        for v in verdicts {
            let now = verdict_until(windows, v, now_ms);
            let was = self.marked.get(&(v.scope, v.id.to_string())).copied();
            if now != was {
                let mut v = v.clone();
                self.mark(windows, &mut v, now_ms);
                out.push(v);
            }
        }
        out
    }
}

/// The windows in force, shared by the engine's owner, the alerts and HTTP. Readers
/// take an `Arc` of the list; changes replace it.
#[derive(Debug, Default)]
pub struct Book {
    windows: Mutex<Arc<Vec<Window>>>,
}

impl Book {
    pub fn new(windows: Vec<Window>) -> Self {
        Self {
            windows: Mutex::new(Arc::new(windows)),
        }
    }

    pub fn get(&self) -> Arc<Vec<Window>> {
        self.windows.lock().expect("maintenance lock").clone()
    }

    /// Adds `w` (an HTTP-made window), in place of one with its handle.
    pub fn add(&self, w: Window) {
        let mut g = self.windows.lock().expect("maintenance lock");
        let mut next: Vec<Window> = g.iter().filter(|o| o.window != w.window).cloned().collect();
        next.push(w);
        *g = Arc::new(next);
    }

    /// Puts `http` in place of the HTTP-made windows (history as another process
    /// left it: the other correlator of a cluster); config windows stay. True when
    /// that changed anything.
    pub fn set_http(&self, http: Vec<Window>) -> bool {
        let mut g = self.windows.lock().expect("maintenance lock");
        let next: Vec<Window> = g
            .iter()
            .filter(|w| w.origin == Origin::Config)
            .cloned()
            .chain(http.into_iter().filter(|w| w.origin == Origin::Http))
            .collect();
        let changed = next.len() != g.len() || next.iter().any(|w| !g.contains(w));
        if changed {
            *g = Arc::new(next);
        }
        changed
    }

    /// Removes the HTTP-made window `handle`; false when there is none (config
    /// windows are changed in the file).
    pub fn remove(&self, handle: &str) -> bool {
        let mut g = self.windows.lock().expect("maintenance lock");
        let before = g.len();
        let next: Vec<Window> = g
            .iter()
            .filter(|w| !(w.window == handle && w.origin == Origin::Http))
            .cloned()
            .collect();
        let removed = next.len() != before;
        *g = Arc::new(next);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_shared::State;

    fn w(scope: Scope, id: &str, from_ms: u64, to_ms: u64) -> Window {
        Window {
            window: format!("config-{from_ms}"),
            scope,
            id: parse_subject(scope, id).unwrap(),
            from_ms,
            to_ms,
            note: None,
            origin: Origin::Config,
        }
    }

    fn verdict(scope: Scope, id: &str, cause: Option<Cause>, provider: Option<&str>) -> Verdict {
        Verdict {
            at_ms: 0,
            scope,
            id: parse_subject(scope, id).unwrap(),
            state: State::Outage,
            cause,
            isp: None,
            provider: provider.map(|p| Id::new(p).unwrap()),
            sites: vec![],
            incident: None,
            recommendation: None,
            maintenance: None,
        }
    }

    #[test]
    fn times_scopes_and_subjects_parse() {
        assert_eq!(
            parse_time("2026-12-01T02:00:00Z").unwrap(),
            1_796_090_400_000
        );
        assert_eq!(
            parse_time("2026-12-01T03:00:00+01:00").unwrap(),
            1_796_090_400_000
        );
        assert!(parse_time("2026-12-01 02:00").is_err());
        assert_eq!(parse_scope("route").unwrap(), Scope::Route);
        assert!(parse_scope("carrier").is_err());
        assert!(parse_subject(Scope::Route, "voipco").is_err());
        assert!(parse_subject(Scope::Provider, "a~b").is_err());
        assert_eq!(
            parse_subject(Scope::Route, "IspA~voipco").unwrap(),
            "IspA~voipco"
        );
        assert!(check_bounds(2, 1).is_err());
    }

    #[test]
    fn a_window_covers_its_subject_and_what_points_at_it() {
        let ws = [
            w(Scope::Provider, "voipco", 1_000, 2_000),
            w(Scope::Provider, "voipco", 1_500, 3_000),
            w(Scope::Isp, "IspA", 1_000, 2_000),
        ];
        assert_eq!(until(&ws, Scope::Provider, "voipco", 999), None);
        assert_eq!(until(&ws, Scope::Provider, "voipco", 1_000), Some(2_000));
        assert_eq!(until(&ws, Scope::Provider, "voipco", 1_600), Some(3_000));
        assert_eq!(until(&ws, Scope::Provider, "voipco", 3_000), None);
        // A site whose cause is the provider in maintenance.
        let site = verdict(
            Scope::Site,
            "acme-hq",
            Some(Cause::Provider),
            Some("voipco"),
        );
        assert_eq!(verdict_until(&ws, &site, 1_200), Some(2_000));
        let lan = verdict(Scope::Site, "acme-hq", Some(Cause::Lan), Some("voipco"));
        assert_eq!(verdict_until(&ws, &lan, 1_200), None);
        // A route through the ISP in maintenance.
        let mut route = verdict(Scope::Route, "IspA~other", None, Some("other"));
        route.isp = Some(Id::new("IspA").unwrap());
        assert_eq!(verdict_until(&ws, &route, 1_200), Some(2_000));
        assert_eq!(verdict_until(&ws, &route, 2_500), None);
    }

    #[test]
    fn marks_change_when_a_window_starts_and_ends() {
        let ws = [w(Scope::Provider, "voipco", 1_000, 2_000)];
        let mut marks = Marks::default();
        let mut v = verdict(Scope::Provider, "voipco", Some(Cause::Provider), None);
        marks.mark(&ws, &mut v, 500);
        assert_eq!(v.maintenance, None);
        assert!(marks.changed(&ws, [&v].into_iter(), 900).is_empty());
        let started = marks.changed(&ws, [&v].into_iter(), 1_000);
        assert_eq!(started.len(), 1);
        assert_eq!(
            started[0].maintenance,
            Some(Maintenance { until_ms: 2_000 })
        );
        let v = started[0].clone();
        assert!(marks.changed(&ws, [&v].into_iter(), 1_500).is_empty());
        let ended = marks.changed(&ws, [&v].into_iter(), 2_000);
        assert_eq!(ended[0].maintenance, None);
        assert!(
            marks
                .changed(&[], [&ended[0]].into_iter(), 2_500)
                .is_empty()
        );
    }

    #[test]
    fn the_book_takes_http_windows_from_history_and_keeps_its_config_ones() {
        let http = |n: u64| Window {
            window: format!("mw-{n}"),
            origin: Origin::Http,
            ..w(Scope::Provider, "voipco", n, n + 10)
        };
        let book = Book::new(vec![w(Scope::Provider, "voipco", 1, 2)]);
        book.add(http(5));
        // History as the other correlator left it: mw-5 deleted, mw-7 added.
        assert!(book.set_http(vec![http(7)]));
        let names: Vec<String> = book.get().iter().map(|w| w.window.clone()).collect();
        assert_eq!(names, ["config-1", "mw-7"]);
        assert!(!book.set_http(vec![http(7)]), "nothing changed");
        // Added here after history was read: once, not twice.
        book.add(http(7));
        assert_eq!(book.get().len(), 2);
    }

    #[test]
    fn outside_cuts_overlapping_windows_out_of_a_period() {
        let ws = [
            w(Scope::Provider, "voipco", 20, 30),
            w(Scope::Provider, "voipco", 25, 40),
            w(Scope::Provider, "voipco", 90, 200),
            w(Scope::Provider, "other", 0, 100),
        ];
        assert_eq!(
            outside(&ws, Scope::Provider, "voipco", 0, 100),
            vec![(0, 20), (40, 90)]
        );
        assert_eq!(outside(&ws, Scope::Provider, "voipco", 30, 35), vec![]);
        assert_eq!(outside(&[], Scope::Provider, "voipco", 5, 9), vec![(5, 9)]);
    }

    #[test]
    fn the_book_removes_only_http_windows() {
        let b = Book::new(vec![w(Scope::Site, "a", 0, 1)]);
        let mut h = w(Scope::Site, "b", 0, 1);
        h.window = "mw-1".into();
        h.origin = Origin::Http;
        b.add(h);
        assert_eq!(b.get().len(), 2);
        assert!(!b.remove("config-0"));
        assert!(b.remove("mw-1"));
        assert_eq!(b.get().len(), 1);
    }
}
