//! What a benchmark run leaves behind: the terminal table, the JSON record
//! (`bench/results/`), and `docs/benchmark.md` with its SVG charts, all from the same
//! figures. The targets are checked here, against medians.

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;

use super::{
    Figure, Machine, Plan, Series,
    cost::{Contender, GrowthPoint, LookupCost, PathCost},
    scrape::ScrapePoint,
    throughput::{DROP_RECEIVERS, PASS_RECEIVERS, Rates, Receiver},
};

/// One benchmark run.
pub struct Results {
    pub machine: Machine,
    pub plan: Plan,
    pub quick: bool,
    pub costs: Vec<PathCost>,
    /// The floor of a tracked flow: one kernel hash lookup, per key size.
    pub lookups: Vec<LookupCost>,
    pub growth: Vec<GrowthPoint>,
    pub rates: Vec<Rates>,
    pub scrapes: Vec<ScrapePoint>,
}

/// A target and how the run compares.
pub struct Verdict {
    pub target: &'static str,
    pub measured: String,
    pub met: bool,
    /// Why a missed target is missed (structural reasons, not noise).
    pub why: &'static str,
}

fn fig(c: &PathCost, who: Contender) -> &Figure {
    &c.figures.iter().find(|(k, _)| *k == who).expect("every contender is measured").1
}

fn rate(r: &Rates, who: Receiver) -> Option<&Figure> {
    r.figures.iter().find(|(k, _)| *k == who).map(|(_, f)| f)
}

/// Per-round quotient of two series taken in the same rounds.
fn quotient(a: &Series, b: &Series) -> Series {
    Series(a.0.iter().zip(&b.0).map(|(x, y)| x / y).collect())
}

impl Results {
    /// The targets, each against the measured medians.
    pub fn verdicts(&self) -> Vec<Verdict> {
        let mut out = Vec::new();
        // The path classes: what a verdict needs besides the parse.
        let no_lookup = |p: &str| {
            p.starts_with("pass/essential") || p.starts_with("pass/unpoliced") || p.starts_with("drop/fragment") || p.starts_with("drop/malformed")
        };
        let set_probe = |p: &str| p.starts_with("drop/spoofed") || p.starts_with("drop/no_rule");
        let tracked = |p: &str| p.starts_with("pass/rule") || p.starts_with("pass/reply");
        for (class, limit, target, why) in [
            (
                &no_lookup as &dyn Fn(&str) -> bool,
                1.3,
                "no lookup needed (ARP, unpoliced, malformed, fragment): within 1.3x the floor",
                WHY_NO_LOOKUP,
            ),
            (&set_probe, 2.0, "one set probe (drop/spoofed, drop/no_rule): within 2x the floor", WHY_DROP),
            (&tracked, 3.0, "set and flow lookups (pass/rule, pass/reply): within 3x the floor", WHY_PASS),
        ] {
            let worst = self
                .costs
                .iter()
                .filter(|c| class(&c.path))
                .map(|c| (c.path.as_str(), fig(c, Contender::EdgeFilter).ratio.median()))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((path, r)) = worst {
                let mut measured = format!("worst {r:.2}x ({path})");
                if limit == 3.0 {
                    measured.push_str(&self.lookup_floor());
                }
                out.push(Verdict { target, measured, met: r <= limit, why });
            }
        }
        let all = Contender::XdpFilter(super::rivals::XdpFilterFeatures::All);
        for (drop, limit, target) in [
            (true, 2.0, "every drop path at least 2x cheaper than xdp-filter (all features)"),
            (false, 1.5, "every pass path at least 1.5x cheaper than xdp-filter (all features)"),
        ] {
            let least = self
                .costs
                .iter()
                .filter(|c| c.drop == drop)
                .map(|c| (c.path.as_str(), quotient(&fig(c, all).value, &fig(c, Contender::EdgeFilter).value).median()))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((path, r)) = least {
                out.push(Verdict {
                    target,
                    measured: format!("xdp-filter's cost over edge-filter's: worst {r:.2} ({path})"),
                    met: r >= limit,
                    why: WHY_XDP_FILTER,
                });
            }
        }
        if let Some(drop) = self.rates.iter().find(|r| r.path == "drop")
            && let Some(edge) = rate(drop, Receiver::EdgeFilter)
        {
            let r = edge.ratio.median();
            out.push(Verdict {
                target: "veth drop-path throughput at least 0.9x the XDP_DROP floor",
                measured: format!("{r:.2}x"),
                met: r >= 0.9,
                why: WHY_VETH_FLOOR,
            });
            if let Some(nft) = rate(drop, Receiver::Nft(super::rivals::Nft::NetdevIngress)) {
                let r = quotient(&edge.value, &nft.value).median();
                out.push(Verdict {
                    target: "veth drop-path throughput at least 3x nftables netdev",
                    measured: format!("{r:.2}x"),
                    met: r >= 3.0,
                    why: WHY_NFT,
                });
            }
        }
        if let (Some(empty), Some(largest)) = (self.scrapes.first(), self.scrapes.last()) {
            let slowest = self.scrapes.iter().map(|p| (p.flows, p.scrape_ms.value.median())).max_by(|a, b| a.1.total_cmp(&b.1));
            let ratio = largest.scrape_ms.ratio.median();
            if let Some((flows, ms)) = slowest {
                out.push(Verdict {
                    target: "a /metrics scrape under 10 ms at every flow-table size, and flat (the largest within 1.25x of the empty table)",
                    measured: format!("slowest {ms:.2} ms ({flows} flows); {} flows {ratio:.2}x {} flows", largest.flows, empty.flows),
                    met: ms < 10.0 && ratio <= 1.25,
                    why: WHY_SCRAPE,
                });
            }
        }
        let mut worst: Option<(String, f64)> = None;
        for table in ["sets exact v4", "sets exact v6", "flows v4", "rules"] {
            let of_table: Vec<&GrowthPoint> = self.growth.iter().filter(|p| p.table == table).collect();
            let (Some(small), Some(large)) = (of_table.iter().map(|p| p.size).min(), of_table.iter().map(|p| p.size).max()) else {
                continue;
            };
            for p in of_table.iter().filter(|p| p.size == large) {
                let Some(s) = of_table.iter().find(|q| q.size == small && q.path == p.path) else { continue };
                let growth = p.figure.value.median() / s.figure.value.median() - 1.0;
                if worst.as_ref().is_none_or(|(_, w)| growth > *w) {
                    worst = Some((format!("{table}, {}, {small} -> {large}", p.path), growth));
                }
            }
        }
        if let Some((what, g)) = worst {
            out.push(Verdict {
                target: "cost within 15% from the smallest to the largest sets, flow table and rule table (exact addresses)",
                measured: format!("worst {:+.0}% ({what})", g * 100.0),
                met: g <= 0.15,
                why: WHY_GROWTH,
            });
        }
        out
    }

