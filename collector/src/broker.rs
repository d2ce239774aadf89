//! The embedded MQTT broker `run` starts when collector.toml names no broker, so one
//! box works with nothing else installed.
//!
//! It is rumqttd (the broker from the rumqttc authors): pure Rust, no system
//! libraries, speaks MQTT 3.1.1 and 5 with retained messages and last wills. It
//! blocks the thread it runs on and keeps nothing on disk, so it runs on its own
//! thread and a broker restart loses retained messages and queued sessions — fine for
//! a single box or a trial, not for production (use Mosquitto: see README). rumqttd
//! serves one protocol per listener: agents and tools connect to `listen`
//! (MQTT 3.1.1, default 127.0.0.1:1883); the collector's own MQTT 5 client uses
//! `listen_v5` (default 127.0.0.1:1884).

use std::collections::HashMap;
use std::net::SocketAddr;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

fn server(name: &str, listen: SocketAddr, max_payload: usize) -> ServerSettings {
    ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max_payload,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    }
}

/// Starts the broker on a thread of its own; returns once it has been spawned.
pub fn start(listen: SocketAddr, listen_v5: SocketAddr, max_payload: usize) -> anyhow::Result<()> {
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 20_010,
            max_outgoing_packet_count: 1000,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([(
            "v4".to_owned(),
            server("v4", listen, max_payload),
        )])),
        v5: Some(HashMap::from([(
            "v5".to_owned(),
            server("v5", listen_v5, max_payload),
        )])),
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })?;
    Ok(())
}
