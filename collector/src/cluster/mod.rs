//! Cluster mode (DESIGN.md "Deployment modes"): a NATS cluster carries the agents'
//! reports (its MQTT listener; the agents do not change), site workers
//! ([`site`]) own partitions of the sites and run the engine's site stage, and a
//! correlator ([`fleet`]) with a hot standby runs its fleet stage. This module holds
//! what both roles share: the `[cluster]` config, the subjects, the partition
//! function, the JetStream streams and key-value buckets, and the lease.
//!
//! The partition of a site is NATS's own `partition(N, 1)` over the site's subject
//! token (FNV-1a 32, modulo N): the account mapping in the shipped nats-server
//! configs moves `faultline.v1.sites.S.report` to `fl.in.P.faultline.v1.sites.S.report`
//! as an agent publishes, and the collector computes the same P where it needs one
//! (statuses, restoring a partition's sites).

pub mod fleet;
pub mod mqtt_out;
pub mod site;

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, kv, stream};
use faultline_shared::Id;
use serde::Deserialize;

/// Partitions unless `[cluster] partitions` says otherwise (must equal the
/// `partition(N, 1)` of the nats-server mapping).
pub const DEFAULT_PARTITIONS: u32 = 16;
/// Replicas of every stream and bucket (a three-node cluster survives one loss).
pub const DEFAULT_REPLICAS: usize = 3;
/// A lease not renewed within this long is free (partitions, the correlator's).
pub const DEFAULT_LEASE_MS: u64 = 6_000;
/// How long summaries stay in their stream.
const REPORTS_MAX_AGE: Duration = Duration::from_secs(3600);
/// How long the summary stream de-duplicates by `Nats-Msg-Id` (covers redeliveries).
const SUMMARY_DEDUP: Duration = Duration::from_secs(120);

/// The reports stream: the MQTT listener's own stream of QoS 1 messages. An agent's
/// report is in it (replicated) before the agent gets its PUBACK, under the mapped
/// subject `$MQTT.msgs.fl.in.P.…`; it keeps a message until every consumer whose
/// filter matches has acknowledged it (interest retention), so the partition
/// consumers hold each report until a worker has stored it. (A stream of our own
/// capturing `fl.in.>` would not do: a plain capture is not waited for, and reports
/// published while its leader moves are lost.)
pub const REPORTS_STREAM: &str = "$MQTT_msgs";
/// The statuses stream: each site's latest status (and last will).
pub const STATUS_STREAM: &str = "FL_STATUS";
/// The summaries stream: site workers → correlators.
pub const SUMMARY_STREAM: &str = "FL_SUMMARY";
/// Partition and correlator leases.
pub const LEASE_BUCKET: &str = "fl-leases";
/// Live site workers (one key each, expiring with the lease).
pub const WORKER_BUCKET: &str = "fl-workers";
/// The correlator's lease key.
pub const LEADER_KEY: &str = "fleet-leader";

/// A collector's part in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterRole {
    /// Owns partitions of the sites: de-dup, probe health, silence, history rows.
    Site,
    /// Cross-site verdicts and incidents (the active one publishes them).
    Fleet,
}

impl std::str::FromStr for ClusterRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "site" => Ok(Self::Site),
            "fleet" => Ok(Self::Fleet),
            _ => Err(format!("role {s:?}: site or fleet")),
        }
    }
}

/// `[cluster]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    nats: Vec<String>,
    role: Option<String>,
    /// The correlator's MQTT listeners (verdicts out); first reachable is used.
    #[serde(default)]
    mqtt: Vec<String>,
    partitions: Option<u32>,
    replicas: Option<usize>,
    lease_ms: Option<u64>,
    /// This process's name in leases (default: host name and pid).
    name: Option<String>,
}

/// `[cluster]`, validated.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub nats: Vec<String>,
    /// `None`: `run --role` must say.
    pub role: Option<ClusterRole>,
    pub mqtt: Vec<(String, u16)>,
    pub partitions: u32,
    pub replicas: usize,
    pub lease_ms: u64,
    pub name: String,
}

