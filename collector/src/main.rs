//! faultline-collector: takes every site's reports over MQTT, diagnoses faults across
//! sites, ISPs and providers, and publishes verdicts (MQTT, HTTP, history).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use faultline_collector::config::{self, Config};
use faultline_collector::engine::Engine;
use faultline_collector::{engine_config, replay, report, service, store};

// The demo is the binary's alone: the library (linked by tests, examples and fuzz
// targets) carries no fleet of its own.
mod demo;

#[derive(Debug, Parser)]
#[command(name = "faultline-collector", version, about = "Faultline's collector")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the collector (no [mqtt] url: embedded broker on 127.0.0.1:1883).
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Subscribe to reports as this MQTT v5 shared-subscription group.
        #[arg(long)]
        share_group: Option<String>,
        /// Cluster mode: this process's role, `site` or `fleet` (overrides
        /// `[cluster] role`; needs `[cluster]`).
        #[arg(long)]
        role: Option<faultline_collector::cluster::ClusterRole>,
    },
    /// Validate a config file (exit 2 naming the field and line when bad).
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Replay JSON lines through the engine; print verdict changes as JSON lines.
    Replay {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The collector with six real agents and a scripted provider outage (see README).
    Demo {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Reports from the fleet simulator instead of real agents (no agent binary).
        #[arg(long)]
        simulated: bool,
        /// Healthy windows before each scripted voipco outage.
        #[arg(long, default_value_t = 6, hide = true)]
        outage_after: u32,
        /// Windows each scripted outage lasts.
        #[arg(long, default_value_t = 10, hide = true)]
        outage_for: u32,
        /// The faultline-agent binary (default: beside this executable).
        #[arg(long, hide = true)]
        agent_bin: Option<PathBuf>,
    },
    /// Provider availability over a period, from history.
    Report {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The history database (default: [storage] path of the config).
        #[arg(long)]
        db: Option<PathBuf>,
        /// How far back the period starts (e.g. 7d, 24h, 90m).
        #[arg(long, default_value = "7d")]
        since: String,
        /// Period start, ms since the epoch (overrides --since).
        #[arg(long)]
        from_ms: Option<u64>,
        /// Period end, ms since the epoch (default: now).
        #[arg(long)]
        to_ms: Option<u64>,
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
}

fn load(path: Option<&PathBuf>) -> Result<Config, config::ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}

/// The config's warnings, through tracing (`run`, `demo`).
fn log_warnings(c: &Config) {
    for w in &c.warnings {
        tracing::warn!("{w}");
    }
}

/// How the collector reaches its broker, for `check`.
fn describe_broker(c: &Config) -> String {
    match &c.mqtt {
        Some(m) => {
            let mut s = format!(
                "{}://{}:{}",
                if m.tls.is_some() { "mqtts" } else { "mqtt" },
                m.host,
                m.port
            );
            if let Some(t) = &m.tls {
                s += &match &t.ca_file {
                    Some(f) => format!(", CA {}", f.display()),
                    None => ", the system's CAs".to_owned(),
                };
                if let Some(cert) = &t.client_cert {
                    s += &format!(", client certificate {}", cert.display());
                }
            }
            match (&m.username, &m.ingest_username) {
                (Some(u), Some(i)) => {
                    s += &format!(
                        ", logins {u} (publish) and {i} (ingest){}",
                        if m.password.is_some() {
                            " with a password"
                        } else {
                            " without a password"
                        }
                    )
                }
                _ => s += ", no login",
            }
            s
        }
        None => {
            let mut s = format!(
                "embedded, MQTT 3.1.1 on {}, MQTT 5 on {}",
                c.broker_listen, c.broker_listen_v5
            );
            s += &match &c.broker_logins {
                Some(l) => format!(
                    ", logins from {} ({}); client id must be the login or faultline-<login>",
                    l.path.display(),
                    l.file.len()
                ),
                None => ", no logins (loopback only)".to_owned(),
            };
            s
        }
    }
}

/// The `[[fleet.target]]`s as `check` prints them: each target and its sites.
fn describe_fleet(c: &Config) -> String {
    let mut s = format!(
        "fleet:  {} central targets (pushed to the matching sites' agents; live on SIGHUP)\n",
        c.fleet_targets.len()
    );
    for t in &c.fleet_targets {
        let sites: Vec<&str> = t.sites.iter().map(|p| p.as_str()).collect();
        s += &format!("  {} for sites {}\n", t.name, sites.join(", "));
    }
    s
}

/// Where history is kept, for `check`.
fn describe_history(c: &Config) -> String {
    match &c.storage.location {
        config::StorageLocation::Sqlite(path) => format!("SQLite {}", path.display()),
        // Without the password.
        config::StorageLocation::Postgres(pg) => format!("PostgreSQL {}", pg.shown),
    }
}

