//! Probes: one per configured target, each measuring for one window and summarising
//! into a `ProbeResult`. OWNED BY THE PROBES WORK (see the interface below; bodies to do).
//!
//! Interface the run loop relies on:
//! - [`RawTarget`]: one `[[target]]` table as deserialised by serde (with spans).
//! - [`Target::from_raw`]: validates it into a [`Target`] (errors name field and line).
//! - [`Prober::new`] / [`Prober::measure`]: long-lived per target; `measure(window)`
//!   probes for at most `window` and returns that window's `ProbeResult`, never
//!   failing (a failure is a result with `error` set).

use std::time::Duration;

use faultline_shared::{Id, Kind, Layer, ProbeResult};

use crate::config_error::ConfigError;

/// One `[[target]]` table, raw. Kind-specific options are kept for `Target::from_raw`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct RawTarget {
    pub name: toml::Spanned<String>,
    pub layer: toml::Spanned<String>,
    #[serde(default)]
    pub provider: Option<toml::Spanned<String>>,
    pub kind: toml::Spanned<String>,
    pub host: toml::Spanned<String>,
    /// Everything else in the table (kind-specific options).
    #[serde(flatten)]
    pub options: toml::Table,
}

/// A validated target: cannot hold a bad state.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: Id,
    pub layer: Layer,
    pub provider: Option<Id>,
    pub kind: Kind,
    // kind-specific, validated spec to be added by the probes work
}

impl Target {
    /// Validates `raw` (the `index`-th target of the file at `path`, whose text is
    /// `src`); `gateway` is the default gateway's address when `host = "gateway"`.
    pub fn from_raw(
        _raw: &RawTarget,
        _index: usize,
        _path: &std::path::Path,
        _src: &str,
        _gateway: Option<std::net::IpAddr>,
    ) -> Result<Target, ConfigError> {
        todo!("probes work")
    }
}

/// Measures one target, window after window.
#[derive(Debug)]
pub struct Prober {
    target: Target,
}

impl Prober {
    pub async fn new(target: Target) -> anyhow::Result<Self> {
        Ok(Self { target })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Probes for at most `window` and returns the summary.
    pub async fn measure(&mut self, _window: Duration) -> ProbeResult {
        todo!("probes work")
    }
}
