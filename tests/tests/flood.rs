//! Floods generated in the kernel while federation connections are established: a SYN
//! flood against the federation port, and a UDP flood of spoofed sources against an
//! allowed UDP row (the A/V Edge's STUN port). The connections go on exchanging data
//! without a reconnect, no TCP flow is evicted, and the counters say what the flood did
//! to its own table.
//!
//! Privileged: run as root, one test at a time.

use std::{net::TcpStream, time::Duration};

use edge_filter_tests::{
    packet::{self, flags::SYN, tcp, udp},
    plan::*,
    topology::{
        AV4, AV6, Datagram, Topology, WHOLE_EDGE_SETS, datagram, echo, echo_server, flood, mac_of, open_stream, open_stream_from, sa, udp_echo_server,
    },
};
use serde_json::Value;

const T: Duration = Duration::from_millis(1500);
const MAX_FLOWS: u64 = 1024;
const MAX_EMBRYOS: u64 = 256;
/// Twenty times the flow table, eighty times the handshake table.
const FLOOD: u32 = 20 * MAX_FLOWS as u32;
const METRICS: &str = "127.0.0.1:9538";
const UDP_METRICS: &str = "127.0.0.1:9539";
/// A small UDP table, so that the flood below is many times its size.
const MAX_UDP_FLOWS: u64 = 256;
/// Eighty times the UDP table.
const UDP_FLOOD: u32 = 80 * MAX_UDP_FLOWS as u32;

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Each named connection echoes; `when` says at which point, in a failure.
fn echo_all(conns: &mut [(String, TcpStream)], when: &str) {
    for (name, s) in conns {
        assert!(echo(s), "{name} {when}");
    }
}

/// Send `count` copies of `frame` from the partner's NIC to the firewall's `out0`,
/// varied by the generator: sources 198.51.100.128-255 (the frame's last source
/// byte is set to 128) and ever new source ports. `what` names the frames in the rate
/// printed; then the filter gets half a second to settle.
fn flood_from_partner(t: &Topology, mut frame: Vec<u8>, count: u32, what: &str) {
    frame[..6].copy_from_slice(&ok(mac_of(&t.fw, "out0")));
    frame[6..12].copy_from_slice(&ok(mac_of(&t.partner, "eth0")));
    let frame = packet::set_byte(frame, 14 + 15, 128);
    let took = ok(flood(&t.partner, "eth0", frame, count));
    eprintln!("flood: {count} {what} in {took:?} ({:.2} Mpps)", f64::from(count) / took.as_secs_f64() / 1e6);
    std::thread::sleep(Duration::from_millis(500));
}

/// The flow events of `status` (`status --json`) after a flood of `count` frames,
/// each opening an entry of `table` (which holds `size`): no established TCP flow was
/// evicted or refused, the `conns` connections are live, and the flood churned its
/// own table only.
fn assert_only_the_flooded_table_churned(status: &Value, table: &str, size: u64, count: u32, conns: usize) {
    let ev = &status["flow_events"];
    let n = |table: &str, what: &str| ev[table][what].as_u64().unwrap_or_else(|| panic!("{table}.{what} in {status:#}"));
    assert_eq!(n("flows", "evicted"), 0, "no established TCP flow was evicted: {ev:#}");
    assert_eq!(n("flows", "insert_failed"), 0, "{ev:#}");
    assert!(n("flows", "live") >= conns as u64, "{ev:#}");
    assert!(n(table, "created") >= u64::from(count), "every one of the {count} flooding frames opened an entry of {table}: {ev:#}");
    assert!(n(table, "evicted") >= u64::from(count) - size, "the flood churned its own table, {table} of {size}: {ev:#}");
    assert!(n(table, "live") <= size, "{table} holds at most {size}: {ev:#}");
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
    // A metrics port of its own (the daemon tests use the default one).
    let config = ok(t.write_config(&format!(
        "[state]\nmax-flows = {MAX_FLOWS}\nmax-embryonic = {MAX_EMBRYOS}\ncensus-interval = 1\n[metrics]\nlisten = \"{METRICS}\"\n"
    )));
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
    echo_all(&mut conns, "before the flood");

    // Spoofed SYNs from 198.51.100.128-255, every source port, to access-edge:5269.
    flood_from_partner(&t, tcp(PARTNER4, ACCESS4, 1024, 5269, SYN).build(), FLOOD, "SYNs");

    echo_all(&mut conns, "after the flood, on the same connection");
    let counted = std::time::SystemTime::now();
    let status: Value = ok(t.status_counted_after(counted));
    // Every SYN was a handshake, and the flood evicted its own kind.
    assert_only_the_flooded_table_churned(&status, "embryos", MAX_EMBRYOS, FLOOD, conns.len());
    let metrics = ok(t.metrics_counted_after(METRICS.parse().unwrap(), counted));
    let evicted = metrics.lines().find(|l| l.starts_with("edge_filter_flow_events_total{event=\"handshake_evicted\"}")).unwrap();
    assert!(evicted.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= u64::from(FLOOD) - MAX_EMBRYOS, "{evicted}");
    assert!(metrics.lines().any(|l| l == "edge_filter_flow_events_total{event=\"evicted\"} 0"), "{metrics}");
    drop(d);
}

