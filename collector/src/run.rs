//! `run`: the thin async shell around the engine. One task polls MQTT and feeds the
//! engine (and rings the evaluator when a window is complete), one evaluates each
//! window (when complete, or just after its boundary) and publishes, a writer thread keeps
//! history, and axum serves the dashboard, API and metrics.
//!
//! Nothing is acknowledged before it is stored (DESIGN.md "Nothing lost"): the
//! reading connection uses manual acks. Every QoS 1 message goes to the history
//! writer behind whatever it carried (a window row, a boot, a site), in arrival
//! order; the writer commits a batch durably and only then hands that batch's
//! acknowledgements to the acker task, which sends the PUBACKs. A crash at any point
//! leaves the unacknowledged messages with the broker, which delivers them again;
//! de-dup, restored from history at start, drops what was already committed. A
//! clean stop stops taking new messages, commits and acknowledges what it took, and
//! disconnects keeping its session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use faultline_shared::{Id, Report, Topics, Verdict};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, Publish};
use rumqttc::v5::{AsyncClient, ClientError, Event};
use serde::Serialize;
use serde_json::json;

use crate::config::Config;
use crate::engine::{Accepted, BootMeta, Engine, Output};
use crate::link::Role;
use crate::store::{Store, WindowRow};

/// Outgoing messages queued for the broker before metrics are dropped.
const OUT_QUEUE: usize = 20_000;
/// Reports waiting for their metrics to be published.
const METRICS_QUEUE: usize = 2_000;
/// How long the broker keeps the reading connection's session (and queues reports
/// for it) while the collector is away: as long as an agent's default buffer.
const INGEST_SESSION_EXPIRY_S: u32 = 24 * 3600;
/// Reports the broker may deliver before the collector acknowledges one (MQTT 5
/// Receive Maximum): the depth of the ingest → history → ack pipeline, so it bounds
/// the batch a commit can take and sets ingest throughput.
const INGEST_RECEIVE_MAXIMUM: u16 = 4096;
/// Deliveries handled and not yet committed, at most: the collector's own bound on
/// the pipeline. Mosquitto 2.0.11 does not keep to the Receive Maximum while it
/// drains a queued backlog (each PUBACK can release several queued reports), so
/// past this bound the ingest task stops reading until history catches up and TCP
/// holds the broker back.
const INGEST_PIPELINE: usize = 16_384;
/// Keepalive of the reading connection. With a backlog the broker's answer to a
/// ping waits behind the reports it has already released to the connection; a
/// minute of them must not read as a dead broker.
const INGEST_KEEPALIVE: Duration = Duration::from_secs(60);
/// Messages the history writer commits in one transaction at most.
const HISTORY_BATCH: usize = 10_000;
/// Per-probe metrics: each site may publish this many reports' worth in a burst,
/// refilled at [`METRICS_PER_WINDOW`] per its window (see [`MetricsPacer`]).
const METRICS_BURST: f64 = 3.0;
/// Twice a site's own rate: a live report up to half a window late still finds a
/// token, while a backlog drains into history without being re-broadcast.
const METRICS_PER_WINDOW: f64 = 2.0;
/// How long a clean stop waits for history to commit and the broker to take the
/// acknowledgements before it exits anyway (what is not acknowledged is delivered
/// again on the next start).
const STOP_DRAIN: Duration = Duration::from_secs(20);
/// After the broker link returns (and at start), silence is not counted for this
/// long: agents reconnect with backoff (up to their `reconnect_max_seconds`, 60 s by
/// default) and must not look like sites going dark together.
const RECONNECT_GRACE_MS: u64 = 60_000;

/// Wall-clock milliseconds since the Unix epoch: the only clock the collector reads.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One delivery on the reading connection, to acknowledge once what it carried is
/// committed. `conn` numbers the connection it came on: after a reconnect the broker
/// delivers it again, so an acknowledgement for an earlier connection is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub conn: u64,
    pub pkid: u16,
    pub qos: QoS,
}

