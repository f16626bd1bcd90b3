//! `cargo xtask demo`: the vendor table enforced in a sandbox of network namespaces.
//!
//! Builds the perimeter of the design's address plan, runs `edge-filter run` on the
//! firewall with the built-in policy (only the NICs and the edge addresses are
//! configured), drives real TCP connections in both families and both directions,
//! changes an address set at runtime, and prints each attempt with its outcome and
//! the counters that moved. Everything is removed at the end unless `--keep`.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, ensure};
use edge_filter_tests::{
    plan::*,
    topology::{Outcome, Topology, connect, echo_server, sa},
};
use serde_json::Value;

const T: Duration = Duration::from_millis(1500);

fn main() -> anyhow::Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    let t = Topology::new().context("build the topology (needs root)")?;
    println!("topology: partner {} | frontend {} | firewall {} | edge {}", t.partner.name, t.frontend.name, t.fw.name, t.edge.name);
    println!("  partner 198.51.100.20 2001:db8:5100::20 -- out0 [outside]  fw  [edge] ext0 -- 203.0.113.10 2001:db8:203::10 (access-edge)");
    println!("  frontend 198.18.0.20 2001:db8:198::20  -- fe0  [outside]  fw  [edge] int0 -- 192.0.2.10   2001:db8:192::10 (internal-edge)\n");

    let second = IpAddr::from([203, 0, 113, 11]);
    t.edge.ip(&["addr", "add", "203.0.113.11/24", "dev", "ext0"])?;
    for (ip, port) in [(ACCESS4, 5269), (ACCESS6, 5269), (ACCESS4, 22), (ACCESS6, 22), (INTERNAL4, 23456), (INTERNAL6, 23456), (INTERNAL4, 5269), (second, 22), (second, 5269)] {
        echo_server(&t.edge, sa(ip, port))?;
    }
    for ip in [PARTNER4, PARTNER6] {
        echo_server(&t.partner, sa(ip, 5269))?;
    }
    println!("listening: Edge on 5269, 22, 23456; partner on 5269\n");

    let config = t.write_config("")?;
    println!("config ({}):\n{}", config.display(), indent(&std::fs::read_to_string(&config)?));
    let daemon = t.start(&config)?;
    println!("edge-filter run:\n{}", indent(&daemon.log_text()));

    let mut failures = 0;
    let mut attempt = |who: &str, from: &edge_filter_tests::topology::Netns, to: IpAddr, port: u16, why: &str, want: Outcome| -> anyhow::Result<()> {
        let before = stats(&t)?;
        let got = connect(from, sa(to, port), T)?;
        let after = stats(&t)?;
        let verdict = if got == want { "as the policy says" } else { "UNEXPECTED" };
        if got != want {
            failures += 1;
        }
        println!("{who} -> {}: {got:?} ({why}; {verdict})", sa(to, port));
        for line in moved(&before, &after) {
            println!("    {line}");
        }
        Ok(())
    };
    use Outcome::*;
    for (fam, access, internal, partner) in [("IPv4", ACCESS4, INTERNAL4, PARTNER4), ("IPv6", ACCESS6, INTERNAL6, PARTNER6)] {
        println!("== {fam}");
        attempt("partner ", &t.partner, access, 5269, "R1 federation-in", Connected)?;
        attempt("edge    ", &t.edge, partner, 5269, "R2 federation-out, replies let back in", Connected)?;
        attempt("frontend", &t.frontend, internal, 23456, "R3 internal-mtls", Connected)?;
        attempt("partner ", &t.partner, access, 22, "no rule for port 22", TimedOut)?;
        attempt("frontend", &t.frontend, internal, 22, "no rule for port 22", TimedOut)?;
        attempt("partner ", &t.partner, internal, 23456, "R3 allows any source, partners too", Connected)?;
    }
    println!("== a runtime address change: 203.0.113.11 joins access-edge");
    attempt("partner ", &t.partner, second, 22, "203.0.113.11 is in no set yet: unpoliced", Connected)?;
    let out = t.cli(&["addr", "add", "access-edge", "203.0.113.11"])?;
    ensure!(out.status.success(), "addr add: {}", String::from_utf8_lossy(&out.stderr));
    println!("$ edge-filter addr add access-edge 203.0.113.11");
    attempt("partner ", &t.partner, second, 22, "now policed: no rule for 22", TimedOut)?;
    attempt("partner ", &t.partner, second, 5269, "now R1", Connected)?;

    println!("\n$ edge-filter stats");
    print!("{}", indent(&String::from_utf8_lossy(&t.cli(&["stats"])?.stdout)));
    println!("$ edge-filter status");
    print!("{}", indent(&String::from_utf8_lossy(&t.cli(&["status"])?.stdout)));

    if keep {
        let pid = daemon.keep();
        println!("\nkept: explore with");
        println!("  nsenter --net=/run/netns/{} env EDGE_FILTER_PIN_DIR={} EDGE_FILTER_STATE_DIR={} {} stats", t.fw.name, t.pin_dir.display(), t.state_dir.display(), edge_filter_tests::topology::edge_filter_bin()?.display());
        println!("  ip netns exec {} nc -v 203.0.113.10 5269", t.partner.name);
        println!("remove with");
        println!("  kill {}; rm -r {} {}; ip netns del {}; ip netns del {}; ip netns del {}; ip netns del {}", pid.unwrap_or(0), t.pin_dir.display(), t.work.display(), t.fw.name, t.partner.name, t.edge.name, t.frontend.name);
        t.keep();
    } else {
        drop(daemon);
        drop(t);
        println!("\nremoved the namespaces, pins and files");
    }
    ensure!(failures == 0, "{failures} attempts did not go as the policy says");
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

fn stats(t: &Topology) -> anyhow::Result<Value> {
    let out = t.cli(&["stats", "--json"])?;
    ensure!(out.status.success(), "stats: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `interface action/reason +packets` for every counter that moved, and rule hits.
fn moved(before: &Value, after: &Value) -> Vec<String> {
    let key = |r: &Value| format!("{} {}/{}", r["interface"].as_str().unwrap_or(""), r["action"].as_str().unwrap_or(""), r["reason"].as_str().unwrap_or(""));
    let count = |doc: &Value, k: &str| {
        doc["counters"].as_array().into_iter().flatten().find(|r| key(r) == k).and_then(|r| r["packets"].as_u64()).unwrap_or(0)
    };
    let mut out = Vec::new();
    for r in after["counters"].as_array().into_iter().flatten() {
        let k = key(r);
        let d = count(after, &k) - count(before, &k);
        if d > 0 {
            out.push(format!("{k} +{d}"));
        }
    }
    for r in after["rules"].as_array().into_iter().flatten() {
        let name = r["rule"].as_str().unwrap_or("");
        let b = before["rules"].as_array().into_iter().flatten().find(|x| x["rule"] == name).and_then(|x| x["packets"].as_u64()).unwrap_or(0);
        let d = r["packets"].as_u64().unwrap_or(0) - b;
        if d > 0 {
            out.push(format!("rule {name} +{d}"));
        }
    }
    out
}
