//! Orchestration for edge-filter: `cargo xtask <command>`.
//!
//! - `setup`: the toolchain pieces and Debian packages the build and tests need,
//!   installed when missing; quick when everything is there;
//! - `test`: setup, the host unit tests, then the privileged suite, one test at a time;
//! - `clippy`: lints for the userspace crates and the BPF target;
//! - `demo`: the policy enforced in network namespaces with real connections;
//! - `fuzz`: the differential run of the kernel program against the reference model;
//! - `fuzz-parsers`: libFuzzer on the config and address parsers;
//! - `kernels`: the kernel matrix, Debian's kernels booted with qemu.
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
    /// Lint the userspace crates and the eBPF crate for the BPF target.
    Clippy,
    /// Differential test: generated frames through the kernel program and the
    /// reference model, failing on the first disagreement (needs root).
    Fuzz {
        /// Frames to compare.
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
    /// The policy enforced in a sandbox of network namespaces, on the built-in
    /// defaults, with real TCP connections (needs root).
    Demo {
        /// Leave the namespaces and the daemon up, and print how to explore them.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Test => test::run(),
        Command::Clippy => setup::run().and_then(|()| test::clippy()),
        Command::Kernels => setup::run().and_then(|()| kernels::run()),
        Command::Demo { keep } => setup::run().and_then(|()| demo::run(keep)),
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
