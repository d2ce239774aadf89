//! Central agent config, the collector's side (sans-IO): which `[[fleet.target]]`s
//! each site gets ([`FleetTarget`]), and when a site's `AgentConfig` must be
//! published and with which version ([`SiteConfigs`]).
//!
//! What the broker holds is the record: the publishing connection subscribes to
//! every site's retained config and feeds what it sees to [`SiteConfigs::seen`], so
//! a restarted collector (or a second one on the same broker) knows each site's
//! version and targets without a table of its own. Versions only grow: a new one is
//! above the broker's and this process's last, and at least the current Unix time in
//! seconds, so even a broker that lost its retained messages gets a version above
//! any an agent applied before. A site gets a config when its resolved targets differ
//! from the broker's copy; a site that matches no target gets one (empty) only if the
//! broker holds a non-empty one for it, so a removed target is removed.
//!
//! This module publishes nothing and reads no clock: the shell in
//! `service::site_config` does.

use std::collections::BTreeMap;

use faultline_shared::target::Fields;
use faultline_shared::{AgentConfig, Id};

/// One `[[fleet.target]]`: the target's keys (validated by the agent's rules) and the
/// sites it goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetTarget {
    pub name: Id,
    /// Exactly the keys of an agent.toml `[[target]]` (without `sites`).
    pub fields: Fields,
    /// Site ids or glob patterns (`*`, `?`, `[...]`); any match selects the site.
    pub sites: Vec<glob::Pattern>,
}

impl FleetTarget {
    pub fn matches(&self, site: &Id) -> bool {
        self.sites.iter().any(|p| p.matches(site.as_str()))
    }
}

/// The targets `site` gets, in file order.
pub fn resolve(targets: &[FleetTarget], site: &Id) -> Vec<Fields> {
    targets
        .iter()
        .filter(|t| t.matches(site))
        .map(|t| t.fields.clone())
        .collect()
}

/// After replacing another publisher's config for a site, seconds before the next
/// replacement that a config seen on the broker triggers.
pub const HOLD_S: u64 = 30;

/// A config to publish (retained) on `site`'s config topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub site: Id,
    pub config: AgentConfig,
}

/// What the collector knows of one site's config on the broker.
#[derive(Debug, Clone, Default)]
struct Known {
    version: u64,
    targets: Option<Vec<Fields>>,
    /// A config of another publisher is not replaced again before then (seconds).
    hold_until: u64,
}

/// Every site's config: desired (from the fleet targets) against the broker's.
#[derive(Debug, Default)]
pub struct SiteConfigs {
    targets: Vec<FleetTarget>,
    sites: BTreeMap<Id, Known>,
    last_version: u64,
    /// False until the broker's retained configs had their chance to arrive: no
    /// publishing before, so a restart does not bump every site's version.
    ready: bool,
}

impl SiteConfigs {
    pub fn new(targets: Vec<FleetTarget>) -> Self {
        Self {
            targets,
            ..Self::default()
        }
    }

    /// Sites known so far.
    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// A site the collector learned of (history, a status, a report).
    pub fn site(&mut self, site: Id, now_s: u64) -> Option<Publish> {
        self.sites.entry(site.clone()).or_default();
        self.due(&site, now_s)
    }

    /// A config seen on the broker (a retained copy, or our own coming back). An
    /// older version than known is ignored; one that differs from what the site
    /// should have is replaced.
    ///
    /// A newer version than known is another publisher's (a second collector, a
    /// tool): replaced at once, then not again for [`HOLD_S`] (two publishers that
    /// disagree then take turns at that pace, not in a tight loop); [`Self::recheck`]
    /// and reloads still replace it.
    pub fn seen(&mut self, site: Id, payload: &[u8], now_s: u64) -> Option<Publish> {
        let known = self.sites.entry(site.clone()).or_default();
        let foreign = if payload.is_empty() {
            // A cleared topic: nothing there.
            known.targets = None;
            false
        } else {
            match AgentConfig::decode(payload) {
                Ok(c) if c.version >= known.version => {
                    let newer = c.version > known.version;
                    known.version = c.version;
                    known.targets = Some(c.targets);
                    newer
                }
                Ok(_) => return None,
                Err(e) => {
                    tracing::debug!(%site, "unreadable config on the broker: {e}");
                    known.version = known
                        .version
                        .max(AgentConfig::version_of(payload).unwrap_or(0));
                    known.targets = None;
                    true
                }
            }
        };
        if foreign && now_s < known.hold_until {
            tracing::debug!(%site, "another publisher's config: replaced again later");
            return None;
        }
        let publish = self.due(&site, now_s);
        if foreign && publish.is_some() {
            tracing::warn!(%site, "a config not published by this collector was replaced");
            if let Some(known) = self.sites.get_mut(&site) {
                known.hold_until = now_s + HOLD_S;
            }
        }
        publish
    }

