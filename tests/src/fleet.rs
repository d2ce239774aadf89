//! The fleet simulator: [`faultline_lab::fleet`]'s pure core (re-exported here:
//! [`Fleet`], [`Script`], [`Fault`]…) and its MQTT shell. [`publish`] sends what the
//! core makes over one MQTT connection (rumqttc on a current-thread tokio
//! runtime): each site's retained `Status`, then every window's reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use faultline_shared::Topics;

pub use faultline_lab::fleet::*;

/// Where and how [`publish`] sends.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// `mqtt://host:port` (no TLS in the test kit).
    pub url: String,
    /// Topic prefix, `faultline` by default.
    pub prefix: String,
    /// Windows to publish (sequence numbers `0..windows`).
    pub windows: u64,
    /// Pace windows `window_ms` apart as real agents would; false sends as fast as
    /// the broker acknowledges (ingest benchmarks).
    pub realtime: bool,
    /// Publish each site's retained `Status` first.
    pub statuses: bool,
}

/// What [`publish`] sent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PublishStats {
    pub reports: u64,
    pub report_bytes: u64,
    pub statuses: u64,
    pub elapsed: Duration,
}

impl PublishStats {
    pub fn reports_per_sec(&self) -> f64 {
        self.reports as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mean_report_bytes(&self) -> f64 {
        self.report_bytes as f64 / (self.reports.max(1)) as f64
    }
}

/// Splits `mqtt://host[:port]` into host and port (1883 by default), with the
/// configs' own parser; the test kit speaks no TLS.
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    let u = faultline_shared::MqttUrl::parse(url).map_err(|e| e.to_string())?;
    if u.tls {
        return Err(format!(
            "`{url}`: only mqtt:// URLs (no TLS in the test kit)"
        ));
    }
    Ok((u.host, u.port))
}

/// Publishes the fleet's statuses and reports over one MQTT connection (QoS 1) and
/// returns once the broker has acknowledged everything.
pub fn publish(fleet: &mut Fleet, opts: &PublishOptions) -> anyhow::Result<PublishStats> {
    use anyhow::Context;
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let (host, port) = parse_mqtt_url(&opts.url).map_err(anyhow::Error::msg)?;
    let topics = Topics::new(&opts.prefix).context("topic prefix")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        let mut mo = MqttOptions::new(
            format!("faultline-fleet-{}", std::process::id()),
            host,
            port,
        );
        mo.set_keep_alive(Duration::from_secs(30))
            .set_inflight(1000)
            .set_max_packet_size(64 * 1024, 64 * 1024);
        let (client, mut eventloop) = AsyncClient::new(mo, 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let poller = {
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => return e,
                    }
                }
            })
        };
        let mut stats = PublishStats::default();
        let t0 = Instant::now();
        if opts.statuses {
            let statuses: Vec<(String, Vec<u8>)> = fleet
                .sites()
                .iter()
                .map(|s| {
                    let json = serde_json::to_vec(&fleet.status(s))?;
                    Ok((topics.status(&s.id), json))
                })
                .collect::<Result<_, serde_json::Error>>()?;
            for (topic, json) in statuses {
                client.publish(topic, QoS::AtLeastOnce, true, json).await?;
                stats.statuses += 1;
            }
        }
        let window = Duration::from_millis(u64::from(fleet.window_ms()));
        for seq in 0..opts.windows {
            if opts.realtime {
                let due = t0 + window.mul_f64(seq as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            for report in fleet.window(seq) {
                let bytes = faultline_shared::encode(&report)?;
                stats.reports += 1;
                stats.report_bytes += bytes.len() as u64;
                client
                    .publish(topics.report(&report.site), QoS::AtLeastOnce, false, bytes)
                    .await?;
            }
            if poller.is_finished() {
                break;
            }
        }
        let total = stats.reports + stats.statuses;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::Relaxed) < total {
            if poller.is_finished() {
                let err = poller.await.context("MQTT event loop")?;
                anyhow::bail!("MQTT connection to {}: {err}", opts.url);
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "broker acknowledged {} of {total} messages within 60 s",
                    acked.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stats.elapsed = t0.elapsed();
        let _ = client.disconnect().await;
        poller.abort();
        Ok(stats)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls() {
        assert_eq!(
            parse_mqtt_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://broker").unwrap(),
            ("broker".into(), 1883)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://[::1]:1885").unwrap(),
            ("::1".into(), 1885)
        );
        assert!(parse_mqtt_url("mqtts://broker:8883").is_err());
        assert!(parse_mqtt_url("mqtt://:1883").is_err());
    }
}
