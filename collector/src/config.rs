//! `collector.toml`: raw TOML values with their spans first, then a validated
//! [`Config`] that cannot hold a bad state. Errors name the dotted field and the line
//! of the offending value. Files the config names (password and token files, TLS
//! certificates, the embedded broker's logins) are read and checked here, so `check`
//! finds them missing or bad before `run` does.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use faultline_shared::{Id, MqttUrl, Topics};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use toml::Spanned;

use crate::alerts::{AlertsConfig, Endpoint, WebhookConfig};
use crate::engine::Thresholds;
use crate::fleet_config::FleetTarget;
use crate::maintenance::{Origin, Window};
use crate::passwd::PasswordFile;

/// Default evaluation window, matching the agents' default.
pub const DEFAULT_WINDOW_MS: u64 = 10_000;
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_STORAGE_PATH: &str = "faultline.db";
pub const DEFAULT_BROKER_LISTEN: &str = "127.0.0.1:1883";
pub const DEFAULT_BROKER_LISTEN_V5: &str = "127.0.0.1:1884";
pub const DEFAULT_CLIENT_ID: &str = "faultline-collector";
/// Appended to `username` (and `client_id`) for the reading connection's login.
pub const INGEST_SUFFIX: &str = "-in";
/// Largest payload accepted on any ingest topic.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;
/// Shortest `[http] token_file` token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// Largest password or token file read.
const MAX_SECRET_FILE: u64 = 64 * 1024;
/// Largest certificate or key file read.
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// The contents of `path`, which must be a regular file of at most `max` bytes (not a
/// device or pipe that never ends); the error names the file.
pub(crate) fn read_file(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mut out = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if out.len() as u64 > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    Ok(out)
}

// ---------------------------------------------------------------- raw (stage 1)

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    window_seconds: Option<Spanned<f64>>,
    topic_prefix: Option<Spanned<String>>,
    mqtt: Option<Spanned<RawMqtt>>,
    http: Option<RawHttp>,
    storage: Option<RawStorage>,
    broker: Option<RawBroker>,
    /// The engine's own type; its errors are located with [`value_span`].
    thresholds: Option<Thresholds>,
    #[serde(default)]
    providers: BTreeMap<String, Spanned<RawProvider>>,
    fleet: Option<RawFleet>,
    /// Cluster mode (see [`crate::cluster`]).
    cluster: Option<Spanned<crate::cluster::RawCluster>>,
    alerts: Option<RawAlerts>,
    #[serde(default)]
    maintenance: Vec<Spanned<RawMaintenance>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    alertmanager: Option<Spanned<String>>,
    #[serde(default)]
    webhook: Vec<Spanned<RawWebhook>>,
    public_url: Option<Spanned<String>>,
    queue: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Spanned<String>,
    secret_file: Spanned<String>,
    /// A private CA for this receiver (default: the system's CAs).
    ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaintenance {
    scope: Spanned<String>,
    id: Spanned<String>,
    from: Spanned<String>,
    to: Spanned<String>,
    note: Option<String>,
}

/// `[fleet]`: central config pushed to the agents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    #[serde(default)]
    target: Vec<Spanned<RawFleetTarget>>,
}

/// One `[[fleet.target]]`: an agent.toml `[[target]]`'s keys plus `sites`.
type RawFleetTarget = BTreeMap<String, Spanned<toml::Value>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    url: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    ingest_username: Option<Spanned<String>>,
    /// Deprecated: the password inline. `password_file` keeps it out of the config.
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    client_cert: Option<Spanned<String>>,
    client_key: Option<Spanned<String>>,
    share_group: Option<Spanned<String>>,
    max_payload_bytes: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    hosts: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    path: Option<Spanned<String>>,
    /// `postgres://user[:password]@host[:port]/database`: history in PostgreSQL.
    url: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    raw_days: Option<u32>,
    hourly_days: Option<u32>,
    incident_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    listen: Option<Spanned<String>>,
    listen_v5: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    alternate: Option<Spanned<String>>,
}

// ---------------------------------------------------------- validated (stage 2)

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
    /// `[http] listen` was written in the file (a cluster site worker serves its
    /// `/metrics` only then: several may run on one host).
    pub http_listen_set: bool,
    /// `[http] token_file`: every path but `/metrics` needs it.
    pub http_token: Option<Secret>,
    /// `[http] hosts`: Host names served besides loopback names and the listen address.
    pub http_hosts: Vec<String>,
    pub storage: Storage,
    pub broker_listen: SocketAddr,
    pub broker_listen_v5: SocketAddr,
    /// `[broker] password_file`: the embedded broker's logins (none: loopback only).
    pub broker_logins: Option<BrokerLogins>,
    pub thresholds: Thresholds,
    /// Provider → its configured alternate (if any).
    pub providers: BTreeMap<Id, Option<Id>>,
    /// `[alerts]`: webhooks and Alertmanager.
    pub alerts: AlertsConfig,
    /// `[[maintenance]]` windows (HTTP adds more at run time).
    pub maintenance: Vec<Window>,
    /// `[[fleet.target]]`: central targets for the matching sites' agents (live on SIGHUP).
    pub fleet_targets: Vec<FleetTarget>,
    /// The file this config was read from (`None`: defaults), read again on SIGHUP.
    pub source: Option<PathBuf>,
    /// Things that work but should be fixed (each names file, line and field).
    pub warnings: Vec<String>,
    /// `[cluster]`: cluster mode (absent: one node).
    pub cluster: Option<crate::cluster::Cluster>,
}

/// How to reach an external broker.
#[derive(Debug, Clone)]
pub struct Mqtt {
    pub host: String,
    pub port: u16,
    /// Present exactly when the URL is `mqtts://`.
    pub tls: Option<MqttTls>,
    /// The publishing connection's client id; the reading one adds [`INGEST_SUFFIX`].
    pub client_id: String,
    /// The publishing connection's login.
    pub username: Option<String>,
    /// The reading connection's login (`{username}-in` unless set): a broker that
    /// ties client ids to logins (Mosquitto's `use_username_as_clientid`) needs one
    /// login per connection.
    pub ingest_username: Option<String>,
    pub password: Option<Secret>,
}

/// TLS to the broker, loaded and checked with the config.
#[derive(Debug, Clone)]
pub struct MqttTls {
    pub config: Arc<rustls::ClientConfig>,
    /// `None`: the system's CA certificates.
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    pub client_cert: Option<PathBuf>,
}

