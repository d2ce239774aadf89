//! Alertmanager (v2 API, `POST /api/v2/alerts`): one alert per open incident,
//! labelled `alertname="FaultlineIncident"`, `scope`, `id`, `cause`, `state`,
//! `incident`, re-posted every [`REPOST_EVERY`] while open (Alertmanager resolves an
//! alert it has not heard of for `resolve_timeout`, 5 min by default) and posted once
//! more with `endsAt` when the incident closes. Events reach it through the same
//! durable queue as the webhooks, so a close is not lost to a restart; the set of
//! open alerts starts from the incidents the history restored.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use faultline_shared::{
    Incident, IncidentEvent, IncidentEventKind, Recommendation, Scope, Verdict,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;

use super::post::{Client, Endpoint};
use super::queue::Queue;
use super::{AlertStats, Kind};

/// How often open alerts are posted again.
pub const REPOST_EVERY: Duration = Duration::from_secs(60);
/// The queue's receiver key for Alertmanager.
pub const KEY: &str = "alertmanager";

/// RFC 3339 UTC from epoch milliseconds.
pub fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The labels that identify `inc`'s alert in Alertmanager.
pub fn labels(inc: &Incident) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("alertname", "FaultlineIncident".to_owned()),
        ("scope", inc.scope.as_str().to_owned()),
        ("id", inc.target_id.to_string()),
        ("cause", inc.cause.map_or("none", |c| c.as_str()).to_owned()),
        ("state", inc.state.as_str().to_owned()),
        ("incident", inc.id.clone()),
    ])
}

/// One alert in the v2 API's `postableAlert` form; `ends_ms` resolves it.
pub fn alert(
    inc: &Incident,
    rec: Option<&Recommendation>,
    ends_ms: Option<u64>,
    public_url: Option<&str>,
) -> Value {
    let sites = inc
        .sites
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut summary = format!(
        "{} {} {}: {}",
        inc.scope.as_str(),
        inc.target_id,
        inc.state.as_str(),
        inc.cause.map_or("cause unknown".to_owned(), |c| format!(
            "cause {}",
            c.as_str()
        )),
    );
    if !inc.sites.is_empty() {
        let _ = std::fmt::Write::write_fmt(
            &mut summary,
            format_args!(" at {} site(s)", inc.sites.len()),
        );
    }
    let mut annotations =
        json!({"summary": summary, "sites": sites, "opened": rfc3339(inc.opened_ms)});
    if let Some(r) = rec {
        annotations["recommendation"] = json!(format!("failover to {}", r.to));
    }
    let mut a = json!({
        "labels": labels(inc),
        "annotations": annotations,
        "startsAt": rfc3339(inc.opened_ms),
    });
    if let Some(end) = ends_ms {
        a["endsAt"] = json!(rfc3339(end));
    }
    if let Some(base) = public_url {
        a["generatorURL"] = json!(format!(
            "{}/incidents/{}",
            base.trim_end_matches('/'),
            inc.id
        ));
    }
    a
}

/// The Alertmanager receiver: its open alerts and what it posts.
pub(super) struct Worker {
    pub url: Endpoint,
    pub public_url: Option<String>,
    pub queue_path: PathBuf,
    pub client: Client,
    pub wake: Arc<Notify>,
    pub stats: Arc<AlertStats>,
    pub verdicts: mpsc::UnboundedReceiver<Verdict>,
    /// Open incidents as last posted.
    pub open: BTreeMap<String, Incident>,
    /// Provider incidents' failover advice, from their verdicts.
    pub recommendations: HashMap<String, Recommendation>,
}

impl Worker {
    /// Until `stop`: takes queued events in order, keeps the open alerts posted.
    pub async fn run(mut self, mut stop: broadcast::Receiver<()>) {
        let mut queue = match Queue::open(&self.queue_path) {
            Ok(q) => q,
            Err(e) => {
                tracing::error!("alertmanager: cannot open the alert queue: {e:#}");
                return;
            }
        };
        let mut backoff = super::retry_backoff();
        let mut next_repost = Instant::now();
        loop {
            // Advice already sent by the owner goes with the events it came with.
            while let Ok(v) = self.verdicts.try_recv() {
                if self.take_verdict(&v) {
                    next_repost = Instant::now();
                }
            }
            // Queued events first, in order; then the open set when it is due.
            let mut ok = self.drain(&mut queue).await;
            if ok && !self.open.is_empty() && Instant::now() >= next_repost {
                let all: Vec<Value> = self.open.values().map(|i| self.alert(i, None)).collect();
                match self.client.post(&self.url, &[], to_body(&all)).await {
                    Ok(()) => next_repost = Instant::now() + REPOST_EVERY,
                    Err(e) => {
                        ok = false;
                        self.stats.failed(Kind::Alertmanager);
                        tracing::warn!("alertmanager {}: {e}; posting again later", self.url);
                    }
                }
            }
            let wait = if !ok {
                backoff.next_delay(fastrand::f64())
            } else {
                backoff.reset();
                if self.open.is_empty() {
                    REPOST_EVERY
                } else {
                    next_repost.saturating_duration_since(Instant::now())
                }
            };
            tokio::select! {
                () = self.wake.notified() => {}
                Some(v) = self.verdicts.recv() => {
                    if self.take_verdict(&v) {
                        next_repost = Instant::now();
                    }
                }
                () = tokio::time::sleep(wait) => {}
                _ = stop.recv() => return,
            }
        }
    }

