//! The fleet simulator's pure core: N sites' reports with scripted faults, for
//! scale tests, ingest and engine benchmarks and the demo's simulated fleet,
//! without N agent processes.
//!
//! [`Fleet`] turns (site, window, [`Script`]) into the `Report` an agent at that
//! site would send, with a seeded RNG and no clock, no I/O. Shells send what it
//! makes: `faultline_tests::fleet::publish` over MQTT (the `faultline-fleet`
//! binary, ingest benchmarks), the collector's `demo --simulated`, and
//! `engine_bench` straight into the engine.
//!
//! By default every site probes ten targets, as DESIGN.md's budgets assume: the
//! gateway, two ISP targets, two internet anchors, and media, SIP and STUN of
//! provider `voipco` plus media and SIP of its alternate `voipco2`
//! ([`Fleet::with_targets`] takes fewer or more).
//!
//! Each site counts its own windows (`seq`, of its own `window_ms`:
//! [`Fleet::with_window`] mixes lengths), and a [`Script`] says which faults hold in
//! which of them. Besides fleet-wide faults drawn from the RNG (a lossy ISP), a
//! script can fix one segment of one site's path — its LAN, ISP, internet or one
//! provider — as lossy or down with no draw deciding it ([`Fault::Impaired`]), and
//! restart a site's agent with a new boot and a clock that may read 1970
//! ([`Fault::Restarted`]). When reports are sent (late, twice, from a spool) is the
//! shells' business: the fleet has no clock.

use std::fmt;
use std::str::FromStr;

use faultline_shared::measure::{Codec, VoiceQuality};
use faultline_shared::report::REPORT_VERSION;
use faultline_shared::{HostHealth, Id, Kind, Layer, ProbeResult, Report, RttStats, Status};

/// The simulated primary provider and its alternate.
pub const PROVIDER: &str = "voipco";
pub const ALTERNATE: &str = "voipco2";
/// Probes in one simulated voice stream per window.
pub const STREAM_PACKETS: u32 = 100;
/// Echo probes per ICMP target per window.
pub const ICMP_PACKETS: u32 = 10;
/// The share of packets a [`Condition::Lossy`] segment loses, rounded per probe.
pub const LOSSY_LOSS: f64 = 0.05;

/// One simulated site.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub id: Id,
    pub isp: Id,
    pub customer: String,
    /// The agent's boot until a [`Fault::Restarted`] says otherwise.
    pub boot: u32,
    /// The length of this site's windows.
    pub window_ms: u32,
}

/// A segment of a site's path: the targets of one layer, or of one provider.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Lan,
    Isp,
    Internet,
    Provider(Id),
}

/// What [`Fault::Impaired`] does to a segment: the same every window, no draw
/// deciding it (scenarios that count windows need that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Every probe loses [`LOSSY_LOSS`] of its packets (rounded: one of an ICMP
    /// probe's ten, none of a one-packet SIP or DNS probe) and jitters more.
    Lossy,
    /// Nothing answers.
    Down,
}

/// A fault the script can switch on for a range of windows.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Every probe of this provider fails at every site.
    ProviderDown { provider: Id },
    /// Everything past the LAN loses `loss` at sites on this ISP.
    IspLossy { isp: Id, loss: f64 },
    /// The site's LAN is cut: every probe fails (reports still arrive, late).
    LanCut { site: Id },
    /// Only this site's path to this provider loses `loss`.
    PathLossy { site: Id, provider: Id, loss: f64 },
    /// The site's box is overloaded: CPU 99 % and its probes suffer a little.
    HostBusy { site: Id },
    /// The site sends nothing at all.
    Silent { site: Id },
    /// One segment of this site's path is lossy or down.
    Impaired {
        site: Id,
        segment: Segment,
        condition: Condition,
    },
    /// The site's agent restarted at the entry's first window as boot `boot`: from
    /// then on its reports carry that boot, count `seq` from 0 again, and start at
    /// `clock_ms` on the agent's clock at that window's start (a gateway without an
    /// RTC: near 1970), or at the true time when `None`.
    Restarted {
        site: Id,
        boot: u32,
        clock_ms: Option<u64>,
    },
}

/// A fault active for windows `from..until` (sequence numbers, half-open).
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedFault {
    pub fault: Fault,
    pub from: u64,
    pub until: u64,
}

/// Which faults hold when, optionally repeating.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script {
    faults: Vec<ScriptedFault>,
    period: Option<u64>,
}

/// A script entry that does not parse: the entry and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault `{entry}`: {reason}")]
pub struct ScriptError {
    pub entry: String,
    pub reason: String,
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `fault` for windows `from..until`.
    pub fn with(mut self, fault: Fault, from: u64, until: u64) -> Self {
        self.push(ScriptedFault { fault, from, until });
        self
    }

    /// Adds an entry (a parsed `--fault`, say).
    pub fn push(&mut self, entry: ScriptedFault) {
        self.faults.push(entry);
    }

