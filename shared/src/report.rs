//! `Report` and its parts: what an agent measured in one window, in the JSON form of
//! DESIGN.md. Optional fields are omitted when absent and accepted as `null`; unknown
//! fields are ignored, so a newer agent's JSON still parses here.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::Id;

/// The report format version this crate writes in `Report::v`.
pub const REPORT_VERSION: u8 = 1;

/// One agent's measurements over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Format version (1).
    pub v: u8,
    pub site: Id,
    /// Random per agent start; with `seq` it names a window uniquely.
    pub boot: u32,
    /// 0, 1, 2… per boot.
    pub seq: u64,
    /// Window start, ms since the Unix epoch, by the agent's clock.
    pub start_ms: u64,
    pub window_ms: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostHealth>,
    #[serde(default)]
    pub probes: Vec<ProbeResult>,
}

/// The measuring box's own health during the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HostHealth {
    pub cpu_pct: f64,
    pub mem_pct: f64,
    pub load1: f64,
}

/// One target's summary for one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub target: Id,
    pub layer: Layer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Id>,
    pub kind: Kind,
    pub sent: u32,
    pub received: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<RttStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mos: Option<f64>,
    /// Why the probe failed (`timeout`, `refused`, `503`…); absent when it worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Round-trip time summary in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RttStats {
    pub min: f64,
    pub p50: f64,
    pub avg: f64,
    pub p95: f64,
    pub max: f64,
}

impl ProbeResult {
    /// A result with counts only; the optional measurements start absent.
    pub fn new(target: Id, layer: Layer, provider: Option<Id>, kind: Kind) -> Self {
        Self {
            target,
            layer,
            provider,
            kind,
            sent: 0,
            received: 0,
            rtt_ms: None,
            jitter_ms: None,
            max_burst: None,
            mos: None,
            error: None,
        }
    }

    /// Share of sent probes that got no answer, in [0, 1]; 0 when nothing was sent.
    pub fn loss(&self) -> f64 {
        crate::measure::loss_ratio(self.sent, self.received)
    }
}

macro_rules! coded_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $code:literal, $text:literal;)* }) => {
        $(#[$doc])*
        ///
        /// Unknown codes survive as `Unknown(code)` so a newer agent's reports still
        /// decode; in JSON an unknown name reads as `Unknown(255)` and writes as `"unknown"`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($variant,)*
            Unknown(u8),
        }

        impl $name {
            /// Every known value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The one-byte code used on the wire.
            pub fn code(self) -> u8 {
                match self {
                    $($name::$variant => $code,)*
                    $name::Unknown(c) => c,
                }
            }

            pub fn from_code(code: u8) -> Self {
                match code {
                    $($code => $name::$variant,)*
                    c => $name::Unknown(c),
                }
            }

            /// The lowercase name used in JSON, config files and topics.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Unknown(_) => "unknown",
                }
            }

            /// Parses a known name; `None` for anything else.
            pub fn from_name(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(self.as_str())
                } else {
                    s.serialize_u8(self.code())
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = std::borrow::Cow::<str>::deserialize(d)?;
                    Ok(Self::from_name(&s).unwrap_or($name::Unknown(u8::MAX)))
                } else {
                    u8::deserialize(d).map(Self::from_code)
                }
            }
        }
    };
}

coded_enum! {
    /// Which part of the path a target stands for.
    Layer {
        Lan = 0, "lan";
        Isp = 1, "isp";
        Internet = 2, "internet";
        Provider = 3, "provider";
    }
}

coded_enum! {
    /// How a target is probed.
    Kind {
        Icmp = 0, "icmp";
        Stamp = 1, "stamp";
        Sip = 2, "sip";
        Stun = 3, "stun";
        Dns = 4, "dns";
        Tcp = 5, "tcp";
    }
}

impl Kind {
    /// Voice probes carry a MOS and are judged by it.
    pub fn is_voice(self) -> bool {
        matches!(self, Kind::Stamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for &l in Layer::ALL {
            assert_eq!(Layer::from_code(l.code()), l);
            assert_eq!(Layer::from_name(l.as_str()), Some(l));
        }
        for &k in Kind::ALL {
            assert_eq!(Kind::from_code(k.code()), k);
            assert_eq!(Kind::from_name(k.as_str()), Some(k));
        }
        assert_eq!(Kind::from_code(42), Kind::Unknown(42));
        assert_eq!(Kind::Unknown(42).code(), 42);
    }

    #[test]
    fn unknown_json_names_do_not_fail_the_report() {
        let k: Kind = serde_json::from_str("\"quic\"").unwrap();
        assert_eq!(k, Kind::Unknown(255));
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"unknown\"");
    }

    #[test]
    fn loss_is_a_ratio_and_zero_when_nothing_was_sent() {
        let mut p = ProbeResult::new(Id::new("gw").unwrap(), Layer::Lan, None, Kind::Icmp);
        assert_eq!(p.loss(), 0.0);
        p.sent = 10;
        p.received = 7;
        assert!((p.loss() - 0.3).abs() < 1e-12);
    }
}
