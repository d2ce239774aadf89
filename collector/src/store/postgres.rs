//! History in PostgreSQL (a cluster's shared database): the [`Backend`] SQL, and
//! versioned migrations (`schema_migrations`) applied in order at open.
//!
//! Several collectors write at once (site workers their own sites' windows, boots
//! and chart sums; one correlator verdicts and incidents), so nothing here is a
//! read-modify-write of a shared row without its row lock: windows are `ON CONFLICT
//! DO NOTHING` on (site, boot, seq); a boot's seq record and a minute's chart sums
//! are merged under `SELECT ... FOR UPDATE`, taken in one order by every writer;
//! migrations and maintenance run under advisory locks. Commits are durable
//! (PostgreSQL's default `synchronous_commit = on`).
//!
//! The client is the blocking `postgres` crate, which runs a small runtime of its
//! own: use it on the writer thread or in `spawn_blocking`, never on a tokio worker.
//! Dropping it inside a runtime moves the drop to a plain thread.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::Context;
use faultline_shared::{Id, Incident, State, Verdict};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use super::{
    Backend, Coverage, Cuts, DEFAULT_WINDOW_MS, HOUR_MS, HourSums, MinuteBlobs, PointSum,
    SeriesRow, WindowRow, boot_seen, i, incident_worst, merge_sums, parse_json, severity, site_row,
    u,
};
use crate::config::PgLocation;
use crate::engine::Restored;
use crate::engine::boots::{BootMeta, FORGET_AFTER_MS, SeqSet};

/// `pg_advisory_lock` keys: one process migrates at a time, one maintains.
const MIGRATE_LOCK: i64 = 0x4641_554c_5401;
const MAINTAIN_LOCK: i64 = 0x4641_554c_5402;

/// The schema, one migration per version, applied in order (each in its own
/// transaction, recorded in `schema_migrations`). Append; never edit a shipped one.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE meta(key TEXT PRIMARY KEY, value BIGINT NOT NULL);
     CREATE TABLE incidents(
       id TEXT PRIMARY KEY, scope TEXT NOT NULL, target_id TEXT NOT NULL,
       cause TEXT, state TEXT NOT NULL, opened_ms BIGINT NOT NULL,
       closed_ms BIGINT, json TEXT NOT NULL, worst TEXT);
     CREATE INDEX incidents_open ON incidents(closed_ms);
     CREATE TABLE verdicts_current(
       scope TEXT NOT NULL, id TEXT NOT NULL, json TEXT NOT NULL, PRIMARY KEY(scope, id));
     CREATE TABLE verdict_changes(
       n BIGSERIAL PRIMARY KEY, at_ms BIGINT NOT NULL, scope TEXT NOT NULL,
       id TEXT NOT NULL, state TEXT NOT NULL, json TEXT NOT NULL);
     CREATE INDEX verdict_changes_at ON verdict_changes(at_ms);
     CREATE TABLE sites(site TEXT PRIMARY KEY, isp TEXT, customer TEXT);
     CREATE TABLE site_providers(
       site TEXT NOT NULL, provider TEXT NOT NULL,
       first_ms BIGINT NOT NULL, last_ms BIGINT NOT NULL, PRIMARY KEY(site, provider));
     CREATE TABLE windows(
       site TEXT NOT NULL, recv_ms BIGINT NOT NULL, start_ms BIGINT NOT NULL,
       boot BIGINT NOT NULL, seq BIGINT NOT NULL, bad BIGINT NOT NULL,
       max_loss DOUBLE PRECISION NOT NULL, max_rtt_ms DOUBLE PRECISION,
       min_mos DOUBLE PRECISION, window_ms BIGINT, PRIMARY KEY(site, boot, seq));
     CREATE INDEX windows_recv ON windows(recv_ms);
     CREATE INDEX windows_site_recv ON windows(site, recv_ms);
     CREATE TABLE windows_hourly(
       site TEXT NOT NULL, hour_ms BIGINT NOT NULL, windows BIGINT NOT NULL,
       bad_windows BIGINT NOT NULL, avg_loss DOUBLE PRECISION NOT NULL,
       max_rtt_ms DOUBLE PRECISION, min_mos DOUBLE PRECISION, watched_ms BIGINT,
       PRIMARY KEY(site, hour_ms));
     CREATE TABLE boots(
       site TEXT NOT NULL, boot BIGINT NOT NULL, ordinal BIGINT NOT NULL,
       announced BOOLEAN NOT NULL, floor BIGINT, seqs TEXT NOT NULL,
       last_ms BIGINT NOT NULL, PRIMARY KEY(site, boot));
     CREATE TABLE target_minutes(
       site TEXT NOT NULL, minute_ms BIGINT NOT NULL, targets BYTEA NOT NULL,
       PRIMARY KEY(site, minute_ms));
     CREATE TABLE target_hourly(
       site TEXT NOT NULL, target TEXT NOT NULL, hour_ms BIGINT NOT NULL,
       windows BIGINT NOT NULL, rtt_p50_ms DOUBLE PRECISION, rtt_p95_ms DOUBLE PRECISION,
       jitter_ms DOUBLE PRECISION, loss DOUBLE PRECISION NOT NULL, mos DOUBLE PRECISION,
       PRIMARY KEY(site, target, hour_ms));
     CREATE TABLE site_targets(
       site TEXT NOT NULL, target TEXT NOT NULL, layer TEXT NOT NULL, provider TEXT,
       first_ms BIGINT NOT NULL, last_ms BIGINT NOT NULL, PRIMARY KEY(site, target));",
    ),
    (
        2,
        "CREATE TABLE maintenance(
           window_id TEXT PRIMARY KEY, to_ms BIGINT NOT NULL, json TEXT NOT NULL);",
    ),
];

