//! `/metrics`: Prometheus text, streamed. At 10,000 sites the per-probe series are
//! some 35 MB of text; written whole into one string it would double the
//! collector's memory at every scrape. The text is written on a blocking thread into
//! 64 kB chunks handed to the response as they fill, a few at a time: a scrape costs
//! those chunks, not the whole page, and a scraper that goes away stops the writing.

use std::convert::Infallible;
use std::fmt::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::header;
use axum::response::IntoResponse;
use faultline_shared::{Scope, State};
use tokio::sync::mpsc;

use crate::service::Shared;

/// Bytes of text per chunk handed to the response.
const CHUNK: usize = 64 * 1024;
/// Chunks written ahead of the scraper, at most.
const AHEAD: usize = 4;

/// The handler: the text, streamed as it is written.
pub async fn serve(AxState(shared): AxState<Arc<Shared>>) -> impl IntoResponse {
    let (tx, rx) = mpsc::channel::<Bytes>(AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut w = Chunks {
            buf: String::with_capacity(CHUNK),
            tx,
        };
        // An error is the scraper gone: nothing more to write.
        if write(&shared, &mut w).is_ok() {
            w.flush();
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        Body::from_stream(body),
    )
}

/// Text in [`CHUNK`]s, each sent to the response once full.
struct Chunks {
    buf: String,
    tx: mpsc::Sender<Bytes>,
}

impl Chunks {
    /// Sends what is buffered; false once the response is gone.
    fn flush(&mut self) -> bool {
        let full = std::mem::replace(&mut self.buf, String::with_capacity(CHUNK));
        full.is_empty() || self.tx.blocking_send(Bytes::from(full)).is_ok()
    }
}

impl Write for Chunks {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.buf.push_str(s);
        if self.buf.len() >= CHUNK && !self.flush() {
            return Err(fmt::Error);
        }
        Ok(())
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition of ingest counters, verdict states and probe values.
pub fn write(shared: &Shared, o: &mut impl Write) -> fmt::Result {
    let (e, counters) = shared.snapshot.get();
    let c = &counters;
    writeln!(
        o,
        "# HELP faultline_collector_messages_total Messages accepted, by kind."
    )?;
    writeln!(o, "# TYPE faultline_collector_messages_total counter")?;
    writeln!(
        o,
        "faultline_collector_messages_total{{kind=\"report\"}} {}",
        c.reports
    )?;
    writeln!(
        o,
        "faultline_collector_messages_total{{kind=\"status\"}} {}",
        c.statuses
    )?;
    writeln!(
        o,
        "# HELP faultline_collector_rejected_total Messages dropped, by reason."
    )?;
    writeln!(o, "# TYPE faultline_collector_rejected_total counter")?;
    for reason in faultline_shared::RejectReason::ALL {
        let n = c.rejected.get(&reason).copied().unwrap_or(0);
        writeln!(
            o,
            "faultline_collector_rejected_total{{reason=\"{}\"}} {n}",
            reason.as_str()
        )?;
    }
    writeln!(
        o,
        "# HELP faultline_collector_missing_windows Windows provably missing: gaps in a boot's seq, less those a backlog has filled since (so it can fall)."
    )?;
    writeln!(o, "# TYPE faultline_collector_missing_windows gauge")?;
    writeln!(
        o,
        "faultline_collector_missing_windows {}",
        c.missing_windows
    )?;
    {
        let h = &shared.history_stats;
        let rows: [(&str, &str, &AtomicU64); 5] = [
            (
                "faultline_collector_stored_windows_total",
                "Window rows committed to history.",
                &h.stored,
            ),
            (
                "faultline_collector_history_duplicates_total",
                "Windows history refused because it already held them.",
                &h.refused_duplicates,
            ),
            (
                "faultline_collector_history_errors_total",
                "Failed history commits (retried; nothing is acknowledged meanwhile).",
                &h.errors,
            ),
            (
                "faultline_collector_acked_total",
                "Deliveries acknowledged to the broker after their commit.",
                &h.acked,
            ),
            (
                "faultline_collector_stale_acks_total",
                "Acknowledgements dropped because their connection had gone (delivered again).",
                &h.stale_acks,
            ),
        ];
        for (name, help, v) in rows {
            writeln!(o, "# HELP {name} {help}")?;
            writeln!(o, "# TYPE {name} counter")?;
            writeln!(o, "{name} {}", v.load(Ordering::Relaxed))?;
        }
    }
    writeln!(
        o,
        "# HELP faultline_collector_late_reports_total Reports accepted for windows that ended long before they arrived (a backlog)."
    )?;
    writeln!(o, "# TYPE faultline_collector_late_reports_total counter")?;
    writeln!(o, "faultline_collector_late_reports_total {}", c.late)?;
    writeln!(
        o,
        "# HELP faultline_collector_clock_skew_reports_total Reports whose window time is far from the collector's clock (accepted)."
    )?;
    writeln!(
        o,
        "# TYPE faultline_collector_clock_skew_reports_total counter"
    )?;
    writeln!(
        o,
        "faultline_collector_clock_skew_reports_total {}",
        c.skewed
    )?;
    writeln!(
        o,
        "# HELP faultline_collector_evaluations_total Evaluations of the fleet (cross-site verdicts) run."
    )?;
    writeln!(o, "# TYPE faultline_collector_evaluations_total counter")?;
    writeln!(o, "faultline_collector_evaluations_total {}", c.evaluations)?;
    writeln!(
        o,
        "# HELP faultline_collector_skipped_evaluations_total Periodic evaluations skipped because the collector fell behind."
    )?;
    writeln!(
        o,
        "# TYPE faultline_collector_skipped_evaluations_total counter"
    )?;
    writeln!(
        o,
        "faultline_collector_skipped_evaluations_total {}",
        c.skipped_evaluations
    )?;
    for (name, help, v) in [
        (
            "faultline_collector_summaries_total",
            "Site summaries (one per site window, offline, announce, online) handed to the fleet stage.",
            c.summaries,
        ),
        (
            "faultline_collector_providers_over_cap_total",
            "Probes naming an unconfigured provider not tracked because the fleet already tracks the most allowed.",
            c.providers_over_cap,
        ),
    ] {
        writeln!(o, "# HELP {name} {help}")?;
        writeln!(o, "# TYPE {name} counter")?;
        writeln!(o, "{name} {v}")?;
    }
    {
        let st = shared.stats.lock().expect("stats lock");
        writeln!(
            o,
            "# HELP faultline_collector_mqtt_connected 1 while the collector holds its broker connection."
        )?;
        writeln!(o, "# TYPE faultline_collector_mqtt_connected gauge")?;
        writeln!(
            o,
            "faultline_collector_mqtt_connected {}",
            u8::from(st.connected)
        )?;
        writeln!(
            o,
            "# HELP faultline_collector_published_total Messages published (verdicts, incident events) and per-probe metrics dropped or skipped."
        )?;
        writeln!(o, "# TYPE faultline_collector_published_total counter")?;
        writeln!(
            o,
            "faultline_collector_published_total{{kind=\"verdict\"}} {}",
            st.published_verdicts
        )?;
        writeln!(
            o,
            "faultline_collector_published_total{{kind=\"incident_event\"}} {}",
            st.published_events
        )?;
        writeln!(
            o,
            "faultline_collector_published_total{{kind=\"metrics_dropped\"}} {}",
            st.metrics_dropped
        )?;
        writeln!(
            o,
            "faultline_collector_published_total{{kind=\"metrics_skipped\"}} {}",
            counters.metrics_skipped
        )?;
        writeln!(
            o,
            "# HELP faultline_collector_evaluation_seconds How long the engine's evaluations take: the latest and the longest since start."
        )?;
        writeln!(o, "# TYPE faultline_collector_evaluation_seconds gauge")?;
        writeln!(
            o,
            "faultline_collector_evaluation_seconds{{which=\"last\"}} {:.6}",
            st.evaluation_last.as_secs_f64()
        )?;
        writeln!(
            o,
            "faultline_collector_evaluation_seconds{{which=\"max\"}} {:.6}",
            st.evaluation_max.as_secs_f64()
        )?;
    }
    writeln!(
        o,
        "# HELP faultline_collector_open_incidents Incidents open now."
    )?;
    writeln!(o, "# TYPE faultline_collector_open_incidents gauge")?;
    writeln!(
        o,
        "faultline_collector_open_incidents {}",
        e.open_incidents().count()
    )?;
    crate::alerts::write_metrics(o, &shared.alerts)?;
    {
        let a = &shared.config_answers;
        writeln!(
            o,
            "# HELP faultline_collector_config_rejections_total Central configs an agent rejected (each site and version once; the agent keeps its previous config)."
        )?;
        writeln!(
            o,
            "# TYPE faultline_collector_config_rejections_total counter"
        )?;
        writeln!(
            o,
            "faultline_collector_config_rejections_total {}",
            a.rejections()
        )?;
        writeln!(
            o,
            "# HELP faultline_site_config_rejected 1 for each site whose agent's latest answer rejected its central config."
        )?;
        writeln!(o, "# TYPE faultline_site_config_rejected gauge")?;
        for (site, _) in a.rejected() {
            writeln!(o, "faultline_site_config_rejected{{site=\"{site}\"}} 1")?;
        }
    }
    writeln!(
        o,
        "# HELP faultline_verdict_state 1 for the state each site, ISP and provider is in."
    )?;
    writeln!(o, "# TYPE faultline_verdict_state gauge")?;
    for v in e.verdicts() {
        let states: &[State] = match v.scope {
            Scope::Site => &[State::Ok, State::Degraded, State::Down, State::Offline],
            _ => &[State::Ok, State::Degraded, State::Outage],
        };
        for s in states {
            writeln!(
                o,
                "faultline_verdict_state{{scope=\"{}\",id=\"{}\",state=\"{}\"}} {}",
                v.scope.as_str(),
                v.id,
                s.as_str(),
                u8::from(v.state == *s)
            )?;
        }
    }
    let series: [(&str, &str); 4] = [
        (
            "faultline_probe_loss_ratio",
            "Share of probes lost in the latest window.",
        ),
        (
            "faultline_probe_rtt_p50_seconds",
            "Median round-trip time in the latest window.",
        ),
        (
            "faultline_probe_jitter_seconds",
            "Jitter in the latest window.",
        ),
        (
            "faultline_probe_mos",
            "Estimated MOS of voice probes in the latest window.",
        ),
    ];
    for (i, (name, help)) in series.iter().enumerate() {
        writeln!(o, "# HELP {name} {help}")?;
        writeln!(o, "# TYPE {name} gauge")?;
        for (site, s) in e.sites() {
            for t in s.targets.iter() {
                let v = match i {
                    0 => t.health.map(|_| t.loss),
                    // Prometheus's base unit: seconds.
                    1 => t.rtt_p50_ms.map(|ms| ms / 1000.0),
                    2 => t.jitter_ms.map(|ms| ms / 1000.0),
                    _ => t.mos,
                };
                let Some(v) = v else { continue };
                writeln!(
                    o,
                    "{name}{{site=\"{site}\",target=\"{}\",layer=\"{}\",provider=\"{}\"}} {v}",
                    t.target,
                    t.layer,
                    esc(t.provider.as_ref().map_or("", |p| p.as_str()))
                )?;
            }
        }
    }
    Ok(())
}
