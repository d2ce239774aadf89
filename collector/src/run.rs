//! `run`: the thin async shell around the engine. One task polls MQTT and feeds the
//! engine (and rings the evaluator when a window is complete), one evaluates each
//! window (when complete, or just after its boundary) and publishes, a writer thread keeps
//! history, and axum serves the dashboard, API and metrics.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use faultline_shared::{Id, Report, Topics, Verdict};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event};
use serde::Serialize;
use serde_json::json;

use crate::config::Config;
use crate::engine::{Accepted, Engine, Output};
use crate::link::Role;
use crate::store::{Store, WindowRow};

/// Outgoing messages queued for the broker before metrics are dropped.
const OUT_QUEUE: usize = 20_000;
/// Reports waiting for their metrics to be published.
const METRICS_QUEUE: usize = 2_000;
/// How long the broker keeps the reading connection's session (and queues reports
/// for it) while the collector is away: as long as an agent's default buffer.
const INGEST_SESSION_EXPIRY_S: u32 = 24 * 3600;
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

/// What the writer thread is asked to record.
#[derive(Debug)]
pub enum StoreMsg {
    Window(WindowRow),
    Verdict(Verdict),
    Incident(faultline_shared::IncidentEvent),
    Site(Id, Option<Id>, Option<String>),
    Maintain(u64),
    /// Answered once everything sent before it is committed.
    Flush(std_mpsc::Sender<()>),
}

/// Counts the shell keeps beside the engine's.
#[derive(Debug, Default)]
pub struct ShellStats {
    pub connected: bool,
    pub published_verdicts: u64,
    pub published_events: u64,
    pub metrics_dropped: u64,
    pub mqtt_errors: u64,
}