/// The schema this build writes (the last migration's version).
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A connection and its prepared statements.
struct Conn {
    client: Client,
    prepared: HashMap<&'static str, Statement>,
    /// Inside `BEGIN`..`COMMIT`: a lost connection is then an error, never replaced
    /// (statements on a new one would commit without the lost ones).
    in_transaction: bool,
}

impl Conn {
    fn open(pg: &PgLocation) -> anyhow::Result<Conn> {
        let client = pg
            .config
            .connect(NoTls)
            .with_context(|| format!("connect to {}", pg.shown))?;
        Ok(Conn {
            client,
            prepared: HashMap::new(),
            in_transaction: false,
        })
    }

    fn statement(&mut self, sql: &'static str) -> anyhow::Result<Statement> {
        if let Some(st) = self.prepared.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client.prepare(sql)?;
        self.prepared.insert(sql, st.clone());
        Ok(st)
    }

    fn execute(&mut self, sql: &'static str, params: Params<'_>) -> anyhow::Result<u64> {
        let st = self.statement(sql)?;
        Ok(self.client.execute(&st, params)?)
    }

    fn query(&mut self, sql: &'static str, params: Params<'_>) -> anyhow::Result<Vec<Row>> {
        let st = self.statement(sql)?;
        Ok(self.client.query(&st, params)?)
    }

    fn query_opt(&mut self, sql: &'static str, params: Params<'_>) -> anyhow::Result<Option<Row>> {
        let st = self.statement(sql)?;
        Ok(self.client.query_opt(&st, params)?)
    }
}

/// A PostgreSQL history database.
pub struct Postgres {
    location: PgLocation,
    /// Reads come through `&self` (pages share one `Store`); `None` only while dropped.
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Postgres")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let conn = self.conn.get_mut().ok().and_then(Option::take);
        // The client's runtime may not be dropped (nor block) on a tokio worker.
        if let Some(conn) = conn
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let _ = std::thread::spawn(move || drop(conn)).join();
        }
    }
}

impl Postgres {
    /// Connects, then brings the schema up to [`SCHEMA_VERSION`].
    pub fn connect(pg: &PgLocation) -> anyhow::Result<Postgres> {
        let mut conn = Conn::open(pg)?;
        migrate(&mut conn.client).with_context(|| format!("migrate {}", pg.shown))?;
        Ok(Postgres {
            location: pg.clone(),
            conn: Mutex::new(Some(conn)),
        })
    }

    /// Runs `f` on the connection; outside a transaction a lost connection (the
    /// server restarted) is replaced first.
    fn with<T>(&self, f: impl FnOnce(&mut Conn) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mut guard = self
            .conn
            .lock()
            .map_err(|_| anyhow::anyhow!("history connection poisoned"))?;
        // Some from `connect` until `drop`.
        let conn = guard.as_mut().expect("connection present until dropped");
        if conn.client.is_closed() && !conn.in_transaction {
            *conn = Conn::open(&self.location)?;
            tracing::info!("history: reconnected to {}", self.location.shown);
        }
        f(conn)
    }

    fn execute(&mut self, sql: &'static str, params: Params<'_>) -> anyhow::Result<u64> {
        self.with(|c| c.execute(sql, params))
    }

    fn query(&self, sql: &'static str, params: Params<'_>) -> anyhow::Result<Vec<Row>> {
        self.with(|c| c.query(sql, params))
    }

    fn query_opt(&self, sql: &'static str, params: Params<'_>) -> anyhow::Result<Option<Row>> {
        self.with(|c| c.query_opt(sql, params))
    }
}

/// Applies the migrations not yet recorded, in order, under an advisory lock (two
/// collectors starting at once: the second waits, then finds them applied).
fn migrate(client: &mut Client) -> anyhow::Result<()> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])?;
    let res = (|| -> anyhow::Result<()> {
        client.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations(
               version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )?;
        let applied: Vec<i32> = client
            .query("SELECT version FROM schema_migrations", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(v) = applied.iter().max().filter(|&&v| v > SCHEMA_VERSION) {
            anyhow::bail!(
                "the database has schema {v}, newer than this collector's {SCHEMA_VERSION}"
            );
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| !applied.contains(v)) {
            let mut tx = client.transaction()?;
            tx.batch_execute(sql)
                .with_context(|| format!("migration {version}"))?;
            tx.execute(
                "INSERT INTO schema_migrations(version) VALUES($1)",
                &[version],
            )?;
            tx.commit()?;
            tracing::info!(version, "history: PostgreSQL schema migrated");
        }
        Ok(())
    })();
    let unlock = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK]);
    res?;
    unlock?;
    Ok(())
}

