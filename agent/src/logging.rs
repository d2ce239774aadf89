//! Logging to stderr, one line per event, without tracing-subscriber (about 20 kB on
//! the gateway): `2026-11-27T02:39:14.123456Z  INFO message key=value`, the format the
//! agent printed with tracing-subscriber's `fmt` layer (no target, no colours).
//! Filtered by `RUST_LOG` in the `target=level,level` form (default `info`; the
//! longest matching target prefix wins). Nothing in the agent logs through `log`.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// `RUST_LOG` directives: (target prefix, level); `None` target is the default.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    default: LevelFilter,
    /// Longest target first.
    targets: Vec<(String, LevelFilter)>,
}

impl Filter {
    pub fn new(default: LevelFilter) -> Self {
        Self {
            default,
            targets: Vec::new(),
        }
    }

    /// Parses `target=level,level,...` (a bare level sets the default; a bare target
    /// enables everything for it).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut f = Self::new(LevelFilter::OFF);
        let mut default = None;
        for d in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            match d.split_once('=') {
                Some((target, level)) => {
                    let level = level_of(level)?;
                    if target.is_empty() {
                        return Err(format!("directive {d:?}: empty target"));
                    }
                    f.targets.push((target.to_owned(), level));
                }
                None => match level_of(d) {
                    Ok(l) => default = Some(l),
                    Err(_) if valid_target(d) => f.targets.push((d.to_owned(), LevelFilter::TRACE)),
                    Err(e) => return Err(e),
                },
            }
        }
        // As tracing-subscriber's `Targets`: without a bare level, other targets are off.
        f.default = default.unwrap_or(LevelFilter::OFF);
        f.targets.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        Ok(f)
    }

    pub fn enabled(&self, target: &str, level: &Level) -> bool {
        let max = self
            .targets
            .iter()
            .find(|(t, _)| target.starts_with(t.as_str()))
            .map_or(self.default, |(_, l)| *l);
        *level <= max
    }

    fn max_level(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, LevelFilter::max)
    }
}

fn valid_target(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
}

fn level_of(s: &str) -> Result<LevelFilter, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "off" | "0" => LevelFilter::OFF,
        "error" | "1" => LevelFilter::ERROR,
        "warn" | "2" => LevelFilter::WARN,
        "info" | "3" => LevelFilter::INFO,
        "debug" | "4" => LevelFilter::DEBUG,
        "trace" | "5" => LevelFilter::TRACE,
        _ => {
            return Err(format!(
                "invalid level {s:?} (off, error, warn, info, debug, trace)"
            ));
        }
    })
}

/// The subscriber: filters, formats and writes each event in one `write` to stderr.
#[derive(Debug)]
struct Stderr {
    filter: Filter,
}

impl Subscriber for Stderr {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Decided per event: `log` records share callsites across targets.
        Interest::sometimes()
    }

    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.filter.enabled(m.target(), m.level())
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.filter.max_level())
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // The agent opens no spans; events are printed without span context.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        if !self.filter.enabled(meta.target(), meta.level()) {
            return;
        }
        let line = format_line(SystemTime::now(), meta.level(), |v| event.record(v));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// One log line, newline included.
fn format_line(now: SystemTime, level: &Level, record: impl FnOnce(&mut dyn Visit)) -> String {
    let mut line = String::with_capacity(128);
    timestamp(&mut line, now);
    let _ = write!(line, " {level:>5} ");
    let mut v = Fields {
        out: &mut line,
        first: true,
    };
    record(&mut v);
    line.push('\n');
    line
}

/// `message` first without its name, then ` key=value` (Debug), skipping the `log.*`
/// fields of bridged records.
struct Fields<'a> {
    out: &'a mut String,
    first: bool,
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        if !self.first {
            self.out.push(' ');
        }
        self.first = false;
        let _ = if name == "message" {
            write!(self.out, "{value:?}")
        } else {
            write!(self.out, "{name}={value:?}")
        };
    }
}

/// RFC 3339 UTC with microseconds, as tracing-subscriber printed it.
fn timestamp(out: &mut String, now: SystemTime) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    );
}

/// Installs the subscriber.
pub fn init() {
    let default = Filter::new(LevelFilter::INFO);
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) => Filter::parse(&spec).unwrap_or_else(|e| {
            eprintln!("ignoring RUST_LOG={spec:?}: {e}");
            default
        }),
        Err(_) => default,
    };
    let _ = tracing::subscriber::set_global_default(Stderr { filter });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn filter_directives() {
        let f = Filter::parse("warn,faultline_agent::mqtt=debug,faultline_agent::mqtt::codec=off")
            .unwrap();
        assert!(f.enabled("faultline_agent::run", &Level::WARN));
        assert!(!f.enabled("faultline_agent::run", &Level::INFO));
        assert!(f.enabled("faultline_agent::mqtt", &Level::DEBUG));
        assert!(!f.enabled("faultline_agent::mqtt", &Level::TRACE));
        assert!(!f.enabled("faultline_agent::mqtt::codec", &Level::ERROR));
        assert_eq!(f.max_level(), LevelFilter::DEBUG);
        let f = Filter::parse("debug").unwrap();
        assert!(f.enabled("x", &Level::DEBUG) && !f.enabled("x", &Level::TRACE));
        let f = Filter::parse("faultline_agent").unwrap();
        assert!(f.enabled("faultline_agent::mqtt", &Level::TRACE));
        assert!(!f.enabled("tokio", &Level::ERROR));
        assert!(Filter::parse("x=loud").is_err());
        assert!(Filter::parse("a b").is_err());
        let d = Filter::new(LevelFilter::INFO);
        assert!(d.enabled("any", &Level::INFO) && !d.enabled("any", &Level::DEBUG));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut s = String::new();
        timestamp(
            &mut s,
            UNIX_EPOCH + Duration::from_micros(1_764_201_600_123_456),
        );
        assert_eq!(s, "2025-11-27T00:00:00.123456Z");
        let mut s = String::new();
        timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(951_827_696));
        assert_eq!(s, "2000-02-29T12:34:56.000000Z");
    }

    /// Formats events like `Stderr`, into a buffer.
    struct Capture(std::sync::Mutex<Vec<String>>);

    impl Subscriber for &'static Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let line = format_line(UNIX_EPOCH, event.metadata().level(), |v| event.record(v));
            self.0.lock().unwrap().push(line);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn lines_look_like_tracing_subscribers() {
        let cap: &'static Capture = Box::leak(Box::new(Capture(Default::default())));
        tracing::subscriber::with_default(cap, || {
            tracing::info!(peer = "10.0.0.1", "reconnected to {}", "broker:8883");
            tracing::error!("x");
        });
        let lines = cap.0.lock().unwrap().clone();
        assert_eq!(
            lines,
            [
                "1970-01-01T00:00:00.000000Z  INFO reconnected to broker:8883 peer=\"10.0.0.1\"\n",
                "1970-01-01T00:00:00.000000Z ERROR x\n",
            ]
        );
    }
}
