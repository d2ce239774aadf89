//! Probes: one per configured target, each measuring for one window and summarising
//! into a `ProbeResult`.
//!
//! Interface the run loop relies on:
//! - [`RawTarget`]: one `[[target]]` table as deserialised by serde (with spans).
//! - [`Target::from_raw`]: validates it into a [`Target`] (errors name field and line).
//! - [`Prober::new`] / [`Prober::measure`]: long-lived per target; `measure(window)`
//!   probes for at most `window` and returns that window's `ProbeResult`, never
//!   failing (a failure is a result with `error` set).
//!
//! Each kind lives in its own module: the wire formats (STAMP, SIP, STUN, DNS, ICMP)
//! are pure encode/parse functions with byte fixtures; the async drivers only own
//! sockets and timers. [`EchoTally`] is the shared, clock-free summary of an
//! echo-style window (ICMP and STAMP).
//!
//! `[[target]]` keys per kind (`host` may be `gateway` or `gateway:PORT`):
//!
//! | kind | `host` | options (default) | sent / received |
//! |---|---|---|---|
//! | `icmp` | host or IP | `count` (1 per second of window), `interval_ms` (window spread evenly) | echoes |
//! | `stamp` | `host[:port]` (862) | `pps` (50), `stamp_seconds` (5; 0 = whole window), `stamp_every` (1), `stamp_idle_packets` (5), `codec` (g711, g711-noplc, g729a), `pad` (false: 44-byte packets) | test packets |
//! | `sip` | `host[:port]` (5060) | `transport` (udp, tcp) | 1 transaction |
//! | `stun` | `host[:port]` (3478) | — | 1 transaction |
//! | `dns` | the name to resolve | `record` (a; srv for `_service._proto` names; aaaa), `server` (`IP[:port]`; /etc/resolv.conf) | 1 query |
//! | `tcp` | host:port | — | 1 connect |
//!
//! Errors are short words: `timeout`, `refused`, `host unreachable`, a SIP status
//! (`503`), `nxdomain`, `servfail`, `no records`, `stun 420`, or the ICMP permission
//! hint. Hostnames are resolved by the agent's own resolver ([`crate::resolve`]) and
//! reused for [`RESOLVE_TTL`].

pub mod dns;
pub mod icmp;
pub mod sip;
pub mod stamp;
pub mod stun;
pub mod tcp;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use faultline_shared::measure::{Arrival, Codec, Jitter, LatencySummary, SeqStats, SeqTracker};
use faultline_shared::{Id, Kind, Layer, ProbeResult, RttStats};

use crate::config_error::{ConfigError, line_of};

/// One `[[target]]` table, raw. Kind-specific options are kept for `Target::from_raw`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct RawTarget {
    pub name: toml::Spanned<String>,
    pub layer: toml::Spanned<String>,
    #[serde(default)]
    pub provider: Option<toml::Spanned<String>>,
    pub kind: toml::Spanned<String>,
    pub host: toml::Spanned<String>,
    /// Everything else in the table (kind-specific options).
    #[serde(flatten)]
    pub options: toml::Table,
}

/// STAMP's well-known port (RFC 8762).
pub const STAMP_PORT: u16 = 862;
/// SIP's default port.
pub const SIP_PORT: u16 = 5060;
/// STUN's default port.
pub const STUN_PORT: u16 = 3478;
/// DNS's port.
pub const DNS_PORT: u16 = 53;
/// Default voice cadence of a STAMP stream, packets per second (20 ms frames).
pub const DEFAULT_PPS: u32 = 50;
/// Default length of the voice burst at the start of each window.
pub const DEFAULT_STAMP_SECONDS: f64 = 5.0;
/// How long a hostname's resolution is reused before asking again.
pub const RESOLVE_TTL: Duration = Duration::from_secs(300);

/// A validated target: cannot hold a bad state.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: Id,
    pub layer: Layer,
    pub provider: Option<Id>,
    pub kind: Kind,
    /// The kind-specific, validated spec.
    pub spec: Spec,
}

