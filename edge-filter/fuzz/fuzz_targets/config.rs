//! The configuration parser on arbitrary input: it returns a config or an error,
//! never panics, and every error is one line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = edge_filter::Config::parse(text, "fuzz.toml") {
        assert!(!e.to_string().contains('\n'), "a multi-line error: {e}");
    }
});
