//! Delivery of reports to the broker, losing nothing: rumqttc drives the connection,
//! the agent's own [`Outbox`] decides what is sent and when a report is done.
//!
//! - A stable client id and a persistent session (`clean_session = false`).
//! - A report leaves the outbox only on its PUBACK. After every reconnect, everything
//!   unacknowledged is submitted again (rumqttc's own replay is discarded: it drops
//!   it anyway when the broker lost the session, and its packet ids would no longer
//!   match the outbox).
//! - At most [`MAX_IN_FLIGHT`] reports are unacknowledged at a time, so rumqttc's
//!   request channel never fills: submitting never blocks, and measurement never waits
//!   on the network.
//! - Reconnects sleep on a [`Backoff`] with jitter; rumqttc itself would retry at once.
//! - Retained `Status` online on every connect; last will offline/`lost`; at shutdown
//!   offline/`shutdown`, the outbox flushed for a bounded time, then a clean disconnect.
//!
//! This module does not measure or encode; it moves encoded reports.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use faultline_shared::{OfflineReason, Status};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::{Config, TlsFiles};
use crate::outbox::Outbox;

/// Reports submitted to rumqttc and not yet acknowledged, at most.
pub const MAX_IN_FLIGHT: usize = 16;
/// rumqttc's own in-flight window; well above ours, so it never holds a report back.
const RUMQTT_INFLIGHT: u16 = 100;
/// rumqttc's request channel: our in-flight reports plus statuses and the disconnect.
const REQUEST_CHANNEL: usize = MAX_IN_FLIGHT + 8;
/// Largest packet the agent sends (a JSON report of many targets) or accepts (acks).
const MAX_OUTGOING_PACKET: usize = 256 * 1024;
const MAX_INCOMING_PACKET: usize = 16 * 1024;
/// While offline, one log line every this many failed attempts (and on every change).
const LOG_EVERY_NTH_FAILURE: u32 = 10;
/// Outbox drops are logged on the first and then every this many.
const LOG_EVERY_NTH_DROP: u64 = 100;
/// How long shutdown waits for the drive task after the disconnect.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// Handle to the delivery task; cheap to share with the report assembler.
#[derive(Debug)]
pub struct Delivery {
    link: Arc<Mutex<Link>>,
    task: JoinHandle<()>,
}

/// What the report side and the drive task share (one thread: never contended long).
#[derive(Debug)]
struct Link {
    outbox: Outbox,
    client: AsyncClient,
    report_topic: String,
    status_topic: String,
    online: Vec<u8>,
    connected: bool,
    shutting_down: bool,
}

impl Link {
    /// Submits what the outbox allows; only while connected.
    fn pump(&mut self) {
        if !self.connected {
            return;
        }
        let (client, topic) = (&self.client, &self.report_topic);
        self.outbox.pump(MAX_IN_FLIGHT, |payload| {
            client
                .try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload.to_vec())
                .is_ok()
        });
    }

    /// Publishes a retained status, tracked so packet ids stay matched.
    fn publish_status(&mut self, payload: Vec<u8>) -> bool {
        let ok = self
            .client
            .try_publish(self.status_topic.as_str(), QoS::AtLeastOnce, true, payload)
            .is_ok();
        if ok {
            self.outbox.submitted_status();
        }
        ok
    }
}

fn lock(link: &Mutex<Link>) -> MutexGuard<'_, Link> {
    // A panic while holding the lock aborts the agent (panic = "abort" in the agent
    // profile); in tests the poison carries no broken invariant worth stopping for.
    link.lock().unwrap_or_else(|p| p.into_inner())
}

fn status_json(status: &Status) -> Vec<u8> {
    // Status is plain data with string keys: serialising it cannot fail.
    serde_json::to_vec(status).unwrap()
}

