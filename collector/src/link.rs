//! How the collector reaches its broker: the external one named by `[mqtt]` (plain
//! `mqtt://` or `mqtts://` with a CA, client certificate and logins), or the embedded
//! one it starts itself when no url is given. It builds the rumqttc options of the
//! collector's two connections (one publishes, one reads); it does not poll them.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::MqttOptions;
use rumqttc::{TlsConfiguration, Transport};

use crate::config::{Config, INGEST_SUFFIX, Secret};

/// MQTT keepalive of both connections.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// QoS 1 publishes a connection keeps unacknowledged, at most. rumqttc sizes a
/// table of this many publishes per connection up front (65,536 by default, ~14 MB
/// each); the broker's Receive Maximum lowers it further (Mosquitto: 20).
const OUTGOING_INFLIGHT: u16 = 256;

/// Which of the collector's two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Verdicts, events, metrics and the collector's status (and its last will).
    Publish,
    /// Reports and statuses.
    Ingest,
}

/// The collector's logins: one per connection, one password.
#[derive(Debug, Clone)]
pub struct Logins {
    pub publish: String,
    pub ingest: String,
    pub password: Secret,
}

/// Where the broker is and how to log in.
#[derive(Debug, Clone)]
pub struct Link {
    pub host: String,
    pub port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: String,
    logins: Option<Logins>,
    max_packet: u32,
}

impl Link {
    /// The external broker of `cfg`; with none configured, starts the embedded broker
    /// and returns the way to it.
    pub fn open(cfg: &Config) -> anyhow::Result<Link> {
        let max_packet = (cfg.max_payload_bytes * 4).max(256 * 1024) as u32;
        match &cfg.mqtt {
            Some(m) => Ok(Link {
                host: m.host.clone(),
                port: m.port,
                tls: m.tls.as_ref().map(|t| t.config.clone()),
                client_id: m.client_id.clone(),
                logins: match (&m.username, &m.ingest_username, &m.password) {
                    (Some(p), Some(i), Some(pw)) => Some(Logins {
                        publish: p.clone(),
                        ingest: i.clone(),
                        password: pw.clone(),
                    }),
                    _ => None,
                },
                max_packet,
            }),
            None => Self::embedded(cfg, max_packet),
        }
    }

    #[cfg(feature = "embedded-broker")]
    fn embedded(cfg: &Config, max_packet: u32) -> anyhow::Result<Link> {
        // With logins configured, the collector logs in too: with a password made
        // for this run, known to nobody else.
        use crate::config::DEFAULT_CLIENT_ID;
        let own = cfg.broker_logins.as_ref().map(|_| Logins {
            publish: DEFAULT_CLIENT_ID.to_owned(),
            ingest: format!("{DEFAULT_CLIENT_ID}{INGEST_SUFFIX}"),
            password: random_password(),
        });
        crate::broker::start(cfg, own.clone())?;
        // A broker on every address is reached on loopback.
        let ip = match cfg.broker_listen_v5.ip() {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        Ok(Link {
            host: ip.to_string(),
            port: cfg.broker_listen_v5.port(),
            tls: None,
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            logins: own,
            max_packet,
        })
    }

    #[cfg(not(feature = "embedded-broker"))]
    fn embedded(_cfg: &Config, _max_packet: u32) -> anyhow::Result<Link> {
        anyhow::bail!("no [mqtt] url configured and this build has no embedded broker")
    }

    /// The client id of `role`'s connection.
    pub fn client_id(&self, role: Role) -> String {
        match role {
            Role::Publish => self.client_id.clone(),
            Role::Ingest => format!("{}{INGEST_SUFFIX}", self.client_id),
        }
    }

    /// rumqttc options for `role`: client id, keepalive, clean start, packet limit,
    /// login, TLS. The caller adds what is particular to the connection (session
    /// expiry, last will).
    pub fn options(&self, role: Role) -> MqttOptions {
        // rumqttc joins host and port with a colon: an IPv6 literal needs brackets.
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut opts = MqttOptions::new(self.client_id(role), host, self.port);
        opts.set_keep_alive(KEEPALIVE);
        opts.set_clean_start(true);
        opts.set_max_packet_size(Some(self.max_packet));
        opts.set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT);
        if let Some(l) = &self.logins {
            let user = match role {
                Role::Publish => &l.publish,
                Role::Ingest => &l.ingest,
            };
            opts.set_credentials(user.clone(), l.password.expose());
        }
        if let Some(tls) = &self.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        opts
    }
}

/// 24 random bytes from the system's generator, base64.
#[cfg(feature = "embedded-broker")]
fn random_password() -> Secret {
    use base64::Engine as _;
    use ring::rand::SecureRandom;
    let mut b = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random generator works");
    Secret::new(base64::engine::general_purpose::STANDARD.encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_connections_two_logins_one_password() {
        let dir = std::env::temp_dir().join(format!("faultline-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
        let cfg = Config::parse(
            "[mqtt]\nurl = \"mqtt://[::1]:1999\"\nusername = \"faultline-collector\"\npassword_file = \"pw\"\n",
            &dir.join("c.toml").display().to_string(),
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let link = Link::open(&cfg).unwrap();
        let p = link.options(Role::Publish);
        let i = link.options(Role::Ingest);
        assert_eq!(p.client_id(), "faultline-collector");
        assert_eq!(i.client_id(), "faultline-collector-in");
        assert_eq!(p.broker_address(), ("[::1]".to_owned(), 1999));
        let login = |o: &MqttOptions| o.credentials().map(|l| (l.username, l.password));
        assert_eq!(
            login(&p),
            Some(("faultline-collector".to_owned(), "s3cret".to_owned()))
        );
        assert_eq!(
            login(&i),
            Some(("faultline-collector-in".to_owned(), "s3cret".to_owned()))
        );
    }
}
