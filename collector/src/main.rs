//! faultline-collector: takes every site's reports over MQTT, diagnoses faults across
//! sites, ISPs and providers, and publishes verdicts (MQTT, HTTP, history).

mod config;
mod engine;
mod replay;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::engine::{Engine, EngineConfig};

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
}

fn load(path: Option<&PathBuf>) -> Result<Config, config::ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}

pub fn engine_config(c: &Config) -> EngineConfig {
    EngineConfig {
        window_ms: c.window_ms,
        thresholds: c.thresholds,
        providers: c.providers.clone(),
        max_payload_bytes: c.max_payload_bytes,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok (window {} ms, prefix {}, broker {}, {} providers)",
                    config.display(),
                    c.window_ms,
                    c.prefix,
                    c.mqtt
                        .as_ref()
                        .map_or("embedded".to_owned(), |m| format!("{}:{}", m.host, m.port)),
                    c.providers.len()
                );
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
        Cmd::Run { .. } => Err(anyhow::anyhow!("not yet")),
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
