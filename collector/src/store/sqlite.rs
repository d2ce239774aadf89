//! History in SQLite (one node, the default): the [`Backend`] SQL for a history
//! file, and its `user_version` migrations.
//!
//! One writer at a time: the writer thread's transaction (`BEGIN`..`COMMIT`, one per
//! batch, statements prepared once and cached). Commits are durable (`synchronous =
//! FULL`).

use std::path::Path;

use anyhow::Context;
use faultline_shared::{Id, Incident, State, Verdict};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    Backend, Coverage, Cuts, DEFAULT_WINDOW_MS, HOUR_MS, HourSums, MinuteBlobs, SeriesRow,
    WindowRow, boot_seen, i, incident_worst, merge_sums, severity, site_row, u,
};
use crate::engine::Restored;
use crate::engine::boots::{BootMeta, FORGET_AFTER_MS, SeqSet};

/// The schema this build writes (`PRAGMA user_version`); older files are migrated
/// when opened.
pub const SCHEMA_VERSION: i64 = 2;

/// A SQLite history file.
#[derive(Debug)]
pub struct Sqlite {
    db: Connection,
}

impl Sqlite {
    pub fn open(path: &Path) -> anyhow::Result<Sqlite> {
        let mut db = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
        db.busy_timeout(std::time::Duration::from_secs(30))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             BEGIN;
             CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS maintenance(
               window_id TEXT PRIMARY KEY, to_ms INTEGER NOT NULL, json TEXT NOT NULL);
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
               min_mos REAL, PRIMARY KEY(site, hour_ms));
             COMMIT;",
        )?;
        migrate(&mut db).with_context(|| format!("migrate {}", path.display()))?;
        Ok(Sqlite { db })
    }
}

impl Backend for Sqlite {
    fn begin(&mut self) -> anyhow::Result<()> {
        self.db.execute_batch("BEGIN")?;
        Ok(())
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        self.db.execute_batch("COMMIT")?;
        Ok(())
    }

    fn rollback(&mut self) {
        let _ = self.db.execute_batch("ROLLBACK");
    }