    /// `; one hash lookup alone: 12-byte key 3.10x, 40-byte key 3.50x`, or nothing in a
    /// record from before the lookup floor was measured.
    fn lookup_floor(&self) -> String {
        if self.lookups.is_empty() {
            return String::new();
        }
        let each: Vec<String> = self.lookups.iter().map(|l| format!("{}-byte key {:.2}x", l.key_bytes, l.figure.ratio.median())).collect();
        format!("; the floor with one hash lookup: {}", each.join(", "))
    }

    /// The terminal table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "edge-filter benchmark, {} UTC, kernel {}, {} ({} CPUs), {} round(s)", m.date, m.kernel, m.cpu, m.cpus, self.plan.rounds);
        let _ = writeln!(s, "\ncost per packet (ns, median of rounds [min..max]; x = ratio to the floor of the round)");
        let _ = writeln!(s, "(insns: edge-filter's instructions executed; calls: helper calls / BPF-to-BPF calls / inlined array lookups)");
        let _ = writeln!(
            s,
            "{:<24} {:>22} {:>14} {:>16} {:>16} {:>6} {:>10}",
            "path", "edge-filter", "floor", "xdp-filter tcp", "xdp-filter all", "insns", "calls"
        );
        for c in &self.costs {
            let e = fig(c, Contender::EdgeFilter);
            let _ = write!(s, "{:<24} {:>7.1} [{:>5.0}..{:<5.0}] {:>4.2}x", c.path, e.value.median(), e.value.min(), e.value.max(), e.ratio.median());
            for who in &Contender::ALL[1..] {
                let f = fig(c, *who);
                let _ = write!(s, " {:>9.1} {:>5.2}x", f.value.median(), f.ratio.median());
            }
            let _ = write!(s, " {:>6} {:>10}", insns(c), calls(c));
            s.push('\n');
        }
        if !self.lookups.is_empty() {
            let _ = writeln!(s, "\nthe floor with one hash lookup that finds its entry (LRU hash, as the flow tables)");
            for l in &self.lookups {
                let f = &l.figure;
                let _ = writeln!(
                    s,
                    "{:<24} {:>7.1} [{:>5.0}..{:<5.0}] {:>4.2}x",
                    format!("{}-byte key", l.key_bytes),
                    f.value.median(),
                    f.value.min(),
                    f.value.max(),
                    f.ratio.median()
                );
            }
        }
        let _ = writeln!(s, "\ngrowth (edge-filter ns per packet, {} keys per figure)", super::cost::KEYS);
        for p in &self.growth {
            let f = &p.figure;
            let _ = writeln!(
                s,
                "{:<20} {:>9} {:<18} {:>7.1} [{:>5.0}..{:<5.0}] {:>4.2}x {:>6} {:>3}",
                p.table,
                p.size,
                p.path,
                f.value.median(),
                f.value.min(),
                f.value.max(),
                f.ratio.median(),
                p.insns,
                p.helper_calls
            );
        }
        let _ = writeln!(s, "\nveth throughput (Mpps, {} frames per figure)", self.plan.frames);
        for r in &self.rates {
            for (who, f) in &r.figures {
                let _ = writeln!(
                    s,
                    "{:<5} {:<24} {:>6.2} [{:>5.2}..{:<5.2}] {:>4.2}x",
                    r.path,
                    who.name(),
                    f.value.median(),
                    f.value.min(),
                    f.value.max(),
                    f.ratio.median()
                );
            }
        }
        if !self.scrapes.is_empty() {
            let _ = writeln!(s, "\n/metrics scrape (ms, median of rounds [min..max]; x = ratio to the empty flow table)");
            for p in &self.scrapes {
                let _ = writeln!(
                    s,
                    "{:>9} flows: scrape {:>6.2} [{:.2}..{:.2}] {:>4.2}x, daemon CPU {:>6.3} ms {:>4.2}x, census pass {:>8.1} ms",
                    p.flows,
                    p.scrape_ms.value.median(),
                    p.scrape_ms.value.min(),
                    p.scrape_ms.value.max(),
                    p.scrape_ms.ratio.median(),
                    p.cpu_ms.value.median(),
                    p.cpu_ms.ratio.median(),
                    p.census_ms.median()
                );
            }
        }
        let _ = writeln!(s, "\ntargets");
        for v in self.verdicts() {
            let _ = writeln!(s, "{:<6} {} : {}", if v.met { "met" } else { "MISSED" }, v.target, v.measured);
        }
        s
    }

    pub fn json(&self) -> serde_json::Value {
        let m = &self.machine;
        serde_json::json!({
            "machine": { "kernel": m.kernel, "cpu": m.cpu, "cpus": m.cpus, "date_utc": m.date },
            "plan": { "rounds": self.plan.rounds, "repeat": self.plan.repeat, "frames": self.plan.frames, "quick": self.quick },
            "cost_ns": self.costs.iter().map(|c| serde_json::json!({
                "path": c.path,
                "drop": c.drop,
                "figures": c.figures.iter().map(|(who, f)| (who.name().to_owned(), f.json())).collect::<serde_json::Map<_, _>>(),
                "rival_actions": c.rival_actions.iter().map(|(who, a)| (who.name().to_owned(), serde_json::json!(a))).collect::<serde_json::Map<_, _>>(),
                "insns": c.insns,
                "calls": { "helper": c.helper_calls, "subprog": c.subprog_calls, "inlined_lookups": c.inlined_lookups },
            })).collect::<Vec<_>>(),
            "lookup_ns": self.lookups.iter().map(|l| serde_json::json!({ "key_bytes": l.key_bytes, "figure": l.figure.json() })).collect::<Vec<_>>(),
            "growth_ns": self.growth.iter().map(|p| serde_json::json!({
                "table": p.table, "size": p.size, "path": p.path, "figure": p.figure.json(),
                "insns": p.insns, "calls": { "helper": p.helper_calls },
            })).collect::<Vec<_>>(),
            "veth_mpps": self.rates.iter().map(|r| serde_json::json!({
                "path": r.path,
                "figures": r.figures.iter().map(|(who, f)| (who.name().to_owned(), f.json())).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
            "scrape_ms": self.scrapes.iter().map(|p| serde_json::json!({
                "flows": p.flows, "scrape": p.scrape_ms.json(), "daemon_cpu": p.cpu_ms.json(), "census": p.census_ms.json(),
            })).collect::<Vec<_>>(),
            "targets": self.verdicts().iter().map(|v| serde_json::json!({
                "target": v.target, "measured": v.measured, "met": v.met,
            })).collect::<Vec<_>>(),
        })
    }

    /// A run back from its JSON record ([`Results::json`]), to draw its page again.
    pub fn from_json(v: &serde_json::Value) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = |v: &serde_json::Value, what: &str| -> anyhow::Result<String> {
            Ok(v.as_str().with_context(|| format!("{what} is not a string"))?.to_owned())
        };
        let num = |v: &serde_json::Value, what: &str| v.as_u64().with_context(|| format!("{what} is not a number"));
        let series = |v: &serde_json::Value| -> anyhow::Result<Series> {
            let samples = v["samples"].as_array().context("samples")?;
            Ok(Series(samples.iter().map(|x| x.as_f64().context("a sample")).collect::<anyhow::Result<_>>()?))
        };
        let figure =
            |v: &serde_json::Value| -> anyhow::Result<Figure> { Ok(Figure { value: series(&v["value"])?, ratio: series(&v["ratio_to_floor"])? }) };
        let m = &v["machine"];
        let machine = Machine {
            kernel: text(&m["kernel"], "kernel")?,
            cpu: text(&m["cpu"], "cpu")?,
            cpus: num(&m["cpus"], "cpus")? as usize,
            date: text(&m["date_utc"], "date")?,
        };
        let quick = v["plan"]["quick"].as_bool().unwrap_or(false);
        let mut plan = if quick { Plan::QUICK } else { Plan::FULL };
        plan.rounds = num(&v["plan"]["rounds"], "rounds")? as usize;
        plan.repeat = num(&v["plan"]["repeat"], "repeat")? as u32;
        plan.frames = num(&v["plan"]["frames"], "frames")? as u32;
        let mut costs = Vec::new();
        for c in v["cost_ns"].as_array().into_iter().flatten() {
            let mut figures = Vec::new();
            for who in Contender::ALL {
                figures.push((who, figure(&c["figures"][who.name()]).with_context(|| who.name())?));
            }
            let rival_actions = Contender::ALL.iter().filter_map(|who| c["rival_actions"][who.name()].as_u64().map(|a| (*who, a as u32))).collect();
            // Records from before the instruction counter have no counts: 0.
            let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
            costs.push(PathCost {
                path: text(&c["path"], "path")?,
                drop: c["drop"].as_bool().unwrap_or(false),
                figures,
                rival_actions,
                insns: count(&c["insns"]),
                helper_calls: count(&c["calls"]["helper"]),
                subprog_calls: count(&c["calls"]["subprog"]),
                inlined_lookups: count(&c["calls"]["inlined_lookups"]),
            });
        }
        // Records from before the lookup floor have none.
        let mut lookups = Vec::new();
        for l in v["lookup_ns"].as_array().into_iter().flatten() {
            lookups.push(LookupCost { key_bytes: num(&l["key_bytes"], "key_bytes")? as usize, figure: figure(&l["figure"])? });
        }
        let mut growth = Vec::new();
        for g in v["growth_ns"].as_array().into_iter().flatten() {
            growth.push(GrowthPoint {
                table: text(&g["table"], "table")?,
                size: num(&g["size"], "size")? as usize,
                path: text(&g["path"], "path")?,
                // Records from before the counts: 0.
                insns: g["insns"].as_u64().unwrap_or(0),
                helper_calls: g["calls"]["helper"].as_u64().unwrap_or(0),
                figure: figure(&g["figure"])?,
            });
        }
        let mut rates = Vec::new();
        for (path, receivers) in [("drop", &DROP_RECEIVERS[..]), ("pass", &PASS_RECEIVERS[..])] {
            let Some(r) = v["veth_mpps"].as_array().into_iter().flatten().find(|r| r["path"] == path) else { continue };
            let figures = receivers.iter().map(|who| Ok((*who, figure(&r["figures"][who.name()])?))).collect::<anyhow::Result<_>>()?;
            rates.push(Rates { path, figures });
        }
        let mut scrapes = Vec::new();
        for p in v["scrape_ms"].as_array().into_iter().flatten() {
            scrapes.push(ScrapePoint {
                flows: num(&p["flows"], "flows")? as usize,
                scrape_ms: figure(&p["scrape"])?,
                cpu_ms: figure(&p["daemon_cpu"])?,
                census_ms: series(&p["census"])?,
            });
        }
        Ok(Self { machine, plan, quick, costs, lookups, growth, rates, scrapes })
    }

    /// Write the JSON record to `results_dir` and the page with its charts to
    /// `docs_dir`; the path of the JSON file.
    pub fn write(&self, results_dir: &Path, docs_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
        std::fs::create_dir_all(results_dir).with_context(|| format!("create {}", results_dir.display()))?;
        let json_path = results_dir.join(self.record_name());
        std::fs::write(&json_path, serde_json::to_string_pretty(&self.json())? + "\n")?;
        self.write_page(docs_dir)?;
        Ok(json_path)
    }

    /// The file name of this run's JSON record.
    pub fn record_name(&self) -> String {
        format!("{}_{}.json", self.machine.date.replace([' ', ':'], "-"), self.machine.kernel)
    }

    /// Write `benchmark.md` and its charts to `docs_dir`.
    pub fn write_page(&self, docs_dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(docs_dir).with_context(|| format!("create {}", docs_dir.display()))?;
        std::fs::write(docs_dir.join("benchmark-cost.svg"), self.cost_chart())?;
        std::fs::write(docs_dir.join("benchmark-growth.svg"), self.growth_chart())?;
        std::fs::write(docs_dir.join("benchmark-veth.svg"), self.rate_chart())?;
        std::fs::write(docs_dir.join("benchmark.md"), self.page(&self.record_name()))?;
        Ok(())
    }

    fn cost_chart(&self) -> String {
        let series: Vec<&str> = Contender::ALL.iter().map(|c| c.name()).collect();
        let groups =
            self.costs.iter().map(|c| (c.path.clone(), Contender::ALL.iter().map(|who| bar(&fig(c, *who).value)).collect())).collect::<Vec<_>>();
        svg::bars("Cost per packet by verdict path (ns, BPF_PROG_TEST_RUN; whiskers: min..max of rounds)", "ns", &series, &groups)
    }

    fn growth_chart(&self) -> String {
        let mut sizes: Vec<usize> = self.growth.iter().map(|p| p.size).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let mut groups: Vec<svg::Group> = Vec::new();
        for p in &self.growth {
            let label = format!("{}: {}", p.table, p.path);
            if groups.iter().any(|(l, _)| *l == label) {
                continue;
            }
            let bars = sizes
                .iter()
                .map(|n| self.growth.iter().find(|q| q.table == p.table && q.path == p.path && q.size == *n).and_then(|q| bar(&q.figure.value)))
                .collect();
            groups.push((label, bars));
        }
        let names: Vec<String> = sizes.iter().map(|n| format!("{n} entries")).collect();
        let series: Vec<&str> = names.iter().map(String::as_str).collect();
        svg::bars("edge-filter cost as the tables grow (ns per packet; 64 keys spread over each table)", "ns", &series, &groups)
    }

    fn rate_chart(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        for r in &self.rates {
            for (who, _) in &r.figures {
                if !names.contains(&who.name()) {
                    names.push(who.name());
                }
            }
        }
        let groups = self
            .rates
            .iter()
            .map(|r| {
                let bars = names.iter().map(|n| r.figures.iter().find(|(w, _)| w.name() == *n).and_then(|(_, f)| bar(&f.value))).collect();
                (format!("{} frames", r.path), bars)
            })
            .collect::<Vec<_>>();
        svg::bars("veth throughput, one CPU for generator and receiver (Mpps)", "Mpps", &names, &groups)
    }

    fn page(&self, json_name: &str) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = write!(
            s,
            "# Benchmark\n\n\
             Measured with `cargo xtask bench` on {date} UTC: kernel {kernel}, {cpu}, {cpus} CPUs, {rounds} rounds. \
             The record of this run is `bench/results/{json_name}`.\n\n\
             Every figure is the median over the rounds, with the spread (min..max), and a ratio to the floor \
             measured in the same round: the floor is an XDP program of this project that returns its action \
             without reading the frame (`tests/ebpf/src/floor.rs`). Variants are interleaved round by \
             round. The machine is shared and has no CPU performance counters, so absolute figures drift \
             between runs; ratios drift much less.\n\n",
            date = m.date,
            kernel = m.kernel,
            cpu = m.cpu,
            cpus = m.cpus,
            rounds = self.plan.rounds
        );
        s.push_str("## Targets\n\n| target | measured | |\n|---|---|---|\n");
        let verdicts = self.verdicts();
        for v in &verdicts {
            let _ = writeln!(s, "| {} | {} | {} |", v.target, v.measured, if v.met { "met" } else { "**missed**" });
        }
        let missed: Vec<&Verdict> = verdicts.iter().filter(|v| !v.met).collect();
        if !missed.is_empty() {
            s.push_str("\n### Why the missed targets are missed\n\n");
            for v in missed {
                let _ = writeln!(s, "- *{}*: {}\n", v.target, v.why);
            }
        }
        let _ = write!(
            s,
            "\n## Cost per packet\n\n\
             BPF_PROG_TEST_RUN with `repeat` {repeat} on the real object, the maps filled as in production (the test \
             plan's address sets, one NIC per role, flows created by real handshakes). The same frames, with the \
             same `xdp_md`, go through the floor and through xdp-filter 1.3.1 (Debian's xdp-tools), loaded without \
             libxdp's dispatcher, default deny with TCP ports 5269 and 23456 allowed: the nearest it comes to the \
             policy, as it judges fields one by one and keeps no state.\n\n\
             Instructions and calls are edge-filter's on each path, counted once per run by running the object's \
             bytecode (before the verifier's rewrites) in an emulator on the same maps, whose XDP action must be the \
             kernel's: the instructions executed, and the calls out of the program as helper calls (all but \
             array lookups) / BPF-to-BPF calls / array lookups, which the verifier inlines. They do not drift.\n\n\
             ![cost per path](benchmark-cost.svg)\n\n\
             | path | edge-filter ns | x floor | floor ns | xdp-filter tcp ns | xdp-filter all ns | insns | calls (helper / BPF-to-BPF / inlined) |\n|---|---|---|---|---|---|---|---|\n",
            repeat = self.plan.repeat
        );
        let all = Contender::XdpFilter(super::rivals::XdpFilterFeatures::All);
        let tcp = Contender::XdpFilter(super::rivals::XdpFilterFeatures::Tcp);
        for c in &self.costs {
            let e = fig(c, Contender::EdgeFilter);
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {} | {} |",
                c.path,
                spread(&e.value, 1),
                e.ratio.median(),
                fig(c, Contender::Floor).value.median(),
                fig(c, tcp).value.median(),
                fig(c, all).value.median(),
                insns(c),
                calls(c).replace('/', " / ")
            );
        }
        if !self.lookups.is_empty() {
            s.push_str(
                "\nThe floor of a tracked flow: the cheapest program that makes one lookup in an LRU hash table, as \
                 edge-filter's flow tables are, and finds its entry (`floor_lookup12`, `floor_lookup40` in \
                 `tests/ebpf/src/floor.rs`), for keys of the sizes of an IPv4 and an IPv6 flow's, measured in the \
                 same rounds against the floor. What it costs over the floor is the kernel's lookup: a call out of \
                 the program, the key's hash and the compare of the key, which no code of edge-filter's can remove \
                 while its flows live in a kernel hash table.\n\n\
                 | key | ns | x floor |\n|---|---|---|\n",
            );
            for l in &self.lookups {
                let _ = writeln!(s, "| {} bytes | {} | {:.2} |", l.key_bytes, spread(&l.figure.value, 1), l.figure.ratio.median());
            }
        }
        let _ = write!(
            s,
            "\n## Growth\n\n\
             The address sets filled to each size with exact addresses or with prefixes (/31, /64) in access-edge; \
             the flow table filled with established R1 flows. Each figure cycles through {keys} keys spread over the \
             whole table, so the program probes different buckets from one key to the next.\n\n\
             ![growth](benchmark-growth.svg)\n\n\
             Instructions and helper calls are those of the first frame of each figure, counted as above.\n\n\
             | table | entries | path | ns | x floor | insns | helper calls |\n|---|---|---|---|---|---|---|\n",
            keys = super::cost::KEYS
        );
        for p in &self.growth {
            let (insns, calls) = if p.insns == 0 { ("-".to_owned(), "-".to_owned()) } else { (p.insns.to_string(), p.helper_calls.to_string()) };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} | {insns} | {calls} |",
                p.table,
                p.size,
                p.path,
                spread(&p.figure.value, 1),
                p.figure.ratio.median()
            );
        }
        let _ = write!(
            s,
            "\n## Throughput through a veth pair\n\n\
             The in-kernel generator (BPF_PROG_TEST_RUN, live frames, `XDP_TX`) sends {frames} frames per figure from \
             one namespace into a veth whose other end holds the receiver, each frame from another source address \
             and port. Sender and receiver share one CPU, so a rate is 1 / (generator + receiver). Drop frames are \
             TCP to access-edge port 80; pass frames are data of established R1 flows, one flow per frame, all in the \
             table. A rate counts the frames the receiver judged: one slower than the generator loses the rest at the \
             veth's ring. nftables at netdev ingress is stateless (that hook has no connection tracking; R2's replies pass by \
             source port); the inet input chain uses connection tracking. \"no filter\" is the kernel's stack alone \
             (GRO on, as veth needs it or an XDP program to take the generator's frames).\n\n\
             ![veth throughput](benchmark-veth.svg)\n\n\
             | frames | receiver | Mpps | x floor |\n|---|---|---|---|\n",
            frames = self.plan.frames
        );
        for r in &self.rates {
            for (who, f) in &r.figures {
                let _ = writeln!(s, "| {} | {} | {} | {:.2} |", r.path, who.name(), spread(&f.value, 2), f.ratio.median());
            }
        }
        if !self.scrapes.is_empty() {
            let _ = write!(
                s,
                "\n## What a scrape costs the daemon\n\n\
                 A real daemon in the sandbox of namespaces, its flow table filled through the pinned map. A scrape \
                 reads the counters, the interface, rule and address tables (in batches, a fixed number of system \
                 calls) and the latest census of the state tables, which the daemon takes on a thread of its own \
                 every `state.census-interval` (default 10 s): nothing in a scrape walks the flows. Scrape: wall \
                 time of one GET from the firewall's namespace, median of {scrapes} per round. Daemon CPU: the \
                 CPU time of its threads other than the census thread over those scrapes, per scrape. Census pass: \
                 one count of the four state tables, read with BPF_MAP_LOOKUP_BATCH; it runs once per interval, \
                 not per scrape. x: ratio to the empty table in the same round.\n\n\
                 | flows | scrape ms | x | daemon CPU ms per scrape | x | census pass ms |\n|---|---|---|---|---|---|\n",
                scrapes = super::scrape::SCRAPES
            );
            for p in &self.scrapes {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.2} | {} | {:.2} | {} |",
                    p.flows,
                    spread(&p.scrape_ms.value, 2),
                    p.scrape_ms.ratio.median(),
                    spread(&p.cpu_ms.value, 3),
                    p.cpu_ms.ratio.median(),
                    spread(&p.census_ms, 1)
                );
            }
        }
        s.push_str(
            "\n## Reproduce\n\n\
             ```\ncargo xtask bench            # five rounds, about fifteen minutes; rewrites this page\n\
             cargo xtask bench --quick    # one short round: checks every verdict, keeps no figures\n```\n\n\
             Both need root. The benchmark installs xdp-tools, nftables and ethtool from Debian when they are \
             missing. Leave `kernel.bpf_stats_enabled` off: it slows every program down.\n",
        );
        s
    }
}

