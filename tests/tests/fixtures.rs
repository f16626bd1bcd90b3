//! Every disagreement the differential run found, replayed: the kernel must now give
//! the model's verdicts (`tests/fixtures/*.case`, written by `cargo xtask fuzz`). Each
//! fixture names its policy, which fixes the policy and its address sets
//! (`fuzz::policy`); its frames run in order on a fresh load, and each must move
//! exactly its verdict's counter and, when it opens a row, that row's hit counter.
//!
//! Privileged: run as root.

use edge_filter::report::verdict_name;
use edge_filter_common::verdict;
use edge_filter_tests::{Case, Harness, fuzz};

#[test]
fn every_recorded_disagreement_now_agrees() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|e| e == "case"));
    paths.sort();
    // A missing or emptied directory must not pass as "every fixture agrees".
    assert!(!paths.is_empty(), "no fixtures (*.case) in {}", dir.display());
    let mut failures = Vec::new();
    for path in &paths {
        let f = fuzz::read_fixture(path).unwrap_or_else(|e| panic!("{e:#}"));
        let (policy, sets) = fuzz::policy(&f.policy).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let h = Harness::with_sets(policy.clone(), &sets).unwrap_or_else(|e| panic!("{e:#}"));
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let steps = f.steps.into_iter().chain([(f.nic, f.verdict, f.frame)]);
        let cases: Vec<Case> = steps
            .enumerate()
            .map(|(i, (nic, v, frame))| {
                let rule = (v == verdict::PASS_RULE).then(|| fuzz::expected_rule(&policy, &sets, &frame, nic)).flatten();
                let mut case = Case::new(format!("{file} frame {i} ({})", verdict_name(v)), nic, frame, v);
                case.rule = rule;
                case
            })
            .collect();
        if let Err(e) = h.check_all(&cases) {
            failures.push(format!("{e:#}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} fixtures:\n{}", failures.len(), paths.len(), failures.join("\n"));
}