    /// Plays the script again every `period` windows: window `seq` has the faults
    /// of window `seq % period` (an endless demo). Panics on a zero period.
    pub fn repeat_every(mut self, period: u64) -> Self {
        assert!(period > 0, "a script repeats every 1 or more windows");
        self.period = Some(period);
        self
    }

    /// The entries, in the order added.
    pub fn entries(&self) -> &[ScriptedFault] {
        &self.faults
    }

    /// The faults active in window `seq`.
    pub fn active(&self, seq: u64) -> impl Iterator<Item = &Fault> {
        self.active_entries(seq).map(|f| &f.fault)
    }

    /// The window of the script that window `seq` plays (itself, unless repeating).
    fn fold(&self, seq: u64) -> u64 {
        self.period.map_or(seq, |p| seq % p)
    }

    fn active_entries(&self, seq: u64) -> impl Iterator<Item = &ScriptedFault> {
        let seq = self.fold(seq);
        self.faults
            .iter()
            .filter(move |f| (f.from..f.until).contains(&seq))
    }
}

/// Parses one entry: `provider-down:voipco@3..6`, `isp-lossy:isp-a:20%@3..6`,
/// `lan-cut:site-0001@3..6`, `path-lossy:site-0002:voipco:15%@3..6`,
/// `host-busy:site-0003@3..6`, `silent:site-0004@3..6`, `lossy:site-0001:isp@3..6`
/// and `down:site-0001:voipco@3..6` (a segment: `lan`, `isp`, `internet` or a
/// provider), `restarted:site-0001:8@3..6` and `restarted:site-0001:8:2000@3..6`
/// (boot, and the agent's clock in ms at the restart).
impl FromStr for ScriptedFault {
    type Err = ScriptError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ScriptError {
            entry: entry.to_owned(),
            reason: reason.to_owned(),
        };
        let (what, range) = entry
            .split_once('@')
            .ok_or_else(|| err("expected KIND:ARGS@FROM..UNTIL"))?;
        let (from, until) = range
            .split_once("..")
            .ok_or_else(|| err("range must be FROM..UNTIL"))?;
        let from: u64 = from.parse().map_err(|_| err("bad FROM window"))?;
        let until: u64 = until.parse().map_err(|_| err("bad UNTIL window"))?;
        if until <= from {
            return Err(err("UNTIL must be after FROM"));
        }
        let parts: Vec<&str> = what.split(':').collect();
        let id = |s: &str| Id::new(s).map_err(|e| err(&e.to_string()));
        let loss = |s: &str| -> Result<f64, ScriptError> {
            let (n, scale) = s.strip_suffix('%').map_or((s, 1.0), |n| (n, 0.01));
            let v = n.parse::<f64>().map_err(|_| err("bad loss"))? * scale;
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(err("loss must be within 0..100%"))
            }
        };
        let fault = match parts.as_slice() {
            ["provider-down", p] => Fault::ProviderDown { provider: id(p)? },
            ["isp-lossy", i, l] => Fault::IspLossy {
                isp: id(i)?,
                loss: loss(l)?,
            },
            ["lan-cut", s] => Fault::LanCut { site: id(s)? },
            ["path-lossy", s, p, l] => Fault::PathLossy {
                site: id(s)?,
                provider: id(p)?,
                loss: loss(l)?,
            },
            ["host-busy", s] => Fault::HostBusy { site: id(s)? },
            ["silent", s] => Fault::Silent { site: id(s)? },
            [c @ ("lossy" | "down"), s, seg] => Fault::Impaired {
                site: id(s)?,
                segment: match *seg {
                    "lan" => Segment::Lan,
                    "isp" => Segment::Isp,
                    "internet" => Segment::Internet,
                    p => Segment::Provider(id(p)?),
                },
                condition: if *c == "lossy" {
                    Condition::Lossy
                } else {
                    Condition::Down
                },
            },
            ["restarted", s, boot, clock @ ..] if clock.len() <= 1 => Fault::Restarted {
                site: id(s)?,
                boot: boot.parse().map_err(|_| err("bad boot"))?,
                clock_ms: match clock {
                    [c] => Some(c.parse().map_err(|_| err("bad clock"))?),
                    _ => None,
                },
            },
            _ => return Err(err("unknown kind or wrong number of fields")),
        };
        Ok(Self { fault, from, until })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::ProviderDown { provider } => write!(f, "provider-down:{provider}"),
            Fault::IspLossy { isp, loss } => write!(f, "isp-lossy:{isp}:{}%", loss * 100.0),
            Fault::LanCut { site } => write!(f, "lan-cut:{site}"),
            Fault::PathLossy {
                site,
                provider,
                loss,
            } => write!(f, "path-lossy:{site}:{provider}:{}%", loss * 100.0),
            Fault::HostBusy { site } => write!(f, "host-busy:{site}"),
            Fault::Silent { site } => write!(f, "silent:{site}"),
            Fault::Impaired {
                site,
                segment,
                condition,
            } => {
                let c = match condition {
                    Condition::Lossy => "lossy",
                    Condition::Down => "down",
                };
                match segment {
                    Segment::Lan => write!(f, "{c}:{site}:lan"),
                    Segment::Isp => write!(f, "{c}:{site}:isp"),
                    Segment::Internet => write!(f, "{c}:{site}:internet"),
                    Segment::Provider(p) => write!(f, "{c}:{site}:{p}"),
                }
            }
            Fault::Restarted {
                site,
                boot,
                clock_ms: None,
            } => write!(f, "restarted:{site}:{boot}"),
            Fault::Restarted {
                site,
                boot,
                clock_ms: Some(c),
            } => write!(f, "restarted:{site}:{boot}:{c}"),
        }
    }
}

