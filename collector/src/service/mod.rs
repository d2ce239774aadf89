//! `run`: the service around the engine, in the shape of mini-redis — [`serve`]
//! takes its config, starts its tasks and stops them all through one broadcast
//! shutdown, each draining what it holds:
//!
//! - [`ingest`]: the reading MQTT connection (reports, statuses), manual acks;
//! - the engine's one owner ([`drive`]): feeds it messages and timeouts, hands its
//!   outputs on — history rows to the writer, verdicts and metrics to the publisher,
//!   snapshots to the pages;
//! - [`history`]: the writer thread (durable commits) and the acker;
//! - [`publish`]: the writing MQTT connection (verdicts, events, metrics, status);
//! - [`crate::http`]: the dashboard, API and metrics, reading snapshots;
//! - [`site_config`]: each site's central agent config, and SIGHUP reloads.
//!
//! A clean stop stops taking deliveries, lets the owner finish what it took,
//! commits and acknowledges it, publishes what the engine said, then leaves both
//! connections with a DISCONNECT (the reading session is kept by the broker).

pub mod history;
pub mod ingest;
pub mod publish;
pub mod site_config;

use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use faultline_shared::Topics;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::alerts::{AlertStats, Alerts};
use crate::config::Config;
use crate::engine::{Engine, Output};
use crate::maintenance::{Book, Marks};
use crate::snapshot::SnapshotCell;
use crate::store::Store;
use history::{HistoryStats, StoreMsg};
use ingest::Input;
use publish::Publication;

/// How long a clean stop waits for history to commit and the broker to take the
/// acknowledgements before it exits anyway (what is not acknowledged is delivered
/// again on the next start).
const STOP_DRAIN: Duration = Duration::from_secs(20);
/// Counters are handed to the pages at most this often.
const COUNTERS_EVERY: Duration = Duration::from_millis(250);
/// History maintenance (roll-ups, retention) runs this often.
const MAINTAIN_EVERY_MS: u64 = 3_600_000;

/// Wall-clock milliseconds since the Unix epoch: the only clock the collector reads.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Exponential backoff with jitter between failed attempts (rumqttc reconnects at once).
pub fn backoff(min_ms: u64, max_ms: u64) -> faultline_shared::Backoff {
    // Both bounds are constants of this crate, min below max: cannot fail.
    faultline_shared::Backoff::try_new(
        Duration::from_millis(min_ms),
        Duration::from_millis(max_ms),
        0.25,
    )
    .expect("valid backoff bounds")
}

/// Counts the shell keeps beside the engine's.
#[derive(Debug, Default)]
pub struct ShellStats {
    pub connected: bool,
    pub published_verdicts: u64,
    pub published_events: u64,
    pub metrics_dropped: u64,
    pub mqtt_errors: u64,
    /// How long the engine's latest and longest timeout (evaluation) took.
    pub evaluation_last: Duration,
    pub evaluation_max: Duration,
}

/// What the HTTP handlers read.
#[derive(Debug)]
pub struct Shared {
    pub topics: Topics,
    pub stats: Mutex<ShellStats>,
    /// A read connection for the API (SQLite WAL lets it read beside the writer).
    pub history: Mutex<Store>,
    pub history_stats: Arc<HistoryStats>,
    pub started_ms: u64,
    /// The engine's state as of its latest evaluation, and its counters.
    pub snapshot: SnapshotCell,
    /// Alert deliveries per receiver kind.
    pub alerts: Arc<AlertStats>,
    /// Maintenance windows in force (config and HTTP).
    pub maintenance: Arc<Book>,
    /// The agents' answers to their central configs.
    pub config_answers: Arc<crate::fleet_config::Answers>,
}

