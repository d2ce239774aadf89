//! Every message's topic is parsed before anything else: `Topics::parse` never
//! panics, and what it accepts builds back to the same string.
#![no_main]

use faultline_shared::Topics;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let topics = Topics::default();
    if let Ok(t) = topics.parse(s) {
        assert_eq!(topics.build(&t), s);
    }
});
