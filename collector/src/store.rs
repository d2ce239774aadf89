//! History in SQLite: incidents, verdict changes, the verdicts in force (restored
//! after a restart), per-window summaries with retention and hourly downsampling,
//! and every boot's counted windows (`boots`), so de-dup survives a restart.
//!
//! A window is stored at most once: `windows` is unique on (site, boot, seq), and
//! the writer also checks each boot's record of stored seqs, which outlives the raw
//! rows (they are downsampled after `raw_days`). That record is written in the same
//! transaction as the rows, so after a crash it says exactly what was committed.
//!
//! [`Store`] is plain synchronous rusqlite; `run` owns it on a writer thread fed by a
//! channel, so a slow disk never stalls ingest. Commits are durable (`synchronous =
//! FULL`): `run` acknowledges a report to the broker only after its commit.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context;
use faultline_shared::{Id, Incident, IncidentEvent, State, Verdict};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::engine::Restored;
use crate::engine::boots::{BootMeta, BootSeen, FORGET_AFTER_MS, SeqSet};

/// The schema this build writes (`PRAGMA user_version`); older files are migrated
/// when opened.
pub const SCHEMA_VERSION: i64 = 2;
/// Boots whose stored seqs the writer keeps in memory before it starts over (each
/// is read back from `boots` when next needed).
const BOOT_CACHE: usize = 50_000;
/// (site, provider) pairs whose `site_providers` write the writer remembers before it
/// starts over (forgetting only costs a write): a site naming new providers in every
/// report cannot grow it without bound.
const PROVIDER_CACHE: usize = 200_000;

const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;
/// A window's length when history does not say (rows from before schema 2).
pub const DEFAULT_WINDOW_MS: u64 = 10_000;

/// States from least to most severe, as SQL (an incident keeps its worst).
const SEVERITY: &str = "CASE {} WHEN 'outage' THEN 4 WHEN 'down' THEN 3 WHEN 'offline' THEN 2 \
                        WHEN 'degraded' THEN 1 ELSE 0 END";

fn severity(col: &str) -> String {
    SEVERITY.replace("{}", col)
}

/// One site's window as kept in history (judged by the engine's own rules).
pub use crate::engine::WindowRow;

#[derive(Debug)]
pub struct Store {
    db: Connection,
    /// (site, provider) → when `site_providers` was last advanced: written at most
    /// once a minute per pair.
    seen_providers: HashMap<(Id, Id), u64>,
    /// Site → when its targets in `site_targets` were last advanced: all of a
    /// window's targets at once, at most once a minute per site.
    seen_targets: HashMap<Id, u64>,
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

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let mut db = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
        db.busy_timeout(std::time::Duration::from_secs(30))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS incidents(
               id TEXT PRIMARY KEY, scope TEXT NOT NULL, target_id TEXT NOT NULL,
               cause TEXT, state TEXT NOT NULL, opened_ms INTEGER NOT NULL,
               closed_ms INTEGER, json TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS incidents_open ON incidents(closed_ms);
             CREATE TABLE IF NOT EXISTS verdicts_current(
               scope TEXT NOT NULL, id TEXT NOT NULL, json TEXT NOT NULL,
               PRIMARY KEY(scope, id));
             CREATE TABLE IF NOT EXISTS verdict_changes(
               at_ms INTEGER NOT NULL, scope TEXT NOT NULL, id TEXT NOT NULL,
               state TEXT NOT NULL, json TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS verdict_changes_at ON verdict_changes(at_ms);
             CREATE TABLE IF NOT EXISTS sites(
               site TEXT PRIMARY KEY, isp TEXT, customer TEXT);
             CREATE TABLE IF NOT EXISTS site_providers(
               site TEXT NOT NULL, provider TEXT NOT NULL,
               first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,
               PRIMARY KEY(site, provider));
             CREATE TABLE IF NOT EXISTS windows(
               site TEXT NOT NULL, recv_ms INTEGER NOT NULL, start_ms INTEGER NOT NULL,
               boot INTEGER NOT NULL, seq INTEGER NOT NULL, bad INTEGER NOT NULL,
               max_loss REAL NOT NULL, max_rtt_ms REAL, min_mos REAL);
             CREATE INDEX IF NOT EXISTS windows_recv ON windows(recv_ms);
             CREATE TABLE IF NOT EXISTS windows_hourly(
               site TEXT NOT NULL, hour_ms INTEGER NOT NULL, windows INTEGER NOT NULL,
               bad_windows INTEGER NOT NULL, avg_loss REAL NOT NULL, max_rtt_ms REAL,
               min_mos REAL, PRIMARY KEY(site, hour_ms));",
        )?;
        migrate(&mut db).with_context(|| format!("migrate {}", path.display()))?;
        Ok(Store {
            db,
            seen_providers: HashMap::new(),
            seen_targets: HashMap::new(),
            minutes: HashMap::new(),
            boots: HashMap::new(),
            dirty: Vec::new(),
        })
    }

    pub fn begin(&mut self) -> anyhow::Result<()> {
        self.db.execute_batch("BEGIN")?;
        Ok(())
    }

