//! Alerts: every incident event to each signed webhook, and one Alertmanager alert
//! per open incident (DESIGN.md "Alerts").
//!
//! The engine's owner hands each `IncidentEvent` to [`Alerts::take`], which writes
//! it to the on-disk [`queue`] (fsync'd, one entry per receiver) before returning;
//! one delivery task per receiver then sends its entries in order and removes each
//! only after a 2xx answer, waiting with exponential backoff and jitter between
//! failed attempts. So a receiver that is down, or a collector that is killed,
//! loses nothing: the entries are sent when both are back, with the same
//! `X-Faultline-Event-Id`.
//!
//! Maintenance: an incident that opens while its subject is in a maintenance
//! window is held back, not queued. If it closes inside the window nothing is sent;
//! if it is still open when the window ends it is queued then, as `opened`. An
//! incident alerted before its window began is followed to its close as usual.
//!
//! - [`queue`]: the SQLite outbox; [`post`]: one HTTP POST (hyper, rustls on ring);
//! - [`webhook`]: signing and the webhook delivery loop;
//! - [`alertmanager`]: the v2 API's alerts and the loop that keeps them posted.

pub mod alertmanager;
pub mod post;
pub mod queue;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use faultline_shared::{Incident, IncidentEvent, IncidentEventKind, Scope, State, Verdict};
use tokio::sync::{Notify, broadcast, mpsc};

pub use post::{Client, Endpoint};
use queue::Queue;

use crate::config::{Secret, StorageLocation};
use crate::maintenance::{self, Book};

/// Shortest and longest wait between failed attempts to one receiver.
const RETRY_MIN_MS: u64 = 1_000;
const RETRY_MAX_MS: u64 = 60_000;

/// `[alerts]`, validated.
#[derive(Debug, Clone, Default)]
pub struct AlertsConfig {
    /// Alertmanager's base URL (`/api/v2/alerts` is appended).
    pub alertmanager: Option<Endpoint>,
    pub webhooks: Vec<WebhookConfig>,
    /// The dashboard's public base URL, for links back to `/incidents/{id}`.
    pub public_url: Option<String>,
    /// The outbox file; `None`: `alerts.db` beside the SQLite history (with
    /// PostgreSQL: in the working directory).
    pub queue: Option<PathBuf>,
}

impl AlertsConfig {
    pub fn is_enabled(&self) -> bool {
        self.alertmanager.is_some() || !self.webhooks.is_empty()
    }

    /// Where the outbox lives: `queue`, else `alerts.db` beside a SQLite history,
    /// else (PostgreSQL) `alerts.db` in the working directory.
    pub fn queue_path(&self, history: &StorageLocation) -> PathBuf {
        let beside = match history {
            StorageLocation::Sqlite(p) => p.parent().unwrap_or(Path::new("")),
            StorageLocation::Postgres(_) => Path::new(""),
        };
        self.queue
            .clone()
            .unwrap_or_else(|| beside.join("alerts.db"))
    }
}

/// One `[[alerts.webhook]]`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: Endpoint,
    pub secret: Secret,
    /// `ca_file`: trust exactly these CAs (a PSA behind a private CA); `None`: the
    /// system's CA certificates.
    pub roots: Option<rustls::RootCertStore>,
}

/// A receiver kind, as `/metrics` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Webhook,
    Alertmanager,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Webhook, Kind::Alertmanager];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::Alertmanager => "alertmanager",
        }
    }
}

/// Delivery counters per receiver kind, for `/metrics`.
#[derive(Debug, Default)]
pub struct AlertStats {
    delivered: [AtomicU64; 2],
    failed: [AtomicU64; 2],
    pending: [AtomicU64; 2],
    /// Incidents held back because they opened in a maintenance window.
    held: AtomicU64,
}