    fn boot(&mut self, site: &Id, m: &BootMeta) -> anyhow::Result<()> {
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

    fn boot_seqs(&mut self, site: &Id, boot: u32) -> anyhow::Result<Option<(String, u64)>> {
        Ok(self
            .db
            .prepare_cached("SELECT seqs, last_ms FROM boots WHERE site = ?1 AND boot = ?2")?
            .query_row(params![site.as_str(), boot], |r| {
                Ok((r.get(0)?, u(r.get(1)?)))
            })
            .optional()?)
    }

    fn save_boot_seqs(
        &mut self,
        site: &Id,
        boot: u32,
        seqs: &SeqSet,
        last_ms: u64,
    ) -> anyhow::Result<()> {
        // One writer at a time (SQLite's lock): the writer's record is the stored one.
        self.db
            .prepare_cached(
                "INSERT INTO boots(site, boot, ordinal, announced, floor, seqs, last_ms)
                 VALUES(?1, ?2, 0, 0, NULL, ?3, ?4)
                 ON CONFLICT(site, boot) DO UPDATE SET seqs = excluded.seqs,
                   last_ms = max(last_ms, excluded.last_ms)",
            )?
            .execute(params![site.as_str(), boot, seqs.to_string(), i(last_ms)])?;
        Ok(())
    }

    fn verdict(&mut self, v: &Verdict, json: &str) -> anyhow::Result<()> {
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

    fn forget_verdict(&mut self, v: &Verdict) -> anyhow::Result<()> {
        self.db
            .prepare_cached("DELETE FROM verdicts_current WHERE scope = ?1 AND id = ?2")?
            .execute(params![v.scope.as_str(), v.id.as_str()])?;
        Ok(())
    }

    fn incident(&mut self, inc: &Incident, json: &str) -> anyhow::Result<()> {
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
        Ok(())
    }

    fn next_incident(&mut self, n: i64) -> anyhow::Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO meta(key, value) VALUES('next_incident', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
            )?
            .execute(params![n])?;
        Ok(())
    }

    fn site(&mut self, site: &Id, isp: Option<&Id>, customer: Option<&str>) -> anyhow::Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO sites(site, isp, customer) VALUES(?1, ?2, ?3)
                 ON CONFLICT(site) DO UPDATE SET isp = coalesce(excluded.isp, isp),
                   customer = coalesce(excluded.customer, customer)",
            )?
            .execute(params![site.as_str(), isp.map(Id::as_str), customer])?;
        Ok(())
    }

    fn insert_window(&mut self, w: &WindowRow) -> anyhow::Result<bool> {
        Ok(self
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
            == 1)
    }

    fn site_target(
        &mut self,
        site: &Id,
        t: &crate::engine::TargetPoint,
        at_ms: u64,
    ) -> anyhow::Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO site_targets(site, target, layer, provider, first_ms, last_ms)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT(site, target) DO UPDATE SET layer = excluded.layer,
                   provider = excluded.provider, last_ms = max(last_ms, excluded.last_ms)",
            )?
            .execute(params![
                site.as_str(),
                t.target.as_str(),
                t.layer.as_str(),
                t.provider.as_ref().map(Id::as_str),
                i(at_ms)
            ])?;
        Ok(())
    }

    fn site_provider(&mut self, site: &Id, provider: &Id, at_ms: u64) -> anyhow::Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO site_providers(site, provider, first_ms, last_ms) VALUES(?1, ?2, ?3, ?3)
                 ON CONFLICT(site, provider) DO UPDATE SET last_ms = max(last_ms, excluded.last_ms)",
            )?
            .execute(params![site.as_str(), provider.as_str(), i(at_ms)])?;
        Ok(())
    }

    fn merge_minute(
        &mut self,
        site: &Id,
        minute_ms: u64,
        sums: Vec<super::PointSum>,
    ) -> anyhow::Result<()> {
        let old: Option<Vec<u8>> = self
            .db
            .prepare_cached(
                "SELECT targets FROM target_minutes WHERE site = ?1 AND minute_ms = ?2",
            )?
            .query_row(params![site.as_str(), i(minute_ms)], |r| r.get(0))
            .optional()?;
        self.db
            .prepare_cached(
                "INSERT INTO target_minutes(site, minute_ms, targets) VALUES(?1, ?2, ?3)
                 ON CONFLICT(site, minute_ms) DO UPDATE SET targets = excluded.targets",
            )?
            .execute(params![
                site.as_str(),
                i(minute_ms),
                merge_sums(old.as_deref(), sums)
            ])?;
        Ok(())
    }

    fn maintain(&mut self, cuts: &Cuts) -> anyhow::Result<()> {
        let tx = self.db.transaction()?;
        // By arrival time: left to itself SQLite reads the windows in (site, boot,
        // seq) order for the GROUP BY, the whole table (125 ms at 200,000 rows, with
        // history's writer stalled behind it; hours at a week of 10,000 sites).
        tx.execute(
            "INSERT INTO windows_hourly(site, hour_ms, windows, bad_windows, avg_loss, max_rtt_ms, min_mos, watched_ms)
             SELECT site, (recv_ms / ?2) * ?2, count(*), sum(bad > 0), avg(max_loss), max(max_rtt_ms), min(min_mos),
               sum(coalesce(window_ms, ?3))
             FROM windows INDEXED BY windows_recv WHERE recv_ms < ?1 GROUP BY site, (recv_ms / ?2)
             ON CONFLICT(site, hour_ms) DO UPDATE SET
               avg_loss = (avg_loss * windows + excluded.avg_loss * excluded.windows) / (windows + excluded.windows),
               watched_ms = coalesce(watched_ms, windows * ?3) + excluded.watched_ms,
               windows = windows + excluded.windows,
               bad_windows = bad_windows + excluded.bad_windows,
               max_rtt_ms = max(coalesce(max_rtt_ms, excluded.max_rtt_ms), coalesce(excluded.max_rtt_ms, max_rtt_ms)),
               min_mos = min(coalesce(min_mos, excluded.min_mos), coalesce(excluded.min_mos, min_mos))",
            params![cuts.raw, i(HOUR_MS), i(DEFAULT_WINDOW_MS)],
        )?;
        // Per-target averages, from the minutes' sums; an hour's averages merge
        // weighted by their windows.
        let mut hours = HourSums::default();
        {
            let mut st = tx.prepare(
                "SELECT site, minute_ms, targets FROM target_minutes WHERE minute_ms < ?1",
            )?;
            let mut rows = st.query(params![cuts.raw])?;
            while let Some(r) = rows.next()? {
                let site: String = r.get(0)?;
                let blob: Vec<u8> = r.get(2)?;
                hours.add_minute(&site, r.get(1)?, &blob);
            }
        }
        tx.execute(
            "DELETE FROM target_minutes WHERE minute_ms < ?1",
            params![cuts.raw],
        )?;
        for (site, target, hour, p) in hours.hours() {
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
                    target,
                    hour,
                    i(p.windows),
                    p.rtt_p50_ms,
                    p.rtt_p95_ms,
                    p.jitter_ms,
                    p.loss,
                    p.mos
                ],
            )?;
        }
        tx.execute("DELETE FROM windows WHERE recv_ms < ?1", params![cuts.raw])?;
        tx.execute(
            "DELETE FROM windows_hourly WHERE hour_ms < ?1",
            params![cuts.hourly],
        )?;
        tx.execute(
            "DELETE FROM target_hourly WHERE hour_ms < ?1",
            params![cuts.hourly],
        )?;
        tx.execute(
            "DELETE FROM incidents WHERE closed_ms IS NOT NULL AND closed_ms < ?1",
            params![cuts.incidents],
        )?;
        tx.execute(
            "DELETE FROM verdict_changes WHERE at_ms < ?1",
            params![cuts.incidents],
        )?;
        // A boot's record of stored seqs outlives its raw rows (so a late copy of a
        // downsampled window is still known) as long as hourly rows are kept; each
        // site's live boot is always kept.
        tx.execute(
            "DELETE FROM boots WHERE last_ms < ?1
             AND ordinal < (SELECT max(ordinal) FROM boots b WHERE b.site = boots.site)",
            params![cuts.hourly],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn restore(&self, now_ms: u64) -> anyhow::Result<Restored> {
        let mut r = Restored::default();
        let mut st = self.db.prepare(
            "SELECT site, boot, ordinal, announced, floor, seqs, last_ms FROM boots b
             WHERE last_ms >= ?1 OR ordinal = (SELECT max(ordinal) FROM boots WHERE site = b.site)",
        )?;
        let mut rows = st.query(params![i(now_ms.saturating_sub(FORGET_AFTER_MS))])?;
        while let Some(row) = rows.next()? {
            let seqs: String = row.get(5)?;
            r.boots.extend(boot_seen(
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                &seqs,
                row.get(6)?,
            )?);
        }
        let mut st = self
            .db
            .prepare("SELECT json FROM verdicts_current ORDER BY scope, id")?;
        r.verdicts = json_rows(&mut st, [])?;
        let mut st = self
            .db
            .prepare("SELECT json FROM incidents WHERE closed_ms IS NULL ORDER BY id")?;
        r.open_incidents = json_rows(&mut st, [])?;
        r.next_incident = u(self
            .db
            .query_row(
                "SELECT value FROM meta WHERE key = 'next_incident'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0));
        let mut st = self.db.prepare("SELECT site, isp, customer FROM sites")?;
        for row in st.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))? {
            let (site, isp, customer) = row?;
            r.sites.extend(site_row(site, isp, customer));
        }
        Ok(r)
    }

    fn incidents_worst(
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
            out.push(incident_worst(&json, &worst)?);
        }
        Ok(out)
    }

    fn incident_by_id(&self, id: &str) -> anyhow::Result<Option<(Incident, State)>> {
        let row: Option<(String, String)> = self
            .db
            .query_row(
                "SELECT json, coalesce(worst, state) FROM incidents WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(json, worst)| incident_worst(&json, &worst))
            .transpose()
    }

    fn recent_changes(&self, limit: u32) -> anyhow::Result<Vec<Verdict>> {
        let mut st = self
            .db
            .prepare("SELECT json FROM verdict_changes ORDER BY rowid DESC LIMIT ?1")?;
        json_rows(&mut st, params![limit])
    }

    fn changes(
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

    fn provider_sites(
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
            Ok((row.get(0)?, u(row.get(1)?), u(row.get(2)?)))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn save_maintenance(&mut self, window: &str, to_ms: u64, json: &str) -> anyhow::Result<()> {
        self.db.execute(
            "INSERT INTO maintenance(window_id, to_ms, json) VALUES(?1, ?2, ?3)
             ON CONFLICT(window_id) DO UPDATE SET to_ms = excluded.to_ms, json = excluded.json",
            params![window, i(to_ms), json],
        )?;
        Ok(())
    }

    fn delete_maintenance(&mut self, window: &str) -> anyhow::Result<bool> {
        Ok(self
            .db
            .execute("DELETE FROM maintenance WHERE window_id = ?1", [window])?
            > 0)
    }

    fn maintenance_json(&self) -> anyhow::Result<Vec<String>> {
        let mut st = self
            .db
            .prepare("SELECT json FROM maintenance ORDER BY window_id")?;
        let rows = st.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn providers(&self) -> anyhow::Result<Vec<String>> {
        let mut st = self.db.prepare(
            "SELECT provider FROM site_providers UNION SELECT target_id FROM incidents WHERE scope = 'provider' ORDER BY 1",
        )?;
        let rows = st.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn site_known(&self, site: &str) -> anyhow::Result<bool> {
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

    fn site_identity(
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

    fn site_targets(&self, site: &str) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
        let mut st = self.db.prepare(
            "SELECT target, layer, provider FROM site_targets WHERE site = ?1 ORDER BY target",
        )?;
        let rows = st.query_map(params![site], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn series_rows(
        &self,
        site: &str,
        target: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> anyhow::Result<(Vec<SeriesRow>, MinuteBlobs)> {
        let mut st = self.db.prepare(
            "SELECT hour_ms + 1800000, windows, rtt_p50_ms, rtt_p95_ms, jitter_ms, loss, mos FROM target_hourly
               WHERE site = ?1 AND target = ?2 AND hour_ms >= ?3 - 3600000 AND hour_ms < ?4",
        )?;
        let hourly = st.query_map(params![site, target, i(from_ms), i(to_ms)], |r| {
            Ok(SeriesRow {
                at_ms: u(r.get(0)?),
                windows: u(r.get(1)?),
                rtt_p50_ms: r.get(2)?,
                rtt_p95_ms: r.get(3)?,
                jitter_ms: r.get(4)?,
                loss: r.get(5)?,
                mos: r.get(6)?,
            })
        })?;
        let hourly = hourly.collect::<Result<Vec<_>, _>>()?;
        let mut st = self.db.prepare_cached(
            "SELECT minute_ms, targets FROM target_minutes
               WHERE site = ?1 AND minute_ms >= ?2 - 60000 AND minute_ms < ?3",
        )?;
        let minutes = st.query_map(params![site, i(from_ms), i(to_ms)], |r| {
            Ok((u(r.get(0)?), r.get(1)?))
        })?;
        Ok((hourly, minutes.collect::<Result<_, _>>()?))
    }

    fn coverage(&self, site: &str, from_ms: u64, to_ms: u64) -> anyhow::Result<Coverage> {
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
            c.add_row(recv, w);
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
            c.add_hour(u(hour), u(watched));
        }
        Ok(c)
    }

    fn evidence_end(&self, to_ms: u64) -> anyhow::Result<Option<u64>> {
        let v: Option<i64> = self.db.query_row(
            "SELECT max(m) FROM (SELECT max(recv_ms) AS m FROM windows WHERE recv_ms <= ?1
               UNION ALL SELECT max(hour_ms) + 3600000 FROM windows_hourly WHERE hour_ms < ?1)",
            params![i(to_ms)],
            |r| r.get(0),
        )?;
        Ok(v.map(|v| u(v).min(to_ms)))
    }

    fn count(&self, table: &str) -> anyhow::Result<i64> {
        Ok(self
            .db
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::boots::BootMeta;
    use crate::store::{DAY_MS, Store};
    use faultline_shared::{Cause, IncidentEvent, IncidentEventKind, Scope, State};

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
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
        let n = s.count("windows_hourly").unwrap();
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

    fn count(s: &Store, table: &str) -> i64 {
        s.count(table).unwrap()
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
        assert_eq!(count(&s, "windows"), 0);
        s.begin().unwrap();
        assert!(!s.window(&row("a", 7, 5, 11 * DAY_MS)).unwrap());
        assert!(s.window(&row("a", 7, 3, 11 * DAY_MS)).unwrap());
        s.commit().unwrap();
        assert_eq!(count(&s, "windows"), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_new_target_is_listed_at_once_others_once_a_minute() {
        let (dir, path) = temp_db("targets");
        let mut s = Store::open(&path).unwrap();
        let point = |name: &str| crate::engine::TargetPoint {
            target: id(name),
            layer: faultline_shared::Layer::Lan,
            provider: None,
            rtt_p50_ms: None,
            rtt_p95_ms: None,
            jitter_ms: None,
            loss: 0.0,
            mos: None,
        };
        let listed = |s: &Store| -> Vec<String> {
            s.site_targets("a")
                .unwrap()
                .into_iter()
                .map(|(t, _, _)| t)
                .collect()
        };
        for (seq, names) in [(0, vec!["gw"]), (1, vec!["gw", "central"])] {
            s.begin().unwrap();
            let mut w = row("a", 1, seq, 1_000 + seq * 1_000);
            w.targets = names.iter().map(|n| point(n)).collect();
            assert!(s.window(&w).unwrap());
            s.commit().unwrap();
        }
        assert_eq!(listed(&s), ["central", "gw"], "a second later");
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
        assert_eq!(count(&s, "windows"), 4);
        let db = Connection::open(&path).unwrap();
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let r = s.restore(50).unwrap();
        let mut boots: Vec<_> = r
            .boots
            .iter()
            .map(|(_, b)| (b.meta.boot, b.meta.ordinal, b.seqs.to_string()))
            .collect();
        boots.sort();
        assert_eq!(boots, [(1, 1, "0-1,3".to_owned()), (2, 2, "0".to_owned())]);
        let dup = db.execute(
            "INSERT INTO windows VALUES('a', 50, 0, 1, 3, 0, 0.0, NULL, NULL)",
            [],
        );
        assert!(dup.is_err(), "unique on (site, boot, seq)");
        drop(s);
        // Opening again changes nothing.
        let s = Store::open(&path).unwrap();
        assert_eq!(count(&s, "boots"), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
