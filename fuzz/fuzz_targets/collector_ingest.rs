//! Whatever strangers publish, in any order: the collector's engine takes a stream of
//! (topic, payload) messages and evaluations and never panics. The input is split on
//! 0xFF bytes into messages; each message's first byte picks a topic (a report,
//! JSON report or status of one of four sites, or the bytes up to a 0xFE as the
//! topic itself) and the rest is the payload.
#![no_main]

use faultline_collector::engine::{Engine, EngineConfig, advance};
use faultline_shared::{Id, Topics};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let topics = Topics::default();
    let sites = ["acme-hq", "bobs-bakery", "city-dental", "a"].map(|s| Id::new(s).unwrap());
    let mut engine = Engine::new(EngineConfig::default());
    let mut now = 1_764_201_600_000u64;
    for (i, msg) in data.split(|&b| b == 0xFF).enumerate() {
        let Some((&pick, rest)) = msg.split_first() else {
            continue;
        };
        let site = &sites[usize::from(pick >> 2) % sites.len()];
        let (topic, payload) = match pick & 3 {
            0 => (topics.report(site), rest),
            1 => (topics.report_json(site), rest),
            2 => (topics.status(site), rest),
            _ => match rest.iter().position(|&b| b == 0xFE) {
                Some(at) => (String::from_utf8_lossy(&rest[..at]).into_owned(), &rest[at + 1..]),
                None => continue,
            },
        };
        let _ = engine.handle_message(&topics, now, &topic, payload, pick & 0x80 != 0);
        now += 1_000;
        if i % 4 == 3 {
            engine.handle_timeout(now);
        }
        if i % 7 == 5 {
            engine.handle_link(now, i % 2 == 0);
        }
        while engine.poll_output().is_some() {}
    }
    advance(&mut engine, now + 60_000);
    while engine.poll_output().is_some() {}
});
