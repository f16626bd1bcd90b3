//! Blind attacks on live federation connections, end to end: the perimeter in network
//! namespaces, the real daemon, real TCP echo connections, and an outsider who knows
//! each connection's 4-tuple (it is on the partner's side of the firewall) but not its
//! sequence numbers. Its segments carry a TCP checksum of zero, as the original attack
//! did, so the Edge and the partner discard them: whether a connection survives is up
//! to the filter alone.
//!
//! Privileged: run as root, one test at a time.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    thread::sleep,
    time::Duration,
};

use edge_filter::{Filter, LoadOptions, Maps};
use edge_filter_tests::{
    packet::{flags::*, tcp},
    plan::*,
    topology::{Netns, Topology, echo, echo_server, inject_all, mac_of, open_stream, sa},
};
use serde_json::Value;

const T: Duration = Duration::from_millis(1500);
const METRICS: &str = "127.0.0.1:9635";

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// A live connection: its name, its stream, and the tuple from the opener's side.
struct Conn {
    name: String,
    stream: TcpStream,
    opener: SocketAddr,
    responder: SocketAddr,
}

fn conn(name: &str, ns: &Netns, to: SocketAddr) -> Conn {
    let stream = ok(open_stream(ns, to, T));
    let opener = stream.local_addr().unwrap();
    Conn { name: name.to_owned(), opener, responder: to, stream }
}

/// Inject `frames` into the firewall's `fw_dev` from the host side of its link,
/// addressed to the firewall as the host's own frames are.
fn send(t: &Topology, host: &Netns, host_dev: &'static str, fw_dev: &str, frames: Vec<Vec<u8>>) {
    let dst = ok(mac_of(&t.fw, fw_dev));
    let src = ok(mac_of(host, host_dev));
    let frames: Vec<Vec<u8>> = frames
        .into_iter()
        .map(|mut f| {
            f[..6].copy_from_slice(&dst);
            f[6..12].copy_from_slice(&src);
            f
        })
        .collect();
    ok(host.enter(move || inject_all(host_dev, frames.iter().map(Vec::as_slice))).and_then(|r| r));
}

/// Send the frames `frames(from, to)` builds, from the impersonated `side` of `c` to
/// the other, as an outsider on the connection's outer link would (the Front End's
/// for `internal-mtls`, the partner's for the others).
fn spoof(t: &Topology, c: &Conn, side: Side, frames: impl FnOnce(SocketAddr, SocketAddr) -> Vec<Vec<u8>>) {
    let (from, to) = match side {
        Side::Opener => (c.opener, c.responder),
        Side::Responder => (c.responder, c.opener),
    };
    let (host, fw_dev) = if c.name.contains("internal") { (&t.frontend, "fe0") } else { (&t.partner, "out0") };
    send(t, host, "eth0", fw_dev, frames(from, to));
}

fn segment(from: SocketAddr, to: SocketAddr, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    tcp(from.ip(), to.ip(), from.port(), to.port(), flags).seq_ack(seq, ack).build()
}

fn status(t: &Topology) -> Value {
    // Counted after everything the test did so far.
    ok(t.status_counted_after(std::time::SystemTime::now()))
}

fn start(t: &Topology, extra: &str) -> edge_filter_tests::topology::Daemon {
    for (ip, port) in [(ACCESS4, 5269), (ACCESS6, 5269), (INTERNAL4, 23456), (INTERNAL6, 23456)] {
        ok(echo_server(&t.edge, sa(ip, port)));
    }
    for ip in [PARTNER4, PARTNER6] {
        ok(echo_server(&t.partner, sa(ip, 5269)));
    }
    let config = ok(t.write_config(&format!("[metrics]\nlisten = \"{METRICS}\"\n{extra}")));
    ok(t.start(&config))
}

