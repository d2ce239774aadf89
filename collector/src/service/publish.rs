//! The writing MQTT connection: verdicts (retained), incident events, per-probe
//! metrics and the collector's own status (its last will says `offline`). It only
//! writes, so metrics never slow the reading side; metrics are QoS 0 and dropped
//! (counted) when the broker cannot take them, verdicts and events are never dropped.
//! It also publishes each site's central config (retained) and reads every site's
//! retained config back ([`BrokerConfig`]), so `site_config` knows what the broker holds.

use std::sync::Arc;
use std::time::Duration;

use faultline_shared::{CollectorStatus, IncidentEvent, MetricsJson, Report, Verdict};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, LastWill, Packet};
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Shared, backoff};
use crate::config::Config;
use crate::link::{Link, Role};

/// Outgoing messages queued for the broker before metrics are dropped.
const OUT_QUEUE: usize = 20_000;
/// Reports waiting for their metrics to be published.
const METRICS_QUEUE: usize = 2_000;

/// What the engine's owner hands the publisher.
#[derive(Debug)]
pub enum Publication {
    Verdict(Verdict),
    Incident(IncidentEvent),
    /// Clears a retained verdict no longer tracked.
    Forget(Verdict),
    /// A site's central config (retained).
    SiteConfig(crate::fleet_config::Publish),
}

/// What the broker holds on the sites' config topics, as this connection reads it.
#[derive(Debug)]
pub enum BrokerConfig {
    /// The subscription is in place: retained copies follow at once.
    Subscribed,
    Seen {
        site: faultline_shared::Id,
        payload: Vec<u8>,
    },
    /// The site's agent answered on `config/status`.
    Answer {
        site: faultline_shared::Id,
        payload: Vec<u8>,
    },
}

/// The writing connection's tasks.
#[derive(Debug)]
pub struct Publisher {
    client: AsyncClient,
    shared: Arc<Shared>,
    status_topic: String,
    connection: JoinHandle<()>,
    outputs: JoinHandle<()>,
    metrics: JoinHandle<()>,
}

/// The channels the engine's owner writes to.
#[derive(Debug)]
pub struct Outlets {
    pub outputs: mpsc::UnboundedSender<Publication>,
    pub metrics: mpsc::Sender<Arc<Report>>,
    /// The sites' configs as the broker holds them (for `site_config`).
    pub configs: mpsc::UnboundedReceiver<BrokerConfig>,
}

/// The body of the collector's retained status (`online`, or its last will).
pub fn status(online: bool) -> Vec<u8> {
    let v = env!("CARGO_PKG_VERSION");
    let s = if online {
        CollectorStatus::online(v)
    } else {
        CollectorStatus::offline(v)
    };
    serde_json::to_vec(&s).unwrap_or_default()
}

