//! The agent's TOML config, two-stage: [`RawConfig`] is what serde reads (every value
//! with its span), [`Config`] is the validated result that cannot hold a bad state.
//! Every error is a [`ConfigError`] naming the field and its line.
//!
//! Targets go through [`target`]'s builder, the one the `probe` command (and central
//! config) use too; this file adds where each key is (its line). Reading the files it
//! names (password, certificates) is done here; the network and the routing table are
//! not touched (`host = "gateway"` is valid whatever the routes are now).

pub mod error;

pub use faultline_shared::target;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use faultline_shared::{Id, MqttUrl, Topics};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use toml::Spanned;

pub use self::error::ConfigError;
use self::target::{Fields, Target};

/// Window length when `window_seconds` is absent.
pub const DEFAULT_WINDOW_SECONDS: u64 = 10;
/// Longest window accepted.
pub const MAX_WINDOW_SECONDS: u64 = faultline_shared::agent_config::MAX_WINDOW_SECONDS;
/// Outbox capacity when `outbox_capacity` is absent: 24 h of default windows.
pub const DEFAULT_OUTBOX_CAPACITY: usize = 8640;
/// Where the durable outbox lives when `state_dir` is absent (systemd's StateDirectory).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/faultline";
/// The durable outbox's folder inside `state_dir` (`net::spool` keeps it).
pub const OUTBOX_DIR: &str = "outbox";
/// Largest outbox accepted (its index is 12 bytes a report in memory).
pub const MAX_OUTBOX_CAPACITY: usize = 1_000_000;
/// MQTT keepalive when `mqtt.keepalive_seconds` is absent.
pub const DEFAULT_KEEPALIVE_SECONDS: u64 = 60;
/// Longest wait between reconnect attempts when `mqtt.reconnect_max_seconds` is absent.
pub const DEFAULT_RECONNECT_MAX_SECONDS: u64 = 60;

// ---------------------------------------------------------------- raw (stage 1)

/// The file as serde reads it: everything optional and spanned, checked in stage 2.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    site: Option<Spanned<String>>,
    customer: Option<Spanned<String>>,
    isp: Option<Spanned<String>>,
    window_seconds: Option<Spanned<i64>>,
    format: Option<Spanned<String>>,
    outbox_capacity: Option<Spanned<i64>>,
    state_dir: Option<Spanned<String>>,
    mqtt: Option<Spanned<RawMqtt>>,
    #[serde(default)]
    target: Vec<Spanned<RawTarget>>,
}

/// One `[[target]]` table, raw: every key with its value's span (for error lines).
type RawTarget = BTreeMap<String, Spanned<target::Value>>;

/// The `[mqtt]` table, raw.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    url: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    client_cert: Option<Spanned<String>>,
    client_key: Option<Spanned<String>>,
    keepalive_seconds: Option<Spanned<i64>>,
    reconnect_max_seconds: Option<Spanned<i64>>,
    topic_prefix: Option<Spanned<String>>,
}

// ---------------------------------------------------------- validated (stage 2)

/// A validated agent config.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub site: Id,
    pub customer: Option<String>,
    pub isp: Id,
    pub window: Duration,
    pub format: Format,
    pub outbox_capacity: usize,
    /// The durable outbox and the last applied central config live here.
    pub state_dir: PathBuf,
    pub mqtt: MqttConfig,
    pub targets: Vec<Target>,
}

/// How reports are encoded and on which topic they go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The binary envelope on `.../report` (default).
    Postcard,
    /// `Report` JSON on `.../report/json`.
    Json,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Postcard => "postcard",
            Format::Json => "json",
        }
    }
}

/// Where and how to reach the broker.
#[derive(Debug)]
pub struct MqttConfig {
    pub broker: Broker,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Present exactly when the URL is `mqtts://`.
    pub tls: Option<TlsFiles>,
    pub keepalive: Duration,
    /// The longest wait between reconnect attempts (backoff cap).
    pub reconnect_max: Duration,
    pub topics: Topics,
}

/// A broker address from an `mqtt://` or `mqtts://` URL (parsed by
/// [`faultline_shared::mqtt_url`], like the collector's).
pub type Broker = MqttUrl;

