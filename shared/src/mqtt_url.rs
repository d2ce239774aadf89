//! The broker address of an `[mqtt] url` key, for the agent's and the collector's
//! configs alike: `mqtt://host[:port]` (`tcp://` is taken as its alias) or
//! `mqtts://host[:port]` (TLS), IPv6 in brackets, an optional trailing `/`.
//!
//! Only scheme, host and port: credentials, paths and queries are refused, since the
//! logins live in their own config keys (a password in a URL ends up in logs).

use std::fmt;
use std::str::FromStr;

/// The broker port of `mqtt://` when the URL names none.
pub const MQTT_PORT: u16 = 1883;
/// The broker port of `mqtts://` when the URL names none.
pub const MQTTS_PORT: u16 = 8883;

/// A validated broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    /// `mqtts://`: the connection uses TLS.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

/// Why a URL is not a broker address: the URL and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?}{kind}")]
pub struct MqttUrlError {
    pub url: String,
    pub kind: MqttUrlErrorKind,
}

/// What is wrong with a broker URL (its `Display` follows the quoted URL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttUrlErrorKind {
    #[error(" must start with mqtt:// or mqtts:// (e.g. mqtts://broker.example:8883)")]
    Scheme,
    #[error(
        ": only scheme, host and port are allowed (credentials go in username and password_file)"
    )]
    Credentials,
    #[error(": only scheme, host and port are allowed (no path, query or fragment)")]
    Path,
    #[error(": unclosed '[' in IPv6 address")]
    UnclosedBracket,
    #[error(": expected ':port' after ']'")]
    AfterBracket,
    #[error(" has no host")]
    NoHost,
    #[error(": port {0:?} is not 1..=65535")]
    Port(String),
}

impl MqttUrl {
    /// Parses and checks `url`.
    pub fn parse(url: &str) -> Result<Self, MqttUrlError> {
        let err = |kind| MqttUrlError {
            url: url.to_owned(),
            kind,
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
        {
            (false, r)
        } else {
            return Err(err(MqttUrlErrorKind::Scheme));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(err(MqttUrlErrorKind::Credentials));
        }
        if rest.contains(['/', '?', '#']) {
            return Err(err(MqttUrlErrorKind::Path));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| err(MqttUrlErrorKind::UnclosedBracket))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| err(MqttUrlErrorKind::AfterBracket))?,
                ),
            };
            (h, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(err(MqttUrlErrorKind::NoHost));
        }
        let port = match port {
            None if tls => MQTTS_PORT,
            None => MQTT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| err(MqttUrlErrorKind::Port(p.to_owned())))?,
        };
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

impl FromStr for MqttUrl {
    type Err = MqttUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The canonical form: scheme, host (IPv6 in brackets) and the port, always written.
impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(tls: bool, host: &str, port: u16) -> MqttUrl {
        MqttUrl {
            tls,
            host: host.into(),
            port,
        }
    }

    #[test]
    fn accepts_both_schemes_with_default_ports() {
        let ok = |s: &str| MqttUrl::parse(s).unwrap();
        assert_eq!(
            ok("mqtts://broker.msp.example:8883"),
            url(true, "broker.msp.example", 8883)
        );
        assert_eq!(ok("mqtt://10.0.0.1"), url(false, "10.0.0.1", 1883));
        assert_eq!(ok("mqtts://b.example/"), url(true, "b.example", 8883));
        assert_eq!(ok("mqtt://b"), url(false, "b", 1883));
        assert_eq!(ok("mqtts://b"), url(true, "b", 8883));
        assert_eq!(ok("tcp://b:1"), url(false, "b", 1));
        assert_eq!("mqtt://b:65535".parse(), Ok(url(false, "b", 65535)));
    }

    #[test]
    fn ipv6_in_brackets() {
        let v6 = MqttUrl::parse("mqtt://[::1]:1884").unwrap();
        assert_eq!(v6, url(false, "::1", 1884));
        assert_eq!(v6.to_string(), "mqtt://[::1]:1884");
        assert_eq!(
            MqttUrl::parse("mqtts://[::1]:9/").unwrap(),
            url(true, "::1", 9)
        );
        assert_eq!(
            MqttUrl::parse("mqtts://[fe80::1]").unwrap(),
            url(true, "fe80::1", 8883)
        );
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        for s in [
            "mqtt://b",
            "tcp://b:7",
            "mqtts://[::1]/",
            "mqtts://b.example:8884",
        ] {
            let u = MqttUrl::parse(s).unwrap();
            assert_eq!(MqttUrl::parse(&u.to_string()), Ok(u.clone()), "{s}");
        }
        assert_eq!(
            MqttUrl::parse("tcp://b").unwrap().to_string(),
            "mqtt://b:1883"
        );
    }

    #[test]
    fn rejects_with_the_url_and_the_reason() {
        use MqttUrlErrorKind as K;
        for (bad, kind) in [
            ("http://b:1883", K::Scheme),
            ("b:1883", K::Scheme),
            ("mqtt://", K::NoHost),
            ("mqtt://:1883", K::NoHost),
            ("mqtt://[]:1883", K::NoHost),
            ("mqtt://b:0", K::Port("0".into())),
            ("mqtt://b:99999", K::Port("99999".into())),
            ("mqtt://b:x", K::Port("x".into())),
            ("mqtt://b:", K::Port("".into())),
            ("mqtt://user:pw@b", K::Credentials),
            ("mqtt://u@b/x", K::Credentials),
            ("mqtt://b/topic", K::Path),
            ("mqtt://b?x=1", K::Path),
            ("mqtt://[::1", K::UnclosedBracket),
            ("mqtts://[::1]9", K::AfterBracket),
        ] {
            let e = MqttUrl::parse(bad).unwrap_err();
            assert_eq!((e.url.as_str(), &e.kind), (bad, &kind));
        }
    }

    #[test]
    fn messages_name_the_url() {
        let msg = |s: &str| MqttUrl::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("http://b"),
            "\"http://b\" must start with mqtt:// or mqtts:// (e.g. mqtts://broker.example:8883)"
        );
        assert_eq!(
            msg("mqtt://u:p@b"),
            "\"mqtt://u:p@b\": only scheme, host and port are allowed \
             (credentials go in username and password_file)"
        );
        assert_eq!(
            msg("mqtt://b:0"),
            "\"mqtt://b:0\": port \"0\" is not 1..=65535"
        );
        assert_eq!(msg("mqtt://"), "\"mqtt://\" has no host");
        assert_eq!(
            msg("mqtts://[::1"),
            "\"mqtts://[::1\": unclosed '[' in IPv6 address"
        );
    }
}
