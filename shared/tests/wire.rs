//! The postcard envelope: pinned bytes, the evolution rule, size and robustness.

mod common;

use common::{id, ten_target_report};
use faultline_shared::wire::MAX_PROBES;
use faultline_shared::{
    DecodeError, HostHealth, Kind, Layer, MAX_ENVELOPE_BYTES, ProbeResult, Report, RttStats,
    WIRE_VERSION, decode, encode,
};

/// A small report whose bytes are pinned below.
fn fixture_report() -> Report {
    let mut gw = ProbeResult::new(id("gw"), Layer::Lan, None, Kind::Icmp);
    (gw.sent, gw.received) = (10, 9);
    gw.rtt_ms = Some(RttStats {
        min: 0.4,
        p50: 0.5,
        avg: 0.52,
        p95: 0.8,
        max: 1.1,
    });
    gw.jitter_ms = Some(0.1);
    gw.max_burst = Some(1);
    let mut sip = ProbeResult::new(id("vc-sip"), Layer::Provider, Some(id("vc")), Kind::Sip);
    (sip.sent, sip.received) = (1, 0);
    sip.error = Some("timeout".into());
    Report {
        v: 1,
        site: id("s1"),
        boot: 0xDEAD_BEEF,
        seq: 300,
        start_ms: 1_764_201_600_000,
        window_ms: 10_000,
        host: Some(HostHealth {
            cpu_pct: 12.5,
            mem_pct: 41.5,
            load1: 0.2,
        }),
        probes: vec![gw, sip],
    }
}

/// Today's format, byte for byte (version 1). Deployed agents send exactly this.
#[rustfmt::skip]
const FIXTURE_V1: &[u8] = &[
    0x01,                                     // wire version
    0x02, b's', b'1',                         // site "s1"
    0xef, 0xfd, 0xb6, 0xf5, 0x0d,             // boot 0xDEADBEEF (varint)
    0xac, 0x02,                               // seq 300
    0x80, 0xa8, 0xf0, 0x94, 0xac, 0x33,       // start_ms 1764201600000
    0x90, 0x4e,                               // window_ms 10000
    0x01, 0x04, 0x7d, 0x9f, 0x03, 0x14,       // host: Some, 4-byte record: 125‰, 415‰, 20 cL
    0x02,                                     // two probe records
    0x14,                                     //   record of 20 bytes
    0x02, b'g', b'w', 0x00, 0x00, 0x00,       //   "gw", lan, provider None, icmp
    0x0a, 0x09,                               //   sent 10, received 9
    0x01, 0x28, 0x0a, 0x0c, 0x28, 0x46,       //   rtt: 40 (0.4 ms), +10, +12, +40, +70
    0x01, 0x0a, 0x01, 0x01, 0x00, 0x00,       //   jitter 10, max_burst 1, mos None, error None
    0x1c,                                     //   record of 28 bytes
    0x06, b'v', b'c', b'-', b's', b'i', b'p', // "vc-sip"
    0x03, 0x01, 0x02, b'v', b'c', 0x02,       //   provider, Some("vc"), sip
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00,       //   sent 1, received 0, rtt/jitter/burst/mos None
    0x01, 0x07, b't', b'i', b'm', b'e', b'o', b'u', b't', // error "timeout"
];

#[test]
fn encodes_to_the_pinned_v1_bytes() {
    let bytes = encode(&fixture_report()).unwrap();
    assert_eq!(bytes, FIXTURE_V1, "wire format changed: {bytes:02x?}");
}

#[test]
fn decodes_the_pinned_v1_bytes() {
    assert_eq!(decode(FIXTURE_V1).unwrap(), fixture_report());
}

/// Simulates a newer agent that appended a field to a probe record and to the report:
/// today's decoder reads what it knows and skips the rest.
#[test]
fn skips_fields_appended_by_a_newer_agent() {
    let mut newer = FIXTURE_V1.to_vec();
    // Grow the first probe record (length byte at offset 26) by two bytes of a
    // hypothetical new field, inserted at the record's end.
    let len_at = 26;
    assert_eq!(newer[len_at], 0x14);
    let record_end = len_at + 1 + 0x14;
    newer[len_at] += 2;
    newer.splice(record_end..record_end, [0x01, 0x2a]);
    // And append a report-level extension after the last record.
    newer.extend_from_slice(&[0x01, 0x99, 0x01]);
    assert_eq!(decode(&newer).unwrap(), fixture_report());
}

#[test]
fn rejects_unknown_versions_and_caps_size() {
    let mut v2 = FIXTURE_V1.to_vec();
    v2[0] = 2;
    assert_eq!(decode(&v2), Err(DecodeError::UnsupportedVersion(2)));
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
    let huge = vec![WIRE_VERSION; MAX_ENVELOPE_BYTES + 1];
    assert!(matches!(decode(&huge), Err(DecodeError::TooLarge { .. })));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    for cut in 1..FIXTURE_V1.len() {
        let err = decode(&FIXTURE_V1[..cut]).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Truncated | DecodeError::Malformed(_) | DecodeError::InvalidId { .. }
            ),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn invalid_ids_are_rejected_with_the_field() {
    let mut bad = FIXTURE_V1.to_vec();
    bad[2] = b'/';
    assert!(matches!(
        decode(&bad),
        Err(DecodeError::InvalidId { field: "site", .. })
    ));
}

#[test]
fn too_many_probes_is_refused_both_ways() {
    let mut r = fixture_report();
    r.probes = vec![r.probes[0].clone(); MAX_PROBES + 1];
    assert!(encode(&r).is_err());
}

#[test]
fn ten_target_report_fits_the_400_byte_budget() {
    let r = ten_target_report().on_wire_grid();
    let postcard = encode(&r).unwrap();
    let json = serde_json::to_vec(&r).unwrap();
    println!(
        "10-target report: postcard {} bytes, JSON {} bytes ({:.1}x)",
        postcard.len(),
        json.len(),
        json.len() as f64 / postcard.len() as f64
    );
    assert!(postcard.len() <= 400, "postcard {} bytes", postcard.len());
    assert!(json.len() > 3 * postcard.len());
    assert_eq!(decode(&postcard).unwrap(), r);
}

#[test]
fn grid_rounding_is_idempotent_and_keeps_json_and_postcard_in_step() {
    let r = ten_target_report();
    let g = r.on_wire_grid();
    assert_eq!(g.on_wire_grid(), g);
    assert_eq!(decode(&encode(&r).unwrap()).unwrap(), g);
}
