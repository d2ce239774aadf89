//! Central agent config, the shell around [`crate::fleet_config::SiteConfigs`]: feeds
//! it the sites the collector knows (history at start, then every agent's online
//! status), what the broker holds on the config topics, and new fleet targets from a
//! SIGHUP reload; hands what it decides to the publisher.
//!
//! SIGHUP re-reads collector.toml: a bad file is logged (field and line) and the
//! running config stays; a good one applies its `[[fleet.target]]`s at once. Every
//! other setting needs a restart, and the log says which sections changed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use faultline_shared::Id;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::now_ms;
use super::publish::{BrokerConfig, Publication};
use crate::config::Config;
use crate::fleet_config::{Answers, FleetTarget, Publish, SiteConfigs};

/// How long after subscribing the broker's retained configs are waited for before
/// anything is published (they follow the SUBACK at once).
const SETTLE: Duration = Duration::from_secs(2);

/// How often every known site's config is compared with the broker's again (what
/// [`SiteConfigs::seen`] held back is replaced then).
const RECHECK: Duration = Duration::from_secs(60);

/// What the rest of the service tells this task.
#[derive(Debug)]
pub enum Event {
    /// A site was heard (its agent's online status).
    Site(Id),
    /// collector.toml was reloaded: the fleet targets now.
    Reload(Vec<FleetTarget>),
}

fn now_s() -> u64 {
    now_ms() / 1000
}

/// Starts the task and the SIGHUP reloads: its inputs are `events`, the broker's
/// `configs` and, on SIGHUP, `cfg`'s file read again; it publishes through `out`.
/// Abort both handles before the publisher finishes (they hold `out`).
pub fn start(
    cfg: &Config,
    known_sites: Vec<Id>,
    configs: mpsc::UnboundedReceiver<BrokerConfig>,
    out: mpsc::UnboundedSender<Publication>,
    answers: Arc<Answers>,
) -> (mpsc::UnboundedSender<Event>, [JoinHandle<()>; 2]) {
    let (tx, task) = spawn(
        cfg.fleet_targets.clone(),
        known_sites,
        configs,
        out,
        answers,
    );
    let reloads = spawn_reloads(cfg, tx.clone());
    (tx, [task, reloads])
}

/// The task alone, on `targets`: what it is told goes to the returned sender; the
/// agents' answers are recorded in `answers`.
pub fn spawn(
    targets: Vec<FleetTarget>,
    known_sites: Vec<Id>,
    configs: mpsc::UnboundedReceiver<BrokerConfig>,
    out: mpsc::UnboundedSender<Publication>,
    answers: Arc<Answers>,
) -> (mpsc::UnboundedSender<Event>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(drive(
        SiteConfigs::new(targets),
        known_sites,
        rx,
        (configs, answers),
        out,
    ));
    (tx, task)
}

/// On every SIGHUP, `cfg`'s file read again: its fleet targets go to `tx` as
/// [`Event::Reload`] (a bad file is logged and nothing is sent).
pub fn spawn_reloads(cfg: &Config, tx: mpsc::UnboundedSender<Event>) -> JoinHandle<()> {
    tokio::spawn(reload_on_sighup(cfg.clone(), tx))
}

async fn drive(
    mut core: SiteConfigs,
    known_sites: Vec<Id>,
    mut events: mpsc::UnboundedReceiver<Event>,
    (mut configs, answers): (mpsc::UnboundedReceiver<BrokerConfig>, Arc<Answers>),
    out: mpsc::UnboundedSender<Publication>,
) {
    for site in known_sites {
        core.site(site, now_s());
    }
    let send = |ps: Vec<Publish>| {
        for p in ps {
            tracing::info!(
                site = %p.site,
                version = p.config.version,
                targets = p.config.targets.len(),
                "central config published"
            );
            let _ = out.send(Publication::SiteConfig(p));
        }
    };
    let mut settle: Option<tokio::time::Instant> = None;
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let until_settled = async {
            match settle {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Site(site)) => send(core.site(site, now_s()).into_iter().collect()),
                Some(Event::Reload(targets)) => {
                    let ps = core.reload(targets, now_s());
                    tracing::info!(sites = core.len(), changed = ps.len(), "fleet targets reloaded");
                    send(ps);
                }
                None => return,
            },
            c = configs.recv() => match c {
                Some(BrokerConfig::Subscribed) => {
                    core.resubscribed();
                    settle = Some(tokio::time::Instant::now() + SETTLE);
                }
                Some(BrokerConfig::Seen { site, payload }) => {
                    send(core.seen(site, &payload, now_s()).into_iter().collect());
                }
                Some(BrokerConfig::Answer { site, payload }) => {
                    if let Some(s) = answers.record(site.clone(), &payload) {
                        tracing::warn!(
                            site = %site,
                            version = s.version,
                            error = s.error.as_deref().unwrap_or(""),
                            "the agent rejected its central config (it keeps the previous one)"
                        );
                    }
                }
                // The publisher is gone: the service is stopping.
                None => return,
            },
            _ = recheck.tick() => send(core.recheck(now_s())),
            () = until_settled => {
                settle = None;
                let ps = core.ready(now_s());
                tracing::debug!(sites = core.len(), published = ps.len(), "central configs checked");
                send(ps);
            }
        }
    }
}