/// Where to send probes: a host (name or address) and, for port-based kinds, a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// SIP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// The kind-specific part of a target.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Icmp {
        host: String,
        /// Echoes per window; `None`: one per second of window.
        count: Option<u32>,
        /// Spacing of echoes; `None`: the window spread evenly.
        interval: Option<Duration>,
    },
    Stamp {
        to: HostPort,
        pps: u32,
        /// Length of the voice burst at the start of each window (`0`: the whole window).
        burst: Duration,
        /// The burst runs every `every`-th window; the windows between send a short
        /// train of `idle_packets` (metered links).
        every: u32,
        idle_packets: u32,
        codec: Codec,
        /// Pad test packets to the codec's frame size (else 44 bytes).
        pad: bool,
    },
    Sip {
        to: HostPort,
        transport: Transport,
    },
    Stun {
        to: HostPort,
    },
    Dns {
        name: String,
        record: dns::RecordType,
        /// `None`: the first nameserver of /etc/resolv.conf, read each window.
        server: Option<SocketAddr>,
    },
    Tcp {
        to: HostPort,
    },
}

/// The options each kind accepts (others are rejected as typos).
fn allowed_options(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Icmp => &["count", "interval_ms"],
        Kind::Stamp => &[
            "pps",
            "stamp_seconds",
            "stamp_every",
            "stamp_idle_packets",
            "codec",
            "pad",
        ],
        Kind::Sip => &["transport"],
        Kind::Dns => &["record", "server"],
        _ => &[],
    }
}

/// Builds errors for one target of one file.
struct ErrCtx<'a> {
    path: &'a Path,
    src: &'a str,
    index: usize,
    /// Line of the table, for options (which carry no spans).
    table_line: usize,
}

impl ErrCtx<'_> {
    fn at(&self, field: &str, span: Option<std::ops::Range<usize>>, msg: String) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line: Some(span.map_or(self.table_line, |s| line_of(self.src, s.start))),
            field: format!("target[{}].{field}", self.index),
            message: msg,
        }
    }
}