impl AlertStats {
    fn delivered(&self, k: Kind) {
        self.delivered[k as usize].fetch_add(1, Ordering::Relaxed);
        let _ = self.pending[k as usize].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(1))
        });
    }

    fn failed(&self, k: Kind) {
        self.failed[k as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Entries delivered, failed attempts, entries waiting on disk.
    pub fn get(&self, k: Kind) -> (u64, u64, u64) {
        let i = k as usize;
        (
            self.delivered[i].load(Ordering::Relaxed),
            self.failed[i].load(Ordering::Relaxed),
            self.pending[i].load(Ordering::Relaxed),
        )
    }

    /// Incidents held back by maintenance so far.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

/// The `faultline_collector_alerts_*` series, in Prometheus text.
pub fn write_metrics(o: &mut impl std::fmt::Write, stats: &AlertStats) -> std::fmt::Result {
    let series = [
        (
            "faultline_collector_alerts_delivered_total",
            "counter",
            "Incident events a receiver accepted (2xx).",
        ),
        (
            "faultline_collector_alerts_failed_total",
            "counter",
            "Failed delivery attempts (each is retried with backoff).",
        ),
        (
            "faultline_collector_alerts_pending",
            "gauge",
            "Incident events kept on disk until their receiver takes them.",
        ),
    ];
    for (i, (name, kind, help)) in series.iter().enumerate() {
        writeln!(o, "# HELP {name} {help}")?;
        writeln!(o, "# TYPE {name} {kind}")?;
        for k in Kind::ALL {
            let v = stats.get(k);
            let n = [v.0, v.1, v.2][i];
            writeln!(o, "{name}{{receiver=\"{}\"}} {n}", k.as_str())?;
        }
    }
    writeln!(
        o,
        "# HELP faultline_collector_alerts_held_total Incidents not alerted because they opened in a maintenance window."
    )?;
    writeln!(o, "# TYPE faultline_collector_alerts_held_total counter")?;
    writeln!(o, "faultline_collector_alerts_held_total {}", stats.held())?;
    Ok(())
}

fn retry_backoff() -> faultline_shared::Backoff {
    crate::service::backoff(RETRY_MIN_MS, RETRY_MAX_MS)
}

/// Sleeps the next backoff delay; true when `stop` came first.
async fn pause(
    backoff: &mut faultline_shared::Backoff,
    stop: &mut broadcast::Receiver<()>,
) -> bool {
    let d = backoff.next_delay(fastrand::f64());
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        _ = stop.recv() => true,
    }
}

/// The engine owner's side: takes events durably, wakes the delivery tasks.
#[derive(Debug)]
pub struct Alerts {
    queue: Queue,
    /// Queue keys, one per receiver; `wakes` in the same order.
    receivers: Vec<(String, Kind)>,
    wakes: Vec<Arc<Notify>>,
    to_alertmanager: Option<mpsc::UnboundedSender<Verdict>>,
    book: Arc<Book>,
    /// Open incidents held back by maintenance (never queued).
    held: BTreeMap<String, Incident>,
    /// Non-ok verdicts by subject: what an incident's cause points at.
    verdicts: HashMap<(Scope, String), Verdict>,
    stats: Arc<AlertStats>,
}

impl Alerts {
    /// Opens the outbox and starts one delivery task per receiver (on the current
    /// tokio runtime). `open` and `verdicts` are what the engine restored.
    pub fn start(
        cfg: &AlertsConfig,
        queue_path: &Path,
        open: &[Incident],
        verdicts: &[Verdict],
        book: Arc<Book>,
        stats: Arc<AlertStats>,
        stop: &broadcast::Sender<()>,
    ) -> anyhow::Result<Self> {
        let queue = Queue::open(queue_path)?;
        let mut receivers: Vec<(String, Kind)> = cfg
            .webhooks
            .iter()
            .map(|w| (format!("webhook:{}", w.url), Kind::Webhook))
            .collect();
        if cfg.alertmanager.is_some() {
            receivers.push((alertmanager::KEY.to_owned(), Kind::Alertmanager));
        }
        let keys: Vec<String> = receivers.iter().map(|(k, _)| k.clone()).collect();
        let dropped = queue.drop_unknown(&keys)?;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "alerts queued for receivers no longer configured were dropped"
            );
        }
        for (key, kind) in &receivers {
            stats.pending[*kind as usize].fetch_add(queue.pending(key)?, Ordering::Relaxed);
        }
        let client = Client::new();
        let mut wakes = Vec::new();
        for w in &cfg.webhooks {
            let wake = Arc::new(Notify::new());
            wakes.push(wake.clone());
            let worker = webhook::Worker {
                key: format!("webhook:{}", w.url),
                url: w.url.clone(),
                secret: w.secret.clone(),
                queue_path: queue_path.to_owned(),
                client: match &w.roots {
                    Some(r) => Client::with_roots(r.clone()),
                    None => client.clone(),
                },
                wake,
                stats: stats.clone(),
            };
            tokio::spawn(worker.run(stop.subscribe()));
        }
        let mut alerted = BTreeMap::new();
        let mut held = BTreeMap::new();
        for inc in open {
            if queue.alerted(&inc.id)? {
                alerted.insert(inc.id.clone(), inc.clone());
            } else {
                // Opened in maintenance (or before alerts were configured): `tick`
                // queues it once no window covers it.
                held.insert(inc.id.clone(), inc.clone());
            }
        }
        let to_alertmanager = match &cfg.alertmanager {
            None => None,
            Some(url) => {
                let wake = Arc::new(Notify::new());
                wakes.push(wake.clone());
                let (tx, rx) = mpsc::unbounded_channel();
                let recommendations = verdicts
                    .iter()
                    .filter(|v| v.scope == Scope::Provider)
                    .filter_map(|v| Some((v.incident.clone()?, v.recommendation.clone()?)))
                    .collect();
                let worker = alertmanager::Worker {
                    url: url.join("/api/v2/alerts"),
                    public_url: cfg.public_url.clone(),
                    queue_path: queue_path.to_owned(),
                    client,
                    wake,
                    stats: stats.clone(),
                    verdicts: rx,
                    open: alerted,
                    recommendations,
                };
                tokio::spawn(worker.run(stop.subscribe()));
                Some(tx)
            }
        };
        let mut alerts = Self {
            queue,
            receivers,
            wakes,
            to_alertmanager,
            book,
            held,
            verdicts: HashMap::new(),
            stats,
        };
        for v in verdicts {
            alerts.keep_verdict(v);
        }
        Ok(alerts)
    }

    /// Takes `ev` (durably, for every receiver) unless maintenance holds it back.
    pub fn take(&mut self, ev: &IncidentEvent, now_ms: u64) {
        let inc = &ev.incident;
        match ev.event {
            IncidentEventKind::Opened if self.in_maintenance(inc, now_ms) => {
                tracing::info!(incident = inc.id, "opened in maintenance: not alerted");
                self.stats.held.fetch_add(1, Ordering::Relaxed);
                self.held.insert(inc.id.clone(), inc.clone());
            }
            IncidentEventKind::Updated if self.held.contains_key(&inc.id) => {
                self.held.insert(inc.id.clone(), inc.clone());
            }
            IncidentEventKind::Closed if self.held.remove(&inc.id).is_some() => {
                tracing::info!(incident = inc.id, "closed in maintenance: never alerted");
            }
            _ => self.push(ev, now_ms),
        }
    }

    /// Keeps the verdicts incidents point at; hands provider advice to Alertmanager.
    pub fn verdict(&mut self, v: &Verdict) {
        self.keep_verdict(v);
        if let Some(tx) = &self.to_alertmanager
            && v.scope == Scope::Provider
        {
            let _ = tx.send(v.clone());
        }
    }

    /// Queues, as `opened`, held incidents whose maintenance has ended.
    pub fn tick(&mut self, now_ms: u64) {
        if self.held.is_empty() {
            return;
        }
        let due: Vec<String> = self
            .held
            .values()
            .filter(|i| !self.in_maintenance(i, now_ms))
            .map(|i| i.id.clone())
            .collect();
        for id in due {
            if let Some(incident) = self.held.remove(&id) {
                tracing::info!(incident = id, "maintenance over, still open: alerted");
                let ev = IncidentEvent {
                    event: IncidentEventKind::Opened,
                    incident,
                };
                self.push(&ev, now_ms);
            }
        }
    }

    fn keep_verdict(&mut self, v: &Verdict) {
        let key = (v.scope, v.id.to_string());
        if v.state == State::Ok {
            self.verdicts.remove(&key);
        } else {
            self.verdicts.insert(key, v.clone());
        }
    }

    fn in_maintenance(&self, inc: &Incident, now_ms: u64) -> bool {
        let windows = self.book.get();
        let v = self.verdicts.get(&(inc.scope, inc.target_id.to_string()));
        maintenance::incident_until(&windows, inc, v, now_ms).is_some()
    }

    fn push(&mut self, ev: &IncidentEvent, now_ms: u64) {
        let keys: Vec<String> = self.receivers.iter().map(|(k, _)| k.clone()).collect();
        match self.queue.push(ev, &keys, now_ms) {
            Ok(id) => {
                tracing::debug!(event_id = id, "alert queued");
                for (_, kind) in &self.receivers {
                    self.stats.pending[*kind as usize].fetch_add(1, Ordering::Relaxed);
                }
                for w in &self.wakes {
                    w.notify_one();
                }
            }
            Err(e) => tracing::error!(
                incident = ev.incident.id,
                "cannot queue an alert (it is not sent): {e:#}"
            ),
        }
    }
}