/// rumqttc options from the config: persistent session, last will, credentials, TLS.
fn options(cfg: &Config) -> anyhow::Result<MqttOptions> {
    let m = &cfg.mqtt;
    // rumqttc joins host and port with ':', so IPv6 literals need their brackets.
    let host = if m.broker.host.contains(':') {
        format!("[{}]", m.broker.host)
    } else {
        m.broker.host.clone()
    };
    let mut opts = MqttOptions::new(m.client_id.clone(), host, m.broker.port);
    opts.set_keep_alive(m.keepalive)
        .set_clean_session(false)
        .set_inflight(RUMQTT_INFLIGHT)
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
        .set_last_will(LastWill::new(
            m.topics.status(&cfg.site),
            status_json(&Status::offline(OfflineReason::Lost)),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(user) = &m.username {
        let password = m.password.as_ref().map_or("", |p| p.expose());
        opts.set_credentials(user.clone(), password.to_owned());
    }
    if let Some(files) = &m.tls {
        let tls = tls_config(files)?;
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
    }
    Ok(opts)
}

/// A rustls client config on the ring provider, trusting `ca_file` or the system roots.
fn tls_config(files: &TlsFiles) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca {
        Some((file, certs)) => {
            for c in certs {
                roots
                    .add(c.clone())
                    .with_context(|| format!("CA certificate in {}", file.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                warn!("reading the system's CA certificates: {e}");
            }
            roots.add_parsable_certificates(found.certs);
            anyhow::ensure!(
                !roots.is_empty(),
                "no CA certificates found on this system: set mqtt.ca_file"
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    Ok(match &files.client {
        Some(c) => builder
            .with_client_auth_cert(c.certs.clone(), c.key.clone_key())
            .with_context(|| format!("client certificate {}", c.cert_file.display()))?,
        None => builder.with_no_client_auth(),
    })
}

impl Delivery {
    /// Starts the connection task for `cfg`; `boot` goes into the online status.
    pub fn start(cfg: &Config, boot: u32) -> anyhow::Result<Self> {
        let opts = options(cfg)?;
        let (client, eventloop) = AsyncClient::new(opts, REQUEST_CHANNEL);
        let m = &cfg.mqtt;
        let report_topic = match cfg.format {
            crate::config::Format::Postcard => m.topics.report(&cfg.site),
            crate::config::Format::Json => m.topics.report_json(&cfg.site),
        };
        let online = Status::online(
            boot,
            env!("CARGO_PKG_VERSION"),
            cfg.isp.clone(),
            cfg.customer.clone(),
        );
        let link = Arc::new(Mutex::new(Link {
            outbox: Outbox::new(cfg.outbox_capacity),
            client,
            report_topic,
            status_topic: m.topics.status(&cfg.site),
            online: status_json(&online),
            connected: false,
            shutting_down: false,
        }));
        let backoff = Backoff::try_new(
            crate::backoff::DEFAULT_MIN.min(m.reconnect_max),
            m.reconnect_max,
            crate::backoff::DEFAULT_JITTER,
        )
        .context("reconnect backoff")?;
        let task = tokio::spawn(drive(
            eventloop,
            link.clone(),
            backoff,
            m.broker.to_string(),
            m.client_id.clone(),
        ));
        Ok(Self { link, task })
    }

    /// Queues one encoded report (key: its `seq`) and sends it when it can. Never waits.
    pub fn enqueue(&self, seq: u64, payload: Vec<u8>) {
        let mut link = lock(&self.link);
        if let Some(old) = link.outbox.push(seq, payload) {
            let n = link.outbox.dropped();
            if n == 1 || n.is_multiple_of(LOG_EVERY_NTH_DROP) {
                warn!(
                    "outbox full ({} reports): dropped the oldest (seq {old}); {n} dropped since start",
                    link.outbox.capacity()
                );
            }
        }
        link.pump();
    }

    /// Reports waiting for acknowledgement.
    pub fn backlog(&self) -> usize {
        lock(&self.link).outbox.len()
    }

    /// Clean stop: publish offline/`shutdown`, wait up to `flush` for the outbox and
    /// that status to be acknowledged (only while connected), then disconnect.
    pub async fn shutdown(self, flush: Duration) {
        let connected = {
            let mut link = lock(&self.link);
            link.shutting_down = true;
            let bye = status_json(&Status::offline(OfflineReason::Shutdown));
            link.connected && link.publish_status(bye)
        };
        if connected {
            let flushed = wait_flushed(&self.link, flush).await;
            let mut link = lock(&self.link);
            if !flushed {
                warn!(
                    "stopping with {} reports unacknowledged after waiting {flush:?}",
                    link.outbox.len()
                );
            }
            if link.connected && link.client.try_disconnect().is_ok() {
                link.connected = false;
            }
        }
        let backlog = lock(&self.link).outbox.len();
        let mut task = self.task;
        // Offline, the task only sleeps on its backoff or waits on a connect: no need
        // to wait for it.
        if !connected
            || tokio::time::timeout(DISCONNECT_WAIT, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
        if backlog > 0 {
            info!("stopped; {backlog} reports were not delivered");
        } else {
            info!("stopped; every report delivered");
        }
    }
}

/// Waits until the outbox is empty and no status is unacknowledged, the connection
/// drops, or `limit` passes. True when everything was acknowledged.
async fn wait_flushed(link: &Mutex<Link>, limit: Duration) -> bool {
    let end = tokio::time::Instant::now() + limit;
    loop {
        {
            let l = lock(link);
            if l.outbox.is_empty() && l.outbox.statuses_unacked() == 0 {
                return true;
            }
            if !l.connected {
                return false;
            }
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the drive loop does after one event.
enum Step {
    Poll,
    Sleep(Duration),
    Stop,
}

/// The drive loop's memory between events, for readable, non-repeating logs.
#[derive(Debug)]
struct Drive {
    broker: String,
    client_id: String,
    backoff: Backoff,
    failures: u32,
    last_error: String,
    ever_connected: bool,
}

/// Polls rumqttc until stopped (never cancelled mid-poll), feeding the outbox what
/// happened; sleeps on the backoff after every error.
async fn drive(
    mut eventloop: EventLoop,
    link: Arc<Mutex<Link>>,
    backoff: Backoff,
    broker: String,
    client_id: String,
) {
    let mut d = Drive {
        broker,
        client_id,
        backoff,
        failures: 0,
        last_error: String::new(),
        ever_connected: false,
    };
    loop {
        let event = eventloop.poll().await;
        let step = d.on_event(event, &mut eventloop, &mut lock(&link));
        match step {
            Step::Poll => {}
            Step::Sleep(delay) => tokio::time::sleep(delay).await,
            Step::Stop => return,
        }
    }
}

impl Drive {
    fn on_event(
        &mut self,
        event: Result<Event, ConnectionError>,
        eventloop: &mut EventLoop,
        l: &mut Link,
    ) -> Step {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                self.backoff.reset();
                l.connected = true;
                let what = if self.ever_connected {
                    "reconnected to"
                } else {
                    "connected to"
                };
                info!(
                    "{what} {} as {} (session present: {}); {} reports to send",
                    self.broker,
                    self.client_id,
                    ack.session_present,
                    l.outbox.len()
                );
                self.ever_connected = true;
                self.failures = 0;
                self.last_error.clear();
                let online = l.online.clone();
                l.publish_status(online);
                l.pump();
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if l.outbox.on_puback(ack.pkid).is_none() {
                    debug!("PUBACK for unknown packet id {}", ack.pkid);
                }
                l.pump();
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => l.outbox.on_outgoing_publish(pkid),
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                debug!("packet id {pkid} still in use; rumqttc holds the next publish");
                l.outbox.on_await_ack(pkid);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                l.connected = false;
                debug!("disconnected cleanly");
                return Step::Stop;
            }
            Ok(_) => {}
            Err(e) => {
                let was_connected = l.connected;
                l.connected = false;
                l.outbox.on_connection_lost();
                // Everything unacknowledged is resubmitted from the outbox on the next
                // connection; rumqttc's own copies and stale events would only duplicate
                // it or shift the packet-id bookkeeping.
                eventloop.pending.clear();
                eventloop.state.events.clear();
                // rumqttc's clean() keeps a publish held back for a packet-id collision,
                // and takes no new requests while it does: on a new connection the ack
                // it waits for never comes.
                eventloop.state.collision = None;
                if l.shutting_down {
                    return Step::Stop;
                }
                let delay = self.backoff.next_delay(fastrand::f64());
                self.log_failure(&e, was_connected, delay, l);
                return Step::Sleep(delay);
            }
        }
        Step::Poll
    }

    /// The first failure and every change are logged; a long outage every Nth attempt.
    fn log_failure(&mut self, e: &ConnectionError, was_connected: bool, delay: Duration, l: &Link) {
        self.failures += 1;
        let (broker, backlog) = (&self.broker, l.outbox.len());
        let reason = describe(e);
        let retry = delay.as_secs_f64();
        if was_connected {
            warn!(
                "disconnected from {broker}: {reason}; {backlog} reports waiting, retrying in {retry:.1} s"
            );
        } else if self.failures == 1 || reason != self.last_error {
            let msg = format!(
                "cannot connect to {broker}: {reason}; {backlog} reports waiting, retrying in {retry:.1} s"
            );
            if matches!(e, ConnectionError::ConnectionRefused(_)) {
                error!("{msg}");
            } else {
                warn!("{msg}");
            }
        } else if self.failures.is_multiple_of(LOG_EVERY_NTH_FAILURE) {
            info!(
                "still offline after {} attempts: {reason}; {backlog} reports waiting, {} dropped",
                self.failures,
                l.outbox.dropped()
            );
        } else {
            debug!("connect attempt {} failed: {reason}", self.failures);
        }
        self.last_error = reason;
    }
}

/// One readable line for a connection error, with a hint where one helps.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!(
                "broker refused the connection ({code:?}): check mqtt.username, password_file and client_id"
            )
        }
        ConnectionError::Io(io) => format!("{io}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{ConnAck, ConnectReturnCode, PubAck};

    /// The drive loop's glue, fed the events rumqttc would yield (no broker, no runtime:
    /// the client only fills rumqttc's channel).
    fn setup() -> (EventLoop, Link, Drive) {
        let opts = MqttOptions::new("test", "127.0.0.1", 1);
        let (client, eventloop) = AsyncClient::new(opts, 256);
        let link = Link {
            outbox: Outbox::new(100),
            client,
            report_topic: "r".into(),
            status_topic: "s".into(),
            online: b"online".to_vec(),
            connected: false,
            shutting_down: false,
        };
        let drive = Drive {
            broker: "mqtt://127.0.0.1:1".into(),
            client_id: "test".into(),
            backoff: Backoff::try_new(Duration::from_secs(1), Duration::from_secs(4), 0.5).unwrap(),
            failures: 0,
            last_error: String::new(),
            ever_connected: false,
        };
        (eventloop, link, drive)
    }

    fn connack() -> Event {
        Event::Incoming(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            false,
        )))
    }

    fn step(
        d: &mut Drive,
        el: &mut EventLoop,
        l: &mut Link,
        ev: Result<Event, ConnectionError>,
    ) -> Step {
        d.on_event(ev, el, l)
    }

    #[test]
    fn reports_wait_offline_and_leave_on_their_puback() {
        let (mut el, mut l, mut d) = setup();
        l.outbox.push(0, vec![0]);
        l.outbox.push(1, vec![1]);
        l.pump();
        assert_eq!(
            l.outbox.statuses_unacked(),
            0,
            "nothing is sent while offline"
        );

        assert!(matches!(
            step(&mut d, &mut el, &mut l, Ok(connack())),
            Step::Poll
        ));
        assert!(l.connected);
        assert_eq!(l.outbox.statuses_unacked(), 1, "online status first");
        // rumqttc writes the status, then both reports, with packet ids 1, 2, 3.
        for pkid in 1..=3 {
            step(
                &mut d,
                &mut el,
                &mut l,
                Ok(Event::Outgoing(Outgoing::Publish(pkid))),
            );
        }
        let ack = |pkid| Event::Incoming(Packet::PubAck(PubAck::new(pkid)));
        step(&mut d, &mut el, &mut l, Ok(ack(3)));
        assert_eq!(l.outbox.len(), 1, "report 1 acknowledged");
        step(&mut d, &mut el, &mut l, Ok(ack(1)));
        assert_eq!(l.outbox.statuses_unacked(), 0);
        step(&mut d, &mut el, &mut l, Ok(ack(2)));
        assert!(l.outbox.is_empty());
    }

    #[test]
    fn a_lost_connection_discards_rumqttc_replay_and_backs_off() {
        let (mut el, mut l, mut d) = setup();
        step(&mut d, &mut el, &mut l, Ok(connack()));
        l.outbox.push(0, vec![0]);
        l.pump();
        step(
            &mut d,
            &mut el,
            &mut l,
            Ok(Event::Outgoing(Outgoing::Publish(1))),
        );
        step(
            &mut d,
            &mut el,
            &mut l,
            Ok(Event::Outgoing(Outgoing::Publish(2))),
        );
        // What rumqttc leaves behind when a connection breaks.
        el.pending
            .push_back(rumqttc::Request::PingReq(rumqttc::PingReq));
        el.state
            .events
            .push_back(Event::Outgoing(Outgoing::Publish(3)));

        let err = ConnectionError::Io(std::io::Error::other("reset"));
        let Step::Sleep(delay) = step(&mut d, &mut el, &mut l, Err(err)) else {
            panic!("an error must back off");
        };
        assert!(delay >= Duration::from_secs(1) && delay <= Duration::from_secs(4));
        assert!(!l.connected);
        assert!(el.pending.is_empty() && el.state.events.is_empty());
        assert_eq!(l.outbox.len(), 1, "the unacknowledged report stays");
        assert_eq!(l.outbox.statuses_unacked(), 0);

        // On the next connection the report goes again, after the online status.
        step(&mut d, &mut el, &mut l, Ok(connack()));
        step(
            &mut d,
            &mut el,
            &mut l,
            Ok(Event::Outgoing(Outgoing::Publish(4))),
        );
        step(
            &mut d,
            &mut el,
            &mut l,
            Ok(Event::Outgoing(Outgoing::Publish(5))),
        );
        step(
            &mut d,
            &mut el,
            &mut l,
            Ok(Event::Incoming(Packet::PubAck(PubAck::new(5)))),
        );
        assert!(l.outbox.is_empty());
    }

    #[test]
    fn errors_while_shutting_down_stop_the_loop() {
        let (mut el, mut l, mut d) = setup();
        l.shutting_down = true;
        let err = ConnectionError::Io(std::io::Error::other("closed"));
        assert!(matches!(
            step(&mut d, &mut el, &mut l, Err(err)),
            Step::Stop
        ));
        assert!(matches!(
            step(
                &mut d,
                &mut el,
                &mut l,
                Ok(Event::Outgoing(Outgoing::Disconnect))
            ),
            Step::Stop
        ));
    }
}