impl Target {
    /// Validates `raw` (the `index`-th target of the file at `path`, whose text is
    /// `src`); `gateway` is the default gateway's address when `host = "gateway"`.
    pub fn from_raw(
        raw: &RawTarget,
        index: usize,
        path: &Path,
        src: &str,
        gateway: Option<IpAddr>,
    ) -> Result<Target, ConfigError> {
        let cx = ErrCtx {
            path,
            src,
            index,
            table_line: line_of(src, raw.name.span().start),
        };
        let name = Id::new(raw.name.get_ref().as_str())
            .map_err(|e| cx.at("name", Some(raw.name.span()), e.to_string()))?;
        let layer = Layer::from_name(raw.layer.get_ref()).ok_or_else(|| {
            cx.at(
                "layer",
                Some(raw.layer.span()),
                format!(
                    "unknown layer {:?} (expected lan, isp, internet or provider)",
                    raw.layer.get_ref()
                ),
            )
        })?;
        let provider = match &raw.provider {
            Some(p) => Some(
                Id::new(p.get_ref().as_str())
                    .map_err(|e| cx.at("provider", Some(p.span()), e.to_string()))?,
            ),
            None => None,
        };
        if layer == Layer::Provider && provider.is_none() {
            return Err(cx.at(
                "provider",
                Some(raw.layer.span()),
                "layer \"provider\" needs `provider = \"NAME\"` naming which provider".into(),
            ));
        }
        let kind = Kind::from_name(raw.kind.get_ref()).ok_or_else(|| {
            cx.at(
                "kind",
                Some(raw.kind.span()),
                format!(
                    "unknown kind {:?} (expected icmp, stamp, sip, stun, dns or tcp)",
                    raw.kind.get_ref()
                ),
            )
        })?;
        let allowed = allowed_options(kind);
        if let Some(key) = raw.options.keys().find(|k| !allowed.contains(&k.as_str())) {
            let hint = if allowed.is_empty() {
                format!("kind {kind} takes no options")
            } else {
                format!("options for kind {kind}: {}", allowed.join(", "))
            };
            return Err(cx.at(key, None, format!("unknown option ({hint})")));
        }
        let host_span = Some(raw.host.span());
        let host = raw.host.get_ref().trim();
        // `gateway`, or `gateway:PORT` for port-based kinds.
        let gateway_port = match host.strip_prefix("gateway") {
            Some("") => Some(None),
            Some(rest) => rest.strip_prefix(':').map(Some),
            None => None,
        };
        let host = match (gateway_port, gateway) {
            (None, _) => host.to_owned(),
            (Some(port), Some(ip)) => {
                let ip = if ip.is_ipv6() {
                    format!("[{ip}]")
                } else {
                    ip.to_string()
                };
                match port {
                    Some(p) => format!("{ip}:{p}"),
                    None => ip,
                }
            }
            (Some(_), None) => {
                return Err(cx.at(
                    "host",
                    host_span,
                    "host = \"gateway\" but no default gateway was found in the routing table"
                        .into(),
                ));
            }
        };
        let opts = Opts {
            cx: &cx,
            table: &raw.options,
        };
        let host_err = |msg: String| cx.at("host", host_span.clone(), msg);
        let spec = match kind {
            Kind::Icmp => {
                let (h, port) = split_host_port(&host).map_err(host_err)?;
                if port.is_some() {
                    return Err(host_err(format!("icmp takes no port: {host:?}")));
                }
                Spec::Icmp {
                    host: h,
                    count: opts.uint("count", 1, 10_000)?,
                    interval: opts.uint("interval_ms", 10, 600_000)?.map(ms),
                }
            }
            Kind::Stamp => {
                let codec = match opts.string("codec")? {
                    None => Codec::default(),
                    Some(c) => Codec::from_name(&c).ok_or_else(|| {
                        cx.at(
                            "codec",
                            None,
                            format!("unknown codec {c:?} (expected g711, g711-noplc or g729a)"),
                        )
                    })?,
                };
                Spec::Stamp {
                    to: host_port(&host, STAMP_PORT).map_err(host_err)?,
                    pps: opts.uint("pps", 1, 1000)?.unwrap_or(DEFAULT_PPS),
                    burst: Duration::from_secs_f64(
                        opts.float("stamp_seconds", 0.0, 3600.0)?
                            .unwrap_or(DEFAULT_STAMP_SECONDS),
                    ),
                    every: opts.uint("stamp_every", 1, 10_000)?.unwrap_or(1),
                    idle_packets: opts
                        .uint("stamp_idle_packets", 1, 1000)?
                        .unwrap_or(stamp::IDLE_PACKETS),
                    codec,
                    pad: opts.bool("pad")?.unwrap_or(false),
                }
            }
            Kind::Sip => Spec::Sip {
                to: host_port(&host, SIP_PORT).map_err(host_err)?,
                transport: match opts.string("transport")?.as_deref() {
                    None | Some("udp") => Transport::Udp,
                    Some("tcp") => Transport::Tcp,
                    Some(t) => {
                        return Err(cx.at(
                            "transport",
                            None,
                            format!("unknown transport {t:?} (expected udp or tcp)"),
                        ));
                    }
                },
            },
            Kind::Stun => Spec::Stun {
                to: host_port(&host, STUN_PORT).map_err(host_err)?,
            },
            Kind::Dns => {
                let record = match opts.string("record")? {
                    None => dns::RecordType::default_for(&host),
                    Some(r) => dns::RecordType::from_name(&r).ok_or_else(|| {
                        cx.at(
                            "record",
                            None,
                            format!("unknown record type {r:?} (expected a, aaaa or srv)"),
                        )
                    })?,
                };
                let server = match opts.string("server")? {
                    None => None,
                    Some(s) => Some(parse_server(&s).map_err(|m| cx.at("server", None, m))?),
                };
                dns::validate_name(&host).map_err(host_err)?;
                Spec::Dns {
                    name: host,
                    record,
                    server,
                }
            }
            Kind::Tcp => {
                let (h, port) = split_host_port(&host).map_err(host_err)?;
                let port = port.ok_or_else(|| {
                    host_err(format!("tcp needs a port: \"{host}:PORT\" (e.g. :5061)"))
                })?;
                Spec::Tcp {
                    to: HostPort { host: h, port },
                }
            }
            Kind::Unknown(_) => unreachable!("from_name never yields Unknown"),
        };
        Ok(Target {
            name,
            layer,
            provider,
            kind,
            spec,
        })
    }

    /// An empty result for this target, to fill in.
    pub fn result(&self) -> ProbeResult {
        ProbeResult::new(
            self.name.clone(),
            self.layer,
            self.provider.clone(),
            self.kind,
        )
    }
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(u64::from(v))
}

/// A DNS `server` option: an IP, or IP:port.
pub fn parse_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DNS_PORT));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an IP address or IP:port"))
}

/// Splits `host`, `host:port`, `IPv6`, `[IPv6]:port` into host and optional port.
pub fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    if s.is_empty() {
        return Err("host is empty".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']'"))?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{s:?}: {h:?} is not an IPv6 address"))?;
        return match tail.strip_prefix(':') {
            None if tail.is_empty() => Ok((h.to_owned(), None)),
            Some(p) => Ok((h.to_owned(), Some(parse_port(s, p)?))),
            None => Err(format!("{s:?}: unexpected text after ']'")),
        };
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((s.to_owned(), None));
    }
    let (h, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(parse_port(s, p)?)),
        None => (s, None),
    };
    let valid = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !valid {
        return Err(format!("{s:?} is not a host name or IP address"));
    }
    Ok((h.to_owned(), port))
}

