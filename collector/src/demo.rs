//! `demo`: the collector with a fleet of real agents, for a first look at the dashboard.
//!
//! Everything runs on this machine with nothing else installed: the embedded broker,
//! the collector and its dashboard, two simulated providers (`voipco`, whose alternate
//! is `voipco2`), each a `faultline-agent reflect` process on loopback, and six sites
//! on three ISPs, each a real `faultline-agent run` process. Every site reaches its
//! LAN stand-in (a shared reflector), its ISP stand-in (one reflector per ISP) and
//! both providers through in-process impairment relays ([`faultline_lab::relay`])
//! with a little delay and jitter. A script cuts `voipco` for every site after a few
//! healthy windows and restores it later, over and over; each verdict change is
//! printed as it happens. Ctrl-C stops the agents (SIGTERM), the reflectors and the
//! collector, and exits 0. Children get PR_SET_PDEATHSIG, so they never outlive the
//! demo even when it is killed outright.
//!
//! `--simulated` publishes reports from the fleet simulator ([`faultline_lab::fleet`])
//! for the same six sites instead (no agent binary needed): a 60-window script with a
//! `voipco` outage, a lossy ISP and a cut LAN, repeated.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use faultline_lab::fleet::{self as sim, Fault, Script};
use faultline_lab::relay::{Impairment, Relay, RelayHandle};
use faultline_shared::{Id, State, Verdict};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use faultline_collector::config::Config;
use faultline_collector::service::now_ms;

const SITES: &[(&str, &str)] = &[
    ("acme-hq", "Comcast"),
    ("bobs-bakery", "Comcast"),
    ("city-dental", "Verizon"),
    ("dunn-law", "Verizon"),
    ("elm-clinic", "Lumen"),
    ("fox-motors", "Lumen"),
];

/// `--simulated`'s script, repeated every 60 windows: `voipco` down everywhere in
/// windows 10–19, Verizon losing 20 % in 30–39, elm-clinic's LAN cut in 45–52.
fn simulated_script() -> Script {
    let id = |s: &str| Id::new(s).expect("demo ids are valid");
    Script::new()
        .with(
            Fault::ProviderDown {
                provider: id(sim::PROVIDER),
            },
            10,
            20,
        )
        .with(
            Fault::IspLossy {
                isp: id("Verizon"),
                loss: 0.2,
            },
            30,
            40,
        )
        .with(
            Fault::LanCut {
                site: id("elm-clinic"),
            },
            45,
            53,
        )
        .repeat_every(60)
}

/// Publishes the simulated fleet's statuses, then one JSON report per site at the
/// end of every window, as agents would.
async fn simulated_fleet(
    host: String,
    port: u16,
    window_ms: u64,
    topics: faultline_shared::Topics,
) {
    let mut opts = MqttOptions::new("faultline-demo-fleet", host, port);
    opts.set_keep_alive(Duration::from_secs(15));
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let sites: Vec<(Id, Id)> = SITES
        .iter()
        .map(|(s, i)| {
            (
                Id::new(*s).expect("demo ids are valid"),
                Id::new(*i).expect("valid"),
            )
        })
        .collect();
    // The first window has just ended; `window_ms` fits u32 (config caps windows).
    let mut fleet = sim::Fleet::with_sites(
        &sites,
        u32::try_from(window_ms).unwrap_or(u32::MAX),
        now_ms().saturating_sub(window_ms),
        // A new seed per run: a site's boot must differ from the last demo's, whose
        // windows the history may already hold.
        fastrand::u64(..),
    )
    .with_script(simulated_script());
    for site in fleet.sites() {
        let _ = client
            .publish(
                topics.status(&site.id),
                QoS::AtLeastOnce,
                true,
                serde_json::to_vec(&fleet.status(site)).unwrap_or_default(),
            )
            .await;
    }
    let t0 = tokio::time::Instant::now();
    for seq in 0u64.. {
        tokio::time::sleep_until(t0 + Duration::from_millis(window_ms.saturating_mul(seq))).await;
        for report in fleet.window(seq) {
            let _ = client
                .publish(
                    topics.report_json(&report.site),
                    QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&report).unwrap_or_default(),
                )
                .await;
        }
    }
}

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The fleet simulator's reports instead of real agents.
    pub simulated: bool,
    /// Healthy windows before each scripted `voipco` outage.
    pub outage_after: u32,
    /// Windows each outage lasts.
    pub outage_for: u32,
    /// The agent binary (default: `faultline-agent` beside this executable).
    pub agent_bin: Option<PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            simulated: false,
            outage_after: 6,
            outage_for: 10,
            agent_bin: None,
        }
    }
}

