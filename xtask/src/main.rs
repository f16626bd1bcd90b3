//! Orchestration for edge-filter: `cargo xtask <command>`.
//!
//! - `setup`: the toolchain pieces and Debian packages the build and tests need,
//!   installed when missing; quick when everything is there;
//! - `test`: setup, the host unit tests, then the privileged suite, one test at a time;
//! - `clippy`: lints for the userspace crates and the BPF target;
//! - `demo`: the policy enforced in network namespaces with real connections;
//! - `fuzz`: the differential run of the kernel program against the reference model;
//! - `fuzz-parsers`: libFuzzer on the config and address parsers;
//! - `kernels`: the kernel matrix, Debian's kernels booted with qemu;
//! - `bench`: edge-filter measured beside the floor, xdp-filter and nftables.
//!
//! Nothing here is needed at run time; it only drives cargo, rustup and apt.

mod demo;
mod kernels;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, set-up and test tasks for edge-filter")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and the tests need: rust-src for nightly, bpf-linker
    /// built against nightly's LLVM, Debian packages.
    Setup,
    /// Run set-up, the unit tests and the privileged BPF suite (needs root).
    Test,
    /// Lint the userspace crates and the eBPF crates for the BPF target.
    Clippy,
    /// Differential test: generated frames through the kernel program and the
    /// reference model, under the vendor's tables and random rule tables, failing on
    /// the first disagreement (needs root).
    Fuzz {
        /// Frames to compare per group (vendor tables, random tables).
        #[arg(long, default_value_t = 20_000)]
        packets: u64,
        /// Generator seed; the same seed replays the same frames.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// libFuzzer on the parsers of operator input (config, addresses), via cargo fuzz.
    FuzzParsers {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Boot Debian's 5.10, 6.1 and 6.12 kernels with qemu and check the programs in
    /// each, and on this machine's kernel (needs root).
    Kernels,
    /// Measure edge-filter beside the floor, xdp-filter and nftables: cost per
    /// verdict path, growth with the tables, veth throughput (needs root). Writes
    /// bench/results/*.json and docs/benchmark.md.
    Bench {
        /// One short round that checks the harness and every verdict (for CI).
        #[arg(long)]
        quick: bool,
        /// Rounds to interleave (default 5; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
    },
    /// The policy enforced in a sandbox of network namespaces, on the built-in
    /// defaults, with real TCP connections (needs root).
    Demo {
        /// Leave the namespaces and the daemon up, and print how to explore them.
        #[arg(long)]
        keep: bool,
        /// A firewall pair under keepalived instead: one connection kept through a
        /// failover and a failback.
        #[arg(long)]
        pair: bool,
    },
}

/// The tools the tests and the benchmark run (`ip`, `nft`, `ethtool`) live in the
/// sbin directories, which a minimal root environment may leave off `PATH`.
fn sbin_on_path() {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<&str> = path.split(':').filter(|d| !d.is_empty()).collect();
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe { std::env::set_var("PATH", dirs.join(":")) };
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    sbin_on_path();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Test => test::run(),
        Command::Clippy => setup::run().and_then(|()| test::clippy()),
        Command::Kernels => setup::run().and_then(|()| kernels::run()),
        Command::Bench { quick, rounds } => setup::run().and_then(|()| test::bench(quick, rounds)),
        Command::Demo { keep, pair } => setup::run().and_then(|()| demo::run(keep, pair)),
        Command::Fuzz { packets, seed } => setup::run().and_then(|()| test::fuzz(packets, seed)),
        Command::FuzzParsers { seconds } => setup::run().and_then(|()| test::fuzz_parsers(seconds)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