    /// Publishes what differs from the broker's (run now and then, it replaces
    /// another publisher's config held back by [`Self::seen`]).
    pub fn recheck(&mut self, now_s: u64) -> Vec<Publish> {
        self.all_due(now_s)
    }

    /// The subscription to the config topics is (again) in place: forget what the
    /// broker was known to hold (a broker may come back without its retained
    /// messages) and hold publishing until its copies had their chance to arrive.
    pub fn resubscribed(&mut self) {
        self.ready = false;
        for known in self.sites.values_mut() {
            known.targets = None;
        }
    }

    /// The broker's retained configs are in: publish what differs.
    pub fn ready(&mut self, now_s: u64) -> Vec<Publish> {
        self.ready = true;
        self.all_due(now_s)
    }

    /// New fleet targets (a reload): publish for every site whose targets changed.
    pub fn reload(&mut self, targets: Vec<FleetTarget>, now_s: u64) -> Vec<Publish> {
        self.targets = targets;
        self.all_due(now_s)
    }

    fn all_due(&mut self, now_s: u64) -> Vec<Publish> {
        let sites: Vec<Id> = self.sites.keys().cloned().collect();
        sites
            .into_iter()
            .filter_map(|s| self.due(&s, now_s))
            .collect()
    }

    /// The config to publish for `site`, when the broker's differs from it.
    fn due(&mut self, site: &Id, now_s: u64) -> Option<Publish> {
        if !self.ready {
            return None;
        }
        let want = resolve(&self.targets, site);
        // Present: `site` and `seen` insert before calling.
        let known = self.sites.get_mut(site)?;
        let stale = match &known.targets {
            None => !want.is_empty(),
            Some(have) => *have != want,
        };
        if !stale {
            return None;
        }
        let version = (known.version.max(self.last_version) + 1).max(now_s);
        self.last_version = version;
        known.version = version;
        known.targets = Some(want.clone());
        Some(Publish {
            site: site.clone(),
            config: AgentConfig {
                version,
                window_seconds: None,
                targets: want,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_shared::target::Value;

    #[test]
    fn answers_count_each_rejection_once_and_clear_when_applied() {
        let a = Answers::default();
        let site = Id::new("acme-hq").unwrap();
        let rejected = br#"{"version": 7, "state": "rejected", "error": "targets[0].pps"}"#;
        assert!(
            a.record(site.clone(), br#"{"version": 6, "state": "applied"}"#)
                .is_none()
        );
        assert_eq!(a.record(site.clone(), rejected).unwrap().version, 7);
        assert!(
            a.record(site.clone(), rejected).is_none(),
            "the same answer again"
        );
        assert!(a.record(site.clone(), b"not json").is_none());
        assert_eq!((a.rejections(), a.rejected().len()), (1, 1));
        a.record(site.clone(), br#"{"version": 8, "state": "applied"}"#);
        assert_eq!((a.rejections(), a.rejected().len()), (1, 0));
    }

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    fn target(name: &str, sites: &[&str]) -> FleetTarget {
        let mut fields = Fields::new();
        for (k, v) in [
            ("name", name),
            ("layer", "lan"),
            ("kind", "tcp"),
            ("host", "127.0.0.1:80"),
        ] {
            fields.insert(k, Value::String(v.into()));
        }
        FleetTarget {
            name: id(name),
            fields,
            sites: sites
                .iter()
                .map(|p| glob::Pattern::new(p).unwrap())
                .collect(),
        }
    }

    fn names(p: &Publish) -> Vec<String> {
        p.config
            .targets
            .iter()
            .map(|f| match f.get("name") {
                Some(Value::String(s)) => s.clone(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn patterns_pick_the_sites() {
        let ts = [target("a", &["*"]), target("b", &["acme-*", "bobs"])];
        assert_eq!(resolve(&ts, &id("acme-hq")).len(), 2);
        assert_eq!(resolve(&ts, &id("bobs")).len(), 2);
        assert_eq!(resolve(&ts, &id("city")).len(), 1);
    }

    #[test]
    fn publishes_once_ready_and_only_what_changed() {
        let mut c = SiteConfigs::new(vec![target("a", &["acme-*"])]);
        assert_eq!(c.site(id("acme-hq"), 100), None, "not before ready");
        assert_eq!(c.site(id("bobs"), 100), None);
        let first = c.ready(100);
        assert_eq!(
            first.len(),
            1,
            "bobs matches nothing and never had a config"
        );
        assert_eq!(
            (first[0].site.as_str(), first[0].config.version),
            ("acme-hq", 100)
        );
        // Our own publication comes back: nothing to do.
        assert_eq!(c.seen(id("acme-hq"), &first[0].config.encode(), 101), None);
        // A reload that changes nothing for a site publishes nothing for it.
        assert!(c.reload(vec![target("a", &["acme-*"])], 102).is_empty());
        // A new target for every site: both get it, bobs for the first time.
        let next = c.reload(vec![target("a", &["acme-*"]), target("b", &["*"])], 102);
        assert_eq!(next.len(), 2);
        assert_eq!(names(&next[0]), ["a", "b"]);
        assert!(next[0].config.version > 100);
        // Removing every target: both get an empty list (they had targets).
        let gone = c.reload(vec![], 103);
        assert!(gone.iter().all(|p| p.config.targets.is_empty()));
        assert_eq!(gone.len(), 2);
    }

    #[test]
    fn a_broker_that_lost_its_retained_configs_gets_them_again() {
        let mut c = SiteConfigs::new(vec![target("a", &["*"])]);
        c.site(id("s"), 10);
        let first = c.ready(10);
        assert_eq!(first.len(), 1);
        // Reconnected: the broker's copy comes back, nothing to do.
        c.resubscribed();
        c.seen(id("s"), &first[0].config.encode(), 20);
        assert!(c.ready(20).is_empty());
        // Reconnected to a broker that forgot it: published again, a newer version.
        c.resubscribed();
        let again = c.ready(30);
        assert_eq!(again.len(), 1);
        assert!(again[0].config.version > first[0].config.version);
    }

    #[test]
    fn another_publishers_config_is_replaced_then_held_off() {
        let mut c = SiteConfigs::new(vec![target("a", &["*"])]);
        c.site(id("s"), 10);
        let ours = c.ready(10);
        let theirs = |version: u64| {
            AgentConfig {
                version,
                window_seconds: None,
                targets: vec![],
            }
            .encode()
        };
        let first = ours[0].config.version;
        // Replaced at once (a stray config), newer than it.
        let p = c.seen(id("s"), &theirs(first + 5), 11).unwrap();
        assert!(p.config.version > first + 5);
        // A second one soon after (a disagreeing collector): held off...
        assert_eq!(c.seen(id("s"), &theirs(p.config.version + 1), 12), None);
        // ...until the recheck (or a reload) puts ours back.
        assert_eq!(c.recheck(13).len(), 1);
        // After the hold, a stray one is replaced at once again.
        let v = c.recheck(14).len();
        assert_eq!(v, 0, "nothing differs");
        assert!(c.seen(id("s"), &theirs(1 << 40), 12 + HOLD_S).is_some());
    }

    #[test]
    fn versions_grow_past_the_brokers_and_the_clock() {
        let mut c = SiteConfigs::new(vec![target("a", &["*"])]);
        // The broker holds version 500 with other targets (an earlier collector).
        let old = AgentConfig {
            version: 500,
            window_seconds: None,
            targets: vec![],
        };
        assert_eq!(c.seen(id("s"), &old.encode(), 10), None);
        let p = c.ready(10);
        assert_eq!(p[0].config.version, 501);
        // The clock is ahead of every version seen: it wins.
        let p = c.reload(vec![target("b", &["*"])], 9_000);
        assert_eq!(p[0].config.version, 9_000);
        // An old retained copy arriving late is ignored.
        assert_eq!(c.seen(id("s"), &old.encode(), 9_001), None);
        // The broker already has what the site should have: nothing published.
        let mut c = SiteConfigs::new(vec![target("a", &["*"])]);
        let same = AgentConfig {
            version: 7,
            window_seconds: None,
            targets: resolve(&[target("a", &["*"])], &id("s")),
        };
        c.seen(id("s"), &same.encode(), 10);
        assert!(c.ready(10).is_empty());
    }
}

/// What the agents answered to their central configs (`config/status`), for
/// `/metrics` and the log: each site's latest answer, and the rejections seen.
#[derive(Debug, Default)]
pub struct Answers {
    inner: std::sync::Mutex<AnswersInner>,
}

#[derive(Debug, Default)]
struct AnswersInner {
    latest: BTreeMap<Id, faultline_shared::ConfigStatus>,
    rejections: u64,
}

impl Answers {
    /// Records `site`'s answer; the rejection, when it is a new one.
    pub fn record(&self, site: Id, payload: &[u8]) -> Option<faultline_shared::ConfigStatus> {
        let status: faultline_shared::ConfigStatus = serde_json::from_slice(payload).ok()?;
        let mut g = self.inner.lock().expect("answers lock");
        let new_rejection = status.state == faultline_shared::ConfigState::Rejected
            && g.latest.get(&site) != Some(&status);
        if new_rejection {
            g.rejections += 1;
        }
        g.latest.insert(site, status.clone());
        new_rejection.then_some(status)
    }

    /// Sites whose latest answer is a rejection, with it.
    pub fn rejected(&self) -> Vec<(Id, faultline_shared::ConfigStatus)> {
        let g = self.inner.lock().expect("answers lock");
        g.latest
            .iter()
            .filter(|(_, s)| s.state == faultline_shared::ConfigState::Rejected)
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect()
    }

    /// Rejections answered since start (each site and version once).
    pub fn rejections(&self) -> u64 {
        self.inner.lock().expect("answers lock").rejections
    }
}