/// The instructions of a path, `-` when the record has none.
fn insns(c: &PathCost) -> String {
    if c.insns == 0 { "-".into() } else { c.insns.to_string() }
}

/// The calls out of the program on a path, `helper/subprog/inlined`; `-` when the
/// record has no counts.
fn calls(c: &PathCost) -> String {
    if c.insns == 0 { "-".into() } else { format!("{}/{}/{}", c.helper_calls, c.subprog_calls, c.inlined_lookups) }
}

/// `median [min..max]`.
fn spread(s: &Series, digits: usize) -> String {
    format!("{:.d$} [{:.d$}..{:.d$}]", s.median(), s.min(), s.max(), d = digits)
}

fn bar(s: &Series) -> Option<(f64, f64, f64)> {
    (!s.0.is_empty()).then(|| (s.median(), s.min(), s.max()))
}

const WHY_DROP: &str = "the floor returns without reading the frame, so its figure is almost all of \
    BPF_PROG_TEST_RUN's own loop. A drop verdict makes no call (the realistic sets are scanned in place, \
    the frame's whole length is asked only of frames in several buffers), but it still reads the \
    configuration value (settings, the NIC's role, the sets' lengths) and this CPU's packet scratch, parses \
    the frame into the packet's facts (untagged IP at fixed offsets), scans the set tables for both \
    addresses, reads the ports' rule masks and counts the verdict: the instructions in the table, where the \
    floor runs a handful.";