impl Shared {
    /// What a process serves over HTTP: history read through `history`, the
    /// maintenance windows of the config and those `kept` in history; counters,
    /// snapshot and alert figures start empty.
    pub fn new(
        cfg: &Config,
        history: Store,
        history_stats: Arc<HistoryStats>,
        kept: Vec<crate::maintenance::Window>,
    ) -> Self {
        Self {
            topics: cfg.topics.clone(),
            stats: Mutex::new(ShellStats::default()),
            history: Mutex::new(history),
            history_stats,
            started_ms: now_ms(),
            snapshot: SnapshotCell::default(),
            alerts: Arc::new(AlertStats::default()),
            maintenance: Arc::new(Book::new(
                cfg.maintenance.iter().cloned().chain(kept).collect(),
            )),
            config_answers: Arc::default(),
        }
    }
}

/// Runs the collector until SIGINT/SIGTERM.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg, shutdown_signal()))
}

/// The service on the current tokio runtime, until `shutdown` completes.
pub async fn serve(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let link = crate::link::Link::open(&cfg)?;
    let start = now_ms();
    // Blocking work (PostgreSQL's client runs its own runtime): off the async workers.
    let location = cfg.storage.location.clone();
    let (writer, restored, history_store, kept_windows) = tokio::task::spawn_blocking(move || {
        let writer = Store::connect(&location)?;
        let restored = writer.restore(start).context("restore history")?;
        let history_store = Store::connect(&location)?;
        let kept_windows = history_store
            .maintenance()
            .context("restore maintenance windows")?;
        anyhow::Ok((writer, restored, history_store, kept_windows))
    })
    .await
    .context("open history")??;
    let history_stats = Arc::new(HistoryStats::default());
    let (store_tx, store_rx) = std_mpsc::channel();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let pipeline = Arc::new(tokio::sync::Semaphore::new(ingest::PIPELINE));
    history::spawn_writer(
        writer,
        store_rx,
        cfg.storage.clone(),
        history_stats.clone(),
        ack_tx,
        pipeline.clone(),
    );

    let mut engine = Engine::new(crate::engine_config(&cfg));
    let n_inc = restored.open_incidents.len();
    let n_boots = restored.boots.len();
    let known_sites = restored.sites.iter().map(|(s, _, _)| s.clone()).collect();
    engine.restore(start, restored);
    tracing::info!(open_incidents = n_inc, boots = n_boots, "history restored");
    let shared = Arc::new(Shared::new(
        &cfg,
        history_store,
        history_stats.clone(),
        kept_windows,
    ));
    shared.snapshot.set(Arc::new(engine.snapshot()));

    let (stop_tx, _) = broadcast::channel::<()>(1);
    let alerts = if cfg.alerts.is_enabled() {
        let open: Vec<_> = engine.open_incidents().cloned().collect();
        let verdicts: Vec<_> = engine.verdicts().cloned().collect();
        let path = cfg.alerts.queue_path(&cfg.storage.location);
        let a = Alerts::start(
            &cfg.alerts,
            &path,
            &open,
            &verdicts,
            shared.maintenance.clone(),
            shared.alerts.clone(),
            &stop_tx,
        )
        .with_context(|| format!("alert queue {}", path.display()))?;
        Some(a)
    } else {
        None
    };
    crate::http::serve(
        cfg.http_listen,
        shared.clone(),
        cfg.clone(),
        crate::http::Serve::Everything,
        stop_tx.subscribe(),
    )
    .await?;

    let (publisher, outlets) = publish::Publisher::start(&link, &cfg, shared.clone());
    let (reader, inputs) = ingest::Reader::start(
        &link,
        &cfg,
        shared.clone(),
        pipeline,
        history_stats.clone(),
        ack_rx,
        stop_tx.subscribe(),
    );
    let (site_events, site_tasks) = site_config::start(
        &cfg,
        known_sites,
        outlets.configs,
        outlets.outputs.clone(),
        shared.config_answers.clone(),
    );
    let (pubs, metrics) = (outlets.outputs, outlets.metrics);
    let owner = {
        let shared = shared.clone();
        let topics = cfg.topics.clone();
        tokio::spawn(async move {
            let mut owner = Owner {
                engine,
                topics,
                shared,
                store_tx,
                pubs,
                metrics,
                site_events,
                last_maintain_ms: 0,
                alerts,
                marks: Marks::default(),
            };
            owner.drive(inputs).await;
        })
    };

    shutdown.await;
    tracing::info!("stopping: committing and acknowledging what was received");
    let _ = stop_tx.send(());
    // The reader stops handing deliveries on; the owner finishes those it has,
    // commits and acknowledges them, and ends.
    if tokio::time::timeout(STOP_DRAIN, owner).await.is_err() {
        tracing::warn!(
            "history did not commit in {STOP_DRAIN:?}: unacknowledged reports come again on the next start"
        );
    }
    reader.finish(STOP_DRAIN).await;
    // They hold the publisher's queue open.
    site_tasks.iter().for_each(JoinHandle::abort);
    publisher.finish().await;
    tracing::info!(
        stored = history_stats.stored.load(Ordering::Relaxed),
        acknowledged = history_stats.acked.load(Ordering::Relaxed),
        stale = history_stats.stale_acks.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}

/// The engine's one owner.
struct Owner {
    engine: Engine,
    topics: Topics,
    shared: Arc<Shared>,
    store_tx: std_mpsc::Sender<StoreMsg>,
    pubs: mpsc::UnboundedSender<Publication>,
    metrics: mpsc::Sender<Arc<faultline_shared::Report>>,
    /// Sites heard, for their central config.
    site_events: mpsc::UnboundedSender<site_config::Event>,
    last_maintain_ms: u64,
    alerts: Option<Alerts>,
    /// Which published verdicts say `maintenance`.
    marks: Marks,
}

impl Owner {
    /// Feeds the engine until the reader closes `inputs` (a clean stop), then
    /// commits and acknowledges everything it took.
    async fn drive(&mut self, mut inputs: mpsc::Receiver<Input>) {
        let mut batch = Vec::with_capacity(256);
        let mut counters_at = tokio::time::Instant::now();
        self.engine.handle_timeout(now_ms());
        self.dispatch();
        // One timer, moved only when the engine's deadline moves.
        let deadline = |e: &Engine| {
            let now = now_ms();
            let wait = e
                .poll_timeout()
                .map_or(3_600_000, |t| t.saturating_sub(now));
            (
                e.poll_timeout(),
                tokio::time::Instant::now() + Duration::from_millis(wait),
            )
        };
        let (mut due, at) = deadline(&self.engine);
        let sleep = tokio::time::sleep_until(at);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                // Messages first: reports queued while the service was busy must
                // not be mistaken for silence.
                biased;
                n = inputs.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        break;
                    }
                    for input in batch.drain(..) {
                        self.handle(input);
                    }
                    // A steady stream of messages must not starve evaluations.
                    if self.engine.poll_timeout().is_some_and(|t| t <= now_ms()) {
                        self.timeout();
                    }
                }
                () = &mut sleep => self.timeout(),
            }
            if self.engine.poll_timeout() != due || sleep.is_elapsed() {
                let (d, at) = deadline(&self.engine);
                due = d;
                sleep.as_mut().reset(at);
            }
            // Fresh for readers once the queue is drained; at most every
            // COUNTERS_EVERY under a steady stream.
            if inputs.is_empty() || counters_at.elapsed() >= COUNTERS_EVERY {
                counters_at = tokio::time::Instant::now();
                self.shared.snapshot.set_counters(self.engine.counters());
            }
        }
        self.shared.snapshot.set_counters(self.engine.counters());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if self.store_tx.send(StoreMsg::Flush(done_tx)).is_ok() {
            let _ = done_rx.await;
        }
    }

    fn timeout(&mut self) {
        let now = now_ms();
        let t = std::time::Instant::now();
        self.engine.handle_timeout(now);
        let took = t.elapsed();
        {
            let mut st = self.shared.stats.lock().expect("stats lock");
            st.evaluation_last = took;
            st.evaluation_max = st.evaluation_max.max(took);
        }
        self.dispatch();
        self.maintenance(now);
        if now.saturating_sub(self.last_maintain_ms) >= MAINTAIN_EVERY_MS {
            self.last_maintain_ms = now;
            let _ = self.store_tx.send(StoreMsg::Maintain(now));
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Message { publish: p, ack } => {
                // A topic that is not UTF-8 is counted like any other bad topic.
                let topic = std::str::from_utf8(&p.topic).unwrap_or("\u{0}");
                let now = now_ms();
                tracing::trace!(topic, retained = p.retain, "message");
                if let Err(e) =
                    self.engine
                        .handle_message(&self.topics, now, topic, &p.payload, p.retain)
                {
                    tracing::debug!(topic, "dropped: {e}");
                }
                self.dispatch();
                // Its acknowledgement follows what it carried into history (any
                // outcome: a rejected message would be rejected again).
                let _ = self.store_tx.send(StoreMsg::Delivered(ack));
            }
            Input::Link { up } => {
                tracing::debug!(up, "broker link");
                self.engine.handle_link(now_ms(), up);
                self.dispatch();
            }
        }
    }

    /// Re-publishes verdicts whose maintenance mark changed (a window started or
    /// ended) and alerts incidents held back by a window that has ended.
    fn maintenance(&mut self, now: u64) {
        let windows = self.shared.maintenance.get();
        let changed = self.marks.changed(&windows, self.engine.verdicts(), now);
        if !changed.is_empty() {
            let (s, _) = self.shared.snapshot.get();
            self.set_snapshot(s);
        }
        for v in changed {
            let _ = self.pubs.send(Publication::Verdict(v));
        }
        if let Some(a) = &mut self.alerts {
            a.tick(now);
        }
    }

    /// Hands pages a snapshot whose verdicts carry the maintenance marks published.
    fn set_snapshot(&self, s: Arc<crate::snapshot::Snapshot>) {
        self.marks.set_snapshot(&self.shared.snapshot, s);
    }

    /// Hands every output on, in order.
    fn dispatch(&mut self) {
        while let Some(o) = self.engine.poll_output() {
            let store = match o {
                Output::Window(row) => StoreMsg::Window(row),
                Output::Boot(site, meta) => StoreMsg::Boot(site, meta),
                Output::Site {
                    site,
                    isp,
                    customer,
                } => {
                    let _ = self
                        .site_events
                        .send(site_config::Event::Site(site.clone()));
                    StoreMsg::Site(site, isp, customer)
                }
                Output::Verdict(mut v) => {
                    let windows = self.shared.maintenance.get();
                    self.marks.mark(&windows, &mut v, now_ms());
                    if let Some(a) = &mut self.alerts {
                        a.verdict(&v);
                    }
                    let _ = self.pubs.send(Publication::Verdict(v.clone()));
                    StoreMsg::Verdict(v)
                }
                Output::Incident(e) => {
                    let _ = self.pubs.send(Publication::Incident(e.clone()));
                    // Durable (fsync'd) before the report that caused it is acknowledged.
                    if let Some(a) = &mut self.alerts {
                        a.take(&e, now_ms());
                    }
                    StoreMsg::Incident(e)
                }
                Output::Forget(v) => {
                    let _ = self.pubs.send(Publication::Forget(v.clone()));
                    StoreMsg::Forget(v)
                }
                Output::Metrics(r) => {
                    if self.metrics.try_send(r.clone()).is_err() {
                        self.shared
                            .stats
                            .lock()
                            .expect("stats lock")
                            .metrics_dropped += r.probes.len() as u64;
                    }
                    continue;
                }
                Output::Snapshot(s) => {
                    self.set_snapshot(s);
                    continue;
                }
                // Only a site worker's engine (cluster mode) says this.
                Output::Summary(_) => continue,
            };
            let _ = self.store_tx.send(store);
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
