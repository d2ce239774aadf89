//! Targets: the one typed builder that turns a target's key/value data ([`Fields`]: an
//! agent.toml `[[target]]` table, the agent's `probe` command arguments, a central
//! config's JSON ([`crate::agent_config`]) or a collector.toml `[[fleet.target]]`,
//! which all take exactly the same keys) into a validated [`Target`] that cannot hold
//! a bad state. It lives here so the agent and the collector's `check` apply the same
//! rules with the same messages.
//!
//! Errors ([`FieldError`]) name the key; the caller says where the data came from (the
//! file and line, the command-line flag, the JSON path). Nothing here does I/O: names
//! are resolved, and `host = "gateway"` is looked up in the routing table, by the probe
//! each window (see `probe::peer`).
//!
//! `[[target]]` keys per kind (`host` may be `gateway`, or `gateway:PORT` for kinds
//! with a port):
//!
//! | kind | `host` | options (default) | sent / received |
//! |---|---|---|---|
//! | `icmp` | host or IP | `count` (1 per second of window), `interval_ms` (window spread evenly) | echoes |
//! | `stamp` | `host[:port]` (862) | `pps` (50), `stamp_seconds` (5; 0 = whole window), `stamp_every` (1), `stamp_idle_packets` (5), `codec` (g711, g711-noplc, g729a), `pad` (false: 44-byte packets) | test packets |
//! | `sip` | `host[:port]` (5060) | `transport` (udp, tcp) | 1 transaction |
//! | `stun` | `host[:port]` (3478) | — | 1 transaction |
//! | `dns` | the name to resolve | `record` (a; srv for `_service._proto` names; aaaa), `server` (`IP[:port]`; /etc/resolv.conf) | 1 query |
//! | `tcp` | host:port | — | 1 connect |

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::measure::Codec;
use crate::{Id, Kind, Layer, ProbeResult};

/// Default voice cadence of a STAMP stream, packets per second (20 ms frames).
pub const DEFAULT_PPS: u32 = 50;
/// Default length of the voice burst at the start of each window.
pub const DEFAULT_STAMP_SECONDS: f64 = 5.0;
/// Default packets sent in a window without a burst (`stamp_every` > 1): RTT, loss and
/// a MOS estimate every window for little traffic.
pub const DEFAULT_IDLE_PACKETS: u32 = 5;
/// The `host` that means the default gateway from the routing table.
pub const GATEWAY: &str = "gateway";

/// Keys every target has.
const REQUIRED: [&str; 4] = ["name", "layer", "kind", "host"];

/// One value of a target's key/value data, whatever format it came in.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// Anything else (a table, an array, null...), named for the error message.
    Other(&'static str),
}

impl fmt::Display for Value {
    /// The value as it would be written, for error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => write!(f, "{s:?}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Other("null") => f.write_str("null"),
            Value::Other(what) => write!(f, "a {what}"),
        }
    }
}

impl Serialize for Value {
    /// As written (`Other` has no value to write: null).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::String(v) => s.serialize_str(v),
            Value::Integer(v) => s.serialize_i64(*v),
            Value::Float(v) => s.serialize_f64(*v),
            Value::Boolean(v) => s.serialize_bool(*v),
            Value::Other(_) => s.serialize_unit(),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a target value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Boolean(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Integer(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Integer))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::String(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::String(v))
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Other("null"))
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Other("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Value::Other("list"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Value::Other("table"))
            }
        }
        d.deserialize_any(V)
    }
}

/// One target as key/value data (stage 1): every key a `[[target]]` table may hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fields(BTreeMap<String, Value>);

