//! History: incidents, verdict changes, the verdicts in force (restored after a
//! restart), per-window summaries with retention and hourly downsampling, and every
//! boot's counted windows (`boots`), so de-dup survives a restart.
//!
//! Two backends keep the same tables: SQLite ([`sqlite`], one node, the default) and
//! PostgreSQL ([`postgres`], shared by a cluster's collectors). Their SQL lives in
//! their own files behind [`Backend`]; what does not depend on the dialect (the
//! writer's record of each boot's stored seqs, chart sums, roll-up arithmetic,
//! coverage) lives here, once.
//!
//! A window is stored at most once: `windows` is unique on (site, boot, seq), and
//! the writer also checks each boot's record of stored seqs, which outlives the raw
//! rows (they are downsampled after `raw_days`). That record is written in the same
//! transaction as the rows, so after a crash it says exactly what was committed.
//!
//! [`Store`] is synchronous (rusqlite, or the blocking `postgres` client, which runs
//! its own small runtime: never call it on a tokio worker thread). `run` owns one on
//! a writer thread fed by a channel, so a slow disk never stalls ingest; pages read
//! through another inside `spawn_blocking`. Commits are durable: `run` acknowledges a
//! report to the broker only after its commit.

pub mod postgres;
pub mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use faultline_shared::{Id, Incident, IncidentEvent, State, Verdict};

use crate::config::StorageLocation;
use crate::engine::Restored;
use crate::engine::boots::{BootMeta, BootSeen, SeqSet};

/// One site's window as kept in history (judged by the engine's own rules).
pub use crate::engine::WindowRow;

/// Boots whose stored seqs the writer keeps in memory before it starts over (each
/// is read back from `boots` when next needed).
const BOOT_CACHE: usize = 50_000;
/// (site, provider) pairs whose `site_providers` write the writer remembers before it
/// starts over (forgetting only costs a write): a site naming new providers in every
/// report cannot grow it without bound.
const PROVIDER_CACHE: usize = 200_000;

const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;
/// Chart points are kept per site and minute of arrival (`target_minutes`): a
/// window's ten targets would otherwise be ten more rows (or a blob) on the
/// acknowledgement's critical path for every report; a minute's sums are one row
/// per site, rewritten at each commit while the minute is current.
const MINUTE_MS: u64 = 60_000;
/// A window's length when history does not say (rows from before schema 2).
pub const DEFAULT_WINDOW_MS: u64 = 10_000;

/// States from least to most severe, as SQL (an incident keeps its worst); the same
/// text in both dialects.
const SEVERITY: &str = "CASE {} WHEN 'outage' THEN 4 WHEN 'down' THEN 3 WHEN 'offline' THEN 2 \
                        WHEN 'degraded' THEN 1 ELSE 0 END";

fn severity(col: &str) -> String {
    SEVERITY.replace("{}", col)
}

/// A history value as SQL's signed 64-bit integer (saturating).
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A SQL integer read back as a history value (a negative one, never written, as 0).
fn u(v: i64) -> u64 {
    v.max(0) as u64
}

