//! `bench`: the benchmark (`cargo xtask bench` builds and runs it). Needs root.
//!
//! Cost per verdict path against the floor and xdp-filter, growth with the tables,
//! veth throughput against the floor, xdp-filter and nftables; see
//! `edge_filter_tests::bench`. Prints the table, writes the JSON record and the page.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use edge_filter_tests::bench::{self, Machine, Plan, report::Results};

#[derive(Parser)]
#[command(about = "Measure edge-filter side by side with the floor, xdp-filter and nftables")]
struct Args {
    /// One short round: checks the harness and every verdict; the figures mean little.
    #[arg(long)]
    quick: bool,
    /// Rounds (default: 5, or 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Where the JSON record goes.
    #[arg(long, default_value = "bench/results")]
    results: PathBuf,
    /// Where benchmark.md and its charts go.
    #[arg(long, default_value = "docs")]
    docs: PathBuf,
    /// Parts to measure (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

/// The parts of the benchmark.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Cost per verdict path.
    Cost,
    /// Cost as the address sets and the flow table grow.
    Growth,
    /// veth throughput.
    Veth,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut plan = if args.quick { Plan::QUICK } else { Plan::FULL };
    if let Some(r) = args.rounds {
        anyhow::ensure!(r >= 1, "--rounds must be at least 1");
        plan.rounds = r;
    }
    let wants = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let machine = Machine::read();
    let mut costs = Vec::new();
    if wants(Part::Cost) {
        eprintln!("bench: cost per path ({} rounds, repeat {})", plan.rounds, plan.repeat);
        costs = bench::cost::paths_cost(&plan).context("cost per path")?;
    }
    let mut growth = Vec::new();
    if wants(Part::Growth) {
        eprintln!("bench: growth of the address sets");
        growth = bench::cost::set_growth(&plan).context("address-set growth")?;
        eprintln!("bench: growth of the flow table");
        growth.extend(bench::cost::flow_growth(&plan).context("flow-table growth")?);
    }
    let mut rates = Vec::new();
    if wants(Part::Veth) {
        eprintln!("bench: veth throughput ({} frames per figure)", plan.frames);
        rates = bench::throughput::rates(&plan).context("veth throughput")?;
    }
    let results = Results { machine, plan, quick: args.quick, costs, growth, rates };
    print!("{}", results.table());
    let json = results.write(&args.results, &args.docs)?;
    println!("\nwrote {} and {}", json.display(), args.docs.join("benchmark.md").display());
    Ok(())
}