impl Fields {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: &str, value: Value) {
        self.0.insert(key.to_owned(), value);
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl FromIterator<(String, Value)> for Fields {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// What is wrong with one key of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The key, e.g. `host` or `pps`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A validated target (stage 2).
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: Id,
    pub layer: Layer,
    pub provider: Option<Id>,
    pub kind: Kind,
    /// The kind-specific, validated spec.
    pub spec: Spec,
}

/// Where probes go: the default gateway, or a host name or IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// The default gateway, read from the routing table when the probe runs.
    Gateway,
    /// A host name or an IP address (IPv6 without brackets).
    Name(String),
}

impl Host {
    fn from_config(h: String) -> Self {
        if h == GATEWAY {
            Host::Gateway
        } else {
            Host::Name(h)
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Gateway => f.write_str(GATEWAY),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// A host and, for port-based kinds, a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Name(n) if n.contains(':') => write!(f, "[{n}]:{}", self.port),
            h => write!(f, "{h}:{}", self.port),
        }
    }
}

/// The kind-specific part of a target.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Icmp(IcmpSpec),
    Stamp(StampSpec),
    Sip(SipSpec),
    Stun(HostPort),
    Dns(DnsSpec),
    Tcp(HostPort),
}

#[derive(Debug, Clone, PartialEq)]
pub struct IcmpSpec {
    pub host: Host,
    /// Echoes per window; `None`: one per second of window.
    pub count: Option<u32>,
    /// Spacing of echoes; `None`: the window spread evenly.
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StampSpec {
    pub to: HostPort,
    pub pps: u32,
    /// Length of the voice burst at the start of each window (`0`: the whole window).
    pub burst: Duration,
    /// The burst runs every `every`-th window; the windows between send a short
    /// train of `idle_packets` (metered links).
    pub every: u32,
    pub idle_packets: u32,
    pub codec: Codec,
    /// Pad test packets to the codec's frame size (else 44 bytes).
    pub pad: bool,
}

impl StampSpec {
    /// Test packet length: 44 bytes, or the codec's 20 ms frame when padded.
    pub fn packet_len(&self) -> usize {
        if self.pad {
            self.codec
                .frame_bytes()
                .clamp(stamp::BASE_LEN, stamp::MAX_LEN)
        } else {
            stamp::BASE_LEN
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SipSpec {
    pub to: HostPort,
    pub transport: sip::Transport,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsSpec {
    /// The name to resolve (a valid DNS name).
    pub name: String,
    pub record: dns::RecordType,
    /// `None`: the first nameserver of /etc/resolv.conf, read each window.
    pub server: Option<SocketAddr>,
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

/// Validates one target's data.
pub fn build(fields: &Fields) -> Result<Target, FieldError> {
    let f = Typed(fields);
    let name = f.required("name")?;
    let name = Id::new(name.as_str()).map_err(|e| FieldError::new("name", e.to_string()))?;
    let layer = f.required("layer")?;
    let layer = Layer::from_name(&layer).ok_or_else(|| {
        FieldError::new(
            "layer",
            format!("unknown layer {layer:?} (expected lan, isp, internet or provider)"),
        )
    })?;
    let provider = match f.string("provider")? {
        Some(p) => {
            Some(Id::new(p.as_str()).map_err(|e| FieldError::new("provider", e.to_string()))?)
        }
        None => None,
    };
    if layer == Layer::Provider && provider.is_none() {
        return Err(FieldError::new(
            "provider",
            "layer \"provider\" needs `provider = \"NAME\"` naming which provider",
        ));
    }
    let kind = f.required("kind")?;
    let kind = Kind::from_name(&kind).ok_or_else(|| {
        FieldError::new(
            "kind",
            format!("unknown kind {kind:?} (expected icmp, stamp, sip, stun, dns or tcp)"),
        )
    })?;
    let allowed = allowed_options(kind);
    let base = ["name", "layer", "provider", "kind", "host"];
    if let Some(key) = fields
        .keys()
        .find(|k| !base.contains(k) && !allowed.contains(k))
    {
        let hint = if allowed.is_empty() {
            format!("kind {kind} takes no options")
        } else {
            format!("options for kind {kind}: {}", allowed.join(", "))
        };
        return Err(FieldError::new(key, format!("unknown option ({hint})")));
    }
    let host = f.required("host")?;
    let host = host.trim();
    let host_err = |msg: String| FieldError::new("host", msg);
    let spec = match kind {
        Kind::Icmp => {
            let (h, port) = split_host_port(host).map_err(host_err)?;
            if port.is_some() {
                return Err(host_err(format!("icmp takes no port: {host:?}")));
            }
            Spec::Icmp(IcmpSpec {
                host: Host::from_config(h),
                count: f.uint("count", 1, 10_000)?,
                interval: f.uint("interval_ms", 10, 600_000)?.map(ms),
            })
        }
        Kind::Stamp => {
            let codec = match f.string("codec")? {
                None => Codec::default(),
                Some(c) => Codec::from_name(&c.to_ascii_lowercase()).ok_or_else(|| {
                    FieldError::new(
                        "codec",
                        format!("unknown codec {c:?} (expected g711, g711-noplc or g729a)"),
                    )
                })?,
            };
            Spec::Stamp(StampSpec {
                to: host_port(host, stamp::PORT).map_err(host_err)?,
                pps: f.uint("pps", 1, 1000)?.unwrap_or(DEFAULT_PPS),
                burst: Duration::from_secs_f64(
                    f.float("stamp_seconds", 0.0, 3600.0)?
                        .unwrap_or(DEFAULT_STAMP_SECONDS),
                ),
                every: f.uint("stamp_every", 1, 10_000)?.unwrap_or(1),
                idle_packets: f
                    .uint("stamp_idle_packets", 1, 1000)?
                    .unwrap_or(DEFAULT_IDLE_PACKETS),
                codec,
                pad: f.bool("pad")?.unwrap_or(false),
            })
        }
        Kind::Sip => Spec::Sip(SipSpec {
            to: host_port(host, sip::PORT).map_err(host_err)?,
            transport: match f.string("transport")? {
                None => sip::Transport::Udp,
                Some(t) => sip::Transport::from_name(&t).ok_or_else(|| {
                    FieldError::new(
                        "transport",
                        format!("unknown transport {t:?} (expected udp or tcp)"),
                    )
                })?,
            },
        }),
        Kind::Stun => Spec::Stun(host_port(host, stun::PORT).map_err(host_err)?),
        Kind::Dns => {
            let record = match f.string("record")? {
                None => dns::RecordType::default_for(host),
                Some(r) => dns::RecordType::from_name(&r).ok_or_else(|| {
                    FieldError::new(
                        "record",
                        format!("unknown record type {r:?} (expected a, aaaa or srv)"),
                    )
                })?,
            };
            let server = match f.string("server")? {
                None => None,
                Some(s) => Some(parse_server(&s).map_err(|m| FieldError::new("server", m))?),
            };
            dns::validate_name(host).map_err(host_err)?;
            Spec::Dns(DnsSpec {
                name: host.to_owned(),
                record,
                server,
            })
        }
        Kind::Tcp => {
            let (h, port) = split_host_port(host).map_err(host_err)?;
            let port = port.ok_or_else(|| {
                host_err(format!("tcp needs a port: \"{host}:PORT\" (e.g. :5061)"))
            })?;
            Spec::Tcp(HostPort {
                host: Host::from_config(h),
                port,
            })
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

/// Validates a list of targets: each one, and that no two share a name. The error
/// says which target (by index).
pub fn build_all<'a>(
    list: impl IntoIterator<Item = &'a Fields>,
) -> Result<Vec<Target>, (usize, FieldError)> {
    let mut targets: Vec<Target> = Vec::new();
    for (i, fields) in list.into_iter().enumerate() {
        let t = build(fields).map_err(|e| (i, e))?;
        if let Some(j) = targets.iter().position(|o| o.name == t.name) {
            let msg = format!(
                "duplicate target name {:?} (also target[{j}])",
                t.name.as_str()
            );
            return Err((i, FieldError::new("name", msg)));
        }
        targets.push(t);
    }
    Ok(targets)
}

impl Target {
    /// An empty result for this target, to fill in.
    pub fn result(&self) -> ProbeResult {
        ProbeResult::new(
            self.name.clone(),
            self.layer,
            self.provider.clone(),
            self.kind,
        )
    }

    /// Whether probing it needs the default gateway.
    pub fn uses_gateway(&self) -> bool {
        match &self.spec {
            Spec::Icmp(s) => s.host == Host::Gateway,
            Spec::Stamp(StampSpec { to, .. })
            | Spec::Sip(SipSpec { to, .. })
            | Spec::Stun(to)
            | Spec::Tcp(to) => to.host == Host::Gateway,
            Spec::Dns(_) => false,
        }
    }
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(u64::from(v))
}

/// A DNS `server` option: an IP, or IP:port.
pub fn parse_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, dns::PORT));
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
        host: Host::from_config(host),
        port: port.unwrap_or(default_port),
    })
}

/// Typed access to a target's keys, with errors naming the key.
struct Typed<'a>(&'a Fields);

impl Typed<'_> {
    fn required(&self, key: &str) -> Result<String, FieldError> {
        self.string(key)?.ok_or_else(|| {
            FieldError::new(
                key,
                format!(
                    "missing: every target needs {} (e.g. {key} = \"...\")",
                    REQUIRED.join(", ")
                ),
            )
        })
    }