/// One target the simulated sites probe.
#[derive(Debug, Clone, PartialEq)]
struct TargetSpec {
    name: Id,
    layer: Layer,
    provider: Option<Id>,
    kind: Kind,
    /// Typical RTT in ms on a healthy path.
    base_rtt_ms: f64,
}

/// The ten standard targets: (name, layer, provider, kind, typical RTT in ms).
const STANDARD: [(&str, Layer, Option<&str>, Kind, f64); 10] = [
    ("gw", Layer::Lan, None, Kind::Icmp, 0.6),
    ("isp-hop", Layer::Isp, None, Kind::Icmp, 6.0),
    ("isp-dns", Layer::Isp, None, Kind::Dns, 8.0),
    ("anchor-1", Layer::Internet, None, Kind::Icmp, 14.0),
    ("anchor-2", Layer::Internet, None, Kind::Icmp, 18.0),
    (
        "voipco-media",
        Layer::Provider,
        Some(PROVIDER),
        Kind::Stamp,
        24.0,
    ),
    (
        "voipco-sip",
        Layer::Provider,
        Some(PROVIDER),
        Kind::Sip,
        26.0,
    ),
    (
        "voipco-stun",
        Layer::Provider,
        Some(PROVIDER),
        Kind::Stun,
        25.0,
    ),
    (
        "voipco2-media",
        Layer::Provider,
        Some(ALTERNATE),
        Kind::Stamp,
        31.0,
    ),
    (
        "voipco2-sip",
        Layer::Provider,
        Some(ALTERNATE),
        Kind::Sip,
        33.0,
    ),
];

/// Which standard targets a site with fewer than ten keeps first (indices into
/// [`STANDARD`]): every layer and both providers' media before the rest.
const KEEP_FIRST: [usize; 10] = [0, 5, 1, 3, 8, 6, 2, 7, 4, 9];

/// `n` targets: the ten standard ones (a subset in [`KEEP_FIRST`] order when `n`
/// is smaller, still in standard order), then extra media streams alternating
/// between `voipco` and `voipco2` (`voipco-media-2`, `voipco2-media-2`, …).
fn targets(n: usize) -> Vec<TargetSpec> {
    // Constant valid ids.
    let id = |s: &str| Id::new(s).unwrap();
    let mut keep: Vec<usize> = KEEP_FIRST.iter().copied().take(n).collect();
    keep.sort_unstable();
    let standard = keep.into_iter().map(|i| {
        let (name, layer, provider, kind, base_rtt_ms) = STANDARD[i];
        TargetSpec {
            name: id(name),
            layer,
            provider: provider.map(id),
            kind,
            base_rtt_ms,
        }
    });
    let extra = (0..n.saturating_sub(STANDARD.len())).map(|k| {
        let (provider, base) = [(PROVIDER, 24.0), (ALTERNATE, 31.0)][k % 2];
        let nth = k / 2 + 2;
        TargetSpec {
            // Valid: a provider id, '-', letters and digits.
            name: Id::new(format!("{provider}-media-{nth}")).unwrap(),
            layer: Layer::Provider,
            provider: Some(id(provider)),
            kind: Kind::Stamp,
            base_rtt_ms: base + nth as f64,
        }
    });
    standard.chain(extra).collect()
}

impl TargetSpec {
    fn in_segment(&self, segment: &Segment) -> bool {
        match segment {
            Segment::Lan => self.layer == Layer::Lan,
            Segment::Isp => self.layer == Layer::Isp,
            Segment::Internet => self.layer == Layer::Internet,
            Segment::Provider(p) => self.provider.as_ref() == Some(p),
        }
    }
}

/// How a probe fares this window: each packet lost with probability `loss`, then
/// `fixed_loss` of them (rounded) lost for certain.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PathState {
    Ok {
        loss: f64,
        fixed_loss: f64,
        extra_jitter_ms: f64,
    },
    Down,
}

/// The pure fleet model: sites, their targets, the fault script, and a seeded RNG.
#[derive(Debug, Clone)]
pub struct Fleet {
    sites: Vec<Site>,
    targets: Vec<TargetSpec>,
    script: Script,
    window_ms: u32,
    start_ms: u64,
    rng: fastrand::Rng,
}

