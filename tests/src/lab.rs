//! The fault-injection lab: a small fleet of real agent processes, a real Mosquitto,
//! two providers (each a STAMP reflector, a Kamailio for SIP and a coturn for STUN)
//! and the real collector, wired so that every path a site measures runs through
//! its own impairment [`Relay`]. Cutting or impairing relays stands for a fault in a
//! site's LAN, its ISP, its path to one provider, or a provider.
//!
//! What lives here: building the lab ([`Lab::start`]), injecting faults on the
//! relays ([`SiteNet`]), watching what the collector publishes ([`Watch`]) and
//! turning verdict times into latencies in windows. The scenarios themselves and
//! their assertions are in `tests/lab.rs`.
//!
//! Topology per site (all on loopback):
//! - `gw` (layer lan, stamp) → the site's `lan` relay → the "gateway" reflector;
//! - `isp-hop` (layer isp, stamp) → the site's `isp` relay → its ISP's reflector;
//! - per provider P: `P-media` (stamp, 50 pps voice), `P-sip` (sip over UDP to
//!   P's Kamailio), `P-stun` (stun to P's coturn), each through its own relay.
//!
//! A LAN fault cuts everything of the site (the agent sits behind the LAN); an ISP
//! fault impairs every WAN relay of that ISP's sites; a path fault impairs one
//! site's relays toward one provider; a provider fault cuts every site's relays
//! toward it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use crate::coturn::Coturn;
use crate::kamailio::Kamailio;
use crate::relay::{Impairment, Relay};
use crate::{
    Child, Mosquitto, TempDir, free_tcp_port, free_udp_port, require, wait_for_tcp, wait_until,
    workspace_bin,
};

/// The two providers: `provA` fails over to `provB` and back.
pub const PROVIDERS: [&str; 2] = ["provA", "provB"];
/// The probe kinds each site runs toward each provider, one relay each.
pub const PROVIDER_KINDS: [&str; 3] = ["media", "sip", "stun"];
/// The default fleet: four sites on two ISPs, so a provider fault spans ISPs and
/// an ISP fault has two sites to correlate.
pub const SITES: [(&str, &str); 4] = [
    ("site-1", "ispX"),
    ("site-2", "ispX"),
    ("site-3", "ispY"),
    ("site-4", "ispY"),
];
/// Generous bound for anything awaited: the lab runs on slow, shared machines.
pub const LONG: Duration = Duration::from_secs(120);
/// The topic prefix (the default).
pub const PREFIX: &str = "faultline/v1";

/// Wall clock in milliseconds since the Unix epoch (the collector's `at_ms` clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether this process runs as root (without printing anything).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// How long before its window's end an agent stops probing and publishes (the
/// agent's `window::guard_ms`: 1/20 of the window, at most 250 ms); never earlier.
pub fn agent_guard_ms(window_ms: u64) -> u64 {
    (window_ms / 20).min(250)
}

/// The retained verdict topic of `scope` (`sites`, `isps`, `providers`) and `id`.
pub fn state_topic(scope: &str, id: &str) -> String {
    format!("{PREFIX}/state/{scope}/{id}")
}

/// How the site's layer-isp target (and optionally the LAN target) is measured.
#[derive(Debug, Clone, Default)]
pub struct LabSpec {
    /// Window length in seconds, for agents and collector alike.
    pub window_s: u64,
    /// Sites and their ISP labels.
    pub sites: Vec<(String, String)>,
    /// Extra `[[target]]` TOML per site (e.g. an icmp target into a namespace).
    pub extra_targets: BTreeMap<String, String>,
    /// Record every report (persistent session, from before the first agent starts).
    pub record_reports: bool,
}

impl LabSpec {
    /// The default fleet with `window_s`-second windows.
    pub fn new(window_s: u64) -> Self {
        Self {
            window_s,
            sites: SITES
                .iter()
                .map(|(s, i)| ((*s).to_owned(), (*i).to_owned()))
                .collect(),
            extra_targets: BTreeMap::new(),
            record_reports: false,
        }
    }
}

/// One site's relays: one per measured path.
#[derive(Debug)]
pub struct SiteNet {
    pub lan: Relay,
    pub isp: Relay,
    /// `(provider, kind)` → relay, kinds from [`PROVIDER_KINDS`].
    pub providers: BTreeMap<(String, String), Relay>,
}