impl AckToken {
    /// The token for a delivery that needs an acknowledgement (QoS 1 or 2).
    pub fn of(p: &Publish, conn: u64) -> Option<Self> {
        (p.qos != QoS::AtMostOnce).then_some(Self {
            conn,
            pkid: p.pkid,
            qos: p.qos,
        })
    }

    /// What rumqttc's `ack` reads: the packet id and QoS.
    fn publish(&self) -> Publish {
        let mut p = Publish::new("", self.qos, Vec::<u8>::new(), None);
        p.pkid = self.pkid;
        p
    }
}

/// What the writer thread is asked to record.
#[derive(Debug)]
pub enum StoreMsg {
    Window(WindowRow),
    Boot(Id, BootMeta),
    Verdict(Verdict),
    Incident(faultline_shared::IncidentEvent),
    Site(Id, Option<Id>, Option<String>),
    Maintain(u64),
    /// One delivery handled: its pipeline place is free once everything sent
    /// before it is committed, and its acknowledgement (QoS 1 or 2) is sent then.
    Delivered(Option<AckToken>),
    /// Answered once everything sent before it is committed and its
    /// acknowledgements are with the MQTT client.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// What the acker task gets from the writer, in commit order.
#[derive(Debug)]
enum AckMsg {
    Acks(Vec<AckToken>),
    /// Answered once every acknowledgement before it is with the MQTT client.
    Done(tokio::sync::oneshot::Sender<()>),
}

/// Counts the shell keeps beside the engine's.
#[derive(Debug, Default)]
pub struct ShellStats {
    pub connected: bool,
    pub published_verdicts: u64,
    pub published_events: u64,
    pub metrics_dropped: u64,
    /// Per-probe metrics not published: the site's burst was spent (a backlog).
    pub metrics_skipped: u64,
    pub mqtt_errors: u64,
}

/// What the history writer and the acker have done (read by `/metrics`).
#[derive(Debug, Default)]
pub struct HistoryStats {
    /// Window rows committed.
    pub stored: AtomicU64,
    /// Windows history refused because it already held them.
    pub refused_duplicates: AtomicU64,
    /// Failed commits (each retried until it succeeds; nothing is acknowledged meanwhile).
    pub errors: AtomicU64,
    /// Acknowledgements handed to the MQTT client.
    pub acked: AtomicU64,
    /// Acknowledgements dropped because their connection had gone (delivered again).
    pub stale_acks: AtomicU64,
}

/// Paces the per-probe metrics feed per site: a burst of [`METRICS_BURST`] reports,
/// refilled at [`METRICS_PER_WINDOW`] per the site's window. A backlog being drained
/// (after an outage, an earlier boot's spool, a collector catching up) is in history;
/// re-broadcasting it at ten QoS 0 messages a report would only slow the catch-up.
#[derive(Debug, Default)]
pub struct MetricsPacer {
    sites: HashMap<Id, (f64, u64)>,
}

impl MetricsPacer {
    /// Whether a report of `site` with windows of `window_ms`, at `now_ms`, may go out.
    pub fn allow(&mut self, site: &Id, window_ms: u32, now_ms: u64) -> bool {
        let refill = |tokens: f64, last: u64| {
            let per = f64::from(window_ms.max(1));
            let earned = now_ms.saturating_sub(last) as f64 / per * METRICS_PER_WINDOW;
            (tokens + earned).min(METRICS_BURST)
        };
        let (tokens, last) = match self.sites.get_mut(site) {
            Some(e) => e,
            None => self
                .sites
                .entry(site.clone())
                .or_insert((METRICS_BURST, now_ms)),
        };
        *tokens = refill(*tokens, *last);
        *last = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// State shared by the MQTT tasks and the HTTP handlers.
#[derive(Debug)]
pub struct Shared {
    pub engine: Mutex<Engine>,
    pub topics: Topics,
    pub stats: Mutex<ShellStats>,
    /// A read connection for the API (SQLite WAL lets it read beside the writer).
    pub history: Mutex<Store>,
    pub history_stats: Arc<HistoryStats>,
    pub started_ms: u64,
    /// Rung by ingest when the window being built is complete: evaluate now.
    pub window_complete: tokio::sync::Notify,
    /// What HTTP reads: the engine's state as of the latest evaluation.
    pub snapshot: crate::snapshot::SnapshotCell,
}

/// Exponential backoff with jitter for the MQTT loop (rumqttc reconnects at once).
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Backoff {
    pub fn new(min_ms: u64, max_ms: u64) -> Self {
        Self {
            min_ms,
            max_ms,
            next_ms: min_ms,
        }
    }
    /// The next delay: the current step with ±25 % jitter; the step doubles.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
        let jitter = fastrand::u64(0..=base / 2);
        Duration::from_millis((base - base / 4 + jitter).clamp(self.min_ms / 2, self.max_ms))
    }
    pub fn reset(&mut self) {
        self.next_ms = self.min_ms;
    }
}

/// A report's summary for history.
pub fn window_row(r: &Report, recv_ms: u64, loss_bad: f64) -> WindowRow {
    let mut row = WindowRow {
        site: r.site.clone(),
        recv_ms,
        start_ms: r.start_ms,
        boot: r.boot,
        seq: r.seq,
        bad: 0,
        max_loss: 0.0,
        max_rtt_ms: None,
        min_mos: None,
        providers: Vec::new(),
    };
    for p in &r.probes {
        let loss = p.loss();
        row.max_loss = row.max_loss.max(loss);
        row.bad +=
            u32::from(p.error.is_some() || (p.sent > 0 && p.received == 0) || loss >= loss_bad);
        if let Some(rtt) = p.rtt_ms {
            row.max_rtt_ms = Some(row.max_rtt_ms.map_or(rtt.p50, |m: f64| m.max(rtt.p50)));
        }
        if let Some(m) = p.mos {
            row.min_mos = Some(row.min_mos.map_or(m, |x: f64| x.min(m)));
        }
        if let Some(prov) = &p.provider
            && !row.providers.contains(prov)
        {
            row.providers.push(prov.clone());
        }
    }
    row
}

/// One probe's window as the flat JSON of the metrics topic.
#[derive(Debug, Serialize)]
pub struct MetricsJson<'a> {
    pub site: &'a Id,
    pub boot: u32,
    pub seq: u64,
    pub start_ms: u64,
    pub window_ms: u32,
    pub target: &'a Id,
    pub layer: faultline_shared::Layer,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'a Id>,
    pub kind: faultline_shared::Kind,
    pub sent: u32,
    pub received: u32,
    pub loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_min_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_avg_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_p95_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_max_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mos: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

impl<'a> MetricsJson<'a> {
    pub fn new(r: &'a Report, p: &'a faultline_shared::ProbeResult) -> Self {
        let rtt = p.rtt_ms;
        Self {
            site: &r.site,
            boot: r.boot,
            seq: r.seq,
            start_ms: r.start_ms,
            window_ms: r.window_ms,
            target: &p.target,
            layer: p.layer,
            provider: p.provider.as_ref(),
            kind: p.kind,
            sent: p.sent,
            received: p.received,
            loss: p.loss(),
            rtt_min_ms: rtt.map(|r| r.min),
            rtt_p50_ms: rtt.map(|r| r.p50),
            rtt_avg_ms: rtt.map(|r| r.avg),
            rtt_p95_ms: rtt.map(|r| r.p95),
            rtt_max_ms: rtt.map(|r| r.max),
            jitter_ms: p.jitter_ms,
            max_burst: p.max_burst,
            mos: p.mos,
            error: p.error.as_deref(),
        }
    }
}

fn collector_status(state: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"state": state, "version": env!("CARGO_PKG_VERSION")}))
        .unwrap_or_default()
}

