//! Builders shared by the shared crate's integration tests.

use faultline_shared::{HostHealth, Id, Kind, Layer, ProbeResult, Report, RttStats};

pub fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

fn probe(target: &str, layer: Layer, provider: Option<&str>, kind: Kind) -> ProbeResult {
    ProbeResult::new(id(target), layer, provider.map(id), kind)
}

fn rtt(min: f64, p50: f64, avg: f64, p95: f64, max: f64) -> Option<RttStats> {
    Some(RttStats {
        min,
        p50,
        avg,
        p95,
        max,
    })
}

/// A realistic report from a site with ten targets: gateway, ISP hop, resolver,
/// internet anchor, and two providers each probed by STAMP, SIP and STUN.
pub fn ten_target_report() -> Report {
    let mut probes = Vec::new();
    let mut gw = probe("gw", Layer::Lan, None, Kind::Icmp);
    (gw.sent, gw.received) = (10, 10);
    gw.rtt_ms = rtt(0.41, 0.52, 0.55, 0.83, 1.12);
    gw.jitter_ms = Some(0.08);
    probes.push(gw);
    let mut hop = probe("isp-hop", Layer::Isp, None, Kind::Icmp);
    (hop.sent, hop.received) = (10, 10);
    hop.rtt_ms = rtt(7.9, 8.4, 8.6, 10.2, 12.7);
    hop.jitter_ms = Some(0.6);
    probes.push(hop);
    let mut dns = probe("isp-dns", Layer::Isp, None, Kind::Dns);
    (dns.sent, dns.received) = (1, 1);
    dns.rtt_ms = rtt(11.3, 11.3, 11.3, 11.3, 11.3);
    probes.push(dns);
    let mut anchor = probe("anchor", Layer::Internet, None, Kind::Icmp);
    (anchor.sent, anchor.received) = (10, 9);
    anchor.rtt_ms = rtt(14.2, 15.1, 15.6, 18.9, 22.4);
    anchor.jitter_ms = Some(1.3);
    probes.push(anchor);
    for (prov, base) in [("voipco", 21.0), ("voipco2", 34.0)] {
        let mut media = probe(
            &format!("{prov}-media"),
            Layer::Provider,
            Some(prov),
            Kind::Stamp,
        );
        (media.sent, media.received) = (500, 497);
        media.rtt_ms = rtt(base, base + 1.1, base + 1.4, base + 4.0, base + 10.0);
        media.jitter_ms = Some(2.1);
        media.max_burst = Some(2);
        media.mos = Some(4.32);
        probes.push(media);
        let mut sip = probe(
            &format!("{prov}-sip"),
            Layer::Provider,
            Some(prov),
            Kind::Sip,
        );
        (sip.sent, sip.received) = (1, 1);
        sip.rtt_ms = rtt(base + 2.0, base + 2.0, base + 2.0, base + 2.0, base + 2.0);
        probes.push(sip);
        let mut stun = probe(
            &format!("{prov}-stun"),
            Layer::Provider,
            Some(prov),
            Kind::Stun,
        );
        (stun.sent, stun.received) = (1, 0);
        stun.error = Some("timeout".into());
        probes.push(stun);
    }
    Report {
        v: 1,
        site: id("acme-hq"),
        boot: 3_735_928_559,
        seq: 42,
        start_ms: 1_764_201_600_000,
        window_ms: 10_000,
        host: Some(HostHealth {
            cpu_pct: 12.0,
            mem_pct: 41.5,
            load1: 0.2,
        }),
        probes,
    }
}
