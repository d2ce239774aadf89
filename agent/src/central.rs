//! Central config on the agent: what to do with an `AgentConfig` from the broker
//! ([`Central::offer`]), how it merges with the local file ([`Plan`]), and its copy
//! in `state_dir` ([`Stored`]) that the agent starts with when the broker is
//! unreachable.
//!
//! A config is applied once and whole: a version not above the applied one is ignored
//! (its status said again), a bad one is rejected naming the target and key while the
//! previous one keeps running. Local `[[target]]`s stay; a local target with the same
//! name wins over a central one. The run loop switches plans between windows.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use faultline_shared::{AgentConfig, CentralConfig, ConfigStatus};

use crate::config::Config;
use crate::config::target::Target;

/// The file in `state_dir` holding the last applied central config (its JSON).
pub const FILE: &str = "central.json";

/// Where a target of the plan comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Local,
    Central(u64),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Local => f.write_str("local"),
            Origin::Central(v) => write!(f, "central v{v}"),
        }
    }
}

/// What the agent measures: the window and the targets, each with its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub window: Duration,
    pub targets: Vec<(Target, Origin)>,
}

impl Plan {
    /// The local targets, then the central ones whose name no local target has; the
    /// central window when it sets one.
    pub fn resolve(local: &[Target], window: Duration, central: Option<&CentralConfig>) -> Self {
        let mut targets: Vec<(Target, Origin)> =
            local.iter().map(|t| (t.clone(), Origin::Local)).collect();
        let mut window = window;
        if let Some(c) = central {
            window = c.window.unwrap_or(window);
            for t in &c.targets {
                if !local.iter().any(|l| l.name == t.name) {
                    targets.push((t.clone(), Origin::Central(c.version)));
                }
            }
        }
        Self { window, targets }
    }

    /// Whether `other` measures the same targets the same way (origins aside).
    pub fn measures_like(&self, other: &Plan) -> bool {
        self.window == other.window
            && self.targets.len() == other.targets.len()
            && self
                .targets
                .iter()
                .zip(&other.targets)
                .all(|((a, _), (b, _))| a == b)
    }

    pub fn window_ms(&self) -> u64 {
        self.window.as_millis() as u64
    }
}

/// What `check` prints about central config and the resolved targets, each with
/// where it comes from.
pub fn describe(plan: &Plan, central: Option<&CentralConfig>, stored: &Path) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    // Writing to a String cannot fail.
    match central {
        Some(c) => {
            let _ = writeln!(
                out,
                "central  v{} stored in {} ({} targets); the broker's newer versions replace it",
                c.version,
                stored.display(),
                c.targets.len()
            );
            if let Some(w) = c.window {
                let _ = writeln!(
                    out,
                    "window   {} s from central v{}",
                    w.as_secs(),
                    c.version
                );
            }
        }
        None => {
            let _ = writeln!(
                out,
                "central  none stored yet ({}); waits for the collector's",
                stored.display()
            );
        }
    }
    let local = plan
        .targets
        .iter()
        .filter(|(_, o)| *o == Origin::Local)
        .count();
    let _ = writeln!(
        out,
        "targets  {} ({local} local, {} central)",
        plan.targets.len(),
        plan.targets.len() - local
    );
    for (t, origin) in &plan.targets {
        let _ = writeln!(out, "  {t} ({origin})");
    }
    out
}

/// What to do with a config from the broker.
#[derive(Debug)]
pub enum Offer {
    /// Valid and newer: store it, publish the status, switch at the next window.
    Apply {
        config: AgentConfig,
        valid: CentralConfig,
        status: ConfigStatus,
    },
    /// Not newer, or invalid: publish this status and keep what runs.
    Keep(ConfigStatus),
    /// Not even a version to answer to: log only.
    Unreadable(String),
}

/// The applied central config's state, owned by the run loop.
#[derive(Debug, Default)]
pub struct Central {
    applied: Option<CentralConfig>,
    /// The last status published (or to publish again for an old version).
    last: Option<ConfigStatus>,
}

impl Central {
    /// Starting from the stored config, if any.
    pub fn new(stored: Option<CentralConfig>) -> Self {
        let last = stored.as_ref().map(|c| ConfigStatus::applied(c.version));
        Self {
            applied: stored,
            last,
        }
    }

    pub fn applied(&self) -> Option<&CentralConfig> {
        self.applied.as_ref()
    }

    /// Judges a payload from the config topic.
    pub fn offer(&mut self, payload: &[u8]) -> Offer {
        let applied = self.applied.as_ref().map_or(0, |c| c.version);
        let config = match AgentConfig::decode(payload) {
            Ok(c) => c,
            Err(e) => {
                return match AgentConfig::version_of(payload) {
                    Some(v) if v > applied => self.keep(ConfigStatus::rejected(v, &e)),
                    Some(_) => self.again(applied),
                    None => Offer::Unreadable(e.to_string()),
                };
            }
        };
        if config.version <= applied {
            return self.again(applied);
        }
        match config.validate() {
            Ok(valid) => {
                let status = ConfigStatus::applied(valid.version);
                self.last = Some(status.clone());
                self.applied = Some(valid.clone());
                Offer::Apply {
                    config,
                    valid,
                    status,
                }
            }
            Err(e) => self.keep(ConfigStatus::rejected(config.version, &e)),
        }
    }