const WHY_NO_LOOKUP: &str = "the verdict needs no lookup, but the configuration value and the packet's \
    scratch are read, the frame is parsed (for IP: into the packet's facts, with both addresses' sets, to \
    know it is unpoliced), and the verdict is counted: the instructions of the cost table, against the \
    floor's handful.";
const WHY_PASS: &str = "a federation packet that passes also finds its flow in a kernel hash table (a \
    12-byte key for IPv4, 40 bytes for IPv6): a call out of the program, the key's hash and its compare, on \
    top of the parse; the floor makes none. The floor of a tracked flow, which makes that lookup and nothing \
    else, is the second figure of the measured column: it leaves less than one floor for the parse, the \
    sets, the rule masks and the flow's update. Within 3x takes flows the program finds without a call, in \
    a table it hashes and probes itself. (Reading the clock makes no call: jiffies, scaled by the jiffy each \
    CPU measured.) pass/rule R1 SYN looks in both state tables and writes the handshake (three calls).";
const WHY_XDP_FILTER: &str = "xdp-filter with all features makes a fixed handful of lookups and keeps no \
    state. edge-filter is cheaper than it on every path but a tracked connection's; on the drops that end at \
    the source's sets (spoofed) or at the IP header (non-first fragments) about twice as cheap, on \
    drop/no_rule, which also reads the destination's sets and the ports' rule masks, less. Its pass paths \
    track connections, work xdp-filter does not do at all, and cost a hash lookup and the flow's update more \
    than its stateless pass.";
