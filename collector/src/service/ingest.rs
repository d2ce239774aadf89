//! The reading MQTT connection: reports and statuses in, acknowledgements out.
//!
//! The connection keeps its session (reports published while the collector is
//! away are queued by the broker) and acknowledges only what history has committed
//! ([`super::history`]). Each delivery takes a place in a bounded pipeline, given
//! back when its commit is done; with no place free it reads nothing more and TCP
//! holds the broker back. On a clean stop it hands nothing more on (deliveries left
//! unacknowledged come again next start) and reads on until the broker closes the
//! connection after its DISCONNECT: closing it ourselves with deliveries unread
//! would reset it (RST), and the broker would drop acknowledgements it had not read.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, ClientError, Event};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio::task::JoinHandle;

use super::history::{AckMsg, AckToken, HistoryStats};
use super::{Shared, backoff};
use crate::config::Config;
use crate::link::{Link, Role};
use faultline_shared::Topics;
use std::sync::atomic::Ordering;

/// How long the broker keeps the reading connection's session (and queues reports
/// for it) while the collector is away: as long as an agent's default buffer.
const SESSION_EXPIRY_S: u32 = 24 * 3600;
/// Reports the broker may deliver before the collector acknowledges one (MQTT 5
/// Receive Maximum): the depth of the ingest → history → ack pipeline.
const RECEIVE_MAXIMUM: u16 = 4096;
/// Deliveries handled and not yet committed, at most: the collector's own bound on
/// the pipeline. Mosquitto 2.0.11 does not keep to the Receive Maximum while it
/// drains a queued backlog (each PUBACK can release several queued reports).
pub const PIPELINE: usize = 16_384;
/// Keepalive of the reading connection. With a backlog the broker's answer to a
/// ping waits behind the reports it has already released to the connection; a
/// minute of them must not read as a dead broker.
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Deliveries queued for the engine's owner.
const INPUT_QUEUE: usize = 4096;

/// What the reader hands the engine's owner.
#[derive(Debug)]
pub enum Input {
    /// A delivery, with its acknowledgement to send once committed.
    Message {
        publish: Box<Publish>,
        ack: Option<AckToken>,
    },
    /// The link went down or came back.
    Link { up: bool },
}

/// The reading connection's tasks.
#[derive(Debug)]
pub struct Reader {
    client: AsyncClient,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    acker: JoinHandle<()>,
}

impl Reader {
    /// Connects (in the background, with backoff) and starts reading; returns the
    /// reader and the deliveries for the engine's owner.
    pub fn start(
        link: &Link,
        cfg: &Config,
        shared: Arc<Shared>,
        pipeline: Arc<Semaphore>,
        stats: Arc<HistoryStats>,
        acks: mpsc::UnboundedReceiver<AckMsg>,
        stop: broadcast::Receiver<()>,
    ) -> (Self, mpsc::Receiver<Input>) {
        let mut opts = link.options(Role::Ingest);
        opts.set_clean_start(false)
            .set_session_expiry_interval(Some(SESSION_EXPIRY_S))
            .set_manual_acks(true)
            .set_receive_maximum(Some(RECEIVE_MAXIMUM))
            .set_keep_alive(KEEPALIVE);
        let (client, eventloop) = AsyncClient::new(opts, usize::from(RECEIVE_MAXIMUM) + 64);
        let conn_gate = Arc::new(Mutex::new(0u64));
        let acker = tokio::spawn(ack_committed(
            client.clone(),
            acks,
            conn_gate.clone(),
            stats,
        ));
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let task = tokio::spawn(read(ReadLoop {
            eventloop,
            client: client.clone(),
            shared: shared.clone(),
            topics: cfg.topics.clone(),
            share_group: cfg.share_group.clone(),
            pipeline,
            conn_gate,
            inputs: Some(tx),
            stop,
        }));
        (
            Self {
                client,
                shared,
                task,
                acker,
            },
            rx,
        )
    }

