//! Every MQTT topic of DESIGN.md, built and parsed in one place.
//!
//! Topics live under a configurable prefix (default `faultline`) followed by the
//! contract version `v1`. Parsing checks each id segment, so a topic that parses names
//! only valid ids.

use crate::id::{Id, IdError};

/// The default topic prefix.
pub const DEFAULT_PREFIX: &str = "faultline";
const VERSION: &str = "v1";

/// A parsed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    Report { site: Id },
    ReportJson { site: Id },
    Status { site: Id },
    SiteState { site: Id },
    ProviderState { provider: Id },
    IspState { isp: Id },
    RouteState { isp: Id, provider: Id },
    Incidents,
    Metrics { site: Id, target: Id },
    CollectorStatus,
    Config { site: Id },
    ConfigStatus { site: Id },
}

/// Why a topic string is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} is not under this prefix")]
    ForeignPrefix(String),
    #[error("topic {0:?} is not a Faultline topic")]
    Unknown(String),
    #[error("topic {topic:?}: {err}")]
    BadId { topic: String, err: IdError },
    #[error("prefix {0:?} must be non-empty '/'-separated segments of A-Z a-z 0-9 . _ -")]
    BadPrefix(String),
}

/// Topic builder and parser for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `{prefix}/v1`
    root: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            root: format!("{DEFAULT_PREFIX}/{VERSION}"),
        }
    }
}

impl Topics {
    /// Topics under `prefix` (e.g. `faultline` or `msp1/faultline`).
    pub fn new(prefix: &str) -> Result<Self, TopicError> {
        if prefix.is_empty() || prefix.split('/').any(|seg| Id::validate(seg).is_err()) {
            return Err(TopicError::BadPrefix(prefix.to_owned()));
        }
        Ok(Self {
            root: format!("{prefix}/{VERSION}"),
        })
    }

    fn sites(&self, site: &Id, leaf: &str) -> String {
        format!("{}/sites/{site}/{leaf}", self.root)
    }

    pub fn report(&self, site: &Id) -> String {
        self.sites(site, "report")
    }

    pub fn report_json(&self, site: &Id) -> String {
        self.sites(site, "report/json")
    }

    pub fn status(&self, site: &Id) -> String {
        self.sites(site, "status")
    }

    /// A site's central config (retained).
    pub fn config(&self, site: &Id) -> String {
        self.sites(site, "config")
    }

    /// The agent's answer to its central config (retained).
    pub fn config_status(&self, site: &Id) -> String {
        self.sites(site, "config/status")
    }

    pub fn site_state(&self, site: &Id) -> String {
        format!("{}/state/sites/{site}", self.root)
    }

    pub fn provider_state(&self, provider: &Id) -> String {
        format!("{}/state/providers/{provider}", self.root)
    }

    pub fn isp_state(&self, isp: &Id) -> String {
        format!("{}/state/isps/{isp}", self.root)
    }

    /// A route's verdict: the path between one ISP and one provider.
    pub fn route_state(&self, isp: &Id, provider: &Id) -> String {
        format!("{}/state/routes/{isp}/{provider}", self.root)
    }

    /// The retained state topic of `v`: by its scope, and for a route by its ISP
    /// and provider.
    pub fn verdict(&self, v: &crate::Verdict) -> String {
        use crate::Scope;
        if let Some((isp, provider)) = v.id.route() {
            return self.route_state(isp, provider);
        }
        let id = v.id.as_str();
        let kind = match v.scope {
            Scope::Site => "sites",
            Scope::Isp => "isps",
            Scope::Provider => "providers",
            Scope::Route => "routes",
        };
        format!("{}/state/{kind}/{id}", self.root)
    }

    pub fn incidents(&self) -> String {
        format!("{}/events/incidents", self.root)
    }

    pub fn metrics(&self, site: &Id, target: &Id) -> String {
        format!("{}/metrics/{site}/{target}", self.root)
    }

    pub fn collector_status(&self) -> String {
        format!("{}/collector/status", self.root)
    }

    /// Filter matching every site's postcard reports.
    pub fn all_reports(&self) -> String {
        format!("{}/sites/+/report", self.root)
    }

    /// Filter matching every site's JSON reports.
    pub fn all_reports_json(&self) -> String {
        format!("{}/sites/+/report/json", self.root)
    }

    /// Filter matching every site's status.
    pub fn all_statuses(&self) -> String {
        format!("{}/sites/+/status", self.root)
    }

    /// Filter matching every site's central config.
    pub fn all_configs(&self) -> String {
        format!("{}/sites/+/config", self.root)
    }

    /// Filter matching every agent's answer to its central config.
    pub fn all_config_statuses(&self) -> String {
        format!("{}/sites/+/config/status", self.root)
    }

    /// Filter matching every retained verdict.
    pub fn all_states(&self) -> String {
        format!("{}/state/#", self.root)
    }

    /// `filter` as an MQTT v5 shared subscription of `group`.
    pub fn shared(group: &Id, filter: &str) -> String {
        format!("$share/{group}/{filter}")
    }