const WHY_VETH_FLOOR: &str = "generator and receiver share one CPU, and the floor's frame costs little, so \
    every nanosecond the filter adds shows in the rate: the parse and the array reads of the drop verdict.";
const WHY_NFT: &str = "nftables at netdev ingress runs after the veth has built a socket buffer for every \
    frame; the faster the filter, the more of the rate is the generator's and the veth's own cost.";
const WHY_SCRAPE: &str = "a scrape is an HTTP exchange and a fixed set of map reads; what moves with the \
    flow table is the census pass, which runs on its own thread once per interval.";

const WHY_GROWTH: &str = "sets of one entry are scanned in place; from nine entries a family's single \
    addresses are found in the bucketed exact table (an array read the verifier inlines and a compare per \
    way, no call), and an address in no set is also checked against the hint bits, for the prefixes the \
    plan's sets hold: a few dozen instructions more than the scan of a handful, which the figure's \
    nanoseconds show. (Prefixes beyond the scanned ones cost a hash probe per length: not in this target.) \
    Between 1,000 and 65,536 entries, 1 and 1M flows, and 3 and 64 rows the figures move within their \
    spread.";

/// SVG drawn here, dependency-free: horizontal grouped bars with whiskers.
mod svg {
    use std::fmt::Write as _;

    const PALETTE: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