/// What one backend does in its own SQL. The writer calls the write half inside
/// `begin`..`commit`; `&self` methods are the reads pages and `report` make.
pub trait Backend: Send + std::fmt::Debug {
    fn begin(&mut self) -> anyhow::Result<()>;
    fn commit(&mut self) -> anyhow::Result<()>;
    /// Abandons the open transaction (errors ignored: the connection may be gone).
    fn rollback(&mut self);
    fn boot(&mut self, site: &Id, m: &BootMeta) -> anyhow::Result<()>;
    /// A boot's stored seqs (as [`SeqSet`] text) and when it was last heard.
    fn boot_seqs(&mut self, site: &Id, boot: u32) -> anyhow::Result<Option<(String, u64)>>;
    /// Records a boot's stored seqs (every seq committed, by anyone, stays recorded).
    fn save_boot_seqs(
        &mut self,
        site: &Id,
        boot: u32,
        seqs: &SeqSet,
        last_ms: u64,
    ) -> anyhow::Result<()>;
    fn verdict(&mut self, v: &Verdict, json: &str) -> anyhow::Result<()>;
    fn forget_verdict(&mut self, v: &Verdict) -> anyhow::Result<()>;
    fn incident(&mut self, inc: &Incident, json: &str) -> anyhow::Result<()>;
    /// Raises the restored incident counter to at least `n`.
    fn next_incident(&mut self, n: i64) -> anyhow::Result<()>;
    fn site(&mut self, site: &Id, isp: Option<&Id>, customer: Option<&str>) -> anyhow::Result<()>;
    /// Inserts a window row unless (site, boot, seq) is stored: whether it was new.
    fn insert_window(&mut self, w: &WindowRow) -> anyhow::Result<bool>;
    /// [`Backend::insert_window`] for each row, in one go where the backend can (a
    /// round trip per row is what a network database cannot afford).
    fn insert_windows(&mut self, rows: &[&WindowRow]) -> anyhow::Result<Vec<bool>> {
        rows.iter().map(|w| self.insert_window(w)).collect()
    }
    fn site_target(
        &mut self,
        site: &Id,
        t: &crate::engine::TargetPoint,
        at_ms: u64,
    ) -> anyhow::Result<()>;
    fn site_provider(&mut self, site: &Id, provider: &Id, at_ms: u64) -> anyhow::Result<()>;
    /// Adds a minute's chart sums to the stored ones (see [`merge_sums`]).
    fn merge_minute(
        &mut self,
        site: &Id,
        minute_ms: u64,
        sums: Vec<PointSum>,
    ) -> anyhow::Result<()>;
    /// [`Backend::merge_minute`] for each (site, minute), given in one order for every
    /// writer; in one go where the backend can.
    fn merge_minutes(&mut self, minutes: Vec<((Id, u64), Vec<PointSum>)>) -> anyhow::Result<()> {
        for ((site, minute), sums) in minutes {
            self.merge_minute(&site, minute, sums)?;
        }
        Ok(())
    }
    /// [`Backend::save_boot_seqs`] for each boot, given in one order for every
    /// writer; in one go where the backend can.
    fn save_boots(&mut self, boots: &[(&Id, u32, &SeqSet, u64)]) -> anyhow::Result<()> {
        for &(site, boot, seqs, last_ms) in boots {
            self.save_boot_seqs(site, boot, seqs, last_ms)?;
        }
        Ok(())
    }
    /// Downsampling and retention in one transaction (see [`Store::maintain`]).
    fn maintain(&mut self, cuts: &Cuts) -> anyhow::Result<()>;