impl RawCluster {
    /// Validates; an error names the field.
    pub fn validate(self) -> Result<Cluster, (&'static str, String)> {
        if self.nats.is_empty() {
            return Err(("cluster.nats", "at least one nats:// URL".into()));
        }
        for u in &self.nats {
            if !u.starts_with("nats://") && !u.starts_with("tls://") {
                return Err(("cluster.nats", format!("{u:?}: not a nats:// URL")));
            }
        }
        let role = self
            .role
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| ("cluster.role", e))?;
        let mut mqtt = Vec::new();
        for u in &self.mqtt {
            let p = faultline_shared::MqttUrl::parse(u)
                .map_err(|e| ("cluster.mqtt", format!("{u:?}: {e}")))?;
            if p.tls {
                return Err(("cluster.mqtt", format!("{u:?}: mqtt:// only")));
            }
            mqtt.push((p.host, p.port));
        }
        let partitions = self.partitions.unwrap_or(DEFAULT_PARTITIONS);
        if !(1..=1024).contains(&partitions) {
            return Err(("cluster.partitions", "1 to 1024".into()));
        }
        let replicas = self.replicas.unwrap_or(DEFAULT_REPLICAS);
        if !(1..=5).contains(&replicas) {
            return Err(("cluster.replicas", "1 to 5".into()));
        }
        let lease_ms = self.lease_ms.unwrap_or(DEFAULT_LEASE_MS);
        if !(1_000..=600_000).contains(&lease_ms) {
            return Err(("cluster.lease_ms", "1000 to 600000".into()));
        }
        let name = match self.name {
            Some(n) => Id::new(n.as_str())
                .map_err(|e| ("cluster.name", e.to_string()))?
                .to_string(),
            None => format!("{}-{}", host_name(), std::process::id()),
        };
        Ok(Cluster {
            nats: self.nats,
            role,
            mqtt,
            partitions,
            replicas,
            lease_ms,
            name,
        })
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty() && Id::new(h.as_str()).is_ok())
        .unwrap_or_else(|| "collector".into())
}

/// A site id as a NATS subject token (nats-server writes an MQTT level's `.` as `//`).
pub fn subject_token(site: &str) -> String {
    site.replace('.', "//")
}

/// The partition of a site: nats-server's `partition(n, 1)` over its subject token
/// (FNV-1a, 32 bits, modulo `n`).
pub fn partition_of(site: &str, n: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in subject_token(site).bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % n
}

/// The MQTT topic of a NATS subject (`.` separates levels, `//` is a `.` inside one).
pub fn topic_of(subject: &str) -> String {
    subject
        .split("//")
        .map(|part| part.replace('.', "/"))
        .collect::<Vec<_>>()
        .join(".")
}

/// The NATS subject of an MQTT topic (what an MQTT subscriber of that topic on a
/// NATS node's listener receives).
pub fn subject_of(topic: &str) -> String {
    topic
        .split('/')
        .map(subject_token)
        .collect::<Vec<_>>()
        .join(".")
}

/// How long a cluster role's loop may sleep at `now_ms`: until the engine's next
/// deadline, a second at most (leases and the bus are looked at in between).
pub fn nap(engine: &crate::engine::Engine, now_ms: u64) -> Duration {
    let ms = engine
        .poll_timeout()
        .map_or(1_000, |t| t.saturating_sub(now_ms))
        .min(1_000);
    Duration::from_millis(ms)
}

/// The subject filter of one partition's reports.
pub fn partition_filter(p: u32) -> String {
    format!("$MQTT.msgs.fl.in.{p}.>")
}

/// The agent's own subject inside a partition's (`$MQTT.msgs.fl.in.P.` in front).
pub fn agent_subject(subject: &str) -> &str {
    subject.splitn(6, '.').nth(5).unwrap_or("")
}

/// The subject a summary of `site` travels on.
pub fn summary_subject(site: &str) -> String {
    format!("fl.summary.{}", subject_token(site))
}

/// Connects to the cluster (any of its nodes; the client moves on when one dies).
pub async fn connect(c: &Cluster) -> anyhow::Result<async_nats::Client> {
    let addrs: Vec<async_nats::ServerAddr> = c
        .nats
        .iter()
        .map(|u| u.parse().with_context(|| format!("NATS URL {u}")))
        .collect::<anyhow::Result<_>>()?;
    async_nats::ConnectOptions::new()
        .name(format!("faultline-collector {}", c.name))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(addrs)
        .await
        .context("connect to NATS")
}

/// The streams and buckets a cluster needs, created if absent (idempotent; every
/// process does it at start, retrying while the cluster elects its leaders).
#[derive(Debug, Clone)]
pub struct Bus {
    pub js: jetstream::Context,
    pub leases: kv::Store,
    pub workers: kv::Store,
}