/// The outsider's three sequences from the original findings, each against
/// connections in both families: ACKs that walked the tracked number 2^30 at a time and
/// an RST where the walk ended (1), an RST at the right number arriving on the Internet
/// side for a connection the Front End opened on the corporate side (2), and a FIN at a
/// guessed number, followed by more idle time than the closing timeout (3).
#[test]
fn echo_connections_survive_blind_attacks() {
    let t = ok(Topology::new());
    let d = start(&t, "[state]\nclosing-timeout = 2\ncensus-interval = 1\n");
    let mut conns = Vec::new();
    for (fam, access, internal, partner) in [("v4", ACCESS4, INTERNAL4, PARTNER4), ("v6", ACCESS6, INTERNAL6, PARTNER6)] {
        conns.push((conn(&format!("{fam} federation-in"), &t.partner, sa(access, 5269)), Side::Opener));
        conns.push((conn(&format!("{fam} federation-out"), &t.edge, sa(partner, 5269)), Side::Responder));
        conns.push((conn(&format!("{fam} internal-mtls"), &t.frontend, sa(internal, 23456)), Side::Opener));
    }
    for (c, _) in &mut conns {
        assert!(echo(&mut c.stream), "{} before the attacks", c.name);
    }

    // 1: the walk and the RST, from the side the outsider can impersonate, at a base
    // it guessed.
    for (i, (c, side)) in conns.iter().enumerate() {
        let base = 0x1357_9bdf_u32.wrapping_mul(i as u32 + 1);
        spoof(&t, c, *side, |from, to| {
            let mut frames: Vec<Vec<u8>> = (1..=6u32).map(|k| segment(from, to, ACK, base.wrapping_add(k << 30), 0)).collect();
            frames.push(segment(from, to, RST, base.wrapping_add(6 << 30), 0));
            frames
        });
    }
    sleep(Duration::from_millis(200));
    for (c, _) in &mut conns {
        assert!(echo(&mut c.stream), "{} after ACKs walking to an RST", c.name);
    }

    // 2: the Front End's connections, attacked from the partner's side with the right
    // numbers (read from the filter's own table, as an outsider who guessed right).
    let maps = ok(Maps::open_pinned(&t.pin_dir.join("maps")).map_err(anyhow::Error::from));
    for (c, _) in conns.iter().filter(|(c, _)| c.name.contains("internal")) {
        let flows = ok(maps.flows().map_err(anyhow::Error::from));
        let flow = flows
            .iter()
            .find(|(k, _)| u16::from_be(k.0.sport_be) == c.opener.port() && u16::from_be(k.0.dport_be) == 23456)
            .map(|(_, f)| *f)
            .unwrap_or_else(|| panic!("{}: no flow in {flows:?}", c.name));
        let rst = segment(c.opener, c.responder, RST | ACK, flow.responder.ack, flow.opener.ack);
        let fin = segment(c.opener, c.responder, FIN | ACK, flow.responder.ack, flow.opener.ack);
        send(&t, &t.partner, "eth0", "out0", vec![fin, rst]);
    }
    sleep(Duration::from_millis(200));
    for (c, _) in &mut conns {
        assert!(echo(&mut c.stream), "{} after an RST at the right number on another NIC", c.name);
    }

    // 3: a FIN at a guessed number, then twice the closing timeout of silence.
    for (i, (c, side)) in conns.iter().enumerate() {
        spoof(&t, c, *side, |from, to| vec![segment(from, to, FIN | ACK, 0x2468_ace0_u32.wrapping_mul(i as u32 + 3), 0)]);
    }
    sleep(Duration::from_secs(4));
    for (c, _) in &mut conns {
        assert!(echo(&mut c.stream), "{} idle for twice the closing timeout after a blind FIN", c.name);
    }
    let s = status(&t);
    assert_eq!(s["flow_events"]["flows"]["closed"], 0, "{s:#}");
    drop(d);
}

#[derive(Clone, Copy)]
enum Side {
    /// The outsider impersonates the connection's opener (a partner, the Front End).
    Opener,
    /// The outsider impersonates the responder (the partner the Edge called).
    Responder,
}

/// An idle federation connection, then ten times the flow table in completed
/// handshakes from one IPv6 /64 of the Internet (through the filter's own program,
/// with BPF_PROG_TEST_RUN on the firewall's NICs): the flood holds its share of the
/// table, the rest of its handshakes are counted as refused, and the idle connection
/// still echoes.
#[test]
fn an_idle_connection_survives_a_flood_of_completed_handshakes_from_one_prefix() {
    const TABLE: u32 = 1024;
    const SHARE: u32 = 64;
    let t = ok(Topology::new());
    let d = start(&t, &format!("[state]\nmax-flows = {TABLE}\nmax-embryonic = {TABLE}\nmax-flows-per-source = {SHARE}\ncensus-interval = 1\n"));
    let mut idle = vec![
        conn("v4 federation-in", &t.partner, sa(ACCESS4, 5269)),
        conn("v6 federation-in", &t.partner, sa(ACCESS6, 5269)),
        conn("v6 federation-out", &t.edge, sa(PARTNER6, 5269)),
    ];
    for c in &mut idle {
        assert!(echo(&mut c.stream), "{} before the flood", c.name);
    }
    let maps_dir = t.pin_dir.join("maps");
    let flood = 10 * TABLE;
    ok(t.fw
        .enter(move || -> anyhow::Result<()> {
            // The filter's program once more, on the daemon's pinned maps.
            let filter = Filter::load(&LoadOptions { map_pin_dir: Some(maps_dir), ..LoadOptions::default() })?;
            let (out0, ext0) = (edge_filter::pins::ifindex("out0")?, edge_filter::pins::ifindex("ext0")?);
            for i in 0..flood {
                let attacker: IpAddr = format!("2001:db8:6666:1::{:x}", i + 1).parse()?;
                let port = 1024 + (i % 60000) as u16;
                let a = SocketAddr::new(attacker, port);
                let e = sa(ACCESS6, 5269);
                filter.test_run(&segment(a, e, SYN, 1000, 0), out0)?;
                filter.test_run(&segment(e, a, SYN_ACK, 5000, 1001), ext0)?;
                filter.test_run(&segment(a, e, ACK, 1001, 5001), out0)?;
            }
            Ok(())
        })
        .and_then(|r| r));
    for c in &mut idle {
        assert!(echo(&mut c.stream), "{} after the flood, on the same connection", c.name);
    }
    let s = status(&t);
    let ev = &s["flow_events"];
    assert_eq!(ev["flows"]["evicted"], 0, "{ev:#}");
    assert_eq!(ev["source_limited"], u64::from(flood - SHARE), "{ev:#}");
    assert_eq!(ev["flows"]["live"], u64::from(SHARE) + idle.len() as u64, "{ev:#}");
    let metrics = ok(t.metrics(METRICS.parse().unwrap()));
    let limited =
        metrics.lines().find(|l| l.starts_with("edge_filter_flow_events_total{event=\"source_limited\"}")).unwrap_or_else(|| panic!("{metrics}"));
    assert!(limited.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= u64::from(flood - SHARE), "{limited}");
    drop(d);
}
