//! A real XMPP server behind the filter in host mode: Prosody on the filtering machine
//! (access-edge 203.0.113.10, 2001:db8:203::10) federates with a partner's Prosody,
//! each finding the other by DNS SRV (`_xmpp-server._tcp`) from a dnsmasq on the
//! partner's side, in both directions and both families, while a SYN flood from
//! spoofed sources churns the handshake table many times over; the machine's other
//! services (SSH's port 22) stay out of reach from the link, through its global
//! addresses and its link-local one.
//!
//! Privileged: run as root, one test at a time. Needs Prosody, lua-unbound and
//! dnsmasq (`cargo xtask setup`).

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use edge_filter_tests::{
    packet::{self, flags::SYN, tcp},
    plan::*,
    prosody::{self, Dnsmasq, Prosody},
    topology::{Netns, Outcome, Topology, connect, echo_server, mac_of, packets, rule_hits, sa},
};
use serde_json::Value;

const T: Duration = Duration::from_millis(1500);
/// The handshake table for handshakes opened from outside, small so that the flood is
/// many times its size.
const MAX_EMBRYOS: u64 = 256;
/// The flood's first burst, before any federation: ten times the handshake table.
const FIRST_BURST: u32 = 10 * MAX_EMBRYOS as u32;
/// Then the flood goes on while the servers federate: this many SYNs every
/// [`PACE`], so that a real handshake from outside (the partner's connection, or its
/// dialback connection back) sees far fewer spoofed SYNs than the table holds while
/// it completes. Handshakes from outside are what a SYN flood may evict; the
/// server's own handshakes have a table of their own.
const BURST: u32 = 32;
const PACE: Duration = Duration::from_millis(2);
const PING_TIMEOUT: u32 = 10;
/// The host's addresses on the partner's link that are no edge address: the partner's
/// gateway, as the topology gives them.
const GATEWAY4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));
const GATEWAY6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x5100, 0, 0, 0, 0, 1));

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// A SYN flood from spoofed sources (198.51.100.128-255, every source port) to
/// access-edge:5269, generated in the kernel from the partner's namespace: a first
/// burst, then [`BURST`] SYNs every [`PACE`] until it is stopped (also on drop).
struct SynFlood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl SynFlood {
    fn start(t: &Topology) -> anyhow::Result<Self> {
        let mut frame = tcp(PARTNER4, ACCESS4, 1024, 5269, SYN).build();
        frame[..6].copy_from_slice(&mac_of(&t.fw, "ext0")?);
        frame[6..12].copy_from_slice(&mac_of(&t.partner, "eth0")?);
        let frame = packet::set_byte(frame, 14 + 15, 128);
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (first_done, first) = std::sync::mpsc::channel();
        let ns = t.partner.alias();
        let (s, n) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || ns.enter(move || generate(&frame, &s, &n, &first_done)).and_then(|r| r));
        let flood = Self { stop, sent, thread: Some(thread) };
        match first.recv_timeout(Duration::from_secs(30)) {
            Ok(took) => {
                eprintln!("flood: first burst of {FIRST_BURST} SYNs in {took:?}");
                Ok(flood)
            }
            Err(_) => Err(flood.finish().err().unwrap_or_else(|| anyhow::anyhow!("the flood's first burst did not end"))),
        }
    }

    /// Stop the flood; how many SYNs it sent.
    fn finish(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("running");
        thread.join().map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
        Ok(self.sent.load(Ordering::Relaxed))
    }
}

impl Drop for SynFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The flood's loop, in the partner's namespace: the traffic generator loaded once,
/// so its sequence (source address and port) runs on across bursts.
fn generate(frame: &[u8], stop: &AtomicBool, sent: &AtomicU64, first_done: &std::sync::mpsc::Sender<Duration>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp};
    let mut ebpf = aya::Ebpf::load(edge_filter_tests::programs::TRAFFIC_GEN).context("load the traffic generator")?;
    let prog: &mut Xdp = ebpf.program_mut("traffic_gen").context("traffic_gen")?.try_into()?;
    prog.load()?;
    let ctx = edge_filter::loader::xdp_md(frame.len(), edge_filter::pins::ifindex("eth0")?);
    let run = |count: u32| -> anyhow::Result<()> {
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN with live frames")?;
        sent.fetch_add(u64::from(count), Ordering::Relaxed);
        Ok(())
    };
    let started = Instant::now();
    run(FIRST_BURST)?;
    let _ = first_done.send(started.elapsed());
    while !stop.load(Ordering::Relaxed) {
        run(BURST)?;
        std::thread::sleep(PACE);
    }
    Ok(())
}