impl Fleet {
    /// `n` sites named `site-0000`… spread round-robin over `isps`, windows of
    /// `window_ms` starting at `start_ms` (ms since the epoch).
    pub fn new(n: usize, isps: &[Id], window_ms: u32, start_ms: u64, seed: u64) -> Self {
        assert!(!isps.is_empty(), "a fleet needs at least one ISP");
        let sites = (0..n).map(|i| {
            (
                // Always valid: ASCII letters, digits and '-'.
                Id::new(format!("site-{i:04}")).unwrap(),
                isps[i % isps.len()].clone(),
                format!("Customer {i}"),
            )
        });
        Self::build(sites, window_ms, start_ms, seed)
    }

    /// The named `sites`, each `(site, isp)`, in this order (customer: the site's
    /// id); otherwise as [`Fleet::new`].
    pub fn with_sites(sites: &[(Id, Id)], window_ms: u32, start_ms: u64, seed: u64) -> Self {
        let sites = sites
            .iter()
            .map(|(id, isp)| (id.clone(), isp.clone(), id.to_string()));
        Self::build(sites, window_ms, start_ms, seed)
    }

    fn build(
        sites: impl Iterator<Item = (Id, Id, String)>,
        window_ms: u32,
        start_ms: u64,
        seed: u64,
    ) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let sites = sites
            .map(|(id, isp, customer)| Site {
                id,
                isp,
                customer,
                boot: rng.u32(..),
                window_ms,
            })
            .collect();
        Self {
            sites,
            targets: targets(STANDARD.len()),
            script: Script::new(),
            window_ms,
            start_ms,
            rng,
        }
    }

    /// The default three ISPs, `isp-a`, `isp-b`, `isp-c`.
    pub fn default_isps() -> Vec<Id> {
        ["isp-a", "isp-b", "isp-c"]
            .into_iter()
            // Constant valid ids.
            .map(|s| Id::new(s).unwrap())
            .collect()
    }

    pub fn with_script(mut self, script: Script) -> Self {
        self.script = script;
        self
    }

    /// Every site probes `n` targets instead of the standard ten: fewer keep the
    /// gateway, the ISP hop, an anchor and both providers' media first; more add
    /// media streams alternating between `voipco` and `voipco2` (`voipco-media-2`,
    /// `voipco2-media-2`, …). Panics when `n` is 0.
    pub fn with_targets(mut self, n: usize) -> Self {
        assert!(n > 0, "a site probes at least one target");
        self.targets = targets(n);
        self
    }

    /// Site `index` has windows of `window_ms` instead of the fleet's.
    pub fn with_window(mut self, index: usize, window_ms: u32) -> Self {
        self.sites[index].window_ms = window_ms;
        self
    }

    /// Site `index`'s agent starts as boot `boot` instead of a random one.
    pub fn with_boot(mut self, index: usize, boot: u32) -> Self {
        self.sites[index].boot = boot;
        self
    }

    /// The names of the targets every site probes, in report order.
    pub fn target_names(&self) -> impl Iterator<Item = &Id> {
        self.targets.iter().map(|t| &t.name)
    }

    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The fleet's window length (a site's own: [`Site::window_ms`]).
    pub fn window_ms(&self) -> u32 {
        self.window_ms
    }

    /// The retained status a site's agent publishes on connecting.
    pub fn status(&self, site: &Site) -> Status {
        Status::online(
            site.boot,
            env!("CARGO_PKG_VERSION"),
            site.isp.clone(),
            Some(site.customer.clone()),
        )
    }

    /// The status site `index`'s agent publishes on connecting in its window `seq`:
    /// [`Fleet::status`] with the boot it runs then.
    pub fn status_in(&self, index: usize, seq: u64) -> Status {
        let site = &self.sites[index];
        let boot = self.restart(index, seq).map_or(site.boot, |r| r.0);
        Status {
            boot: Some(boot),
            ..self.status(site)
        }
    }

    /// The restart in force at site `index` in its window `seq`: (boot, windows since
    /// the restart, the agent's clock at the restart if not the true time).
    fn restart(&self, index: usize, seq: u64) -> Option<(u32, u64, Option<u64>)> {
        let id = &self.sites[index].id;
        let played = self.script.fold(seq);
        self.script
            .active_entries(seq)
            .filter_map(|e| match &e.fault {
                Fault::Restarted {
                    site,
                    boot,
                    clock_ms,
                } if site == id => Some((*boot, played - e.from, *clock_ms)),
                _ => None,
            })
            .last()
    }

    /// Every report of window `seq` (silent sites send none), each site's window
    /// `seq` of its own windows.
    pub fn window(&mut self, seq: u64) -> Vec<Report> {
        (0..self.sites.len())
            .filter_map(|i| self.report(i, seq))
            .collect()
    }

    /// The report site `index` sends for its window `seq` (its `seq` field as well,
    /// unless its agent restarted), or `None` when it is silent.
    pub fn report(&mut self, index: usize, seq: u64) -> Option<Report> {
        let restart = self.restart(index, seq);
        let site = &self.sites[index];
        let faults: Vec<&Fault> = self.script.active(seq).collect();
        if faults
            .iter()
            .any(|f| matches!(f, Fault::Silent { site: s } if *s == site.id))
        {
            return None;
        }
        let busy = faults
            .iter()
            .any(|f| matches!(f, Fault::HostBusy { site: s } if *s == site.id));
        let rng = &mut self.rng;
        let host = if busy {
            HostHealth {
                cpu_pct: 97.0 + rng.f64() * 3.0,
                mem_pct: 80.0 + rng.f64() * 10.0,
                load1: 4.0 + rng.f64(),
            }
        } else {
            HostHealth {
                cpu_pct: 3.0 + rng.f64() * 10.0,
                mem_pct: 30.0 + rng.f64() * 10.0,
                load1: rng.f64() * 0.5,
            }
        };
        let probes = self
            .targets
            .iter()
            .map(|spec| {
                let state = path_state(site, spec, &faults, busy);
                probe(spec, state, rng)
            })
            .collect();
        // Agents round onto the wire grid before publishing; so does the fleet, so
        // that its JSON and postcard forms agree.
        let window_ms = u64::from(site.window_ms);
        let start_ms = self.start_ms + seq * window_ms;
        let (boot, seq, start_ms) = match restart {
            None => (site.boot, seq, start_ms),
            Some((boot, since, None)) => (boot, since, start_ms),
            Some((boot, since, Some(clock))) => (boot, since, clock + since * window_ms),
        };
        let report = Report {
            v: REPORT_VERSION,
            site: site.id.clone(),
            boot,
            seq,
            start_ms,
            window_ms: site.window_ms,
            host: Some(host),
            probes,
        };
        Some(report.on_wire_grid())
    }
}