/// Runs the collector and a fleet (real agents, or simulated) until interrupted.
pub fn demo(mut cfg: Config, config_given: bool, opts: DemoOptions) -> anyhow::Result<()> {
    let id = |s: &str| Id::new(s).expect("valid");
    if !config_given {
        cfg.window_ms = 2_000;
        // Every demo agent shares this one machine: CPU scheduling, not the network,
        // moves loopback RTTs, and the agents' CPU is the demo's, not a gateway's.
        cfg.thresholds.latency_margin_ms = 250.0;
        cfg.thresholds.host_cpu_pct = 101.0;
    }
    if cfg.providers.is_empty() {
        cfg.providers.insert(id("voipco"), Some(id("voipco2")));
        cfg.providers.insert(id("voipco2"), None);
    }
    if cfg.broker_logins.is_some() {
        anyhow::bail!(
            "the demo's agents use the embedded broker without logins: remove [broker] password_file"
        );
    }
    if cfg.mqtt.is_none() {
        for (what, addr) in [
            ("[broker] listen", cfg.broker_listen),
            ("[broker] listen_v5", cfg.broker_listen_v5),
        ] {
            if let Err(e) = TcpListener::bind(addr) {
                anyhow::bail!(
                    "the embedded broker cannot listen on {addr} ({what}): {e}. Is another \
                     broker or demo running? Stop it, or pass --config with other [broker] addresses"
                );
            }
        }
    }
    if let Err(e) = TcpListener::bind(cfg.http_listen) {
        anyhow::bail!(
            "the dashboard cannot listen on {} ([http] listen): {e}",
            cfg.http_listen
        );
    }
    let (host, port) = match &cfg.mqtt {
        Some(m) => (m.host.clone(), m.port),
        None => (
            cfg.broker_listen_v5.ip().to_string(),
            cfg.broker_listen_v5.port(),
        ),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let topics = cfg.topics.clone();
    let window = cfg.window_ms;
    let pages = format!("http://{}", cfg.http_listen);
    if opts.simulated {
        println!(
            "demo: 6 simulated sites, a {} ms window; dashboard on http://{}/",
            cfg.window_ms, cfg.http_listen
        );
        return rt.block_on(async move {
            tokio::spawn(watch(host.clone(), port, topics.clone(), pages));
            tokio::spawn(simulated_fleet(host, port, window, topics));
            faultline_collector::service::serve(
                cfg,
                faultline_collector::service::shutdown_signal(),
            )
            .await
        });
    }

    if !window.is_multiple_of(1000) || window == 0 {
        anyhow::bail!(
            "demo: the window must be whole seconds (agents report every window_seconds)"
        );
    }
    let agent_bin = match opts.agent_bin.clone() {
        Some(b) => b,
        None => agent_beside_me()?,
    };
    let broker_url = match &cfg.mqtt {
        Some(m) => format!("mqtt://{}:{}", m.host, m.port),
        None => format!("mqtt://{}", cfg.broker_listen),
    };
    let real = Fleet::start(&agent_bin, &broker_url, window / 1000)?;
    println!(
        "demo: dashboard on http://{}/ ; {} sites on {} ISPs run real agents ({}), a {} s window",
        cfg.http_listen,
        SITES.len(),
        3,
        agent_bin.display(),
        window / 1000
    );
    println!(
        "demo: script: voipco is cut for every site after {} healthy windows, for {} windows, \
         then again; Ctrl-C stops",
        opts.outage_after, opts.outage_for
    );
    println!("demo: pids {}", real.pids().join(" "));
    let stop = Arc::new(AtomicBool::new(false));
    let script = {
        let stop = Arc::clone(&stop);
        let cut = real.voipco.clone();
        let w = Duration::from_millis(window);
        std::thread::Builder::new()
            .name("demo-script".into())
            .spawn(move || script(&stop, &cut, w, opts.outage_after, opts.outage_for))?
    };
    let res = rt.block_on(async move {
        tokio::spawn(watch(host, port, topics, pages));
        faultline_collector::service::serve(cfg, faultline_collector::service::shutdown_signal())
            .await
    });
    stop.store(true, Ordering::Relaxed);
    let _ = script.join();
    drop(real);
    rt.shutdown_timeout(Duration::from_secs(1));
    println!("demo: stopped");
    res
}

/// `faultline-agent` beside this executable, or a message saying how to build it.
fn agent_beside_me() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me
        .parent()
        .map(|d| d.join("faultline-agent"))
        .ok_or_else(|| anyhow::anyhow!("no directory for {}", me.display()))?;
    if bin.is_file() {
        Ok(bin)
    } else {
        anyhow::bail!(
            "demo: {} is missing; the demo runs real agents. Build it beside the collector: \
             cargo build --release -p faultline-agent -p faultline-collector \
             (or run `faultline-collector demo --simulated` for simulated reports)",
            bin.display()
        )
    }
}

fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// Cuts `voipco` for every site after `after` windows, for `dur` windows, in a loop.
fn script(stop: &AtomicBool, cut: &[RelayHandle], w: Duration, after: u32, dur: u32) {
    let sleep = |n: u32| {
        let until = Instant::now() + w * n;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        !stop.load(Ordering::Relaxed)
    };
    loop {
        if !sleep(after) {
            return;
        }
        println!(
            "{} demo: script: cutting voipco for every site",
            clock(now_ms())
        );
        for r in cut {
            r.set_down(true);
        }
        let go_on = sleep(dur);
        for r in cut {
            r.set_down(false);
        }
        if !go_on {
            return;
        }
        println!("{} demo: script: voipco restored", clock(now_ms()));
    }
}

/// For a verdict opening an outage (provider, ISP or route), the pages to look at.
fn outage_pages(v: &Verdict, pages: &str) -> Option<String> {
    if v.state != State::Outage || v.scope == faultline_shared::Scope::Site {
        return None;
    }
    let site = v.sites.first()?;
    let mut line = format!("    see {pages}/sites/{site}");
    if let Some(inc) = &v.incident {
        line += &format!(" and {pages}/incidents/{inc}");
    }
    Some(line)
}

/// One readable line for a verdict.
fn describe(v: &Verdict) -> String {
    let mut line = format!("{} {} {}", clock(v.at_ms), v.scope.as_str(), v.id);
    if v.state == State::Ok {
        line += " ok";
    } else {
        line += " ";
        line += &v.state.as_str().to_uppercase();
    }
    let mut why = Vec::new();
    if let Some(c) = v.cause
        && v.state != State::Ok
    {
        why.push(format!("cause {}", c.as_str()));
    }
    if let Some(p) = &v.provider {
        why.push(format!("provider {p}"));
    }
    if !v.sites.is_empty() {
        let s: Vec<&str> = v.sites.iter().map(Id::as_str).collect();
        why.push(format!("sites {}", s.join(",")));
    }
    if !why.is_empty() {
        line += &format!(" ({})", why.join("; "));
    }
    if let Some(r) = &v.recommendation {
        line += &format!(
            " → {} to {}",
            format!("{:?}", r.action).to_lowercase(),
            r.to
        );
    }
    line
}

