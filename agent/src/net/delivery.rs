//! Delivery of reports to the broker over rumqttc, losing nothing.
//!
//! One task owns everything here: rumqttc's `EventLoop` and client, the [`Spool`]
//! (reports on disk) and the [`Outbox`] (what is in flight). The window loop hands it
//! encoded reports through a channel and never waits.
//!
//! - Each report is written to the spool and synced before it is sent; it is retired
//!   only on its PUBACK. At most [`MAX_IN_FLIGHT`] reports are unacknowledged at once.
//! - A stable client id and a persistent session (`clean_session = false`); the
//!   retained `Status` online on every connect, last will offline/`lost`, and at a
//!   clean stop offline/`shutdown`, the spool flushed for a bounded time, DISCONNECT.
//! - When a connection ends, rumqttc's own copies of unacknowledged publishes are
//!   discarded and the outbox sends everything unacknowledged again, so what is sent
//!   never depends on what rumqttc kept (duplicates are harmless: the collector
//!   counts each (site, boot, seq) once).
//! - The site's central config topic is subscribed (QoS 1) on every connect; what
//!   arrives there goes to the run loop, and the run loop's answer is published
//!   retained on `config/status` (again after a reconnect).
//! - Reconnects sleep on a [`Backoff`] with jitter (rumqttc itself retries at once).
//! - A broker that stops answering is left: anything sent that waits longer than the
//!   keepalive for an answer ends the connection (rumqttc's own pings catch an idle
//!   one).
//!
//! This module does not measure or encode reports; it stores and moves them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use faultline_shared::backoff::{self, Backoff};
use faultline_shared::{OfflineReason, Status};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions,
    NetworkOptions, Outgoing, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, error, info, warn};

use super::outbox::{Outbox, Tag};
use super::spool::{Record, Spool};
use crate::config::{Broker, Config, Format, TlsFiles};