fn parse_port(s: &str, p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{s:?}: port {p:?} is not 1-65535")),
        Ok(n) => Ok(n),
    }
}

fn host_port(s: &str, default_port: u16) -> Result<HostPort, String> {
    let (host, port) = split_host_port(s)?;
    Ok(HostPort {
        host,
        port: port.unwrap_or(default_port),
    })
}

/// A TOML value as written in the file, for error messages.
fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => format!("a {}", other.type_str()),
    }
}

/// Typed access to a target's options, with errors naming the option.
struct Opts<'a> {
    cx: &'a ErrCtx<'a>,
    table: &'a toml::Table,
}

impl Opts<'_> {
    fn uint(&self, key: &str, min: u32, max: u32) -> Result<Option<u32>, ConfigError> {
        let Some(v) = self.table.get(key) else {
            return Ok(None);
        };
        match v.as_integer().and_then(|i| u32::try_from(i).ok()) {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(self.cx.at(
                key,
                None,
                format!("expected an integer {min}-{max}, got {}", show(v)),
            )),
        }
    }

    fn float(&self, key: &str, min: f64, max: f64) -> Result<Option<f64>, ConfigError> {
        let Some(v) = self.table.get(key) else {
            return Ok(None);
        };
        let f = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
        match f {
            Some(f) if f >= min && f <= max => Ok(Some(f)),
            _ => Err(self.cx.at(
                key,
                None,
                format!("expected a number {min}-{max}, got {}", show(v)),
            )),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.to_ascii_lowercase())),
            Some(v) => Err(self
                .cx
                .at(key, None, format!("expected a string, got {}", show(v)))),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.cx.at(
                key,
                None,
                format!("expected true or false, got {}", show(v)),
            )),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} layer={}", self.name, self.layer)?;
        if let Some(p) = &self.provider {
            write!(f, " provider={p}")?;
        }
        write!(f, " kind={}", self.kind)?;
        match &self.spec {
            Spec::Icmp {
                host,
                count,
                interval,
            } => {
                write!(f, " host={host}")?;
                match count {
                    Some(c) => write!(f, " count={c}")?,
                    None => write!(f, " count=1/s")?,
                }
                if let Some(i) = interval {
                    write!(f, " interval_ms={}", i.as_millis())?;
                }
            }
            Spec::Stamp {
                to,
                pps,
                burst,
                every,
                idle_packets,
                codec,
                pad,
            } => {
                write!(f, " host={to} pps={pps} stamp_seconds=")?;
                if burst.is_zero() {
                    write!(f, "window")?;
                } else {
                    write!(f, "{}", burst.as_secs_f64())?;
                }
                if *every > 1 {
                    write!(f, " stamp_every={every} stamp_idle_packets={idle_packets}")?;
                }
                write!(
                    f,
                    " codec={codec} packet_bytes={}",
                    stamp::packet_len(*codec, *pad)
                )?;
            }
            Spec::Sip { to, transport } => {
                write!(f, " host={to} transport={}", transport.as_str())?
            }
            Spec::Stun { to } | Spec::Tcp { to } => write!(f, " host={to}")?,
            Spec::Dns {
                name,
                record,
                server,
            } => {
                write!(f, " name={name} record={}", record.name())?;
                match server {
                    Some(s) => write!(f, " server={s}")?,
                    None => write!(f, " server=system")?,
                }
            }
        }
        Ok(())
    }
}

/// Per-kind state kept from window to window.
#[derive(Debug)]
enum State {
    Icmp(icmp::IcmpProber),
    Stamp(stamp::StampProber),
    Sip(sip::SipProber),
    Stun(stun::StunProber),
    Dns(dns::DnsProber),
    Tcp(tcp::TcpProber),
}