/// Prints every verdict change as it arrives.
/// Prints each verdict change; when an outage opens, the page of an affected site
/// (under `pages`, the collector's base URL) and of the incident.
async fn watch(host: String, port: u16, topics: faultline_shared::Topics, pages: String) {
    let mut opts = MqttOptions::new(
        format!("faultline-demo-watch-{}", std::process::id()),
        host,
        port,
    );
    opts.set_keep_alive(Duration::from_secs(15));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client
                    .subscribe(topics.all_states(), QoS::AtLeastOnce)
                    .await;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Ok(v) = serde_json::from_slice::<Verdict>(&p.payload) else {
                    continue;
                };
                let key = format!("{} {}", v.scope.as_str(), v.id);
                let line = describe(&v);
                // Compare without the time stamp: a republished verdict is no change.
                let what = line
                    .split_once(' ')
                    .map_or(line.as_str(), |x| x.1)
                    .to_owned();
                if last.get(&key) != Some(&what) {
                    // The first verdict of a healthy scope is not news.
                    let first_ok = !last.contains_key(&key) && v.state == State::Ok;
                    last.insert(key, what);
                    if !first_ok {
                        println!("{line}");
                    }
                    if let Some(see) = outage_pages(&v, &pages) {
                        println!("{see}");
                    }
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// A child process stopped on drop: SIGTERM, a grace period, then SIGKILL.
#[derive(Debug)]
struct Proc {
    child: Child,
    grace: Duration,
}

impl Proc {
    fn spawn(cmd: &mut Command, grace: Duration) -> std::io::Result<Self> {
        // SAFETY: only async-signal-safe calls (setpgid, prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Own process group: a terminal's Ctrl-C reaches only the demo, which
                // then stops its children in order.
                libc::setpgid(0, 0);
                #[cfg(target_os = "linux")]
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        Ok(Self {
            child: cmd.spawn()?,
            grace,
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signals our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let until = Instant::now() + self.grace;
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real fleet: reflectors, relays, agents, and their work directory.
#[derive(Debug)]
struct Fleet {
    // Field order is drop order: agents first, then relays, then reflectors.
    agents: Vec<Proc>,
    _relays: Vec<Relay>,
    reflectors: Vec<Proc>,
    /// The `voipco` relays of every site (the script cuts these).
    voipco: Vec<RelayHandle>,
    _dir: WorkDir,
}

#[derive(Debug)]
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_udp() -> std::io::Result<SocketAddr> {
    UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

/// Whether a STAMP reflector answers at `addr`.
fn stamp_answers(addr: SocketAddr) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.send_to(&[0u8; 44], addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 128];
    s.recv_from(&mut buf).is_ok()
}

fn imp(delay_us: u64, jitter_us: u64) -> Impairment {
    Impairment {
        delay: Duration::from_micros(delay_us),
        jitter: Duration::from_micros(jitter_us),
        ..Impairment::default()
    }
}

fn stamp_target(name: &str, layer: &str, provider: Option<&str>, to: SocketAddr) -> String {
    let provider = provider.map_or(String::new(), |p| format!("provider = \"{p}\"\n"));
    format!(
        "[[target]]\nname = \"{name}\"\nlayer = \"{layer}\"\n{provider}kind = \"stamp\"\n\
         host = \"{to}\"\npps = 10\n\n"
    )
}

impl Fleet {
    fn start(bin: &Path, broker_url: &str, window_s: u64) -> anyhow::Result<Self> {
        let dir =
            WorkDir(std::env::temp_dir().join(format!("faultline-demo-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0)?;
        let log = |name: &str| -> anyhow::Result<Stdio> {
            Ok(std::fs::File::create(dir.0.join(format!("{name}.log")))?.into())
        };
        let mut reflectors = Vec::new();
        let mut reflector = |tag: &str| -> anyhow::Result<SocketAddr> {
            let addr = free_udp()?;
            let p = Proc::spawn(
                Command::new(bin)
                    .args(["reflect", "--listen", &addr.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log(&format!("reflect-{tag}"))?),
                Duration::ZERO,
            )
            .map_err(|e| anyhow::anyhow!("start {}: {e}", bin.display()))?;
            reflectors.push(p);
            Ok(addr)
        };
        let gw = reflector("lan")?;
        let mut isp_reflector = BTreeMap::new();
        for (_, isp) in SITES {
            if !isp_reflector.contains_key(isp) {
                isp_reflector.insert(*isp, reflector(isp)?);
            }
        }
        let media = [
            ("voipco", reflector("voipco")?),
            ("voipco2", reflector("voipco2")?),
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        for a in std::iter::once(gw)
            .chain(isp_reflector.values().copied())
            .chain(media.iter().map(|m| m.1))
        {
            while !stamp_answers(a) {
                if Instant::now() > deadline {
                    anyhow::bail!(
                        "demo: the reflector on {a} did not answer (see {})",
                        dir.0.display()
                    );
                }
            }
        }

        let mut relays = Vec::new();
        let mut voipco = Vec::new();
        let mut agents = Vec::new();
        for (n, (site, isp)) in SITES.iter().enumerate() {
            let seed = 1000 + n as u64 * 100;
            let mut relay = |to: SocketAddr, k: u64, i: Impairment| -> anyhow::Result<SocketAddr> {
                let r = Relay::loopback(to, seed + k)?;
                r.set_both(i)?;
                let a = r.addr();
                if to == media[0].1 {
                    voipco.push(r.handle());
                }
                relays.push(r);
                Ok(a)
            };
            let mut toml = format!(
                "site = \"{site}\"\ncustomer = \"Demo\"\nisp = \"{isp}\"\n\
                 window_seconds = {window_s}\nformat = \"json\"\nstate_dir = \"{site}-state\"\n\
                 [mqtt]\nurl = \"{broker_url}\"\nkeepalive_seconds = 5\nreconnect_max_seconds = 2\n\n"
            );
            toml += &stamp_target("gw", "lan", None, relay(gw, 1, imp(300, 200))?);
            toml += &stamp_target(
                "isp-hop",
                "isp",
                None,
                relay(isp_reflector[isp], 2, imp(4_000, 1_000))?,
            );
            for (i, (p, to)) in media.iter().enumerate() {
                let a = relay(*to, 10 + i as u64, imp(15_000 + 3_000 * i as u64, 2_000))?;
                toml += &stamp_target(&format!("{p}-media"), "provider", Some(p), a);
            }
            let config = dir.0.join(format!("{site}.toml"));
            std::fs::write(&config, toml)?;
            let p = Proc::spawn(
                Command::new(bin)
                    .arg("run")
                    .arg("--config")
                    .arg(&config)
                    .env("FAULTLINE_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log(site)?),
                Duration::from_secs(3),
            )
            .map_err(|e| anyhow::anyhow!("start {}: {e}", bin.display()))?;
            agents.push(p);
        }
        Ok(Self {
            agents,
            _relays: relays,
            reflectors,
            voipco,
            _dir: dir,
        })
    }

    fn pids(&self) -> Vec<String> {
        self.agents
            .iter()
            .chain(&self.reflectors)
            .map(|p| p.child.id().to_string())
            .collect()
    }
}
