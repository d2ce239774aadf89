//! The JSON payloads around reports: an agent's retained `Status` (and last will), the
//! collector's own `CollectorStatus`, its `Verdict`s and `IncidentEvent`s. Field for field as DESIGN.md gives them.

use serde::{Deserialize, Serialize};

use crate::id::{Id, Subject};

/// An agent's retained presence on `.../sites/{site}/status`; also its last will.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: StatusState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isp: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<OfflineReason>,
}

impl Status {
    /// What an agent publishes (retained) once connected.
    pub fn online(boot: u32, version: &str, isp: Id, customer: Option<String>) -> Self {
        Self {
            state: StatusState::Online,
            boot: Some(boot),
            version: Some(version.to_owned()),
            isp: Some(isp),
            customer,
            reason: None,
        }
    }

    /// The last will (`Lost`) or the clean-stop message (`Shutdown`).
    pub fn offline(reason: OfflineReason) -> Self {
        Self {
            state: StatusState::Offline,
            boot: None,
            version: None,
            isp: None,
            customer: None,
            reason: Some(reason),
        }
    }
}

/// The collector's retained presence on `.../collector/status`
/// (`{"state":"online","version":"0.1.0"}`); the offline form is also its last will.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorStatus {
    pub state: StatusState,
    /// The collector's version (`CARGO_PKG_VERSION`).
    pub version: String,
}

impl CollectorStatus {
    /// What the collector publishes (retained) once connected.
    pub fn online(version: &str) -> Self {
        Self {
            state: StatusState::Online,
            version: version.to_owned(),
        }
    }

    /// Its last will, and what it publishes on a clean stop.
    pub fn offline(version: &str) -> Self {
        Self {
            state: StatusState::Offline,
            version: version.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    Online,
    Offline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflineReason {
    /// The broker published the last will: the agent vanished.
    Lost,
    /// The agent stopped cleanly.
    Shutdown,
}

/// What a verdict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Site,
    Isp,
    Provider,
    /// The path between one ISP and one provider (a peering or routing fault).
    Route,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Site => "site",
            Scope::Isp => "isp",
            Scope::Provider => "provider",
            Scope::Route => "route",
        }
    }
}

/// A verdict's state. Sites use ok | degraded | down | offline; ISPs and providers use
/// ok | degraded | outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    Degraded,
    Down,
    Offline,
    Outage,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Degraded => "degraded",
            State::Down => "down",
            State::Offline => "offline",
            State::Outage => "outage",
        }
    }

    pub fn is_ok(self) -> bool {
        self == State::Ok
    }
}

/// Where the fault lies, bottom-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    None,
    Lan,
    Isp,
    Host,
    Path,
    Provider,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::None => "none",
            Cause::Lan => "lan",
            Cause::Isp => "isp",
            Cause::Host => "host",
            Cause::Path => "path",
            Cause::Provider => "provider",
        }
    }
}

/// The collector's judgement of one site, ISP, provider or route, retained on its
/// state topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub at_ms: u64,
    pub scope: Scope,
    /// The site, ISP or provider id; for a route `"{isp}~{provider}"`.
    pub id: Subject,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// A route's ISP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isp: Option<Id>,
    /// The provider a site's `path` or `provider` cause is about; a route's provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Id>,
    /// Affected sites (ISP and provider verdicts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<Recommendation>,
    /// Present while the subject (or the provider, ISP or route its cause points
    /// at) is in a maintenance window: the verdict stands, nobody is alerted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
}

/// A verdict's maintenance window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// When the window ends (epoch milliseconds).
    pub until_ms: u64,
}

/// What the MSP should do about a provider fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recommendation {
    pub action: Action,
    pub to: Id,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Failover,
}

/// Published on `.../events/incidents` whenever an incident opens, changes or closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentEvent {
    pub event: IncidentEventKind,
    pub incident: Incident,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentEventKind {
    Opened,
    Updated,
    Closed,
}

/// A fault with a stable id, from opening to closing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub scope: Scope,
    pub target_id: Subject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    pub state: State,
    pub opened_ms: u64,
    #[serde(default)]
    pub closed_ms: Option<u64>,
    #[serde(default)]
    pub sites: Vec<Id>,
}