/// `a` with every seq of the run list `b` added, as [`SeqSet`] text.
/// The rows `sql` selects for the (site, number) keys, locked: (site, number) → the
/// third column. `sql` joins `unnest($1::text[], $2::int8[])` and orders its locks.
fn locked<T: for<'a> postgres::types::FromSql<'a>>(
    c: &mut Conn,
    sql: &'static str,
    sites: &[&str],
    numbers: &[i64],
) -> anyhow::Result<HashMap<(String, i64), T>> {
    Ok(c.query(sql, &[&sites, &numbers])?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

fn union_text(a: &SeqSet, b: &SeqSet) -> String {
    let mut runs: Vec<(u64, u64)> = a.runs().iter().chain(b.runs()).copied().collect();
    runs.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for (s, e) in runs {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let parts: Vec<String> = merged
        .iter()
        .map(|&(s, e)| {
            if s == e {
                s.to_string()
            } else {
                format!("{s}-{e}")
            }
        })
        .collect();
    parts.join(",")
}

impl Backend for Postgres {
    fn begin(&mut self) -> anyhow::Result<()> {
        self.with(|c| {
            c.client.batch_execute("BEGIN")?;
            c.in_transaction = true;
            Ok(())
        })
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        self.with(|c| {
            // A failed COMMIT leaves the transaction to `rollback`.
            c.client.batch_execute("COMMIT")?;
            c.in_transaction = false;
            Ok(())
        })
    }

    fn rollback(&mut self) {
        let _ = self.with(|c| {
            c.in_transaction = false;
            Ok(c.client.batch_execute("ROLLBACK")?)
        });
    }

    fn boot(&mut self, site: &Id, m: &BootMeta) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO boots AS b(site, boot, ordinal, announced, floor, seqs, last_ms)
             VALUES($1, $2, $3, $4, $5, '', $6)
             ON CONFLICT(site, boot) DO UPDATE SET ordinal = excluded.ordinal,
               announced = excluded.announced, floor = excluded.floor,
               last_ms = greatest(b.last_ms, excluded.last_ms)",
            &[
                &site.as_str(),
                &i64::from(m.boot),
                &i(m.ordinal),
                &m.announced,
                &m.floor.map(i),
                &i(m.last_ms),
            ],
        )?;
        Ok(())
    }

    fn boot_seqs(&mut self, site: &Id, boot: u32) -> anyhow::Result<Option<(String, u64)>> {
        let row = self.query_opt(
            "SELECT seqs, last_ms FROM boots WHERE site = $1 AND boot = $2",
            &[&site.as_str(), &i64::from(boot)],
        )?;
        Ok(row.map(|r| (r.get(0), u(r.get(1)))))
    }

    fn save_boot_seqs(
        &mut self,
        site: &Id,
        boot: u32,
        seqs: &SeqSet,
        last_ms: u64,
    ) -> anyhow::Result<()> {
        let (site, boot, last) = (site.as_str(), i64::from(boot), i(last_ms));
        self.with(|c| {
            c.execute(
                "INSERT INTO boots(site, boot, ordinal, announced, floor, seqs, last_ms)
                 VALUES($1, $2, 0, false, NULL, '', $3) ON CONFLICT(site, boot) DO NOTHING",
                &[&site, &boot, &last],
            )?;
            // Another writer may have recorded seqs of this boot meanwhile (a site
            // handed over): keep theirs too, under the row's lock.
            let stored: String = c
                .query_opt(
                    "SELECT seqs FROM boots WHERE site = $1 AND boot = $2 FOR UPDATE",
                    &[&site, &boot],
                )?
                .map(|r| r.get(0))
                .unwrap_or_default();
            let text = match SeqSet::parse(&stored) {
                Ok(theirs) if !theirs.is_empty() => union_text(seqs, &theirs),
                _ => seqs.to_string(),
            };
            c.execute(
                "UPDATE boots SET seqs = $3, last_ms = greatest(last_ms, $4)
                 WHERE site = $1 AND boot = $2",
                &[&site, &boot, &text, &last],
            )?;
            Ok(())
        })
    }

    fn save_boots(&mut self, boots: &[(&Id, u32, &SeqSet, u64)]) -> anyhow::Result<()> {
        if boots.is_empty() {
            return Ok(());
        }
        let sites: Vec<&str> = boots.iter().map(|b| b.0.as_str()).collect();
        let ids: Vec<i64> = boots.iter().map(|b| i64::from(b.1)).collect();
        let lasts: Vec<i64> = boots.iter().map(|b| i(b.3)).collect();
        self.with(|c| {
            c.execute(
                "INSERT INTO boots(site, boot, ordinal, announced, floor, seqs, last_ms)
                 SELECT s, n, 0, false, NULL, '', l FROM unnest($1::text[], $2::int8[], $3::int8[]) AS u(s, n, l)
                 ON CONFLICT(site, boot) DO NOTHING",
                &[&sites, &ids, &lasts],
            )?;
            // Another writer may have recorded seqs of these boots meanwhile (a site
            // handed over): keep theirs too, under the rows' locks, taken in one order.
            let stored: HashMap<(String, i64), String> = locked(
                c,
                "SELECT b.site, b.boot, b.seqs FROM boots b
                 JOIN unnest($1::text[], $2::int8[]) AS u(s, n) ON b.site = u.s AND b.boot = u.n
                 ORDER BY b.site, b.boot FOR UPDATE OF b",
                &sites,
                &ids,
            )?;
            let texts: Vec<String> = boots
                .iter()
                .map(|&(site, boot, seqs, _)| {
                    let key = (site.as_str().to_owned(), i64::from(boot));
                    match stored.get(&key).map(|t| SeqSet::parse(t)) {
                        Some(Ok(theirs)) if !theirs.is_empty() => union_text(seqs, &theirs),
                        _ => seqs.to_string(),
                    }
                })
                .collect();
            c.execute(
                "UPDATE boots SET seqs = u.q, last_ms = greatest(boots.last_ms, u.l)
                 FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[]) AS u(s, n, q, l)
                 WHERE boots.site = u.s AND boots.boot = u.n",
                &[&sites, &ids, &texts, &lasts],
            )?;
            Ok(())
        })
    }

    fn merge_minutes(&mut self, minutes: Vec<((Id, u64), Vec<PointSum>)>) -> anyhow::Result<()> {
        if minutes.is_empty() {
            return Ok(());
        }
        let sites: Vec<&str> = minutes.iter().map(|((s, _), _)| s.as_str()).collect();
        let mins: Vec<i64> = minutes.iter().map(|((_, m), _)| i(*m)).collect();
        let fresh: Vec<Vec<u8>> = minutes
            .iter()
            .map(|(_, sums)| merge_sums(None, sums.clone()))
            .collect();
        self.with(|c| {
            // New minutes in one insert; minutes already stored are merged under
            // their rows' locks (another worker may be adding to them).
            let taken: std::collections::HashSet<(String, i64)> = c
                .query(
                    "INSERT INTO target_minutes(site, minute_ms, targets)
                     SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[])
                     ON CONFLICT(site, minute_ms) DO NOTHING RETURNING site, minute_ms",
                    &[&sites, &mins, &fresh],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let rest: Vec<usize> = (0..minutes.len())
                .filter(|&k| !taken.contains(&(sites[k].to_owned(), mins[k])))
                .collect();
            if rest.is_empty() {
                return Ok(());
            }
            let rs: Vec<&str> = rest.iter().map(|&k| sites[k]).collect();
            let rm: Vec<i64> = rest.iter().map(|&k| mins[k]).collect();
            let stored: HashMap<(String, i64), Vec<u8>> = locked(
                c,
                "SELECT t.site, t.minute_ms, t.targets FROM target_minutes t
                 JOIN unnest($1::text[], $2::int8[]) AS u(s, m) ON t.site = u.s AND t.minute_ms = u.m
                 ORDER BY t.site, t.minute_ms FOR UPDATE OF t",
                &rs,
                &rm,
            )?;
            let merged: Vec<Vec<u8>> = rest
                .iter()
                .map(|&k| {
                    let key = (sites[k].to_owned(), mins[k]);
                    merge_sums(stored.get(&key).map(Vec::as_slice), minutes[k].1.clone())
                })
                .collect();
            c.execute(
                "UPDATE target_minutes SET targets = u.t
                 FROM unnest($1::text[], $2::int8[], $3::bytea[]) AS u(s, m, t)
                 WHERE target_minutes.site = u.s AND target_minutes.minute_ms = u.m",
                &[&rs, &rm, &merged],
            )?;
            Ok(())
        })
    }

    fn verdict(&mut self, v: &Verdict, json: &str) -> anyhow::Result<()> {
        let scope = v.scope.as_str();
        self.execute(
            "INSERT INTO verdicts_current(scope, id, json) VALUES($1, $2, $3)
             ON CONFLICT(scope, id) DO UPDATE SET json = excluded.json",
            &[&scope, &v.id.as_str(), &json],
        )?;
        self.execute(
            "INSERT INTO verdict_changes(at_ms, scope, id, state, json) VALUES($1, $2, $3, $4, $5)",
            &[
                &i(v.at_ms),
                &scope,
                &v.id.as_str(),
                &v.state.as_str(),
                &json,
            ],
        )?;
        Ok(())
    }

    fn forget_verdict(&mut self, v: &Verdict) -> anyhow::Result<()> {
        self.execute(
            "DELETE FROM verdicts_current WHERE scope = $1 AND id = $2",
            &[&v.scope.as_str(), &v.id.as_str()],
        )?;
        Ok(())
    }

    fn incident(&mut self, inc: &Incident, json: &str) -> anyhow::Result<()> {
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!(
                "INSERT INTO incidents AS i(id, scope, target_id, cause, state, opened_ms, closed_ms, json, worst)
                 VALUES($1, $2, $3, $4, $5, $6, $7, $8, $5)
                 ON CONFLICT(id) DO UPDATE SET cause = excluded.cause, state = excluded.state,
                   closed_ms = excluded.closed_ms, json = excluded.json,
                   worst = CASE WHEN {} > {} THEN excluded.state ELSE coalesce(i.worst, i.state) END",
                severity("excluded.state"),
                severity("coalesce(i.worst, i.state)")
            )
        });
        self.execute(
            sql,
            &[
                &inc.id,
                &inc.scope.as_str(),
                &inc.target_id.as_str(),
                &inc.cause.map(|c| c.as_str()),
                &inc.state.as_str(),
                &i(inc.opened_ms),
                &inc.closed_ms.map(i),
                &json,
            ],
        )?;
        Ok(())
    }

    fn next_incident(&mut self, n: i64) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO meta(key, value) VALUES('next_incident', $1)
             ON CONFLICT(key) DO UPDATE SET value = greatest(meta.value, excluded.value)",
            &[&n],
        )?;
        Ok(())
    }

    fn site(&mut self, site: &Id, isp: Option<&Id>, customer: Option<&str>) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO sites(site, isp, customer) VALUES($1, $2, $3)
             ON CONFLICT(site) DO UPDATE SET isp = coalesce(excluded.isp, sites.isp),
               customer = coalesce(excluded.customer, sites.customer)",
            &[&site.as_str(), &isp.map(Id::as_str), &customer],
        )?;
        Ok(())
    }

    fn insert_window(&mut self, w: &WindowRow) -> anyhow::Result<bool> {
        Ok(self.execute(
            "INSERT INTO windows(site, recv_ms, start_ms, boot, seq, bad, max_loss, max_rtt_ms, min_mos, window_ms)
             VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT(site, boot, seq) DO NOTHING",
            &[
                &w.site.as_str(),
                &i(w.recv_ms),
                &i(w.start_ms),
                &i64::from(w.boot),
                &i(w.seq),
                &i64::from(w.bad),
                &w.max_loss,
                &w.max_rtt_ms,
                &w.min_mos,
                &i64::from(w.window_ms),
            ],
        )? == 1)
    }

    fn insert_windows(&mut self, rows: &[&WindowRow]) -> anyhow::Result<Vec<bool>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for the batch: column arrays, unnested; the rows it took
        // come back (a row another writer stored first is not among them).
        let col = |f: fn(&WindowRow) -> i64| rows.iter().map(|w| f(w)).collect::<Vec<i64>>();
        let sites: Vec<&str> = rows.iter().map(|w| w.site.as_str()).collect();
        let (recv, start) = (col(|w| i(w.recv_ms)), col(|w| i(w.start_ms)));
        let (boot, seq) = (col(|w| i64::from(w.boot)), col(|w| i(w.seq)));
        let (bad, window) = (col(|w| i64::from(w.bad)), col(|w| i64::from(w.window_ms)));
        let loss: Vec<f64> = rows.iter().map(|w| w.max_loss).collect();
        let rtt: Vec<Option<f64>> = rows.iter().map(|w| w.max_rtt_ms).collect();
        let mos: Vec<Option<f64>> = rows.iter().map(|w| w.min_mos).collect();
        let taken = self.query(
            "INSERT INTO windows(site, recv_ms, start_ms, boot, seq, bad, max_loss, max_rtt_ms, min_mos, window_ms)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[],
                                  $6::int8[], $7::float8[], $8::float8[], $9::float8[], $10::int8[])
             ON CONFLICT(site, boot, seq) DO NOTHING RETURNING site, boot, seq",
            &[&sites, &recv, &start, &boot, &seq, &bad, &loss, &rtt, &mos, &window],
        )?;
        let taken: std::collections::HashSet<(String, i64, i64)> = taken
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        Ok(rows
            .iter()
            .map(|w| taken.contains(&(w.site.as_str().to_owned(), i64::from(w.boot), i(w.seq))))
            .collect())
    }

    fn site_target(
        &mut self,
        site: &Id,
        t: &crate::engine::TargetPoint,
        at_ms: u64,
    ) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO site_targets AS t(site, target, layer, provider, first_ms, last_ms)
             VALUES($1, $2, $3, $4, $5, $5)
             ON CONFLICT(site, target) DO UPDATE SET layer = excluded.layer,
               provider = excluded.provider, last_ms = greatest(t.last_ms, excluded.last_ms)",
            &[
                &site.as_str(),
                &t.target.as_str(),
                &t.layer.as_str(),
                &t.provider.as_ref().map(Id::as_str),
                &i(at_ms),
            ],
        )?;
        Ok(())
    }

    fn site_provider(&mut self, site: &Id, provider: &Id, at_ms: u64) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO site_providers AS p(site, provider, first_ms, last_ms) VALUES($1, $2, $3, $3)
             ON CONFLICT(site, provider) DO UPDATE SET last_ms = greatest(p.last_ms, excluded.last_ms)",
            &[&site.as_str(), &provider.as_str(), &i(at_ms)],
        )?;
        Ok(())
    }

    fn merge_minute(
        &mut self,
        site: &Id,
        minute_ms: u64,
        sums: Vec<PointSum>,
    ) -> anyhow::Result<()> {
        let (site, minute) = (site.as_str(), i(minute_ms));
        self.with(|c| {
            // A new minute is one insert; a minute already stored is merged under
            // its row's lock (another worker may be adding to it).
            let fresh = merge_sums(None, sums.clone());
            if c.execute(
                "INSERT INTO target_minutes(site, minute_ms, targets) VALUES($1, $2, $3)
                 ON CONFLICT(site, minute_ms) DO NOTHING",
                &[&site, &minute, &fresh],
            )? == 1
            {
                return Ok(());
            }
            let stored: Option<Vec<u8>> = c
                .query_opt(
                    "SELECT targets FROM target_minutes WHERE site = $1 AND minute_ms = $2 FOR UPDATE",
                    &[&site, &minute],
                )?
                .map(|r| r.get(0));
            c.execute(
                "UPDATE target_minutes SET targets = $3 WHERE site = $1 AND minute_ms = $2",
                &[&site, &minute, &merge_sums(stored.as_deref(), sums)],
            )?;
            Ok(())
        })
    }

    fn maintain(&mut self, cuts: &Cuts) -> anyhow::Result<()> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            // One collector maintains at a time: a second would roll the same rows
            // up again before the first deleted them.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MAINTAIN_LOCK])?;
            tx.execute(
                "INSERT INTO windows_hourly AS h(site, hour_ms, windows, bad_windows, avg_loss, max_rtt_ms, min_mos, watched_ms)
                 SELECT site, (recv_ms / $2) * $2, count(*), sum((bad > 0)::int)::bigint, avg(max_loss),
                   max(max_rtt_ms), min(min_mos), sum(coalesce(window_ms, $3))::bigint
                 FROM windows WHERE recv_ms < $1 GROUP BY 1, 2
                 ON CONFLICT(site, hour_ms) DO UPDATE SET
                   avg_loss = (h.avg_loss * h.windows + excluded.avg_loss * excluded.windows) / (h.windows + excluded.windows),
                   watched_ms = coalesce(h.watched_ms, h.windows * $3) + excluded.watched_ms,
                   windows = h.windows + excluded.windows,
                   bad_windows = h.bad_windows + excluded.bad_windows,
                   max_rtt_ms = greatest(h.max_rtt_ms, excluded.max_rtt_ms),
                   min_mos = least(h.min_mos, excluded.min_mos)",
                &[&cuts.raw, &i(HOUR_MS), &i(DEFAULT_WINDOW_MS)],
            )?;
            let mut hours = HourSums::default();
            for r in tx.query(
                "SELECT site, minute_ms, targets FROM target_minutes WHERE minute_ms < $1",
                &[&cuts.raw],
            )? {
                let site: &str = r.get(0);
                let blob: &[u8] = r.get(2);
                hours.add_minute(site, r.get(1), blob);
            }
            tx.execute(
                "DELETE FROM target_minutes WHERE minute_ms < $1",
                &[&cuts.raw],
            )?;
            for (site, target, hour, p) in hours.hours() {
                tx.execute(
                    "INSERT INTO target_hourly AS h(site, target, hour_ms, windows, rtt_p50_ms, rtt_p95_ms, jitter_ms, loss, mos)
                     VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT(site, target, hour_ms) DO UPDATE SET
                       rtt_p50_ms = coalesce((h.rtt_p50_ms * h.windows + excluded.rtt_p50_ms * excluded.windows) / (h.windows + excluded.windows), h.rtt_p50_ms, excluded.rtt_p50_ms),
                       rtt_p95_ms = coalesce((h.rtt_p95_ms * h.windows + excluded.rtt_p95_ms * excluded.windows) / (h.windows + excluded.windows), h.rtt_p95_ms, excluded.rtt_p95_ms),
                       jitter_ms = coalesce((h.jitter_ms * h.windows + excluded.jitter_ms * excluded.windows) / (h.windows + excluded.windows), h.jitter_ms, excluded.jitter_ms),
                       mos = coalesce((h.mos * h.windows + excluded.mos * excluded.windows) / (h.windows + excluded.windows), h.mos, excluded.mos),
                       loss = (h.loss * h.windows + excluded.loss * excluded.windows) / (h.windows + excluded.windows),
                       windows = h.windows + excluded.windows",
                    &[
                        &site,
                        &target,
                        &hour,
                        &i(p.windows),
                        &p.rtt_p50_ms,
                        &p.rtt_p95_ms,
                        &p.jitter_ms,
                        &p.loss,
                        &p.mos,
                    ],
                )?;
            }
            tx.execute("DELETE FROM windows WHERE recv_ms < $1", &[&cuts.raw])?;
            tx.execute(
                "DELETE FROM windows_hourly WHERE hour_ms < $1",
                &[&cuts.hourly],
            )?;
            tx.execute(
                "DELETE FROM target_hourly WHERE hour_ms < $1",
                &[&cuts.hourly],
            )?;
            tx.execute(
                "DELETE FROM incidents WHERE closed_ms IS NOT NULL AND closed_ms < $1",
                &[&cuts.incidents],
            )?;
            tx.execute(
                "DELETE FROM verdict_changes WHERE at_ms < $1",
                &[&cuts.incidents],
            )?;
            // As in SQLite: a boot's record outlives its raw rows while hourly rows
            // are kept; each site's live boot is always kept.
            tx.execute(
                "DELETE FROM boots WHERE last_ms < $1
                 AND ordinal < (SELECT max(ordinal) FROM boots b WHERE b.site = boots.site)",
                &[&cuts.hourly],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn restore(&self, now_ms: u64) -> anyhow::Result<Restored> {
        let mut r = Restored::default();
        for row in self.query(
            "SELECT site, boot, ordinal, announced, floor, seqs, last_ms FROM boots b
             WHERE last_ms >= $1 OR ordinal = (SELECT max(ordinal) FROM boots WHERE site = b.site)",
            &[&i(now_ms.saturating_sub(FORGET_AFTER_MS))],
        )? {
            let boot = u32::try_from(row.get::<_, i64>(1)).unwrap_or_default();
            r.boots.extend(boot_seen(
                row.get(0),
                boot,
                row.get(2),
                row.get(3),
                row.get(4),
                row.get(5),
                row.get(6),
            )?);
        }
        let json = |sql: &'static str| -> anyhow::Result<Vec<String>> {
            Ok(self.query(sql, &[])?.iter().map(|r| r.get(0)).collect())
        };
        r.verdicts = parse_json(json(
            "SELECT json FROM verdicts_current ORDER BY scope, id",
        )?)?;
        r.open_incidents = parse_json(json(
            "SELECT json FROM incidents WHERE closed_ms IS NULL ORDER BY id",
        )?)?;
        r.next_incident = self
            .query_opt("SELECT value FROM meta WHERE key = 'next_incident'", &[])?
            .map_or(0, |row| u(row.get(0)));
        for row in self.query("SELECT site, isp, customer FROM sites", &[])? {
            r.sites.extend(site_row(row.get(0), row.get(1), row.get(2)));
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
        let rows = self.query(
            "SELECT json, coalesce(worst, state) FROM incidents WHERE ($1::text IS NULL OR scope = $1)
             AND opened_ms < $3 AND (closed_ms IS NULL OR closed_ms >= $2)
             ORDER BY opened_ms DESC LIMIT $4",
            &[&scope, &i(from_ms), &i(to_ms), &i64::from(limit)],
        )?;
        rows.iter()
            .map(|r| incident_worst(r.get(0), r.get(1)))
            .collect()
    }

    fn incident_by_id(&self, id: &str) -> anyhow::Result<Option<(Incident, State)>> {
        self.query_opt(
            "SELECT json, coalesce(worst, state) FROM incidents WHERE id = $1",
            &[&id],
        )?
        .map(|r| incident_worst(r.get(0), r.get(1)))
        .transpose()
    }

    fn recent_changes(&self, limit: u32) -> anyhow::Result<Vec<Verdict>> {
        let rows = self.query(
            "SELECT json FROM verdict_changes ORDER BY n DESC LIMIT $1",
            &[&i64::from(limit)],
        )?;
        parse_json(rows.iter().map(|r| r.get(0)))
    }

    fn changes(
        &self,
        scope: &str,
        id: Option<&str>,
        from_ms: u64,
        to_ms: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<Verdict>> {
        let rows = self.query(
            "SELECT json FROM verdict_changes WHERE at_ms >= $3 AND at_ms <= $4
             AND scope = $1 AND ($2::text IS NULL OR id = $2) ORDER BY at_ms, n LIMIT $5",
            &[&scope, &id, &i(from_ms), &i(to_ms), &i64::from(limit)],
        )?;
        parse_json(rows.iter().map(|r| r.get(0)))
    }

    fn provider_sites(
        &self,
        provider: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> anyhow::Result<Vec<(String, u64, u64)>> {
        let rows = self.query(
            "SELECT site, first_ms, last_ms FROM site_providers
             WHERE provider = $1 AND first_ms < $3 AND last_ms >= $2 ORDER BY site",
            &[&provider, &i(from_ms), &i(to_ms)],
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), u(r.get(1)), u(r.get(2))))
            .collect())
    }

    fn save_maintenance(&mut self, window: &str, to_ms: u64, json: &str) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO maintenance(window_id, to_ms, json) VALUES($1, $2, $3)
             ON CONFLICT(window_id) DO UPDATE SET to_ms = excluded.to_ms, json = excluded.json",
            &[&window, &i(to_ms), &json],
        )?;
        Ok(())
    }

    fn delete_maintenance(&mut self, window: &str) -> anyhow::Result<bool> {
        Ok(self.execute("DELETE FROM maintenance WHERE window_id = $1", &[&window])? > 0)
    }

    fn maintenance_json(&self) -> anyhow::Result<Vec<String>> {
        let rows = self.query("SELECT json FROM maintenance ORDER BY window_id", &[])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn providers(&self) -> anyhow::Result<Vec<String>> {
        let rows = self.query(
            "SELECT provider FROM site_providers UNION SELECT target_id FROM incidents WHERE scope = 'provider' ORDER BY 1",
            &[],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn site_known(&self, site: &str) -> anyhow::Result<bool> {
        Ok(self
            .query_opt(
                "SELECT 1 FROM sites WHERE site = $1 UNION ALL SELECT 1 FROM site_targets WHERE site = $1 LIMIT 1",
                &[&site],
            )?
            .is_some())
    }

    fn site_identity(
        &self,
        site: &str,
    ) -> anyhow::Result<Option<(Option<String>, Option<String>)>> {
        Ok(self
            .query_opt("SELECT isp, customer FROM sites WHERE site = $1", &[&site])?
            .map(|r| (r.get(0), r.get(1))))
    }

    fn site_targets(&self, site: &str) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
        let rows = self.query(
            "SELECT target, layer, provider FROM site_targets WHERE site = $1 ORDER BY target",
            &[&site],
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn series_rows(
        &self,
        site: &str,
        target: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> anyhow::Result<(Vec<SeriesRow>, MinuteBlobs)> {
        let hourly = self
            .query(
                "SELECT hour_ms + 1800000, windows, rtt_p50_ms, rtt_p95_ms, jitter_ms, loss, mos FROM target_hourly
                   WHERE site = $1 AND target = $2 AND hour_ms >= $3::bigint - 3600000 AND hour_ms < $4",
                &[&site, &target, &i(from_ms), &i(to_ms)],
            )?
            .iter()
            .map(|r| SeriesRow {
                at_ms: u(r.get(0)),
                windows: u(r.get(1)),
                rtt_p50_ms: r.get(2),
                rtt_p95_ms: r.get(3),
                jitter_ms: r.get(4),
                loss: r.get(5),
                mos: r.get(6),
            })
            .collect();
        let minutes = self
            .query(
                "SELECT minute_ms, targets FROM target_minutes
                   WHERE site = $1 AND minute_ms >= $2::bigint - 60000 AND minute_ms < $3",
                &[&site, &i(from_ms), &i(to_ms)],
            )?
            .iter()
            .map(|r| (u(r.get(0)), r.get(1)))
            .collect();
        Ok((hourly, minutes))
    }

    fn coverage(&self, site: &str, from_ms: u64, to_ms: u64) -> anyhow::Result<Coverage> {
        let mut c = Coverage::default();
        for r in self.query(
            "SELECT recv_ms, coalesce(window_ms, $4) FROM windows
             WHERE site = $1 AND recv_ms >= $2 AND recv_ms < $3::bigint + 3600000 ORDER BY recv_ms",
            &[&site, &i(from_ms), &i(to_ms), &i(DEFAULT_WINDOW_MS)],
        )? {
            c.add_row(r.get(0), r.get(1));
        }
        for r in self.query(
            "SELECT hour_ms, coalesce(watched_ms, windows * $4) FROM windows_hourly
             WHERE site = $1 AND hour_ms >= $2::bigint - 3600000 AND hour_ms < $3 ORDER BY hour_ms",
            &[&site, &i(from_ms), &i(to_ms), &i(DEFAULT_WINDOW_MS)],
        )? {
            c.add_hour(u(r.get(0)), u(r.get(1)));
        }
        Ok(c)
    }

    fn evidence_end(&self, to_ms: u64) -> anyhow::Result<Option<u64>> {
        let row = self.query_opt(
            "SELECT max(m) FROM (SELECT max(recv_ms) AS m FROM windows WHERE recv_ms <= $1
               UNION ALL SELECT max(hour_ms) + 3600000 FROM windows_hourly WHERE hour_ms < $1) AS e",
            &[&i(to_ms)],
        )?;
        let v: Option<i64> = row.and_then(|r| r.get(0));
        Ok(v.map(|v| u(v).min(to_ms)))
    }

    fn count(&self, table: &str) -> anyhow::Result<i64> {
        self.with(|c| {
            let row = c
                .client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])?;
            Ok(row.get(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_merges_overlapping_and_adjacent_runs() {
        let a = SeqSet::parse("0-2,5,9").unwrap();
        let b = SeqSet::parse("3,6-7,20").unwrap();
        assert_eq!(union_text(&a, &b), "0-3,5-7,9,20");
        assert_eq!(union_text(&a, &SeqSet::new()), "0-2,5,9");
    }
}
