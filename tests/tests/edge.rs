//! The whole Edge end to end: the vendor's `lync-edge-external` and
//! `lync-edge-internal` tables enforced by the real daemon between real hosts in
//! network namespaces, with real TCP connections and real UDP requests, in both
//! families.
//!
//! Every case is checked twice: as the user sees it (the connection echoes or the
//! datagram is answered, or nothing at all comes back) and as the operator sees it in
//! `stats --json` (the row id whose hits moved and the NIC that passed the answer as
//! `pass/reply`, or the NIC that counted the refusal as `drop/no_rule` and no row
//! moving). A refusal is only evidence when something listens, so every server a
//! refused case aims at first answers from its own namespace, where the filter is not
//! on the path. `check --json` and `status --json` must list the effective rows.
//!
//! The Edge is the vendor's consolidated topology: access-edge and webconf-edge share
//! 203.0.113.10 / 2001:db8:203::10, av-edge has 203.0.113.11 / 2001:db8:203::11 on
//! the same NIC, internal-edge is 192.0.2.10 / 2001:db8:192::10.
//!
//! Privileged: run as root, one test at a time.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use edge_filter_tests::{
    plan::*,
    topology::{
        Daemon, Datagram, Netns, Outcome, Topology, WHOLE_EDGE_SETS, connect_from, datagram, echo_server, packets, rule_hits, sa, udp_echo_server,
    },
};
use serde_json::Value;

/// How long an allowed attempt may take (on a veth it takes well under a millisecond).
const T: Duration = Duration::from_millis(1500);
/// How long a refused attempt waits for the answer that must not come.
const SILENT: Duration = Duration::from_millis(1000);

const TABLES: &str = "[policy]\ntables = [\"lync-edge-external\", \"lync-edge-internal\"]\n";

/// The rows of the two vendor tables, in the order of `edge-tables.md`.
const WHOLE_EDGE_ROWS: [&str; 26] = [
    "federation-in",
    "federation-out",
    "crl-out",
    "dns-tcp-out",
    "dns-udp-out",
    "sip-client-in",
    "sip-federation-in",
    "sip-federation-out",
    "psom-in",
    "rtp-tcp-out",
    "rtp-udp-out",
    "rtp-tcp-in",
    "rtp-udp-in",
    "stun-udp-out",
    "stun-udp-in",
    "stun-tcp-in",
    "stun-tcp-out",
    "internal-mtls",
    "sip-internal-in",
    "sip-internal-out",
    "psom-internal",
    "av-auth",
    "stun-internal-udp",
    "stun-internal-tcp",
    "cms-replication",
    "logging",
];

/// A STUN binding request (RFC 8489 §5: type 0x0001, no attributes, the magic
/// cookie, a transaction id). The echo server's answer carries the same bytes.
const STUN: &[u8] = &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
/// An RTP header (RFC 3550: version 2, payload type 0, sequence 1, an SSRC).
const RTP: &[u8] = &[0x80, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];

/// A DNS query (RFC 1035) for the SRV record a federating Edge looks up.
fn dns_query() -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["_sipfederationtls", "_tcp", "example", "com"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 33, 0, 1]);
    q
}

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// The topology with the A/V Edge's address, every server the cases aim at (TCP
/// echo and UDP echo), and ephemeral ports below the media range (see
/// [`Topology::ephemeral_ports_below_media_range`]: so each answer counts as
/// `pass/reply`, not as an `rtp-*` row); then the daemon running the whole Edge's
/// sets ([`WHOLE_EDGE_SETS`]) and `extra`, from the config file whose path it returns.
fn whole_edge(extra: &str) -> (Topology, PathBuf, Daemon) {
    let t = ok(Topology::new());
    ok(t.add_av_edge());
    ok(t.ephemeral_ports_below_media_range());
    for f in [V4, V6] {
        for port in [5269, 5061, 443, 22] {
            ok(echo_server(&t.edge, sa(f.access, port)));
        }
        for port in [443, 50000, 59999, 60000] {
            ok(echo_server(&t.edge, sa(f.av, port)));
        }
        for port in [5061, 8057, 5062, 4443] {
            ok(echo_server(&t.edge, sa(f.internal, port)));
        }
        // 40001: a port no row names, for the unsolicited datagram.
        for port in [3478, 50000, 59999, 60000, 40001] {
            ok(udp_echo_server(&t.edge, sa(f.av, port)));
        }
        // STUN on the Access Edge's address too: when the datagram is refused there,
        // it is the filter, not a missing server.
        ok(udp_echo_server(&t.edge, sa(f.access, 3478)));
        for port in [5061, 5269, 50000, 59999, 60000] {
            ok(echo_server(&t.partner, sa(f.partner, port)));
        }
        for port in [53, 50000, 59999, 60000] {
            ok(udp_echo_server(&t.partner, sa(f.partner, port)));
        }
        ok(echo_server(&t.frontend, sa(f.frontend, 5061)));
    }
    let config = ok(t.write_config_with_sets(WHOLE_EDGE_SETS, extra));
    let d = ok(t.start(&config));
    (t, config, d)
}

