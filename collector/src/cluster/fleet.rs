//! The correlator (`run --role fleet`) and its standby: both read every site
//! summary from the summary stream and run the engine's fleet stage on them (the
//! standby stays warm: the same per-site latches); the one holding the
//! `fleet-leader` lease writes verdicts and incidents to history and then publishes
//! them (retained verdicts, incident events) through a NATS node's MQTT listener.
//!
//! Takeover: the standby that takes the lease adopts what history holds — the
//! verdicts, open incidents and incident counter the previous leader committed
//! ([`Engine::take_over`]) — and publishes every verdict again, retained (what the
//! old leader committed but did not publish comes out now). History is written
//! before anything is published, so an incident id the world has seen is always in
//! history: ids never repeat, and no incident forks. A leader that cannot renew
//! (or was paused past its lease) stops writing and publishing before its next
//! batch.
//!
//! Like a one-node collector, a correlator serves the pages, API and `/metrics`
//! (`[http]`; the standby's show the same fleet state), marks verdicts inside
//! maintenance windows, and — while active — hands incident events to the alert
//! outbox (`[alerts]`; on the active correlator's disk, started when it takes the
//! lease) and publishes every site's central agent config (`[[fleet.target]]`,
//! SIGHUP reloads them on both correlators), as a one-node collector does.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer;
use faultline_shared::Topics;
use tokio::sync::{broadcast, mpsc};

use super::mqtt_out::MqttOut;
use super::{Bus, Cluster, LEADER_KEY, Lease};
use crate::alerts::Alerts;
use crate::config::Config;
use crate::engine::{Engine, Output, Role};
use crate::fleet_config::FleetTarget;
use crate::maintenance::Marks;
use crate::service::history::{HistoryStats, StoreMsg};
use crate::service::{Shared, now_ms};
use crate::service::{publish, site_config};

/// What the active correlator publishes.
enum Publication {
    Verdict(faultline_shared::Verdict),
    Incident(faultline_shared::IncidentEvent),
    Forget(faultline_shared::Verdict),
}

struct Correlator {
    engine: Engine,
    cfg: Config,
    topics: Topics,
    cluster: Cluster,
    bus: Bus,
    store_tx: std_mpsc::Sender<StoreMsg>,
    /// What the pages read (history through `shared.history`).
    shared: Arc<Shared>,
    leader: Option<Lease>,
    out: Option<MqttOut>,
    /// The alert outbox, started when this correlator first leads.
    alerts: Option<Alerts>,
    /// Which verdicts say `maintenance`.
    marks: Marks,
    stop: broadcast::Sender<()>,
    /// Summaries received.
    received: u64,
    /// The central configs' targets as of the latest SIGHUP.
    fleet_targets: Vec<FleetTarget>,
    /// Central config publishing, while active.
    configs: Option<Configs>,
    /// When the maintenance windows were last read from history.
    windows_read_ms: u64,
}

/// How often a correlator reads the maintenance windows from history: those added
/// or removed over HTTP at the other correlator reach it within this.
const WINDOWS_EVERY_MS: u64 = 5_000;

/// The active correlator's central config tasks: `site_config`'s own, and the one
/// handing what it decides to the MQTT connection.
struct Configs {
    events: mpsc::UnboundedSender<site_config::Event>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for Configs {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// Runs a correlator until `shutdown` completes.
pub async fn serve(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let cluster = cfg.cluster.clone().context("[cluster] is not configured")?;
    anyhow::ensure!(
        !cluster.mqtt.is_empty(),
        "[cluster] mqtt: the correlator needs the MQTT listeners it publishes verdicts to"
    );
    let client = super::connect(&cluster).await?;
    let bus = Bus::open(client.clone(), &cluster).await?;

    let (writer, reader) = super::open_history(&cfg).await?;
    let kept_windows = tokio::task::block_in_place(|| reader.maintenance())
        .context("restore maintenance windows")?;
    let history_stats = Arc::new(HistoryStats::default());
    let store_tx = super::spawn_history(writer, &cfg, history_stats.clone());

    let mut ecfg = crate::engine_config(&cfg);
    ecfg.role = Role::Fleet;
    let mut engine = Engine::new(ecfg);
    let start = now_ms();
    engine.restore(
        start,
        tokio::task::block_in_place(|| reader.restore(start)).context("restore history")?,
    );
    let shared = Arc::new(Shared::new(&cfg, reader, history_stats, kept_windows));
    shared.snapshot.set(Arc::new(engine.snapshot()));
    let (stop, _) = broadcast::channel::<()>(1);
    crate::http::serve(
        cfg.http_listen,
        shared.clone(),
        cfg.clone(),
        crate::http::Serve::Everything,
        stop.subscribe(),
    )
    .await?;

    let consumer = super::fresh_consumer(
        &bus,
        super::SUMMARY_STREAM,
        &format!("fleet-{}", cluster.name),
        "fl.summary.>",
        consumer::DeliverPolicy::New,
    )
    .await?;
    let (tx, mut summaries) = mpsc::channel(4096);
    tokio::spawn(super::forward(consumer, tx, "summaries", |m| {
        match faultline_shared::summary::decode(&m.payload) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(subject = %m.subject, "bad summary: {e}");
                None
            }
        }
    }));
    tracing::info!(
        name = cluster.name,
        "correlator on the bus (standby until it holds the lease)"
    );