    fn string(&self, key: &str) -> Result<Option<String>, FieldError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(FieldError::new(key, format!("expected a string, got {v}"))),
        }
    }

    fn uint(&self, key: &str, min: u32, max: u32) -> Result<Option<u32>, FieldError> {
        let Some(v) = self.0.get(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::Integer(i) => u32::try_from(*i).ok(),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(FieldError::new(
                key,
                format!("expected an integer {min}-{max}, got {v}"),
            )),
        }
    }

    fn float(&self, key: &str, min: f64, max: f64) -> Result<Option<f64>, FieldError> {
        let Some(v) = self.0.get(key) else {
            return Ok(None);
        };
        let x = match v {
            Value::Float(x) => Some(*x),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        };
        match x {
            Some(x) if x >= min && x <= max => Ok(Some(x)),
            _ => Err(FieldError::new(
                key,
                format!("expected a number {min}-{max}, got {v}"),
            )),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, FieldError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(FieldError::new(
                key,
                format!("expected true or false, got {v}"),
            )),
        }
    }
}

impl fmt::Display for Target {
    /// One line, as `check` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} layer={}", self.name, self.layer)?;
        if let Some(p) = &self.provider {
            write!(f, " provider={p}")?;
        }
        write!(f, " kind={}", self.kind)?;
        match &self.spec {
            Spec::Icmp(s) => {
                write!(f, " host={}", s.host)?;
                match s.count {
                    Some(c) => write!(f, " count={c}")?,
                    None => write!(f, " count=1/s")?,
                }
                if let Some(i) = s.interval {
                    write!(f, " interval_ms={}", i.as_millis())?;
                }
            }
            Spec::Stamp(s) => {
                write!(f, " host={} pps={} stamp_seconds=", s.to, s.pps)?;
                if s.burst.is_zero() {
                    write!(f, "window")?;
                } else {
                    write!(f, "{}", s.burst.as_secs_f64())?;
                }
                if s.every > 1 {
                    write!(
                        f,
                        " stamp_every={} stamp_idle_packets={}",
                        s.every, s.idle_packets
                    )?;
                }
                write!(f, " codec={} packet_bytes={}", s.codec, s.packet_len())?;
            }
            Spec::Sip(s) => write!(f, " host={} transport={}", s.to, s.transport.as_str())?,
            Spec::Stun(to) | Spec::Tcp(to) => write!(f, " host={to}")?,
            Spec::Dns(s) => {
                write!(f, " name={} record={}", s.name, s.record.name())?;
                match s.server {
                    Some(a) => write!(f, " server={a}")?,
                    None => write!(f, " server=system")?,
                }
            }
        }
        Ok(())
    }
}

