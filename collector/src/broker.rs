//! The embedded MQTT broker `run` starts when collector.toml names no broker, so one
//! box works with nothing else installed.
//!
//! It is rumqttd (the broker from the rumqttc authors): pure Rust, no system
//! libraries, speaks MQTT 3.1.1 and 5 with retained messages and last wills. It
//! blocks the thread it runs on and keeps nothing on disk, so it runs on its own
//! thread and a broker restart loses retained messages and queued sessions — fine for
//! a single box or a trial, not for production (use Mosquitto: see README). rumqttd
//! serves one protocol per listener: agents and tools connect to `listen`
//! (MQTT 3.1.1, default 127.0.0.1:1883); the collector's own MQTT 5 client uses
//! `listen_v5` (default 127.0.0.1:1884).
//!
//! Without `[broker] password_file` it takes anyone, so the config only lets it
//! listen on loopback. With one, every client must log in (Mosquitto's password file
//! format) with a client id that is its login or `faultline-<login>` (the agent's
//! default), so no login can take over another's session; the collector logs in with
//! its own per-run password. rumqttd has no topic ACLs: any login may publish on any
//! topic, which is why production uses Mosquitto with the shipped ACL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::link::Logins;
use crate::passwd::{PasswordFile, constant_time_eq};

/// Who may connect: the file's logins, and the collector's own.
#[derive(Debug)]
pub struct Access {
    file: Arc<PasswordFile>,
    own: Logins,
}

impl Access {
    pub fn new(file: Arc<PasswordFile>, own: Logins) -> Self {
        Self { file, own }
    }

    /// Whether `client_id` may connect as `user` with `password`. The collector's own
    /// logins (and client ids) are only its own; any other login must be in the file
    /// and use its login, or `faultline-<login>`, as client id.
    pub fn allows(&self, client_id: &str, user: &str, password: &str) -> bool {
        let own = [self.own.publish.as_str(), self.own.ingest.as_str()];
        if own.contains(&user) {
            return client_id == user
                && constant_time_eq(password.as_bytes(), self.own.password.expose().as_bytes());
        }
        if own.contains(&client_id) {
            return false;
        }
        let id_is_theirs = client_id == user
            || client_id
                .strip_prefix("faultline-")
                .is_some_and(|rest| rest == user);
        id_is_theirs && self.file.verify(user, password.as_bytes())
    }
}

fn server(
    name: &str,
    listen: SocketAddr,
    max_payload: usize,
    access: Option<&Arc<Access>>,
) -> ServerSettings {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: max_payload,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    if let Some(a) = access {
        let a = a.clone();
        connections.set_auth_handler(move |client_id: String, user: String, password: String| {
            let ok = a.allows(&client_id, &user, &password);
            if !ok {
                tracing::warn!(client_id, user, "embedded broker: login refused");
            }
            std::future::ready(ok)
        });
    }
    ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    }
}

/// Starts the broker for `cfg` (`[broker]`) on a thread of its own; returns once it
/// has been spawned. `own`: the collector's logins, present exactly when `[broker]
/// password_file` is (the config refuses a non-loopback listen without it).
pub fn start(cfg: &crate::config::Config, own: Option<Logins>) -> anyhow::Result<()> {
    let (listen, listen_v5) = (cfg.broker_listen, cfg.broker_listen_v5);
    let max_payload = cfg.max_payload_bytes * 4;
    let access = match (&cfg.broker_logins, own) {
        (Some(l), Some(own)) => Some(Arc::new(Access::new(l.file.clone(), own))),
        (None, None) => None,
        _ => anyhow::bail!("the embedded broker's logins and the collector's own go together"),
    };
    anyhow::ensure!(
        access.is_some() || (listen.ip().is_loopback() && listen_v5.ip().is_loopback()),
        "the embedded broker listens beyond loopback only with [broker] password_file"
    );
    match (&cfg.broker_logins, &access) {
        (Some(l), Some(_)) => tracing::info!(
            "embedded broker: MQTT 3.1.1 on {listen}, MQTT 5 on {listen_v5}; logins from {} ({}), \
             client id = login or faultline-<login>; no TLS and no topic ACLs (Mosquitto for production)",
            l.path.display(),
            l.file.len()
        ),
        _ => tracing::info!(
            "embedded broker: MQTT 3.1.1 on {listen}, MQTT 5 on {listen_v5}; no logins \
             (loopback only: set [broker] password_file to listen beyond it)"
        ),
    }
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 20_010,
            max_outgoing_packet_count: 1000,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([(
            "v4".to_owned(),
            server("v4", listen, max_payload, access.as_ref()),
        )])),
        v5: Some(HashMap::from([(
            "v5".to_owned(),
            server("v5", listen_v5, max_payload, access.as_ref()),
        )])),
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn a_login_connects_only_as_itself() {
        // alice / "correct horse", written by mosquitto_passwd.
        let file = PasswordFile::parse(
            "alice:$7$101$cVFy5ADTY9uU3qqW$BQztE9k94aho0lgA6CRBkUFheiNQfHrSPRh+TdK+yA0iMlI0o5qIWGYLoVj0JdAGs6rmiSSLL9Vxv/w//TRNKg==\n",
        )
        .unwrap();
        let own = Logins {
            publish: "faultline-collector".into(),
            ingest: "faultline-collector-in".into(),
            password: Secret::new("run-secret"),
        };
        let a = Access::new(Arc::new(file), own);
        assert!(a.allows("alice", "alice", "correct horse"));
        assert!(a.allows("faultline-alice", "alice", "correct horse"));
        assert!(!a.allows("alice", "alice", "wrong"));
        // Another's id: refused, even with the right password.
        assert!(!a.allows("faultline-bob", "alice", "correct horse"));
        assert!(!a.allows("faultline-collector-in", "alice", "correct horse"));
        assert!(!a.allows("faultline-collector", "alice", "correct horse"));
        // The collector's own logins, with its own ids only.
        assert!(a.allows("faultline-collector", "faultline-collector", "run-secret"));
        assert!(a.allows(
            "faultline-collector-in",
            "faultline-collector-in",
            "run-secret"
        ));
        assert!(!a.allows(
            "faultline-collector-in",
            "faultline-collector",
            "run-secret"
        ));
        assert!(!a.allows(
            "faultline-collector",
            "faultline-collector",
            "correct horse"
        ));
        assert!(!a.allows("bob", "bob", ""));
    }
}
