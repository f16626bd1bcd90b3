//! `bench`: the benchmark (`cargo xtask bench` builds and runs it). Needs root.
//!
//! Cost per verdict path against the floor and xdp-filter, growth with the tables,
//! veth throughput against the floor, xdp-filter and nftables; see
//! `edge_filter_bench`. Prints the table, writes the JSON record and the page.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use edge_filter_bench::{self as bench, Machine, Plan, report::Results};

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
    /// Draw the page again from a recorded run (bench/results/*.json); measure nothing.
    #[arg(long, value_name = "JSON")]
    render: Option<PathBuf>,
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
    /// What a /metrics scrape costs the daemon as the flow table grows.
    Scrape,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut plan = if args.quick { Plan::QUICK } else { Plan::FULL };
    if let Some(r) = args.rounds {
        anyhow::ensure!(r >= 1, "--rounds must be at least 1");
        plan.rounds = r;
    }
    if let Some(path) = &args.render {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let results = Results::from_json(&serde_json::from_str(&text)?).with_context(|| format!("{} is not a record", path.display()))?;
        print!("{}", results.table());
        results.write_page(&args.docs)?;
        println!("\nwrote {}", args.docs.join("benchmark.md").display());
        return Ok(());
    }
    let wants = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let mut results = Results {
        machine: Machine::read(),
        plan,
        quick: args.quick,
        costs: Vec::new(),
        lookups: Vec::new(),
        growth: Vec::new(),
        rates: Vec::new(),
        scrapes: Vec::new(),
    };
    // Each part's figures are printed as soon as they are taken, so a later failure
    // loses nothing that was measured.
    if wants(Part::Cost) {
        eprintln!("bench: cost per path ({} rounds, repeat {})", plan.rounds, plan.repeat);
        results.costs = bench::cost::paths_cost(&plan).context("cost per path")?;
        results.lookups = bench::cost::lookup_cost(&plan).context("the floor of a tracked flow")?;
        eprint!("{}", results.table());
    }
    if wants(Part::Growth) {
        eprintln!("bench: growth of the address sets");
        results.growth = bench::cost::set_growth(&plan).context("address-set growth")?;
        eprintln!("bench: growth of the flow table");
        results.growth.extend(bench::cost::flow_growth(&plan).context("flow-table growth")?);
        eprintln!("bench: growth of the rule table");
        results.growth.extend(bench::cost::rule_growth(&plan).context("rule-table growth")?);
        eprint!("{}", results.table());
    }
    if wants(Part::Veth) {
        eprintln!("bench: veth throughput ({} frames per figure)", plan.frames);
        results.rates = bench::throughput::rates(&plan).context("veth throughput")?;
    }
    if wants(Part::Scrape) {
        eprintln!("bench: /metrics scrape at {:?} flows", plan.scrape_sizes);
        results.scrapes = bench::scrape::scrape_cost(&plan).context("scrape cost")?;
    }
    print!("{}", results.table());
    let json = results.write(&args.results, &args.docs)?;
    println!("\nwrote {} and {}", json.display(), args.docs.join("benchmark.md").display());
    Ok(())
}