/// What the active faults do to one site's path to one target.
fn path_state(site: &Site, spec: &TargetSpec, faults: &[&Fault], busy: bool) -> PathState {
    let mut loss: f64 = if busy { 0.05 } else { 0.0 };
    let mut fixed_loss: f64 = 0.0;
    let mut extra_jitter_ms = if busy { 8.0 } else { 0.0 };
    for f in faults {
        match f {
            Fault::LanCut { site: s } if *s == site.id => return PathState::Down,
            Fault::ProviderDown { provider } if spec.provider.as_ref() == Some(provider) => {
                return PathState::Down;
            }
            Fault::IspLossy { isp, loss: l } if *isp == site.isp && spec.layer != Layer::Lan => {
                loss = 1.0 - (1.0 - loss) * (1.0 - l);
                extra_jitter_ms += 5.0;
            }
            Fault::PathLossy {
                site: s,
                provider,
                loss: l,
            } if *s == site.id && spec.provider.as_ref() == Some(provider) => {
                loss = 1.0 - (1.0 - loss) * (1.0 - l);
                extra_jitter_ms += 5.0;
            }
            Fault::Impaired {
                site: s,
                segment,
                condition,
            } if *s == site.id && spec.in_segment(segment) => match condition {
                Condition::Down => return PathState::Down,
                Condition::Lossy => {
                    fixed_loss = LOSSY_LOSS;
                    extra_jitter_ms += 5.0;
                }
            },
            _ => {}
        }
    }
    PathState::Ok {
        loss,
        fixed_loss,
        extra_jitter_ms,
    }
}

