//! What HTTP pages and APIs read: the state the engine's owner publishes after each
//! evaluation ([`crate::engine::Output::Snapshot`]) and the ingest counters it
//! publishes after each batch of messages. Readers take an `Arc` and render after
//! letting go: nothing renders while the engine works, and nothing locks the engine
//! (it has one owner). This module does not render.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use faultline_shared::{Id, Incident, Verdict};

use crate::engine::{Counters, SiteView};

/// The engine's state as of one evaluation.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The engine's evaluation count when this was taken.
    pub evaluations: u64,
    pub window_ms: u64,
    /// Each site's view, shared with the engine until the site next changes.
    pub sites: BTreeMap<Id, Arc<SiteView>>,
    /// Published site verdicts, by site.
    pub site_verdicts: BTreeMap<Id, Verdict>,
    pub providers: Vec<Verdict>,
    pub isps: Vec<Verdict>,
    pub routes: Vec<Verdict>,
    pub open_incidents: Vec<Incident>,
}

impl Snapshot {
    pub fn sites(&self) -> &BTreeMap<Id, Arc<SiteView>> {
        &self.sites
    }

    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.open_incidents.iter()
    }

    /// Every published verdict: providers, ISPs, routes, then sites (the engine's order).
    pub fn verdicts(&self) -> impl Iterator<Item = &Verdict> {
        self.providers
            .iter()
            .chain(&self.isps)
            .chain(&self.routes)
            .chain(self.site_verdicts.values())
    }
}

/// The latest snapshot and counters, set by the engine's owner.
#[derive(Debug, Default)]
pub struct SnapshotCell {
    latest: Mutex<Arc<Snapshot>>,
    counters: Mutex<Counters>,
}

impl SnapshotCell {
    /// The latest snapshot and the counters as of the last batch of messages.
    pub fn get(&self) -> (Arc<Snapshot>, Counters) {
        let s = self.latest.lock().expect("snapshot lock").clone();
        let c = self.counters.lock().expect("counters lock").clone();
        (s, c)
    }

    pub fn set(&self, s: Arc<Snapshot>) {
        *self.latest.lock().expect("snapshot lock") = s;
    }

    pub fn set_counters(&self, c: Counters) {
        *self.counters.lock().expect("counters lock") = c;
    }
}
