//! `cargo xtask fuzz --packets N [--seed S]`: the differential run (see
//! `edge_filter_tests::fuzz`). `--packets N` is per group: N frames of the
//! vendor-table policies and N of random ones, 2N in all. Prints a tally per policy
//! as it goes and the totals per group; exits 1 on a disagreement, after writing its
//! reproducer under `tests/fixtures/`.

use std::{path::PathBuf, process::ExitCode, time::Instant};

use clap::Parser;
use edge_filter_tests::fuzz::{self, Group, PolicyRun, RunOptions};

/// Generated frames through the kernel program and the reference model.
#[derive(Parser)]
struct Args {
    /// Frames to compare per group: N of the vendor-table policies and N of random
    /// ones.
    #[arg(long, default_value_t = 20_000)]
    packets: u64,
    /// Seed of the generator and of the random policies; the same seed replays the
    /// same policies and frames.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where reproducers are written.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"))]
    fixtures: PathBuf,
    /// Go on with the next policy after a disagreement (to collect all of a seed's).
    #[arg(long)]
    keep_going: bool,
    /// Print, for every kind of frame the generator made, how many got each verdict.
    #[arg(long)]
    kinds: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let start = Instant::now();
    let opts = RunOptions { seed: args.seed, packets: args.packets, fixtures: Some(args.fixtures), keep_going: args.keep_going };
    let mut print = |r: &PolicyRun| {
        let (flows, handshakes, udp) = r.tables;
        println!(
            "fuzz: policy {} ({} rows): {} frames; tables at the end: {flows} flows, {handshakes} handshakes, {udp} udp",
            r.name, r.rows, r.tally.frames
        );
        println!("fuzz:   {}", r.tally);
        if let Some(d) = &r.disagreement {
            eprintln!("fuzz: {d}");
        }
    };
    let runs = match fuzz::run(&opts, &mut print) {
        Ok(runs) => runs,
        Err(e) => {
            eprintln!("fuzz: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if args.kinds {
        let mut all = std::collections::BTreeMap::<&(String, String), u64>::new();
        for r in &runs {
            for (k, n) in &r.tally.by_kind {
                *all.entry(k).or_default() += n;
            }
        }
        for ((kind, verdict), n) in all {
            println!("fuzz: kind {kind:<40} {verdict:<22} {n}");
        }
    }
    let frames = |g: Group| runs.iter().filter(|r| r.group == g).map(|r| r.tally.frames).sum::<u64>();
    let policies = |g: Group| runs.iter().filter(|r| r.group == g).count();
    let disagreements = runs.iter().filter(|r| r.disagreement.is_some()).count();
    println!(
        "fuzz: vendor tables {} frames ({} policies), random tables {} frames ({} policies), seed {}, {disagreements} disagreements ({:.1} s)",
        frames(Group::Vendor),
        policies(Group::Vendor),
        frames(Group::Random),
        policies(Group::Random),
        args.seed,
        start.elapsed().as_secs_f64()
    );
    if disagreements == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