    /// Writes the boots whose seqs changed, then commits.
    pub fn commit(&mut self) -> anyhow::Result<()> {
        self.flush_minutes()?;
        for (site, boot) in &self.dirty {
            let Some(b) = self.boots.get(site).and_then(|m| m.get(boot)) else {
                continue;
            };
            self.db
                .prepare_cached(
                    "INSERT INTO boots(site, boot, ordinal, announced, floor, seqs, last_ms)
                     VALUES(?1, ?2, 0, 0, NULL, ?3, ?4)
                     ON CONFLICT(site, boot) DO UPDATE SET seqs = excluded.seqs,
                       last_ms = max(last_ms, excluded.last_ms)",
                )?
                .execute(params![
                    site.as_str(),
                    boot,
                    b.seqs.to_string(),
                    i(b.last_ms)
                ])?;
        }
        self.db.execute_batch("COMMIT")?;
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

    /// Abandons the open transaction (after a failed write), and with it what the
    /// writer believed stored in it.
    pub fn rollback(&mut self) {
        let _ = self.db.execute_batch("ROLLBACK");
        self.boots.clear();
        self.dirty.clear();
        self.seen_providers.clear();
        self.seen_targets.clear();
        self.minutes.clear();
    }

    /// What history keeps of a boot beside its seqs (from the engine).
    pub fn boot(&mut self, site: &Id, m: &BootMeta) -> anyhow::Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO boots(site, boot, ordinal, announced, floor, seqs, last_ms)
                 VALUES(?1, ?2, ?3, ?4, ?5, '', ?6)
                 ON CONFLICT(site, boot) DO UPDATE SET ordinal = excluded.ordinal,
                   announced = excluded.announced, floor = excluded.floor,
                   last_ms = max(last_ms, excluded.last_ms)",
            )?
            .execute(params![
                site.as_str(),
                m.boot,
                i(m.ordinal),
                m.announced,
                m.floor.map(i),
                i(m.last_ms)
            ])?;
        Ok(())
    }

    /// The writer's record of a boot's stored seqs, read from `boots` when not cached.
    fn stored_boot(&mut self, site: &Id, boot: u32) -> anyhow::Result<&mut StoredBoot> {
        if !self.boots.get(site).is_some_and(|m| m.contains_key(&boot)) {
            let row: Option<(String, i64)> = self
                .db
                .prepare_cached("SELECT seqs, last_ms FROM boots WHERE site = ?1 AND boot = ?2")?
                .query_row(params![site.as_str(), boot], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let b = match row {
                Some((text, last_ms)) => StoredBoot {
                    seqs: SeqSet::parse(&text).unwrap_or_else(|e| {
                        tracing::error!(site = %site, boot, "history: {e}; starting it over");
                        SeqSet::new()
                    }),
                    last_ms: last_ms.max(0) as u64,
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
        let scope = v.scope.as_str();
        self.db
            .prepare_cached(
                "INSERT INTO verdicts_current(scope, id, json) VALUES(?1, ?2, ?3)
                 ON CONFLICT(scope, id) DO UPDATE SET json = excluded.json",
            )?
            .execute(params![scope, v.id.as_str(), json])?;
        self.db
            .prepare_cached(
                "INSERT INTO verdict_changes(at_ms, scope, id, state, json) VALUES(?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![i(v.at_ms), scope, v.id.as_str(), v.state.as_str(), json])?;
        Ok(())
    }

    /// Drops a verdict no longer tracked from the current verdicts (its changes stay).
    pub fn forget_verdict(&mut self, v: &Verdict) -> anyhow::Result<()> {
        self.db
            .prepare_cached("DELETE FROM verdicts_current WHERE scope = ?1 AND id = ?2")?
            .execute(params![v.scope.as_str(), v.id.as_str()])?;
        Ok(())
    }

    pub fn incident(&mut self, ev: &IncidentEvent) -> anyhow::Result<()> {
        let inc = &ev.incident;
        let json = serde_json::to_string(inc)?;
        self.db
            .prepare_cached(
                &format!(
                    "INSERT INTO incidents(id, scope, target_id, cause, state, opened_ms, closed_ms, json, worst)
                     VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?5)
                     ON CONFLICT(id) DO UPDATE SET cause = excluded.cause, state = excluded.state,
                       closed_ms = excluded.closed_ms, json = excluded.json,
                       worst = CASE WHEN {} > {} THEN excluded.state ELSE coalesce(worst, state) END",
                    severity("excluded.state"),
                    severity("coalesce(worst, state)")
                ),
            )?
            .execute(params![
                inc.id,
                inc.scope.as_str(),
                inc.target_id.as_str(),
                inc.cause.map(|c| c.as_str()),
                inc.state.as_str(),
                i(inc.opened_ms),
                inc.closed_ms.map(i),
                json
            ])?;
        if let Some(n) = inc
            .id
            .strip_prefix("inc-")
            .and_then(|n| n.parse::<i64>().ok())
        {
            self.db
                .prepare_cached(
                    "INSERT INTO meta(key, value) VALUES('next_incident', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                )?
                .execute(params![n])?;
        }
        Ok(())
    }

    pub fn site(
        &mut self,
        site: &Id,
        isp: Option<&Id>,
        customer: Option<&str>,
    ) -> anyhow::Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO sites(site, isp, customer) VALUES(?1, ?2, ?3)
                 ON CONFLICT(site) DO UPDATE SET isp = coalesce(excluded.isp, isp),
                   customer = coalesce(excluded.customer, customer)",
            )?
            .execute(params![site.as_str(), isp.map(Id::as_str), customer])?;
        Ok(())
    }

    /// Stores one window unless (site, boot, seq) already is: returns whether it was
    /// new.
    pub fn window(&mut self, w: &WindowRow) -> anyhow::Result<bool> {
        if self.stored_boot(&w.site, w.boot)?.seqs.contains(w.seq) {
            return Ok(false);
        }
        let inserted = self
            .db
            .prepare_cached(
                "INSERT OR IGNORE INTO windows(site, recv_ms, start_ms, boot, seq, bad, max_loss, max_rtt_ms, min_mos, window_ms)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                w.site.as_str(),
                i(w.recv_ms),
                i(w.start_ms),
                w.boot,
                i(w.seq),
                w.bad,
                w.max_loss,
                w.max_rtt_ms,
                w.min_mos,
                w.window_ms
            ])?
            == 1;
        let b = self.stored_boot(&w.site, w.boot)?;
        // No run limit here: history records whatever the engine let through.
        let _ = b.seqs.insert(w.seq, usize::MAX);
        b.last_ms = b.last_ms.max(w.recv_ms);
        let newly_dirty = !b.dirty;
        b.dirty = true;
        if newly_dirty {
            self.dirty.push((w.site.clone(), w.boot));
        }
        if !inserted {
            return Ok(false);
        }
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
        let due = match self.seen_targets.get_mut(&w.site) {
            Some(last) if w.recv_ms < last.saturating_add(60_000) => false,
            Some(last) => {
                *last = w.recv_ms;
                true
            }
            None => {
                self.seen_targets.insert(w.site.clone(), w.recv_ms);
                true
            }
        };
        for t in w.targets.iter().filter(|_| due) {
            self.db
                .prepare_cached(
                    "INSERT INTO site_targets(site, target, layer, provider, first_ms, last_ms)
                     VALUES(?1, ?2, ?3, ?4, ?5, ?5)
                     ON CONFLICT(site, target) DO UPDATE SET layer = excluded.layer,
                       provider = excluded.provider, last_ms = max(last_ms, excluded.last_ms)",
                )?
                .execute(params![
                    w.site.as_str(),
                    t.target.as_str(),
                    t.layer.as_str(),
                    t.provider.as_ref().map(Id::as_str),
                    i(w.recv_ms)
                ])?;
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
            self.db
                .prepare_cached(
                    "INSERT INTO site_providers(site, provider, first_ms, last_ms) VALUES(?1, ?2, ?3, ?3)
                     ON CONFLICT(site, provider) DO UPDATE SET last_ms = max(last_ms, excluded.last_ms)",
                )?
                .execute(params![w.site.as_str(), p.as_str(), i(w.recv_ms)])?;
        }
        Ok(true)
    }

    /// Downsamples windows older than `raw_days` into hourly rows, then drops what
    /// is past retention.
    /// Merges the chart points summed since the last commit into `target_minutes`.
    fn flush_minutes(&mut self) -> anyhow::Result<()> {
        for ((site, minute), sums) in self.minutes.drain() {
            let old: Option<Vec<u8>> = self
                .db
                .prepare_cached(
                    "SELECT targets FROM target_minutes WHERE site = ?1 AND minute_ms = ?2",
                )?
                .query_row(params![site.as_str(), i(minute)], |r| r.get(0))
                .optional()?;
            let mut merged = old.map(|b| decode_sums(&b)).unwrap_or_default();
            for s in sums {
                match merged.iter_mut().find(|m| m.target == s.target) {
                    Some(m) => m.merge(&s),
                    None => merged.push(s),
                }
            }
            self.db
                .prepare_cached(
                    "INSERT INTO target_minutes(site, minute_ms, targets) VALUES(?1, ?2, ?3)
                     ON CONFLICT(site, minute_ms) DO UPDATE SET targets = excluded.targets",
                )?
                .execute(params![site.as_str(), i(minute), encode_sums(&merged)])?;
        }
        Ok(())
    }

    pub fn maintain(
        &mut self,
        now_ms: u64,
        raw_days: u32,
        hourly_days: u32,
        incident_days: u32,
    ) -> anyhow::Result<()> {
        let cut = i(now_ms.saturating_sub(u64::from(raw_days) * DAY_MS) / HOUR_MS * HOUR_MS);
        let tx = self.db.transaction()?;
        tx.execute(
            "INSERT INTO windows_hourly(site, hour_ms, windows, bad_windows, avg_loss, max_rtt_ms, min_mos, watched_ms)
             SELECT site, (recv_ms / ?2) * ?2, count(*), sum(bad > 0), avg(max_loss), max(max_rtt_ms), min(min_mos),
               sum(coalesce(window_ms, ?3))
             FROM windows WHERE recv_ms < ?1 GROUP BY site, (recv_ms / ?2)
             ON CONFLICT(site, hour_ms) DO UPDATE SET
               avg_loss = (avg_loss * windows + excluded.avg_loss * excluded.windows) / (windows + excluded.windows),
               watched_ms = coalesce(watched_ms, windows * ?3) + excluded.watched_ms,
               windows = windows + excluded.windows,
               bad_windows = bad_windows + excluded.bad_windows,
               max_rtt_ms = max(coalesce(max_rtt_ms, excluded.max_rtt_ms), coalesce(excluded.max_rtt_ms, max_rtt_ms)),
               min_mos = min(coalesce(min_mos, excluded.min_mos), coalesce(excluded.min_mos, min_mos))",
            params![cut, i(HOUR_MS), i(DEFAULT_WINDOW_MS)],
        )?;
        // Per-target averages, from the minutes' sums; an hour's averages merge
        // weighted by their windows.
        let mut hours: BTreeMap<(String, Id, i64), PointSum> = BTreeMap::new();
        {
            let mut st = tx.prepare(
                "SELECT site, minute_ms, targets FROM target_minutes WHERE minute_ms < ?1",
            )?;
            let mut rows = st.query(params![cut])?;
            while let Some(r) = rows.next()? {
                let site: String = r.get(0)?;
                let hour = r.get::<_, i64>(1)? / i(HOUR_MS) * i(HOUR_MS);
                let blob: Vec<u8> = r.get(2)?;
                for p in decode_sums(&blob) {
                    hours
                        .entry((site.clone(), p.target.clone(), hour))
                        .or_insert_with(|| PointSum::new(&p.target))
                        .merge(&p);
                }
            }
        }
        tx.execute(
            "DELETE FROM target_minutes WHERE minute_ms < ?1",
            params![cut],
        )?;
        for ((site, target, hour), sum) in &hours {
            let n = sum.n as f64;
            let avg = |(s, c): (f64, u64)| (c > 0).then(|| s / c as f64);
            tx.execute(
                "INSERT INTO target_hourly(site, target, hour_ms, windows, rtt_p50_ms, rtt_p95_ms, jitter_ms, loss, mos)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(site, target, hour_ms) DO UPDATE SET
                   rtt_p50_ms = coalesce((rtt_p50_ms * windows + excluded.rtt_p50_ms * excluded.windows) / (windows + excluded.windows), rtt_p50_ms, excluded.rtt_p50_ms),
                   rtt_p95_ms = coalesce((rtt_p95_ms * windows + excluded.rtt_p95_ms * excluded.windows) / (windows + excluded.windows), rtt_p95_ms, excluded.rtt_p95_ms),
                   jitter_ms = coalesce((jitter_ms * windows + excluded.jitter_ms * excluded.windows) / (windows + excluded.windows), jitter_ms, excluded.jitter_ms),
                   mos = coalesce((mos * windows + excluded.mos * excluded.windows) / (windows + excluded.windows), mos, excluded.mos),
                   loss = (loss * windows + excluded.loss * excluded.windows) / (windows + excluded.windows),
                   windows = windows + excluded.windows",
                params![
                    site,
                    target.as_str(),
                    hour,
                    i(sum.n),
                    avg(sum.p50),
                    avg(sum.p95),
                    avg(sum.jitter),
                    sum.loss / n.max(1.0),
                    avg(sum.mos)
                ],
            )?;
        }
        tx.execute("DELETE FROM windows WHERE recv_ms < ?1", params![cut])?;
        let hcut = i(now_ms.saturating_sub(u64::from(hourly_days) * DAY_MS));
        tx.execute(
            "DELETE FROM windows_hourly WHERE hour_ms < ?1",
            params![hcut],
        )?;
        tx.execute(
            "DELETE FROM target_hourly WHERE hour_ms < ?1",
            params![hcut],
        )?;
        let icut = i(now_ms.saturating_sub(u64::from(incident_days) * DAY_MS));
        tx.execute(
            "DELETE FROM incidents WHERE closed_ms IS NOT NULL AND closed_ms < ?1",
            params![icut],
        )?;
        tx.execute(
            "DELETE FROM verdict_changes WHERE at_ms < ?1",
            params![icut],
        )?;
        // A boot's record of stored seqs outlives its raw rows (so a late copy of a
        // downsampled window is still known) as long as hourly rows are kept; each
        // site's live boot is always kept.
        tx.execute(
            "DELETE FROM boots WHERE last_ms < ?1
             AND ordinal < (SELECT max(ordinal) FROM boots b WHERE b.site = boots.site)",
            params![hcut],
        )?;
        tx.commit()?;
        self.boots.clear();
        Ok(())
    }

    /// What the engine needs to carry on after a restart at `now_ms`: verdicts,
    /// incidents, sites, and the boots the engine remembers (heard from within
    /// [`FORGET_AFTER_MS`], and each site's live one) with their stored seqs.
    pub fn restore(&self, now_ms: u64) -> anyhow::Result<Restored> {
        let mut r = Restored::default();
        let mut st = self.db.prepare(
            "SELECT site, boot, ordinal, announced, floor, seqs, last_ms FROM boots b
             WHERE last_ms >= ?1 OR ordinal = (SELECT max(ordinal) FROM boots WHERE site = b.site)",
        )?;
        let rows = st.query_map(params![i(now_ms.saturating_sub(FORGET_AFTER_MS))], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, u32>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, bool>(3)?,
                row.get::<_, Option<i64>>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, i64>(6)?,
            ))
        })?;
        for row in rows {
            let (site, boot, ordinal, announced, floor, seqs, last_ms) = row?;
            let Ok(site) = Id::new(site) else { continue };
            let seqs = SeqSet::parse(&seqs).with_context(|| format!("boots: {site} {boot}"))?;
            let meta = BootMeta {
                boot,
                ordinal: ordinal.max(0) as u64,
                announced,
                floor: floor.map(|f| f.max(0) as u64),
                last_ms: last_ms.max(0) as u64,
            };
            r.boots.push((site, BootSeen { meta, seqs }));
        }
        let mut st = self
            .db
            .prepare("SELECT json FROM verdicts_current ORDER BY scope, id")?;
        for row in st.query_map([], |row| row.get::<_, String>(0))? {
            r.verdicts.push(serde_json::from_str(&row?)?);
        }
        let mut st = self
            .db
            .prepare("SELECT json FROM incidents WHERE closed_ms IS NULL ORDER BY id")?;
        for row in st.query_map([], |row| row.get::<_, String>(0))? {
            r.open_incidents.push(serde_json::from_str(&row?)?);
        }
        r.next_incident = self
            .db
            .query_row(
                "SELECT value FROM meta WHERE key = 'next_incident'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0)
            .max(0) as u64;
        let mut st = self.db.prepare("SELECT site, isp, customer FROM sites")?;
        for row in st.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, Option<String>>(2)?,
            ))
        })? {
            let (site, isp, customer) = row?;
            let (Ok(site), isp) = (Id::new(site), isp.and_then(|i| Id::new(i).ok())) else {
                continue;
            };
            r.sites.push((site, isp, customer));
        }
        Ok(r)
    }

    /// Incidents of `scope`/`target` (any, when `None`) overlapping [from, to), newest first.
    pub fn incidents(
        &self,
        scope: Option<&str>,
        from_ms: u64,
        to_ms: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<Incident>> {
        let mut st = self.db.prepare(
            "SELECT json FROM incidents WHERE (?1 IS NULL OR scope = ?1)
             AND opened_ms < ?3 AND (closed_ms IS NULL OR closed_ms >= ?2)
             ORDER BY opened_ms DESC LIMIT ?4",
        )?;
        json_rows(&mut st, params![scope, i(from_ms), i(to_ms), limit])
    }

    /// The most recent verdict changes, newest first.
    pub fn recent_changes(&self, limit: u32) -> anyhow::Result<Vec<Verdict>> {
        let mut st = self
            .db
            .prepare("SELECT json FROM verdict_changes ORDER BY rowid DESC LIMIT ?1")?;
        json_rows(&mut st, params![limit])
    }

    /// Sites that probed `provider` in [from, to), each with the span it was seen.
    pub fn provider_sites(
        &self,
        provider: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> anyhow::Result<Vec<(String, u64, u64)>> {
        let mut st = self.db.prepare(
            "SELECT site, first_ms, last_ms FROM site_providers
             WHERE provider = ?1 AND first_ms < ?3 AND last_ms >= ?2 ORDER BY site",
        )?;
        let rows = st.query_map(params![provider, i(from_ms), i(to_ms)], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (s, a, b) = r?;
            out.push((s, a.max(0) as u64, b.max(0) as u64));
        }
        Ok(out)
    }

    /// Every provider seen in history or with an incident.
    pub fn providers(&self) -> anyhow::Result<Vec<String>> {
        let mut st = self.db.prepare(
            "SELECT provider FROM site_providers UNION SELECT target_id FROM incidents WHERE scope = 'provider' ORDER BY 1",
        )?;
        let rows = st.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Incidents of `scope` (any, when `None`) overlapping [from, to), newest first,
    /// each with the worst state it reached.
    pub fn incidents_worst(
        &self,
        scope: Option<&str>,
        from_ms: u64,
        to_ms: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<(Incident, State)>> {
        let mut st = self.db.prepare(
            "SELECT json, coalesce(worst, state) FROM incidents WHERE (?1 IS NULL OR scope = ?1)
             AND opened_ms < ?3 AND (closed_ms IS NULL OR closed_ms >= ?2)
             ORDER BY opened_ms DESC LIMIT ?4",
        )?;
        let rows = st.query_map(params![scope, i(from_ms), i(to_ms), limit], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (json, worst) = r?;
            let inc: Incident = serde_json::from_str(&json)?;
            let worst = state_named(&worst).unwrap_or(inc.state);
            out.push((inc, worst));
        }
        Ok(out)
    }

    /// One incident and its worst state.
    pub fn incident_by_id(&self, id: &str) -> anyhow::Result<Option<(Incident, State)>> {
        let row: Option<(String, String)> = self
            .db
            .query_row(
                "SELECT json, coalesce(worst, state) FROM incidents WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((json, worst)) = row else {
            return Ok(None);
        };
        let inc: Incident = serde_json::from_str(&json)?;
        let worst = state_named(&worst).unwrap_or(inc.state);
        Ok(Some((inc, worst)))
    }

    /// Verdict changes of `scope`/`id` (any id when `None`) in [from, to], oldest first.
    pub fn changes(
        &self,
        scope: &str,
        id: Option<&str>,
        from_ms: u64,
        to_ms: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<Verdict>> {
        let mut st = self.db.prepare(
            "SELECT json FROM verdict_changes WHERE at_ms >= ?3 AND at_ms <= ?4
             AND scope = ?1 AND (?2 IS NULL OR id = ?2) ORDER BY at_ms, rowid LIMIT ?5",
        )?;
        json_rows(&mut st, params![scope, id, i(from_ms), i(to_ms), limit])
    }

    /// Whether history knows `site` (its identity or any window of it).
    pub fn site_known(&self, site: &str) -> anyhow::Result<bool> {
        Ok(self
            .db
            .query_row(
                "SELECT 1 FROM sites WHERE site = ?1 UNION ALL SELECT 1 FROM site_targets WHERE site = ?1 LIMIT 1",
                params![site],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// A site's ISP and customer as history knows them.
    pub fn site_identity(
        &self,
        site: &str,
    ) -> anyhow::Result<Option<(Option<String>, Option<String>)>> {
        Ok(self
            .db
            .query_row(
                "SELECT isp, customer FROM sites WHERE site = ?1",
                params![site],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Every target history has seen at `site`: (target, layer, provider), by name.
    pub fn site_targets(
        &self,
        site: &str,
    ) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
        let mut st = self.db.prepare(
            "SELECT target, layer, provider FROM site_targets WHERE site = ?1 ORDER BY target",
        )?;
        let rows = st.query_map(params![site], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One target's values at `site` in [from, to), oldest first: raw windows, and
    /// hourly averages where raw windows were downsampled.
    pub fn series(
        &self,
        site: &str,
        target: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> anyhow::Result<Vec<SeriesRow>> {
        let mut st = self.db.prepare(
            "SELECT hour_ms + 1800000, windows, rtt_p50_ms, rtt_p95_ms, jitter_ms, loss, mos FROM target_hourly
               WHERE site = ?1 AND target = ?2 AND hour_ms >= ?3 - 3600000 AND hour_ms < ?4",
        )?;
        let hourly = st.query_map(params![site, target, i(from_ms), i(to_ms)], |r| {
            Ok(SeriesRow {
                at_ms: r.get::<_, i64>(0)?.max(0) as u64,
                windows: r.get::<_, i64>(1)?.max(0) as u64,
                rtt_p50_ms: r.get(2)?,
                rtt_p95_ms: r.get(3)?,
                jitter_ms: r.get(4)?,
                loss: r.get(5)?,
                mos: r.get(6)?,
            })
        })?;
        let mut out = hourly.collect::<Result<Vec<_>, _>>()?;
        // Minutes: each row's sums, this target's picked out, at the minute's middle.
        let mut st = self.db.prepare_cached(
            "SELECT minute_ms, targets FROM target_minutes
               WHERE site = ?1 AND minute_ms >= ?2 - 60000 AND minute_ms < ?3",
        )?;
        let mut rows = st.query(params![site, i(from_ms), i(to_ms)])?;
        while let Some(r) = rows.next()? {
            let minute = r.get::<_, i64>(0)?.max(0) as u64;
            let blob: Vec<u8> = r.get(1)?;
            if let Some(p) = decode_sums(&blob).into_iter().find(|p| p.target == target) {
                let avg = |(s, c): (f64, u64)| (c > 0).then(|| s / c as f64);
                out.push(SeriesRow {
                    at_ms: minute + MINUTE_MS / 2,
                    windows: p.n,
                    rtt_p50_ms: avg(p.p50),
                    rtt_p95_ms: avg(p.p95),
                    jitter_ms: avg(p.jitter),
                    loss: p.loss / (p.n.max(1) as f64),
                    mos: avg(p.mos),
                });
            }
        }
        out.retain(|r| r.at_ms >= from_ms && r.at_ms < to_ms);
        out.sort_by_key(|r| r.at_ms);
        Ok(out)
    }

    /// What history holds of `site` being watched in [from, to): its raw windows as
    /// (received, length) and its hourly rows as (hour, time watched in it).
    pub fn coverage(&self, site: &str, from_ms: u64, to_ms: u64) -> anyhow::Result<Coverage> {
        let mut c = Coverage::default();
        let mut st = self.db.prepare_cached(
            "SELECT recv_ms, coalesce(window_ms, ?4) FROM windows
             WHERE site = ?1 AND recv_ms >= ?2 AND recv_ms < ?3 + 3600000 ORDER BY recv_ms",
        )?;
        let rows = st.query_map(
            params![site, i(from_ms), i(to_ms), i(DEFAULT_WINDOW_MS)],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )?;
        for r in rows {
            let (recv, w) = r?;
            let recv = recv.max(0) as u64;
            c.add_window(recv.saturating_sub(w.max(0) as u64), recv);
        }
        let mut st = self.db.prepare_cached(
            "SELECT hour_ms, coalesce(watched_ms, windows * ?4) FROM windows_hourly
             WHERE site = ?1 AND hour_ms >= ?2 - 3600000 AND hour_ms < ?3 ORDER BY hour_ms",
        )?;
        let rows = st.query_map(
            params![site, i(from_ms), i(to_ms), i(DEFAULT_WINDOW_MS)],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )?;
        for r in rows {
            let (hour, watched) = r?;
            c.add_hour(hour.max(0) as u64, watched.max(0) as u64);
        }
        Ok(c)
    }

    /// When history's latest window arrived (any site; hourly rows count to their
    /// hour's end), not after `to_ms`: where the collector's evidence ends.
    pub fn evidence_end(&self, to_ms: u64) -> anyhow::Result<Option<u64>> {
        let v: Option<i64> = self.db.query_row(
            "SELECT max(m) FROM (SELECT max(recv_ms) AS m FROM windows WHERE recv_ms <= ?1
               UNION ALL SELECT max(hour_ms) + 3600000 FROM windows_hourly WHERE hour_ms < ?1)",
            params![i(to_ms)],
            |r| r.get(0),
        )?;
        Ok(v.map(|v| (v.max(0) as u64).min(to_ms)))
    }
}

/// A state by its name.
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

/// Brings a history file of any earlier schema up to [`SCHEMA_VERSION`], in one
/// transaction (a second process opening it meanwhile waits, then finds it done).
fn migrate(db: &mut Connection) -> anyhow::Result<()> {
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 1 {
        // Version 1: a window is stored once. Older collectors stored a repeated
        // window again; keep the first copy.
        let dropped = tx.execute(
            "DELETE FROM windows WHERE rowid NOT IN
             (SELECT min(rowid) FROM windows GROUP BY site, boot, seq)",
            [],
        )?;
        tx.execute_batch(
            "CREATE UNIQUE INDEX IF NOT EXISTS windows_key ON windows(site, boot, seq);
             CREATE TABLE IF NOT EXISTS boots(
               site TEXT NOT NULL, boot INTEGER NOT NULL, ordinal INTEGER NOT NULL,
               announced INTEGER NOT NULL, floor INTEGER, seqs TEXT NOT NULL,
               last_ms INTEGER NOT NULL, PRIMARY KEY(site, boot)) WITHOUT ROWID;",
        )?;
        // Each boot's seqs from the rows kept; boots ordered by their first arrival.
        let mut boots: Vec<(String, u32, SeqSet, i64, i64)> = Vec::new();
        {
            let mut st = tx
                .prepare("SELECT site, boot, seq, recv_ms FROM windows ORDER BY site, boot, seq")?;
            let mut rows = st.query([])?;
            while let Some(row) = rows.next()? {
                let (site, boot, seq, recv): (String, u32, i64, i64) =
                    (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
                match boots.last_mut() {
                    Some(b) if b.0 == site && b.1 == boot => {
                        let _ = b.2.insert(seq.max(0) as u64, usize::MAX);
                        b.3 = b.3.min(recv);
                        b.4 = b.4.max(recv);
                    }
                    _ => {
                        let mut seqs = SeqSet::new();
                        let _ = seqs.insert(seq.max(0) as u64, usize::MAX);
                        boots.push((site, boot, seqs, recv, recv));
                    }
                }
            }
        }
        boots.sort_by(|a, b| (&a.0, a.3).cmp(&(&b.0, b.3)));
        let mut ordinal = 0;
        for (n, (site, boot, seqs, _, last)) in boots.iter().enumerate() {
            ordinal = if n > 0 && boots[n - 1].0 == *site {
                ordinal + 1
            } else {
                1
            };
            tx.execute(
                "INSERT OR REPLACE INTO boots(site, boot, ordinal, announced, floor, seqs, last_ms)
                 VALUES(?1, ?2, ?3, 0, NULL, ?4, ?5)",
                params![site, boot, ordinal, seqs.to_string(), last],
            )?;
        }
        tx.pragma_update(None, "user_version", 1)?;
        if dropped > 0 {
            tracing::warn!("history: dropped {dropped} repeated window rows (schema 1)");
        }
    }
    if version < 2 {
        // Version 2: what pages and availability read. Each window's length (older
        // rows: NULL, read as DEFAULT_WINDOW_MS), the time an hourly row watched its
        // site, per-target series (sums per site and minute, then hourly) and each site's targets, and each
        // incident's worst state (older incidents: from their verdict changes).
        tx.execute_batch(
            "ALTER TABLE windows ADD COLUMN window_ms INTEGER;
             ALTER TABLE windows_hourly ADD COLUMN watched_ms INTEGER;
             CREATE TABLE IF NOT EXISTS target_minutes(
               site TEXT NOT NULL, minute_ms INTEGER NOT NULL, targets BLOB NOT NULL,
               PRIMARY KEY(site, minute_ms)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS target_hourly(
               site TEXT NOT NULL, target TEXT NOT NULL, hour_ms INTEGER NOT NULL,
               windows INTEGER NOT NULL, rtt_p50_ms REAL, rtt_p95_ms REAL, jitter_ms REAL,
               loss REAL NOT NULL, mos REAL, PRIMARY KEY(site, target, hour_ms)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS site_targets(
               site TEXT NOT NULL, target TEXT NOT NULL, layer TEXT NOT NULL, provider TEXT,
               first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,
               PRIMARY KEY(site, target)) WITHOUT ROWID;
             ALTER TABLE incidents ADD COLUMN worst TEXT;",
        )?;
        tx.execute(
            &format!(
                "UPDATE incidents SET worst = coalesce((SELECT c.state FROM verdict_changes c
                   WHERE c.scope = incidents.scope AND c.id = incidents.target_id
                   AND c.at_ms >= incidents.opened_ms
                   AND (incidents.closed_ms IS NULL OR c.at_ms <= incidents.closed_ms)
                   ORDER BY {} DESC LIMIT 1), state)",
                severity("c.state")
            ),
            [],
        )?;
        tx.pragma_update(None, "user_version", 2)?;
    }
    tx.commit()?;
    Ok(())
}

/// The rows of a query whose single column is a JSON document, parsed.
fn json_rows<T: serde::de::DeserializeOwned>(
    st: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> anyhow::Result<Vec<T>> {
    let rows = st.query_map(params, |row| row.get::<_, String>(0))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(serde_json::from_str(&r?)?);
    }
    Ok(out)
}

/// Chart points are kept per site and minute of arrival (`target_minutes`): a
/// window's ten targets would otherwise be ten more rows (or a blob) on the
/// acknowledgement's critical path for every report; a minute's sums are one row
/// per site, rewritten at each commit while the minute is current.
const MINUTE_MS: u64 = 60_000;

/// One target's sums over the windows of a minute (or an hour): postcard, in
/// `target_minutes.targets`. Means are sums over counts (a value may be absent).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct PointSum {
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
}

fn encode_sums(sums: &[PointSum]) -> Vec<u8> {
    // Plain data into a Vec: cannot fail.
    postcard::to_allocvec(sums).unwrap_or_default()
}

/// A row's sums; a damaged blob reads as none (a chart gap, not an error).
fn decode_sums(blob: &[u8]) -> Vec<PointSum> {
    postcard::from_bytes(blob).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_shared::{Cause, IncidentEventKind, Scope, State};

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

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

    #[test]
    fn restores_open_incidents_verdicts_and_the_incident_counter() {
        let dir = std::env::temp_dir().join(format!("fl-store-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        {
            let mut s = Store::open(&path).unwrap();
            s.begin().unwrap();
            let inc = Incident {
                id: "inc-000007".into(),
                scope: Scope::Provider,
                target_id: id("voipco").into(),
                cause: Some(Cause::Provider),
                state: State::Outage,
                opened_ms: 1000,
                closed_ms: None,
                sites: vec![id("a"), id("b")],
            };
            s.incident(&IncidentEvent {
                event: IncidentEventKind::Opened,
                incident: inc,
            })
            .unwrap();
            s.verdict(&Verdict {
                at_ms: 1000,
                scope: Scope::Provider,
                id: id("voipco").into(),
                state: State::Outage,
                cause: Some(Cause::Provider),
                isp: None,
                provider: None,
                sites: vec![id("a"), id("b")],
                incident: Some("inc-000007".into()),
                recommendation: None,
                maintenance: None,
            })
            .unwrap();
            s.site(&id("a"), Some(&id("IspA")), None).unwrap();
            s.window(&WindowRow {
                site: id("a"),
                recv_ms: 1000,
                start_ms: 0,
                boot: 1,
                seq: 1,
                bad: 1,
                max_loss: 0.5,
                max_rtt_ms: Some(20.0),
                min_mos: Some(3.0),
                providers: vec![id("voipco")],
                window_ms: 10_000,
                targets: vec![],
            })
            .unwrap();
            s.commit().unwrap();
            s.maintain(10 * DAY_MS, 2, 90, 400).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let r = s.restore(10 * DAY_MS).unwrap();
        assert_eq!(r.next_incident, 7);
        assert_eq!(r.open_incidents.len(), 1);
        assert_eq!(r.verdicts.len(), 1);
        assert_eq!(r.sites, vec![(id("a"), Some(id("IspA")), None)]);
        let n: i64 =
            s.db.query_row("SELECT count(*) FROM windows_hourly", [], |r| r.get(0))
                .unwrap();
        assert_eq!(n, 1, "old windows downsampled to hourly rows");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn row(site: &str, boot: u32, seq: u64, recv_ms: u64) -> WindowRow {
        WindowRow {
            site: id(site),
            recv_ms,
            start_ms: 0,
            boot,
            seq,
            bad: 0,
            max_loss: 0.0,
            max_rtt_ms: None,
            min_mos: None,
            providers: vec![],
            window_ms: 10_000,
            targets: vec![],
        }
    }

    fn temp_db(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("fl-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        (dir, path)
    }

    fn count(s: &Store, sql: &str) -> i64 {
        s.db.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_window_is_stored_once_across_restarts_and_downsampling() {
        let (dir, path) = temp_db("once");
        {
            let mut s = Store::open(&path).unwrap();
            s.begin().unwrap();
            s.boot(
                &id("a"),
                &BootMeta {
                    boot: 7,
                    ordinal: 1,
                    announced: true,
                    floor: Some(0),
                    last_ms: 1000,
                },
            )
            .unwrap();
            for seq in [0, 1, 2, 5] {
                assert!(s.window(&row("a", 7, seq, 1000)).unwrap());
            }
            assert!(
                !s.window(&row("a", 7, 1, 1000)).unwrap(),
                "same transaction"
            );
            s.commit().unwrap();
            // A failed transaction is forgotten, seqs included.
            s.begin().unwrap();
            assert!(s.window(&row("a", 7, 9, 1000)).unwrap());
            s.rollback();
            s.begin().unwrap();
            assert!(s.window(&row("a", 7, 9, 1000)).unwrap(), "rolled back");
            s.commit().unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        let r = s.restore(2000).unwrap();
        assert_eq!(r.boots.len(), 1);
        let (site, b) = &r.boots[0];
        assert_eq!(site.as_str(), "a");
        assert_eq!(b.seqs.to_string(), "0-2,5,9");
        assert_eq!(b.meta.ordinal, 1);
        assert!(b.meta.announced);
        assert_eq!(b.meta.floor, Some(0));
        assert_eq!(b.missing(), 5);
        // Raw rows downsampled: the boot's record still knows every window.
        s.maintain(10 * DAY_MS, 2, 90, 400).unwrap();
        assert_eq!(count(&s, "SELECT count(*) FROM windows"), 0);
        s.begin().unwrap();
        assert!(!s.window(&row("a", 7, 5, 11 * DAY_MS)).unwrap());
        assert!(s.window(&row("a", 7, 3, 11 * DAY_MS)).unwrap());
        s.commit().unwrap();
        assert_eq!(count(&s, "SELECT count(*) FROM windows"), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_older_history_file_is_migrated_and_its_repeats_dropped() {
        let (dir, path) = temp_db("migrate");
        {
            // The schema before version 1: no unique key, no boots.
            let db = Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE windows(
                   site TEXT NOT NULL, recv_ms INTEGER NOT NULL, start_ms INTEGER NOT NULL,
                   boot INTEGER NOT NULL, seq INTEGER NOT NULL, bad INTEGER NOT NULL,
                   max_loss REAL NOT NULL, max_rtt_ms REAL, min_mos REAL);",
            )
            .unwrap();
            for (boot, seq, recv) in [
                (1, 0, 10),
                (1, 1, 20),
                (1, 1, 21),
                (1, 3, 30),
                (2, 0, 40),
                (2, 0, 41),
            ] {
                db.execute(
                    "INSERT INTO windows VALUES('a', ?1, 0, ?2, ?3, 0, 0.0, NULL, NULL)",
                    params![recv, boot, seq],
                )
                .unwrap();
            }
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(count(&s, "SELECT count(*) FROM windows"), 4);
        assert_eq!(count(&s, "PRAGMA user_version"), SCHEMA_VERSION);
        let r = s.restore(50).unwrap();
        let mut boots: Vec<_> = r
            .boots
            .iter()
            .map(|(_, b)| (b.meta.boot, b.meta.ordinal, b.seqs.to_string()))
            .collect();
        boots.sort();
        assert_eq!(boots, [(1, 1, "0-1,3".to_owned()), (2, 2, "0".to_owned())]);
        let dup = s.db.execute(
            "INSERT INTO windows VALUES('a', 50, 0, 1, 3, 0, 0.0, NULL, NULL)",
            [],
        );
        assert!(dup.is_err(), "unique on (site, boot, seq)");
        drop(s);
        // Opening again changes nothing.
        let s = Store::open(&path).unwrap();
        assert_eq!(count(&s, "SELECT count(*) FROM boots"), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