/// The embedded broker's logins.
#[derive(Debug, Clone)]
pub struct BrokerLogins {
    pub path: PathBuf,
    pub file: Arc<PasswordFile>,
}

#[derive(Debug, Clone)]
pub struct Storage {
    pub location: StorageLocation,
    /// Per-window summaries kept at full resolution for this many days, then hourly.
    pub raw_days: u32,
    pub hourly_days: u32,
    pub incident_days: u32,
}

/// Where history lives.
#[derive(Debug, Clone)]
pub enum StorageLocation {
    /// A SQLite file (`[storage] path`, the default).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`[storage] url`), shared by a cluster's collectors.
    Postgres(Box<PgLocation>),
}

/// A PostgreSQL database to connect to. Its `Debug` output (tokio-postgres's)
/// redacts the password.
#[derive(Debug, Clone)]
pub struct PgLocation {
    pub config: postgres::Config,
    /// The URL without its password, for messages.
    pub shown: String,
}

/// A password or token that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A config error naming the field and, when known, its line.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {field}: {msg}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    /// Dotted field path, e.g. `broker.listen` or `providers.voipco.alternate`.
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
    /// Reads and validates `path`; files it names are relative to its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            field: "-".into(),
            msg: format!("cannot read: {e}"),
        })?;
        let mut c = Config::parse(&text, &path.display().to_string())?;
        c.source = Some(path.to_owned());
        Ok(c)
    }

    /// Validates `text` (the contents of `file`; files it names are relative to
    /// `file`'s folder).
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let v = Validator {
            text,
            file,
            dir: Path::new(file).parent().unwrap_or(Path::new("")),
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: e.span().map(|s| v.line(s.start)),
            field: "toml".into(),
            msg: e.message().to_owned(),
        })?;
        v.config(raw)
    }
}

/// Stage 2: the raw values, checked against the text they came from.
struct Validator<'a> {
    text: &'a str,
    file: &'a str,
    dir: &'a Path,
}