    /// Posts queued events in order; false when one failed (it stays queued).
    async fn drain(&mut self, queue: &mut Queue) -> bool {
        loop {
            let entry = match queue.head(KEY) {
                Ok(Some(e)) => e,
                Ok(None) => return true,
                Err(e) => {
                    tracing::warn!("alertmanager: alert queue: {e:#}");
                    return false;
                }
            };
            let Ok(ev) = serde_json::from_slice::<IncidentEvent>(&entry.body) else {
                // Written by this module from the same type: cannot happen short of
                // a hand-edited file; skipping it keeps the queue moving.
                let _ = queue.remove(entry.seq);
                continue;
            };
            let inc = &ev.incident;
            let mut batch = Vec::with_capacity(2);
            let closing = ev.event == IncidentEventKind::Closed;
            let ends = closing.then(|| inc.closed_ms.unwrap_or_else(crate::service::now_ms));
            batch.push(self.alert(inc, ends));
            // New labels make a new alert: end the one posted under the old ones.
            if let Some(prev) = self.open.get(&inc.id)
                && labels(prev) != labels(inc)
            {
                batch.push(self.alert(prev, Some(crate::service::now_ms())));
            }
            if let Err(e) = self.client.post(&self.url, &[], to_body(&batch)).await {
                self.stats.failed(Kind::Alertmanager);
                tracing::warn!(
                    event_id = entry.event_id,
                    "alertmanager {}: {e}; kept",
                    self.url
                );
                return false;
            }
            if let Err(e) = queue.remove(entry.seq) {
                tracing::warn!("alertmanager: cannot remove a delivered entry: {e:#}");
            }
            self.stats.delivered(Kind::Alertmanager);
            if closing {
                self.open.remove(&inc.id);
                self.recommendations.remove(&inc.id);
            } else {
                self.open.insert(inc.id.clone(), inc.clone());
            }
        }
    }

    fn alert(&self, inc: &Incident, ends_ms: Option<u64>) -> Value {
        alert(
            inc,
            self.recommendations.get(&inc.id),
            ends_ms,
            self.public_url.as_deref(),
        )
    }

    /// Keeps a provider verdict's advice; true when an open alert's changed.
    fn take_verdict(&mut self, v: &Verdict) -> bool {
        let Some(id) = v.incident.as_ref().filter(|_| v.scope == Scope::Provider) else {
            return false;
        };
        let changed = match &v.recommendation {
            Some(r) => self.recommendations.insert(id.clone(), r.clone()).as_ref() != Some(r),
            None => self.recommendations.remove(id).is_some(),
        };
        changed && self.open.contains_key(id)
    }
}

fn to_body(alerts: &[Value]) -> Vec<u8> {
    serde_json::to_vec(alerts).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_shared::state::Action;
    use faultline_shared::{Cause, Id, State, Subject};

    #[test]
    fn an_alert_carries_the_contract_labels_and_annotations() {
        let inc = Incident {
            id: "inc-000007".into(),
            scope: Scope::Provider,
            target_id: Subject::from(Id::new("voipco").unwrap()),
            cause: Some(Cause::Provider),
            state: State::Outage,
            opened_ms: 1_764_201_630_000,
            closed_ms: None,
            sites: vec![Id::new("acme-hq").unwrap(), Id::new("bobs-bakery").unwrap()],
        };
        let rec = Recommendation {
            action: Action::Failover,
            to: Id::new("voipco2").unwrap(),
        };
        let a = alert(&inc, Some(&rec), None, Some("https://dash.msp.example/"));
        assert_eq!(
            a["labels"],
            json!({"alertname": "FaultlineIncident", "scope": "provider", "id": "voipco",
                   "cause": "provider", "state": "outage", "incident": "inc-000007"})
        );
        assert_eq!(a["annotations"]["sites"], "acme-hq, bobs-bakery");
        assert_eq!(a["annotations"]["recommendation"], "failover to voipco2");
        assert_eq!(a["startsAt"], "2025-11-27T00:00:30Z");
        assert!(a.get("endsAt").is_none());
        assert_eq!(
            a["generatorURL"],
            "https://dash.msp.example/incidents/inc-000007"
        );
        let a = alert(&inc, None, Some(1_764_201_690_000), None);
        assert_eq!(a["endsAt"], "2025-11-27T00:01:30Z");
        assert!(a["annotations"].get("recommendation").is_none());
        assert!(a.get("generatorURL").is_none());
    }
}