/// Measures one target, window after window.
#[derive(Debug)]
pub struct Prober {
    target: Target,
    state: State,
    notes: Vec<(&'static str, String)>,
}

impl Prober {
    /// Sets up the target's probe. Sockets that need privileges are opened lazily, so
    /// a missing permission shows as the target's `error` every window, not here.
    pub async fn new(target: Target) -> anyhow::Result<Self> {
        let state = match &target.spec {
            Spec::Icmp { host, .. } => State::Icmp(icmp::IcmpProber::new(host.clone())),
            Spec::Stamp { to, .. } => State::Stamp(stamp::StampProber::new(to.clone())),
            Spec::Sip { to, transport } => State::Sip(sip::SipProber::new(to.clone(), *transport)),
            Spec::Stun { to } => State::Stun(stun::StunProber::new(to.clone())),
            Spec::Dns { .. } => State::Dns(dns::DnsProber),
            Spec::Tcp { to } => State::Tcp(tcp::TcpProber::new(to.clone())),
        };
        Ok(Self {
            target,
            state,
            notes: Vec::new(),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Extra facts from the last window for a technician (`probe` prints them):
    /// the SIP status line, the STUN mapped address, DNS answers, duplicates...
    pub fn notes(&self) -> &[(&'static str, String)] {
        &self.notes
    }

    /// Probes for at most `window` and returns the summary.
    pub async fn measure(&mut self, window: Duration) -> ProbeResult {
        let mut r = self.target.result();
        self.notes.clear();
        let deadline = tokio::time::Instant::now() + window;
        let notes = &mut self.notes;
        match (&mut self.state, &self.target.spec) {
            (
                State::Icmp(p),
                Spec::Icmp {
                    count, interval, ..
                },
            ) => {
                p.measure(window, *count, *interval, &mut r, notes).await;
            }
            (
                State::Stamp(p),
                Spec::Stamp {
                    pps,
                    burst,
                    every,
                    idle_packets,
                    codec,
                    pad,
                    ..
                },
            ) => {
                let mut cfg = stamp::StreamConfig::for_window(window, *pps, *burst, *codec, *pad);
                if !p.burst_due(*every) {
                    cfg.packets = cfg.packets.min(*idle_packets);
                }
                p.measure(&cfg, &mut r, notes).await;
            }
            (State::Sip(p), _) => p.measure(deadline, &mut r, notes).await,
            (State::Stun(p), _) => p.measure(deadline, &mut r, notes).await,
            (
                State::Dns(p),
                Spec::Dns {
                    name,
                    record,
                    server,
                },
            ) => {
                p.measure(name, *record, *server, deadline, &mut r, notes)
                    .await
            }
            (State::Tcp(p), _) => p.measure(deadline, &mut r, notes).await,
            _ => unreachable!("state is built from the spec"),
        }
        r
    }
}

/// A short, stable error word for an I/O failure (`refused`, `timeout`...).
pub fn io_error_word(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "refused".into(),
        K::TimedOut | K::WouldBlock => "timeout".into(),
        K::HostUnreachable => "host unreachable".into(),
        K::NetworkUnreachable => "network unreachable".into(),
        K::ConnectionReset => "reset".into(),
        K::PermissionDenied => "permission denied".into(),
        K::AddrNotAvailable => "address not available".into(),
        _ => format!("io: {e}"),
    }
}

/// Resolves a host and port, reusing the answer for [`RESOLVE_TTL`] so that a
/// hostname target does not cost a DNS query every window.
#[derive(Debug, Clone)]
pub struct Resolver {
    to: HostPort,
    cached: Option<(SocketAddr, Instant)>,
}

impl Resolver {
    pub fn new(to: HostPort) -> Self {
        Self { to, cached: None }
    }

    pub fn host_port(&self) -> &HostPort {
        &self.to
    }

    /// The address to probe, or the error word (`resolve: ...`).
    pub async fn resolve(&mut self) -> Result<SocketAddr, String> {
        if let Ok(ip) = self.to.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.to.port));
        }
        if let Some((addr, at)) = self.cached
            && at.elapsed() < RESOLVE_TTL
        {
            return Ok(addr);
        }
        // The C library's getaddrinfo (on a blocking thread); IPv4 first: the first
        // address is the one to probe.
        let found: Vec<SocketAddr> = tokio::net::lookup_host((self.to.host.as_str(), self.to.port))
            .await
            .map_err(|e| format!("resolve {}: {e}", self.to.host))?
            .collect();
        let addr = found
            .iter()
            .find(|a| a.is_ipv4())
            .or(found.first())
            .copied()
            .ok_or_else(|| format!("resolve {}: no address", self.to.host))?;
        self.cached = Some((addr, Instant::now()));
        Ok(addr)
    }

