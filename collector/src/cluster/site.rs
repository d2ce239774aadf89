//! A site worker (`run --role site`): owns some of the partitions, runs the
//! engine's site stage over their reports, writes their windows to history and
//! hands each site summary to the correlators on JetStream.
//!
//! Ownership: one lease per partition in the lease bucket ([`super::Lease`]); a
//! worker holds at most its fair share, `ceil(partitions / live workers)` (live
//! workers each renew a key in the worker bucket), takes free partitions up to it
//! and gives back what is over it. A renewal that fails drops the partition at
//! once: its consumer stops and its sites' state goes (the next owner restores
//! their boots from history and gets every unacknowledged report again).
//!
//! With `[http] listen` in its config a worker serves `/metrics`: its ingest and
//! history counters and the per-probe series of the sites it holds now (several
//! workers are scraped side by side; a site's series move with its partition). It
//! publishes its sites' per-probe metrics topics on core NATS (QoS 0, as a one-node
//! collector does over MQTT): MQTT subscribers of the NATS listeners receive them.
//!
//! Each partition has one durable pull consumer (explicit acks). A batch of
//! reports is acknowledged only after its summaries are in the summary stream (a
//! PubAck each) and its windows are committed to history: a worker killed at any
//! point leaves the reports unacknowledged, and whoever owns the partition next
//! gets them again; a window already in history is refused there (unique site,
//! boot, seq), so a paused worker that wakes up cannot store one twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use async_nats::jetstream::consumer::{self, pull};
use bytes::Bytes;
use faultline_shared::{Id, SiteSummary, SummaryKind, Topics};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Bus, Cluster, Lease, partition_of};
use crate::config::Config;
use crate::engine::{Engine, Output, Restored, Role};
use crate::service::history::{HistoryStats, StoreMsg};
use crate::service::{Shared, now_ms};
use crate::store::Store;

/// Reports handled between two history commits, at most.
const BATCH: usize = 512;
/// Reports a partition's consumer may have unacknowledged.
const MAX_ACK_PENDING: i64 = 4096;

/// A report from one partition, to acknowledge once handled.
type Delivery = (u32, jetstream::Message);

/// A status from the statuses stream: site, topic, payload, retained (older than
/// this worker).
type StatusMsg = (Id, String, Bytes, bool);

/// What this worker consumes of one partition it holds.
#[derive(Debug)]
struct Owned {
    pull: JoinHandle<()>,
}

/// What the lease keeper tells the owner.
#[derive(Debug)]
enum LeaseEvent {
    /// The partition's lease is ours: consume it.
    Take(u32),
    /// The lease is lost or given back: stop at once.
    Drop(u32),
}

/// The worker's one owner of its engine and its partitions.
struct Worker {
    engine: Engine,
    topics: Topics,
    cluster: Cluster,
    bus: Bus,
    store_tx: std_mpsc::Sender<StoreMsg>,
    /// History, read when a partition is taken (its sites' boots and identities).
    reader: Store,
    owned: BTreeMap<u32, Owned>,
    /// Every site's latest status (a partition taken replays its sites').
    statuses: HashMap<Id, (String, Bytes)>,
    deliveries: mpsc::Sender<Delivery>,
    stats: Arc<HistoryStats>,
    /// Reports handled and summaries the stream took.
    handled: u64,
    published: u64,
    /// What `/metrics` reads, when served.
    shared: Option<Arc<Shared>>,
    /// Per-probe metrics to publish (the engine paces them: a few per site window).
    metrics: Vec<Arc<faultline_shared::Report>>,
    nats: async_nats::Client,
}