impl Publisher {
    pub fn start(link: &Link, cfg: &Config, shared: Arc<Shared>) -> (Self, Outlets) {
        let status_topic = cfg.topics.collector_status();
        let mut opts = link.options(Role::Publish);
        opts.set_last_will(LastWill::new(
            status_topic.clone(),
            status(false),
            QoS::AtLeastOnce,
            true,
            None,
        ));
        // Bounded: when the broker cannot take metrics as fast as they come, they
        // are dropped and counted rather than queued without limit.
        let (client, mut eventloop) = AsyncClient::new(opts, OUT_QUEUE);
        let (configs_tx, configs) = mpsc::unbounded_channel();
        let configs_filter = cfg.topics.all_configs();
        let answers_filter = cfg.topics.all_config_statuses();
        // Reconnects with backoff, announces the collector, ends once the broker
        // closes the connection after its goodbye.
        let connection = {
            let (client, shared, topic) = (client.clone(), shared.clone(), status_topic.clone());
            tokio::spawn(async move {
                let mut backoff = backoff(200, 30_000);
                let mut bye = false;
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            backoff.reset();
                            let _ = client.try_publish(
                                topic.clone(),
                                QoS::AtLeastOnce,
                                true,
                                status(true),
                            );
                            // One SUBSCRIBE, so one SUBACK: `site_config` takes each
                            // as a fresh start of the broker's retained configs.
                            let _ = client.try_subscribe_many(
                                [configs_filter.clone(), answers_filter.clone()]
                                    .map(|f| Filter::new(f, QoS::AtLeastOnce)),
                            );
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = configs_tx.send(BrokerConfig::Subscribed);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let parsed = std::str::from_utf8(&p.topic)
                                .ok()
                                .and_then(|t| shared.topics.parse(t).ok());
                            let payload = p.payload.to_vec();
                            let _ = match parsed {
                                Some(faultline_shared::Topic::Config { site }) => {
                                    configs_tx.send(BrokerConfig::Seen { site, payload })
                                }
                                Some(faultline_shared::Topic::ConfigStatus { site }) => {
                                    configs_tx.send(BrokerConfig::Answer { site, payload })
                                }
                                _ => Ok(()),
                            };
                        }
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => bye = true,
                        Ok(_) => {}
                        Err(_) if bye => return,
                        Err(e) => {
                            shared.stats.lock().expect("stats lock").mqtt_errors += 1;
                            let d = backoff.next_delay(fastrand::f64());
                            tracing::warn!("mqtt (out): {e}; retrying in {d:?}");
                            tokio::time::sleep(d).await;
                        }
                    }
                }
            })
        };
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Publication>();
        let outputs = {
            let (client, shared) = (client.clone(), shared.clone());
            tokio::spawn(async move {
                let t = &shared.topics;
                while let Some(p) = out_rx.recv().await {
                    let (topic, retain, body) = match &p {
                        Publication::Verdict(v) => (
                            t.verdict(v),
                            true,
                            serde_json::to_vec(v).unwrap_or_default(),
                        ),
                        Publication::Incident(e) => (
                            t.incidents(),
                            false,
                            serde_json::to_vec(e).unwrap_or_default(),
                        ),
                        // An empty retained message clears the topic.
                        Publication::Forget(v) => (t.verdict(v), true, Vec::new()),
                        Publication::SiteConfig(c) => (t.config(&c.site), true, c.config.encode()),
                    };
                    if client
                        .publish(topic, QoS::AtLeastOnce, retain, body)
                        .await
                        .is_ok()
                    {
                        let mut st = shared.stats.lock().expect("stats lock");
                        match p {
                            Publication::Incident(_) => st.published_events += 1,
                            Publication::SiteConfig(_) => {}
                            _ => st.published_verdicts += 1,
                        }
                    }
                }
            })
        };
        // Per-probe metrics: serialised and published off the owner's task.
        let (metrics_tx, mut metrics_rx) = mpsc::channel::<Arc<Report>>(METRICS_QUEUE);
        let metrics = {
            let (client, shared) = (client.clone(), shared.clone());
            tokio::spawn(async move {
                while let Some(report) = metrics_rx.recv().await {
                    let mut dropped = 0;
                    for probe in &report.probes {
                        let t = shared.topics.metrics(&report.site, &probe.target);
                        let body = serde_json::to_vec(&MetricsJson::new(&report, probe))
                            .unwrap_or_default();
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
        (
            Self {
                client,
                shared,
                status_topic,
                connection,
                outputs,
                metrics,
            },
            Outlets {
                outputs: out_tx,
                metrics: metrics_tx,
                configs,
            },
        )
    }

    /// Once the owner has ended (its outlets dropped): publishes what is queued,
    /// says `offline`, and leaves with a DISCONNECT.
    pub async fn finish(self) {
        let _ = self.outputs.await;
        let _ = self.metrics.await;
        let connected = self.shared.stats.lock().expect("stats lock").connected;
        if connected {
            let _ = self
                .client
                .publish(self.status_topic, QoS::AtLeastOnce, true, status(false))
                .await;
            let _ = self.client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), self.connection).await;
        }
    }
}
