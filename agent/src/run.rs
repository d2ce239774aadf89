//! `run` and `check`.
//!
//! `run` wires the parts on one small current-thread runtime: one task per target
//! measures each wall-clock-aligned window, the loop here assembles each window into a
//! `Report` with the host's health, encodes it and hands it to [`Delivery`], which
//! stores it durably and sends it, and never makes it wait. Reports an earlier run
//! left undelivered in the spool are sent too. SIGTERM or SIGINT stops it cleanly.
//!
//! What is measured is a [`Plan`]: the file's targets and the central config's
//! (`central`). A central config from the broker is judged as it arrives; a new plan
//! replaces the probe tasks at the next window boundary, so each window is measured
//! by one plan, and `seq` goes on.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use faultline_shared::{ProbeResult, Report};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::central::{self, Central, Offer, Origin, Plan, Stored};
use crate::config::{self, Config, Format};
use crate::host::HostSampler;
use crate::net::delivery::Delivery;
use crate::net::gateway;
use crate::net::spool::{Record, Spool};
use crate::probe::Prober;
use crate::probe::peer::NO_DEFAULT_ROUTE;
use crate::window::{Assembler, following_start, guard_ms, next_boundary};
use faultline_shared::CentralConfig;

/// How long the exit waits for blocking work (a name lookup) still running.
const SHUTDOWN_LOOKUP_WAIT: Duration = Duration::from_millis(500);

/// How long a clean stop waits for the broker to acknowledge what is queued.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The agent's config file (TOML)
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The agent's config file (TOML)
    #[arg(long)]
    pub config: PathBuf,
}