/// Runs a site worker until `shutdown` completes.
pub async fn serve(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let cluster = cfg.cluster.clone().context("[cluster] is not configured")?;
    let client = super::connect(&cluster).await?;
    let bus = Bus::open(client.clone(), &cluster).await?;
    tracing::info!(name = cluster.name, "site worker on the bus");

    let (writer, reader) = super::open_history(&cfg).await?;
    let stats = Arc::new(HistoryStats::default());
    let store_tx = super::spawn_history(writer, &cfg, stats.clone());
    let (stop_http, _) = tokio::sync::broadcast::channel::<()>(1);
    let shared = if cfg.http_listen_set {
        Some(serve_metrics(&cfg, stats.clone(), &stop_http).await?)
    } else {
        None
    };

    let mut backoff = crate::service::backoff(250, 5_000);
    for p in 0..cluster.partitions {
        while let Err(e) = partition_consumer(&bus, &cluster, p).await {
            let d = backoff.next_delay(fastrand::f64());
            tracing::warn!("{e:#}; retrying in {d:?}");
            tokio::time::sleep(d).await;
        }
    }
    tracing::info!(partitions = cluster.partitions, "partition consumers ready");

    let mut ecfg = crate::engine_config(&cfg);
    ecfg.role = Role::Site;
    let (deliveries, mut delivered) = mpsc::channel::<Delivery>(BATCH * 4);
    let mut statuses_rx = statuses(&bus, &cluster).await?;
    let mut w = Worker {
        engine: Engine::new(ecfg),
        topics: cfg.topics.clone(),
        cluster: cluster.clone(),
        bus,
        store_tx,
        reader,
        owned: BTreeMap::new(),
        statuses: HashMap::new(),
        deliveries,
        stats,
        handled: 0,
        published: 0,
        shared,
        metrics: Vec::new(),
        nats: client.clone(),
    };
    let mut report = tokio::time::interval(Duration::from_secs(30));
    let (lease_tx, mut leases) = mpsc::unbounded_channel();
    let (give_back, given_back) = mpsc::unbounded_channel();
    let (stop_keeper, keeper_stopped) = tokio::sync::oneshot::channel();
    let keeper = tokio::spawn(keep_leases(
        w.bus.clone(),
        cluster.clone(),
        lease_tx,
        given_back,
        keeper_stopped,
    ));
    let mut batch = Vec::with_capacity(BATCH);
    // Nothing at all from any partition for a collector window while it holds
    // some: the bus is not delivering (a node failing over), not every site at
    // once going dark. Silence is not counted until reports flow again, and then
    // for the reconnect grace, as for the one-node collector's broker link.
    let stall_after = Duration::from_millis(cfg.window_ms);
    let mut last_delivery = tokio::time::Instant::now();
    let mut stalled = false;
    let sleep = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(sleep);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(ev) = leases.recv() => match ev {
                LeaseEvent::Take(p) => match w.take_partition(p).await {
                    Ok(()) => tracing::info!(partition = p, "partition taken"),
                    Err(e) => {
                        // Held but not consumed would stall its sites: let it go.
                        tracing::warn!(partition = p, "cannot consume partition, giving it back: {e:#}");
                        w.drop_partition(p);
                        let _ = give_back.send(p);
                    }
                },
                LeaseEvent::Drop(p) => {
                    w.drop_partition(p);
                    tracing::info!(partition = p, "partition dropped");
                }
            },
            Some(s) = statuses_rx.recv() => w.status(s),
            _ = report.tick() => tracing::info!(
                partitions = w.owned.len(),
                reports = w.handled,
                summaries = w.published,
                stored = w.stats.stored.load(std::sync::atomic::Ordering::Relaxed),
                "site worker"
            ),
            n = delivered.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                if std::mem::take(&mut stalled) {
                    tracing::info!("reports flow again");
                    w.engine.handle_link(now_ms(), true);
                }
                last_delivery = tokio::time::Instant::now();
                w.reports(&mut batch).await;
            }
            () = &mut sleep => {}
        }
        if !stalled && !w.owned.is_empty() && last_delivery.elapsed() > stall_after {
            tracing::warn!("no report from any partition for {stall_after:?}: silence not counted");
            stalled = true;
            w.engine.handle_link(now_ms(), false);
        }
        if w.owned.is_empty() {
            last_delivery = tokio::time::Instant::now();
        }
        if w.engine.poll_timeout().is_some_and(|t| t <= now_ms()) {
            w.engine.handle_timeout(now_ms());
            let summaries = w.dispatch();
            w.publish(summaries).await;
        }
        if let Some(sh) = &w.shared {
            sh.snapshot.set_counters(w.engine.counters());
            sh.stats.lock().expect("stats lock").connected =
                client.connection_state() == async_nats::connection::State::Connected;
        }
        sleep
            .as_mut()
            .reset(tokio::time::Instant::now() + super::nap(&w.engine, now_ms()));
    }
    tracing::info!("stopping: giving the partitions back");
    let _ = stop_http.send(());
    for (_, o) in std::mem::take(&mut w.owned) {
        o.pull.abort();
    }
    w.flush().await;
    let _ = stop_keeper.send(());
    let _ = keeper.await;
    client.flush().await.ok();
    tracing::info!(
        stored = w.stats.stored.load(std::sync::atomic::Ordering::Relaxed),
        refused = w
            .stats
            .refused_duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}