/// TLS material, loaded and checked when the config is.
#[derive(Debug)]
pub struct TlsFiles {
    /// CA certificates from `ca_file`; `None`: the system's roots.
    pub ca: Option<(PathBuf, Vec<CertificateDer<'static>>)>,
    /// Client certificate chain and key for mutual TLS.
    pub client: Option<ClientAuth>,
}

#[derive(Debug)]
pub struct ClientAuth {
    pub cert_file: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// A password that never shows in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        line: None,
        field: "(file)".into(),
        message: format!("cannot read: {e}"),
    })?;
    parse(path, &src)
}

/// Validates `src` as the config at `path`.
pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(src).map_err(|e| toml_error(path, src, &e))?;
    Validator { path, src }.config(raw)
}

/// Turns a toml/serde error into a `ConfigError` naming the key when toml knows it.
fn toml_error(path: &Path, src: &str, e: &toml::de::Error) -> ConfigError {
    // toml keeps the key path private but prints it ("in `a.b`") when it has no input.
    let mut bare = e.clone();
    bare.set_input(None);
    let printed = bare.to_string();
    let keys = printed
        .lines()
        .find_map(|l| l.strip_prefix("in `").and_then(|l| l.strip_suffix('`')))
        .map(str::to_owned);
    let message = e.message().trim().to_owned();
    let base = keys.map(|k| match k.strip_prefix("target") {
        Some(rest) if rest.is_empty() || rest.starts_with('.') => {
            let i = e.span().map_or(0, |s| target_index_at(src, s.start));
            format!("target[{i}]{rest}")
        }
        _ => k,
    });
    let field = match (base, field_from_message(&message)) {
        (Some(b), Some(leaf)) => format!("{b}.{leaf}"),
        (Some(b), None) => b,
        (None, Some(leaf)) => leaf,
        (None, None) => "(syntax)".into(),
    };
    ConfigError::new(path, src, e.span(), field, message)
}

/// `unknown field `x`` / `missing field `x``: the `x`.
fn field_from_message(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    Some(rest.split('`').next()?.to_owned())
}

/// Which `[[target]]` table (0-based) the byte offset `at` lies in.
fn target_index_at(src: &str, at: usize) -> usize {
    let before = &src[..at.min(src.len())];
    let headers = before
        .lines()
        .filter(|l| {
            let t: String = l.chars().filter(|c| !c.is_whitespace()).collect();
            t.starts_with("[[target]]")
        })
        .count();
    headers.saturating_sub(1)
}

struct Validator<'a> {
    path: &'a Path,
    src: &'a str,
}