    let (reload_tx, mut reloads) = mpsc::unbounded_channel();
    let reload_task = site_config::spawn_reloads(&cfg, reload_tx);
    let cfg_targets = cfg.fleet_targets.clone();
    let mut c = Correlator {
        engine,
        topics: cfg.topics.clone(),
        cfg,
        cluster: cluster.clone(),
        bus,
        store_tx,
        shared,
        leader: None,
        out: None,
        alerts: None,
        marks: Marks::default(),
        stop,
        received: 0,
        fleet_targets: cfg_targets,
        configs: None,
        windows_read_ms: now_ms(),
    };
    let mut report = tokio::time::interval(Duration::from_secs(30));
    let mut leases = tokio::time::interval(Duration::from_millis(cluster.lease_ms / 3));
    leases.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sleep = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(sleep);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = leases.tick() => c.lease().await,
            Some(s) = summaries.recv() => {
                c.received += 1;
                if let Some(cf) = &c.configs
                    && !c.engine.fleet().sites.contains_key(&s.site)
                {
                    let _ = cf.events.send(site_config::Event::Site(s.site.clone()));
                }
                c.engine.handle_summary(now_ms(), s);
            }
            Some(ev) = reloads.recv() => c.reloaded(ev),
            _ = report.tick() => tracing::info!(
                summaries = c.received,
                evaluations = c.engine.counters().evaluations,
                active = c.leading(),
                "correlator"
            ),
            () = &mut sleep => {}
        }
        if c.engine.poll_timeout().is_some_and(|t| t <= now_ms()) {
            c.engine.handle_timeout(now_ms());
            c.maintenance(now_ms()).await;
        }
        c.dispatch().await;
        c.shared.snapshot.set_counters(c.engine.counters());
        sleep
            .as_mut()
            .reset(tokio::time::Instant::now() + super::nap(&c.engine, now_ms()));
    }
    tracing::info!("stopping");
    let _ = c.stop.send(());
    reload_task.abort();
    c.configs = None;
    if let Some(out) = c.out.take() {
        out.finish((c.topics.collector_status(), publish::status(false)))
            .await;
    }
    if let Some(l) = c.leader.take() {
        l.release(&c.bus.leases).await;
    }
    Ok(())
}

impl Correlator {
    fn leading(&self) -> bool {
        self.leader.as_ref().is_some_and(Lease::valid)
    }

