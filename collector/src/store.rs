//! History in SQLite: incidents, verdict changes, the verdicts in force (restored
//! after a restart), per-window summaries with retention and hourly downsampling.
//!
//! [`Store`] is plain synchronous rusqlite; `run` owns it on a writer thread fed by a
//! channel, so a slow disk never stalls ingest.

use std::path::Path;

use anyhow::Context;
use faultline_shared::{Id, Incident, IncidentEvent, Verdict};
use rusqlite::{Connection, OptionalExtension, params};

use crate::engine::Restored;

const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;

/// One site's window as kept in history.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRow {
    pub site: Id,
    pub recv_ms: u64,
    pub start_ms: u64,
    pub boot: u32,
    pub seq: u64,
    /// Probes judged bad in this window.
    pub bad: u32,
    pub max_loss: f64,
    pub max_rtt_ms: Option<f64>,
    pub min_mos: Option<f64>,
    /// Providers this site probed in the window.
    pub providers: Vec<Id>,
}

#[derive(Debug)]
pub struct Store {
    db: Connection,
    /// (site, provider) → when `site_providers` was last advanced: written at most
    /// once a minute per pair.
    seen_providers: std::collections::HashMap<(Id, Id), u64>,
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let db = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
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
        Ok(Store {
            db,
            seen_providers: std::collections::HashMap::new(),
        })
    }

    pub fn begin(&mut self) -> anyhow::Result<()> {
        self.db.execute_batch("BEGIN")?;
        Ok(())
    }

    pub fn commit(&mut self) -> anyhow::Result<()> {
        self.db.execute_batch("COMMIT")?;
        Ok(())
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

    pub fn incident(&mut self, ev: &IncidentEvent) -> anyhow::Result<()> {
        let inc = &ev.incident;
        let json = serde_json::to_string(inc)?;
        self.db
            .prepare_cached(
                "INSERT INTO incidents(id, scope, target_id, cause, state, opened_ms, closed_ms, json)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET cause = excluded.cause, state = excluded.state,
                   closed_ms = excluded.closed_ms, json = excluded.json",
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

    pub fn window(&mut self, w: &WindowRow) -> anyhow::Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO windows(site, recv_ms, start_ms, boot, seq, bad, max_loss, max_rtt_ms, min_mos)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
                w.min_mos
            ])?;
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
        let cut = i(now_ms.saturating_sub(u64::from(raw_days) * DAY_MS) / HOUR_MS * HOUR_MS);
        let tx = self.db.transaction()?;
        tx.execute(
            "INSERT INTO windows_hourly(site, hour_ms, windows, bad_windows, avg_loss, max_rtt_ms, min_mos)
             SELECT site, (recv_ms / ?2) * ?2, count(*), sum(bad > 0), avg(max_loss), max(max_rtt_ms), min(min_mos)
             FROM windows WHERE recv_ms < ?1 GROUP BY site, (recv_ms / ?2)
             ON CONFLICT(site, hour_ms) DO UPDATE SET
               avg_loss = (avg_loss * windows + excluded.avg_loss * excluded.windows) / (windows + excluded.windows),
               windows = windows + excluded.windows,
               bad_windows = bad_windows + excluded.bad_windows,
               max_rtt_ms = max(coalesce(max_rtt_ms, excluded.max_rtt_ms), coalesce(excluded.max_rtt_ms, max_rtt_ms)),
               min_mos = min(coalesce(min_mos, excluded.min_mos), coalesce(excluded.min_mos, min_mos))",
            params![cut, i(HOUR_MS)],
        )?;
        tx.execute("DELETE FROM windows WHERE recv_ms < ?1", params![cut])?;
        let hcut = i(now_ms.saturating_sub(u64::from(hourly_days) * DAY_MS));
        tx.execute(
            "DELETE FROM windows_hourly WHERE hour_ms < ?1",
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
        tx.commit()?;
        Ok(())
    }

    /// What the engine needs to carry on after a restart.
    pub fn restore(&self) -> anyhow::Result<Restored> {
        let mut r = Restored::default();
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
        let rows = st.query_map(params![scope, i(from_ms), i(to_ms), limit], |row| {
            row.get::<_, String>(0)
        })?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?)?);
        }
        Ok(out)
    }

    /// The most recent verdict changes, newest first.
    pub fn recent_changes(&self, limit: u32) -> anyhow::Result<Vec<Verdict>> {
        let mut st = self
            .db
            .prepare("SELECT json FROM verdict_changes ORDER BY rowid DESC LIMIT ?1")?;
        let rows = st.query_map(params![limit], |row| row.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?)?);
        }
        Ok(out)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_shared::{Cause, IncidentEventKind, Scope, State};

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
                target_id: id("voipco"),
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
                id: id("voipco"),
                state: State::Outage,
                cause: Some(Cause::Provider),
                provider: None,
                sites: vec![id("a"), id("b")],
                incident: Some("inc-000007".into()),
                recommendation: None,
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
            })
            .unwrap();
            s.commit().unwrap();
            s.maintain(10 * DAY_MS, 2, 90, 400).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let r = s.restore().unwrap();
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
}
