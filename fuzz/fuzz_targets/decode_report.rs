//! Whatever bytes a stranger publishes on a report topic, `decode` returns an error or
//! a report that re-encodes and decodes to itself; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = faultline_shared::decode(data) {
        let bytes = faultline_shared::encode(&report).expect("a decoded report re-encodes");
        let again = faultline_shared::decode(&bytes).expect("re-encoded report decodes");
        assert_eq!(again, report);
    }
});