    /// Renews the lease, or tries to take it.
    async fn lease(&mut self) {
        let c = &self.cluster;
        if let Some(l) = &mut self.leader {
            if l.renew(&self.bus.leases, &c.name, c.lease_ms).await {
                return;
            }
            tracing::warn!("lost the correlator lease: standby now");
            self.leader = None;
            self.configs = None;
            if let Some(out) = self.out.take() {
                out.abort();
            }
            return;
        }
        let Some(lease) = Lease::take(&self.bus.leases, LEADER_KEY, &c.name, c.lease_ms).await
        else {
            return;
        };
        let now = now_ms();
        let restored = match tokio::task::block_in_place(|| {
            let reader = self.shared.history.lock().expect("history lock");
            reader.restore(now)
        }) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot read history to take over: {e:#}");
                lease.release(&self.bus.leases).await;
                return;
            }
        };
        tracing::info!(
            open_incidents = restored.open_incidents.len(),
            next_incident = restored.next_incident,
            "correlator lease taken: active"
        );
        let mut known: Vec<_> = restored.sites.iter().map(|(s, _, _)| s.clone()).collect();
        self.engine.take_over(now, restored);
        known.extend(self.engine.fleet().sites.keys().cloned());
        known.sort();
        known.dedup();
        let topic = self.topics.collector_status();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let out = MqttOut::start(
            c.mqtt.clone(),
            format!("faultline-fleet-{}", c.name),
            (topic, publish::status(true), publish::status(false)),
            Some((self.topics.clone(), seen_tx)),
        );
        let (decided_tx, decided) = mpsc::unbounded_channel();
        let (events, task) = site_config::spawn(
            self.fleet_targets.clone(),
            known,
            seen,
            decided_tx,
            self.shared.config_answers.clone(),
        );
        let forward = out.forward_configs(self.topics.clone(), decided);
        self.configs = Some(Configs {
            events,
            tasks: [task, forward],
        });
        // What history says is published: all of it again, retained.
        for v in self.engine.verdicts() {
            let body = serde_json::to_vec(v).unwrap_or_default();
            out.publish(self.topics.verdict(v), true, body).await;
        }
        self.out = Some(out);
        self.leader = Some(lease);
        if self.alerts.is_none() && self.cfg.alerts.is_enabled() {
            let open: Vec<_> = self.engine.open_incidents().cloned().collect();
            let verdicts: Vec<_> = self.engine.verdicts().cloned().collect();
            let path = self.cfg.alerts.queue_path(&self.cfg.storage.location);
            match Alerts::start(
                &self.cfg.alerts,
                &path,
                &open,
                &verdicts,
                self.shared.maintenance.clone(),
                self.shared.alerts.clone(),
                &self.stop,
            ) {
                Ok(a) => self.alerts = Some(a),
                Err(e) => tracing::error!("alert queue {}: {e:#}", path.display()),
            }
        }
    }

    /// A SIGHUP's fleet targets: kept for the next takeover, and applied now when
    /// active.
    fn reloaded(&mut self, ev: site_config::Event) {
        if let site_config::Event::Reload(targets) = &ev {
            self.fleet_targets.clone_from(targets);
        }
        if let Some(cf) = &self.configs {
            let _ = cf.events.send(ev);
        }
    }

    /// Verdicts whose maintenance mark changed (a window started or ended) go out
    /// again; incidents held back by a window that has ended are alerted.
    async fn maintenance(&mut self, now: u64) {
        if now.saturating_sub(self.windows_read_ms) >= WINDOWS_EVERY_MS {
            self.windows_read_ms = now;
            let read = tokio::task::block_in_place(|| {
                self.shared
                    .history
                    .lock()
                    .expect("history lock")
                    .maintenance()
            });
            match read {
                Ok(ws) => {
                    if self.shared.maintenance.set_http(ws) {
                        tracing::info!("maintenance windows changed in history: applied");
                    }
                }
                Err(e) => tracing::warn!("cannot read maintenance windows: {e:#}"),
            }
        }
        let windows = self.shared.maintenance.get();
        let changed = self.marks.changed(&windows, self.engine.verdicts(), now);
        if !changed.is_empty() {
            let (s, _) = self.shared.snapshot.get();
            self.set_snapshot(s);
        }
        if !self.leading() {
            return;
        }
        if let Some(out) = &self.out {
            for v in changed {
                let body = serde_json::to_vec(&v).unwrap_or_default();
                out.publish(self.topics.verdict(&v), true, body).await;
            }
        }
        if let Some(a) = &mut self.alerts {
            a.tick(now);
        }
    }

    /// Hands the pages a snapshot whose verdicts carry the maintenance marks.
    fn set_snapshot(&self, s: Arc<crate::snapshot::Snapshot>) {
        self.marks.set_snapshot(&self.shared.snapshot, s);
    }

    /// The engine's outputs: the active correlator commits them to history, then
    /// publishes them; the standby lets them go (it has the same state).
    async fn dispatch(&mut self) {
        let mut pubs = Vec::new();
        while let Some(o) = self.engine.poll_output() {
            let (store, p) = match o {
                Output::Verdict(mut v) => {
                    let windows = self.shared.maintenance.get();
                    self.marks.mark(&windows, &mut v, now_ms());
                    if let Some(a) = &mut self.alerts {
                        a.verdict(&v);
                    }
                    (StoreMsg::Verdict(v.clone()), Publication::Verdict(v))
                }
                Output::Incident(e) => {
                    // Durable (fsync'd) before it is published.
                    if let (true, Some(a)) = (self.leading(), &mut self.alerts) {
                        a.take(&e, now_ms());
                    }
                    (StoreMsg::Incident(e.clone()), Publication::Incident(e))
                }
                Output::Forget(v) => (StoreMsg::Forget(v.clone()), Publication::Forget(v)),
                Output::Snapshot(s) => {
                    self.set_snapshot(s);
                    continue;
                }
                _ => continue,
            };
            if self.leading() {
                let _ = self.store_tx.send(store);
                pubs.push(p);
            }
        }
        if pubs.is_empty() {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.store_tx.send(StoreMsg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
        // Fenced: a leader paused past its lease publishes nothing more.
        if !self.leading() {
            return;
        }
        let Some(out) = &self.out else { return };
        let t = &self.topics;
        for p in pubs {
            let (topic, retain, body) = match &p {
                Publication::Verdict(v) => (t.verdict(v), true, serde_json::to_vec(v)),
                Publication::Incident(e) => (t.incidents(), false, serde_json::to_vec(e)),
                Publication::Forget(v) => (t.verdict(v), true, Ok(Vec::new())),
            };
            out.publish(topic, retain, body.unwrap_or_default()).await;
        }
    }
}