    fn esc(s: &str) -> String {
        s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    }

    /// A labelled group of bars: (median, min, max) per series, `None` when absent.
    pub(super) type Group = (String, Vec<Option<(f64, f64, f64)>>);

    /// Groups of bars, one bar per series, with min..max whiskers.
    pub(super) fn bars(title: &str, unit: &str, series: &[&str], groups: &[Group]) -> String {
        let (label_w, plot_w, bar_h, gap) = (260.0, 560.0, 11.0, 10.0);
        let n = series.len().max(1) as f64;
        let group_h = n * bar_h + gap;
        let top = 50.0 + 18.0 * series.len() as f64;
        let height = top + group_h * groups.len() as f64 + 40.0;
        let width = label_w + plot_w + 90.0;
        let max = groups.iter().flat_map(|(_, b)| b.iter().flatten().map(|(_, _, hi)| *hi)).fold(0.0_f64, f64::max).max(1e-9);
        let step = nice_step(max / 5.0);
        let scale_max = (max / step).ceil() * step;
        let x = |v: f64| label_w + v / scale_max * plot_w;
        let mut s = String::new();
        let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#);
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(s, r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#, esc(title));
        for (i, name) in series.iter().enumerate() {
            let y = 36.0 + 18.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{label_w}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
                y - 10.0,
                PALETTE[i % PALETTE.len()],
                label_w + 18.0,
                y,
                esc(name)
            );
        }
        let mut v = 0.0;
        while v <= scale_max + step / 2.0 {
            let _ = writeln!(
                s,
                r##"<line x1="{0}" x2="{0}" y1="{1}" y2="{2}" stroke="#ddd"/><text x="{0}" y="{3}" text-anchor="middle">{4}</text>"##,
                x(v),
                top - 4.0,
                height - 30.0,
                height - 16.0,
                fmt(v)
            );
            v += step;
        }
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, label_w + plot_w / 2.0, height - 3.0, esc(unit));
        for (g, (label, bars)) in groups.iter().enumerate() {
            let y0 = top + group_h * g as f64;
            let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, label_w - 8.0, y0 + n * bar_h / 2.0 + 4.0, esc(label));
            for (i, b) in bars.iter().enumerate() {
                let Some((med, lo, hi)) = b else { continue };
                let y = y0 + bar_h * i as f64;
                let _ = writeln!(
                    s,
                    r#"<rect x="{label_w}" y="{y}" width="{:.1}" height="{}" fill="{}"><title>{}: {}</title></rect>"#,
                    x(*med) - label_w,
                    bar_h - 2.0,
                    PALETTE[i % PALETTE.len()],
                    esc(series.get(i).copied().unwrap_or("")),
                    fmt(*med)
                );
                let _ = writeln!(s, r#"<line x1="{:.1}" x2="{:.1}" y1="{2}" y2="{2}" stroke="black"/>"#, x(*lo), x(*hi), y + (bar_h - 2.0) / 2.0);
                let _ = writeln!(s, r#"<text x="{:.1}" y="{}" font-size="9">{}</text>"#, x(*hi) + 4.0, y + bar_h - 3.0, fmt(*med));
            }
        }
        s.push_str("</svg>\n");
        s
    }