impl SiteNet {
    /// Every relay beyond the LAN (ISP hop and all provider paths).
    pub fn wan(&self) -> impl Iterator<Item = &Relay> {
        std::iter::once(&self.isp).chain(self.providers.values())
    }

    /// Every relay of the site.
    pub fn all(&self) -> impl Iterator<Item = &Relay> {
        std::iter::once(&self.lan).chain(self.wan())
    }

    /// The relays toward `provider`.
    pub fn toward<'a>(&'a self, provider: &'a str) -> impl Iterator<Item = &'a Relay> + 'a {
        self.providers
            .iter()
            .filter(move |((p, _), _)| p == provider)
            .map(|(_, r)| r)
    }
}

/// Cuts (or restores) every relay in `relays`.
pub fn set_down<'a>(relays: impl IntoIterator<Item = &'a Relay>, down: bool) {
    for r in relays {
        r.set_down(down);
    }
}

/// Applies `imp` both ways on every relay in `relays`.
pub fn impair<'a>(relays: impl IntoIterator<Item = &'a Relay>, imp: Impairment) {
    for r in relays {
        // Impairments built in this crate are valid probabilities.
        r.set_both(imp).expect("valid impairment");
    }
}

/// One site: its config, relays and agent process.
#[derive(Debug)]
pub struct Site {
    pub name: String,
    pub isp: String,
    pub config: PathBuf,
    pub net: SiteNet,
    agent: Option<Child>,
    log: PathBuf,
}

/// One message the watcher saw, with when it saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub topic: String,
    pub value: Value,
}

