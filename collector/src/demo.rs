//! `demo`: the collector with a simulated fleet, for a first look at the dashboard.
//! Six sites on three ISPs report every window; a script cycles through a provider
//! outage (with a healthy alternate), a quiet spell, an ISP degradation and a LAN
//! fault. Uses the embedded broker unless the config names one.

use std::time::Duration;

use faultline_shared::{HostHealth, Id, Kind, Layer, ProbeResult, Report, RttStats, Status};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};

use crate::config::Config;
use crate::run::now_ms;

const SITES: &[(&str, &str)] = &[
    ("acme-hq", "Comcast"),
    ("bobs-bakery", "Comcast"),
    ("city-dental", "Verizon"),
    ("dunn-law", "Verizon"),
    ("elm-clinic", "Lumen"),
    ("fox-motors", "Lumen"),
];

/// What goes wrong in window `w` of the 60-window script.
fn fault(w: u64, site: usize) -> (bool, bool, bool) {
    // (lan down, isp lossy, voipco down)
    match w % 60 {
        10..=19 => (false, false, true),
        30..=39 => (false, site == 2 || site == 3, false),
        45..=52 => (site == 4, false, false),
        _ => (false, false, false),
    }
}

fn probe(
    target: &str,
    layer: Layer,
    provider: Option<&str>,
    kind: Kind,
    down: bool,
    lossy: bool,
) -> ProbeResult {
    let id = |s: &str| Id::new(s).expect("demo ids are valid");
    let mut p = ProbeResult::new(id(target), layer, provider.map(id), kind);
    p.sent = if kind == Kind::Stamp { 250 } else { 10 };
    p.received = if down {
        0
    } else if lossy {
        p.sent - p.sent / 10
    } else {
        p.sent
    };
    if !down {
        let base = match layer {
            Layer::Lan => 0.6,
            Layer::Isp => 6.0,
            _ => 21.0,
        } + fastrand::f64() * 2.0;
        p.rtt_ms = Some(RttStats {
            min: base * 0.9,
            p50: base,
            avg: base * 1.05,
            p95: base * 1.4,
            max: base * 2.0,
        });
        p.jitter_ms = Some(0.3 + fastrand::f64());
        if kind == Kind::Stamp {
            p.mos = Some(if lossy { 3.2 } else { 4.3 });
        }
    }
    p
}

async fn fleet(host: String, port: u16, window_ms: u64, prefix: faultline_shared::Topics) {
    let mut opts = MqttOptions::new("faultline-demo-fleet", host, port);
    opts.set_keep_alive(Duration::from_secs(15));
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let boot = fastrand::u32(..);
    for (site, isp) in SITES {
        let s = Id::new(*site).expect("demo ids are valid");
        let status = Status::online(
            boot,
            env!("CARGO_PKG_VERSION"),
            Id::new(*isp).expect("valid"),
            None,
        );
        let _ = client
            .publish(
                prefix.status(&s),
                QoS::AtLeastOnce,
                true,
                serde_json::to_vec(&status).unwrap_or_default(),
            )
            .await;
    }
    for w in 0u64.. {
        for (i, (site, _)) in SITES.iter().enumerate() {
            let (lan, isp, voipco) = fault(w, i);
            let s = Id::new(*site).expect("demo ids are valid");
            let report = Report {
                v: 1,
                site: s.clone(),
                boot,
                seq: w,
                start_ms: now_ms().saturating_sub(window_ms),
                window_ms: window_ms as u32,
                host: Some(HostHealth {
                    cpu_pct: 8.0 + fastrand::f64() * 5.0,
                    mem_pct: 40.0,
                    load1: 0.1,
                }),
                probes: vec![
                    probe("gw", Layer::Lan, None, Kind::Icmp, lan, false),
                    probe("isp-dns", Layer::Isp, None, Kind::Dns, lan, isp),
                    probe("anchor", Layer::Internet, None, Kind::Icmp, lan, isp),
                    probe(
                        "voipco-media",
                        Layer::Provider,
                        Some("voipco"),
                        Kind::Stamp,
                        lan || voipco,
                        isp,
                    ),
                    probe(
                        "voipco-sip",
                        Layer::Provider,
                        Some("voipco"),
                        Kind::Sip,
                        lan || voipco,
                        false,
                    ),
                    probe(
                        "voipco2-media",
                        Layer::Provider,
                        Some("voipco2"),
                        Kind::Stamp,
                        lan,
                        isp,
                    ),
                ],
            };
            let _ = client
                .publish(
                    prefix.report_json(&s),
                    QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&report).unwrap_or_default(),
                )
                .await;
        }
        tokio::time::sleep(Duration::from_millis(window_ms)).await;
    }
}

/// Runs the collector and the simulated fleet until interrupted.
pub fn demo(mut cfg: Config, window_given: bool) -> anyhow::Result<()> {
    if !window_given {
        cfg.window_ms = 2_000;
    }
    if cfg.providers.is_empty() {
        let id = |s: &str| Id::new(s).expect("valid");
        cfg.providers.insert(id("voipco"), Some(id("voipco2")));
        cfg.providers.insert(id("voipco2"), None);
    }
    let (host, port) = match &cfg.mqtt {
        Some(m) => (m.host.clone(), m.port),
        None => (
            cfg.broker_listen_v5.ip().to_string(),
            cfg.broker_listen_v5.port(),
        ),
    };
    eprintln!(
        "demo: 6 simulated sites, a {} ms window; dashboard on http://{}/",
        cfg.window_ms, cfg.http_listen
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let topics = cfg.topics.clone();
    let window = cfg.window_ms;
    rt.block_on(async move {
        tokio::spawn(fleet(host, port, window, topics));
        crate::run::serve(cfg).await
    })
}