impl Bus {
    pub async fn open(client: async_nats::Client, c: &Cluster) -> anyhow::Result<Bus> {
        let js = jetstream::new(client);
        let mut backoff = crate::service::backoff(250, 5_000);
        loop {
            match Self::try_open(&js, c).await {
                Ok(bus) => return Ok(bus),
                Err(e) => {
                    let d = backoff.next_delay(fastrand::f64());
                    tracing::warn!("JetStream not ready: {e:#}; retrying in {d:?}");
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    async fn try_open(js: &jetstream::Context, c: &Cluster) -> anyhow::Result<Bus> {
        let r = c.replicas;
        // The MQTT listener's own stream of QoS 1 messages: it is created when the
        // account's first MQTT client connects.
        if js.get_stream(REPORTS_STREAM).await.is_err() {
            poke_mqtt(&c.mqtt).await;
            js.get_stream(REPORTS_STREAM)
                .await
                .context("the MQTT listener's message stream")?;
        }
        js.get_or_create_stream(stream::Config {
            name: STATUS_STREAM.into(),
            subjects: vec!["faultline.v1.sites.*.status".into()],
            num_replicas: r,
            storage: stream::StorageType::File,
            max_messages_per_subject: 1,
            ..Default::default()
        })
        .await
        .context("statuses stream")?;
        js.get_or_create_stream(stream::Config {
            name: SUMMARY_STREAM.into(),
            subjects: vec!["fl.summary.>".into()],
            num_replicas: r,
            storage: stream::StorageType::File,
            max_age: REPORTS_MAX_AGE,
            duplicate_window: SUMMARY_DEDUP,
            ..Default::default()
        })
        .await
        .context("summaries stream")?;
        let lease = Duration::from_millis(c.lease_ms);
        let leases = bucket(js, LEASE_BUCKET, lease, r).await?;
        let workers = bucket(js, WORKER_BUCKET, lease, r).await?;
        Ok(Bus {
            js: js.clone(),
            leases,
            workers,
        })
    }
}

/// Connects to an MQTT listener and leaves (makes the server create its MQTT
/// streams for the account).
async fn poke_mqtt(listeners: &[(String, u16)]) {
    for (host, port) in listeners {
        let mut o = rumqttc::MqttOptions::new(
            format!("faultline-poke-{}", std::process::id()),
            host.clone(),
            *port,
        );
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 10);
        let connected = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
        if connected {
            return;
        }
    }
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    ttl: Duration,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    // The bucket's stream as `create_key_value` would make it: that call first
    // asks for account details in a form nats-server 2.9 does not send.
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        duplicate_window: ttl,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .with_context(|| format!("bucket {name}"))?;
    js.get_key_value(name)
        .await
        .with_context(|| format!("bucket {name}"))
}

/// One lease key held by this process: taken with `create` (fails while another
/// holds it), renewed with `update` at the revision it last wrote (fails once
/// anyone else wrote since), dropped the moment a renewal fails. Between renewals it
/// counts as held only until `valid_until` (its last write plus the TTL less a
/// margin), so a process paused past its lease fences itself before it acts.
#[derive(Debug, Clone)]
pub struct Lease {
    pub key: String,
    revision: u64,
    valid_until: tokio::time::Instant,
}

impl Lease {
    /// Tries to take `key`; `None` when someone holds it.
    pub async fn take(kv: &kv::Store, key: &str, holder: &str, ttl_ms: u64) -> Option<Lease> {
        let sent = tokio::time::Instant::now();
        let rev = kv.create(key, holder.to_owned().into()).await.ok()?;
        Some(Lease {
            key: key.to_owned(),
            revision: rev,
            valid_until: sent + valid_for(ttl_ms),
        })
    }

    /// Renews; false when the lease is lost (someone else took it, or it lapsed).
    pub async fn renew(&mut self, kv: &kv::Store, holder: &str, ttl_ms: u64) -> bool {
        if !self.valid() {
            return false;
        }
        let sent = tokio::time::Instant::now();
        match kv
            .update(&self.key, holder.to_owned().into(), self.revision)
            .await
        {
            Ok(rev) => {
                self.revision = rev;
                self.valid_until = sent + valid_for(ttl_ms);
                true
            }
            Err(e) => {
                tracing::warn!(key = self.key, "lease lost: {e}");
                false
            }
        }
    }

    /// Whether the lease is certainly still ours.
    pub fn valid(&self) -> bool {
        tokio::time::Instant::now() < self.valid_until
    }

    /// Gives the lease up (best effort: it lapses anyway).
    pub async fn release(self, kv: &kv::Store) {
        let _ = kv.delete(&self.key).await;
    }
}

/// A lease written at `t` is ours until `t` plus the TTL less a third (the margin
/// covers the server's clock running ahead and our own scheduling).
fn valid_for(ttl_ms: u64) -> Duration {
    Duration::from_millis(ttl_ms - ttl_ms / 3)
}

/// A durable pull consumer of this process's own (`name`), made afresh: replicated
/// like its stream, so it survives the loss of a node (an ordered consumer lives on
/// one node and stalls with it). No acks: the reader keeps its own place.
pub async fn fresh_consumer(
    bus: &Bus,
    stream: &str,
    name: &str,
    filter: &str,
    deliver_policy: jetstream::consumer::DeliverPolicy,
) -> anyhow::Result<jetstream::consumer::Consumer<jetstream::consumer::pull::Config>> {
    let s = bus.js.get_stream(stream).await?;
    let _ = s.delete_consumer(name).await;
    s.create_consumer(jetstream::consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: filter.to_owned(),
        deliver_policy,
        ack_policy: jetstream::consumer::AckPolicy::None,
        ..Default::default()
    })
    .await
    .with_context(|| format!("consumer {name} on {stream}"))
}

/// Pulls from `consumer` for as long as `tx` is open, pulling again (with backoff)
/// whenever the message stream ends or fails.
pub async fn forward<T: Send + 'static>(
    consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    tx: tokio::sync::mpsc::Sender<T>,
    what: &'static str,
    map: impl Fn(jetstream::Message) -> Option<T>,
) {
    use futures_util::StreamExt;
    let mut backoff = crate::service::backoff(200, 5_000);
    loop {
        match consumer.messages().await {
            Ok(mut msgs) => {
                while let Some(m) = msgs.next().await {
                    match m {
                        Ok(m) => {
                            backoff.reset();
                            if let Some(t) = map(m)
                                && tx.send(t).await.is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => tracing::debug!("{what}: {e}"),
                    }
                }
            }
            Err(e) => tracing::warn!("{what}: {e}"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff.next_delay(fastrand::f64())).await;
    }
}

/// History's writer and a reader (PostgreSQL: `[storage] url`, shared by every
/// collector of the cluster; or one SQLite file on one host). Connecting blocks.
pub async fn open_history(
    cfg: &crate::config::Config,
) -> anyhow::Result<(crate::store::Store, crate::store::Store)> {
    let location = cfg.storage.location.clone();
    tokio::task::spawn_blocking(move || {
        Ok((
            crate::store::Store::connect(&location)?,
            crate::store::Store::connect(&location)?,
        ))
    })
    .await?
}

/// History's writer thread for a cluster role: commits are awaited through
/// `StoreMsg::Flush` (there are no MQTT acknowledgements for it to carry).
pub fn spawn_history(
    writer: crate::store::Store,
    cfg: &crate::config::Config,
    stats: std::sync::Arc<crate::service::history::HistoryStats>,
) -> std::sync::mpsc::Sender<crate::service::history::StoreMsg> {
    use crate::service::history::{self, AckMsg};
    let (store_tx, store_rx) = std::sync::mpsc::channel();
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
    history::spawn_writer(
        writer,
        store_rx,
        cfg.storage.clone(),
        stats,
        ack_tx,
        std::sync::Arc::new(tokio::sync::Semaphore::new(0)),
    );
    tokio::spawn(async move {
        while let Some(m) = ack_rx.recv().await {
            if let AckMsg::Done(done) = m {
                let _ = done.send(());
            }
        }
    });
    store_tx
}

/// Runs the cluster role `role` until SIGINT/SIGTERM.
pub fn run(cfg: crate::config::Config, role: ClusterRole) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = crate::service::shutdown_signal();
        match role {
            ClusterRole::Site => site::serve(cfg, shutdown).await,
            ClusterRole::Fleet => fleet::serve(cfg, shutdown).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_match_nats_server() {
        // Measured with nats-server 2.9.10 and `{{partition(16,1)}}`.
        for (site, p) in [("a", 12), ("b", 5), ("c", 2), ("site-7", 10)] {
            assert_eq!(partition_of(site, 16), p, "{site}");
        }
    }

    #[test]
    fn subjects_become_topics() {
        assert_eq!(
            topic_of("faultline.v1.sites.a//b.report"),
            "faultline/v1/sites/a.b/report"
        );
        assert_eq!(subject_token("a.b"), "a//b");
        let topic = "faultline/v1/metrics/a.b/sip.voipco";
        assert_eq!(subject_of(topic), "faultline.v1.metrics.a//b.sip//voipco");
        assert_eq!(topic_of(&subject_of(topic)), topic);
        assert_eq!(
            agent_subject("$MQTT.msgs.fl.in.3.faultline.v1.sites.a.report"),
            "faultline.v1.sites.a.report"
        );
    }
}