/// On every SIGHUP: read the config file again and hand its fleet targets on.
async fn reload_on_sighup(mut running: Config, tx: mpsc::UnboundedSender<Event>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("no SIGHUP handler: collector.toml is read at start only");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(path) = running.source.clone() else {
            tracing::warn!("SIGHUP: no config file to read again (running on defaults)");
            continue;
        };
        match reload(&path, &running) {
            Ok((new, restart)) => {
                if !restart.is_empty() {
                    tracing::warn!(
                        "SIGHUP: {} applied; changes to {} take effect at the next restart",
                        path.display(),
                        restart.join(", ")
                    );
                }
                if tx.send(Event::Reload(new.fleet_targets.clone())).is_err() {
                    return;
                }
                running = new;
            }
            Err(e) => tracing::error!("SIGHUP: {e}; the running config stays"),
        }
    }
}

/// Reads `path` again: the new config and the sections that changed but apply only
/// at a restart (everything but `[[fleet.target]]`).
fn reload(path: &Path, running: &Config) -> Result<(Config, Vec<&'static str>), String> {
    let new = Config::load(path).map_err(|e| e.to_string())?;
    for w in &new.warnings {
        tracing::warn!("{w}");
    }
    let changed =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut restart = Vec::new();
    for (name, differs) in [
        ("window_seconds", running.window_ms != new.window_ms),
        ("topic_prefix", running.prefix != new.prefix),
        ("[mqtt]", changed(&running.mqtt, &new.mqtt)),
        (
            "[http]",
            changed(
                &(
                    &running.http_listen,
                    &running.http_token,
                    &running.http_hosts,
                ),
                &(&new.http_listen, &new.http_token, &new.http_hosts),
            ),
        ),
        ("[storage]", changed(&running.storage, &new.storage)),
        (
            "[broker]",
            changed(
                &(&running.broker_listen, &running.broker_listen_v5),
                &(&new.broker_listen, &new.broker_listen_v5),
            ),
        ),
        (
            "[thresholds]",
            changed(&running.thresholds, &new.thresholds),
        ),
        ("[providers]", running.providers != new.providers),
        ("[alerts]", changed(&running.alerts, &new.alerts)),
        ("[[maintenance]]", running.maintenance != new.maintenance),
    ] {
        if differs {
            restart.push(name);
        }
    }
    Ok((new, restart))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_names_what_needs_a_restart_and_rejects_a_bad_file() {
        let dir = std::env::temp_dir().join(format!("faultline-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("collector.toml");
        let target = "[[fleet.target]]\nname = \"web\"\nlayer = \"internet\"\nkind = \"tcp\"\n";
        std::fs::write(&path, "window_seconds = 10\n").unwrap();
        let running = Config::load(&path).unwrap();
        std::fs::write(
            &path,
            format!("window_seconds = 5\n{target}host = \"192.0.2.1:443\"\n"),
        )
        .unwrap();
        let (new, restart) = reload(&path, &running).unwrap();
        assert_eq!(new.fleet_targets.len(), 1);
        assert_eq!(restart, ["window_seconds"]);
        std::fs::write(&path, format!("{target}host = \"192.0.2.1\"\n")).unwrap();
        let e = reload(&path, &running).unwrap_err();
        assert!(
            e.contains(":5: fleet.target[0].host: tcp needs a port"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