    fn keep(&mut self, status: ConfigStatus) -> Offer {
        self.last = Some(status.clone());
        Offer::Keep(status)
    }

    /// An old version came again (a retained copy on resubscribe): say again what
    /// was last said.
    fn again(&self, applied: u64) -> Offer {
        Offer::Keep(
            self.last
                .clone()
                .unwrap_or_else(|| ConfigStatus::applied(applied)),
        )
    }
}

/// The central config's copy in `state_dir`.
#[derive(Debug, Clone)]
pub struct Stored {
    path: PathBuf,
}

impl Stored {
    pub fn new(cfg: &Config) -> Self {
        Self {
            path: cfg.state_dir.join(FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored config, validated; `Ok(None)` when there is none.
    pub fn load(&self) -> anyhow::Result<Option<CentralConfig>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(AgentConfig::decode(&bytes)?.validate()?))
    }

    /// Replaces the stored config atomically: a temporary file, synced, renamed over
    /// the old one, the folder synced (a power cut leaves the old or the new).
    pub fn save(&self, config: &AgentConfig) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&config.encode())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_shared::ConfigState;
    use faultline_shared::target::{Fields, Value, build};

    fn tcp(name: &str, port: u16) -> Fields {
        let mut f = Fields::new();
        for (k, v) in [
            ("name", name.to_owned()),
            ("layer", "lan".into()),
            ("kind", "tcp".into()),
            ("host", format!("127.0.0.1:{port}")),
        ] {
            f.insert(k, Value::String(v));
        }
        f
    }

    fn payload(version: u64, targets: Vec<Fields>) -> Vec<u8> {
        AgentConfig {
            version,
            window_seconds: None,
            targets,
        }
        .encode()
    }

    #[test]
    fn local_targets_win_by_name_and_central_window_applies() {
        let local = vec![build(&tcp("a", 1)).unwrap()];
        let central = CentralConfig {
            version: 3,
            window: Some(Duration::from_secs(2)),
            targets: vec![build(&tcp("a", 2)).unwrap(), build(&tcp("b", 3)).unwrap()],
        };
        let plan = Plan::resolve(&local, Duration::from_secs(10), Some(&central));
        assert_eq!(plan.window, Duration::from_secs(2));
        let got: Vec<(String, Origin)> = plan
            .targets
            .iter()
            .map(|(t, o)| (t.to_string(), *o))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "a layer=lan kind=tcp host=127.0.0.1:1".into(),
                    Origin::Local
                ),
                (
                    "b layer=lan kind=tcp host=127.0.0.1:3".into(),
                    Origin::Central(3)
                ),
            ]
        );
        let alone = Plan::resolve(&local, Duration::from_secs(10), None);
        assert_eq!((alone.window.as_secs(), alone.targets.len()), (10, 1));
    }

    #[test]
    fn applies_newer_versions_once_and_rejects_bad_ones_keeping_the_old() {
        let mut c = Central::new(None);
        let Offer::Apply { valid, status, .. } = c.offer(&payload(5, vec![tcp("a", 1)])) else {
            panic!("version 5 applies");
        };
        assert_eq!((valid.version, status.state), (5, ConfigState::Applied));
        // The same version again (a retained copy): nothing to apply, status again.
        let Offer::Keep(s) = c.offer(&payload(5, vec![tcp("a", 1)])) else {
            panic!("an old version is kept");
        };
        assert_eq!(s, ConfigStatus::applied(5));
        // A bad newer one: rejected naming the target and key; 5 stays applied.
        let mut bad = tcp("b", 1);
        bad.insert("host", Value::String("127.0.0.1".into()));
        let Offer::Keep(s) = c.offer(&payload(6, vec![tcp("a", 1), bad])) else {
            panic!("a bad config is rejected");
        };
        assert_eq!(s.state, ConfigState::Rejected);
        let error = s.error.unwrap();
        assert!(
            error.starts_with("targets[1] (name \"b\").host: "),
            "{error}"
        );
        assert_eq!(c.applied().unwrap().version, 5);
        // Garbage with a version is rejected with it; without one it is unreadable.
        assert!(matches!(
            c.offer(br#"{"version": 9, "targets": {}}"#),
            Offer::Keep(ConfigStatus {
                version: 9,
                state: ConfigState::Rejected,
                ..
            })
        ));
        assert!(matches!(c.offer(b"nope"), Offer::Unreadable(_)));
        assert!(matches!(c.offer(&payload(7, vec![])), Offer::Apply { .. }));
    }

    #[test]
    fn stores_atomically_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("faultline-central-{}", std::process::id()));
        let stored = Stored {
            path: dir.join(FILE),
        };
        assert!(stored.load().unwrap().is_none());
        let config = AgentConfig::decode(&payload(4, vec![tcp("a", 1)])).unwrap();
        stored.save(&config).unwrap();
        stored.save(&config).unwrap();
        let back = stored.load().unwrap().unwrap();
        assert_eq!((back.version, back.targets.len()), (4, 1));
        assert!(!dir.join("central.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
