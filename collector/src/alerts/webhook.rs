//! Signed webhooks: each queued event POSTed as its JSON body, in queue order, with
//! `X-Faultline-Signature: sha256=<hex HMAC-SHA256 of the body>` and
//! `X-Faultline-Event-Id`. An entry leaves the queue only after a 2xx answer; any
//! other outcome waits (exponential backoff with jitter) and sends it again, so
//! one receiver never sees `closed` before that incident's `opened`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{Notify, broadcast};

use super::post::{Client, Endpoint};
use super::queue::Queue;
use super::{AlertStats, Kind};
use crate::config::Secret;

/// The signature header's value for `body`: `sha256=<lower-case hex>`.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// One webhook receiver: its queue key, where and how it signs.
pub(super) struct Worker {
    pub key: String,
    pub url: Endpoint,
    pub secret: Secret,
    pub queue_path: PathBuf,
    pub client: Client,
    pub wake: Arc<Notify>,
    pub stats: Arc<AlertStats>,
}

impl Worker {
    /// The delivery loop, until `stop`.
    pub async fn run(self, mut stop: broadcast::Receiver<()>) {
        let Self {
            key,
            url,
            secret,
            queue_path,
            client,
            wake,
            stats,
        } = self;
        let mut backoff = super::retry_backoff();
        let queue = match Queue::open(&queue_path) {
            Ok(q) => q,
            Err(e) => {
                tracing::error!("webhook {url}: cannot open the alert queue: {e:#}");
                return;
            }
        };
        loop {
            let head = match queue.head(&key) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!("webhook {url}: alert queue: {e:#}");
                    if super::pause(&mut backoff, &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(entry) = head else {
                tokio::select! {
                    () = wake.notified() => continue,
                    _ = stop.recv() => return,
                }
            };
            let headers = [
                ("x-faultline-signature", signature(&secret, &entry.body)),
                ("x-faultline-event-id", entry.event_id.clone()),
            ];
            let sent = tokio::select! {
                r = client.post(&url, &headers, entry.body.clone()) => r,
                _ = stop.recv() => return,
            };
            match sent {
                Ok(()) => {
                    backoff.reset();
                    if let Err(e) = queue.remove(entry.seq) {
                        // Sent again after a restart: the id lets the receiver drop it.
                        tracing::warn!("webhook {url}: cannot remove a delivered entry: {e:#}");
                    }
                    stats.delivered(Kind::Webhook);
                    tracing::debug!(event_id = entry.event_id, "webhook {url}: delivered");
                }
                Err(e) => {
                    stats.failed(Kind::Webhook);
                    tracing::warn!(
                        event_id = entry.event_id,
                        "webhook {url}: {e}; kept for the next attempt"
                    );
                    if super::pause(&mut backoff, &mut stop).await {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let s = signature(&Secret::new("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            s,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
