//! The wire contract between Faultline's agents and collectors, and the measurement
//! math both sides share.
//!
//! Pure by design: nothing here opens a socket, spawns a task or reads a clock. Every
//! time-dependent call takes the time as an argument, so the same code runs in the
//! agent, the collector, `replay` and the tests alike.
//!
//! - [`id`]: validated identifiers for sites, targets, providers and ISPs.
//! - [`report`], [`state`]: the payloads of `../shared/DESIGN.md`, in their JSON form.
//! - [`metrics`]: the flat per-probe JSON of the metrics topic.
//! - [`wire`]: the versioned postcard envelope agents publish, with a size-capped decoder.
//! - [`topic`]: builders and parsers for every MQTT topic.
//! - [`summary`]: the site stage's per-site message to the fleet stage (versioned).
//! - [`reject`]: why the collector drops a message (its metrics labels).
//! - [`mqtt_url`]: the broker URL of both configs (`mqtt://`, `mqtts://`).
//! - [`measure`]: jitter, sequence tracking, latency summaries and the E-model.
//! - [`agent_config`]: the central agent config and the agent's answer to it.
//! - [`target`]: the typed target builder agent.toml, central config and collector.toml share.
//! - [`backoff`]: exponential backoff with jitter for retry loops (the caller draws and sleeps).

pub mod agent_config;
pub mod backoff;
pub mod id;
pub mod measure;
pub mod metrics;
pub mod mqtt_url;
pub mod reject;
pub mod report;
pub mod state;
pub mod summary;
pub mod target;
pub mod topic;
pub mod wire;

pub use agent_config::{AgentConfig, AgentConfigError, CentralConfig, ConfigState, ConfigStatus};
pub use backoff::{Backoff, BackoffError};
pub use id::{Id, IdError, Subject};
pub use metrics::MetricsJson;
pub use mqtt_url::{MqttUrl, MqttUrlError, MqttUrlErrorKind};
pub use reject::RejectReason;
pub use report::{HostHealth, Kind, Layer, ProbeResult, Report, RttStats};
pub use state::{
    Cause, CollectorStatus, Incident, IncidentEvent, IncidentEventKind, Maintenance, OfflineReason,
    Recommendation, Scope, State, Status, StatusState, Verdict,
};
pub use summary::{Health, OfflineWhy, SiteHealth, SiteSummary, SummaryKind};
pub use topic::{Topic, Topics};
pub use wire::{DecodeError, EncodeError, MAX_ENVELOPE_BYTES, WIRE_VERSION, decode, encode};