/// One attempt: from a host, from a local address and port (0: any), to a server.
struct Attempt<'a> {
    host: &'a Netns,
    from: SocketAddr,
    to: SocketAddr,
    /// `None`: a TCP connection and an echo round trip; `Some`: this UDP request.
    udp: Option<Vec<u8>>,
}

fn tcp(host: &Netns, from: IpAddr, to: SocketAddr) -> Attempt<'_> {
    Attempt { host, from: sa(from, 0), to, udp: None }
}

fn udp<'a>(host: &'a Netns, from: SocketAddr, to: SocketAddr, payload: &[u8]) -> Attempt<'a> {
    Attempt { host, from, to, udp: Some(payload.to_vec()) }
}

/// What the user saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// The connection echoed, or the datagram's answer came back.
    Answered,
    /// Nothing came back.
    Silence,
    /// An RST or an ICMP port unreachable: the attempt crossed the filter.
    Rejected,
}

impl Attempt<'_> {
    fn run(&self, timeout: Duration) -> Seen {
        match &self.udp {
            None => match ok(connect_from(self.host, self.from, self.to, timeout)) {
                Outcome::Connected => Seen::Answered,
                Outcome::TimedOut => Seen::Silence,
                Outcome::Refused => Seen::Rejected,
            },
            Some(payload) => match ok(datagram(self.host, self.from, self.to, payload, timeout)) {
                Datagram::Answered => Seen::Answered,
                Datagram::NoAnswer => Seen::Silence,
                Datagram::Unreachable => Seen::Rejected,
            },
        }
    }

    fn describe(&self) -> String {
        let proto = if self.udp.is_some() { "udp" } else { "tcp" };
        format!("{proto} {} -> {}", self.from, self.to)
    }
}

