//! Central agent config: the retained `AgentConfig` a collector publishes on
//! `sites/{site}/config`, and the `ConfigStatus` the agent answers on
//! `sites/{site}/config/status`.
//!
//! Targets take exactly the keys of an agent.toml `[[target]]` ([`Fields`]) and are
//! validated by the same builder ([`crate::target`]), so a target the collector's
//! `check` accepts is one the agent accepts. Validation is all-or-nothing: one bad
//! target rejects the whole config, and the error names the target and its key.
//! Pure: decoding and validation only; applying, storing and publishing are the
//! agent's and the collector's.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::target::{self, Fields, Target, Value};

/// Longest window an agent accepts (agent.toml's `window_seconds` too).
pub const MAX_WINDOW_SECONDS: u64 = 3600;
/// Most targets one central config may hold.
pub const MAX_TARGETS: usize = 64;
/// Largest `AgentConfig` payload accepted, bytes.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// A site's central config as it travels (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Grows with every change; an agent applies each version at most once.
    pub version: u64,
    /// Absent: the agent keeps its local `window_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u64>,
    /// The targets, as agent.toml `[[target]]` tables.
    #[serde(default)]
    pub targets: Vec<Fields>,
}

/// A validated central config: every target built, the window in range.
#[derive(Debug, Clone, PartialEq)]
pub struct CentralConfig {
    pub version: u64,
    pub window: Option<Duration>,
    pub targets: Vec<Target>,
}

/// Why a central config was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentConfigError {
    #[error("config is {0} bytes, more than {MAX_CONFIG_BYTES}")]
    TooLarge(usize),
    #[error("not an AgentConfig JSON object: {0}")]
    Malformed(String),
    #[error("window_seconds: {0} is out of range 1..={MAX_WINDOW_SECONDS}")]
    Window(u64),
    #[error("targets: {0} targets, at most {MAX_TARGETS}")]
    TooManyTargets(usize),
    /// `targets[1] (name "media").pps: expected an integer 1-1000, got 0`
    #[error("targets[{index}]{}.{field}: {message}", NameNote(name.as_deref()))]
    Target {
        index: usize,
        /// The target's `name` when it has a readable one.
        name: Option<String>,
        field: String,
        message: String,
    },
}

/// ` (name "x")` when the target has a name.
struct NameNote<'a>(Option<&'a str>);

impl fmt::Display for NameNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, " (name {n:?})"),
            None => Ok(()),
        }
    }
}

impl AgentConfig {
    /// Decodes a payload (size-capped JSON). Unknown keys are ignored, as in every
    /// JSON payload of the contract.
    pub fn decode(bytes: &[u8]) -> Result<Self, AgentConfigError> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(AgentConfigError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| AgentConfigError::Malformed(e.to_string()))
    }

    /// The payload's JSON.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data with string keys; Value serialises every variant: cannot fail.
        serde_json::to_vec(self).unwrap()
    }

    /// The version of a payload that may not decode, for the status of a rejection.
    pub fn version_of(bytes: &[u8]) -> Option<u64> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u64,
        }
        serde_json::from_slice::<Versioned>(bytes)
            .ok()
            .map(|v| v.version)
    }

    /// Validates everything: all targets build and no two share a name, or the
    /// first error, naming the target and key.
    pub fn validate(&self) -> Result<CentralConfig, AgentConfigError> {
        let window = match self.window_seconds {
            Some(s) if !(1..=MAX_WINDOW_SECONDS).contains(&s) => {
                return Err(AgentConfigError::Window(s));
            }
            Some(s) => Some(Duration::from_secs(s)),
            None => None,
        };
        if self.targets.len() > MAX_TARGETS {
            return Err(AgentConfigError::TooManyTargets(self.targets.len()));
        }
        let targets = target::build_all(&self.targets).map_err(|(index, e)| {
            let name = match self.targets[index].get("name") {
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            };
            AgentConfigError::Target {
                index,
                name,
                field: e.field,
                message: e.message,
            }
        })?;
        Ok(CentralConfig {
            version: self.version,
            window,
            targets,
        })
    }
}

/// Whether the agent applied a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigState {
    Applied,
    Rejected,
}

/// The agent's retained answer on `config/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub version: u64,
    pub state: ConfigState,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ConfigStatus {
    pub fn applied(version: u64) -> Self {
        Self {
            version,
            state: ConfigState::Applied,
            error: None,
        }
    }

    pub fn rejected(version: u64, error: &AgentConfigError) -> Self {
        Self {
            version,
            state: ConfigState::Rejected,
            error: Some(error.to_string()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Plain data with string keys: cannot fail.
        serde_json::to_vec(self).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN: &str = r#"{"version": 7, "window_seconds": 10, "targets": [
        {"name": "gw", "layer": "lan", "kind": "icmp", "host": "gateway"},
        {"name": "voipco-media", "layer": "provider", "provider": "voipco",
         "kind": "stamp", "host": "203.0.113.10:862", "pps": 20}]}"#;

    #[test]
    fn the_design_example_validates() {
        let c = AgentConfig::decode(DESIGN.as_bytes()).unwrap();
        let v = c.validate().unwrap();
        assert_eq!(v.version, 7);
        assert_eq!(v.window, Some(Duration::from_secs(10)));
        let names: Vec<&str> = v.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["gw", "voipco-media"]);
        // The JSON round-trips with the same keys.
        let again = AgentConfig::decode(&c.encode()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn a_bad_target_rejects_the_whole_config_naming_target_and_key() {
        let bad = DESIGN.replace("\"pps\": 20", "\"pps\": 0");
        let e = AgentConfig::decode(bad.as_bytes())
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "targets[1] (name \"voipco-media\").pps: expected an integer 1-1000, got 0"
        );
        let status = ConfigStatus::rejected(7, &e);
        let json = String::from_utf8(status.encode()).unwrap();
        assert!(json.starts_with(r#"{"version":7,"state":"rejected","error":"targets[1]"#));
    }

    #[test]
    fn window_and_shape_errors() {
        let e = AgentConfig::decode(br#"{"version": 1, "window_seconds": 0}"#)
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e, AgentConfigError::Window(0));
        assert!(matches!(
            AgentConfig::decode(br#"{"targets": []}"#),
            Err(AgentConfigError::Malformed(_))
        ));
        assert_eq!(
            AgentConfig::version_of(br#"{"version": 4, "targets": 1}"#),
            Some(4)
        );
        assert!(matches!(
            AgentConfig::decode(&vec![b' '; MAX_CONFIG_BYTES + 1]),
            Err(AgentConfigError::TooLarge(_))
        ));
        let empty = AgentConfig::decode(br#"{"version": 2}"#).unwrap();
        assert!(empty.validate().unwrap().targets.is_empty());
        assert_eq!(empty.encode(), br#"{"version":2,"targets":[]}"#);
    }

    #[test]
    fn applied_status_has_no_error_key() {
        assert_eq!(
            ConfigStatus::applied(3).encode(),
            br#"{"version":3,"state":"applied"}"#
        );
    }
}
