//! Logging to stderr through tracing-subscriber's `fmt`, one line per event, without
//! target or colours: `2026-11-27T02:39:14.123456Z  INFO message key=value` (the
//! timestamp is `fmt`'s default timer: RFC 3339 UTC from the system clock).
//!
//! Filtered by `RUST_LOG` through tracing-subscriber's `Targets`: a comma-separated
//! list of `level`, `target=level` and bare `target` directives (a bare level sets the
//! default, a bare target enables everything for it, the longest matching target
//! wins), as in `EnvFilter` without its span and field-value directives and without its
//! regex engine (176 kB on armv7). Unset or empty means [`DEFAULT_FILTER`]. Crates that
//! log through `log` (rumqttc) are bridged in by tracing-subscriber's `tracing-log`
//! feature (`tracing_log::LogTracer`), so their records are filtered and printed the
//! same way.

use tracing::Subscriber;
use tracing_subscriber::filter::{LevelFilter, ParseError, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};

/// The filter when `RUST_LOG` is unset or empty: the agent at `info`, the MQTT
/// client's chatter left out (it says what matters at `warn`).
pub const DEFAULT_FILTER: &str = "info,rumqttc=warn";

/// Installs the subscriber and the `log` bridge. A bad `RUST_LOG` is named on stderr
/// and the default used instead.
pub fn init() {
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let filter = filter(&spec).unwrap_or_else(|e| {
        eprintln!("ignoring RUST_LOG={spec:?}: {e}");
        default_filter()
    });
    // Fails only when a subscriber or a `log` logger is already set, which nothing
    // else in the agent does.
    let _ = install(filter, std::io::stderr);
}

/// Why `RUST_LOG` is not a filter.
#[derive(Debug, thiserror::Error)]
enum FilterError {
    #[error("directive {0:?} has no target before '='")]
    NoTarget(String),
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// The filter `RUST_LOG` (`spec`, empty when unset) asks for. Blanks around
/// directives and empty ones (`info,`) are ignored and `=level` is refused, as
/// `EnvFilter` does: `Targets` alone would read either as a directive for every target.
fn filter(spec: &str) -> Result<Targets, FilterError> {
    let mut directives = Vec::new();
    for d in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if d.starts_with('=') {
            return Err(FilterError::NoTarget(d.to_owned()));
        }
        directives.push(d);
    }
    if directives.is_empty() {
        return Ok(default_filter());
    }
    Ok(directives.join(",").parse()?)
}

/// [`DEFAULT_FILTER`] (the test `the_default_filter_parses` shows it parses; were it
/// ever not to, `info` for everything).
fn default_filter() -> Targets {
    DEFAULT_FILTER
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO))
}

/// The agent's subscriber: `filter` over the line format, written to `writer` (one
/// `write_all` per line).
fn subscriber<W>(filter: Targets, writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_target(false);
    tracing_subscriber::registry().with(filter).with(lines)
}