/// Who may read the dashboard, for `check`.
fn describe_http(c: &Config) -> String {
    format!(
        "{}, {}, extra Host names: {}",
        c.http_listen,
        if c.http_token.is_some() {
            "token_file set (every path but /metrics needs it)"
        } else {
            "no token_file"
        },
        if c.http_hosts.is_empty() {
            "none".to_owned()
        } else {
            c.http_hosts.join(", ")
        }
    )
}

/// Where incidents are sent, for `check` (secrets were read; never printed).
fn describe_alerts(c: &Config) -> String {
    let a = &c.alerts;
    if !a.is_enabled() {
        return "none".to_owned();
    }
    let mut parts: Vec<String> = a
        .webhooks
        .iter()
        .map(|w| format!("webhook {} (signed)", w.url))
        .collect();
    if let Some(am) = &a.alertmanager {
        parts.push(format!("alertmanager {am}"));
    }
    format!(
        "{}; outbox {}",
        parts.join(", "),
        a.queue_path(&c.storage.location).display()
    )
}

fn init_tracing() {
    // rumqttc logs through `log`: bridge it.
    let _ = tracing_log::LogTracer::init();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FAULTLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off,rumqttc=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Check { config } => match Config::load(&config) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok (window {} ms, prefix {}, {} providers)",
                    config.display(),
                    c.window_ms,
                    c.prefix,
                    c.providers.len()
                );
                match &c.cluster {
                    Some(k) => println!(
                        "cluster: role {}, {} NATS nodes, {} partitions, lease {} ms, name {}",
                        k.role.map_or("from --role", |r| match r {
                            faultline_collector::cluster::ClusterRole::Site => "site",
                            faultline_collector::cluster::ClusterRole::Fleet => "fleet",
                        }),
                        k.nats.len(),
                        k.partitions,
                        k.lease_ms,
                        k.name
                    ),
                    None => println!("broker: {}", describe_broker(&c)),
                }
                println!("http:   {}", describe_http(&c));
                println!("history: {}", describe_history(&c));
                print!("{}", describe_fleet(&c));
                println!("alerts: {}", describe_alerts(&c));
                if !c.maintenance.is_empty() {
                    println!("maintenance: {} window(s) in the file", c.maintenance.len());
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        Cmd::Replay { input, config } => (|| {
            let c = load(config.as_ref())?;
            let f = std::fs::File::open(&input)
                .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
            let mut engine = Engine::new(engine_config(&c));
            let stdout = std::io::stdout().lock();
            replay::replay(
                &mut engine,
                &c.topics,
                std::io::BufReader::new(f),
                std::io::BufWriter::new(stdout),
            )?;
            Ok(())
        })(),
        Cmd::Run {
            config,
            share_group,
            role,
        } => (|| {
            init_tracing();
            faultline_collector::supervise::exit_on_panic();
            let mut c = load(config.as_ref())?;
            log_warnings(&c);
            if let Some(g) = share_group {
                c.share_group = Some(
                    faultline_shared::Id::new(g)
                        .map_err(|e| anyhow::anyhow!("--share-group: {e}"))?,
                );
            }
            if let Some(cluster) = &c.cluster {
                let role = role.or(cluster.role).ok_or_else(|| {
                    anyhow::anyhow!("[cluster] without a role: set `role` or pass --role")
                })?;
                return faultline_collector::cluster::run(c, role);
            }
            anyhow::ensure!(role.is_none(), "--role needs a [cluster] section");
            service::run(c)
        })(),
        Cmd::Demo {
            config,
            simulated,
            outage_after,
            outage_for,
            agent_bin,
        } => (|| {
            init_tracing();
            faultline_collector::supervise::exit_on_panic();
            let mut c = load(config.as_ref())?;
            log_warnings(&c);
            if config.is_none() {
                c.storage.location = config::StorageLocation::Sqlite("faultline-demo.db".into());
            }
            let opts = demo::DemoOptions {
                simulated,
                outage_after,
                outage_for,
                agent_bin,
            };
            demo::demo(c, config.is_some(), opts)
        })(),
        Cmd::Report {
            config,
            db,
            since,
            from_ms,
            to_ms,
            provider,
            json,
            csv,
        } => (|| {
            let c = load(config.as_ref())?;
            let location = match db {
                Some(path) => config::StorageLocation::Sqlite(path),
                None => c.storage.location,
            };
            if let config::StorageLocation::Sqlite(path) = &location
                && !path.exists()
            {
                anyhow::bail!("{}: no such history database", path.display());
            }
            let store = store::Store::connect(&location)?;
            let to = to_ms.unwrap_or_else(service::now_ms);
            let from = match from_ms {
                Some(f) => f,
                None => to.saturating_sub(report::parse_span(&since).map_err(anyhow::Error::msg)?),
            };
            // The file's maintenance windows and those made over HTTP.
            let mut windows = c.maintenance.clone();
            windows.extend(store.maintenance()?);
            let rows = report::availability(&store, from, to, provider.as_deref(), &windows)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if csv {
                print!("{}", report::csv(&rows));
            } else {
                print!("{}", report::table(&rows));
            }
            Ok(())
        })(),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
