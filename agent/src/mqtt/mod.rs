//! Delivery of reports to the broker, losing nothing: the agent's own MQTT 3.1.1
//! connection (TCP or TLS), driven from the [`Outbox`].
//!
//! - A stable client id and a persistent session (`clean_session = false`).
//! - A report leaves the outbox only on its PUBACK. After every reconnect, everything
//!   unacknowledged is sent again with its packet id and the DUP flag.
//! - At most [`MAX_IN_FLIGHT`] reports are unacknowledged at a time; queueing a report
//!   never waits, so measurement never waits on the network.
//! - Reconnects sleep on a [`Backoff`] with jitter.
//! - Retained `Status` online on every connect; last will offline/`lost`; at shutdown
//!   offline/`shutdown`, the outbox flushed for a bounded time, then DISCONNECT.
//! - A broker that stops answering is noticed: a PINGREQ after `keepalive` without
//!   sending, and the connection is dropped when anything sent waits longer than
//!   `keepalive` for a reply.
//! - The broker's host name is resolved by the C library (`tokio::net::lookup_host`)
//!   and is the name its TLS certificate is checked against.
//!
//! Why not an MQTT library: rumqttc (the first version of this module) resolves
//! through the C library (static glibc's resolver alone is ~100 kB of the armv7
//! binary), replays its own copies of unacknowledged publishes with packet ids the
//! outbox cannot match, and holds publishes back on packet-id collisions; working
//! around that meant reading its internals. The agent publishes at QoS 1 and
//! subscribes to nothing, which is five packet types ([`codec`]).
//!
//! This module does not measure or encode reports; it moves encoded reports.

mod codec;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use faultline_shared::{OfflineReason, Status};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::{Config, TlsFiles};
use crate::outbox::Outbox;
use codec::{Connect, Incoming};

/// Reports sent and not yet acknowledged, at most.
pub const MAX_IN_FLIGHT: usize = 16;
/// Largest packet accepted from the broker (acks are 4 bytes).
const MAX_INCOMING_PACKET: usize = 16 * 1024;
/// Resolving, TCP, TLS and CONNACK together must not take longer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// While offline, one log line every this many failed attempts (and on every change).
const LOG_EVERY_NTH_FAILURE: u32 = 10;
/// Outbox drops are logged on the first and then every this many.
const LOG_EVERY_NTH_DROP: u64 = 100;
/// How long shutdown waits for the connection task beyond the flush time.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// Handle to the delivery task; cheap to share with the report assembler.
#[derive(Debug)]
pub struct Delivery {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// What the report side and the connection task share.
#[derive(Debug)]
struct Shared {
    link: Mutex<Link>,
    /// Wakes the connection task: a report was queued, or shutdown began.
    wake: Notify,
}

#[derive(Debug)]
struct Link {
    outbox: Outbox,
    connected: bool,
    /// Set by shutdown: send offline/`shutdown`, flush until then, disconnect.
    stop_by: Option<Instant>,
}

/// What the connection task knows from the config.
#[derive(Debug)]
struct Session {
    broker: crate::config::Broker,
    client_id: String,
    username: Option<String>,
    password: Option<String>,
    keepalive: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    report_topic: String,
    status_topic: String,
    online: Vec<u8>,
    will: Vec<u8>,
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
        let m = &cfg.mqtt;
        let tls = match &m.tls {
            Some(files) => Some(Arc::new(tls_config(files)?)),
            None => None,
        };
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
        let session = Session {
            broker: m.broker.clone(),
            client_id: m.client_id.clone(),
            username: m.username.clone(),
            password: m.password.as_ref().map(|p| p.expose().to_owned()),
            keepalive: m.keepalive,
            tls,
            report_topic,
            status_topic: m.topics.status(&cfg.site),
            online: status_json(&online),
            will: status_json(&Status::offline(OfflineReason::Lost)),
        };
        let backoff = Backoff::try_new(
            crate::backoff::DEFAULT_MIN.min(m.reconnect_max),
            m.reconnect_max,
            crate::backoff::DEFAULT_JITTER,
        )
        .context("reconnect backoff")?;
        let shared = Arc::new(Shared {
            link: Mutex::new(Link {
                outbox: Outbox::new(cfg.outbox_capacity),
                connected: false,
                stop_by: None,
            }),
            wake: Notify::new(),
        });
        let task = tokio::spawn(drive(session, shared.clone(), backoff));
        Ok(Self { shared, task })
    }