/// Sets the global subscriber and, with it, `log`'s logger (`LogTracer`, its max level
/// the filter's most verbose one).
fn install<W>(filter: Targets, writer: W) -> Result<(), TryInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    subscriber(filter, writer).try_init()
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_log::log;

    use super::*;

    /// A writer into a shared buffer, for the lines a subscriber prints.
    #[derive(Debug, Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    /// The lines `emit` prints under the agent's subscriber with `RUST_LOG=spec`.
    fn printed(spec: &str, emit: impl FnOnce()) -> Vec<String> {
        let cap = Capture::default();
        let w = cap.clone();
        let sub = subscriber(filter(spec).unwrap(), move || w.clone());
        tracing::subscriber::with_default(sub, emit);
        cap.lines()
    }

    /// The line without its timestamp, after checking the timestamp's shape:
    /// RFC 3339 UTC with microseconds, then one space.
    fn untimed(line: &str) -> &str {
        let (ts, rest) = line.split_at(28);
        let shape: String = ts
            .chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect();
        assert_eq!(shape, "9999-99-99T99:99:99.999999Z ", "{line}");
        rest
    }

    #[test]
    fn lines_are_timestamp_level_message_fields() {
        let lines = printed("", || {
            tracing::info!(peer = "10.0.0.1", n = 3, "reconnected to {}", "broker:8883");
            tracing::warn!("retrying in 2 s");
            tracing::error!("x");
        });
        let untimed: Vec<&str> = lines.iter().map(|l| untimed(l)).collect();
        assert_eq!(
            untimed,
            [
                " INFO reconnected to broker:8883 peer=\"10.0.0.1\" n=3",
                " WARN retrying in 2 s",
                "ERROR x",
            ]
        );
    }

    #[test]
    fn the_default_filter_parses() {
        let parsed: Targets = DEFAULT_FILTER.parse().unwrap();
        let built = Targets::new()
            .with_default(LevelFilter::INFO)
            .with_target("rumqttc", LevelFilter::WARN);
        assert_eq!(parsed.to_string(), built.to_string());
        assert_eq!(default_filter().to_string(), built.to_string());
        assert_eq!(filter("").unwrap().to_string(), parsed.to_string());
        assert_eq!(filter(" ").unwrap().to_string(), parsed.to_string());
        assert_eq!(filter(" , ").unwrap().to_string(), parsed.to_string());
    }

    #[test]
    fn default_is_info_and_rumqttc_warn() {
        let lines = printed("", || {
            tracing::info!(target: "faultline_agent::run", "shown");
            tracing::debug!(target: "faultline_agent::run", "hidden");
            tracing::info!(target: "rumqttc::state", "hidden");
            tracing::warn!(target: "rumqttc::state", "shown too");
        });
        let msgs: Vec<&str> = lines.iter().map(|l| untimed(l)).collect();
        assert_eq!(msgs, [" INFO shown", " WARN shown too"]);
    }

    #[test]
    fn rust_log_directives() {
        let spec = "warn,faultline_agent::mqtt=debug,faultline_agent::mqtt::codec=off";
        let lines = printed(spec, || {
            tracing::warn!(target: "faultline_agent::run", "1");
            tracing::info!(target: "faultline_agent::run", "-");
            tracing::debug!(target: "faultline_agent::mqtt", "2");
            tracing::trace!(target: "faultline_agent::mqtt", "-");
            tracing::error!(target: "faultline_agent::mqtt::codec", "-");
            tracing::info!(target: "rumqttc", "-");
        });
        let msgs: Vec<&str> = lines.iter().map(|l| &untimed(l)[6..]).collect();
        assert_eq!(msgs, ["1", "2"]);
        // A bare target: everything of it, nothing else.
        let lines = printed("faultline_agent", || {
            tracing::trace!(target: "faultline_agent::mqtt", "1");
            tracing::error!(target: "tokio", "-");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        // Levels by number, as before.
        let lines = printed("2", || {
            tracing::warn!("1");
            tracing::info!("-");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        // Blanks and empty directives are ignored (an empty one is not "trace all").
        let lines = printed(" warn , rumqttc=error,", || {
            tracing::warn!(target: "faultline_agent::run", "1");
            tracing::info!(target: "faultline_agent::run", "-");
            tracing::warn!(target: "rumqttc::state", "-");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(filter("x=loud").is_err());
        assert!(filter("info,=").is_err());
        assert!(filter("=debug").is_err());
        assert!(filter("a=info=debug").is_err());
    }

    /// The only test that sets the global subscriber (once per process): what `init`
    /// installs, with `log` records (rumqttc's) bridged in and filtered.
    #[test]
    fn install_bridges_log_records() {
        let cap = Capture::default();
        let w = cap.clone();
        install(default_filter(), move || w.clone()).expect("no global subscriber yet");
        log::warn!(target: "rumqttc::state", "bridged: unsolicited puback 7");
        log::info!(target: "rumqttc::state", "bridged: collision on packet id 3");
        log::info!(target: "faultline_agent::run", "bridged: agent info");
        log::debug!(target: "faultline_agent::run", "bridged: agent debug");
        // Other tests may log to the global subscriber meanwhile: only ours count.
        let lines: Vec<String> = cap
            .lines()
            .into_iter()
            .filter(|l| l.contains("bridged: "))
            .collect();
        let msgs: Vec<&str> = lines.iter().map(|l| untimed(l)).collect();
        // No `log.target=...` fields: the formatter knows bridged records.
        assert_eq!(
            msgs,
            [
                " WARN bridged: unsolicited puback 7",
                " INFO bridged: agent info"
            ]
        );
    }
}
