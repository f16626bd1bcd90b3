//! A firewall pair fails over without dropping a connection: two nodes running
//! edge-filter from the same config, real keepalived moving the gateway addresses
//! (`edge_filter_tests::pair`), real TCP connections of the three rows in both
//! families. The node that takes over has never seen the connections; the Edge's next
//! segment of each picks its flow up, and every connection carries data again on the
//! same socket. Before any of it, a flood of spoofed ACKs and SYN-ACKs against the
//! standby creates nothing there.
//!
//! Privileged: run as root, with keepalived installed (`cargo xtask setup`).

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant, SystemTime},
};

use edge_filter_tests::{
    packet::{
        flags::{ACK, PSH, SYN_ACK},
        tcp,
    },
    pair::Pair,
    plan::*,
    topology::{echo, echo_server, inject_all, mac_of, open_stream, open_stream_from, packets, sa},
};

/// Spoofed segments sent against the standby, ACKs and SYN-ACKs in turn.
const SPOOFED: u32 = 2_000;

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// A connection of a row, opened through the pair.
struct Conn {
    what: String,
    stream: TcpStream,
    tuple: (SocketAddr, SocketAddr),
}

/// The three rows' connections in both families: a partner to access-edge (R1), the
/// Edge to a partner from access-edge (R2), the Front End to internal-edge (R3).
fn open_all(p: &Pair) -> Vec<Conn> {
    let t = Duration::from_secs(5);
    let mut conns = Vec::new();
    for (fam, partner, access, internal) in [("v4", PARTNER4, ACCESS4, INTERNAL4), ("v6", PARTNER6, ACCESS6, INTERNAL6)] {
        for (what, stream) in [
            ("R1 partner to access-edge", open_stream(&p.partner, sa(access, 5269), t)),
            ("R2 access-edge to a partner", open_stream_from(&p.edge, sa(access, 0), sa(partner, 5269), t)),
            ("R3 Front End to internal-edge", open_stream(&p.frontend, sa(internal, 23456), t)),
        ] {
            let stream = stream.unwrap_or_else(|e| panic!("{fam} {what}: {e:#}"));
            let tuple = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
            conns.push(Conn { what: format!("{fam} {what}"), stream, tuple });
        }
    }
    conns
}

/// Every connection carries an echo within `within` (TCP's retransmission covers the
/// failover), on the same socket and 5-tuple; the slowest round trip.
fn all_carry_data(conns: &mut [Conn], within: Duration, when: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    for c in conns.iter_mut() {
        c.stream.set_read_timeout(Some(within)).unwrap();
        let start = Instant::now();
        assert!(echo(&mut c.stream), "{}: no echo within {within:?} {when}", c.what);
        slowest = slowest.max(start.elapsed());
        let tuple = (c.stream.local_addr().unwrap(), c.stream.peer_addr().unwrap());
        assert_eq!(tuple, c.tuple, "{}: the same connection {when}", c.what);
    }
    slowest
}

/// Flows node `i` picked up, and established flows it holds, by its daemon's census.
fn pickups(p: &Pair, i: usize, since: SystemTime) -> (u64, u64) {
    let status = ok(p.nodes[i].t.status_counted_after(since));
    let flows = &status["flow_events"]["flows"];
    (flows["picked_up"].as_u64().unwrap_or(u64::MAX), status["flow_events"]["live"]["established"].as_u64().unwrap_or(u64::MAX))
}

