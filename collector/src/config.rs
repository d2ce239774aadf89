//! `collector.toml`: raw TOML values first, then a validated [`Config`] that cannot
//! hold a bad state. Errors name the field and the line it is on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use faultline_shared::{Id, Topics};
use serde::Deserialize;

use crate::engine::Thresholds;

/// Default evaluation window, matching the agents' default.
pub const DEFAULT_WINDOW_MS: u64 = 10_000;
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_STORAGE_PATH: &str = "faultline.db";
pub const DEFAULT_BROKER_LISTEN: &str = "127.0.0.1:1883";
pub const DEFAULT_BROKER_LISTEN_V5: &str = "127.0.0.1:1884";
/// Largest payload accepted on any ingest topic.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    window_seconds: Option<f64>,
    topic_prefix: Option<String>,
    mqtt: Option<RawMqtt>,
    http: Option<RawHttp>,
    storage: Option<RawStorage>,
    broker: Option<RawBroker>,
    thresholds: Option<Thresholds>,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    url: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    share_group: Option<String>,
    max_payload_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    path: Option<String>,
    raw_days: Option<u32>,
    hourly_days: Option<u32>,
    incident_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    listen: Option<String>,
    listen_v5: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    alternate: Option<String>,
}

/// A validated collector configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub window_ms: u64,
    pub topics: Topics,
    pub prefix: String,
    /// `None`: start the embedded broker.
    pub mqtt: Option<Mqtt>,
    pub max_payload_bytes: usize,
    pub share_group: Option<Id>,
    pub http_listen: SocketAddr,
    pub storage: Storage,
    pub broker_listen: SocketAddr,
    pub broker_listen_v5: SocketAddr,
    pub thresholds: Thresholds,
    /// Provider → its configured alternate (if any).
    pub providers: BTreeMap<Id, Option<Id>>,
}

#[derive(Debug, Clone)]
pub struct Mqtt {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Storage {
    pub path: PathBuf,
    /// Per-window summaries kept at full resolution for this many days, then hourly.
    pub raw_days: u32,
    pub hourly_days: u32,
    pub incident_days: u32,
}

/// A config error naming the field and, when known, its line.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {field}: {msg}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub field: String,
    pub msg: String,
}

impl Default for Config {
    fn default() -> Self {
        // The empty document is valid: these parses cannot fail.
        Config::parse("", "<defaults>").expect("defaults are valid")
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            field: "-".into(),
            msg: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Validates `text` (the contents of `file`).
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let err = |field: &str, msg: String| ConfigError {
            file: file.to_owned(),
            line: line_of(text, field),
            field: field.to_owned(),
            msg,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigError {
                file: file.to_owned(),
                line,
                field: "toml".into(),
                msg: e.message().to_owned(),
            }
        })?;
        let window_ms = match raw.window_seconds {
            None => DEFAULT_WINDOW_MS,
            Some(s) if (1.0..=3600.0).contains(&s) => (s * 1000.0) as u64,
            Some(s) => return Err(err("window_seconds", format!("{s} is not in 1..=3600"))),
        };
        let prefix = raw.topic_prefix.unwrap_or_else(|| "faultline".into());
        let topics = Topics::new(&prefix).map_err(|e| err("topic_prefix", e.to_string()))?;
        let rm = raw.mqtt.unwrap_or_default();
        let mqtt = match rm.url {
            None => None,
            Some(url) => {
                let (host, port) = parse_mqtt_url(&url).map_err(|m| err("url", m))?;
                Some(Mqtt {
                    host,
                    port,
                    client_id: rm
                        .client_id
                        .unwrap_or_else(|| "faultline-collector".to_owned()),
                    username: rm.username,
                    password: rm.password,
                })
            }
        };
        let share_group = rm
            .share_group
            .map(Id::new)
            .transpose()
            .map_err(|e| err("share_group", e.to_string()))?;
        let max_payload_bytes = rm.max_payload_bytes.unwrap_or(DEFAULT_MAX_PAYLOAD);
        if !(256..=1 << 20).contains(&max_payload_bytes) {
            return Err(err(
                "max_payload_bytes",
                format!("{max_payload_bytes} is not in 256..=1048576"),
            ));
        }
        let addr = |field: &str, v: Option<String>, default: &str| {
            let v = v.unwrap_or_else(|| default.to_owned());
            v.parse::<SocketAddr>()
                .map_err(|e| err(field, format!("{v:?}: {e} (expected IP:PORT)")))
        };
        let http_listen = addr(
            "listen",
            raw.http.unwrap_or_default().listen,
            DEFAULT_HTTP_LISTEN,
        )?;
        let rb = raw.broker.unwrap_or_default();
        let broker_listen = addr("listen", rb.listen, DEFAULT_BROKER_LISTEN)?;
        let broker_listen_v5 = addr("listen_v5", rb.listen_v5, DEFAULT_BROKER_LISTEN_V5)?;
        let rs = raw.storage.unwrap_or_default();
        let storage = Storage {
            path: PathBuf::from(rs.path.unwrap_or_else(|| DEFAULT_STORAGE_PATH.into())),
            raw_days: rs.raw_days.unwrap_or(2),
            hourly_days: rs.hourly_days.unwrap_or(90),
            incident_days: rs.incident_days.unwrap_or(400),
        };
        let thresholds = raw.thresholds.unwrap_or_default();
        thresholds.validate().map_err(|(f, m)| err(f, m))?;
        let mut providers = BTreeMap::new();
        for (name, p) in &raw.providers {
            let id = Id::new(name.as_str()).map_err(|e| err(name, e.to_string()))?;
            let alt = p
                .alternate
                .as_deref()
                .map(Id::new)
                .transpose()
                .map_err(|e| err("alternate", e.to_string()))?;
            if let Some(a) = &alt {
                if a == &id {
                    return Err(err("alternate", format!("provider {name} names itself")));
                }
                if !raw.providers.contains_key(a.as_str()) {
                    return Err(err(
                        "alternate",
                        format!("{a:?} is not a configured [providers.{a}]"),
                    ));
                }
            }
            providers.insert(id, alt);
        }
        Ok(Config {
            window_ms,
            topics,
            prefix,
            mqtt,
            max_payload_bytes,
            share_group,
            http_listen,
            storage,
            broker_listen,
            broker_listen_v5,
            thresholds,
            providers,
        })
    }
}