    /// What the engine needs to carry on after a restart at `now_ms`: verdicts,
    /// incidents, sites, and the boots the engine remembers (heard from within
    /// [`crate::engine::boots::FORGET_AFTER_MS`], and each site's live one) with
    /// their stored seqs.
    fn restore(&self, now_ms: u64) -> anyhow::Result<Restored>;
    /// Incidents of `scope` (any, when `None`) overlapping [from, to), newest first,
    /// each with the worst state it reached.
    fn incidents_worst(
        &self,
        scope: Option<&str>,
        from_ms: u64,
        to_ms: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<(Incident, State)>>;
    /// One incident and its worst state.
    fn incident_by_id(&self, id: &str) -> anyhow::Result<Option<(Incident, State)>>;
    /// The most recent verdict changes, newest first.
    fn recent_changes(&self, limit: u32) -> anyhow::Result<Vec<Verdict>>;
    /// Verdict changes of `scope`/`id` (any id when `None`) in [from, to], oldest first.
    fn changes(
        &self,
        scope: &str,
        id: Option<&str>,
        from_ms: u64,
        to_ms: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<Verdict>>;
    /// Sites that probed `provider` in [from, to), each with the span it was seen.
    fn provider_sites(
        &self,
        provider: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> anyhow::Result<Vec<(String, u64, u64)>>;
    /// Every provider seen in history or with an incident.
    fn providers(&self) -> anyhow::Result<Vec<String>>;
    /// Whether history knows `site` (its identity or any window of it).
    fn site_known(&self, site: &str) -> anyhow::Result<bool>;
    /// A site's ISP and customer as history knows them.
    fn site_identity(&self, site: &str)
    -> anyhow::Result<Option<(Option<String>, Option<String>)>>;
    /// Every target history has seen at `site`: (target, layer, provider), by name.
    fn site_targets(&self, site: &str) -> anyhow::Result<Vec<(String, String, Option<String>)>>;
    /// A target's hourly rows (at the hour's middle) and the minute rows holding it,
    /// as (minute, sums blob), overlapping [from, to).
    fn series_rows(
        &self,
        site: &str,
        target: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> anyhow::Result<(Vec<SeriesRow>, MinuteBlobs)>;
    /// What history holds of `site` being watched in [from, to): its raw windows as
    /// (received, length) and its hourly rows as (hour, time watched in it).
    fn coverage(&self, site: &str, from_ms: u64, to_ms: u64) -> anyhow::Result<Coverage>;
    /// When history's latest window arrived (any site; hourly rows count to their
    /// hour's end), not after `to_ms`: where the collector's evidence ends.
    fn evidence_end(&self, to_ms: u64) -> anyhow::Result<Option<u64>>;
    /// Rows in one of history's tables (for tests and checks).
    fn count(&self, table: &str) -> anyhow::Result<i64>;
    /// Keeps an HTTP-made maintenance window (its JSON), replacing one of that name.
    fn save_maintenance(&mut self, window: &str, to_ms: u64, json: &str) -> anyhow::Result<()>;
    /// Forgets a maintenance window; whether there was one.
    fn delete_maintenance(&mut self, window: &str) -> anyhow::Result<bool>;
    /// Every kept maintenance window's JSON.
    fn maintenance_json(&self) -> anyhow::Result<Vec<String>>;
}

/// Minute rows as (minute, chart sums blob).
pub type MinuteBlobs = Vec<(u64, Vec<u8>)>;

/// Where maintenance cuts, in epoch milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Cuts {
    /// Raw windows and minute sums before this hour are rolled up, then dropped.
    pub raw: i64,
    /// Hourly rows (and boots last heard) before this are dropped.
    pub hourly: i64,
    /// Closed incidents and verdict changes before this are dropped.
    pub incidents: i64,
}

/// History: the writer's half (`begin`, `window`, ..., `commit`) here; the reads
/// pages and `report` make are the backend's `&self` methods, reached through
/// `Deref` (the writer's caches never change what a read returns).
#[derive(Debug)]
pub struct Store {
    db: Box<dyn Backend>,
    /// (site, provider) → when `site_providers` was last advanced: written at most
    /// once a minute per pair.
    seen_providers: HashMap<(Id, Id), u64>,
    /// Site → when its targets in `site_targets` were last advanced, and which:
    /// all of a window's targets at once, once a minute per site or when one is new.
    seen_targets: HashMap<Id, (u64, Vec<Id>)>,
    /// Chart points being summed: (site, minute) → each target's sums, written
    /// (merged into `target_minutes`) at each commit.
    minutes: HashMap<(Id, u64), Vec<PointSum>>,
    /// Site → boot → the seqs stored (committed, or in the open transaction).
    boots: HashMap<Id, HashMap<u32, StoredBoot>>,
    /// Boots whose seqs changed in the open transaction.
    dirty: Vec<(Id, u32)>,
}

/// One boot's stored seqs as the writer knows them.
#[derive(Debug, Default)]
struct StoredBoot {
    seqs: SeqSet,
    last_ms: u64,
    dirty: bool,
}

impl Store {
    /// A SQLite history file (created, or migrated from an earlier schema).
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        Ok(Self::with(Box::new(sqlite::Sqlite::open(path)?)))
    }

    /// The history `[storage]` names. With PostgreSQL this connects (blocking: call it
    /// off the async workers).
    pub fn connect(location: &StorageLocation) -> anyhow::Result<Store> {
        match location {
            StorageLocation::Sqlite(path) => Self::open(path),
            StorageLocation::Postgres(pg) => {
                Ok(Self::with(Box::new(postgres::Postgres::connect(pg)?)))
            }
        }
    }

    fn with(db: Box<dyn Backend>) -> Store {
        Store {
            db,
            seen_providers: HashMap::new(),
            seen_targets: HashMap::new(),
            minutes: HashMap::new(),
            boots: HashMap::new(),
            dirty: Vec::new(),
        }
    }

    pub fn begin(&mut self) -> anyhow::Result<()> {
        self.db.begin()
    }

    /// Merges the chart sums and writes the boots whose seqs changed, then commits.
    pub fn commit(&mut self) -> anyhow::Result<()> {
        let mut minutes: Vec<_> = self.minutes.drain().collect();
        // One order for every writer: concurrent transactions lock rows alike.
        minutes.sort_by(|a, b| a.0.cmp(&b.0));
        self.db.merge_minutes(minutes)?;
        self.dirty.sort();
        let boots: Vec<_> = self
            .dirty
            .iter()
            .filter_map(|(site, boot)| {
                let b = self.boots.get(site)?.get(boot)?;
                Some((site, *boot, &b.seqs, b.last_ms))
            })
            .collect();
        self.db.save_boots(&boots)?;
        self.db.commit()?;
        for (site, boot) in self.dirty.drain(..) {
            if let Some(b) = self.boots.get_mut(&site).and_then(|m| m.get_mut(&boot)) {
                b.dirty = false;
            }
        }
        if self.boots.values().map(HashMap::len).sum::<usize>() > BOOT_CACHE {
            self.boots.clear();
        }
        if self.seen_providers.len() > PROVIDER_CACHE {
            self.seen_providers.clear();
        }
        Ok(())
    }

    /// Forgets what this writer cached of `sites` (outside a transaction): another
    /// writer may store their windows now, and the boots read next come from history.
    pub fn forget_sites(&mut self, sites: &[Id]) {
        for s in sites {
            self.boots.remove(s);
            self.seen_targets.remove(s);
        }
        self.seen_providers.retain(|(s, _), _| !sites.contains(s));
    }

    /// Abandons the open transaction (after a failed write), and with it what the
    /// writer believed stored in it.
    pub fn rollback(&mut self) {
        self.db.rollback();
        self.boots.clear();
        self.dirty.clear();
        self.seen_providers.clear();
        self.seen_targets.clear();
        self.minutes.clear();
    }

    /// What history keeps of a boot beside its seqs (from the engine).
    pub fn boot(&mut self, site: &Id, m: &BootMeta) -> anyhow::Result<()> {
        self.db.boot(site, m)
    }

    /// The writer's record of a boot's stored seqs, read from `boots` when not cached.
    fn stored_boot(&mut self, site: &Id, boot: u32) -> anyhow::Result<&mut StoredBoot> {
        if !self.boots.get(site).is_some_and(|m| m.contains_key(&boot)) {
            let b = match self.db.boot_seqs(site, boot)? {
                Some((text, last_ms)) => StoredBoot {
                    seqs: SeqSet::parse(&text).unwrap_or_else(|e| {
                        tracing::error!(site = %site, boot, "history: {e}; starting it over");
                        SeqSet::new()
                    }),
                    last_ms,
                    dirty: false,
                },
                None => StoredBoot::default(),
            };
            self.boots.entry(site.clone()).or_default().insert(boot, b);
        }
        // Present: inserted just above when it was missing.
        Ok(self
            .boots
            .get_mut(site)
            .and_then(|m| m.get_mut(&boot))
            .unwrap())
    }

    pub fn verdict(&mut self, v: &Verdict) -> anyhow::Result<()> {
        let json = serde_json::to_string(v)?;
        self.db.verdict(v, &json)
    }

    /// Drops a verdict no longer tracked from the current verdicts (its changes stay).
    pub fn forget_verdict(&mut self, v: &Verdict) -> anyhow::Result<()> {
        self.db.forget_verdict(v)
    }

    pub fn incident(&mut self, ev: &IncidentEvent) -> anyhow::Result<()> {
        let inc = &ev.incident;
        let json = serde_json::to_string(inc)?;
        self.db.incident(inc, &json)?;
        if let Some(n) = inc
            .id
            .strip_prefix("inc-")
            .and_then(|n| n.parse::<i64>().ok())
        {
            self.db.next_incident(n)?;
        }
        Ok(())
    }

    pub fn site(
        &mut self,
        site: &Id,
        isp: Option<&Id>,
        customer: Option<&str>,
    ) -> anyhow::Result<()> {
        self.db.site(site, isp, customer)
    }

    /// Stores one window unless (site, boot, seq) is stored already: whether it was
    /// new (see [`Store::windows`]).
    pub fn window(&mut self, w: &WindowRow) -> anyhow::Result<bool> {
        Ok(self.windows(&[w])?.0 == 1)
    }

    /// Stores a batch's windows, each unless (site, boot, seq) is stored already
    /// (by this writer, in this batch, or by another writer): how many were new and
    /// how many were refused. New rows go to the database in one statement where
    /// the backend can; only rows the database took count toward the charts.
    pub fn windows(&mut self, rows: &[&WindowRow]) -> anyhow::Result<(u64, u64)> {
        let mut fresh = Vec::with_capacity(rows.len());
        for &w in rows {
            let b = self.stored_boot(&w.site, w.boot)?;
            if b.seqs.contains(w.seq) {
                continue;
            }
            // No run limit here: history records whatever the engine let through.
            let _ = b.seqs.insert(w.seq, usize::MAX);
            b.last_ms = b.last_ms.max(w.recv_ms);
            let newly_dirty = !b.dirty;
            b.dirty = true;
            if newly_dirty {
                self.dirty.push((w.site.clone(), w.boot));
            }
            fresh.push(w);
        }
        let inserted = self.db.insert_windows(&fresh)?;
        let mut stored = 0;
        for (w, _) in fresh.iter().zip(inserted).filter(|(_, new)| *new) {
            stored += 1;
            self.charted(w)?;
        }
        Ok((stored, rows.len() as u64 - stored))
    }

    /// A stored window's chart points, targets and providers.
    fn charted(&mut self, w: &WindowRow) -> anyhow::Result<()> {
        // Chart points: summed per site and minute of arrival.
        let sums = self
            .minutes
            .entry((w.site.clone(), w.recv_ms / MINUTE_MS * MINUTE_MS))
            .or_default();
        for (k, t) in w.targets.iter().enumerate() {
            // Reports list their targets in the same order: try the same place first.
            let at = match sums.get(k) {
                Some(s) if s.target == t.target => Some(k),
                _ => sums.iter().position(|s| s.target == t.target),
            };
            match at.map(|k| &mut sums[k]) {
                Some(s) => s.add(t),
                None => {
                    let mut s = PointSum::new(&t.target);
                    s.add(t);
                    sums.push(s);
                }
            }
        }
        // Once a minute, and at once for a target the site did not measure in the
        // last window written (a new central target shows on the site's page).
        let names = || w.targets.iter().map(|t| t.target.clone()).collect();
        let due = match self.seen_targets.get_mut(&w.site) {
            Some((last, known))
                if w.recv_ms < last.saturating_add(60_000)
                    && w.targets.iter().enumerate().all(|(i, t)| {
                        // In the same order as last time, as reports list them: one
                        // comparison a target on the history writer's hot path.
                        known.get(i) == Some(&t.target) || known.contains(&t.target)
                    }) =>
            {
                false
            }
            Some(seen) => {
                *seen = (w.recv_ms, names());
                true
            }
            None => {
                self.seen_targets
                    .insert(w.site.clone(), (w.recv_ms, names()));
                true
            }
        };
        for t in w.targets.iter().filter(|_| due) {
            self.db.site_target(&w.site, t, w.recv_ms)?;
        }
        for p in &w.providers {
            let key = (w.site.clone(), p.clone());
            match self.seen_providers.get_mut(&key) {
                Some(last) if w.recv_ms < last.saturating_add(60_000) => continue,
                Some(last) => *last = w.recv_ms,
                None => {
                    self.seen_providers.insert(key, w.recv_ms);
                }
            }
            self.db.site_provider(&w.site, p, w.recv_ms)?;
        }
        Ok(())
    }

    /// Downsamples windows older than `raw_days` into hourly rows, then drops what
    /// is past retention.
    pub fn maintain(
        &mut self,
        now_ms: u64,
        raw_days: u32,
        hourly_days: u32,
        incident_days: u32,
    ) -> anyhow::Result<()> {
        let cuts = Cuts {
            raw: i(now_ms.saturating_sub(u64::from(raw_days) * DAY_MS) / HOUR_MS * HOUR_MS),
            hourly: i(now_ms.saturating_sub(u64::from(hourly_days) * DAY_MS)),
            incidents: i(now_ms.saturating_sub(u64::from(incident_days) * DAY_MS)),
        };
        self.db.maintain(&cuts)?;
        self.boots.clear();
        Ok(())
    }

    /// Incidents of `scope` (any, when `None`) overlapping [from, to), newest first.
    pub fn incidents(
        &self,
        scope: Option<&str>,
        from_ms: u64,
        to_ms: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<Incident>> {
        let rows = self.db.incidents_worst(scope, from_ms, to_ms, limit)?;
        Ok(rows.into_iter().map(|(inc, _)| inc).collect())
    }

    /// One target's values at `site` in [from, to), oldest first: minute averages,
    /// and hourly averages where minutes were downsampled.
    pub fn series(
        &self,
        site: &str,
        target: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> anyhow::Result<Vec<SeriesRow>> {
        let (mut out, minutes) = self.db.series_rows(site, target, from_ms, to_ms)?;
        // Minutes: each row's sums, this target's picked out, at the minute's middle.
        for (minute, blob) in minutes {
            if let Some(p) = decode_sums(&blob).into_iter().find(|p| p.target == target) {
                out.push(p.point(minute + MINUTE_MS / 2));
            }
        }
        out.retain(|r| r.at_ms >= from_ms && r.at_ms < to_ms);
        out.sort_by_key(|r| r.at_ms);
        Ok(out)
    }

    /// Rows in one of history's tables.
    pub fn count(&self, table: &str) -> anyhow::Result<i64> {
        anyhow::ensure!(
            table.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "not a table name: {table:?}"
        );
        self.db.count(table)
    }
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.db
    }
}

/// A state by its name.
impl Store {
    /// Keeps an HTTP-made maintenance window across restarts (outside the writer's
    /// transactions: its own statement, committed at once).
    pub fn save_maintenance(&mut self, w: &crate::maintenance::Window) -> anyhow::Result<()> {
        self.db
            .save_maintenance(&w.window, w.to_ms, &serde_json::to_string(w)?)
    }

    /// Forgets an HTTP-made maintenance window; whether there was one.
    pub fn delete_maintenance(&mut self, window: &str) -> anyhow::Result<bool> {
        self.db.delete_maintenance(window)
    }

    /// The HTTP-made maintenance windows kept (rows that no longer parse are skipped).
    pub fn maintenance(&self) -> anyhow::Result<Vec<crate::maintenance::Window>> {
        Ok(self
            .db
            .maintenance_json()?
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }
}

fn state_named(s: &str) -> Option<State> {
    [
        State::Ok,
        State::Degraded,
        State::Down,
        State::Offline,
        State::Outage,
    ]
    .into_iter()
    .find(|x| x.as_str() == s)
}

/// An incident row (its JSON and worst state's name) as pages read it.
fn incident_worst(json: &str, worst: &str) -> anyhow::Result<(Incident, State)> {
    let inc: Incident = serde_json::from_str(json)?;
    let worst = state_named(worst).unwrap_or(inc.state);
    Ok((inc, worst))
}

/// Parses each row's JSON document.
fn parse_json<T: serde::de::DeserializeOwned>(
    rows: impl IntoIterator<Item = String>,
) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::new();
    for r in rows {
        out.push(serde_json::from_str(&r)?);
    }
    Ok(out)
}

/// One `boots` row as the engine restores it (`None`: a site id no longer valid).
#[allow(clippy::too_many_arguments)]
fn boot_seen(
    site: String,
    boot: u32,
    ordinal: i64,
    announced: bool,
    floor: Option<i64>,
    seqs: &str,
    last_ms: i64,
) -> anyhow::Result<Option<(Id, BootSeen)>> {
    use anyhow::Context;
    let Ok(site) = Id::new(site) else {
        return Ok(None);
    };
    let seqs = SeqSet::parse(seqs).with_context(|| format!("boots: {site} {boot}"))?;
    let meta = BootMeta {
        boot,
        ordinal: u(ordinal),
        announced,
        floor: floor.map(u),
        last_ms: u(last_ms),
    };
    Ok(Some((site, BootSeen { meta, seqs })))
}

/// A `sites` row as the engine restores it (`None`: an id no longer valid).
fn site_row(
    site: String,
    isp: Option<String>,
    customer: Option<String>,
) -> Option<(Id, Option<Id>, Option<String>)> {
    let site = Id::new(site).ok()?;
    Some((site, isp.and_then(|i| Id::new(i).ok()), customer))
}

/// One point of a target's series: a raw window (`windows` = 1) or an hourly average.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeriesRow {
    pub at_ms: u64,
    pub windows: u64,
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p95_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub loss: f64,
    pub mos: Option<f64>,
}

/// One target's sums over the windows of a minute (or an hour): postcard, in
/// `target_minutes.targets`. Means are sums over counts (a value may be absent).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PointSum {
    target: Id,
    n: u64,
    p50: (f64, u64),
    p95: (f64, u64),
    jitter: (f64, u64),
    loss: f64,
    mos: (f64, u64),
}

impl PointSum {
    fn new(target: &Id) -> Self {
        Self {
            target: target.clone(),
            n: 0,
            p50: (0.0, 0),
            p95: (0.0, 0),
            jitter: (0.0, 0),
            loss: 0.0,
            mos: (0.0, 0),
        }
    }

