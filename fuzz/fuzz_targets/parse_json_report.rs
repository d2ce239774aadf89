//! The JSON report topic takes text from any tool: parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<faultline_shared::Report>(data);
});
