//! History: the writer thread and the acknowledgements it releases.
//!
//! Nothing is acknowledged before it is stored (DESIGN.md "Nothing lost"). Every
//! QoS 1 delivery reaches the writer behind whatever it carried (a window row, a
//! boot, a site), in arrival order; the writer commits a batch durably and only then
//! hands that batch's acknowledgements to the acker task, which sends the PUBACKs.
//! A crash at any point leaves the unacknowledged messages with the broker, which
//! delivers them again; de-dup, restored from history at start, drops what was
//! already committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;

use faultline_shared::{Id, Verdict};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish;

use crate::engine::{BootMeta, WindowRow};
use crate::store::Store;

/// Messages the history writer commits in one transaction at most.
const HISTORY_BATCH: usize = 10_000;

/// One delivery on the reading connection, to acknowledge once what it carried is
/// committed. `conn` numbers the connection it came on: after a reconnect the broker
/// delivers it again, so an acknowledgement for an earlier connection is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub conn: u64,
    pub pkid: u16,
    pub qos: QoS,
}

impl AckToken {
    /// The token for a delivery that needs an acknowledgement (QoS 1 or 2).
    pub fn of(p: &Publish, conn: u64) -> Option<Self> {
        (p.qos != QoS::AtMostOnce).then_some(Self {
            conn,
            pkid: p.pkid,
            qos: p.qos,
        })
    }

    /// What rumqttc's `ack` reads: the packet id and QoS.
    pub(crate) fn publish(&self) -> Publish {
        let mut p = Publish::new("", self.qos, Vec::<u8>::new(), None);
        p.pkid = self.pkid;
        p
    }
}

/// What the writer thread is asked to record.
#[derive(Debug)]
pub enum StoreMsg {
    Window(WindowRow),
    Boot(Id, BootMeta),
    Verdict(Verdict),
    /// A verdict no longer tracked: its current row goes.
    Forget(Verdict),
    Incident(faultline_shared::IncidentEvent),
    Site(Id, Option<Id>, Option<String>),
    Maintain(u64),
    /// Sites another writer may store from now on (a cluster's site worker gave
    /// their partition up): what this writer cached of them goes, after the commit.
    ForgetSites(Vec<Id>),
    /// One delivery handled: its pipeline place is free once everything sent
    /// before it is committed, and its acknowledgement (QoS 1 or 2) is sent then.
    Delivered(Option<AckToken>),
    /// Answered once everything sent before it is committed and its
    /// acknowledgements are with the MQTT client.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// What the acker task gets from the writer, in commit order.
#[derive(Debug)]
pub enum AckMsg {
    Acks(Vec<AckToken>),
    /// Answered once every acknowledgement before it is with the MQTT client.
    Done(tokio::sync::oneshot::Sender<()>),
}

/// What the history writer and the acker have done (read by `/metrics`).
#[derive(Debug, Default)]
pub struct HistoryStats {
    /// Window rows committed.
    pub stored: AtomicU64,
    /// Windows history refused because it already held them.
    pub refused_duplicates: AtomicU64,
    /// Failed commits (each retried until it succeeds; nothing is acknowledged meanwhile).
    pub errors: AtomicU64,
    /// Acknowledgements handed to the MQTT client.
    pub acked: AtomicU64,
    /// Acknowledgements dropped because their connection had gone (delivered again).
    pub stale_acks: AtomicU64,
}

/// The writer thread: commits whatever is queued (up to [`HISTORY_BATCH`]) in one
/// transaction, retrying a failed one until it succeeds, then hands that batch's
/// acknowledgements to the acker, in order.
pub fn spawn_writer(
    mut store: Store,
    rx: std_mpsc::Receiver<StoreMsg>,
    cfg: crate::config::Storage,
    stats: Arc<HistoryStats>,
    acks: tokio::sync::mpsc::UnboundedSender<AckMsg>,
    pipeline: Arc<tokio::sync::Semaphore>,
) {
    std::thread::Builder::new()
        .name("history".into())
        .spawn(move || {
            let mut batch = Vec::new();
            while let Ok(first) = rx.recv() {
                batch.push(first);
                while batch.len() < HISTORY_BATCH {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                let mut backoff = super::backoff(100, 10_000);
                let (stored, refused) = loop {
                    match write_batch(&mut store, &batch) {
                        Ok(n) => break n,
                        Err(e) => {
                            store.rollback();
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            let d = backoff.next_delay(fastrand::f64());
                            tracing::error!("history write failed: {e:#}; retrying in {d:?}");
                            std::thread::sleep(d);
                        }
                    }
                };
                stats.stored.fetch_add(stored, Ordering::Relaxed);
                stats
                    .refused_duplicates
                    .fetch_add(refused, Ordering::Relaxed);
                let mut tokens = Vec::new();
                let mut maintain = None;
                let mut delivered = 0;
                for m in batch.drain(..) {
                    match m {
                        StoreMsg::Delivered(t) => {
                            delivered += 1;
                            tokens.extend(t);
                        }
                        StoreMsg::Maintain(now) => maintain = Some(now),
                        StoreMsg::ForgetSites(sites) => store.forget_sites(&sites),
                        StoreMsg::Flush(done) => {
                            let _ = acks.send(AckMsg::Acks(std::mem::take(&mut tokens)));
                            let _ = acks.send(AckMsg::Done(done));
                        }
                        _ => {}
                    }
                }
                if !tokens.is_empty() {
                    let _ = acks.send(AckMsg::Acks(tokens));
                }
                pipeline.add_permits(delivered);
                if let Some(now) = maintain
                    && let Err(e) =
                        store.maintain(now, cfg.raw_days, cfg.hourly_days, cfg.incident_days)
                {
                    tracing::error!("history maintenance failed: {e:#}");
                }
            }
        })
        .expect("spawn the history thread");
}

/// Writes one batch in one transaction; returns (windows stored, windows refused as
/// already stored).
fn write_batch(store: &mut Store, batch: &[StoreMsg]) -> anyhow::Result<(u64, u64)> {
    store.begin()?;
    // Windows go in together, after the batch's other rows (one statement on a
    // network database instead of one round trip each).
    let mut windows = Vec::new();
    for m in batch {
        match m {
            StoreMsg::Window(w) => windows.push(w),
            StoreMsg::Boot(site, meta) => store.boot(site, meta)?,
            StoreMsg::Verdict(v) => store.verdict(v)?,
            StoreMsg::Incident(e) => store.incident(e)?,
            StoreMsg::Site(s, isp, c) => store.site(s, isp.as_ref(), c.as_deref())?,
            StoreMsg::Forget(v) => store.forget_verdict(v)?,
            StoreMsg::Maintain(_)
            | StoreMsg::ForgetSites(_)
            | StoreMsg::Delivered(_)
            | StoreMsg::Flush(_) => {}
        }
    }
    let (stored, refused) = store.windows(&windows)?;
    store.commit()?;
    Ok((stored, refused))
}
