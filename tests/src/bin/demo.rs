//! `cargo xtask demo`: the whole Lync Edge enforced in a sandbox of network namespaces.
//!
//! Builds the perimeter of the design's address plan, with the A/V Edge on an address
//! of its own, and runs `edge-filter run` on the firewall with the built-in defaults
//! plus what the whole Edge needs: the vendor's `lync-edge-external` and
//! `lync-edge-internal` tables and the Edge's four address sets. Then, service by
//! service and in both families, it makes real TCP connections and UDP requests that
//! the policy allows and some it refuses, adds an address to a set at runtime, and
//! prints each attempt with what came back and the counters and rows that moved.
//! Everything is removed at the end unless `--keep`.
//!
//! `--pair`: a firewall pair under keepalived (`edge_filter_tests::pair`) carries one
//! federation connection while its active node fails and comes back; the connection
//! keeps its socket throughout, and the node that takes over says it picked the flow
//! up.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use edge_filter_tests::{
    plan::*,
    topology::{AV4, AV6, Datagram, Netns, Outcome, Topology, WHOLE_EDGE_SETS, connect_from, datagram, echo_server, sa, udp_echo_server},
};
use serde_json::Value;

/// How long an allowed attempt may take.
const T: Duration = Duration::from_millis(1500);
/// How long a refused attempt waits for the answer that does not come.
const SILENT: Duration = Duration::from_millis(1000);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

use Proto::{Tcp, Udp};

