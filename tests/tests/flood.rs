//! A SYN flood against the federation port, generated in the kernel, while federation
//! connections are established: the connections go on exchanging data without a
//! reconnect, and the counters say what the flood did.
//!
//! Privileged: run as root, one test at a time.

use std::{net::TcpStream, time::Duration};

use edge_filter_tests::{
    packet::{self, flags::SYN, tcp},
    plan::*,
    topology::{Topology, echo, echo_server, flood, mac_of, open_stream, sa},
};
use serde_json::Value;

const T: Duration = Duration::from_millis(1500);
const MAX_FLOWS: u64 = 1024;
const MAX_EMBRYOS: u64 = 256;
/// Twenty times the flow table, eighty times the handshake table.
const FLOOD: u32 = 20 * MAX_FLOWS as u32;

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn established_federation_flows_survive_a_syn_flood_of_twenty_times_the_table() {
    let t = ok(Topology::new());
    for (ip, port) in [(ACCESS4, 5269), (ACCESS6, 5269), (INTERNAL4, 23456), (INTERNAL6, 23456)] {
        ok(echo_server(&t.edge, sa(ip, port)));
    }
    for ip in [PARTNER4, PARTNER6] {
        ok(echo_server(&t.partner, sa(ip, 5269)));
    }
    let config = ok(t.write_config(&format!("[state]\nmax-flows = {MAX_FLOWS}\nmax-embryonic = {MAX_EMBRYOS}\n")));
    let d = ok(t.start(&config));

    // Federation connections in every direction and family, kept open.
    let mut conns: Vec<(String, TcpStream)> = Vec::new();
    for (fam, access, internal, partner) in [("v4", ACCESS4, INTERNAL4, PARTNER4), ("v6", ACCESS6, INTERNAL6, PARTNER6)] {
        for i in 0..2 {
            conns.push((format!("{fam} R1 #{i}"), ok(open_stream(&t.partner, sa(access, 5269), T))));
            conns.push((format!("{fam} R2 #{i}"), ok(open_stream(&t.edge, sa(partner, 5269), T))));
            conns.push((format!("{fam} R3 #{i}"), ok(open_stream(&t.frontend, sa(internal, 23456), T))));
        }
    }
    for (name, s) in &mut conns {
        assert!(echo(s), "{name} before the flood");
    }

    // Spoofed SYNs from 198.51.100.128-255, every source port, to access-edge:5269.
    let mut frame = tcp(PARTNER4, ACCESS4, 1024, 5269, SYN).build();
    frame[..6].copy_from_slice(&ok(mac_of(&t.fw, "out0")));
    frame[6..12].copy_from_slice(&ok(mac_of(&t.partner, "eth0")));
    let frame = packet::set_byte(frame, 14 + 15, 128);
    let took = ok(flood(&t.partner, "eth0", frame, FLOOD));
    eprintln!("flood: {FLOOD} SYNs in {took:?} ({:.2} Mpps)", f64::from(FLOOD) / took.as_secs_f64() / 1e6);
    std::thread::sleep(Duration::from_millis(500));

    for (name, s) in &mut conns {
        assert!(echo(s), "{name} after the flood, on the same connection");
    }
    let status: Value = serde_json::from_slice(&ok(t.cli(&["status", "--json"])).stdout).unwrap();
    let ev = &status["flow_events"];
    let n = |table: &str, what: &str| ev[table][what].as_u64().unwrap_or_else(|| panic!("{table}.{what} in {status:#}"));
    assert_eq!(n("flows", "evicted"), 0, "no established flow was evicted: {ev:#}");
    assert_eq!(n("flows", "insert_failed"), 0, "{ev:#}");
    assert!(n("flows", "live") >= conns.len() as u64, "{ev:#}");
    assert!(n("embryos", "created") >= u64::from(FLOOD), "every SYN was a handshake: {ev:#}");
    assert!(n("embryos", "evicted") >= u64::from(FLOOD) - MAX_EMBRYOS, "the flood evicted its own kind: {ev:#}");
    assert!(n("embryos", "live") <= MAX_EMBRYOS, "{ev:#}");
    let metrics = ok(t.metrics("127.0.0.1:9435".parse().unwrap()));
    let evicted = metrics.lines().find(|l| l.starts_with("edge_filter_flow_events_total{event=\"handshake_evicted\"}")).unwrap();
    assert!(evicted.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= u64::from(FLOOD) - MAX_EMBRYOS, "{evicted}");
    assert!(metrics.lines().any(|l| l == "edge_filter_flow_events_total{event=\"evicted\"} 0"), "{metrics}");
    drop(d);
}
