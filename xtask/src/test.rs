//! `cargo xtask test`: every test tier, in the order that fails fastest.
//!
//! 1. set-up (see `setup`) and the lints: `cargo fmt --check` (`rustfmt.toml`), then
//!    clippy with `-D warnings` on every crate (`cargo xtask clippy`);
//! 2. host unit tests of every userspace crate, and those a plain `cargo test` runs
//!    (the default members') once more as an unprivileged user (`nobody`): they need
//!    no privilege;
//! 3. the privileged suite (`tests/`): BPF_PROG_TEST_RUN against the real object, and
//!    the `edge-filter` binary end to end on a perimeter topology of network
//!    namespaces, one test at a time because the kernel is shared.
//!
//! 4. the differential run: 20,000 generated frames of the vendor's tables and 20,000
//!    of random rule tables through the kernel program and the reference model;
//! 5. the benchmark's quick round (`cargo xtask bench --quick`): every measured path
//!    and receiver, verdicts checked, figures not judged;
//! 6. the kernel matrix: Debian's 5.10, 6.1 and 6.12 booted with qemu, and the host.
//!
//! The privileged suite needs root; without it this fails, it does not skip. The last
//! line printed is the summary of all tiers.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};

use crate::setup;

/// Totals of libtest's `test result:` lines.
#[derive(Default, Debug)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next())
                && let Ok(n) = n.parse::<u64>()
            {
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
    }
}

/// The test executables a plain `cargo test` runs (the default members'), built, then
/// run as `nobody` (uid and gid 65534, no supplementary groups): a user without root
/// gets a passing `cargo test`.
fn unprivileged() -> anyhow::Result<Tally> {
    println!("== unprivileged: the tests of a plain `cargo test`, as nobody");
    let out = Command::new(env!("CARGO")).args(["test", "--no-run", "--message-format=json"]).stderr(Stdio::inherit()).output()?;
    ensure!(out.status.success(), "cargo test --no-run failed");
    // Copies in a directory of their own that nobody may read: the checkout may sit
    // where only root can (under /root).
    let dir = std::env::temp_dir().join(format!("ef-unprivileged-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let result = (|| -> anyhow::Result<(Tally, usize)> {
        let mut tally = Tally::default();
        let mut ran = 0;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let Some(exe) = msg["executable"].as_str().filter(|_| msg["reason"] == "compiler-artifact" && msg["profile"]["test"] == true) else {
                continue;
            };
            let copy = dir.join(std::path::Path::new(exe).file_name().context("executable without a name")?);
            std::fs::copy(exe, &copy)?;
            let run = Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&copy)
                .current_dir(&dir)
                .output()
                .context("start setpriv")?;
            let text = String::from_utf8_lossy(&run.stdout);
            for l in text.lines() {
                tally.add_line(l);
            }
            ensure!(run.status.success(), "{exe} as nobody failed ({}):\n{text}{}", run.status, String::from_utf8_lossy(&run.stderr));
            ran += 1;
        }
        Ok((tally, ran))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let (tally, ran) = result?;
    ensure!(ran > 0 && tally.passed > 0, "no unit test ran as nobody");
    println!("test result: ok. {} passed; {} failed; {} ignored ({ran} test executables, as nobody)", tally.passed, tally.failed, tally.ignored);
    Ok(tally)
}

/// Run `cargo test` with these arguments, echoing its output and counting results.
fn cargo_test(tier: &str, args: &[&str]) -> anyhow::Result<Tally> {
    println!("== {tier}: cargo test {}", args.join(" "));
    let mut child = Command::new(env!("CARGO")).arg("test").args(args).stdout(Stdio::piped()).spawn().context("start cargo test")?;
    let mut tally = Tally::default();
    for line in BufReader::new(child.stdout.take().context("cargo stdout")?).lines() {
        let line = line?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{tier}: cargo test failed ({status}); {} passed, {} failed", tally.passed, tally.failed);
    }
    ensure!(tally.passed > 0, "{tier}: no test ran");
    Ok(tally)
}

/// The pid of the test process that named a network namespace
/// (`ef-<what>-<pid>-<n>`, as `edge_filter_tests::topology::unique` names them).
fn namer(name: &str) -> Option<u32> {
    let mut fields = name.strip_prefix("ef-")?.rsplit('-');
    let (_n, pid) = (fields.next()?.parse::<u32>().ok()?, fields.next()?.parse().ok()?);
    fields.next().filter(|what| !what.is_empty())?;
    Some(pid)
}

/// Remove the network namespaces a killed run of the tests left: a process ended by
/// SIGKILL removes nothing of its own, and its namespaces would keep their veths
/// and programs. Only namespaces whose naming process is gone, and only this
/// machine's (`ip netns`): pins under `/sys/fs/bpf`, which other machines on the same
/// kernel share, may be a live run's elsewhere and are left alone.
fn reap_namespaces() -> anyhow::Result<()> {
    let out = Command::new("ip").args(["netns", "list"]).output().context("ip netns list")?;
    for name in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = namer(name) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        println!("removing network namespace {name}, left by test process {pid}, which is gone");
        setup::status(Command::new("ip").args(["netns", "del", name]))?;
    }
    Ok(())
}