    fn add(&mut self, p: &crate::engine::TargetPoint) {
        let add = |acc: &mut (f64, u64), v: Option<f32>| {
            if let Some(v) = v {
                acc.0 += f64::from(v);
                acc.1 += 1;
            }
        };
        self.n += 1;
        add(&mut self.p50, p.rtt_p50_ms);
        add(&mut self.p95, p.rtt_p95_ms);
        add(&mut self.jitter, p.jitter_ms);
        add(&mut self.mos, p.mos);
        self.loss += f64::from(p.loss);
    }

    fn merge(&mut self, o: &PointSum) {
        let m = |a: &mut (f64, u64), b: (f64, u64)| {
            a.0 += b.0;
            a.1 += b.1;
        };
        self.n += o.n;
        m(&mut self.p50, o.p50);
        m(&mut self.p95, o.p95);
        m(&mut self.jitter, o.jitter);
        m(&mut self.mos, o.mos);
        self.loss += o.loss;
    }

    /// The averages, as one series point at `at_ms`.
    fn point(&self, at_ms: u64) -> SeriesRow {
        let avg = |(s, c): (f64, u64)| (c > 0).then(|| s / c as f64);
        SeriesRow {
            at_ms,
            windows: self.n,
            rtt_p50_ms: avg(self.p50),
            rtt_p95_ms: avg(self.p95),
            jitter_ms: avg(self.jitter),
            loss: self.loss / (self.n.max(1) as f64),
            mos: avg(self.mos),
        }
    }
}

fn encode_sums(sums: &[PointSum]) -> Vec<u8> {
    // Plain data into a Vec: cannot fail.
    postcard::to_allocvec(sums).unwrap_or_default()
}

/// A row's sums; a damaged blob reads as none (a chart gap, not an error).
fn decode_sums(blob: &[u8]) -> Vec<PointSum> {
    postcard::from_bytes(blob).unwrap_or_default()
}

/// A stored minute's blob (if any) with `sums` added, target by target.
fn merge_sums(stored: Option<&[u8]>, sums: Vec<PointSum>) -> Vec<u8> {
    let mut merged = stored.map(decode_sums).unwrap_or_default();
    for s in sums {
        match merged.iter_mut().find(|m| m.target == s.target) {
            Some(m) => m.merge(&s),
            None => merged.push(s),
        }
    }
    encode_sums(&merged)
}

/// Minute rows (site, minute, blob) summed per (site, target, hour): what
/// maintenance adds to `target_hourly`, as each hour's averages.
#[derive(Debug, Default)]
struct HourSums(BTreeMap<(String, Id, i64), PointSum>);

impl HourSums {
    fn add_minute(&mut self, site: &str, minute_ms: i64, blob: &[u8]) {
        let hour = minute_ms / i(HOUR_MS) * i(HOUR_MS);
        for p in decode_sums(blob) {
            self.0
                .entry((site.to_owned(), p.target.clone(), hour))
                .or_insert_with(|| PointSum::new(&p.target))
                .merge(&p);
        }
    }