    /// Like [`Resolver::resolve`], for a probe's window: on failure the error word
    /// goes into `r`, the cache is dropped and `None` says to end the window.
    pub async fn resolve_for(&mut self, r: &mut ProbeResult) -> Option<SocketAddr> {
        match self.resolve().await {
            Ok(a) => Some(a),
            Err(e) => {
                self.forget();
                r.error = Some(e);
                None
            }
        }
    }

    /// Forgets the cached answer (after a failure, try resolving again).
    pub fn forget(&mut self) {
        self.cached = None;
    }
}

/// An unspecified local address of `peer`'s family, port 0.
pub fn any_local(peer: &SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}

/// One window of echo-style probing (ICMP echoes, STAMP test packets): send times by
/// sequence number, replies matched to them. Clock-free: times are passed in.
#[derive(Debug)]
pub struct EchoTally {
    base: u32,
    sent_at: Vec<Instant>,
    seq: SeqTracker,
    rtt: LatencySummary,
    jitter: Jitter,
}

/// The summary of one [`EchoTally`] window.
#[derive(Debug, Clone, PartialEq)]
pub struct EchoSummary {
    pub stats: SeqStats,
    pub rtt: Option<RttStats>,
    pub jitter_ms: Option<f64>,
}

impl EchoTally {
    /// A window whose first sequence number is `base`.
    pub fn new(base: u32) -> Self {
        Self {
            base,
            sent_at: Vec::new(),
            seq: SeqTracker::new(base),
            rtt: LatencySummary::new(),
            jitter: Jitter::new(),
        }
    }

    /// The next sequence number to send.
    pub fn next_seq(&self) -> u32 {
        self.base.wrapping_add(self.sent())
    }

    pub fn sent(&self) -> u32 {
        u32::try_from(self.sent_at.len()).unwrap_or(u32::MAX)
    }

    /// Records that [`Self::next_seq`] was sent at `at`; returns that sequence number.
    pub fn on_sent(&mut self, at: Instant) -> u32 {
        let seq = self.next_seq();
        self.sent_at.push(at);
        seq
    }

    /// Matches a reply to sequence number `seq` received at `at`; `remote_delay` is
    /// the time the far end held the packet (STAMP's T3 − T2; zero for ICMP).
    /// Returns what the arrival was; only first, in-window replies feed RTT and jitter.
    pub fn on_reply(&mut self, seq: u32, at: Instant, remote_delay: Duration) -> Arrival {
        let off = seq.wrapping_sub(self.base);
        let Some(&sent) = self.sent_at.get(off as usize) else {
            return Arrival::OutOfWindow;
        };
        let arrival = self.seq.on_receive(seq);
        if matches!(arrival, Arrival::InOrder | Arrival::Reordered) {
            let rtt = at.saturating_duration_since(sent);
            // A reflector claiming to have held the packet longer than the round
            // trip has a broken clock: ignore its claim rather than go negative.
            let rtt = rtt.checked_sub(remote_delay).unwrap_or(rtt);
            let rtt_ms = rtt.as_secs_f64() * 1000.0;
            self.rtt.record_ms(rtt_ms);
            self.jitter.on_packet(0.0, rtt_ms);
        }
        arrival
    }

    /// Whether every sent packet has been answered.
    pub fn complete(&self) -> bool {
        self.seq.finish(self.sent()).received >= self.sent()
    }