/// What the policy says of an attempt, and why.
enum Policy {
    /// Allowed: the row that allows it, or why.
    Allows(&'static str),
    /// Refused, for this reason.
    Refuses(&'static str),
}

use Policy::{Allows, Refuses};

struct Demo<'a> {
    t: &'a Topology,
    failures: usize,
}

impl Demo<'_> {
    /// One attempt from `host` (from `from`, port 0: any) to `to`. Prints what came
    /// back, whether that is what the policy says, and what moved in `stats`.
    fn attempt(&mut self, who: &str, host: &Netns, from: SocketAddr, to: SocketAddr, proto: Proto, policy: Policy) -> anyhow::Result<()> {
        let (allowed, why) = match policy {
            Allows(why) => (true, format!("allowed: {why}")),
            Refuses(reason) => (false, format!("refused: {reason}")),
        };
        let before = stats(self.t)?;
        let timeout = if allowed { T } else { SILENT };
        let (name, answered) = match proto {
            Tcp => ("tcp", connect_from(host, from, to, timeout)? == Outcome::Connected),
            Udp => ("udp", datagram(host, from, to, b"demo request", timeout)? == Datagram::Answered),
        };
        let after = stats(self.t)?;
        let seen = match (proto, answered) {
            (Tcp, true) => "connected",
            (Udp, true) => "answered",
            (_, false) => "no answer",
        };
        let verdict = if answered == allowed {
            "as the policy says"
        } else {
            self.failures += 1;
            "UNEXPECTED"
        };
        println!("  {who:<13} {name} -> {:<24} {seen:<9}  {why} ({verdict})", to.to_string());
        println!("  {:<13} {}", "", moved(&before, &after).join(", "));
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    if std::env::args().any(|a| a == "--pair") {
        ensure!(!keep, "--keep is for the single firewall; the pair's demo removes everything it made");
        return pair();
    }
    let t = Topology::new().context("build the topology (needs root)")?;
    t.add_av_edge()?;
    // So that every answer counts as a reply, not as a media row (see the helper).
    t.ephemeral_ports_below_media_range()?;
    println!("topology: partner {} | frontend {} | firewall {} | edge {}", t.partner.name, t.frontend.name, t.fw.name, t.edge.name);
    println!(
        "  partner  198.51.100.20 2001:db8:5100::20 -- out0 [outside] fw [edge] ext0 -- 203.0.113.10 2001:db8:203::10 (access-edge, webconf-edge)"
    );
    println!("                                                                       203.0.113.11 2001:db8:203::11 (av-edge)");
    println!("  frontend 198.18.0.20   2001:db8:198::20  -- fe0  [outside] fw [edge] int0 -- 192.0.2.10   2001:db8:192::10 (internal-edge)\n");

    // Servers: TCP echo and UDP echo on each port the attempts aim at, so that an
    // attempt without an answer was refused by the filter, not by a closed port.
    let spare = IpAddr::from([203, 0, 113, 12]);
    t.edge.add_address("ext0", "203.0.113.12/24")?;
    for (access, av, internal, partner) in [(ACCESS4, AV4, INTERNAL4, PARTNER4), (ACCESS6, AV6, INTERNAL6, PARTNER6)] {
        for to in [sa(access, 5269), sa(access, 5061), sa(access, 443), sa(access, 22), sa(av, 59999)] {
            echo_server(&t.edge, to)?;
        }
        for to in [sa(internal, 5061), sa(internal, 8057), sa(internal, 5062), sa(internal, 4443), sa(internal, 22)] {
            echo_server(&t.edge, to)?;
        }
        for to in [sa(av, 3478), sa(av, 50000), sa(av, 60000), sa(av, 40001), sa(access, 3478)] {
            udp_echo_server(&t.edge, to)?;
        }
        for port in [5269, 59999] {
            echo_server(&t.partner, sa(partner, port))?;
        }
        udp_echo_server(&t.partner, sa(partner, 53))?;
    }
    echo_server(&t.edge, sa(spare, 22))?;
    udp_echo_server(&t.edge, sa(spare, 3478))?;
    println!("listening on the Edge, the partner and 203.0.113.12 (in no set yet): TCP and UDP echo servers\n");

    let config = t.write_config_with_sets(
        WHOLE_EDGE_SETS,
        "[policy]\ntables = [\"lync-edge-external\", \"lync-edge-internal\"]\n\n[metrics]\nlisten = \"127.0.0.1:9540\"\n",
    )?;
    println!("config ({}):\n{}", config.display(), indent(&std::fs::read_to_string(&config)?));
    let daemon = t.start(&config)?;
    println!("edge-filter run:\n{}", indent(&daemon.log_text()));

    println!("Each attempt is followed by the counters and rows that moved meanwhile (IPv6 link-local");
    println!("chatter between the hosts shows as pass/unpoliced; ARP and neighbour discovery are left out).\n");
    let mut demo = Demo { t: &t, failures: 0 };
    let (p, e, f) = (&t.partner, &t.edge, &t.frontend);
    for (fam, access, av, internal, partner, frontend) in
        [("IPv4", ACCESS4, AV4, INTERNAL4, PARTNER4, FRONTEND4), ("IPv6", ACCESS6, AV6, INTERNAL6, PARTNER6, FRONTEND6)]
    {
        let (any_p, any_f) = (sa(partner, 0), sa(frontend, 0));
        println!("== {fam}: federation and SIP on access-edge");
        demo.attempt("partner", p, any_p, sa(access, 5269), Tcp, Allows("federation-in"))?;
        demo.attempt("edge (access)", e, sa(access, 0), sa(partner, 5269), Tcp, Allows("federation-out, replies let back in"))?;
        demo.attempt("partner", p, any_p, sa(access, 5061), Tcp, Allows("sip-federation-in"))?;
        demo.attempt("partner", p, any_p, sa(access, 443), Tcp, Allows("sip-client-in"))?;
        demo.attempt("edge (access)", e, sa(access, 0), sa(partner, 53), Udp, Allows("dns-udp-out, the answer let back in"))?;
        demo.attempt("partner", p, any_p, sa(access, 22), Tcp, Refuses("no row for 22"))?;
        println!("== {fam}: A/V on av-edge");
        demo.attempt("partner", p, any_p, sa(av, 3478), Udp, Allows("stun-udp-in"))?;
        demo.attempt("partner", p, any_p, sa(av, 50000), Udp, Allows("rtp-udp-in"))?;
        demo.attempt("edge (av)", e, sa(av, 0), sa(partner, 59999), Tcp, Allows("rtp-tcp-out"))?;
        demo.attempt("partner", p, any_p, sa(av, 60000), Udp, Refuses("one port past the media range"))?;
        demo.attempt("partner", p, any_p, sa(access, 3478), Udp, Refuses("STUN is av-edge's"))?;
        demo.attempt("partner:3478", p, sa(partner, 3478), sa(av, 40001), Udp, Refuses("unsolicited, no request went out"))?;
        println!("== {fam}: the Front End to internal-edge");
        for (port, row) in [(5061, "sip-internal-in"), (8057, "psom-internal"), (5062, "av-auth"), (4443, "cms-replication")] {
            demo.attempt("frontend", f, any_f, sa(internal, port), Tcp, Allows(row))?;
        }
        demo.attempt("frontend", f, any_f, sa(internal, 22), Tcp, Refuses("no row for 22"))?;
    }

    println!("== at runtime: 203.0.113.12 joins av-edge");
    let any_p = sa(PARTNER4, 0);
    demo.attempt("partner", p, any_p, sa(spare, 22), Tcp, Allows("in no set yet, so unpoliced"))?;
    let out = t.cli(&["addr", "add", "av-edge", "203.0.113.12"])?;
    ensure!(out.status.success(), "addr add: {}", String::from_utf8_lossy(&out.stderr));
    println!("$ edge-filter addr add av-edge 203.0.113.12");
    demo.attempt("partner", p, any_p, sa(spare, 22), Tcp, Refuses("policed now, and no row for 22"))?;
    demo.attempt("partner", p, any_p, sa(spare, 3478), Udp, Allows("now by stun-udp-in"))?;
    let failures = demo.failures;

    println!("\n$ edge-filter status");
    print!("{}", indent(&String::from_utf8_lossy(&t.cli(&["status"])?.stdout)));

    if keep {
        let pid = daemon.keep();
        println!("\nkept: explore with");
        println!(
            "  nsenter --net=/run/netns/{} env EDGE_FILTER_PIN_DIR={} EDGE_FILTER_STATE_DIR={} {} stats",
            t.fw.name,
            t.pin_dir.display(),
            t.state_dir.display(),
            edge_filter_tests::topology::edge_filter_bin()?.display()
        );
        println!("  ip netns exec {} nc -v 203.0.113.10 5061", t.partner.name);
        println!("remove with");
        println!(
            "  kill {}; rm -r {} {}; ip netns del {}; ip netns del {}; ip netns del {}; ip netns del {}",
            pid.unwrap_or(0),
            t.pin_dir.display(),
            t.work.display(),
            t.fw.name,
            t.partner.name,
            t.edge.name,
            t.frontend.name
        );
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

/// `interface action/reason +packets` for every counter that moved, and row hits.
/// ARP and neighbour discovery (`pass/essential`) are background noise here and left
/// out.
fn moved(before: &Value, after: &Value) -> Vec<String> {
    let key = |r: &Value| {
        format!("{} {}/{}", r["interface"].as_str().unwrap_or(""), r["action"].as_str().unwrap_or(""), r["reason"].as_str().unwrap_or(""))
    };
    let count = |doc: &Value, k: &str| {
        doc["counters"].as_array().into_iter().flatten().find(|r| key(r) == k).and_then(|r| r["packets"].as_u64()).unwrap_or(0)
    };
    let mut out = Vec::new();
    for r in after["counters"].as_array().into_iter().flatten() {
        let k = key(r);
        let d = count(after, &k) - count(before, &k);
        if d > 0 && !k.ends_with("pass/essential") {
            out.push(format!("{k} +{d}"));
        }
    }
    for r in after["rules"].as_array().into_iter().flatten() {
        let name = r["rule"].as_str().unwrap_or("");
        let b = before["rules"].as_array().into_iter().flatten().find(|x| x["rule"] == name).and_then(|x| x["packets"].as_u64()).unwrap_or(0);
        let d = r["packets"].as_u64().unwrap_or(0) - b;
        if d > 0 {
            out.push(format!("row {name} +{d}"));
        }
    }
    out
}

/// The pair's demo: one federation connection (a partner to access-edge:5269) through
/// node 1, node 1 fails, node 2 takes over, node 1 comes back.
fn pair() -> anyhow::Result<()> {
    use std::time::{Instant, SystemTime};

    use edge_filter_tests::{
        pair::{GATEWAYS, Pair},
        topology::{echo, open_stream},
    };

    println!("building a firewall pair: partner and Front End | node 1, node 2 (edge-filter + keepalived) | Edge");
    let mut p = Pair::new()?;
    echo_server(&p.edge, sa(ACCESS4, 5269))?;
    p.start()?;
    println!("node 1 holds the {GATEWAYS} gateway addresses; node 2 is standing by");
    let mut conn = open_stream(&p.partner, sa(ACCESS4, 5269), Duration::from_secs(5))?;
    let tuple = (conn.local_addr()?, conn.peer_addr()?);
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let round_trip = |conn: &mut std::net::TcpStream, when: &str| -> anyhow::Result<()> {
        let start = Instant::now();
        ensure!(echo(conn), "no echo {when}");
        ensure!((conn.local_addr()?, conn.peer_addr()?) == tuple, "the connection changed {when}");
        println!("  {} -> {}: echoed in {:.1} ms {when}, same socket", tuple.0, tuple.1, start.elapsed().as_secs_f64() * 1e3);
        Ok(())
    };
    let picked_up = |p: &Pair, i: usize| -> anyhow::Result<u64> {
        let status = p.nodes[i].t.status_counted_after(SystemTime::now())?;
        Ok(status["flow_events"]["flows"]["picked_up"].as_u64().unwrap_or(0))
    };
    round_trip(&mut conn, "through node 1")?;

    println!("node 1 fails: its links go down");
    let start = Instant::now();
    p.nodes[0].links(false)?;
    p.wait_active(1, Duration::from_secs(5))?;
    println!("node 2 holds the gateway addresses after {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
    round_trip(&mut conn, "through node 2")?;
    println!("node 2 picked up {} flow(s) from the Edge's side", picked_up(&p, 1)?);

    println!("node 1 comes back, as after a reboot (empty state tables), and takes over again");
    p.nodes[0].forget_state()?;
    p.nodes[0].start_filter()?;
    p.nodes[0].links(true)?;
    p.wait_active(0, Duration::from_secs(5))?;
    round_trip(&mut conn, "through node 1 again")?;
    println!("node 1 picked up {} flow(s)", picked_up(&p, 0)?);
    drop(conn);
    drop(p);
    println!("\nremoved the namespaces, keepalived, pins and files");
    Ok(())
}
