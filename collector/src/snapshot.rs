//! What HTTP pages and APIs read: a copy of the engine's state taken once per
//! evaluation, so no page renders while holding the engine's lock.
//!
//! The first request after an evaluation copies the state under the lock (a clone of
//! the per-site tracks, verdicts and incidents: no formatting); every request until
//! the next evaluation reuses that copy. Rendering JSON or Prometheus text happens
//! after the lock is released. Ingest counters are cheap and change with every
//! message, so they are copied fresh on each request. This module does not render.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use faultline_shared::{Id, Incident, Verdict};

use crate::engine::{Counters, Engine, SiteTrack};

/// The engine's state as of one evaluation.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The engine's evaluation count when this was taken.
    pub evaluations: u64,
    pub window_ms: u64,
    pub sites: BTreeMap<Id, SiteTrack>,
    /// Published site verdicts, by site.
    pub site_verdicts: BTreeMap<Id, Verdict>,
    pub providers: Vec<Verdict>,
    pub isps: Vec<Verdict>,
    pub open_incidents: Vec<Incident>,
}

impl Snapshot {
    /// Copies what pages need from `e` (called with the engine's lock held: no
    /// formatting here).
    pub fn take(e: &Engine) -> Self {
        let fleet = e.fleet();
        let published = |m: &BTreeMap<Id, crate::engine::Track>| {
            m.values()
                .filter_map(|t| t.published.clone())
                .collect::<Vec<_>>()
        };
        Self {
            evaluations: e.counters().evaluations,
            window_ms: e.config().window_ms,
            sites: e.sites().clone(),
            site_verdicts: fleet
                .sites
                .iter()
                .filter_map(|(id, t)| Some((id.clone(), t.published.clone()?)))
                .collect(),
            providers: published(&fleet.providers),
            isps: published(&fleet.isps),
            open_incidents: e.open_incidents().cloned().collect(),
        }
    }

    pub fn sites(&self) -> &BTreeMap<Id, SiteTrack> {
        &self.sites
    }

    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.open_incidents.iter()
    }

    /// Every published verdict: providers, ISPs, then sites (the engine's order).
    pub fn verdicts(&self) -> impl Iterator<Item = &Verdict> {
        self.providers
            .iter()
            .chain(&self.isps)
            .chain(self.site_verdicts.values())
    }
}

/// The latest snapshot, replaced after each evaluation on first use.
#[derive(Debug, Default)]
pub struct SnapshotCell {
    latest: Mutex<Option<Arc<Snapshot>>>,
}

impl SnapshotCell {
    /// The snapshot of the latest evaluation and the current ingest counters. Holds
    /// the engine's lock only to compare the evaluation count and copy the counters
    /// (and, once per evaluation, to copy the state).
    pub fn get(&self, engine: &Mutex<Engine>) -> (Arc<Snapshot>, Counters) {
        // One request at a time refreshes; the others wait for its copy rather than
        // each taking their own.
        let mut latest = self.latest.lock().expect("snapshot lock");
        let e = engine.lock().expect("engine lock");
        let mut counters = e.counters().clone();
        // A gauge that falls when a backlog fills a hole: read fresh, like the counters.
        counters.missing_windows = e.missing_windows();
        match latest.as_ref() {
            Some(s) if s.evaluations == counters.evaluations => (s.clone(), counters),
            _ => {
                let s = Arc::new(Snapshot::take(&e));
                drop(e);
                *latest = Some(s.clone());
                (s, counters)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use faultline_shared::Topics;

    fn report(site: &str, seq: u64) -> Vec<u8> {
        format!(
            r#"{{"v":1,"site":"{site}","boot":1,"seq":{seq},"start_ms":0,"window_ms":10000,
            "probes":[{{"target":"gw","layer":"lan","kind":"icmp","sent":4,"received":4}}]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn one_copy_per_evaluation_with_fresh_counters() {
        let topics = Topics::default();
        let engine = Mutex::new(Engine::new(EngineConfig::default()));
        let cell = SnapshotCell::default();
        let (a, c) = cell.get(&engine);
        assert!(a.sites().is_empty());
        assert_eq!(c.reports, 0);

        let t = topics.report_json(&Id::new("acme-hq").unwrap());
        engine
            .lock()
            .unwrap()
            .ingest(&topics, 1_000, &t, &report("acme-hq", 0), false)
            .unwrap();
        // No evaluation yet: the same copy, but the counters moved.
        let (b, c) = cell.get(&engine);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(b.sites().is_empty());
        assert_eq!(c.reports, 1);

        {
            // The first tick schedules the next boundary; the second evaluates it.
            let mut e = engine.lock().unwrap();
            let _ = e.tick(2_000);
            let _ = e.tick(12_000);
        }
        let (d, c) = cell.get(&engine);
        assert!(!Arc::ptr_eq(&a, &d));
        assert_eq!(d.evaluations, c.evaluations);
        assert!(d.evaluations > 0);
        assert!(d.sites().contains_key(&Id::new("acme-hq").unwrap()));
        let (e, _) = cell.get(&engine);
        assert!(Arc::ptr_eq(&d, &e));
    }
}