pub(crate) fn run() -> anyhow::Result<()> {
    setup::run()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the privileged suite loads BPF programs and creates network namespaces: run as root");
    }
    println!("== lints");
    setup::status(Command::new(env!("CARGO")).args(["fmt", "--all", "--check"])).context("cargo fmt --check: run `cargo fmt --all`")?;
    clippy()?;
    let unit = cargo_test(
        "unit",
        &["--workspace", "--exclude", "edge-filter-ebpf", "--exclude", "edge-filter-test-ebpf", "--exclude", "edge-filter-tests"],
    )?;
    let nobody = unprivileged()?;
    // The end-to-end tests run the real binary.
    setup::status(Command::new(env!("CARGO")).args(["build", "--package", "edge-filter", "--bin", "edge-filter"]))?;
    reap_namespaces()?;
    let privileged = cargo_test("privileged", &["--package", "edge-filter-tests", "--", "--test-threads=1"])?;
    fuzz(FUZZ_PACKETS, 1)?;
    bench(true, None)?;
    println!("== kernel matrix");
    crate::kernels::run()?;
    let total = unit.passed + privileged.passed;
    println!(
        "test result: ok. {total} passed; 0 failed; {} ignored (unit {}, {} of them again as nobody; privileged {}; differential {FUZZ_PACKETS} frames of the vendor tables and {FUZZ_PACKETS} of random ones, 0 disagreements; bench --quick verdicts ok; kernels 5.10, 6.1, 6.12 and the host pass)",
        unit.ignored + privileged.ignored,
        unit.passed,
        nobody.passed,
        privileged.passed
    );
    Ok(())
}

/// The benchmark (`bench/src/bin/bench.rs`). The full run is a release build and
/// writes `bench/results/` and `docs/benchmark.md`; the quick round checks the harness
/// and the verdicts and writes under `target/bench-quick/`.
pub(crate) fn bench(quick: bool, rounds: Option<usize>) -> anyhow::Result<()> {
    println!("== benchmark{}", if quick { " (quick)" } else { "" });
    // The scrape figure runs the daemon, found beside the benchmark's binary.
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "--package", "edge-filter", "--bin", "edge-filter"]);
    if !quick {
        build.arg("--release");
    }
    setup::status(&mut build)?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["run", "--quiet", "--package", "edge-filter-bench", "--bin", "bench"]);
    if !quick {
        cmd.arg("--release");
    }
    cmd.arg("--");
    if quick {
        cmd.args(["--quick", "--results", "target/bench-quick/results", "--docs", "target/bench-quick/docs"]);
    }
    if let Some(r) = rounds {
        cmd.args(["--rounds", &r.to_string()]);
    }
    setup::status(&mut cmd)
}

/// Frames of each group (the vendor's tables, random tables) of the differential run
/// in `cargo xtask test`.
const FUZZ_PACKETS: u64 = 20_000;

/// The differential run (`tests/src/bin/fuzz.rs`).
pub(crate) fn fuzz(packets: u64, seed: u64) -> anyhow::Result<()> {
    println!("== differential: {packets} frames, seed {seed}");
    setup::status(Command::new(env!("CARGO")).args(["run", "--quiet", "--package", "edge-filter-tests", "--bin", "fuzz", "--"]).args([
        "--packets",
        &packets.to_string(),
        "--seed",
        &seed.to_string(),
    ]))
}

pub(crate) fn clippy() -> anyhow::Result<()> {
    setup::status(Command::new(env!("CARGO")).args([
        "clippy",
        "--workspace",
        "--exclude",
        "edge-filter-ebpf",
        "--exclude",
        "edge-filter-test-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    setup::status(
        Command::new("rustup")
            .args(["run", "nightly", "cargo", "clippy", "--package", "edge-filter-ebpf", "--package", "edge-filter-test-ebpf"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--release"])
            .args(["--", "-D", "warnings"])
            .env("CARGO_ENCODED_RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\""),
    )
}

/// libFuzzer on the operator-input parsers (`edge-filter/fuzz`), installing
/// cargo-fuzz when it is missing.
pub(crate) fn fuzz_parsers(seconds: u64) -> anyhow::Result<()> {
    let have = Command::new(env!("CARGO")).args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !have {
        println!("setup: installing cargo-fuzz");
        setup::status(Command::new(env!("CARGO")).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    for target in ["config", "addr"] {
        println!("== cargo fuzz run {target} for {seconds} s");
        setup::status(
            Command::new("cargo")
                .args(["+nightly", "fuzz", "run", target, "--", &format!("-max_total_time={seconds}")])
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../edge-filter")),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Tally, namer};

    #[test]
    fn a_test_namespace_names_its_process() {
        assert_eq!(namer("ef-host-29867-6"), Some(29867));
        assert_eq!(namer("ef-n3-partner-12-0"), Some(12));
        for other in ["ef-host", "ef--12-0", "host-12-0", "ef-host-x-0", "ef-host-12-", "ef-demo-edge"] {
            assert_eq!(namer(other), None, "{other}");
        }
    }

    #[test]
    fn tally_sums_libtest_result_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 18 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 8.23s");
        t.add_line("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add_line("running 5 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (21, 2, 1));
    }
}