impl Validator<'_> {
    fn line(&self, at: usize) -> usize {
        self.text.as_bytes()[..at.min(self.text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn err(&self, span: Option<Range<usize>>, field: &str, msg: impl fmt::Display) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: span.map(|s| self.line(s.start)),
            field: field.to_owned(),
            msg: msg.to_string(),
        }
    }

    fn warn(&self, span: Range<usize>, field: &str, msg: impl fmt::Display) -> String {
        self.err(Some(span), field, msg).to_string()
    }

    /// A path from the config, relative to the config file's folder.
    fn path(&self, v: &Spanned<String>) -> PathBuf {
        self.dir.join(v.get_ref())
    }

    /// The trimmed first line of a secret file; empty is an error.
    fn secret_file(&self, v: &Spanned<String>, field: &str) -> Result<Secret, ConfigError> {
        let path = self.path(v);
        let bytes =
            read_file(&path, MAX_SECRET_FILE).map_err(|m| self.err(Some(v.span()), field, m))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            self.err(
                Some(v.span()),
                field,
                format!("{} is not UTF-8 text", path.display()),
            )
        })?;
        let s = text.trim_end_matches(['\r', '\n']);
        if s.is_empty() {
            return Err(self.err(
                Some(v.span()),
                field,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Secret(s.to_owned()))
    }

    /// `[storage] url` (and `password_file`), parsed and checked.
    fn pg_location(
        &self,
        url: &Spanned<String>,
        password_file: &Option<Spanned<String>>,
    ) -> Result<PgLocation, ConfigError> {
        let text = url.get_ref();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(self.err(
                Some(url.span()),
                "storage.url",
                "expected postgres://user@host[:port]/database",
            ));
        }
        // The parser's message may quote the URL, password included: keep it out.
        let mut config: postgres::Config = text.parse().map_err(|_| {
            self.err(
                Some(url.span()),
                "storage.url",
                "not a PostgreSQL URL (postgres://user@host[:port]/database)",
            )
        })?;
        if config.get_dbname().is_none() {
            return Err(self.err(
                Some(url.span()),
                "storage.url",
                "name the database: postgres://user@host/faultline",
            ));
        }
        if let Some(f) = password_file {
            if config.get_password().is_some() {
                return Err(self.err(
                    Some(f.span()),
                    "storage.password_file",
                    "the url has a password already: keep it in one place",
                ));
            }
            config.password(self.secret_file(f, "storage.password_file")?.expose());
        }
        let shown = match (config.get_password(), text.split_once("://")) {
            (Some(_), Some((scheme, rest))) => match rest.split_once('@') {
                Some((login, host)) => {
                    let user = login.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}@{host}")
                }
                None => text.clone(),
            },
            _ => text.clone(),
        };
        // A password only in the query string (`?password=`) is not shown either.
        let shown = match shown.split_once('?') {
            Some((base, _)) => base.to_owned(),
            None => shown,
        };
        Ok(PgLocation { config, shown })
    }

    fn addr(
        &self,
        v: Option<&Spanned<String>>,
        field: &str,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        match v {
            None => Ok(default.parse().expect("default addresses parse")),
            Some(v) => v.get_ref().parse().map_err(|e| {
                self.err(
                    Some(v.span()),
                    field,
                    format!("{:?}: {e} (expected IP:PORT)", v.get_ref()),
                )
            }),
        }
    }

    fn id(&self, v: &Spanned<String>, field: &str) -> Result<Id, ConfigError> {
        Id::new(v.get_ref().as_str()).map_err(|e| self.err(Some(v.span()), field, e))
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        let window_ms = match &raw.window_seconds {
            None => DEFAULT_WINDOW_MS,
            Some(s) if (1.0..=3600.0).contains(s.get_ref()) => (s.get_ref() * 1000.0) as u64,
            Some(s) => {
                return Err(self.err(
                    Some(s.span()),
                    "window_seconds",
                    format!("{} is not in 1..=3600", s.get_ref()),
                ));
            }
        };
        let (prefix, topics) = match &raw.topic_prefix {
            None => (
                "faultline".to_owned(),
                Topics::new("faultline").expect("default prefix"),
            ),
            Some(p) => (
                p.get_ref().clone(),
                Topics::new(p.get_ref())
                    .map_err(|e| self.err(Some(p.span()), "topic_prefix", e))?,
            ),
        };

        let rm = raw.mqtt.as_ref().map(Spanned::get_ref);
        let mqtt = match rm {
            Some(m) if m.url.is_some() => Some(self.mqtt(m, &mut warnings)?),
            _ => {
                if let Some(m) = rm {
                    self.no_url(m)?;
                }
                None
            }
        };
        let share_group = rm
            .and_then(|m| m.share_group.as_ref())
            .map(|g| self.id(g, "mqtt.share_group"))
            .transpose()?;
        let max_payload_bytes = match rm.and_then(|m| m.max_payload_bytes.as_ref()) {
            None => DEFAULT_MAX_PAYLOAD,
            Some(n) => usize::try_from(*n.get_ref())
                .ok()
                .filter(|n| (256..=1 << 20).contains(n))
                .ok_or_else(|| {
                    self.err(
                        Some(n.span()),
                        "mqtt.max_payload_bytes",
                        format!("{} is not in 256..=1048576", n.get_ref()),
                    )
                })?,
        };

        let rh = raw.http.unwrap_or_default();
        let http_listen = self.addr(rh.listen.as_ref(), "http.listen", DEFAULT_HTTP_LISTEN)?;
        let http_listen_set = rh.listen.is_some();
        let http_token = match &rh.token_file {
            None => None,
            Some(f) => Some(self.token(f)?),
        };
        let mut http_hosts = Vec::new();
        for h in rh.hosts.iter().flatten() {
            http_hosts.push(
                crate::http::guard::host_name(h.get_ref())
                    .map_err(|m| self.err(Some(h.span()), "http.hosts", m))?,
            );
        }
        if http_token.is_none() && !http_listen.ip().is_loopback() {
            let span = rh.listen.as_ref().map(Spanned::span).unwrap_or_default();
            warnings.push(self.warn(
                span,
                "http.listen",
                format!(
                    "{http_listen} is not loopback and no [http] token_file is set: anyone who \
                     reaches it reads every site's state"
                ),
            ));
        }

        let rb = raw.broker.unwrap_or_default();
        let broker_listen =
            self.addr(rb.listen.as_ref(), "broker.listen", DEFAULT_BROKER_LISTEN)?;
        let broker_listen_v5 = self.addr(
            rb.listen_v5.as_ref(),
            "broker.listen_v5",
            DEFAULT_BROKER_LISTEN_V5,
        )?;
        let broker_logins = match &rb.password_file {
            None => None,
            Some(f) => {
                let path = self.path(f);
                let file = PasswordFile::load(&path)
                    .map_err(|m| self.err(Some(f.span()), "broker.password_file", m))?;
                Some(BrokerLogins {
                    path,
                    file: Arc::new(file),
                })
            }
        };
        if mqtt.is_none() {
            for (field, addr, v) in [
                ("broker.listen", broker_listen, &rb.listen),
                ("broker.listen_v5", broker_listen_v5, &rb.listen_v5),
            ] {
                if addr.ip().is_loopback() {
                    continue;
                }
                let span = v.as_ref().map(Spanned::span);
                if broker_logins.is_none() {
                    return Err(self.err(
                        span,
                        field,
                        format!(
                            "{addr} is not loopback and [broker] password_file is not set: \
                             anyone who reaches the embedded broker could publish reports and \
                             verdicts. Set [broker] password_file (logins made with \
                             mosquitto_passwd) or listen on 127.0.0.1"
                        ),
                    ));
                }
                warnings.push(self.warn(
                    span.unwrap_or_default(),
                    field,
                    format!(
                        "the embedded broker has no TLS: logins cross the network unencrypted \
                         on {addr}, and any login may publish on any topic; use Mosquitto with \
                         the shipped config in production"
                    ),
                ));
            }
        }

        let rs = raw.storage.unwrap_or_default();
        let location = match (&rs.path, &rs.url) {
            (Some(_), Some(url)) => {
                return Err(self.err(
                    Some(url.span()),
                    "storage.url",
                    "set either [storage] path (SQLite) or url (PostgreSQL), not both",
                ));
            }
            (_, Some(url)) => {
                StorageLocation::Postgres(Box::new(self.pg_location(url, &rs.password_file)?))
            }
            (path, None) => {
                if let Some(f) = &rs.password_file {
                    return Err(self.err(
                        Some(f.span()),
                        "storage.password_file",
                        "only a PostgreSQL [storage] url takes a password",
                    ));
                }
                StorageLocation::Sqlite(PathBuf::from(
                    path.as_ref()
                        .map_or(DEFAULT_STORAGE_PATH, |p| p.get_ref().as_str()),
                ))
            }
        };
        let storage = Storage {
            location,
            raw_days: rs.raw_days.unwrap_or(2),
            hourly_days: rs.hourly_days.unwrap_or(90),
            incident_days: rs.incident_days.unwrap_or(400),
        };
        let thresholds = raw.thresholds.unwrap_or_default();
        thresholds.validate().map_err(|(f, m)| {
            self.err(
                value_span(self.text, &["thresholds", f]),
                &format!("thresholds.{f}"),
                m,
            )
        })?;
        let mut providers = BTreeMap::new();
        for (name, p) in &raw.providers {
            let id = Id::new(name.as_str())
                .map_err(|e| self.err(Some(p.span()), &format!("providers.{name}"), e))?;
            let field = format!("providers.{name}.alternate");
            let alt = match &p.get_ref().alternate {
                None => None,
                Some(a) => {
                    let alt = self.id(a, &field)?;
                    if alt == id {
                        return Err(self.err(
                            Some(a.span()),
                            &field,
                            format!("provider {name} names itself"),
                        ));
                    }
                    if !raw.providers.contains_key(alt.as_str()) {
                        return Err(self.err(
                            Some(a.span()),
                            &field,
                            format!("{alt:?} is not a configured [providers.{alt}]"),
                        ));
                    }
                    Some(alt)
                }
            };
            providers.insert(id, alt);
        }
        let alerts = self.alerts(raw.alerts.unwrap_or_default(), &mut warnings)?;
        let maintenance = raw
            .maintenance
            .iter()
            .enumerate()
            .map(|(n, m)| self.maintenance(n, m))
            .collect::<Result<Vec<_>, _>>()?;
        let fleet_targets = match &raw.fleet {
            Some(f) => self.fleet_targets(&f.target)?,
            None => Vec::new(),
        };
        let cluster = match raw.cluster {
            None => None,
            Some(c) => {
                let span = c.span();
                Some(
                    c.into_inner()
                        .validate()
                        .map_err(|(field, msg)| self.err(Some(span), field, msg))?,
                )
            }
        };
        Ok(Config {
            window_ms,
            topics,
            prefix,
            mqtt,
            max_payload_bytes,
            share_group,
            http_listen,
            http_listen_set,
            http_token,
            http_hosts,
            storage,
            broker_listen,
            broker_listen_v5,
            broker_logins,
            thresholds,
            providers,
            alerts,
            maintenance,
            fleet_targets,
            source: None,
            warnings,
            cluster,
        })
    }

    fn alerts(
        &self,
        a: RawAlerts,
        warnings: &mut Vec<String>,
    ) -> Result<AlertsConfig, ConfigError> {
        let url = |v: &Spanned<String>, field: &str| {
            Endpoint::parse(v.get_ref()).map_err(|m| self.err(Some(v.span()), field, m))
        };
        let alertmanager = a
            .alertmanager
            .as_ref()
            .map(|v| url(v, "alerts.alertmanager"))
            .transpose()?;
        let mut webhooks: Vec<WebhookConfig> = Vec::new();
        for w in &a.webhook {
            let w = w.get_ref();
            let endpoint = url(&w.url, "alerts.webhook.url")?;
            if webhooks.iter().any(|o| o.url == endpoint) {
                return Err(self.err(
                    Some(w.url.span()),
                    "alerts.webhook.url",
                    format!("{endpoint} is listed twice"),
                ));
            }
            let secret = self.secret_file(&w.secret_file, "alerts.webhook.secret_file")?;
            if secret.expose().len() < MIN_TOKEN_LEN {
                return Err(self.err(
                    Some(w.secret_file.span()),
                    "alerts.webhook.secret_file",
                    format!(
                        "the secret must be at least {MIN_TOKEN_LEN} characters \
                         (e.g. head -c 32 /dev/urandom | base64)"
                    ),
                ));
            }
            let roots = match &w.ca_file {
                None => None,
                Some(f) if !endpoint.is_tls() => {
                    return Err(self.err(
                        Some(f.span()),
                        "alerts.webhook.ca_file",
                        "needs an https:// url",
                    ));
                }
                Some(f) => Some(self.ca_roots(f, "alerts.webhook.ca_file")?),
            };
            if !endpoint.is_tls() {
                warnings.push(self.warn(
                    w.url.span(),
                    "alerts.webhook.url",
                    format!(
                        "{endpoint} is not https: incident events cross the network unencrypted"
                    ),
                ));
            }
            webhooks.push(WebhookConfig {
                url: endpoint,
                secret,
                roots,
            });
        }
        let public_url = match &a.public_url {
            None => None,
            Some(v) => {
                url(v, "alerts.public_url")?;
                Some(v.get_ref().trim_end_matches('/').to_owned())
            }
        };
        Ok(AlertsConfig {
            alertmanager,
            webhooks,
            public_url,
            queue: a.queue.as_ref().map(|q| self.path(q)),
        })
    }

    /// The CA certificates in a PEM file, as roots to trust.
    fn ca_roots(
        &self,
        v: &Spanned<String>,
        field: &str,
    ) -> Result<rustls::RootCertStore, ConfigError> {
        let path = self.path(v);
        let bytes =
            read_file(&path, MAX_PEM_FILE).map_err(|m| self.err(Some(v.span()), field, m))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&bytes) {
            let c = c.map_err(|e| {
                self.err(
                    Some(v.span()),
                    field,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            roots
                .add(c)
                .map_err(|e| self.err(Some(v.span()), field, format!("{}: {e}", path.display())))?;
        }
        if roots.is_empty() {
            return Err(self.err(
                Some(v.span()),
                field,
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        Ok(roots)
    }

    fn maintenance(&self, n: usize, m: &Spanned<RawMaintenance>) -> Result<Window, ConfigError> {
        let r = m.get_ref();
        let scope = crate::maintenance::parse_scope(r.scope.get_ref())
            .map_err(|e| self.err(Some(r.scope.span()), "maintenance.scope", e))?;
        let id = crate::maintenance::parse_subject(scope, r.id.get_ref())
            .map_err(|e| self.err(Some(r.id.span()), "maintenance.id", e))?;
        let time = |v: &Spanned<String>, field: &str| {
            crate::maintenance::parse_time(v.get_ref())
                .map_err(|e| self.err(Some(v.span()), field, e))
        };
        let (from_ms, to_ms) = (
            time(&r.from, "maintenance.from")?,
            time(&r.to, "maintenance.to")?,
        );
        crate::maintenance::check_bounds(from_ms, to_ms)
            .map_err(|e| self.err(Some(r.to.span()), "maintenance.to", e))?;
        Ok(Window {
            window: format!("config-{}", n + 1),
            scope,
            id,
            from_ms,
            to_ms,
            note: r.note.clone(),
            origin: Origin::Config,
        })
    }

    /// Every `[[fleet.target]]` through the agent's target builder (same rules, same
    /// messages), with `sites` checked here.
    fn fleet_targets(
        &self,
        raw: &[Spanned<RawFleetTarget>],
    ) -> Result<Vec<FleetTarget>, ConfigError> {
        use faultline_shared::agent_config::MAX_TARGETS;
        use faultline_shared::target::{self, Fields, Value};
        if let Some(t) = raw.get(MAX_TARGETS) {
            return Err(self.err(
                Some(t.span()),
                "fleet.target",
                format!("more than {MAX_TARGETS} targets (an agent takes at most {MAX_TARGETS})"),
            ));
        }
        let mut all_fields = Vec::with_capacity(raw.len());
        let mut all_sites = Vec::with_capacity(raw.len());
        for (i, table) in raw.iter().enumerate() {
            let mut fields = Fields::new();
            let mut sites = vec![glob::Pattern::new("*").expect("a valid pattern")];
            for (key, v) in table.get_ref() {
                if key == "sites" {
                    sites = self.site_patterns(v, &format!("fleet.target[{i}].sites"))?;
                    continue;
                }
                let value = match v.get_ref() {
                    toml::Value::String(s) => Value::String(s.clone()),
                    toml::Value::Integer(n) => Value::Integer(*n),
                    toml::Value::Float(x) => Value::Float(*x),
                    toml::Value::Boolean(b) => Value::Boolean(*b),
                    toml::Value::Array(_) => Value::Other("list"),
                    toml::Value::Table(_) => Value::Other("table"),
                    toml::Value::Datetime(_) => Value::Other("date"),
                };
                fields.insert(key, value);
            }
            all_fields.push(fields);
            all_sites.push(sites);
        }
        let built = target::build_all(&all_fields).map_err(|(i, e)| {
            let table = &raw[i];
            let span = table
                .get_ref()
                .get(&e.field)
                .map_or(table.span(), Spanned::span);
            self.err(
                Some(span),
                &format!("fleet.target[{i}].{}", e.field),
                e.message,
            )
        })?;
        Ok(built
            .into_iter()
            .zip(all_fields)
            .zip(all_sites)
            .map(|((t, fields), sites)| FleetTarget {
                name: t.name,
                fields,
                sites,
            })
            .collect())
    }

    /// `sites = ["acme-hq", "bobs-*"]`: site ids or glob patterns, at least one.
    fn site_patterns(
        &self,
        v: &Spanned<toml::Value>,
        field: &str,
    ) -> Result<Vec<glob::Pattern>, ConfigError> {
        let bad = || {
            self.err(
                Some(v.span()),
                field,
                "expected a list of site ids or glob patterns, e.g. sites = [\"acme-*\"] \
                 (omit it for every site)",
            )
        };
        let toml::Value::Array(list) = v.get_ref() else {
            return Err(bad());
        };
        if list.is_empty() {
            return Err(bad());
        }
        list.iter()
            .map(|p| {
                let p = p.as_str().ok_or_else(bad)?;
                let glob = p.contains(['*', '?', '[']);
                if !glob {
                    Id::validate(p).map_err(|e| self.err(Some(v.span()), field, e))?;
                }
                glob::Pattern::new(p)
                    .map_err(|e| self.err(Some(v.span()), field, format!("{p:?}: {e}")))
            })
            .collect()
    }

    /// Without a url the embedded broker runs: the external broker's keys make no sense.
    fn no_url(&self, m: &RawMqtt) -> Result<(), ConfigError> {
        for (field, v) in [
            ("mqtt.username", &m.username),
            ("mqtt.ingest_username", &m.ingest_username),
            ("mqtt.password", &m.password),
            ("mqtt.password_file", &m.password_file),
            ("mqtt.ca_file", &m.ca_file),
            ("mqtt.client_cert", &m.client_cert),
            ("mqtt.client_key", &m.client_key),
        ] {
            if let Some(v) = v {
                return Err(self.err(
                    Some(v.span()),
                    field,
                    "needs [mqtt] url (without it the embedded broker runs)",
                ));
            }
        }
        Ok(())
    }

    fn mqtt(&self, m: &RawMqtt, warnings: &mut Vec<String>) -> Result<Mqtt, ConfigError> {
        let url = m.url.as_ref().expect("called with a url");
        let MqttUrl { tls, host, port } =
            MqttUrl::parse(url.get_ref()).map_err(|e| self.err(Some(url.span()), "mqtt.url", e))?;
        let client_id = match &m.client_id {
            Some(c) => {
                Id::validate(c.get_ref())
                    .map_err(|e| self.err(Some(c.span()), "mqtt.client_id", e))?;
                c.get_ref().clone()
            }
            None => DEFAULT_CLIENT_ID.to_owned(),
        };
        let login = |v: &Option<Spanned<String>>, field: &str| match v {
            Some(u) if u.get_ref().is_empty() => {
                Err(self.err(Some(u.span()), field, "must not be empty"))
            }
            Some(u) => Ok(Some(u.get_ref().clone())),
            None => Ok(None),
        };
        let username = login(&m.username, "mqtt.username")?;
        let ingest_username = match (
            login(&m.ingest_username, "mqtt.ingest_username")?,
            &username,
        ) {
            (Some(i), Some(_)) => Some(i),
            (Some(_), None) => {
                let v = m.ingest_username.as_ref().expect("present");
                return Err(self.err(
                    Some(v.span()),
                    "mqtt.ingest_username",
                    "needs mqtt.username",
                ));
            }
            (None, Some(u)) => Some(format!("{u}{INGEST_SUFFIX}")),
            (None, None) => None,
        };
        let password = match (&m.password, &m.password_file) {
            (Some(p), Some(_)) => {
                return Err(self.err(
                    Some(p.span()),
                    "mqtt.password",
                    "give either password_file or password, not both",
                ));
            }
            (Some(p), None) => {
                warnings.push(self.warn(
                    p.span(),
                    "mqtt.password",
                    "an inline password is deprecated: put it in a file (mode 0600) named by \
                     mqtt.password_file",
                ));
                Some(Secret(p.get_ref().clone()))
            }
            (None, Some(f)) => Some(self.secret_file(f, "mqtt.password_file")?),
            (None, None) => None,
        };
        if let (Some(_), None) = (&password, &username) {
            let span = m
                .password_file
                .as_ref()
                .or(m.password.as_ref())
                .map(Spanned::span);
            return Err(self.err(span, "mqtt.password_file", "a password needs mqtt.username"));
        }
        let tls = if tls {
            Some(self.tls(m)?)
        } else {
            let given = [
                ("mqtt.ca_file", &m.ca_file),
                ("mqtt.client_cert", &m.client_cert),
                ("mqtt.client_key", &m.client_key),
            ];
            if let Some((field, Some(v))) = given.iter().find(|(_, v)| v.is_some()) {
                return Err(self.err(Some(v.span()), field, "needs an mqtts:// url"));
            }
            None
        };
        Ok(Mqtt {
            host,
            port,
            tls,
            client_id,
            username,
            ingest_username,
            password,
        })
    }

    fn tls(&self, m: &RawMqtt) -> Result<MqttTls, ConfigError> {
        let certs = |v: &Spanned<String>, field: &str| {
            let path = self.path(v);
            let bytes =
                read_file(&path, MAX_PEM_FILE).map_err(|m| self.err(Some(v.span()), field, m))?;
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    self.err(
                        Some(v.span()),
                        field,
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
            if certs.is_empty() {
                return Err(self.err(
                    Some(v.span()),
                    field,
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            Ok((path, certs))
        };
        let mut roots = rustls::RootCertStore::empty();
        let ca_file = match &m.ca_file {
            Some(v) => {
                let (path, found) = certs(v, "mqtt.ca_file")?;
                for c in found {
                    roots.add(c).map_err(|e| {
                        self.err(
                            Some(v.span()),
                            "mqtt.ca_file",
                            format!("{}: {e}", path.display()),
                        )
                    })?;
                }
                Some(path)
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    let span = m.url.as_ref().map(Spanned::span);
                    return Err(self.err(
                        span,
                        "mqtt.ca_file",
                        "no CA certificates found on this system: set mqtt.ca_file",
                    ));
                }
                None
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| self.err(None, "mqtt.url", format!("TLS: {e}")))?
            .with_root_certificates(roots);
        let (config, client_cert) = match (&m.client_cert, &m.client_key) {
            (None, None) => (builder.with_no_client_auth(), None),
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
                let (cert_path, chain) = certs(c, "mqtt.client_cert")?;
                let key_path = self.path(k);
                let key_pem = read_file(&key_path, MAX_PEM_FILE)
                    .map_err(|m| self.err(Some(k.span()), "mqtt.client_key", m))?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    self.err(
                        Some(k.span()),
                        "mqtt.client_key",
                        format!(
                            "cannot read a PEM private key from {}: {e}",
                            key_path.display()
                        ),
                    )
                })?;
                let config = builder.with_client_auth_cert(chain, key).map_err(|e| {
                    self.err(
                        Some(k.span()),
                        "mqtt.client_key",
                        format!("does not fit client_cert: {e}"),
                    )
                })?;
                (config, Some(cert_path))
            }
        };
        Ok(MqttTls {
            config: Arc::new(config),
            ca_file,
            client_cert,
        })
    }

    fn token(&self, f: &Spanned<String>) -> Result<Secret, ConfigError> {
        let token = self.secret_file(f, "http.token_file")?;
        let t = token.expose();
        if t.len() < MIN_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(self.err(
                Some(f.span()),
                "http.token_file",
                format!(
                    "the token must be at least {MIN_TOKEN_LEN} printable ASCII characters without \
                     spaces (e.g. head -c 32 /dev/urandom | base64)"
                ),
            ));
        }
        Ok(token)
    }
}

/// The span of the value at `path` (table keys) in `text`, if it is there.
fn value_span(text: &str, path: &[&str]) -> Option<Range<usize>> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let (first, rest) = path.split_first()?;
    let mut v = doc.get_ref().get(*first)?;
    for key in rest {
        v = v.get_ref().get(*key)?;
    }
    Some(v.span())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_targets_take_the_agents_keys_and_rules() {
        let text = "[[fleet.target]]\nname = \"voipco-media\"\nlayer = \"provider\"\n\
                    provider = \"voipco\"\nkind = \"stamp\"\nhost = \"203.0.113.10:862\"\n\
                    sites = [\"acme-*\", \"bobs\"]\n\
                    [[fleet.target]]\nname = \"web\"\nlayer = \"internet\"\nkind = \"tcp\"\n\
                    host = \"192.0.2.1:443\"\n";
        let c = Config::parse(text, "c.toml").unwrap();
        assert_eq!(c.fleet_targets.len(), 2);
        let acme = Id::new("acme-hq").unwrap();
        let city = Id::new("city").unwrap();
        assert!(c.fleet_targets[0].matches(&acme) && !c.fleet_targets[0].matches(&city));
        assert!(c.fleet_targets[1].matches(&city), "no sites: every site");
        assert!(c.fleet_targets[0].fields.get("sites").is_none());

        // The agent's message, with the table, key and line.
        let bad = text.replace("192.0.2.1:443", "192.0.2.1");
        let e = Config::parse(&bad, "c.toml").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.line),
            ("fleet.target[1].host", Some(12))
        );
        assert!(e.msg.contains("tcp needs a port"), "{e}");
        let e = Config::parse(
            &text.replace("kind = \"stamp\"", "kind = \"stamp\"\npps = 0"),
            "c.toml",
        )
        .unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("fleet.target[0].pps", Some(6)));
        assert_eq!(e.msg, "expected an integer 1-1000, got 0");
        let e = Config::parse(&text.replace("\"bobs\"", "\"bad site\""), "c.toml").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.line),
            ("fleet.target[0].sites", Some(7))
        );
        let e = Config::parse(&text.replace("\"web\"", "\"voipco-media\""), "c.toml").unwrap_err();
        assert_eq!(e.field, "fleet.target[1].name");
        assert!(e.msg.contains("duplicate target name"), "{e}");
        let e = Config::parse("[[fleet.target]]\nname = \"x\"\n", "c.toml").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.line),
            ("fleet.target[0].layer", Some(1))
        );
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("", "x").unwrap();
        assert_eq!(c.window_ms, 10_000);
        assert!(c.mqtt.is_none());
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.broker_listen.to_string(), "127.0.0.1:1883");
        assert!(c.http_token.is_none() && c.broker_logins.is_none());
        assert!(c.warnings.is_empty());
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
        assert!(m.tls.is_none() && m.username.is_none() && m.ingest_username.is_none());
        assert_eq!(
            c.providers[&Id::new("voipco").unwrap()],
            Some(Id::new("voipco2").unwrap())
        );
    }

    #[test]
    fn errors_name_field_and_line() {
        let e = Config::parse("\n[providers.a]\nalternate = \"zz\"\n", "c.toml").unwrap_err();
        assert_eq!(e.field, "providers.a.alternate");
        assert_eq!(e.line, Some(3));
        assert!(
            e.to_string()
                .starts_with("c.toml:3: providers.a.alternate:"),
            "{e}"
        );
        let e = Config::parse("[http]\nlisten = \"nope\"\n", "c.toml").unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("http.listen", Some(2)));
        let e = Config::parse("[mqtt]\nbogus = 1\n", "c.toml").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = Config::parse("[thresholds]\nloss_degraded = 2.0\n", "c.toml").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.line),
            ("thresholds.loss_degraded", Some(2))
        );
        let e = Config::parse("window_seconds = 0\n", "c.toml").unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("window_seconds", Some(1)));
        let e = Config::parse("[mqtt]\nurl = \"http://b\"\n", "c.toml").unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("mqtt.url", Some(2)));
    }

    #[test]
    fn a_key_used_in_two_tables_is_reported_where_it_is_wrong() {
        // `listen` is in [http] (line 2, fine) and in [broker] (line 4, bad): the
        // error names line 4, not the first line with that key.
        let text = "[http]\nlisten = \"127.0.0.1:8080\"\n[broker]\nlisten = \"nope\"\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.line),
            ("broker.listen", Some(4)),
            "{e}"
        );
        // The same name twice in one table kind: the second provider's alternate.
        let text = "[providers.a]\nalternate = \"b\"\n[providers.b]\nalternate = \"zz\"\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.line),
            ("providers.b.alternate", Some(4)),
            "{e}"
        );
        // A threshold whose name also appears earlier (as a provider's table).
        let text = "[providers.mos_degraded]\n[thresholds]\nmos_degraded = 9.0\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.line),
            ("thresholds.mos_degraded", Some(3)),
            "{e}"
        );
        let text =
            "[mqtt]\nurl = \"mqtt://a\"\nshare_group = \"ok\"\n[broker]\nlisten_v5 = \"1.2.3.4\"\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.line),
            ("broker.listen_v5", Some(5)),
            "{e}"
        );
    }

    fn dir_with(files: &[(&str, &str)]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        for (name, text) in files {
            std::fs::write(d.0.join(name), text).unwrap();
        }
        d
    }

    mod tempdir {
        /// A scratch folder for config files, removed on drop.
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "faultline-config-{}-{}",
                    std::process::id(),
                    fastrand::u64(..)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn password_file_is_read_relative_to_the_config_and_kept_secret() {
        let d = dir_with(&[("pw", "s3cret\n")]);
        let file = d.0.join("c.toml");
        let c = Config::parse(
            "[mqtt]\nurl = \"mqtt://b\"\nusername = \"faultline-collector\"\npassword_file = \"pw\"\n",
            &file.display().to_string(),
        )
        .unwrap();
        let m = c.mqtt.unwrap();
        assert_eq!(m.password.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(m.ingest_username.as_deref(), Some("faultline-collector-in"));
        assert!(!format!("{m:?}").contains("s3cret"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        let e = Config::parse(
            "[mqtt]\nurl = \"mqtt://b\"\nusername = \"u\"\npassword_file = \"missing\"\n",
            &file.display().to_string(),
        )
        .unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("mqtt.password_file", Some(4)));
        let e = Config::parse(
            "[mqtt]\nurl = \"mqtt://b\"\npassword_file = \"pw\"\n",
            &file.display().to_string(),
        )
        .unwrap_err();
        assert!(e.msg.contains("username"), "{e}");
    }

    #[test]
    fn named_files_must_be_small_regular_files() {
        for (text, field) in [
            (
                "[mqtt]\nurl = \"mqtt://b\"\nusername = \"u\"\npassword_file = \"/dev/zero\"\n",
                "mqtt.password_file",
            ),
            ("[http]\ntoken_file = \"/dev/zero\"\n", "http.token_file"),
            (
                "[broker]\npassword_file = \"/dev/zero\"\n",
                "broker.password_file",
            ),
            (
                "[mqtt]\nurl = \"mqtts://b\"\nca_file = \"/dev/zero\"\n",
                "mqtt.ca_file",
            ),
            ("[http]\ntoken_file = \"/\"\n", "http.token_file"),
        ] {
            let e = Config::parse(text, "c.toml").unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.msg.contains("not a regular file"), "{e}");
        }
        let d = dir_with(&[("big", &"x".repeat(70_000))]);
        let file = d.0.join("c.toml").display().to_string();
        let e = Config::parse("[http]\ntoken_file = \"big\"\n", &file).unwrap_err();
        assert!(e.msg.contains("larger than"), "{e}");
    }

    #[test]
    fn an_inline_password_still_works_with_a_warning() {
        let c = Config::parse(
            "[mqtt]\nurl = \"mqtt://b\"\nusername = \"u\"\ningest_username = \"v\"\npassword = \"pw\"\n",
            "c.toml",
        )
        .unwrap();
        let m = c.mqtt.unwrap();
        assert_eq!(m.password.unwrap().expose(), "pw");
        assert_eq!(m.ingest_username.as_deref(), Some("v"));
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].starts_with("c.toml:5: mqtt.password:"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn tls_keys_need_mqtts_and_each_other() {
        let e = Config::parse(
            "[mqtt]\nurl = \"mqtt://b\"\nca_file = \"ca.pem\"\n",
            "c.toml",
        )
        .unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("mqtt.ca_file", Some(3)));
        let d = dir_with(&[("ca.pem", "not a certificate\n")]);
        let file = d.0.join("c.toml").display().to_string();
        let e = Config::parse("[mqtt]\nurl = \"mqtts://b\"\nca_file = \"ca.pem\"\n", &file)
            .unwrap_err();
        assert!(e.msg.contains("no PEM certificate"), "{e}");
        let e = Config::parse(
            "[mqtt]\nurl = \"mqtts://b\"\nclient_cert = \"c.pem\"\n",
            &file,
        )
        .unwrap_err();
        assert_eq!(e.field, "mqtt.client_key");
        let e = Config::parse("[mqtt]\nusername = \"u\"\n", &file).unwrap_err();
        assert!(e.msg.contains("needs [mqtt] url"), "{e}");
    }

    #[test]
    fn the_embedded_broker_refuses_a_public_listen_without_logins() {
        let e = Config::parse("[broker]\nlisten = \"0.0.0.0:1883\"\n", "c.toml").unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("broker.listen", Some(2)));
        assert!(e.msg.contains("password_file"), "{e}");
        let e = Config::parse("[broker]\n\nlisten_v5 = \"[::]:1884\"\n", "c.toml").unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("broker.listen_v5", Some(3)));
        // With an external broker [broker] is not used.
        Config::parse(
            "[mqtt]\nurl = \"mqtt://b\"\n[broker]\nlisten = \"0.0.0.0:1883\"\n",
            "c.toml",
        )
        .unwrap();
        // With logins it starts, and says what it still lacks.
        let d = dir_with(&[(
            "logins",
            "alice:$6$t4/ff30oos9swwvL$vmSBdr3YgHxj0QCTs1q+stuAd4xg2IBuks8VjuDszCp58DhReRcjks5Ejp96B//+MLdr/ZvEfXtyn4O2cAQbqA==\n",
        )]);
        let file = d.0.join("c.toml").display().to_string();
        let c = Config::parse(
            "[broker]\nlisten = \"0.0.0.0:1883\"\npassword_file = \"logins\"\n",
            &file,
        )
        .unwrap();
        assert_eq!(c.broker_logins.as_ref().unwrap().file.len(), 1);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("no TLS"), "{:?}", c.warnings);
        let e = Config::parse("[broker]\npassword_file = \"nope\"\n", &file).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.line),
            ("broker.password_file", Some(2))
        );
    }

    #[test]
    fn alerts_and_maintenance_are_checked_with_field_and_line() {
        let d = dir_with(&[("wh", "0123456789abcdef-secret\n"), ("short", "abc\n")]);
        let file = d.0.join("c.toml").display().to_string();
        let c = Config::parse(
            "[alerts]\nalertmanager = \"http://127.0.0.1:9093\"\npublic_url = \"https://dash.example/\"\n\
             [[alerts.webhook]]\nurl = \"https://psa.example/hooks/faultline\"\nsecret_file = \"wh\"\n\
             [[maintenance]]\nscope = \"provider\"\nid = \"voipco\"\n\
             from = \"2026-12-01T02:00:00Z\"\nto = \"2026-12-01T04:00:00Z\"\n",
            &file,
        )
        .unwrap();
        assert_eq!(c.alerts.webhooks.len(), 1);
        assert_eq!(
            c.alerts.webhooks[0].secret.expose(),
            "0123456789abcdef-secret"
        );
        assert_eq!(c.alerts.public_url.as_deref(), Some("https://dash.example"));
        assert_eq!(c.maintenance[0].to_ms - c.maintenance[0].from_ms, 7_200_000);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        for (text, field, line) in [
            (
                "[alerts]\nalertmanager = \"ftp://x\"\n",
                "alerts.alertmanager",
                2,
            ),
            (
                "[alerts]\n[[alerts.webhook]]\nurl = \"https://a/\"\nsecret_file = \"short\"\n",
                "alerts.webhook.secret_file",
                4,
            ),
            (
                "[alerts]\n[[alerts.webhook]]\nurl = \"https://a/\"\nsecret_file = \"missing\"\n",
                "alerts.webhook.secret_file",
                4,
            ),
            (
                "[[maintenance]]\nscope = \"provider\"\nid = \"voipco\"\nfrom = \"2026-12-01T02:00:00Z\"\n\
                 to = \"2026-12-01T01:00:00Z\"\n",
                "maintenance.to",
                5,
            ),
            (
                "[[maintenance]]\nscope = \"carrier\"\nid = \"x\"\nfrom = \"a\"\nto = \"b\"\n",
                "maintenance.scope",
                2,
            ),
            (
                "[[maintenance]]\nscope = \"site\"\nid = \"a\"\nfrom = \"tomorrow\"\nto = \"b\"\n",
                "maintenance.from",
                4,
            ),
        ] {
            let e = Config::parse(text, &file).unwrap_err();
            assert_eq!((e.field.as_str(), e.line), (field, Some(line)), "{e}");
        }
        let c = Config::parse(
            "[[alerts.webhook]]\nurl = \"http://psa.example/\"\nsecret_file = \"wh\"\n",
            &file,
        )
        .unwrap();
        assert!(c.warnings[0].contains("not https"), "{:?}", c.warnings);
    }

    #[test]
    fn http_token_and_hosts() {
        let d = dir_with(&[
            ("token", "0123456789abcdef-long-enough\n"),
            ("short", "abc\n"),
        ]);
        let file = d.0.join("c.toml").display().to_string();
        let c = Config::parse(
            "[http]\ntoken_file = \"token\"\nhosts = [\"Dash.MSP.example\", \"10.0.0.5:8080\", \"[fd00::1]\"]\n",
            &file,
        )
        .unwrap();
        assert_eq!(
            c.http_token.unwrap().expose(),
            "0123456789abcdef-long-enough"
        );
        assert_eq!(c.http_hosts, ["dash.msp.example", "10.0.0.5", "fd00::1"]);
        let e = Config::parse("[http]\ntoken_file = \"short\"\n", &file).unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("http.token_file", Some(2)));
        let e = Config::parse("[http]\nhosts = [\"ok\",\n  \"http://bad/\"]\n", &file).unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("http.hosts", Some(3)));
        let c = Config::parse("[http]\nlisten = \"0.0.0.0:8080\"\n", &file).unwrap();
        assert!(c.warnings[0].contains("token_file"), "{:?}", c.warnings);
    }

    #[test]
    fn storage_is_sqlite_by_default_or_postgres_by_url_never_both() {
        let c = Config::parse("", "c.toml").unwrap();
        assert!(
            matches!(&c.storage.location, StorageLocation::Sqlite(p) if p == Path::new(DEFAULT_STORAGE_PATH))
        );
        let d = dir_with(&[("pg", "s3cret\n")]);
        let file = d.0.join("c.toml").display().to_string();
        let c = Config::parse(
            "[storage]\nurl = \"postgres://faultline@127.0.0.1:5432/faultline\"\npassword_file = \"pg\"\n",
            &file,
        )
        .unwrap();
        let StorageLocation::Postgres(pg) = &c.storage.location else {
            panic!("{:?}", c.storage)
        };
        assert_eq!(pg.config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(pg.config.get_dbname(), Some("faultline"));
        assert_eq!(pg.shown, "postgres://faultline@127.0.0.1:5432/faultline");
        assert!(!format!("{c:?}").contains("s3cret"));
        // A password in the URL: never shown either.
        let c = Config::parse(
            "[storage]\nurl = \"postgres://faultline:s3cret@db.example/faultline?sslmode=disable\"\n",
            &file,
        )
        .unwrap();
        let StorageLocation::Postgres(pg) = &c.storage.location else {
            panic!()
        };
        assert_eq!(pg.shown, "postgres://faultline@db.example/faultline");
        assert!(!format!("{c:?}").contains("s3cret"));

        for (text, field, line) in [
            (
                "[storage]\npath = \"h.db\"\nurl = \"postgres://u@h/db\"\n",
                "storage.url",
                3,
            ),
            ("[storage]\nurl = \"mysql://u@h/db\"\n", "storage.url", 2),
            ("[storage]\nurl = \"postgres://u@h\"\n", "storage.url", 2),
            (
                "[storage]\npassword_file = \"pg\"\n",
                "storage.password_file",
                2,
            ),
            (
                "[storage]\nurl = \"postgres://u:pw@h/db\"\npassword_file = \"pg\"\n",
                "storage.password_file",
                3,
            ),
            (
                "[storage]\nurl = \"postgres://u@h/db\"\npassword_file = \"nope\"\n",
                "storage.password_file",
                3,
            ),
        ] {
            let e = Config::parse(text, &file).unwrap_err();
            assert_eq!(
                (e.field.as_str(), e.line),
                (field, Some(line)),
                "{text}: {e}"
            );
            assert!(!e.to_string().contains(":pw@"), "{e}");
        }
    }
}
