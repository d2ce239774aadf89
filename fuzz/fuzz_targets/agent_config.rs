//! The central config an agent takes from the broker: decoding and validating it
//! never panics, and what validates survives a round trip.
#![no_main]

use faultline_shared::AgentConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = AgentConfig::version_of(data);
    if let Ok(c) = AgentConfig::decode(data) {
        if c.validate().is_ok() {
            let again = AgentConfig::decode(&c.encode()).expect("own encoding decodes");
            assert!(again.validate().is_ok());
        }
    }
});
