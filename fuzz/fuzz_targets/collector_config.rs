//! `collector.toml` from anyone's editor: `Config::parse` returns a config or an error
//! naming a line inside the text; it never panics. (Files the text names are looked
//! up under a folder that does not exist; absolute paths reach only regular files.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = faultline_collector::config::Config::parse(text, "/nonexistent-fuzz/c.toml") {
        if let Some(line) = e.line {
            assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "{e}");
        }
    }
});
