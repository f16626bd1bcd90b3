//! Every disagreement the differential run found, replayed: the kernel must now give
//! the model's verdict (`tests/fixtures/*.case`, written by `cargo xtask fuzz`).
//!
//! Privileged: run as root.

use edge_filter_tests::{Case, Harness, fuzz};

#[test]
fn every_recorded_disagreement_now_agrees() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|e| e == "case"));
    paths.sort();
    let mut failures = Vec::new();
    for path in &paths {
        let f = fuzz::read_fixture(path).unwrap_or_else(|e| panic!("{e:#}"));
        let h = Harness::new(fuzz::policy(&f.policy).unwrap()).unwrap_or_else(|e| panic!("{e:#}"));
        let case = Case::new(path.file_name().unwrap().to_string_lossy(), f.nic, f.frame, f.verdict);
        if let Err(e) = h.check(&case) {
            failures.push(format!("{e:#}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} fixtures:\n{}", failures.len(), paths.len(), failures.join("\n"));
}