/// Serves `/metrics` on `[http] listen` (nothing else: the pages are the
/// correlators'); returns what it reads.
async fn serve_metrics(
    cfg: &Config,
    stats: Arc<HistoryStats>,
    stop: &tokio::sync::broadcast::Sender<()>,
) -> anyhow::Result<Arc<Shared>> {
    let location = cfg.storage.location.clone();
    let history = tokio::task::spawn_blocking(move || Store::connect(&location)).await??;
    let shared = Arc::new(Shared::new(cfg, history, stats, Vec::new()));
    crate::http::serve(
        cfg.http_listen,
        shared.clone(),
        cfg.clone(),
        crate::http::Serve::Metrics,
        stop.subscribe(),
    )
    .await?;
    Ok(shared)
}

/// Every site's statuses, from the newest each has (older than now: retained).
async fn statuses(bus: &Bus, c: &Cluster) -> anyhow::Result<mpsc::Receiver<StatusMsg>> {
    let started = now_ms();
    let consumer = super::fresh_consumer(
        bus,
        super::STATUS_STREAM,
        &format!("status-{}", c.name),
        "faultline.v1.sites.*.status",
        consumer::DeliverPolicy::LastPerSubject,
    )
    .await?;
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(super::forward(consumer, tx, "statuses", move |m| {
        let retained = m
            .info()
            .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) < i128::from(started))
            .unwrap_or(false);
        let topic = super::topic_of(m.subject.as_str());
        let site = topic
            .strip_prefix("faultline/v1/sites/")
            .and_then(|r| r.strip_suffix("/status"))
            .and_then(|s| Id::new(s).ok())?;
        Some((site, topic, m.payload.clone(), retained))
    }));
    Ok(rx)
}

impl Worker {
    fn owns(&self, site: &str) -> bool {
        self.owned
            .contains_key(&partition_of(site, self.cluster.partitions))
    }

    /// A status: kept for whoever takes the site's partition; handled if ours.
    fn status(&mut self, (site, topic, payload, retained): StatusMsg) {
        if self.owns(site.as_str()) {
            let _ = self
                .engine
                .handle_message(&self.topics, now_ms(), &topic, &payload, retained);
            let _ = self.dispatch();
        }
        self.statuses.insert(site, (topic, payload));
    }

    /// One batch of reports: engine, summaries, history commit, then acks.
    async fn reports(&mut self, batch: &mut Vec<Delivery>) {
        let mut acks = Vec::with_capacity(batch.len());
        let mut summaries = Vec::new();
        for (p, msg) in batch.drain(..) {
            if !self.owned.contains_key(&p) {
                // Given up since it was pulled: the next owner gets it again.
                continue;
            }
            let subject = msg.subject.as_str();
            let topic = super::topic_of(super::agent_subject(subject));
            if let Err(e) =
                self.engine
                    .handle_message(&self.topics, now_ms(), &topic, &msg.payload, false)
            {
                tracing::debug!(topic, "dropped: {e}");
            }
            summaries.extend(self.dispatch());
            self.handled += 1;
            acks.push(msg);
        }
        // Summaries first, then the commit: a worker that dies between the two
        // leaves the reports unacknowledged, the next owner judges them again
        // (history does not hold them yet) and its summaries are dropped by the
        // stream as repeats. The other order would lose them: the next owner
        // would find the windows in history and say nothing.
        self.publish(summaries).await;
        self.flush().await;
        for m in acks {
            if let Err(e) = m.ack().await {
                tracing::warn!("ack: {e}");
            }
        }
    }

    /// Hands history rows to the writer; returns the summaries to publish.
    fn dispatch(&mut self) -> Vec<SiteSummary> {
        let mut summaries = Vec::new();
        while let Some(o) = self.engine.poll_output() {
            let m = match o {
                Output::Window(row) => StoreMsg::Window(row),
                Output::Boot(site, meta) => StoreMsg::Boot(site, meta),
                Output::Site {
                    site,
                    isp,
                    customer,
                } => StoreMsg::Site(site, isp, customer),
                Output::Summary(s) => {
                    summaries.push(s);
                    continue;
                }
                Output::Snapshot(snap) => {
                    if let Some(sh) = &self.shared {
                        sh.snapshot.set(snap);
                    }
                    continue;
                }
                Output::Metrics(r) => {
                    self.metrics.push(r);
                    continue;
                }
                // Verdicts never come from the site stage.
                Output::Verdict(_) | Output::Incident(_) | Output::Forget(_) => continue,
            };
            let _ = self.store_tx.send(m);
        }
        summaries
    }

