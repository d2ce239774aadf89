//! Property tests for the invariants the rest of Faultline relies on.

use faultline_shared::measure::{
    Codec, Jitter, LatencySummary, SeqTracker, VoiceQuality, loss_ratio,
};
use faultline_shared::{
    HostHealth, Id, Kind, Layer, ProbeResult, Report, RttStats, decode, encode,
};
use proptest::prelude::*;

fn arb_id() -> impl Strategy<Value = Id> {
    "[A-Za-z0-9._-]{1,64}".prop_map(|s| Id::new(s).unwrap())
}

/// A value on the wire's grid of hundredths (0.01 ms, 0.01 MOS, 0.01 load).
fn centis(max: u32) -> impl Strategy<Value = f64> {
    (0..=max).prop_map(|u| f64::from(u) / 100.0)
}

fn tenths(max: u16) -> impl Strategy<Value = f64> {
    (0..=max).prop_map(|u| f64::from(u) / 10.0)
}

fn arb_rtt() -> impl Strategy<Value = RttStats> {
    (0..1_000_000u32, prop::array::uniform4(0..100_000u32)).prop_map(|(min, d)| {
        let at = |x: u32| f64::from(min + x) / 100.0;
        RttStats {
            min: f64::from(min) / 100.0,
            p50: at(d[0]),
            avg: at(d[1]),
            p95: at(d[2]),
            max: at(d[3]),
        }
    })
}

fn arb_probe() -> impl Strategy<Value = ProbeResult> {
    (
        arb_id(),
        prop::sample::select(Layer::ALL),
        prop::option::of(arb_id()),
        prop::sample::select(Kind::ALL),
        any::<u32>(),
        any::<u32>(),
        prop::option::of(arb_rtt()),
        prop::option::of(centis(1_000_000)),
        prop::option::of(any::<u32>()),
        prop::option::of(centis(450)),
        prop::option::of("[a-z0-9 ]{0,20}"),
    )
        .prop_map(
            |(
                target,
                layer,
                provider,
                kind,
                sent,
                received,
                rtt_ms,
                jitter_ms,
                max_burst,
                mos,
                error,
            )| {
                ProbeResult {
                    target,
                    layer,
                    provider,
                    kind,
                    sent,
                    received,
                    rtt_ms,
                    jitter_ms,
                    max_burst,
                    mos,
                    error,
                }
            },
        )
}

fn arb_report() -> impl Strategy<Value = Report> {
    (
        arb_id(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        prop::option::of((tenths(1000), tenths(1000), centis(100_000))),
        prop::collection::vec(arb_probe(), 0..12),
    )
        .prop_map(
            |(site, boot, seq, start_ms, window_ms, host, probes)| Report {
                v: 1,
                site,
                boot,
                seq,
                start_ms,
                window_ms,
                host: host.map(|(cpu_pct, mem_pct, load1)| HostHealth {
                    cpu_pct,
                    mem_pct,
                    load1,
                }),
                probes,
            },
        )
}

proptest! {
    #[test]
    fn decode_inverts_encode(r in arb_report()) {
        let bytes = encode(&r).unwrap();
        prop_assert_eq!(decode(&bytes).unwrap(), r);
    }

    #[test]
    fn json_round_trips(r in arb_report()) {
        let json = serde_json::to_string(&r).unwrap();
        prop_assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decode_never_panics_on_mutated_reports(
        r in arb_report(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = encode(&r).unwrap();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = decode(&bytes);
    }

    #[test]
    fn loss_is_a_ratio(sent in any::<u32>(), received in any::<u32>()) {
        let l = loss_ratio(sent, received);
        prop_assert!((0.0..=1.0).contains(&l));
    }

    #[test]
    fn tracked_loss_is_a_ratio_and_counts_add_up(
        base in any::<u32>(),
        sent in 0..2000u32,
        arrivals in prop::collection::vec(0..2100u32, 0..3000),
    ) {
        let mut t = SeqTracker::new(base);
        for a in arrivals {
            t.on_receive(base.wrapping_add(a));
        }
        let st = t.finish(sent);
        prop_assert!((0.0..=1.0).contains(&st.loss()));
        prop_assert_eq!(st.received + st.lost, sent);
        prop_assert!(st.max_burst <= st.lost);
        prop_assert!(st.burst_r.is_finite() && st.burst_r > 0.0);
    }

    #[test]
    fn mos_stays_on_the_scale(
        rtt in -10.0f64..10_000.0,
        jitter in -1.0f64..1000.0,
        loss in 0.0f64..=1.0,
        burst in 0.0f64..100.0,
        codec in prop::sample::select(Codec::ALL),
    ) {
        let q = VoiceQuality::assess(rtt, jitter, loss, burst, codec);
        prop_assert!((1.0..=4.5).contains(&q.mos), "{:?}", q);
    }

    #[test]
    fn constant_delay_stream_has_zero_jitter(
        delay in 0.0f64..5000.0,
        interval in 1.0f64..100.0,
        n in 2usize..500,
    ) {
        let mut j = Jitter::new();
        for i in 0..n {
            // Integer-valued send times keep the transit exactly constant in f64.
            let sent = (i as f64 * interval).round();
            j.on_packet(sent, sent + delay.round());
        }
        prop_assert_eq!(j.value_ms(), 0.0);
    }

    #[test]
    fn summary_brackets_and_bounds_its_quantiles(
        samples in prop::collection::vec(0.0f64..60_000.0, 1..500),
    ) {
        let mut s = LatencySummary::new();
        for &x in &samples {
            s.record_ms(x);
        }
        let st = s.stats().unwrap();
        prop_assert!(st.min <= st.p50 && st.p50 <= st.p95 && st.p95 <= st.max);
        prop_assert!(st.min <= st.avg + 1e-9 && st.avg <= st.max + 1e-9);
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.5, 0.95] {
            let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
            let truth = sorted[rank - 1];
            let got = s.quantile_ms(q).unwrap();
            prop_assert!((got - truth).abs() <= truth * 0.004 + 0.001, "q{} {} vs {}", q, got, truth);
        }
    }
}