/// `faultline-agent run`: exit 2 on a bad config, 1 on a failure to start, 0 on a
/// clean stop.
pub fn run(args: RunArgs) -> ExitCode {
    let cfg = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let code = match rt.block_on(agent(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    };
    // Everything worth keeping is on disk by now (the delivery task awaited its last
    // spool write); a name lookup still blocked in the C library (resolv.conf's
    // timeouts, up to 10 s) must not hold the exit.
    rt.shutdown_timeout(SHUTDOWN_LOOKUP_WAIT);
    code
}

/// `faultline-agent check`: print the resolved plan (with where the default gateway is
/// now, when a target probes it), or the error and exit 2.
pub fn check(args: CheckArgs) -> ExitCode {
    match config::load(&args.config) {
        Ok(c) => {
            print!("{c}");
            let stored = Stored::new(&c);
            let central = match stored.load() {
                Ok(central) => central,
                Err(e) => {
                    println!("central  {} ignored: {e:#}", stored.path().display());
                    None
                }
            };
            let plan = Plan::resolve(&c.targets, c.window, central.as_ref());
            print!(
                "{}",
                central::describe(&plan, central.as_ref(), stored.path())
            );
            if plan.targets.iter().any(|(t, _)| t.uses_gateway()) {
                println!("{}", gateway_note(gateway::default_gateway()));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// What `check` says about the default gateway when a target probes it: where it is
/// now, or why there is none. Not an error in the file: the probes look the gateway up
/// again every window.
fn gateway_note(table: std::io::Result<Option<std::net::Ipv4Addr>>) -> String {
    let route = gateway::PROC_NET_ROUTE;
    match table {
        Ok(Some(ip)) => format!("gateway  {ip} now (looked up again every window)"),
        Ok(None) => format!(
            "gateway  none now: {route} has no default route; targets on host \"gateway\" report \"{NO_DEFAULT_ROUTE}\" until there is one"
        ),
        Err(e) => format!("gateway  unknown now: cannot read {route}: {e}"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sleeps until the wall clock reads `at_ms` (or returns at once if it has).
async fn sleep_until_ms(at_ms: u64) {
    let wait = at_ms.saturating_sub(now_ms());
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

async fn agent(cfg: Config) -> anyhow::Result<()> {
    // The only provider compiled in; a second install attempt fails harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let boot = fastrand::u32(..);
    let stored = Stored::new(&cfg);
    let mut central = Central::new(load_stored(&stored));
    let mut plan = Plan::resolve(&cfg.targets, cfg.window, central.applied());
    info!(
        "faultline-agent {} starting: site {}, boot {boot}, {} targets ({} central), {} s windows, broker {}",
        env!("CARGO_PKG_VERSION"),
        cfg.site,
        plan.targets.len(),
        plan.targets
            .iter()
            .filter(|(_, o)| *o != Origin::Local)
            .count(),
        plan.window.as_secs(),
        cfg.mqtt.broker
    );
    if plan.targets.is_empty() {
        warn!(
            "no targets configured: reports carry host health only until a central config arrives"
        );
    }
    let mut signals = Signals::new().context("installing signal handlers")?;
    let spool = open_spool(&cfg)?;
    let (config_tx, mut config_rx) = mpsc::unbounded_channel();
    let delivery = Delivery::start(&cfg, boot, spool, config_tx)?;

    let mut asm = Assembler::new(cfg.site.clone(), boot, plan.window_ms(), Vec::new());
    let mut host = HostSampler::new();
    let mut current = next_boundary(now_ms(), plan.window_ms());
    let mut switched = false;
    'plans: loop {
        // One plan measures whole windows: a new one starts at a window boundary.
        let window_ms = plan.window_ms();
        let (tasks, mut rx) = start_probes(&plan, current, window_ms, !switched).await?;
        switched = true;
        asm.reconfigure(window_ms, blanks(&plan));
        let grace = window_ms / 2;
        let mut probes_alive = !tasks.is_empty();
        let mut next_plan: Option<Plan> = None;
        loop {
            // Wait until every target reported for `current` (and the window is
            // over) or its deadline passed; keep results for later windows.
            let end = current + window_ms - guard_ms(window_ms);
            let deadline = current + window_ms + grace;
            loop {
                let now = now_ms();
                if (asm.is_complete(current) && now >= end) || now >= deadline {
                    break;
                }
                let wake = if asm.is_complete(current) {
                    end
                } else {
                    deadline
                };
                tokio::select! {
                    msg = rx.recv(), if probes_alive => match msg {
                        Some((start, i, r)) if start >= current => asm.add(start, i, r),
                        Some((start, i, _)) => debug!("late result of target {i} for window {start} dropped"),
                        None => probes_alive = false,
                    },
                    Some(payload) = config_rx.recv() => {
                        if let Some(p) = on_central(&mut central, &stored, &cfg, &delivery, &payload).await {
                            next_plan = (!p.measures_like(&plan)).then_some(p);
                        }
                    }
                    _ = sleep_until_ms(wake) => {}
                    _ = signals.recv() => {
                        tasks.iter().for_each(|t| t.abort());
                        break 'plans;
                    }
                }
            }
            let report = asm.finish(current, Some(host.sample()));
            publish(&delivery, report, cfg.format);

            current += window_ms;
            let now = now_ms();
            if now > current + 2 * window_ms || now + window_ms < current {
                let to = next_boundary(now, window_ms);
                warn!(
                    "the clock jumped (expected about {current} ms, now {now} ms): resuming at window {to}"
                );
                asm.discard_before(u64::MAX);
                current = to;
            }
            asm.discard_before(current);
            if let Some(p) = next_plan.take() {
                tasks.iter().for_each(|t| t.abort());
                info!(
                    "central config v{} applied: {} targets, {} s windows",
                    central.applied().map_or(0, |c| c.version),
                    p.targets.len(),
                    p.window.as_secs()
                );
                plan = p;
                current = next_boundary(now_ms().max(current) - 1, plan.window_ms());
                continue 'plans;
            }
        }
    }
    delivery.shutdown(SHUTDOWN_FLUSH).await;
    Ok(())
}

/// The stored central config, or none (a damaged one is logged and left aside).
fn load_stored(stored: &Stored) -> Option<CentralConfig> {
    match stored.load() {
        Ok(Some(c)) => {
            info!(
                "central config v{} from {} ({} targets) until the broker says otherwise",
                c.version,
                stored.path().display(),
                c.targets.len()
            );
            Some(c)
        }
        Ok(None) => None,
        Err(e) => {
            warn!(
                "ignoring the stored central config {}: {e:#}",
                stored.path().display()
            );
            None
        }
    }
}

/// Judges a central config from the broker: a new one is stored and its plan given
/// back; every answer goes to `config/status`.
async fn on_central(
    central: &mut Central,
    stored: &Stored,
    cfg: &Config,
    delivery: &Delivery,
    payload: &[u8],
) -> Option<Plan> {
    match central.offer(payload) {
        Offer::Apply {
            config,
            valid,
            status,
        } => {
            let file = stored.clone();
            let saved = tokio::task::spawn_blocking(move || file.save(&config)).await;
            match saved {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(
                    "central config v{} applied but not stored in {}: {e}",
                    valid.version,
                    stored.path().display()
                ),
                Err(e) => warn!("central config v{} not stored: {e}", valid.version),
            }
            delivery.config_status(status.encode());
            Some(Plan::resolve(&cfg.targets, cfg.window, Some(&valid)))
        }
        Offer::Keep(status) => {
            if status.state == faultline_shared::ConfigState::Rejected {
                warn!(
                    "central config v{} rejected: {}",
                    status.version,
                    status.error.as_deref().unwrap_or("")
                );
            }
            delivery.config_status(status.encode());
            None
        }
        Offer::Unreadable(e) => {
            warn!("central config unreadable, ignored: {e}");
            None
        }
    }
}

type Results = mpsc::Receiver<(u64, usize, ProbeResult)>;

/// One task per target of `plan`, measuring from the window starting at `first`. At
/// `startup` a local target that cannot start stops the agent (a fault in its own
/// file); otherwise the target is logged and reported as missed, and the rest run.
async fn start_probes(
    plan: &Plan,
    first: u64,
    window_ms: u64,
    startup: bool,
) -> anyhow::Result<(Vec<tokio::task::JoinHandle<()>>, Results)> {
    let (tx, rx) = mpsc::channel(plan.targets.len() * 4 + 4);
    let mut tasks = Vec::with_capacity(plan.targets.len());
    for (i, (t, origin)) in plan.targets.iter().enumerate() {
        match Prober::new(t.clone()).await {
            Ok(p) => tasks.push(tokio::spawn(probe_loop(i, p, first, window_ms, tx.clone()))),
            Err(e) if startup && *origin == Origin::Local => {
                return Err(e.context(format!("target {}", t.name)));
            }
            Err(e) => error!("{origin} target {} cannot start: {e:#}", t.name),
        }
    }
    Ok((tasks, rx))
}

/// Each target's empty result, in plan order.
fn blanks(plan: &Plan) -> Vec<ProbeResult> {
    plan.targets.iter().map(|(t, _)| t.result()).collect()
}

/// Opens the durable outbox and says what earlier runs left in it.
fn open_spool(cfg: &Config) -> anyhow::Result<Spool> {
    let (spool, found) = Spool::open(&cfg.state_dir, cfg.outbox_capacity).with_context(|| {
        format!(
            "opening the outbox (state_dir {}: a writable folder on persistent storage)",
            cfg.state_dir.display()
        )
    })?;
    if found.records > 0 {
        info!(
            "outbox {}: {} undelivered reports from earlier runs (boots {:?}) will be sent first",
            spool.dir().display(),
            found.records,
            found.boots
        );
    }
    if found.corrupt > 0 || found.torn > 0 {
        warn!(
            "outbox {}: skipped {} damaged records and {} cut-short writes",
            spool.dir().display(),
            found.corrupt,
            found.torn
        );
    }
    if found.dropped > 0 {
        warn!(
            "outbox {}: {} oldest reports dropped to fit outbox_capacity {}",
            spool.dir().display(),
            found.dropped,
            cfg.outbox_capacity
        );
    }
    Ok(spool)
}

/// Encodes `report` per `format` and hands it to delivery.
fn publish(delivery: &Delivery, report: Report, format: Format) {
    let payload = match format {
        Format::Postcard => faultline_shared::encode(&report).map_err(anyhow::Error::from),
        Format::Json => serde_json::to_vec(&report).map_err(anyhow::Error::from),
    };
    match payload {
        Ok(bytes) => {
            debug!(
                seq = report.seq,
                bytes = bytes.len(),
                probes = report.probes.len(),
                "report queued"
            );
            delivery.enqueue(Record {
                format,
                boot: report.boot,
                seq: report.seq,
                payload: bytes,
            });
        }
        Err(e) => error!("report seq {} cannot be encoded: {e:#}", report.seq),
    }
}

/// Measures one target window after window, from the window starting at `start`.
async fn probe_loop(
    index: usize,
    mut prober: Prober,
    mut start: u64,
    window_ms: u64,
    tx: mpsc::Sender<(u64, usize, ProbeResult)>,
) {
    let budget = Duration::from_millis(window_ms - guard_ms(window_ms));
    let limit = Duration::from_millis(window_ms + guard_ms(window_ms));
    loop {
        sleep_until_ms(start).await;
        let result = match tokio::time::timeout(limit, prober.measure(budget)).await {
            Ok(r) => r,
            Err(_) => {
                let t = prober.target();
                warn!(
                    "target {} overran its window; its probe was cut short",
                    t.name
                );
                let mut r = ProbeResult::new(t.name.clone(), t.layer, t.provider.clone(), t.kind);
                r.error = Some("overran window".into());
                r
            }
        };
        if tx.send((start, index, result)).await.is_err() {
            return;
        }
        start = following_start(start, now_ms(), window_ms);
    }
}

/// SIGTERM and SIGINT, either of which stops the agent cleanly.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM received"),
            _ = self.int.recv() => info!("SIGINT received"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_note_says_where_it_is_or_why_not() {
        assert_eq!(
            gateway_note(Ok(Some([192, 168, 1, 1].into()))),
            "gateway  192.168.1.1 now (looked up again every window)"
        );
        assert_eq!(
            gateway_note(Ok(None)),
            "gateway  none now: /proc/net/route has no default route; targets on host \"gateway\" report \"no default route\" until there is one"
        );
        let e = gateway_note(Err(std::io::ErrorKind::PermissionDenied.into()));
        assert!(
            e.starts_with("gateway  unknown now: cannot read /proc/net/route: "),
            "{e}"
        );
    }
}
