//! A real NATS cluster on loopback for cluster-mode tests: three `nats-server`
//! processes (Debian's `nats-server`), each with JetStream (its own store
//! directory), cluster routes to the others, an MQTT listener for the agents, and
//! the account mapping that partitions site reports — the settings of
//! `collector/deploy/cluster/nats-*.conf` with ephemeral ports and paths.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Child, TempDir, free_tcp_port, require, wait_for_tcp};

/// One node's ports.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    pub client: u16,
    pub cluster: u16,
    pub mqtt: u16,
}

/// A running three-node (or n-node) cluster; nodes are killed when dropped.
#[derive(Debug)]
pub struct NatsCluster {
    bin: PathBuf,
    dir: TempDir,
    pub nodes: Vec<NodePorts>,
    children: Vec<Option<Child>>,
    partitions: u32,
}

/// The account block: one account with JetStream, the mapping of site reports to
/// partitions, and no login needed on loopback.
pub fn account_conf(partitions: u32) -> String {
    let map = |suffix: &str| {
        format!(
            "      \"faultline.v1.sites.*.{suffix}\": \"fl.in.{{{{partition({partitions},1)}}}}.faultline.v1.sites.{{{{wildcard(1)}}}}.{suffix}\"\n"
        )
    };
    format!(
        "accounts {{\n  FAULTLINE {{\n    jetstream: enabled\n    users [ {{ user: faultline, password: faultline }} ]\n    mappings {{\n{}{}    }}\n  }}\n}}\nno_auth_user: faultline\n",
        map("report"),
        map("report.json"),
    )
}

impl NatsCluster {
    /// Starts `n` nodes with `partitions` report partitions and waits until each
    /// accepts clients. `None` when nats-server is not installed (reason printed).
    pub fn start(n: usize, partitions: u32) -> Option<Self> {
        let bin = require("nats-server", "nats-server")?;
        let nodes = (0..n)
            .map(|_| NodePorts {
                client: free_tcp_port(),
                cluster: free_tcp_port(),
                mqtt: free_tcp_port(),
            })
            .collect();
        let mut c = Self {
            bin,
            dir: TempDir::new("nats"),
            nodes,
            children: (0..n).map(|_| None).collect(),
            partitions,
        };
        for i in 0..n {
            c.launch(i);
        }
        for node in &c.nodes {
            for port in [node.client, node.mqtt] {
                assert!(
                    wait_for_tcp(
                        SocketAddr::from(([127, 0, 0, 1], port)),
                        Duration::from_secs(30)
                    ),
                    "nats-server did not listen on {port}"
                );
            }
        }
        Some(c)
    }

    /// Node `i`'s config.
    pub fn conf(&self, i: usize) -> String {
        let me = self.nodes[i];
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("    nats-route://127.0.0.1:{}", n.cluster))
            .collect();
        format!(
            "server_name: fl-nats-{i}\nlisten: 127.0.0.1:{}\n\
             jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n\
             cluster {{\n  name: faultline\n  listen: 127.0.0.1:{}\n  routes: [\n{}\n  ]\n}}\n\
             mqtt {{\n  listen: 127.0.0.1:{}\n  stream_replicas: 3\n  ack_wait: \"30s\"\n  max_ack_pending: 4096\n}}\n{}",
            me.client,
            self.dir.path().join(format!("js-{i}")).display(),
            me.cluster,
            routes.join("\n"),
            me.mqtt,
            account_conf(self.partitions),
        )
    }

    fn launch(&mut self, i: usize) {
        let path = self.dir.path().join(format!("nats-{i}.conf"));
        std::fs::write(&path, self.conf(i)).expect("write nats-server config");
        let log = std::fs::File::create(self.dir.path().join(format!("nats-{i}.log")))
            .expect("nats-server log");
        let child = Child::spawn(
            &format!("nats-{i}"),
            Command::new(&self.bin)
                .arg("-c")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(log),
        )
        .expect("spawn nats-server");
        self.children[i] = Some(child);
    }

    /// Every node's `nats://` URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client))
            .collect()
    }

    /// Every node's MQTT listener as `mqtt://` URL.
    pub fn mqtt_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("mqtt://127.0.0.1:{}", n.mqtt))
            .collect()
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            c.signal("KILL");
            c.kill();
        }
    }

    /// Whether node `i` runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.children[i].as_mut().is_some_and(Child::is_running)
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("nats-{i}.log"))).unwrap_or_default()
    }
}