    pub fn finish(&self) -> EchoSummary {
        let stats = self.seq.finish(self.sent());
        EchoSummary {
            stats,
            rtt: self.rtt.stats(),
            jitter_ms: (self.rtt.count() >= 2).then(|| self.jitter.value_ms()),
        }
    }
}

impl EchoSummary {
    /// Writes counts, RTT, jitter and the longest loss burst into `r`.
    pub fn fill(&self, r: &mut ProbeResult) {
        r.sent = self.stats.sent;
        r.received = self.stats.received;
        r.rtt_ms = self.rtt.map(|t| RttStats {
            min: round3(t.min),
            p50: round3(t.p50),
            avg: round3(t.avg),
            p95: round3(t.p95),
            max: round3(t.max),
        });
        r.jitter_ms = self.jitter_ms.map(round3);
        r.max_burst = Some(self.stats.max_burst);
    }
}

/// Rounds to 3 decimals (µs in ms): keeps JSON readable without losing meaning.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `RttStats` of a single sample.
pub fn single_rtt(d: Duration) -> RttStats {
    let ms = round3(d.as_secs_f64() * 1000.0);
    RttStats {
        min: ms,
        p50: ms,
        avg: ms,
        p95: ms,
        max: ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_src: &str, gateway: Option<IpAddr>) -> Result<Target, ConfigError> {
        #[derive(serde::Deserialize)]
        struct F {
            target: Vec<RawTarget>,
        }
        let f: F = toml::from_str(toml_src).unwrap();
        Target::from_raw(&f.target[0], 0, Path::new("a.toml"), toml_src, gateway)
    }

    #[test]
    fn stamp_defaults_and_display() {
        let t = parse(
            "[[target]]\nname = \"m\"\nlayer = \"provider\"\nprovider = \"voipco\"\nkind = \"stamp\"\nhost = \"203.0.113.10\"\n",
            None,
        )
        .unwrap();
        assert_eq!(
            t.spec,
            Spec::Stamp {
                to: HostPort {
                    host: "203.0.113.10".into(),
                    port: 862
                },
                pps: 50,
                burst: Duration::from_secs(5),
                every: 1,
                idle_packets: 5,
                codec: Codec::G711,
                pad: false,
            }
        );
        assert_eq!(
            t.to_string(),
            "m layer=provider provider=voipco kind=stamp host=203.0.113.10:862 pps=50 stamp_seconds=5 codec=g711 packet_bytes=44"
        );
    }

    #[test]
    fn stamp_options() {
        let t = parse(
            "[[target]]\nname = \"m\"\nlayer = \"isp\"\nkind = \"stamp\"\nhost = \"[2001:db8::1]:8620\"\npps = 20\nstamp_seconds = 2.5\nstamp_every = 30\ncodec = \"g729a\"\npad = true\n",
            None,
        )
        .unwrap();
        assert_eq!(
            t.to_string(),
            "m layer=isp kind=stamp host=[2001:db8::1]:8620 pps=20 stamp_seconds=2.5 stamp_every=30 stamp_idle_packets=5 codec=g729a packet_bytes=44"
        );
        let e = parse(
            "[[target]]\nname = \"m\"\nlayer = \"isp\"\nkind = \"stamp\"\nhost = \"h\"\nstamp_every = 0\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e.field, "target[0].stamp_every");
        assert!(
            e.message.contains("1-10000") && e.message.contains('0'),
            "{e}"
        );
    }

    #[test]
    fn stamp_prober_bursts_every_nth_window_and_trains_between() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = sock.local_addr().unwrap();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let reflector = tokio::spawn(crate::reflect::serve(sock, true, async move {
                let _ = stop_rx.await;
            }));
            let src = format!(
                "[[target]]\nname = \"m\"\nlayer = \"isp\"\nkind = \"stamp\"\nhost = \"{addr}\"\nstamp_seconds = 0.4\nstamp_every = 2\nstamp_idle_packets = 3\n"
            );
            let mut p = Prober::new(parse(&src, None).unwrap()).await.unwrap();
            let window = Duration::from_secs(1);
            let sent: Vec<(u32, u32)> = {
                let mut v = Vec::new();
                for _ in 0..3 {
                    let r = p.measure(window).await;
                    assert!(r.error.is_none() && r.mos.is_some(), "{r:?}");
                    v.push((r.sent, r.received));
                }
                v
            };
            assert_eq!(sent, [(20, 20), (3, 3), (20, 20)]);
            let _ = stop_tx.send(());
            let (reflected, dropped) = reflector.await.unwrap();
            assert_eq!((reflected, dropped), (43, 0));
        });
    }

    #[test]
    fn every_kind_describes_itself_on_one_line() {
        let t = |kind: &str, host: &str, extra: &str| {
            let src = format!(
                "[[target]]\nname = \"t\"\nlayer = \"provider\"\nprovider = \"p\"\nkind = \"{kind}\"\nhost = \"{host}\"\n{extra}"
            );
            parse(&src, None).unwrap().to_string()
        };
        let head = "t layer=provider provider=p kind=";
        for (got, want) in [
            (
                t("icmp", "192.0.2.1", "count = 5\n"),
                "icmp host=192.0.2.1 count=5",
            ),
            (
                t("sip", "sip.example.com", "transport = \"tcp\"\n"),
                "sip host=sip.example.com:5060 transport=tcp",
            ),
            (
                t("stun", "stun.example.com", ""),
                "stun host=stun.example.com:3478",
            ),
            (
                t("dns", "_sip._udp.example.com", "server = \"192.0.2.53\"\n"),
                "dns name=_sip._udp.example.com record=srv server=192.0.2.53:53",
            ),
            (
                t("dns", "example.com", ""),
                "dns name=example.com record=a server=system",
            ),
            (t("tcp", "192.0.2.1:5061", ""), "tcp host=192.0.2.1:5061"),
        ] {
            assert_eq!(got, format!("{head}{want}"));
            assert!(!got.contains('\n'));
        }
    }

    #[test]
    fn gateway_is_substituted_or_named_missing() {
        let src =
            "[[target]]\nname = \"gw\"\nlayer = \"lan\"\nkind = \"icmp\"\nhost = \"gateway\"\n";
        let t = parse(src, Some("192.168.1.1".parse().unwrap())).unwrap();
        assert!(matches!(&t.spec, Spec::Icmp { host, .. } if host == "192.168.1.1"));
        let tcp = src
            .replace("icmp", "tcp")
            .replace("\"gateway\"", "\"gateway:80\"");
        let t = parse(&tcp, Some("fe80::1".parse().unwrap())).unwrap();
        assert!(t.to_string().ends_with("kind=tcp host=[fe80::1]:80"), "{t}");
        let e = parse(src, None).unwrap_err();
        assert_eq!(e.field, "target[0].host");
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("no default gateway"), "{e}");
    }

    #[test]
    fn bad_values_name_field_and_line() {
        let e = parse(
            "[[target]]\nname = \"s\"\nlayer = \"isp\"\nkind = \"sip\"\nhost = \"x:5060\"\ntransport = \"sctp\"\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e.field, "target[0].transport");
        assert!(e.message.contains("sctp"));
        let e = parse(
            "[[target]]\nname = \"s\"\nlayer = \"isp\"\nkind = \"icmp\"\nhost = \"x\"\npps = 5\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e.field, "target[0].pps");
        assert!(e.message.contains("count, interval_ms"), "{e}");
        let e = parse(
            "[[target]]\nname = \"t\"\nlayer = \"lan\"\nkind = \"tcp\"\nhost = \"x\"\n",
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("needs a port"));
        let e = parse(
            "[[target]]\nname = \"t\"\nlayer = \"provider\"\nkind = \"tcp\"\nhost = \"x:1\"\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e.field, "target[0].provider");
        let e = parse(
            "[[target]]\nname = \"t\"\nlayer = \"lan\"\nkind = \"stamp\"\nhost = \"x\"\ncodec = \"opus\"\n",
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("opus"));
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a.b").unwrap(), ("a.b".into(), None));
        assert_eq!(split_host_port("a.b:9").unwrap(), ("a.b".into(), Some(9)));
        assert_eq!(split_host_port("::1").unwrap(), ("::1".into(), None));
        assert_eq!(
            split_host_port("[::1]:862").unwrap(),
            ("::1".into(), Some(862))
        );
        assert!(split_host_port("a b").is_err());
        assert!(split_host_port("a:0").is_err());
        assert!(split_host_port("a:99999").is_err());
        assert!(split_host_port("").is_err());
    }

    #[test]
    fn echo_tally_matches_replies_and_ignores_strangers() {
        let t0 = Instant::now();
        let mut t = EchoTally::new(u32::MAX); // wraps inside the window
        let s0 = t.on_sent(t0);
        let s1 = t.on_sent(t0 + Duration::from_millis(20));
        let _s2 = t.on_sent(t0 + Duration::from_millis(40));
        assert_eq!(s1, 0);
        assert_eq!(
            t.on_reply(s1, t0 + Duration::from_millis(30), Duration::ZERO),
            Arrival::InOrder
        );
        assert_eq!(
            t.on_reply(s0, t0 + Duration::from_millis(31), Duration::from_millis(1)),
            Arrival::Reordered
        );
        assert_eq!(
            t.on_reply(s0, t0 + Duration::from_millis(32), Duration::ZERO),
            Arrival::Duplicate
        );
        assert_eq!(
            t.on_reply(7, t0, Duration::ZERO),
            Arrival::OutOfWindow,
            "never sent"
        );
        assert!(!t.complete());
        let s = t.finish();
        assert_eq!(
            (s.stats.sent, s.stats.received, s.stats.max_burst),
            (3, 2, 1)
        );
        assert_eq!((s.stats.duplicates, s.stats.reordered), (1, 1));
        let rtt = s.rtt.unwrap();
        assert!(
            (rtt.min - 10.0).abs() < 0.01 && (rtt.max - 30.0).abs() < 0.01,
            "{rtt:?}"
        );
    }
}