/// The writer thread: commits whatever is queued (up to [`HISTORY_BATCH`]) in one
/// transaction, retrying a failed one until it succeeds, then hands that batch's
/// acknowledgements to the acker, in order.
fn spawn_writer(
    mut store: Store,
    rx: std_mpsc::Receiver<StoreMsg>,
    cfg: crate::config::Storage,
    stats: Arc<HistoryStats>,
    acks: tokio::sync::mpsc::UnboundedSender<AckMsg>,
    pipeline: Arc<tokio::sync::Semaphore>,
) {
    std::thread::Builder::new()
        .name("history".into())
        .spawn(move || {
            let mut batch = Vec::new();
            while let Ok(first) = rx.recv() {
                batch.push(first);
                while batch.len() < HISTORY_BATCH {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                let mut backoff = Backoff::new(100, 10_000);
                let (stored, refused) = loop {
                    match write_batch(&mut store, &batch) {
                        Ok(n) => break n,
                        Err(e) => {
                            store.rollback();
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            let d = backoff.next_delay();
                            tracing::error!("history write failed: {e:#}; retrying in {d:?}");
                            std::thread::sleep(d);
                        }
                    }
                };
                stats.stored.fetch_add(stored, Ordering::Relaxed);
                stats
                    .refused_duplicates
                    .fetch_add(refused, Ordering::Relaxed);
                let mut tokens = Vec::new();
                let mut maintain = None;
                let mut delivered = 0;
                for m in batch.drain(..) {
                    match m {
                        StoreMsg::Delivered(t) => {
                            delivered += 1;
                            tokens.extend(t);
                        }
                        StoreMsg::Maintain(now) => maintain = Some(now),
                        StoreMsg::Flush(done) => {
                            let _ = acks.send(AckMsg::Acks(std::mem::take(&mut tokens)));
                            let _ = acks.send(AckMsg::Done(done));
                        }
                        _ => {}
                    }
                }
                if !tokens.is_empty() {
                    let _ = acks.send(AckMsg::Acks(tokens));
                }
                pipeline.add_permits(delivered);
                if let Some(now) = maintain
                    && let Err(e) =
                        store.maintain(now, cfg.raw_days, cfg.hourly_days, cfg.incident_days)
                {
                    tracing::error!("history maintenance failed: {e:#}");
                }
            }
        })
        .expect("spawn the history thread");
}

/// Writes one batch in one transaction; returns (windows stored, windows refused as
/// already stored).
fn write_batch(store: &mut Store, batch: &[StoreMsg]) -> anyhow::Result<(u64, u64)> {
    let (mut stored, mut refused) = (0, 0);
    store.begin()?;
    for m in batch {
        match m {
            StoreMsg::Window(w) => {
                if store.window(w)? {
                    stored += 1;
                } else {
                    refused += 1;
                }
            }
            StoreMsg::Boot(site, meta) => store.boot(site, meta)?,
            StoreMsg::Verdict(v) => store.verdict(v)?,
            StoreMsg::Incident(e) => store.incident(e)?,
            StoreMsg::Site(s, isp, c) => store.site(s, isp.as_ref(), c.as_deref())?,
            StoreMsg::Maintain(_) | StoreMsg::Delivered(_) | StoreMsg::Flush(_) => {}
        }
    }
    store.commit()?;
    Ok((stored, refused))
}

/// The acker: sends each committed delivery's PUBACK through the reading client,
/// unless the connection it came on is gone (`conn_gate` holds the current one; the
/// ingest task advances it when the connection drops, then clears rumqttc's queue).
async fn ack_committed(
    client: AsyncClient,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<AckMsg>,
    conn_gate: Arc<Mutex<u64>>,
    stats: Arc<HistoryStats>,
) {
    while let Some(msg) = rx.recv().await {
        let tokens = match msg {
            AckMsg::Acks(t) => t,
            AckMsg::Done(done) => {
                let _ = done.send(());
                continue;
            }
        };
        for t in tokens {
            loop {
                // Checked and queued under the gate, so no acknowledgement of a gone
                // connection is queued after the ingest task cleared the queue.
                let sent = {
                    let conn = conn_gate.lock().expect("conn gate lock");
                    if t.conn != *conn {
                        stats.stale_acks.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    client.try_ack(&t.publish())
                };
                match sent {
                    Ok(()) => {
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    // The request queue is full: the event loop is draining it.
                    Err(ClientError::TryRequest(_)) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => return,
                }
            }
        }
    }
}

/// Runs the collector until SIGINT/SIGTERM.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg))
}

/// The service on the current tokio runtime, until SIGINT/SIGTERM.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let link = crate::link::Link::open(&cfg)?;
    let start = now_ms();
    let writer = Store::open(&cfg.storage.path)?;
    let restored = writer.restore(start).context("restore history")?;
    let history = Store::open(&cfg.storage.path)?;
    let history_stats = Arc::new(HistoryStats::default());
    let (store_tx, store_rx) = std_mpsc::channel();
    let (ack_tx, ack_rx) = tokio::sync::mpsc::unbounded_channel();
    let pipeline = Arc::new(tokio::sync::Semaphore::new(INGEST_PIPELINE));
    spawn_writer(
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
    engine.restore(start, restored);
    tracing::info!(open_incidents = n_inc, boots = n_boots, "history restored");
    let shared = Arc::new(Shared {
        engine: Mutex::new(engine),
        topics: cfg.topics.clone(),
        stats: Mutex::new(ShellStats::default()),
        history: Mutex::new(history),
        history_stats: history_stats.clone(),
        started_ms: start,
        window_complete: tokio::sync::Notify::new(),
        snapshot: Default::default(),
    });

    // Two connections: one only reads (reports, statuses), one only writes (verdicts,
    // events, metrics, status), so metrics publishes never slow the reading side.
    // The writer carries the collector's last will.
    let status_topic = cfg.topics.collector_status();
    let mut out_opts = link.options(Role::Publish);
    out_opts.set_last_will(LastWill::new(
        status_topic.clone(),
        collector_status("offline"),
        QoS::AtLeastOnce,
        true,
        None,
    ));
    // Bounded: when the broker cannot take metrics as fast as they come, they are
    // dropped and counted rather than queued without limit.
    let (client, mut out_loop) = AsyncClient::new(out_opts, OUT_QUEUE);
    // The reading connection keeps its session: reports published while the
    // collector is away (a broker restart, its own reconnect backoff, a restart or a
    // crash of the collector) are queued by the broker and delivered when it is
    // back. It acknowledges only what history has committed (see the module docs).
    let mut in_opts = link.options(Role::Ingest);
    in_opts
        .set_clean_start(false)
        .set_session_expiry_interval(Some(INGEST_SESSION_EXPIRY_S))
        .set_manual_acks(true)
        .set_receive_maximum(Some(INGEST_RECEIVE_MAXIMUM))
        .set_keep_alive(INGEST_KEEPALIVE);
    let (in_client, mut eventloop) =
        AsyncClient::new(in_opts, usize::from(INGEST_RECEIVE_MAXIMUM) + 64);

    crate::http::serve(cfg.http_listen, shared.clone(), cfg.clone()).await?;

    // Evaluation and publishing.
    let tick = {
        let shared = shared.clone();
        let client = client.clone();
        let store_tx = store_tx.clone();
        tokio::spawn(async move {
            let mut last_maint = 0u64;
            loop {
                let now = now_ms();
                let next = shared.engine.lock().expect("engine lock").next_tick_ms(now);
                let wait = Duration::from_millis(next.saturating_sub(now));
                // The window is evaluated as soon as it is complete, or at `next`.
                let complete = tokio::select! {
                    () = tokio::time::sleep(wait) => false,
                    () = shared.window_complete.notified() => true,
                };
                let now = now_ms();
                let outputs = {
                    let mut engine = shared.engine.lock().expect("engine lock");
                    if complete {
                        engine.tick_if_complete(now)
                    } else {
                        engine.tick_latest(now)
                    }
                };
                publish_outputs(&shared, &client, &store_tx, outputs).await;
                if now.saturating_sub(last_maint) >= 3_600_000 {
                    last_maint = now;
                    let _ = store_tx.send(StoreMsg::Maintain(now));
                }
            }
        })
    };

    // The writing connection: reconnects with backoff, announces the collector,
    // ends once the broker closes the connection after its goodbye (a clean
    // DISCONNECT; read until then, like the reading connection).
    let writer = {
        let shared = shared.clone();
        let client = client.clone();
        let status = cfg.topics.collector_status();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(200, 30_000);
            let mut bye = false;
            loop {
                match out_loop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        let _ = client.try_publish(
                            status.clone(),
                            QoS::AtLeastOnce,
                            true,
                            collector_status("online"),
                        );
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => bye = true,
                    Ok(_) => {}
                    Err(_) if bye => return,
                    Err(e) => {
                        shared.stats.lock().expect("stats lock").mqtt_errors += 1;
                        let d = backoff.next_delay();
                        tracing::warn!("mqtt (out): {e}; retrying in {d:?}");
                        tokio::time::sleep(d).await;
                    }
                }
            }
        })
    };

    // Per-probe metrics: serialised and published off the ingest task, so reading
    // and decoding reports runs beside it on the other core.
    let (metrics_tx, mut metrics_rx) = tokio::sync::mpsc::channel::<Report>(METRICS_QUEUE);
    let metrics = {
        let shared = shared.clone();
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(report) = metrics_rx.recv().await {
                let mut dropped = 0;
                for probe in &report.probes {
                    let t = shared.topics.metrics(&report.site, &probe.target);
                    let body =
                        serde_json::to_vec(&MetricsJson::new(&report, probe)).unwrap_or_default();
                    if client.try_publish(t, QoS::AtMostOnce, false, body).is_err() {
                        dropped += 1;
                    }
                }
                if dropped > 0 {
                    shared.stats.lock().expect("stats lock").metrics_dropped += dropped;
                }
            }
        })
    };

    // Acknowledgements of committed deliveries.
    let conn_gate = Arc::new(Mutex::new(0u64));
    let acker = tokio::spawn(ack_committed(
        in_client.clone(),
        ack_rx,
        conn_gate.clone(),
        history_stats.clone(),
    ));

    // Ingest. Once `draining` is set (a clean stop) new deliveries are left
    // unacknowledged for the next start; the task ends when the broker closes the
    // connection after its DISCONNECT. A delivery is handled under the `draining`
    // lock, so all it sends history is ahead of the stop's flush, or none of it is.
    let draining = Arc::new(Mutex::new(false));
    let ingest = {
        let shared = shared.clone();
        let store_tx = store_tx.clone();
        let cfg = cfg.clone();
        let draining = draining.clone();
        let in_client = in_client.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(200, 30_000);
            let mut pacer = MetricsPacer::default();
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        shared.stats.lock().expect("stats lock").connected = true;
                        // Agents may still be backing off after a broker restart.
                        shared
                            .engine
                            .lock()
                            .expect("engine lock")
                            .link_up(now_ms(), RECONNECT_GRACE_MS);
                        subscribe(&in_client, &cfg);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        // A place in the pipeline, returned by the writer once this
                        // delivery is committed; none free: read nothing more.
                        match pipeline.acquire().await {
                            Ok(place) => place.forget(),
                            Err(_) => return,
                        }
                        let stopping = draining.lock().expect("draining lock");
                        if *stopping {
                            pipeline.add_permits(1);
                            continue;
                        }
                        let conn = *conn_gate.lock().expect("conn gate lock");
                        let ingest = Ingest {
                            shared: &shared,
                            metrics_tx: &metrics_tx,
                            store_tx: &store_tx,
                            cfg: &cfg,
                        };
                        ingest.on_publish(&mut pacer, p, conn);
                        drop(stopping);
                    }
                    // Sent after every acknowledgement queued before it. The task
                    // reads on until the broker closes the connection: closing it
                    // ourselves with deliveries unread would reset it (RST), and the
                    // broker would drop the acknowledgements it had not read yet.
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => {}
                    Ok(_) => {}
                    Err(_) if *draining.lock().expect("draining lock") => return,
                    Err(e) => {
                        // Deliveries of the lost connection come again on the next
                        // one: their acknowledgements must not be sent on it.
                        *conn_gate.lock().expect("conn gate lock") += 1;
                        eventloop.clean();
                        {
                            let mut st = shared.stats.lock().expect("stats lock");
                            st.connected = false;
                            st.mqtt_errors += 1;
                        }
                        // Blind: silence now says nothing about the sites.
                        shared
                            .engine
                            .lock()
                            .expect("engine lock")
                            .link_lost(now_ms());
                        let d = backoff.next_delay();
                        tracing::warn!("mqtt: {e}; retrying in {d:?}");
                        tokio::time::sleep(d).await;
                    }
                }
            }
        })
    };

    shutdown_signal().await;
    tracing::info!("stopping: committing and acknowledging what was received");
    // Stop taking deliveries and evaluating; commit what was taken, acknowledge it,
    // then leave the session (kept by the broker) with a clean DISCONNECT.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let flushing = {
        let mut stopping = draining.lock().expect("draining lock");
        *stopping = true;
        store_tx.send(StoreMsg::Flush(done_tx)).is_ok()
    };
    tick.abort();
    metrics.abort();
    let drained = flushing && tokio::time::timeout(STOP_DRAIN, done_rx).await.is_ok();
    if !drained {
        tracing::warn!(
            "history did not commit in {STOP_DRAIN:?}: unacknowledged reports come again on the next start"
        );
    }
    // Without a broker there is no one to acknowledge to (nor to say goodbye to).
    let connected = shared.stats.lock().expect("stats lock").connected;
    if connected {
        let _ = in_client.disconnect().await;
        if tokio::time::timeout(STOP_DRAIN, ingest).await.is_err() {
            tracing::warn!("the broker did not take the acknowledgements in time");
        }
        let _ = client
            .publish(
                status_topic,
                QoS::AtLeastOnce,
                true,
                collector_status("offline"),
            )
            .await;
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
    acker.abort();
    tracing::info!(
        stored = history_stats.stored.load(Ordering::Relaxed),
        acknowledged = history_stats.acked.load(Ordering::Relaxed),
        stale = history_stats.stale_acks.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}

fn subscribe(client: &AsyncClient, cfg: &Config) {
    let t = &cfg.topics;
    let shared = |f: String| match &cfg.share_group {
        Some(g) => Topics::shared(g, &f),
        None => f,
    };
    // Reports may be split across a share group; statuses go to every collector
    // (each needs every site's ISP and presence for correlation).
    for f in [
        shared(t.all_reports()),
        shared(t.all_reports_json()),
        t.all_statuses(),
    ] {
        if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
            tracing::error!("subscribe {f}: {e}");
        }
    }
}

