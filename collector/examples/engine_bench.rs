//! Simulated sites through the engine: RSS and time per evaluation (and per report
//! ingested). Run in release:
//!
//! `cargo run --release -p faultline-collector --example engine_bench [-- SITES TARGETS WINDOWS]`
//!
//! 10,000 sites × 10 targets × 20 windows by default (100,000 × 10 runs too). The
//! reports come from the fleet simulator (`faultline_lab::fleet`) on 20 ISPs, with
//! provider `voipco` down at every site in the middle third of the windows; the engine
//! gets them as encoded postcard bytes on their MQTT topics, as `run` does. They are
//! made a chunk of sites at a time, outside the timed part, so neither the time nor
//! the RSS counts a whole window of reports.

use std::time::{Duration, Instant};

use faultline_collector::engine::{Engine, EngineConfig, Output};
use faultline_lab::fleet::{ALTERNATE, Fault, Fleet, PROVIDER, Script};
use faultline_shared::{Id, Topics};

/// Sites whose messages are made, then fed, at a time.
const CHUNK: usize = 1_000;
const WINDOW_MS: u32 = 10_000;
const WINDOW: u64 = WINDOW_MS as u64;
const START_MS: u64 = 1_764_201_600_000;

fn rss_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|r| r.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What the engine was given: one MQTT message, or the clock to evaluate at.
enum Input<'a> {
    Message { topic: &'a str, payload: &'a [u8] },
    Timeout,
}

/// The bench's only contact with the engine: one input at `now` (ms), returning the
/// verdict changes it published. (Poll-style engines: `handle_message` /
/// `handle_timeout`, then drain `poll_output`.)
fn step(engine: &mut Engine, topics: &Topics, now: u64, input: Input<'_>) -> usize {
    match input {
        Input::Message { topic, payload } => {
            // A rejected message would time the wrong thing: the fleet's are all valid.
            if let Err(e) = engine.handle_message(topics, now, topic, payload, false) {
                panic!("the engine rejected {topic}: {e}");
            }
        }
        Input::Timeout => engine.handle_timeout(now),
    }
    std::iter::from_fn(|| engine.poll_output())
        .filter(|o| matches!(o, Output::Verdict(_)))
        .count()
}

/// MQTT messages: (topic, payload).
type Messages = Vec<(String, Vec<u8>)>;

/// Feeds `chunk` to the engine at `now` and empties it; returns the time the engine
/// took and the verdict changes it published.
fn feed(engine: &mut Engine, topics: &Topics, now: u64, chunk: &mut Messages) -> (Duration, usize) {
    let t = Instant::now();
    let mut changes = 0;
    for (topic, payload) in chunk.iter() {
        let msg = Input::Message { topic, payload };
        changes += step(engine, topics, now, msg);
    }
    let took = t.elapsed();
    chunk.clear();
    (took, changes)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sites = args.first().copied().unwrap_or(10_000) as usize;
    let n_targets = args.get(1).copied().unwrap_or(10).max(1) as usize;
    let windows = args.get(2).copied().unwrap_or(20);
    let id = |s: String| Id::new(s).expect("bench ids are valid");
    let isps: Vec<Id> = (0..20).map(|i| id(format!("isp-{i:02}"))).collect();
    let script = Script::new().with(
        Fault::ProviderDown {
            provider: id(PROVIDER.into()),
        },
        windows / 3,
        2 * windows / 3,
    );
    let mut fleet = Fleet::new(sites, &isps, WINDOW_MS, START_MS, 1)
        .with_targets(n_targets)
        .with_script(script);
    let topics = Topics::default();
    let mut cfg = EngineConfig {
        window_ms: WINDOW,
        ..EngineConfig::default()
    };
    cfg.providers
        .insert(id(PROVIDER.into()), Some(id(ALTERNATE.into())));
    cfg.providers.insert(id(ALTERNATE.into()), None);
    let rss0 = rss_kb("VmRSS:");
    let mut engine = Engine::new(cfg);

    let mut changes = 0usize;
    let mut chunk: Messages = Vec::with_capacity(CHUNK);
    let now = START_MS;
    for (n, s) in fleet.sites().iter().enumerate() {
        let status = serde_json::to_vec(&fleet.status(s)).expect("a status encodes");
        chunk.push((topics.status(&s.id), status));
        if chunk.len() == CHUNK || n + 1 == sites {
            changes += feed(&mut engine, &topics, now, &mut chunk).1;
        }
    }

    let mut ingest_ns = Vec::new();
    let mut eval_ns = Vec::new();
    for w in 0..windows {
        let (mut ingest, mut reports) = (Duration::ZERO, 0usize);
        for start in (0..sites).step_by(CHUNK) {
            for i in start..(start + CHUNK).min(sites) {
                if let Some(r) = fleet.report(i, w) {
                    let bytes = faultline_shared::encode(&r).expect("a report encodes");
                    chunk.push((topics.report(&r.site), bytes));
                }
            }
            reports += chunk.len();
            let (took, verdicts) = feed(
                &mut engine,
                &topics,
                now + w * WINDOW + WINDOW / 2,
                &mut chunk,
            );
            ingest += took;
            changes += verdicts;
        }
        ingest_ns.push(ingest.as_nanos() as f64 / reports.max(1) as f64);
        let t = Instant::now();
        changes += step(
            &mut engine,
            &topics,
            now + (w + 1) * WINDOW + 1_000,
            Input::Timeout,
        );
        eval_ns.push(t.elapsed().as_nanos() as f64);
    }
    let rss = rss_kb("VmRSS:");
    let hwm = rss_kb("VmHWM:");
    eval_ns.sort_by(f64::total_cmp);
    ingest_ns.sort_by(f64::total_cmp);
    let med = |v: &[f64]| v[v.len() / 2];
    println!(
        "| sites | targets | windows | evaluation median | evaluation max | ingest per report | RSS after | peak RSS | verdict changes |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {sites} | {n_targets} | {windows} | {:.1} ms | {:.1} ms | {:.1} µs | {:.1} MB | {:.1} MB | {changes} |",
        med(&eval_ns) / 1e6,
        eval_ns.last().unwrap() / 1e6,
        med(&ingest_ns) / 1e3,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
    );
    eprintln!(
        "(RSS before the engine, the simulated fleet's sites included: {:.1} MB)",
        rss0 as f64 / 1024.0,
    );
}
