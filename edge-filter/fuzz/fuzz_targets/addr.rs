//! The address, prefix and set arguments of `edge-filter addr` on arbitrary input:
//! parsed or refused, never a panic; what parses prints back to itself.
#![no_main]

use edge_filter::{AddressSets, EdgeSet, Prefix};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = text.parse::<EdgeSet>();
    let mut sets = AddressSets::default();
    for (i, word) in text.split_whitespace().enumerate() {
        if let Ok(p) = word.parse::<Prefix>() {
            assert_eq!(p.to_string().parse::<Prefix>(), Ok(p), "{word}");
            let set = if i % 2 == 0 { EdgeSet::AccessEdge } else { EdgeSet::InternalEdge };
            let _ = sets.insert(set, p);
        }
    }
});