/// A plausible probe result for one window on a path in `state`.
fn probe(spec: &TargetSpec, state: PathState, rng: &mut fastrand::Rng) -> ProbeResult {
    let mut p = ProbeResult::new(
        spec.name.clone(),
        spec.layer,
        spec.provider.clone(),
        spec.kind,
    );
    p.sent = match spec.kind {
        Kind::Stamp => STREAM_PACKETS,
        Kind::Icmp => ICMP_PACKETS,
        _ => 1,
    };
    let (loss, fixed_loss, extra_jitter_ms) = match state {
        PathState::Down => {
            p.received = 0;
            if !matches!(spec.kind, Kind::Icmp | Kind::Stamp) {
                p.error = Some("timeout".into());
            }
            if spec.kind == Kind::Stamp {
                p.max_burst = Some(p.sent);
            }
            return p;
        }
        PathState::Ok {
            loss,
            fixed_loss,
            extra_jitter_ms,
        } => (loss, fixed_loss, extra_jitter_ms),
    };
    let mut burst = 0;
    let mut max_burst = 0;
    for _ in 0..p.sent {
        if rng.f64() < loss {
            burst += 1;
            max_burst = max_burst.max(burst);
        } else {
            p.received += 1;
            burst = 0;
        }
    }
    // Lost for certain, spread out (no draw: the same every window).
    let fixed = (f64::from(p.sent) * fixed_loss).round() as u32;
    if fixed > 0 {
        p.received = p.received.saturating_sub(fixed);
        max_burst = max_burst.max(1);
    }
    if p.received == 0 {
        if !matches!(spec.kind, Kind::Icmp | Kind::Stamp) {
            p.error = Some("timeout".into());
        }
        return p;
    }
    let base = spec.base_rtt_ms * (0.95 + rng.f64() * 0.1);
    let jitter = base * 0.02 + extra_jitter_ms * (0.5 + rng.f64());
    let rtt = RttStats {
        min: base,
        p50: base + jitter * 0.5,
        avg: base + jitter * 0.7,
        p95: base + jitter * 2.0,
        max: base + jitter * 3.0,
    };
    p.rtt_ms = Some(rtt);
    if spec.kind != Kind::Sip {
        p.jitter_ms = Some(jitter);
    }
    if spec.kind == Kind::Stamp {
        p.max_burst = Some(max_burst);
        let loss_seen = p.loss();
        p.mos = Some(VoiceQuality::assess(rtt.avg, jitter, loss_seen, 1.0, Codec::G711).mos);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    const GOLDEN: [u64; 5] = [
        0xd113_e04c_b6c8_eda3,
        0x3063_451d_6c06_c974,
        0x473d_800a_f06b_07b0,
        0xf26f_8602_1d43_9c34,
        0xc7a1_a6d9_866b_b498,
    ];

    fn fleet(script: Script) -> Fleet {
        Fleet::new(6, &Fleet::default_isps(), 10_000, 1_764_201_600_000, 42).with_script(script)
    }

    fn probe<'a>(r: &'a Report, target: &str) -> &'a ProbeResult {
        r.probes
            .iter()
            .find(|p| p.target.as_str() == target)
            .unwrap()
    }

    #[test]
    fn healthy_fleet_reports_ten_clean_targets() {
        let mut f = fleet(Script::new());
        let reports = f.window(3);
        assert_eq!(reports.len(), 6);
        for r in &reports {
            assert_eq!(r.seq, 3);
            assert_eq!(r.start_ms, 1_764_201_600_000 + 30_000);
            assert_eq!(r.probes.len(), 10);
            for p in &r.probes {
                assert_eq!(p.sent, p.received, "{p:?}");
                assert!(p.error.is_none());
                assert!(p.rtt_ms.is_some());
            }
            let media = probe(r, "voipco-media");
            assert!(media.mos.unwrap() > 4.0, "{media:?}");
        }
        assert_eq!(f.sites()[1].isp.as_str(), "isp-b");
        assert_eq!(f.sites()[3].isp.as_str(), "isp-a");
    }

    #[test]
    fn reports_fit_the_wire_budget() {
        let mut f = fleet(Script::new());
        for r in f.window(0) {
            let bytes = faultline_shared::encode(&r).unwrap();
            assert!(bytes.len() <= 400, "{} bytes", bytes.len());
            assert_eq!(faultline_shared::decode(&bytes).unwrap(), r);
        }
    }

    #[test]
    fn same_seed_same_reports() {
        let a = fleet(Script::new()).window(0);
        let b = fleet(Script::new()).window(0);
        assert_eq!(a, b);
    }

    #[test]
    fn provider_down_hits_only_that_provider_and_only_in_its_windows() {
        let script = Script::new().with(
            Fault::ProviderDown {
                provider: id("voipco"),
            },
            2,
            4,
        );
        let mut f = fleet(script);
        for r in f.window(2) {
            for p in &r.probes {
                let down = p.provider.as_ref().is_some_and(|x| x.as_str() == "voipco");
                assert_eq!(p.received == 0, down, "{p:?}");
            }
            assert_eq!(probe(&r, "voipco-sip").error.as_deref(), Some("timeout"));
        }
        for r in f.window(4) {
            assert!(r.probes.iter().all(|p| p.received == p.sent));
        }
    }

    #[test]
    fn isp_lossy_hits_that_isps_sites_past_the_lan() {
        let script = Script::new().with(
            Fault::IspLossy {
                isp: id("isp-a"),
                loss: 0.5,
            },
            0,
            1,
        );
        let mut f = fleet(script);
        for r in f.window(0) {
            let on_a = r.site.as_str() == "site-0000" || r.site.as_str() == "site-0003";
            assert_eq!(probe(&r, "gw").received, ICMP_PACKETS);
            let media = probe(&r, "voipco-media");
            if on_a {
                assert!(media.loss() > 0.3, "{media:?}");
                assert!(media.mos.unwrap() < 3.0);
            } else {
                assert_eq!(media.loss(), 0.0);
            }
        }
    }

    #[test]
    fn lan_cut_path_lossy_busy_and_silent_are_site_local() {
        let script = Script::new()
            .with(
                Fault::LanCut {
                    site: id("site-0001"),
                },
                0,
                1,
            )
            .with(
                Fault::PathLossy {
                    site: id("site-0002"),
                    provider: id("voipco"),
                    loss: 0.3,
                },
                0,
                1,
            )
            .with(
                Fault::HostBusy {
                    site: id("site-0004"),
                },
                0,
                1,
            )
            .with(
                Fault::Silent {
                    site: id("site-0005"),
                },
                0,
                1,
            );
        let mut f = fleet(script);
        let reports = f.window(0);
        assert_eq!(reports.len(), 5, "the silent site sends nothing");
        let by = |s: &str| reports.iter().find(|r| r.site.as_str() == s).unwrap();
        assert!(by("site-0001").probes.iter().all(|p| p.received == 0));
        let s2 = by("site-0002");
        assert!(probe(s2, "voipco-media").loss() > 0.1);
        assert_eq!(probe(s2, "voipco2-media").loss(), 0.0);
        assert_eq!(probe(s2, "gw").loss(), 0.0);
        assert!(by("site-0004").host.unwrap().cpu_pct >= 95.0);
        assert!(by("site-0000").host.unwrap().cpu_pct < 95.0);
    }

    #[test]
    fn script_entries_parse() {
        let f: ScriptedFault = "provider-down:voipco@3..6".parse().unwrap();
        assert_eq!(
            f,
            ScriptedFault {
                fault: Fault::ProviderDown {
                    provider: id("voipco")
                },
                from: 3,
                until: 6
            }
        );
        let f: ScriptedFault = "path-lossy:site-0002:voipco:15%@1..2".parse().unwrap();
        assert!(matches!(f.fault, Fault::PathLossy { loss, .. } if (loss - 0.15).abs() < 1e-12));
        for bad in [
            "provider-down:voipco",
            "provider-down:voipco@6..3",
            "isp-lossy:isp-a@1..2",
            "isp-lossy:isp-a:150%@1..2",
            "lan-cut:bad site@1..2",
            "meteor:site-0001@1..2",
        ] {
            assert!(bad.parse::<ScriptedFault>().is_err(), "{bad}");
        }
    }
    #[test]
    fn named_sites_keep_their_names_isps_and_order() {
        let sites = [
            (id("acme-hq"), id("Comcast")),
            (id("dunn-law"), id("Verizon")),
        ];
        let mut f = Fleet::with_sites(&sites, 2_000, 0, 7);
        let reports = f.window(0);
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[1].site.as_str(), "dunn-law");
        assert_eq!(f.sites()[1].isp.as_str(), "Verizon");
        let status = f.status(&f.sites()[0]);
        assert_eq!(status.isp.unwrap().as_str(), "Comcast");
    }

    #[test]
    fn a_repeating_script_plays_again_every_period() {
        let down = Fault::ProviderDown {
            provider: id("voipco"),
        };
        let script = Script::new().with(down.clone(), 2, 4).repeat_every(10);
        for (seq, active) in [
            (1, false),
            (2, true),
            (3, true),
            (4, false),
            (12, true),
            (24, false),
        ] {
            assert_eq!(
                script.active(seq).next() == Some(&down),
                active,
                "window {seq}"
            );
        }
        assert_eq!(script.entries().len(), 1);
    }

    #[test]
    fn impaired_segments_are_lossy_or_down_the_same_every_window() {
        let impaired = |site: &str, segment: Segment, condition| Fault::Impaired {
            site: id(site),
            segment,
            condition,
        };
        let script = Script::new()
            .with(impaired("site-0000", Segment::Isp, Condition::Lossy), 0, 2)
            .with(
                impaired(
                    "site-0001",
                    Segment::Provider(id("voipco")),
                    Condition::Lossy,
                ),
                0,
                2,
            )
            .with(
                impaired(
                    "site-0002",
                    Segment::Provider(id("voipco2")),
                    Condition::Down,
                ),
                0,
                2,
            );
        let mut f = fleet(script);
        for seq in 0..2 {
            let reports = f.window(seq);
            let s0 = &reports[0];
            assert_eq!(probe(s0, "isp-hop").received, ICMP_PACKETS - 1);
            assert_eq!(probe(s0, "isp-dns").received, 1, "one packet loses none");
            assert_eq!(probe(s0, "gw").loss(), 0.0);
            assert_eq!(probe(s0, "anchor-1").loss(), 0.0);
            let media = probe(&reports[1], "voipco-media");
            assert_eq!(media.received, STREAM_PACKETS - 5, "{media:?}");
            assert_eq!(media.max_burst, Some(1));
            assert!(media.mos.unwrap() < probe(&reports[3], "voipco-media").mos.unwrap());
            assert_eq!(probe(&reports[1], "voipco-sip").received, 1);
            let s2 = &reports[2];
            assert_eq!(probe(s2, "voipco2-media").received, 0);
            assert_eq!(probe(s2, "voipco2-sip").error.as_deref(), Some("timeout"));
            assert_eq!(probe(s2, "voipco-media").loss(), 0.0);
        }
        assert_eq!(probe(&f.window(2)[1], "voipco-media").loss(), 0.0);
    }

    #[test]
    fn a_restarted_agent_counts_anew_on_its_own_clock() {
        let script = Script::new()
            .with(
                Fault::Restarted {
                    site: id("site-0001"),
                    boot: 8,
                    clock_ms: None,
                },
                3,
                5,
            )
            .with(
                Fault::Restarted {
                    site: id("site-0001"),
                    boot: 9,
                    clock_ms: Some(2_000),
                },
                5,
                100,
            );
        let mut f = fleet(script).with_boot(1, 7).with_window(1, 30_000);
        let at = |f: &mut Fleet, seq| {
            let r = f.report(1, seq).unwrap();
            (r.boot, r.seq, r.start_ms, r.window_ms)
        };
        let t0 = 1_764_201_600_000;
        assert_eq!(at(&mut f, 2), (7, 2, t0 + 60_000, 30_000));
        assert_eq!(at(&mut f, 4), (8, 1, t0 + 120_000, 30_000));
        assert_eq!(at(&mut f, 7), (9, 2, 62_000, 30_000));
        assert_eq!(f.status_in(1, 2).boot, Some(7));
        assert_eq!(f.status_in(1, 5).boot, Some(9));
        assert_eq!(f.status_in(0, 5).boot, Some(f.sites()[0].boot));
        let other = f.report(0, 7).unwrap();
        assert_eq!((other.seq, other.window_ms), (7, 10_000));
    }

    #[test]
    fn new_entries_parse_and_print_back() {
        for text in [
            "lossy:site-0001:isp@3..6",
            "down:site-0001:lan@3..6",
            "lossy:site-0001:internet@3..6",
            "down:site-0002:voipco2@1..2",
            "restarted:site-0003:8@4..9",
            "restarted:site-0003:9:2000@9..20",
        ] {
            let e: ScriptedFault = text.parse().unwrap();
            assert_eq!(format!("{}@{}..{}", e.fault, e.from, e.until), text);
        }
        assert!(matches!(
            "down:site-0002:voipco@1..2".parse::<ScriptedFault>().unwrap().fault,
            Fault::Impaired { segment: Segment::Provider(p), condition: Condition::Down, .. }
                if p.as_str() == "voipco"
        ));
        for bad in [
            "lossy:site-0001@1..2",
            "restarted:site-0001:x@1..2",
            "restarted:site-0001:8:1970@1..2:3",
            "restarted:site-0001:8:1:2@1..2",
        ] {
            assert!(bad.parse::<ScriptedFault>().is_err(), "{bad}");
        }
    }

    /// FNV-1a over the postcard bytes of every report of windows `0..8`.
    fn digest(mut f: Fleet) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for seq in 0..8 {
            for r in f.window(seq) {
                for b in faultline_shared::encode(&r).unwrap() {
                    h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        h
    }

    #[test]
    fn existing_scripts_keep_their_reports_byte_for_byte() {
        // Pinned before the scenario faults were added: the demo, benchmarks and the
        // fleet binary's reports must not change under their existing scripts.
        let every_kind = Script::new()
            .with(
                Fault::ProviderDown {
                    provider: id("voipco"),
                },
                1,
                3,
            )
            .with(
                Fault::IspLossy {
                    isp: id("isp-b"),
                    loss: 0.2,
                },
                2,
                5,
            )
            .with(
                Fault::LanCut {
                    site: id("site-0001"),
                },
                3,
                4,
            )
            .with(
                Fault::PathLossy {
                    site: id("site-0002"),
                    provider: id("voipco2"),
                    loss: 0.3,
                },
                4,
                6,
            )
            .with(
                Fault::HostBusy {
                    site: id("site-0004"),
                },
                5,
                7,
            )
            .with(
                Fault::Silent {
                    site: id("site-0005"),
                },
                6,
                8,
            )
            .repeat_every(7);
        let named = Fleet::with_sites(
            &[
                (id("acme-hq"), id("Comcast")),
                (id("dunn-law"), id("Verizon")),
            ],
            2_000,
            0,
            7,
        );
        let got = [
            digest(fleet(Script::new())),
            digest(fleet(every_kind.clone())),
            digest(fleet(every_kind.clone()).with_targets(3)),
            digest(fleet(every_kind).with_targets(13)),
            digest(named),
        ];
        assert_eq!(got, GOLDEN, "{got:#x?}");
    }

    #[test]
    fn target_counts_shape_every_report() {
        let names = |n| -> Vec<String> {
            fleet(Script::new())
                .with_targets(n)
                .target_names()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(names(3), ["gw", "isp-hop", "voipco-media"]);
        let standard: Vec<String> = fleet(Script::new())
            .target_names()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names(10), standard);
        let more = names(13);
        assert_eq!(&more[..10], &standard[..]);
        assert_eq!(
            &more[10..],
            ["voipco-media-2", "voipco2-media-2", "voipco-media-3"]
        );
        // Ten targets by choice are the default fleet, draw for draw.
        let a = fleet(Script::new()).with_targets(10).window(1);
        assert_eq!(a, fleet(Script::new()).window(1));
        let mut f = fleet(Script::new()).with_targets(13);
        for r in f.window(0) {
            assert_eq!(r.probes.len(), 13);
            assert!(faultline_shared::encode(&r).is_ok());
        }
    }
}
