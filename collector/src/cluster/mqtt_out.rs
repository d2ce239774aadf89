//! The correlator's MQTT connection to the NATS cluster's MQTT listeners (MQTT
//! 3.1.1: nats-server 2.9 speaks no MQTT 5): verdicts retained, incident events,
//! the sites' central configs (retained; it also reads what the cluster holds on
//! the config topics, for [`crate::service::site_config`]). It moves to the next
//! listener when one stops answering, so a dead NATS node only delays what is
//! queued (rumqttc sends its unacknowledged publishes again).

use std::time::Duration;

use faultline_shared::{Topic, Topics};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, SubscribeFilter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::service::publish::{BrokerConfig, Publication};

/// Publishes queued for the listener.
const OUT_QUEUE: usize = 20_000;

/// The writing connection.
#[derive(Debug)]
pub struct MqttOut {
    client: AsyncClient,
    task: JoinHandle<()>,
}

fn options(client_id: &str, (host, port): &(String, u16), will: &LastWill) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, host.clone(), *port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_last_will(will.clone());
    o
}

impl MqttOut {
    /// Connects (in the background) to the first of `listeners` that answers;
    /// `status` is the collector status topic and its online/offline bodies. With
    /// `configs`, every connection subscribes to the sites' config topics and hands
    /// what the cluster holds there on.
    pub fn start(
        listeners: Vec<(String, u16)>,
        client_id: String,
        status: (String, Vec<u8>, Vec<u8>),
        configs: Option<(Topics, mpsc::UnboundedSender<BrokerConfig>)>,
    ) -> Self {
        let (topic, online, offline) = status;
        let will = LastWill::new(topic.clone(), offline, QoS::AtLeastOnce, true);
        let (client, mut eventloop) =
            AsyncClient::new(options(&client_id, &listeners[0], &will), OUT_QUEUE);
        let task = {
            let client = client.clone();
            tokio::spawn(async move {
                let mut at = 0;
                let mut backoff = crate::service::backoff(200, 5_000);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            backoff.reset();
                            tracing::info!(listener = ?listeners[at], "MQTT (verdicts) connected");
                            let _ = client.try_publish(
                                topic.clone(),
                                QoS::AtLeastOnce,
                                true,
                                online.clone(),
                            );
                            // One SUBSCRIBE, so one SUBACK: `site_config` takes each
                            // as a fresh start of the broker's retained configs.
                            if let Some((topics, _)) = &configs {
                                let _ = client.try_subscribe_many(
                                    [topics.all_configs(), topics.all_config_statuses()]
                                        .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce)),
                                );
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some((_, tx)) = &configs {
                                let _ = tx.send(BrokerConfig::Subscribed);
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if let Some((topics, tx)) = &configs {
                                let payload = p.payload.to_vec();
                                let _ = match topics.parse(&p.topic) {
                                    Ok(Topic::Config { site }) => {
                                        tx.send(BrokerConfig::Seen { site, payload })
                                    }
                                    Ok(Topic::ConfigStatus { site }) => {
                                        tx.send(BrokerConfig::Answer { site, payload })
                                    }
                                    _ => Ok(()),
                                };
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            at = (at + 1) % listeners.len();
                            eventloop.mqtt_options = options(&client_id, &listeners[at], &will);
                            let d = backoff.next_delay(fastrand::f64());
                            tracing::warn!(
                                "MQTT (verdicts): {e}; next {:?} in {d:?}",
                                listeners[at]
                            );
                            tokio::time::sleep(d).await;
                        }
                    }
                }
            })
        };
        Self { client, task }
    }

    /// Queues one QoS 1 publish.
    pub async fn publish(&self, topic: String, retain: bool, body: Vec<u8>) {
        let _ = self
            .client
            .publish(topic, QoS::AtLeastOnce, retain, body)
            .await;
    }

    /// Publishes the sites' configs `site_config` hands on, retained, until `rx`
    /// closes (abort the task with the connection).
    pub fn forward_configs(
        &self,
        topics: Topics,
        mut rx: mpsc::UnboundedReceiver<Publication>,
    ) -> JoinHandle<()> {
        let client = self.client.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                if let Publication::SiteConfig(c) = p {
                    let _ = client
                        .publish(
                            topics.config(&c.site),
                            QoS::AtLeastOnce,
                            true,
                            c.config.encode(),
                        )
                        .await;
                }
            }
        })
    }

    /// Drops the connection at once (a correlator that lost its lease): its last
    /// will does not fire for a clean close, and nothing queued goes out.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Leaves with a DISCONNECT after what is queued.
    pub async fn finish(self, offline: (String, Vec<u8>)) {
        let _ = self
            .client
            .publish(offline.0, QoS::AtLeastOnce, true, offline.1)
            .await;
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}