    /// Queues one encoded report (key: its `seq`) and sends it when it can. Never waits.
    pub fn enqueue(&self, seq: u64, payload: Vec<u8>) {
        let mut link = lock(&self.shared.link);
        if let Some(old) = link.outbox.push(seq, payload) {
            let n = link.outbox.dropped();
            if n == 1 || n.is_multiple_of(LOG_EVERY_NTH_DROP) {
                warn!(
                    "outbox full ({} reports): dropped the oldest (seq {old}); {n} dropped since start",
                    link.outbox.capacity()
                );
            }
        }
        if link.connected {
            self.shared.wake.notify_one();
        }
    }

    /// Reports waiting for acknowledgement.
    pub fn backlog(&self) -> usize {
        lock(&self.shared.link).outbox.len()
    }

    /// Clean stop: publish offline/`shutdown`, wait up to `flush` for the outbox and
    /// that status to be acknowledged (only while connected), then disconnect.
    pub async fn shutdown(self, flush: Duration) {
        let connected = {
            let mut link = lock(&self.shared.link);
            link.stop_by = Some(Instant::now() + flush);
            link.connected
        };
        self.shared.wake.notify_one();
        let mut task = self.task;
        let limit = if connected {
            flush + DISCONNECT_WAIT
        } else {
            DISCONNECT_WAIT
        };
        if timeout(limit, &mut task).await.is_err() {
            task.abort();
        }
        let backlog = lock(&self.shared.link).outbox.len();
        if backlog > 0 {
            info!("stopped; {backlog} reports were not delivered");
        } else {
            info!("stopped; every report delivered");
        }
    }
}

/// Why a connection attempt or a connection ended.
#[derive(Debug)]
enum Failure {
    /// The broker answered CONNECT with a refusal code.
    Refused(u8),
    Io(std::io::Error),
    Protocol(String),
    Timeout(&'static str),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(code) => write!(
                f,
                "broker refused the connection ({}): check mqtt.username, password_file and client_id",
                codec::refusal(*code)
            ),
            Self::Io(e) => write!(f, "{e}"),
            Self::Protocol(what) => f.write_str(what),
            Self::Timeout(what) => write!(f, "timed out {what}"),
        }
    }
}

/// The byte stream to the broker: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Bytes read from the broker not yet decoded, and the stream.
struct Conn {
    io: Box<dyn Io>,
    rx: Vec<u8>,
}

impl Conn {
    /// Writes `bytes`; a broker that takes none of them for `limit` (its TCP window
    /// stays shut) is as gone as one that stops answering.
    async fn write(&mut self, bytes: &[u8], limit: Duration) -> Result<(), Failure> {
        let write = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        match timeout(limit, write).await {
            Ok(done) => Ok(done?),
            Err(_) => Err(Failure::Timeout("writing to the broker")),
        }
    }