    /// Waits until everything handed to history is committed.
    async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.store_tx.send(StoreMsg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Publishes summaries and waits for every PubAck, sending again those the
    /// stream did not take (a report is not acknowledged before its summary is
    /// there; the stream drops a repeat by its `Nats-Msg-Id`).
    /// The per-probe metrics topics, on core NATS; what the client cannot take is
    /// counted as dropped.
    async fn publish_metrics(&mut self) {
        let mut dropped = 0;
        for report in std::mem::take(&mut self.metrics) {
            for probe in &report.probes {
                let topic = self.topics.metrics(&report.site, &probe.target);
                let body = serde_json::to_vec(&faultline_shared::MetricsJson::new(&report, probe))
                    .unwrap_or_default();
                if self
                    .nats
                    .publish(super::subject_of(&topic), body.into())
                    .await
                    .is_err()
                {
                    dropped += 1;
                }
            }
        }
        if let (Some(sh), true) = (&self.shared, dropped > 0) {
            sh.stats.lock().expect("stats lock").metrics_dropped += dropped;
        }
    }

    async fn publish(&mut self, summaries: Vec<SiteSummary>) {
        self.publish_metrics().await;
        self.published += summaries.len() as u64;
        let mut todo: Vec<&SiteSummary> = summaries.iter().collect();
        let mut backoff = crate::service::backoff(100, 5_000);
        while !todo.is_empty() {
            let mut acks = Vec::with_capacity(todo.len());
            for s in &todo {
                acks.push(self.send(s).await);
            }
            let taken = futures_util::future::join_all(acks.into_iter().map(|a| async move {
                match a {
                    Some(a) => a.await.is_ok(),
                    None => false,
                }
            }))
            .await;
            let before = todo.len();
            todo = todo
                .into_iter()
                .zip(taken)
                .filter(|(_, ok)| !ok)
                .map(|(s, _)| s)
                .collect();
            if !todo.is_empty() {
                let d = backoff.next_delay(fastrand::f64());
                tracing::warn!(
                    "{} of {before} summaries not taken; again in {d:?}",
                    todo.len()
                );
                tokio::time::sleep(d).await;
            }
        }
    }

    async fn send(&self, s: &SiteSummary) -> Option<jetstream::context::PublishAckFuture> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id(s).as_str());
        let body = Bytes::from(faultline_shared::summary::encode(s));
        self.bus
            .js
            .publish_with_headers(super::summary_subject(s.site.as_str()), headers, body)
            .await
            .ok()
    }

    /// Stops consuming `p` and forgets its sites.
    fn drop_partition(&mut self, p: u32) {
        let Some(o) = self.owned.remove(&p) else {
            return;
        };
        o.pull.abort();
        let n = self.cluster.partitions;
        self.engine
            .retain_sites(|s| partition_of(s.as_str(), n) != p);
    }

    /// Restores `p`'s sites from history (boots: de-dup; identities), replays their
    /// latest statuses, then consumes its reports.
    async fn take_partition(&mut self, p: u32) -> anyhow::Result<()> {
        let n = self.cluster.partitions;
        let now = now_ms();
        let all =
            tokio::task::block_in_place(|| self.reader.restore(now)).context("restore history")?;
        let mine = |s: &Id| partition_of(s.as_str(), n) == p;
        let restored = Restored {
            boots: all.boots.into_iter().filter(|(s, _)| mine(s)).collect(),
            sites: all.sites.into_iter().filter(|(s, ..)| mine(s)).collect(),
            ..Restored::default()
        };
        self.engine.restore(now, restored);
        // What the last owner took but did not acknowledge comes again after the
        // consumer's ack wait (a lease): until then these sites are not silent.
        self.engine
            .hold_silence_until(now.saturating_add(self.cluster.lease_ms));
        let consumer = partition_consumer(&self.bus, &self.cluster, p).await?;
        let pull = tokio::spawn(super::forward(
            consumer,
            self.deliveries.clone(),
            "partition",
            move |m| Some((p, m)),
        ));
        self.owned.insert(p, Owned { pull });
        let replay: Vec<(String, Bytes)> = self
            .statuses
            .iter()
            .filter(|(s, _)| mine(s))
            .map(|(_, v)| v.clone())
            .collect();
        for (topic, payload) in replay {
            let _ = self
                .engine
                .handle_message(&self.topics, now, &topic, &payload, true);
        }
        let summaries = self.dispatch();
        self.publish(summaries).await;
        Ok(())
    }
}