impl Validator<'_> {
    fn err(&self, span: Option<Range<usize>>, field: &str, msg: impl fmt::Display) -> ConfigError {
        ConfigError::new(self.path, self.src, span, field, msg)
    }

    fn missing(&self, span: Option<Range<usize>>, field: &str, what: &str) -> ConfigError {
        self.err(span, field, format!("missing: {what}"))
    }

    fn id(&self, v: &Spanned<String>, field: &str) -> Result<Id, ConfigError> {
        Id::new(v.get_ref().as_str()).map_err(|e| self.err(Some(v.span()), field, e))
    }

    fn int_in(&self, v: &Spanned<i64>, field: &str, lo: u64, hi: u64) -> Result<u64, ConfigError> {
        u64::try_from(*v.get_ref())
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| {
                self.err(
                    Some(v.span()),
                    field,
                    format!("{} is out of range {lo}..={hi}", v.get_ref()),
                )
            })
    }

    /// A path relative to the config file's folder.
    fn file(&self, v: &Spanned<String>) -> PathBuf {
        let p = Path::new(v.get_ref());
        match self.path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_owned(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let site = raw
            .site
            .as_ref()
            .ok_or_else(|| self.missing(None, "site", "the site's id, e.g. site = \"acme-hq\""))?;
        let site = self.id(site, "site")?;
        let isp = raw.isp.as_ref().ok_or_else(|| {
            self.missing(None, "isp", "the site's ISP label, e.g. isp = \"Comcast\"")
        })?;
        let isp = self.id(isp, "isp")?;
        let customer = match &raw.customer {
            Some(c) if c.get_ref().trim().is_empty() || c.get_ref().len() > 256 => {
                return Err(self.err(Some(c.span()), "customer", "must be 1 to 256 characters"));
            }
            Some(c) => Some(c.get_ref().clone()),
            None => None,
        };
        let window_s = match &raw.window_seconds {
            Some(w) => self.int_in(w, "window_seconds", 1, MAX_WINDOW_SECONDS)?,
            None => DEFAULT_WINDOW_SECONDS,
        };
        let format = match &raw.format {
            None => Format::Postcard,
            Some(f) => match f.get_ref().as_str() {
                "postcard" => Format::Postcard,
                "json" => Format::Json,
                other => {
                    return Err(self.err(
                        Some(f.span()),
                        "format",
                        format!("unknown format {other:?}: use \"postcard\" or \"json\""),
                    ));
                }
            },
        };
        let outbox_capacity = match &raw.outbox_capacity {
            Some(c) => self.int_in(c, "outbox_capacity", 1, MAX_OUTBOX_CAPACITY as u64)? as usize,
            None => DEFAULT_OUTBOX_CAPACITY,
        };
        let state_dir = match &raw.state_dir {
            Some(d) if d.get_ref().trim().is_empty() => {
                return Err(self.err(Some(d.span()), "state_dir", "must not be empty"));
            }
            Some(d) => self.file(d),
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let mqtt = raw
            .mqtt
            .as_ref()
            .ok_or_else(|| self.missing(None, "mqtt", "an [mqtt] table with the broker's url"))?;
        let mqtt = self.mqtt(mqtt, &site)?;
        let targets = self.targets(&raw.target)?;
        Ok(Config {
            path: self.path.to_owned(),
            site,
            customer,
            isp,
            window: Duration::from_secs(window_s),
            format,
            outbox_capacity,
            state_dir,
            mqtt,
            targets,
        })
    }

    fn mqtt(&self, raw: &Spanned<RawMqtt>, site: &Id) -> Result<MqttConfig, ConfigError> {
        let table = Some(raw.span());
        let raw = raw.get_ref();
        let url = raw.url.as_ref().ok_or_else(|| {
            self.missing(
                table.clone(),
                "mqtt.url",
                "e.g. url = \"mqtts://broker.example:8883\"",
            )
        })?;
        let broker =
            MqttUrl::parse(url.get_ref()).map_err(|e| self.err(Some(url.span()), "mqtt.url", e))?;
        let client_id = match &raw.client_id {
            Some(c) => {
                Id::validate(c.get_ref())
                    .map_err(|e| self.err(Some(c.span()), "mqtt.client_id", e))?;
                c.get_ref().clone()
            }
            None => default_client_id(site),
        };
        let username = match &raw.username {
            Some(u) if u.get_ref().is_empty() => {
                return Err(self.err(Some(u.span()), "mqtt.username", "must not be empty"));
            }
            Some(u) => Some(u.get_ref().clone()),
            None => None,
        };
        let password = match &raw.password_file {
            Some(p) => {
                if username.is_none() {
                    return Err(self.err(
                        Some(p.span()),
                        "mqtt.password_file",
                        "a password needs mqtt.username",
                    ));
                }
                let file = self.file(p);
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    self.err(
                        Some(p.span()),
                        "mqtt.password_file",
                        format!("cannot read {}: {e}", file.display()),
                    )
                })?;
                let pw = text.trim_end_matches(['\r', '\n']);
                if pw.is_empty() {
                    return Err(self.err(
                        Some(p.span()),
                        "mqtt.password_file",
                        format!("{} is empty", file.display()),
                    ));
                }
                Some(Secret(pw.to_owned()))
            }
            None => None,
        };
        let tls = self.tls(raw, &broker)?;
        let keepalive = match &raw.keepalive_seconds {
            Some(k) => self.int_in(k, "mqtt.keepalive_seconds", 5, 3600)?,
            None => DEFAULT_KEEPALIVE_SECONDS,
        };
        let reconnect_max = match &raw.reconnect_max_seconds {
            Some(k) => self.int_in(k, "mqtt.reconnect_max_seconds", 1, 3600)?,
            None => DEFAULT_RECONNECT_MAX_SECONDS,
        };
        let topics = match &raw.topic_prefix {
            Some(p) => Topics::new(p.get_ref())
                .map_err(|e| self.err(Some(p.span()), "mqtt.topic_prefix", e))?,
            None => Topics::default(),
        };
        Ok(MqttConfig {
            broker,
            client_id,
            username,
            password,
            tls,
            keepalive: Duration::from_secs(keepalive),
            reconnect_max: Duration::from_secs(reconnect_max),
            topics,
        })
    }

    fn tls(&self, raw: &RawMqtt, broker: &Broker) -> Result<Option<TlsFiles>, ConfigError> {
        let tls_fields = [
            ("mqtt.ca_file", &raw.ca_file),
            ("mqtt.client_cert", &raw.client_cert),
            ("mqtt.client_key", &raw.client_key),
        ];
        if !broker.tls {
            if let Some((field, Some(v))) = tls_fields.iter().find(|(_, v)| v.is_some()) {
                return Err(self.err(Some(v.span()), field, "needs an mqtts:// url"));
            }
            return Ok(None);
        }
        let certs = |v: &Spanned<String>, field: &str| {
            let file = self.file(v);
            let certs = CertificateDer::pem_file_iter(&file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    self.err(
                        Some(v.span()),
                        field,
                        format!("cannot read {}: {e}", file.display()),
                    )
                })?;
            if certs.is_empty() {
                return Err(self.err(
                    Some(v.span()),
                    field,
                    format!("{} holds no PEM certificate", file.display()),
                ));
            }
            Ok((file, certs))
        };
        let ca = raw
            .ca_file
            .as_ref()
            .map(|v| certs(v, "mqtt.ca_file"))
            .transpose()?;
        let client = match (&raw.client_cert, &raw.client_key) {
            (None, None) => None,
            (Some(c), None) => {
                return Err(self.err(
                    Some(c.span()),
                    "mqtt.client_key",
                    "missing: client_cert needs client_key",
                ));
            }
            (None, Some(k)) => {
                return Err(self.err(
                    Some(k.span()),
                    "mqtt.client_cert",
                    "missing: client_key needs client_cert",
                ));
            }
            (Some(c), Some(k)) => {
                let (cert_file, certs) = certs(c, "mqtt.client_cert")?;
                let key_file = self.file(k);
                let key = PrivateKeyDer::from_pem_file(&key_file).map_err(|e| {
                    self.err(
                        Some(k.span()),
                        "mqtt.client_key",
                        format!(
                            "cannot read a PEM private key from {}: {e}",
                            key_file.display()
                        ),
                    )
                })?;
                Some(ClientAuth {
                    cert_file,
                    certs,
                    key,
                })
            }
        };
        Ok(Some(TlsFiles { ca, client }))
    }

    /// Every `[[target]]` through the target builder; its errors get the table's
    /// index and the line of the offending value (of the table when the key is missing).
    fn targets(&self, raw: &[Spanned<RawTarget>]) -> Result<Vec<Target>, ConfigError> {
        let fields: Vec<Fields> = raw
            .iter()
            .map(|t| {
                t.get_ref()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.get_ref().clone()))
                    .collect()
            })
            .collect();
        target::build_all(&fields).map_err(|(i, e)| {
            let table = &raw[i];
            let span = match table.get_ref().get(&e.field) {
                Some(v) => v.span(),
                None => table.span(),
            };
            self.err(Some(span), &format!("target[{i}].{}", e.field), e.message)
        })
    }
}