    /// (site, target, hour, its averages) for each hour summed.
    fn hours(&self) -> impl Iterator<Item = (&str, &str, i64, SeriesRow)> {
        self.0.iter().map(|((site, target, hour), sum)| {
            (site.as_str(), target.as_str(), *hour, sum.point(u(*hour)))
        })
    }
}

/// When one site was being watched: the spans its windows covered (merged), and
/// hours known only from hourly rows with the share of each that was watched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Coverage {
    /// Disjoint, sorted [from, to) spans.
    spans: Vec<(u64, u64)>,
    /// (hour start, share of the hour watched in 0..=1).
    hours: Vec<(u64, f64)>,
}

impl Coverage {
    /// Adds the span [from, to) one window covered (windows in time order). A gap
    /// shorter than half a window before it (a report arriving a little late) is
    /// not a gap.
    pub fn add_window(&mut self, from: u64, to: u64) {
        if to <= from {
            return;
        }
        match self.spans.last_mut() {
            Some(last) if from <= last.1 + (to - from) / 2 => last.1 = last.1.max(to),
            _ => self.spans.push((from, to)),
        }
    }

    /// Adds a window row read back: received at `recv_ms`, `window_ms` long.
    fn add_row(&mut self, recv_ms: i64, window_ms: i64) {
        let recv = u(recv_ms);
        self.add_window(recv.saturating_sub(u(window_ms)), recv);
    }