/// Reports handed to rumqttc and not yet acknowledged, at most.
pub const MAX_IN_FLIGHT: usize = 16;
/// rumqttc's own in-flight window (packet ids cycle through it): room for the
/// reports and a few statuses, so its flow control never holds ours back.
const RUMQTTC_INFLIGHT: u16 = 64;
/// rumqttc's request queue: more than can ever be handed over at once.
const REQUEST_QUEUE: usize = 64;
/// Resolving, TCP, TLS and CONNACK together must not take longer (seconds).
const CONNECT_TIMEOUT_S: u64 = 10;
/// Largest packet either way (a JSON report with many targets is a few kB).
const MAX_PACKET: usize = 256 * 1024;
/// While offline, one log line every this many failed attempts (and on every change).
const LOG_EVERY_NTH_FAILURE: u32 = 10;
/// Spool drops are logged on the first and then every this many.
const LOG_EVERY_NTH_DROP: u64 = 100;
/// How long a clean stop waits for DISCONNECT to go out.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// Handle to the delivery task.
#[derive(Debug)]
pub struct Delivery {
    tx: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
enum Command {
    Report(Record),
    /// The answer to a central config, published retained (kept for reconnects).
    ConfigStatus(Vec<u8>),
    /// Flush for at most this long while connected, then disconnect and stop.
    Stop(Duration),
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

fn status_json(status: &Status) -> Vec<u8> {
    // Status is plain data with string keys: serialising it cannot fail.
    serde_json::to_vec(status).unwrap()
}

/// rumqttc's options for `cfg`: session, will, credentials, transport.
fn mqtt_options(cfg: &Config, status_topic: &str) -> anyhow::Result<MqttOptions> {
    let m = &cfg.mqtt;
    // rumqttc joins host and port with a colon: an IPv6 literal needs its brackets.
    let host = if m.broker.host.contains(':') {
        format!("[{}]", m.broker.host)
    } else {
        m.broker.host.clone()
    };
    let mut o = MqttOptions::new(m.client_id.clone(), host, m.broker.port);
    o.set_clean_session(false)
        .set_keep_alive(m.keepalive)
        .set_inflight(RUMQTTC_INFLIGHT)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_last_will(LastWill::new(
            status_topic,
            status_json(&Status::offline(OfflineReason::Lost)),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(user) = &m.username {
        let password = m.password.as_ref().map_or("", |p| p.expose());
        o.set_credentials(user.clone(), password);
    }
    if let Some(files) = &m.tls {
        let tls = tls_config(files)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    Ok(o)
}

impl Delivery {
    /// Starts the delivery task for `cfg` with what `spool` holds; `boot` goes into the
    /// online status. Payloads arriving on the site's config topic go to `configs`.
    pub fn start(
        cfg: &Config,
        boot: u32,
        spool: Spool,
        configs: mpsc::UnboundedSender<Vec<u8>>,
    ) -> anyhow::Result<Self> {
        let topics = &cfg.mqtt.topics;
        let status_topic = topics.status(&cfg.site);
        let options = mqtt_options(cfg, &status_topic)?;
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        let mut net = NetworkOptions::new();
        net.set_connection_timeout(CONNECT_TIMEOUT_S);
        eventloop.set_network_options(net);
        let reconnect_max = cfg.mqtt.reconnect_max;
        let backoff = Backoff::try_new(
            backoff::DEFAULT_MIN.min(reconnect_max),
            reconnect_max,
            backoff::DEFAULT_JITTER,
        )
        .context("reconnect backoff")?;
        let mut outbox = Outbox::new();
        for id in spool.live_ids() {
            outbox.push(id);
        }
        let online = Status::online(
            boot,
            env!("CARGO_PKG_VERSION"),
            cfg.isp.clone(),
            cfg.customer.clone(),
        );
        let driver = Driver {
            client,
            eventloop,
            spool: Some(spool),
            outbox,
            backoff,
            report_topic: topics.report(&cfg.site),
            report_json_topic: topics.report_json(&cfg.site),
            status_topic,
            config_topic: topics.config(&cfg.site),
            config_status_topic: topics.config_status(&cfg.site),
            config_status: None,
            configs,
            online: status_json(&online),
            broker: cfg.mqtt.broker.clone(),
            client_id: cfg.mqtt.client_id.clone(),
            keepalive: cfg.mqtt.keepalive,
            connected: false,
            ever_connected: false,
            retry_at: None,
            waiting_since: None,
            stop_by: None,
            failures: 0,
            last_error: String::new(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(driver.run(rx));
        Ok(Self { tx, task })
    }

    /// Hands one encoded report over for storing and sending. Never waits.
    pub fn enqueue(&self, record: Record) {
        if self.tx.send(Command::Report(record)).is_err() {
            error!("the delivery task is gone: a report was not stored");
        }
    }

    /// Publishes the answer to a central config (retained), now or once connected.
    pub fn config_status(&self, payload: Vec<u8>) {
        if self.tx.send(Command::ConfigStatus(payload)).is_err() {
            error!("the delivery task is gone: a config status was not published");
        }
    }

    /// Clean stop: store what was queued, publish offline/`shutdown`, wait up to
    /// `flush` for everything to be acknowledged (only while connected), disconnect.
    /// Whatever is left stays in the spool for the next start.
    pub async fn shutdown(self, flush: Duration) {
        let _ = self.tx.send(Command::Stop(flush));
        let mut task = self.task;
        if timeout(flush + 2 * DISCONNECT_WAIT, &mut task)
            .await
            .is_err()
        {
            warn!("delivery did not stop in time");
            task.abort();
        }
    }
}

/// The delivery task's state. Only [`Driver::run`] touches it.
struct Driver {
    client: AsyncClient,
    eventloop: EventLoop,
    /// Always `Some` except while a write runs on the blocking pool.
    spool: Option<Spool>,
    outbox: Outbox,
    backoff: Backoff,
    report_topic: String,
    report_json_topic: String,
    status_topic: String,
    config_topic: String,
    config_status_topic: String,
    /// The latest answer to a central config, published on every connect.
    config_status: Option<Vec<u8>>,
    configs: mpsc::UnboundedSender<Vec<u8>>,
    online: Vec<u8>,
    broker: Broker,
    client_id: String,
    keepalive: Duration,
    connected: bool,
    ever_connected: bool,
    /// Set after a failure: no connection attempt before then.
    retry_at: Option<Instant>,
    /// Since when something sent has waited for an answer.
    waiting_since: Option<Instant>,
    /// Set by a stop: flush until then.
    stop_by: Option<Instant>,
    failures: u32,
    last_error: String,
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    fn spool(&mut self) -> &mut Spool {
        // Only `store` takes it out, and it puts it back before returning.
        self.spool.as_mut().unwrap()
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            if self.connected {
                self.hand_over();
            }
            if let Some(by) = self.stop_by {
                let flushed = self.outbox.is_empty() && !self.outbox.awaiting_ack();
                if !self.connected || flushed {
                    break;
                }
                if Instant::now() >= by {
                    warn!(
                        "stopping with {} reports unacknowledged after the flush time",
                        self.outbox.len()
                    );
                    break;
                }
            }
            let silence = self.waiting_since.map(|since| since + self.keepalive);
            tokio::select! {
                cmd = rx.recv(), if self.stop_by.is_none() => match cmd {
                    Some(Command::Report(r)) => self.store(r).await,
                    Some(Command::ConfigStatus(payload)) => {
                        self.config_status = Some(payload);
                        if self.connected {
                            self.publish_config_status();
                        }
                    }
                    Some(Command::Stop(flush)) => self.begin_stop(flush),
                    None => self.begin_stop(Duration::ZERO),
                },
                event = self.eventloop.poll(), if self.retry_at.is_none() => self.on_event(event),
                () = sleep_until_opt(self.retry_at) => self.retry_at = None,
                () = sleep_until_opt(silence) => self.on_silence(),
                () = sleep_until_opt(self.stop_by) => {}
            }
        }
        if self.connected {
            self.disconnect().await;
        }
        let spool = self.spool.take().unwrap(); // put back by every store
        let failures = spool.write_failures();
        if failures > 0 {
            warn!("{failures} reports could not be written to disk this run (kept in memory only)");
        }
        if spool.is_empty() {
            info!("stopped; every report delivered");
        } else {
            info!(
                "stopped; {} reports were not delivered: they stay in {} for the next start",
                spool.len(),
                spool.dir().display()
            );
        }
        spool.close();
    }

    /// Writes `r` to the spool (on the blocking pool: a flash sync must not stall
    /// the probes) and queues it for sending.
    async fn store(&mut self, r: Record) {
        let seq = r.seq;
        let mut spool = self.spool.take().unwrap(); // always present between calls
        let (spool, (id, dropped)) = tokio::task::spawn_blocking(move || {
            let out = spool.append(r);
            (spool, out)
        })
        .await
        // The closure does not panic (and the agent aborts on panic anyway).
        .expect("spool append");
        self.spool = Some(spool);
        self.outbox.push(id);
        debug!(seq, id, "report stored");
        for old in dropped {
            self.outbox.forget(old);
        }
        let (n, capacity) = (self.spool().dropped(), self.spool().capacity());
        if n > 0
            && (n == 1 || n.is_multiple_of(LOG_EVERY_NTH_DROP))
            && self.outbox.len() >= capacity
        {
            warn!("outbox full ({capacity} reports): dropped the oldest; {n} dropped since start");
        }
    }

    /// Hands rumqttc what the outbox allows, oldest first.
    fn hand_over(&mut self) {
        while let Some(id) = self.outbox.next_to_send(MAX_IN_FLIGHT) {
            let Some(r) = self.spool().read(id) else {
                self.outbox.forget(id);
                continue;
            };
            let topic = match r.format {
                Format::Postcard => &self.report_topic,
                Format::Json => &self.report_json_topic,
            };
            match self
                .client
                .try_publish(topic.as_str(), QoS::AtLeastOnce, false, r.payload)
            {
                Ok(()) => {
                    self.outbox.handed_over(id);
                    self.waiting_since.get_or_insert_with(Instant::now);
                }
                Err(e) => {
                    // Only a full queue: the next event makes room.
                    debug!("rumqttc queue: {e}");
                    break;
                }
            }
        }
    }

    fn publish_status(&mut self, payload: Vec<u8>) {
        let topic = self.status_topic.clone();
        self.publish_retained(topic, payload);
    }

    fn publish_config_status(&mut self) {
        if let Some(payload) = self.config_status.clone() {
            let topic = self.config_status_topic.clone();
            self.publish_retained(topic, payload);
        }
    }

    /// A retained QoS 1 publish outside the report stream (its PUBACK pairs as a status).
    fn publish_retained(&mut self, topic: String, payload: Vec<u8>) {
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
        {
            Ok(()) => {
                self.outbox.status_handed_over();
                self.waiting_since.get_or_insert_with(Instant::now);
            }
            Err(e) => warn!("status not published: {e}"),
        }
    }

    fn begin_stop(&mut self, flush: Duration) {
        info!(
            "stopping: {} reports not yet acknowledged",
            self.outbox.len()
        );
        self.stop_by = Some(Instant::now() + flush);
        if self.connected {
            self.publish_status(status_json(&Status::offline(OfflineReason::Shutdown)));
        }
    }

    fn on_event(&mut self, event: Result<Event, ConnectionError>) {
        let event = match event {
            Ok(e) => e,
            Err(ConnectionError::ConnectionRefused(code)) => {
                let reason = format!("broker refused the connection ({code:?})");
                return self.on_failure(&reason, true);
            }
            Err(e) => return self.on_failure(&e.to_string(), false),
        };
        match event {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                self.connected = true;
                self.backoff.reset();
                self.failures = 0;
                self.last_error.clear();
                let what = if self.ever_connected {
                    "reconnected to"
                } else {
                    "connected to"
                };
                self.ever_connected = true;
                info!(
                    "{what} {} as {} (session present: {}); {} reports to send",
                    self.broker,
                    self.client_id,
                    ack.session_present,
                    self.outbox.len()
                );
                self.publish_status(self.online.clone());
                if let Err(e) = self
                    .client
                    .try_subscribe(self.config_topic.as_str(), QoS::AtLeastOnce)
                {
                    warn!("central config not subscribed: {e}");
                }
                self.publish_config_status();
            }
            Event::Incoming(Incoming::Publish(p)) if p.topic == self.config_topic => {
                debug!(bytes = p.payload.len(), "central config received");
                let _ = self.configs.send(p.payload.to_vec());
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                match self.outbox.on_puback(ack.pkid) {
                    Some(Tag::Report(id)) => self.spool().retire(id),
                    Some(_) => {}
                    None => debug!("PUBACK for unknown packet id {}", ack.pkid),
                }
                self.on_answer();
            }
            Event::Incoming(Incoming::PingResp) => self.on_answer(),
            Event::Outgoing(Outgoing::Publish(pkid) | Outgoing::AwaitAck(pkid)) => {
                if self.outbox.on_numbered(pkid).is_none() {
                    debug!("rumqttc numbered a publish the outbox did not hand over ({pkid})");
                }
            }
            other => debug!("mqtt: {other:?}"),
        }
    }

    /// The broker answered: the silence clock restarts if anything still waits.
    fn on_answer(&mut self) {
        self.waiting_since = self.outbox.awaiting_ack().then(Instant::now);
    }

    /// Something sent has waited a whole keepalive for an answer.
    fn on_silence(&mut self) {
        if self
            .waiting_since
            .is_some_and(|since| Instant::now() >= since + self.keepalive)
        {
            self.on_failure("timed out waiting for the broker to answer", false);
        }
    }

    /// A connection attempt failed or the connection ended: forget rumqttc's copies
    /// of whatever was unacknowledged (the outbox sends it all again) and retry after
    /// a backoff.
    fn on_failure(&mut self, reason: &str, refused: bool) {
        let was_connected = self.connected;
        self.connected = false;
        self.waiting_since = None;
        // rumqttc's public state: its copies of unacknowledged publishes (moved to
        // `pending` by `clean`), buffered events that would pair with the wrong
        // publish, and a held-back publish that would block the next connection.
        self.eventloop.clean();
        self.eventloop.pending.clear();
        self.eventloop.state.events.clear();
        self.eventloop.state.collision = None;
        self.outbox.on_connection_lost();
        if self.stop_by.is_some() {
            return;
        }
        let delay = self.backoff.next_delay(fastrand::f64());
        self.retry_at = Some(Instant::now() + delay);
        self.log_failure(reason, refused, was_connected, delay);
    }

    /// Sends DISCONNECT (the broker then drops the last will) and waits for it to go.
    async fn disconnect(&mut self) {
        if self.client.try_disconnect().is_err() {
            return;
        }
        let sent = timeout(DISCONNECT_WAIT, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await;
        if sent == Ok(true) {
            debug!("disconnected cleanly");
        }
    }

    /// The first failure and every change are logged; a long outage every Nth attempt.
    fn log_failure(&mut self, reason: &str, refused: bool, was_connected: bool, delay: Duration) {
        self.failures += 1;
        let backlog = self.outbox.len();
        let broker = &self.broker;
        let retry = delay.as_secs_f64();
        if was_connected {
            warn!(
                "disconnected from {broker}: {reason}; {backlog} reports waiting, retrying in {retry:.1} s"
            );
        } else if self.failures == 1 || reason != self.last_error {
            let hint = if refused {
                ": check mqtt.username, password_file and client_id"
            } else {
                ""
            };
            let msg = format!(
                "cannot connect to {broker}: {reason}{hint}; {backlog} reports waiting, retrying in {retry:.1} s"
            );
            if refused {
                error!("{msg}");
            } else {
                warn!("{msg}");
            }
        } else if self.failures.is_multiple_of(LOG_EVERY_NTH_FAILURE) {
            info!(
                "still offline after {} attempts: {reason}; {backlog} reports waiting",
                self.failures
            );
        } else {
            debug!("connect attempt {} failed: {reason}", self.failures);
        }
        self.last_error = reason.to_owned();
    }
}
