//! faultline-collector as a library: the binary's parts, exposed for its tests,
//! examples and benchmarks.
//!
//! - [`engine`]: the sans-IO diagnosis engine (site stage, fleet stage), one owner.
//! - [`config`]: collector.toml, validated.
//! - [`fleet_config`]: which central targets each site's agent gets, and when to publish.
//! - [`replay`]: the engine driven by a file's clock.
//! - [`service`], [`http`], [`store`]: the service shell — MQTT, HTTP, SQLite history.
//! - [`report`]: provider availability from history.
//! - [`alerts`]: signed webhooks and Alertmanager, through an on-disk outbox.
//! - [`maintenance`]: planned-work windows (no alerts, left out of availability).
//! - [`link`]: how the collector reaches its broker (TLS, logins, the embedded one).
//! - [`snapshot`]: the state pages read, published by the engine's owner.
//! - [`supervise`]: a panic anywhere ends the process (so systemd restarts it).
//!
//! The `demo` subcommand belongs to the binary (`src/demo.rs`); its relays and
//! simulated fleet come from `faultline-lab`, never from the test kit.

pub mod alerts;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod fleet_config;
pub mod http;
pub mod link;
pub mod maintenance;
pub mod passwd;
pub mod replay;
pub mod report;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod supervise;

/// The engine's settings from a validated config.
pub fn engine_config(c: &config::Config) -> engine::EngineConfig {
    engine::EngineConfig {
        window_ms: c.window_ms,
        thresholds: c.thresholds,
        providers: c.providers.clone(),
        max_payload_bytes: c.max_payload_bytes,
        ..engine::EngineConfig::default()
    }
}
