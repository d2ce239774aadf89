//! Every parser of the agent's wire codecs (SIP, STUN, DNS, STAMP, ICMP) on the same
//! arbitrary bytes: what a peer — or anyone on the path — can send the agent.
#![no_main]

use faultline_agent::wire::{dns, icmp, sip, stamp, stun};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sip::Response::parse(data);
    if let Ok(p) = stun::Packet::new_checked(data) {
        let _ = stun::Response::parse(&p);
    }
    // The id and name must match the answer for it to be read further: take the id
    // from the bytes so the fuzzer reaches the record parsing.
    let id = data.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    for rtype in [dns::RecordType::A, dns::RecordType::Aaaa, dns::RecordType::Srv] {
        let query = dns::Query::new(id, "_sip._udp.voip.example", rtype).unwrap();
        let _ = dns::Answer::parse(data, &query);
    }
    if let Ok(p) = stamp::Packet::new_checked(data) {
        let _ = stamp::SenderRepr::parse(&p);
        let _ = stamp::ReflectorRepr::parse(&p);
    }
    for family in [icmp::Family::V4, icmp::Family::V6] {
        if let Ok(p) = icmp::Packet::new_checked(data) {
            let _ = icmp::EchoRepr::parse(family, &p);
        }
    }
    if let Some(inner) = icmp::ipv4_payload(data) {
        let _ = icmp::Packet::new_checked(inner);
    }
});