/// The first line (1-based) whose key is `field`.
fn line_of(text: &str, field: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(field)
                .is_some_and(|r| r.trim_start().starts_with('='))
                || l.starts_with('[') && l.contains(field)
        })
        .map(|i| i + 1)
}

/// `mqtt://host:port` (port defaults to 1883). TLS is left to a local Mosquitto
/// listener: see README.
fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    let rest = url.strip_prefix("mqtt://").or_else(|| url.strip_prefix("tcp://")).ok_or_else(|| {
        format!(
            "{url:?}: only mqtt:// is supported (run the collector beside the broker on a plain loopback listener; agents use TLS)"
        )
    })?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
        ),
        None => (rest, 1883),
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("", "x").unwrap();
        assert_eq!(c.window_ms, 10_000);
        assert!(c.mqtt.is_none());
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.broker_listen.to_string(), "127.0.0.1:1883");
    }

    #[test]
    fn design_md_example_parses() {
        let c = Config::parse(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n[http]\nlisten = \"127.0.0.1:8080\"\n\
             [storage]\npath = \"faultline.db\"\n[providers.voipco]\nalternate = \"voipco2\"\n[providers.voipco2]\n",
            "x",
        )
        .unwrap();
        let m = c.mqtt.unwrap();
        assert_eq!((m.host.as_str(), m.port), ("127.0.0.1", 1883));
        assert_eq!(
            c.providers[&Id::new("voipco").unwrap()],
            Some(Id::new("voipco2").unwrap())
        );
    }

    #[test]
    fn errors_name_field_and_line() {
        let e = Config::parse("\n[providers.a]\nalternate = \"zz\"\n", "c.toml").unwrap_err();
        assert_eq!(e.field, "alternate");
        assert_eq!(e.line, Some(3));
        assert!(e.to_string().starts_with("c.toml:3: alternate:"), "{e}");
        let e = Config::parse("[http]\nlisten = \"nope\"\n", "c.toml").unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("listen", Some(2)));
        let e = Config::parse("[mqtt]\nbogus = 1\n", "c.toml").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = Config::parse("[thresholds]\nloss_degraded = 2.0\n", "c.toml").unwrap_err();
        assert_eq!(e.field, "loss_degraded");
    }
}