/// What the ingest task hands each delivery to.
struct Ingest<'a> {
    shared: &'a Shared,
    metrics_tx: &'a tokio::sync::mpsc::Sender<Report>,
    store_tx: &'a std_mpsc::Sender<StoreMsg>,
    cfg: &'a Config,
}

impl Ingest<'_> {
    /// Feeds one delivery to the engine and sends history what it carried, then the
    /// delivery itself (its pipeline place and acknowledgement: any outcome, since a
    /// rejected message would be rejected again).
    fn on_publish(&self, pacer: &mut MetricsPacer, p: Publish, conn: u64) {
        let shared = self.shared;
        let ack = AckToken::of(&p, conn);
        let now = now_ms();
        let (res, complete) = {
            let mut e = shared.engine.lock().expect("engine lock");
            // A topic that is not UTF-8 is counted like any other bad topic.
            let topic = std::str::from_utf8(&p.topic).unwrap_or("\u{0}");
            let res = e.ingest(&shared.topics, now, topic, &p.payload, p.retain);
            (res, e.window_complete())
        };
        if complete && matches!(res, Ok(Accepted::Report { live: true, .. })) {
            shared.window_complete.notify_one();
        }
        match res {
            Ok(Accepted::Report { report, boot, .. }) => {
                if let Some(meta) = boot {
                    let _ = self
                        .store_tx
                        .send(StoreMsg::Boot(report.site.clone(), meta));
                }
                let row = window_row(&report, now, self.cfg.thresholds.loss_degraded);
                let _ = self.store_tx.send(StoreMsg::Window(row));
                let n = report.probes.len() as u64;
                if !pacer.allow(&report.site, report.window_ms, now) {
                    shared.stats.lock().expect("stats lock").metrics_skipped += n;
                } else if self.metrics_tx.try_send(report).is_err() {
                    shared.stats.lock().expect("stats lock").metrics_dropped += n;
                }
            }
            Ok(Accepted::Status { site, boot }) => {
                if let Some(meta) = boot {
                    let _ = self.store_tx.send(StoreMsg::Boot(site.clone(), meta));
                }
                let e = shared.engine.lock().expect("engine lock");
                if let Some(s) = e.sites().get(&site) {
                    let _ = self.store_tx.send(StoreMsg::Site(
                        site.clone(),
                        s.isp.clone(),
                        s.customer.clone(),
                    ));
                }
            }
            Ok(Accepted::Ignored) => {}
            Err(e) => tracing::debug!(topic = %String::from_utf8_lossy(&p.topic), "dropped: {e}"),
        }
        let _ = self.store_tx.send(StoreMsg::Delivered(ack));
    }
}