/// The protocol facts targets are checked against (ports, packet sizes, names); the
/// agent's wire codecs re-export them, so both sides agree by construction.
pub mod stamp {
    /// STAMP's well-known UDP port.
    pub const PORT: u16 = 862;
    /// Length of an unauthenticated STAMP test packet, both directions.
    pub const BASE_LEN: usize = 44;
    /// Largest test packet: one unfragmented UDP datagram on a 1500-byte MTU path.
    pub const MAX_LEN: usize = 1472;
}

/// STUN's port (see [`stamp`]).
pub mod stun {
    /// STUN's default port.
    pub const PORT: u16 = 3478;
}

/// SIP's port and transports (see [`stamp`]).
pub mod sip {
    /// SIP's default port.
    pub const PORT: u16 = 5060;

    /// The transport a request travels over (its Via says which).
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

        pub fn from_name(s: &str) -> Option<Self> {
            match s.to_ascii_lowercase().as_str() {
                "udp" => Some(Transport::Udp),
                "tcp" => Some(Transport::Tcp),
                _ => None,
            }
        }
    }
}

/// DNS's port, record types and name rules (see [`stamp`]).
pub mod dns {
    /// DNS's port.
    pub const PORT: u16 = 53;

    /// The record types a probe asks for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum RecordType {
        A,
        Aaaa,
        Srv,
    }

    impl RecordType {
        pub fn code(self) -> u16 {
            match self {
                RecordType::A => 1,
                RecordType::Aaaa => 28,
                RecordType::Srv => 33,
            }
        }

        pub fn name(self) -> &'static str {
            match self {
                RecordType::A => "a",
                RecordType::Aaaa => "aaaa",
                RecordType::Srv => "srv",
            }
        }

        pub fn from_name(s: &str) -> Option<Self> {
            match s.to_ascii_lowercase().as_str() {
                "a" => Some(RecordType::A),
                "aaaa" => Some(RecordType::Aaaa),
                "srv" => Some(RecordType::Srv),
                _ => None,
            }
        }

        /// SRV for service names (`_sip._udp.example.com`), else A.
        pub fn default_for(name: &str) -> Self {
            if name.starts_with('_') {
                RecordType::Srv
            } else {
                RecordType::A
            }
        }
    }

    /// Checks that `name` is a DNS name we can put in a query (1–253 characters, labels of
    /// 1–63 ASCII characters without spaces; a trailing dot allowed).
    pub fn validate_name(name: &str) -> Result<(), String> {
        let n = name.strip_suffix('.').unwrap_or(name);
        if n.is_empty() || n.len() > 253 {
            return Err(format!("{name:?} is not a DNS name (1-253 characters)"));
        }
        for label in n.split('.') {
            if label.is_empty() || label.len() > 63 || !label.is_ascii() || label.contains(' ') {
                return Err(format!("{name:?} is not a DNS name (bad label {label:?})"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fields from `key = value` pairs written as TOML values.
    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| {
                let v: Value = toml::from_str::<BTreeMap<String, Value>>(&format!("v = {v}"))
                    .unwrap()
                    .remove("v")
                    .unwrap();
                ((*k).to_owned(), v)
            })
            .collect()
    }

    fn target(kind: &str, host: &str, extra: &[(&str, &str)]) -> Result<Target, FieldError> {
        let (kind, host) = (format!("{kind:?}"), format!("{host:?}"));
        let mut pairs = vec![
            ("name", "\"t\""),
            ("layer", "\"provider\""),
            ("provider", "\"p\""),
            ("kind", kind.as_str()),
            ("host", host.as_str()),
        ];
        pairs.extend_from_slice(extra);
        build(&fields(&pairs))
    }

    #[test]
    fn stamp_defaults_and_display() {
        let t = target("stamp", "203.0.113.10", &[]).unwrap();
        assert_eq!(
            t.spec,
            Spec::Stamp(StampSpec {
                to: HostPort {
                    host: Host::Name("203.0.113.10".into()),
                    port: 862
                },
                pps: 50,
                burst: Duration::from_secs(5),
                every: 1,
                idle_packets: 5,
                codec: Codec::G711,
                pad: false,
            })
        );
        assert_eq!(
            t.to_string(),
            "t layer=provider provider=p kind=stamp host=203.0.113.10:862 pps=50 stamp_seconds=5 codec=g711 packet_bytes=44"
        );
    }

    #[test]
    fn stamp_options() {
        let t = target(
            "stamp",
            "[2001:db8::1]:8620",
            &[
                ("pps", "20"),
                ("stamp_seconds", "2.5"),
                ("stamp_every", "30"),
                ("codec", "\"G729a\""),
                ("pad", "true"),
            ],
        )
        .unwrap();
        assert!(
            t.to_string().ends_with(
                "kind=stamp host=[2001:db8::1]:8620 pps=20 stamp_seconds=2.5 stamp_every=30 stamp_idle_packets=5 codec=g729a packet_bytes=44"
            ),
            "{t}"
        );
        let padded = target("stamp", "h", &[("pad", "true")]).unwrap();
        assert!(padded.to_string().ends_with("packet_bytes=160"), "{padded}");
        let e = target("stamp", "h", &[("stamp_every", "0")]).unwrap_err();
        assert_eq!(e.field, "stamp_every");
        assert!(
            e.message.contains("1-10000") && e.message.contains('0'),
            "{e}"
        );
    }

    #[test]
    fn every_kind_describes_itself_on_one_line() {
        let t = |kind: &str, host: &str, extra: &[(&str, &str)]| {
            target(kind, host, extra).unwrap().to_string()
        };
        let head = "t layer=provider provider=p kind=";
        for (got, want) in [
            (
                t("icmp", "192.0.2.1", &[("count", "5")]),
                "icmp host=192.0.2.1 count=5",
            ),
            (
                t("sip", "sip.example.com", &[("transport", "\"tcp\"")]),
                "sip host=sip.example.com:5060 transport=tcp",
            ),
            (
                t("stun", "stun.example.com", &[]),
                "stun host=stun.example.com:3478",
            ),
            (
                t(
                    "dns",
                    "_sip._udp.example.com",
                    &[("server", "\"192.0.2.53\"")],
                ),
                "dns name=_sip._udp.example.com record=srv server=192.0.2.53:53",
            ),
            (
                t("dns", "example.com", &[]),
                "dns name=example.com record=a server=system",
            ),
            (t("tcp", "192.0.2.1:5061", &[]), "tcp host=192.0.2.1:5061"),
        ] {
            assert_eq!(got, format!("{head}{want}"));
            assert!(!got.contains('\n'));
        }
    }

    #[test]
    fn gateway_stays_the_gateway_with_or_without_a_port() {
        let icmp = target("icmp", "gateway", &[]).unwrap();
        assert!(matches!(&icmp.spec, Spec::Icmp(s) if s.host == Host::Gateway));
        assert!(icmp.uses_gateway());
        assert!(
            icmp.to_string()
                .ends_with("kind=icmp host=gateway count=1/s")
        );
        for (kind, host, shown) in [
            ("sip", "gateway:5060", "host=gateway:5060"),
            ("sip", "gateway", "host=gateway:5060"),
            ("tcp", "gateway:80", "host=gateway:80"),
            ("stamp", "gateway:8620", "host=gateway:8620"),
            ("stun", "gateway", "host=gateway:3478"),
        ] {
            let t = target(kind, host, &[]).unwrap();
            assert!(t.uses_gateway(), "{kind} {host}");
            assert!(t.to_string().contains(shown), "{t}");
        }
        let e = target("icmp", "gateway:1", &[]).unwrap_err();
        assert!(e.message.contains("icmp takes no port"), "{e}");
        let e = target("tcp", "gateway", &[]).unwrap_err();
        assert!(e.message.contains("tcp needs a port"), "{e}");
        // Only the exact word: a host that starts with it is a host name.
        let t = target("tcp", "gateway.lan:80", &[]).unwrap();
        assert!(!t.uses_gateway());
        // For dns, host is the name to look up, whatever it is.
        assert!(!target("dns", "gateway", &[]).unwrap().uses_gateway());
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = target("sip", "x:5060", &[("transport", "\"sctp\"")]).unwrap_err();
        assert_eq!(e.field, "transport");
        assert!(e.message.contains("sctp"));
        let e = target("icmp", "x", &[("pps", "5")]).unwrap_err();
        assert_eq!(e.field, "pps");
        assert!(e.message.contains("count, interval_ms"), "{e}");
        let e = target("tcp", "x", &[]).unwrap_err();
        assert!(e.message.contains("needs a port"));
        let e = target("stamp", "x", &[("codec", "\"opus\"")]).unwrap_err();
        assert!(e.message.contains("opus"));
        let e = target("stamp", "x", &[("pps", "\"fast\"")]).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("pps", "expected an integer 1-1000, got \"fast\"")
        );
        let e = target("stamp", "x", &[("pad", "[1]")]).unwrap_err();
        assert_eq!(e.message, "expected true or false, got a list");
        let e = target("dns", "a..b", &[]).unwrap_err();
        assert_eq!(e.field, "host");
        let e = build(&fields(&[
            ("name", "\"t\""),
            ("layer", "\"provider\""),
            ("kind", "\"tcp\""),
            ("host", "\"x:1\""),
        ]))
        .unwrap_err();
        assert_eq!(e.field, "provider");
        let e = build(&fields(&[
            ("name", "\"t\""),
            ("layer", "\"lan\""),
            ("kind", "\"tcp\""),
        ]))
        .unwrap_err();
        assert_eq!(e.field, "host");
        assert!(e.message.starts_with("missing"), "{e}");
        let e = build(&fields(&[("name", "7")])).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("name", "expected a string, got 7")
        );
    }

    #[test]
    fn a_list_rejects_duplicate_names_by_index() {
        let a = fields(&[
            ("name", "\"x\""),
            ("layer", "\"lan\""),
            ("kind", "\"tcp\""),
            ("host", "\"10.0.0.1:80\""),
        ]);
        let list = [a.clone(), a];
        let (i, e) = build_all(&list).unwrap_err();
        assert_eq!((i, e.field.as_str()), (1, "name"));
        assert!(e.message.contains("also target[0]"), "{e}");
        assert_eq!(build_all(&list[..1]).unwrap().len(), 1);
    }

    #[test]
    fn json_takes_the_same_keys() {
        let json = r#"[{"name": "media", "layer": "provider", "provider": "voipco",
            "kind": "stamp", "host": "203.0.113.10", "pps": 20, "stamp_seconds": 2,
            "pad": true}]"#;
        let list: Vec<Fields> = serde_json::from_str(json).unwrap();
        let t = &build_all(&list).unwrap()[0];
        assert!(
            t.to_string()
                .ends_with("pps=20 stamp_seconds=2 codec=g711 packet_bytes=160"),
            "{t}"
        );
        let bad: Vec<Fields> = serde_json::from_str(
            r#"[{"name": "m", "layer": "lan", "kind": "icmp", "host": "h", "count": null}]"#,
        )
        .unwrap();
        let (_, e) = build_all(&bad).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("count", "expected an integer 1-10000, got null")
        );
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
}
