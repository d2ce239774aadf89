//! 10,000 simulated sites × 10 targets through the engine: RSS and time per
//! evaluation (and per report ingested). Run in release:
//!
//! `cargo run --release -p faultline-collector --example engine_bench [-- SITES TARGETS WINDOWS]`

use std::time::Instant;

use faultline_collector::engine::{Engine, EngineConfig, Output};
use faultline_shared::{Id, Kind, Layer, ProbeResult, Report, RttStats, Topics};

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

fn report(site: &Id, targets: &[(Id, Layer, Option<Id>, Kind)], seq: u64, bad: bool) -> Report {
    let probes = targets
        .iter()
        .map(|(t, layer, prov, kind)| {
            let mut p = ProbeResult::new(t.clone(), *layer, prov.clone(), *kind);
            p.sent = 50;
            let down = bad && prov.as_ref().is_some_and(|p| p.as_str() == "p0");
            p.received = if down { 0 } else { 50 };
            if !down {
                p.rtt_ms = Some(RttStats {
                    min: 10.0,
                    p50: 12.0,
                    avg: 12.5,
                    p95: 15.0,
                    max: 20.0,
                });
                p.jitter_ms = Some(1.0);
                if kind.is_voice() {
                    p.mos = Some(4.3);
                }
            }
            p
        })
        .collect();
    Report {
        v: 1,
        site: site.clone(),
        boot: 1,
        seq,
        start_ms: 1_764_201_600_000 + seq * 10_000,
        window_ms: 10_000,
        host: None,
        probes,
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sites = args.first().copied().unwrap_or(10_000) as usize;
    let n_targets = args.get(1).copied().unwrap_or(10) as usize;
    let windows = args.get(2).copied().unwrap_or(20);
    let rss0 = rss_kb("VmRSS:");
    let mut engine = Engine::new(EngineConfig::default());
    let topics = Topics::default();
    let site_ids: Vec<Id> = (0..sites)
        .map(|i| Id::new(format!("site-{i:05}")).unwrap())
        .collect();
    // 2 lan/isp/internet targets, the rest spread over 4 providers.
    let targets: Vec<(Id, Layer, Option<Id>, Kind)> = (0..n_targets)
        .map(|i| {
            let name = Id::new(format!("t{i}")).unwrap();
            match i {
                0 => (name, Layer::Lan, None, Kind::Icmp),
                1 => (name, Layer::Isp, None, Kind::Icmp),
                2 => (name, Layer::Internet, None, Kind::Icmp),
                _ => {
                    let p = Id::new(format!("p{}", i % 4)).unwrap();
                    let kind = if i % 2 == 0 { Kind::Stamp } else { Kind::Sip };
                    (name, Layer::Provider, Some(p), kind)
                }
            }
        })
        .collect();
    let mut now = 1_764_201_600_000u64;
    for (i, s) in site_ids.iter().enumerate() {
        let st = format!(
            "{{\"state\":\"online\",\"boot\":1,\"isp\":\"isp{}\"}}",
            i % 20
        );
        let _ = engine.handle_message(&topics, now, &topics.status(s), st.as_bytes(), false);
    }
    let mut ingest_ns = Vec::new();
    let mut eval_ns = Vec::new();
    let mut changes = 0usize;
    for w in 0..windows {
        // Provider p0 fails at every site in the middle third.
        let bad = (windows / 3..2 * windows / 3).contains(&w);
        let reports: Vec<Report> = site_ids
            .iter()
            .map(|s| report(s, &targets, w, bad))
            .collect();
        let t = Instant::now();
        for r in reports {
            let bytes = faultline_shared::encode(&r).unwrap();
            engine
                .handle_message(&topics, now + 5_000, &topics.report(&r.site), &bytes, false)
                .unwrap();
            while engine.poll_output().is_some() {}
        }
        ingest_ns.push(t.elapsed().as_nanos() as f64 / sites as f64);
        now += 10_000;
        let t = Instant::now();
        engine.handle_timeout(now + engine.evaluation_delay_ms());
        eval_ns.push(t.elapsed().as_nanos() as f64);
        while let Some(o) = engine.poll_output() {
            changes += usize::from(matches!(o, Output::Verdict(_)));
        }
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
        "(RSS before the engine: {:.1} MB; open incidents at the end: {})",
        rss0 as f64 / 1024.0,
        engine.open_incidents().count()
    );
}