#[test]
fn established_federation_flows_survive_a_udp_flood_of_eighty_times_the_udp_table_to_stun() {
    let t = ok(Topology::new());
    ok(t.add_av_edge());
    for (ip, port) in [(ACCESS4, 5269), (ACCESS6, 5269), (INTERNAL4, 23456), (INTERNAL6, 23456)] {
        ok(echo_server(&t.edge, sa(ip, port)));
    }
    for ip in [PARTNER4, PARTNER6] {
        ok(echo_server(&t.partner, sa(ip, 5269)));
    }
    // The STUN service the flood aims at answers every datagram it gets.
    for ip in [AV4, AV6] {
        ok(udp_echo_server(&t.edge, sa(ip, 3478)));
    }
    let config = ok(t.write_config_with_sets(
        WHOLE_EDGE_SETS,
        &format!(
            "[policy]\ntables = [\"lync-edge-external\", \"lync-edge-internal\"]\n\
             [state]\nmax-udp-flows = {MAX_UDP_FLOWS}\ncensus-interval = 1\n[metrics]\nlisten = \"{UDP_METRICS}\"\n"
        ),
    ));
    let d = ok(t.start(&config));

    // Federation connections in every direction and family, kept open. The Edge's
    // own connections leave from access-edge: with the A/V address beside it on the
    // NIC, the kernel could pick either for IPv6.
    let mut conns: Vec<(String, TcpStream)> = Vec::new();
    for (fam, access, internal, partner) in [("v4", ACCESS4, INTERNAL4, PARTNER4), ("v6", ACCESS6, INTERNAL6, PARTNER6)] {
        for i in 0..2 {
            conns.push((format!("{fam} federation-in #{i}"), ok(open_stream(&t.partner, sa(access, 5269), T))));
            conns.push((format!("{fam} federation-out #{i}"), ok(open_stream_from(&t.edge, sa(access, 0), sa(partner, 5269), T))));
            conns.push((format!("{fam} internal-mtls #{i}"), ok(open_stream(&t.frontend, sa(internal, 23456), T))));
        }
    }
    echo_all(&mut conns, "before the flood");
    let stun = |ip, av| ok(datagram(&t.partner, sa(ip, 0), sa(av, 3478), b"binding request", T));
    assert_eq!(stun(PARTNER4, AV4), Datagram::Answered, "STUN before the flood");

    // Spoofed STUN datagrams from 198.51.100.128-255 and ever new source ports to
    // av-edge:3478: each one opens a UDP flow of `stun-udp-in`. The generator is
    // written for TCP frames, and serves UDP as well: it varies the IPv4 source and
    // the source port (at the same offset in UDP) and fixes the IPv4 checksum; the
    // UDP checksum is 0 ("none" in IPv4), and the TCP checksum it also updates lies
    // in the datagram's payload, which must make the frame long enough for it.
    let frame = udp(PARTNER4, AV4, 1024, 3478).payload(24).build();
    assert!(frame.len() >= 14 + 20 + 18, "the generator varies frames that hold a TCP checksum's offset");
    flood_from_partner(&t, frame, UDP_FLOOD, "datagrams");

    echo_all(&mut conns, "after the flood, on the same connection");
    // The service the flood aimed at still answers a real client: its table makes
    // room by evicting the oldest UDP flows.
    assert_eq!(stun(PARTNER4, AV4), Datagram::Answered, "STUN after the flood");
    assert_eq!(stun(PARTNER6, AV6), Datagram::Answered, "STUN (v6) after the flood");

    let counted = std::time::SystemTime::now();
    let status: Value = ok(t.status_counted_after(counted));
    eprintln!("flow events: {}", status["flow_events"]);
    // Every spoofed datagram opened a UDP flow, and the flood churned the UDP table.
    assert_only_the_flooded_table_churned(&status, "udp", MAX_UDP_FLOWS, UDP_FLOOD, conns.len());
    assert_eq!(status["max_udp_flows"].as_u64(), Some(MAX_UDP_FLOWS), "{status:#}");
    let stats: Value = serde_json::from_slice(&ok(t.cli(&["stats", "--json"])).stdout).unwrap();
    let hits = stats["rules"].as_array().unwrap().iter().find(|r| r["rule"] == "stun-udp-in").map_or(0, |r| r["packets"].as_u64().unwrap());
    assert!(hits >= u64::from(UDP_FLOOD), "every datagram counted under its row: {hits}");
    let metrics = ok(t.metrics_counted_after(UDP_METRICS.parse().unwrap(), counted));
    assert!(metrics.lines().any(|l| l == "edge_filter_flow_events_total{event=\"evicted\"} 0"), "{metrics}");
    drop(d);
}