/// State shared by the MQTT tasks and the HTTP handlers.
#[derive(Debug)]
pub struct Shared {
    pub engine: Mutex<Engine>,
    pub topics: Topics,
    pub stats: Mutex<ShellStats>,
    /// A read connection for the API (SQLite WAL lets it read beside the writer).
    pub history: Mutex<Store>,
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

/// The writer thread: batches whatever is queued into one transaction.
fn spawn_writer(mut store: Store, rx: std_mpsc::Receiver<StoreMsg>, cfg: crate::config::Storage) {
    std::thread::Builder::new()
        .name("history".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut acks = Vec::new();
                let res = (|| -> anyhow::Result<()> {
                    store.begin()?;
                    let mut next = Some(first);
                    let mut n = 0;
                    let mut maintain = None;
                    while let Some(m) = next.take() {
                        match m {
                            StoreMsg::Window(w) => store.window(&w)?,
                            StoreMsg::Verdict(v) => store.verdict(&v)?,
                            StoreMsg::Incident(e) => store.incident(&e)?,
                            StoreMsg::Site(s, isp, c) => {
                                store.site(&s, isp.as_ref(), c.as_deref())?
                            }
                            StoreMsg::Maintain(now) => maintain = Some(now),
                            StoreMsg::Flush(tx) => acks.push(tx),
                        }
                        n += 1;
                        if n < 10_000 {
                            next = rx.try_recv().ok();
                        }
                    }
                    store.commit()?;
                    if let Some(now) = maintain {
                        store.maintain(now, cfg.raw_days, cfg.hourly_days, cfg.incident_days)?;
                    }
                    Ok(())
                })();
                if let Err(e) = res {
                    tracing::error!("history write failed: {e:#}");
                    let _ = store.commit();
                }
                for a in acks {
                    let _ = a.send(());
                }
            }
        })
        .expect("spawn the history thread");
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
    let writer = Store::open(&cfg.storage.path)?;
    let restored = writer.restore().context("restore history")?;
    let history = Store::open(&cfg.storage.path)?;
    let (store_tx, store_rx) = std_mpsc::channel();
    spawn_writer(writer, store_rx, cfg.storage.clone());

    let start = now_ms();
    let mut engine = Engine::new(crate::engine_config(&cfg));
    let n_inc = restored.open_incidents.len();
    engine.restore(start, restored);
    tracing::info!(open_incidents = n_inc, "history restored");
    let shared = Arc::new(Shared {
        engine: Mutex::new(engine),
        topics: cfg.topics.clone(),
        stats: Mutex::new(ShellStats::default()),
        history: Mutex::new(history),
        started_ms: start,
        window_complete: tokio::sync::Notify::new(),
        snapshot: Default::default(),
    });

    // Two connections: one only reads (reports, statuses), one only writes (verdicts,
    // events, metrics, status), so ten metrics publishes per report never slow the
    // reading side. The writer carries the collector's last will.
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
    // collector is away (a broker restart, its own reconnect backoff, a restart of
    // the collector) are queued by the broker and delivered when it is back, so
    // every window an agent measured reaches the engine (de-dup drops repeats).
    let mut in_opts = link.options(Role::Ingest);
    in_opts
        .set_clean_start(false)
        .set_session_expiry_interval(Some(INGEST_SESSION_EXPIRY_S));
    let (in_client, mut eventloop) = AsyncClient::new(in_opts, 64);

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

    // The writing connection: reconnects with backoff, announces the collector.
    let writer = {
        let shared = shared.clone();
        let client = client.clone();
        let status = cfg.topics.collector_status();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(200, 30_000);
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
                    Ok(_) => {}
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

    // Ingest.
    let ingest = {
        let shared = shared.clone();
        let store_tx = store_tx.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(200, 30_000);
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
                        on_publish(&shared, &metrics_tx, &store_tx, &cfg, p);
                    }
                    Ok(_) => {}
                    Err(e) => {
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
    tracing::info!("stopping");
    tick.abort();
    let _ = client
        .publish(
            status_topic,
            QoS::AtLeastOnce,
            true,
            collector_status("offline"),
        )
        .await;
    let _ = client.disconnect().await;
    // Give the event loop a moment to send the goodbye, then flush history.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ingest.abort();
    metrics.abort();
    writer.abort();
    let (tx, rx) = std_mpsc::channel();
    if store_tx.send(StoreMsg::Flush(tx)).is_ok() {
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }
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

fn on_publish(
    shared: &Shared,
    metrics_tx: &tokio::sync::mpsc::Sender<Report>,
    store_tx: &std_mpsc::Sender<StoreMsg>,
    cfg: &Config,
    p: Publish,
) {
    let Ok(topic) = std::str::from_utf8(&p.topic) else {
        let mut e = shared.engine.lock().expect("engine lock");
        // Counted like any other bad topic.
        let _ = e.ingest(&shared.topics, now_ms(), "\u{0}", &[], false);
        return;
    };
    let now = now_ms();
    let (res, complete) = {
        let mut e = shared.engine.lock().expect("engine lock");
        let res = e.ingest(&shared.topics, now, topic, &p.payload, p.retain);
        (res, e.window_complete())
    };
    if complete && matches!(res, Ok(Accepted::Report { live: true, .. })) {
        shared.window_complete.notify_one();
    }
    match res {
        Ok(Accepted::Report { report, .. }) => {
            let _ = store_tx.send(StoreMsg::Window(window_row(
                &report,
                now,
                cfg.thresholds.loss_degraded,
            )));
            let n = report.probes.len() as u64;
            if metrics_tx.try_send(report).is_err() {
                shared.stats.lock().expect("stats lock").metrics_dropped += n;
            }
        }
        Ok(Accepted::Status(site)) => {
            let e = shared.engine.lock().expect("engine lock");
            if let Some(s) = e.sites().get(&site) {
                let _ = store_tx.send(StoreMsg::Site(
                    site.clone(),
                    s.isp.clone(),
                    s.customer.clone(),
                ));
            }
        }
        Ok(Accepted::Ignored) => {}
        Err(e) => tracing::debug!(topic, "dropped: {e}"),
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