/// Records every verdict, incident event and status the collector and agents publish.
#[derive(Debug, Clone, Default)]
pub struct Watch(Arc<Mutex<Vec<Seen>>>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking watcher thread must not wedge the test reading its record.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watch {
    /// A position in the record: pass it to [`Watch::since`] for what came after.
    pub fn mark(&self) -> usize {
        lock(&self.0).len()
    }

    /// Everything seen from `mark` on.
    pub fn since(&self, mark: usize) -> Vec<Seen> {
        lock(&self.0)[mark..].to_vec()
    }

    /// The newest value on `topic`.
    pub fn latest(&self, topic: &str) -> Option<Value> {
        lock(&self.0)
            .iter()
            .rev()
            .find(|s| s.topic == topic)
            .map(|s| s.value.clone())
    }

    /// The first value on `topic` from `mark` on that satisfies `pred`.
    pub fn first_since(
        &self,
        mark: usize,
        topic: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        lock(&self.0)[mark..]
            .iter()
            .find(|s| s.topic == topic && pred(&s.value))
            .map(|s| s.value.clone())
    }

    /// Waits (up to [`LONG`]) for a value on `topic` from `mark` on satisfying
    /// `pred`; panics with the latest verdicts when none comes.
    pub fn wait_for(
        &self,
        mark: usize,
        topic: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut got = None;
        wait_until(LONG, || {
            got = self.first_since(mark, topic, &pred);
            got.is_some()
        });
        got.unwrap_or_else(|| panic!("{what}: nothing on {topic}\n{}", self.summary()))
    }

    /// The latest value of every state topic, one line each (for failure messages).
    pub fn summary(&self) -> String {
        let mut latest: BTreeMap<String, Value> = BTreeMap::new();
        for s in lock(&self.0).iter() {
            latest.insert(s.topic.clone(), s.value.clone());
        }
        let mut out = String::from("latest messages:\n");
        for (t, v) in latest {
            let _ = writeln!(out, "  {t}: {v}");
        }
        out
    }

    /// Every verdict (state topic) seen from `mark` on.
    pub fn verdicts_since(&self, mark: usize) -> Vec<Value> {
        self.since(mark)
            .into_iter()
            .filter(|s| s.topic.starts_with(&format!("{PREFIX}/state/")))
            .map(|s| s.value)
            .collect()
    }
}

/// A rumqttc client on its own thread, subscribed to `filters` after every connect,
/// handing each publish to `on`. Stops when dropped.
pub struct Subscriber {
    client: Client,
    stop: Arc<AtomicBool>,
    subscribed: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    pub fn start(
        port: u16,
        id: &str,
        persistent: bool,
        filters: &[&str],
        on: impl Fn(&rumqttc::Publish) + Send + 'static,
    ) -> Self {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(!persistent)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(opts, 256);
        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new(AtomicBool::new(false));
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        let thread = {
            let (client, stop, subscribed) = (client.clone(), stop.clone(), subscribed.clone());
            std::thread::spawn(move || {
                for ev in conn.iter() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            for f in &filters {
                                let _ = client.try_subscribe(f.as_str(), QoS::AtLeastOnce);
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subscribed.store(true, Ordering::SeqCst);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => on(&p),
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
        };
        let s = Self {
            client,
            stop,
            subscribed,
            thread: Some(thread),
        };
        assert!(
            wait_until(LONG, || s.subscribed.load(Ordering::SeqCst)),
            "subscriber {id} did not subscribe"
        );
        s
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").finish_non_exhaustive()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every `(site, boot, seq)` the broker delivered to a persistent-session
/// subscriber on the report topics.
#[derive(Debug, Clone, Default)]
pub struct ReportLog(Arc<Mutex<SeqsBySiteBoot>>);

/// `(site, boot)` → the seqs received.
pub type SeqsBySiteBoot = BTreeMap<(String, u32), Vec<u64>>;

impl ReportLog {
    /// Per `(site, boot)`, the seqs received (sorted, duplicates kept).
    pub fn seqs(&self) -> SeqsBySiteBoot {
        let mut m = lock(&self.0).clone();
        for v in m.values_mut() {
            v.sort_unstable();
        }
        m
    }

    /// Distinct windows received.
    pub fn distinct(&self) -> usize {
        self.seqs()
            .values()
            .map(|v| {
                let mut v = v.clone();
                v.dedup();
                v.len()
            })
            .sum()
    }
}

/// The running lab. Everything stops when dropped.
#[derive(Debug)]
pub struct Lab {
    pub spec: LabSpec,
    pub broker: Mosquitto,
    pub sites: Vec<Site>,
    pub watch: Watch,
    pub reports: ReportLog,
    pub http: SocketAddr,
    collector: Option<Child>,
    collector_log: PathBuf,
    // Kept for their lifetime only; dropped after the agents (field order).
    _subscribers: Vec<Subscriber>,
    _reflectors: Vec<Child>,
    _kamailio: Vec<Kamailio>,
    _coturn: Vec<Coturn>,
    dir: TempDir,
}

/// Starts `faultline-agent reflect` on an ephemeral loopback port.
fn reflector(bin: &Path, log: &Path) -> (Child, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let child = Child::spawn(
        "reflector",
        Command::new(bin)
            .args(["reflect", "--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(log_file(log)),
    )
    .expect("spawn faultline-agent reflect");
    (child, addr)
}

/// A log file for a child's stderr (appended, so restarts keep the history).
fn log_file(path: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

/// Whether a STAMP reflector answers at `addr` (one 44-byte test packet).
fn stamp_answers(addr: SocketAddr) -> bool {
    let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.send_to(&[0u8; 44], addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 128];
    s.recv_from(&mut buf).is_ok()
}

fn stamp_target(
    name: &str,
    layer: &str,
    provider: Option<&str>,
    to: SocketAddr,
    pps: u32,
) -> String {
    let provider = provider.map_or(String::new(), |p| format!("provider = \"{p}\"\n"));
    format!(
        "[[target]]\nname = \"{name}\"\nlayer = \"{layer}\"\n{provider}kind = \"stamp\"\n\
         host = \"{to}\"\npps = {pps}\n\n"
    )
}

impl Lab {
    /// Builds and starts the whole lab, then waits until every site and provider
    /// has an `ok` verdict. `None` when a needed tool is missing (reason printed).
    pub fn start(spec: LabSpec) -> Option<Self> {
        require("mosquitto", "mosquitto")?;
        require("kamailio", "kamailio")?;
        require("turnserver", "coturn")?;
        let agent_bin = workspace_bin("faultline-agent");
        let collector_bin = workspace_bin("faultline-collector");
        let dir = TempDir::new("lab");
        // Mosquitto started as root drops to the `mosquitto` user, which cannot write
        // its persistence file into our temporary folder.
        let broker = Mosquitto::start_with(if is_root() { "user root" } else { "" })?;

        let mut reflectors = Vec::new();
        let mut start_reflector = |tag: &str| {
            let (c, a) = reflector(&agent_bin, &dir.path().join(format!("reflect-{tag}.log")));
            reflectors.push(c);
            a
        };
        let gw_reflector = start_reflector("gw");
        let isps: Vec<String> = {
            let mut v: Vec<String> = spec.sites.iter().map(|(_, i)| i.clone()).collect();
            v.dedup();
            v.sort();
            v.dedup();
            v
        };
        let isp_reflector: BTreeMap<String, SocketAddr> = isps
            .iter()
            .map(|i| (i.clone(), start_reflector(i)))
            .collect();
        let mut media = BTreeMap::new();
        let mut kamailio = Vec::new();
        let mut coturn = Vec::new();
        for p in PROVIDERS {
            media.insert(p, start_reflector(p));
            kamailio.push(Kamailio::start()?);
            coturn.push(Coturn::start()?);
        }
        for a in std::iter::once(&gw_reflector)
            .chain(isp_reflector.values())
            .chain(media.values())
        {
            assert!(
                wait_until(LONG, || stamp_answers(*a)),
                "reflector on {a} did not answer"
            );
        }

        let watch = Watch::default();
        let mut subscribers = Vec::new();
        {
            let w = watch.clone();
            let state = format!("{PREFIX}/state/#");
            let events = format!("{PREFIX}/events/incidents");
            let status = format!("{PREFIX}/sites/+/status");
            subscribers.push(Subscriber::start(
                broker.port,
                "lab-watch",
                false,
                &[&state, &events, &status],
                move |p| {
                    let value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    lock(&w.0).push(Seen {
                        at: Instant::now(),
                        topic: p.topic.clone(),
                        value,
                    });
                },
            ));
        }
        let reports = ReportLog::default();
        if spec.record_reports {
            let log = reports.clone();
            let filter = format!("{PREFIX}/sites/+/report");
            subscribers.push(Subscriber::start(
                broker.port,
                "lab-reports",
                true,
                &[&filter],
                move |p| {
                    if let Ok(r) = faultline_shared::decode(&p.payload) {
                        lock(&log.0)
                            .entry((r.site.to_string(), r.boot))
                            .or_default()
                            .push(r.seq);
                    }
                },
            ));
        }

        // The collector.
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let collector_config = dir.path().join("collector.toml");
        let [a, b] = PROVIDERS;
        std::fs::write(
            &collector_config,
            format!(
                "window_seconds = {w}\n\
                 [mqtt]\nurl = \"{url}\"\nclient_id = \"lab-collector\"\n\
                 [http]\nlisten = \"{http}\"\n\
                 [storage]\npath = \"{db}\"\n\
                 # Loopback paths have no latency to speak of: what moves their p50 is\n\
                 # CPU scheduling on a shared test machine, not the network under test.\n\
                 [thresholds]\nlatency_margin_ms = 250.0\n\
                 # Every lab agent runs on the one test machine, whose CPU the build and\n\
                 # other tests keep busy: that is not a gateway overloaded by its own work.\n\
                 host_cpu_pct = 101.0\n\
                 [providers.{a}]\nalternate = \"{b}\"\n[providers.{b}]\nalternate = \"{a}\"\n",
                w = spec.window_s,
                url = broker.url(),
                db = dir.path().join("history.db").display(),
            ),
        )
        .expect("write collector.toml");
        let collector_log = dir.path().join("collector.log");
        let collector = Child::spawn(
            "faultline-collector",
            Command::new(&collector_bin)
                .args(["run", "--config"])
                .arg(&collector_config)
                .env(
                    "FAULTLINE_LOG",
                    std::env::var("FAULTLINE_LAB_LOG")
                        .unwrap_or_else(|_| "info,rumqttc=warn".into()),
                )
                .stdout(Stdio::null())
                .stderr(log_file(&collector_log)),
        )
        .expect("spawn faultline-collector");
        assert!(wait_for_tcp(http, LONG), "collector HTTP did not come up");

        // The sites: relays, configs, agents.
        let mut sites = Vec::new();
        for (n, (name, isp)) in spec.sites.iter().enumerate() {
            let seed = 1000 + n as u64 * 100;
            let relay =
                |to: SocketAddr, k: u64| Relay::loopback(to, seed + k).expect("start relay");
            let lan = relay(gw_reflector, 1);
            let isp_relay = relay(isp_reflector[isp], 2);
            let mut providers = BTreeMap::new();
            let mut toml = format!(
                "site = \"{name}\"\ncustomer = \"Lab\"\nisp = \"{isp}\"\nwindow_seconds = {w}\nstate_dir = \"{name}-state\"\n\
                 [mqtt]\nurl = \"{url}\"\nkeepalive_seconds = 5\nreconnect_max_seconds = 2\n\n",
                w = spec.window_s,
                url = broker.url(),
            );
            toml += &stamp_target("gw", "lan", None, lan.addr(), 20);
            toml += &stamp_target("isp-hop", "isp", None, isp_relay.addr(), 20);
            for (i, p) in PROVIDERS.into_iter().enumerate() {
                let m = relay(media[p], 10 + i as u64 * 10);
                let s = relay(kamailio[i].addr(), 11 + i as u64 * 10);
                let t = relay(coturn[i].addr(), 12 + i as u64 * 10);
                toml += &stamp_target(&format!("{p}-media"), "provider", Some(p), m.addr(), 50);
                toml += &format!(
                    "[[target]]\nname = \"{p}-sip\"\nlayer = \"provider\"\nprovider = \"{p}\"\n\
                     kind = \"sip\"\nhost = \"{}\"\n\n\
                     [[target]]\nname = \"{p}-stun\"\nlayer = \"provider\"\nprovider = \"{p}\"\n\
                     kind = \"stun\"\nhost = \"{}\"\n\n",
                    s.addr(),
                    t.addr()
                );
                for (k, r) in PROVIDER_KINDS.into_iter().zip([m, s, t]) {
                    providers.insert((p.to_owned(), k.to_owned()), r);
                }
            }
            if let Some(extra) = spec.extra_targets.get(name) {
                toml += extra;
            }
            let config = dir.path().join(format!("{name}.toml"));
            std::fs::write(&config, toml).expect("write agent config");
            let check = Command::new(&agent_bin)
                .args(["check", "--config"])
                .arg(&config)
                .output()
                .expect("run faultline-agent check");
            assert!(
                check.status.success(),
                "agent config for {name} rejected: {}",
                String::from_utf8_lossy(&check.stderr)
            );
            sites.push(Site {
                name: name.clone(),
                isp: isp.clone(),
                log: dir.path().join(format!("{name}.log")),
                config,
                net: SiteNet {
                    lan,
                    isp: isp_relay,
                    providers,
                },
                agent: None,
            });
        }
        let mut lab = Self {
            spec,
            broker,
            sites,
            watch,
            reports,
            http,
            collector: Some(collector),
            collector_log,
            _subscribers: subscribers,
            _reflectors: reflectors,
            _kamailio: kamailio,
            _coturn: coturn,
            dir,
        };
        for i in 0..lab.sites.len() {
            lab.start_agent(i);
        }
        lab.wait_healthy();
        Some(lab)
    }

    pub fn window_ms(&self) -> u64 {
        self.spec.window_s * 1000
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn site(&self, name: &str) -> &Site {
        self.sites
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no site {name} in the lab"))
    }

    fn site_index(&self, name: &str) -> usize {
        self.sites
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no site {name} in the lab"))
    }

    /// Sites on `isp`.
    pub fn sites_on<'a>(&'a self, isp: &'a str) -> impl Iterator<Item = &'a Site> + 'a {
        self.sites.iter().filter(move |s| s.isp == isp)
    }

    /// Distinct ISP labels.
    pub fn isps(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sites.iter().map(|s| s.isp.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Every relay toward `provider`, at every site.
    pub fn provider_relays<'a>(
        &'a self,
        provider: &'a str,
    ) -> impl Iterator<Item = &'a Relay> + 'a {
        self.sites.iter().flat_map(move |s| s.net.toward(provider))
    }

    fn start_agent(&mut self, i: usize) {
        let bin = workspace_bin("faultline-agent");
        let s = &mut self.sites[i];
        let child = Child::spawn(
            &format!("agent {}", s.name),
            Command::new(bin)
                .args(["run", "--config"])
                .arg(&s.config)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log_file(&s.log)),
        )
        .expect("spawn faultline-agent run");
        s.agent = Some(child);
    }

    /// Starts the agent of `site` again (a new boot).
    pub fn restart_agent(&mut self, site: &str) {
        let i = self.site_index(site);
        if let Some(mut c) = self.sites[i].agent.take() {
            c.kill();
        }
        self.start_agent(i);
    }

    /// Sends `signal` to the agent of `site`; with `KILL` or `TERM` also waits
    /// for it to exit.
    pub fn signal_agent(&mut self, site: &str, signal: &str) {
        let i = self.site_index(site);
        let agent = self.sites[i].agent.as_mut().expect("agent running");
        agent.signal(signal);
        if signal == "KILL" || signal == "TERM" {
            assert!(
                agent.wait_timeout(LONG).is_some(),
                "agent {site} did not exit on SIG{signal}"
            );
            self.sites[i].agent = None;
        }
    }

    /// Waits until every site, ISP and provider shows `ok` as its latest verdict.
    pub fn wait_healthy(&self) {
        let mut topics: Vec<String> = self
            .sites
            .iter()
            .map(|s| state_topic("sites", &s.name))
            .chain(PROVIDERS.iter().map(|p| state_topic("providers", p)))
            .collect();
        // ISP verdicts are published once an ISP has been evaluated.
        topics.extend(self.isps().iter().map(|i| state_topic("isps", i)));
        let ok = wait_until(LONG, || {
            topics
                .iter()
                .all(|t| self.watch.latest(t).is_some_and(|v| v["state"] == "ok"))
        });
        assert!(ok, "the lab did not become healthy\n{}", self.diagnostics());
    }

    /// Sleeps until `phase` (0..1) of the way into the next window, and returns the
    /// wall-clock time then (ms): faults start and end at a known point of a window.
    pub fn at_phase(&self, phase: f64) -> u64 {
        let w = self.window_ms();
        let now = now_ms();
        let mut at = (now / w) * w + (phase * w as f64) as u64;
        if at <= now {
            at += w;
        }
        std::thread::sleep(Duration::from_millis(at - now));
        now_ms()
    }

    /// Waits `n` windows.
    pub fn sleep_windows(&self, n: f64) {
        std::thread::sleep(Duration::from_millis((n * self.window_ms() as f64) as u64));
    }

    /// How many windows after `from_ms` the verdict `v` was evaluated (its `at_ms`).
    pub fn windows_after(&self, from_ms: u64, v: &Value) -> f64 {
        let at = v["at_ms"].as_u64().unwrap_or(0);
        (at as f64 - from_ms as f64) / self.window_ms() as f64
    }

    /// The newest window (index on the wall-clock grid, `start_ms / window_ms`) whose
    /// reports a verdict published at `at_ms` can rest on. An agent publishes window
    /// `j` no earlier than [`agent_guard_ms`] before its end, `(j + 1) × W`, so until
    /// `(j + 2) × W − guard` no report of window `j + 1` exists anywhere: whatever
    /// the collector's evaluation delay, a verdict published before then was
    /// computed from window `j` or older.
    pub fn newest_window_judged(&self, at_ms: u64) -> u64 {
        let w = self.window_ms();
        ((at_ms + agent_guard_ms(w)) / w).saturating_sub(1)
    }

    /// Which window the verdict `v` rests on, counting the window `from_ms` falls in
    /// as the first: 1 when computed from that very window's reports. DESIGN's "within
    /// N windows of" a fault's onset (or end) at `from_ms` is a count of at most N.
    pub fn window_count(&self, from_ms: u64, v: &Value) -> u64 {
        let at = v["at_ms"].as_u64().unwrap_or(0);
        (self.newest_window_judged(at) + 1).saturating_sub(from_ms / self.window_ms())
    }

    /// A GET on the collector's HTTP server; the body.
    pub fn http_get(&self, path: &str) -> String {
        crate::http_get(self.http, path)
    }

    /// One series from the collector's `/metrics` (`None` when absent).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.http_get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
    }

    /// The tail of every process log and the latest verdicts, for failure messages.
    pub fn diagnostics(&self) -> String {
        let tail = |p: &Path| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(8)..].join("\n    ")
        };
        let mut out = self.watch.summary();
        let _ = writeln!(out, "collector log:\n    {}", tail(&self.collector_log));
        for s in &self.sites {
            let _ = writeln!(out, "{} log:\n    {}", s.name, tail(&s.log));
        }
        out
    }

    /// Stops the collector (SIGTERM) and waits for it.
    pub fn stop_collector(&mut self) {
        if let Some(mut c) = self.collector.take() {
            c.signal("TERM");
            if c.wait_timeout(LONG).is_none() {
                c.kill();
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Agents first (their last wills go to a broker that still runs).
        for s in &mut self.sites {
            if let Some(mut a) = s.agent.take() {
                a.kill();
            }
        }
        if let Some(mut c) = self.collector.take() {
            c.kill();
        }
        if std::env::var_os("FAULTLINE_LAB_KEEP").is_some() {
            let keep = std::env::temp_dir().join(format!("faultline-lab-kept-{}", now_ms()));
            let _ = std::fs::create_dir_all(&keep);
            if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
                for e in entries.flatten() {
                    let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
                }
            }
            eprintln!("lab files kept in {}", keep.display());
        }
    }
}

/// A network namespace joined to the host by a veth pair, with an nftables table
/// of its own: an ICMP target that loses real packets. Deleted (with its veth and
/// rules) when dropped. Needs root, `ip` and `nft`.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// The host side's address.
    pub host_ip: Ipv4Addr,
    /// The namespace side's address: the probe target.
    pub ns_ip: Ipv4Addr,
}

/// Runs `program args`, returning whether it succeeded (stderr shown on failure).
fn run(program: &str, args: &[&str]) -> bool {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            false
        }
    }
}

impl Netns {
    /// Creates namespace number `index` (0..64) of this test process, addressed in
    /// 198.18.0.0/15 (the benchmarking range). `None` when `ip` or `nft` is missing.
    pub fn create(index: u8) -> Option<Self> {
        require("ip", "iproute2")?;
        require("nft", "nftables")?;
        assert!(index < 64, "namespace index {index} out of range");
        let pid = std::process::id();
        let name = format!("fl-lab-{pid}-{index}");
        // Interface names are at most 15 bytes.
        let tag = format!("{:x}{index:02}", pid % 0x10_0000);
        let (vh, vn) = (format!("flh{tag}"), format!("fln{tag}"));
        // One /30 per namespace: third octet from the pid, fourth from the index.
        let third = (pid % 256) as u8;
        let base = index * 4;
        let host_ip = Ipv4Addr::new(198, 18, third, base + 1);
        let ns_ip = Ipv4Addr::new(198, 18, third, base + 2);
        let ns = Self {
            name: name.clone(),
            host_ip,
            ns_ip,
        };
        let host_cidr = format!("{host_ip}/30");
        let ns_cidr = format!("{ns_ip}/30");
        let ok = run("ip", &["netns", "add", &name])
            && run(
                "ip",
                &[
                    "link", "add", &vh, "type", "veth", "peer", "name", &vn, "netns", &name,
                ],
            )
            && run("ip", &["addr", "add", &host_cidr, "dev", &vh])
            && run("ip", &["link", "set", &vh, "up"])
            && run("ip", &["-n", &name, "addr", "add", &ns_cidr, "dev", &vn])
            && run("ip", &["-n", &name, "link", "set", &vn, "up"])
            && run("ip", &["-n", &name, "link", "set", "lo", "up"])
            && ns.nft(
                "add table inet lab\n\
                 add chain inet lab input { type filter hook input priority 0; policy accept; }\n",
            );
        assert!(ok, "could not set up network namespace {name}");
        Some(ns)
    }

    /// Feeds `script` to `nft -f -` inside the namespace.
    pub fn nft(&self, script: &str) -> bool {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            return false;
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        match child.wait_with_output() {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                eprintln!(
                    "nft in {}: {}",
                    self.name,
                    String::from_utf8_lossy(&o.stderr)
                );
                false
            }
            Err(_) => false,
        }
    }

    /// Drops `percent` % of the ICMP echo requests arriving in the namespace (100:
    /// every one), replacing any earlier rule.
    pub fn drop_icmp(&self, percent: u32) {
        let rule = if percent >= 100 {
            "add rule inet lab input icmp type echo-request drop\n".to_owned()
        } else {
            format!(
                "add rule inet lab input icmp type echo-request numgen random mod 100 < {percent} drop\n"
            )
        };
        assert!(
            self.nft(&format!("flush chain inet lab input\n{rule}")),
            "nft rule in {}",
            self.name
        );
    }

    /// Removes every drop rule.
    pub fn clear(&self) {
        assert!(
            self.nft("flush chain inet lab input\n"),
            "nft flush in {}",
            self.name
        );
    }

    /// An icmp `[[target]]` toward the namespace, `count` echoes per window.
    pub fn icmp_target(&self, name: &str, layer: &str, count: u32) -> String {
        format!(
            "[[target]]\nname = \"{name}\"\nlayer = \"{layer}\"\nkind = \"icmp\"\n\
             host = \"{}\"\ncount = {count}\n\n",
            self.ns_ip
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, which takes the pair with it,
        // and its nftables tables.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}