/// What must happen to an attempt.
enum Want {
    /// Answered; `row` gained hits and `reply_nic` passed the answer as `pass/reply`.
    Pass { row: &'static str, reply_nic: &'static str },
    /// Silence; `drop/no_rule` moved on `nic`, where the attempt arrived, and no row
    /// gained a hit.
    Refused { nic: &'static str },
}

fn stats(t: &Topology) -> Value {
    ok(t.stats())
}

fn hits(stats: &Value, row: &str) -> u64 {
    rule_hits(stats, row)
}

fn all_hits(stats: &Value) -> u64 {
    stats["rules"].as_array().expect("rules").iter().map(|r| r["packets"].as_u64().unwrap()).sum()
}

/// Every counter and row that moved between two `stats --json` documents, for the
/// failure messages.
fn moved(before: &Value, after: &Value) -> String {
    let mut out = Vec::new();
    for r in after["counters"].as_array().into_iter().flatten() {
        let (i, a, why) = (r["interface"].as_str().unwrap(), r["action"].as_str().unwrap(), r["reason"].as_str().unwrap());
        let d = packets(after, i, a, why) - packets(before, i, a, why);
        if d > 0 {
            out.push(format!("{i} {a}/{why} +{d}"));
        }
    }
    for r in after["rules"].as_array().into_iter().flatten() {
        let row = r["rule"].as_str().unwrap();
        let d = hits(after, row) - hits(before, row);
        if d > 0 {
            out.push(format!("row {row} +{d}"));
        }
    }
    if out.is_empty() { "nothing moved".to_owned() } else { out.join(", ") }
}

/// Run one attempt and check both what the user saw and what the counters say.
fn expect(t: &Topology, case: &str, attempt: Attempt<'_>, want: Want) {
    let case = format!("{case}: {}", attempt.describe());
    let before = stats(t);
    let seen = attempt.run(if matches!(want, Want::Pass { .. }) { T } else { SILENT });
    let after = stats(t);
    let diff = moved(&before, &after);
    match want {
        Want::Pass { row, reply_nic } => {
            assert_eq!(seen, Seen::Answered, "{case} ({diff})");
            assert!(hits(&after, row) > hits(&before, row), "{case}: no hit on row {row} ({diff})");
            assert!(
                packets(&after, reply_nic, "pass", "reply") > packets(&before, reply_nic, "pass", "reply"),
                "{case}: the answer was not pass/reply on {reply_nic} ({diff})"
            );
        }
        Want::Refused { nic } => {
            assert_eq!(seen, Seen::Silence, "{case} ({diff})");
            assert!(
                packets(&after, nic, "drop", "no_rule") > packets(&before, nic, "drop", "no_rule"),
                "{case}: not counted drop/no_rule on {nic} ({diff})"
            );
            assert_eq!(all_hits(&after), all_hits(&before), "{case}: a row opened ({diff})");
        }
    }
}

/// The `rules` of a `check --json` or `status --json` document.
fn rows_of(doc: &Value) -> Vec<Value> {
    doc["rules"].as_array().unwrap_or_else(|| panic!("no rules in {doc:#}")).clone()
}

fn ids(rows: &[Value]) -> Vec<&str> {
    rows.iter().map(|r| r["id"].as_str().unwrap()).collect()
}

fn json(t: &Topology, args: &[&str]) -> Value {
    let out = ok(t.cli(args));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?} is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn every_service_of_the_whole_edge_answers_in_both_families_and_counts_its_row() {
    let (t, config, d) = whole_edge(&format!("{TABLES}[metrics]\nlisten = \"127.0.0.1:9535\"\n"));
    use Want::Pass;
    for f in [V4, V6] {
        let fam = f.tag;
        let (partner, edge, frontend) = (&t.partner, &t.edge, &t.frontend);
        let cases = [
            ("XMPP federation in", tcp(partner, f.partner, sa(f.access, 5269)), Pass { row: "federation-in", reply_nic: "ext0" }),
            ("SIP federation in", tcp(partner, f.partner, sa(f.access, 5061)), Pass { row: "sip-federation-in", reply_nic: "ext0" }),
            ("SIP federation out", tcp(edge, f.access, sa(f.partner, 5061)), Pass { row: "sip-federation-out", reply_nic: "out0" }),
            // webconf-edge shares the address, so psom-in matches too: a packet that
            // opens several rows counts under the one in the lowest slot, and a fresh
            // start places sip-client-in before psom-in, in table order.
            ("remote users' SIP over TLS", tcp(partner, f.partner, sa(f.access, 443)), Pass { row: "sip-client-in", reply_nic: "ext0" }),
            ("TURN over TCP", tcp(partner, f.partner, sa(f.av, 443)), Pass { row: "stun-tcp-in", reply_nic: "ext0" }),
            ("STUN request and its answer", udp(partner, sa(f.partner, 0), sa(f.av, 3478), STUN), Pass { row: "stun-udp-in", reply_nic: "ext0" }),
            (
                "DNS query from access-edge and its answer",
                udp(edge, sa(f.access, 0), sa(f.partner, 53), &dns_query()),
                Pass { row: "dns-udp-out", reply_nic: "out0" },
            ),
            ("media in, first port", udp(partner, sa(f.partner, 0), sa(f.av, 50000), RTP), Pass { row: "rtp-udp-in", reply_nic: "ext0" }),
            ("media in, last port", udp(partner, sa(f.partner, 0), sa(f.av, 59999), RTP), Pass { row: "rtp-udp-in", reply_nic: "ext0" }),
            ("media over TCP in, first port", tcp(partner, f.partner, sa(f.av, 50000)), Pass { row: "rtp-tcp-in", reply_nic: "ext0" }),
            ("media over TCP in, last port", tcp(partner, f.partner, sa(f.av, 59999)), Pass { row: "rtp-tcp-in", reply_nic: "ext0" }),
            ("media out, first port", udp(edge, sa(f.av, 0), sa(f.partner, 50000), RTP), Pass { row: "rtp-udp-out", reply_nic: "out0" }),
            ("media out, last port", udp(edge, sa(f.av, 0), sa(f.partner, 59999), RTP), Pass { row: "rtp-udp-out", reply_nic: "out0" }),
            ("media over TCP out, first port", tcp(edge, f.av, sa(f.partner, 50000)), Pass { row: "rtp-tcp-out", reply_nic: "out0" }),
            ("media over TCP out, last port", tcp(edge, f.av, sa(f.partner, 59999)), Pass { row: "rtp-tcp-out", reply_nic: "out0" }),
            ("Front End SIP to the Edge", tcp(frontend, f.frontend, sa(f.internal, 5061)), Pass { row: "sip-internal-in", reply_nic: "int0" }),
            ("Front End web conferencing (PSOM)", tcp(frontend, f.frontend, sa(f.internal, 8057)), Pass { row: "psom-internal", reply_nic: "int0" }),
            ("Front End A/V authentication", tcp(frontend, f.frontend, sa(f.internal, 5062)), Pass { row: "av-auth", reply_nic: "int0" }),
            (
                "Front End configuration replication",
                tcp(frontend, f.frontend, sa(f.internal, 4443)),
                Pass { row: "cms-replication", reply_nic: "int0" },
            ),
            ("Edge SIP to the Front End", tcp(edge, f.internal, sa(f.frontend, 5061)), Pass { row: "sip-internal-out", reply_nic: "fe0" }),
        ];
        for (what, attempt, want) in cases {
            expect(&t, &format!("{fam} {what}"), attempt, want);
        }
    }

    // Every service was judged by its row and nothing was dropped.
    let s = stats(&t);
    for iface in ["out0", "fe0", "ext0", "int0"] {
        for reason in ["no_rule", "spoofed", "malformed"] {
            assert_eq!(packets(&s, iface, "drop", reason), 0, "{iface} drop/{reason}: {s:#}");
        }
    }
    // /metrics says the same per row.
    let metrics = ok(t.metrics("127.0.0.1:9535".parse().unwrap()));
    let now = stats(&t);
    for row in ["stun-udp-in", "dns-udp-out", "rtp-tcp-out", "cms-replication"] {
        let line = format!("edge_filter_rule_hits_total{{rule=\"{row}\"}} {}", hits(&now, row));
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }

    // `check` (the file) and `status` (the running filter) list the same 26 rows.
    let checked = rows_of(&json(&t, &["check", "--config", config.to_str().unwrap(), "--json"]));
    assert_eq!(ids(&checked), WHOLE_EDGE_ROWS, "check --json");
    let status = rows_of(&json(&t, &["status", "--json"]));
    assert_eq!(status, checked.clone(), "status --json lists the rows check --json does, in the table's order");
    let row = |id: &str| checked.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(
        row("rtp-udp-in"),
        serde_json::json!({"id": "rtp-udp-in", "proto": "udp", "port": "50000-59999", "source": "any", "destination": "av-edge", "opens_from": "outside, host"})
    );
    assert_eq!(
        row("dns-udp-out"),
        serde_json::json!({"id": "dns-udp-out", "proto": "udp", "port": "53", "source": "access-edge", "destination": "any", "opens_from": "edge"})
    );
    drop(d);
}

#[test]
fn the_whole_edge_refuses_what_no_row_allows_and_unsolicited_datagrams() {
    let (t, _, d) = whole_edge(&format!("{TABLES}[metrics]\nlisten = \"127.0.0.1:9536\"\n"));
    use Want::Refused;
    for f in [V4, V6] {
        let fam = f.tag;
        // Every server below answers from its own namespace, where the filter is not
        // on the path: the silence that follows is the filter's.
        for (host, to) in [(&t.edge, sa(f.access, 22)), (&t.edge, sa(f.av, 60000)), (&t.partner, sa(f.partner, 60000))] {
            assert_eq!(ok(connect_from(host, sa(to.ip(), 0), to, T)), Outcome::Connected, "{fam} tcp {to} locally");
        }
        for (host, to) in [(&t.edge, sa(f.access, 3478)), (&t.edge, sa(f.av, 40001)), (&t.edge, sa(f.av, 60000)), (&t.partner, sa(f.partner, 60000))]
        {
            assert_eq!(ok(datagram(host, sa(to.ip(), 0), to, STUN, T)), Datagram::Answered, "{fam} udp {to} locally");
        }

        let (partner, edge) = (&t.partner, &t.edge);
        let cases = [
            ("SSH to access-edge", tcp(partner, f.partner, sa(f.access, 22)), Refused { nic: "out0" }),
            // STUN is the A/V Edge's: with av-edge another address, access-edge:3478
            // is no row's destination.
            ("STUN to access-edge", udp(partner, sa(f.partner, 0), sa(f.access, 3478), STUN), Refused { nic: "out0" }),
            // From the STUN port, as the answer to an `stun-udp-out` request would
            // come: no such request was made, so it is no reply.
            ("unsolicited datagram from port 3478", udp(partner, sa(f.partner, 3478), sa(f.av, 40001), STUN), Refused { nic: "out0" }),
            ("media in, one port past the range", udp(partner, sa(f.partner, 0), sa(f.av, 60000), RTP), Refused { nic: "out0" }),
            ("media over TCP in, one port past the range", tcp(partner, f.partner, sa(f.av, 60000)), Refused { nic: "out0" }),
            ("media out, one port past the range", udp(edge, sa(f.av, 0), sa(f.partner, 60000), RTP), Refused { nic: "ext0" }),
            ("media over TCP out, one port past the range", tcp(edge, f.av, sa(f.partner, 60000)), Refused { nic: "ext0" }),
        ];
        for (what, attempt, want) in cases {
            expect(&t, &format!("{fam} {what}"), attempt, want);
        }
    }
    // Nothing in this test ever opened a row.
    let s = stats(&t);
    assert_eq!(all_hits(&s), 0, "{s:#}");
    drop(d);
}

#[test]
fn federation_restricted_to_a_peer_set_refuses_other_sources() {
    // The operator's policy: federation in only from known partners.
    let extra = format!(
        "{TABLES}disable = [\"federation-in\"]\n\n\
         [peers]\npartners = [\"198.51.100.0/24\", \"2001:db8:5100::/64\"]\n\n\
         [[rule]]\nid = \"federation-in-partners\"\nproto = \"tcp\"\nport = 5269\nsource = \"partners\"\ndestination = \"access-edge\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:9537\"\n"
    );
    let (t, config, d) = whole_edge(&extra);
    for f in [V4, V6] {
        let fam = f.tag;
        // The Front End is not a partner: before, federation-in let any source in.
        // (Refused first: a row hit trailing an allowed connection would blur the
        // check that no row opened.)
        expect(
            &t,
            &format!("{fam} federation from outside the peer set"),
            tcp(&t.frontend, f.frontend, sa(f.access, 5269)),
            Want::Refused { nic: "fe0" },
        );
        expect(
            &t,
            &format!("{fam} federation from the peer set"),
            tcp(&t.partner, f.partner, sa(f.access, 5269)),
            Want::Pass { row: "federation-in-partners", reply_nic: "ext0" },
        );
        // The other way is untouched.
        expect(
            &t,
            &format!("{fam} federation out"),
            tcp(&t.edge, f.access, sa(f.partner, 5269)),
            Want::Pass { row: "federation-out", reply_nic: "out0" },
        );
    }
    let s = stats(&t);
    assert!(s["rules"].as_array().unwrap().iter().all(|r| r["rule"] != "federation-in"), "a disabled row has no counter: {s:#}");

    // The effective table: federation-in gone, the operator's row last, opening from
    // the partners' side; the peer set listed as such.
    let check = json(&t, &["check", "--config", config.to_str().unwrap(), "--json"]);
    let checked = rows_of(&check);
    let want: Vec<&str> = WHOLE_EDGE_ROWS.iter().copied().filter(|id| *id != "federation-in").chain(["federation-in-partners"]).collect();
    assert_eq!(ids(&checked), want, "check --json");
    assert_eq!(
        checked.last().unwrap(),
        &serde_json::json!({"id": "federation-in-partners", "proto": "tcp", "port": "5269", "source": "partners", "destination": "access-edge", "opens_from": "outside, host"})
    );
    let partners = check["sets"].as_array().unwrap().iter().find(|s| s["set"] == "partners").expect("the peer set");
    assert_eq!(partners["kind"], "peer", "{check:#}");
    assert_eq!(rows_of(&json(&t, &["status", "--json"])), checked, "status --json lists the rows check --json does, in the table's order");

    // A peer set changes while traffic flows, as an edge set does: the Front End's
    // networks join the partners, and its federation connection gets in.
    let out = ok(t.cli(&["addr", "add", "partners", "198.18.0.0/24", "2001:db8:198::/64"]));
    assert!(out.status.success(), "addr add partners: {}", String::from_utf8_lossy(&out.stderr));
    let listed = json(&t, &["addr", "list", "partners", "--json"]);
    assert!(listed.as_array().unwrap().iter().any(|e| e["address"] == "198.18.0.0/24" && e["source"] == "runtime"), "{listed:#}");
    for f in [V4, V6] {
        expect(
            &t,
            &format!("{} federation from a network that joined the peer set", f.tag),
            tcp(&t.frontend, f.frontend, sa(f.access, 5269)),
            // The Edge reaches the Front End's networks through its internal NIC.
            Want::Pass { row: "federation-in-partners", reply_nic: "int0" },
        );
    }
    drop(d);
}