    /// Adds an hour that hourly rows say was watched for `watched_ms`.
    pub fn add_hour(&mut self, hour_ms: u64, watched_ms: u64) {
        let share = (watched_ms as f64 / HOUR_MS as f64).clamp(0.0, 1.0);
        self.hours.push((hour_ms, share));
    }

    /// Milliseconds watched within [from, to) (hourly rows count pro rata).
    pub fn watched(&self, from: u64, to: u64) -> u64 {
        let overlap = |a: u64, b: u64| b.min(to).saturating_sub(a.max(from));
        let raw: u64 = self.spans.iter().map(|&(a, b)| overlap(a, b)).sum();
        let hourly: f64 = self
            .hours
            .iter()
            .map(|&(h, share)| overlap(h, h + HOUR_MS) as f64 * share)
            .sum();
        raw + hourly.round() as u64
    }

    /// The end of the last span or hour watched.
    pub fn last_ms(&self) -> Option<u64> {
        let a = self.spans.last().map(|s| s.1);
        let b = self.hours.iter().map(|h| h.0 + HOUR_MS).max();
        a.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_merges_windows_and_counts_hourly_rows_pro_rata() {
        let mut c = Coverage::default();
        c.add_window(0, 10_000);
        c.add_window(10_004, 20_004); // 4 ms late: no gap
        c.add_window(40_000, 50_000); // 20 s of silence before it
        assert_eq!(c.watched(0, 100_000), 30_004);
        assert_eq!(c.watched(15_000, 45_000), 10_004);
        c.add_hour(HOUR_MS, HOUR_MS / 2);
        assert_eq!(c.watched(HOUR_MS, 2 * HOUR_MS), HOUR_MS / 2);
        assert_eq!(c.watched(HOUR_MS, HOUR_MS + 600_000), 300_000);
        assert_eq!(c.last_ms(), Some(2 * HOUR_MS));
    }
}