    /// After the owner has committed and acknowledged: leaves the session with a
    /// DISCONNECT and reads until the broker closes the connection.
    pub async fn finish(self, within: Duration) {
        let connected = self.shared.stats.lock().expect("stats lock").connected;
        if connected {
            let _ = self.client.disconnect().await;
            if tokio::time::timeout(within, self.task).await.is_err() {
                tracing::warn!("the broker did not take the acknowledgements in time");
            }
        } else {
            // No broker: no one to acknowledge to (nor to say goodbye to); the
            // reader ends at its next failed attempt.
            let _ = tokio::time::timeout(within, self.task).await;
        }
        // The acker ends once history has closed its channel.
        let _ = tokio::time::timeout(within, self.acker).await;
    }
}

struct ReadLoop {
    eventloop: rumqttc::v5::EventLoop,
    client: AsyncClient,
    shared: Arc<Shared>,
    topics: Topics,
    share_group: Option<faultline_shared::Id>,
    pipeline: Arc<Semaphore>,
    /// The number of the current connection (see [`AckToken`]).
    conn_gate: Arc<Mutex<u64>>,
    /// `None` once stopping.
    inputs: Option<mpsc::Sender<Input>>,
    stop: broadcast::Receiver<()>,
}

async fn read(mut r: ReadLoop) {
    let mut backoff = backoff(200, 30_000);
    loop {
        let polled = tokio::select! {
            p = r.eventloop.poll() => p,
            _ = r.stop.recv(), if r.inputs.is_some() => {
                // Stop handing deliveries on: the owner ends once it has what it took.
                r.inputs = None;
                continue;
            }
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                r.shared.stats.lock().expect("stats lock").connected = true;
                if let Some(tx) = &r.inputs {
                    let _ = tx.send(Input::Link { up: true }).await;
                }
                subscribe(&r.client, &r.topics, r.share_group.as_ref());
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(tx) = &r.inputs else {
                    continue;
                };
                // A place in the pipeline, returned by the writer once this
                // delivery is committed; none free: read nothing more.
                match r.pipeline.acquire().await {
                    Ok(place) => place.forget(),
                    Err(_) => return,
                }
                let ack = AckToken::of(&p, *r.conn_gate.lock().expect("conn gate lock"));
                if tx
                    .send(Input::Message {
                        publish: Box::new(p),
                        ack,
                    })
                    .await
                    .is_err()
                {
                    r.pipeline.add_permits(1);
                }
            }
            // Sent after every acknowledgement queued before it; read on until
            // the broker closes the connection.
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {}
            Ok(_) => {}
            Err(_) if r.inputs.is_none() => return,
            Err(e) => {
                // Deliveries of the lost connection come again on the next one:
                // their acknowledgements must not be sent on it.
                *r.conn_gate.lock().expect("conn gate lock") += 1;
                r.eventloop.clean();
                {
                    let mut st = r.shared.stats.lock().expect("stats lock");
                    st.connected = false;
                    st.mqtt_errors += 1;
                }
                // Blind: silence now says nothing about the sites.
                if let Some(tx) = &r.inputs {
                    let _ = tx.send(Input::Link { up: false }).await;
                }
                let d = backoff.next_delay(fastrand::f64());
                tracing::warn!("mqtt: {e}; retrying in {d:?}");
                tokio::select! {
                    () = tokio::time::sleep(d) => {}
                    _ = r.stop.recv(), if r.inputs.is_some() => return,
                }
            }
        }
    }
}

fn subscribe(client: &AsyncClient, t: &Topics, share_group: Option<&faultline_shared::Id>) {
    let shared = |f: String| match share_group {
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

/// The acker: sends each committed delivery's PUBACK through the reading client,
/// unless the connection it came on is gone (`conn_gate` holds the current one; the
/// reader advances it when the connection drops, then clears rumqttc's queue).
async fn ack_committed(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<AckMsg>,
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
                // connection is queued after the reader cleared the queue.
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