    /// The next packet from the broker (waits for it; cancel-safe).
    async fn read(&mut self) -> Result<Incoming, Failure> {
        loop {
            match codec::decode(&self.rx, MAX_INCOMING_PACKET) {
                Ok(Some((packet, used))) => {
                    self.rx.drain(..used);
                    return Ok(packet);
                }
                Ok(None) => {}
                Err(e) => return Err(Failure::Protocol(e.to_string())),
            }
            let mut buf = [0u8; 512];
            let n = self.io.read(&mut buf).await?;
            if n == 0 {
                return Err(Failure::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.rx.extend_from_slice(&buf[..n]);
        }
    }
}

/// Resolves, connects (trying each address), runs TLS when configured, sends CONNECT
/// and waits for CONNACK. Returns the connection and whether the session was kept.
async fn open(s: &Session) -> Result<(Conn, bool), Failure> {
    let host = s.broker.host.as_str();
    let addrs: Vec<_> = tokio::net::lookup_host((host, s.broker.port))
        .await?
        .collect();
    let mut last = None;
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(t) => {
                tcp = Some((t, addr));
                break;
            }
            Err(e) => last = Some(std::io::Error::new(e.kind(), format!("{addr}: {e}"))),
        }
    }
    let Some((tcp, addr)) = tcp else {
        let e = last.unwrap_or_else(|| std::io::Error::other(format!("{host}: no address")));
        return Err(Failure::Io(e));
    };
    let io: Box<dyn Io> = match &s.tls {
        Some(config) => {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| Failure::Protocol(format!("TLS name {host}: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            Box::new(connector.connect(name, tcp).await?)
        }
        None => Box::new(tcp),
    };
    let mut conn = Conn { io, rx: Vec::new() };
    let mut out = Vec::with_capacity(128);
    codec::connect(
        &mut out,
        &Connect {
            client_id: &s.client_id,
            keepalive_s: u16::try_from(s.keepalive.as_secs()).unwrap_or(u16::MAX),
            clean_session: false,
            will: Some((&s.status_topic, &s.will)),
            username: s.username.as_deref(),
            password: s.password.as_deref(),
        },
    );
    conn.write(&out, CONNECT_TIMEOUT).await?;
    match conn.read().await? {
        Incoming::ConnAck {
            session_present,
            code: 0,
        } => {
            debug!("connected to {addr}");
            Ok((conn, session_present))
        }
        Incoming::ConnAck { code, .. } => Err(Failure::Refused(code)),
        other => Err(Failure::Protocol(format!(
            "expected CONNACK, got packet type {other:?}"
        ))),
    }
}

/// One connected session: writes what the outbox allows, reads acks, keeps alive,
/// and at shutdown flushes and disconnects (then returns `Ok`).
async fn serve(s: &Session, shared: &Shared, conn: &mut Conn) -> Result<(), Failure> {
    let mut out = Vec::with_capacity(1024);
    {
        let mut l = lock(&shared.link);
        l.connected = true;
        let pkid = l.outbox.status_pkid();
        codec::publish(&mut out, &s.status_topic, pkid, false, true, &s.online);
    }
    let mut bye_sent = false;
    let mut last_tx = Instant::now();
    // Since when something sent has waited for a reply (ack or PINGRESP).
    let mut waiting_since: Option<Instant> = None;
    let mut ping_out = false;
    loop {
        // One look at the shared state per turn: shutdown, then what may be sent.
        let (stop_now, stop_by) = {
            let mut l = lock(&shared.link);
            let stop_by = l.stop_by;
            let mut stop_now = false;
            if let Some(by) = stop_by {
                if !bye_sent {
                    let bye = status_json(&Status::offline(OfflineReason::Shutdown));
                    let pkid = l.outbox.status_pkid();
                    codec::publish(&mut out, &s.status_topic, pkid, false, true, &bye);
                    bye_sent = true;
                }
                let flushed = l.outbox.is_empty() && l.outbox.statuses_unacked() == 0;
                let late = Instant::now() >= by;
                if !flushed && late {
                    warn!(
                        "stopping with {} reports unacknowledged after the flush time",
                        l.outbox.len()
                    );
                }
                stop_now = flushed || late;
            }
            if !stop_now {
                while let Some(p) = l.outbox.next_publish(MAX_IN_FLIGHT) {
                    codec::publish(&mut out, &s.report_topic, p.pkid, p.dup, false, p.payload);
                }
            }
            (stop_now, stop_by)
        };
        if stop_now {
            codec::disconnect(&mut out);
            conn.write(&out, s.keepalive).await?;
            let _ = conn.io.shutdown().await;
            debug!("disconnected cleanly");
            return Ok(());
        }
        let now = Instant::now();
        if out.is_empty() && !ping_out && now >= last_tx + s.keepalive {
            codec::pingreq(&mut out);
            ping_out = true;
        }
        if !out.is_empty() {
            conn.write(&out, s.keepalive).await?;
            out.clear();
            last_tx = now;
            waiting_since.get_or_insert(now);
        }
        // Something waits for a reply: the broker has `keepalive` to answer; else the
        // next PINGREQ is due `keepalive` after the last send.
        let deadline = waiting_since.unwrap_or(last_tx) + s.keepalive;
        let deadline = stop_by.map_or(deadline, |by| deadline.min(by));
        tokio::select! {
            packet = conn.read() => {
                let mut l = lock(&shared.link);
                match packet? {
                    Incoming::PubAck(pkid) => {
                        if l.outbox.on_puback(pkid).is_none() {
                            debug!("PUBACK for unknown packet id {pkid}");
                        }
                    }
                    Incoming::PingResp => ping_out = false,
                    other => debug!("ignored {other:?} from the broker"),
                }
                let idle = l.outbox.in_flight() == 0 && l.outbox.statuses_unacked() == 0 && !ping_out;
                waiting_since = if idle { None } else { Some(Instant::now()) };
            }
            () = shared.wake.notified() => {}
            () = sleep_until(deadline) => {
                if waiting_since.is_some_and(|since| Instant::now() >= since + s.keepalive) {
                    return Err(Failure::Timeout("waiting for the broker to answer"));
                }
            }
        }
    }
}

/// The drive loop's memory between attempts, for readable, non-repeating logs.
#[derive(Debug)]
struct Attempts {
    backoff: Backoff,
    failures: u32,
    last_error: String,
    ever_connected: bool,
}

/// Connects, serves, and reconnects after a backoff until shutdown.
async fn drive(s: Session, shared: Arc<Shared>, backoff: Backoff) {
    let mut a = Attempts {
        backoff,
        failures: 0,
        last_error: String::new(),
        ever_connected: false,
    };
    let stopping = || lock(&shared.link).stop_by.is_some();
    loop {
        let opened = tokio::select! {
            r = timeout(CONNECT_TIMEOUT, open(&s)) => {
                r.unwrap_or(Err(Failure::Timeout("connecting")))
            }
            () = wait_for_stop(&shared) => return,
        };
        let (was_connected, failure) = match opened {
            Ok((mut conn, session_present)) => {
                a.backoff.reset();
                a.failures = 0;
                a.last_error.clear();
                let what = if a.ever_connected {
                    "reconnected to"
                } else {
                    "connected to"
                };
                a.ever_connected = true;
                info!(
                    "{what} {} as {} (session present: {session_present}); {} reports to send",
                    s.broker,
                    s.client_id,
                    lock(&shared.link).outbox.len()
                );
                let served = serve(&s, &shared, &mut conn).await;
                let mut l = lock(&shared.link);
                l.connected = false;
                l.outbox.on_connection_lost();
                match served {
                    Ok(()) => return,
                    Err(e) => (true, e),
                }
            }
            Err(e) => (false, e),
        };
        if stopping() {
            return;
        }
        let delay = a.backoff.next_delay(fastrand::f64());
        a.log_failure(&failure, was_connected, delay, &s, &shared);
        let until = Instant::now() + delay;
        tokio::select! {
            () = sleep_until(until) => {}
            () = wait_for_stop(&shared) => return,
        }
    }
}

/// Returns once shutdown has begun (other wake-ups are ignored).
async fn wait_for_stop(shared: &Shared) {
    loop {
        if lock(&shared.link).stop_by.is_some() {
            return;
        }
        shared.wake.notified().await;
    }
}

impl Attempts {
    /// The first failure and every change are logged; a long outage every Nth attempt.
    fn log_failure(
        &mut self,
        e: &Failure,
        was_connected: bool,
        delay: Duration,
        s: &Session,
        shared: &Shared,
    ) {
        self.failures += 1;
        let (backlog, dropped) = {
            let l = lock(&shared.link);
            (l.outbox.len(), l.outbox.dropped())
        };
        let broker = &s.broker;
        let reason = e.to_string();
        let retry = delay.as_secs_f64();
        if was_connected {
            warn!(
                "disconnected from {broker}: {reason}; {backlog} reports waiting, retrying in {retry:.1} s"
            );
        } else if self.failures == 1 || reason != self.last_error {
            let msg = format!(
                "cannot connect to {broker}: {reason}; {backlog} reports waiting, retrying in {retry:.1} s"
            );
            if matches!(e, Failure::Refused(_)) {
                error!("{msg}");
            } else {
                warn!("{msg}");
            }
        } else if self.failures.is_multiple_of(LOG_EVERY_NTH_FAILURE) {
            info!(
                "still offline after {} attempts: {reason}; {backlog} reports waiting, {dropped} dropped",
                self.failures
            );
        } else {
            debug!("connect attempt {} failed: {reason}", self.failures);
        }
        self.last_error = reason;
    }
}