async fn publish_outputs(
    shared: &Shared,
    client: &AsyncClient,
    store_tx: &std_mpsc::Sender<StoreMsg>,
    outputs: Vec<Output>,
) {
    let t = &shared.topics;
    for o in outputs {
        match o {
            Output::Verdict(v) => {
                let topic = match v.scope {
                    faultline_shared::Scope::Site => t.site_state(&v.id),
                    faultline_shared::Scope::Isp => t.isp_state(&v.id),
                    faultline_shared::Scope::Provider => t.provider_state(&v.id),
                };
                let body = serde_json::to_vec(&v).unwrap_or_default();
                if client
                    .publish(topic, QoS::AtLeastOnce, true, body)
                    .await
                    .is_ok()
                {
                    shared.stats.lock().expect("stats lock").published_verdicts += 1;
                }
                let _ = store_tx.send(StoreMsg::Verdict(v));
            }
            Output::Incident(ev) => {
                let body = serde_json::to_vec(&ev).unwrap_or_default();
                if client
                    .publish(t.incidents(), QoS::AtLeastOnce, false, body)
                    .await
                    .is_ok()
                {
                    shared.stats.lock().expect("stats lock").published_events += 1;
                }
                let _ = store_tx.send(StoreMsg::Incident(ev));
            }
        }
    }
}