/// The address the kernel of `ns` gives `dev` with link scope (fe80::/64).
fn link_local(ns: &Netns, dev: &str) -> Option<Ipv6Addr> {
    let out = std::process::Command::new("ip").args(["-n", &ns.name, "-j", "-6", "addr", "show", "dev", dev]).output().ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let addrs = v[0]["addr_info"].as_array()?;
    addrs.iter().find(|a| a["scope"] == "link" && a["tentative"].is_null()).and_then(|a| a["local"].as_str()).and_then(|a| a.parse().ok())
}

/// Wait until `dev` in `ns` has its link-local address: the kernel joins the
/// solicited-node groups with it, and before that a neighbour solicitation is ignored
/// and the first IPv6 SYN waits a second for its retransmission.
fn wait_link_local(ns: &Netns, dev: &str) -> Ipv6Addr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(a) = link_local(ns, dev) {
            return a;
        }
        assert!(Instant::now() < deadline, "{dev} in {} got no link-local address within 10 s", ns.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ifindex_in(ns: &Netns, dev: &'static str) -> u32 {
    ok(ok(ns.enter(move || edge_filter::pins::ifindex(dev).map_err(anyhow::Error::from))))
}

/// `ip -n NS route get ADDR`: the route's line, with the source address chosen.
fn route_get(ns: &Netns, to: IpAddr) -> String {
    let out = std::process::Command::new("ip").args(["-n", &ns.name, "route", "get", &to.to_string()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `edge-filter flows --json`: the state tables' entries.
fn flows(t: &Topology) -> anyhow::Result<Vec<Value>> {
    let out = t.cli(&["flows", "--json"])?;
    anyhow::ensure!(out.status.success(), "flows --json: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Packets dropped on `iface` as matching no row or involving no edge address.
fn dropped(stats: &Value, iface: &str) -> u64 {
    ["no_rule", "unpoliced"].iter().map(|r| packets(stats, iface, "drop", r)).sum()
}

/// One family's federation: dnsmasq on the partner's side publishing only this
/// family's addresses, a fresh Prosody on each side; the host's server pings the
/// partner's, then, with every session closed, the partner's pings the host's.
fn federate(t: &Topology, fam: &str, access: IpAddr, partner: IpAddr, ssh: &[(&str, SocketAddr)]) {
    let work = t.work.join(format!("xmpp-{fam}"));
    let dns =
        ok(Dnsmasq::start(&t.partner, &work.join("dns"), &[PARTNER4, PARTNER6], &[("partner.example", &[partner]), ("edge.example", &[access])]));
    // Each server asks the dnsmasq over this family.
    let edge = ok(Prosody::start(&t.fw, &work.join("edge"), "edge.example", partner));
    let remote = ok(Prosody::start(&t.partner, &work.join("partner"), "partner.example", partner));
    let diag = |what: &str| format!("{what}\n{}{}--- dnsmasq:\n{}", edge.diagnostics(), remote.diagnostics(), prosody::tail(&dns.log, 30));

    // `server` (of `domain`) pings `peer` through the filter, having found it by SRV,
    // asking dnsmasq from `asker` (`asked_from` names it).
    let ping = |server: &Prosody, domain: &str, peer: &str, asked_from: &str, asker: IpAddr| {
        let (pong, text) = ok(server.ping(peer, PING_TIMEOUT));
        assert!(pong, "{}", diag(&format!("{fam}: {domain} pings {peer} through the filter: {text}")));
        eprintln!("{fam} {domain} -> {peer}: {text}");
        let srv = dns.queries("SRV", &format!("_xmpp-server._tcp.{peer}"));
        assert!(
            srv.iter().any(|from| from.parse::<IpAddr>().ok() == Some(asker)),
            "{fam}: {domain}'s server found {peer} by SRV, asking dnsmasq from {asked_from} {asker}: queries from {srv:?}\n{}",
            dns.log_text()
        );
    };
    // The s2s sessions of `server` (on the host or the partner) include one with `peer`.
    let s2s_with = |server: &Prosody, on: &str, peer: IpAddr, what: &str| {
        let sessions = ok(server.s2s_sessions());
        eprintln!("{fam} s2s on the {on}:\n{sessions}");
        assert!(sessions.contains(&peer.to_string()), "{fam}: {what} {peer}:\n{sessions}");
    };

    // The host's server opens the federation: SRV lookup, connection from access-edge,
    // the partner's dialback connection back to access-edge:5269.
    ping(&edge, "edge.example", "partner.example", "access-edge", access);
    s2s_with(&edge, "host", partner, "the host's s2s sessions are with the partner's");
    s2s_with(&remote, "partner", access, "the partner sees the host's server at access-edge");

    // The other way, on fresh connections.
    ok(edge.close_all_s2s());
    ok(remote.close_all_s2s());
    std::thread::sleep(Duration::from_millis(500));
    ping(&remote, "partner.example", "edge.example", "the partner's", partner);
    s2s_with(&remote, "partner", access, "the partner's server connected to access-edge");
    // The filter's flow table holds the federation under its rows: the host's
    // connections (recorded by the egress program) as federation-out and its DNS
    // queries as dns-udp-out, opened from access-edge; the partner's as federation-in.
    let flows = ok(flows(t));
    let has = |rule: &str, proto: &str, opener: IpAddr, responder: SocketAddr| {
        flows.iter().any(|f| {
            f["rule"] == rule
                && f["proto"] == proto
                && f["opener"].as_str().and_then(|o| o.parse::<SocketAddr>().ok()).is_some_and(|o| o.ip() == opener)
                && f["responder"].as_str().and_then(|r| r.parse::<SocketAddr>().ok()) == Some(responder)
        })
    };
    let all = || serde_json::to_string_pretty(&flows).unwrap();
    assert!(has("federation-out", "tcp", access, sa(partner, 5269)), "{fam}: the host's connection to the partner, as federation-out: {}", all());
    assert!(has("federation-in", "tcp", partner, sa(access, 5269)), "{fam}: the partner's connection to the host, as federation-in: {}", all());
    assert!(has("dns-udp-out", "udp", access, sa(partner, 53)), "{fam}: the host's DNS queries, as dns-udp-out: {}", all());

    // While the servers federate, the host's SSH is out of reach from the link.
    let drops_before = dropped(&ok(t.stats()), "ext0");
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        ssh.iter()
            .map(|(_, to)| s.spawn(move || ok(connect(&t.partner, *to, T))))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    });
    for ((what, to), outcome) in ssh.iter().zip(outcomes) {
        assert_eq!(outcome, Outcome::TimedOut, "{fam}: the partner reaches no SSH on the host through {what} ({to})");
    }
    let drops_after = dropped(&ok(t.stats()), "ext0");
    assert!(drops_after >= drops_before + ssh.len() as u64, "{fam}: the SYNs to port 22 were dropped on ext0: {drops_before} -> {drops_after}");
    // And the federation still works, on the sessions it has.
    let (pong, text) = ok(edge.ping("partner.example", PING_TIMEOUT));
    assert!(pong, "{}", diag(&format!("{fam}: edge.example pings partner.example again: {text}")));

    // Stopped here (also on a failed assertion above, by drop): servers, then DNS.
    drop((edge, remote, dns));
}

#[test]
fn prosody_federates_both_ways_by_srv_through_the_host_mode_filter_during_a_syn_flood() {
    ok(prosody::require_installed());
    let started = Instant::now();
    let t = ok(Topology::host_mode());
    // Prosody cannot bind its outgoing connections to an address, and the rows name
    // access-edge as their source: the host's routes to the partner's link prefer
    // access-edge as source over the gateway address the host also has on that link,
    // as an operator running Prosody on a host-mode NIC sets them.
    ok(t.fw.ip(&["route", "replace", "198.51.100.0/24", "dev", "ext0", "proto", "kernel", "scope", "link", "src", "203.0.113.10"]));
    ok(t.fw.ip(&["-6", "route", "replace", "2001:db8:5100::/64", "dev", "ext0", "proto", "kernel", "metric", "256", "src", "2001:db8:203::10"]));
    for (to, from) in [(PARTNER4, ACCESS4), (PARTNER6, ACCESS6)] {
        let route = route_get(&t.fw, to);
        assert!(route.contains(&format!("src {from}")), "the host reaches the partner from access-edge: {route}");
    }
    let host_ll = wait_link_local(&t.fw, "ext0");
    wait_link_local(&t.partner, "eth0");
    let scope = ifindex_in(&t.partner, "eth0");

    // The host's SSH: a listener on port 22 of every address, IPv4 and IPv6.
    ok(echo_server(&t.fw, "[::]:22".parse().unwrap()));
    assert_eq!(ok(connect(&t.fw, "127.0.0.1:22".parse().unwrap(), T)), Outcome::Connected, "the host's own port 22 listens");

    // The vendor's external table (federation, DNS out); every packet that involves
    // none of the edge addresses is dropped too, so that the gateway addresses the
    // host has on the partner's link are closed as well.
    let config = ok(t.write_config(&format!(
        "[policy]\ntables = [\"lync-edge-external\"]\nunpoliced = \"drop\"\n[state]\nmax-embryonic = {MAX_EMBRYOS}\ncensus-interval = 1\n"
    )));
    let d = ok(t.start(&config));
    let before = ok(t.stats());

    // Port 22 from the link: through access-edge, through the host's other global
    // addresses on the link (the partner's gateway), through its link-local address.
    let link_local = SocketAddr::V6(SocketAddrV6::new(host_ll, 22, 0, scope));
    let ssh4 = [("access-edge", sa(ACCESS4, 22)), ("the gateway address", sa(GATEWAY4, 22))];
    let ssh6 = [("access-edge", sa(ACCESS6, 22)), ("the gateway address", sa(GATEWAY6, 22)), ("the link-local address", link_local)];

    let flood = ok(SynFlood::start(&t));
    federate(&t, "v4", ACCESS4, PARTNER4, &ssh4);
    federate(&t, "v6", ACCESS6, PARTNER6, &ssh6);

    let sent = ok(flood.finish());
    eprintln!("flood: {sent} SYNs in all, {:.0}x the handshake table", sent as f64 / MAX_EMBRYOS as f64);
    assert!(sent >= 10 * MAX_EMBRYOS, "the flood was ten times the handshake table at least: {sent}");

    let status = ok(t.status_counted_after(std::time::SystemTime::now()));
    let ev = &status["flow_events"];
    eprintln!("flow events: {ev}");
    let n = |table: &str, what: &str| ev[table][what].as_u64().unwrap_or_else(|| panic!("{table}.{what} in {status:#}"));
    assert_eq!(status["max_embryos"].as_u64(), Some(MAX_EMBRYOS), "{status:#}");
    // Every spoofed SYN that reached the filter was a handshake from outside. A few of
    // the generator's live frames can be lost on the way (up to about 1% in runs
    // here), so the filter's count, not the generator's, is what the table saw.
    let received = n("embryos", "created");
    eprintln!("flood: {received} handshakes from outside recorded of {sent} SYNs sent");
    assert!(received >= 10 * MAX_EMBRYOS && received >= sent * 9 / 10, "the flood reached the filter, ten tables' worth: {sent} sent, {ev:#}");
    assert!(n("embryos", "evicted") >= received - MAX_EMBRYOS - 8, "the flood churned the handshake table: {ev:#}");
    // The host's own connections (per family: its ping's connection out, and its
    // dialback connection back for the partner's ping) had their handshakes in the
    // trusted side's table, which the flood cannot reach: none evicted.
    assert!(n("embryos_out", "created") >= 4, "the host's connections to the partner: {ev:#}");
    assert_eq!(n("embryos_out", "evicted"), 0, "no handshake of the host's was evicted: {ev:#}");
    assert_eq!(n("flows", "evicted"), 0, "{ev:#}");

    // The flood's SYNs and the partner's connections passed under federation-in.
    // (The rows the host opens are recorded at egress, which counts no hits: their
    // flows are asserted in `federate`.)
    let stats = ok(t.stats());
    let hits = rule_hits(&stats, "federation-in") - rule_hits(&before, "federation-in");
    assert!(hits >= received, "the flood's SYNs and the partner's packets counted under federation-in: {hits}");
    drop(d);
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}