/// Partition `p`'s durable consumer (made if absent). Every worker makes all of
/// them at start: the listener's stream keeps a report only while a consumer
/// wants it, so they must exist before any worker holds the partition.
async fn partition_consumer(
    bus: &Bus,
    c: &Cluster,
    p: u32,
) -> anyhow::Result<consumer::Consumer<pull::Config>> {
    let stream = bus.js.get_stream(super::REPORTS_STREAM).await?;
    stream
        .get_or_create_consumer(
            &format!("part-{p}"),
            pull::Config {
                durable_name: Some(format!("part-{p}")),
                filter_subject: super::partition_filter(p),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_millis(c.lease_ms),
                max_ack_pending: MAX_ACK_PENDING,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("partition {p}'s consumer"))
}

/// The lease keeper: every third of the lease it announces this worker (the first
/// time without taking anything), renews
/// what it holds (a failed renewal is a `Drop` at once), gives back what is over
/// its fair share (`ceil(partitions / live workers)`) and takes free partitions up
/// to it. It runs beside the owner so a long batch never lets a lease lapse; on
/// `stop` it gives every lease back (the others take them at their next tick), and
/// it lets go of those the owner hands back (`given_back`).
async fn keep_leases(
    bus: Bus,
    c: Cluster,
    events: mpsc::UnboundedSender<LeaseEvent>,
    mut given_back: mpsc::UnboundedReceiver<u32>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut held: BTreeMap<u32, Lease> = BTreeMap::new();
    // A worker announces itself a tick before it takes anything: workers started
    // together (a cluster's first start, a rolling restart) see each other and take
    // their shares at once, instead of the first taking every partition and giving
    // half back a tick later (its unacknowledged reports then wait out the ack wait).
    let mut announced = false;
    let mut tick = tokio::time::interval(Duration::from_millis(c.lease_ms / 3));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let _ = bus.workers.put(&c.name, Bytes::from(c.name.clone())).await;
        // Partitions the owner could not consume: free for anyone (this worker too,
        // at a later tick).
        while let Ok(p) = given_back.try_recv() {
            if let Some(l) = held.remove(&p) {
                l.release(&bus.leases).await;
            }
        }
        let mut lost = Vec::new();
        for (p, l) in held.iter_mut() {
            if !l.renew(&bus.leases, &c.name, c.lease_ms).await {
                lost.push(*p);
            }
        }
        for p in lost {
            held.remove(&p);
            tracing::warn!(partition = p, "partition lease lost");
            let _ = events.send(LeaseEvent::Drop(p));
        }
        let live = live_workers(&bus).await.max(1);
        let share = c.partitions.div_ceil(live) as usize;
        while held.len() > share {
            let Some((p, l)) = held.pop_last() else { break };
            let _ = events.send(LeaseEvent::Drop(p));
            tracing::info!(partition = p, live, "partition given back");
            l.release(&bus.leases).await;
        }
        if !std::mem::replace(&mut announced, true) {
            continue;
        }
        let mut free: Vec<u32> = (0..c.partitions)
            .filter(|p| !held.contains_key(p))
            .collect();
        fastrand::shuffle(&mut free);
        for p in free {
            if held.len() >= share {
                break;
            }
            if let Some(l) =
                Lease::take(&bus.leases, &format!("part-{p}"), &c.name, c.lease_ms).await
            {
                held.insert(p, l);
                let _ = events.send(LeaseEvent::Take(p));
            }
        }
    }
    for (p, l) in held {
        let _ = events.send(LeaseEvent::Drop(p));
        l.release(&bus.leases).await;
    }
    // Gone from the live workers at once (it would lapse within a lease anyway).
    let _ = bus.workers.purge(&c.name).await;
}

/// Live site workers: the keys in the worker bucket (each expires a lease after
/// its worker's last announcement; a worker that stops purges its own at once).
async fn live_workers(bus: &Bus) -> u32 {
    use futures_util::StreamExt;
    let Ok(keys) = bus.workers.keys().await else {
        return 1;
    };
    keys.filter(|k| std::future::ready(k.is_ok())).count().await as u32
}

/// The summary's de-dup id: the same window (or event) from a redelivered report
/// is the same message.
fn msg_id(s: &SiteSummary) -> String {
    match &s.kind {
        SummaryKind::Window { boot, seq, .. } => format!("{}/{boot}/{seq}", s.site),
        SummaryKind::Offline { since_ms, .. } => {
            format!("{}/offline/{since_ms}/{}", s.site, s.at_ms)
        }
        SummaryKind::Announce => format!("{}/announce/{}", s.site, s.at_ms),
        SummaryKind::Online => format!("{}/online/{}", s.site, s.at_ms),
    }
}