    fn nice_step(raw: f64) -> f64 {
        let mag = 10f64.powf(raw.log10().floor());
        [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag)
    }

    fn fmt(v: f64) -> String {
        if v == 0.0 {
            "0".into()
        } else if v >= 100.0 {
            format!("{v:.0}")
        } else if v >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_chart_has_a_bar_per_figure_and_escapes_labels() {
            let svg = super::bars("t", "ns", &["a", "b"], &[("x<y".into(), vec![Some((10.0, 9.0, 11.0)), None])]);
            assert_eq!(svg.matches("<rect x=\"260\" y=").count(), 2 + 1, "two legend keys and one bar");
            assert!(svg.contains("x&lt;y"));
            assert!(svg.ends_with("</svg>\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(values: &[f64], floor: f64) -> Figure {
        let mut f = Figure::default();
        for v in values {
            f.record(*v, floor);
        }
        f
    }

    fn run() -> Results {
        let costs = vec![PathCost {
            path: "drop/no_rule v4".into(),
            drop: true,
            figures: Contender::ALL.iter().enumerate().map(|(i, c)| (*c, figure(&[100.0 + i as f64, 90.0], 30.0))).collect(),
            rival_actions: vec![(Contender::ALL[2], 1)],
            insns: 321,
            helper_calls: 7,
            subprog_calls: 2,
            inlined_lookups: 5,
        }];
        let growth = vec![
            GrowthPoint {
                table: "sets exact v4".into(),
                size: 1,
                path: "drop/no_rule".into(),
                insns: 300,
                helper_calls: 0,
                figure: figure(&[100.0, 100.0], 30.0),
            },
            GrowthPoint {
                table: "sets exact v4".into(),
                size: 65_536,
                path: "drop/no_rule".into(),
                insns: 320,
                helper_calls: 0,
                figure: figure(&[120.0, 120.0], 30.0),
            },
        ];
        let rates = vec![Rates { path: "drop", figures: DROP_RECEIVERS.iter().map(|r| (*r, figure(&[4.0, 5.0], 5.0))).collect() }];
        let machine = Machine { kernel: "6.18".into(), cpu: "cpu".into(), cpus: 2, date: "2026-11-29 18:00".into() };
        let scrapes = [(0, 2.0, 0.5), (1_000_000, 2.2, 0.6)]
            .iter()
            .map(|&(flows, ms, cpu)| ScrapePoint {
                flows,
                scrape_ms: figure(&[ms, ms], 2.0),
                cpu_ms: figure(&[cpu, cpu], 0.5),
                census_ms: Series(vec![1.0, 2.0]),
            })
            .collect();
        Results { machine, plan: Plan::FULL, quick: false, costs, lookups: Vec::new(), growth, rates, scrapes }
    }

    #[test]
    fn a_record_reads_back_as_the_run_it_records() {
        let r = run();
        let back = Results::from_json(&r.json()).unwrap();
        assert_eq!(back.json(), r.json());
        assert_eq!(back.page("x.json"), r.page("x.json"));
        let c = &back.costs[0];
        assert_eq!((c.insns, c.helper_calls, c.subprog_calls, c.inlined_lookups), (321, 7, 2, 5));
        assert_eq!(r.json()["cost_ns"][0]["calls"], serde_json::json!({ "helper": 7, "subprog": 2, "inlined_lookups": 5 }));
        assert!(r.page("x.json").contains("| 321 | 7 / 2 / 5 |"));
        assert!(r.table().lines().any(|l| l.starts_with("drop/no_rule v4") && l.ends_with("   321      7/2/5")));
        // A record from before the counts reads back with none.
        let mut old = r.json();
        for key in ["insns", "calls"] {
            old["cost_ns"][0].as_object_mut().unwrap().remove(key);
        }
        let c = &Results::from_json(&old).unwrap().costs[0];
        assert_eq!((c.insns, c.helper_calls, c.subprog_calls, c.inlined_lookups), (0, 0, 0, 0));
        assert!(Results::from_json(&old).unwrap().page("x.json").contains("| - | - |"));
        // The growth figures carry their counts too, and old records none.
        let g = &back.growth[1];
        assert_eq!((g.insns, g.helper_calls), (320, 0));
        assert!(
            r.page("x.json").contains("| sets exact v4 | 65536 | drop/no_rule | 120.0 [120.0..120.0] | 4.00 | 320 | 0 |"),
            "{}",
            r.page("x.json")
        );
        for key in ["insns", "calls"] {
            old["growth_ns"][1].as_object_mut().unwrap().remove(key);
        }
        let g = &Results::from_json(&old).unwrap().growth[1];
        assert_eq!((g.insns, g.helper_calls), (0, 0));
    }

    #[test]
    fn the_floor_of_a_tracked_flow_is_recorded_and_shown_beside_the_pass_target() {
        let mut r = run();
        r.lookups = vec![LookupCost { key_bytes: 12, figure: figure(&[66.0, 60.0], 30.0) }];
        let mut pass = r.costs[0].clone();
        pass.path = "pass/reply v4".into();
        pass.drop = false;
        r.costs.push(pass);
        let back = Results::from_json(&r.json()).unwrap();
        assert_eq!(back.json(), r.json());
        assert!(r.page("x.json").contains("| 12 bytes | 63.0 [60.0..66.0] | 2.10 |"), "{}", r.page("x.json"));
        assert!(r.table().lines().any(|l| l.starts_with("12-byte key") && l.ends_with("2.10x")), "{}", r.table());
        let verdicts = r.verdicts();
        let tracked = verdicts.iter().find(|v| v.target.starts_with("set and flow lookups")).unwrap();
        assert_eq!(tracked.measured, "worst 3.17x (pass/reply v4); the floor with one hash lookup: 12-byte key 2.10x");
        // A record from before the lookup floor reads back without one, and says nothing of it.
        let mut old = r.json();
        old.as_object_mut().unwrap().remove("lookup_ns");
        let old = Results::from_json(&old).unwrap();
        assert!(old.lookups.is_empty());
        assert!(!old.page("x.json").contains("floor_lookup12"));
    }

    #[test]
    fn targets_are_judged_on_medians() {
        let verdicts = run().verdicts();
        let get = |t: &str| verdicts.iter().find(|v| v.target.starts_with(t)).unwrap_or_else(|| panic!("{t}"));
        // 95 ns against a 30 ns floor.
        assert!(!get("one set probe").met);
        assert_eq!(get("one set probe").measured, "worst 3.17x (drop/no_rule v4)");
        // 2.2 ms at 1M flows, 1.10x the empty table's.
        assert!(get("a /metrics scrape").met);
        assert_eq!(get("a /metrics scrape").measured, "slowest 2.20 ms (1000000 flows); 1000000 flows 1.10x 0 flows");
        // 100 -> 120 ns is +20%.
        assert!(!get("cost within 15%").met);
        assert!(get("cost within 15%").measured.starts_with("worst +20%"));
        // Every receiver at 4.5 Mpps median: the same as nftables, 0.9x the floor (the
        // line itself is met).
        assert!(!get("veth drop-path throughput at least 3x").met);
        assert!(get("veth drop-path throughput at least 0.9x").met);
    }
}