async fn shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_paced_per_site_a_burst_then_one_a_window() {
        let mut p = MetricsPacer::default();
        let a = Id::new("a").unwrap();
        let b = Id::new("b").unwrap();
        // A backlog of 100 windows drained at once: the burst goes out, the rest not.
        let sent = (0..100).filter(|_| p.allow(&a, 10_000, 1_000)).count();
        assert_eq!(sent, METRICS_BURST as usize);
        // Another site has its own burst.
        assert!(p.allow(&b, 10_000, 1_000));
        // Live reports, one a window each up to half a window late: every one goes
        // out, right after the backlog too.
        let mut rng = fastrand::Rng::with_seed(3);
        for k in 1..200u64 {
            let at = 1_000 + k * 10_000 + rng.u64(0..5_000);
            assert!(p.allow(&a, 10_000, at), "window {k} at {at}");
        }
        // A second backlog right after: its burst, then nothing until time passes.
        let later = 2_010_000;
        let sent = (0..50).filter(|_| p.allow(&a, 10_000, later)).count();
        assert_eq!(sent, METRICS_BURST as usize);
        assert!(p.allow(&a, 10_000, later + 5_000));
    }

    #[test]
    fn backoff_stays_in_bounds_and_grows() {
        let mut b = Backoff::new(200, 30_000);
        let mut last_base = 0;
        for _ in 0..50 {
            let d = b.next_delay().as_millis() as u64;
            assert!((100..=30_000).contains(&d), "{d}");
            last_base = last_base.max(d);
        }
        assert!(last_base > 20_000);
        b.reset();
        assert!(b.next_delay().as_millis() <= 300);
    }
}