/// The client id used when `mqtt.client_id` is absent: stable per site, so the broker
/// keeps the agent's session across reconnects and restarts.
pub fn default_client_id(site: &Id) -> String {
    format!("faultline-{site}")
}

impl fmt::Display for Config {
    /// The resolved settings, as `check` prints them before the targets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.mqtt;
        let window_s = self.window.as_secs();
        writeln!(f, "config   {}: valid", self.path.display())?;
        write!(f, "site     {} (ISP {}", self.site, self.isp)?;
        if let Some(c) = &self.customer {
            write!(f, ", customer {c}")?;
        }
        writeln!(f, ")")?;
        let topic = match self.format {
            Format::Postcard => m.topics.report(&self.site),
            Format::Json => m.topics.report_json(&self.site),
        };
        writeln!(
            f,
            "window   {window_s} s; reports as {} on {topic}",
            self.format.as_str()
        )?;
        write!(f, "broker   {} as client {}", m.broker, m.client_id)?;
        if let Some(u) = &m.username {
            write!(f, ", user {u}")?;
            if m.password.is_some() {
                write!(f, " with password")?;
            }
        }
        writeln!(
            f,
            ", keepalive {} s, persistent session, reconnect backoff up to {} s",
            m.keepalive.as_secs(),
            m.reconnect_max.as_secs()
        )?;
        if let Some(tls) = &m.tls {
            match &tls.ca {
                Some((file, certs)) => write!(
                    f,
                    "tls      CA {} ({} certificates)",
                    file.display(),
                    certs.len()
                )?,
                None => write!(f, "tls      the system's CA roots")?,
            }
            if let Some(c) = &tls.client {
                write!(f, "; client certificate {}", c.cert_file.display())?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "status   {} (retained; last will offline/lost)",
            m.topics.status(&self.site)
        )?;
        let hours = self.outbox_capacity as u64 * window_s / 3600;
        writeln!(
            f,
            "outbox   {} reports (about {hours} h of windows while offline), on disk in {}",
            self.outbox_capacity,
            self.state_dir.join(OUTBOX_DIR).display()
        )?;
        // The targets follow from `central::Plan` (local and central together).
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_client_id_is_stable_per_site() {
        let s = Id::new("acme-hq").unwrap();
        assert_eq!(default_client_id(&s), "faultline-acme-hq");
    }

    #[test]
    fn finds_the_target_table_of_an_offset() {
        let src = "site = 1\n[[target]]\nname = \"a\"\n[[ target ]]\nname = \"b\"\n";
        assert_eq!(target_index_at(src, src.find("\"a\"").unwrap()), 0);
        assert_eq!(target_index_at(src, src.find("\"b\"").unwrap()), 1);
    }

    fn check(src: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/etc/faultline/agent.toml"), src)
    }

    const MINIMAL: &str =
        "site = \"acme-hq\"\nisp = \"Comcast\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n";

    #[test]
    fn minimal_config_gets_the_defaults() {
        let c = check(MINIMAL).unwrap();
        assert_eq!(c.site, "acme-hq");
        assert_eq!(c.window, Duration::from_secs(DEFAULT_WINDOW_SECONDS));
        assert_eq!(c.format, Format::Postcard);
        assert_eq!(c.outbox_capacity, DEFAULT_OUTBOX_CAPACITY);
        assert_eq!(c.mqtt.client_id, "faultline-acme-hq");
        assert_eq!(c.mqtt.keepalive, Duration::from_secs(60));
        assert!(c.mqtt.tls.is_none());
        assert!(c.targets.is_empty());
        let plan = c.to_string();
        assert!(plan.contains("faultline/v1/sites/acme-hq/report"), "{plan}");
    }

    fn err(src: &str) -> ConfigError {
        check(src).expect_err("must be rejected")
    }

    #[test]
    fn errors_name_field_and_line() {
        let e = err("site = \"acme hq\"\nisp = \"x\"\n[mqtt]\nurl = \"mqtt://b\"\n");
        assert_eq!((e.field.as_str(), e.line), ("site", Some(1)));
        assert!(e.message.contains("acme hq"), "{e}");

        let e = err("site = \"a\"\nisp = \"b\"\nwindow_seconds = 0\n[mqtt]\nurl = \"mqtt://b\"\n");
        assert_eq!((e.field.as_str(), e.line), ("window_seconds", Some(3)));

        let e = err("site = \"a\"\nisp = \"b\"\n[mqtt]\nurl = \"http://b\"\n");
        assert_eq!((e.field.as_str(), e.line), ("mqtt.url", Some(4)));

        let e = err("site = \"a\"\nisp = \"b\"\nformat = \"xml\"\n[mqtt]\nurl = \"mqtt://b\"\n");
        assert_eq!((e.field.as_str(), e.line), ("format", Some(3)));

        let e = err("site = \"a\"\n[mqtt]\nurl = \"mqtt://b\"\n");
        assert_eq!(e.field, "isp");
        assert!(e.message.starts_with("missing"), "{e}");

        let e = err("site = \"a\"\nisp = \"b\"\n[mqtt]\nclient_id = \"x\"\n");
        assert_eq!((e.field.as_str(), e.line), ("mqtt.url", Some(3)));

        let e = err("site = \"a\"\nisp = \"b\"\nwindow_secs = 5\n[mqtt]\nurl = \"mqtt://b\"\n");
        assert_eq!((e.field.as_str(), e.line), ("window_secs", Some(3)));

        let e =
            err("site = \"a\"\nisp = \"b\"\n[mqtt]\nurl = \"mqtt://b\"\nca_file = \"ca.pem\"\n");
        assert_eq!((e.field.as_str(), e.line), ("mqtt.ca_file", Some(5)));

        let e = err(
            "site = \"a\"\nisp = \"b\"\n[mqtt]\nurl = \"mqtt://b\"\nkeepalive_seconds = \"60\"\n",
        );
        assert_eq!(e.line, Some(5), "{e}");
        assert_eq!(e.field, "mqtt.keepalive_seconds", "{e}");

        let e = err("site = \"a\"\nisp = \"b\"\n[mqtt\nurl = \"mqtt://b\"\n");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn target_errors_name_the_table_the_key_and_its_line() {
        let head = "site = \"a\"\nisp = \"b\"\n[mqtt]\nurl = \"mqtt://b\"\n";
        let tcp =
            "[[target]]\nname = \"x\"\nlayer = \"lan\"\nkind = \"tcp\"\nhost = \"10.0.0.1:80\"\n";
        let e = err(&format!(
            "{head}{tcp}[[target]]\nname = \"y\"\nlayer = \"lan\"\nkind = \"stamp\"\nhost = \"h\"\npps = 0\n"
        ));
        assert_eq!(
            (e.field.as_str(), e.line),
            ("target[1].pps", Some(15)),
            "{e}"
        );
        // A missing key: the line of its table.
        let e = err(&format!(
            "{head}{tcp}\n[[target]]\nname = \"y\"\nlayer = \"lan\"\nkind = \"tcp\"\n"
        ));
        assert_eq!(e.field, "target[1].host", "{e}");
        assert!(e.message.starts_with("missing"), "{e}");
        assert_eq!(e.line, Some(11), "{e}");
    }

    #[test]
    fn gateway_targets_do_not_depend_on_the_routing_table() {
        let src = format!(
            "{MINIMAL}[[target]]\nname = \"gw\"\nlayer = \"lan\"\nkind = \"icmp\"\nhost = \"gateway\"\n\
             [[target]]\nname = \"pbx\"\nlayer = \"lan\"\nkind = \"sip\"\nhost = \"gateway:5060\"\n"
        );
        // `parse` reads nothing but the text: valid on any machine.
        let c = check(&src).unwrap();
        assert!(c.targets.iter().all(Target::uses_gateway));
        let plan: Vec<String> = c.targets.iter().map(Target::to_string).collect();
        assert!(
            plan[0].contains("kind=icmp host=gateway count=1/s"),
            "{plan:?}"
        );
        assert!(plan[1].contains("kind=sip host=gateway:5060"), "{plan:?}");
    }

    #[test]
    fn password_file_is_read_and_kept_secret() {
        let dir = std::env::temp_dir().join(format!("faultline-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
        let src = "site = \"a\"\nisp = \"b\"\n[mqtt]\nurl = \"mqtt://b\"\nusername = \"u\"\npassword_file = \"pw\"\n";
        let c = parse(&dir.join("agent.toml"), src).unwrap();
        assert_eq!(c.mqtt.password.as_ref().unwrap().expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!c.to_string().contains("s3cret"));
        let e = parse(&dir.join("agent.toml"), &src.replace("\"pw\"", "\"nope\"")).unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("mqtt.password_file", Some(6)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