    /// Parses a topic under this prefix.
    pub fn parse(&self, topic: &str) -> Result<Topic, TopicError> {
        let rest = topic
            .strip_prefix(self.root.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::ForeignPrefix(topic.to_owned()))?;
        let id = |s: &str| {
            Id::new(s).map_err(|err| TopicError::BadId {
                topic: topic.to_owned(),
                err,
            })
        };
        let segs: Vec<&str> = rest.split('/').collect();
        Ok(match segs.as_slice() {
            ["sites", site, "report"] => Topic::Report { site: id(site)? },
            ["sites", site, "report", "json"] => Topic::ReportJson { site: id(site)? },
            ["sites", site, "status"] => Topic::Status { site: id(site)? },
            ["sites", site, "config"] => Topic::Config { site: id(site)? },
            ["sites", site, "config", "status"] => Topic::ConfigStatus { site: id(site)? },
            ["state", "sites", site] => Topic::SiteState { site: id(site)? },
            ["state", "providers", p] => Topic::ProviderState { provider: id(p)? },
            ["state", "isps", isp] => Topic::IspState { isp: id(isp)? },
            ["state", "routes", isp, p] => Topic::RouteState {
                isp: id(isp)?,
                provider: id(p)?,
            },
            ["events", "incidents"] => Topic::Incidents,
            ["metrics", site, target] => Topic::Metrics {
                site: id(site)?,
                target: id(target)?,
            },
            ["collector", "status"] => Topic::CollectorStatus,
            _ => return Err(TopicError::Unknown(topic.to_owned())),
        })
    }

    /// Builds the topic string for a parsed topic.
    pub fn build(&self, topic: &Topic) -> String {
        match topic {
            Topic::Report { site } => self.report(site),
            Topic::ReportJson { site } => self.report_json(site),
            Topic::Status { site } => self.status(site),
            Topic::SiteState { site } => self.site_state(site),
            Topic::ProviderState { provider } => self.provider_state(provider),
            Topic::IspState { isp } => self.isp_state(isp),
            Topic::RouteState { isp, provider } => self.route_state(isp, provider),
            Topic::Incidents => self.incidents(),
            Topic::Metrics { site, target } => self.metrics(site, target),
            Topic::CollectorStatus => self.collector_status(),
            Topic::Config { site } => self.config(site),
            Topic::ConfigStatus { site } => self.config_status(site),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    #[test]
    fn builds_the_topics_of_design_md() {
        let t = Topics::default();
        let s = id("acme-hq");
        assert_eq!(t.report(&s), "faultline/v1/sites/acme-hq/report");
        assert_eq!(t.report_json(&s), "faultline/v1/sites/acme-hq/report/json");
        assert_eq!(t.status(&s), "faultline/v1/sites/acme-hq/status");
        assert_eq!(t.site_state(&s), "faultline/v1/state/sites/acme-hq");
        assert_eq!(
            t.provider_state(&id("voipco")),
            "faultline/v1/state/providers/voipco"
        );
        assert_eq!(
            t.isp_state(&id("Comcast")),
            "faultline/v1/state/isps/Comcast"
        );
        assert_eq!(t.incidents(), "faultline/v1/events/incidents");
        assert_eq!(t.metrics(&s, &id("gw")), "faultline/v1/metrics/acme-hq/gw");
        assert_eq!(t.collector_status(), "faultline/v1/collector/status");
        assert_eq!(t.all_reports(), "faultline/v1/sites/+/report");
        assert_eq!(t.config(&s), "faultline/v1/sites/acme-hq/config");
        assert_eq!(
            t.config_status(&s),
            "faultline/v1/sites/acme-hq/config/status"
        );
        assert_eq!(t.all_configs(), "faultline/v1/sites/+/config");
        assert_eq!(
            t.all_config_statuses(),
            "faultline/v1/sites/+/config/status"
        );
        assert_eq!(
            Topics::shared(&id("collectors"), &t.all_reports()),
            "$share/collectors/faultline/v1/sites/+/report"
        );
    }

    #[test]
    fn every_built_topic_parses_back() {
        let t = Topics::new("msp1/faultline").unwrap();
        let all = [
            Topic::Report { site: id("a") },
            Topic::ReportJson { site: id("a") },
            Topic::Status { site: id("a") },
            Topic::SiteState { site: id("a") },
            Topic::ProviderState { provider: id("p") },
            Topic::IspState { isp: id("i") },
            Topic::Incidents,
            Topic::Metrics {
                site: id("a"),
                target: id("gw"),
            },
            Topic::CollectorStatus,
            Topic::Config { site: id("a") },
            Topic::ConfigStatus { site: id("a") },
        ];
        for topic in all {
            assert_eq!(t.parse(&t.build(&topic)).unwrap(), topic);
        }
    }

    #[test]
    fn rejects_foreign_unknown_and_bad_ids() {
        let t = Topics::default();
        assert!(matches!(
            t.parse("other/v1/sites/a/report"),
            Err(TopicError::ForeignPrefix(_))
        ));
        assert!(matches!(
            t.parse("faultline/v1/sites/a/bogus"),
            Err(TopicError::Unknown(_))
        ));
        assert!(matches!(
            t.parse("faultline/v1/sites//report"),
            Err(TopicError::BadId { .. })
        ));
        assert!(matches!(
            t.parse(&format!("faultline/v1/sites/{}/report", "x".repeat(65))),
            Err(TopicError::BadId { .. })
        ));
        assert!(matches!(
            t.parse("faultline/v1x/sites/a/report"),
            Err(TopicError::ForeignPrefix(_))
        ));
        assert!(Topics::new("").is_err());
        assert!(Topics::new("a/+").is_err());
        assert!(Topics::new("a//b").is_err());
    }
}
