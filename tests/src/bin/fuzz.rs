//! `cargo xtask fuzz --packets N [--seed S]`: the differential run (see
//! `edge_filter_tests::fuzz`). Exits 1 on the first disagreement, after writing its
//! minimal reproducer under `tests/fixtures/`.

use std::{path::PathBuf, process::ExitCode, time::Instant};

use clap::Parser;

/// Generated frames through the kernel program and the reference model.
#[derive(Parser)]
struct Args {
    /// Frames to compare.
    #[arg(long, default_value_t = 20_000)]
    packets: u64,
    /// Seed of the generator; the same seed replays the same frames.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where reproducers are written.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"))]
    fixtures: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let start = Instant::now();
    match edge_filter_tests::fuzz::run(args.seed, args.packets, Some(&args.fixtures)) {
        Ok(Ok(t)) => {
            println!("fuzz: verdicts: {t}");
            println!("fuzz: {} frames, seed {}, 0 disagreements ({:.1} s)", t.frames, args.seed, start.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Ok(Err(d)) => {
            eprintln!("fuzz: seed {}: {d}", args.seed);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fuzz: {e:#}");
            ExitCode::FAILURE
        }
    }
}