#[test]
fn connections_survive_failover_and_failback_of_a_firewall_pair() {
    let mut p = ok(Pair::new());
    for addr in [sa(ACCESS4, 5269), sa(ACCESS6, 5269), sa(INTERNAL4, 23456), sa(INTERNAL6, 23456)] {
        ok(echo_server(&p.edge, addr));
    }
    for addr in [sa(PARTNER4, 5269), sa(PARTNER6, 5269)] {
        ok(echo_server(&p.partner, addr));
    }
    ok(p.start());
    let mut conns = open_all(&p);
    all_carry_data(&mut conns, Duration::from_secs(5), "through node 1");
    let (picked, established) = pickups(&p, 0, SystemTime::now());
    assert_eq!((picked, established), (0, 6), "node 1 saw every connection open");
    let (picked, established) = pickups(&p, 1, SystemTime::now());
    assert_eq!((picked, established), (0, 0), "the standby has seen nothing");

    // Spoofed ACKs and SYN-ACKs from outside, from 198.51.100.128-255 and every port,
    // shaped as the partners' answers of federation-out, sent to the standby itself:
    // nothing from outside creates state.
    let (node2_mac, partner_mac) = (ok(mac_of(&p.nodes[1].t.fw, "out0")), ok(mac_of(&p.partner, "eth0")));
    let mut frames = Vec::new();
    for i in 0..SPOOFED {
        let src = std::net::Ipv4Addr::new(198, 51, 100, 128 + (i % 128) as u8);
        let flags = if i % 2 == 0 { ACK | PSH } else { SYN_ACK };
        let mut frame = tcp(src.into(), ACCESS4, 5269, 1024 + i as u16, flags).seq_ack(i.wrapping_mul(2_654_435_761), 9).build();
        frame[..6].copy_from_slice(&node2_mac);
        frame[6..12].copy_from_slice(&partner_mac);
        frames.push(frame);
    }
    ok(ok(p.partner.enter(move || inject_all("eth0", frames.iter().map(Vec::as_slice)))));
    let status = ok(p.nodes[1].t.status_counted_after(SystemTime::now()));
    let ev = &status["flow_events"];
    assert_eq!(
        (ev["flows"]["picked_up"].as_u64(), ev["flows"]["live"].as_u64(), ev["embryos"]["live"].as_u64(), ev["embryos_out"]["live"].as_u64()),
        (Some(0), Some(0), Some(0), Some(0)),
        "{SPOOFED} spoofed ACKs and SYN-ACKs against the standby created nothing: {ev:#}"
    );
    let stats: serde_json::Value = serde_json::from_slice(&ok(p.nodes[1].t.cli(&["stats", "--json"])).stdout).unwrap();
    assert_eq!(packets(&stats, "out0", "drop", "no_rule"), u64::from(SPOOFED), "the standby refused every one: {:#}", stats["counters"]);

    // Node 1 fails: its links go down. Node 2 takes the addresses, and picks every
    // connection up from the Edge's side.
    ok(p.nodes[0].links(false));
    ok(p.wait_active(1, Duration::from_secs(5)));
    let slowest = all_carry_data(&mut conns, Duration::from_secs(10), "after node 1 failed");
    let since = SystemTime::now();
    let (picked, established) = pickups(&p, 1, since);
    assert_eq!((picked, established), (6, 6), "node 2 picked up every connection");
    let metrics = ok(p.nodes[1].t.metrics_counted_after("127.0.0.1:9435".parse().unwrap(), since));
    assert!(metrics.lines().any(|l| l == "edge_filter_flow_events_total{event=\"picked_up\"} 6"), "node 2's /metrics counts the pickups:\n{metrics}");
    let flows = String::from_utf8_lossy(&ok(p.nodes[1].t.cli(&["flows"])).stdout).into_owned();
    assert_eq!(flows.matches("established*").count(), 6, "node 2's `flows` marks what it picked up:\n{flows}");
    assert!(flows.contains("* picked up from the Edge's side"), "{flows}");
    eprintln!("failover to node 2: slowest echo {slowest:?}");

    // Node 1 comes back as after a reboot (empty state tables) and takes over again
    // (preempt): it picks every connection up in turn.
    ok(p.nodes[0].forget_state());
    ok(p.nodes[0].start_filter());
    ok(p.nodes[0].links(true));
    ok(p.wait_active(0, Duration::from_secs(5)));
    let slowest = all_carry_data(&mut conns, Duration::from_secs(10), "after node 1 came back");
    let (picked, established) = pickups(&p, 0, SystemTime::now());
    assert_eq!((picked, established), (6, 6), "node 1, fresh, picked up every connection");
    eprintln!("failback to node 1: slowest echo {slowest:?}");

    // keepalived stops on node 1 (an orderly handover): node 2, which holds the flows
    // from before, carries on without picking anything up again.
    ok(p.nodes[0].stop_keepalived());
    ok(p.wait_active(1, Duration::from_secs(5)));
    all_carry_data(&mut conns, Duration::from_secs(10), "after keepalived stopped on node 1");
    let (picked, established) = pickups(&p, 1, SystemTime::now());
    assert_eq!((picked, established), (6, 6), "node 2 still holds the flows it picked up");
    ok(p.nodes[0].start_keepalived());
    ok(p.wait_active(0, Duration::from_secs(5)));
    all_carry_data(&mut conns, Duration::from_secs(10), "after node 1 took over again");
}
